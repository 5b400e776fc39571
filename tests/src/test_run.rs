//! The agent's L4 program loaded for BPF_PROG_TEST_RUN (attached nowhere,
//! its maps programmed by the agent's own loader), an empty program of the
//! same type to time it against, and raw access to its pinned maps.

use std::mem::size_of;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use gateway_agent::dataplane::loader::{AttachMode, FlowTimeouts, L4Dataplane};
use gateway_agent::model::{L4Listener, L4Protocol, RouteRef, WeightedEndpoint};

use crate::unique;

pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_REDIRECT: u32 = 4;
/// TC_ACT_REDIRECT: what the TC program answers for a packet it sends out.
pub const TC_ACT_REDIRECT: u32 = 7;
/// TC_ACT_UNSPEC (-1): what the TC program answers for a packet it passes.
pub const TC_ACT_UNSPEC: u32 = u32::MAX;

pub const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
pub const LISTENER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const BACKEND: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
pub const CLIENT6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);
pub const LISTENER6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
pub const BACKEND6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 1, 0, 0, 0, 2);
/// The cost tests' ping-pong listener (`RepeatCost`): no address of the
/// routed namespace, which routes it to the client side, so that a packet
/// rewritten back to it is forwarded like any other.
pub const ROUTED_LISTENER: Ipv4Addr = Ipv4Addr::new(198, 18, 9, 1);
pub const ROUTED_LISTENER6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 9, 0, 0, 0, 1);

pub struct Loaded {
    pub dataplane: L4Dataplane,
    pub pin_dir: PathBuf,
    /// What the loaded program answers for a packet it leaves to the kernel.
    pub pass: u32,
}

impl Drop for Loaded {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.pin_dir);
    }
}

pub fn route(name: &str) -> RouteRef {
    RouteRef {
        kind: "TCPRoute",
        namespace: "default".into(),
        name: name.into(),
        rule: 0,
    }
}

/// A listener on LISTENER:9000 to weighted `backends`.
pub fn listener(protocol: L4Protocol, name: &str, backends: &[(Ipv4Addr, u64)]) -> L4Listener {
    L4Listener {
        addr: LISTENER.into(),
        port: 9000,
        protocol,
        route: route(name),
        backends: endpoints(backends),
    }
}

/// `backends` with their weights, on port 7000.
pub fn endpoints<A: Copy + Into<std::net::IpAddr>>(backends: &[(A, u64)]) -> Vec<WeightedEndpoint> {
    backends
        .iter()
        .map(|(addr, weight)| WeightedEndpoint {
            addr: ((*addr).into(), 7000).into(),
            weight: *weight,
        })
        .collect()
}

/// The XDP program (attached nowhere) with `listeners` programmed.
pub fn load_with(listeners: &[L4Listener], timeouts: FlowTimeouts) -> Loaded {
    load_in(AttachMode::Auto, listeners, timeouts)
}

/// The program of `mode` (XDP, or the TC classifier), attached nowhere,
/// with `listeners` programmed.
pub fn load_in(mode: AttachMode, listeners: &[L4Listener], timeouts: FlowTimeouts) -> Loaded {
    let pin_dir = PathBuf::from("/sys/fs/bpf").join(unique("gwt-packets-"));
    let mut dataplane =
        L4Dataplane::load_with(&[], mode, &pin_dir, timeouts).expect("load the program");
    dataplane.apply(listeners).expect("program the maps");
    let pass = if mode == AttachMode::Tc {
        TC_ACT_UNSPEC
    } else {
        XDP_PASS
    };
    Loaded {
        dataplane,
        pin_dir,
        pass,
    }
}

/// A listener on LISTENER6:9000 to BACKEND6:7000.
pub fn listener6(protocol: L4Protocol, name: &str) -> L4Listener {
    L4Listener {
        addr: LISTENER6.into(),
        port: 9000,
        protocol,
        route: route(name),
        backends: vec![WeightedEndpoint {
            addr: (BACKEND6, 7000).into(),
            weight: 1,
        }],
    }
}

/// The program with one TCP and one UDP listener on LISTENER:9000, both to
/// BACKEND:7000, and the same on LISTENER6:9000 to BACKEND6:7000 (routes
/// `tcp6` and `udp6`).
pub fn load() -> Loaded {
    load_mode(AttachMode::Auto)
}

/// `load`, as the program of `mode`.
pub fn load_mode(mode: AttachMode) -> Loaded {
    load_in(mode, &listeners(), FlowTimeouts::default())
}

