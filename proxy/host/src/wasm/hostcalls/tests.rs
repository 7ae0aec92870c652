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

// ---------------------------------------------------------------------------------------------
// Logging, time, ticks, contexts.

#[test]
fn log_levels_lengths_and_ranges() {
    let mut w = Wat::new();
    let (p, l) = w.str("hello from the guest");
    let info = w.case(c("log", &[2, p, l]));
    let critical = w.case(c("log", &[5, p, l]));
    let level9 = w.case(c("log", &[9, p, l]));
    let level6 = w.case(c("log", &[6, p, l]));
    let past_end = w.case(c("log", &[2, OOB, 0x20]));
    let wraps = w.case(c("log", &[2, 0xFFFF_FFFF, 2]));
    let huge = w.case(c("log", &[2, 0, HUGE]));
    let edge = w.case(c("log", &[2, 2 * PAGE - 4, 5]));
    let long = w.case(c("log", &[2, 0, 16 * 1024 + 1]));
    let empty = w.case(c("log", &[2, p, 0]));
    let mut t = start(&w, settings("hc-log"));
    assert_eq!(t.case(info), OK);
    assert_eq!(t.case(critical), OK);
    assert_eq!(t.case(level9), BAD_ARGUMENT);
    assert_eq!(t.case(level6), BAD_ARGUMENT);
    assert_eq!(t.case(past_end), INVALID_MEMORY_ACCESS);
    assert_eq!(t.case(wraps), INVALID_MEMORY_ACCESS);
    assert_eq!(t.case(huge), INVALID_MEMORY_ACCESS);
    assert_eq!(t.case(edge), INVALID_MEMORY_ACCESS);
    assert_eq!(t.case(long), OK, "a long line is cut, not refused");
    assert_eq!(t.case(empty), OK);
    t.assert_healthy();
}

#[test]
fn log_level_time_tick_done() {
    let mut w = Wat::new();
    let level = w.case(c("get_log_level", &[R3]));
    let level_oob = w.case(c("get_log_level", &[2 * PAGE - 3]));
    let now = w.case(c("now", &[R8]));
    let now_oob = w.case(c("now", &[2 * PAGE - 4]));
    let tick = w.case(c("set_tick", &[250]));
    let untick = w.case(c("set_tick", &[0]));
    let done = w.case(c("done", &[]));
    let mut t = start(&w, settings("hc-time"));
    assert_eq!(t.case(level), OK);
    assert!(t.u32_at(R3) <= 5, "log level {}", t.u32_at(R3));
    assert_eq!(t.case(level_oob), INVALID_MEMORY_ACCESS);
    let before = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    assert_eq!(t.case(now), OK);
    let after = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let ns = u128::from(t.u64_at(R8));
    assert!(
        before.as_nanos() <= ns && ns <= after.as_nanos(),
        "{ns} not in [{}, {}]",
        before.as_nanos(),
        after.as_nanos()
    );
    assert_eq!(t.case(now_oob), INVALID_MEMORY_ACCESS);
    assert_eq!(t.u64_at(R8), u64::MAX, "nothing written");
    assert_eq!(t.case(tick), OK);
    assert_eq!(t.vm.tick_period_ms(), 250);
    assert_eq!(t.case(untick), OK);
    assert_eq!(t.vm.tick_period_ms(), 0);
    assert_eq!(t.case(done), OK);
    t.assert_healthy();
}

#[test]
fn effective_context() {
    let mut w = Wat::new();
    let root = w.case(c("set_ctx", &[1]));
    let own = w.case("(call $set_ctx (local.get $ctx))".into());
    let other = w.case(c("set_ctx", &[999]));
    let mut t = start(&w, settings("hc-ctx"));
    assert_eq!(t.case(root), OK);
    assert_eq!(t.case(own), OK);
    // Outside a request only the root context and the current one are valid.
    let r = t.vm.call_stream(
        t.ctx,
        StreamCall::RequestHeaders(other, false),
        &mut None,
        0,
        &t.sink,
        None,
    );
    assert_eq!(r.unwrap(), BAD_ARGUMENT);
    let r = t.vm.call_stream(
        t.ctx,
        StreamCall::RequestHeaders(root, false),
        &mut None,
        0,
        &t.sink,
        None,
    );
    assert_eq!(r.unwrap(), OK);
    t.assert_healthy();
}

// ---------------------------------------------------------------------------------------------
// Header maps.

#[test]
fn header_values() {
    let mut w = Wat::new();
    let (fp, fl) = w.str("x-foo");
    let (up, ul) = w.str("X-FOO");
    let (pp, pl) = w.str(":path");
    let (mp, ml) = w.str("x-missing");
    let (xp, xl) = w.str("x-multi");
    let foo = w.case(c("get_value", &[0, fp, fl, RP, RL]));
    let upper = w.case(c("get_value", &[0, up, ul, RP, RL]));
    let path = w.case(c("get_value", &[0, pp, pl, RP, RL]));
    let missing = w.case(c("get_value", &[0, mp, ml, RP, RL]));
    let multi = w.case(c("get_value", &[0, xp, xl, RP, RL]));
    let map99 = w.case(c("get_value", &[99, fp, fl, RP, RL]));
    let grpc = w.case(c("get_value", &[4, fp, fl, RP, RL]));
    let response = w.case(c("get_value", &[2, fp, fl, RP, RL]));
    let trailers = w.case(c("get_value", &[1, fp, fl, RP, RL]));
    let callout = w.case(c("get_value", &[6, fp, fl, RP, RL]));
    let mut t = start(&w, settings("hc-hvalue"));
    assert_eq!(t.case(foo), OK);
    assert_eq!(t.returned_str(), "bar");
    assert_eq!(t.case(upper), OK, "names are case-insensitive");
    assert_eq!(t.returned_str(), "bar");
    assert_eq!(t.case(path), OK);
    assert_eq!(t.returned_str(), "/a/b?x=1");
    assert_eq!(t.case(multi), OK);
    assert_eq!(t.returned_str(), "1", "the first value");
    assert_eq!(t.case(missing), NOT_FOUND);
    assert_eq!((t.u32_at(RP), t.u32_at(RL)), (u32::MAX, u32::MAX));
    assert_eq!(t.case(map99), BAD_ARGUMENT);
    assert_eq!(t.case(grpc), BAD_ARGUMENT);
    assert_eq!(t.case(response), BAD_ARGUMENT, "no response yet");
    assert_eq!(t.case(trailers), NOT_FOUND);
    assert_eq!(t.case(callout), NOT_FOUND, "no callout response");
    t.s().response_headers = header_list(&[(":status", "200"), ("x-foo", "resp")]);
    assert_eq!(t.case(response), OK);
    assert_eq!(t.returned_str(), "resp");
    t.assert_healthy();
}

#[test]
fn header_value_memory_and_caps() {
    let mut w = Wat::new();
    let (fp, fl) = w.str("x-foo");
    let key_past_end = w.case(c("get_value", &[0, OOB, 0x20, RP, RL]));
    let key_wraps = w.case(c("get_value", &[0, 0xFFFF_FFFF, 2, RP, RL]));
    let key_huge = w.case(c("get_value", &[0, fp, HUGE, RP, RL]));
    let key_over_cap = w.case(c("get_value", &[0, 0, 8 * 1024 + 1, RP, RL]));
    let ret_ptr_bad = w.case(c("get_value", &[0, fp, fl, OOB, RL]));
    let ret_len_edge = w.case(c("get_value", &[0, fp, fl, RP, 2 * PAGE - 3]));
    let ret_len_last = w.case(c("get_value", &[0, fp, fl, RP, 2 * PAGE - 4]));
    let mut t = start(&w, settings("hc-hmem"));
    assert_eq!(t.case(key_past_end), INVALID_MEMORY_ACCESS);
    assert_eq!(t.case(key_wraps), INVALID_MEMORY_ACCESS);
    assert_eq!(t.case(key_huge), INVALID_MEMORY_ACCESS);
    assert_eq!(t.case(key_over_cap), BAD_ARGUMENT);
    assert_eq!(t.case(ret_ptr_bad), INVALID_MEMORY_ACCESS);
    assert_eq!(t.case(ret_len_edge), INVALID_MEMORY_ACCESS);
    assert_eq!(t.u32_at(RP), u32::MAX, "nothing written on a bad slot");
    assert_eq!(
        t.case(ret_len_last),
        OK,
        "the last 4 bytes of memory are a valid slot"
    );
    assert_eq!(t.u32_at(2 * PAGE - 4), 3);
    t.assert_healthy();
}

#[test]
fn header_pairs_and_size() {
    let mut w = Wat::new();
    let pairs = w.case(c("get_pairs", &[0, RP, RL]));
    let size = w.case(c("get_size", &[0, R3]));
    let pairs99 = w.case(c("get_pairs", &[99, RP, RL]));
    let size99 = w.case(c("get_size", &[99, R3]));
    let pairs_bad_ret = w.case(c("get_pairs", &[0, RP, OOB]));
    let size_bad_ret = w.case(c("get_size", &[0, 0xFFFF_FFFE]));
    let trailers = w.case(c("get_pairs", &[1, RP, RL]));
    let mut t = start(&w, settings("hc-hpairs"));
    assert_eq!(t.case(pairs), OK);
    let bytes = t.returned();
    assert_eq!(decode(&bytes), owned(VISIBLE));
    assert_eq!(t.case(size), OK);
    assert_eq!(t.u32_at(R3) as usize, bytes.len());
    assert_eq!(t.case(pairs99), BAD_ARGUMENT);
    assert_eq!(t.case(size99), BAD_ARGUMENT);
    assert_eq!(t.case(pairs_bad_ret), INVALID_MEMORY_ACCESS);
    assert_eq!(t.case(size_bad_ret), INVALID_MEMORY_ACCESS);
    assert_eq!(t.case(trailers), OK);
    assert_eq!(decode(&t.returned()), vec![]);
    t.assert_healthy();
}

