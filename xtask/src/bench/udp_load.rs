//! Small-UDP load for the L4 benchmark: a generator (sendmmsg, batches of 64
//! datagrams over several source ports, so that they are several flows) and
//! a sink counting what arrives: read with recvmmsg, or discarded by a
//! socket filter and counted as the socket's drops (no queueing, no read per
//! datagram). Each runs on a thread of this process that has entered a
//! benchmark namespace and is pinned to one CPU. Also the CPU time
//! accounting around a run (exact runtimes from schedstat, CPU busy time
//! from /proc/stat).

use std::net::{SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// Datagrams per sendmmsg/recvmmsg call.
pub const BATCH: usize = 64;
/// UDP payload: 22 bytes make a 64-byte Ethernet frame (14 + 20 + 8 + 22).
const PAYLOAD: usize = 22;

/// Moves the calling thread into namespace `ns` and onto CPU `cpu`.
fn enter(ns: &str, cpu: usize) -> anyhow::Result<()> {
    let path = format!("/run/netns/{ns}");
    let file = std::fs::File::open(&path).with_context(|| path.clone())?;
    // SAFETY: setns on a valid namespace fd; it changes this thread only.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!("setns {path}: {}", std::io::Error::last_os_error());
    }
    super::netns::pin(0, cpu)
}

/// Counts the datagrams arriving at one address until stopped.
pub struct Sink {
    received: Arc<AtomicU64>,
    /// The sink thread's socket (a duplicate descriptor), to switch the
    /// discarding filter and read the drop count from here.
    socket: UdpSocket,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<anyhow::Result<()>>,
}

impl Sink {
    pub fn start(ns: &str, addr: SocketAddrV4, cpu: usize) -> anyhow::Result<Sink> {
        let received = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (count, halt) = (received.clone(), stop.clone());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let ns = ns.to_string();
        let thread = std::thread::spawn(move || -> anyhow::Result<()> {
            let socket = enter(&ns, cpu).and_then(|()| {
                let socket = UdpSocket::bind(addr).with_context(|| format!("bind {addr}"))?;
                socket.set_nonblocking(true)?;
                // A deep queue, so that the sink's own scheduling never drops.
                set_int_option(&socket, libc::SO_RCVBUFFORCE, 32 << 20)?;
                Ok(socket)
            });
            let socket = match socket {
                Ok(socket) => match socket.try_clone() {
                    Ok(copy) => {
                        let _ = ready_tx.send(Ok(copy));
                        socket
                    }
                    Err(error) => {
                        let _ = ready_tx.send(Err(format!("dup: {error}")));
                        return Err(error.into());
                    }
                },
                Err(error) => {
                    let _ = ready_tx.send(Err(format!("{error:#}")));
                    return Err(error);
                }
            };
            let mut buffers = vec![[0u8; 2048]; BATCH];
            let mut iovecs: Vec<libc::iovec> = buffers
                .iter_mut()
                .map(|b| libc::iovec {
                    iov_base: b.as_mut_ptr().cast(),
                    iov_len: b.len(),
                })
                .collect();
            let mut headers = headers_for(&mut iovecs);
            // Bounded: the bench stops it; one hour at most.
            let deadline = Instant::now() + Duration::from_secs(3600);
            while !halt.load(Ordering::Relaxed) && Instant::now() < deadline {
                // SAFETY: `headers` point at `iovecs`, which point at `buffers`,
                // all alive for the call.
                let n = unsafe {
                    libc::recvmmsg(
                        socket.as_raw_fd(),
                        headers.as_mut_ptr(),
                        BATCH as u32,
                        0,
                        std::ptr::null_mut(),
                    )
                };
                if n > 0 {
                    count.fetch_add(n as u64, Ordering::Relaxed);
                } else {
                    // Polled, never woken: a datagram finding a sleeping
                    // reader would cost the sender's CPU a cross-CPU wakeup
                    // (an IPI, dear in a VM) and count as forwarding cost.
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            Ok(())
        });
        match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(socket)) => Ok(Sink {
                received,
                socket,
                stop,
                thread,
            }),
            Ok(Err(error)) => bail!("UDP sink on {addr}: {error}"),
            Err(_) => bail!("UDP sink on {addr} did not start"),
        }
    }

    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// `true`: a socket filter that accepts nothing discards every datagram
    /// once the kernel has found the socket and verified the UDP checksum,
    /// counted in the socket's drops ([`Sink::discarded`]) and never queued
    /// or read; `false`: datagrams are read and counted again.
    pub fn discard(&self, on: bool) -> anyhow::Result<()> {
        let fd = self.socket.as_raw_fd();
        let rc = if on {
            // Classic BPF: one instruction, "return 0" (keep 0 bytes).
            let mut reject = [libc::sock_filter {
                code: (libc::BPF_RET | libc::BPF_K) as u16,
                jt: 0,
                jf: 0,
                k: 0,
            }];
            let program = libc::sock_fprog {
                len: 1,
                filter: reject.as_mut_ptr(),
            };
            // SAFETY: a valid sock_fprog pointing at `reject`, alive for the call.
            unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_ATTACH_FILTER,
                    (&raw const program).cast(),
                    size_of::<libc::sock_fprog>() as libc::socklen_t,
                )
            }
        } else {
            let none: libc::c_int = 0;
            // SAFETY: SO_DETACH_FILTER ignores its (valid) value.
            unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_DETACH_FILTER,
                    (&raw const none).cast(),
                    size_of::<libc::c_int>() as libc::socklen_t,
                )
            }
        };
        let error = std::io::Error::last_os_error();
        // ENOENT: no filter to detach.
        if rc != 0 && (on || error.raw_os_error() != Some(libc::ENOENT)) {
            bail!("socket filter on the sink: {error}");
        }
        Ok(())
    }

    /// The socket's drop count (SO_MEMINFO): the datagrams the discarding
    /// filter took, plus any that failed the checksum or found the queue
    /// full (none with the filter on: nothing is queued). A 32-bit counter;
    /// subtract with `wrapping_sub`.
    pub fn discarded(&self) -> anyhow::Result<u32> {
        let mut info = [0u32; libc::SK_MEMINFO_DROPS as usize + 1];
        let mut len = size_of_val(&info) as libc::socklen_t;
        // SAFETY: `info` is writable for `len` bytes.
        let rc = unsafe {
            libc::getsockopt(
                self.socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_MEMINFO,
                info.as_mut_ptr().cast(),
                &mut len,
            )
        };
        if rc != 0 {
            bail!(
                "SO_MEMINFO on the sink: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(info[libc::SK_MEMINFO_DROPS as usize])
    }

    pub fn stop(self) -> anyhow::Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("UDP sink thread panicked"))?
    }
}

