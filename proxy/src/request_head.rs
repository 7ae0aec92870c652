//! A deadline for reading each HTTP/1 request head, and a first look at what a new connection
//! sends.
//!
//! pingora's own timeout applies to each read of the head, so a client that sends a byte every
//! few seconds could hold a connection (and its buffers) for ever, and bytes that are not HTTP
//! at all (a TLS hello on a plain port, a stray protocol) are held until that timeout. Each
//! connection's stream is therefore wrapped in a [`HeadGuard`]:
//!
//! - While a request head is being read, the whole head must arrive within the listener's
//!   `request_header_timeout_ms`, counted from the connection's start for its first request and
//!   from the first byte of each later one (the wait between requests is pingora's keep-alive
//!   timeout). Past it the client gets `408` and the connection is closed (a connection that
//!   sent nothing at all is closed without an answer).
//! - The first line a connection sends must look like an HTTP/1 request line (`TOKEN SP target
//!   SP HTTP/1.x`), or be the HTTP/2 preface; anything else gets `400` and the connection is
//!   closed at once.
//!
//! The proxy tells the guard where requests begin and end: [`head_read`] when pingora has
//! parsed a head (the first proxy hook), [`request_done`] when the request has been logged.
//! HTTP/2 connections (ALPN or the h2c preface) are passed through untouched: their streams'
//! heads arrive in single frames, and the HTTP/2 library has limits of its own.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, Ssl, Stream, UniqueID,
    UniqueIDType, ALPN,
};
use pingora::protocols::{SocketDigest, TimingDigest};
use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// Default `request_header_timeout_ms` of a listener.
pub const DEFAULT_REQUEST_HEADER_TIMEOUT_MS: u64 = 10_000;

/// Longest first line inspected; a longer one is left to pingora's header size limit.
const MAX_FIRST_LINE: usize = 8 * 1024;

const TIMEOUT_RESPONSE: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
const NOT_HTTP_RESPONSE: &[u8] =
    b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";

/// Where the connection is, as the proxy reports it.
const READING_HEAD: u8 = 0;
const IN_REQUEST: u8 = 1;

/// Counters of the clients a guard turned away.
#[derive(Clone)]
pub struct HeadCounters {
    /// `sluice_client_errors_total{listener, kind="header_timeout"}`.
    pub timeout: IntCounter,
    /// `sluice_client_errors_total{listener, kind="not_http"}`.
    pub not_http: IntCounter,
}

impl HeadCounters {
    /// The counters of listener `listener`.
    pub fn for_listener(listener: &str) -> Self {
        let m = &crate::metrics::metrics().client_errors;
        HeadCounters {
            timeout: m.with_label_values(&[listener, "header_timeout"]),
            not_http: m.with_label_values(&[listener, "not_http"]),
        }
    }
}

/// What the first line of a connection turned out to be.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum FirstLine {
    /// Not complete yet.
    Pending,
    /// An HTTP/1 request line (or an empty line before one, which pingora skips).
    Http1,
    /// The HTTP/2 connection preface.
    H2,
    /// Anything else.
    NotHttp,
}

/// Judges the bytes a connection has sent so far (`seen`, at most [`MAX_FIRST_LINE`] of them).
fn first_line(seen: &[u8]) -> FirstLine {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n";
    if PREFACE.starts_with(&seen[..seen.len().min(PREFACE.len())]) {
        return if seen.len() >= PREFACE.len() {
            FirstLine::H2
        } else {
            FirstLine::Pending
        };
    }
    // The method: one or more token characters, then a space.
    let method_len = seen.iter().take_while(|b| is_tchar(**b)).count();
    match seen.get(method_len) {
        None if method_len < 32 => return FirstLine::Pending,
        Some(b' ') if method_len > 0 => {}
        // RFC 9112 2.2: empty lines before a request line are ignored.
        Some(b'\r' | b'\n') if method_len == 0 => return FirstLine::Http1,
        _ => return FirstLine::NotHttp,
    }
    let Some(end) = seen.iter().position(|b| *b == b'\n') else {
        return if seen.len() >= MAX_FIRST_LINE {
            // Too long to judge here; pingora's limits answer it.
            FirstLine::Http1
        } else {
            FirstLine::Pending
        };
    };
    let line = seen[..end].strip_suffix(b"\r").unwrap_or(&seen[..end]);
    // pingora escapes odd bytes in the target, so only the version is checked.
    if line.ends_with(b" HTTP/1.1") || line.ends_with(b" HTTP/1.0") {
        FirstLine::Http1
    } else {
        FirstLine::NotHttp
    }
}

