//! Proxy-Wasm conformance (issue 13): the real `sluice` binary running the conformance test
//! plugins (`tests/plugins/conformance`, built with the public Rust SDK, and
//! `tests/plugins/conformance-raw`, built with no SDK at all) between raw clients and raw
//! servers that see every byte.
//!
//! Expectations follow the Proxy-Wasm ABI v0.2.1 specification and the reference host
//! (Envoy's Wasm filter over proxy-wasm-cpp-host): a plugin built with a public SDK must
//! behave here exactly as it does there. The plugins' contract is in
//! `tests/plugins/README.md`; they are built by `make wasm`.
//!
//! - the upstream and the callout server are [`RawServer`]s: they parse each request's
//!   framing themselves, keep its exact bytes (and the bytes of a request still arriving),
//!   and answer with scripted bytes, in several writes with pauses if asked;
//! - the HTTP/1 client writes a head, then a body in several writes with pauses, and returns
//!   every byte it got until the proxy closed the connection (requests say
//!   `connection: close`);
//! - the HTTP/2 client (`h2`) sends DATA frames with pauses.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::{join_all, LocalBoxFuture};
use futures_util::FutureExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use support::*;

/// Pause between the writes of a body (client and upstream alike).
const PAUSE: Duration = Duration::from_millis(40);

/// Longest wait for anything (an answer, a close, a log line): nothing here should take
/// more than a fraction of it.
const WAIT: Duration = Duration::from_secs(5);

/// The upstream's answer to any request without a scripted reply.
const DONE: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\nx-up: yes\r\n\r\ndone";

// ---------------------------------------------------------------------------------------
// HTTP/1.1 messages, parsed from raw bytes
// ---------------------------------------------------------------------------------------

/// How a message's body was delimited.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Framing {
    /// `content-length: N`.
    Length(usize),
    /// `transfer-encoding: chunked`.
    Chunked,
    /// A response without either: until the connection closed.
    Close,
    /// No body (a request without framing headers, or a status without body).
    Empty,
}

/// One HTTP/1.1 message.
#[derive(Debug, Clone)]
struct Message {
    /// The request line or the status line.
    start: String,
    /// Header names lower-cased, values as sent, in order.
    headers: Vec<(String, String)>,
    /// The body, decoded (chunks joined).
    body: Vec<u8>,
    framing: Framing,
    /// Bytes of the input the message took.
    raw_len: usize,
}

impl Message {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn status(&self) -> u16 {
        self.start
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0)
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    find(hay, needle).is_some()
}

/// Decodes a chunked body at the start of `buf`: the body and the bytes it took, `None` if
/// incomplete.
fn dechunk(buf: &[u8]) -> Result<Option<(Vec<u8>, usize)>, String> {
    let mut i = 0;
    let mut out = Vec::new();
    loop {
        let Some(e) = find(&buf[i..], b"\r\n") else {
            return Ok(None);
        };
        let line = String::from_utf8_lossy(&buf[i..i + e]).into_owned();
        let size_text = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| format!("bad chunk size line {line:?}"))?;
        i += e + 2;
        if size == 0 {
            // Trailer fields, then an empty line.
            loop {
                let Some(e) = find(&buf[i..], b"\r\n") else {
                    return Ok(None);
                };
                i += e + 2;
                if e == 0 {
                    return Ok(Some((out, i)));
                }
            }
        }
        if buf.len() < i + size + 2 {
            return Ok(None);
        }
        out.extend_from_slice(&buf[i..i + size]);
        if &buf[i + size..i + size + 2] != b"\r\n" {
            return Err(format!("chunk of {size} bytes not followed by CRLF"));
        }
        i += size + 2;
    }
}

