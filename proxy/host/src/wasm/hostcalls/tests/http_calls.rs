// ---------------------------------------------------------------------------------------------
// HTTP calls and gRPC.

use super::*;

fn callout_headers(w: &mut Wat, authority: bool) -> (u32, u32) {
    let mut h = vec![(":method", "GET"), (":path", "/ping"), ("x-call", "1")];
    if authority {
        h.push((":authority", "svc.local"));
    }
    w.bytes(&encode(&h))
}

#[test]
fn http_call_refusals() {
    let mut w = Wat::new();
    let (up, ul) = w.str("nope");
    let (hp, hl) = callout_headers(&mut w, true);
    let (np, nl) = callout_headers(&mut w, false);
    let bad = encode(&[("x a", "1")]);
    let (bp, bl) = w.bytes(&bad);
    let call = |u: (u32, u32), h: (u32, u32), body_len: u32, timeout: u32, ret: u32| {
        c(
            "http_call",
            &[u.0, u.1, h.0, h.1, DATA, body_len, 0, 0, timeout, ret],
        )
    };
    let unknown = w.case(call((up, ul), (hp, hl), 0, 1000, R3));
    let no_authority = w.case(call((up, ul), (np, nl), 0, 1000, R3));
    let bad_headers = w.case(call((up, ul), (bp, bl), 0, 1000, R3));
    let upstream_oob = w.case(call((OOB, 0x20), (hp, hl), 0, 1000, R3));
    let upstream_over_cap = w.case(call((0, 257), (hp, hl), 0, 1000, R3));
    let headers_huge = w.case(call((up, ul), (hp, HUGE), 0, 1000, R3));
    let body_huge = w.case(call((up, ul), (hp, hl), HUGE, 1000, R3));
    let token_oob = w.case(call((up, ul), (hp, hl), 0, 1000, OOB));
    let trailers_oob = w.case(c(
        "http_call",
        &[up, ul, hp, hl, DATA, 0, 0xFFFF_FFFF, 2, 1000, R3],
    ));
    let mut t = start(&w, settings("hc-callout-refused"));
    assert_eq!(t.case(unknown), BAD_ARGUMENT, "not in allowed_upstreams");
    assert_eq!(t.case(no_authority), BAD_ARGUMENT);
    assert_eq!(t.case(bad_headers), BAD_ARGUMENT);
    assert_eq!(t.case(upstream_over_cap), BAD_ARGUMENT);
    assert_eq!(t.case(upstream_oob), INVALID_MEMORY_ACCESS);
    assert_eq!(t.case(headers_huge), INVALID_MEMORY_ACCESS);
    assert_eq!(t.case(body_huge), INVALID_MEMORY_ACCESS);
    assert_eq!(t.case(token_oob), INVALID_MEMORY_ACCESS);
    assert_eq!(t.case(trailers_oob), INVALID_MEMORY_ACCESS);
    assert_eq!((t.s().callouts_made, t.s().pending_callouts), (0, 0));
    assert!(t.rx.try_recv().is_err(), "nothing was dispatched");
    t.assert_healthy();
}

/// One HTTP/1.1 exchange on a local port; returns the request the server read.
fn one_shot_server(
    response: &'static [u8],
) -> (std::net::SocketAddr, std::thread::JoinHandle<String>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut req = Vec::new();
        let mut buf = [0u8; 1024];
        while !req.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = conn.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            req.extend_from_slice(&buf[..n]);
        }
        conn.write_all(response).unwrap();
        String::from_utf8_lossy(&req).into_owned()
    });
    (addr, server)
}

