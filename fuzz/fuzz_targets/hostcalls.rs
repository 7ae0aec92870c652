//! Host calls with random arguments against a live VM. The input is decoded into a program: up
//! to 64 Proxy-Wasm host calls with arguments taken from the input (small numbers, pointers
//! into the guest's memory, at its edge, past it, huge lengths). One fixed guest — compiled
//! once — interprets it: its `on_request_headers` reads the program from shared data (where
//! the harness put it) and makes each call. For each input the guest's VM is started afresh
//! and the request runs in the real host (the test kit: engine, limits, sanitizing, phases).
//! The host must not panic, and every call must answer a status of the spec's set (0..=12): a
//! call answering anything else makes the guest write `bad-status` into its memory (nowhere
//! before that, so a random `proxy_log` cannot log it by chance) and log it, which fails the
//! target.
#![no_main]

use std::fmt::Write as _;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use sluice::testkit::{Kit, Options, TestRequest, TestResponse};

/// (import name, number of i32 parameters); every one returns an i32 status.
const CALLS: &[(&str, usize)] = &[
    ("proxy_log", 3),
    ("proxy_get_log_level", 1),
    ("proxy_get_current_time_nanoseconds", 1),
    ("proxy_set_tick_period_milliseconds", 1),
    ("proxy_set_effective_context", 1),
    ("proxy_get_buffer_bytes", 5),
    ("proxy_set_buffer_bytes", 5),
    ("proxy_get_buffer_status", 3),
    ("proxy_get_header_map_pairs", 3),
    ("proxy_get_header_map_size", 2),
    ("proxy_get_header_map_value", 5),
    ("proxy_set_header_map_pairs", 3),
    ("proxy_add_header_map_value", 5),
    ("proxy_replace_header_map_value", 5),
    ("proxy_remove_header_map_value", 3),
    ("proxy_continue_stream", 1),
    ("proxy_close_stream", 1),
    ("proxy_get_status", 3),
    ("proxy_send_local_response", 8),
    ("proxy_http_call", 10),
    ("proxy_grpc_call", 12),
    ("proxy_get_shared_data", 5),
    ("proxy_set_shared_data", 5),
    ("proxy_register_shared_queue", 3),
    ("proxy_resolve_shared_queue", 5),
    ("proxy_enqueue_shared_queue", 3),
    ("proxy_dequeue_shared_queue", 3),
    ("proxy_define_metric", 4),
    ("proxy_get_metric", 2),
    ("proxy_get_property", 4),
    ("proxy_set_property", 4),
    ("proxy_call_foreign_function", 6),
];

/// Interesting argument values: small numbers, addresses in memory (where the data below
/// is), the edge of memory, beyond it, and huge lengths.
fn argument(byte: u8, next: u32) -> i64 {
    match byte % 8 {
        0 => i64::from(byte / 8),
        1 => 0x400 + i64::from(next % 0x200),
        2 => 0x1_0000 - i64::from(next % 16),
        3 => 0x2_0000 + i64::from(next % 0x1000),
        4 => 0x7fff_ffff,
        5 => 0xffff_fff0,
        6 => i64::from(next % 64),
        _ => i64::from(next),
    }
}

/// Bytes of one decoded call: the call's index, then 12 arguments (i32 each).
const RECORD: usize = 4 + 12 * 4;

/// The input as a program: records of [`RECORD`] bytes.
fn program(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut at = 0;
    let mut calls = 0;
    while at + 1 < data.len() && calls < 64 {
        let index = data[at] as usize % CALLS.len();
        at += 1;
        out.extend_from_slice(&(index as u32).to_le_bytes());
        let mut args = [0u32; 12];
        for a in args.iter_mut().take(CALLS[index].1) {
            let byte = data.get(at).copied().unwrap_or(0);
            let next = data
                .get(at + 1..at + 5)
                .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
            at += 1 + usize::from(byte % 8 == 7) * 4;
            *a = argument(byte, next) as u32;
        }
        for a in args {
            out.extend_from_slice(&a.to_le_bytes());
        }
        calls += 1;
    }
    out
}

