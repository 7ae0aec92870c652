//! Micro-benchmarks of the plugin host (criterion), without sockets:
//! - `phase:` one guest call of each phase (a module whose callbacks do nothing: the host's
//!   cost of entering the guest for that phase, fuel and deadline set-up included);
//! - `host call:` one call of each host-call family, made from `on_request_headers` (or
//!   `on_request_body` for the body; subtract the `phase:` figure for the host call alone);
//! - `request:` the whole plugin work of one request through a chain (context creation,
//!   request headers in and their changes out, response headers, a response body chunk,
//!   on_log, on_done and on_delete) for the plugin rows of `make bench`;
//! - `request: …, tapped for shadow` the same request with the plugin's view recorded for a
//!   shadow run (the cost a shadow rollout adds to the client's request), and `shadow run:`
//!   the candidate's replay of that request (done after the request ended, off its path);
//! - one guest call, one instantiation and one VM start.
//!
//! `cargo bench -p sluice-proxy --bench wasm` (or `make bench-micro`). Plugins: hand-written
//! modules (the host's own overhead), the test plugin built with the public Rust SDK
//! (`tests/plugins/sdk-rust`, mode `copy-header`: read one header, add one) and the shipped
//! rate-limit and mask plugins, when `make wasm` has built them.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Weak};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use pingora::http::{RequestHeader, ResponseHeader};
use tokio::sync::mpsc::unbounded_channel;

use sluice::chain::{Chain, Watch};
use sluice::heads::{Req, Resp};
use sluice::tap::{Observer, Served, Tapped};
use sluice::wasm::callout::CalloutSink;
use sluice::wasm::plugin::Plugin;
use sluice::wasm::sanitize::Sanitizer;
use sluice::wasm::settings::{FailurePolicy, Limits, PluginSettings, Version};
use sluice::wasm::stream::{BodyKind, RequestInfo, Stream};
use sluice::wasm::vm::{StreamCall, VmState};

/// The allocator of the `sluice` binary.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The least a plugin can be: memory, the ABI marker, an allocator, two callbacks.
const MINIMAL: &str = r#"(module
  (memory (export "memory") 1)
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "malloc") (param i32) (result i32) i32.const 1024)
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) i32.const 0))"#;

/// A built plugin from the target directory (`wasm32-wasip1/<profile>/<file>`).
fn built(profile: &str, file: &str) -> Option<Vec<u8>> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let path = target.join("wasm32-wasip1").join(profile).join(file);
    match std::fs::read(&path) {
        Ok(b) => Some(b),
        Err(_) => {
            eprintln!(
                "{} not found: its cases are skipped (build it with `make wasm`)",
                path.display()
            );
            None
        }
    }
}

fn sdk_plugin() -> Option<Vec<u8>> {
    built("release", "sluice_test_plugin_sdk_rust.wasm")
}

/// A module whose callbacks do nothing: what entering the guest costs in each phase.
const EMPTY_CALLBACKS: &str = r#"(module
  (memory (export "memory") 1)
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "malloc") (param i32) (result i32) i32.const 8192)
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) i32.const 0)
  (func (export "proxy_on_request_body") (param i32 i32 i32) (result i32) i32.const 0)
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32) i32.const 0)
  (func (export "proxy_on_response_body") (param i32 i32 i32) (result i32) i32.const 0)
  (func (export "proxy_on_log") (param i32))
  (func (export "proxy_on_done") (param i32) (result i32) i32.const 1))"#;

/// A module whose `on_request_headers` makes one host call: `imports` declares it, `call` is
/// the call (its i32 status dropped). Data: "x-in" at 16, "request\0path" at 32, "bench-key"
/// at 64, "value" at 80, "bench_metric" at 96, "a log line" at 128; results at 512/516/520;
/// the metric id (defined by `on_vm_start`) at 600.
fn host_call_module(imports: &str, call: &str) -> String {
    format!(
        r#"(module
  {imports}
  (import "env" "proxy_define_metric" (func $define (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "x-in")
  (data (i32.const 32) "request\00path")
  (data (i32.const 64) "bench-key")
  (data (i32.const 80) "value")
  (data (i32.const 96) "bench_metric")
  (data (i32.const 128) "a log line")
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "malloc") (param i32) (result i32) i32.const 8192)
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32)
    (drop (call $define (i32.const 0) (i32.const 96) (i32.const 12) (i32.const 600)))
    i32.const 1)
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (drop {call})
    i32.const 0)
  (func (export "proxy_on_request_body") (param i32 i32 i32) (result i32)
    (drop {call})
    i32.const 0))"#
    )
}