#[test]
fn header_add_replace_remove() {
    let mut w = Wat::new();
    let (kp, kl) = w.str("X-New");
    let (v1p, v1l) = w.str("v1");
    let (v2p, v2l) = w.str("v2");
    let (v3p, v3l) = w.str("v3");
    let (mp, ml) = w.str("x-multi");
    let add1 = w.case(c("add_value", &[0, kp, kl, v1p, v1l]));
    let add2 = w.case(c("add_value", &[0, kp, kl, v2p, v2l]));
    let get = w.case(c("get_value", &[0, kp, kl, RP, RL]));
    let replace = w.case(c("replace_value", &[0, kp, kl, v3p, v3l]));
    let remove = w.case(c("remove_value", &[0, kp, kl]));
    let remove_multi = w.case(c("remove_value", &[0, mp, ml]));
    let add99 = w.case(c("add_value", &[99, kp, kl, v1p, v1l]));
    let add_key_oob = w.case(c("add_value", &[0, OOB, 0x20, v1p, v1l]));
    let add_value_huge = w.case(c("add_value", &[0, kp, kl, v1p, HUGE]));
    let replace_value_oob = w.case(c("replace_value", &[0, kp, kl, 0xFFFF_FFFF, 2]));
    let remove_key_oob = w.case(c("remove_value", &[0, kp, HUGE]));
    let value_over_cap = w.case(c("add_value", &[0, kp, kl, 0, 64 * 1024 + 1]));
    let mut t = start(&w, settings("hc-hwrite"));
    let x_new = |t: &mut T| {
        t.s()
            .request_headers
            .iter()
            .filter(|(k, _)| k == b"x-new")
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(t.case(add1), OK);
    assert_eq!(x_new(&mut t), ["v1"], "added under its lower-case name");
    assert_eq!(t.s().request_changed.names, vec![b"x-new".to_vec()]);
    assert_eq!(t.case(add2), OK);
    assert_eq!(x_new(&mut t), ["v1", "v2"]);
    assert_eq!(t.case(get), OK);
    assert_eq!(t.returned_str(), "v1");
    assert_eq!(t.case(replace), OK);
    assert_eq!(x_new(&mut t), ["v3"]);
    assert_eq!(t.case(remove), OK);
    assert!(x_new(&mut t).is_empty());
    assert_eq!(t.case(get), NOT_FOUND);
    assert_eq!(t.case(remove), OK, "removing an absent header is fine");
    assert_eq!(t.case(remove_multi), OK);
    assert!(!t.s().request_headers.iter().any(|(k, _)| k == b"x-multi"));
    let before = t.s().request_headers.clone();
    assert_eq!(t.case(add99), BAD_ARGUMENT);
    assert_eq!(t.case(add_key_oob), INVALID_MEMORY_ACCESS);
    assert_eq!(t.case(add_value_huge), INVALID_MEMORY_ACCESS);
    assert_eq!(t.case(replace_value_oob), INVALID_MEMORY_ACCESS);
    assert_eq!(t.case(remove_key_oob), INVALID_MEMORY_ACCESS);
    assert_eq!(t.case(value_over_cap), BAD_ARGUMENT);
    assert_eq!(
        t.s().request_headers,
        before,
        "refused writes change nothing"
    );
    t.assert_healthy();
}

#[test]
fn header_writes_validate_names_and_values() {
    let mut w = Wat::new();
    let (okp, okl) = w.str("x-ok");
    let (badp, badl) = w.str("bad name");
    let (vp, vl) = w.str("fine");
    let (crlfp, crlfl) = w.str("a\r\nx-evil: 1");
    let (nulp, null) = w.bytes(b"a\0b");
    let (pathp, pathl) = w.str(":path");
    let (newp, newl) = w.str("/new?q");
    let (relp, rell) = w.str("relative");
    let (bogusp, bogusl) = w.str(":bogus");
    let (upperp, upperl) = w.str(":PATH");
    let bad_name = w.case(c("add_value", &[0, badp, badl, vp, vl]));
    let empty_name = w.case(c("add_value", &[0, okp, 0, vp, vl]));
    let crlf = w.case(c("add_value", &[0, okp, okl, crlfp, crlfl]));
    let nul = w.case(c("replace_value", &[0, okp, okl, nulp, null]));
    let path_ok = w.case(c("replace_value", &[0, pathp, pathl, newp, newl]));
    let path_bad = w.case(c("replace_value", &[0, pathp, pathl, relp, rell]));
    let path_remove = w.case(c("remove_value", &[0, pathp, pathl]));
    let bogus = w.case(c("replace_value", &[0, bogusp, bogusl, vp, vl]));
    let upper = w.case(c("replace_value", &[0, upperp, upperl, newp, newl]));
    let path_add = w.case(c("add_value", &[0, pathp, pathl, vp, vl]));
    let mut t = start(&w, settings("hc-hvalid"));
    let before = t.s().request_headers.clone();
    assert_eq!(t.case(bad_name), BAD_ARGUMENT);
    assert_eq!(t.case(empty_name), BAD_ARGUMENT);
    assert_eq!(t.case(crlf), BAD_ARGUMENT);
    assert_eq!(t.case(nul), BAD_ARGUMENT);
    assert_eq!(t.case(path_bad), BAD_ARGUMENT);
    assert_eq!(t.case(path_remove), BAD_ARGUMENT);
    assert_eq!(t.case(bogus), BAD_ARGUMENT);
    assert_eq!(t.case(upper), BAD_ARGUMENT);
    assert_eq!(t.case(path_add), BAD_ARGUMENT, "\"fine\" is not a path");
    assert_eq!(t.s().request_headers, before);
    assert_eq!(t.case(path_ok), OK);
    let paths: Vec<_> = t
        .s()
        .request_headers
        .iter()
        .filter(|(k, _)| k == b":path")
        .map(|(_, v)| v.clone())
        .collect();
    assert_eq!(paths, vec![b"/new?q".to_vec()]);
    assert_eq!(t.s().request_headers[1].0, b":path", "kept in place");
    t.assert_healthy();
}

#[test]
fn hidden_headers_are_invisible_and_read_only() {
    let name = "hc-hidden";
    let mut w = Wat::new();
    let (ap, al) = w.str("authorization");
    let (cap, cal) = w.str("Authorization");
    let (xp, xl) = w.str("x-forwarded-for");
    let (vp, vl) = w.str("Bearer mine");
    let with_auth = encode(&[("x-foo", "new"), ("authorization", "Bearer mine")]);
    let (sp, sl) = w.bytes(&with_auth);
    let without = encode(&[("x-foo", "new")]);
    let (np, nl) = w.bytes(&without);
    let get = w.case(c("get_value", &[0, ap, al, RP, RL]));
    let get_xff = w.case(c("get_value", &[0, xp, xl, RP, RL]));
    let add = w.case(c("add_value", &[0, ap, al, vp, vl]));
    let replace = w.case(c("replace_value", &[0, cap, cal, vp, vl]));
    let remove = w.case(c("remove_value", &[0, ap, al]));
    let set = w.case(c("set_pairs", &[0, sp, sl]));
    let set_visible = w.case(c("set_pairs", &[0, np, nl]));
    let local = encode(&[("authorization", "x")]);
    let (lp, ll) = w.bytes(&local);
    let local_response = w.case(c("local_response", &[403, 0, 0, 0, 0, lp, ll, 0]));
    let mut t = start(&w, settings(name));
    let refused = || {
        crate::metrics::metrics()
            .plugin_refused_writes
            .with_label_values(&[name])
            .get()
    };
    assert_eq!(t.case(get), NOT_FOUND);
    assert_eq!((t.u32_at(RP), t.u32_at(RL)), (u32::MAX, u32::MAX));
    assert_eq!(
        t.case(get_xff),
        NOT_FOUND,
        "the client address is hidden too"
    );
    let before = t.s().request_headers.clone();
    assert_eq!(t.case(add), BAD_ARGUMENT);
    assert_eq!(t.case(replace), BAD_ARGUMENT);
    assert_eq!(t.case(remove), BAD_ARGUMENT);
    assert_eq!(t.case(set), BAD_ARGUMENT);
    assert_eq!(t.s().request_headers, before);
    assert!(!t.s().request_changed.any());
    assert_eq!(t.case(local_response), BAD_ARGUMENT);
    assert!(t.s().effects.local_response.is_none());
    assert_eq!(refused(), 5, "every refused write is counted");
    // Replacing the visible map keeps what the plugin cannot see.
    assert_eq!(t.case(set_visible), OK);
    assert_eq!(
        lossy(&t.s().request_headers),
        owned(&[
            (":method", "GET"),
            (":path", "/a/b?x=1"),
            (":authority", "example.com"),
            (":scheme", "http"),
            ("x-foo", "new"),
            ("authorization", "Bearer secret"),
            ("x-forwarded-for", "10.1.2.3"),
        ])
    );
    t.assert_healthy();
}

#[test]
fn exposed_header_is_visible_and_writable() {
    let mut w = Wat::new();
    let (ap, al) = w.str("authorization");
    let (vp, vl) = w.str("Bearer mine");
    let get = w.case(c("get_value", &[0, ap, al, RP, RL]));
    let pairs = w.case(c("get_pairs", &[0, RP, RL]));
    let replace = w.case(c("replace_value", &[0, ap, al, vp, vl]));
    let mut s = settings("hc-exposed");
    s.sanitizer = Sanitizer::new(&["authorization".into()], &[]);
    let mut t = start(&w, s);
    assert_eq!(t.case(get), OK);
    assert_eq!(t.returned_str(), "Bearer secret");
    assert_eq!(t.case(pairs), OK);
    let seen = decode(&t.returned());
    assert!(seen.contains(&("authorization".into(), "Bearer secret".into())));
    assert!(
        !seen.iter().any(|(k, _)| k == "x-forwarded-for"),
        "only what was exposed"
    );
    assert_eq!(t.case(replace), OK);
    assert_eq!(
        crate::wasm::stream::list_get(&t.s().request_headers, b"authorization"),
        Some(&b"Bearer mine"[..])
    );
    assert_eq!(t.s().request_changed.names, vec![b"authorization".to_vec()]);
    t.assert_healthy();
}

#[test]
fn set_pairs_replaces_the_map() {
    let mut w = Wat::new();
    let new = encode(&[("x-new", "1"), ("X-Up", "2"), (":path", "/z")]);
    let (np, nl) = w.bytes(&new);
    let set = w.case(c("set_pairs", &[0, np, nl]));
    let set_empty = w.case(c("set_pairs", &[0, np, 0]));
    let mut t = start(&w, settings("hc-setpairs"));
    assert_eq!(t.case(set), OK);
    assert_eq!(
        lossy(&t.s().request_headers),
        owned(&[
            (":path", "/z"),
            (":method", "GET"),
            (":authority", "example.com"),
            (":scheme", "http"),
            ("x-new", "1"),
            ("x-up", "2"),
            ("authorization", "Bearer secret"),
            ("x-forwarded-for", "10.1.2.3"),
        ])
    );
    assert!(t.s().request_changed.all);
    assert_eq!(t.case(set_empty), OK);
    assert_eq!(
        lossy(&t.s().request_headers),
        owned(&[
            (":path", "/z"),
            (":method", "GET"),
            (":authority", "example.com"),
            (":scheme", "http"),
            ("authorization", "Bearer secret"),
            ("x-forwarded-for", "10.1.2.3"),
        ]),
        "an empty map keeps pseudo-headers and hidden headers"
    );
    t.assert_healthy();
}

#[test]
fn set_pairs_rejects_malformed_maps() {
    let mut w = Wat::new();
    w.pages = 6;
    let good = encode(&[("x-a", "1")]);
    let mut bad_count = good.clone();
    bad_count[0] = 3;
    let mut no_nul = good.clone();
    let nul_at = 4 + 8 + 3;
    assert_eq!(no_nul[nul_at], 0);
    no_nul[nul_at] = b'X';
    let mut trailing = good.clone();
    trailing.extend_from_slice(b"zz");
    let bad_name = encode(&[("x a", "1")]);
    let bad_value = encode(&[("x-a", "1\r\n")]);
    let cases: Vec<u32> = [
        bad_count,
        no_nul,
        trailing,
        vec![1, 0, 0],
        bad_name,
        bad_value,
    ]
    .iter()
    .map(|m| {
        let (p, l) = w.bytes(m);
        w.case(c("set_pairs", &[0, p, l]))
    })
    .collect();
    let (gp, gl) = w.bytes(&good);
    let map99 = w.case(c("set_pairs", &[99, gp, gl]));
    let grpc = w.case(c("set_pairs", &[5, gp, gl]));
    let past_end = w.case(c("set_pairs", &[0, OOB, 0x20]));
    let huge = w.case(c("set_pairs", &[0, gp, HUGE]));
    let over_cap = w.case(c("set_pairs", &[0, 0, 320 * 1024 + 1]));
    let mut t = start(&w, settings("hc-setbad"));
    let before = t.s().request_headers.clone();
    for case in cases {
        assert_eq!(t.case(case), BAD_ARGUMENT, "case {case}");
    }
    assert_eq!(t.case(map99), BAD_ARGUMENT);
    assert_eq!(t.case(grpc), BAD_ARGUMENT);
    assert_eq!(t.case(past_end), INVALID_MEMORY_ACCESS);
    assert_eq!(t.case(huge), INVALID_MEMORY_ACCESS);
    assert_eq!(t.case(over_cap), BAD_ARGUMENT);
    assert_eq!(t.s().request_headers, before);
    assert!(!t.s().request_changed.any());
    t.assert_healthy();
}

#[test]
fn writes_after_the_headers_went_out_are_ignored() {
    let mut w = Wat::new();
    let (kp, kl) = w.str("x-late");
    let (vp, vl) = w.str("1");
    let add = w.case(c("add_value", &[0, kp, kl, vp, vl]));
    let set = encode(&[("x-late", "1")]);
    let (sp, sl) = w.bytes(&set);
    let set = w.case(c("set_pairs", &[0, sp, sl]));
    let trailer = w.case(c("add_value", &[1, kp, kl, vp, vl]));
    let mut t = start(&w, settings("hc-late"));
    t.s().request_headers_writable = false;
    let before = t.s().request_headers.clone();
    assert_eq!(t.case(add), OK);
    assert_eq!(t.case(set), OK);
    assert_eq!(t.case(trailer), OK);
    assert_eq!(t.s().request_headers, before);
    assert!(t.s().request_trailers.is_empty());
    assert!(!t.s().request_changed.any());
    t.assert_healthy();
}

// ---------------------------------------------------------------------------------------------
// Buffers.

#[test]
fn buffer_reads_clamp() {
    let mut w = Wat::new();
    let head = w.case(c("get_buffer", &[0, 0, 5, RP, RL]));
    let tail = w.case(c("get_buffer", &[0, 6, 100, RP, RL]));
    let at_end = w.case(c("get_buffer", &[0, 11, 5, RP, RL]));
    let far = w.case(c("get_buffer", &[0, u32::MAX, u32::MAX, RP, RL]));
    let all = w.case(c("get_buffer", &[0, 0, u32::MAX, RP, RL]));
    let status = w.case(c("buffer_status", &[0, R3, RL]));
    let response = w.case(c("get_buffer", &[1, 0, 5, RP, RL]));
    let t99 = w.case(c("get_buffer", &[99, 0, 5, RP, RL]));
    let status99 = w.case(c("buffer_status", &[99, R3, RL]));
    let ret_bad = w.case(c("get_buffer", &[0, 0, 5, RP, OOB]));
    let status_bad = w.case(c("buffer_status", &[0, R3, 2 * PAGE - 2]));
    let callout = w.case(c("get_buffer", &[4, 0, 5, RP, RL]));
    let mut t = start(&w, settings("hc-bufget"));
    t.s().body = b"hello world".to_vec();
    t.s().body_kind = Some(BodyKind::Request);
    t.s().body_end = true;
    assert_eq!(t.case(head), OK);
    assert_eq!(t.returned_str(), "hello");
    assert_eq!(t.case(tail), OK);
    assert_eq!(t.returned_str(), "world");
    assert_eq!(t.case(all), OK);
    assert_eq!(t.returned_str(), "hello world");
    assert_eq!(t.case(at_end), OK);
    assert_eq!((t.u32_at(RP), t.u32_at(RL)), (0, 0));
    assert_eq!(t.case(far), OK);
    assert_eq!((t.u32_at(RP), t.u32_at(RL)), (0, 0));
    assert_eq!(t.case(status), OK);
    assert_eq!((t.u32_at(R3), t.u32_at(RL)), (11, 1));
    assert_eq!(t.case(response), NOT_FOUND, "not the current body");
    assert_eq!(t.case(t99), BAD_ARGUMENT);
    assert_eq!(t.case(status99), BAD_ARGUMENT);
    assert_eq!(t.case(ret_bad), INVALID_MEMORY_ACCESS);
    assert_eq!(t.case(status_bad), INVALID_MEMORY_ACCESS);
    assert_eq!(t.case(callout), NOT_FOUND);
    t.s().body_kind = None;
    assert_eq!(t.case(head), NOT_FOUND, "outside a body callback");
    t.assert_healthy();
}

#[test]
fn buffer_writes_splice() {
    let mut w = Wat::new();
    let (up, ul) = w.str("HELLO");
    let (cp, cl) = w.str(",");
    let (bp, bl) = w.str("!");
    let (xp, xl) = w.str("x");
    let replace_head = w.case(c("set_buffer", &[0, 0, 5, up, ul]));
    let insert = w.case(c("set_buffer", &[0, 5, 0, cp, cl]));
    let append = w.case(c("set_buffer", &[0, 100, 0, bp, bl]));
    let replace_all = w.case(c("set_buffer", &[0, 0, u32::MAX, xp, xl]));
    let clear = w.case(c("set_buffer", &[0, 0, u32::MAX, xp, 0]));
    let config = w.case(c("set_buffer", &[7, 0, 0, xp, xl]));
    let t99 = w.case(c("set_buffer", &[99, 0, 0, xp, xl]));
    let response = w.case(c("set_buffer", &[1, 0, 0, xp, xl]));
    let past_end = w.case(c("set_buffer", &[0, 0, 0, OOB, 0x20]));
    let huge = w.case(c("set_buffer", &[0, 0, 0, xp, HUGE]));
    let wraps = w.case(c("set_buffer", &[0, 0, 0, 0xFFFF_FFFF, 2]));
    let mut t = start(&w, settings("hc-bufset"));
    t.s().body = b"hello world".to_vec();
    t.s().body_kind = Some(BodyKind::Request);
    assert_eq!(t.case(config), BAD_ARGUMENT, "configurations are read-only");
    assert_eq!(t.case(t99), BAD_ARGUMENT);
    assert_eq!(t.case(response), NOT_FOUND);
    assert_eq!(t.case(past_end), INVALID_MEMORY_ACCESS);
    assert_eq!(t.case(huge), INVALID_MEMORY_ACCESS);
    assert_eq!(t.case(wraps), INVALID_MEMORY_ACCESS);
    assert_eq!(t.s().body, b"hello world");
    assert!(!t.s().body_changed);
    assert_eq!(t.case(replace_head), OK);
    assert_eq!(t.s().body, b"HELLO world");
    assert!(t.s().body_changed);
    assert_eq!(t.case(insert), OK);
    assert_eq!(t.s().body, b"HELLO, world");
    assert_eq!(t.case(append), OK);
    assert_eq!(t.s().body, b"HELLO, world!");
    assert_eq!(t.case(replace_all), OK);
    assert_eq!(t.s().body, b"x");
    assert_eq!(t.case(clear), OK);
    assert_eq!(t.s().body, b"");
    t.s().body = b"resp".to_vec();
    t.s().body_kind = Some(BodyKind::Response);
    t.s().body_changed = false;
    assert_eq!(t.case(response), OK);
    assert_eq!(t.s().body, b"xresp");
    assert!(t.s().body_changed);
    t.assert_healthy();
}

#[test]
fn buffer_writes_are_capped_by_max_body_bytes() {
    let mut w = Wat::new();
    let (p17, l17) = w.str("0123456789abcdefg");
    let set17 = w.case(c("set_buffer", &[0, 0, u32::MAX, p17, l17]));
    let append6 = w.case(c("set_buffer", &[0, 11, 0, p17, 6]));
    let append5 = w.case(c("set_buffer", &[0, 11, 0, p17, 5]));
    let replace16 = w.case(c("set_buffer", &[0, 0, u32::MAX, p17, 16]));
    let mut s = settings("hc-bufcap");
    s.limits.max_body_bytes = 16;
    let mut t = start(&w, s);
    t.s().body = b"hello world".to_vec();
    t.s().body_kind = Some(BodyKind::Request);
    assert_eq!(t.case(set17), BAD_ARGUMENT);
    assert_eq!(t.case(append6), BAD_ARGUMENT, "11 + 6 > 16");
    assert_eq!(t.s().body, b"hello world");
    assert!(!t.s().body_changed);
    assert_eq!(t.case(append5), OK);
    assert_eq!(t.s().body, b"hello world01234");
    assert_eq!(t.case(replace16), OK);
    assert_eq!(t.s().body, b"0123456789abcdef");
    t.assert_healthy();
}

#[test]
fn configuration_buffers_are_readable() {
    let mut w = Wat::new();
    // Start-up checks both configurations and keeps the plugin configuration's copy at 0x128.
    w.extra = r#"
  (func (export "proxy_on_vm_start") (param $root i32) (param $len i32) (result i32)
    (i32.and (i32.eq (local.get $len) (i32.const 9))
             (i32.eqz (call $get_buffer (i32.const 6) (i32.const 0) (local.get $len)
                                        (i32.const 0x120) (i32.const 0x124)))))
  (func (export "proxy_on_configure") (param $root i32) (param $len i32) (result i32)
    (i32.and (i32.eq (local.get $len) (i32.const 13))
             (i32.eqz (call $get_buffer (i32.const 7) (i32.const 0) (local.get $len)
                                        (i32.const 0x128) (i32.const 0x12c)))))
"#
    .into();
    let plugin_cfg = w.case(c("get_buffer", &[7, 0, 100, RP, RL]));
    let part = w.case(c("get_buffer", &[7, 7, 3, RP, RL]));
    let vm_cfg = w.case(c("get_buffer", &[6, 0, 100, RP, RL]));
    let status = w.case(c("buffer_status", &[7, R3, RL]));
    let mut t = start(&w, settings("hc-config"));
    assert_eq!(t.returned_at(0x128, 0x12c), b"plugin-config");
    assert_eq!(t.returned_at(0x120, 0x124), b"vm-config");
    assert_eq!(t.case(plugin_cfg), OK);
    assert_eq!(t.returned_str(), "plugin-config");
    assert_eq!(t.case(part), OK);
    assert_eq!(t.returned_str(), "con");
    assert_eq!(t.case(vm_cfg), OK);
    assert_eq!(t.returned_str(), "vm-config");
    assert_eq!(t.case(status), OK);
    assert_eq!((t.u32_at(R3), t.u32_at(RL)), (13, 1));
    t.assert_healthy();
}

// ---------------------------------------------------------------------------------------------
// Properties.

/// A property path as the SDKs send it: segments joined by NUL.
fn path(segments: &[&str]) -> Vec<u8> {
    sluice_abi::path::join(segments)
}

#[test]
fn well_known_properties() {
    let mut w = Wat::new();
    let get = |w: &mut Wat, p: &[u8]| {
        let (pp, pl) = w.bytes(p);
        w.case(c("get_property", &[pp, pl, RP, RL]))
    };
    let expect: Vec<(u32, &str)> = vec![
        (get(&mut w, &path(&["plugin_name"])), "hc-props"),
        (get(&mut w, b"plugin_name\0"), "hc-props"),
        (get(&mut w, &path(&["plugin_root_id"])), "hc-props.root"),
        (get(&mut w, &path(&["plugin_vm_id"])), "hc-props.vm"),
        (get(&mut w, &path(&["request", "path"])), "/a/b?x=1"),
        (get(&mut w, &path(&["request", "url_path"])), "/a/b"),
        (get(&mut w, &path(&["request", "query"])), "x=1"),
        (get(&mut w, &path(&["request", "method"])), "GET"),
        (get(&mut w, &path(&["request", "host"])), "example.com"),
        (get(&mut w, &path(&["request", "scheme"])), "http"),
        (get(&mut w, &path(&["request", "id"])), "req-1"),
        (get(&mut w, &path(&["request", "protocol"])), "HTTP/1.1"),
        (get(&mut w, &path(&["route_name"])), "route-1"),
    ];
    let headers = get(&mut w, &path(&["request", "headers"]));
    let code = get(&mut w, &path(&["response", "code"]));
    let upstream = get(&mut w, &path(&["upstream", "address"]));
    let mut t = start(&w, settings("hc-props"));
    for (case, want) in expect {
        assert_eq!(t.case(case), OK, "case {case}");
        assert_eq!(t.returned_str(), want, "case {case}");
    }
    assert_eq!(t.case(headers), OK);
    assert_eq!(
        decode(&t.returned()),
        owned(&[("x-foo", "bar"), ("x-multi", "1"), ("x-multi", "2")]),
        "no pseudo-headers, nothing hidden"
    );
    assert_eq!(t.case(code), NOT_FOUND, "no response yet");
    t.s().info.response_code = Some(404);
    assert_eq!(t.case(code), OK);
    assert_eq!(t.returned(), 404u64.to_le_bytes());
    assert_eq!(t.case(upstream), NOT_FOUND);
    t.assert_healthy();
}

#[test]
fn unknown_and_malformed_property_paths() {
    let mut w = Wat::new();
    let get = |w: &mut Wat, p: &[u8]| {
        let (pp, pl) = w.bytes(p);
        w.case(c("get_property", &[pp, pl, RP, RL]))
    };
    let unknown = get(&mut w, &path(&["foo", "bar"]));
    let unknown_sub = get(&mut w, &path(&["request", "nothing"]));
    let empty = get(&mut w, b"");
    let empty_segment = get(&mut w, b"request\0\0path");
    let segs: Vec<&str> = vec!["a"; 17];
    let too_deep = get(&mut w, &path(&segs));
    let sixteen = get(&mut w, &path(&segs[..16]));
    let long = vec![b'a'; 1025];
    let too_long = get(&mut w, &long);
    let (np, nl) = w.bytes(&path(&["plugin_name"]));
    let past_end = w.case(c("get_property", &[OOB, 0x20, RP, RL]));
    let huge = w.case(c("get_property", &[np, HUGE, RP, RL]));
    let ret_bad = w.case(c("get_property", &[np, nl, OOB, RL]));
    let mut t = start(&w, settings("hc-propbad"));
    assert_eq!(t.case(unknown), NOT_FOUND);
    assert_eq!(t.case(unknown_sub), NOT_FOUND);
    assert_eq!(t.case(sixteen), NOT_FOUND);
    assert_eq!(t.case(empty), BAD_ARGUMENT);
    assert_eq!(t.case(empty_segment), BAD_ARGUMENT);
    assert_eq!(t.case(too_deep), BAD_ARGUMENT);
    assert_eq!(t.case(too_long), BAD_ARGUMENT);
    assert_eq!(t.case(past_end), INVALID_MEMORY_ACCESS);
    assert_eq!(t.case(huge), INVALID_MEMORY_ACCESS);
    assert_eq!(t.case(ret_bad), INVALID_MEMORY_ACCESS);
    t.assert_healthy();
}

#[test]
fn custom_properties() {
    let mut w = Wat::new();
    let (kp, kl) = w.bytes(&path(&["my", "prop"]));
    let (v1p, v1l) = w.str("v1");
    let (v2p, v2l) = w.str("v2");
    let set1 = w.case(c("set_property", &[kp, kl, v1p, v1l]));
    let set2 = w.case(c("set_property", &[kp, kl, v2p, v2l]));
    let get = w.case(c("get_property", &[kp, kl, RP, RL]));
    let set_path = |w: &mut Wat, p: &[u8]| {
        let (pp, pl) = w.bytes(p);
        w.case(c("set_property", &[pp, pl, v1p, v1l]))
    };
    let request_path = set_path(&mut w, &path(&["request", "path"]));
    let plugin_name = set_path(&mut w, &path(&["plugin_name"]));
    let source = set_path(&mut w, &path(&["source", "address"]));
    let request_new = set_path(&mut w, &path(&["request", "new_thing"]));
    let empty_path = set_path(&mut w, b"");
    let value_huge = w.case(c("set_property", &[kp, kl, v1p, HUGE]));
    let value_over_cap = w.case(c("set_property", &[kp, kl, 0, 64 * 1024 + 1]));
    let path_oob = w.case(c("set_property", &[OOB, 0x20, v1p, v1l]));
    let mut t = start(&w, settings("hc-custom"));
    assert_eq!(t.case(get), NOT_FOUND);
    assert_eq!(t.case(set1), OK);
    assert_eq!(t.case(get), OK);
    assert_eq!(t.returned_str(), "v1");
    assert_eq!(t.case(set2), OK);
    assert_eq!(t.case(get), OK);
    assert_eq!(t.returned_str(), "v2");
    assert_eq!(
        t.s().custom_properties,
        vec![(b"my\0prop".to_vec(), b"v2".to_vec())]
    );
    assert_eq!(t.case(request_path), BAD_ARGUMENT);
    assert_eq!(t.case(plugin_name), BAD_ARGUMENT);
    assert_eq!(t.case(source), BAD_ARGUMENT);
    assert_eq!(
        t.case(request_new),
        BAD_ARGUMENT,
        "well-known roots are reserved"
    );
    assert_eq!(t.case(empty_path), BAD_ARGUMENT);
    assert_eq!(t.case(value_huge), INVALID_MEMORY_ACCESS);
    assert_eq!(t.case(value_over_cap), BAD_ARGUMENT);
    assert_eq!(t.case(path_oob), INVALID_MEMORY_ACCESS);
    assert_eq!(t.s().custom_properties.len(), 1);
    // The property belongs to the request: a new request does not see it.
    let mut other = Some(request());
    let r = t.vm.call_stream(
        t.ctx,
        StreamCall::RequestHeaders(get, false),
        &mut other,
        0,
        &t.sink,
        None,
    );
    assert_eq!(r.unwrap(), NOT_FOUND);
    t.assert_healthy();
}

#[test]
fn source_address_needs_the_grant() {
    let mut w = Wat::new();
    let (ap, al) = w.bytes(&path(&["source", "address"]));
    let (pp, pl) = w.bytes(&path(&["source", "port"]));
    let (xp, xl) = w.str("x-forwarded-for");
    let address = w.case(c("get_property", &[ap, al, RP, RL]));
    let port = w.case(c("get_property", &[pp, pl, RP, RL]));
    let xff = w.case(c("get_value", &[0, xp, xl, RP, RL]));
    let mut hidden = start(&w, settings("hc-source-hidden"));
    assert_eq!(hidden.case(address), NOT_FOUND);
    assert_eq!(hidden.case(port), NOT_FOUND);
    assert_eq!(hidden.case(xff), NOT_FOUND);
    hidden.assert_healthy();

    let mut s = settings("hc-source-exposed");
    s.sanitizer = Sanitizer::new(&["client_address".into()], &[]);
    let mut t = start(&w, s);
    assert_eq!(t.case(address), OK);
    assert_eq!(t.returned_str(), "10.1.2.3:4567");
    assert_eq!(t.case(port), OK);
    assert_eq!(t.returned(), 4567u64.to_le_bytes());
    assert_eq!(t.case(xff), OK);
    assert_eq!(t.returned_str(), "10.1.2.3");
    t.assert_healthy();
}

// ---------------------------------------------------------------------------------------------
// Shared data and queues.

#[test]
fn shared_data() {
    let name = "hc-shared";
    let mut w = Wat::new();
    let (kp, kl) = w.str("counter");
    let (v1p, v1l) = w.str("v1");
    let (v2p, v2l) = w.str("v2");
    let get = w.case(c("get_shared", &[kp, kl, RP, RL, R3]));
    let set1 = w.case(c("set_shared", &[kp, kl, v1p, v1l, 0]));
    let set2_stale = w.case(c("set_shared", &[kp, kl, v2p, v2l, 7]));
    let set2_cas1 = w.case(c("set_shared", &[kp, kl, v2p, v2l, 1]));
    let set_empty_value = w.case(c("set_shared", &[kp, kl, v2p, 0, 0]));
    let empty_key = w.case(c("set_shared", &[kp, 0, v1p, v1l, 0]));
    let key_over_cap = w.case(c("set_shared", &[0, 4097, v1p, v1l, 0]));
    let key_oob = w.case(c("set_shared", &[OOB, 0x20, v1p, v1l, 0]));
    let value_huge = w.case(c("set_shared", &[kp, kl, v1p, HUGE, 0]));
    let get_key_wraps = w.case(c("get_shared", &[0xFFFF_FFFF, 2, RP, RL, R3]));
    let get_cas_bad = w.case(c("get_shared", &[kp, kl, RP, RL, OOB]));
    let get_ret_bad = w.case(c("get_shared", &[kp, kl, OOB, RL, R3]));
    let mut t = start(&w, settings(name));
    assert_eq!(t.case(get), NOT_FOUND);
    assert_eq!(t.u32_at(R3), u32::MAX, "no cas written");
    assert_eq!(t.case(set1), OK);
    assert_eq!(t.case(get), OK);
    assert_eq!(t.returned_str(), "v1");
    assert_eq!(t.u32_at(R3), 1);
    assert_eq!(t.case(set2_stale), CAS_MISMATCH);
    assert_eq!(t.case(get), OK);
    assert_eq!(t.returned_str(), "v1");
    assert_eq!(t.case(set2_cas1), OK);
    assert_eq!(t.case(get), OK);
    assert_eq!(t.returned_str(), "v2");
    assert_eq!(t.u32_at(R3), 2);
    assert_eq!(t.case(set2_cas1), CAS_MISMATCH, "version 1 is stale now");
    assert_eq!(
        crate::wasm::shared::namespace(&format!("{name}.vm"), None)
            .get(b"counter")
            .unwrap(),
        Some((b"v2".to_vec(), 2)),
        "the namespace is the vm_id"
    );
    assert_eq!(t.case(empty_key), BAD_ARGUMENT);
    assert_eq!(t.case(key_over_cap), BAD_ARGUMENT);
    assert_eq!(t.case(key_oob), INVALID_MEMORY_ACCESS);
    assert_eq!(t.case(value_huge), INVALID_MEMORY_ACCESS);
    assert_eq!(t.case(get_key_wraps), INVALID_MEMORY_ACCESS);
    assert_eq!(t.case(get_cas_bad), INVALID_MEMORY_ACCESS);
    assert_eq!(t.case(get_ret_bad), INVALID_MEMORY_ACCESS);
    assert_eq!(t.case(set_empty_value), OK);
    assert_eq!(t.case(get), OK);
    assert_eq!((t.u32_at(RP), t.u32_at(RL), t.u32_at(R3)), (0, 0, 3));
    t.assert_healthy();
}

#[test]
fn shared_queues() {
    let name = "hc-queue";
    let mut w = Wat::new();
    let (qp, ql) = w.str("jobs");
    let (np, nl) = w.str("nothing");
    let (vp, vl) = w.str(&format!("{name}.vm"));
    let (ip, il) = w.str("item-1");
    let register = w.case(c("register_queue", &[qp, ql, KEEP]));
    let resolve_own = w.case(c("resolve_queue", &[vp, 0, qp, ql, R3]));
    let resolve_named = w.case(c("resolve_queue", &[vp, vl, qp, ql, R3]));
    let resolve_missing = w.case(c("resolve_queue", &[vp, 0, np, nl, R3]));
    let enqueue = w.case(format!(
        "(call $enqueue (i32.load (i32.const {KEEP})) (i32.const {ip}) (i32.const {il}))"
    ));
    let dequeue = w.case(format!(
        "(call $dequeue (i32.load (i32.const {KEEP})) (i32.const {RP}) (i32.const {RL}))"
    ));
    let enqueue_unknown = w.case(c("enqueue", &[OOB, ip, il]));
    let dequeue_unknown = w.case(c("dequeue", &[OOB, RP, RL]));
    let register_oob = w.case(c("register_queue", &[qp, HUGE, R3]));
    let enqueue_oob = w.case(format!(
        "(call $enqueue (i32.load (i32.const {KEEP})) (i32.const {OOB}) (i32.const 32))"
    ));
    let mut t = start(&w, settings(name));
    assert_eq!(t.case(register), OK);
    let id = t.u32_at(KEEP);
    assert_ne!(id, 0);
    assert_eq!(t.case(resolve_own), OK);
    assert_eq!(t.u32_at(R3), id);
    assert_eq!(t.case(resolve_named), OK);
    assert_eq!(t.u32_at(R3), id);
    assert_eq!(t.case(resolve_missing), NOT_FOUND);
    assert_eq!(t.case(dequeue), EMPTY);
    assert_eq!(t.case(enqueue), OK);
    assert_eq!(t.case(dequeue), OK);
    assert_eq!(t.returned_str(), "item-1");
    assert_eq!(t.case(dequeue), EMPTY);
    assert_eq!(t.case(enqueue_unknown), NOT_FOUND);
    assert_eq!(t.case(dequeue_unknown), NOT_FOUND);
    assert_eq!(t.case(register_oob), INVALID_MEMORY_ACCESS);
    assert_eq!(t.case(enqueue_oob), INVALID_MEMORY_ACCESS);
    t.assert_healthy();
}

// ---------------------------------------------------------------------------------------------
// Metrics.

#[test]
fn metrics_define_increment_get() {
    let name = "hc-metrics";
    let mut w = Wat::new();
    let (cp, cl) = w.str("hc_metrics.requests");
    let (gp, gl) = w.str("hc_metrics_gauge");
    let (hp, hl) = w.str("hc_metrics_hist");
    let (bp, bl) = w.bytes(b"\xff\xfe");
    let counter = w.case(c("define_metric", &[0, cp, cl, KEEP]));
    let again = w.case(c("define_metric", &[0, cp, cl, KEEP + 4]));
    let as_gauge = w.case(c("define_metric", &[1, cp, cl, R3]));
    let type7 = w.case(c("define_metric", &[7, cp, cl, R3]));
    let gauge = w.case(c("define_metric", &[1, gp, gl, KEEP + 8]));
    let hist = w.case(c("define_metric", &[2, hp, hl, KEEP + 12]));
    let empty = w.case(c("define_metric", &[0, cp, 0, R3]));
    let not_utf8 = w.case(c("define_metric", &[0, bp, bl, R3]));
    let over_cap = w.case(c("define_metric", &[0, 0, 201, R3]));
    let name_oob = w.case(c("define_metric", &[0, OOB, 0x20, R3]));
    let ret_oob = w.case(c("define_metric", &[0, cp, cl, OOB]));
    let id = |off: u32| format!("(i32.load (i32.const {}))", KEEP + off);
    let inc3 = w.case(format!("(call $increment_metric {} (i64.const 3))", id(0)));
    let dec = w.case(format!("(call $increment_metric {} (i64.const -1))", id(0)));
    let record10 = w.case(format!("(call $record_metric {} (i64.const 10))", id(0)));
    let get = w.case(format!("(call $get_metric {} (i32.const {R8}))", id(0)));
    let get_oob = w.case(format!("(call $get_metric {} (i32.const {OOB}))", id(0)));
    let gauge_dec = w.case(format!("(call $increment_metric {} (i64.const -5))", id(8)));
    let gauge_get = w.case(format!("(call $get_metric {} (i32.const {R8}))", id(8)));
    let hist_record = w.case(format!("(call $record_metric {} (i64.const 5))", id(12)));
    let hist_get = w.case(format!("(call $get_metric {} (i32.const {R8}))", id(12)));
    let unknown = w.case(c("get_metric", &[0xFFFF_FF00, R8]));
    let inc_unknown = w.case("(call $increment_metric (i32.const 0) (i64.const 1))".into());
    let mut t = start(&w, settings(name));
    assert_eq!(t.case(counter), OK);
    assert_eq!(t.case(again), OK);
    let id = t.u32_at(KEEP);
    assert_ne!(id, 0);
    assert_eq!(t.u32_at(KEEP + 4), id, "defining twice gives the same id");
    assert_eq!(t.case(as_gauge), BAD_ARGUMENT, "same name, other type");
    assert_eq!(t.case(type7), BAD_ARGUMENT);
    assert_eq!(t.case(empty), BAD_ARGUMENT);
    assert_eq!(t.case(not_utf8), BAD_ARGUMENT);
    assert_eq!(t.case(over_cap), BAD_ARGUMENT);
    assert_eq!(t.case(name_oob), INVALID_MEMORY_ACCESS);
    assert_eq!(t.case(ret_oob), INVALID_MEMORY_ACCESS);
    assert_eq!(t.case(inc3), OK);
    assert_eq!(t.case(get), OK);
    assert_eq!(t.u64_at(R8), 3);
    assert_eq!(t.case(dec), BAD_ARGUMENT, "counters only go up");
    assert_eq!(t.case(record10), OK);
    assert_eq!(t.case(get), OK);
    assert_eq!(t.u64_at(R8), 10);
    assert_eq!(t.case(get_oob), INVALID_MEMORY_ACCESS);
    assert_eq!(t.case(gauge), OK);
    assert_eq!(t.case(gauge_dec), OK);
    assert_eq!(t.case(gauge_get), OK);
    assert_eq!(t.u64_at(R8) as i64, -5);
    assert_eq!(t.case(hist), OK);
    assert_eq!(t.case(hist_record), OK);
    assert_eq!(t.case(hist_get), BAD_ARGUMENT);
    assert_eq!(t.case(unknown), NOT_FOUND);
    assert_eq!(t.case(inc_unknown), NOT_FOUND);
    let text = String::from_utf8(crate::metrics::metrics().render()).unwrap();
    assert!(
        text.contains("sluice_plugin_hc_metrics_requests{plugin=\"hc-metrics\"} 10"),
        "{text}"
    );
    t.assert_healthy();
}

// ---------------------------------------------------------------------------------------------
// Stream control.

#[test]
fn continue_and_close_stream() {
    let mut w = Wat::new();
    let resume_request = w.case(c("continue_stream", &[0]));
    let resume_response = w.case(c("continue_stream", &[1]));
    let resume_tcp = w.case(c("continue_stream", &[2]));
    let resume99 = w.case(c("continue_stream", &[99]));
    let close = w.case(c("close_stream", &[1]));
    let close99 = w.case(c("close_stream", &[99]));
    let status = w.case(c("get_status", &[R3, RP, RL]));
    let mut t = start(&w, settings("hc-control"));
    assert_eq!(t.case(resume_tcp), BAD_ARGUMENT);
    assert_eq!(t.case(resume99), BAD_ARGUMENT);
    assert_eq!(t.case(close99), BAD_ARGUMENT);
    assert!(!t.s().effects.resume_request && !t.s().effects.resume_response);
    assert!(!t.s().effects.close);
    assert_eq!(t.case(resume_request), OK);
    assert!(t.s().effects.resume_request && !t.s().effects.resume_response);
    assert_eq!(t.case(resume_response), OK);
    assert!(t.s().effects.resume_response);
    assert_eq!(t.case(close), OK);
    assert!(t.s().effects.close);
    assert_eq!(t.case(status), NOT_FOUND, "no callout response");
    let r = t.vm.call_stream(
        t.ctx,
        StreamCall::RequestHeaders(resume_request, false),
        &mut None,
        0,
        &t.sink,
        None,
    );
    assert_eq!(r.unwrap(), NOT_FOUND, "no request");
    t.assert_healthy();
}

#[test]
fn send_local_response() {
    let mut w = Wat::new();
    let (dp, dl) = w.str("denied-by-test");
    let (bp, bl) = w.str("go away");
    let headers = encode(&[("X-Why", "test"), ("x-two", "2")]);
    let (hp, hl) = w.bytes(&headers);
    let pseudo = encode(&[(":status", "200")]);
    let (pp, pl) = w.bytes(&pseudo);
    let bad = encode(&[("x-a", "1")]);
    let (xp, xl) = w.bytes(&bad[..bad.len() - 1]);
    let (big, bigl) = w.str("0123456789abcdefg");
    let send = |status: u32, body: (u32, u32), headers: (u32, u32)| {
        c(
            "local_response",
            &[status, dp, dl, body.0, body.1, headers.0, headers.1, 0],
        )
    };
    let status99 = w.case(send(99, (bp, bl), (hp, hl)));
    let status600 = w.case(send(600, (bp, bl), (hp, hl)));
    let with_pseudo = w.case(send(403, (bp, bl), (pp, pl)));
    let truncated = w.case(send(403, (bp, bl), (xp, xl)));
    let body_oob = w.case(send(403, (OOB, 0x20), (hp, hl)));
    let headers_huge = w.case(send(403, (bp, bl), (hp, HUGE)));
    let body_over_cap = w.case(send(403, (big, bigl), (hp, hl)));
    let details_oob = w.case(c(
        "local_response",
        &[403, 0xFFFF_FFFF, 2, bp, bl, hp, hl, 0],
    ));
    let ok = w.case(send(403, (bp, bl), (hp, hl)));
    let no_headers = w.case(send(200, (bp, 0), (hp, 0)));
    let mut s = settings("hc-local");
    s.limits.max_body_bytes = 16;
    let mut t = start(&w, s);
    for case in [status99, status600, with_pseudo, truncated, body_over_cap] {
        assert_eq!(t.case(case), BAD_ARGUMENT, "case {case}");
    }
    for case in [body_oob, headers_huge, details_oob] {
        assert_eq!(t.case(case), INVALID_MEMORY_ACCESS, "case {case}");
    }
    assert!(t.s().effects.local_response.is_none());
    assert_eq!(t.case(ok), OK);
    let r = t
        .s()
        .effects
        .local_response
        .clone()
        .expect("a local response");
    assert_eq!(r.status, 403);
    assert_eq!(
        lossy(&r.headers),
        owned(&[("x-why", "test"), ("x-two", "2")])
    );
    assert_eq!(&r.body[..], b"go away");
    assert_eq!(r.details, "denied-by-test");
    assert_eq!(t.case(no_headers), OK, "the last call wins");
    let r = t.s().effects.local_response.clone().unwrap();
    assert_eq!((r.status, r.headers.len(), r.body.len()), (200, 0, 0));
    t.assert_healthy();
}

/// The whole `details` range is checked against memory, though only 1 KiB of it is kept.
#[test]
fn send_local_response_checks_the_details_range() {
    let mut w = Wat::new();
    let (bp, bl) = w.str("body");
    let huge = w.case(c("local_response", &[403, DATA, HUGE, bp, bl, 0, 0, 0]));
    let past_end = w.case(c(
        "local_response",
        &[403, 2 * PAGE - 16, 0x20, bp, bl, 0, 0, 0],
    ));
    let mut t = start(&w, settings("hc-local-details"));
    assert_eq!(t.case(past_end), INVALID_MEMORY_ACCESS);
    assert_eq!(t.case(huge), INVALID_MEMORY_ACCESS);
    assert!(t.s().effects.local_response.is_none());
}

// ---------------------------------------------------------------------------------------------
// HTTP calls and gRPC.

fn callout_headers(w: &mut Wat, authority: bool) -> (u32, u32) {
    let mut h = vec![(":method", "GET"), (":path", "/ping"), ("x-call", "1")];
    if authority {
        h.push((":authority", "svc.local"));
    }
    w.bytes(&encode(&h))
}

#[test]
fn http_call_refusals() {
    let mut w = Wat::new();
    let (up, ul) = w.str("nope");
    let (hp, hl) = callout_headers(&mut w, true);
    let (np, nl) = callout_headers(&mut w, false);
    let bad = encode(&[("x a", "1")]);
    let (bp, bl) = w.bytes(&bad);
    let call = |u: (u32, u32), h: (u32, u32), body_len: u32, timeout: u32, ret: u32| {
        c(
            "http_call",
            &[u.0, u.1, h.0, h.1, DATA, body_len, 0, 0, timeout, ret],
        )
    };
    let unknown = w.case(call((up, ul), (hp, hl), 0, 1000, R3));
    let no_authority = w.case(call((up, ul), (np, nl), 0, 1000, R3));
    let bad_headers = w.case(call((up, ul), (bp, bl), 0, 1000, R3));
    let upstream_oob = w.case(call((OOB, 0x20), (hp, hl), 0, 1000, R3));
    let upstream_over_cap = w.case(call((0, 257), (hp, hl), 0, 1000, R3));
    let headers_huge = w.case(call((up, ul), (hp, HUGE), 0, 1000, R3));
    let body_huge = w.case(call((up, ul), (hp, hl), HUGE, 1000, R3));
    let token_oob = w.case(call((up, ul), (hp, hl), 0, 1000, OOB));
    let trailers_oob = w.case(c(
        "http_call",
        &[up, ul, hp, hl, DATA, 0, 0xFFFF_FFFF, 2, 1000, R3],
    ));
    let mut t = start(&w, settings("hc-callout-refused"));
    assert_eq!(t.case(unknown), BAD_ARGUMENT, "not in allowed_upstreams");
    assert_eq!(t.case(no_authority), BAD_ARGUMENT);
    assert_eq!(t.case(bad_headers), BAD_ARGUMENT);
    assert_eq!(t.case(upstream_over_cap), BAD_ARGUMENT);
    assert_eq!(t.case(upstream_oob), INVALID_MEMORY_ACCESS);
    assert_eq!(t.case(headers_huge), INVALID_MEMORY_ACCESS);
    assert_eq!(t.case(body_huge), INVALID_MEMORY_ACCESS);
    assert_eq!(t.case(token_oob), INVALID_MEMORY_ACCESS);
    assert_eq!(t.case(trailers_oob), INVALID_MEMORY_ACCESS);
    assert_eq!((t.s().callouts_made, t.s().pending_callouts), (0, 0));
    assert!(t.rx.try_recv().is_err(), "nothing was dispatched");
    t.assert_healthy();
}

/// One HTTP/1.1 exchange on a local port; returns the request the server read.
fn one_shot_server(
    response: &'static [u8],
) -> (std::net::SocketAddr, std::thread::JoinHandle<String>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut req = Vec::new();
        let mut buf = [0u8; 1024];
        while !req.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = conn.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            req.extend_from_slice(&buf[..n]);
        }
        conn.write_all(response).unwrap();
        String::from_utf8_lossy(&req).into_owned()
    });
    (addr, server)
}

