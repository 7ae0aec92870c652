use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_bodies_buffered_or_streamed_and_the_buffer_limit() {
    let proxy = start(
        &[
            ("wrap", "/wrap", "wrap"),
            ("upper", "/upper", "upper"),
            ("small", "/small", "small"),
            ("keep", "/keep", "keep"),
        ],
        "  wrap: { path: sdk.wasm, config: { mode: resp-body, tag: w } }\n\
         \x20 upper: { path: sdk.wasm, config: { mode: resp-upper } }\n\
         \x20 small: { path: sdk.wasm, config: { mode: resp-body }, limits: { max_body_bytes: 1000 } }\n\
         \x20 keep: { path: sdk.wasm, config: { mode: resp-body-keep-length, tag: k } }\n",
    )
    .await;
    let c = client();
    let r = c.get(proxy.url("/wrap?bytes=16384")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers().get("content-length").is_none(),
        "removed by the plugin"
    );
    let body = r.bytes().await.unwrap();
    assert_eq!(&body[..2], b"w|");
    assert_eq!(body.len(), 2 + 16384, "the whole body, rewritten once");
    // The echo answer has a content-length; upper-casing keeps the length, so it stays.
    let r = c.get(proxy.url("/upper/echo")).send().await.unwrap();
    let declared: usize = r.headers()["content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let body = r.bytes().await.unwrap();
    assert_eq!(body.len(), declared);
    assert!(body.starts_with(b"{") && !body.iter().any(u8::is_ascii_lowercase));
    let r = c.get(proxy.url("/upper?bytes=20000")).send().await.unwrap();
    let body = r.bytes().await.unwrap();
    assert_eq!(body.len(), 20000);
    assert!(
        body.iter().all(|b| !b.is_ascii_lowercase()),
        "every chunk uppercased"
    );
    // Past max_body_bytes the response cannot be delivered whole: it is cut.
    let r = c.get(proxy.url("/small?bytes=50000")).send().await;
    let ok = match r {
        Ok(r) => r
            .bytes()
            .await
            .map(|b| b.len() == 50000 + 4)
            .unwrap_or(false),
        Err(_) => false,
    };
    assert!(!ok, "an over-limit response must not arrive complete");

    // A plugin that changes the body's length but keeps content-length: the response never
    // goes out mismatched; it fails (502 while the header is still held back), counted as the
    // plugin's ABI error.
    let r = c.get(proxy.url("/keep/echo")).send().await;
    let mismatched = match r {
        Ok(r) if r.status() == 200 => r.bytes().await.is_ok_and(|b| b.starts_with(b"k|")),
        Ok(r) => {
            assert_eq!(r.status(), 502);
            false
        }
        Err(_) => false,
    };
    assert!(
        !mismatched,
        "a body that does not match its content-length went out"
    );
    proxy
        .wait_metric(
            "sluice_plugin_errors_total{kind=\"abi\",phase=\"response_body\",plugin=\"keep\",version=\"stable\"}",
            1.0,
        )
        .await;
    assert!(
        proxy.logs().contains("left content-length"),
        "{}",
        proxy.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_request_bodies_go_through_plugins_chunk_by_chunk() {
    let proxy = start(
        &[("up", "/", "upper")],
        "  upper: { path: sdk.wasm, config: { mode: req-upper } }\n",
    )
    .await;
    // Larger than what is ever held before forwarding: it streams.
    let body: Vec<u8> = (0..300_000u32).map(|i| b"abcxyz"[i as usize % 6]).collect();
    let r = client()
        .post(proxy.url("/stream"))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let e = echo(r).await;
    assert_eq!(e["body_len"], 300_000);
    let want =
        sluice::hash::fnv1a64_update(sluice::hash::FNV1A64_START, &body.to_ascii_uppercase());
    assert_eq!(e["body_fnv1a64"], format!("{want:016x}"));
    assert_eq!(
        echo_header(&e, "content-length"),
        Some("300000"),
        "same length: content-length kept, no chunking"
    );
    let calls = proxy
        .metric(
            "sluice_plugin_calls_total{phase=\"request_body\",plugin=\"upper\",version=\"stable\"}",
        )
        .await
        .unwrap();
    assert!(calls >= 2.0, "one call per chunk, got {calls}");
}