/// The host-call families, one call each: (label, imports, call).
const HOST_CALLS: &[(&str, &str, &str)] = &[
    (
        "get_header_map_value",
        r#"(import "env" "proxy_get_header_map_value" (func $f (param i32 i32 i32 i32 i32) (result i32)))"#,
        "(call $f (i32.const 0) (i32.const 16) (i32.const 4) (i32.const 512) (i32.const 516))",
    ),
    (
        "get_header_map_pairs",
        r#"(import "env" "proxy_get_header_map_pairs" (func $f (param i32 i32 i32) (result i32)))"#,
        "(call $f (i32.const 0) (i32.const 512) (i32.const 516))",
    ),
    (
        "replace_header_map_value",
        r#"(import "env" "proxy_replace_header_map_value" (func $f (param i32 i32 i32 i32 i32) (result i32)))"#,
        "(call $f (i32.const 0) (i32.const 16) (i32.const 4) (i32.const 80) (i32.const 5))",
    ),
    (
        "get_property (request.path)",
        r#"(import "env" "proxy_get_property" (func $f (param i32 i32 i32 i32) (result i32)))"#,
        "(call $f (i32.const 32) (i32.const 12) (i32.const 512) (i32.const 516))",
    ),
    (
        "get_shared_data",
        r#"(import "env" "proxy_get_shared_data" (func $f (param i32 i32 i32 i32 i32) (result i32)))"#,
        "(call $f (i32.const 64) (i32.const 9) (i32.const 512) (i32.const 516) (i32.const 520))",
    ),
    (
        "set_shared_data",
        r#"(import "env" "proxy_set_shared_data" (func $f (param i32 i32 i32 i32 i32) (result i32)))"#,
        "(call $f (i32.const 64) (i32.const 9) (i32.const 80) (i32.const 5) (i32.const 0))",
    ),
    (
        "increment_metric",
        r#"(import "env" "proxy_increment_metric" (func $f (param i32 i64) (result i32)))"#,
        "(call $f (i32.load (i32.const 600)) (i64.const 1))",
    ),
    (
        "log (filtered out)",
        r#"(import "env" "proxy_log" (func $f (param i32 i32 i32) (result i32)))"#,
        "(call $f (i32.const 0) (i32.const 128) (i32.const 10))",
    ),
    (
        "get_current_time_nanoseconds",
        r#"(import "env" "proxy_get_current_time_nanoseconds" (func $f (param i32) (result i32)))"#,
        "(call $f (i32.const 512))",
    ),
    (
        "get_buffer_bytes (16 KiB request body, from on_request_body)",
        r#"(import "env" "proxy_get_buffer_bytes" (func $f (param i32 i32 i32 i32 i32) (result i32)))"#,
        "(call $f (i32.const 0) (i32.const 0) (i32.const 16384) (i32.const 512) (i32.const 516))",
    ),
];

fn settings(name: &str, config: &'static [u8]) -> PluginSettings {
    PluginSettings {
        name: name.to_string(),
        version: Default::default(),
        root_id: String::new(),
        vm_id: name.to_string(),
        config: Bytes::from_static(config),
        vm_config: Bytes::new(),
        sanitizer: Sanitizer::new(&[], &[]),
        callout_targets: HashMap::new(),
        limits: Limits::default(),
        on_error: FailurePolicy::FailClosed,
        vms: 1,
        vm_start: Default::default(),
        sluice_properties: true,
        shared_store: None,
    }
}