#[test]
fn http_call_to_an_allowed_upstream() {
    let (addr, server) = one_shot_server(
        b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\nx-up: yes\r\nconnection: close\r\n\r\npong",
    );
    let pool = callout_pool("svc", addr);
    let mut w = Wat::new();
    let (up, ul) = w.str("svc");
    let (hp, hl) = callout_headers(&mut w, true);
    let call = w.case(c("http_call", &[up, ul, hp, hl, DATA, 0, 0, 0, 5000, R3]));
    let status = w.case(c("get_status", &[R3, RP, RL]));
    let body = w.case(c("get_buffer", &[4, 0, 100, RP, RL]));
    let (xp, xl) = w.str("x-up");
    let header = w.case(c("get_value", &[6, xp, xl, RP, RL]));
    let (vp, vl) = w.str("no");
    let write = w.case(c("add_value", &[6, xp, xl, vp, vl]));
    let set = w.case(c("set_pairs", &[7, hp, hl]));
    let mut s = settings("hc-callout");
    s.callout_targets.insert("svc".into(), pool);
    s.limits.max_callouts = 1;
    let mut t = start(&w, s);
    assert_eq!(t.case(call), OK);
    let token = t.u32_at(R3);
    assert_ne!(token, 0);
    assert_eq!((t.s().callouts_made, t.s().pending_callouts), (1, 1));
    assert_eq!(t.case(call), BAD_ARGUMENT, "max_callouts is 1");
    assert_eq!(t.s().callouts_made, 1);

    let deadline = Instant::now() + Duration::from_secs(10);
    let done = loop {
        match t.rx.try_recv() {
            Ok(done) => break done,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => panic!("no callout result: {e}"),
        }
    };
    let seen = server.join().unwrap();
    assert!(seen.starts_with("GET /ping HTTP/1.1\r\n"), "{seen}");
    assert!(
        seen.to_ascii_lowercase().contains("host: svc.local\r\n"),
        "{seen}"
    );
    assert!(seen.contains("x-call: 1\r\n"), "{seen}");
    assert_eq!((done.token, done.member), (token, 0));
    let response = done.response().cloned().expect("a response");
    assert_eq!(response.body, b"pong");
    assert_eq!(
        crate::wasm::stream::list_get(&response.headers, b":status"),
        Some(&b"200"[..])
    );

    // The response as the plugin sees it during on_http_call_response.
    t.callout = Some(response);
    assert_eq!(t.case(status), OK);
    assert_eq!((t.u32_at(R3), t.u32_at(RP), t.u32_at(RL)), (200, 0, 0));
    assert_eq!(t.case(body), OK);
    assert_eq!(t.returned_str(), "pong");
    assert_eq!(t.case(header), OK);
    assert_eq!(t.returned_str(), "yes");
    assert_eq!(t.case(write), BAD_ARGUMENT, "callout maps are read-only");
    assert_eq!(t.case(set), BAD_ARGUMENT);
    t.assert_healthy();
}

