// ---------------------------------------------------------------------------------------
// 5. Local replies from each phase
// ---------------------------------------------------------------------------------------

use super::*;

/// A local reply from a request phase: who sends it, and which plugins' response callbacks
/// must run over it.
struct LocalCase {
    name: &'static str,
    route: &'static str,
    headers: Vec<(&'static str, &'static str)>,
    body: &'static [&'static str],
    by: &'static str,
    seen: Vec<(&'static str, &'static str)>,
}

/// `proxy_send_local_response` from each phase. From a request phase the reply goes through
/// the response callbacks of the plugins that saw the request (Envoy runs the encoder
/// filters over a local reply), the sender's own included, so `x-conf-seen-<tag>: 418` is on
/// it. From `on_response_headers` it replaces the upstream's response as is (Envoy sends it
/// directly, bypassing the filters). From `on_response_body` the response head went out
/// already: the response is cut (Envoy resets the stream).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_replies_from_each_phase() {
    let env = start().await;
    let local_cases = vec![
        LocalCase {
            name: "request_headers",
            route: "one",
            headers: vec![("x-conf-local", "request_headers")],
            body: &[],
            by: "a",
            seen: vec![("x-conf-seen-a", "418")],
        },
        LocalCase {
            name: "request_body",
            route: "one",
            headers: vec![
                ("x-conf-local", "request_body"),
                ("x-conf-req-body", "buffer"),
            ],
            body: &REQUEST_PARTS,
            by: "a",
            seen: vec![("x-conf-seen-a", "418")],
        },
        LocalCase {
            name: "response_headers",
            route: "one",
            headers: vec![("x-conf-local", "response_headers")],
            body: &[],
            by: "a",
            seen: vec![],
        },
        LocalCase {
            name: "chain-b-request_headers",
            route: "chain",
            headers: vec![("x-conf-b-local", "request_headers")],
            body: &[],
            by: "b",
            seen: vec![("x-conf-seen-a", "418"), ("x-conf-seen-b", "418")],
        },
        LocalCase {
            // `b` never saw the request: no response callback of `b` runs.
            name: "chain-a-request_headers",
            route: "chain",
            headers: vec![("x-conf-a-local", "request_headers")],
            body: &[],
            by: "a",
            seen: vec![("x-conf-seen-a", "418")],
        },
        LocalCase {
            // The response path runs `b` first; its reply is sent as is (`a` does not run).
            name: "chain-b-response_headers",
            route: "chain",
            headers: vec![("x-conf-b-local", "response_headers")],
            body: &[],
            by: "b",
            seen: vec![],
        },
    ];
    let h2 = h2_connect(env.proxy.addr).await;
    let mut cases: Vec<Case> = Vec::new();
    for case in &local_cases {
        for over_h2 in [false, true] {
            let (env, h2) = (&env, &h2);
            let name = format!("{}{}", case.name, if over_h2 { " (h2)" } else { "" });
            let run = async move {
                let path = format!("/{}/local/{}/{}", case.route, case.name, over_h2);
                let id = format!("local-{}-{over_h2}", case.name);
                let mut headers = vec![("x-conf-id", id.as_str())];
                headers.extend(case.headers.iter().copied());
                let method = if case.body.is_empty() { "GET" } else { "POST" };
                let (status, headers, body, length) = if over_h2 {
                    let r = h2_exchange(h2, method, &path, &headers, case.body, None)
                        .await
                        .unwrap_or_else(|e| panic!("{e}"));
                    let length = r.header("content-length").map(str::to_string);
                    (r.status, header_set(&r.headers), r.body, length)
                } else {
                    let got = h1_exchange(
                        env.proxy.addr,
                        &h1_head(method, &path, &headers, Via::Length, case.body),
                        &h1_body(Via::Length, case.body),
                        None,
                    )
                    .await;
                    let r = one_response(&got);
                    let length = r.header("content-length").map(str::to_string);
                    (r.status(), header_set(&r.headers), r.body, length)
                };
                let plugin = || lines_now(&env.proxy, case.by, &id);
                assert_eq!(status, 418, "plugin: {:#?}", plugin());
                assert_eq!(
                    String::from_utf8_lossy(&body),
                    format!("local from {}", case.by)
                );
                assert_eq!(length.as_deref(), Some("12"));
                let seen: Vec<(String, String)> = headers
                    .iter()
                    .filter(|(k, _)| k.starts_with("x-conf-seen-"))
                    .cloned()
                    .collect();
                assert_eq!(
                    seen,
                    want_set(&case.seen),
                    "the response callbacks that ran over the reply; plugin: {:#?}",
                    plugin()
                );
                let mut want = vec![("x-conf-local", case.by), ("x-request-id", "*")];
                want.extend(case.seen.iter().copied());
                assert_eq!(headers, want_set(&want), "the reply's header fields");
                if case.name.ends_with("request_headers") {
                    assert!(env.up.requests(&path).is_empty(), "nothing goes upstream");
                }
                // A request body a plugin held and answered never goes upstream.
                env.up.assert_no_body_ever(&path);
                let lines = request_lines(&env.proxy, case.by, &id).await;
                let log = assert_ended_once(&lines);
                assert_eq!(log.get("status"), "418", "on_log sees the reply");
            };
            cases.push((name, run.boxed_local()));
        }
    }

    // From on_response_body: the head went out; the response is cut (a reset), never
    // replaced. HTTP/1: the head, part of the body at most, then the connection closes.
    let cut = async {
        let body_parts = ["hello ", "respon", "se body"];
        let path = "/one/local/response_body";
        env.up.reply(path, Reply::length(&body_parts, PAUSE));
        let headers = [
            ("x-conf-id", "local-response_body"),
            ("x-conf-local", "response_body"),
            ("x-conf-resp-body", "buffer"),
        ];
        let got = h1_exchange(
            env.proxy.addr,
            &h1_head("GET", path, &headers, Via::Length, &[]),
            &[],
            None,
        )
        .await;
        let text = String::from_utf8_lossy(&got).into_owned();
        let plugin = || lines_now(&env.proxy, "a", "local-response_body");
        assert!(
            text.starts_with("HTTP/1.1 200 OK\r\n"),
            "the upstream's head went out first: {text:?}; plugin: {:#?}",
            plugin()
        );
        assert!(!text.contains("local from"), "{text:?}");
        assert!(
            matches!(parse_message(&got, false, true), Ok(None)),
            "the response must be cut, not complete: {text:?}; plugin: {:#?}",
            plugin()
        );
        let head = &got[..find(&got, b"\r\n\r\n").unwrap() + 4];
        let head = parse_message(head, false, true).ok().flatten();
        if let Some(h) = head {
            assert_eq!(h.header("x-conf-seen-a"), Some("200"), "{text:?}");
        }
        let lines = request_lines(&env.proxy, "a", "local-response_body").await;
        let log = assert_ended_once(&lines);
        assert_eq!(log.get("status"), "200");
    };
    cases.push(("response_body".to_string(), cut.boxed_local()));
    run_cases(&env.proxy, false, cases).await;
    env.up.assert_no_garbage();
    assert_no_context_left(&env.proxy).await;
}
