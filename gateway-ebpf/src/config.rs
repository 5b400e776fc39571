//! Load-time settings: read-only globals the loader may override
//! (`EbpfLoader::override_global`); defaults from gateway-common.

use gateway_common::{DEFAULT_TCP_CLOSING_NS, DEFAULT_TCP_IDLE_NS, DEFAULT_UDP_IDLE_NS};

#[unsafe(no_mangle)]
static TCP_IDLE_NS: u64 = DEFAULT_TCP_IDLE_NS;
#[unsafe(no_mangle)]
static TCP_CLOSING_NS: u64 = DEFAULT_TCP_CLOSING_NS;
#[unsafe(no_mangle)]
static UDP_IDLE_NS: u64 = DEFAULT_UDP_IDLE_NS;

/// Volatile reads: the compiler must not fold the defaults into the code.
#[inline(always)]
pub fn tcp_idle_ns() -> u64 {
    // SAFETY: a read of a static.
    unsafe { core::ptr::read_volatile(&TCP_IDLE_NS) }
}

#[inline(always)]
pub fn tcp_closing_ns() -> u64 {
    // SAFETY: a read of a static.
    unsafe { core::ptr::read_volatile(&TCP_CLOSING_NS) }
}

#[inline(always)]
pub fn udp_idle_ns() -> u64 {
    // SAFETY: a read of a static.
    unsafe { core::ptr::read_volatile(&UDP_IDLE_NS) }
}
