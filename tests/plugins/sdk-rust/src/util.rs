//! Small helpers shared by the modes.

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{LogLevel, Status};

/// Most compare-and-swap attempts [`cas_increment`] makes before giving up.
const MAX_CAS_ATTEMPTS: usize = 1000;

/// Logs through the host; a failure to log is not worth failing a callback for.
pub fn log(level: LogLevel, message: &str) {
    let _ = hostcalls::log(level, message);
}

/// Records a failed host call as an `x-sdk-error: <what>: <status>` request header.
pub fn add_error<C: HttpContext + ?Sized>(ctx: &C, what: &str, status: Status) {
    ctx.add_http_request_header("x-sdk-error", &format!("{what}: {status:?}"));
}

/// Decodes a shared-data counter: missing or empty is 0, otherwise 8 bytes little-endian.
pub fn decode_counter(value: Option<&[u8]>) -> Result<u64, String> {
    match value {
        None | Some([]) => Ok(0),
        Some(bytes) => <[u8; 8]>::try_from(bytes)
            .map(u64::from_le_bytes)
            .map_err(|_| format!("bad-length-{}", bytes.len())),
    }
}

/// Renders an 8-byte little-endian integer property in decimal: `absent` when missing,
/// `bad-length-N` when it is not 8 bytes long.
pub fn render_u64_property(value: Option<&[u8]>) -> String {
    match value {
        None => "absent".to_owned(),
        Some(bytes) => match <[u8; 8]>::try_from(bytes) {
            Ok(array) => u64::from_le_bytes(array).to_string(),
            Err(_) => format!("bad-length-{}", bytes.len()),
        },
    }
}

/// Renders a string property (UTF-8, lossy), or `absent` when missing.
pub fn render_str_property(value: Option<&[u8]>) -> String {
    value.map_or_else(
        || "absent".to_owned(),
        |bytes| String::from_utf8_lossy(bytes).into_owned(),
    )
}

/// Adds one to the little-endian `u64` in shared data `key` with compare-and-swap, retrying
/// on a CAS mismatch, and returns the value stored.
pub fn cas_increment<C: Context + ?Sized>(ctx: &C, key: &str) -> Result<u64, String> {
    for _ in 0..MAX_CAS_ATTEMPTS {
        let (value, cas) = ctx.get_shared_data(key);
        let next = decode_counter(value.as_deref())?.wrapping_add(1);
        match ctx.set_shared_data(key, Some(&next.to_le_bytes()), cas) {
            Ok(()) => return Ok(next),
            Err(Status::CasMismatch) => continue,
            Err(status) => return Err(format!("{status:?}")),
        }
    }
    Err("cas-retries-exhausted".to_owned())
}

/// Burns CPU forever without any host call; `black_box` keeps the loop from being optimised
/// away.
pub fn spin_forever() -> ! {
    let mut counter: u64 = 0;
    loop {
        counter = core::hint::black_box(counter.wrapping_add(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_decode() {
        assert_eq!(decode_counter(None), Ok(0));
        assert_eq!(decode_counter(Some(&[])), Ok(0));
        assert_eq!(decode_counter(Some(&7u64.to_le_bytes())), Ok(7));
        assert_eq!(
            decode_counter(Some(&[1, 2, 3])),
            Err("bad-length-3".to_owned())
        );
    }

    #[test]
    fn properties_render() {
        assert_eq!(render_u64_property(None), "absent");
        assert_eq!(render_u64_property(Some(&42u64.to_le_bytes())), "42");
        assert_eq!(render_u64_property(Some(b"200")), "bad-length-3");
        assert_eq!(render_str_property(None), "absent");
        assert_eq!(render_str_property(Some(b"/a?b")), "/a?b");
        assert_eq!(render_str_property(Some(b"a\xffb")), "a\u{fffd}b");
    }
}
