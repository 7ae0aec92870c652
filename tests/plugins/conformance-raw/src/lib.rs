//! Sluice conformance test plugin written against the bare Proxy-Wasm ABI v0.2.1: no SDK,
//! only `#[no_mangle] extern "C"` exports and `extern "C"` imports from module `env`.
//!
//! Every callback logs, at level info, one line with the context id the host passed it, so
//! that a test can check the ids themselves (an SDK would hide them: the Rust SDK, for one,
//! ignores the id passed to `proxy_on_http_call_response`). A request with header
//! `x-conf-raw-callout: <path>` makes an HTTP call to upstream `callout` and pauses until its
//! answer. `tests/plugins/README.md` is the exact contract.

use std::alloc::{alloc, dealloc, Layout};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::ptr::null_mut;

const LOG_INFO: u32 = 2;
const MAP_REQUEST_HEADERS: u32 = 0;
const STREAM_REQUEST: u32 = 0;
const STATUS_OK: u32 = 0;
/// Tick period set in `proxy_on_configure`.
const TICK_MS: u32 = 20;
/// The tick stops (period 0) after this many ticks.
const TICKS: u32 = 3;
/// Timeout of the HTTP call.
const CALLOUT_TIMEOUT_MS: u32 = 1000;

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_log(level: u32, message_data: *const u8, message_size: usize) -> u32;
    fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
    fn proxy_get_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> u32;
    #[allow(clippy::too_many_arguments)]
    fn proxy_http_call(
        upstream_data: *const u8,
        upstream_size: usize,
        headers_data: *const u8,
        headers_size: usize,
        body_data: *const u8,
        body_size: usize,
        trailers_data: *const u8,
        trailers_size: usize,
        timeout_ms: u32,
        return_token: *mut u32,
    ) -> u32;
    fn proxy_set_effective_context(context_id: u32) -> u32;
    fn proxy_continue_stream(stream_type: u32) -> u32;
}

thread_local! {
    /// Ticks so far.
    static TICKED: Cell<u32> = const { Cell::new(0) };
    /// HTTP call token → the stream context that made the call.
    static CALLOUTS: RefCell<HashMap<u32, u32>> = RefCell::new(HashMap::new());
}

fn log(message: &str) {
    // SAFETY: the pointer and length come from a live `&str`, which the host only reads
    // during the call.
    unsafe {
        proxy_log(LOG_INFO, message.as_ptr(), message.len());
    }
}

fn set_tick_period(period: u32) -> u32 {
    // SAFETY: a host import taking and returning plain integers; no memory is shared.
    unsafe { proxy_set_tick_period_milliseconds(period) }
}

/// The layout of a block of `size` bytes handed to the host (never zero-sized).
fn block(size: usize) -> Option<Layout> {
    Layout::array::<u8>(size.max(1)).ok()
}

/// The allocator the host gives results with; `0` when it cannot allocate.
#[no_mangle]
pub extern "C" fn proxy_on_memory_allocate(size: usize) -> *mut u8 {
    let Some(layout) = block(size) else {
        return null_mut();
    };
    // SAFETY: `layout` is valid and not zero-sized.
    unsafe { alloc(layout) }
}

/// Copies out and frees a block the host filled through `proxy_on_memory_allocate`.
fn take(ptr: *mut u8, len: usize) -> Vec<u8> {
    if ptr.is_null() {
        return Vec::new();
    }
    let Some(layout) = block(len) else {
        return Vec::new();
    };
    // SAFETY: the host allocated `ptr` with `proxy_on_memory_allocate(len)` (it allocates
    // exactly the length it returns) and wrote `len` bytes to it.
    let bytes = unsafe { std::slice::from_raw_parts(ptr, len) }.to_vec();
    // SAFETY: `ptr` came from `alloc` with this same layout and is not used after this.
    unsafe { dealloc(ptr, layout) };
    bytes
}

/// A request header's value, or `None` when the host does not answer OK.
fn request_header(name: &str) -> Option<String> {
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    // SAFETY: the key is a live `&str` the host only reads during the call; the two return
    // pointers point at live locals the host writes during the call.
    let status = unsafe {
        proxy_get_header_map_value(
            MAP_REQUEST_HEADERS,
            name.as_ptr(),
            name.len(),
            &mut data,
            &mut size,
        )
    };
    let value = take(data, size);
    (status == STATUS_OK).then(|| String::from_utf8_lossy(&value).into_owned())
}

