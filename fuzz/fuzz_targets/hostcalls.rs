//! Host calls with random arguments against a live VM: the input is turned into a plugin whose
//! `on_request_headers` makes a sequence of Proxy-Wasm host calls with arguments taken from
//! the input (small numbers, pointers into its memory, pointers past it, huge lengths), then
//! the plugin runs in the real host (the test kit: engine, limits, sanitizing, phases). The
//! host must not panic, and every call must answer a status of the spec's set (0..=12): a call
//! answering anything else makes the plugin write `bad-status` into its memory (nowhere before
//! that, so a random `proxy_log` cannot log it by chance) and log it, which fails the target.
#![no_main]

use std::fmt::Write as _;

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

fuzz_target!(|data: &[u8]| {
    let mut body = String::new();
    let mut at = 0;
    let mut calls = 0;
    while at + 1 < data.len() && calls < 64 {
        let (name, params) = CALLS[data[at] as usize % CALLS.len()];
        at += 1;
        let mut args = String::new();
        for _ in 0..params {
            let byte = data.get(at).copied().unwrap_or(0);
            let next = data
                .get(at + 1..at + 5)
                .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
            at += 1 + usize::from(byte % 8 == 7) * 4;
            write!(args, " (i32.const {})", argument(byte, next) as u32 as i32).unwrap();
        }
        write!(
            body,
            "\n    (local.set $s (call ${name}{args})) \
             (if (i32.gt_u (local.get $s) (i32.const 12)) (then (call $bad)))"
        )
        .unwrap();
        calls += 1;
    }
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
        "  (memory (export \"memory\") 2)\n\
         \x20 (func $bad (i64.store (i32.const 0x300) (i64.const 8386112019172188514)) \
         (i32.store16 (i32.const 0x308) (i32.const 29557)) \
         (drop (call $proxy_log (i32.const 4) (i32.const 0x300) (i32.const 10))))\n\
         \x20 (data (i32.const 0x400) \"request\\00headers\\00x-key\\00value\\00:path\")\n\
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
         \x20 (func (export \"proxy_on_request_headers\") (param i32 i32 i32) (result i32) (local $s i32)",
    );
    wat.push_str(&body);
    wat.push_str("\n    (i32.const 0)))\n");
    let kit = match Kit::from_bytes("fuzz", wat.as_bytes(), Options::default()) {
        Ok(k) => k,
        Err(e) => panic!("the generated plugin does not load: {e}\n{wat}"),
    };
    let _ = kit.run(
        &TestRequest::post("/fuzz", b"body bytes".to_vec()).header("x-key", "value"),
        &TestResponse::ok(b"upstream body".to_vec()),
    );
    assert!(
        !kit.logged("bad-status"),
        "a host call answered a status outside the spec's set\n{wat}"
    );
});