fn headers_for(iovecs: &mut [libc::iovec]) -> Vec<libc::mmsghdr> {
    iovecs
        .iter_mut()
        .map(|iov| {
            // SAFETY: an all-zero msghdr is valid (no name, no control data).
            let mut header: libc::mmsghdr = unsafe { std::mem::zeroed() };
            header.msg_hdr.msg_iov = iov;
            header.msg_hdr.msg_iovlen = 1;
            header
        })
        .collect()
}

fn set_int_option(socket: &UdpSocket, option: libc::c_int, value: i32) -> anyhow::Result<()> {
    // SAFETY: a c_int option value of the right size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&raw const value).cast(),
            size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        bail!("setsockopt {option}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// One generator run.
pub struct Load<'a> {
    pub ns: &'a str,
    pub cpu: usize,
    /// The generator's own address; source ports `first_port ..` one per flow.
    pub source: std::net::Ipv4Addr,
    pub first_port: u16,
    pub flows: u16,
    pub target: SocketAddrV4,
    /// Datagrams per second; None: as fast as the generator goes.
    pub rate: Option<f64>,
    pub duration: Duration,
    /// The generator thread at real-time priority (see [`Favoured`]).
    pub favoured: bool,
    /// Some: whole Ethernet frames written to this link with a packet
    /// socket, bypassing the client's UDP/IP stack and qdisc (a third of a
    /// UDP socket's cost per datagram); None: UDP sockets.
    pub frames: Option<Link>,
}

/// The client's interface and the MAC addresses of a frame generator.
#[derive(Clone)]
pub struct Link {
    pub dev: String,
    pub source: [u8; 6],
    pub destination: [u8; 6],
}

/// A 64-byte Ethernet frame: IPv4 (DF) and UDP with valid checksums, the
/// same payload as the sockets send.
fn frame(link: &Link, from: SocketAddrV4, to: SocketAddrV4) -> Vec<u8> {
    let udp_len = (8 + PAYLOAD) as u16;
    let mut ip = vec![
        0x45,
        0,
        0,
        0,
        0,
        0,
        0x40,
        0,
        64,
        libc::IPPROTO_UDP as u8,
        0,
        0,
    ];
    ip[2..4].copy_from_slice(&(20 + udp_len).to_be_bytes());
    ip.extend_from_slice(&from.ip().octets());
    ip.extend_from_slice(&to.ip().octets());
    let checksum = internet_checksum(&ip);
    ip[10..12].copy_from_slice(&checksum.to_be_bytes());
    let mut udp = Vec::with_capacity(udp_len.into());
    udp.extend_from_slice(&from.port().to_be_bytes());
    udp.extend_from_slice(&to.port().to_be_bytes());
    udp.extend_from_slice(&udp_len.to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(&[0x5a; PAYLOAD]);
    let mut pseudo = Vec::with_capacity(12 + udp.len());
    pseudo.extend_from_slice(&from.ip().octets());
    pseudo.extend_from_slice(&to.ip().octets());
    pseudo.extend_from_slice(&[0, libc::IPPROTO_UDP as u8]);
    pseudo.extend_from_slice(&udp_len.to_be_bytes());
    pseudo.extend_from_slice(&udp);
    // 0 means "no checksum" in UDP over IPv4: its one's complement is sent.
    let checksum = match internet_checksum(&pseudo) {
        0 => 0xffff,
        c => c,
    };
    udp[6..8].copy_from_slice(&checksum.to_be_bytes());
    let mut frame = Vec::with_capacity(64);
    frame.extend_from_slice(&link.destination);
    frame.extend_from_slice(&link.source);
    frame.extend_from_slice(&(libc::ETH_P_IP as u16).to_be_bytes());
    frame.extend_from_slice(&ip);
    frame.extend_from_slice(&udp);
    frame
}

/// RFC 1071.
fn internet_checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A packet socket bound to `dev` of the calling thread's namespace that
/// hands frames straight to the driver (PACKET_QDISC_BYPASS).
fn packet_socket(dev: &str) -> anyhow::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd as _;
    let name = std::ffi::CString::new(dev)?;
    // SAFETY: plain system calls; the fd is owned from here on.
    let fd = unsafe {
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
        if fd < 0 {
            bail!("packet socket: {}", std::io::Error::last_os_error());
        }
        std::os::fd::OwnedFd::from_raw_fd(fd)
    };
    // SAFETY: a NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        bail!("no interface {dev}: {}", std::io::Error::last_os_error());
    }
    let one: libc::c_int = 1;
    // SAFETY: a c_int option value of the right size.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_QDISC_BYPASS,
            (&raw const one).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        bail!("PACKET_QDISC_BYPASS: {}", std::io::Error::last_os_error());
    }
    // SAFETY: a zeroed sockaddr_ll is valid; protocol 0: sending only.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_ifindex = index as i32;
    // SAFETY: `addr` is a sockaddr_ll of the size given.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&raw const addr).cast(),
            size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        bail!(
            "bind packet socket to {dev}: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(fd)
}

