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

#[path = "../support/mod.rs"]
mod support;

// The harness.
mod attacker;
mod cost;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use attacker::*;
use cost::*;
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
// The floods.

mod continuation;
mod control_frames;
mod data_and_window_update;
mod idle_timeout;