/// gRPC calls are judged before anything is sent: an upstream the plugin may not call is
/// PARSE_FAILURE (an unknown cluster on Envoy), an HTTP/1.1 one INTERNAL_FAILURE, pseudo-header
/// metadata and names that cannot go into a path BAD_ARGUMENT; tokens of no call are
/// NOT_FOUND. Foreign functions are UNIMPLEMENTED.
#[test]
fn grpc_arguments_are_judged_and_foreign_functions_are_unimplemented() {
    let mut w = Wat::new();
    let (gp, gl) = w.str("grpc");
    let (hp, hl) = w.str("plain");
    let (np, nl) = w.str("nowhere");
    let (sp, sl) = w.str("test.Echo");
    let (bp, bl) = w.str("bad/name");
    let (mp, ml) = w.str("Unary");
    let empty = map::encode(Vec::<(&[u8], &[u8])>::new()).unwrap();
    let (ep, el) = w.bytes(&empty);
    let pseudo = map::encode(vec![(&b":path"[..], &b"/x"[..])]).unwrap();
    let (pp, pl) = w.bytes(&pseudo);
    let (xp, xl) = w.str("msg");
    let call = |w: &mut Wat, up: (u32, u32), svc: (u32, u32), md: (u32, u32)| {
        w.case(c(
            "grpc_call",
            &[
                up.0, up.1, svc.0, svc.1, mp, ml, md.0, md.1, xp, xl, 1000, R3,
            ],
        ))
    };
    let not_allowed = call(&mut w, (np, nl), (sp, sl), (ep, el));
    let http1 = call(&mut w, (hp, hl), (sp, sl), (ep, el));
    let bad_service = call(&mut w, (gp, gl), (bp, bl), (ep, el));
    let pseudo_md = call(&mut w, (gp, gl), (sp, sl), (pp, pl));
    let stream_not_allowed = w.case(c("grpc_stream", &[np, nl, sp, sl, mp, ml, ep, el, R3]));
    let cases_not_found = [
        w.case(c("grpc_send", &[77, xp, xl, 0])),
        w.case(c("grpc_cancel", &[77])),
        w.case(c("grpc_close", &[77])),
    ];
    let foreign = w.case(c("foreign", &[DATA, 4, DATA, 4, RP, RL]));
    let mut s = settings("hc-grpc");
    let addr: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    s.callout_targets.insert(
        "grpc".into(),
        pool_speaking("grpc", addr, TargetProtocol::H2),
    );
    s.callout_targets.insert(
        "plain".into(),
        pool_speaking("plain", addr, TargetProtocol::Http1),
    );
    let mut t = start(&w, s);
    const PARSE_FAILURE: u32 = 4;
    const INTERNAL_FAILURE: u32 = 10;
    assert_eq!(t.case(not_allowed), PARSE_FAILURE);
    assert_eq!(t.case(stream_not_allowed), PARSE_FAILURE);
    assert_eq!(t.case(http1), INTERNAL_FAILURE);
    assert_eq!(t.case(bad_service), BAD_ARGUMENT);
    assert_eq!(t.case(pseudo_md), BAD_ARGUMENT);
    for case in cases_not_found {
        assert_eq!(t.case(case), NOT_FOUND, "case {case}");
    }
    assert_eq!(t.case(foreign), UNIMPLEMENTED);
    assert_eq!(t.s().callouts_made, 0, "nothing refused was counted");
    t.assert_healthy();
}

