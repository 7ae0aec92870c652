//! HTTP/2 floods other than rapid reset, sent as hand-written frames over plain TCP (h2c with
//! prior knowledge): SETTINGS, PING, CONTINUATION (tiny frames, a header block that keeps
//! growing, an HPACK-amplified one, and over-limit header blocks repeated on new streams),
//! empty DATA and WINDOW_UPDATE.
//!
//! For each flood the tests prove that other clients are served during and after it, that the
//! attacking connection is either ended by the server (a GOAWAY with the code h2 uses for that
//! abuse, then a close) or costs the server a bounded amount (the growth of its resident memory
//! is measured from /proc), and that no request stays in flight afterwards. The floods h2
//! does not limit by count are ended by the listener's HTTP/2 idle timeout.

mod support;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use support::*;

// Frame types (RFC 9113 §6).
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;

// Flags.
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

// Error codes (RFC 9113 §7).
const FLOW_CONTROL_ERROR: u32 = 0x3;
const REFUSED_STREAM: u32 = 0x7;
const ENHANCE_YOUR_CALM: u32 = 0xb;

// SETTINGS parameters.
const SETTINGS_HEADER_TABLE_SIZE: u16 = 0x1;
const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// SETTINGS_MAX_FRAME_SIZE of the server (the protocol default; pingora keeps it).
const MAX_FRAME: usize = 16_384;

/// A flood stops after this many frames ...
const FLOOD_FRAMES: u64 = 100_000;
/// ... or after this long, whichever comes first.
const FLOOD_TIME: Duration = Duration::from_secs(5);
/// A write blocked this long means that the server stopped reading.
const STALL: Duration = Duration::from_secs(2);
/// How much the server's resident memory may grow during one flood.
const RSS_BUDGET_KIB: u64 = 64 * 1024;
/// The slowest answer another client may get during a flood.
const SLOWEST_ANSWER: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// The proxy under test.

/// A sluice (see `start_tagged`) with h2c on its listener and `listener_extra`, warmed up with
/// 20 requests so that the memory measured before a flood includes what serving costs.
async fn start_with(listener_extra: &str) -> Sluice {
    let proxy = start_tagged(&format!(", h2c: true{listener_extra}")).await;
    serve_twenty(&proxy, "/warm-up").await;
    proxy
}

/// [`start_with`] the listener's defaults.
async fn start() -> Sluice {
    start_with("").await
}

/// 20 requests from an ordinary client, each answered 200 by the upstream through the plugin.
async fn serve_twenty(proxy: &Sluice, path: &str) {
    let c = client();
    for _ in 0..20 {
        let r = c.get(proxy.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-tag"], "yes");
    }
}

/// After a flood: others are served, and nothing is left in flight.
async fn served_after(proxy: &Sluice) {
    serve_twenty(proxy, "/after").await;
    proxy.wait_metric("sluice_requests_in_flight", 0.0).await;
}

// ---------------------------------------------------------------------------------------------
// Frames and header blocks.

fn push_frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    assert!(payload.len() <= MAX_FRAME, "{} byte frame", payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(9 + payload.len());
    push_frame(&mut out, kind, flags, stream, payload);
    out
}

fn push_setting(out: &mut Vec<u8>, id: u16, value: u32) {
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&value.to_be_bytes());
}

/// An HPACK integer with an `n`-bit prefix; `high` holds the bits above the prefix.
fn hpack_int(out: &mut Vec<u8>, n: u32, high: u8, value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(high | value as u8);
        return;
    }
    out.push(high | max as u8);
    let mut rest = value - max;
    while rest >= 0x80 {
        out.push((rest & 0x7f) as u8 | 0x80);
        rest >>= 7;
    }
    out.push(rest as u8);
}

/// An HPACK string of `len` bytes (not Huffman coded); only its length prefix, so that the
/// caller can append the bytes (or only some of them).
fn hpack_str_len(out: &mut Vec<u8>, len: usize) {
    hpack_int(out, 7, 0, len);
}

fn hpack_str(out: &mut Vec<u8>, s: &[u8]) {
    hpack_str_len(out, s.len());
    out.extend_from_slice(s);
}

/// A literal header field without indexing, with a new name.
fn literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.push(0x00);
    hpack_str(out, name);
    hpack_str(out, value);
}

