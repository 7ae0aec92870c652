// ---------------------------------------------------------------------------------------------
// Guests that break the ABI or run away.

use super::*;

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
