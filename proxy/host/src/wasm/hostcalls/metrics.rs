//! Metrics: `proxy_define_metric`, `proxy_increment_metric`, `proxy_record_metric`,
//! `proxy_get_metric`; exported as `sluice_plugin_<name>{plugin="…"}`.

use sluice_abi::names::ENV;
use sluice_abi::{MetricType, Status};
use wasmtime::Linker;

use super::{done, put_u32, put_u64, read, st, HostResult, C};
use crate::wasm::guest_metrics::{self, MAX_NAME_BYTES};
use crate::wasm::vm::VmState;

pub(super) fn add(l: &mut Linker<VmState>) -> wasmtime::Result<()> {
    l.func_wrap(
        ENV,
        "proxy_define_metric",
        |mut c: C<'_>, t: u32, np: u32, nl: u32, ret_id: u32| -> HostResult {
            let name = match read(&mut c, np, nl, MAX_NAME_BYTES) {
                Ok(n) => n,
                Err(s) => return Ok(st(s)),
            };
            let Ok(kind) = MetricType::try_from(t) else {
                return Ok(st(Status::BadArgument));
            };
            let Ok(name) = String::from_utf8(name) else {
                return Ok(st(Status::BadArgument));
            };
            match guest_metrics::define(
                &c.data().settings.name,
                c.data().settings.version,
                kind,
                &name,
            ) {
                Ok(id) => done(put_u32(&mut c, ret_id, id)),
                Err(s) => Ok(st(s)),
            }
        },
    )?;
    l.func_wrap(
        ENV,
        "proxy_increment_metric",
        |c: C<'_>, id: u32, delta: i64| -> HostResult {
            Ok(st(guest_metrics::increment(
                (&c.data().settings.name, c.data().settings.version),
                id,
                delta,
            )))
        },
    )?;
    l.func_wrap(
        ENV,
        "proxy_record_metric",
        |c: C<'_>, id: u32, value: u64| -> HostResult {
            Ok(st(guest_metrics::record(
                (&c.data().settings.name, c.data().settings.version),
                id,
                value,
            )))
        },
    )?;
    l.func_wrap(
        ENV,
        "proxy_get_metric",
        |mut c: C<'_>, id: u32, ret: u32| -> HostResult {
            match guest_metrics::get((&c.data().settings.name, c.data().settings.version), id) {
                Ok(v) => done(put_u64(&mut c, ret, v)),
                Err(s) => Ok(st(s)),
            }
        },
    )?;
    Ok(())
}
