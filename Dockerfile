# The gateway-agent image: `docker build -t gateway-agent:0.1.0 .` at the
# repository root. The build stage needs the nightly toolchain and bpf-linker
# for the eBPF programs the agent embeds; `cargo xtask setup` installs both
# (see ../shared/docs/ebpf-toolchain.md: bpf-linker is built once, ~3 minutes).
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN rustup toolchain install nightly --profile minimal --component rust-src \
 && cargo xtask setup \
 && cargo build --profile dist --locked -p gateway-agent \
 && cp target/dist/gateway-agent /gateway-agent

# glibc (the agent links it dynamically); nothing else is needed at run time:
# the BPF programs are inside the binary, bpffs comes from the host.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /gateway-agent /usr/local/bin/gateway-agent
ENTRYPOINT ["/usr/local/bin/gateway-agent"]
CMD ["run"]
