// ---------------------------------------------------------------------------------------
// 6. Clients that leave
// ---------------------------------------------------------------------------------------

use super::*;

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