/// RFC 9110 token characters.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A connection's stream with the head deadline and first-line check (see the module docs).
pub struct HeadGuard {
    inner: Stream,
    /// `READING_HEAD` or `IN_REQUEST`, as the proxy reports it ([`head_read`],
    /// [`request_done`]; it reaches the guard through the session's `&Stream`, hence atomics).
    phase: AtomicU8,
    /// Heads read so far: a deadline armed for an earlier head is stale.
    heads: AtomicU32,
    timeout: Duration,
    /// The head deadline: one timer per connection, reset for each head.
    deadline: Pin<Box<Sleep>>,
    /// The head the deadline runs for; `None` while it does not run.
    armed_for: Option<u32>,
    /// The first line is still being looked at; its bytes so far.
    first: Option<Vec<u8>>,
    /// HTTP/2 or already failed: bytes pass through untouched.
    passthrough: bool,
    /// Bytes read (and checked) by [`Peek::try_peek`], handed out again by reads.
    peeked: Vec<u8>,
    /// Some byte of the head being read has arrived.
    head_started: bool,
    counters: HeadCounters,
}

impl std::fmt::Debug for HeadGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeadGuard")
            .field("inner", &self.inner)
            .field("armed_for", &self.armed_for)
            .field("passthrough", &self.passthrough)
            .finish_non_exhaustive()
    }
}

impl HeadGuard {
    /// Wraps a newly accepted (and, on TLS listeners, handshaken) connection.
    pub fn wrap(inner: Stream, timeout: Duration, counters: HeadCounters) -> Stream {
        let h2 = matches!(inner.selected_alpn_proto(), Some(ALPN::H2));
        Box::new(HeadGuard {
            inner,
            phase: AtomicU8::new(READING_HEAD),
            heads: AtomicU32::new(0),
            timeout,
            // The first head's deadline runs from the connection's start.
            deadline: Box::pin(tokio::time::sleep(timeout)),
            armed_for: (!h2).then_some(0),
            first: (!h2).then(Vec::new),
            passthrough: h2,
            peeked: Vec::new(),
            head_started: false,
            counters,
        })
    }

    /// Ends the connection with `answer` if given (best effort: what the socket takes at once;
    /// only called between requests, so it cannot interleave with a response) and returns the
    /// error pingora will see.
    fn refuse(&mut self, cx: &mut Context<'_>, answer: Option<&[u8]>, why: &str) -> io::Error {
        self.passthrough = true;
        self.armed_for = None;
        if let Some(answer) = answer {
            let _ = Pin::new(&mut self.inner).poll_write(cx, answer);
            let _ = Pin::new(&mut self.inner).poll_flush(cx);
        }
        io::Error::new(io::ErrorKind::TimedOut, why.to_string())
    }

    /// Looks at newly read bytes while head number `head` is being read.
    fn on_head_bytes(
        &mut self,
        cx: &mut Context<'_>,
        bytes: &[u8],
        head: u32,
    ) -> Result<(), io::Error> {
        if let Some(seen) = self.first.as_mut() {
            let room = MAX_FIRST_LINE.saturating_sub(seen.len());
            seen.extend_from_slice(&bytes[..bytes.len().min(room)]);
            match first_line(seen) {
                FirstLine::Pending => {}
                FirstLine::Http1 => self.first = None,
                FirstLine::H2 => {
                    self.first = None;
                    self.passthrough = true;
                    self.armed_for = None;
                }
                FirstLine::NotHttp => {
                    self.counters.not_http.inc();
                    tracing::debug!("a connection's first line is not HTTP; answered 400");
                    return Err(self.refuse(cx, Some(NOT_HTTP_RESPONSE), "not an HTTP request"));
                }
            }
        }
        if bytes.is_empty() || self.passthrough {
            return Ok(());
        }
        self.head_started = true;
        // A later request's deadline starts at its first byte.
        if self.armed_for.is_none() {
            self.deadline
                .as_mut()
                .reset(tokio::time::Instant::now() + self.timeout);
            self.armed_for = Some(head);
        }
        Ok(())
    }

    /// Reads from the connection with the checks of the module docs.
    fn poll_guarded(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.passthrough {
            return Pin::new(&mut self.inner).poll_read(cx, buf);
        }
        let reading_head = self.phase.load(Ordering::Acquire) == READING_HEAD;
        let head = self.heads.load(Ordering::Acquire);
        if !reading_head || self.armed_for.is_some_and(|h| h != head) {
            // A body is being read, or the deadline belongs to a head already read.
            self.armed_for = None;
            self.head_started = false;
        }
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if reading_head {
                    if let Err(e) = self.on_head_bytes(cx, &buf.filled()[before..], head) {
                        buf.set_filled(before);
                        return Poll::Ready(Err(e));
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                if self.armed_for.is_some() && self.deadline.as_mut().poll(cx).is_ready() {
                    self.counters.timeout.inc();
                    tracing::debug!(
                        timeout_ms = self.timeout.as_millis() as u64,
                        "request head not complete in time; answered 408"
                    );
                    let answer = self.head_started.then_some(TIMEOUT_RESPONSE);
                    return Poll::Ready(Err(self.refuse(cx, answer, "request head timed out")));
                }
                Poll::Pending
            }
        }
    }
}

