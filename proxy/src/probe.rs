//! `sluice probe`: one plain HTTP/1.1 `GET` to the admin API, for container health checks
//! (the runtime image has no curl). Exit status 0 when the answer is `200`, 1 otherwise.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// The most of the answer that is read: the status line is all the probe needs.
const MAX_HEAD: usize = 8192;

/// Sends `GET path` to `admin` (`host:port`) and returns the status line when it is `200`,
/// else an error that says what happened. The whole exchange (resolution aside) takes at most
/// `timeout`.
pub fn probe(admin: &str, path: &str, timeout: Duration) -> Result<String, String> {
    if !path.starts_with('/') || path.bytes().any(|b| b.is_ascii_whitespace() || b < 0x20) {
        return Err(format!(
            "--path {path:?}: a path starting with / without spaces"
        ));
    }
    let deadline = Instant::now() + timeout;
    let addrs: Vec<SocketAddr> = admin
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {admin}: {e}"))?
        .collect();
    let mut last_error = format!("{admin} resolves to no address");
    let mut stream = None;
    for addr in addrs {
        let Some(left) = remaining(deadline) else {
            break;
        };
        match TcpStream::connect_timeout(&addr, left) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last_error = format!("cannot connect to {addr}: {e}"),
        }
    }
    let mut stream = stream.ok_or(last_error)?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {admin}\r\nUser-Agent: sluice-probe\r\nConnection: close\r\n\r\n"
    );
    let timed_out = || format!("no answer from {admin} within {} ms", timeout.as_millis());
    stream
        .set_write_timeout(Some(remaining(deadline).ok_or_else(timed_out)?))
        .and_then(|()| stream.write_all(request.as_bytes()))
        .map_err(|e| format!("cannot send the request to {admin}: {e}"))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(2).any(|w| w == b"\r\n") {
        let left = remaining(deadline).ok_or_else(timed_out)?;
        stream
            .set_read_timeout(Some(left))
            .map_err(|e| format!("socket: {e}"))?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(timed_out())
            }
            Err(e) => return Err(format!("cannot read the answer of {admin}: {e}")),
        }
        if head.len() > MAX_HEAD {
            break;
        }
    }
    let text = String::from_utf8_lossy(&head);
    let line = text.lines().next().unwrap_or_default().trim().to_string();
    let mut parts = line.split_whitespace();
    let (version, code) = (parts.next(), parts.next());
    if !version.is_some_and(|v| v.starts_with("HTTP/")) {
        return Err(format!("{admin} did not answer HTTP (got {line:?})"));
    }
    if code == Some("200") {
        Ok(line)
    } else {
        Err(format!("GET http://{admin}{path}: {line}"))
    }
}

fn remaining(deadline: Instant) -> Option<Duration> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// Serves one connection with `answer` (after reading the request head), on a thread.
    fn serve_once(answer: &'static [u8]) -> String {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut req = Vec::new();
            let mut buf = [0u8; 512];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).unwrap();
                if n == 0 {
                    return;
                }
                req.extend_from_slice(&buf[..n]);
            }
            assert!(req.starts_with(b"GET /ready HTTP/1.1\r\n"));
            s.write_all(answer).unwrap();
        });
        addr
    }

    #[test]
    fn ok_only_on_200() {
        let t = Duration::from_secs(2);
        let a = serve_once(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nready\n");
        assert_eq!(probe(&a, "/ready", t).unwrap(), "HTTP/1.1 200 OK");
        let a = serve_once(b"HTTP/1.1 503 Service Unavailable\r\n\r\ndraining\n");
        let e = probe(&a, "/ready", t).unwrap_err();
        assert!(e.ends_with("503 Service Unavailable"), "{e}");
        let a = serve_once(b"SSH-2.0-nope\r\n");
        assert!(probe(&a, "/ready", t)
            .unwrap_err()
            .contains("did not answer HTTP"));
    }

    #[test]
    fn a_silent_server_times_out() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let start = Instant::now();
        let e = probe(&addr, "/ready", Duration::from_millis(300)).unwrap_err();
        assert!(e.contains("within 300 ms"), "{e}");
        assert!(start.elapsed() < Duration::from_secs(2));
        drop(l);
    }

    #[test]
    fn refused_and_bad_paths_are_errors() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let e = probe(
            &format!("127.0.0.1:{port}"),
            "/ready",
            Duration::from_secs(2),
        );
        assert!(e.unwrap_err().contains("cannot connect"));
        assert!(probe("127.0.0.1:1", "ready", Duration::from_secs(1)).is_err());
        assert!(probe("127.0.0.1:1", "/a b", Duration::from_secs(1)).is_err());
    }
}
