// ---------------------------------------------------------------------------------------
// 1. Buffered request bodies, rewritten
// ---------------------------------------------------------------------------------------

use super::*;

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