/// The pseudo-headers of a request: GET or POST `path` on authority `t`, scheme http.
fn request_head(post: bool, path: &str) -> Vec<u8> {
    // Indexed fields of the static table: 2 is `:method GET`, 3 `:method POST`, 6 `:scheme
    // http`; `:path` (static name 4) and `:authority` (1) are literals without indexing.
    let mut b = vec![if post { 0x83 } else { 0x82 }, 0x86];
    hpack_int(&mut b, 4, 0x00, 4);
    hpack_str(&mut b, path.as_bytes());
    hpack_int(&mut b, 4, 0x00, 1);
    hpack_str(&mut b, b"t");
    b
}

/// Fills `block` with complete literal header fields `x-h: vvv...` up to about `size` bytes.
fn fill_with_fields(block: &mut Vec<u8>, size: usize) {
    let value = vec![b'v'; 1000];
    while block.len() + 1 + 4 + 3 + 1000 <= size {
        literal(block, b"x-h", &value);
    }
}

// ---------------------------------------------------------------------------------------------
// The attacking connection.

#[derive(Debug, Clone)]
struct GoAway {
    last_stream: u32,
    code: u32,
    debug: String,
}

impl std::fmt::Display for GoAway {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(
            f,
            "GOAWAY code {:#x}, last stream {}, debug data {:?}",
            self.code, self.last_stream, self.debug
        )
    }
}

/// What the server sent on the attacking connection.
#[derive(Default)]
struct Seen {
    /// Frames received, by type.
    frames: [AtomicU64; 10],
    settings_acks: AtomicU64,
    ping_acks: AtomicU64,
    goaway: Mutex<Option<GoAway>>,
    /// The header block of the first HEADERS frame.
    first_headers: Mutex<Option<Vec<u8>>>,
    /// RST_STREAM frames received, by error code.
    resets: Mutex<BTreeMap<u32, u64>>,
    /// How the connection ended, once it did.
    closed: Mutex<Option<String>>,
}

impl Seen {
    fn record(&self, kind: u8, flags: u8, payload: &[u8]) {
        if let Some(n) = self.frames.get(kind as usize) {
            n.fetch_add(1, Ordering::Relaxed);
        }
        match kind {
            SETTINGS if flags & ACK != 0 => {
                self.settings_acks.fetch_add(1, Ordering::Relaxed);
            }
            PING if flags & ACK != 0 => {
                self.ping_acks.fetch_add(1, Ordering::Relaxed);
            }
            HEADERS => {
                self.first_headers
                    .lock()
                    .unwrap()
                    .get_or_insert_with(|| payload.to_vec());
            }
            RST_STREAM if payload.len() == 4 => {
                let code = u32::from_be_bytes(payload.try_into().unwrap());
                *self.resets.lock().unwrap().entry(code).or_default() += 1;
            }
            GOAWAY if payload.len() >= 8 => {
                let word = |at: usize| u32::from_be_bytes(payload[at..at + 4].try_into().unwrap());
                let mut g = self.goaway.lock().unwrap();
                if g.is_none() {
                    *g = Some(GoAway {
                        last_stream: word(0) & 0x7fff_ffff,
                        code: word(4),
                        debug: String::from_utf8_lossy(&payload[8..]).into_owned(),
                    });
                }
            }
            _ => {}
        }
    }

    fn count(&self, kind: u8) -> u64 {
        self.frames[kind as usize].load(Ordering::Relaxed)
    }

    fn goaway(&self) -> Option<GoAway> {
        self.goaway.lock().unwrap().clone()
    }

    fn closed(&self) -> Option<String> {
        self.closed.lock().unwrap().clone()
    }

    /// Why the connection is over, if it is.
    fn ended(&self) -> Option<String> {
        match (self.goaway(), self.closed()) {
            (Some(g), _) => Some(g.to_string()),
            (None, Some(c)) => Some(format!("closed: {c}")),
            (None, None) => None,
        }
    }
}

/// Reads frames from the server until the connection ends, recording them in `seen`.
async fn read_frames(mut r: OwnedReadHalf, seen: Arc<Seen>) {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = match r.read(&mut chunk).await {
            Ok(0) => {
                *seen.closed.lock().unwrap() = Some("end of stream".into());
                return;
            }
            Ok(n) => n,
            Err(e) => {
                *seen.closed.lock().unwrap() = Some(e.to_string());
                return;
            }
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut at = 0;
        while buf.len() - at >= 9 {
            let h = &buf[at..at + 9];
            let len = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
            if buf.len() - at < 9 + len {
                break;
            }
            seen.record(h[3], h[4], &buf[at + 9..at + 9 + len]);
            at += 9 + len;
        }
        buf.drain(..at);
    }
}

/// How a flood stopped.
#[derive(Debug, PartialEq)]
enum End {
    /// It reached its frame count or its time.
    Bounds,
    /// The server ended the connection (GOAWAY, close, or a failed write).
    Ended(String),
    /// The server stopped reading: a write was blocked for `STALL`.
    Stalled,
}

