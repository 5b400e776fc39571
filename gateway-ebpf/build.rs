//! Tell cargo to rebuild when bpf-linker changes, since it links this crate.
fn main() {
    if let Ok(path) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}