impl Load<'_> {
    /// Sends for `duration` on a thread; returns how many datagrams were
    /// sent and the thread's CPU time in seconds.
    pub fn run(&self) -> anyhow::Result<(u64, f64)> {
        std::thread::scope(|scope| {
            scope
                .spawn(|| self.send())
                .join()
                .map_err(|_| anyhow::anyhow!("UDP generator thread panicked"))?
        })
    }

    fn send(&self) -> anyhow::Result<(u64, f64)> {
        enter(self.ns, self.cpu)?;
        // Restored when the thread ends, before it exits.
        let _favoured = if self.favoured {
            Some(Favoured::new(&[0], 1)?)
        } else {
            None
        };
        // Per flow: where a batch goes, and its BATCH headers. Sockets:
        // one connected UDP socket per flow, the same payloads; frames: one
        // packet socket, a frame per flow.
        let (mut fds, mut flows) = (vec![], vec![]);
        let mut payloads: Vec<Vec<u8>> = match &self.frames {
            None => {
                for i in 0..self.flows {
                    let from = SocketAddrV4::new(self.source, self.first_port + i);
                    let socket = UdpSocket::bind(from).with_context(|| format!("bind {from}"))?;
                    socket.connect(self.target)?;
                    fds.push(std::os::fd::OwnedFd::from(socket));
                }
                vec![vec![0x5a; PAYLOAD]]
            }
            Some(link) => {
                fds.push(packet_socket(&link.dev)?);
                (0..self.flows)
                    .map(|i| {
                        let from = SocketAddrV4::new(self.source, self.first_port + i);
                        frame(link, from, self.target)
                    })
                    .collect()
            }
        };
        let mut iovecs: Vec<Vec<libc::iovec>> = payloads
            .iter_mut()
            .map(|p| {
                let iov = libc::iovec {
                    iov_base: p.as_mut_ptr().cast(),
                    iov_len: p.len(),
                };
                vec![iov; BATCH]
            })
            .collect();
        for i in 0..usize::from(self.flows) {
            flows.push((
                fds[i % fds.len()].as_raw_fd(),
                headers_for(&mut iovecs[i % payloads.len()]),
            ));
        }
        let cpu_before = thread_cpu_seconds();
        let started = Instant::now();
        let mut sent = 0u64;
        let mut next = 0usize;
        loop {
            let elapsed = started.elapsed();
            if elapsed >= self.duration {
                break;
            }
            if let Some(rate) = self.rate {
                // One sleep until the next batch is due: every wakeup costs
                // this CPU time that would count as the path's.
                let due = Duration::from_secs_f64(sent as f64 / rate);
                if due > elapsed {
                    std::thread::sleep(due - elapsed);
                    continue;
                }
            }
            let (fd, headers) = &mut flows[next % usize::from(self.flows)];
            next += 1;
            // SAFETY: `headers` point at `iovecs` and `payloads`, alive here;
            // connected and bound sockets need no destination in the headers.
            let n = unsafe { libc::sendmmsg(*fd, headers.as_mut_ptr(), BATCH as u32, 0) };
            if n < 0 {
                let error = std::io::Error::last_os_error();
                // A refused datagram (ICMP unreachable before the path was
                // up) or a full queue: count nothing and go on.
                if matches!(
                    error.raw_os_error(),
                    Some(libc::ECONNREFUSED | libc::ENOBUFS | libc::EAGAIN)
                ) {
                    continue;
                }
                bail!("sendmmsg to {}: {error}", self.target);
            }
            sent += n as u64;
        }
        Ok((sent, thread_cpu_seconds() - cpu_before))
    }
}

