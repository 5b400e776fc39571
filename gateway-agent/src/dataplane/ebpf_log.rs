//! `--ebpf-log`: the XDP program's aya-log messages (new and refused flows),
//! read from its ring buffer as they come and logged through tracing (target
//! `gateway_agent::ebpf`, level INFO, so that the flag alone shows them).

use std::os::fd::AsRawFd;

use aya_log::EbpfLogger;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// aya-log's ring buffer in the eBPF object (128 KiB as declared).
pub const RING: &str = "AYA_LOGS";

/// The smallest ring buffer the kernel takes (one page): the size given to
/// `RING` in instances that never log, instead of the declared 128 KiB.
pub fn idle_ring_bytes() -> u32 {
    // SAFETY: sysconf reads a system constant; no pointers involved.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u32::try_from(page).unwrap_or(4096)
}

/// Hands aya-log's records to tracing.
pub struct TracingLog;

impl log::Log for TracingLog {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        tracing::info!(target: "gateway_agent::ebpf", level = %record.level(), "{}", record.args());
    }

    fn flush(&self) {}
}

/// Drains `logger`'s ring buffer whenever the kernel signals records, for
/// the agent's life (the task owns the logger, which keeps the buffer).
pub fn drain<T: log::Log + Send + 'static>(logger: EbpfLogger<T>) -> std::io::Result<()>
where
    EbpfLogger<T>: AsRawFd,
{
    // SAFETY: the logger owns its ring buffer's fd, which stays open and the
    // same until the AsyncFd (which owns the logger) is dropped.
    let mut ring = unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) }
        .map_err(std::io::Error::from)?;
    tokio::spawn(async move {
        loop {
            let Ok(mut ready) = ring.readable_mut().await else {
                tracing::warn!("the eBPF log ring buffer cannot be polled: eBPF logging stops");
                return;
            };
            ready.get_inner_mut().flush();
            ready.clear_ready();
        }
    });
    Ok(())
}
