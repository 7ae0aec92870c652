//! The WASI preview 1 functions plugins import, under `wasi_snapshot_preview1` and the older
//! `wasi_unstable`. Sluice's own small shim rather than `wasmtime-wasi`, which brings the
//! component model and async and enters tokio from synchronous calls.
//!
//! What is real: `fd_write` to fd 1/2 (forwarded to the plugin's log), `clock_time_get` /
//! `clock_res_get` (realtime and monotonic), `random_get` (the OS's randomness), empty
//! arguments and environment, `poll_oneoff` (no events), `sched_yield`, and `proc_exit`, which
//! traps. Every other preview 1 function exists with its exact signature and returns an errno
//! (`BADF` for descriptors, `NOTSUP` otherwise), so that no plugin fails to link because it
//! imports one.

use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use wasmtime::{Caller, Extern, FuncType, Linker, Val, ValType};

use super::memory;
use sluice_abi::names::{WASI_SNAPSHOT_PREVIEW1, WASI_UNSTABLE};

/// WASI errno values used here.
pub mod errno {
    /// Success.
    pub const SUCCESS: i32 = 0;
    /// Bad file descriptor.
    pub const BADF: i32 = 8;
    /// Bad address (a pointer outside guest memory).
    pub const FAULT: i32 = 21;
    /// Invalid argument.
    pub const INVAL: i32 = 28;
    /// Not supported.
    pub const NOTSUP: i32 = 58;
}

/// Most bytes one `fd_write` forwards to the log; the rest is counted as written and dropped.
pub const MAX_WRITE: usize = 64 * 1024;
/// Most iovecs one `fd_write` accepts (POSIX's usual `IOV_MAX`).
pub const MAX_IOVECS: u32 = 1024;
/// Most bytes one `random_get` fills.
pub const MAX_RANDOM: u32 = 64 * 1024;

/// The trap `proc_exit` raises: the plugin asked to exit with this code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("plugin called proc_exit({0})")]
pub struct ProcExit(pub i32);

/// What the store's data must provide to the WASI functions.
pub trait WasiHost {
    /// Output the plugin wrote to `fd` (1 = stdout, 2 = stderr).
    fn wasi_output(&mut self, fd: u32, bytes: &[u8]);
}

/// Adds every preview 1 function, under both module names.
pub fn add_to_linker<T: WasiHost + 'static>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    for module in [WASI_SNAPSHOT_PREVIEW1, WASI_UNSTABLE] {
        add_module(linker, module)?;
    }
    Ok(())
}

fn guest_memory<T>(caller: &mut Caller<'_, T>) -> Option<wasmtime::Memory> {
    caller.get_export("memory").and_then(Extern::into_memory)
}

fn monotonic_origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

/// Writes `value` at `ptr`, or returns `FAULT`.
fn put_u32<T>(caller: &mut Caller<'_, T>, ptr: i32, value: u32) -> i32 {
    let Some(mem) = guest_memory(caller) else {
        return errno::FAULT;
    };
    match memory::write_u32(mem.data_mut(caller), ptr as u32, value) {
        Ok(()) => errno::SUCCESS,
        Err(_) => errno::FAULT,
    }
}

