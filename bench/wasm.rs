//! Micro-benchmarks of the plugin host (criterion): one guest call round trip, one VM
//! start, and the whole plugin work of one request through a one-plugin chain, without
//! sockets. `cargo bench -p sluice-proxy --bench wasm` (or `make bench-micro`).
//!
//! Two plugins: a minimal hand-written module (the host's own overhead), and the test plugin
//! built with the public Rust SDK (`tests/plugins/sdk-rust`, mode `copy-header`: read one
//! header, add one), when `make wasm` has built it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Weak};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use pingora::http::{RequestHeader, ResponseHeader};
use tokio::sync::mpsc::unbounded_channel;

use sluice::chain::Chain;
use sluice::wasm::callout::CalloutSink;
use sluice::wasm::plugin::Plugin;
use sluice::wasm::sanitize::Sanitizer;
use sluice::wasm::settings::{FailurePolicy, Limits, PluginSettings};
use sluice::wasm::stream::{RequestInfo, Stream};
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

fn sdk_plugin() -> Option<Vec<u8>> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let path = target.join("wasm32-wasip1/release/sluice_test_plugin_sdk_rust.wasm");
    match std::fs::read(&path) {
        Ok(b) => Some(b),
        Err(_) => {
            eprintln!(
                "{} not found: the SDK plugin cases are skipped (build it with `make wasm`)",
                path.display()
            );
            None
        }
    }
}

fn settings(name: &str, config: &'static [u8]) -> PluginSettings {
    PluginSettings {
        name: name.to_string(),
        root_id: String::new(),
        vm_id: name.to_string(),
        config: Bytes::from_static(config),
        vm_config: Bytes::new(),
        sanitizer: Sanitizer::new(&[], &[]),
        callout_targets: HashMap::new(),
        limits: Limits::default(),
        on_error: FailurePolicy::FailClosed,
        vms: 1,
        sluice_properties: true,
        shared_data: Default::default(),
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
    let shared = sluice::wasm::shared::namespace("bench-instantiate", &Default::default());
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

/// What a request through a one-plugin route costs the host besides the network: the chain
/// (context creation), request headers in and their changes out, response headers, on_log,
/// on_done and on_delete.
fn request(c: &mut Criterion, name: &str, plugin: &Arc<Plugin>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let plugins = vec![plugin.clone()];
    let resp = ResponseHeader::build(200, None).unwrap();
    c.bench_function(
        &format!("one request's plugin work, 1 plugin: {name}"),
        |b| {
            b.iter_batched(
                || (request_header(), resp.clone()),
                |(mut req, mut resp)| {
                    let mut chain = Chain::new(&plugins, RequestInfo::default()).expect("chain");
                    chain.load_request(&req, "http", []);
                    rt.block_on(chain.request_headers(true)).expect("headers");
                    chain.apply_request(&mut req).unwrap();
                    chain.load_response(&resp);
                    rt.block_on(chain.response_headers(false))
                        .expect("response");
                    chain.apply_response(&mut resp).unwrap();
                    chain.log(200);
                    drop(chain);
                    (req, resp)
                },
                BatchSize::SmallInput,
            )
        },
    );
}

fn benches(c: &mut Criterion) {
    let minimal = load("bench-minimal", MINIMAL.as_bytes(), b"");
    guest_call(c, "minimal module", &minimal);
    instantiation(c, "minimal module", MINIMAL.as_bytes());
    vm_start(c, "minimal module", &minimal);
    request(c, "minimal module", &minimal);
    if let Some(bytes) = sdk_plugin() {
        let sdk = load("bench-sdk", &bytes, br#"{"mode":"copy-header"}"#);
        guest_call(c, "Rust SDK copy-header", &sdk);
        instantiation(c, "Rust SDK plugin", &bytes);
        vm_start(c, "Rust SDK plugin", &sdk);
        request(c, "Rust SDK copy-header", &sdk);
    }
}

criterion_group!(wasm, benches);
criterion_main!(wasm);