#[derive(Debug)]
struct Flood {
    frames: u64,
    bytes: u64,
    took: Duration,
    end: End,
}

impl Flood {
    fn rate(&self) -> f64 {
        self.frames as f64 / self.took.as_secs_f64().max(1e-3)
    }
}

struct Attacker {
    w: OwnedWriteHalf,
    seen: Arc<Seen>,
    /// The read half when the attacker never reads (the server's frames pile up).
    _unread: Option<OwnedReadHalf>,
}

impl Attacker {
    /// Opens an h2c connection: the client preface, an empty SETTINGS frame and the ACK of the
    /// server's SETTINGS. With `read`, a task reads and records everything the server sends
    /// (and this waits for the server's SETTINGS); without, nothing is ever read.
    async fn connect(addr: std::net::SocketAddr, read: bool) -> Attacker {
        let s = TcpStream::connect(addr).await.unwrap();
        s.set_nodelay(true).unwrap();
        let (r, mut w) = s.into_split();
        let mut hello = PREFACE.to_vec();
        push_frame(&mut hello, SETTINGS, 0, 0, &[]);
        push_frame(&mut hello, SETTINGS, ACK, 0, &[]);
        w.write_all(&hello).await.unwrap();
        let seen = Arc::new(Seen::default());
        let mut a = Attacker {
            w,
            seen: seen.clone(),
            _unread: None,
        };
        if read {
            tokio::spawn(read_frames(r, seen));
            // The handshake is over once the server sent its SETTINGS and acknowledged ours:
            // a flood that counts ACKs starts after that one, never racing it.
            let s = a.seen.clone();
            assert!(
                wait_for(Duration::from_secs(5), || {
                    let acks = s.settings_acks.load(Ordering::Relaxed);
                    s.count(SETTINGS) > acks && acks >= 1
                })
                .await,
                "no SETTINGS or no ACK of ours from the server"
            );
        } else {
            a._unread = Some(r);
        }
        a
    }

    async fn send(&mut self, bytes: &[u8]) {
        tokio::time::timeout(STALL, self.w.write_all(bytes))
            .await
            .expect("write stalled")
            .expect("write failed");
    }

    /// Writes batches made by `next` (which fills the buffer and returns how many frames it
    /// holds) until the server ends the connection, stops reading, or `max_frames` or
    /// `max_time` are reached.
    async fn flood(
        &mut self,
        max_frames: u64,
        max_time: Duration,
        mut next: impl FnMut(&mut Vec<u8>) -> u64,
    ) -> Flood {
        let started = Instant::now();
        let (mut frames, mut bytes) = (0u64, 0u64);
        let mut batch = Vec::new();
        let end = loop {
            if let Some(why) = self.seen.ended() {
                break End::Ended(why);
            }
            if frames >= max_frames || started.elapsed() >= max_time {
                break End::Bounds;
            }
            batch.clear();
            let n = next(&mut batch);
            match tokio::time::timeout(STALL, self.w.write_all(&batch)).await {
                Ok(Ok(())) => {
                    frames += n;
                    bytes += batch.len() as u64;
                }
                Ok(Err(e)) => break End::Ended(format!("write failed: {e}")),
                Err(_) => break End::Stalled,
            }
        };
        Flood {
            frames,
            bytes,
            took: started.elapsed(),
            end,
        }
    }

    /// Sends a PING and waits for its ACK: the server has processed everything sent before
    /// and the connection is alive.
    async fn ping_pong(&mut self) -> bool {
        let before = self.seen.ping_acks.load(Ordering::Relaxed);
        self.send(&frame(PING, 0, 0, b"pingpong")).await;
        let seen = self.seen.clone();
        wait_for(Duration::from_secs(5), || {
            seen.ping_acks.load(Ordering::Relaxed) > before
        })
        .await
    }

    /// The GOAWAY the server sends within 5 s, followed by its close.
    async fn expect_goaway_and_close(&self, what: &str) -> GoAway {
        let seen = self.seen.clone();
        wait_for(Duration::from_secs(5), || {
            seen.goaway().is_some() && seen.closed().is_some()
        })
        .await;
        let g = self
            .seen
            .goaway()
            .unwrap_or_else(|| panic!("{what}: no GOAWAY (closed: {:?})", self.seen.closed()));
        assert!(
            self.seen.closed().is_some(),
            "{what}: the server sent {g:?} but kept the connection open"
        );
        g
    }

