use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_policies_answer_or_skip_and_the_vm_is_replaced() {
    let proxy = start(
        &[
            ("closed", "/closed", "panics"),
            ("open", "/open", "panics_open, after"),
            ("loop", "/loop", "spin"),
            ("grow", "/grow", "grow"),
            ("ok", "/ok", "after"),
        ],
        "  panics: { path: sdk.wasm, vms: 1, config: { mode: panic, phase: request_headers } }\n\
         \x20 panics_open: { path: sdk.wasm, vms: 1, on_error: fail_open, config: { mode: panic, phase: response_headers } }\n\
         \x20 after: { path: sdk.wasm, config: { mode: headers, tag: after } }\n\
         \x20 spin: { path: sdk.wasm, vms: 1, config: { mode: loop }, limits: { fuel: 10000000000, timeout_ms: 20 } }\n\
         \x20 grow: { path: sdk.wasm, vms: 1, config: { mode: grow }, limits: { memory_mb: 8 } }\n",
    )
    .await;
    let c = client();
    let r = c.get(proxy.url("/closed")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let body = r.text().await.unwrap();
    assert_eq!(body, "503 Service Unavailable: plugin \"panics\" failed\n");
    let r = c.get(proxy.url("/open")).send().await.unwrap();
    assert_eq!(r.status(), 200, "fail_open skips the plugin");
    assert_eq!(r.headers()["x-sdk-tag"], "after");
    let r = c.get(proxy.url("/loop")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let r = c.get(proxy.url("/grow")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let m = |kind: &str, phase: &str, plugin: &str| {
        format!(
            "sluice_plugin_errors_total{{kind=\"{kind}\",phase=\"{phase}\",plugin=\"{plugin}\",version=\"stable\"}}"
        )
    };
    proxy
        .wait_metric(&m("trap", "request_headers", "panics"), 1.0)
        .await;
    proxy
        .wait_metric(&m("trap", "response_headers", "panics_open"), 1.0)
        .await;
    proxy
        .wait_metric(&m("timeout", "request_headers", "spin"), 1.0)
        .await;
    proxy
        .wait_metric(&m("memory", "request_headers", "grow"), 1.0)
        .await;
    // The broken VM is replaced: the next request fails again by policy (the plugin still
    // panics), which needs a fresh VM.
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy
        .wait_metric(
            "sluice_plugin_vms{plugin=\"panics\",version=\"stable\"}",
            1.0,
        )
        .await;
    let r = c.get(proxy.url("/closed")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    proxy
        .wait_metric(&m("trap", "request_headers", "panics"), 2.0)
        .await;
    // Healthy routes never noticed.
    let r = c.get(proxy.url("/ok")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    proxy
        .wait_metric(
            "sluice_plugin_contexts{plugin=\"after\",version=\"stable\"}",
            0.0,
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_pointers_get_statuses_not_crashes() {
    let proxy = start(
        &[("bad", "/", "bad")],
        "  bad: { path: sdk.wasm, config: { mode: badptr } }\n",
    )
    .await;
    let e = echo(client().get(proxy.url("/x")).send().await.unwrap()).await;
    assert_eq!(echo_header(&e, "x-badptr"), Some("6,6,6,6,6,6,6"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_loads_plugins_and_names_the_one_that_fails() {
    let up = upstream("backend").await;
    let dir = plugin_dir("check");
    let cases = [
        ("  p: { path: sdk.wasm, config: { mode: configure-false } }\n", "proxy_on_configure returned false"),
        ("  p: { path: sdk.wasm, vm_config: fail, config: { mode: headers } }\n", "proxy_on_vm_start returned false"),
        ("  p: { path: sdk.wasm, config: { mode: panic, phase: configure } }\n", "proxy_on_configure failed"),
        ("  p: { path: sdk.wasm, sha256: '0000000000000000000000000000000000000000000000000000000000000000', config: { mode: headers } }\n", "sha256 of"),
        ("  p: { path: as.wasm, root_id: wrong, config: x }\n", "plugin \"p\""),
        ("  p: { path: sluice.yaml, config: { mode: headers } }\n", "not a valid wasm module"),
    ];
    for (plugin, want) in cases {
        let (text, _, _) = with_ports(&config(up, &[("r", "/", "p")], plugin));
        let file = dir.join("sluice.yaml");
        std::fs::write(&file, text).unwrap();
        // `check` and `run` both refuse it, naming the plugin and the cause.
        for command in ["check", "run"] {
            let out = std::process::Command::new(sluice_bin())
                .args([command, "--config"])
                .arg(&file)
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{command}: {plugin} passed");
            assert!(stderr.contains("plugin \"p\""), "{command}: {stderr}");
            assert!(
                stderr.contains(want),
                "{command}: want {want:?} in {stderr}"
            );
        }
    }
    let (text, _, _) = with_ports(&config(
        up,
        &[("r", "/", "p")],
        "  p: { path: sdk.wasm, config: { mode: headers } }\n",
    ));
    std::fs::write(dir.join("sluice.yaml"), text).unwrap();
    let out = std::process::Command::new(sluice_bin())
        .args(["check", "--config"])
        .arg(dir.join("sluice.yaml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 plugin)"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_requests_end_at_the_pause_timeout_or_as_soon_as_the_client_leaves() {
    let proxy = start(
        &[
            ("held", "/held", "held"),
            ("gone", "/gone", "forever, gone"),
            ("slow", "/slow", "slow"),
        ],
        "  held: { path: sdk.wasm, config: { mode: pause-forever }, limits: { pause_timeout_ms: 300 } }\n\
         \x20 forever: { path: sdk.wasm, config: { mode: pause-forever }, limits: { pause_timeout_ms: 600000 } }\n\
         \x20 gone: { path: sdk.wasm, config: { mode: log, tag: gone } }\n\
         \x20 slow: { path: sdk.wasm, config: { mode: log, tag: slow } }\n",
    )
    .await;
    let r = client().get(proxy.url("/held")).send().await.unwrap();
    assert_eq!(r.status(), 504);
    assert_eq!(
        r.text().await.unwrap(),
        "504 Gateway Timeout: plugin \"held\" did not resume the request within 300 ms\n"
    );
    proxy
        .wait_metric(
            "sluice_plugin_contexts{plugin=\"held\",version=\"stable\"}",
            0.0,
        )
        .await;

    // The client gives up on a request a plugin holds for 10 minutes, and on one the
    // upstream is slow to answer: both requests end at once, and every plugin of their
    // chains gets on_log, on_done and on_delete.
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    assert!(impatient.get(proxy.url("/gone")).send().await.is_err());
    assert!(impatient
        .get(proxy.url("/slow?delay_ms=4000"))
        .send()
        .await
        .is_err());
    for plugin in ["forever", "gone", "slow"] {
        proxy
            .wait_metric(
                &format!("sluice_plugin_contexts{{plugin=\"{plugin}\",version=\"stable\"}}"),
                0.0,
            )
            .await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let logs = proxy.logs();
    for tag in ["gone", "slow"] {
        for what in ["on_log", "on_done", "on_delete"] {
            assert!(
                logs.contains(&format!("sdk-log {what} {tag}")),
                "{what} of {tag} missing:\n{logs}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_in_every_phase_follow_the_policy() {
    let proxy = start(
        &[
            ("fuel", "/fuel", "burn"),
            ("reqbody", "/reqbody", "reqbody"),
            ("respbody", "/respbody", "respbody"),
            ("respbody_open", "/open-respbody", "respbody_open"),
            ("log", "/log", "inlog"),
        ],
        "  burn: { path: sdk.wasm, vms: 1, config: { mode: loop }, limits: { fuel: 1000000, timeout_ms: 60000 } }\n\
         \x20 reqbody: { path: sdk.wasm, vms: 1, config: { mode: panic, phase: request_body } }\n\
         \x20 respbody: { path: sdk.wasm, vms: 1, config: { mode: panic, phase: response_body } }\n\
         \x20 respbody_open: { path: sdk.wasm, vms: 1, on_error: fail_open, config: { mode: panic, phase: response_body } }\n\
         \x20 inlog: { path: sdk.wasm, vms: 1, config: { mode: panic, phase: log } }\n",
    )
    .await;
    let c = client();
    let m = |kind: &str, phase: &str, plugin: &str| {
        format!(
            "sluice_plugin_errors_total{{kind=\"{kind}\",phase=\"{phase}\",plugin=\"{plugin}\",version=\"stable\"}}"
        )
    };

    // Out of fuel long before the 60 s deadline.
    let r = c.get(proxy.url("/fuel")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    proxy
        .wait_metric(&m("fuel", "request_headers", "burn"), 1.0)
        .await;

    // A streamed request body: the failure answers before the upstream's response.
    let r = c
        .post(proxy.url("/reqbody"))
        .body(vec![b'x'; 200_000])
        .send()
        .await;
    if let Ok(r) = r {
        assert_eq!(r.status(), 503);
    }
    proxy
        .wait_metric(&m("trap", "request_body", "reqbody"), 1.0)
        .await;

    // The response body: fail_closed never delivers the body the plugin failed on...
    let r = c.get(proxy.url("/respbody/echo")).send().await;
    let delivered = match r {
        Ok(r) if r.status() == 200 => r.bytes().await.is_ok_and(|b| b.starts_with(b"{")),
        Ok(r) => {
            assert_eq!(r.status(), 503);
            false
        }
        Err(_) => false,
    };
    assert!(!delivered, "fail_closed delivered the body");
    proxy
        .wait_metric(&m("trap", "response_body", "respbody"), 1.0)
        .await;
    // ...fail_open delivers it untouched.
    let r = c
        .get(proxy.url("/open-respbody/echo"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let e = echo(r).await;
    assert_eq!(e["path"], "/open-respbody/echo");
    proxy
        .wait_metric(&m("trap", "response_body", "respbody_open"), 1.0)
        .await;

    // on_log runs after the response went out: the response stands, the failure is counted.
    let r = c.get(proxy.url("/log")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    echo(r).await;
    proxy.wait_metric(&m("trap", "log", "inlog"), 1.0).await;
    // Each failed VM is replaced.
    for plugin in ["burn", "reqbody", "respbody", "inlog"] {
        proxy
            .wait_metric(
                &format!("sluice_plugin_vms{{plugin=\"{plugin}\",version=\"stable\"}}"),
                1.0,
            )
            .await;
    }
}