/// `load`'s listeners.
pub fn listeners() -> Vec<L4Listener> {
    vec![
        listener(L4Protocol::Tcp, "tcp", &[(BACKEND, 1)]),
        listener(L4Protocol::Udp, "udp", &[(BACKEND, 1)]),
        listener6(L4Protocol::Tcp, "tcp6"),
        listener6(L4Protocol::Udp, "udp6"),
    ]
}

impl Loaded {
    pub fn run(&self, packet: &[u8]) -> (u32, Vec<u8>) {
        self.dataplane.test_run(packet).expect("test run")
    }

    pub fn stats(&self, name: &str) -> gateway_common::RouteStats {
        self.dataplane
            .route_stats()
            .into_iter()
            .find(|(r, _)| r.name == name)
            .unwrap_or_else(|| panic!("no route {name}"))
            .1
    }

    pub fn events(&self, event: gateway_common::PacketEvent) -> u64 {
        self.dataplane
            .packet_events()
            .into_iter()
            .find(|(e, _)| *e == event)
            .expect("event")
            .1
    }
}

/// Whether the program passed `input` to the kernel without touching it.
pub fn untouched(loaded: &Loaded, input: &[u8]) -> bool {
    let (action, out) = loaded.run(input);
    action == loaded.pass && out == input
}

/// An XDP program that only returns XDP_PASS, or a TC classifier that only
/// returns TC_ACT_UNSPEC, loaded straight through the bpf() syscall (two
/// instructions; aya loads only object files): timed like the forwarding
/// program, it gives what BPF_PROG_TEST_RUN costs around any program of its
/// type, so that the forwarding program's own time is the difference.
pub struct EmptyProgram {
    fd: libc::c_int,
    retval: u32,
}

/// `struct bpf_attr` for BPF_PROG_LOAD, up to the fields used.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
}

/// `struct bpf_attr` for BPF_PROG_TEST_RUN, up to the fields used.
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
}

impl EmptyProgram {
    /// The empty program that answers `pass` (`XDP_PASS` or `TC_ACT_UNSPEC`),
    /// of the program type that answer belongs to.
    pub fn load(pass: u32) -> Self {
        const BPF_PROG_LOAD: libc::c_long = 5;
        const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
        const BPF_PROG_TYPE_XDP: u32 = 6;
        let prog_type = if pass == TC_ACT_UNSPEC {
            BPF_PROG_TYPE_SCHED_CLS
        } else {
            BPF_PROG_TYPE_XDP
        };
        // r0 = pass (a 32-bit immediate, sign-extended); exit
        let [a, b, c, d] = pass.to_le_bytes();
        let insns: [u64; 2] = [
            u64::from_le_bytes([0xb7, 0, 0, 0, a, b, c, d]),
            u64::from_le_bytes([0x95, 0, 0, 0, 0, 0, 0, 0]),
        ];
        let license = c"GPL";
        let attr = ProgLoadAttr {
            prog_type,
            insn_cnt: insns.len() as u32,
            insns: insns.as_ptr() as u64,
            license: license.as_ptr() as u64,
            ..Default::default()
        };
        // SAFETY: attr points at live buffers for the duration of the call.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_LOAD,
                &attr as *const ProgLoadAttr,
                size_of::<ProgLoadAttr>(),
            )
        };
        assert!(
            fd >= 0,
            "load the empty program: {}",
            std::io::Error::last_os_error()
        );
        EmptyProgram {
            fd: fd as libc::c_int,
            retval: pass,
        }
    }

    /// The kernel's time per run over `packet`, run `repeat` times.
    pub fn time_run(&self, packet: &[u8], repeat: u32) -> std::time::Duration {
        const BPF_PROG_TEST_RUN: libc::c_long = 10;
        let mut attr = TestRunAttr {
            prog_fd: self.fd as u32,
            data_size_in: packet.len() as u32,
            data_in: packet.as_ptr() as u64,
            repeat,
            ..Default::default()
        };
        // SAFETY: attr points at live buffers for the duration of the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_TEST_RUN,
                &mut attr as *mut TestRunAttr,
                size_of::<TestRunAttr>(),
            )
        };
        assert_eq!(rc, 0, "test run: {}", std::io::Error::last_os_error());
        assert_eq!(attr.retval, self.retval);
        std::time::Duration::from_nanos(u64::from(attr.duration))
    }
}

impl Drop for EmptyProgram {
    fn drop(&mut self) {
        // SAFETY: our own descriptor, closed once.
        unsafe { libc::close(self.fd) };
    }
}

/// A BPF map by file descriptor, for what the test must set up or check
/// below the loader: raw `bpf(2)` calls, as `EmptyProgram`.
pub struct PinnedMap(libc::c_int);

