//! The candidate's end: rolled back by itself, promoted or aborted by the operator.

use std::time::Duration;

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_candidate_is_rolled_back_within_min_requests_under_load() {
    const MIN_REQUESTS: u64 = 40;
    const CLIENTS: usize = 8;
    let up = upstream("backend").await;
    let dir = plugin_dir("rollback");
    // Every request goes to the candidate, which panics in on_request_headers (fail_closed:
    // its requests get 503) until the rollback.
    let rollout = format!(
        "{{ candidate: {{ path: panics.wasm, config: {{ mode: panic }} }}, weight_percent: 100, \
         rollback: {{ max_error_rate: 0.5, min_requests: {MIN_REQUESTS}, window_seconds: 60 }} }}"
    );
    let proxy = Sluice::start_in(&config(up, &rollout), dir.clone()).await;
    let load = Load::start(proxy.url("/x"), CLIENTS, &[]);
    // Once stable answers, the rollback happened (requests that picked the candidate just
    // before may still be finishing: let them); then 400 more answers.
    load.wait_answers(1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let failed_before = load.failures.lock().unwrap().len() as u64;
    load.wait_answers(400).await;
    let (counts, failures) = load.finish().await;
    assert_eq!(counts.keys().collect::<Vec<_>>(), vec!["v1"], "{counts:?}");
    // The rollback comes with the MIN_REQUESTS-th failed candidate request; requests that
    // picked the candidate before it (one per client at most) fail too. None after.
    assert!(
        failures.len() as u64 <= MIN_REQUESTS + CLIENTS as u64,
        "{} failed: {:?}",
        failures.len(),
        &failures[..5.min(failures.len())]
    );
    assert!(failures.len() as u64 >= MIN_REQUESTS - 1, "{failures:?}");
    assert_eq!(
        failures.len() as u64,
        failed_before,
        "failures after the rollback"
    );
    assert!(
        failures.iter().all(|f| f.starts_with("status 503")),
        "{failures:?}"
    );

    let status = get_json(proxy.admin_url("/plugins/tag/rollout")).await;
    assert_eq!(status["state"], "rolled_back", "{status}");
    assert_eq!(status["serving"], "stable", "{status}");
    let reason = status["reason"].as_str().unwrap();
    assert!(reason.contains("max_error_rate 50.00 %"), "{reason}");
    assert!(candidate_traps(&status) >= 1, "{status}");
    assert_eq!(
        proxy
            .metric("sluice_plugin_rollbacks_total{plugin=\"tag\"}")
            .await,
        Some(1.0)
    );
    // /plugins/NAME shows it too; the log says it once.
    let plugin = get_json(proxy.admin_url("/plugins/tag")).await;
    assert_eq!(plugin["rollout"]["state"], "rolled_back", "{plugin}");
    assert_eq!(proxy.logs().matches("rollout rolled back").count(), 1);

    // A reload that keeps the candidate keeps it rolled back; one that changes it starts a
    // new rollout.
    let text = fill(&config(up, &rollout), &proxy);
    std::fs::write(dir.join("sluice.yaml"), &text).unwrap();
    let (code, body) = post_reload(&proxy).await;
    assert_eq!(code, 200, "{body}");
    let status = get_json(proxy.admin_url("/plugins/tag/rollout")).await;
    assert_eq!(status["state"], "rolled_back", "{status}");
    std::fs::write(
        dir.join("sluice.yaml"),
        text.replace(
            "path: panics.wasm, config: { mode: panic }",
            &format!("path: v2.wasm, config: {}", tagging("v2")),
        ),
    )
    .unwrap();
    let (code, body) = post_reload(&proxy).await;
    assert_eq!(code, 200, "{body}");
    let status = get_json(proxy.admin_url("/plugins/tag/rollout")).await;
    assert_eq!(status["state"], "running", "{status}");
    let c = client();
    assert_eq!(version_of(c.get(proxy.url("/x"))).await.unwrap(), "v2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn promotion_and_abort_under_load_lose_no_request() {
    let up = upstream("backend").await;
    let dir = plugin_dir("promote");
    // No sticky key on these requests: spread evenly.
    let rollout = format!(
        "{{ candidate: {{ path: v2.wasm, config: {} }}, weight_percent: 30, sticky_on: 'header:x-user' }}",
        tagging("v2")
    );
    let proxy = Sluice::start_in(&config(up, &rollout), dir.clone()).await;
    let load = Load::start(proxy.url("/x"), 8, &[]);
    load.wait_answers(300).await;
    let before = load.counts();
    assert!(before.get("v2").copied().unwrap_or(0) > 0, "{before:?}");
    assert!(before.get("v1").copied().unwrap_or(0) > 0, "{before:?}");

    let (ok, out) = cli(&proxy, "status");
    assert!(ok, "{out}");
    assert!(out.contains("\"state\": \"running\""), "{out}");
    let (ok, out) = cli(&proxy, "promote");
    assert!(ok, "{out}");
    assert!(out.contains("\"state\": \"promoted\""), "{out}");
    // From now on only the candidate answers.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let at_promotion = load.counts();
    load.wait_answers(300).await;
    let after = load.counts();
    assert_eq!(
        after.get("v1"),
        at_promotion.get("v1"),
        "stable answered after the promotion"
    );
    // Promoted: /config says so; the rollout cannot be promoted or aborted again.
    let config_json = get_json(proxy.admin_url("/config")).await;
    assert_eq!(
        config_json["rollouts"]["tag"]["state"], "promoted",
        "{config_json}"
    );
    assert_eq!(
        config_json["rollouts"]["tag"]["serving"], "candidate",
        "{config_json}"
    );
    let (ok, out) = cli(&proxy, "abort");
    assert!(!ok, "{out}");
    assert!(out.contains("409") && out.contains("promoted"), "{out}");

    // A new candidate (a reload under the same load), then abort: stable only.
    let text = fill(&config(up, &rollout), &proxy).replace("v2", "v3");
    std::fs::write(dir.join("sluice.yaml"), text).unwrap();
    let (code, body) = post_reload(&proxy).await;
    assert_eq!(code, 200, "{body}");
    load.wait_answers(300).await;
    assert!(load.counts().get("v3").copied().unwrap_or(0) > 0);
    let r = client()
        .post(proxy.admin_url("/plugins/tag/rollout/abort"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let at_abort = load.counts();
    load.wait_answers(300).await;
    let (counts, failures) = load.finish().await;
    assert_eq!(
        counts.get("v3"),
        at_abort.get("v3"),
        "the candidate answered after the abort"
    );
    assert!(failures.is_empty(), "{failures:?}");
    let status = get_json(proxy.admin_url("/plugins/tag/rollout")).await;
    assert_eq!(status["state"], "aborted", "{status}");

    // A plugin without a rollout: 404 for its rollout endpoints.
    let r = client()
        .post(proxy.admin_url("/plugins/nothing/rollout/promote"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}
