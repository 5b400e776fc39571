//! Builds gateway-ebpf for bpfel-unknown-none and leaves the object in OUT_DIR,
//! where loader.rs embeds it: the agent ships as one file.
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    // Relative relocations packed as RELR (glibc >= 2.36, the Dockerfile's
    // bookworm has 2.36): `.rela.dyn` shrinks from 0.86 MB to 14 kB, and the
    // loader reads all of it at every start, which left those pages resident
    // (docs/l7-memory.md).
    println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
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
    )?;
    let object = PathBuf::from(std::env::var("OUT_DIR")?).join("gateway-ebpf");
    strip_dwarf(&object).with_context(|| format!("stripping DWARF from {}", object.display()))
}

/// Removes the DWARF sections (and their relocations) from the eBPF object.
/// gateway-ebpf builds with `debug = 2` because bpf-linker derives BTF from
/// the debug info; once linked, aya needs only `.BTF` and `.BTF.ext` (BTF
/// maps, the verifier's line info), which `--strip-debug` keeps. DWARF was
/// 3.2 of the object's 3.9 MB, embedded in the agent and read by aya at
/// every load (every relocation section is collected into a Vec).
///
/// With the `rust-objcopy` (llvm-objcopy) that ships with every rustc.
fn strip_dwarf(object: &Path) -> anyhow::Result<()> {
    let rustc = std::env::var("RUSTC")?;
    let sysroot = Command::new(&rustc).args(["--print", "sysroot"]).output()?;
    anyhow::ensure!(sysroot.status.success(), "{rustc} --print sysroot failed");
    let sysroot = PathBuf::from(String::from_utf8(sysroot.stdout)?.trim());
    let objcopy = sysroot
        .join("lib/rustlib")
        .join(std::env::var("HOST")?)
        .join("bin/rust-objcopy");
    let status = Command::new(&objcopy)
        // It links the toolchain's libLLVM, as rustc does.
        .env("LD_LIBRARY_PATH", sysroot.join("lib"))
        .arg("--strip-debug")
        .arg(object)
        .status()
        .with_context(|| format!("running {}", objcopy.display()))?;
    anyhow::ensure!(status.success(), "{} failed: {status}", objcopy.display());
    Ok(())
}