fn load(name: &str, bytes: &[u8], config: &'static [u8]) -> Arc<Plugin> {
    let host = sluice::wasm::host().expect("wasm host");
    Plugin::load(&host.engine, &host.linker, settings(name, config), bytes)
        .unwrap_or_else(|e| panic!("cannot load {name}: {e}"))
}

fn request_header() -> RequestHeader {
    let mut req = RequestHeader::build("GET", b"/bench?x=1", None).unwrap();
    req.insert_header("host", "bench.example").unwrap();
    req.insert_header("user-agent", "criterion").unwrap();
    req.insert_header("x-in", "value").unwrap();
    req
}

fn guest_call(c: &mut Criterion, name: &str, plugin: &Arc<Plugin>) {
    let vm = plugin.pick().expect("healthy VM");
    let id = vm.create_context().expect("context");
    let (tx, _rx) = unbounded_channel();
    let sink = CalloutSink::Request(tx);
    let mut stream = Some(Box::new(Stream {
        request_headers: sluice::chain::request_list(&request_header(), "http"),
        request_headers_writable: true,
        ..Stream::default()
    }));
    c.bench_function(&format!("guest call: on_request_headers, {name}"), |b| {
        b.iter(|| {
            let n = stream.as_ref().map_or(0, |s| s.request_headers.len()) as u32;
            let r = vm.call_stream(
                id,
                StreamCall::RequestHeaders(n, true),
                &mut stream,
                0,
                &sink,
                None,
            );
            // The copy-header plugin adds a header on each call: keep the map as it was.
            if let Some(s) = stream.as_mut() {
                s.request_headers.truncate(7);
            }
            r.expect("guest call")
        })
    });
    vm.finish_context(id);
}

/// A VM start: instantiation, the module's start-up code, the root context, `on_vm_start` and
/// `on_configure`.
fn vm_start(c: &mut Criterion, name: &str, plugin: &Arc<Plugin>) {
    c.bench_function(&format!("VM start: {name}"), |b| {
        b.iter(|| plugin.start_vm(0).expect("VM start"))
    });
}

/// Instantiation alone, as a VM start does it (the pooling allocator and copy-on-write memory
/// of the process's engine, every host function linked), before any guest code runs.
fn instantiation(c: &mut Criterion, name: &str, bytes: &[u8]) {
    let host = sluice::wasm::host().expect("wasm host");
    let (module, _) = host.engine.compile(bytes).expect("compiles");
    let pre = host.linker.instantiate_pre(&module).expect("links");
    let settings = Arc::new(settings("bench-instantiate", b""));
    let shared = sluice::wasm::shared::namespace("bench-instantiate", None);
    c.bench_function(&format!("instantiation: {name}"), |b| {
        b.iter(|| {
            let mut store = VmState::store(
                host.engine.engine(),
                settings.clone(),
                shared.clone(),
                Weak::new(),
            );
            store.set_fuel(u64::MAX / 2).unwrap();
            store.set_epoch_deadline(1_000_000);
            pre.instantiate(&mut store).expect("instantiates");
            store
        })
    });
}

/// What a request through a route with `plugins` costs the host besides the network: the
/// chain (context creation), request headers in and their changes out, response headers, one
/// response body chunk of `body`, on_log, on_done and on_delete.
fn request(c: &mut Criterion, name: &str, plugins: &[Arc<Plugin>], body: &Bytes) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut resp = ResponseHeader::build(200, None).unwrap();
    resp.insert_header("content-type", "text/plain").unwrap();
    resp.insert_header("content-length", body.len()).unwrap();
    c.bench_function(&format!("request: {name}"), |b| {
        b.iter_batched(
            || (request_header(), resp.clone(), Some(body.clone())),
            |(mut req, mut resp, mut chunk)| {
                let chain = Chain::new(plugins, RequestInfo::default()).expect("chain");
                drive(&rt, chain, &mut req, &mut resp, &mut chunk);
                (req, resp, chunk)
            },
            BatchSize::SmallInput,
        )
    });
}

/// Keeps the last record it is given (what a shadow run replays).
#[derive(Default)]
struct Keep(std::sync::Mutex<Option<Tapped>>);

