//! Sources turn the outside world into a `Snapshot`.
pub mod file;
pub mod kube;
