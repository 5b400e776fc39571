//! `cargo xtask setup`: installs what is missing, exactly as
//! ../shared/docs/ebpf-toolchain.md describes, and nothing when all is there.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context as _, bail};

use crate::run_cmd;

/// bpf-linker release known to work with aya 0.14 and nightly's LLVM.
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Debian packages the tests use, by the command that shows each is present.
const SYSTEM_TOOLS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("bpftool", "bpftool"),
    ("ethtool", "ethtool"),
    // Real peers of the L4 end-to-end tests: iperf3 over a TCPRoute,
    // dnsmasq (the binary, no system service) queried with dig over a UDPRoute.
    ("iperf3", "iperf3"),
    ("dnsmasq", "dnsmasq-base"),
    ("dig", "bind9-dnsutils"),
];

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc_geteuid() == 0 }
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

pub fn run() -> anyhow::Result<()> {
    if Command::new("rustup").arg("--version").output().is_err() {
        bail!(
            "rustup is required (https://rustup.rs): the eBPF programs build with a nightly toolchain"
        );
    }
    ensure_nightly()?;
    ensure_rust_src()?;
    ensure_bpf_linker()?;
    ensure_system_tools()?;
    Ok(())
}

fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

fn ensure_nightly() -> anyhow::Result<()> {
    if output(Command::new("rustc").args(["+nightly", "--version"])).is_ok() {
        return Ok(());
    }
    println!("==> installing the nightly toolchain");
    run_cmd(Command::new("rustup").args([
        "toolchain",
        "install",
        "nightly",
        "--profile",
        "minimal",
    ]))
    .context("no nightly toolchain, and rustup could not install one")
}

fn nightly_sysroot() -> anyhow::Result<PathBuf> {
    Ok(PathBuf::from(
        output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?.trim(),
    ))
}

fn ensure_rust_src() -> anyhow::Result<()> {
    let core = nightly_sysroot()?.join("lib/rustlib/src/rust/library/core");
    if core.exists() {
        return Ok(());
    }
    println!("==> installing rust-src for nightly");
    run_cmd(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

fn cache_dir() -> PathBuf {
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    home.join(".cache/gateway-agent")
}

/// bpf-linker must link the same LLVM as nightly's rustc: it is built against
/// the libLLVM shipped inside the nightly toolchain, and rebuilt when nightly changes.
fn ensure_bpf_linker() -> anyhow::Result<()> {
    let verbose = output(Command::new("rustc").args(["+nightly", "-vV"]))?;
    let stamp_path = cache_dir().join("bpf-linker.stamp");
    let wanted = format!("{BPF_LINKER_VERSION}\n{verbose}");
    let linker_works = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if linker_works && std::fs::read_to_string(&stamp_path).is_ok_and(|s| s == wanted) {
        return Ok(());
    }
    let major = verbose
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .context("nightly rustc does not report its LLVM version")?
        .to_string();
    let lib_dir = nightly_sysroot()?.join("lib");
    // The real ELF (libLLVM.so.22.1-rust-…), not the one-line linker script libLLVM-22-….so.
    let lib = std::fs::read_dir(&lib_dir)?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("libLLVM.so."))
        })
        .with_context(|| format!("no libLLVM.so.* in {}", lib_dir.display()))?;
    let prefix = cache_dir().join(format!("llvm-{major}"));
    let prefix_lib = prefix.join("lib");
    std::fs::create_dir_all(&prefix_lib)?;
    for name in [
        std::ffi::OsString::from("libLLVM.so"),
        lib.file_name().expect("file").to_os_string(),
    ] {
        let link = prefix_lib.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&lib, &link)?;
    }
    println!(
        "==> building bpf-linker {BPF_LINKER_VERSION} against nightly's LLVM {major} (about 3 minutes)"
    );
    run_cmd(
        Command::new("cargo")
            .args([
                "install",
                &format!("bpf-linker@{BPF_LINKER_VERSION}"),
                "--locked",
                "--force",
            ])
            .args([
                "--no-default-features",
                "--features",
                &format!("llvm-{major}"),
            ])
            .env("LLVM_PREFIX", &prefix),
    )?;
    std::fs::write(&stamp_path, wanted)?;
    Ok(())
}

fn ensure_system_tools() -> anyhow::Result<()> {
    let missing: Vec<&str> = SYSTEM_TOOLS
        .iter()
        .filter(|(cmd, _)| {
            Command::new("sh")
                .args(["-c", &format!("command -v {cmd}")])
                .output()
                .is_ok_and(|o| !o.status.success())
        })
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() || Command::new("apt-get").arg("--version").output().is_err() {
        println!(
            "warning: missing {}: install them (as root, with apt-get) for the end-to-end tests",
            missing.join(" ")
        );
        return Ok(());
    }
    println!("==> apt-get install {}", missing.join(" "));
    run_cmd(Command::new("apt-get").args(["update", "-qq"]))?;
    run_cmd(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}
