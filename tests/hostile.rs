//! Hostile plugins through the real proxy: hand-written modules that loop, recurse, grow
//! memory, trap or exit in each phase they can act in, flood the host with calls and sizes it
//! must refuse, or cannot be loaded at all. Every offending request must get its policy's
//! answer in bounded time, the failure must be counted with the right kind, and — checked by
//! a steady background load during the whole suite — requests on the other routes must keep
//! succeeding.

mod support;

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::*;

/// The phases a plugin acts in, with the export that runs it.
const PHASES: &[(&str, &str)] = &[
    ("request_headers", "proxy_on_request_headers"),
    ("request_body", "proxy_on_request_body"),
    ("response_headers", "proxy_on_response_headers"),
    ("response_body", "proxy_on_response_body"),
    ("log", "proxy_on_log"),
];

/// A misbehaviour: the code that runs in the chosen phase (leaving one i32 on the stack), the
/// error kind Sluice must count, and the plugin's limits.
struct Failing {
    name: &'static str,
    code: &'static str,
    kind: &'static str,
    limits: &'static str,
}

const FAILING: &[Failing] = &[
    Failing {
        name: "loop",
        code: "(loop $l (br $l)) (i32.const 0)",
        kind: "fuel",
        limits: "{ fuel: 5000000, timeout_ms: 60000 }",
    },
    Failing {
        name: "spin",
        code: "(loop $l (br $l)) (i32.const 0)",
        kind: "timeout",
        limits: "{ fuel: 4611686018427387903, timeout_ms: 100 }",
    },
    Failing {
        // A loop around a host call (as a plugin retrying forever would): host calls cost
        // no fuel, the deadline stops it.
        name: "callloop",
        code: "(loop $l (drop (call $map_size (i32.const 0) (i32.const 0x100))) (br $l)) (i32.const 0)",
        kind: "timeout",
        limits: "{ fuel: 4611686018427387903, timeout_ms: 100 }",
    },
    Failing {
        name: "recurse",
        code: "(call $recurse (i32.const 0))",
        kind: "trap",
        limits: "{}",
    },
    Failing {
        name: "grow",
        code: "(block $full (loop $l (br_if $full (i32.eq (memory.grow (i32.const 16)) \
               (i32.const -1))) (br $l))) unreachable",
        kind: "memory",
        limits: "{ memory_mb: 16 }",
    },
    Failing {
        name: "unreachable",
        code: "unreachable",
        kind: "trap",
        limits: "{}",
    },
    Failing {
        name: "exit",
        code: "(call $proc_exit (i32.const 3)) (i32.const 0)",
        kind: "trap",
        limits: "{}",
    },
];

