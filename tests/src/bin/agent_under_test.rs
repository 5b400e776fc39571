//! The agent, built inside this package so that the end-to-end tests always run
//! the current code (cargo builds a package's binaries before its tests).
fn main() -> anyhow::Result<()> {
    gateway_agent::cli::main()
}
