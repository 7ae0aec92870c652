// ---------------------------------------------------------------------------------------
// Raw servers: the upstream and the callout server
// ---------------------------------------------------------------------------------------

use super::*;

/// A scripted answer.
#[derive(Clone, Debug)]
pub(super) struct Reply {
    /// Wait before answering.
    delay: Duration,
    /// The writes; none: close the connection without answering.
    pub(super) parts: Vec<Vec<u8>>,
    /// Pause between writes.
    pub(super) pause: Duration,
}

impl Reply {
    pub(super) fn whole(bytes: &[u8]) -> Reply {
        Reply {
            delay: Duration::ZERO,
            parts: vec![bytes.to_vec()],
            pause: Duration::ZERO,
        }
    }

    /// A 200 with `content-length`; the head goes with the first part.
    pub(super) fn length(parts: &[&str], pause: Duration) -> Reply {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        let mut writes: Vec<Vec<u8>> = parts.iter().map(|p| p.as_bytes().to_vec()).collect();
        let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {total}\r\nx-up: yes\r\n\r\n");
        writes[0].splice(0..0, head.into_bytes());
        Reply {
            delay: Duration::ZERO,
            parts: writes,
            pause,
        }
    }

    /// A 200, chunked, one chunk per part; the head goes with the first part and the last
    /// chunk with the last.
    pub(super) fn chunked(parts: &[&str], pause: Duration) -> Reply {
        let mut writes: Vec<Vec<u8>> = parts.iter().map(|p| chunk(p.as_bytes())).collect();
        writes[0].splice(
            0..0,
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nx-up: yes\r\n\r\n".to_vec(),
        );
        writes.last_mut().unwrap().extend_from_slice(b"0\r\n\r\n");
        Reply {
            delay: Duration::ZERO,
            parts: writes,
            pause,
        }
    }

    /// Closes the connection without answering.
    pub(super) fn hang_up() -> Reply {
        Reply {
            delay: Duration::ZERO,
            parts: Vec::new(),
            pause: Duration::ZERO,
        }
    }

    pub(super) fn after(mut self, delay: Duration) -> Reply {
        self.delay = delay;
        self
    }
}

pub(super) fn chunk(data: &[u8]) -> Vec<u8> {
    let mut c = format!("{:x}\r\n", data.len()).into_bytes();
    c.extend_from_slice(data);
    c.extend_from_slice(b"\r\n");
    c
}

/// What a server saw of the requests for one path.
#[derive(Default, Debug)]
pub(super) struct Seen {
    /// Complete requests, exact bytes.
    pub(super) complete: Vec<Vec<u8>>,
    /// The request arriving now (its head was complete), exact bytes so far.
    current: Vec<u8>,
    /// Requests whose connection closed before they were complete.
    pub(super) aborted: Vec<Vec<u8>>,
}

#[derive(Default)]
pub(super) struct ServerState {
    pub(super) replies: HashMap<String, Reply>,
    pub(super) seen: HashMap<String, Seen>,
    /// Bytes that were not a request (their connection was dropped).
    garbage: Vec<String>,
}

/// An HTTP/1.1 server on 127.0.0.1 that records the exact bytes of each request.
#[derive(Clone)]
pub(super) struct RawServer {
    pub(super) addr: SocketAddr,
    state: Arc<Mutex<ServerState>>,
}

/// The path (without query) of a request head's first line, once it is complete.
fn head_path(buf: &[u8]) -> Option<String> {
    find(buf, b"\r\n\r\n")?;
    let line_end = find(buf, b"\r\n")?;
    let line = String::from_utf8_lossy(&buf[..line_end]).into_owned();
    let target = line.split(' ').nth(1)?;
    Some(target.split('?').next().unwrap_or("").to_string())
}

impl RawServer {
    pub(super) async fn start() -> RawServer {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = RawServer {
            addr: l.local_addr().unwrap(),
            state: Arc::default(),
        };
        let s = server.clone();
        tokio::spawn(async move {
            while let Ok((conn, _)) = l.accept().await {
                tokio::spawn(s.clone().serve(conn));
            }
        });
        server
    }

    pub(super) fn reply(&self, path: &str, r: Reply) {
        self.state
            .lock()
            .unwrap()
            .replies
            .insert(path.to_string(), r);
    }

    fn with_seen<T>(&self, path: &str, f: impl FnOnce(&mut Seen) -> T) -> T {
        f(self
            .state
            .lock()
            .unwrap()
            .seen
            .entry(path.to_string())
            .or_default())
    }

