//! The demo upstream: a small HTTP/1.1 + HTTP/2 server that answers every request with a JSON
//! description of what it received (method, path, headers, body). Used by `sluice demo`,
//! `sluice upstream`, the benchmarks and the integration tests.
//!
//! Query parameters change its answer, for trying out the proxy:
//! - `status=N`: answer with status N;
//! - `delay_ms=N`: wait N ms before answering;
//! - `bytes=N`: instead of JSON, stream N bytes (`0123456789abcdef…`) in 64 KiB chunks.
//!
//! `GET /health` answers `200 ok`, or the status last set with `PUT /health?status=N` (to see
//! the proxy's health checks take an endpoint out and bring it back).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::hash::{fnv1a64_update, FNV1A64_START};

const CHUNK: usize = 64 * 1024;
const MAX_ECHO_BODY: usize = 64 * 1024;

/// Byte `i` of a `bytes=N` response.
pub fn pattern_byte(i: usize) -> u8 {
    b"0123456789abcdef"[i % 16]
}

/// Serves the demo upstream on `listener` until the task is dropped. `name` appears in every
/// answer, so a client can tell endpoints apart.
pub async fn serve(listener: tokio::net::TcpListener, name: &str) {
    let name: Arc<str> = name.into();
    let conns = Arc::new(AtomicU64::new(0));
    let health = Arc::new(AtomicU16::new(200));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let conn = conns.fetch_add(1, Ordering::Relaxed) + 1;
        let name = name.clone();
        let health = health.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let name = name.clone();
                let health = health.clone();
                async move { Ok::<_, Infallible>(answer(req, &name, conn, peer, &health).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

type Body = BoxBody<Bytes, Infallible>;

fn full(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .body(Full::new(body.into()).boxed())
        .expect("valid response")
}

async fn answer(
    req: Request<Incoming>,
    name: &str,
    conn: u64,
    peer: SocketAddr,
    health: &AtomicU16,
) -> Response<Body> {
    if req.uri().path() == "/health" {
        if req.method() == http::Method::PUT {
            let wanted = req
                .uri()
                .query()
                .and_then(|q| q.strip_prefix("status="))
                .and_then(|s| StatusCode::from_bytes(s.as_bytes()).ok());
            return match wanted {
                Some(s) => {
                    health.store(s.as_u16(), Ordering::Relaxed);
                    full(StatusCode::OK, "text/plain", format!("health is now {s}\n"))
                }
                None => full(StatusCode::BAD_REQUEST, "text/plain", "use ?status=N\n"),
            };
        }
        let status = StatusCode::from_u16(health.load(Ordering::Relaxed)).unwrap_or(StatusCode::OK);
        return full(status, "text/plain", "ok\n");
    }
    let query: BTreeMap<String, String> = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let num = |k: &str| query.get(k).and_then(|v| v.parse::<u64>().ok());
    let status = num("status")
        .and_then(|s| StatusCode::from_u16(s as u16).ok())
        .unwrap_or(StatusCode::OK);

    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let version = format!("{:?}", req.version());
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in req.headers() {
        headers
            .entry(k.as_str().to_string())
            .or_default()
            .push(String::from_utf8_lossy(v.as_bytes()).into_owned());
    }

    // Read the body as it streams in, keeping only its length, checksum and a prefix.
    let mut body = req.into_body();
    let (mut len, mut sum, mut kept) = (0usize, FNV1A64_START, Vec::new());
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { break };
        if let Ok(data) = frame.into_data() {
            len += data.len();
            sum = fnv1a64_update(sum, &data);
            if kept.len() < MAX_ECHO_BODY {
                let take = (MAX_ECHO_BODY - kept.len()).min(data.len());
                kept.extend_from_slice(&data[..take]);
            }
        }
    }

    if let Some(ms) = num("delay_ms") {
        tokio::time::sleep(Duration::from_millis(ms.min(600_000))).await;
    }

    if let Some(n) = num("bytes") {
        let n = n as usize;
        let chunks = (0..n.div_ceil(CHUNK)).map(move |c| {
            let start = c * CHUNK;
            let end = (start + CHUNK).min(n);
            let data: Vec<u8> = (start..end).map(pattern_byte).collect();
            Ok::<_, Infallible>(Frame::data(Bytes::from(data)))
        });
        let stream = futures_util::stream::iter(chunks);
        return Response::builder()
            .status(status)
            .header(http::header::CONTENT_TYPE, "application/octet-stream")
            .header("x-upstream", name)
            .body(BodyExt::boxed(StreamBody::new(stream)))
            .expect("valid response");
    }

    let text = if len <= MAX_ECHO_BODY {
        String::from_utf8(kept).ok()
    } else {
        None
    };
    let echo = serde_json::json!({
        "upstream": name,
        "connection": conn,
        "peer": peer.to_string(),
        "method": method,
        "path": path,
        "query": query,
        "version": version,
        "headers": headers,
        "body_len": len,
        "body_fnv1a64": format!("{sum:016x}"),
        "body": text,
    });
    let mut resp = full(
        status,
        "application/json",
        serde_json::to_vec_pretty(&echo).expect("json"),
    );
    resp.headers_mut().insert(
        "x-upstream",
        http::HeaderValue::from_str(name).unwrap_or(http::HeaderValue::from_static("demo")),
    );
    resp
}