/// CPU time of the calling thread (the scheduler's exact runtime; on this
/// kernel it includes the softirq work run in the thread's context).
fn thread_cpu_seconds() -> f64 {
    // SAFETY: a zeroed timespec is valid; clock_gettime only writes it.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: a valid clock id and pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// Exact CPU time (the scheduler's runtime, /proc/<pid>/task/*/schedstat)
/// of every thread of `pid` and of its children (socat's per-peer
/// processes), in seconds. On this kernel (no IRQ_TIME_ACCOUNTING) it
/// includes the softirq work run in those threads' context.
pub fn process_tree_cpu_seconds(pid: u32) -> f64 {
    std::iter::once(pid)
        .chain(super::netns::children(pid))
        .map(|p| {
            std::fs::read_dir(format!("/proc/{p}/task"))
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
                .filter_map(|text| text.split_whitespace().next()?.parse::<u64>().ok())
                .sum::<u64>()
        })
        .sum::<u64>() as f64
        / 1e9
}

/// The pid of `ksoftirqd/<cpu>`, which runs the softirq work that the
/// kernel defers from the CPU's running thread when there is too much.
pub fn ksoftirqd(cpu: usize) -> anyhow::Result<u32> {
    let name = format!("ksoftirqd/{cpu}");
    std::fs::read_dir("/proc")?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == name)
        })
        .with_context(|| format!("no {name}"))
}