/// The interpreter guest (WAT).
fn interpreter() -> String {
    let mut wat = String::from("(module\n");
    for (name, params) in CALLS {
        let ps = " i32".repeat(*params);
        writeln!(
            wat,
            "  (import \"env\" \"{name}\" (func ${name} (param{ps}) (result i32)))"
        )
        .unwrap();
    }
    wat.push_str(
        &"  (memory (export \"memory\") 2)\n\
         \x20 (func $bad (i64.store (i32.const 0x300) (i64.const 8386112019172188514)) \
         (i32.store16 (i32.const 0x308) (i32.const 29557)) \
         (drop (call $proxy_log (i32.const 4) (i32.const 0x300) (i32.const 10))))\n\
         \x20 (data (i32.const 0x400) \"request\\00headers\\00x-key\\00value\\00:path\")\n\
         \x20 (data (i32.const 0x500) \"program\")\n\
         \x20 (func (export \"proxy_abi_version_0_2_1\"))\n\
         \x20 (global $heap (mut i32) (i32.const 0x8000))\n\
         \x20 (func (export \"malloc\") (param $n i32) (result i32) (local $p i32)\n\
         \x20   (if (i32.gt_u (local.get $n) (i32.const 0x100000)) (then (return (i32.const 0))))\n\
         \x20   (local.set $p (global.get $heap))\n\
         \x20   (global.set $heap (i32.add (global.get $heap) (local.get $n)))\n\
         \x20   (if (i32.gt_u (global.get $heap) (i32.shl (memory.size) (i32.const 16)))\n\
         \x20     (then (if (i32.eq (memory.grow (i32.add (i32.shr_u (local.get $n) (i32.const 16)) (i32.const 1))) (i32.const -1))\n\
         \x20       (then (return (i32.const 0))))))\n\
         \x20   (local.get $p))\n\
         \x20 (func (export \"proxy_on_context_create\") (param i32 i32))\n\
         \x20 (func (export \"proxy_on_request_headers\") (param i32 i32 i32) (result i32)\n\
         \x20   (local $s i32) (local $p i32) (local $end i32)\n\
         \x20   (if (call $proxy_get_shared_data (i32.const 0x500) (i32.const 7) (i32.const 0x600) (i32.const 0x604) (i32.const 0x608))\n\
         \x20     (then (return (i32.const 0))))\n\
         \x20   (local.set $p (i32.load (i32.const 0x600)))\n\
         \x20   (local.set $end (i32.add (local.get $p) (i32.load (i32.const 0x604))))\n\
         \x20   (block $done (loop $next\n\
         \x20     (br_if $done (i32.gt_u (i32.add (local.get $p) (i32.const RECORD)) (local.get $end)))\n\
         \x20     (block $check\n"
            .replace("RECORD", &RECORD.to_string()),
    );
    // br_table dispatch: block $bK ends right before the code of call K.
    for k in (0..CALLS.len()).rev() {
        writeln!(wat, "      (block $b{k}").unwrap();
    }
    let targets: String = (0..CALLS.len()).map(|k| format!(" $b{k}")).collect();
    writeln!(
        wat,
        "        (br_table{targets} $b{} (i32.load (local.get $p))))",
        CALLS.len() - 1
    )
    .unwrap();
    for (k, (name, params)) in CALLS.iter().enumerate() {
        let args: String = (0..*params)
            .map(|a| format!(" (i32.load offset={} (local.get $p))", 4 + 4 * a))
            .collect();
        let close = if k + 1 < CALLS.len() { ")" } else { "" };
        writeln!(
            wat,
            "        (local.set $s (call ${name}{args})) (br $check){close}"
        )
        .unwrap();
    }
    wat.push_str(
        &"      )\n\
         \x20     (if (i32.gt_u (local.get $s) (i32.const 12)) (then (call $bad)))\n\
         \x20     (local.set $p (i32.add (local.get $p) (i32.const RECORD)))\n\
         \x20     (br $next)))\n\
         \x20   (i32.const 0)))\n"
            .replace("RECORD", &RECORD.to_string()),
    );
    wat
}

fn kit() -> &'static Kit {
    static KIT: OnceLock<Kit> = OnceLock::new();
    KIT.get_or_init(|| {
        let wat = interpreter();
        Kit::from_bytes("fuzz", wat.as_bytes(), Options::default())
            .unwrap_or_else(|e| panic!("the interpreter does not load: {e}\n{wat}"))
    })
}

fuzz_target!(|data: &[u8]| {
    let kit = kit();
    kit.forget_logs();
    kit.restart().expect("a fresh VM of the interpreter");
    let program = program(data);
    kit.set_shared("program", &program);
    let _ = kit.run(
        &TestRequest::post("/fuzz", b"body bytes".to_vec()).header("x-key", "value"),
        &TestResponse::ok(b"upstream body".to_vec()),
    );
    assert!(
        !kit.logged("bad-status"),
        "a host call answered a status outside the spec's set; program: {program:?}"
    );
});
