// ---------------------------------------------------------------------------------------------
// Shared data and queues.

use super::*;

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