impl Observer for Keep {
    fn done(&self, _: Version, _: Served, tapped: Option<Tapped>) {
        *self.0.lock().unwrap() = tapped;
    }
}

/// One request through `plugin` with its view tapped.
fn tapped_request(
    rt: &tokio::runtime::Runtime,
    plugin: &Arc<Plugin>,
    keep: &Arc<Keep>,
    resp: &ResponseHeader,
    body: &Bytes,
) {
    let (mut req, mut resp, mut chunk) = (request_header(), resp.clone(), Some(body.clone()));
    let watch = Watch {
        at: 0,
        observer: keep.clone(),
        version: Version::Stable,
        tap: true,
    };
    let chain = Chain::watched(
        std::slice::from_ref(plugin),
        vec![watch],
        RequestInfo::default(),
    )
    .expect("chain");
    drive(rt, chain, &mut req, &mut resp, &mut chunk);
}

/// One request's plugin work through `chain`: request headers in and their changes out,
/// response headers, one response body chunk, on_log, then on_done and on_delete.
fn drive(
    rt: &tokio::runtime::Runtime,
    mut chain: Chain,
    req: &mut RequestHeader,
    resp: &mut ResponseHeader,
    chunk: &mut Option<Bytes>,
) {
    chain.load_request(req, "http", []);
    rt.block_on(chain.request_headers(true)).expect("headers");
    chain.apply_request(&mut Req(req)).unwrap();
    chain.load_response(resp);
    rt.block_on(chain.response_headers(false))
        .expect("response");
    chain.apply_response(&mut Resp(resp)).unwrap();
    chain.response_body(chunk, true).expect("body");
    chain.log(200);
}

/// Next to `request: NAME`: the same request tapped for a shadow run, and the shadow run of
/// `candidate` on it.
fn shadow(
    c: &mut Criterion,
    name: &str,
    plugin: &Arc<Plugin>,
    candidate: &Arc<Plugin>,
    body: &Bytes,
) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let mut resp = ResponseHeader::build(200, None).unwrap();
    resp.insert_header("content-type", "text/plain").unwrap();
    resp.insert_header("content-length", body.len()).unwrap();
    let keep = Arc::new(Keep::default());
    // One request to replay (the benchmark below may be filtered out).
    tapped_request(&rt, plugin, &keep, &resp, body);
    c.bench_function(&format!("request: {name}, tapped for shadow"), |b| {
        b.iter(|| tapped_request(&rt, plugin, &keep, &resp, body))
    });
    let seen = keep.0.lock().unwrap().clone().expect("a tapped request");
    c.bench_function(&format!("shadow run: {name}"), |b| {
        b.iter(|| rt.block_on(sluice::rollout::shadow::run(candidate, &seen)))
    });
}

/// One guest call of each phase, on a module whose callbacks do nothing.
fn phases(c: &mut Criterion) {
    let plugin = load("bench-phases", EMPTY_CALLBACKS.as_bytes(), b"");
    let vm = plugin.pick().expect("healthy VM");
    let mut stream = Some(Box::new(Stream {
        request_headers: sluice::chain::request_list(&request_header(), "http"),
        request_headers_writable: true,
        ..Stream::default()
    }));
    let id = vm.create_context().expect("context");
    let (tx, _rx) = unbounded_channel();
    let sink = CalloutSink::Request(tx);
    let calls = [
        ("request_headers", StreamCall::RequestHeaders(7, true)),
        ("request_body", StreamCall::RequestBody(0, true)),
        ("response_headers", StreamCall::ResponseHeaders(1, false)),
        ("response_body", StreamCall::ResponseBody(0, true)),
        ("log", StreamCall::Log),
    ];
    for (label, call) in calls {
        c.bench_function(&format!("phase: {label}"), |b| {
            b.iter(|| {
                vm.call_stream(id, call, &mut stream, 0, &sink, None)
                    .expect("guest call")
            })
        });
    }
    vm.finish_context(id);
    c.bench_function("phase: context_create + done", |b| {
        b.iter(|| {
            let id = vm.create_context().expect("context");
            vm.finish_context(id);
        })
    });
}