#[test]
fn http_call_to_an_allowed_upstream() {
    let (addr, server) = one_shot_server(
        b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\nx-up: yes\r\nconnection: close\r\n\r\npong",
    );
    let pool = callout_pool("svc", addr);
    let mut w = Wat::new();
    let (up, ul) = w.str("svc");
    let (hp, hl) = callout_headers(&mut w, true);
    let call = w.case(c("http_call", &[up, ul, hp, hl, DATA, 0, 0, 0, 5000, R3]));
    let status = w.case(c("get_status", &[R3, RP, RL]));
    let body = w.case(c("get_buffer", &[4, 0, 100, RP, RL]));
    let (xp, xl) = w.str("x-up");
    let header = w.case(c("get_value", &[6, xp, xl, RP, RL]));
    let (vp, vl) = w.str("no");
    let write = w.case(c("add_value", &[6, xp, xl, vp, vl]));
    let set = w.case(c("set_pairs", &[7, hp, hl]));
    let mut s = settings("hc-callout");
    s.callout_targets.insert("svc".into(), pool);
    s.limits.max_callouts = 1;
    let mut t = start(&w, s);
    assert_eq!(t.case(call), OK);
    let token = t.u32_at(R3);
    assert_ne!(token, 0);
    assert_eq!((t.s().callouts_made, t.s().pending_callouts), (1, 1));
    assert_eq!(t.case(call), BAD_ARGUMENT, "max_callouts is 1");
    assert_eq!(t.s().callouts_made, 1);

    let deadline = Instant::now() + Duration::from_secs(10);
    let done = loop {
        match t.rx.try_recv() {
            Ok(done) => break done,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => panic!("no callout result: {e}"),
        }
    };
    let seen = server.join().unwrap();
    assert!(seen.starts_with("GET /ping HTTP/1.1\r\n"), "{seen}");
    assert!(
        seen.to_ascii_lowercase().contains("host: svc.local\r\n"),
        "{seen}"
    );
    assert!(seen.contains("x-call: 1\r\n"), "{seen}");
    assert_eq!((done.token, done.member), (token, 0));
    let response = done.response().cloned().expect("a response");
    assert_eq!(response.body, b"pong");
    assert_eq!(
        crate::wasm::stream::list_get(&response.headers, b":status"),
        Some(&b"200"[..])
    );

    // The response as the plugin sees it during on_http_call_response.
    t.callout = Some(response);
    assert_eq!(t.case(status), OK);
    assert_eq!((t.u32_at(R3), t.u32_at(RP), t.u32_at(RL)), (200, 0, 0));
    assert_eq!(t.case(body), OK);
    assert_eq!(t.returned_str(), "pong");
    assert_eq!(t.case(header), OK);
    assert_eq!(t.returned_str(), "yes");
    assert_eq!(t.case(write), BAD_ARGUMENT, "callout maps are read-only");
    assert_eq!(t.case(set), BAD_ARGUMENT);
    t.assert_healthy();
}

/// gRPC calls are judged before anything is sent: an upstream the plugin may not call is
/// PARSE_FAILURE (an unknown cluster on Envoy), an HTTP/1.1 one INTERNAL_FAILURE, pseudo-header
/// metadata and names that cannot go into a path BAD_ARGUMENT; tokens of no call are
/// NOT_FOUND. Foreign functions are UNIMPLEMENTED.
#[test]
fn grpc_arguments_are_judged_and_foreign_functions_are_unimplemented() {
    let mut w = Wat::new();
    let (gp, gl) = w.str("grpc");
    let (hp, hl) = w.str("plain");
    let (np, nl) = w.str("nowhere");
    let (sp, sl) = w.str("test.Echo");
    let (bp, bl) = w.str("bad/name");
    let (mp, ml) = w.str("Unary");
    let empty = map::encode(Vec::<(&[u8], &[u8])>::new()).unwrap();
    let (ep, el) = w.bytes(&empty);
    let pseudo = map::encode(vec![(&b":path"[..], &b"/x"[..])]).unwrap();
    let (pp, pl) = w.bytes(&pseudo);
    let (xp, xl) = w.str("msg");
    let call = |w: &mut Wat, up: (u32, u32), svc: (u32, u32), md: (u32, u32)| {
        w.case(c(
            "grpc_call",
            &[
                up.0, up.1, svc.0, svc.1, mp, ml, md.0, md.1, xp, xl, 1000, R3,
            ],
        ))
    };
    let not_allowed = call(&mut w, (np, nl), (sp, sl), (ep, el));
    let http1 = call(&mut w, (hp, hl), (sp, sl), (ep, el));
    let bad_service = call(&mut w, (gp, gl), (bp, bl), (ep, el));
    let pseudo_md = call(&mut w, (gp, gl), (sp, sl), (pp, pl));
    let stream_not_allowed = w.case(c("grpc_stream", &[np, nl, sp, sl, mp, ml, ep, el, R3]));
    let cases_not_found = [
        w.case(c("grpc_send", &[77, xp, xl, 0])),
        w.case(c("grpc_cancel", &[77])),
        w.case(c("grpc_close", &[77])),
    ];
    let foreign = w.case(c("foreign", &[DATA, 4, DATA, 4, RP, RL]));
    let mut s = settings("hc-grpc");
    let addr: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    s.callout_targets.insert(
        "grpc".into(),
        pool_speaking("grpc", addr, TargetProtocol::H2),
    );
    s.callout_targets.insert(
        "plain".into(),
        pool_speaking("plain", addr, TargetProtocol::Http1),
    );
    let mut t = start(&w, s);
    const PARSE_FAILURE: u32 = 4;
    const INTERNAL_FAILURE: u32 = 10;
    assert_eq!(t.case(not_allowed), PARSE_FAILURE);
    assert_eq!(t.case(stream_not_allowed), PARSE_FAILURE);
    assert_eq!(t.case(http1), INTERNAL_FAILURE);
    assert_eq!(t.case(bad_service), BAD_ARGUMENT);
    assert_eq!(t.case(pseudo_md), BAD_ARGUMENT);
    for case in cases_not_found {
        assert_eq!(t.case(case), NOT_FOUND, "case {case}");
    }
    assert_eq!(t.case(foreign), UNIMPLEMENTED);
    assert_eq!(t.s().callouts_made, 0, "nothing refused was counted");
    t.assert_healthy();
}