/// A header map in the ABI's encoding.
fn serialize(pairs: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (k, v) in pairs {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
    out
}

/// `GET <path>` to upstream `callout`: the token, or the failing status.
fn http_call(path: &str) -> Result<u32, u32> {
    let upstream = "callout";
    let headers = serialize(&[
        (":method", "GET"),
        (":path", path),
        (":authority", "callout.test"),
    ]);
    let trailers = serialize(&[]);
    let mut token: u32 = 0;
    // SAFETY: every pointer and length comes from a live slice the host only reads during
    // the call (the body is empty: a null pointer with length 0); the token pointer points at
    // a live local the host writes during the call.
    let status = unsafe {
        proxy_http_call(
            upstream.as_ptr(),
            upstream.len(),
            headers.as_ptr(),
            headers.len(),
            std::ptr::null(),
            0,
            trailers.as_ptr(),
            trailers.len(),
            CALLOUT_TIMEOUT_MS,
            &mut token,
        )
    };
    if status == STATUS_OK {
        Ok(token)
    } else {
        Err(status)
    }
}

/// Marks the module as built for Proxy-Wasm ABI v0.2.1; never called.
#[no_mangle]
pub extern "C" fn proxy_abi_version_0_2_1() {}

#[no_mangle]
pub extern "C" fn proxy_on_context_create(context_id: u32, parent_context_id: u32) {
    log(&format!(
        "raw on_context_create ctx={context_id} parent={parent_context_id}"
    ));
}

#[no_mangle]
pub extern "C" fn proxy_on_vm_start(context_id: u32, vm_configuration_size: usize) -> u32 {
    log(&format!(
        "raw on_vm_start ctx={context_id} len={vm_configuration_size}"
    ));
    1
}

#[no_mangle]
pub extern "C" fn proxy_on_configure(context_id: u32, plugin_configuration_size: usize) -> u32 {
    let status = set_tick_period(TICK_MS);
    log(&format!(
        "raw on_configure ctx={context_id} len={plugin_configuration_size} tick={status}"
    ));
    1
}

#[no_mangle]
pub extern "C" fn proxy_on_tick(context_id: u32) {
    let n = TICKED.with(|t| {
        t.set(t.get() + 1);
        t.get()
    });
    let stop = if n == TICKS {
        format!(" stop={}", set_tick_period(0))
    } else {
        String::new()
    };
    log(&format!("raw on_tick ctx={context_id} n={n}{stop}"));
}

#[no_mangle]
pub extern "C" fn proxy_on_request_headers(
    context_id: u32,
    num_headers: usize,
    end_of_stream: u32,
) -> u32 {
    let mut action = 0;
    if let Some(path) = request_header("x-conf-raw-callout") {
        match http_call(&path) {
            Ok(token) => {
                CALLOUTS.with(|c| c.borrow_mut().insert(token, context_id));
                log(&format!("raw dispatch ctx={context_id} token={token}"));
                action = 1;
            }
            Err(status) => log(&format!("raw dispatch ctx={context_id} error={status}")),
        }
    }
    log(&format!(
        "raw on_request_headers ctx={context_id} headers={num_headers} eos={end_of_stream} action={action}"
    ));
    action
}

#[no_mangle]
pub extern "C" fn proxy_on_request_body(
    context_id: u32,
    body_size: usize,
    end_of_stream: u32,
) -> u32 {
    log(&format!(
        "raw on_request_body ctx={context_id} len={body_size} eos={end_of_stream}"
    ));
    0
}

#[no_mangle]
pub extern "C" fn proxy_on_request_trailers(context_id: u32, num_trailers: usize) -> u32 {
    log(&format!(
        "raw on_request_trailers ctx={context_id} trailers={num_trailers}"
    ));
    0
}

#[no_mangle]
pub extern "C" fn proxy_on_response_headers(
    context_id: u32,
    num_headers: usize,
    end_of_stream: u32,
) -> u32 {
    log(&format!(
        "raw on_response_headers ctx={context_id} headers={num_headers} eos={end_of_stream}"
    ));
    0
}

#[no_mangle]
pub extern "C" fn proxy_on_response_body(
    context_id: u32,
    body_size: usize,
    end_of_stream: u32,
) -> u32 {
    log(&format!(
        "raw on_response_body ctx={context_id} len={body_size} eos={end_of_stream}"
    ));
    0
}

#[no_mangle]
pub extern "C" fn proxy_on_response_trailers(context_id: u32, num_trailers: usize) -> u32 {
    log(&format!(
        "raw on_response_trailers ctx={context_id} trailers={num_trailers}"
    ));
    0
}

#[no_mangle]
pub extern "C" fn proxy_on_http_call_response(
    context_id: u32,
    token: u32,
    num_headers: usize,
    body_size: usize,
    num_trailers: usize,
) {
    let stream = CALLOUTS.with(|c| c.borrow_mut().remove(&token));
    log(&format!(
        "raw on_http_call_response ctx={context_id} token={token} headers={num_headers} body={body_size} trailers={num_trailers} stream={}",
        stream.unwrap_or(0)
    ));
    if let Some(stream) = stream {
        // SAFETY: host imports taking and returning plain integers; no memory is shared.
        let (effective, resumed) = unsafe {
            (
                proxy_set_effective_context(stream),
                proxy_continue_stream(STREAM_REQUEST),
            )
        };
        log(&format!(
            "raw resume ctx={context_id} stream={stream} effective={effective} continue={resumed}"
        ));
    }
}

#[no_mangle]
pub extern "C" fn proxy_on_log(context_id: u32) {
    log(&format!("raw on_log ctx={context_id}"));
}

#[no_mangle]
pub extern "C" fn proxy_on_done(context_id: u32) -> u32 {
    log(&format!("raw on_done ctx={context_id}"));
    1
}

#[no_mangle]
pub extern "C" fn proxy_on_delete(context_id: u32) {
    log(&format!("raw on_delete ctx={context_id}"));
}