/// `struct bpf_attr` for BPF_MAP_CREATE, up to the fields used.
#[repr(C)]
#[derive(Default)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
}

/// `struct bpf_attr` for BPF_OBJ_PIN and BPF_OBJ_GET.
#[repr(C)]
#[derive(Default)]
struct ObjAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

/// `struct bpf_attr` for BPF_OBJ_GET_INFO_BY_FD.
#[repr(C)]
#[derive(Default)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// The head of `struct bpf_map_info`.
#[repr(C)]
#[derive(Default)]
struct MapInfoHead {
    map_type: u32,
    id: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
}

impl PinnedMap {
    fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> libc::c_long {
        // SAFETY: attr is a live bpf_attr prefix for the call's duration.
        unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, size_of::<T>()) }
    }

    /// A map with FLOWS' key and value sizes and capacity, pinned at `path`.
    pub fn create(path: &std::path::Path, map_type: u32, map_flags: u32) -> Self {
        const BPF_MAP_CREATE: libc::c_long = 0;
        const BPF_OBJ_PIN: libc::c_long = 6;
        let mut attr = MapCreateAttr {
            map_type,
            key_size: size_of::<gateway_common::FlowKey>() as u32,
            value_size: size_of::<gateway_common::FlowValue>() as u32,
            max_entries: gateway_common::MAX_FLOWS,
            map_flags,
        };
        let fd = Self::bpf(BPF_MAP_CREATE, &mut attr);
        assert!(fd >= 0, "create a map: {}", std::io::Error::last_os_error());
        let map = PinnedMap(fd as libc::c_int);
        let path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
        let mut pin = ObjAttr {
            pathname: path.as_ptr() as u64,
            bpf_fd: map.0 as u32,
            ..Default::default()
        };
        let rc = Self::bpf(BPF_OBJ_PIN, &mut pin);
        assert_eq!(rc, 0, "pin the map: {}", std::io::Error::last_os_error());
        map
    }

    pub fn open(path: &std::path::Path) -> Self {
        const BPF_OBJ_GET: libc::c_long = 7;
        let path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
        let mut attr = ObjAttr {
            pathname: path.as_ptr() as u64,
            ..Default::default()
        };
        let fd = Self::bpf(BPF_OBJ_GET, &mut attr);
        assert!(fd >= 0, "open the pin: {}", std::io::Error::last_os_error());
        PinnedMap(fd as libc::c_int)
    }

    fn head(&self) -> MapInfoHead {
        const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
        let mut info = MapInfoHead::default();
        let mut attr = InfoAttr {
            bpf_fd: self.0 as u32,
            info_len: size_of::<MapInfoHead>() as u32,
            info: &mut info as *mut MapInfoHead as u64,
        };
        let rc = Self::bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr);
        assert_eq!(rc, 0, "map info: {}", std::io::Error::last_os_error());
        info
    }

    /// Type and flags.
    pub fn info(&self) -> (u32, u32) {
        let head = self.head();
        (head.map_type, head.map_flags)
    }

    pub fn id(&self) -> u32 {
        self.head().id
    }

    /// The value at `key`, if any.
    pub fn lookup<K, V: Default>(&self, key: &K) -> Option<V> {
        const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
        let mut value = V::default();
        let mut attr = ElemAttr {
            map_fd: self.0 as u32,
            key: key as *const K as u64,
            value: &mut value as *mut V as u64,
            ..Default::default()
        };
        (Self::bpf(BPF_MAP_LOOKUP_ELEM, &mut attr) == 0).then_some(value)
    }

    /// Inserts `value` at `key`, which must be free.
    pub fn insert<K, V>(&self, key: &K, value: &V) {
        const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
        const BPF_NOEXIST: u64 = 1;
        let mut attr = ElemAttr {
            map_fd: self.0 as u32,
            key: key as *const K as u64,
            value: value as *const V as u64,
            flags: BPF_NOEXIST,
            ..Default::default()
        };
        let rc = Self::bpf(BPF_MAP_UPDATE_ELEM, &mut attr);
        assert_eq!(rc, 0, "map insert: {}", std::io::Error::last_os_error());
    }
}

/// `struct bpf_attr` for BPF_MAP_LOOKUP_ELEM and BPF_MAP_UPDATE_ELEM.
#[repr(C)]
#[derive(Default)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

impl Drop for PinnedMap {
    fn drop(&mut self) {
        // SAFETY: our own descriptor, closed once.
        unsafe { libc::close(self.0) };
    }
}
