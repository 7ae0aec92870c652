//! Hostile clients through real sockets: request smuggling attempts, oversized headers and
//! bodies, idle and trickling connections, and clients that vanish in every phase of a
//! request that plugins are working on.

mod support;

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::*;

/// Sends `raw` on a new connection and reads until the server closes it or `wait` passes.
/// Returns what came back and whether the server closed the connection.
async fn exchange(addr: std::net::SocketAddr, raw: &[u8], wait: Duration) -> (String, bool) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(raw).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 16384];
    let deadline = tokio::time::Instant::now() + wait;
    let closed = loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => break false,
        }
    };
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

/// `n` connections that each sent half a request head to `path` (and nothing more).
async fn half_heads(addr: std::net::SocketAddr, path: &str, n: usize) -> Vec<TcpStream> {
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nhost: t\r\n").as_bytes())
            .await
            .unwrap();
        conns.push(s);
    }
    conns
}

fn status_of(response: &str) -> u16 {
    response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_framing_is_refused_or_resolved_never_forwarded_twice() {
    let proxy = start_tagged(", max_request_header_bytes: 8192, max_request_body_bytes: 100").await;
    let w = Duration::from_secs(5);
    // (what, request, expected status)
    let refused: &[(&str, &[u8], u16)] = &[
        (
            "two equal Content-Length headers",
            b"POST /a HTTP/1.1\r\nhost: t\r\ncontent-length: 4\r\ncontent-length: 4\r\n\r\nabcd",
            400,
        ),
        (
            "two different Content-Length headers",
            b"POST /a HTTP/1.1\r\nhost: t\r\ncontent-length: 4\r\ncontent-length: 5\r\n\r\nabcde",
            400,
        ),
        (
            "a Content-Length list",
            b"POST /a HTTP/1.1\r\nhost: t\r\ncontent-length: 4, 5\r\n\r\nabcde",
            400,
        ),
        (
            "an unknown transfer coding",
            b"POST /a HTTP/1.1\r\nhost: t\r\ntransfer-encoding: xchunked\r\n\r\n0\r\n\r\n",
            400,
        ),
        (
            "chunked, then another coding",
            b"POST /a HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked, identity\r\n\r\n0\r\n\r\n",
            400,
        ),
        (
            "white space before the colon",
            b"POST /a HTTP/1.1\r\nhost: t\r\ntransfer-encoding : chunked\r\n\r\n0\r\n\r\n",
            400,
        ),
        (
            "a negative Content-Length",
            b"POST /a HTTP/1.1\r\nhost: t\r\ncontent-length: -1\r\n\r\n",
            400,
        ),
        (
            "Transfer-Encoding on HTTP/1.0",
            b"POST /a HTTP/1.0\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
        ),
    ];
    for (what, raw, want) in refused {
        let (resp, closed) = exchange(proxy.addr, raw, w).await;
        assert_eq!(status_of(&resp), *want, "{what}: {resp}");
        assert!(
            closed,
            "{what}: the connection stayed open after a framing error"
        );
        assert!(
            !resp.contains("\"upstream\""),
            "{what} reached the upstream: {resp}"
        );
    }

    // Content-Length and Transfer-Encoding together: chunked wins (RFC 9112), the upstream
    // never sees the Content-Length, and the connection closes after the response, so a
    // request smuggled behind it is never read.
    let (resp, closed) = exchange(
        proxy.addr,
        b"POST /first HTTP/1.1\r\nhost: t\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n\
          0\r\n\r\nGET /smuggled HTTP/1.1\r\nhost: t\r\n\r\n",
        w,
    )
    .await;
    assert_eq!(status_of(&resp), 200, "{resp}");
    assert!(closed);
    assert!(resp.contains("\"/first\""), "{resp}");
    assert!(!resp.contains("content-length\": ["), "{resp}");
    assert!(
        resp.contains("\"transfer-encoding\": [\n      \"chunked\""),
        "{resp}"
    );
    assert!(
        !resp.contains("smuggled"),
        "the smuggled request was served: {resp}"
    );

    // The listener's limits: a header over 8 KiB gets 431, under passes; bodies over 100
    // bytes get 413, declared or chunked.
    let big = format!(
        "GET /a HTTP/1.1\r\nhost: t\r\nx-big: {}\r\n\r\n",
        "a".repeat(9000)
    );
    let (resp, _) = exchange(proxy.addr, big.as_bytes(), w).await;
    assert_eq!(status_of(&resp), 431, "{resp}");
    assert!(resp.contains("this listener accepts 8192"), "{resp}");
    let fits = format!(
        "GET /a HTTP/1.1\r\nhost: t\r\nx-big: {}\r\nconnection: close\r\n\r\n",
        "a".repeat(7000)
    );
    let (resp, _) = exchange(proxy.addr, fits.as_bytes(), w).await;
    assert_eq!(status_of(&resp), 200, "{resp}");
    let declared = format!(
        "POST /a HTTP/1.1\r\nhost: t\r\ncontent-length: 101\r\n\r\n{}",
        "b".repeat(101)
    );
    let (resp, _) = exchange(proxy.addr, declared.as_bytes(), w).await;
    assert_eq!(status_of(&resp), 413, "{resp}");
    let chunked = format!(
        "POST /a HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n65\r\n{}\r\n0\r\n\r\n",
        "b".repeat(101)
    );
    let (resp, _) = exchange(proxy.addr, chunked.as_bytes(), w).await;
    assert_eq!(status_of(&resp), 413, "{resp}");
    let small = "POST /a HTTP/1.1\r\nhost: t\r\ncontent-length: 100\r\nconnection: close\r\n\r\n"
        .to_string()
        + &"b".repeat(100);
    let (resp, _) = exchange(proxy.addr, small.as_bytes(), w).await;
    assert_eq!(status_of(&resp), 200, "{resp}");
    assert!(resp.contains("\"body_len\": 100"), "{resp}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_trickling_connections_do_not_starve_others() {
    let proxy = start_tagged("").await;
    // 300 connections that send half a request header and then nothing, and 20 that send
    // one byte every 100 ms.
    let idle = half_heads(proxy.addr, "/idle", 300).await;
    let trickle: Vec<_> = (0..20)
        .map(|_| {
            let addr = proxy.addr;
            tokio::spawn(async move {
                let mut s = TcpStream::connect(addr).await.unwrap();
                for b in b"GET /trickle HTTP/1.1\r\nhost: t\r\nx-slow: "
                    .iter()
                    .cycle()
                    .take(100)
                {
                    if s.write_all(&[*b]).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        })
        .collect();
    // Meanwhile ordinary clients are served as usual.
    let c = client();
    let started = Instant::now();
    for _ in 0..200 {
        let r = c.get(proxy.url("/ok")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-tag"], "yes");
    }
    let took = started.elapsed();
    eprintln!("200 requests beside 320 slow connections: {took:?}");
    assert!(took < Duration::from_secs(20), "{took:?}");
    for t in trickle {
        t.abort();
    }
    drop(idle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_vanish_in_any_phase_leave_no_plugin_context_behind() {
    let proxy = start_tagged("").await;
    let contexts = "sluice_plugin_contexts{plugin=\"tag\",version=\"stable\"}";
    // Before the header is complete: no context was ever made.
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"GET /a HTTP/1.1\r\nhost: t\r\n")
        .await
        .unwrap();
    drop(s);
    // In the middle of the request body.
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"POST /a HTTP/1.1\r\nhost: t\r\ncontent-length: 100000\r\n\r\npartial")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(s);
    // While the upstream takes its time.
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"GET /a?delay_ms=2000 HTTP/1.1\r\nhost: t\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(s);
    // In the middle of a 64 MB response body.
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"GET /a?bytes=67108864 HTTP/1.1\r\nhost: t\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 65536];
    let mut got = 0;
    while got < 1 << 20 {
        got += s.read(&mut buf).await.unwrap();
    }
    // The plugin's context of that request (at least) is alive now.
    let live = proxy.metric(contexts).await.unwrap_or(0.0);
    assert!(
        live >= 1.0,
        "{contexts}: {live} while a response is streaming"
    );
    drop(s);
    // Then every context is gone (the slow upstream's answer comes after 2 s).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let live = proxy.metric(contexts).await;
        if live == Some(0.0) {
            break;
        }
        assert!(Instant::now() < deadline, "{contexts} is still {live:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // ... and the proxy serves on.
    let r = client().get(proxy.url("/after")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    proxy.wait_metric("sluice_requests_in_flight", 0.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_rapid_reset_flood_does_not_stop_other_clients() {
    let proxy = start_tagged("").await;
    let tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let (h2, conn) = h2::client::handshake(tcp).await.unwrap();
    let conn_task = tokio::spawn(conn);
    // Open streams (each a request to a slow upstream path) and reset each at once.
    let mut h2 = h2;
    let mut reset = 0u32;
    let mut ended = None;
    let started = Instant::now();
    for i in 0..10_000 {
        let mut ready = match h2.clone().ready().await {
            Ok(r) => r,
            Err(e) => {
                ended = Some(e.to_string());
                break;
            }
        };
        let req = http::Request::get(format!("http://t/rr/{i}?delay_ms=2000"))
            .body(())
            .unwrap();
        match ready.send_request(req, true) {
            Ok((_response, mut stream)) => {
                stream.send_reset(h2::Reason::CANCEL);
                reset += 1;
            }
            Err(e) => {
                ended = Some(e.to_string());
                break;
            }
        }
        h2 = ready;
    }
    let flood = started.elapsed();
    // Other clients are served meanwhile and after.
    let c = client();
    for _ in 0..20 {
        let r = c.get(proxy.url("/ok")).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    let conn_result = tokio::time::timeout(Duration::from_secs(10), conn_task).await;
    eprintln!("rapid reset: {reset} streams reset in {flood:?}; the client saw {ended:?}");
    // The server ends the attacking connection long before the 10 000 streams: with
    // GOAWAY ENHANCE_YOUR_CALM ("too_many_resets"), which the client sees as that error, or,
    // when the close overtakes the frame, as a broken pipe or a reset.
    assert!(reset < 10_000, "{reset} streams were accepted and reset");
    let why = format!("{ended:?} {conn_result:?}");
    assert!(
        ended.is_some()
            && [
                "too_many_resets",
                "ENHANCE_YOUR_CALM",
                "BrokenPipe",
                "broken pipe",
                "reset"
            ]
            .iter()
            .any(|w| why.contains(w)),
        "the server did not end the connection: {why}"
    );
    // The reset requests do not stay in flight.
    proxy.wait_metric("sluice_requests_in_flight", 0.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_closes_the_extra_ones_on_arrival() {
    let proxy = start_tagged(", max_connections: 5").await;
    let mut held = half_heads(proxy.addr, "/held", 5).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A sixth is closed before anything is read from it.
    let (resp, closed) = exchange(
        proxy.addr,
        b"GET /extra HTTP/1.1\r\nhost: t\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(
        closed && resp.is_empty(),
        "the sixth connection got {resp:?}"
    );
    proxy
        .wait_metric("sluice_connections_refused_total{listener=\"public\"}", 1.0)
        .await;
    // One of the five leaves: a new connection is served.
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (resp, _) = exchange(
        proxy.addr,
        b"GET /next HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(status_of(&resp), 200, "{resp}");
}

/// Reads from `s` until the server closes it or `wait` passes, writing `drip` every `every`
/// meanwhile (write errors ignored: the server may have closed). Returns what came back and
/// whether the server closed the connection.
async fn read_while_dripping(
    s: &mut TcpStream,
    drip: &[u8],
    every: Duration,
    wait: Duration,
) -> (String, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + wait;
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    let closed = loop {
        tokio::select! {
            r = s.read(&mut buf) => match r {
                Ok(0) | Err(_) => break true,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            },
            _ = tick.tick() => { let _ = s.write_all(drip).await; }
            _ = tokio::time::sleep_until(deadline) => break false,
        }
    };
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_must_arrive_within_the_listener_deadline() {
    let proxy = start_tagged(", request_header_timeout_ms: 1000").await;
    let timeouts = "sluice_client_errors_total{kind=\"header_timeout\",listener=\"public\"}";

    // A head trickled one header line every 200 ms: each read comes well within pingora's own
    // per-read timeout, but the whole head does not come within 1 s: 408, connection closed.
    let started = Instant::now();
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"GET /trickle HTTP/1.1\r\nhost: t\r\n")
        .await
        .unwrap();
    let (resp, closed) = read_while_dripping(
        &mut s,
        b"x-drip: 1\r\n",
        Duration::from_millis(200),
        Duration::from_secs(8),
    )
    .await;
    let took = started.elapsed();
    assert_eq!(status_of(&resp), 408, "{resp:?}");
    assert!(closed, "the trickling connection was left open");
    assert!(took < Duration::from_secs(4), "408 came after {took:?}");
    proxy.wait_metric(timeouts, 1.0).await;

    // A connection that sends nothing is closed after the deadline, without an answer.
    let started = Instant::now();
    let (resp, closed) = exchange(proxy.addr, b"", Duration::from_secs(8)).await;
    assert!(closed && resp.is_empty(), "silent connection: {resp:?}");
    assert!(started.elapsed() >= Duration::from_millis(900));
    proxy.wait_metric(timeouts, 2.0).await;

    // On a kept-alive connection the deadline starts at a head's first byte: a wait between
    // requests longer than the deadline is fine, a trickled second head is not.
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"GET /one HTTP/1.1\r\nhost: t\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 65536];
    let n = s.read(&mut buf).await.unwrap();
    assert_eq!(status_of(&String::from_utf8_lossy(&buf[..n])), 200);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    s.write_all(b"GET /two HTTP/1.1\r\nhost: t\r\n\r\n")
        .await
        .unwrap();
    let n = s.read(&mut buf).await.unwrap();
    let second = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert_eq!(status_of(&second), 200, "{second}");
    s.write_all(b"GET /three HTTP/1.1\r\n").await.unwrap();
    let (resp, closed) = read_while_dripping(
        &mut s,
        b"x-drip: 1\r\n",
        Duration::from_millis(200),
        Duration::from_secs(8),
    )
    .await;
    assert!(
        status_of(&resp) == 408 && closed,
        "trickled second head: {resp:?} (closed: {closed})"
    );
    proxy.wait_metric(timeouts, 3.0).await;

    // The deadline is for the head only: a body sent more slowly than it is not cut.
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(
        b"POST /slow-body HTTP/1.1\r\nhost: t\r\ncontent-length: 8\r\nconnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        s.write_all(b"b").await.unwrap();
    }
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("the slow-body response")
        .unwrap();
    let resp = String::from_utf8_lossy(&out);
    assert_eq!(status_of(&resp), 200, "{resp}");
    assert_eq!(proxy.metric(timeouts).await, Some(3.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_that_are_not_http_get_400_at_once() {
    // The default head deadline is 10 s: every answer here must come well before it.
    let proxy = start_tagged("").await;
    let cases: [&[u8]; 5] = [
        b"HELLO\r\n\r\n",
        // The start of a TLS ClientHello, sent to a plain listener.
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03",
        b"SSH-2.0-OpenSSH_9.2\r\n",
        // HTTP/0.9 and an unknown version.
        b"GET /\r\n",
        b"GET / HTTP/3.0\r\nhost: t\r\n\r\n",
    ];
    for raw in cases {
        let started = Instant::now();
        let (resp, closed) = exchange(proxy.addr, raw, Duration::from_secs(8)).await;
        let took = started.elapsed();
        let what = String::from_utf8_lossy(raw);
        assert_eq!(status_of(&resp), 400, "{what:?} got {resp:?}");
        assert!(closed, "{what:?}: connection left open");
        assert!(
            took < Duration::from_secs(3),
            "{what:?}: answered after {took:?}"
        );
    }
    proxy
        .wait_metric(
            "sluice_client_errors_total{kind=\"not_http\",listener=\"public\"}",
            cases.len() as f64,
        )
        .await;
    // HTTP/1 and HTTP/2 (prior knowledge) clients are served as before.
    let (resp, _) = exchange(
        proxy.addr,
        b"\r\nGET /fine HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(status_of(&resp), 200, "{resp}");
    let tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let (mut h2, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("http://t/h2").body(()).unwrap();
    let (response, _) = h2.send_request(req, true).unwrap();
    assert_eq!(response.await.unwrap().status(), 200);
}