const IMPORTS: &str = r#"
  (import "env" "proxy_add_header_map_value" (func $add_header (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_buffer_bytes" (func $set_buffer (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_send_local_response" (func $local_response (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_http_call" (func $http_call (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_pairs" (func $get_pairs (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_size" (func $map_size (param i32 i32) (result i32)))
  (import "env" "proxy_set_tick_period_milliseconds" (func $set_tick (param i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
"#;

/// A Proxy-Wasm module whose callback `hostile_export` runs `code`; every other callback
/// continues. `malloc` is `malloc_body` (a bump allocator by default). `data` is placed at
/// address 0x400.
fn module(hostile_export: &str, code: &str, malloc_body: Option<&str>, extra: &str) -> String {
    let mut m = String::from("(module\n");
    m.push_str(IMPORTS);
    m.push_str(
        "  (memory (export \"memory\") 2)\n\
         \x20 (data (i32.const 0x400) \"backend\")\n\
         \x20 (data (i32.const 0x410) \"x-flood\")\n\
         \x20 (data (i32.const 0x420) \"bad status\")\n\
         \x20 (func (export \"proxy_abi_version_0_2_1\"))\n\
         \x20 (global $heap (mut i32) (i32.const 0x8000))\n",
    );
    let malloc = malloc_body.unwrap_or(
        "(local $p i32) (local.set $p (global.get $heap)) \
         (global.set $heap (i32.add (global.get $heap) (local.get 0))) (local.get $p)",
    );
    writeln!(
        m,
        "  (func (export \"malloc\") (param i32) (result i32) {malloc})"
    )
    .unwrap();
    m.push_str("  (func (export \"proxy_on_context_create\") (param i32 i32))\n");
    m.push_str(
        "  (func $recurse (param i32) (result i32) (call $recurse (i32.add (local.get 0) (i32.const 1))))\n",
    );
    for (_, export) in PHASES {
        let body = if *export == hostile_export {
            code
        } else {
            "(i32.const 0)"
        };
        if *export == "proxy_on_log" {
            writeln!(
                m,
                "  (func (export \"{export}\") (param i32) (drop {body}))"
            )
            .unwrap();
        } else {
            writeln!(
                m,
                "  (func (export \"{export}\") (param i32 i32 i32) (result i32) {body})"
            )
            .unwrap();
        }
    }
    m.push_str(extra);
    m.push(')');
    m
}

/// A config with `routes` (YAML list items) before the `last` route, and `plugins`.
fn config_text(up: std::net::SocketAddr, routes: &str, last: &str, plugins: &str) -> String {
    format!(
        "server: {{ threads: 2, grace_period_seconds: 1 }}\n\
         listeners: [{{ name: public, address: '{{LISTEN}}' }}]\n\
         admin: {{ address: '{{ADMIN}}' }}\n\
         reload: {{ watch: false }}\n\
         upstreams:\n  backend: {{ endpoints: ['{up}'] }}\n\
         routes:\n{routes}{last}\
         plugins:\n{plugins}"
    )
}

/// Answers of the background load: successes and failures (with a sample of what failed).
struct Background {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Background {
    fn start(urls: Vec<String>) -> Background {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let tasks = urls
            .into_iter()
            .map(|url| {
                let (stop, ok, failures) = (stop.clone(), ok.clone(), failures.clone());
                tokio::spawn(async move {
                    let c = client();
                    while !stop.load(Ordering::Relaxed) {
                        let outcome = match c.get(&url).send().await {
                            Ok(r) => {
                                let status = r.status();
                                match r.bytes().await {
                                    Ok(_) if status == 200 => Ok(()),
                                    Ok(_) => Err(format!("{url}: status {status}")),
                                    Err(e) => Err(format!("{url}: body: {e}")),
                                }
                            }
                            Err(e) => Err(format!("{url}: {e}")),
                        };
                        match outcome {
                            Ok(()) => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => failures.lock().unwrap().push(e),
                        }
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                })
            })
            .collect();
        Background {
            stop,
            ok,
            failures,
            tasks,
        }
    }

    async fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        let failures = self.failures.lock().unwrap().clone();
        (self.ok.load(Ordering::Relaxed), failures)
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

fn errors_metric(kind: &str, phase: &str, plugin: &str) -> String {
    format!("sluice_plugin_errors_total{{kind=\"{kind}\",phase=\"{phase}\",plugin=\"{plugin}\",version=\"stable\"}}")
}

/// Sends the request that makes `phase` run (a body for request_body), returning the status
/// (None: the response was cut) and how long it took.
async fn hit(
    c: &reqwest::Client,
    proxy: &Sluice,
    path: &str,
    phase: &str,
) -> (Option<u16>, Duration) {
    let started = Instant::now();
    let req = if phase == "request_body" {
        c.post(proxy.url(path)).body(vec![b'x'; 4096])
    } else {
        c.get(proxy.url(path))
    };
    let status = match req.send().await {
        Ok(r) => {
            let s = r.status().as_u16();
            match r.bytes().await {
                Ok(_) => Some(s),
                Err(_) => None,
            }
        }
        Err(_) => None,
    };
    (status, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn misbehaving_plugins_cost_their_own_requests_only() {
    let up = upstream("backend").await;
    let dir = temp_dir("hostile");
    std::fs::write(
        dir.join("benign.wasm"),
        std::fs::read(target_dir().join("wasm32-wasip1/plugin/sluice_plugin_headers.wasm"))
            .expect("build the plugins with `make wasm` first"),
    )
    .unwrap();
    let mut routes = String::new();
    let mut plugins = String::from(
        "  benign: { path: benign.wasm, config: { rules: [{ response: { set: { x-benign: yes } } }] } }\n",
    );
    let mut cases = Vec::new();
    for f in FAILING {
        for (phase, export) in PHASES {
            let name = format!("{}_{phase}", f.name);
            std::fs::write(
                dir.join(format!("{name}.wat")),
                module(export, f.code, None, ""),
            )
            .unwrap();
            writeln!(
                routes,
                "  - {{ name: {name}, match: {{ path_prefix: /{name}/ }}, upstream: backend, plugins: [benign, {name}] }}"
            )
            .unwrap();
            writeln!(
                plugins,
                "  {name}: {{ path: {name}.wat, vms: 1, limits: {} }}",
                f.limits
            )
            .unwrap();
            cases.push((name, f.kind, *phase));
        }
    }
    let text = config_text(
        up,
        &routes,
        "  - { name: healthy, match: { path_prefix: /healthy }, upstream: backend }\n\
         \x20 - { name: benign, match: { path_prefix: / }, upstream: backend, plugins: [benign] }\n",
        &plugins,
    );
    let proxy = Sluice::start_in(&text, dir.clone()).await;
    let pid = proxy.pid();
    let rss_start = rss_kib(pid);
    let background = Background::start(vec![
        proxy.url("/healthy/a"),
        proxy.url("/healthy/b"),
        proxy.url("/benign/a"),
        proxy.url("/benign/b"),
    ]);
    let c = client();
    let mut report = Vec::new();
    for (name, kind, phase) in &cases {
        let (status, took) = hit(&c, &proxy, &format!("/{name}/x"), phase).await;
        let ok = match *phase {
            // The response went out before on_log: it stands.
            "log" => status == Some(200),
            // The body the plugin failed on is never delivered.
            "response_body" => status != Some(200),
            _ => status == Some(503),
        };
        report.push(format!("{name}: {status:?} in {took:?}"));
        assert!(ok, "{name}: got {status:?}\n{}", report.join("\n"));
        assert!(
            took < Duration::from_secs(10),
            "{name}: answered after {took:?}"
        );
        proxy
            .wait_metric(&errors_metric(kind, phase, name), 1.0)
            .await;
    }
    let (ok, failures) = background.finish().await;
    let rss_end = rss_kib(pid);
    eprintln!(
        "{} hostile requests; background: {ok} ok, {} failed; RSS {} MiB -> {} MiB",
        cases.len(),
        failures.len(),
        rss_start / 1024,
        rss_end / 1024
    );
    assert!(
        failures.is_empty(),
        "healthy routes failed while plugins misbehaved: {:?}",
        &failures[..failures.len().min(5)]
    );
    assert!(ok > 100, "the background load hardly ran: {ok}");
    // Failed VMs are dropped and replaced: what stays resident is bounded.
    assert!(
        rss_end < rss_start + 512 * 1024,
        "RSS grew from {rss_start} KiB to {rss_end} KiB"
    );
}

/// `bytes` as a WAT data string.
fn wat_bytes(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("\\{b:02x}")).collect()
}

/// Reads one HTTP/1.1 response head from a raw connection; returns its lines.
async fn raw_get(addr: std::net::SocketAddr, path: &str) -> Vec<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw))
        .await
        .expect("no answer in 10 s")
        .unwrap();
    let text = String::from_utf8_lossy(&raw);
    let head = text.split("\r\n\r\n").next().unwrap_or_default();
    head.lines().map(String::from).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn abusive_host_calls_are_refused_and_the_request_goes_on() {
    let up = upstream("backend").await;
    let dir = temp_dir("hostile-calls");
    let callout_headers = sluice_abi::map::encode([
        (&b":method"[..], &b"GET"[..]),
        (&b":path"[..], &b"/callout"[..]),
        (&b":authority"[..], &b"backend"[..]),
    ])
    .unwrap();
    let callout_data = format!(
        "  (data (i32.const 0x1000) \"{}\")\n",
        wat_bytes(&callout_headers)
    );
    let n = callout_headers.len();
    // (name, callback, code, extra module text, malloc, plugin options)
    type Case = (
        &'static str,
        &'static str,
        String,
        String,
        Option<&'static str>,
        &'static str,
    );
    let cases: Vec<Case> = vec![
        (
            // 100 000 response headers: the map is capped, the rest refused.
            "headers",
            "proxy_on_response_headers",
            "(local $i i32) (block $done (loop $l \
             (drop (call $add_header (i32.const 2) (i32.const 0x410) (i32.const 7) (i32.const 0x410) (i32.const 7))) \
             (local.set $i (i32.add (local.get $i) (i32.const 1))) \
             (br_if $done (i32.ge_u (local.get $i) (i32.const 100000))) (br $l))) (i32.const 0)"
                .into(),
            String::new(),
            None,
            "limits: { fuel: 4611686018427387903, timeout_ms: 10000 }",
        ),
        (
            // A 1 GiB body from a 128 KiB memory.
            "buffer",
            "proxy_on_request_body",
            "(drop (call $set_buffer (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0x40000000))) (i32.const 0)".into(),
            String::new(),
            None,
            "",
        ),
        (
            // Local responses with status 42, and with a 2 GiB body.
            "status",
            "proxy_on_request_headers",
            "(drop (call $local_response (i32.const 42) (i32.const 0x420) (i32.const 10) (i32.const 0) (i32.const 0) \
             (i32.const 0) (i32.const 0) (i32.const -1))) \
             (drop (call $local_response (i32.const 403) (i32.const 0x420) (i32.const 10) (i32.const 0) (i32.const 0x7fffffff) \
             (i32.const 0) (i32.const 0) (i32.const -1))) (i32.const 0)"
                .into(),
            String::new(),
            None,
            "",
        ),
        (
            // 1000 HTTP calls from one request: capped at max_callouts.
            "callouts",
            "proxy_on_request_headers",
            format!(
                "(local $i i32) (block $done (loop $l \
                 (drop (call $http_call (i32.const 0x400) (i32.const 7) (i32.const 0x1000) (i32.const {n}) \
                 (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 1000) (i32.const 0x200))) \
                 (local.set $i (i32.add (local.get $i) (i32.const 1))) \
                 (br_if $done (i32.ge_u (local.get $i) (i32.const 1000))) (br $l))) (i32.const 0)"
            ),
            callout_data.clone(),
            None,
            "allowed_upstreams: [backend], limits: { max_callouts: 3 }",
        ),
        (
            // An allocator that answers 0, then one that answers a pointer outside memory,
            // for a call whose result the host must write through it.
            "malloc0",
            "proxy_on_request_headers",
            "(drop (call $get_pairs (i32.const 0) (i32.const 0x100) (i32.const 0x104))) (i32.const 0)".into(),
            String::new(),
            Some("(i32.const 0)"),
            "",
        ),
        (
            "mallocoob",
            "proxy_on_request_headers",
            "(drop (call $get_pairs (i32.const 0) (i32.const 0x100) (i32.const 0x104))) (i32.const 0)".into(),
            String::new(),
            Some("(i32.const -16)"),
            "",
        ),
        (
            // An allocator that hands out the same buffer every time: the host's results
            // overlap, which is the plugin's problem, not the host's.
            "overlap",
            "proxy_on_request_headers",
            "(drop (call $get_pairs (i32.const 0) (i32.const 0x100) (i32.const 0x104))) \
             (drop (call $get_pairs (i32.const 0) (i32.const 0x108) (i32.const 0x10c))) (i32.const 0)"
                .into(),
            String::new(),
            Some("(i32.const 0x8000)"),
            "",
        ),
        (
            // Pauses and never resumes.
            "pause",
            "proxy_on_request_headers",
            "(i32.const 1)".into(),
            String::new(),
            None,
            "limits: { pause_timeout_ms: 300 }",
        ),
        (
            // A 1 ms tick that burns its fuel each time.
            "tick",
            "none",
            String::new(),
            "  (func (export \"proxy_on_configure\") (param i32 i32) (result i32) (drop (call $set_tick (i32.const 1))) (i32.const 1))\n\
             \x20 (func (export \"proxy_on_tick\") (param i32) (loop $l (br $l)))\n"
                .into(),
            None,
            "limits: { fuel: 1000000 }",
        ),
    ];
    let mut routes = String::new();
    let mut plugins = String::new();
    for (name, export, code, extra, malloc, options) in &cases {
        std::fs::write(
            dir.join(format!("{name}.wat")),
            module(export, code, *malloc, extra),
        )
        .unwrap();
        writeln!(
            routes,
            "  - {{ name: {name}, match: {{ path_prefix: /{name}/ }}, upstream: backend, plugins: [{name}] }}"
        )
        .unwrap();
        let sep = if options.is_empty() { "" } else { ", " };
        writeln!(
            plugins,
            "  {name}: {{ path: {name}.wat, vms: 1{sep}{options} }}"
        )
        .unwrap();
    }
    let text = config_text(
        up,
        &routes,
        "  - { name: healthy, match: { path_prefix: / }, upstream: backend }\n",
        &plugins,
    );
    let proxy = Sluice::start_in(&text, dir.clone()).await;
    let background = Background::start(vec![proxy.url("/healthy/a"), proxy.url("/healthy/b")]);
    let c = client();
    // (case, the status it must get, the error it must count: kind and phase)
    type Outcome = (&'static str, u16, Option<(&'static str, &'static str)>);
    let expected: &[Outcome] = &[
        ("headers", 200, None),
        ("buffer", 200, None),
        ("status", 200, None),
        ("callouts", 200, None),
        ("malloc0", 503, Some(("abi", "request_headers"))),
        ("mallocoob", 503, Some(("abi", "request_headers"))),
        ("overlap", 200, None),
        ("pause", 504, None),
        ("tick", 503, Some(("fuel", "tick"))),
    ];
    assert_eq!(expected.len(), cases.len());
    for ((name, export, ..), (want_name, want, error)) in cases.iter().zip(expected) {
        assert_eq!(name, want_name);
        let phase = PHASES
            .iter()
            .find(|(_, e)| e == export)
            .map_or("request_headers", |(p, _)| *p);
        if *name == "headers" {
            // The map is capped (1024 pairs in all): most of the 100 000 are refused.
            let head = raw_get(proxy.addr, "/headers/x").await;
            let floods = head.iter().filter(|l| l.starts_with("x-flood")).count();
            assert!(head[0].contains(" 200 "), "{head:?}");
            assert!((1..=1024).contains(&floods), "{floods} x-flood headers");
            continue;
        }
        if *name == "tick" {
            // Let it burn (and be replaced, with backoff) for a while first.
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let (status, took) = hit(&c, &proxy, &format!("/{name}/x"), phase).await;
        assert_eq!(status, Some(*want), "{name}");
        assert!(
            took < Duration::from_secs(10),
            "{name}: answered after {took:?}"
        );
        if *name == "pause" {
            assert!(took >= Duration::from_millis(300), "{name}: {took:?}");
        }
        if let Some((kind, phase)) = error {
            let count = proxy.metric(&errors_metric(kind, phase, name)).await;
            // The tick keeps failing as each replacement VM starts ticking again.
            assert!(
                count.unwrap_or(0.0) >= 1.0,
                "{name}: {kind} in {phase}: {count:?}"
            );
        }
    }
    let (ok, failures) = background.finish().await;
    assert!(
        failures.is_empty(),
        "healthy routes failed: {:?}",
        &failures[..failures.len().min(5)]
    );
    assert!(ok > 50, "the background load hardly ran: {ok}");
    // Refusals are not failures: those plugins' VMs are still the first ones.
    for name in ["headers", "buffer", "status", "callouts", "overlap"] {
        assert_eq!(
            proxy.metric(&format!("sluice_plugin_errors_total{{kind=\"abi\",phase=\"request_headers\",plugin=\"{name}\",version=\"stable\"}}")).await,
            None,
            "{name}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modules_that_cannot_be_plugins_are_refused_at_load() {
    let up = upstream("backend").await;
    let dir = temp_dir("hostile-load");
    let good = module("none", "", None, "");
    std::fs::write(dir.join("p.wat"), &good).unwrap();
    let text = format!(
        "listeners: [{{ name: public, address: '{{LISTEN}}' }}]\n\
         admin: {{ address: '{{ADMIN}}' }}\n\
         reload: {{ watch: false }}\n\
         upstreams:\n  backend: {{ endpoints: ['{up}'] }}\n\
         routes:\n  - {{ name: all, upstream: backend, plugins: [p] }}\n\
         plugins:\n  p: {{ path: p.wat }}\n"
    );
    let proxy = Sluice::start_in(&text, dir.clone()).await;
    let background = Background::start(vec![proxy.url("/a"), proxy.url("/b")]);
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "exports nothing",
            "(module (memory (export \"memory\") 1))".into(),
            "not a Proxy-Wasm plugin",
        ),
        (
            "an ABI this host does not speak",
            good.replace("proxy_abi_version_0_2_1", "proxy_abi_version_0_1_0"),
            "not a Proxy-Wasm plugin",
        ),
        (
            "a start function that traps",
            good.replace(
                "(func (export \"proxy_on_context_create\")",
                "(func $boom unreachable) (start $boom) (func (export \"proxy_on_context_create\")",
            ),
            "unreachable",
        ),
        (
            "an import no host provides",
            good.replace(
                "(import \"wasi_snapshot_preview1\" \"proc_exit\"",
                "(import \"env\" \"proxy_make_coffee\" (func (param i32))) (import \"wasi_snapshot_preview1\" \"proc_exit\"",
            ),
            "proxy_make_coffee",
        ),
        (
            "not wasm at all",
            "\u{7f}ELF not a module".into(),
            "not a valid wasm module",
        ),
    ];
    for (what, wat, needle) in &cases {
        assert_ne!(wat, &good, "{what}: the replacement did not apply");
        std::fs::write(dir.join("p.wat"), wat).unwrap();
        let (status, body) = post_reload(&proxy).await;
        assert_eq!(status, 422, "{what}");
        let error = body["error"].as_str().unwrap();
        assert!(error.contains("plugin \"p\""), "{what}: {error}");
        assert!(error.contains(needle), "{what}: {needle:?} not in {error}");
        // `sluice check` refuses it too, naming the plugin.
        let out = std::process::Command::new(sluice_bin())
            .args(["check", "--config"])
            .arg(dir.join("sluice.yaml"))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{what}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("plugin \"p\""));
    }
    let (ok, failures) = background.finish().await;
    assert!(
        failures.is_empty(),
        "{:?}",
        &failures[..failures.len().min(5)]
    );
    assert!(ok > 10);
    assert_eq!(
        get_json(proxy.admin_url("/config")).await["version"],
        1,
        "a refused module must leave the first config serving"
    );
}
