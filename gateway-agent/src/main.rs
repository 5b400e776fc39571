//! `gateway-agent`: see `cli`.
fn main() -> anyhow::Result<()> {
    gateway_agent::cli::main()
}
