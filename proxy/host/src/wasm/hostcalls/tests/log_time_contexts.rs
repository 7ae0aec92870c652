// ---------------------------------------------------------------------------------------------
// Logging, time, ticks, contexts.

use super::*;

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
