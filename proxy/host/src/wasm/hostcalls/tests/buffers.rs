// ---------------------------------------------------------------------------------------------
// Buffers.

use super::*;

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
