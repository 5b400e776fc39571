//! What the TLS end-to-end tests share: certificates made with rcgen, a
//! reproducible byte stream and a hash to check that bulk data arrived intact,
//! and the agent's CPU time.

use std::path::{Path, PathBuf};

/// A self-signed certificate for `names`, written as `<stem>.crt` / `<stem>.key`
/// under `dir`; the certificate is also the client's trust anchor.
pub struct TestCertificate {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub cert_pem: String,
    pub key_pem: String,
}

impl TestCertificate {
    pub fn new(dir: &Path, stem: &str, names: &[&str]) -> Self {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let generated = rcgen::generate_simple_self_signed(names).expect("rcgen certificate");
        let cert_pem = generated.cert.pem();
        let key_pem = generated.signing_key.serialize_pem();
        let cert = dir.join(format!("{stem}.crt"));
        let key = dir.join(format!("{stem}.key"));
        std::fs::write(&cert, &cert_pem).expect("write certificate");
        std::fs::write(&key, &key_pem).expect("write key");
        TestCertificate {
            cert,
            key,
            cert_pem,
            key_pem,
        }
    }

    /// A `kubernetes.io/tls` Secret holding this certificate.
    pub fn secret(&self, namespace: &str, name: &str) -> String {
        let indent = |s: &str| s.lines().map(|l| format!("    {l}\n")).collect::<String>();
        format!(
            "---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  namespace: {namespace}\n\
             type: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}",
            indent(&self.cert_pem),
            indent(&self.key_pem)
        )
    }
}

/// Fills `out` with the next bytes of the stream whose state is `state`
/// (xorshift64*); the same seed and chunk sizes give the same bytes.
pub fn fill_stream(state: &mut u64, out: &mut [u8]) {
    if *state == 0 {
        *state = 0x9e37_79b9_7f4a_7c15;
    }
    for chunk in out.chunks_mut(8) {
        *state ^= *state >> 12;
        *state ^= *state << 25;
        *state ^= *state >> 27;
        let word = state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
        chunk.copy_from_slice(&word[..chunk.len()]);
    }
}

/// FNV-1a over 8-byte words: not cryptographic, enough to see a lost,
/// duplicated or reordered chunk; the same bytes give the same hash however
/// they are cut into updates.
#[derive(Clone, Copy, Debug)]
pub struct StreamHash {
    state: u64,
    pending: [u8; 8],
    pending_len: usize,
}

impl Default for StreamHash {
    fn default() -> Self {
        StreamHash {
            state: 0xcbf2_9ce4_8422_2325,
            pending: [0; 8],
            pending_len: 0,
        }
    }
}

impl StreamHash {
    fn word(&mut self, word: [u8; 8]) {
        self.state = (self.state ^ u64::from_le_bytes(word)).wrapping_mul(0x0000_0100_0000_01b3);
    }

    pub fn update(&mut self, mut bytes: &[u8]) {
        if self.pending_len > 0 {
            let take = (8 - self.pending_len).min(bytes.len());
            self.pending[self.pending_len..self.pending_len + take].copy_from_slice(&bytes[..take]);
            self.pending_len += take;
            bytes = &bytes[take..];
            if self.pending_len < 8 {
                return;
            }
            self.word(self.pending);
            self.pending_len = 0;
        }
        let mut words = bytes.chunks_exact(8);
        for word in &mut words {
            self.word(word.try_into().expect("8 bytes"));
        }
        let tail = words.remainder();
        self.pending[..tail.len()].copy_from_slice(tail);
        self.pending_len = tail.len();
    }

    pub fn finish(mut self) -> u64 {
        let mut last = [0u8; 8];
        last[..self.pending_len].copy_from_slice(&self.pending[..self.pending_len]);
        self.word(last);
        self.state ^ self.pending_len as u64
    }
}

/// User plus system CPU time of process `pid`, in clock ticks (/proc/PID/stat).
pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/PID/stat");
    // The command name may hold spaces: fields are counted after its ')'.
    let after = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the name.
    fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
}

/// CPU ticks of each thread of `pid`, by thread name and id.
pub fn thread_cpu_ticks(pid: u32) -> std::collections::BTreeMap<String, u64> {
    let mut threads = std::collections::BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return threads;
    };
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let name = stat[..close].replacen(" (", ":", 1);
        let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
        let ticks = fields
            .get(11)
            .and_then(|u| u.parse::<u64>().ok())
            .unwrap_or(0)
            + fields
                .get(12)
                .and_then(|s| s.parse::<u64>().ok())
                .unwrap_or(0);
        threads.insert(name, ticks);
    }
    threads
}
