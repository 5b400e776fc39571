//! GRPCRoute traffic through the agent: a tonic client in the client
//! namespace, gRPC echo backends (h2c) in the backend namespace.

use std::time::Duration;

use gateway_tests::{
    Agent, BACKEND_ADDR, GATEWAY_ADDR, TempDir, Topology, class_and_service, eventually,
    gateway_with, require_root,
};

const SERVICE: &str = "gateway_api_conformance.echo_basic.grpcecho.GrpcEcho";

#[test]
fn grpc_calls_are_routed_by_service_method_and_metadata() {
    if !require_root("grpc_routes") {
        return;
    }
    let topology = Topology::new();
    let _g1 = topology.backend_spawn(&["grpc-echo", &format!("{BACKEND_ADDR}:9091"), "grpc-1"]);
    let _g2 = topology.backend_spawn(&["grpc-echo", &format!("{BACKEND_ADDR}:9092"), "grpc-2"]);
    let route = format!(
        r#"---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {{name: echo, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  hostnames: ["grpc.example"]
  rules:
  - matches: [{{method: {{service: {SERVICE}, method: Echo}}}}]
    backendRefs: [{{name: g1, port: 9091}}]
  - matches: [{{method: {{service: {SERVICE}, method: EchoTwo}}}}]
    backendRefs: [{{name: g2, port: 9092}}]
  - matches: [{{method: {{type: RegularExpression, service: ".*GrpcEcho", method: "EchoThr.*"}}, headers: [{{name: X-Pick, value: two}}]}}]
    backendRefs: [{{name: g2, port: 9092}}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {{add: [{{name: X-Added, value: by-gateway}}]}}
"#
    );
    let manifests = TempDir::new();
    manifests.write(
        "all.yaml",
        &(class_and_service("g1", 9091, 9091)
            + "---\n"
            + &class_and_service("g2", 9092, 9092)
            + &gateway_with("HTTP", 80, &route)),
    );
    let agent = Agent::start(&topology, manifests);
    let gateway = format!("{GATEWAY_ADDR}:80");
    let call = |method: &str, metadata: &[&str]| {
        let full = format!("/{SERVICE}/{method}");
        let mut args = vec!["grpc-call", &gateway, "grpc.example", &full];
        args.extend_from_slice(metadata);
        topology.client_run(&args)
    };

    let reply = eventually(
        "a gRPC call through the gateway",
        Duration::from_secs(20),
        || {
            let r = call("Echo", &[])?;
            if r.starts_with("code=Ok") {
                Ok(r)
            } else {
                Err(r)
            }
        },
    );
    assert!(reply.contains("backend=grpc-1"), "{reply}\n{}", agent.log());
    assert!(reply.contains(&format!("path=/{SERVICE}/Echo")), "{reply}");
    assert!(
        reply.contains("header:content-type=application/grpc"),
        "{reply}"
    );

    let reply = call("EchoTwo", &[]).expect("EchoTwo");
    assert!(reply.starts_with("code=Ok"), "{reply}");
    assert!(reply.contains("backend=grpc-2"), "{reply}");

    let reply = call("EchoThree", &["x-pick:two"]).expect("EchoThree");
    assert!(reply.contains("backend=grpc-2"), "{reply}");
    assert!(reply.contains("header:x-added=by-gateway"), "{reply}");

    // No rule matches: the gateway answers HTTP 404, which gRPC clients see as
    // Unimplemented.
    let reply = call("EchoThree", &[]).expect("unmatched call");
    assert!(reply.starts_with("code=Unimplemented"), "{reply}");
    let reply = call("Other", &[]).expect("unmatched call");
    assert!(reply.starts_with("code=Unimplemented"), "{reply}");
}