/// One call of each host-call family from `on_request_headers`.
fn host_calls(c: &mut Criterion) {
    for (label, imports, call) in HOST_CALLS {
        let wat = host_call_module(imports, call);
        let plugin = load(&format!("bench-{label}"), wat.as_bytes(), b"");
        let vm = plugin.pick().expect("healthy VM");
        let id = vm.create_context().expect("context");
        let body = label.contains("body");
        let mut stream = Some(Box::new(Stream {
            request_headers: sluice::chain::request_list(&request_header(), "http"),
            request_headers_writable: true,
            body: if body { vec![b'x'; 16384] } else { Vec::new() },
            body_kind: body.then_some(BodyKind::Request),
            body_end: true,
            ..Stream::default()
        }));
        let call = if body {
            StreamCall::RequestBody(16384, true)
        } else {
            StreamCall::RequestHeaders(7, true)
        };
        let (tx, _rx) = unbounded_channel();
        let sink = CalloutSink::Request(tx);
        c.bench_function(&format!("host call: {label}"), |b| {
            b.iter(|| {
                vm.call_stream(id, call, &mut stream, 0, &sink, None)
                    .expect("guest call")
            })
        });
        vm.finish_context(id);
    }
}

fn benches(c: &mut Criterion) {
    phases(c);
    host_calls(c);
    let small = Bytes::from_static(b"hello from upstream\n");
    let minimal = load("bench-minimal", MINIMAL.as_bytes(), b"");
    guest_call(c, "minimal module", &minimal);
    instantiation(c, "minimal module", MINIMAL.as_bytes());
    vm_start(c, "minimal module", &minimal);
    request(c, "1 plugin, minimal module", &[minimal], &small);
    if let Some(bytes) = sdk_plugin() {
        let sdk = load("bench-sdk", &bytes, br#"{"mode":"copy-header"}"#);
        guest_call(c, "Rust SDK copy-header", &sdk);
        instantiation(c, "Rust SDK plugin", &bytes);
        vm_start(c, "Rust SDK plugin", &sdk);
        request(
            c,
            "1 plugin, Rust SDK copy-header",
            std::slice::from_ref(&sdk),
            &small,
        );
        let three: Vec<_> = (1..=3)
            .map(|i| {
                load(
                    &format!("bench-sdk{i}"),
                    &bytes,
                    br#"{"mode":"copy-header"}"#,
                )
            })
            .collect();
        request(c, "3 plugins, Rust SDK copy-header", &three, &small);
        let candidate = load("bench-sdk-candidate", &bytes, br#"{"mode":"copy-header"}"#);
        shadow(
            c,
            "1 plugin, Rust SDK copy-header",
            &sdk,
            &candidate,
            &small,
        );
    }
    if let Some(bytes) = built("plugin", "sluice_plugin_rate_limit.wasm") {
        let limit = load(
            "bench-limit",
            &bytes,
            br#"{"key":["route"],"requests":1000000000000,"period_seconds":1}"#,
        );
        request(c, "1 plugin, rate-limit", &[limit], &small);
    }
    if let Some(bytes) = built("plugin", "sluice_plugin_mask.wasm") {
        let mask = load(
            "bench-mask",
            &bytes,
            br#"{"presets":["email","card","iban","bearer"]}"#,
        );
        let line = "customer jane.doe@example.com paid with 4111 1111 1111 1111 on order 12345; ";
        let block: String = line.repeat(8).chars().take(512).collect();
        let body = Bytes::from(block.repeat(32));
        request(
            c,
            "1 plugin, mask on 16 KiB",
            std::slice::from_ref(&mask),
            &body,
        );
        let candidate = load(
            "bench-mask-candidate",
            &bytes,
            br#"{"presets":["email","card","iban","bearer"]}"#,
        );
        shadow(c, "1 plugin, mask on 16 KiB", &mask, &candidate, &body);
    }
}

criterion_group!(wasm, benches);
criterion_main!(wasm);