// ---------------------------------------------------------------------------------------------
// Guests that break the ABI or run away.

/// Runs a `get_value` whose result needs the allocator `malloc`.
fn with_allocator(name: &str, malloc: &str, memory_bytes: usize) -> GuestError {
    let mut w = Wat::new();
    w.malloc = malloc.to_string();
    let (fp, fl) = w.str("x-foo");
    let empty = w.case(c("get_buffer", &[7, 0, 0, RP, RL]));
    let get = w.case(c("get_value", &[0, fp, fl, RP, RL]));
    let mut s = settings(name);
    s.limits.memory_bytes = memory_bytes;
    let mut t = start(&w, s);
    assert_eq!(t.case(empty), OK, "nothing to hand back: no allocation");
    assert_eq!((t.u32_at(RP), t.u32_at(RL)), (0, 0));
    let e = t.fails(get);
    assert!(t.vm.is_failed());
    let again = t.fails(empty);
    assert_eq!(
        again.kind,
        ErrorKind::Lost,
        "a failed VM is not entered again"
    );
    e
}

#[test]
fn allocator_returning_zero_is_an_abi_error() {
    let e = with_allocator(
        "hc-alloc-zero",
        r#"(func (export "malloc") (param i32) (result i32) (i32.const 0))"#,
        64 << 20,
    );
    assert_eq!(e.kind, ErrorKind::Abi, "{e}");
    assert!(e.message.contains("returned 0 for 3 bytes"), "{e}");
}

#[test]
fn allocator_returning_a_pointer_outside_memory_is_an_abi_error() {
    for (name, ptr) in [
        ("hc-alloc-far", 0xFFFF_0000u32),
        ("hc-alloc-edge", 2 * PAGE - 2),
    ] {
        let e = with_allocator(
            name,
            &format!(r#"(func (export "malloc") (param i32) (result i32) (i32.const {ptr:#x}))"#),
            64 << 20,
        );
        assert_eq!(e.kind, ErrorKind::Abi, "{e}");
        assert!(e.message.contains("outside its memory"), "{e}");
    }
}

#[test]
fn allocator_refused_memory_is_a_memory_error() {
    let e = with_allocator(
        "hc-alloc-memory",
        r#"(func (export "malloc") (param i32) (result i32)
             (if (i32.eq (memory.grow (i32.const 1)) (i32.const -1)) (then (return (i32.const 0))))
             (i32.const 0x20000))"#,
        2 * PAGE as usize,
    );
    assert_eq!(e.kind, ErrorKind::Memory, "{e}");
}

#[test]
fn allocator_trap_is_a_trap() {
    let e = with_allocator(
        "hc-alloc-trap",
        r#"(func (export "malloc") (param i32) (result i32) unreachable)"#,
        64 << 20,
    );
    assert_eq!(e.kind, ErrorKind::Trap, "{e}");
}

#[test]
fn proc_exit_in_a_callback_traps() {
    let mut w = Wat::new();
    let exit = w.case("(block (result i32) (call $proc_exit (i32.const 7)) (i32.const 0))".into());
    let mut t = start(&w, settings("hc-exit"));
    let e = t.fails(exit);
    assert_eq!(e.kind, ErrorKind::Trap, "{e}");
    assert!(e.message.contains("proc_exit(7)"), "{e}");
    assert!(t.vm.is_failed());
}

const SPIN: &str = "(block (result i32) (loop $l (br $l)) (i32.const 0))";

#[test]
fn endless_loop_runs_out_of_fuel() {
    let mut w = Wat::new();
    let spin = w.case(SPIN.into());
    let mut s = settings("hc-fuel");
    s.limits.fuel = 100_000;
    let mut t = start(&w, s);
    let e = t.fails(spin);
    assert_eq!(e.kind, ErrorKind::Fuel, "{e}");
    assert!(t.vm.is_failed());
}