/// Tells the guard of the connection behind `stream` (if it has one) that a request head has
/// been read: its deadline is off until the request is done.
pub fn head_read(stream: Option<&Stream>) {
    if let Some(g) = guard(stream) {
        g.heads.fetch_add(1, Ordering::AcqRel);
        g.phase.store(IN_REQUEST, Ordering::Release);
    }
}

/// Tells the guard of the connection behind `stream` that its request is over: what it reads
/// next is a new head.
pub fn request_done(stream: Option<&Stream>) {
    if let Some(g) = guard(stream) {
        g.phase.store(READING_HEAD, Ordering::Release);
    }
}

fn guard(stream: Option<&Stream>) -> Option<&HeadGuard> {
    stream?.as_any().downcast_ref::<HeadGuard>()
}

impl AsyncRead for HeadGuard {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.peeked.is_empty() {
            let n = this.peeked.len().min(buf.remaining());
            buf.put_slice(&this.peeked[..n]);
            this.peeked.drain(..n);
            return Poll::Ready(Ok(()));
        }
        this.poll_guarded(cx, buf)
    }
}

impl AsyncWrite for HeadGuard {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for HeadGuard {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for HeadGuard {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for HeadGuard {
    fn get_ssl(&self) -> Option<&pingora::protocols::tls::TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<pingora::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for HeadGuard {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for HeadGuard {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for HeadGuard {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

/// pingora peeks at a plain connection's first bytes to tell the HTTP/2 preface from HTTP/1.
/// The bytes are read through the guard (so the first-line check and the deadline apply) and
/// only for as long as they could still be the preface; a short HTTP/1 line is not waited on.
#[async_trait]
impl Peek for HeadGuard {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
        if self.passthrough && self.peeked.is_empty() {
            return self.inner.try_peek(buf).await;
        }
        while self.peeked.len() < buf.len() && PREFACE.starts_with(&self.peeked) {
            let mut chunk = [0u8; 1024];
            let want = (buf.len() - self.peeked.len()).min(chunk.len());
            let mut read = ReadBuf::new(&mut chunk[..want]);
            std::future::poll_fn(|cx| self.poll_guarded(cx, &mut read)).await?;
            if read.filled().is_empty() {
                break;
            }
            self.peeked.extend_from_slice(read.filled());
        }
        // What is not the preface is told apart from it: the rest of `buf` stays zero.
        buf.fill(0);
        let n = self.peeked.len().min(buf.len());
        buf[..n].copy_from_slice(&self.peeked[..n]);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines_are_told_from_other_bytes() {
        use FirstLine::*;
        let cases: &[(&[u8], FirstLine)] = &[
            (b"", Pending),
            (b"GE", Pending),
            (b"GET /x HTTP/1.1\r\n", Http1),
            (b"GET /x HTTP/1.0\n", Http1),
            (b"M-SEARCH * HTTP/1.1\r\n", Http1),
            (b"GET /a b|c HTTP/1.1\r\n", Http1),
            (b"\r\nGET / HTTP/1.1\r\n", Http1),
            (b"GET /x", Pending),
            (b"PRI * HTTP/2", Pending),
            (b"PRI * HTTP/2.0\r\n", H2),
            (b"GET /\r\n", NotHttp),
            (b"GET / HTTP/2.0\r\n", NotHttp),
            (b"HELLO\r\n", NotHttp),
            (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", NotHttp),
            (b" GET / HTTP/1.1\r\n", NotHttp),
            (b"SSH-2.0-OpenSSH_9.2\r\n", NotHttp),
            (b"GET\t/ HTTP/1.1\r\n", NotHttp),
        ];
        for (bytes, want) in cases {
            assert_eq!(
                first_line(bytes),
                *want,
                "{:?}",
                bytes.escape_ascii().to_string()
            );
        }
        // A method longer than any real one with no space yet is not waited for.
        assert_eq!(first_line(&[b'A'; 40]), NotHttp);
        // A line too long to judge is left to pingora.
        let mut long = b"GET /".to_vec();
        long.resize(MAX_FIRST_LINE, b'a');
        assert_eq!(first_line(&long), Http1);
    }
}
