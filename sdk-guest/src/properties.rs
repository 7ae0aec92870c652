//! Properties: what the host knows about the request, the connection and the plugin
//! (`proxy_get_property`), and custom properties shared with later plugins of the request.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sluice_abi::path;

use crate::error::{Context, Error};
use crate::hostcalls;

/// The raw value of the property at `path` (segments such as `["request", "id"]`); `None` if
/// the host has none (or hides it from this plugin).
pub fn get(segments: &[&str]) -> Result<Option<Vec<u8>>, Error> {
    hostcalls::property(&path::join(segments)).during("read a property")
}

/// A property as text.
pub fn get_string(segments: &[&str]) -> Result<Option<String>, Error> {
    Ok(get(segments)?.map(|v| String::from_utf8_lossy(&v).into_owned()))
}

/// A property holding an integer (8 bytes little-endian).
pub fn get_u64(segments: &[&str]) -> Result<Option<u64>, Error> {
    match get(segments)? {
        None => Ok(None),
        Some(v) => {
            let bytes: [u8; 8] = v
                .as_slice()
                .try_into()
                .map_err(|_| Error::Decode("an integer property"))?;
            Ok(Some(u64::from_le_bytes(bytes)))
        }
    }
}

/// Sets a custom property of the request (visible to later plugins and phases).
pub fn set(segments: &[&str], value: &[u8]) -> Result<(), Error> {
    hostcalls::set_property(&path::join(segments), value).during("set a property")
}

/// The request's id (`request.id`).
pub fn request_id() -> Result<Option<String>, Error> {
    get_string(&["request", "id"])
}

/// The matched route (`route_name`; Sluice only).
pub fn route_name() -> Result<Option<String>, Error> {
    get_string(&["route_name"])
}

/// The plugin's name in the host's configuration (`plugin_name`).
pub fn plugin_name() -> Result<Option<String>, Error> {
    get_string(&["plugin_name"])
}

/// The client's address, `ip:port` (`source.address`). On Sluice only a plugin granted
/// `client_address` sees it; others get `None`.
pub fn client_address() -> Result<Option<String>, Error> {
    get_string(&["source", "address"])
}

/// The client's IP: [`client_address`] without its port.
pub fn client_ip() -> Result<Option<String>, Error> {
    Ok(client_address()?.map(|a| strip_port(&a).to_string()))
}

/// `ip` from `ip:port` or `[v6]:port`.
fn strip_port(addr: &str) -> &str {
    if let Some(rest) = addr.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match addr.rsplit_once(':') {
        Some((ip, port)) if !ip.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => ip,
        _ => addr,
    }
}

/// The host's wall clock.
pub fn now() -> Result<SystemTime, Error> {
    let nanos = hostcalls::now_nanos().during("read the clock")?;
    Ok(UNIX_EPOCH + Duration::from_nanos(nanos))
}

/// The host's wall clock, nanoseconds since the Unix epoch.
pub fn now_nanos() -> Result<u64, Error> {
    hostcalls::now_nanos().during("read the clock")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_stripped() {
        assert_eq!(strip_port("10.0.0.1:5555"), "10.0.0.1");
        assert_eq!(strip_port("[::1]:80"), "::1");
        assert_eq!(strip_port("::1"), "::1");
        assert_eq!(strip_port("10.0.0.1"), "10.0.0.1");
    }
}
