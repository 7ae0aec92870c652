//! HTTP callouts: a request to another upstream (`proxy_http_call`), whose response runs a
//! closure later, when the host delivers it.

use std::time::Duration;

use sluice_abi::{BufferType, MapType};

use crate::error::{Context, Error};
use crate::headers::{decode_pairs, encode_pairs};
use crate::hostcalls;

/// A request to send to another upstream.
///
/// ```
/// use std::time::Duration;
/// use sluice_sdk::Call;
/// let call = Call::get("/check?user=42")
///     .authority("authz.internal")
///     .header("accept", "application/json")
///     .timeout(Duration::from_millis(200));
/// assert_eq!(call.method(), "GET");
/// ```
#[derive(Debug, Clone)]
pub struct Call {
    method: String,
    path: String,
    authority: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
    timeout: Duration,
}

impl Call {
    /// A request with this method and path (with its query), authority `localhost`, no body,
    /// and a 1 s timeout.
    pub fn new(method: impl Into<String>, path: impl Into<String>) -> Call {
        Call {
            method: method.into(),
            path: path.into(),
            authority: "localhost".into(),
            headers: Vec::new(),
            body: Vec::new(),
            timeout: Duration::from_secs(1),
        }
    }

    /// A `GET`.
    pub fn get(path: impl Into<String>) -> Call {
        Call::new("GET", path)
    }

    /// A `POST`.
    pub fn post(path: impl Into<String>) -> Call {
        Call::new("POST", path)
    }

    /// The `:authority` (Host) to send.
    pub fn authority(mut self, authority: impl Into<String>) -> Call {
        self.authority = authority.into();
        self
    }

    /// Adds a header.
    pub fn header(mut self, name: impl Into<String>, value: impl AsRef<[u8]>) -> Call {
        self.headers.push((name.into(), value.as_ref().to_vec()));
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Call {
        self.body = body.into();
        self
    }

    /// How long the whole exchange may take.
    pub fn timeout(mut self, timeout: Duration) -> Call {
        self.timeout = timeout;
        self
    }

    /// The method.
    pub fn method(&self) -> &str {
        &self.method
    }

    /// Sends the request to `upstream` from the plugin's root context (in
    /// [`Plugin::on_tick`](crate::Plugin::on_tick), say: the host refuses calls from
    /// `on_vm_start` and `on_configure`); `on_response` runs when the response arrives or the
    /// call fails. Calls made while handling a request go through
    /// [`Request::http_call`](crate::Request::http_call) instead. Returns the host's token.
    pub fn send_from_root(
        &self,
        upstream: &str,
        on_response: impl FnOnce(Result<CallResponse, CallError>) + 'static,
    ) -> Result<u32, Error> {
        let token = self.send(upstream)?;
        crate::dispatcher::await_root_call(token, Box::new(on_response));
        Ok(token)
    }

    /// Sends the request to `upstream`; returns the host's token for it.
    pub(crate) fn send(&self, upstream: &str) -> Result<u32, Error> {
        let mut pairs: Vec<(&str, &[u8])> = vec![
            (":method", self.method.as_bytes()),
            (":path", self.path.as_bytes()),
            (":authority", self.authority.as_bytes()),
        ];
        pairs.extend(self.headers.iter().map(|(k, v)| (k.as_str(), v.as_slice())));
        let headers = encode_pairs(pairs)?;
        // The reference host reads the timeout as a signed 32-bit count (a larger one is
        // BAD_ARGUMENT): cap it there. 0 would mean no deadline; a call always has one.
        let ms = u32::try_from(self.timeout.as_millis())
            .unwrap_or(u32::MAX)
            .clamp(1, i32::MAX as u32);
        hostcalls::http_call(upstream, &headers, &self.body, ms).during("send an HTTP call")
    }
}

/// The response to a [`Call`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl CallResponse {
    /// A response as a test would script it.
    pub fn new(status: u16, headers: Vec<(String, String)>, body: Vec<u8>) -> CallResponse {
        CallResponse {
            status,
            headers,
            body,
        }
    }

    /// The status code.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// All headers, in order.
    pub fn headers(&self) -> &[(String, String)] {
        &self.headers
    }

    /// The body.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// Reads the response the host is delivering (in `proxy_on_http_call_response`).
    pub(crate) fn from_host(body_size: usize) -> Result<CallResponse, Error> {
        let mut headers = match hostcalls::header_pairs(MapType::HttpCallResponseHeaders)
            .during("read the call's response headers")?
        {
            Some(bytes) => decode_pairs(&bytes)?,
            None => Vec::new(),
        };
        let status = headers
            .iter()
            .position(|(k, _)| k == ":status")
            .map(|i| headers.remove(i).1)
            .and_then(|s| s.parse().ok())
            .ok_or(Error::Decode("the call's :status"))?;
        let body = if body_size == 0 {
            Vec::new()
        } else {
            hostcalls::buffer(BufferType::HttpCallResponseBody, 0, body_size)
                .during("read the call's response body")?
                .unwrap_or_default()
        };
        Ok(CallResponse {
            status,
            headers,
            body,
        })
    }
}

/// Why a [`Call`] brought no response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError {
    /// The host reported the call failed: unreachable upstream, timeout, bad response.
    Failed,
    /// The response could not be read.
    Unreadable(Error),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Failed => f.write_str("the call failed (no response)"),
            CallError::Unreadable(e) => write!(f, "the call's response is unreadable: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_and_response() {
        let c = Call::post("/x")
            .authority("a")
            .header("k", "v")
            .body("b")
            .timeout(Duration::from_millis(5));
        assert_eq!(
            (c.method(), c.path.as_str(), c.authority.as_str()),
            ("POST", "/x", "a")
        );
        assert_eq!(c.timeout, Duration::from_millis(5));
        let r = CallResponse::new(200, vec![("X-A".into(), "1".into())], b"ok".to_vec());
        assert_eq!(
            (r.status(), r.header("x-a"), r.body()),
            (200, Some("1"), &b"ok"[..])
        );
        assert_eq!(r.header("x-b"), None);
        assert_eq!(
            CallError::Failed.to_string(),
            "the call failed (no response)"
        );
    }
}