fn add_module<T: WasiHost + 'static>(linker: &mut Linker<T>, module: &str) -> wasmtime::Result<()> {
    linker.func_wrap(
        module,
        "fd_write",
        |mut caller: Caller<'_, T>, fd: i32, iovs: i32, iovs_len: i32, nwritten: i32| -> i32 {
            if fd != 1 && fd != 2 {
                return errno::BADF;
            }
            if iovs_len as u32 > MAX_IOVECS {
                return errno::INVAL;
            }
            let Some(mem) = guest_memory(&mut caller) else {
                return errno::FAULT;
            };
            let (data, host) = mem.data_and_store_mut(&mut caller);
            let mut out = Vec::new();
            let mut total: u64 = 0;
            for i in 0..iovs_len as u32 {
                let Some(at) = (iovs as u32).checked_add(i.saturating_mul(8)) else {
                    return errno::FAULT;
                };
                let (Ok(ptr), Ok(len)) = (
                    memory::read_u32(data, at),
                    memory::read_u32(data, at.saturating_add(4)),
                ) else {
                    return errno::FAULT;
                };
                let Ok(bytes) = memory::slice(data, ptr, len) else {
                    return errno::FAULT;
                };
                total += u64::from(len);
                let room = MAX_WRITE.saturating_sub(out.len());
                out.extend_from_slice(&bytes[..bytes.len().min(room)]);
            }
            host.wasi_output(fd as u32, &out);
            let written = u32::try_from(total).unwrap_or(u32::MAX);
            match memory::write_u32(data, nwritten as u32, written) {
                Ok(()) => errno::SUCCESS,
                Err(_) => errno::FAULT,
            }
        },
    )?;
    linker.func_wrap(
        module,
        "clock_time_get",
        |mut caller: Caller<'_, T>, id: i32, _precision: i64, out: i32| -> i32 {
            let nanos = match id {
                0 => SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64),
                1 => monotonic_origin().elapsed().as_nanos() as u64,
                _ => return errno::INVAL,
            };
            let Some(mem) = guest_memory(&mut caller) else {
                return errno::FAULT;
            };
            match memory::write_u64(mem.data_mut(&mut caller), out as u32, nanos) {
                Ok(()) => errno::SUCCESS,
                Err(_) => errno::FAULT,
            }
        },
    )?;
    linker.func_wrap(
        module,
        "clock_res_get",
        |mut caller: Caller<'_, T>, id: i32, out: i32| -> i32 {
            if id != 0 && id != 1 {
                return errno::INVAL;
            }
            let Some(mem) = guest_memory(&mut caller) else {
                return errno::FAULT;
            };
            match memory::write_u64(mem.data_mut(&mut caller), out as u32, 1_000) {
                Ok(()) => errno::SUCCESS,
                Err(_) => errno::FAULT,
            }
        },
    )?;
    linker.func_wrap(
        module,
        "random_get",
        |mut caller: Caller<'_, T>, buf: i32, len: i32| -> i32 {
            let len = len as u32;
            if len > MAX_RANDOM {
                return errno::INVAL;
            }
            let Some(mem) = guest_memory(&mut caller) else {
                return errno::FAULT;
            };
            match memory::slice_mut(mem.data_mut(&mut caller), buf as u32, len) {
                Ok(dest) => match getrandom::fill(dest) {
                    Ok(()) => errno::SUCCESS,
                    Err(_) => errno::NOTSUP,
                },
                Err(_) => errno::FAULT,
            }
        },
    )?;
    // Empty argument list and environment: counts and sizes are 0, nothing to copy.
    for (name, sizes) in [
        ("args_sizes_get", true),
        ("environ_sizes_get", true),
        ("args_get", false),
        ("environ_get", false),
    ] {
        if sizes {
            linker.func_wrap(
                module,
                name,
                |mut caller: Caller<'_, T>, count: i32, size: i32| -> i32 {
                    match put_u32(&mut caller, count, 0) {
                        errno::SUCCESS => put_u32(&mut caller, size, 0),
                        e => e,
                    }
                },
            )?;
        } else {
            linker.func_wrap(module, name, |_: Caller<'_, T>, _: i32, _: i32| -> i32 {
                errno::SUCCESS
            })?;
        }
    }
    linker.func_wrap(
        module,
        "poll_oneoff",
        |mut caller: Caller<'_, T>, _in: i32, _out: i32, _n: i32, nevents: i32| -> i32 {
            put_u32(&mut caller, nevents, 0)
        },
    )?;
    linker.func_wrap(module, "sched_yield", || -> i32 { errno::SUCCESS })?;
    linker.func_wrap(module, "proc_exit", |code: i32| -> wasmtime::Result<()> {
        Err(wasmtime::Error::new(ProcExit(code)))
    })?;

    // Everything else: present with its exact signature, answering an errno.
    let engine = linker.engine().clone();
    for (name, params) in STUBS {
        let types = params.bytes().map(|c| match c {
            b'I' => ValType::I64,
            _ => ValType::I32,
        });
        let ty = FuncType::new(&engine, types, [ValType::I32]);
        let answer = if name.starts_with("fd_") || name.starts_with("sock_") {
            errno::BADF
        } else {
            errno::NOTSUP
        };
        linker.func_new(module, name, ty, move |_, _, results| {
            results[0] = Val::I32(answer);
            Ok(())
        })?;
    }
    Ok(())
}