// ---------------------------------------------------------------------------------------------
// proxy_http_call arguments as the reference host judges them (Envoy's `Context::httpCall`
// behind proxy-wasm-cpp-host): the timeout, an empty `:authority`, the required pseudo-headers,
// unknown and TLS upstreams. See the module comment of `http_call.rs`.

/// A target named `name` at `addr` (plain HTTP/1.1, the test kit's transport).
fn callout_pool(name: &str, addr: std::net::SocketAddr) -> Arc<dyn CalloutTarget> {
    pool_speaking(name, addr, TargetProtocol::Http1)
}

/// A target of one plain endpoint at `addr` speaking `protocol`.
fn pool_speaking(
    name: &str,
    addr: std::net::SocketAddr,
    protocol: TargetProtocol,
) -> Arc<dyn CalloutTarget> {
    Arc::new(crate::testkit::transport::PlainTarget::new(
        name, addr, protocol,
    ))
}

/// A plain HTTP/1.1 server on 127.0.0.1, on a tokio runtime of the test's own: it answers
/// every request `200 ok` and reports each request head it read.
struct HeadServer {
    addr: std::net::SocketAddr,
    heads: std::sync::mpsc::Receiver<String>,
    _rt: tokio::runtime::Runtime,
}

impl HeadServer {
    fn start() -> HeadServer {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, heads) = std::sync::mpsc::channel();
        rt.spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let _ = tx.send(String::from_utf8_lossy(&head).into_owned());
                    let _ = conn
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                        )
                        .await;
                });
            }
        });
        HeadServer {
            addr,
            heads,
            _rt: rt,
        }
    }

    /// The head of the next request that reached the server.
    fn next_head(&self) -> String {
        self.heads
            .recv_timeout(Duration::from_secs(10))
            .expect("no request reached the test server")
    }
}

/// The next finished callout of `t`'s request.
fn callout_result(t: &mut T) -> CalloutDone {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match t.rx.try_recv() {
            Ok(done) => return done,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => panic!("no callout result: {e}"),
        }
    }
}

/// The `:status` of a finished callout (`None`: the call failed).
fn callout_status(done: &CalloutDone) -> Option<String> {
    let r = done.response()?;
    crate::wasm::stream::list_get(&r.headers, b":status")
        .map(|s| String::from_utf8_lossy(s).into_owned())
}

#[test]
fn http_call_deadline_reads_the_timeout_as_the_reference_host_does() {
    use super::super::http_call::{deadline, MAX_TIMEOUT_MS};
    assert_eq!(MAX_TIMEOUT_MS, 0x7FFF_FFFF);
    assert_eq!(deadline(0), Ok(None), "0: no deadline of the plugin's own");
    assert_eq!(deadline(1), Ok(Some(Duration::from_millis(1))));
    assert_eq!(
        deadline(60_001),
        Ok(Some(Duration::from_millis(60_001))),
        "not clamped"
    );
    assert_eq!(
        deadline(0x7FFF_FFFF),
        Ok(Some(Duration::from_millis(0x7FFF_FFFF)))
    );
    for negative in [0x8000_0000, 0xC000_0000, 0xFFFF_FFFF] {
        assert_eq!(
            deadline(negative),
            Err(sluice_abi::Status::BadArgument),
            "{negative:#x} is negative as an i32"
        );
    }
}