#[test]
fn endless_loop_hits_the_deadline() {
    let mut w = Wat::new();
    let spin = w.case(SPIN.into());
    let mut s = settings("hc-deadline");
    s.limits.fuel = u64::MAX;
    s.limits.timeout = Duration::from_millis(5);
    let mut t = start(&w, s);
    let started = Instant::now();
    let e = t.fails(spin);
    assert_eq!(e.kind, ErrorKind::Timeout, "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(t.vm.is_failed());
}

#[test]
fn memory_growth_past_the_cap_is_refused_in_the_guest() {
    let mut w = Wat::new();
    let grow = w.case("(memory.grow (i32.const 1))".into());
    let mut s = settings("hc-grow");
    s.limits.memory_bytes = 3 * PAGE as usize;
    let mut t = start(&w, s);
    assert_eq!(t.case(grow), 2, "2 → 3 pages is allowed");
    assert_eq!(t.case(grow), u32::MAX, "a fourth page is refused: -1");
    assert_eq!(t.vm.memory_bytes(), 3 * PAGE as usize);
    t.assert_healthy();
}

#[test]
fn a_module_without_the_abi_marker_is_refused() {
    let mut w = Wat::new();
    w.abi_marker = false;
    let err = load(&w, settings("hc-no-abi")).err().expect("refused");
    assert!(
        matches!(&err, PluginError::Start { error: VmError::Module(m), .. } if m.contains("proxy_abi_version_0_2_1")),
        "{err}"
    );
    assert!(err.to_string().contains("hc-no-abi"), "{err}");
}

#[test]
fn a_module_without_an_allocator_is_refused() {
    let mut w = Wat::new();
    w.malloc = String::new();
    let err = load(&w, settings("hc-no-malloc")).err().expect("refused");
    assert!(
        matches!(&err, PluginError::Start { error: VmError::Module(m), .. } if m.contains("malloc")),
        "{err}"
    );
}

#[test]
fn on_configure_false_refuses_the_plugin() {
    let mut w = Wat::new();
    w.extra =
        r#"(func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 0))"#.into();
    let err = load(&w, settings("hc-refuse")).err().expect("refused");
    assert!(
        matches!(
            &err,
            PluginError::Start {
                error: VmError::Refused("proxy_on_configure"),
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn unloading_a_plugin_ends_each_root_context() {
    // on_done / on_delete record the context id they got in shared data ("done", "delete").
    let mut w = Wat::new();
    let (done_key, done_len) = w.str("done");
    let (delete_key, delete_len) = w.str("delete");
    let record = |key: u32, len: u32| {
        format!(
            "(i32.store (i32.const 0x180) (local.get $ctx)) \
             (drop (call $set_shared (i32.const {key}) (i32.const {len}) (i32.const 0x180) \
             (i32.const 4) (i32.const 0)))"
        )
    };
    w.extra = format!(
        "  (func (export \"proxy_on_done\") (param $ctx i32) (result i32) {} (i32.const 1))\n\
         \x20 (func (export \"proxy_on_delete\") (param $ctx i32) {})\n",
        record(done_key, done_len),
        record(delete_key, delete_len)
    );
    let mut s = settings("hc-unload");
    s.vms = 2;
    // Both VMs must run for both root contexts to end.
    s.vm_start.all_at_load = true;
    let plugin = load(&w, s).unwrap_or_else(|e| panic!("{e}"));
    let root: u32 = 1; // the root context id Sluice gives every VM
    let ns = crate::wasm::shared::namespace("hc-unload.vm", None);
    let get = |k: &[u8]| ns.get(k).expect("in-process shared data");
    assert_eq!(get(b"done"), None, "on_done before the plugin was unloaded");
    // A request context ends with on_done/on_delete of its own id, not the root's.
    let vm = plugin.pick().unwrap();
    let ctx = vm.create_context().unwrap();
    vm.finish_context(ctx);
    drop(vm);
    assert_eq!(
        get(b"done").map(|(v, _)| v),
        Some(ctx.to_le_bytes().to_vec())
    );
    drop(plugin);
    // Both VMs' root contexts were ended (the version counts the writes: one for the
    // request context, one per VM for the root).
    let (done, done_cas) = get(b"done").unwrap();
    let (delete, delete_cas) = get(b"delete").unwrap();
    assert_eq!(done, root.to_le_bytes().to_vec());
    assert_eq!(delete, root.to_le_bytes().to_vec());
    assert_eq!((done_cas, delete_cas), (3, 3));
}

/// Property: for random requests carrying the sensitive headers (random casings, repeated
/// values) and random grants, a plugin never reads a header it was not granted — through the
/// pairs, a lookup in any casing, or the `request.headers` property — and never changes one;
/// with the grant it sees exactly what the client sent, in order.
#[test]
fn sanitizing_holds_for_random_requests_and_grants() {
    use crate::wasm::sanitize::{ADDRESS_HEADERS, CREDENTIAL_HEADERS};
    let sensitive: Vec<&str> = CREDENTIAL_HEADERS
        .iter()
        .chain(ADDRESS_HEADERS)
        .copied()
        .collect();
    let mut rng = fastrand::Rng::with_seed(0x5a1c_e5a1);
    let casing = |rng: &mut fastrand::Rng, s: &str| -> String {
        s.chars()
            .map(|c| {
                if rng.bool() {
                    c.to_ascii_uppercase()
                } else {
                    c
                }
            })
            .collect()
    };
    for round in 0..40 {
        // The client's request.
        let mut headers: Vec<(String, String)> = vec![
            (":method".into(), "GET".into()),
            (":path".into(), "/p".into()),
            (":authority".into(), "example.com".into()),
            (":scheme".into(), "http".into()),
        ];
        for i in 0..rng.usize(0..4) {
            headers.push((format!("x-plain-{i}"), format!("v{}", rng.u32(..))));
        }
        for s in &sensitive {
            if rng.bool() {
                for _ in 0..rng.usize(1..4) {
                    headers.push((casing(&mut rng, s), format!("secret-{}", rng.u32(..))));
                }
            }
        }
        rng.shuffle(&mut headers[4..]);
        let granted: Vec<&str> = sensitive
            .iter()
            .filter(|_| rng.u8(..4) == 0)
            .copied()
            .collect();
        let sent = |name: &str| -> Vec<String> {
            headers
                .iter()
                .filter(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
                .collect()
        };

        // The plugin: read everything every way, then try every write, on every name.
        let mut w = Wat::new();
        let pairs = w.case(c("get_pairs", &[0, RP, RL]));
        let (pp, pl) = w.bytes(b"request\0headers");
        let property = w.case(c("get_property", &[pp, pl, RP, RL]));
        let (fp, fl) = w.str("forged");
        let mut per_name = Vec::new();
        for s in &sensitive {
            let (np, nl) = w.str(&casing(&mut rng, s));
            per_name.push((
                *s,
                w.case(c("get_value", &[0, np, nl, RP, RL])),
                [
                    w.case(c("replace_value", &[0, np, nl, fp, fl])),
                    w.case(c("add_value", &[0, np, nl, fp, fl])),
                    w.case(c("remove_value", &[0, np, nl])),
                ],
            ));
        }
        let mut s = settings(&format!("hc-sanitize-{round}"));
        s.sanitizer = Sanitizer::new(
            &granted.iter().map(|g| g.to_string()).collect::<Vec<_>>(),
            &[],
        );
        let mut t = start(&w, s);
        let stream = t.s();
        stream.request_headers = headers
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect();
        let ctx = format!("round {round}: sent {headers:?}, granted {granted:?}");

        for (how, case) in [("pairs", pairs), ("request.headers", property)] {
            assert_eq!(t.case(case), OK, "{how}: {ctx}");
            let seen = decode(&t.returned());
            for name in &sensitive {
                let values: Vec<String> = seen
                    .iter()
                    .filter(|(k, _)| k.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v.clone())
                    .collect();
                if granted.contains(name) {
                    assert_eq!(values, sent(name), "{how} of granted {name}: {ctx}");
                } else {
                    assert!(values.is_empty(), "{how} showed {name}: {ctx}");
                }
            }
        }
        for (name, get, _) in &per_name {
            let status = t.case(*get);
            match (granted.contains(name), sent(name).first()) {
                (true, Some(first)) => {
                    assert_eq!(status, OK, "get {name}: {ctx}");
                    assert_eq!(&t.returned_str(), first, "get {name}: {ctx}");
                }
                _ => assert_eq!(status, NOT_FOUND, "get {name}: {ctx}"),
            }
        }
        let hidden = |t: &mut T| -> Vec<(String, String)> {
            lossy(&t.s().request_headers)
                .into_iter()
                .filter(|(k, _)| {
                    sensitive
                        .iter()
                        .any(|s| k.eq_ignore_ascii_case(s) && !granted.contains(s))
                })
                .collect()
        };
        let hidden_before = hidden(&mut t);
        for (name, _, writes) in &per_name {
            for w in writes {
                let status = t.case(*w);
                if granted.contains(name) {
                    assert_eq!(status, OK, "write to granted {name}: {ctx}");
                } else {
                    assert_eq!(status, BAD_ARGUMENT, "write to hidden {name}: {ctx}");
                }
            }
        }
        let hidden_after = hidden(&mut t);
        assert_eq!(
            hidden_after, hidden_before,
            "a hidden header changed: {ctx}"
        );
        t.assert_healthy();
    }
}

// =============================================================================================
// Envoy's further properties (issue 13, item 7): request sizes, duration, referer and user
// agent; response details, flags, gRPC status, trailers and sizes; SNI and TLS versions;
// upstream port and TLS; node and listener direction. Values are asserted byte for byte.
// =============================================================================================

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
fn request_referer_useragent_sizes_and_duration() {
    let visible: usize = VISIBLE.iter().map(|(k, v)| k.len() + v.len()).sum();
    assert_eq!(visible as u64, VISIBLE_BYTES);
    let mut w = Wat::new();
    let [referer, useragent, size, total, duration] = property_cases(
        &mut w,
        &[
            &["request", "referer"],
            &["request", "useragent"],
            &["request", "size"],
            &["request", "total_size"],
            &["request", "duration"],
        ],
    )[..] else {
        unreachable!()
    };
    let mut t = start(&w, settings("hc-props-request"));
    // Nothing known yet: no such headers, no body, not complete.
    assert_eq!(t.prop(referer), Err(NOT_FOUND));
    assert_eq!(t.prop(useragent), Err(NOT_FOUND));
    assert_eq!(t.prop(size), Ok(0u64.to_le_bytes().to_vec()));
    assert_eq!(t.prop(total), Ok(VISIBLE_BYTES.to_le_bytes().to_vec()));
    assert_eq!(t.prop(duration), Err(NOT_FOUND), "the request is not over");

    // From the headers; repeated ones joined by `,` as on Envoy.
    let h = &mut t.s().request_headers;
    add_header(h, "Referer", "https://example.org/from");
    add_header(h, "user-agent", "curl/8.5.0");
    add_header(h, "User-Agent", "second");
    assert_eq!(t.prop(referer), Ok(b"https://example.org/from".to_vec()));
    assert_eq!(t.prop(useragent), Ok(b"curl/8.5.0,second".to_vec()));

    // The body so far, counted chunk by chunk; total = body + visible header bytes.
    t.s().info.add_request_body(5);
    t.s().info.add_request_body(7);
    assert_eq!(t.prop(size), Ok(12u64.to_le_bytes().to_vec()));
    let added = ("Referer".len()
        + "https://example.org/from".len()
        + 2 * "user-agent".len()
        + "curl/8.5.0".len()
        + "second".len()) as u64;
    assert_eq!(
        t.prop(total),
        Ok((12 + VISIBLE_BYTES + added).to_le_bytes().to_vec())
    );
    // A content-length wins (Envoy's rule); one that is not a number is no size.
    add_header(&mut t.s().request_headers, "content-length", " 100 ");
    assert_eq!(t.prop(size), Ok(100u64.to_le_bytes().to_vec()));
    crate::wasm::stream::list_replace(&mut t.s().request_headers, b"content-length", b"1e3");
    assert_eq!(t.prop(size), Err(NOT_FOUND));
    crate::wasm::stream::list_remove(&mut t.s().request_headers, b"content-length");
    assert_eq!(t.prop(size), Ok(12u64.to_le_bytes().to_vec()));

    // The duration: int64 nanoseconds, once the request is complete; the first end counts.
    t.s().info.duration = Some(Duration::from_nanos(1_234_567_890));
    assert_eq!(
        t.prop(duration),
        Ok(vec![0xd2, 0x02, 0x96, 0x49, 0, 0, 0, 0]),
        "1234567890 ns, 8 bytes little-endian"
    );
    let info = &mut t.s().info;
    info.duration = None;
    info.start = Instant::now().checked_sub(Duration::from_millis(50));
    info.complete();
    let took = info.duration.expect("complete() sets the duration");
    assert!(took >= Duration::from_millis(50), "{took:?}");
    info.complete();
    assert_eq!(info.duration, Some(took), "only the first end counts");
    let want = i64::try_from(took.as_nanos()).unwrap();
    assert_eq!(t.prop(duration), Ok(want.to_le_bytes().to_vec()));
    // Without a start there is no duration.
    let info = &mut t.s().info;
    info.duration = None;
    info.start = None;
    info.complete();
    assert_eq!(t.prop(duration), Err(NOT_FOUND));
    t.assert_healthy();
}

#[test]
fn response_details_flags_grpc_status_trailers_and_sizes() {
    let mut w = Wat::new();
    let [details, flags, grpc, trailers, size, total, code] = property_cases(
        &mut w,
        &[
            &["response", "code_details"],
            &["response", "flags"],
            &["response", "grpc_status"],
            &["response", "trailers"],
            &["response", "size"],
            &["response", "total_size"],
            &["response", "code"],
        ],
    )[..] else {
        unreachable!()
    };
    let mut t = start(&w, settings("hc-props-response"));
    // No response yet: only the flags exist (none set).
    assert_eq!(t.prop(details), Err(NOT_FOUND));
    assert_eq!(t.prop(flags), Ok(vec![0; 8]));
    assert_eq!(t.prop(grpc), Err(NOT_FOUND));
    assert_eq!(t.prop(trailers), Err(NOT_FOUND));
    assert_eq!(t.prop(size), Err(NOT_FOUND));
    assert_eq!(t.prop(total), Err(NOT_FOUND));
    assert_eq!(t.prop(code), Err(NOT_FOUND));

    let info = &mut t.s().info;
    info.add_response_flag(RequestInfo::FLAG_UPSTREAM_CONNECTION_FAILURE);
    info.add_response_flag(RequestInfo::FLAG_NO_HEALTHY_UPSTREAM);
    info.add_response_flag(RequestInfo::FLAG_UPSTREAM_CONNECTION_FAILURE);
    info.set_code_details("upstream_reset_before_response_started");
    info.set_code_details("via_upstream");
    assert_eq!(t.prop(flags), Ok(vec![0x22, 0, 0, 0, 0, 0, 0, 0]));
    assert_eq!(
        t.prop(details),
        Ok(b"via_upstream".to_vec()),
        "the last one wins"
    );

    // The response header phase: no trailers (yet) is an empty map, 4 zero bytes.
    t.s().response_headers = header_list(&[
        (":status", "200"),
        ("content-type", "application/grpc"),
        ("grpc-status", "3"),
    ]);
    assert_eq!(t.prop(trailers), Ok(vec![0, 0, 0, 0]));
    assert_eq!(
        t.prop(grpc),
        Ok(3i64.to_le_bytes().to_vec()),
        "from the headers"
    );
    let head = (":status".len() + 3 + "content-type".len() + 16 + "grpc-status".len() + 1) as u64;
    assert_eq!(t.prop(size), Ok(vec![0; 8]));
    assert_eq!(t.prop(total), Ok(head.to_le_bytes().to_vec()));
    t.s().info.add_response_body(1000);
    t.s().info.add_response_body(24);
    assert_eq!(t.prop(size), Ok(1024u64.to_le_bytes().to_vec()));
    assert_eq!(t.prop(total), Ok((1024 + head).to_le_bytes().to_vec()));

    // Trailers: their grpc-status wins over the headers'; they count in the total size.
    t.s().response_trailers = header_list(&[("grpc-status", "14"), ("grpc-message", "down")]);
    assert_eq!(t.prop(grpc), Ok(14i64.to_le_bytes().to_vec()));
    assert_eq!(
        t.prop(trailers),
        Ok(encode(&[("grpc-status", "14"), ("grpc-message", "down")]))
    );
    let tail = ("grpc-status".len() + 2 + "grpc-message".len() + 4) as u64;
    assert_eq!(
        t.prop(total),
        Ok((1024 + head + tail).to_le_bytes().to_vec())
    );
    // What Envoy cannot read as a status is -1 (InvalidCode); an empty value is no status.
    for (bad, want) in [("17", -1i64), ("x", -1), ("-2", -1), ("16", 16), ("0", 0)] {
        t.s().response_trailers = header_list(&[("grpc-status", bad)]);
        assert_eq!(t.prop(grpc), Ok(want.to_le_bytes().to_vec()), "{bad:?}");
    }
    assert_eq!((-1i64).to_le_bytes(), [0xff; 8]);
    t.s().response_trailers = header_list(&[("grpc-status", "")]);
    assert_eq!(
        t.prop(grpc),
        Ok(3i64.to_le_bytes().to_vec()),
        "falls back to the headers"
    );
    t.s().response_headers = header_list(&[(":status", "200")]);
    assert_eq!(t.prop(grpc), Err(NOT_FOUND), "not a gRPC response");

    // A response known only by its status (a local answer) has sizes but no header bytes.
    t.s().response_headers.clear();
    t.s().response_trailers.clear();
    assert_eq!(t.prop(size), Err(NOT_FOUND));
    t.s().info.response_code = Some(503);
    assert_eq!(t.prop(size), Ok(1024u64.to_le_bytes().to_vec()));
    assert_eq!(t.prop(total), Ok(1024u64.to_le_bytes().to_vec()));
    assert_eq!(t.prop(trailers), Ok(vec![0, 0, 0, 0]));
    t.assert_healthy();
}

#[test]
fn connection_and_upstream_tls_sni_and_port() {
    let paths: &[&[&str]] = &[
        &["connection", "requested_server_name"],
        &["connection", "tls_version"],
        &["connection", "mtls"],
        &["connection", "tls"],
        &["upstream", "port"],
        &["upstream", "tls_version"],
        &["upstream", "address"],
    ];
    let mut w = Wat::new();
    let [sni, tls_version, mtls, tls, port, up_tls, up_addr] = property_cases(&mut w, paths)[..]
    else {
        unreachable!()
    };
    let mut t = start(&w, settings("hc-props-conn"));
    // Plain HTTP, no upstream chosen yet.
    assert_eq!(t.prop(sni), Err(NOT_FOUND));
    assert_eq!(t.prop(tls_version), Err(NOT_FOUND));
    assert_eq!(t.prop(mtls), Ok(vec![0]));
    assert_eq!(t.prop(tls), Ok(vec![0]));
    assert_eq!(t.prop(port), Err(NOT_FOUND));
    assert_eq!(t.prop(up_tls), Err(NOT_FOUND));

    let info = &mut t.s().info;
    info.tls = true;
    info.requested_server_name = Some("api.example.com".into());
    info.tls_version = RequestInfo::tls_version_name("TLSv1_3");
    assert_eq!(t.prop(sni), Ok(b"api.example.com".to_vec()));
    assert_eq!(t.prop(tls_version), Ok(b"TLSv1.3".to_vec()));
    assert_eq!(t.prop(tls), Ok(vec![1]));
    assert_eq!(t.prop(mtls), Ok(vec![0]), "no client certificates yet");

    t.s().info.upstream_address = Some("10.0.0.7:8443".into());
    assert_eq!(t.prop(port), Ok(8443u64.to_le_bytes().to_vec()));
    t.s().info.upstream_address = Some("[::1]:9000".into());
    assert_eq!(t.prop(port), Ok(9000u64.to_le_bytes().to_vec()));
    assert_eq!(
        t.prop(up_tls),
        Err(NOT_FOUND),
        "a plain upstream connection"
    );
    t.s().info.set_upstream_tls_version("TLSv1_2");
    assert_eq!(t.prop(up_tls), Ok(b"TLSv1.2".to_vec()));

    // rustls' names, as OpenSSL (and so Envoy) spells them.
    for (rustls, want) in [
        ("TLSv1_0", Some("TLSv1")),
        ("TLSv1_1", Some("TLSv1.1")),
        ("TLSv1_2", Some("TLSv1.2")),
        ("TLSv1_3", Some("TLSv1.3")),
        ("", None),
        ("TLSv9_9", None),
    ] {
        assert_eq!(RequestInfo::tls_version_name(rustls), want, "{rustls:?}");
    }
    t.assert_healthy();

    // Without Sluice-only properties every `upstream.*` is absent, like `upstream.address`.
    let mut s = settings("hc-props-conn-portable");
    s.sluice_properties = false;
    let mut p = start(&w, s);
    let info = &mut p.s().info;
    info.upstream_address = Some("10.0.0.7:8443".into());
    info.set_upstream_tls_version("TLSv1_3");
    for case in [port, up_tls, up_addr] {
        assert_eq!(p.prop(case), Err(NOT_FOUND), "case {case}");
    }
    p.assert_healthy();
}

/// The host name as `node.id` should give it, read here on its own.
fn host_name() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .chain(std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .find(|h| !h.is_empty())
        .unwrap_or_else(|| "sluice".into())
}

#[test]
fn node_and_listener_direction_also_in_the_root_context() {
    let id = host_name();
    let version = env!("CARGO_PKG_VERSION");
    // `node` as Envoy serializes its Node message: id (1), user_agent_name (6),
    // user_agent_version (7), each tag, length, bytes.
    let mut node = vec![0x0a, u8::try_from(id.len()).unwrap()];
    node.extend_from_slice(id.as_bytes());
    node.extend_from_slice(&[0x32, 6]);
    node.extend_from_slice(b"sluice");
    node.extend_from_slice(&[0x3a, u8::try_from(version.len()).unwrap()]);
    node.extend_from_slice(version.as_bytes());

    let mut w = Wat::new();
    let paths: &[&[&str]] = &[
        &["node", "id"],
        &["node", "user_agent_name"],
        &["node", "user_agent_version"],
        &["node"],
        &["listener_direction"],
        &["node", "cluster"],
        &["node", "metadata", "NAME"],
        &["request", "path"],
    ];
    let cases = property_cases(&mut w, paths);
    // In the root context: `proxy_on_configure` reads every path into a table.
    let body = property_table(&mut w, paths);
    w.extra = format!(
        "  (func (export \"proxy_on_configure\") (param $root i32) (param $len i32) \
         (result i32){body}\n    (i32.const 1))\n"
    );
    let (xp, xl) = w.bytes(&path(&["node", "x"]));
    let (vp, vl) = w.str("v");
    let set_node = w.case(c("set_property", &[xp, xl, vp, vl]));
    let (dp, dl) = w.bytes(&path(&["listener_direction"]));
    let set_direction = w.case(c("set_property", &[dp, dl, vp, vl]));
    let mut t = start(&w, settings("hc-props-node"));

    let want: Vec<Result<Vec<u8>, u32>> = vec![
        Ok(id.clone().into_bytes()),
        Ok(b"sluice".to_vec()),
        Ok(version.as_bytes().to_vec()),
        Ok(node.clone()),
        Ok(1u64.to_le_bytes().to_vec()),
        Err(NOT_FOUND),
        Err(NOT_FOUND),
    ];
    for (i, expected) in want.iter().enumerate() {
        let slot = u32::try_from(i).unwrap();
        let got = match t.u32_at(0x200 + 4 * slot) {
            OK => Ok(t.returned_at(0x280 + 8 * slot, 0x284 + 8 * slot)),
            s => Err(s),
        };
        assert_eq!(&got, expected, "root context: {:?}", paths[i]);
        assert_eq!(
            &t.prop(cases[i]),
            expected,
            "stream context: {:?}",
            paths[i]
        );
    }
    assert_eq!(
        t.u32_at(0x200 + 4 * 7),
        NOT_FOUND,
        "no request in the root context"
    );
    assert_eq!(t.prop(cases[7]), Ok(b"/a/b?x=1".to_vec()));
    // Outside a request, too.
    let r = t.vm.call_stream(
        t.ctx,
        StreamCall::RequestHeaders(cases[4], false),
        &mut None,
        0,
        &t.sink,
        None,
    );
    assert_eq!(r.unwrap(), OK);
    // Read-only, like every well-known root.
    assert_eq!(t.case(set_node), BAD_ARGUMENT);
    assert_eq!(t.case(set_direction), BAD_ARGUMENT);
    t.assert_healthy();
}

/// Every property of this section.
const NEW_PROPERTIES: &[&[&str]] = &[
    &["request", "referer"],
    &["request", "useragent"],
    &["request", "duration"],
    &["request", "size"],
    &["request", "total_size"],
    &["response", "code_details"],
    &["response", "flags"],
    &["response", "grpc_status"],
    &["response", "trailers"],
    &["response", "size"],
    &["response", "total_size"],
    &["connection", "requested_server_name"],
    &["connection", "tls_version"],
    &["connection", "mtls"],
    &["upstream", "port"],
    &["upstream", "tls_version"],
    &["node"],
    &["node", "id"],
    &["node", "user_agent_name"],
    &["node", "user_agent_version"],
    &["listener_direction"],
];

#[test]
fn in_on_log_after_a_client_disconnect_what_is_known_is_readable() {
    let mut w = Wat::new();
    // `proxy_on_log` reads every property into a table.
    let body = property_table(&mut w, NEW_PROPERTIES);
    w.extra = format!("  (func (export \"proxy_on_log\") (param $ctx i32){body})\n");
    let log = |t: &mut T| -> HashMap<String, Result<Vec<u8>, u32>> {
        t.vm.call_stream(t.ctx, StreamCall::Log, &mut t.stream, 0, &t.sink, None)
            .expect("on_log");
        let mut out = HashMap::new();
        for (i, p) in NEW_PROPERTIES.iter().enumerate() {
            let i = u32::try_from(i).unwrap();
            let v = match t.u32_at(0x200 + 4 * i) {
                OK => Ok(t.returned_at(0x280 + 8 * i, 0x284 + 8 * i)),
                s => Err(s),
            };
            out.insert(p.join("."), v);
        }
        out
    };
    let int = |v: u64| -> Result<Vec<u8>, u32> { Ok(v.to_le_bytes().to_vec()) };

    // The client sent its head and 3 body bytes, then left: no response.
    let mut t = start(&w, settings("hc-props-log"));
    add_header(&mut t.s().request_headers, "user-agent", "ua");
    let info = &mut t.s().info;
    info.start = Some(Instant::now());
    info.add_request_body(3);
    info.add_response_flag(RequestInfo::FLAG_DOWNSTREAM_CONNECTION_TERMINATION);
    info.set_code_details("downstream_remote_disconnect");
    info.complete();
    let got = log(&mut t);
    let duration = t.s().info.duration.unwrap().as_nanos() as u64;
    let head = VISIBLE_BYTES + ("user-agent".len() + 2) as u64;
    for (name, want) in [
        ("request.referer", Err(NOT_FOUND)),
        ("request.useragent", Ok(b"ua".to_vec())),
        ("request.duration", int(duration)),
        ("request.size", int(3)),
        ("request.total_size", int(3 + head)),
        (
            "response.code_details",
            Ok(b"downstream_remote_disconnect".to_vec()),
        ),
        ("response.flags", int(0x4000)),
        ("response.grpc_status", Err(NOT_FOUND)),
        ("response.trailers", Err(NOT_FOUND)),
        ("response.size", Err(NOT_FOUND)),
        ("response.total_size", Err(NOT_FOUND)),
        ("connection.requested_server_name", Err(NOT_FOUND)),
        ("connection.tls_version", Err(NOT_FOUND)),
        ("connection.mtls", Ok(vec![0])),
        ("upstream.port", Err(NOT_FOUND)),
        ("upstream.tls_version", Err(NOT_FOUND)),
        ("node.user_agent_name", Ok(b"sluice".to_vec())),
        ("listener_direction", int(1)),
    ] {
        assert_eq!(got[name], want, "{name}");
    }
    assert_eq!(got.len(), NEW_PROPERTIES.len());
    t.assert_healthy();

    // A complete exchange over TLS with a TLS upstream: every fact is there in on_log.
    let mut t = start(&w, settings("hc-props-log-full"));
    let s = t.s();
    add_header(&mut s.request_headers, "referer", "r");
    s.response_headers = header_list(&[(":status", "200"), ("grpc-status", "0")]);
    s.response_trailers = header_list(&[("x-t", "1")]);
    let info = &mut s.info;
    info.start = Some(Instant::now());
    info.tls = true;
    info.requested_server_name = Some("sni.test".into());
    info.tls_version = Some("TLSv1.3");
    info.upstream_address = Some("127.0.0.1:8443".into());
    info.set_upstream_tls_version("TLSv1_3");
    info.add_request_body(10);
    info.response_code = Some(200);
    info.set_code_details("via_upstream");
    info.add_response_body(20);
    info.complete();
    let got = log(&mut t);
    let duration = t.s().info.duration.unwrap().as_nanos() as u64;
    let head = VISIBLE_BYTES + ("referer".len() + 1) as u64;
    let response_head = (":status".len() + 3 + "grpc-status".len() + 1) as u64;
    for (name, want) in [
        ("request.referer", Ok(b"r".to_vec())),
        ("request.useragent", Err(NOT_FOUND)),
        ("request.duration", int(duration)),
        ("request.size", int(10)),
        ("request.total_size", int(10 + head)),
        ("response.code_details", Ok(b"via_upstream".to_vec())),
        ("response.flags", int(0)),
        ("response.grpc_status", int(0)),
        ("response.trailers", Ok(encode(&[("x-t", "1")]))),
        ("response.size", int(20)),
        ("response.total_size", int(20 + response_head + 4)),
        ("connection.requested_server_name", Ok(b"sni.test".to_vec())),
        ("connection.tls_version", Ok(b"TLSv1.3".to_vec())),
        ("upstream.port", int(8443)),
        ("upstream.tls_version", Ok(b"TLSv1.3".to_vec())),
    ] {
        assert_eq!(got[name], want, "{name}");
    }
    t.assert_healthy();
}

#[test]
fn new_properties_answer_ok_or_not_found_and_keep_hidden_things_hidden() {
    let mut w = Wat::new();
    let cases = property_cases(&mut w, NEW_PROPERTIES);
    let [ua, referer, grpc, trailers, req_total, resp_total, headers, resp_headers, address, port] =
        property_cases(
            &mut w,
            &[
                &["request", "useragent"],
                &["request", "referer"],
                &["response", "grpc_status"],
                &["response", "trailers"],
                &["request", "total_size"],
                &["response", "total_size"],
                &["request", "headers"],
                &["response", "headers"],
                &["source", "address"],
                &["source", "port"],
            ],
        )[..]
    else {
        unreachable!()
    };
    let fill = |t: &mut T| {
        let s = t.s();
        add_header(&mut s.request_headers, "user-agent", "ua");
        add_header(&mut s.request_headers, "referer", "r");
        s.response_headers = header_list(&[
            (":status", "200"),
            ("set-cookie", "sid=1"),
            ("grpc-status", "5"),
        ]);
        s.response_trailers = header_list(&[("grpc-status", "7"), ("set-cookie", "sid=2")]);
        s.info.response_code = Some(200);
    };

    // A bare request, and no request at all: never BAD_ARGUMENT.
    let mut t = start(&w, settings("hc-props-status"));
    for (p, &case) in NEW_PROPERTIES.iter().zip(&cases) {
        let status = t.case(case);
        assert!(status == OK || status == NOT_FOUND, "{p:?}: {status}");
        let outside = t.vm.call_stream(
            t.ctx,
            StreamCall::RequestHeaders(case, false),
            &mut None,
            0,
            &t.sink,
            None,
        );
        let outside = outside.unwrap();
        let process_wide = p[0] == "node" || p[0] == "listener_direction";
        assert_eq!(
            outside,
            if process_wide { OK } else { NOT_FOUND },
            "{p:?} outside a request"
        );
    }

    // The default view: credentials in maps stay hidden, and their bytes do not count.
    fill(&mut t);
    assert_eq!(t.prop(trailers), Ok(encode(&[("grpc-status", "7")])));
    assert_eq!(
        decode(&t.prop(resp_headers).unwrap()),
        owned(&[("grpc-status", "5")])
    );
    let req_head = VISIBLE_BYTES + ("user-agent".len() + 2 + "referer".len() + 1) as u64;
    assert_eq!(t.prop(req_total), Ok(req_head.to_le_bytes().to_vec()));
    let resp_head = (":status".len() + 3 + 2 * ("grpc-status".len() + 1)) as u64;
    assert_eq!(t.prop(resp_total), Ok(resp_head.to_le_bytes().to_vec()));
    assert_eq!(t.prop(address), Err(NOT_FOUND), "no client_address grant");
    assert_eq!(t.prop(port), Err(NOT_FOUND), "no client_address grant");
    let seen = decode(&t.prop(headers).unwrap());
    assert!(
        !seen
            .iter()
            .any(|(k, _)| k == "authorization" || k == "x-forwarded-for"),
        "{seen:?}"
    );
    t.assert_healthy();

    // Operator-hidden names hide the properties made of them.
    let mut s = settings("hc-props-hidden");
    s.sanitizer = Sanitizer::new(
        &[],
        &["user_agent".into(), "referer".into(), "grpc-status".into()],
    );
    let mut h = start(&w, s);
    fill(&mut h);
    assert_eq!(h.prop(ua), Err(NOT_FOUND));
    assert_eq!(h.prop(referer), Err(NOT_FOUND));
    assert_eq!(h.prop(grpc), Err(NOT_FOUND));
    assert_eq!(
        h.prop(trailers),
        Ok(encode(&[])),
        "an empty map, nothing hidden shown"
    );
    assert_eq!(h.prop(req_total), Ok(VISIBLE_BYTES.to_le_bytes().to_vec()));
    h.assert_healthy();

    // With the grants, the same properties show everything, in the client's order.
    let mut s = settings("hc-props-granted");
    s.sanitizer = Sanitizer::new(
        &[
            "client_address".into(),
            "authorization".into(),
            "set-cookie".into(),
        ],
        &[],
    );
    let mut g = start(&w, s);
    fill(&mut g);
    assert_eq!(
        g.prop(trailers),
        Ok(encode(&[("grpc-status", "7"), ("set-cookie", "sid=2")]))
    );
    let all: u64 = REQUEST
        .iter()
        .map(|(k, v)| (k.len() + v.len()) as u64)
        .sum();
    assert_eq!(all, VISIBLE_BYTES + 26 + 23);
    assert_eq!(
        g.prop(req_total),
        Ok(
            (all + ("user-agent".len() + 2 + "referer".len() + 1) as u64)
                .to_le_bytes()
                .to_vec()
        )
    );
    assert_eq!(g.prop(address), Ok(b"10.1.2.3:4567".to_vec()));
    assert_eq!(g.prop(port), Ok(4567u64.to_le_bytes().to_vec()));
    g.assert_healthy();
}

// ---------------------------------------------------------------------------------------------
// proxy_http_call arguments as the reference host judges them (Envoy's `Context::httpCall`
// behind proxy-wasm-cpp-host): the timeout, an empty `:authority`, the required pseudo-headers,
// unknown and TLS upstreams. See the module comment of `http_call.rs`.

/// A target named `name` at `addr` (plain HTTP/1.1, the test kit's transport).
fn callout_pool(name: &str, addr: std::net::SocketAddr) -> Arc<dyn CalloutTarget> {
    pool_speaking(name, addr, TargetProtocol::Http1)
}

/// A target of one plain endpoint at `addr` speaking `protocol`.
fn pool_speaking(
    name: &str,
    addr: std::net::SocketAddr,
    protocol: TargetProtocol,
) -> Arc<dyn CalloutTarget> {
    Arc::new(crate::testkit::transport::PlainTarget::new(
        name, addr, protocol,
    ))
}

/// A plain HTTP/1.1 server on 127.0.0.1, on a tokio runtime of the test's own: it answers
/// every request `200 ok` and reports each request head it read.
struct HeadServer {
    addr: std::net::SocketAddr,
    heads: std::sync::mpsc::Receiver<String>,
    _rt: tokio::runtime::Runtime,
}

impl HeadServer {
    fn start() -> HeadServer {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, heads) = std::sync::mpsc::channel();
        rt.spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let _ = tx.send(String::from_utf8_lossy(&head).into_owned());
                    let _ = conn
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                        )
                        .await;
                });
            }
        });
        HeadServer {
            addr,
            heads,
            _rt: rt,
        }
    }

    /// The head of the next request that reached the server.
    fn next_head(&self) -> String {
        self.heads
            .recv_timeout(Duration::from_secs(10))
            .expect("no request reached the test server")
    }
}

