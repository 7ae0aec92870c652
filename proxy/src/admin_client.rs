//! A minimal HTTP/1.1 client for a running sluice's own admin API, used by `sluice reload`
//! (`POST /reload`) and `sluice probe` (`GET /ready` in containers, which have no curl).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// The most of an answer that is read (admin answers are small JSON or text).
const MAX_ANSWER: usize = 1 << 20;

/// An answer of the admin API.
#[derive(Debug)]
pub struct Answer {
    /// Its status code.
    pub status: u16,
    /// Its status line (`HTTP/1.1 200 OK`).
    pub status_line: String,
    /// Its body (lossy UTF-8).
    pub body: String,
}

/// Sends `METHOD path` (with a bearer `token` if given) to the admin API at `admin`
/// (`host:port`) and returns its answer, whatever the status. The whole exchange (name
/// resolution aside) takes at most `timeout`; errors say what failed.
pub fn call(
    admin: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    timeout: Duration,
) -> Result<Answer, String> {
    let deadline = Instant::now() + timeout;
    let timed_out = || format!("no answer from {admin} within {} ms", timeout.as_millis());
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
    let auth = token.map_or(String::new(), |t| format!("authorization: Bearer {t}\r\n"));
    let request = format!(
        "{method} {path} HTTP/1.1\r\nhost: {admin}\r\nuser-agent: sluice\r\n{auth}\
         content-length: 0\r\nconnection: close\r\n\r\n"
    );
    stream
        .set_write_timeout(Some(remaining(deadline).ok_or_else(timed_out)?))
        .and_then(|()| stream.write_all(request.as_bytes()))
        .map_err(|e| format!("cannot send the request to {admin}: {e}"))?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    while raw.len() < MAX_ANSWER {
        let left = remaining(deadline).ok_or_else(timed_out)?;
        stream
            .set_read_timeout(Some(left))
            .map_err(|e| format!("socket: {e}"))?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
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
    }
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status_line = head.lines().next().unwrap_or_default().trim().to_string();
    let mut parts = status_line.split_whitespace();
    let status = match (
        parts.next(),
        parts.next().and_then(|c| c.parse::<u16>().ok()),
    ) {
        (Some(v), Some(code)) if v.starts_with("HTTP/") => code,
        _ => return Err(format!("{admin} did not answer HTTP (got {status_line:?})")),
    };
    Ok(Answer {
        status,
        status_line,
        body: body.to_string(),
    })
}

fn remaining(deadline: Instant) -> Option<Duration> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
}