    /// Asserts that the connection is still open, no GOAWAY came, and a PING is answered.
    async fn expect_alive(&mut self, what: &str) {
        assert_eq!(self.seen.ended(), None, "{what}: the connection was ended");
        assert!(self.ping_pong().await, "{what}: a PING got no ACK");
    }

    /// Sends `last`, the frame the server is expected to end the connection for, waits for
    /// the GOAWAY and the close, then floods `batch` (`per_batch` frames) on: the flood must
    /// end at once.
    async fn last_straw(
        &mut self,
        what: &str,
        last: &[u8],
        batch: &[u8],
        per_batch: u64,
    ) -> (GoAway, Flood) {
        self.send(last).await;
        let g = self.expect_goaway_and_close(what).await;
        let f = self
            .flood(FLOOD_FRAMES, FLOOD_TIME, |b| {
                b.extend_from_slice(batch);
                per_batch
            })
            .await;
        (g, f)
    }

    /// Asserts that nothing comes back for `wait` (for states where a PING would be a
    /// protocol error, e.g. in the middle of a header block).
    async fn expect_quiet(&self, what: &str, wait: Duration) {
        tokio::time::sleep(wait).await;
        assert_eq!(self.seen.ended(), None, "{what}: the connection was ended");
    }
}

async fn wait_for(within: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if done() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// What a flood costs the server and the other clients.

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}

/// CPU time (user + system) the process has used.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which is in parentheses): state is the 3rd field, utime
    // and stime are the 14th and 15th.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf only reads a configuration value.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_millis(ticks * 1000 / per_second)
}

#[derive(Debug)]
struct Cost {
    /// How long the attack ran, and the server's CPU time meanwhile (serving the others
    /// included).
    took: Duration,
    cpu: Duration,
    rss_before_kib: u64,
    rss_peak_kib: u64,
    rss_after_kib: u64,
    /// Requests of other clients answered 200 while the attack ran.
    served: u32,
    slowest: Duration,
}

impl Cost {
    /// Prints the figures and asserts the bounds.
    fn check(&self, what: &str) {
        let growth = self.rss_peak_kib.saturating_sub(self.rss_before_kib);
        eprintln!(
            "{what}: server RSS {} KiB before, {} KiB peak (+{growth} KiB), {} KiB after; \
             server CPU {:?} in {:?}; {} requests of others served meanwhile, the slowest \
             in {:?}",
            self.rss_before_kib,
            self.rss_peak_kib,
            self.rss_after_kib,
            self.cpu,
            self.took,
            self.served,
            self.slowest
        );
        assert!(
            growth < RSS_BUDGET_KIB,
            "{what}: the server grew by {growth} KiB"
        );
        assert!(self.served >= 20, "{what}: only {} served", self.served);
        assert!(
            self.slowest < SLOWEST_ANSWER,
            "{what}: another client waited {:?}",
            self.slowest
        );
    }
}