/// Parses the HTTP/1.1 message at the start of `buf`. `Ok(None)`: not complete yet. `eof`:
/// nothing more will come (a response without framing runs to the end). A message with both
/// `content-length` and `transfer-encoding`, several or bad `content-length`s, or a transfer
/// coding other than `chunked` is an error: the framing must be unambiguous.
fn parse_message(buf: &[u8], request: bool, eof: bool) -> Result<Option<Message>, String> {
    let Some(head_end) = find(buf, b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|e| format!("head: {e}"))?;
    let mut lines = head.split("\r\n");
    let start = lines.next().unwrap_or("").to_string();
    let mut headers = Vec::new();
    for l in lines {
        let (k, v) = l
            .split_once(':')
            .ok_or_else(|| format!("bad header line {l:?}"))?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let body_start = head_end + 4;
    let mut m = Message {
        start,
        headers,
        body: Vec::new(),
        framing: Framing::Empty,
        raw_len: body_start,
    };
    let te = m.all("transfer-encoding");
    let cl = m.all("content-length");
    if !te.is_empty() && !cl.is_empty() {
        return Err(format!(
            "both transfer-encoding and content-length: {:?}",
            m.headers
        ));
    }
    if !te.is_empty() {
        if te != ["chunked"] {
            return Err(format!("transfer-encoding {te:?}"));
        }
        m.framing = Framing::Chunked;
        return Ok(dechunk(&buf[body_start..])?.map(|(body, used)| {
            m.body = body;
            m.raw_len = body_start + used;
            m
        }));
    }
    if !cl.is_empty() {
        if cl.len() != 1 {
            return Err(format!("content-length {cl:?}"));
        }
        let n: usize = cl[0]
            .parse()
            .map_err(|_| format!("content-length {:?}", cl[0]))?;
        m.framing = Framing::Length(n);
        if buf.len() < body_start + n {
            return Ok(None);
        }
        m.body = buf[body_start..body_start + n].to_vec();
        m.raw_len = body_start + n;
        return Ok(Some(m));
    }
    let status = m.status();
    if request || status < 200 || status == 204 || status == 304 {
        return Ok(Some(m));
    }
    if !eof {
        return Ok(None);
    }
    m.framing = Framing::Close;
    m.body = buf[body_start..].to_vec();
    m.raw_len = buf.len();
    Ok(Some(m))
}

/// `bytes` as exactly one complete response (what a client read until the close): fails on
/// anything else, e.g. bytes after the response.
fn one_response(bytes: &[u8]) -> Message {
    let text = String::from_utf8_lossy(bytes);
    let m = match parse_message(bytes, false, true) {
        Ok(Some(m)) => m,
        Ok(None) => panic!("incomplete response:\n{text}"),
        Err(e) => panic!("bad response ({e}):\n{text}"),
    };
    assert_eq!(m.raw_len, bytes.len(), "bytes after the response:\n{text}");
    m
}

// ---------------------------------------------------------------------------------------
// Raw servers: the upstream and the callout server
// ---------------------------------------------------------------------------------------

/// A scripted answer.
#[derive(Clone, Debug)]
struct Reply {
    /// Wait before answering.
    delay: Duration,
    /// The writes; none: close the connection without answering.
    parts: Vec<Vec<u8>>,
    /// Pause between writes.
    pause: Duration,
}

impl Reply {
    fn whole(bytes: &[u8]) -> Reply {
        Reply {
            delay: Duration::ZERO,
            parts: vec![bytes.to_vec()],
            pause: Duration::ZERO,
        }
    }

    /// A 200 with `content-length`; the head goes with the first part.
    fn length(parts: &[&str], pause: Duration) -> Reply {
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
    fn chunked(parts: &[&str], pause: Duration) -> Reply {
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
    fn hang_up() -> Reply {
        Reply {
            delay: Duration::ZERO,
            parts: Vec::new(),
            pause: Duration::ZERO,
        }
    }

    fn after(mut self, delay: Duration) -> Reply {
        self.delay = delay;
        self
    }
}

fn chunk(data: &[u8]) -> Vec<u8> {
    let mut c = format!("{:x}\r\n", data.len()).into_bytes();
    c.extend_from_slice(data);
    c.extend_from_slice(b"\r\n");
    c
}

/// What a server saw of the requests for one path.
#[derive(Default, Debug)]
struct Seen {
    /// Complete requests, exact bytes.
    complete: Vec<Vec<u8>>,
    /// The request arriving now (its head was complete), exact bytes so far.
    current: Vec<u8>,
    /// Requests whose connection closed before they were complete.
    aborted: Vec<Vec<u8>>,
}

#[derive(Default)]
struct ServerState {
    replies: HashMap<String, Reply>,
    seen: HashMap<String, Seen>,
    /// Bytes that were not a request (their connection was dropped).
    garbage: Vec<String>,
}

/// An HTTP/1.1 server on 127.0.0.1 that records the exact bytes of each request.
#[derive(Clone)]
struct RawServer {
    addr: SocketAddr,
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
    async fn start() -> RawServer {
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

    fn reply(&self, path: &str, r: Reply) {
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

    async fn serve(self, mut conn: TcpStream) {
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
    fn requests(&self, path: &str) -> Vec<Message> {
        self.with_seen(path, |s| s.complete.clone())
            .iter()
            .map(|raw| parse_message(raw, true, true).unwrap().unwrap())
            .collect()
    }

    /// Requests for `path` whose connection closed before they were complete.
    fn aborted(&self, path: &str) -> Vec<Vec<u8>> {
        self.with_seen(path, |s| s.aborted.clone())
    }

    /// Waits until `n` complete requests for `path` arrived, and returns them.
    async fn wait_requests(&self, path: &str, n: usize) -> Vec<Message> {
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
    fn assert_no_body_yet(&self, path: &str) {
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
    fn assert_no_body_ever(&self, path: &str) {
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

    fn assert_no_garbage(&self) {
        let g = self.state.lock().unwrap().garbage.clone();
        assert!(g.is_empty(), "bytes that were not a request: {g:?}");
    }
}

// ---------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------

/// How the client frames a request body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Via {
    /// HTTP/1.1 with `content-length`.
    Length,
    /// HTTP/1.1, chunked.
    Chunked,
    /// HTTP/2 DATA frames (no `content-length`).
    H2,
}

impl Via {
    fn name(self) -> &'static str {
        match self {
            Via::Length => "cl",
            Via::Chunked => "chunked",
            Via::H2 => "h2",
        }
    }
}

/// An HTTP/1.1 request head (with `host` and `connection: close`) for a body of `parts`.
fn h1_head(method: &str, path: &str, headers: &[(&str, &str)], via: Via, parts: &[&str]) -> String {
    let mut h = format!("{method} {path} HTTP/1.1\r\nhost: conf.test\r\nconnection: close\r\n");
    for (k, v) in headers {
        h.push_str(&format!("{k}: {v}\r\n"));
    }
    if !parts.is_empty() {
        match via {
            Via::Chunked => h.push_str("transfer-encoding: chunked\r\n"),
            _ => {
                let n: usize = parts.iter().map(|p| p.len()).sum();
                h.push_str(&format!("content-length: {n}\r\n"));
            }
        }
    }
    h.push_str("\r\n");
    h
}

/// The writes of a body of `parts` framed as `via` (the last chunk with the last part).
fn h1_body(via: Via, parts: &[&str]) -> Vec<Vec<u8>> {
    let mut w: Vec<Vec<u8>> = parts
        .iter()
        .map(|p| match via {
            Via::Chunked => chunk(p.as_bytes()),
            _ => p.as_bytes().to_vec(),
        })
        .collect();
    if via == Via::Chunked {
        if let Some(last) = w.last_mut() {
            last.extend_from_slice(b"0\r\n\r\n");
        }
    }
    w
}

/// An HTTP/1.1 client connection.
struct H1 {
    s: TcpStream,
}

impl H1 {
    async fn connect(addr: SocketAddr) -> H1 {
        H1 {
            s: TcpStream::connect(addr).await.unwrap(),
        }
    }

    /// Writes `bytes`; false if the proxy closed the connection already.
    async fn send(&mut self, bytes: &[u8]) -> bool {
        self.s.write_all(bytes).await.is_ok()
    }

    /// Reads until the proxy closes the connection; fails after [`WAIT`].
    async fn read_to_end(mut self) -> Vec<u8> {
        let mut out = Vec::new();
        let read = tokio::time::timeout(WAIT, self.s.read_to_end(&mut out)).await;
        match read {
            Ok(_) => out,
            Err(_) => panic!(
                "the proxy did not close the connection within {WAIT:?}; got so far:\n{}",
                String::from_utf8_lossy(&out)
            ),
        }
    }

    /// Reads until a response head arrived (and returns it with what followed).
    async fn read_head(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        let deadline = tokio::time::Instant::now() + WAIT;
        while find(&out, b"\r\n\r\n").is_none() {
            match tokio::time::timeout_at(deadline, self.s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => panic!(
                    "closed before a response head: {}",
                    String::from_utf8_lossy(&out)
                ),
                Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
                Err(_) => panic!("no response head within {WAIT:?}"),
            }
        }
        out
    }
}

/// A body sent while a plugin buffers it: before each write after the first, the client
/// waits until plugin `a` reported (in `on_request_body`) every byte sent so far, so each
/// write is a read of its own and the plugin sees it; before the last write, the upstream
/// must have no body byte yet.
#[derive(Clone, Copy)]
struct Watch<'a> {
    proxy: &'a Sluice,
    up: &'a RawServer,
    /// The upstream's path of the request.
    path: &'a str,
    /// The request's `x-conf-id`.
    req: &'a str,
    /// The body bytes of each write.
    sizes: &'a [usize],
}

impl Watch<'_> {
    /// Before write `i`: paces the writes; false when pacing stops (the request went on
    /// without its body: the proxy answered, the context ended, or the upstream has a
    /// complete request; the assertions after the exchange tell what went wrong).
    async fn before_write(&self, i: usize, pacing: bool) -> bool {
        let mut pacing = pacing && i > 0;
        if pacing {
            let so_far: usize = self.sizes[..i].iter().sum();
            let deadline = Instant::now() + WAIT;
            loop {
                let lines = match lines_of(self.proxy, "a", self.req) {
                    Ended::No(l) => l,
                    Ended::Yes(_) | Ended::VmFailed(..) => {
                        pacing = false;
                        break;
                    }
                };
                if lines
                    .iter()
                    .any(|l| l.what == "on_request_body" && l.num("len") as usize == so_far)
                {
                    break;
                }
                let went_on = lines.iter().any(|l| {
                    ["on_request_body", "on_response_headers"].contains(&l.what.as_str())
                        && l.fields.get("eos").is_some_and(|e| e == "true")
                }) || !self.up.requests(self.path).is_empty();
                if went_on || Instant::now() > deadline {
                    pacing = false;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        if i + 1 == self.sizes.len() {
            self.up.assert_no_body_yet(self.path);
        }
        pacing || i == 0
    }
}

/// One HTTP/1.1 exchange: the head, then each body write after [`PAUSE`] (and, with a
/// [`Watch`], once the plugin saw the previous ones). Returns every byte the client got.
async fn h1_exchange(
    addr: SocketAddr,
    head: &str,
    writes: &[Vec<u8>],
    watch: Option<Watch<'_>>,
) -> Vec<u8> {
    let mut c = H1::connect(addr).await;
    c.send(head.as_bytes()).await;
    let mut pacing = true;
    for (i, w) in writes.iter().enumerate() {
        tokio::time::sleep(PAUSE).await;
        if let Some(watch) = watch {
            pacing = watch.before_write(i, pacing).await;
        }
        if !c.send(w).await {
            break;
        }
    }
    c.read_to_end().await
}

/// An HTTP/2 response.
#[derive(Debug)]
struct H2Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl H2Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// An HTTP/2 connection (prior knowledge, as the listener speaks h2c).
async fn h2_connect(addr: SocketAddr) -> h2::client::SendRequest<Bytes> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (send, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

/// One request on an HTTP/2 connection: headers, then each part as a DATA frame after
/// [`PAUSE`] (the last one ends the stream); `watch` as for [`h1_exchange`].
async fn h2_exchange(
    send: &h2::client::SendRequest<Bytes>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    parts: &[&str],
    watch: Option<Watch<'_>>,
) -> Result<H2Response, H2Failure> {
    let mut status = None;
    let mut out = Vec::new();
    let exchange = async {
        let mut req = http::Request::builder()
            .method(method)
            .uri(format!("http://conf.test{path}"));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let mut send = send.clone().ready().await?;
        let (response, mut stream) = send.send_request(req.body(()).unwrap(), parts.is_empty())?;
        let mut pacing = true;
        for (i, p) in parts.iter().enumerate() {
            tokio::time::sleep(PAUSE).await;
            let last = i + 1 == parts.len();
            if let Some(watch) = watch {
                pacing = watch.before_write(i, pacing).await;
            }
            if stream
                .send_data(Bytes::copy_from_slice(p.as_bytes()), last)
                .is_err()
            {
                // The stream ended already (the proxy answered or reset it): see how.
                break;
            }
        }
        let response = response.await?;
        status = Some(response.status().as_u16());
        let headers = response
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let mut body = response.into_body();
        while let Some(data) = body.data().await {
            let data = data?;
            let _ = body.flow_control().release_capacity(data.len());
            out.extend_from_slice(&data);
        }
        Ok(headers)
    };
    let r: Result<Vec<(String, String)>, h2::Error> = tokio::time::timeout(WAIT, exchange)
        .await
        .unwrap_or_else(|_| panic!("HTTP/2 {method} {path}: no answer within {WAIT:?}"));
    match r {
        Ok(headers) => Ok(H2Response {
            status: status.unwrap_or(0),
            headers,
            body: out,
        }),
        Err(error) => Err(H2Failure {
            error,
            status,
            body: out,
        }),
    }
}

/// An HTTP/2 exchange that failed: the error, and what came before it.
#[derive(Debug)]
struct H2Failure {
    error: h2::Error,
    /// The response's status, if its head came.
    status: Option<u16>,
    /// The response body received before the error.
    body: Vec<u8>,
}

impl std::fmt::Display for H2Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self.status {
            None => write!(f, "{} (before any response head)", self.error),
            Some(s) => write!(
                f,
                "{} after response head {s} and body {:?}",
                self.error,
                String::from_utf8_lossy(&self.body)
            ),
        }
    }
}

// ---------------------------------------------------------------------------------------
// The plugins' log lines
// ---------------------------------------------------------------------------------------

/// One line a conformance plugin logged: `conf <tag> <callback> key=value…` or
/// `raw <callback> key=value…` (tag `raw`).
#[derive(Debug, Clone)]
struct Line {
    tag: String,
    what: String,
    fields: HashMap<String, String>,
    text: String,
}

impl Line {
    fn get(&self, key: &str) -> &str {
        self.fields
            .get(key)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("no {key}= in {:?}", self.text))
    }

    fn num(&self, key: &str) -> u64 {
        self.get(key)
            .parse()
            .unwrap_or_else(|_| panic!("{key}= is not a number in {:?}", self.text))
    }
}

/// The value of field `plugin` of a log line (quoted or not).
fn plugin_field(line: &str) -> Option<&str> {
    let at = line.rfind(" plugin=")?;
    let v = &line[at + " plugin=".len()..];
    let v = v.split(' ').next()?;
    Some(v.trim_matches('"'))
}

/// The plugins' lines in the proxy's log, in order. Besides the conformance plugins' own
/// lines: `panic` (the SDK's panic message, with its detail line) and `vm_failed` (Sluice
/// replaced the plugin's VM: every context in it is gone), tagged with the plugin's name.
fn plugin_lines(logs: &str) -> Vec<Line> {
    let mut out = Vec::new();
    // The last line may still be being written.
    let complete = logs.rsplit_once('\n').map_or("", |(done, _)| done);
    let all: Vec<&str> = complete.lines().collect();
    for (i, l) in all.iter().enumerate() {
        let Some(at) = l.find("sluice::plugin: ") else {
            continue;
        };
        let msg = &l[at + "sluice::plugin: ".len()..];
        if msg.starts_with("panicked at") || msg.starts_with("plugin failed") {
            let detail = if msg.starts_with("panicked at") {
                all.get(i + 1).copied().unwrap_or("")
            } else {
                l
            };
            let Some(tag) = plugin_field(detail) else {
                continue;
            };
            let phase = detail
                .split(" phase=")
                .nth(1)
                .and_then(|p| p.split(' ').next())
                .unwrap_or("")
                .trim_matches('"');
            out.push(Line {
                tag: tag.to_string(),
                what: if msg.starts_with("panicked at") {
                    "panic"
                } else {
                    "vm_failed"
                }
                .to_string(),
                fields: HashMap::from([("phase".to_string(), phase.to_string())]),
                text: format!("{msg} {}", detail.split(" plugin=").next().unwrap_or("")),
            });
            continue;
        }
        let msg = msg.rsplit_once(" plugin=").map_or(msg, |(m, _)| m);
        let words: Vec<&str> = msg.split(' ').collect();
        let (tag, what, rest) = match words.first() {
            Some(&"conf") if words.len() >= 3 => (words[1], words[2], &words[3..]),
            Some(&"raw") if words.len() >= 2 => ("raw", words[1], &words[2..]),
            _ => continue,
        };
        let fields = rest
            .iter()
            .filter_map(|w| w.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        out.push(Line {
            tag: tag.to_string(),
            what: what.to_string(),
            fields,
            text: msg.to_string(),
        });
    }
    out
}

/// What became of a request's context so far.
enum Ended {
    /// Its `on_delete` came: every line from its `on_context_create` on.
    Yes(Vec<Line>),
    /// Not yet: its lines so far.
    No(Vec<Line>),
    /// The plugin's VM failed after the request's first line (its lines, and the failure's
    /// lines): the context will never end properly.
    VmFailed(Vec<Line>, Vec<Line>),
}

/// The lines of plugin `tag`'s context for the request whose `x-conf-id` is `req`, from its
/// `on_context_create` on. Each plugin has one VM, so a context id names one request, except
/// after a VM was replaced: only the lines between that context's creation and deletion (or
/// the VM's failure) count.
fn lines_of(proxy: &Sluice, tag: &str, req: &str) -> Ended {
    let all: Vec<Line> = plugin_lines(&proxy.logs())
        .into_iter()
        .filter(|l| l.tag == tag)
        .collect();
    let mine = |l: &Line| l.fields.get("req").map(String::as_str) == Some(req);
    let mut lines = Vec::new();
    let Some(first) = all.iter().position(mine) else {
        return Ended::No(lines);
    };
    let ctx = all[first].get("ctx").to_string();
    let same = |l: &Line| {
        l.fields.get("ctx") == Some(&ctx)
            && !["on_tick", "on_vm_start", "on_configure"].contains(&l.what.as_str())
    };
    let start = all[..first]
        .iter()
        .rposition(|l| same(l) && l.what == "on_context_create")
        .unwrap_or(first);
    let mut failure = Vec::new();
    for l in &all[start..] {
        if l.what == "panic" {
            failure.push(l.clone());
        } else if l.what == "vm_failed" {
            failure.push(l.clone());
            return Ended::VmFailed(lines, failure);
        } else if same(l) {
            lines.push(l.clone());
            if l.what == "on_delete" {
                return Ended::Yes(lines);
            }
            failure.clear();
        }
    }
    Ended::No(lines)
}

/// Plugin `tag`'s lines for request `req` so far (for a failure message; no waiting).
fn lines_now(proxy: &Sluice, tag: &str, req: &str) -> Vec<String> {
    match lines_of(proxy, tag, req) {
        Ended::Yes(l) | Ended::No(l) => texts(&l).iter().map(|t| t.to_string()).collect(),
        Ended::VmFailed(l, f) => texts(&l)
            .iter()
            .chain(texts(&f).iter())
            .map(|t| t.to_string())
            .collect(),
    }
}

/// Plugin `tag`'s lines for request `req`, once its context ended (`on_delete`); waits at
/// most [`WAIT`], and fails at once if the plugin's VM failed meanwhile.
async fn request_lines(proxy: &Sluice, tag: &str, req: &str) -> Vec<Line> {
    let deadline = Instant::now() + WAIT;
    loop {
        let lines = match lines_of(proxy, tag, req) {
            Ended::Yes(lines) => return lines,
            Ended::VmFailed(lines, failure) => panic!(
                "plugin {tag}: its VM failed while request {req} was in it, so the context never ended (no on_log/on_done/on_delete after it): {:#?}\nthe failure: {:#?}",
                texts(&lines),
                texts(&failure)
            ),
            Ended::No(lines) => lines,
        };
        assert!(
            Instant::now() < deadline,
            "plugin {tag}: request {req} did not end (no on_delete) within {WAIT:?}; its lines: {:#?}\nwarnings and errors in the log:\n{}",
            texts(&lines),
            problems(&proxy.logs())
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The WARN and ERROR lines of a log (cut to 300 characters each).
fn problems(logs: &str) -> String {
    logs.lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .map(|l| l.chars().take(300).collect::<String>())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Waits until a line of plugin `tag` matches `pred`.
async fn wait_line(proxy: &Sluice, tag: &str, what: &str, pred: impl Fn(&Line) -> bool) -> Line {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(l) = plugin_lines(&proxy.logs())
            .into_iter()
            .find(|l| l.tag == tag && l.what == what && pred(l))
        {
            return l;
        }
        assert!(
            Instant::now() < deadline,
            "no {tag} {what} line as expected within {WAIT:?}; warnings and errors in the log:\n{}",
            problems(&proxy.logs())
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn texts(lines: &[Line]) -> Vec<&str> {
    lines.iter().map(|l| l.text.as_str()).collect()
}

/// The callbacks of `lines` (events such as `dispatch` or `rewrite` left out).
fn callbacks(lines: &[Line]) -> Vec<&str> {
    lines
        .iter()
        .map(|l| l.what.as_str())
        .filter(|w| w.starts_with("on_"))
        .collect()
}

/// The request's context ended properly: `on_log`, `on_done` and `on_delete` exactly once
/// each, after every other callback, `on_delete` last. Returns the `on_log` line.
fn assert_ended_once(lines: &[Line]) -> Line {
    let cbs = callbacks(lines);
    let count = |w: &str| cbs.iter().filter(|c| **c == w).count();
    for w in ["on_log", "on_done", "on_delete"] {
        assert_eq!(
            count(w),
            1,
            "{w} must run exactly once: {:#?}",
            texts(lines)
        );
    }
    let n = cbs.len();
    assert_eq!(
        cbs[n - 1],
        "on_delete",
        "on_delete last: {:#?}",
        texts(lines)
    );
    let mut tail = cbs[n - 3..n - 1].to_vec();
    tail.sort_unstable();
    // The spec has on_done before on_log; Envoy logs (on_log) before it destroys the filter
    // (on_done, on_delete). Either order, after every stream callback.
    assert_eq!(
        tail,
        ["on_done", "on_log"],
        "on_log and on_done after every other callback: {:#?}",
        texts(lines)
    );
    lines.iter().find(|l| l.what == "on_log").unwrap().clone()
}

/// The `len` and `eos` of each body callback `what` in `lines`.
fn body_calls(lines: &[Line], what: &str) -> Vec<(usize, bool, String)> {
    lines
        .iter()
        .filter(|l| l.what == what)
        .map(|l| {
            (
                l.num("len") as usize,
                l.get("eos") == "true",
                l.get("action").to_string(),
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// The proxy
// ---------------------------------------------------------------------------------------

fn plugin_file(name: &str) -> PathBuf {
    let p = target_dir().join("wasm32-wasip1/release").join(name);
    assert!(
        p.is_file(),
        "{} is missing: build it with `make wasm` first",
        p.display()
    );
    p
}

/// A sluice with the conformance plugins in front of a raw upstream, and a raw callout
/// server (upstream `callout`).
struct Env {
    proxy: Sluice,
    up: RawServer,
    callout: RawServer,
}

/// Routes: `/one/` runs plugin `a`; `/chain/` runs `a` then `b`; `/raw/` runs the raw
/// plugin. Each plugin has one VM, so its context ids are unique in the log.
async fn start() -> Env {
    let up = RawServer::start().await;
    let callout = RawServer::start().await;
    let dir = temp_dir("conformance");
    std::fs::copy(
        plugin_file("sluice_test_plugin_conformance.wasm"),
        dir.join("conf.wasm"),
    )
    .unwrap();
    std::fs::copy(
        plugin_file("sluice_test_plugin_conformance_raw.wasm"),
        dir.join("raw.wasm"),
    )
    .unwrap();
    let limits = "limits: { pause_timeout_ms: 3000 }";
    let config = format!(
        "server: {{ threads: 2, grace_period_seconds: 1 }}\n\
         listeners: [{{ name: public, address: '{{LISTEN}}' }}]\n\
         admin: {{ address: '{{ADMIN}}' }}\n\
         upstreams:\n\
         \x20 backend: {{ endpoints: ['{}'] }}\n\
         \x20 callout: {{ endpoints: ['{}'] }}\n\
         routes:\n\
         \x20 - {{ name: one, match: {{ path_prefix: '/one/' }}, upstream: backend, plugins: [a] }}\n\
         \x20 - {{ name: chain, match: {{ path_prefix: '/chain/' }}, upstream: backend, plugins: [a, b] }}\n\
         \x20 - {{ name: raw, match: {{ path_prefix: '/raw/' }}, upstream: backend, plugins: [raw] }}\n\
         plugins:\n\
         \x20 a: {{ path: conf.wasm, vms: 1, config: {{ tag: a }}, allowed_upstreams: [callout], {limits} }}\n\
         \x20 b: {{ path: conf.wasm, vms: 1, config: {{ tag: b }}, allowed_upstreams: [callout], {limits} }}\n\
         \x20 raw: {{ path: raw.wasm, vms: 1, allowed_upstreams: [callout], {limits} }}\n",
        up.addr, callout.addr
    );
    let proxy = Sluice::start_in(&config, dir).await;
    Env { proxy, up, callout }
}

/// Every plugin context is gone (none leaked).
async fn assert_no_context_left(proxy: &Sluice) {
    for p in ["a", "b", "raw"] {
        proxy
            .wait_metric(&format!("sluice_plugin_contexts{{plugin=\"{p}\"}}"), 0.0)
            .await;
    }
}

/// `op` applied to `body` (see the plugin's `req-op` directive).
fn apply(op: &str, body: &[u8]) -> Vec<u8> {
    if op == "upper" {
        return body.to_ascii_uppercase();
    }
    if op == "clear" {
        return Vec::new();
    }
    let (what, s) = op.split_once(':').unwrap();
    let s = s.as_bytes();
    match what {
        "prepend" => [s, body].concat(),
        "append" => [body, s].concat(),
        "replace" => s.to_vec(),
        _ => panic!("op {op}"),
    }
}

const OPS: [(&str, &str); 5] = [
    ("upper", "upper"),
    ("prepend", "prepend:pre-"),
    ("append", "append:-post"),
    ("replace", "replace:new"),
    ("clear", "clear"),
];

/// The request body of the request-body tests, as the client writes it.
const REQUEST_PARTS: [&str; 4] = ["hello ", "confor", "mance ", "body"];

/// The framing of a message whose body is `len` bytes is consistent (each message parser
/// above already refuses ambiguous framing).
fn assert_framing(m: &Message, len: usize, what: &str) {
    match m.framing {
        Framing::Length(n) => assert_eq!(n, len, "{what}: content-length {n}, body {len}"),
        Framing::Chunked => {}
        ref f => panic!("{what}: framing {f:?}: {m:?}"),
    }
}

/// A named case of a test.
type Case<'a> = (String, LocalBoxFuture<'a, ()>);

fn panic_text(e: &(dyn std::any::Any + Send)) -> String {
    e.downcast_ref::<String>()
        .cloned()
        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "(no message)".to_string())
}

/// Runs every case (all at once if `together`, else one after the other, each once every
/// plugin of `proxy` has its VM: a case that made a VM fail does not fail the next one),
/// then fails naming each case that failed with the start of its message (the whole message
/// was printed when it failed), so that one run shows every case that does not pass.
async fn run_cases(proxy: &Sluice, together: bool, cases: Vec<Case<'_>>) {
    let total = cases.len();
    let guarded = cases.into_iter().map(|(name, f)| async move {
        let r = AssertUnwindSafe(f).catch_unwind().await;
        (name, r.err().map(|e| panic_text(&*e)))
    });
    let results: Vec<(String, Option<String>)> = if together {
        join_all(guarded).await
    } else {
        let mut out = Vec::new();
        for g in guarded {
            for p in ["a", "b", "raw"] {
                proxy
                    .wait_metric(&format!("sluice_plugin_vms{{plugin=\"{p}\"}}"), 1.0)
                    .await;
            }
            out.push(g.await);
        }
        out
    };
    let failed: Vec<String> = results
        .into_iter()
        .filter_map(|(name, e)| {
            e.map(|e| {
                let short: String = e.chars().take(700).collect();
                format!("--- {name}: {short}")
            })
        })
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {total} cases failed:\n{}",
        failed.len(),
        failed.join("\n")
    );
}

/// A message's header fields as a sorted set, for an exact comparison: without the framing
/// headers (`content-length`, `transfer-encoding`: see [`assert_framing`]) and the
/// connection's own (`date`, `connection`), with the value of `x-request-id` (random) as `*`.
fn header_set(headers: &[(String, String)]) -> Vec<(String, String)> {
    let mut set: Vec<(String, String)> = headers
        .iter()
        .filter(|(k, _)| {
            !["content-length", "transfer-encoding", "date", "connection"].contains(&k.as_str())
        })
        .map(|(k, v)| {
            let k = k.to_ascii_lowercase();
            let v = if k == "x-request-id" {
                "*".to_string()
            } else {
                v.clone()
            };
            (k, v)
        })
        .collect();
    set.sort();
    set
}

/// `pairs` as a sorted set (see [`header_set`]).
fn want_set(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut set: Vec<(String, String)> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    set.sort();
    set
}

/// What Sluice adds to every request it forwards (the request id is random).
const FORWARDING: [(&str, &str); 3] = [
    ("x-request-id", "*"),
    ("x-forwarded-for", "127.0.0.1"),
    ("x-forwarded-proto", "http"),
];

// ---------------------------------------------------------------------------------------
// 1. Buffered request bodies, rewritten
// ---------------------------------------------------------------------------------------

/// A plugin pauses `on_request_body` until the end of the body (which the client sends in
/// four writes), then rewrites the whole buffer with one `proxy_set_buffer_bytes`: upper-case
/// `(0, len)`, prepend `(0, 0)`, append `(len, 0)`, replace `(0, len)`, clear `(0, len)` with
/// nothing. The upstream gets no byte of the body before the client's last write, then
/// exactly the rewritten body with consistent framing; each body callback reports the
/// cumulative size; the client gets the upstream's response and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffered_request_bodies_are_rewritten_and_forwarded_whole() {
    let env = start().await;
    let original: Vec<u8> = REQUEST_PARTS.concat().into_bytes();
    let cases: Vec<(Via, &str, &str)> = [Via::Length, Via::Chunked, Via::H2]
        .iter()
        .flat_map(|v| OPS.iter().map(move |(name, op)| (*v, *name, *op)))
        .collect();
    let h2 = h2_connect(env.proxy.addr).await;
    let runs = cases.iter().map(|&(via, name, op)| {
        let env = &env;
        let h2 = &h2;
        let original = &original;
        let case = async move {
            let id = format!("rb-{}-{name}", via.name());
            let path = format!("/one/rb/{}/{name}", via.name());
            let headers = [
                ("x-conf-id", id.as_str()),
                ("x-conf-req-body", "buffer"),
                ("x-conf-req-op", op),
            ];
            let what = format!("{} {op}", via.name());
            let sizes: Vec<usize> = REQUEST_PARTS.iter().map(|p| p.len()).collect();
            let watch = Watch {
                proxy: &env.proxy,
                up: &env.up,
                path: &path,
                req: &id,
                sizes: &sizes,
            };
            match via {
                Via::H2 => {
                    let r = h2_exchange(h2, "POST", &path, &headers, &REQUEST_PARTS, Some(watch))
                        .await
                        .unwrap_or_else(|e| panic!("{what}: {e}"));
                    assert_eq!(
                        (r.status, String::from_utf8_lossy(&r.body).into_owned()),
                        (200, "done".to_string()),
                        "{what}: the response is the upstream's, nothing of the request"
                    );
                    assert_eq!(
                        header_set(&r.headers),
                        want_set(&[("x-up", "yes"), ("x-conf-seen-a", "200")]),
                        "{what}"
                    );
                    assert_eq!(r.header("content-length"), Some("4"), "{what}");
                }
                _ => {
                    let head = h1_head("POST", &path, &headers, via, &REQUEST_PARTS);
                    let got = h1_exchange(
                        env.proxy.addr,
                        &head,
                        &h1_body(via, &REQUEST_PARTS),
                        Some(watch),
                    )
                    .await;
                    // Nothing of the request comes back: the response is the upstream's.
                    for leak in [
                        &b"hello"[..],
                        b"HELLO",
                        b"confor",
                        b"CONFOR",
                        b"body",
                        b"BODY",
                    ] {
                        assert!(
                            !contains(&got, leak),
                            "{what}: request bytes in the response:\n{}",
                            String::from_utf8_lossy(&got)
                        );
                    }
                    let r = one_response(&got);
                    assert_eq!(
                        String::from_utf8_lossy(&r.body),
                        "done",
                        "{what}: the response body is the upstream's, nothing of the request"
                    );
                    assert_eq!(r.start, "HTTP/1.1 200 OK", "{what}");
                    assert_eq!(r.framing, Framing::Length(4), "{what}");
                    assert_eq!(
                        header_set(&r.headers),
                        want_set(&[("x-up", "yes"), ("x-conf-seen-a", "200")]),
                        "{what}"
                    );
                }
            }
            let want = apply(op, original);
            let reqs = env.up.wait_requests(&path, 1).await;
            assert_eq!(reqs.len(), 1, "{what}: {reqs:?}");
            let m = &reqs[0];
            assert_eq!(m.start, format!("POST {path} HTTP/1.1"), "{what}");
            assert_eq!(
                String::from_utf8_lossy(&m.body),
                String::from_utf8_lossy(&want),
                "{what}: the upstream's body"
            );
            assert_framing(m, want.len(), &what);
            if via == Via::Length && op == "upper" {
                // content-length kept by the plugin, and still true.
                assert_eq!(m.framing, Framing::Length(want.len()), "{what}");
            }
            let mut sent = vec![
                ("host", "conf.test"),
                ("x-conf-id", id.as_str()),
                ("x-conf-req-body", "buffer"),
                ("x-conf-req-op", op),
            ];
            sent.extend(FORWARDING);
            assert_eq!(header_set(&m.headers), want_set(&sent), "{what}");
            assert!(env.up.aborted(&path).is_empty(), "{what}");

            let lines = request_lines(&env.proxy, "a", &id).await;
            let calls = body_calls(&lines, "on_request_body");
            let n = calls.len();
            assert!(
                n >= REQUEST_PARTS.len(),
                "{what}: one callback per read at least: {:#?}",
                texts(&lines)
            );
            for (i, (len, eos, action)) in calls.iter().enumerate() {
                let last = i + 1 == n;
                assert_eq!(
                    *eos,
                    last,
                    "{what}: eos only on the last: {:#?}",
                    texts(&lines)
                );
                assert_eq!(action, if last { "continue" } else { "pause" }, "{what}");
                if i > 0 {
                    // (An empty last chunk, e.g. chunked framing's, adds nothing.)
                    assert!(
                        *len > calls[i - 1].0 || (last && *len == calls[i - 1].0),
                        "{what}: while the plugin buffers, body_size is cumulative: {:#?}",
                        texts(&lines)
                    );
                }
            }
            assert_eq!(
                calls[n - 1].0,
                original.len(),
                "{what}: the last call sees the whole body: {:#?}",
                texts(&lines)
            );
            let rewrite = lines.iter().find(|l| l.what == "rewrite").unwrap();
            assert_eq!(rewrite.num("from") as usize, original.len(), "{what}");
            assert_eq!(rewrite.num("to") as usize, want.len(), "{what}");
            let log = assert_ended_once(&lines);
            assert_eq!(log.get("status"), "200", "{what}");
            assert_eq!(log.num("req_body") as usize, original.len(), "{what}");
        };
        (format!("{} {op}", via.name()), case.boxed_local())
    });
    run_cases(&env.proxy, true, runs.collect()).await;
    env.up.assert_no_garbage();
    assert_no_context_left(&env.proxy).await;
}

// ---------------------------------------------------------------------------------------
// 2. Buffered response bodies, rewritten
// ---------------------------------------------------------------------------------------

/// The response body arrives from the upstream in three writes; the plugin buffers it (or
/// part of it) and rewrites it. The client gets exactly the rewritten body, framed
/// consistently, and each body callback reports the cumulative size while buffering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffered_response_bodies_are_rewritten() {
    let env = start().await;
    let parts = ["hello ", "respon", "se body"];
    let original = parts.concat().into_bytes();
    // (name, chunked upstream, body mode, op, over HTTP/2)
    let cases: [(&str, bool, &str, &str, bool); 9] = [
        ("cl-upper", false, "buffer", "upper", false),
        ("chunked-upper", true, "buffer", "upper", false),
        ("chunked-prepend", true, "buffer", "prepend:pre-", false),
        ("cl-append", false, "buffer", "append:-post", false),
        ("chunked-replace", true, "buffer", "replace:new", false),
        ("cl-clear", false, "buffer", "clear", false),
        (
            "cl-buffer-then-stream",
            false,
            "buffer-then-stream",
            "upper",
            false,
        ),
        (
            "chunked-stream-then-buffer",
            true,
            "stream-then-buffer",
            "upper",
            false,
        ),
        ("h2-append", false, "buffer", "append:-post", true),
    ];
    let h2 = h2_connect(env.proxy.addr).await;
    let runs = cases.iter().map(|&(name, chunked, mode, op, over_h2)| {
        let env = &env;
        let h2 = &h2;
        let original = &original;
        let case = async move {
            let path = format!("/one/resp/{name}");
            let id = format!("resp-{name}");
            env.up.reply(
                &path,
                if chunked {
                    Reply::chunked(&parts, PAUSE)
                } else {
                    Reply::length(&parts, PAUSE)
                },
            );
            let headers = [
                ("x-conf-id", id.as_str()),
                ("x-conf-resp-body", mode),
                ("x-conf-resp-op", op),
            ];
            let (status, seen, body) = if over_h2 {
                let r = h2_exchange(h2, "GET", &path, &headers, &[], None)
                    .await
                    .unwrap_or_else(|e| panic!("{name}: {e}"));
                if let Some(cl) = r.header("content-length") {
                    assert_eq!(cl, r.body.len().to_string(), "{name}: content-length");
                }
                (r.status, header_set(&r.headers), r.body)
            } else {
                let got = h1_exchange(
                    env.proxy.addr,
                    &h1_head("GET", &path, &headers, Via::Length, &[]),
                    &[],
                    None,
                )
                .await;
                let r = one_response(&got);
                // The framing the upstream used, unless the plugin removed content-length
                // (as it must to change the length): then chunked, as on Envoy, whose
                // response head goes out before the body.
                let want = if !chunked && op == "upper" {
                    Framing::Length(original.len())
                } else {
                    Framing::Chunked
                };
                assert_eq!(r.framing, want, "{name}: the client's framing");
                (r.status(), header_set(&r.headers), r.body)
            };
            assert_eq!(status, 200, "{name}");
            assert_eq!(
                seen,
                want_set(&[("x-up", "yes"), ("x-conf-seen-a", "200")]),
                "{name}"
            );

            let lines = request_lines(&env.proxy, "a", &id).await;
            let calls = body_calls(&lines, "on_response_body");
            assert!(!calls.is_empty(), "{name}: {:#?}", texts(&lines));
            let want = match mode {
                "buffer" => {
                    let (len, eos, action) = calls.last().unwrap();
                    assert!(*eos, "{name}: {:#?}", texts(&lines));
                    assert_eq!(action, "continue", "{name}");
                    assert_eq!(
                        *len,
                        original.len(),
                        "{name}: the last call sees the whole body: {:#?}",
                        texts(&lines)
                    );
                    for (i, c) in calls.iter().enumerate().skip(1) {
                        let last = i + 1 == calls.len();
                        assert!(
                            c.0 > calls[i - 1].0 || (last && c.0 == calls[i - 1].0),
                            "{name}: cumulative: {:#?}",
                            texts(&lines)
                        );
                    }
                    apply(op, original)
                }
                // (Should the proxy read the whole body at once, the first call ends the
                // stream and the plugin rewrites all of it.)
                "buffer-then-stream" | "stream-then-buffer" if calls[0].1 => apply(op, original),
                "buffer-then-stream" => {
                    assert!(calls.len() >= 2, "{name}: {:#?}", texts(&lines));
                    assert_eq!(calls[0].2, "pause", "{name}");
                    // The second call sees what was held plus what came: the plugin rewrites
                    // that; the rest streams.
                    let held = calls[1].0;
                    assert!(
                        held > calls[0].0,
                        "{name}: cumulative: {:#?}",
                        texts(&lines)
                    );
                    [apply(op, &original[..held]), original[held..].to_vec()].concat()
                }
                "stream-then-buffer" => {
                    assert!(calls.len() >= 2, "{name}: {:#?}", texts(&lines));
                    assert_eq!(calls[0].2, "continue", "{name}");
                    let first = calls[0].0;
                    let last = calls.last().unwrap();
                    assert!(last.1, "{name}: {:#?}", texts(&lines));
                    assert_eq!(
                        first + last.0,
                        original.len(),
                        "{name}: after the first chunk passed, the buffer holds the rest: {:#?}",
                        texts(&lines)
                    );
                    [original[..first].to_vec(), apply(op, &original[first..])].concat()
                }
                m => panic!("mode {m}"),
            };
            assert_eq!(
                String::from_utf8_lossy(&body),
                String::from_utf8_lossy(&want),
                "{name}: the client's body; plugin: {:#?}",
                texts(&lines)
            );
            let log = assert_ended_once(&lines);
            assert_eq!(log.get("status"), "200", "{name}");
            assert_eq!(log.num("resp_body") as usize, original.len(), "{name}");
            if name == "cl-upper" {
                // No request body: no request body callback (its headers ended the stream).
                let cbs = callbacks(&lines);
                assert_eq!(
                    cbs[..3],
                    [
                        "on_context_create",
                        "on_request_headers",
                        "on_response_headers"
                    ],
                    "{name}: {:#?}",
                    texts(&lines)
                );
                assert!(
                    cbs[3..cbs.len() - 3]
                        .iter()
                        .all(|c| *c == "on_response_body"),
                    "{name}: {:#?}",
                    texts(&lines)
                );
                let rh = lines
                    .iter()
                    .find(|l| l.what == "on_request_headers")
                    .unwrap();
                assert_eq!(rh.get("eos"), "true", "{name}");
            }
        };
        (name.to_string(), case.boxed_local())
    });
    run_cases(&env.proxy, true, runs.collect()).await;
    env.up.assert_no_garbage();
    assert_no_context_left(&env.proxy).await;
}

// ---------------------------------------------------------------------------------------
// 3. Pause in request headers until an HTTP callout answers
// ---------------------------------------------------------------------------------------

/// `on_request_headers` dispatches an HTTP call and pauses; `on_http_call_response` sets a
/// request header from the callout's `:status` and resumes. The upstream only ever sees the
/// request with that header (so: after the callout answered).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_paused_on_a_callout_goes_on_with_its_answer() {
    let env = start().await;
    env.callout.reply(
        "/callout/ok",
        Reply::whole(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nfine").after(PAUSE),
    );
    env.callout.reply(
        "/callout/deny",
        Reply::whole(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 2\r\n\r\nno"),
    );
    env.callout.reply("/callout/drop", Reply::hang_up());
    let h2 = h2_connect(env.proxy.addr).await;
    let cases = [
        ("ok", "/callout/ok", "200", false),
        ("deny", "/callout/deny", "403", false),
        ("drop", "/callout/drop", "failed", false),
        ("h2-ok", "/callout/ok", "200", true),
    ]
    .into_iter()
    .map(|(name, callout, want, over_h2)| {
        let (env, h2) = (&env, &h2);
        let case = async move {
            let path = format!("/one/callout/{name}");
            let id = format!("co-{name}");
            let headers = [("x-conf-id", id.as_str()), ("x-conf-callout", callout)];
            let (status, body) = if over_h2 {
                let r = h2_exchange(h2, "GET", &path, &headers, &[], None)
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
                (r.status, r.body)
            } else {
                let got = h1_exchange(
                    env.proxy.addr,
                    &h1_head("GET", &path, &headers, Via::Length, &[]),
                    &[],
                    None,
                )
                .await;
                let r = one_response(&got);
                (r.status(), r.body)
            };
            assert_eq!(
                (status, String::from_utf8_lossy(&body).into_owned()),
                (200, "done".to_string()),
                "plugin: {:#?}",
                lines_now(&env.proxy, "a", &id)
            );
            let reqs = env.up.wait_requests(&path, 1).await;
            assert_eq!(reqs.len(), 1);
            assert_eq!(
                reqs[0].all("x-conf-callout-status"),
                [want],
                "set by on_http_call_response before the request went on"
            );
            let mut sent = vec![
                ("host", "conf.test"),
                ("x-conf-id", id.as_str()),
                ("x-conf-callout", callout),
                ("x-conf-callout-status", want),
            ];
            sent.extend(FORWARDING);
            assert_eq!(header_set(&reqs[0].headers), want_set(&sent));
            assert_eq!(reqs[0].framing, Framing::Empty);
            let lines = request_lines(&env.proxy, "a", &id).await;
            let cbs = callbacks(&lines);
            assert_eq!(
                cbs[..4],
                [
                    "on_context_create",
                    "on_request_headers",
                    "on_http_call_response",
                    "on_response_headers"
                ],
                "{:#?}",
                texts(&lines)
            );
            let rh = lines
                .iter()
                .find(|l| l.what == "on_request_headers")
                .unwrap();
            assert_eq!(rh.get("action"), "pause");
            let dispatch = lines.iter().find(|l| l.what == "dispatch").unwrap();
            let answer = lines
                .iter()
                .find(|l| l.what == "on_http_call_response")
                .unwrap();
            assert_eq!(answer.get("token"), dispatch.get("token"));
            assert_eq!(answer.get("status"), want);
            if want == "failed" {
                assert_eq!(answer.num("headers"), 0, "a failed call has no headers");
            } else {
                assert!(answer.num("headers") > 0);
            }
            assert_ended_once(&lines);
        };
        (name.to_string(), case.boxed_local())
    })
    .collect();
    run_cases(&env.proxy, false, cases).await;
    // The callout requests, as the callout server got them.
    for path in ["/callout/ok", "/callout/deny", "/callout/drop"] {
        for m in env.callout.requests(path) {
            assert_eq!(m.start, format!("GET {path} HTTP/1.1"));
            assert_eq!(
                header_set(&m.headers),
                want_set(&[("host", "callout.test")]),
                "{path}"
            );
            assert_eq!(m.framing, Framing::Empty, "{path}");
        }
    }
    assert_eq!(env.callout.requests("/callout/ok").len(), 2);
    env.up.assert_no_garbage();
    assert_no_context_left(&env.proxy).await;
}

// ---------------------------------------------------------------------------------------
// 4. Resume from a tick
// ---------------------------------------------------------------------------------------

/// A request paused in `on_request_headers` with no callout is resumed from the root
/// context's `on_tick`: `proxy_set_effective_context(<stream>)` then
/// `proxy_continue_stream(REQUEST)`, both OK (as in proxy-wasm-cpp-host, where any live
/// context of the VM can be made effective and the resume is deferred until the callback
/// returns).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_paused_in_its_headers_is_resumed_from_a_tick() {
    let env = start().await;
    let h2 = h2_connect(env.proxy.addr).await;
    let cases = [("h1", false), ("h2", true)]
        .into_iter()
        .map(|(name, over_h2)| {
            let (env, h2) = (&env, &h2);
            let case = async move {
                let path = format!("/one/tick/{name}");
                let id = format!("tick-{name}");
                let headers = [("x-conf-id", id.as_str()), ("x-conf-tick-resume", "1")];
                let (status, body) = if over_h2 {
                    let r = h2_exchange(h2, "GET", &path, &headers, &[], None)
                        .await
                        .unwrap_or_else(|e| panic!("{e}"));
                    (r.status, r.body)
                } else {
                    let got = h1_exchange(
                        env.proxy.addr,
                        &h1_head("GET", &path, &headers, Via::Length, &[]),
                        &[],
                        None,
                    )
                    .await;
                    let r = one_response(&got);
                    (r.status(), r.body)
                };
                let paused = wait_line(&env.proxy, "a", "on_request_headers", |l| {
                    l.get("req") == id
                })
                .await;
                let ctx = paused.get("ctx").to_string();
                // The tick came before the answer, whatever the answer.
                let tick = plugin_lines(&env.proxy.logs())
                    .into_iter()
                    .find(|l| l.tag == "a" && l.what == "on_tick" && l.get("resume") == ctx);
                assert_eq!(
                    (status, String::from_utf8_lossy(&body).into_owned()),
                    (200, "done".to_string()),
                    "the tick's resume must release the request; the tick: {:?}",
                    tick.as_ref().map(|t| &t.text)
                );
                let tick = tick.expect("the tick that resumed it");
                assert_eq!(tick.get("effective"), "0", "{}", tick.text);
                assert_eq!(tick.get("continue"), "0", "{}", tick.text);
                assert_eq!(env.up.requests(&path).len(), 1);
                let lines = request_lines(&env.proxy, "a", &id).await;
                let log = assert_ended_once(&lines);
                assert_eq!(log.get("status"), "200");
            };
            (name.to_string(), case.boxed_local())
        })
        .collect();
    run_cases(&env.proxy, false, cases).await;
    assert_no_context_left(&env.proxy).await;
}

// ---------------------------------------------------------------------------------------
// 5. Local replies from each phase
// ---------------------------------------------------------------------------------------

/// A local reply from a request phase: who sends it, and which plugins' response callbacks
/// must run over it.
struct LocalCase {
    name: &'static str,
    route: &'static str,
    headers: Vec<(&'static str, &'static str)>,
    body: &'static [&'static str],
    by: &'static str,
    seen: Vec<(&'static str, &'static str)>,
}

/// `proxy_send_local_response` from each phase. From a request phase the reply goes through
/// the response callbacks of the plugins that saw the request (Envoy runs the encoder
/// filters over a local reply), the sender's own included, so `x-conf-seen-<tag>: 418` is on
/// it. From `on_response_headers` it replaces the upstream's response as is (Envoy sends it
/// directly, bypassing the filters). From `on_response_body` the response head went out
/// already: the response is cut (Envoy resets the stream).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_replies_from_each_phase() {
    let env = start().await;
    let local_cases = vec![
        LocalCase {
            name: "request_headers",
            route: "one",
            headers: vec![("x-conf-local", "request_headers")],
            body: &[],
            by: "a",
            seen: vec![("x-conf-seen-a", "418")],
        },
        LocalCase {
            name: "request_body",
            route: "one",
            headers: vec![
                ("x-conf-local", "request_body"),
                ("x-conf-req-body", "buffer"),
            ],
            body: &REQUEST_PARTS,
            by: "a",
            seen: vec![("x-conf-seen-a", "418")],
        },
        LocalCase {
            name: "response_headers",
            route: "one",
            headers: vec![("x-conf-local", "response_headers")],
            body: &[],
            by: "a",
            seen: vec![],
        },
        LocalCase {
            name: "chain-b-request_headers",
            route: "chain",
            headers: vec![("x-conf-b-local", "request_headers")],
            body: &[],
            by: "b",
            seen: vec![("x-conf-seen-a", "418"), ("x-conf-seen-b", "418")],
        },
        LocalCase {
            // `b` never saw the request: no response callback of `b` runs.
            name: "chain-a-request_headers",
            route: "chain",
            headers: vec![("x-conf-a-local", "request_headers")],
            body: &[],
            by: "a",
            seen: vec![("x-conf-seen-a", "418")],
        },
        LocalCase {
            // The response path runs `b` first; its reply is sent as is (`a` does not run).
            name: "chain-b-response_headers",
            route: "chain",
            headers: vec![("x-conf-b-local", "response_headers")],
            body: &[],
            by: "b",
            seen: vec![],
        },
    ];
    let h2 = h2_connect(env.proxy.addr).await;
    let mut cases: Vec<Case> = Vec::new();
    for case in &local_cases {
        for over_h2 in [false, true] {
            let (env, h2) = (&env, &h2);
            let name = format!("{}{}", case.name, if over_h2 { " (h2)" } else { "" });
            let run = async move {
                let path = format!("/{}/local/{}/{}", case.route, case.name, over_h2);
                let id = format!("local-{}-{over_h2}", case.name);
                let mut headers = vec![("x-conf-id", id.as_str())];
                headers.extend(case.headers.iter().copied());
                let method = if case.body.is_empty() { "GET" } else { "POST" };
                let (status, headers, body, length) = if over_h2 {
                    let r = h2_exchange(h2, method, &path, &headers, case.body, None)
                        .await
                        .unwrap_or_else(|e| panic!("{e}"));
                    let length = r.header("content-length").map(str::to_string);
                    (r.status, header_set(&r.headers), r.body, length)
                } else {
                    let got = h1_exchange(
                        env.proxy.addr,
                        &h1_head(method, &path, &headers, Via::Length, case.body),
                        &h1_body(Via::Length, case.body),
                        None,
                    )
                    .await;
                    let r = one_response(&got);
                    let length = r.header("content-length").map(str::to_string);
                    (r.status(), header_set(&r.headers), r.body, length)
                };
                let plugin = || lines_now(&env.proxy, case.by, &id);
                assert_eq!(status, 418, "plugin: {:#?}", plugin());
                assert_eq!(
                    String::from_utf8_lossy(&body),
                    format!("local from {}", case.by)
                );
                assert_eq!(length.as_deref(), Some("12"));
                let seen: Vec<(String, String)> = headers
                    .iter()
                    .filter(|(k, _)| k.starts_with("x-conf-seen-"))
                    .cloned()
                    .collect();
                assert_eq!(
                    seen,
                    want_set(&case.seen),
                    "the response callbacks that ran over the reply; plugin: {:#?}",
                    plugin()
                );
                let mut want = vec![("x-conf-local", case.by), ("x-request-id", "*")];
                want.extend(case.seen.iter().copied());
                assert_eq!(headers, want_set(&want), "the reply's header fields");
                if case.name.ends_with("request_headers") {
                    assert!(env.up.requests(&path).is_empty(), "nothing goes upstream");
                }
                // A request body a plugin held and answered never goes upstream.
                env.up.assert_no_body_ever(&path);
                let lines = request_lines(&env.proxy, case.by, &id).await;
                let log = assert_ended_once(&lines);
                assert_eq!(log.get("status"), "418", "on_log sees the reply");
            };
            cases.push((name, run.boxed_local()));
        }
    }

    // From on_response_body: the head went out; the response is cut (a reset), never
    // replaced. HTTP/1: the head, part of the body at most, then the connection closes.
    let cut = async {
        let body_parts = ["hello ", "respon", "se body"];
        let path = "/one/local/response_body";
        env.up.reply(path, Reply::length(&body_parts, PAUSE));
        let headers = [
            ("x-conf-id", "local-response_body"),
            ("x-conf-local", "response_body"),
            ("x-conf-resp-body", "buffer"),
        ];
        let got = h1_exchange(
            env.proxy.addr,
            &h1_head("GET", path, &headers, Via::Length, &[]),
            &[],
            None,
        )
        .await;
        let text = String::from_utf8_lossy(&got).into_owned();
        let plugin = || lines_now(&env.proxy, "a", "local-response_body");
        assert!(
            text.starts_with("HTTP/1.1 200 OK\r\n"),
            "the upstream's head went out first: {text:?}; plugin: {:#?}",
            plugin()
        );
        assert!(!text.contains("local from"), "{text:?}");
        assert!(
            matches!(parse_message(&got, false, true), Ok(None)),
            "the response must be cut, not complete: {text:?}; plugin: {:#?}",
            plugin()
        );
        let head = &got[..find(&got, b"\r\n\r\n").unwrap() + 4];
        let head = parse_message(head, false, true).ok().flatten();
        if let Some(h) = head {
            assert_eq!(h.header("x-conf-seen-a"), Some("200"), "{text:?}");
        }
        let lines = request_lines(&env.proxy, "a", "local-response_body").await;
        let log = assert_ended_once(&lines);
        assert_eq!(log.get("status"), "200");
    };
    cases.push(("response_body".to_string(), cut.boxed_local()));
    run_cases(&env.proxy, false, cases).await;
    env.up.assert_no_garbage();
    assert_no_context_left(&env.proxy).await;
}

// ---------------------------------------------------------------------------------------
// 6. Clients that leave
// ---------------------------------------------------------------------------------------

/// A client that disconnects in any phase: the plugin's `on_log` and `on_done` still run,
/// once, `on_log` reads `:status` as absent (`proxy_get_header_map_value` answers NOT_FOUND
/// in the log phase when there was no response, as Envoy does; BAD_ARGUMENT would make the
/// SDK panic), nothing hangs and no context is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_leave_still_get_on_log_and_on_done_once() {
    let env = start().await;
    let env = &env;
    let mut cases: Vec<Case> = Vec::new();

    let body = async move {
        let path = "/one/gone/body";
        let head = h1_head(
            "POST",
            path,
            &[("x-conf-id", "gone-body"), ("x-conf-req-body", "buffer")],
            Via::Length,
            &[&"x".repeat(100)],
        );
        let mut c = H1::connect(env.proxy.addr).await;
        c.send(head.as_bytes()).await;
        c.send(b"partial").await;
        wait_line(&env.proxy, "a", "on_request_body", |l| {
            l.get("req") == "gone-body"
        })
        .await;
        drop(c);
        let lines = request_lines(&env.proxy, "a", "gone-body").await;
        assert!(
            env.up.requests(path).is_empty(),
            "its body never ended, so no complete request reached the upstream: {:?}",
            env.up.requests(path)
        );
        let log = assert_ended_once(&lines);
        assert_eq!(
            log.get("status"),
            "none",
            "no response: {:#?}",
            texts(&lines)
        );
    };
    cases.push((
        "HTTP/1, during request body buffering".into(),
        body.boxed_local(),
    ));

    let h2body = async move {
        let path = "/one/gone/h2body";
        let h2 = h2_connect(env.proxy.addr).await;
        let req = http::Request::post(format!("http://conf.test{path}"))
            .header("x-conf-id", "gone-h2body")
            .header("x-conf-req-body", "buffer")
            .body(())
            .unwrap();
        let mut ready = h2.clone().ready().await.unwrap();
        let (_response, mut stream) = ready.send_request(req, false).unwrap();
        stream
            .send_data(Bytes::from_static(b"partial"), false)
            .unwrap();
        wait_line(&env.proxy, "a", "on_request_body", |l| {
            l.get("req") == "gone-h2body"
        })
        .await;
        stream.send_reset(h2::Reason::CANCEL);
        let lines = request_lines(&env.proxy, "a", "gone-h2body").await;
        assert!(
            env.up.requests(path).is_empty(),
            "its body never ended, so no complete request reached the upstream: {:?}; plugin: {:#?}",
            env.up.requests(path),
            texts(&lines)
        );
        let log = assert_ended_once(&lines);
        assert_eq!(log.get("status"), "none", "{:#?}", texts(&lines));
    };
    cases.push((
        "HTTP/2 RST_STREAM, during request body buffering".into(),
        h2body.boxed_local(),
    ));

    let callout = async move {
        env.callout.reply(
            "/callout/slow",
            Reply::whole(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                .after(Duration::from_millis(600)),
        );
        let path = "/one/gone/callout";
        let head = h1_head(
            "GET",
            path,
            &[
                ("x-conf-id", "gone-callout"),
                ("x-conf-callout", "/callout/slow"),
            ],
            Via::Length,
            &[],
        );
        let mut c = H1::connect(env.proxy.addr).await;
        c.send(head.as_bytes()).await;
        env.callout.wait_requests("/callout/slow", 1).await;
        drop(c);
        let lines = request_lines(&env.proxy, "a", "gone-callout").await;
        let log = assert_ended_once(&lines);
        assert_eq!(log.get("status"), "none", "{:#?}", texts(&lines));
        assert!(
            !lines.iter().any(|l| l.what == "on_http_call_response"),
            "no callout answer delivered to a finished context: {:#?}",
            texts(&lines)
        );
        assert!(env.up.requests(path).is_empty());
    };
    cases.push(("HTTP/1, paused on a callout".into(), callout.boxed_local()));

    let response = async move {
        let path = "/one/gone/response";
        let chunk_text = "y".repeat(1000);
        let parts = vec![chunk_text.as_str(); 8];
        env.up
            .reply(path, Reply::length(&parts, Duration::from_millis(150)));
        let head = h1_head(
            "GET",
            path,
            &[("x-conf-id", "gone-response")],
            Via::Length,
            &[],
        );
        let mut c = H1::connect(env.proxy.addr).await;
        c.send(head.as_bytes()).await;
        let got = c.read_head().await;
        assert!(got.starts_with(b"HTTP/1.1 200 OK\r\n"));
        drop(c);
        let lines = request_lines(&env.proxy, "a", "gone-response").await;
        let log = assert_ended_once(&lines);
        assert_eq!(log.get("status"), "200", "{:#?}", texts(&lines));
    };
    cases.push((
        "HTTP/1, during the response body".into(),
        response.boxed_local(),
    ));
    run_cases(&env.proxy, false, cases).await;

    // Nothing hangs: the callout answer came and went; the proxy serves on; no context is
    // left in any plugin.
    let got = h1_exchange(
        env.proxy.addr,
        &h1_head(
            "GET",
            "/one/after",
            &[("x-conf-id", "after")],
            Via::Length,
            &[],
        ),
        &[],
        None,
    )
    .await;
    assert_eq!(one_response(&got).body, b"done");
    assert_no_context_left(&env.proxy).await;
    env.up.assert_no_garbage();
}

// ---------------------------------------------------------------------------------------
// 7. Context ids, as the raw plugin sees them
// ---------------------------------------------------------------------------------------

/// The ids passed to each callback, with no SDK in between: the root context's id in
/// `proxy_on_vm_start`, `proxy_on_configure`, `proxy_on_tick` and (ABI v0.2.1: the call is
/// made from the root context, as in proxy-wasm-cpp-host's `proxy_http_call`)
/// `proxy_on_http_call_response`; the stream's id in every stream callback;
/// `proxy_on_context_create(stream, root)`; and `proxy_set_effective_context(stream)` works
/// from `on_http_call_response`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callbacks_get_the_context_ids_of_the_abi() {
    let env = start().await;
    env.callout.reply(
        "/callout/ok",
        Reply::whole(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nfine"),
    );
    let path = "/raw/ids";
    let got = h1_exchange(
        env.proxy.addr,
        &h1_head(
            "GET",
            path,
            &[("x-conf-raw-callout", "/callout/ok")],
            Via::Length,
            &[],
        ),
        &[],
        None,
    )
    .await;
    let r = one_response(&got);
    let lines: Vec<Line> = plugin_lines(&env.proxy.logs())
        .into_iter()
        .filter(|l| l.tag == "raw")
        .collect();
    assert_eq!(r.status(), 200, "{:#?}", texts(&lines));
    assert_eq!(r.body, b"done");
    assert_eq!(env.up.requests(path).len(), 1);

    let dispatch = wait_line(&env.proxy, "raw", "dispatch", |_| true).await;
    let stream = dispatch.get("ctx").to_string();
    let token = dispatch.get("token").to_string();
    wait_line(&env.proxy, "raw", "on_delete", |l| l.get("ctx") == stream).await;
    wait_line(&env.proxy, "raw", "on_tick", |_| true).await;
    let lines: Vec<Line> = plugin_lines(&env.proxy.logs())
        .into_iter()
        .filter(|l| l.tag == "raw")
        .collect();
    let all = texts(&lines);
    let roots: Vec<String> = lines
        .iter()
        .filter(|l| l.what == "on_context_create" && l.get("parent") == "0")
        .map(|l| l.get("ctx").to_string())
        .collect();
    assert!(!roots.is_empty(), "{all:#?}");
    for what in ["on_vm_start", "on_configure", "on_tick"] {
        let ls: Vec<&Line> = lines.iter().filter(|l| l.what == what).collect();
        assert!(!ls.is_empty(), "{what}: {all:#?}");
        for l in ls {
            assert!(
                roots.iter().any(|r| r == l.get("ctx")),
                "{what} gets a root context's id, not {}: {all:#?}",
                l.get("ctx")
            );
        }
    }
    assert!(!roots.contains(&stream), "{all:#?}");
    let create = lines
        .iter()
        .find(|l| l.what == "on_context_create" && l.get("ctx") == stream)
        .unwrap_or_else(|| panic!("no on_context_create for {stream}: {all:#?}"));
    let root = create.get("parent").to_string();
    assert!(roots.contains(&root), "{all:#?}");
    let answer = lines
        .iter()
        .find(|l| l.what == "on_http_call_response" && l.get("token") == token)
        .unwrap_or_else(|| panic!("no on_http_call_response: {all:#?}"));
    assert_eq!(
        answer.get("ctx"),
        root,
        "on_http_call_response gets the plugin's root context id (the stream is {stream}): {all:#?}"
    );
    assert_eq!(answer.get("stream"), stream, "{all:#?}");
    let resume = lines
        .iter()
        .find(|l| l.what == "resume")
        .unwrap_or_else(|| panic!("{all:#?}"));
    assert_eq!(resume.get("effective"), "0", "{all:#?}");
    assert_eq!(resume.get("continue"), "0", "{all:#?}");
    let stream_lines: Vec<&Line> = lines
        .iter()
        .filter(|l| {
            [
                "on_request_headers",
                "on_request_body",
                "on_response_headers",
                "on_response_body",
                "on_log",
                "on_done",
                "on_delete",
            ]
            .contains(&l.what.as_str())
        })
        .collect();
    for what in [
        "on_request_headers",
        "on_response_headers",
        "on_log",
        "on_done",
        "on_delete",
    ] {
        let n = stream_lines.iter().filter(|l| l.what == what).count();
        assert_eq!(n, 1, "{what} once: {all:#?}");
    }
    assert!(
        stream_lines.iter().any(|l| l.what == "on_response_body"),
        "{all:#?}"
    );
    for l in stream_lines {
        assert_eq!(
            l.get("ctx"),
            stream,
            "{} gets the stream's id: {all:#?}",
            l.what
        );
    }
    assert_no_context_left(&env.proxy).await;
}

// ---------------------------------------------------------------------------------------
// 8. proxy_close_stream
// ---------------------------------------------------------------------------------------

/// `reset_http_request()` (`proxy_close_stream(REQUEST)`) resets the stream, as Envoy's
/// `resetStream()`: over HTTP/2 the client gets RST_STREAM on that stream and the
/// connection serves on; over HTTP/1 the connection closes without a byte of response.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_the_stream_resets_it() {
    let env = start().await;
    let env = &env;
    let mut cases: Vec<Case> = Vec::new();
    for phase in ["request_headers", "request_body", "response_headers"] {
        let body: &[&str] = if phase == "request_body" {
            &REQUEST_PARTS
        } else {
            &[]
        };
        let method = if body.is_empty() { "GET" } else { "POST" };

        // HTTP/1: closed, nothing sent.
        let h1 = async move {
            let path = format!("/one/reset/h1/{phase}");
            let id = format!("reset-h1-{phase}");
            let headers = [
                ("x-conf-id", id.as_str()),
                ("x-conf-reset", phase),
                ("x-conf-req-body", "buffer"),
            ];
            let got = h1_exchange(
                env.proxy.addr,
                &h1_head(method, &path, &headers, Via::Length, body),
                &h1_body(Via::Length, body),
                None,
            )
            .await;
            assert_eq!(
                String::from_utf8_lossy(&got),
                "",
                "the connection closes without a response; plugin: {:#?}",
                lines_now(&env.proxy, "a", &id)
            );
            let lines = request_lines(&env.proxy, "a", &id).await;
            let reset = lines.iter().find(|l| l.what == "reset").unwrap();
            assert_eq!(reset.get("status"), "0");
            assert_eq!(reset.get("phase"), phase);
            let log = assert_ended_once(&lines);
            if phase != "response_headers" {
                assert_eq!(log.get("status"), "none", "no response");
            }
            env.up.assert_no_body_ever(&path);
        };
        cases.push((format!("HTTP/1 {phase}"), h1.boxed_local()));

        // HTTP/2: RST_STREAM on that stream; the connection serves the next request.
        let h2 = async move {
            let h2 = h2_connect(env.proxy.addr).await;
            let path = format!("/one/reset/h2/{phase}");
            let id = format!("reset-h2-{phase}");
            let headers = [
                ("x-conf-id", id.as_str()),
                ("x-conf-reset", phase),
                ("x-conf-req-body", "buffer"),
            ];
            let r = h2_exchange(&h2, method, &path, &headers, body, None).await;
            match r {
                Err(e) => assert!(
                    e.status.is_none()
                        && e.error.is_reset()
                        && !e.error.is_go_away()
                        && !e.error.is_io(),
                    "want RST_STREAM before any response, got {e}; plugin: {:#?}",
                    lines_now(&env.proxy, "a", &id)
                ),
                Ok(r) => panic!(
                    "want RST_STREAM, got a response {} {:?} {:?}; plugin: {:#?}",
                    r.status,
                    r.headers,
                    String::from_utf8_lossy(&r.body),
                    lines_now(&env.proxy, "a", &id)
                ),
            }
            let after = format!("reset-h2-{phase}-after");
            let r = h2_exchange(
                &h2,
                "GET",
                "/one/reset/after",
                &[("x-conf-id", &after)],
                &[],
                None,
            )
            .await
            .unwrap_or_else(|e| panic!("the connection must serve on: {e}"));
            assert_eq!((r.status, r.body.as_slice()), (200, &b"done"[..]));
            let lines = request_lines(&env.proxy, "a", &id).await;
            assert_ended_once(&lines);
            env.up.assert_no_body_ever(&path);
        };
        cases.push((format!("HTTP/2 {phase}"), h2.boxed_local()));
    }
    run_cases(&env.proxy, false, cases).await;
    env.up.assert_no_garbage();
    assert_no_context_left(&env.proxy).await;
}
