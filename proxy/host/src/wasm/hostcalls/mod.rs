//! The 39 host functions of Proxy-Wasm ABI v0.2.1 (module `env`), one file per family, plus
//! the WASI shim. [`linker`] builds the one `Linker` every plugin is instantiated with.
//!
//! Rules every host call follows:
//! - Each pointer and length from the guest is checked against its memory (in `u64`); a bad
//!   one answers `INVALID_MEMORY_ACCESS`, never a host panic.
//! - Sizes are capped (names, values, maps, bodies, log lines); over a cap answers
//!   `BAD_ARGUMENT`.
//! - Only statuses the spec lists for the call are returned: the Rust SDK panics on others.
//! - Results go back through guest memory the guest's allocator provides. An allocator that
//!   fails or returns a pointer outside memory is an ABI violation: the call traps.

mod buffers;
mod grpc;
mod headers;
mod http_call;
mod log;
mod metrics;
mod properties;
mod shared;
mod stream;

/// The `tracing` target of every line plugins log.
pub use log::TARGET as LOG_TARGET;

use sluice_abi::names::ENV;
use sluice_abi::Status;
use wasmtime::{Caller, Engine, Linker};

use super::memory::{self, MemError};
use super::vm::VmState;

/// What a host function returns to wasmtime: a status, or a trap.
pub(crate) type HostResult = wasmtime::Result<u32>;

type C<'a> = Caller<'a, VmState>;

/// A status as the guest receives it.
fn st(s: Status) -> u32 {
    s as u32
}

impl From<MemError> for Status {
    fn from(e: MemError) -> Status {
        match e {
            MemError::OutOfBounds { .. } => Status::InvalidMemoryAccess,
            MemError::TooLarge { .. } => Status::BadArgument,
        }
    }
}

/// Turns `Result<(), Status>` into the guest's status.
fn done(r: Result<(), Status>) -> HostResult {
    Ok(st(r.err().unwrap_or(Status::Ok)))
}

/// Copies `[ptr, ptr + len)` out of guest memory: first checked against the memory (an
/// out-of-range pointer or length is `INVALID_MEMORY_ACCESS`), then against `max`
/// (`BAD_ARGUMENT`).
fn read(c: &mut C<'_>, ptr: u32, len: u32, max: u32) -> Result<Vec<u8>, Status> {
    let mem = c.data().memory.ok_or(Status::InvalidMemoryAccess)?;
    let data = mem.data(&*c);
    let bytes = memory::slice(data, ptr, len)?;
    if len > max {
        return Err(Status::BadArgument);
    }
    Ok(bytes.to_vec())
}

/// Checks that `[ptr, ptr + len)` is guest memory, without copying it.
fn check_range(c: &C<'_>, ptr: u32, len: u32) -> Result<(), Status> {
    let mem = c.data().memory.ok_or(Status::InvalidMemoryAccess)?;
    memory::slice(mem.data(c), ptr, len)?;
    Ok(())
}

/// Writes a `u32` to guest memory.
fn put_u32(c: &mut C<'_>, ptr: u32, v: u32) -> Result<(), Status> {
    let mem = c.data().memory.ok_or(Status::InvalidMemoryAccess)?;
    Ok(memory::write_u32(mem.data_mut(&mut *c), ptr, v)?)
}

/// Writes a `u64` to guest memory.
fn put_u64(c: &mut C<'_>, ptr: u32, v: u64) -> Result<(), Status> {
    let mem = c.data().memory.ok_or(Status::InvalidMemoryAccess)?;
    Ok(memory::write_u64(mem.data_mut(&mut *c), ptr, v)?)
}

/// Hands `bytes` to the guest: allocates with the guest's allocator, copies, and writes the
/// pointer and length to `ret_ptr` / `ret_len`. Zero bytes: writes 0, 0 without allocating.
///
/// `Ok(Err(status))` is an ordinary failure (bad return pointers); `Err` traps the guest
/// (its allocator failed or lied).
fn give(
    c: &mut C<'_>,
    bytes: &[u8],
    ret_ptr: u32,
    ret_len: u32,
) -> wasmtime::Result<Result<(), Status>> {
    let Some(mem) = c.data().memory else {
        return Ok(Err(Status::InvalidMemoryAccess));
    };
    // Check the return slots before allocating, so a bad call does not leak guest memory.
    {
        let data = mem.data(&*c);
        if memory::slice(data, ret_ptr, 4).is_err() || memory::slice(data, ret_len, 4).is_err() {
            return Ok(Err(Status::InvalidMemoryAccess));
        }
    }
    let Ok(len) = u32::try_from(bytes.len()) else {
        return Ok(Err(Status::BadArgument));
    };
    let ptr = if len == 0 {
        0
    } else {
        let Some(alloc) = c.data().alloc.clone() else {
            return Ok(Err(Status::InternalFailure));
        };
        let ptr = alloc.call(&mut *c, len)?;
        if ptr == 0 {
            if !c.data().limiter.denied {
                c.data_mut().abi_error =
                    Some(format!("the plugin's allocator returned 0 for {len} bytes"));
            }
            return Err(wasmtime::Error::msg("guest allocation failed"));
        }
        let data = mem.data_mut(&mut *c);
        if memory::write(data, ptr, bytes).is_err() {
            c.data_mut().abi_error = Some(format!(
                "the plugin's allocator returned {ptr:#x} for {len} bytes, outside its memory"
            ));
            return Err(wasmtime::Error::msg(
                "guest allocator returned a bad pointer",
            ));
        }
        ptr
    };
    let data = mem.data_mut(&mut *c);
    // Checked above; the allocator may have grown memory, never shrunk it.
    let ok = memory::write_u32(data, ret_ptr, ptr).is_ok()
        && memory::write_u32(data, ret_len, len).is_ok();
    Ok(if ok {
        Ok(())
    } else {
        Err(Status::InvalidMemoryAccess)
    })
}

/// Like [`give`], as the host call's final answer.
fn give_status(c: &mut C<'_>, bytes: &[u8], ret_ptr: u32, ret_len: u32) -> HostResult {
    Ok(st(give(c, bytes, ret_ptr, ret_len)?
        .err()
        .unwrap_or(Status::Ok)))
}

/// Builds the linker with every host function (ABI and WASI).
pub fn linker(engine: &Engine) -> wasmtime::Result<Linker<VmState>> {
    let mut l = Linker::new(engine);
    log::add(&mut l)?;
    buffers::add(&mut l)?;
    headers::add(&mut l)?;
    stream::add(&mut l)?;
    http_call::add(&mut l)?;
    grpc::add(&mut l)?;
    shared::add(&mut l)?;
    metrics::add(&mut l)?;
    properties::add(&mut l)?;
    add_unimplemented(&mut l)?;
    super::wasi::add_to_linker(&mut l)?;
    Ok(l)
}

/// Foreign functions: present, answering `UNIMPLEMENTED`.
fn add_unimplemented(l: &mut Linker<VmState>) -> wasmtime::Result<()> {
    let u = || Ok(st(Status::Unimplemented));
    l.func_wrap(
        ENV,
        "proxy_call_foreign_function",
        move |_: u32, _: u32, _: u32, _: u32, _: u32, _: u32| u(),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests;