/// The next finished callout of `t`'s request.
fn callout_result(t: &mut T) -> CalloutDone {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match t.rx.try_recv() {
            Ok(done) => return done,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => panic!("no callout result: {e}"),
        }
    }
}

/// The `:status` of a finished callout (`None`: the call failed).
fn callout_status(done: &CalloutDone) -> Option<String> {
    let r = done.response()?;
    crate::wasm::stream::list_get(&r.headers, b":status")
        .map(|s| String::from_utf8_lossy(s).into_owned())
}

#[test]
fn http_call_deadline_reads_the_timeout_as_the_reference_host_does() {
    use super::http_call::{deadline, MAX_TIMEOUT_MS};
    assert_eq!(MAX_TIMEOUT_MS, 0x7FFF_FFFF);
    assert_eq!(deadline(0), Ok(None), "0: no deadline of the plugin's own");
    assert_eq!(deadline(1), Ok(Some(Duration::from_millis(1))));
    assert_eq!(
        deadline(60_001),
        Ok(Some(Duration::from_millis(60_001))),
        "not clamped"
    );
    assert_eq!(
        deadline(0x7FFF_FFFF),
        Ok(Some(Duration::from_millis(0x7FFF_FFFF)))
    );
    for negative in [0x8000_0000, 0xC000_0000, 0xFFFF_FFFF] {
        assert_eq!(
            deadline(negative),
            Err(sluice_abi::Status::BadArgument),
            "{negative:#x} is negative as an i32"
        );
    }
}

