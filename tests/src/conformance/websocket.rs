//! Just enough RFC 6455 for `HTTPRouteBackendProtocolWebSocket`: echo-basic's
//! `/ws` echo (frames echoed until close) and the test's client exchange.

use std::net::SocketAddr;

use base64::Engine as _;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// Frames larger than this are refused (the exchanges are a few bytes).
const MAX_PAYLOAD: u64 = 1 << 20;

pub const TEXT: u8 = 1;
pub const BINARY: u8 = 2;
const CLOSE: u8 = 8;
const PING: u8 = 9;
const PONG: u8 = 10;

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key`.
pub fn accept_key(key: &str) -> String {
    let digest = ring::digest::digest(
        &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
        format!("{key}{GUID}").as_bytes(),
    );
    base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
}

/// Writes one final frame; clients mask their frames, servers do not.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    opcode: u8,
    payload: &[u8],
    masked: bool,
) -> std::io::Result<()> {
    let mut out = vec![0x80 | opcode];
    let mask_bit = if masked { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= 0xffff => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if masked {
        let key: [u8; 4] = fastrand::u32(..).to_be_bytes();
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    w.write_all(&out).await
}

/// Reads one frame: (opcode, unmasked payload). Fragmented messages are not
/// needed here and are refused.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<(u8, Vec<u8>)> {
    let mut head = [0u8; 2];
    r.read_exact(&mut head).await?;
    if head[0] & 0x80 == 0 {
        return Err(std::io::Error::other("fragmented frame"));
    }
    let opcode = head[0] & 0x0f;
    let len = match head[1] & 0x7f {
        126 => u64::from(r.read_u16().await?),
        127 => r.read_u64().await?,
        n => u64::from(n),
    };
    if len > MAX_PAYLOAD {
        return Err(std::io::Error::other("frame too large"));
    }
    let mut key = [0u8; 4];
    let masked = head[1] & 0x80 != 0;
    if masked {
        r.read_exact(&mut key).await?;
    }
    let mut payload = vec![0u8; len as usize];
    r.read_exact(&mut payload).await?;
    if masked {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= key[i % 4];
        }
    }
    Ok((opcode, payload))
}

/// The server side after the upgrade: echo data frames, answer pings, stop
/// on close or error.
pub async fn echo<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S) {
    while let Ok((opcode, payload)) = read_frame(&mut stream).await {
        let reply = match opcode {
            TEXT | BINARY => opcode,
            PING => PONG,
            CLOSE => {
                let _ = write_frame(&mut stream, CLOSE, &payload, false).await;
                return;
            }
            _ => continue,
        };
        if write_frame(&mut stream, reply, &payload, false)
            .await
            .is_err()
        {
            return;
        }
    }
}

/// The client: upgrade `GET /ws` and run the exchanges `(opcode, payload)`,
/// each reply must be the same frame.
pub async fn client(
    addr: SocketAddr,
    origin: &str,
    exchanges: &[(u8, Vec<u8>)],
) -> Result<(), String> {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let key = base64::engine::general_purpose::STANDARD.encode(fastrand::u128(..).to_be_bytes());
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nOrigin: {origin}\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    // The response head, byte by byte up to the blank line (bounded).
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 16 * 1024 {
            return Err("response head too long".into());
        }
        let b = stream.read_u8().await.map_err(|e| format!("read: {e}"))?;
        head.push(b);
    }
    let head = String::from_utf8_lossy(&head);
    let status = head.lines().next().unwrap_or("");
    if !status.contains(" 101") {
        return Err(format!("upgrade refused: {status}"));
    }
    let accept = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("sec-websocket-accept")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_default();
    if accept != accept_key(&key) {
        return Err(format!("wrong Sec-WebSocket-Accept {accept:?}"));
    }
    for (opcode, payload) in exchanges {
        write_frame(&mut stream, *opcode, payload, true)
            .await
            .map_err(|e| format!("write frame: {e}"))?;
        let (got_op, got) = read_frame(&mut stream)
            .await
            .map_err(|e| format!("read frame: {e}"))?;
        if got_op != *opcode || got != *payload {
            return Err(format!(
                "sent opcode {opcode} {payload:?}, got opcode {got_op} {got:?}"
            ));
        }
    }
    let _ = write_frame(&mut stream, CLOSE, &[], true).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_matches_rfc_6455_example() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[tokio::test]
    async fn frames_round_trip_masked_and_long() {
        let (mut a, mut b) = tokio::io::duplex(1 << 20);
        let long = vec![7u8; 70_000];
        write_frame(&mut a, BINARY, &long, true)
            .await
            .expect("write");
        assert_eq!(read_frame(&mut b).await.expect("read"), (BINARY, long));
        write_frame(&mut a, TEXT, b"hi", false)
            .await
            .expect("write");
        assert_eq!(
            read_frame(&mut b).await.expect("read"),
            (TEXT, b"hi".to_vec())
        );
    }
}
