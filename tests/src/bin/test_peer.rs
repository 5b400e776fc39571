//! Clients and backends the end-to-end tests run inside network namespaces.
//!
//!   test-peer tcp-echo ADDR            echo every byte back, per connection
//!   test-peer http-echo ADDR NAME      answer 200 with what the request carried
//!   test-peer tcp-send ADDR MESSAGE    send, half-close, print the reply
//!   test-peer http-get ADDR PATH HOST  one GET, print status line and body
//!   test-peer udp-echo ADDR            echo every datagram back to its sender
//!   test-peer udp-send ADDR MESSAGE    send one datagram, print the reply
//!
//! Clients exit 1 (message on stderr) on any failure, within 5 seconds.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(5);

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["tcp-echo", addr] => tcp_echo(addr),
        ["http-echo", addr, name] => http_echo(addr, name),
        ["tcp-send", addr, message] => tcp_send(addr, message),
        ["http-get", addr, path, host] => http_get(addr, path, host),
        ["udp-echo", addr] => udp_echo(addr),
        ["udp-send", addr, message] => udp_send(addr, message),
        _ => Err("usage: see the comment at the top of test_peer.rs".to_string()),
    };
    if let Err(e) = result {
        eprintln!("test-peer: {e}");
        std::process::exit(1);
    }
}

fn listen(addr: &str) -> Result<TcpListener, String> {
    let listener = TcpListener::bind(addr).map_err(|e| format!("bind {addr}: {e}"))?;
    println!("listening on {addr}");
    Ok(listener)
}

fn tcp_echo(addr: &str) -> Result<(), String> {
    for stream in listen(addr)?.incoming().flatten() {
        std::thread::spawn(move || {
            let mut reader = &stream;
            let mut writer = &stream;
            let _ = std::io::copy(&mut reader, &mut writer);
        });
    }
    Ok(())
}

fn http_echo(addr: &str, name: &str) -> Result<(), String> {
    for stream in listen(addr)?.incoming().flatten() {
        let name = name.to_string();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(&stream);
            loop {
                let mut request_line = String::new();
                if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
                    return;
                }
                let mut parts = request_line.split_whitespace();
                let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                let mut body = format!("backend={name}\nmethod={method}\npath={path}\n");
                let mut content_length = 0usize;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let line = line.trim_end();
                    if line.is_empty() {
                        break;
                    }
                    if let Some((k, v)) = line.split_once(':') {
                        let k = k.trim().to_ascii_lowercase();
                        if k == "content-length" {
                            content_length = v.trim().parse().unwrap_or(0);
                        }
                        body.push_str(&format!("header:{k}={}\n", v.trim()));
                    }
                }
                let mut discard = vec![0; content_length];
                if reader.read_exact(&mut discard).is_err() {
                    return;
                }
                let mut writer = &stream;
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                if writer.write_all(response.as_bytes()).is_err() {
                    return;
                }
            }
        });
    }
    Ok(())
}

fn connect(addr: &str) -> Result<TcpStream, String> {
    let addr: SocketAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
    let stream =
        TcpStream::connect_timeout(&addr, TIMEOUT).map_err(|e| format!("connect {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(TIMEOUT))
        .map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(Some(TIMEOUT))
        .map_err(|e| e.to_string())?;
    Ok(stream)
}

fn tcp_send(addr: &str, message: &str) -> Result<(), String> {
    let mut stream = connect(addr)?;
    stream
        .write_all(message.as_bytes())
        .map_err(|e| format!("send: {e}"))?;
    stream
        .shutdown(Shutdown::Write)
        .map_err(|e| format!("shutdown: {e}"))?;
    let mut reply = String::new();
    stream
        .read_to_string(&mut reply)
        .map_err(|e| format!("receive: {e}"))?;
    print!("{reply}");
    Ok(())
}

fn http_get(addr: &str, path: &str, host: &str) -> Result<(), String> {
    let mut stream = connect(addr)?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("send: {e}"))?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| format!("receive: {e}"))?;
    let status = response.lines().next().unwrap_or_default();
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    print!("{status}\n{body}");
    Ok(())
}

fn udp_echo(addr: &str) -> Result<(), String> {
    let socket = std::net::UdpSocket::bind(addr).map_err(|e| format!("bind {addr}: {e}"))?;
    let mut buf = [0u8; 65536];
    loop {
        let (n, from) = socket.recv_from(&mut buf).map_err(|e| e.to_string())?;
        let _ = socket.send_to(&buf[..n], from);
    }
}

fn udp_send(addr: &str, message: &str) -> Result<(), String> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
    socket
        .set_read_timeout(Some(Duration::from_secs(1)))
        .map_err(|e| e.to_string())?;
    socket
        .connect(addr)
        .map_err(|e| format!("connect {addr}: {e}"))?;
    socket
        .send(message.as_bytes())
        .map_err(|e| format!("send: {e}"))?;
    let mut buf = [0u8; 65536];
    let n = socket.recv(&mut buf).map_err(|e| format!("receive: {e}"))?;
    print!("{}", String::from_utf8_lossy(&buf[..n]));
    Ok(())
}
