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

#[path = "../support/mod.rs"]
mod support;

// The harness.
mod clients;
mod messages;
mod plugin_logs;
mod raw_server;

// The tests, one module per subject (their sections are numbered 1 to 8).
mod bodies;
mod clients_that_leave;
mod close_stream;
mod context_ids;
mod local_replies;
mod pauses;

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

use clients::*;
use messages::*;
use plugin_logs::*;
use raw_server::*;
use support::*;

/// Pause between the writes of a body (client and upstream alike).
const PAUSE: Duration = Duration::from_millis(40);

/// Longest wait for anything (an answer, a close, a log line): nothing here should take
/// more than a fraction of it.
const WAIT: Duration = Duration::from_secs(5);

/// The upstream's answer to any request without a scripted reply.
const DONE: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\nx-up: yes\r\n\r\ndone";

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
            .wait_metric(
                &format!("sluice_plugin_contexts{{plugin=\"{p}\",version=\"stable\"}}"),
                0.0,
            )
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
                    .wait_metric(
                        &format!("sluice_plugin_vms{{plugin=\"{p}\",version=\"stable\"}}"),
                        1.0,
                    )
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
