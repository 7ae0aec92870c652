use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_runs_in_order_on_requests_and_in_reverse_on_responses() {
    let proxy = start(
        &[("chain", "/", "a, b, c")],
        "  a: { path: sdk.wasm, config: { mode: headers, tag: a } }\n\
         \x20 b: { path: sdk.wasm, config: { mode: headers, tag: b } }\n\
         \x20 c: { path: sdk.wasm, config: { mode: headers, tag: c } }\n",
    )
    .await;
    let r = client()
        .get(proxy.url("/start?x=1"))
        .header("x-in", "hello")
        .header("x-strip", "gone")
        .header("x-rewrite-path", "/rewritten?y=2")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let tags: Vec<_> = r
        .headers()
        .get_all("x-sdk-tag")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    assert_eq!(tags, ["c", "b", "a"], "response path runs in reverse");
    let e = echo(r).await;
    assert_eq!(values(&e, "x-sdk-tag"), ["a", "b", "c"]);
    assert_eq!(echo_header(&e, "x-sdk-in"), Some("hello"));
    assert_eq!(echo_header(&e, "x-sdk-method"), Some("GET"));
    assert!(
        e["headers"]["x-strip"].is_null(),
        "removed by the plugin: {e}"
    );
    // `a` rewrote :path; the plugins after it (the last one set x-sdk-path) and the upstream
    // saw the new one.
    assert_eq!(values(&e, "x-sdk-path"), ["/rewritten?y=2"]);
    assert_eq!(e["path"], "/rewritten");
    // The forwarding headers were there before the plugins ran.
    assert_eq!(echo_header(&e, "x-forwarded-proto"), Some("http"));
    assert_eq!(
        proxy
            .metric("sluice_plugin_calls_total{phase=\"request_headers\",plugin=\"a\",version=\"stable\"}")
            .await,
        Some(1.0)
    );
    // A request without a body gets no body callback (its headers ended the stream), and a
    // phase that never ran has no series.
    assert_eq!(
        proxy
            .metric(
                "sluice_plugin_calls_total{phase=\"request_body\",plugin=\"a\",version=\"stable\"}"
            )
            .await,
        None
    );
    // What each phase cost in fuel: something for the phase that ran, nothing for the other.
    let fuel = |phase: &'static str| {
        let proxy = &proxy;
        async move {
            proxy
                .metric(&format!(
                    "sluice_plugin_fuel_consumed_total{{phase=\"{phase}\",plugin=\"a\",version=\"stable\"}}"
                ))
                .await
        }
    };
    assert!(
        fuel("request_headers").await.is_some_and(|f| f > 100.0),
        "{:?}",
        fuel("request_headers").await
    );
    assert_eq!(fuel("request_body").await, None);
    // The same figures per plugin in the admin API, with their means per request.
    let a = get_json(proxy.admin_url("/plugins/a")).await;
    let cost = &a["cost"];
    assert_eq!(cost["requests"], 1, "{a}");
    let headers_fuel = cost["phases"]["request_headers"]["fuel"].as_u64().unwrap();
    assert!(headers_fuel > 100, "{a}");
    assert!(
        cost["phases"]["request_body"].is_null(),
        "never called: {a}"
    );
    assert!(
        cost["fuel_per_request"].as_f64().unwrap() >= headers_fuel as f64,
        "{a}"
    );
    assert!(cost["guest_us_per_request"].as_f64().unwrap() > 0.0, "{a}");
    // And by route: the one request on route `chain`, its request phases only (recorded when
    // the request's state is dropped, just after the response went out).
    let mut a = a;
    for _ in 0..200 {
        if !a["cost"]["routes"]["chain"].is_null() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
        a = get_json(proxy.admin_url("/plugins/a")).await;
    }
    let cost = &a["cost"];
    let route = &cost["routes"]["chain"];
    assert_eq!(route["requests"], 1, "{a}");
    let route_fuel = route["fuel_per_request"].as_f64().unwrap();
    assert!(route_fuel >= headers_fuel as f64, "{a}");
    assert!(
        route_fuel <= cost["fuel_per_request"].as_f64().unwrap(),
        "{a}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_responses_from_request_and_response_phases() {
    let proxy = start(
        &[("deny", "/", "first, deny, last")],
        "  first: { path: sdk.wasm, config: { mode: headers, tag: first } }\n\
         \x20 deny: { path: sdk.wasm, config: { mode: deny, tag: guard } }\n\
         \x20 last: { path: sdk.wasm, config: { mode: headers, tag: last } }\n",
    )
    .await;
    let c = client();
    let r = c
        .get(proxy.url("/x"))
        .header("x-deny", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(r.headers()["x-denied-by"], "guard");
    assert!(r.headers().get("x-request-id").is_some());
    assert_eq!(r.text().await.unwrap(), "denied by guard");
    // `last` never ran for the denied request (no series for a phase never run).
    assert_eq!(
        proxy
            .metric("sluice_plugin_calls_total{phase=\"request_headers\",plugin=\"last\",version=\"stable\"}")
            .await,
        None
    );
    let r = c
        .get(proxy.url("/x"))
        .header("x-deny-response", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(r.text().await.unwrap(), "response denied by guard");
    let r = c.get(proxy.url("/x")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_that_holds_the_request_for_its_body_can_still_answer_or_change_headers() {
    let proxy = start(
        &[("body", "/", "inspect")],
        "  inspect: { path: sdk.wasm, config: { mode: inspect-body } }\n",
    )
    .await;
    let c = client();
    let r = c
        .post(proxy.url("/up"))
        .body("hello body")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let e = echo(r).await;
    assert_eq!(e["body"], "HELLO BODY");
    assert_eq!(e["body_len"], 10);
    assert_eq!(
        echo_header(&e, "x-sdk-body-len"),
        Some("10"),
        "header set after the body was seen"
    );
    let r = c
        .post(proxy.url("/up"))
        .body("this is forbidden")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(r.text().await.unwrap(), "body rejected");
    // Bodies a plugin holds before forwarding are limited to what can be replayed.
    let r = c
        .post(proxy.url("/up"))
        .body(vec![b'a'; 100_000])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    // A request without a body goes straight on.
    let r = c.get(proxy.url("/up")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_benchmark_plugin_reads_one_header_and_adds_one() {
    let proxy = start(
        &[("copy", "/", "copy")],
        "  copy: { path: sdk.wasm, config: { mode: copy-header } }\n",
    )
    .await;
    let c = client();
    let e = echo(
        c.get(proxy.url("/x"))
            .header("x-in", "v1")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(echo_header(&e, "x-sdk-in"), Some("v1"));
    let e = echo(c.get(proxy.url("/x")).send().await.unwrap()).await;
    assert_eq!(echo_header(&e, "x-sdk-in"), Some("none"));
}