#[test]
fn http_call_timeouts_zero_huge_and_negative() {
    let server = HeadServer::start();
    let mut w = Wat::new();
    let (up, ul) = w.str("svc");
    let (hp, hl) = callout_headers(&mut w, true);
    let call = |timeout: u32| c("http_call", &[up, ul, hp, hl, DATA, 0, 0, 0, timeout, R3]);
    let zero = w.case(call(0));
    let largest = w.case(call(0x7FFF_FFFF));
    let smallest_negative = w.case(call(0x8000_0000));
    let all_ones = w.case(call(0xFFFF_FFFF));
    let mut s = settings("hc-callout-timeouts");
    s.callout_targets
        .insert("svc".into(), callout_pool("svc", server.addr));
    s.limits.max_callouts = 10;
    let mut t = start(&w, s);

    // i32-negative timeouts are refused before anything is counted or sent.
    assert_eq!(t.case(smallest_negative), BAD_ARGUMENT, "0x8000_0000");
    assert_eq!(t.case(all_ones), BAD_ARGUMENT, "0xFFFF_FFFF");
    assert_eq!((t.s().callouts_made, t.s().pending_callouts), (0, 0));
    assert!(t.rx.try_recv().is_err(), "nothing was dispatched");

    // 0 and the largest non-negative value are sent, and answered.
    for (what, case, made) in [("0", zero, 1), ("0x7FFF_FFFF", largest, 2)] {
        assert_eq!(t.case(case), OK, "timeout {what}");
        let token = t.u32_at(R3);
        assert_ne!(token, 0, "timeout {what}");
        assert_eq!(t.s().callouts_made, made, "timeout {what}");
        let head = server.next_head();
        assert!(head.starts_with("GET /ping HTTP/1.1\r\n"), "{what}: {head}");
        let done = callout_result(&mut t);
        assert_eq!(done.token, token, "timeout {what}");
        assert_eq!(
            callout_status(&done).as_deref(),
            Some("200"),
            "timeout {what}"
        );
        assert_eq!(done.response().unwrap().body, b"ok", "timeout {what}");
    }
    t.assert_healthy();
}

#[test]
fn http_call_required_headers_and_unknown_upstreams() {
    let server = HeadServer::start();
    let mut w = Wat::new();
    let (up, ul) = w.str("svc");
    let (np, nl) = w.str("nope");
    let mut case_with = |headers: &[(&str, &str)], upstream: (u32, u32)| {
        let (hp, hl) = w.bytes(&encode(headers));
        w.case(c(
            "http_call",
            &[upstream.0, upstream.1, hp, hl, DATA, 0, 0, 0, 1000, R3],
        ))
    };
    let no_method = case_with(&[(":path", "/x"), (":authority", "svc.local")], (up, ul));
    let no_path = case_with(&[(":method", "GET"), (":authority", "svc.local")], (up, ul));
    let no_authority = case_with(&[(":method", "GET"), (":path", "/x")], (up, ul));
    let complete = [
        (":method", "GET"),
        (":path", "/x"),
        (":authority", "svc.local"),
    ];
    let unknown = case_with(&complete, (np, nl));
    let mut s = settings("hc-callout-required");
    s.callout_targets
        .insert("svc".into(), callout_pool("svc", server.addr));
    let mut t = start(&w, s);
    // The upstream is known and the rest is valid: only the missing header is wrong.
    assert_eq!(t.case(no_method), BAD_ARGUMENT, "no :method");
    assert_eq!(t.case(no_path), BAD_ARGUMENT, "no :path");
    assert_eq!(t.case(no_authority), BAD_ARGUMENT, "no :authority");
    // BAD_ARGUMENT, not NOT_FOUND: the Rust SDK panics on NOT_FOUND from this call.
    assert_eq!(t.case(unknown), BAD_ARGUMENT, "unknown upstream");
    assert_eq!((t.s().callouts_made, t.s().pending_callouts), (0, 0));
    assert!(t.rx.try_recv().is_err(), "nothing was dispatched");
    t.assert_healthy();
}
