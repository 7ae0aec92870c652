// ---------------------------------------------------------------------------------------------
// Metrics.

use super::*;

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
        text.contains(
            "sluice_plugin_hc_metrics_requests{plugin=\"hc-metrics\",version=\"stable\"} 10"
        ),
        "{text}"
    );
    t.assert_healthy();
}
