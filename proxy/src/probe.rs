//! `sluice probe`: one plain HTTP/1.1 `GET` to the admin API, for container health checks
//! (the runtime image has no curl). Exit status 0 when the answer is `200`, 1 otherwise.

use std::time::Duration;

/// Sends `GET path` to the admin API at `admin` (`host:port`) and returns the status line when
/// it is `200`, else an error that says what happened, all within `timeout`.
pub fn probe(admin: &str, path: &str, timeout: Duration) -> Result<String, String> {
    if !path.starts_with('/') || path.bytes().any(|b| b.is_ascii_whitespace() || b < 0x20) {
        return Err(format!(
            "--path {path:?}: a path starting with / without spaces"
        ));
    }
    let answer = sluice::admin_client::call(admin, "GET", path, None, timeout)?;
    if answer.status == 200 {
        Ok(answer.status_line)
    } else {
        Err(format!("GET http://{admin}{path}: {}", answer.status_line))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::time::Instant;

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
