//! `program-cost [--repeats N]`: the L4 program's own time per packet
//! (BPF_PROG_TEST_RUN), measured by the `packets` tests' code
//! (`gateway_tests::program_cost`) for XDP and TC, IPv4 and IPv6, N times
//! interleaved. Prints what the tests print on stderr, and one JSON object
//! per measurement on stdout (ns net of the empty program) for
//! `cargo xtask bench l4`. Needs root.

use clap::Parser;
use gateway_agent::dataplane::loader::AttachMode;
use gateway_tests::program_cost::{self, Family, hook_name};

#[derive(Parser)]
struct Args {
    /// Measurements of each program and family.
    #[arg(long, default_value_t = 5)]
    repeats: usize,
}

fn main() {
    let args = Args::parse();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("program-cost needs root (BPF, network namespaces)");
        std::process::exit(1);
    }
    for repeat in 0..args.repeats {
        for mode in [AttachMode::Auto, AttachMode::Tc] {
            for family in [Family::Ipv4, Family::Ipv6] {
                // A thread of its own: `measure` moves its thread into a
                // network namespace it then deletes.
                let cost = std::thread::spawn(move || program_cost::measure(mode, family))
                    .join()
                    .expect("the measurement panicked");
                eprintln!("{cost}");
                cost.check();
                let figures = serde_json::json!({
                    "repeat": repeat,
                    "hook": hook_name(mode),
                    "family": family.name(),
                    "tracked_repeat_ns": cost.repeat.median_net(),
                    "tracked_single_ns": cost.single.tracked_net(),
                    "new_flow_single_ns": cost.single.new_flow_net(),
                });
                println!("{figures}");
            }
        }
    }
}
