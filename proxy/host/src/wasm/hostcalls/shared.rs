//! Shared data and queues: `proxy_get_shared_data`, `proxy_set_shared_data`,
//! `proxy_register_shared_queue`, `proxy_resolve_shared_queue`, `proxy_enqueue_shared_queue`,
//! `proxy_dequeue_shared_queue`. The namespace is the plugin's `vm_id`.

use sluice_abi::names::ENV;
use sluice_abi::Status;
use wasmtime::Linker;

use super::{done, give, give_status, put_u32, read, st, HostResult, C};
use crate::wasm::shared::Unavailable;
use crate::wasm::shared::{self, MAX_KEY_BYTES, MAX_VALUE_BYTES};
use crate::wasm::vm::VmState;

/// Records that shared data could not be reached during this guest call (the host then fails
/// the call under the plugin's `on_error` policy, whatever the guest does with the status) and
/// answers the guest `InternalFailure`.
fn unavailable(c: &mut C<'_>, e: Unavailable) -> Status {
    c.data_mut().shared_failure = Some(e.to_string());
    Status::InternalFailure
}

pub(super) fn add(l: &mut Linker<VmState>) -> wasmtime::Result<()> {
    l.func_wrap(
        ENV,
        "proxy_get_shared_data",
        |mut c: C<'_>, kp: u32, kl: u32, ret_vp: u32, ret_vl: u32, ret_cas: u32| -> HostResult {
            let key = match read(&mut c, kp, kl, MAX_KEY_BYTES) {
                Ok(k) => k,
                Err(s) => return Ok(st(s)),
            };
            let found = match c.data().shared.get(&key) {
                Ok(found) => found,
                Err(e) => return Ok(st(unavailable(&mut c, e))),
            };
            let Some((value, cas)) = found else {
                return Ok(st(Status::NotFound));
            };
            if let Err(s) = put_u32(&mut c, ret_cas, cas) {
                return Ok(st(s));
            }
            give_status(&mut c, &value, ret_vp, ret_vl)
        },
    )?;
    l.func_wrap(
        ENV,
        "proxy_set_shared_data",
        |mut c: C<'_>, kp: u32, kl: u32, vp: u32, vl: u32, cas: u32| -> HostResult {
            let key = match read(&mut c, kp, kl, MAX_KEY_BYTES) {
                Ok(k) => k,
                Err(s) => return Ok(st(s)),
            };
            let value = match read(&mut c, vp, vl, MAX_VALUE_BYTES) {
                Ok(v) => v,
                Err(s) => return Ok(st(s)),
            };
            if key.is_empty() {
                return Ok(st(Status::BadArgument));
            }
            match c.data().shared.set(&key, &value, cas) {
                Ok(status) => Ok(st(status)),
                Err(e) => Ok(st(unavailable(&mut c, e))),
            }
        },
    )?;
    l.func_wrap(
        ENV,
        "proxy_register_shared_queue",
        |mut c: C<'_>, np: u32, nl: u32, ret_id: u32| -> HostResult {
            let name = match read(&mut c, np, nl, MAX_KEY_BYTES) {
                Ok(n) => n,
                Err(s) => return Ok(st(s)),
            };
            let data = c.data();
            let id = shared::register_queue(&data.settings.vm_id, &name, data.vm.clone());
            done(put_u32(&mut c, ret_id, id))
        },
    )?;
    l.func_wrap(
        ENV,
        "proxy_resolve_shared_queue",
        |mut c: C<'_>, vp: u32, vl: u32, np: u32, nl: u32, ret_id: u32| -> HostResult {
            let vm_id = match read(&mut c, vp, vl, MAX_KEY_BYTES) {
                Ok(v) => v,
                Err(s) => return Ok(st(s)),
            };
            let name = match read(&mut c, np, nl, MAX_KEY_BYTES) {
                Ok(n) => n,
                Err(s) => return Ok(st(s)),
            };
            let vm_id = if vm_id.is_empty() {
                c.data().settings.vm_id.clone()
            } else {
                String::from_utf8_lossy(&vm_id).into_owned()
            };
            match shared::resolve_queue(&vm_id, &name) {
                Some(id) => done(put_u32(&mut c, ret_id, id)),
                None => Ok(st(Status::NotFound)),
            }
        },
    )?;
    l.func_wrap(
        ENV,
        "proxy_enqueue_shared_queue",
        |mut c: C<'_>, id: u32, vp: u32, vl: u32| -> HostResult {
            let value = match read(&mut c, vp, vl, MAX_VALUE_BYTES) {
                Ok(v) => v,
                Err(s) => return Ok(st(s)),
            };
            Ok(st(shared::enqueue(id, &value)))
        },
    )?;
    l.func_wrap(
        ENV,
        "proxy_dequeue_shared_queue",
        |mut c: C<'_>, id: u32, ret_ptr: u32, ret_len: u32| -> HostResult {
            match shared::dequeue(id) {
                Ok(item) => Ok(st(give(&mut c, &item, ret_ptr, ret_len)?
                    .err()
                    .unwrap_or(Status::Ok))),
                Err(s) => Ok(st(s)),
            }
        },
    )?;
    Ok(())
}
