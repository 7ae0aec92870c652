//! Shadow rollouts: stable decides every request, the candidate runs after it on copies, and
//! the differences are counted by kind.

use std::time::Duration;

use super::*;

/// v1 sets request header `x-tag: a` and response header `x-version: v1`.
const STABLE: &str =
    "{ rules: [{ request: { set: { x-tag: a } }, response: { set: { x-version: v1 } } }] }";

/// A config whose route runs `tag` (v1: [`STABLE`]) with `rollout`.
fn shadow_config(upstream: std::net::SocketAddr, rollout: &str) -> String {
    config_with(upstream, STABLE, rollout)
}

/// `/plugins/tag/rollout` once `n` requests were replayed or skipped.
async fn after_runs(proxy: &Sluice, n: u64) -> serde_json::Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let status = get_json(proxy.admin_url("/plugins/tag/rollout")).await;
        let s = &status["shadow"];
        let runs = ["same", "different", "skipped"]
            .iter()
            .map(|k| s[k].as_u64().unwrap_or(0))
            .sum::<u64>();
        if runs >= n {
            return status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{runs} of {n} shadow runs: {status}\n{}",
            proxy.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_differences_are_counted_exactly_by_kind_and_never_reach_the_client() {
    let up = upstream("backend").await;
    let dir = plugin_dir("shadow");
    // The candidate does what stable does, except: on /new it sets x-tag: b (a request header
    // difference), on /resp it adds a response header, on /both both.
    let rollout =
        "{ mode: shadow, shadow_concurrency: 64, candidate: { path: v2.wasm, config: { rules: [\
        { request: { set: { x-tag: a } }, response: { set: { x-version: v1 } } },\
        { path_prefixes: [/new, /both], request: { set: { x-tag: b } } },\
        { path_prefixes: [/resp, /both], response: { set: { x-extra: '1' } } } ] } } }";
    let proxy = Sluice::start_in(&shadow_config(up, rollout), dir).await;
    let c = client();
    let paths = [("/same", 40), ("/new", 30), ("/resp", 20), ("/both", 10)];
    for (path, n) in paths {
        for i in 0..n {
            let r = c
                .post(proxy.url(&format!("{path}/{i}")))
                .body(format!("body {i}"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            // What stable decided, only: the candidate's changes never reach either side.
            assert_eq!(r.headers()["x-version"], "v1");
            assert!(r.headers().get("x-extra").is_none());
            let echo = echo(r).await;
            assert_eq!(echo_header(&echo, "x-tag"), Some("a"), "{echo}");
            assert_eq!(echo["body"], format!("body {i}"), "{echo}");
        }
    }
    let status = after_runs(&proxy, 100).await;
    let s = &status["shadow"];
    assert_eq!(s["skipped"], 0, "{status}");
    assert_eq!(s["same"], 40, "{status}");
    assert_eq!(s["different"], 60, "{status}");
    assert_eq!(s["diffs"]["request_headers"], 40, "{status}");
    assert_eq!(s["diffs"]["response_headers"], 30, "{status}");
    for kind in ["failure", "reply", "request_body", "response_body"] {
        assert_eq!(s["diffs"][kind], 0, "{kind}: {status}");
    }
    assert_eq!(
        proxy
            .metric("sluice_plugin_rollout_diff_total{kind=\"request_headers\",plugin=\"tag\"}")
            .await,
        Some(40.0)
    );
    // Stable served every request; the candidate ran each of them once, on the side.
    assert_eq!(status["versions"]["stable"]["requests"], 100, "{status}");
    assert_eq!(status["versions"]["candidate"]["requests"], 100, "{status}");
    // A sample of the differences is logged with the request id.
    let logs = proxy.logs();
    assert!(
        logs.contains("shadow: the candidate decided otherwise") && logs.contains("request_id"),
        "{logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_trapping_shadow_candidate_fails_no_client_request() {
    let up = upstream("backend").await;
    let dir = plugin_dir("shadow-trap");
    let rollout = "{ mode: shadow, candidate: { path: panics.wasm, config: { mode: panic } } }";
    let proxy = Sluice::start_in(&shadow_config(up, rollout), dir).await;
    let c = client();
    let mut ok = 0;
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let (c, url) = (c.clone(), proxy.url(&format!("/t{t}")));
            tokio::spawn(async move {
                let mut ok = 0;
                for _ in 0..50 {
                    let r = c.get(&url).send().await.unwrap();
                    assert_eq!(r.status(), 200);
                    assert_eq!(r.headers()["x-version"], "v1");
                    ok += 1;
                }
                ok
            })
        })
        .collect();
    for t in tasks {
        ok += t.await.unwrap();
    }
    assert_eq!(ok, 400, "every client request answered by stable");
    let status = after_runs(&proxy, 400).await;
    let s = &status["shadow"];
    let replayed = s["same"].as_u64().unwrap() + s["different"].as_u64().unwrap();
    assert!(replayed > 0, "{status}");
    assert_eq!(s["same"], 0, "{status}");
    assert_eq!(s["diffs"]["failure"].as_u64(), Some(replayed), "{status}");
    assert!(candidate_traps(&status) >= 1, "{status}");
    assert_eq!(
        status["versions"]["candidate"]["failures"].as_u64(),
        Some(replayed)
    );
}
