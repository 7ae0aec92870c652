//! Host-call tests with hand-written WAT guests.
//!
//! Each test builds a small guest with [`Wat`]: every *case* is one WAT expression, a branch
//! of `proxy_on_request_headers`, so `StreamCall::RequestHeaders(case, _)` runs it and returns
//! its value (usually the status of one host call) as the callback's action. The guest's
//! `proxy_on_response_headers(ctx, addr, _)` returns the byte at `addr`: that is how a test
//! reads what the host wrote into guest memory. Before each case the guest sets its return
//! slots ([`RP`], [`RL`], [`R3`], [`R8`]) to all ones, so a test also sees what a call did not
//! write.
//!
//! Plugin names are unique per test: metrics, shared data and queues are process-wide.

// One module per subject (the harness and shared helpers are here).
mod all_envoy_properties;
mod buffers;
mod envoy_properties;
mod headers;
mod http_calls;
mod log_time_contexts;
mod metrics;
mod misbehaving_guests;
mod properties;
mod sanitizing;
mod shared_data;
mod stream_control;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use sluice_abi::map;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};
use wasmtime::Linker;

use crate::wasm::callout::{CalloutDone, CalloutResponse, CalloutSink};
use crate::wasm::engine::{EngineOptions, WasmEngine};
use crate::wasm::plugin::{Plugin, PluginError};
use crate::wasm::sanitize::Sanitizer;
use crate::wasm::settings::{FailurePolicy, Limits, PluginSettings};
use crate::wasm::stream::{BodyKind, RequestInfo, Stream};
use crate::wasm::target::{CalloutTarget, TargetProtocol};
use crate::wasm::vm::{ErrorKind, GuestError, StreamCall, Vm, VmError, VmState};

// Statuses as the guest receives them, written out (not taken from `Status`).
const OK: u32 = 0;
const NOT_FOUND: u32 = 1;
const BAD_ARGUMENT: u32 = 2;
const INVALID_MEMORY_ACCESS: u32 = 6;
const EMPTY: u32 = 7;
const CAS_MISMATCH: u32 = 8;
const UNIMPLEMENTED: u32 = 12;

/// Return slot for a pointer (reset to all ones before each case).
const RP: u32 = 0x100;
/// Return slot for a length.
const RL: u32 = 0x104;
/// A third u32 return slot (cas, id, code, flags, size).
const R3: u32 = 0x108;
/// A u64 return slot.
const R8: u32 = 0x110;
/// Slots kept across cases (metric and queue ids).
const KEEP: u32 = 0x180;
/// Where [`Wat::bytes`] places data.
const DATA: u32 = 0x400;
/// One wasm page; the bump allocator starts here.
const PAGE: u32 = 0x1_0000;
/// A pointer past any memory here; `OOB + 0x20` overflows u32.
const OOB: u32 = 0xFFFF_FFF0;
/// A length no guest memory here holds.
const HUGE: u32 = 0x8000_0000;

