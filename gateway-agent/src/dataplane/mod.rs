//! Appliers: turn a `DataplaneConfig` into running data planes.
//! `l4_plan` is pure (config → map entries); `loader` is the only code that touches aya.
pub mod l4_plan;
pub mod loader;