/// The remaining preview 1 functions and their parameters (`i` = i32, `I` = i64); all return
/// an i32 errno.
const STUBS: &[(&str, &str)] = &[
    ("fd_advise", "iIIi"),
    ("fd_allocate", "iII"),
    ("fd_close", "i"),
    ("fd_datasync", "i"),
    ("fd_fdstat_get", "ii"),
    ("fd_fdstat_set_flags", "ii"),
    ("fd_fdstat_set_rights", "iII"),
    ("fd_filestat_get", "ii"),
    ("fd_filestat_set_size", "iI"),
    ("fd_filestat_set_times", "iIIi"),
    ("fd_pread", "iiiIi"),
    ("fd_prestat_get", "ii"),
    ("fd_prestat_dir_name", "iii"),
    ("fd_pwrite", "iiiIi"),
    ("fd_read", "iiii"),
    ("fd_readdir", "iiiIi"),
    ("fd_renumber", "ii"),
    ("fd_seek", "iIii"),
    ("fd_sync", "i"),
    ("fd_tell", "ii"),
    ("path_create_directory", "iii"),
    ("path_filestat_get", "iiiii"),
    ("path_filestat_set_times", "iiiiIIi"),
    ("path_link", "iiiiiii"),
    ("path_open", "iiiiiIIii"),
    ("path_readlink", "iiiiii"),
    ("path_remove_directory", "iii"),
    ("path_rename", "iiiiii"),
    ("path_symlink", "iiiii"),
    ("path_unlink_file", "iii"),
    ("proc_raise", "i"),
    ("sock_accept", "iii"),
    ("sock_recv", "iiiiii"),
    ("sock_send", "iiiii"),
    ("sock_shutdown", "ii"),
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wasm::engine::{EngineOptions, WasmEngine};
    use wasmtime::Store;

    #[derive(Default)]
    struct Captured(Vec<(u32, Vec<u8>)>);

    impl WasiHost for Captured {
        fn wasi_output(&mut self, fd: u32, bytes: &[u8]) {
            self.0.push((fd, bytes.to_vec()));
        }
    }

    const GUEST: &str = r#"(module
        (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
        (import "wasi_unstable" "clock_time_get" (func $clock (param i32 i64 i32) (result i32)))
        (import "wasi_snapshot_preview1" "random_get" (func $random (param i32 i32) (result i32)))
        (import "wasi_snapshot_preview1" "environ_sizes_get" (func $env (param i32 i32) (result i32)))
        (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
        (import "wasi_snapshot_preview1" "path_open" (func $open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
        (import "wasi_snapshot_preview1" "fd_prestat_get" (func $prestat (param i32 i32) (result i32)))
        (memory (export "memory") 1)
        (data (i32.const 100) "hello ")
        (data (i32.const 200) "plugin")
        ;; two iovecs at 16: (100, 6) and (200, 6)
        (data (i32.const 16) "\64\00\00\00\06\00\00\00\c8\00\00\00\06\00\00\00")
        (func (export "write") (param $fd i32) (result i32)
          (call $fd_write (local.get $fd) (i32.const 16) (i32.const 2) (i32.const 40)))
        (func (export "write_bad_iovec") (result i32)
          (call $fd_write (i32.const 1) (i32.const 65530) (i32.const 2) (i32.const 40)))
        (func (export "write_many") (result i32)
          (call $fd_write (i32.const 1) (i32.const 16) (i32.const -1) (i32.const 40)))
        (func (export "written") (result i32) (i32.load (i32.const 40)))
        (func (export "now") (param $id i32) (result i64)
          (drop (call $clock (local.get $id) (i64.const 0) (i32.const 48)))
          (i64.load (i32.const 48)))
        (func (export "random") (param $len i32) (result i32)
          (call $random (i32.const 1024) (local.get $len)))
        (func (export "random_sum") (result i64)
          (i64.add (i64.load (i32.const 1024)) (i64.load (i32.const 1032))))
        (func (export "env") (result i32)
          (i32.store (i32.const 56) (i32.const 7))
          (drop (call $env (i32.const 56) (i32.const 60)))
          (i32.load (i32.const 56)))
        (func (export "exit") (call $exit (i32.const 3)))
        (func (export "open") (result i32)
          (call $open (i32.const 3) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i64.const 0) (i64.const 0) (i32.const 0) (i32.const 0)))
        (func (export "prestat") (result i32) (call $prestat (i32.const 3) (i32.const 0))))"#;

    fn guest() -> (Store<Captured>, wasmtime::Instance) {
        let e = WasmEngine::new(&EngineOptions {
            pooled_instances: 2,
            max_memory_bytes: 1 << 20,
            ..EngineOptions::default()
        })
        .unwrap();
        let (module, _) = e.compile(GUEST.as_bytes()).unwrap();
        let mut linker = Linker::new(e.engine());
        add_to_linker(&mut linker).unwrap();
        let mut store = Store::new(e.engine(), Captured::default());
        store.set_fuel(10_000_000).unwrap();
        store.set_epoch_deadline(100_000);
        let inst = linker.instantiate(&mut store, &module).unwrap();
        (store, inst)
    }

    fn call<R: wasmtime::WasmResults>(
        store: &mut Store<Captured>,
        inst: &wasmtime::Instance,
        name: &str,
    ) -> wasmtime::Result<R> {
        inst.get_typed_func::<(), R>(&mut *store, name)?
            .call(store, ())
    }

    #[test]
    fn fd_write_reaches_the_host_and_reports_the_length() {
        let (mut store, inst) = guest();
        let write = inst
            .get_typed_func::<i32, i32>(&mut store, "write")
            .unwrap();
        assert_eq!(write.call(&mut store, 1).unwrap(), errno::SUCCESS);
        assert_eq!(call::<i32>(&mut store, &inst, "written").unwrap(), 12);
        assert_eq!(write.call(&mut store, 2).unwrap(), errno::SUCCESS);
        assert_eq!(write.call(&mut store, 5).unwrap(), errno::BADF);
        assert_eq!(
            store.data().0,
            vec![(1, b"hello plugin".to_vec()), (2, b"hello plugin".to_vec())]
        );
        // iovecs that run off the end of memory: FAULT, nothing logged, no panic.
        assert_eq!(
            call::<i32>(&mut store, &inst, "write_bad_iovec").unwrap(),
            errno::FAULT
        );
        assert_eq!(store.data().0.len(), 2);
        // An absurd iovec count is refused before any work.
        assert_eq!(
            call::<i32>(&mut store, &inst, "write_many").unwrap(),
            errno::INVAL
        );
    }

    #[test]
    fn clocks_random_and_environment() {
        let (mut store, inst) = guest();
        let now = inst.get_typed_func::<i32, i64>(&mut store, "now").unwrap();
        let wall = now.call(&mut store, 0).unwrap();
        let expected = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as i64;
        assert!(
            (expected - wall).abs() < 5_000_000_000,
            "realtime {wall} vs {expected}"
        );
        let m1 = now.call(&mut store, 1).unwrap();
        let m2 = now.call(&mut store, 1).unwrap();
        assert!(m2 >= m1);

        let random = inst
            .get_typed_func::<i32, i32>(&mut store, "random")
            .unwrap();
        assert_eq!(random.call(&mut store, 16).unwrap(), errno::SUCCESS);
        assert_ne!(call::<i64>(&mut store, &inst, "random_sum").unwrap(), 0);
        assert_eq!(
            random.call(&mut store, MAX_RANDOM as i32 + 1).unwrap(),
            errno::INVAL
        );

        assert_eq!(
            call::<i32>(&mut store, &inst, "env").unwrap(),
            0,
            "no variables"
        );
    }

    #[test]
    fn stubs_answer_errnos_and_proc_exit_traps() {
        let (mut store, inst) = guest();
        assert_eq!(
            call::<i32>(&mut store, &inst, "open").unwrap(),
            errno::NOTSUP
        );
        assert_eq!(
            call::<i32>(&mut store, &inst, "prestat").unwrap(),
            errno::BADF
        );
        let err = call::<()>(&mut store, &inst, "exit").unwrap_err();
        assert!(format!("{err:#}").contains("proc_exit(3)"), "{err:#}");
    }

    #[test]
    fn every_preview1_function_is_defined_once_per_module() {
        let e = WasmEngine::new(&EngineOptions {
            pooled_instances: 1,
            max_memory_bytes: 1 << 20,
            ..EngineOptions::default()
        })
        .unwrap();
        let mut linker: Linker<Captured> = Linker::new(e.engine());
        add_to_linker(&mut linker).unwrap();
        let mut store = Store::new(e.engine(), Captured::default());
        for module in [WASI_SNAPSHOT_PREVIEW1, WASI_UNSTABLE] {
            let names: Vec<String> = linker
                .iter(&mut store)
                .filter(|(m, _, _)| *m == module)
                .map(|(_, n, _)| n.to_string())
                .collect();
            // 46 functions in WASI preview 1.
            assert_eq!(names.len(), 46, "{module}: {names:?}");
        }
    }
}
