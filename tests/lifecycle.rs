//! The process around the proxy: readiness, metrics, config introspection, graceful shutdown,
//! `sluice check` and `sluice demo`, all through the real binary.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::*;

fn config(up: &str, extra_server: &str) -> String {
    format!(
        "server: {{ threads: 2, grace_period_seconds: 20{extra_server} }}\n\
         listeners: [{{ name: public, address: '{{LISTEN}}' }}]\n\
         admin: {{ address: '{{ADMIN}}' }}\n\
         upstreams: {{ backend: {{ endpoints: ['{up}'] }} }}\n\
         routes:\n\
         \x20 - {{ name: api, match: {{ path_prefix: /api }}, upstream: backend }}\n\
         \x20 - {{ name: other, upstream: backend }}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_in_flight_requests_then_exits() {
    let up = upstream("up").await;
    let mut proxy = Sluice::start(&config(&up.to_string(), "")).await;
    let c = client();
    let slow = tokio::spawn(c.get(proxy.url("/api/slow?delay_ms=1500")).send());
    tokio::time::sleep(Duration::from_millis(300)).await;

    let signalled = Instant::now();
    proxy.signal(libc::SIGTERM);
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Draining: /ready says so, and new connections are not accepted.
    let ready = c.get(proxy.admin_url("/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    assert_eq!(ready.text().await.unwrap(), "draining\n");
    let fresh = reqwest::Client::new()
        .get(proxy.url("/api/new"))
        .send()
        .await;
    assert!(
        fresh.is_err(),
        "a new connection was accepted while draining: {fresh:?}"
    );

    // The in-flight request completes normally.
    let r = slow.await.unwrap().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(echo(r).await["path"], "/api/slow");

    // And the process exits soon after, well before the 20 s grace period.
    let status = proxy.wait_exit(Duration::from_secs(10)).await;
    let status = status.unwrap_or_else(|| panic!("still running:\n{}", proxy.logs()));
    assert!(status.success(), "exit status {status}");
    assert!(
        signalled.elapsed() < Duration::from_secs(8),
        "took {:?}",
        signalled.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_also_drains_gracefully() {
    let up = upstream("up").await;
    let mut proxy = Sluice::start(&config(&up.to_string(), "")).await;
    let c = client();
    let slow = tokio::spawn(c.get(proxy.url("/api?delay_ms=800")).send());
    tokio::time::sleep(Duration::from_millis(200)).await;
    proxy.signal(libc::SIGINT);
    let r = slow.await.unwrap().unwrap();
    assert_eq!(r.status(), 200);
    assert!(proxy
        .wait_exit(Duration::from_secs(10))
        .await
        .is_some_and(|s| s.success()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_with_traffic() {
    let up = upstream("up").await;
    let proxy = Sluice::start(&config(&up.to_string(), "")).await;
    let c = client();
    let api_ok = "sluice_requests_total{code=\"200\",route=\"api\"}";
    assert_eq!(proxy.metric(api_ok).await, None, "no traffic yet");
    for _ in 0..7 {
        assert_eq!(
            c.get(proxy.url("/api/x")).send().await.unwrap().status(),
            200
        );
    }
    for _ in 0..3 {
        let r = c.get(proxy.url("/api/x?status=503")).send().await.unwrap();
        assert_eq!(r.status(), 503);
    }
    c.get(proxy.url("/elsewhere")).send().await.unwrap();
    proxy.wait_metric(api_ok, 7.0).await;
    proxy
        .wait_metric("sluice_requests_total{code=\"503\",route=\"api\"}", 3.0)
        .await;
    proxy
        .wait_metric("sluice_requests_total{code=\"200\",route=\"other\"}", 1.0)
        .await;
    proxy
        .wait_metric("sluice_request_duration_seconds_count{route=\"api\"}", 10.0)
        .await;
    proxy.wait_metric(&format!(
                "sluice_upstream_requests_total{{endpoint=\"{up}\",result=\"success\",upstream=\"backend\"}}"
            ), 11.0).await;
    proxy
        .wait_metric(
            &format!("sluice_upstream_healthy{{endpoint=\"{up}\",upstream=\"backend\"}}"),
            1.0,
        )
        .await;
    proxy.wait_metric("sluice_requests_in_flight", 0.0).await;
    proxy.wait_metric("sluice_config_version", 1.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_serves_ready_config_and_nothing_else() {
    let up = upstream("up").await;
    let proxy = Sluice::start(&config(&up.to_string(), "")).await;
    let c = client();
    let r = c.get(proxy.admin_url("/ready")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "ready\n");

    let cfg = echo(c.get(proxy.admin_url("/config")).send().await.unwrap()).await;
    assert_eq!(cfg["version"], 1);
    assert!(cfg["loaded_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(cfg["config"]["routes"][0]["name"], "api");
    assert_eq!(
        cfg["config"]["upstreams"]["backend"]["endpoints"][0],
        up.to_string()
    );
    assert_eq!(
        cfg["config"]["upstreams"]["backend"]["connect_timeout_ms"],
        5000
    );

    assert_eq!(
        c.get(proxy.admin_url("/nope"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(
        c.post(proxy.admin_url("/ready"))
            .send()
            .await
            .unwrap()
            .status(),
        405
    );

    // The admin API is not reachable through the public listener: /ready there is proxied.
    let e = echo(c.get(proxy.url("/ready")).send().await.unwrap()).await;
    assert_eq!(e["path"], "/ready");
    assert_eq!(e["upstream"], "up");
}

fn check(yaml: &str) -> (bool, String, String) {
    let dir = temp_dir("check");
    let path = dir.join("config.yaml");
    std::fs::write(&path, yaml).unwrap();
    let out = Command::new(sluice_bin())
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const GOOD: &str = "listeners: [{ name: public, address: '127.0.0.1:18080' }]\n\
                    upstreams: { backend: { endpoints: ['127.0.0.1:3000'] } }\n\
                    routes: [{ name: api, match: { path_prefix: /api }, upstream: backend }]\n";

#[test]
fn check_accepts_a_good_config() {
    let (ok, out, err) = check(GOOD);
    assert!(ok, "{err}");
    assert!(
        out.contains("OK (1 listener, 1 upstream, 1 route, 0 plugins)"),
        "{out}"
    );
}

#[test]
fn check_names_the_field_of_each_error() {
    let cases: &[(&str, String, &str)] = &[
        (
            "unknown field",
            GOOD.replace("path_prefix", "path_prefixx"),
            "routes[0].match: unknown field `path_prefixx`",
        ),
        (
            "unknown upstream",
            GOOD.replace("upstream: backend", "upstream: api"),
            "routes[0].upstream: no upstream named \"api\"",
        ),
        (
            "bad listener address",
            GOOD.replace("127.0.0.1:18080", "127.0.0.1"),
            "listeners[0].address",
        ),
        (
            "empty endpoints",
            GOOD.replace("['127.0.0.1:3000']", "[]"),
            "upstreams.backend.endpoints: must list at least one endpoint",
        ),
        (
            "bad endpoint",
            GOOD.replace("127.0.0.1:3000", "127.0.0.1:70000"),
            "upstreams.backend.endpoints[0]",
        ),
        (
            "duplicate route",
            GOOD.replace("routes: [", "routes: [{ name: api, upstream: backend }, "),
            "routes[1].name: duplicate route name \"api\"",
        ),
        (
            "wrong type",
            GOOD.replace(
                "['127.0.0.1:3000']",
                "['127.0.0.1:3000'], connect_timeout_ms: fast",
            ),
            "upstreams.backend.connect_timeout_ms",
        ),
        (
            "path prefix",
            GOOD.replace("/api", "api"),
            "routes[0].match.path_prefix",
        ),
        (
            "hash without key",
            GOOD.replace(
                "['127.0.0.1:3000']",
                "['127.0.0.1:3000'], load_balancing: hash",
            ),
            "upstreams.backend.hash_on",
        ),
        (
            "bad balancing",
            GOOD.replace(
                "['127.0.0.1:3000']",
                "['127.0.0.1:3000'], load_balancing: fastest",
            ),
            "upstreams.backend.load_balancing: unknown variant `fastest`",
        ),
        (
            "admin on a listener",
            format!("{GOOD}admin: {{ address: '127.0.0.1:18080' }}\n"),
            "admin.address: 127.0.0.1:18080 is also used by listeners[0]",
        ),
        (
            "missing tls file",
            GOOD.replace(
                "'127.0.0.1:18080' }",
                "'127.0.0.1:18080', tls: { cert: nope.pem, key: nope.key } }",
            ),
            "listeners[0].tls.cert: cannot read",
        ),
        (
            "unknown plugin",
            GOOD.replace(
                "upstream: backend }",
                "upstream: backend, plugins: [auth] }",
            ),
            "routes[0].plugins[0]: no plugin named \"auth\"",
        ),
        (
            "health check",
            GOOD.replace(
                "['127.0.0.1:3000']",
                "['127.0.0.1:3000'], health_check: { path: /h, interval_ms: 100, timeout_ms: 500 }",
            ),
            "upstreams.backend.health_check.timeout_ms: 500 is longer than interval_ms (100)",
        ),
        (
            "upstream CA file",
            GOOD.replace(
                "['127.0.0.1:3000'] }",
                "['127.0.0.1:3000'] }, idp: { endpoints: ['127.0.0.1:8443'], tls: { ca: missing.pem } }",
            ),
            "upstreams.idp.tls.ca: cannot read",
        ),
        ("yaml syntax", "listeners: [\n".to_string(), "error"),
    ];
    for (what, yaml, expected) in cases {
        let (ok, _, err) = check(yaml);
        assert!(!ok, "{what}: accepted");
        assert!(
            err.contains(expected),
            "{what}: expected {expected:?} in:\n{err}"
        );
    }
}

#[test]
fn the_example_config_in_deploy_is_valid() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/sluice.example.yaml");
    let out = Command::new(sluice_bin())
        .args(["check", "--config", path])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("OK (1 listener, 3 upstreams, 3 routes, 0 plugins)"),
        "{text}"
    );
}

#[test]
fn check_reports_a_missing_file() {
    let out = Command::new(sluice_bin())
        .args(["check", "--config", "/nonexistent/sluice.yaml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/nonexistent/sluice.yaml: cannot read the config file"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_refuses_an_address_in_use() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = temp_dir("inuse");
    let path = dir.join("c.yaml");
    std::fs::write(
        &path,
        format!(
            "listeners: [{{ name: public, address: '{addr}' }}]\n\
             admin: {{ address: '127.0.0.1:{}' }}\n\
             upstreams: {{ b: {{ endpoints: ['127.0.0.1:1'] }} }}\n\
             routes: [{{ name: r, upstream: b }}]\n",
            free_port()
        ),
    )
    .unwrap();
    let out = Command::new(sluice_bin())
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("listeners[0].address: cannot listen on {addr}")),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_runs_auth_rate_limit_and_headers_in_front_of_the_echo_upstream() {
    let (listen, admin, up) = (free_port(), free_port(), free_port());
    let dir = temp_dir("demo");
    // `make wasm` builds the plugins here.
    let plugins = target_dir().join("wasm32-wasip1/plugin");
    for (_, file) in sluice::demo::PLUGINS {
        assert!(
            plugins.join(file).is_file(),
            "build the plugins with `make wasm` first"
        );
    }
    let mut child = spawn_logged(
        Command::new(sluice_bin()).args([
            "demo",
            "--listen",
            &format!("127.0.0.1:{listen}"),
            "--admin",
            &format!("127.0.0.1:{admin}"),
            "--upstream",
            &format!("127.0.0.1:{up}"),
            "--plugins",
            plugins.to_str().unwrap(),
        ]),
        &dir.join("demo.log"),
    );
    let c = client();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = c
            .get(format!("http://127.0.0.1:{admin}/ready"))
            .send()
            .await
        {
            if r.status() == 200 {
                break;
            }
        }
        assert!(Instant::now() < deadline, "demo never ready");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let url = format!("http://127.0.0.1:{listen}/hello");
    // auth: no credential.
    let r = c.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers().get("www-authenticate").is_some());
    // auth with an API key, then headers; the rate limit's first token.
    let r = c
        .post(&url)
        .header("x-api-key", sluice::demo::API_KEY)
        .body("hi there")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-served-by"], "sluice-demo");
    assert_eq!(r.headers()["ratelimit-remaining"], "4");
    let e = echo(r).await;
    assert_eq!(e["upstream"], "demo");
    assert_eq!(e["body"], "hi there");
    assert_eq!(echo_header(&e, "x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(echo_header(&e, "x-auth-key-id"), Some("demo"));
    assert_eq!(echo_header(&e, "x-demo-route"), Some("demo"));
    assert!(
        e["headers"]["x-api-key"].is_null(),
        "the credential is stripped"
    );
    // auth with the demo's JWT.
    let r = c
        .get(&url)
        .header("authorization", format!("Bearer {}", sluice::demo::TOKEN))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(echo_header(&echo(r).await, "x-user"), Some("demo-user"));
    // Both keys came from the demo's secret files; /config shows the references.
    let shown = get_json(format!("http://127.0.0.1:{admin}/config")).await;
    let auth = &shown["config"]["plugins"]["auth"]["config"];
    let k = auth["jwt"]["jwks"]["keys"][0]["k"].as_str().unwrap();
    assert!(
        k.starts_with("${file:") && k.ends_with("/jwt-demo.k}"),
        "{k}"
    );
    let digest = auth["api_keys"]["keys"][0]["sha256"].as_str().unwrap();
    assert!(digest.ends_with("/api-key-demo.sha256}"), "{digest}");
    assert!(!shown.to_string().contains("c2x1aWNl"), "{shown}");
    // An allow-listed path needs no credential (and the rate limit still counts it).
    let r = c
        .get(format!("http://127.0.0.1:{listen}/public/info"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // rate-limit: 5 per 10 s for this client; 3 are spent.
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let r = c
            .get(&url)
            .header("x-api-key", sluice::demo::API_KEY)
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 429]);
    let log = std::fs::read_to_string(dir.join("demo.log")).unwrap();
    for shown in [
        "curl -s http://127.0.0.1:",
        "x-api-key: demo-key",
        "Bearer eyJ",
        "then 429",
    ] {
        assert!(log.contains(shown), "demo prints {shown:?}:\n{log}");
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_has_one_line_per_request() {
    let up = upstream("up").await;
    let proxy = Sluice::start(&config(&up.to_string(), "")).await;
    let c = client();
    c.get(proxy.url("/api/logged"))
        .header("x-request-id", "trace-me-42")
        .send()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let logs = proxy.logs();
    let lines: Vec<&str> = logs.lines().filter(|l| l.contains("trace-me-42")).collect();
    assert_eq!(lines.len(), 1, "{logs}");
    for field in [
        "route=\"api\"",
        "upstream=\"backend\"",
        "status=200",
        "path=/api/logged",
        "duration_ms=",
    ] {
        assert!(lines[0].contains(field), "missing {field}: {}", lines[0]);
    }
}

/// `sluice check` says what it does with each plugin, with the time each step took; on a
/// terminal (here a pseudo-terminal made by `script`), a status line shows the step under way.
#[test]
fn check_logs_each_plugin_step_and_shows_progress_on_a_terminal() {
    let dir = temp_dir("check-progress");
    let built = target_dir().join("wasm32-wasip1/plugin");
    let yaml = format!(
        "{GOOD}plugins:\n  \
         headers: {{ path: '{}', config: {{ rules: [{{ response: {{ set: {{ x-a: b }} }} }}] }} }}\n  \
         limit: {{ path: '{}', expose: [client_address], config: {{ key: [client_address], requests: 5, period_seconds: 10 }} }}\n",
        built.join("sluice_plugin_headers.wasm").display(),
        built.join("sluice_plugin_rate_limit.wasm").display(),
    );
    let path = dir.join("config.yaml");
    std::fs::write(&path, &yaml).unwrap();
    let out = Command::new(sluice_bin())
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for plugin in ["headers", "limit"] {
        for step in [
            "plugin fetched",
            "plugin verified",
            "plugin compiled",
            "plugin started",
        ] {
            let line = stdout
                .lines()
                .find(|l| l.contains(step) && l.contains(&format!("plugin={plugin} ")))
                .unwrap_or_else(|| panic!("no {step:?} line for {plugin}:\n{stdout}"));
            let ms: f64 = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("ms="))
                .unwrap_or_else(|| panic!("no time in {line:?}"))
                .parse()
                .unwrap();
            assert!((0.0..60_000.0).contains(&ms), "{line}");
        }
    }
    assert!(
        !stderr.contains('\r'),
        "no status line off a terminal: {stderr:?}"
    );

    // On a terminal: the status line, drawn and cleared.
    let cmd = format!("{} check --config {}", sluice_bin(), path.display());
    let out = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .output()
        .expect("script (util-linux) runs a command on a pseudo-terminal");
    let tty = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{tty}");
    for plugin in ["headers", "limit"] {
        for doing in ["fetching", "compiling", "starting"] {
            assert!(
                tty.contains(&format!("{doing} {plugin} (")),
                "no {doing:?} status for {plugin}:\n{tty:?}"
            );
        }
    }
    assert!(tty.contains("\r\x1b[2K"), "{tty:?}");
    assert!(tty.contains("OK (1 listener, 1 upstream, 1 route, 2 plugins)"));
    let _ = std::fs::remove_dir_all(&dir);
}
