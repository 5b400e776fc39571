//! The gateway agent: sources → store → translate (pure) → appliers → data planes.
pub mod admin;
pub mod cli;
pub mod dataplane;
pub mod explain;
pub mod inspect;
pub mod leader;
pub mod metrics;
pub mod model;
pub mod netif;
pub mod passthrough;
pub mod prefixed;
pub mod proxy;
pub mod source;
pub mod status_writer;
pub mod store;
pub mod translate;

/// The GatewayClass `controllerName` this agent serves by default.
pub const DEFAULT_CONTROLLER_NAME: &str = "gateway-agent.dev/node-agent";
