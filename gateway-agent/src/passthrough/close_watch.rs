//! Learning that a spliced socket's peer closed, without waking for its data.
//!
//! While a socket is in the SOCKHASH, the kernel wakes its readers on every
//! segment it redirects (EPOLLIN), although nothing is left to read: tokio's
//! readable() would wake the agent per segment. Here sockets are registered
//! with a separate epoll for EPOLLRDHUP only (EPOLLHUP and EPOLLERR always
//! come), whose wake-ups for data the kernel filters out, and one thread
//! turns the rare events into task notifications.

use std::collections::HashMap;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

pub struct CloseWatch {
    epoll: OwnedFd,
    waiters: Mutex<HashMap<u64, Arc<Notify>>>,
    next_token: std::sync::atomic::AtomicU64,
}

/// A socket under watch; unregistered on drop.
pub struct Watched {
    watch: Arc<CloseWatch>,
    fd: RawFd,
    token: u64,
    notify: Arc<Notify>,
}

const EVENTS: u32 = (libc::EPOLLRDHUP | libc::EPOLLONESHOT) as u32;

impl CloseWatch {
    /// Creates the epoll and starts the thread that reads it.
    pub fn start() -> std::io::Result<Arc<Self>> {
        // SAFETY: plain syscall; the fd is owned below.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let watch = Arc::new(CloseWatch {
            // SAFETY: a fresh fd nobody else owns.
            epoll: unsafe { OwnedFd::from_raw_fd(fd) },
            waiters: Mutex::new(HashMap::new()),
            next_token: std::sync::atomic::AtomicU64::new(0),
        });
        let thread_watch = watch.clone();
        std::thread::Builder::new()
            .name("tls-close-watch".into())
            .spawn(move || thread_watch.run())?;
        Ok(watch)
    }

    fn run(&self) {
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 64];
        loop {
            // SAFETY: the buffer holds `events.len()` entries.
            let n = unsafe {
                libc::epoll_wait(
                    self.epoll.as_raw_fd(),
                    events.as_mut_ptr(),
                    events.len() as libc::c_int,
                    -1,
                )
            };
            let Ok(n) = usize::try_from(n) else {
                continue; // EINTR
            };
            let waiters = self.waiters.lock().expect("close watch lock");
            for event in &events[..n] {
                if let Some(notify) = waiters.get(&{ event.u64 }) {
                    notify.notify_one();
                }
            }
        }
    }

    fn control(&self, op: libc::c_int, fd: RawFd, token: u64) -> std::io::Result<()> {
        let mut event = libc::epoll_event {
            events: EVENTS,
            u64: token,
        };
        // SAFETY: valid epoll fd and event for the call's duration.
        if unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), op, fd, &mut event) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Watches `fd`, which must stay open until the returned value is dropped.
    pub fn watch(self: &Arc<Self>, fd: RawFd) -> std::io::Result<Watched> {
        let token = self
            .next_token
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let notify = Arc::new(Notify::new());
        self.waiters
            .lock()
            .expect("close watch lock")
            .insert(token, notify.clone());
        let watched = Watched {
            watch: self.clone(),
            fd,
            token,
            notify,
        };
        self.control(libc::EPOLL_CTL_ADD, fd, token)?;
        Ok(watched)
    }
}

impl Watched {
    /// Waits for the next hang-up or error event, then re-arms the watch.
    pub async fn event(&self) {
        self.notify.notified().await;
        let _ = self.watch.control(libc::EPOLL_CTL_MOD, self.fd, self.token);
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        let _ = self.watch.control(libc::EPOLL_CTL_DEL, self.fd, self.token);
        self.watch
            .waiters
            .lock()
            .expect("close watch lock")
            .remove(&self.token);
    }
}