const IMPORTS: &str = r#"
  (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_log_level" (func $get_log_level (param i32) (result i32)))
  (import "env" "proxy_get_current_time_nanoseconds" (func $now (param i32) (result i32)))
  (import "env" "proxy_set_tick_period_milliseconds" (func $set_tick (param i32) (result i32)))
  (import "env" "proxy_done" (func $done (result i32)))
  (import "env" "proxy_set_effective_context" (func $set_ctx (param i32) (result i32)))
  (import "env" "proxy_get_buffer_bytes" (func $get_buffer (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_buffer_bytes" (func $set_buffer (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_buffer_status" (func $buffer_status (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_pairs" (func $get_pairs (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_size" (func $get_size (param i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_value" (func $get_value (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_header_map_pairs" (func $set_pairs (param i32 i32 i32) (result i32)))
  (import "env" "proxy_add_header_map_value" (func $add_value (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_replace_header_map_value" (func $replace_value (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_remove_header_map_value" (func $remove_value (param i32 i32 i32) (result i32)))
  (import "env" "proxy_continue_stream" (func $continue_stream (param i32) (result i32)))
  (import "env" "proxy_close_stream" (func $close_stream (param i32) (result i32)))
  (import "env" "proxy_get_status" (func $get_status (param i32 i32 i32) (result i32)))
  (import "env" "proxy_send_local_response" (func $local_response (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_http_call" (func $http_call (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_grpc_call" (func $grpc_call (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_grpc_stream" (func $grpc_stream (param i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_grpc_send" (func $grpc_send (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_grpc_cancel" (func $grpc_cancel (param i32) (result i32)))
  (import "env" "proxy_grpc_close" (func $grpc_close (param i32) (result i32)))
  (import "env" "proxy_call_foreign_function" (func $foreign (param i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_shared_data" (func $get_shared (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_shared_data" (func $set_shared (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_register_shared_queue" (func $register_queue (param i32 i32 i32) (result i32)))
  (import "env" "proxy_resolve_shared_queue" (func $resolve_queue (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_enqueue_shared_queue" (func $enqueue (param i32 i32 i32) (result i32)))
  (import "env" "proxy_dequeue_shared_queue" (func $dequeue (param i32 i32 i32) (result i32)))
  (import "env" "proxy_define_metric" (func $define_metric (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_increment_metric" (func $increment_metric (param i32 i64) (result i32)))
  (import "env" "proxy_record_metric" (func $record_metric (param i32 i64) (result i32)))
  (import "env" "proxy_get_metric" (func $get_metric (param i32 i32) (result i32)))
  (import "env" "proxy_get_property" (func $get_property (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_property" (func $set_property (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
"#;

/// A bump allocator over `$heap` that grows memory as needed and returns 0 when it cannot.
const BUMP_MALLOC: &str = r#"
  (global $heap (mut i32) (i32.const 0x10000))
  (func (export "malloc") (param $n i32) (result i32)
    (local $p i32) (local $end i32)
    (local.set $p (global.get $heap))
    (local.set $end (i32.add (local.get $p) (local.get $n)))
    (if (i32.gt_u (local.get $end) (i32.shl (memory.size) (i32.const 16)))
      (then
        (if (i32.eq
              (memory.grow (i32.add
                (i32.shr_u (i32.sub (local.get $end) (i32.shl (memory.size) (i32.const 16)))
                           (i32.const 16))
                (i32.const 1)))
              (i32.const -1))
          (then (return (i32.const 0))))))
    (global.set $heap (local.get $end))
    (local.get $p))
"#;

/// A guest under construction.
struct Wat {
    data: Vec<(u32, Vec<u8>)>,
    next: u32,
    cases: Vec<String>,
    extra: String,
    malloc: String,
    pages: u32,
    abi_marker: bool,
}

impl Wat {
    fn new() -> Wat {
        Wat {
            data: Vec::new(),
            next: DATA,
            cases: Vec::new(),
            extra: String::new(),
            malloc: BUMP_MALLOC.to_string(),
            pages: 2,
            abi_marker: true,
        }
    }

    /// Places `b` in the data area; returns `(ptr, len)`.
    fn bytes(&mut self, b: &[u8]) -> (u32, u32) {
        let p = self.next;
        let len = u32::try_from(b.len()).unwrap();
        self.next += (len + 8) & !7;
        assert!(self.next < PAGE, "data area full");
        self.data.push((p, b.to_vec()));
        (p, len)
    }

    fn str(&mut self, s: &str) -> (u32, u32) {
        self.bytes(s.as_bytes())
    }

    /// Adds a case; returns its number.
    fn case(&mut self, expr: String) -> u32 {
        self.cases.push(expr);
        u32::try_from(self.cases.len() - 1).unwrap()
    }

    fn text(&self) -> String {
        let mut s = String::from("(module\n");
        s.push_str(IMPORTS);
        writeln!(s, "  (memory (export \"memory\") {})", self.pages).unwrap();
        for (p, b) in &self.data {
            let esc: String = b.iter().map(|x| format!("\\{x:02x}")).collect();
            writeln!(s, "  (data (i32.const {p}) \"{esc}\")").unwrap();
        }
        if self.abi_marker {
            s.push_str("  (func (export \"proxy_abi_version_0_2_1\"))\n");
        }
        s.push_str(&self.malloc);
        s.push_str(
            "  (func (export \"proxy_on_request_headers\") (param $ctx i32) (param $case i32) \
             (param $eos i32) (result i32)\n    (i64.store (i32.const 0x100) (i64.const -1))\n    \
             (i64.store (i32.const 0x108) (i64.const -1))\n    \
             (i64.store (i32.const 0x110) (i64.const -1))\n",
        );
        for (i, c) in self.cases.iter().enumerate() {
            writeln!(
                s,
                "    (if (i32.eq (local.get $case) (i32.const {i})) (then (return {c})))"
            )
            .unwrap();
        }
        s.push_str("    unreachable)\n");
        s.push_str(
            "  (func (export \"proxy_on_response_headers\") (param $ctx i32) (param $addr i32) \
             (param $eos i32) (result i32)\n    (i32.load8_u (local.get $addr)))\n",
        );
        s.push_str(&self.extra);
        s.push(')');
        s
    }
}

/// `(call $f (i32.const a) …)`.
fn c(f: &str, args: &[u32]) -> String {
    let mut s = format!("(call ${f}");
    for a in args {
        write!(s, " (i32.const {a:#x})").unwrap();
    }
    s.push(')');
    s
}

fn host() -> &'static (WasmEngine, Linker<VmState>) {
    static HOST: OnceLock<(WasmEngine, Linker<VmState>)> = OnceLock::new();
    HOST.get_or_init(|| {
        let engine = WasmEngine::new(&EngineOptions {
            cache_dir: None,
            pooled_instances: 32,
            on_demand: false,
            max_memory_bytes: 64 << 20,
        })
        .expect("engine");
        let linker = super::linker(engine.engine()).expect("linker");
        (engine, linker)
    })
}

fn settings(name: &str) -> PluginSettings {
    PluginSettings {
        name: name.to_string(),
        version: Default::default(),
        root_id: format!("{name}.root"),
        vm_id: format!("{name}.vm"),
        config: Bytes::from_static(b"plugin-config"),
        vm_config: Bytes::from_static(b"vm-config"),
        sanitizer: Sanitizer::new(&[], &[]),
        callout_targets: HashMap::new(),
        // A generous deadline: a loaded test machine must not turn into timeouts.
        limits: Limits {
            timeout: Duration::from_secs(10),
            ..Limits::default()
        },
        on_error: FailurePolicy::FailClosed,
        vms: 1,
        vm_start: Default::default(),
        sluice_properties: true,
        shared_store: None,
    }
}

const REQUEST: &[(&str, &str)] = &[
    (":method", "GET"),
    (":path", "/a/b?x=1"),
    (":authority", "example.com"),
    (":scheme", "http"),
    ("x-foo", "bar"),
    ("authorization", "Bearer secret"),
    ("x-forwarded-for", "10.1.2.3"),
    ("x-multi", "1"),
    ("x-multi", "2"),
];

/// [`REQUEST`] as a plugin with the default sanitizer sees it.
const VISIBLE: &[(&str, &str)] = &[
    (":method", "GET"),
    (":path", "/a/b?x=1"),
    (":authority", "example.com"),
    (":scheme", "http"),
    ("x-foo", "bar"),
    ("x-multi", "1"),
    ("x-multi", "2"),
];

fn owned(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn header_list(list: &[(&str, &str)]) -> Vec<(Vec<u8>, Vec<u8>)> {
    list.iter()
        .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect()
}

fn lossy(list: &[(Vec<u8>, Vec<u8>)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(k, v)| {
            (
                String::from_utf8_lossy(k).into_owned(),
                String::from_utf8_lossy(v).into_owned(),
            )
        })
        .collect()
}

fn encode(list: &[(&str, &str)]) -> Vec<u8> {
    map::encode(list.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes()))).unwrap()
}

fn decode(bytes: &[u8]) -> Vec<(String, String)> {
    let pairs = map::decode(bytes, &map::Limits::default()).expect("a valid header map");
    pairs
        .iter()
        .map(|(k, v)| {
            (
                String::from_utf8_lossy(k).into_owned(),
                String::from_utf8_lossy(v).into_owned(),
            )
        })
        .collect()
}

fn request() -> Box<Stream> {
    Box::new(Stream {
        request_headers: header_list(REQUEST),
        request_headers_writable: true,
        info: RequestInfo {
            protocol: "HTTP/1.1",
            id: "req-1".into(),
            source: Some("10.1.2.3:4567".parse().unwrap()),
            route_name: "route-1".into(),
            ..RequestInfo::default()
        },
        ..Stream::default()
    })
}

/// A running guest with one stream context and one request.
struct T {
    _plugin: Arc<Plugin>,
    vm: Arc<Vm>,
    ctx: u32,
    stream: Option<Box<Stream>>,
    callout: Option<CalloutResponse>,
    sink: CalloutSink,
    rx: UnboundedReceiver<CalloutDone>,
}

fn load(w: &Wat, s: PluginSettings) -> Result<Arc<Plugin>, PluginError> {
    let (engine, linker) = host();
    Plugin::load(engine, linker, s, w.text().as_bytes())
}

fn start(w: &Wat, s: PluginSettings) -> T {
    let plugin = load(w, s).unwrap_or_else(|e| panic!("{e}\n{}", w.text()));
    let vm = plugin.pick().expect("a healthy VM");
    let ctx = vm.create_context().expect("context");
    let (tx, rx) = unbounded_channel();
    T {
        _plugin: plugin,
        vm,
        ctx,
        stream: Some(request()),
        callout: None,
        sink: CalloutSink::Request(tx),
        rx,
    }
}

impl T {
    fn try_case(&mut self, case: u32) -> Result<u32, GuestError> {
        self.vm.call_stream(
            self.ctx,
            StreamCall::RequestHeaders(case, false),
            &mut self.stream,
            0,
            &self.sink,
            self.callout.clone(),
        )
    }

    /// Runs `case`; its value.
    fn case(&mut self, case: u32) -> u32 {
        self.try_case(case)
            .unwrap_or_else(|e| panic!("case {case} failed: {e}"))
    }

    /// Runs `case`, which must fail the call.
    fn fails(&mut self, case: u32) -> GuestError {
        match self.try_case(case) {
            Ok(v) => panic!("case {case} returned {v}, expected a failure"),
            Err(e) => e,
        }
    }

    fn peek(&mut self, addr: u32, len: u32) -> Vec<u8> {
        (addr..addr + len)
            .map(|a| {
                let b = self
                    .vm
                    .call_stream(
                        self.ctx,
                        StreamCall::ResponseHeaders(a, false),
                        &mut self.stream,
                        0,
                        &self.sink,
                        None,
                    )
                    .expect("peek");
                u8::try_from(b).unwrap()
            })
            .collect()
    }

    fn u32_at(&mut self, addr: u32) -> u32 {
        u32::from_le_bytes(self.peek(addr, 4).try_into().unwrap())
    }

    fn u64_at(&mut self, addr: u32) -> u64 {
        u64::from_le_bytes(self.peek(addr, 8).try_into().unwrap())
    }

    /// The bytes the last call handed back through [`RP`] / [`RL`].
    fn returned(&mut self) -> Vec<u8> {
        self.returned_at(RP, RL)
    }

    fn returned_at(&mut self, rp: u32, rl: u32) -> Vec<u8> {
        let (p, l) = (self.u32_at(rp), self.u32_at(rl));
        assert!(
            l < 1 << 20,
            "no length was written (ptr {p:#x}, len {l:#x})"
        );
        self.peek(p, l)
    }

    fn returned_str(&mut self) -> String {
        String::from_utf8(self.returned()).unwrap()
    }

    fn s(&mut self) -> &mut Stream {
        self.stream.as_deref_mut().expect("the stream came back")
    }

    fn assert_healthy(&self) {
        assert!(
            !self.vm.is_failed(),
            "a refused host call must not fail the VM"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Reading properties (properties.rs, envoy_properties.rs, all_envoy_properties.rs).

/// A property path as the SDKs send it: segments joined by NUL.
fn path(segments: &[&str]) -> Vec<u8> {
    sluice_abi::path::join(segments)
}

/// WAT instructions that read each path with `get_property` into a table: status i at
/// 0x200 + 4i, value pointer and length at 0x280 + 8i.
fn property_table(w: &mut Wat, paths: &[&[&str]]) -> String {
    let mut body = String::new();
    for (i, p) in paths.iter().enumerate() {
        let (pp, pl) = w.bytes(&path(p));
        let i = u32::try_from(i).unwrap();
        write!(
            body,
            "\n    (i32.store (i32.const {}) {})",
            0x200 + 4 * i,
            c("get_property", &[pp, pl, 0x280 + 8 * i, 0x284 + 8 * i])
        )
        .unwrap();
    }
    body
}

/// Adds a `get_property` case for each path; their case numbers, in order.
fn property_cases(w: &mut Wat, paths: &[&[&str]]) -> Vec<u32> {
    paths
        .iter()
        .map(|p| {
            let (pp, pl) = w.bytes(&path(p));
            w.case(c("get_property", &[pp, pl, RP, RL]))
        })
        .collect()
}

impl T {
    /// Runs a `get_property` case: the value, or the status when it is not OK.
    fn prop(&mut self, case: u32) -> Result<Vec<u8>, u32> {
        match self.case(case) {
            OK => Ok(self.returned()),
            status => Err(status),
        }
    }
}

fn add_header(list: &mut Vec<(Vec<u8>, Vec<u8>)>, k: &str, v: &str) {
    list.push((k.as_bytes().to_vec(), v.as_bytes().to_vec()));
}

/// Names and values of [`VISIBLE`] (pseudo-headers included): 79 bytes.
const VISIBLE_BYTES: u64 = 79;

#[test]
fn every_abi_import_links() {
    for name in sluice_abi::names::IMPORTS {
        assert!(
            IMPORTS.contains(&format!("\"{name}\"")),
            "{name} missing from the test guest"
        );
    }
    // A guest importing all 39 host calls links, starts and serves a request.
    let mut w = Wat::new();
    let done = w.case(c("done", &[]));
    let mut t = start(&w, settings("hc-links"));
    assert_eq!(t.case(done), OK);
}