#[test]
fn http_call_timeouts_zero_huge_and_negative() {
    let server = HeadServer::start();
    let mut w = Wat::new();
    let (up, ul) = w.str("svc");
    let (hp, hl) = callout_headers(&mut w, true);
    let call = |timeout: u32| c("http_call", &[up, ul, hp, hl, DATA, 0, 0, 0, timeout, R3]);
    let zero = w.case(call(0));
    let largest = w.case(call(0x7FFF_FFFF));
    let smallest_negative = w.case(call(0x8000_0000));
    let all_ones = w.case(call(0xFFFF_FFFF));
    let mut s = settings("hc-callout-timeouts");
    s.callout_targets
        .insert("svc".into(), callout_pool("svc", server.addr));
    s.limits.max_callouts = 10;
    let mut t = start(&w, s);

    // i32-negative timeouts are refused before anything is counted or sent.
    assert_eq!(t.case(smallest_negative), BAD_ARGUMENT, "0x8000_0000");
    assert_eq!(t.case(all_ones), BAD_ARGUMENT, "0xFFFF_FFFF");
    assert_eq!((t.s().callouts_made, t.s().pending_callouts), (0, 0));
    assert!(t.rx.try_recv().is_err(), "nothing was dispatched");

    // 0 and the largest non-negative value are sent, and answered.
    for (what, case, made) in [("0", zero, 1), ("0x7FFF_FFFF", largest, 2)] {
        assert_eq!(t.case(case), OK, "timeout {what}");
        let token = t.u32_at(R3);
        assert_ne!(token, 0, "timeout {what}");
        assert_eq!(t.s().callouts_made, made, "timeout {what}");
        let head = server.next_head();
        assert!(head.starts_with("GET /ping HTTP/1.1\r\n"), "{what}: {head}");
        let done = callout_result(&mut t);
        assert_eq!(done.token, token, "timeout {what}");
        assert_eq!(
            callout_status(&done).as_deref(),
            Some("200"),
            "timeout {what}"
        );
        assert_eq!(done.response().unwrap().body, b"ok", "timeout {what}");
    }
    t.assert_healthy();
}

#[test]
fn http_call_required_headers_and_unknown_upstreams() {
    let server = HeadServer::start();
    let mut w = Wat::new();
    let (up, ul) = w.str("svc");
    let (np, nl) = w.str("nope");
    let mut case_with = |headers: &[(&str, &str)], upstream: (u32, u32)| {
        let (hp, hl) = w.bytes(&encode(headers));
        w.case(c(
            "http_call",
            &[upstream.0, upstream.1, hp, hl, DATA, 0, 0, 0, 1000, R3],
        ))
    };
    let no_method = case_with(&[(":path", "/x"), (":authority", "svc.local")], (up, ul));
    let no_path = case_with(&[(":method", "GET"), (":authority", "svc.local")], (up, ul));
    let no_authority = case_with(&[(":method", "GET"), (":path", "/x")], (up, ul));
    let complete = [
        (":method", "GET"),
        (":path", "/x"),
        (":authority", "svc.local"),
    ];
    let unknown = case_with(&complete, (np, nl));
    let mut s = settings("hc-callout-required");
    s.callout_targets
        .insert("svc".into(), callout_pool("svc", server.addr));
    let mut t = start(&w, s);
    // The upstream is known and the rest is valid: only the missing header is wrong.
    assert_eq!(t.case(no_method), BAD_ARGUMENT, "no :method");
    assert_eq!(t.case(no_path), BAD_ARGUMENT, "no :path");
    assert_eq!(t.case(no_authority), BAD_ARGUMENT, "no :authority");
    // BAD_ARGUMENT, not NOT_FOUND: the Rust SDK panics on NOT_FOUND from this call.
    assert_eq!(t.case(unknown), BAD_ARGUMENT, "unknown upstream");
    assert_eq!((t.s().callouts_made, t.s().pending_callouts), (0, 0));
    assert!(t.rx.try_recv().is_err(), "nothing was dispatched");
    t.assert_healthy();
}