/// Runs `attack` while sampling the server's RSS every 10 ms and while another client sends
/// requests one after the other, 10 ms apart (at least 20, until the attack is over); each
/// must get 200.
async fn under_attack<T>(proxy: &Sluice, attack: impl Future<Output = T>) -> (T, Cost) {
    let pid = proxy.pid();
    let before = rss_kib(pid);
    let (started, cpu_before) = (Instant::now(), cpu_time(pid));
    let peak = Arc::new(AtomicU64::new(before));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = tokio::spawn({
        let (peak, stop) = (peak.clone(), stop.clone());
        async move {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(rss_kib(pid), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    });
    let others = tokio::spawn({
        let (url, stop) = (proxy.url("/during"), stop.clone());
        async move {
            let c = client();
            let (mut served, mut slowest) = (0u32, Duration::ZERO);
            while served < 20 || !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let r = c
                    .get(&url)
                    .send()
                    .await
                    .expect("a request beside the flood");
                assert_eq!(r.status(), 200, "a request beside the flood");
                r.bytes().await.unwrap();
                slowest = slowest.max(t.elapsed());
                served += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (served, slowest)
        }
    });
    let out = attack.await;
    stop.store(true, Ordering::Relaxed);
    sampler.await.unwrap();
    let (served, slowest) = others.await.unwrap();
    peak.fetch_max(rss_kib(pid), Ordering::Relaxed);
    let cost = Cost {
        took: started.elapsed(),
        cpu: cpu_time(pid) - cpu_before,
        rss_before_kib: before,
        rss_peak_kib: peak.load(Ordering::Relaxed),
        rss_after_kib: rss_kib(pid),
        served,
        slowest,
    };
    (out, cost)
}

fn report(what: &str, f: &Flood) {
    eprintln!(
        "{what}: {} frames ({} bytes) written in {:?} ({:.0} frames/s), then {:?}",
        f.frames,
        f.bytes,
        f.took,
        f.rate(),
        f.end
    );
}

/// The connection was ended with GOAWAY ENHANCE_YOUR_CALM, reason `debug`, accepting streams up
/// to `last_stream`, and nothing sent after it got through.
fn assert_calmed(what: &str, g: &GoAway, f: &Flood, debug: &str, last_stream: u32) {
    assert_eq!(g.code, ENHANCE_YOUR_CALM, "{what}: {g:?}");
    assert_eq!(g.debug, debug, "{what}: {g:?}");
    assert_eq!(g.last_stream, last_stream, "{what}: {g:?}");
    assert!(
        matches!(f.end, End::Ended(_)) && f.frames == 0,
        "{what}: {f:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// The floods.

/// The control-frame floods (SETTINGS, PING) are not limited by count in h2 0.4.20: each
/// frame is answered with one ACK and the connection stays open. What bounds them: h2 keeps at
/// most one ACK pending and writes it before it reads the next frame, so an attacker that
/// reads gets one small frame back per frame it sends (no amplification, no buffering), and
/// an attacker that does not read is stopped by TCP: the server stops reading once its ACKs
/// fill the socket buffers (after some 10 MB on loopback here). What ends such connections is
/// the listener's `h2_idle_timeout_ms` (60 s by default, longer than these floods; see
/// `connections_without_requests_are_closed_after_the_h2_idle_timeout`).
async fn control_frame_flood(name: &str, batch: &[u8], per_batch: u64, acks: fn(&Seen) -> u64) {
    let proxy = start().await;

    // An attacker that reads every ACK.
    let mut a = Attacker::connect(proxy.addr, true).await;
    let acks_before = acks(&a.seen);
    let (f, cost) = under_attack(&proxy, async {
        let started = Instant::now();
        let f = a
            .flood(FLOOD_FRAMES, FLOOD_TIME, |b| {
                b.extend_from_slice(batch);
                per_batch
            })
            .await;
        // All the ACKs arrive (the server keeps up).
        let seen = a.seen.clone();
        let all = wait_for(Duration::from_secs(10), || {
            acks(&seen) - acks_before >= f.frames
        })
        .await;
        (f, all, started.elapsed())
    })
    .await;
    let (f, all_acked, processed) = f;
    let what = format!("{name} flood, reading the ACKs");
    report(&what, &f);
    eprintln!(
        "{what}: {} ACKs for {} frames, the last after {processed:?} ({:.0} frames/s); \
         GOAWAY {:?}, closed {:?}",
        acks(&a.seen) - acks_before,
        f.frames,
        f.frames as f64 / processed.as_secs_f64(),
        a.seen.goaway(),
        a.seen.closed()
    );
    cost.check(&what);
    assert_eq!(f.end, End::Bounds, "{what}");
    assert!(f.frames >= 1000, "{what}: only {} frames sent", f.frames);
    assert!(all_acked, "{what}: frames were not ACKed");
    assert_eq!(acks(&a.seen) - acks_before, f.frames, "{what}: ACKs");
    a.expect_alive(&what).await;
    drop(a);

    // An attacker that never reads: the server stops reading when its ACKs can't be written,
    // so the attacker's writes stall long before the count or time bound (4 000 000 frames,
    // 10 s); the server's memory stays flat.
    let mut b = Attacker::connect(proxy.addr, false).await;
    let unread_frames = 40 * FLOOD_FRAMES;
    let (f, cost) = under_attack(
        &proxy,
        b.flood(unread_frames, Duration::from_secs(10), |b| {
            b.extend_from_slice(batch);
            per_batch
        }),
    )
    .await;
    let what = format!("{name} flood, never reading");
    report(&what, &f);
    cost.check(&what);
    assert_eq!(
        f.end,
        End::Stalled,
        "{what}: the server read {} bytes without its ACKs being read",
        f.bytes
    );
    drop(b);

    served_after(&proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settings_flood_is_acked_one_for_one_and_stalls_when_acks_are_not_read() {
    // Each SETTINGS frame changes the initial stream window and the HPACK table size, so the
    // server has something to apply every time.
    let mut batch = Vec::new();
    for i in 0..100u32 {
        let mut p = Vec::new();
        push_setting(
            &mut p,
            SETTINGS_INITIAL_WINDOW_SIZE,
            65_535 + (i % 2) * 1000,
        );
        push_setting(&mut p, SETTINGS_HEADER_TABLE_SIZE, 4096 - (i % 2) * 1024);
        push_frame(&mut batch, SETTINGS, 0, 0, &p);
    }
    control_frame_flood("SETTINGS", &batch, 100, |s| {
        s.settings_acks.load(Ordering::Relaxed)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_flood_is_acked_one_for_one_and_stalls_when_acks_are_not_read() {
    let mut batch = Vec::new();
    for i in 0..1000u64 {
        push_frame(&mut batch, PING, 0, 0, &i.to_be_bytes());
    }
    control_frame_flood("PING", &batch, 1000, |s| {
        s.ping_acks.load(Ordering::Relaxed)
    })
    .await;
}

/// h2 0.4.20 allows `max(5, 1.25 × max_header_list_size / max_frame_size)` CONTINUATION
/// frames without END_HEADERS after a HEADERS frame: with pingora's 64 KiB header list limit
/// and 16 KiB frames that is 5; the 6th ends the connection with GOAWAY ENHANCE_YOUR_CALM
/// ("too_many_continuations"). A block whose decoded size passes 4 × 64 KiB ends it at once
/// ("header_list_way_too_large"). A complete block over 64 KiB gets a 431 on its stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuation_floods_end_the_connection_or_are_refused_per_stream() {
    let proxy = start().await;

    // 1. Tiny (empty) CONTINUATION frames after a HEADERS frame without END_HEADERS.
    let what = "empty CONTINUATION flood";
    let mut a = Attacker::connect(proxy.addr, true).await;
    let (f, cost) = under_attack(&proxy, async {
        a.send(&frame(HEADERS, END_STREAM, 1, &request_head(false, "/c")))
            .await;
        let cont = frame(CONTINUATION, 0, 1, &[]);
        for _ in 0..5 {
            a.send(&cont).await;
        }
        a.expect_quiet("5 empty CONTINUATION frames", Duration::from_millis(300))
            .await;
        a.last_straw(what, &cont, &cont.repeat(1000), 1000).await
    })
    .await;
    let (g, f) = f;
    eprintln!("{what}: 5 CONTINUATION frames were taken, the 6th ended it with {g}");
    report(&format!("{what} after the GOAWAY"), &f);
    cost.check(what);
    assert_calmed(what, &g, &f, "too_many_continuations", 0);

    // 2. A header block that keeps growing: one header whose value is declared 1 MiB long,
    //    sent in full-size CONTINUATION frames; h2 buffers the undecodable rest.
    let what = "growing CONTINUATION flood";
    let mut a = Attacker::connect(proxy.addr, true).await;
    let (f, cost) = under_attack(&proxy, async {
        let mut block = request_head(false, "/c");
        block.push(0x00);
        hpack_str(&mut block, b"x-grow");
        hpack_str_len(&mut block, 1 << 20);
        block.resize(MAX_FRAME, b'a');
        a.send(&frame(HEADERS, END_STREAM, 1, &block)).await;
        let cont = frame(CONTINUATION, 0, 1, &[b'a'; MAX_FRAME]);
        for _ in 0..5 {
            a.send(&cont).await;
        }
        a.expect_quiet("5 full CONTINUATION frames", Duration::from_millis(300))
            .await;
        a.last_straw(what, &cont, &cont, 1).await
    })
    .await;
    let (g, f) = f;
    eprintln!(
        "{what}: 5 CONTINUATION frames were taken (HEADERS + 5 CONTINUATION frames: at most \
         {} KiB of header block buffered), the 6th ended it with {g}",
        6 * MAX_FRAME / 1024
    );
    report(&format!("{what} after the GOAWAY"), &f);
    cost.check(what);
    assert_calmed(what, &g, &f, "too_many_continuations", 0);

    // 3. HPACK amplification: a 4000-byte header put in the dynamic table by the HEADERS
    //    frame, then referenced with one byte each, 16384 times per CONTINUATION frame (64 MiB
    //    of decoded headers per frame).
    let what = "HPACK-amplified CONTINUATION";
    let mut a = Attacker::connect(proxy.addr, true).await;
    let (f, cost) = under_attack(&proxy, async {
        let mut block = request_head(false, "/c");
        block.push(0x40); // literal with incremental indexing, new name: dynamic index 62
        hpack_str(&mut block, b"x-amp");
        hpack_str(&mut block, &[b'a'; 4000]);
        a.send(&frame(HEADERS, END_STREAM, 1, &block)).await;
        a.expect_quiet("the HEADERS frame", Duration::from_millis(300))
            .await;
        let cont = frame(CONTINUATION, 0, 1, &[0x80 | 62; MAX_FRAME]);
        a.last_straw(what, &cont, &cont, 1).await
    })
    .await;
    let (g, f) = f;
    eprintln!("{what}: the 1st CONTINUATION ended it with {g}");
    report(&format!("{what} after the GOAWAY"), &f);
    cost.check(what);
    assert_calmed(what, &g, &f, "header_list_way_too_large", 0);

    // 4. Complete header blocks over the 64 KiB limit (HEADERS + 5 full CONTINUATION frames,
    //    about 93 KiB decoded), one per new stream, as fast as possible.
    let what = "over-limit header blocks on new streams";
    let mut a = Attacker::connect(proxy.addr, true).await;
    let mut first = request_head(false, "/c");
    fill_with_fields(&mut first, MAX_FRAME);
    let mut rest = Vec::new();
    fill_with_fields(&mut rest, MAX_FRAME);
    let mut stream = 1u32;
    let (f, cost) = under_attack(
        &proxy,
        a.flood(FLOOD_FRAMES, FLOOD_TIME, |b| {
            push_frame(b, HEADERS, END_STREAM, stream, &first);
            for _ in 0..4 {
                push_frame(b, CONTINUATION, 0, stream, &rest);
            }
            push_frame(b, CONTINUATION, END_HEADERS, stream, &rest);
            stream += 2;
            6
        }),
    )
    .await;
    let streams = u64::from(stream / 2);
    let seen = a.seen.clone();
    let refused = move |s: &Seen| s.resets.lock().unwrap().get(&REFUSED_STREAM).copied();
    wait_for(Duration::from_secs(10), || {
        seen.count(HEADERS) + refused(&seen).unwrap_or(0) >= streams || seen.ended().is_some()
    })
    .await;
    report(what, &f);
    eprintln!(
        "{what}: {streams} streams, {} responses and RST_STREAM by code {:?} came back; \
         GOAWAY {:?}, closed {:?}; first response block {:02x?}",
        a.seen.count(HEADERS),
        a.seen.resets.lock().unwrap(),
        a.seen.goaway(),
        a.seen.closed(),
        a.seen.first_headers.lock().unwrap()
    );
    cost.check(what);
    assert_eq!(f.end, End::Bounds, "{what}: {f:?}");
    // Every stream is answered 431 (`:status 431` as h2 encodes it: literal with indexing
    // of static name 8, Huffman "431"), or, when 100 streams wait for their 431 to be
    // written, refused with RST_STREAM REFUSED_STREAM.
    let first = a
        .seen
        .first_headers
        .lock()
        .unwrap()
        .clone()
        .unwrap_or_default();
    assert_eq!(first, [0x48, 0x83, 0x69, 0x90, 0xff], "{what}: not a 431");
    let resets = a.seen.resets.lock().unwrap().clone();
    let refused = resets.get(&REFUSED_STREAM).copied().unwrap_or(0);
    assert_eq!(
        resets.keys().copied().collect::<Vec<_>>(),
        if refused > 0 {
            vec![REFUSED_STREAM]
        } else {
            vec![]
        },
        "{what}: RST_STREAM codes"
    );
    assert_eq!(
        a.seen.count(HEADERS) + refused,
        streams,
        "{what}: one 431 or REFUSED_STREAM per stream"
    );

    a.expect_alive(what).await;
    drop(a);

    served_after(&proxy).await;
}

/// h2 0.4.20 counts empty DATA frames without END_STREAM over the connection's life: 100 are
/// allowed, the 101st ends the connection with GOAWAY ENHANCE_YOUR_CALM
/// ("too_many_data_frames"). The request they belonged to does not stay in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_data_frame_flood_ends_the_connection_after_100_frames() {
    let proxy = start().await;
    let what = "empty DATA flood";
    let mut a = Attacker::connect(proxy.addr, true).await;
    let (f, cost) = under_attack(&proxy, async {
        // A POST whose body never comes: it is proxied (in flight) meanwhile.
        a.send(&frame(HEADERS, END_HEADERS, 1, &request_head(true, "/d")))
            .await;
        let empty = frame(DATA, 0, 1, &[]);
        a.send(&empty.repeat(100)).await;
        a.expect_alive("100 empty DATA frames").await;
        proxy.wait_metric("sluice_requests_in_flight", 1.0).await;
        a.last_straw(what, &empty, &empty.repeat(1000), 1000).await
    })
    .await;
    let (g, f) = f;
    eprintln!("{what}: 100 empty DATA frames were taken, the 101st ended it with {g}");
    report(&format!("{what} after the GOAWAY"), &f);
    cost.check(what);
    assert_calmed(what, &g, &f, "too_many_data_frames", 1);
    served_after(&proxy).await;
}

/// A WINDOW_UPDATE flood (increment 1 on the connection) is not limited by count: each frame
/// only adds to the send window, nothing is answered or kept, and the connection stays open
/// until the window passes 2^31 - 1, which ends it with GOAWAY FLOW_CONTROL_ERROR.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_update_flood_costs_nothing_and_an_overflow_ends_the_connection() {
    let proxy = start().await;
    let what = "WINDOW_UPDATE flood";
    let mut a = Attacker::connect(proxy.addr, true).await;
    let many = frame(WINDOW_UPDATE, 0, 0, &1u32.to_be_bytes()).repeat(1000);
    let (f, cost) = under_attack(&proxy, async {
        let started = Instant::now();
        let f = a
            .flood(FLOOD_FRAMES, FLOOD_TIME, |b| {
                b.extend_from_slice(&many);
                1000
            })
            .await;
        // The PING after the flood is answered once all of it has been processed.
        a.expect_alive(what).await;
        (f, started.elapsed())
    })
    .await;
    let (f, processed) = f;
    report(what, &f);
    eprintln!("{what}: processed (PING answered) after {processed:?}");
    cost.check(what);
    assert_eq!(f.end, End::Bounds, "{what}: {f:?}");
    let answered: u64 = (0..10).map(|k| a.seen.count(k)).sum();
    eprintln!("{what}: {answered} frames came back in all (SETTINGS and PING ACKs included)");

    // The window overflows: 65 535 + the flood's increments + 2^31 - 1 > 2^31 - 1.
    a.send(&frame(WINDOW_UPDATE, 0, 0, &0x7fff_ffffu32.to_be_bytes()))
        .await;
    let g = a.expect_goaway_and_close("window overflow").await;
    eprintln!("{what}: the overflowing WINDOW_UPDATE ended it with {g}");
    assert_eq!(g.code, FLOW_CONTROL_ERROR, "{g:?}");
    served_after(&proxy).await;
}

/// The floods that no count limits (PING, SETTINGS, WINDOW_UPDATE) and connections that stopped
/// reading are ended by the listener's `h2_idle_timeout_ms`: a connection with no request in
/// flight for that long is closed, whatever control frames it sends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_without_requests_are_closed_after_the_h2_idle_timeout() {
    let proxy = start_with(", h2_idle_timeout_ms: 1000").await;

    // A PING every 5 ms, ACKs read: closed after about 1 s instead of running to its 8 s.
    let mut a = Attacker::connect(proxy.addr, true).await;
    let mut i = 0u64;
    let f = a
        .flood(u64::MAX, Duration::from_secs(8), |b| {
            i += 1;
            push_frame(b, PING, 0, 0, &i.to_be_bytes());
            std::thread::sleep(Duration::from_millis(5));
            1
        })
        .await;
    eprintln!("paced PING flood with a 1 s idle timeout: {f:?}");
    assert!(matches!(f.end, End::Ended(_)), "{f:?}");
    assert!(f.took < Duration::from_secs(5), "closed after {:?}", f.took);

    // A PING flood that never reads the ACKs: the server closes it at the idle timeout,
    // while it is still being written (a failed write) or after it stalled (reading it then
    // drains the queued ACKs and reaches the end).
    let mut b = Attacker::connect(proxy.addr, false).await;
    let f = b
        .flood(40 * FLOOD_FRAMES, Duration::from_secs(10), |batch| {
            for j in 0..1000u64 {
                push_frame(batch, PING, 0, 0, &j.to_be_bytes());
            }
            1000
        })
        .await;
    eprintln!("unread PING flood with a 1 s idle timeout: {f:?}");
    match f.end {
        End::Ended(_) => assert!(f.took < Duration::from_secs(5), "{f:?}"),
        End::Stalled => {
            let mut r = b._unread.take().expect("the unread half");
            let mut buf = vec![0u8; 1 << 16];
            let eof = tokio::time::timeout(Duration::from_secs(10), async {
                while let Ok(n) = r.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
            })
            .await;
            assert!(eof.is_ok(), "the stalled connection was not closed");
        }
        End::Bounds => panic!("the unread flood ran to its bounds: {f:?}"),
    }

    // A connection with a request in flight is not idle: a slow request outlives the timeout.
    let tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let (mut h2, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("http://t/slow?delay_ms=1500")
        .body(())
        .unwrap();
    let (response, _) = h2.send_request(req, true).unwrap();
    assert_eq!(response.await.unwrap().status(), 200);
    served_after(&proxy).await;
}