    pub(super) async fn serve(self, mut conn: TcpStream) {
        let mut buf: Vec<u8> = Vec::new();
        let mut tmp = vec![0u8; 65536];
        loop {
            let mut path: Option<String> = None;
            let used = loop {
                if path.is_none() {
                    path = head_path(&buf);
                }
                if let Some(p) = &path {
                    let snapshot = buf.clone();
                    self.with_seen(p, |s| s.current = snapshot);
                }
                match parse_message(&buf, true, false) {
                    Ok(Some(m)) => break m.raw_len,
                    Ok(None) => {}
                    Err(e) => {
                        let what = format!("{e}: {}", String::from_utf8_lossy(&buf));
                        self.state.lock().unwrap().garbage.push(what);
                        return;
                    }
                }
                let n = match conn.read(&mut tmp).await {
                    Ok(0) | Err(_) => 0,
                    Ok(n) => n,
                };
                if n == 0 {
                    match &path {
                        Some(p) => self.with_seen(p, |s| {
                            let partial = std::mem::take(&mut s.current);
                            s.aborted.push(partial);
                        }),
                        None if !buf.is_empty() => {
                            let what =
                                format!("closed in a head: {}", String::from_utf8_lossy(&buf));
                            self.state.lock().unwrap().garbage.push(what);
                        }
                        None => {}
                    }
                    return;
                }
                buf.extend_from_slice(&tmp[..n]);
            };
            let p = path.expect("a complete request has a head");
            let raw: Vec<u8> = buf.drain(..used).collect();
            self.with_seen(&p, |s| {
                s.current.clear();
                s.complete.push(raw);
            });
            let reply = self
                .state
                .lock()
                .unwrap()
                .replies
                .get(&p)
                .cloned()
                .unwrap_or_else(|| Reply::whole(DONE));
            tokio::time::sleep(reply.delay).await;
            if reply.parts.is_empty() {
                return;
            }
            for (i, part) in reply.parts.iter().enumerate() {
                if i > 0 {
                    tokio::time::sleep(reply.pause).await;
                }
                if conn.write_all(part).await.is_err() {
                    return;
                }
            }
        }
    }

    /// Complete requests for `path`, parsed.
    pub(super) fn requests(&self, path: &str) -> Vec<Message> {
        self.with_seen(path, |s| s.complete.clone())
            .iter()
            .map(|raw| parse_message(raw, true, true).unwrap().unwrap())
            .collect()
    }

    /// Requests for `path` whose connection closed before they were complete.
    pub(super) fn aborted(&self, path: &str) -> Vec<Vec<u8>> {
        self.with_seen(path, |s| s.aborted.clone())
    }

    /// Waits until `n` complete requests for `path` arrived, and returns them.
    pub(super) async fn wait_requests(&self, path: &str, n: usize) -> Vec<Message> {
        let deadline = Instant::now() + WAIT;
        loop {
            let got = self.requests(path);
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "{path}: {} of {n} requests arrived",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Fails if any body byte of a request for `path` reached the server yet (its head may
    /// have).
    pub(super) fn assert_no_body_yet(&self, path: &str) {
        let (complete, current) = self.with_seen(path, |s| (s.complete.len(), s.current.clone()));
        assert_eq!(
            complete, 0,
            "{path}: the request reached the upstream complete before the client sent the last part of its body"
        );
        let body = find(&current, b"\r\n\r\n").map_or(&[][..], |e| &current[e + 4..]);
        assert!(
            body.is_empty(),
            "{path}: body bytes reached the upstream before the client sent the last part of the body (the plugin holds it): {:?}",
            String::from_utf8_lossy(body)
        );
    }

    /// Fails if the body of any request for `path` (complete, arriving or aborted) reached
    /// the server: at most a head did.
    pub(super) fn assert_no_body_ever(&self, path: &str) {
        let (complete, current, aborted) = self.with_seen(path, |s| {
            (s.complete.clone(), s.current.clone(), s.aborted.clone())
        });
        for raw in complete
            .iter()
            .chain(aborted.iter())
            .chain(std::iter::once(&current))
        {
            let body = find(raw, b"\r\n\r\n").map_or(&[][..], |e| &raw[e + 4..]);
            let m = parse_message(raw, true, true).ok().flatten();
            let has_body = m.map_or(!body.is_empty(), |m| !m.body.is_empty());
            assert!(
                !has_body,
                "{path}: the upstream got body bytes: {:?}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    pub(super) fn assert_no_garbage(&self) {
        let g = self.state.lock().unwrap().garbage.clone();
        assert!(g.is_empty(), "bytes that were not a request: {g:?}");
    }
}
