//! Builds gateway-ebpf for bpfel-unknown-none and leaves the object in OUT_DIR,
//! where loader.rs embeds it: the agent ships as one file.
use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    // aya-build watches the eBPF crate; the shared types are part of it too.
    println!(
        "cargo:rerun-if-changed={}",
        root.join("gateway-common").display()
    );
    let ebpf_dir = root.join("gateway-ebpf");
    let package = aya_build::Package {
        name: "gateway-ebpf",
        root_dir: ebpf_dir.to_str().context("non-UTF-8 path")?,
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::default()).context(
        "building the eBPF programs failed: run `cargo xtask setup` (nightly rust-src and bpf-linker)",
    )
}
