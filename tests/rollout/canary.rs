//! The canary share and what keeps a client on one version.

use super::*;

/// Sends `requests` GETs, `concurrency` at a time, each with `x-user: user-I`; returns the
/// version that answered each user.
async fn by_user(proxy: &Sluice, users: std::ops::Range<usize>) -> BTreeMap<usize, String> {
    let c = client();
    let mut out = BTreeMap::new();
    let users: Vec<usize> = users.collect();
    for batch in users.chunks(8) {
        let answers = futures_util::future::join_all(batch.iter().map(|&u| {
            let req = c.get(proxy.url("/x")).header("x-user", format!("user-{u}"));
            async move { (u, version_of(req).await) }
        }))
        .await;
        for (u, v) in answers {
            out.insert(u, v.unwrap_or_else(|e| panic!("user {u}: {e}")));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_canary_serves_its_share_and_each_key_stays_on_one_version() {
    let up = upstream("backend").await;
    let dir = plugin_dir("canary");
    let rollout = format!(
        "{{ candidate: {{ path: v2.wasm, config: {} }}, weight_percent: 20, sticky_on: 'header:x-user' }}",
        tagging("v2")
    );
    let proxy = Sluice::start_in(&config(up, &rollout), dir).await;

    // 2000 users: the candidate's share is a binomial(2000, 0.2): 400 ± 4σ (σ ≈ 17.9).
    let first = by_user(&proxy, 0..2000).await;
    let v2 = first.values().filter(|v| *v == "v2").count();
    let v1 = first.values().filter(|v| *v == "v1").count();
    assert_eq!(v1 + v2, 2000, "only the two versions answer");
    assert!((328..=472).contains(&v2), "candidate share {v2} of 2000");

    // The same users again (a sample of them, several times): the same version each time.
    for _ in 0..3 {
        let again = by_user(&proxy, 0..300).await;
        for (u, v) in &again {
            assert_eq!(v, &first[u], "user {u} changed version");
        }
    }

    // What each version served shows in /plugins/NAME/rollout (counted as each request
    // ends, just after its answer went out) and in the metrics.
    let status = rollout_status_after(&proxy, 2900).await;
    assert_eq!(status["state"], "running", "{status}");
    assert_eq!(status["weight_percent"], 20.0, "{status}");
    let served = |v: &str| status["versions"][v]["requests"].as_u64().unwrap();
    let candidate_answers = v2 as u64
        + first
            .keys()
            .filter(|u| **u < 300 && first[u] == "v2")
            .count() as u64
            * 3;
    assert_eq!(served("candidate"), candidate_answers, "{status}");
    assert_eq!(
        served("stable") + served("candidate"),
        2000 + 900,
        "{status}"
    );
    assert_eq!(status["versions"]["candidate"]["failures"], 0, "{status}");
    assert!(
        status["versions"]["candidate"]["guest_us"]["p99"]
            .as_u64()
            .is_some(),
        "{status}"
    );
    assert_eq!(
        proxy
            .metric("sluice_plugin_requests_total{plugin=\"tag\",version=\"candidate\"}")
            .await,
        Some(candidate_answers as f64)
    );
    assert_eq!(
        proxy
            .metric("sluice_plugin_requests_total{plugin=\"tag\",version=\"stable\"}")
            .await,
        Some((2900 - candidate_answers) as f64)
    );
    // The candidate's VMs are its own.
    assert_eq!(status["versions"]["candidate"]["vm_id"], "tag/candidate");
    assert_eq!(status["versions"]["stable"]["vm_id"], "tag");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_on_the_client_address_keeps_one_client_on_one_version() {
    let up = upstream("backend").await;
    let dir = plugin_dir("canary-address");
    let rollout = format!(
        "{{ candidate: {{ path: v2.wasm, config: {} }}, weight_percent: 50 }}",
        tagging("v2")
    );
    let proxy = Sluice::start_in(&config(up, &rollout), dir).await;
    let c = client();
    let mut seen = BTreeMap::new();
    for _ in 0..200 {
        let v = version_of(c.get(proxy.url("/x"))).await.unwrap();
        *seen.entry(v).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 1, "one client address, one version: {seen:?}");
    assert_eq!(seen.values().sum::<u64>(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_rollout_is_refused_with_the_field_named() {
    let up = upstream("backend").await;
    let dir = plugin_dir("canary-bad");
    for (rollout, field) in [
        (
            "{ candidate: { path: v2.wasm }, weight_percent: 5.05 }",
            "plugins.tag.rollout.weight_percent",
        ),
        (
            "{ candidate: { path: v2.wasm }, weight_percent: 5, sticky_on: cookie }",
            "plugins.tag.rollout.sticky_on",
        ),
        (
            "{ candidate: { path: missing.wasm }, weight_percent: 5 }",
            "plugins.tag.rollout.candidate.path",
        ),
        (
            "{ candidate: { path: v2.wasm }, rollback: { max_error_rate: 2 } }",
            "plugins.tag.rollout.rollback.max_error_rate",
        ),
        (
            "{ candidate: { path: v2.wasm, rollout: { candidate: { path: v3.wasm } } } }",
            "plugins.tag.rollout.candidate.rollout",
        ),
        (
            "{ candidate: { path: v2.wasm }, mode: blue_green }",
            "plugins.tag.rollout.mode",
        ),
    ] {
        let file = dir.join("bad.yaml");
        let (text, _, _) = with_ports(&config(up, rollout));
        std::fs::write(&file, text).unwrap();
        let out = std::process::Command::new(sluice_bin())
            .args(["check", "--config"])
            .arg(&file)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{rollout}: accepted");
        assert!(stderr.contains(field), "{rollout}: {stderr}");
    }
}
