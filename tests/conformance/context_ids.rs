// ---------------------------------------------------------------------------------------
// 7. Context ids, as the raw plugin sees them
// ---------------------------------------------------------------------------------------

use super::*;

/// The ids passed to each callback, with no SDK in between: the root context's id in
/// `proxy_on_vm_start`, `proxy_on_configure`, `proxy_on_tick` and (ABI v0.2.1: the call is
/// made from the root context, as in proxy-wasm-cpp-host's `proxy_http_call`)
/// `proxy_on_http_call_response`; the stream's id in every stream callback;
/// `proxy_on_context_create(stream, root)`; and `proxy_set_effective_context(stream)` works
/// from `on_http_call_response`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callbacks_get_the_context_ids_of_the_abi() {
    let env = start().await;
    env.callout.reply(
        "/callout/ok",
        Reply::whole(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nfine"),
    );
    let path = "/raw/ids";
    let got = h1_exchange(
        env.proxy.addr,
        &h1_head(
            "GET",
            path,
            &[("x-conf-raw-callout", "/callout/ok")],
            Via::Length,
            &[],
        ),
        &[],
        None,
    )
    .await;
    let r = one_response(&got);
    let lines: Vec<Line> = plugin_lines(&env.proxy.logs())
        .into_iter()
        .filter(|l| l.tag == "raw")
        .collect();
    assert_eq!(r.status(), 200, "{:#?}", texts(&lines));
    assert_eq!(r.body, b"done");
    assert_eq!(env.up.requests(path).len(), 1);

    let dispatch = wait_line(&env.proxy, "raw", "dispatch", |_| true).await;
    let stream = dispatch.get("ctx").to_string();
    let token = dispatch.get("token").to_string();
    wait_line(&env.proxy, "raw", "on_delete", |l| l.get("ctx") == stream).await;
    wait_line(&env.proxy, "raw", "on_tick", |_| true).await;
    let lines: Vec<Line> = plugin_lines(&env.proxy.logs())
        .into_iter()
        .filter(|l| l.tag == "raw")
        .collect();
    let all = texts(&lines);
    let roots: Vec<String> = lines
        .iter()
        .filter(|l| l.what == "on_context_create" && l.get("parent") == "0")
        .map(|l| l.get("ctx").to_string())
        .collect();
    assert!(!roots.is_empty(), "{all:#?}");
    for what in ["on_vm_start", "on_configure", "on_tick"] {
        let ls: Vec<&Line> = lines.iter().filter(|l| l.what == what).collect();
        assert!(!ls.is_empty(), "{what}: {all:#?}");
        for l in ls {
            assert!(
                roots.iter().any(|r| r == l.get("ctx")),
                "{what} gets a root context's id, not {}: {all:#?}",
                l.get("ctx")
            );
        }
    }
    assert!(!roots.contains(&stream), "{all:#?}");
    let create = lines
        .iter()
        .find(|l| l.what == "on_context_create" && l.get("ctx") == stream)
        .unwrap_or_else(|| panic!("no on_context_create for {stream}: {all:#?}"));
    let root = create.get("parent").to_string();
    assert!(roots.contains(&root), "{all:#?}");
    let answer = lines
        .iter()
        .find(|l| l.what == "on_http_call_response" && l.get("token") == token)
        .unwrap_or_else(|| panic!("no on_http_call_response: {all:#?}"));
    assert_eq!(
        answer.get("ctx"),
        root,
        "on_http_call_response gets the plugin's root context id (the stream is {stream}): {all:#?}"
    );
    assert_eq!(answer.get("stream"), stream, "{all:#?}");
    let resume = lines
        .iter()
        .find(|l| l.what == "resume")
        .unwrap_or_else(|| panic!("{all:#?}"));
    assert_eq!(resume.get("effective"), "0", "{all:#?}");
    assert_eq!(resume.get("continue"), "0", "{all:#?}");
    let stream_lines: Vec<&Line> = lines
        .iter()
        .filter(|l| {
            [
                "on_request_headers",
                "on_request_body",
                "on_response_headers",
                "on_response_body",
                "on_log",
                "on_done",
                "on_delete",
            ]
            .contains(&l.what.as_str())
        })
        .collect();
    for what in [
        "on_request_headers",
        "on_response_headers",
        "on_log",
        "on_done",
        "on_delete",
    ] {
        let n = stream_lines.iter().filter(|l| l.what == what).count();
        assert_eq!(n, 1, "{what} once: {all:#?}");
    }
    assert!(
        stream_lines.iter().any(|l| l.what == "on_response_body"),
        "{all:#?}"
    );
    for l in stream_lines {
        assert_eq!(
            l.get("ctx"),
            stream,
            "{} gets the stream's id: {all:#?}",
            l.what
        );
    }
    assert_no_context_left(&env.proxy).await;
}
