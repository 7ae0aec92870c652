// ---------------------------------------------------------------------------------------
// 8. proxy_close_stream
// ---------------------------------------------------------------------------------------

use super::*;

/// `reset_http_request()` (`proxy_close_stream(REQUEST)`) resets the stream, as Envoy's
/// `resetStream()`: over HTTP/2 the client gets RST_STREAM on that stream and the
/// connection serves on; over HTTP/1 the connection closes without a byte of response.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_the_stream_resets_it() {
    let env = start().await;
    let env = &env;
    let mut cases: Vec<Case> = Vec::new();
    for phase in ["request_headers", "request_body", "response_headers"] {
        let body: &[&str] = if phase == "request_body" {
            &REQUEST_PARTS
        } else {
            &[]
        };
        let method = if body.is_empty() { "GET" } else { "POST" };

        // HTTP/1: closed, nothing sent.
        let h1 = async move {
            let path = format!("/one/reset/h1/{phase}");
            let id = format!("reset-h1-{phase}");
            let headers = [
                ("x-conf-id", id.as_str()),
                ("x-conf-reset", phase),
                ("x-conf-req-body", "buffer"),
            ];
            let got = h1_exchange(
                env.proxy.addr,
                &h1_head(method, &path, &headers, Via::Length, body),
                &h1_body(Via::Length, body),
                None,
            )
            .await;
            assert_eq!(
                String::from_utf8_lossy(&got),
                "",
                "the connection closes without a response; plugin: {:#?}",
                lines_now(&env.proxy, "a", &id)
            );
            let lines = request_lines(&env.proxy, "a", &id).await;
            let reset = lines.iter().find(|l| l.what == "reset").unwrap();
            assert_eq!(reset.get("status"), "0");
            assert_eq!(reset.get("phase"), phase);
            let log = assert_ended_once(&lines);
            if phase != "response_headers" {
                assert_eq!(log.get("status"), "none", "no response");
            }
            env.up.assert_no_body_ever(&path);
        };
        cases.push((format!("HTTP/1 {phase}"), h1.boxed_local()));

        // HTTP/2: RST_STREAM on that stream; the connection serves the next request.
        let h2 = async move {
            let h2 = h2_connect(env.proxy.addr).await;
            let path = format!("/one/reset/h2/{phase}");
            let id = format!("reset-h2-{phase}");
            let headers = [
                ("x-conf-id", id.as_str()),
                ("x-conf-reset", phase),
                ("x-conf-req-body", "buffer"),
            ];
            let r = h2_exchange(&h2, method, &path, &headers, body, None).await;
            match r {
                Err(e) => assert!(
                    e.status.is_none()
                        && e.error.is_reset()
                        && !e.error.is_go_away()
                        && !e.error.is_io(),
                    "want RST_STREAM before any response, got {e}; plugin: {:#?}",
                    lines_now(&env.proxy, "a", &id)
                ),
                Ok(r) => panic!(
                    "want RST_STREAM, got a response {} {:?} {:?}; plugin: {:#?}",
                    r.status,
                    r.headers,
                    String::from_utf8_lossy(&r.body),
                    lines_now(&env.proxy, "a", &id)
                ),
            }
            let after = format!("reset-h2-{phase}-after");
            let r = h2_exchange(
                &h2,
                "GET",
                "/one/reset/after",
                &[("x-conf-id", &after)],
                &[],
                None,
            )
            .await
            .unwrap_or_else(|e| panic!("the connection must serve on: {e}"));
            assert_eq!((r.status, r.body.as_slice()), (200, &b"done"[..]));
            let lines = request_lines(&env.proxy, "a", &id).await;
            assert_ended_once(&lines);
            env.up.assert_no_body_ever(&path);
        };
        cases.push((format!("HTTP/2 {phase}"), h2.boxed_local()));
    }
    run_cases(&env.proxy, false, cases).await;
    env.up.assert_no_garbage();
    assert_no_context_left(&env.proxy).await;
}