/// (busy, total) time of CPU `cpu` from /proc/stat, in clock ticks: busy is
/// user, nice, system, irq, softirq and steal; total adds idle and iowait.
/// Tick-sampled and counting every process on the machine: for "is this CPU
/// saturated", not for per-datagram costs.
pub fn cpu_ticks(cpu: usize) -> anyhow::Result<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat")?;
    let name = format!("cpu{cpu}");
    let fields: Vec<u64> = text
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name.as_str()))
        .with_context(|| format!("no {name} in /proc/stat"))?
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let [user, nice, system, idle, iowait, irq, softirq, steal] = fields[..] else {
        bail!("{name} in /proc/stat: {fields:?}");
    };
    let busy = user + nice + system + irq + softirq + steal;
    Ok((busy, busy + idle + iowait))
}

/// Threads given the lowest real-time priority (SCHED_FIFO 1) for the
/// maximum-rate runs: the generator, and the node's forwarding where it runs
/// in a thread (threaded NAPI, ksoftirqd, socat), so that it preempts other
/// work on its CPU as softirq run on interrupt exit (RPS) does, and a shared
/// machine's other work shows less in the rates. The kernel's real-time
/// throttling still leaves other work 5% of each CPU. Restored on drop.
pub struct Favoured(Vec<Saved>);

/// A thread's scheduling policy, real-time priority and nice value.
struct Saved {
    tid: u32,
    policy: libc::c_int,
    priority: libc::c_int,
    nice: libc::c_int,
}

impl Favoured {
    /// Every thread of each pid (and of its children: socat's per-peer
    /// processes), at real-time `priority` (1 the lowest); 0 is the calling
    /// thread.
    pub fn new(pids: &[u32], priority: libc::c_int) -> anyhow::Result<Favoured> {
        let mut favoured = Favoured(vec![]);
        let tids: Vec<u32> = pids
            .iter()
            .flat_map(|&pid| {
                if pid == 0 {
                    return vec![0];
                }
                std::iter::once(pid)
                    .chain(super::netns::children(pid))
                    .flat_map(|pid| {
                        std::fs::read_dir(format!("/proc/{pid}/task"))
                            .into_iter()
                            .flatten()
                            .flatten()
                            .filter_map(|t| t.file_name().to_str()?.parse::<u32>().ok())
                    })
                    .collect()
            })
            .collect();
        for tid in tids {
            let saved = Saved::of(tid)?;
            set_scheduler(tid, libc::SCHED_FIFO, priority)?;
            favoured.0.push(saved);
        }
        Ok(favoured)
    }
}

impl Saved {
    fn of(tid: u32) -> anyhow::Result<Saved> {
        let pid = tid as libc::pid_t;
        // SAFETY: plain system calls on a thread id; `param` is writable.
        let (policy, priority, nice) = unsafe {
            let policy = libc::sched_getscheduler(pid);
            let mut param: libc::sched_param = std::mem::zeroed();
            *libc::__errno_location() = 0;
            let nice = libc::getpriority(libc::PRIO_PROCESS, tid);
            if policy < 0
                || libc::sched_getparam(pid, &mut param) != 0
                || *libc::__errno_location() != 0
            {
                bail!(
                    "scheduling of thread {tid}: {}",
                    std::io::Error::last_os_error()
                );
            }
            (policy, param.sched_priority, nice)
        };
        Ok(Saved {
            tid,
            policy,
            priority,
            nice,
        })
    }
}

fn set_scheduler(tid: u32, policy: libc::c_int, priority: libc::c_int) -> anyhow::Result<()> {
    let param = libc::sched_param {
        sched_priority: priority,
    };
    // SAFETY: plain system call on a thread id with a valid param.
    if unsafe { libc::sched_setscheduler(tid as libc::pid_t, policy, &param) } != 0 {
        bail!(
            "sched_setscheduler {tid} {policy} {priority}: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

impl Drop for Favoured {
    fn drop(&mut self) {
        for saved in &self.0 {
            // A thread that has exited needs nothing restored.
            let _ = set_scheduler(saved.tid, saved.policy, saved.priority);
            // SAFETY: plain system call on a thread id.
            let _ = unsafe { libc::setpriority(libc::PRIO_PROCESS, saved.tid, saved.nice) };
        }
    }
}
