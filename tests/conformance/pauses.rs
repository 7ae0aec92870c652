// ---------------------------------------------------------------------------------------
// 3. Pause in request headers until an HTTP callout answers
// ---------------------------------------------------------------------------------------

use super::*;

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
