//! The fake API server as a process, for the cluster-mode benchmark
//! (`cargo xtask bench control-plane`):
//!
//!   fake-apiserver ADDR KUBECONFIG_OUT MANIFESTS_DIR
//!
//! loads every `.yaml` file of MANIFESTS_DIR (as `kubectl apply` would),
//! serves on ADDR (port 0: any), writes a kubeconfig pointing at it to
//! KUBECONFIG_OUT, prints `ready ADDR` and serves until stdin closes. Clients
//! change objects through its HTTP API, as kubectl does.

use std::io::Read as _;

use gateway_tests::fake_apiserver::FakeApiServer;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [addr, kubeconfig_out, manifests] = args.as_slice() else {
        eprintln!("usage: fake-apiserver ADDR KUBECONFIG_OUT MANIFESTS_DIR");
        std::process::exit(2);
    };
    let addr = addr
        .parse()
        .unwrap_or_else(|e| panic!("address {addr}: {e}"));
    let fake = FakeApiServer::start(addr, None);
    let mut files: Vec<_> = std::fs::read_dir(manifests)
        .unwrap_or_else(|e| panic!("reading {manifests}: {e}"))
        .filter_map(|entry| Some(entry.ok()?.path()))
        .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    for file in files {
        let text = std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
        fake.apply(&text);
    }
    std::fs::write(kubeconfig_out, fake.kubeconfig())
        .unwrap_or_else(|e| panic!("writing {kubeconfig_out}: {e}"));
    println!("ready {}", fake.addr());
    // Serve until whoever started us closes our stdin (or exits).
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
}
