//! Appliers: turn a `DataplaneConfig` into running data planes.
//! `l4_plan` and `maglev` are pure (config → map entries); `loader` is the only code that touches aya.
pub mod ebpf_log;
pub mod l4_plan;
pub mod loader;
pub mod maglev;
