//! The forwarding headers Sluice sets on the upstream request (`x-request-id`,
//! `x-forwarded-for`, `x-forwarded-proto`), and the request ids it makes.

use std::net::IpAddr;

use http::HeaderValue;

use crate::head::{HeadError, RequestHeadMut};

const X_REQUEST_ID: &str = "x-request-id";
const X_FORWARDED_FOR: &str = "x-forwarded-for";
const X_FORWARDED_PROTO: &str = "x-forwarded-proto";
const HTTP: HeaderValue = HeaderValue::from_static("http");
const HTTPS: HeaderValue = HeaderValue::from_static("https");

/// A client-sent request id is kept if it is 1-128 characters of `[A-Za-z0-9._:-]`.
pub fn valid_request_id(v: &[u8]) -> bool {
    !v.is_empty()
        && v.len() <= 128
        && v.iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// A request id made by Sluice: 32 random hex digits, kept inline (no allocation).
#[derive(Clone, Copy)]
pub struct RequestId([u8; 32]);

impl Default for RequestId {
    fn default() -> Self {
        RequestId::new()
    }
}

impl RequestId {
    /// A new random id.
    pub fn new() -> Self {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let r = fastrand::u128(..);
        let mut out = [0u8; 32];
        for (i, o) in out.iter_mut().enumerate() {
            *o = HEX[((r >> (i * 4)) & 0xf) as usize];
        }
        RequestId(out)
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("hex digits are ASCII")
    }
}

/// The forwarding headers Sluice sets on the upstream request.
pub struct Forwarding {
    /// `x-request-id`, when Sluice made the id.
    request_id: Option<RequestId>,
    /// `x-forwarded-for`: what the client sent, with its address appended.
    forwarded_for: Option<String>,
    /// `x-forwarded-proto`.
    proto: HeaderValue,
}

impl Forwarding {
    /// The headers for `req` from `client` (`new_id`: the id Sluice made, if any).
    pub fn new(
        req: &http::request::Parts,
        new_id: Option<&RequestId>,
        client: Option<IpAddr>,
        tls: bool,
    ) -> Self {
        let forwarded_for = client.map(|ip| {
            let mut prior = req
                .headers
                .get_all(X_FORWARDED_FOR)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .peekable();
            if prior.peek().is_some() {
                let mut joined = prior.collect::<Vec<_>>().join(", ");
                joined.push_str(", ");
                joined.push_str(&ip.to_string());
                joined
            } else {
                ip.to_string()
            }
        });
        Forwarding {
            request_id: new_id.copied(),
            forwarded_for,
            proto: if tls { HTTPS } else { HTTP },
        }
    }

    /// `(name, value)` of each header to set.
    pub fn headers(&self) -> impl Iterator<Item = (&'static str, &[u8])> {
        [
            self.request_id
                .as_ref()
                .map(|id| (X_REQUEST_ID, id.0.as_slice())),
            self.forwarded_for
                .as_ref()
                .map(|v| (X_FORWARDED_FOR, v.as_bytes())),
            Some((X_FORWARDED_PROTO, self.proto.as_bytes())),
        ]
        .into_iter()
        .flatten()
    }

    /// Sets them on `req`.
    pub fn apply(&self, req: &mut impl RequestHeadMut) -> Result<(), HeadError> {
        for (name, value) in self.headers() {
            req.insert_header(name, value)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids() {
        assert!(valid_request_id(b"abc-123_x.y:z"));
        assert!(!valid_request_id(b""));
        assert!(!valid_request_id(b"has space"));
        assert!(!valid_request_id(&[b'a'; 129]));
        let a = RequestId::new();
        assert_eq!(a.as_str().len(), 32);
        assert!(valid_request_id(a.as_str().as_bytes()));
        assert_ne!(a.as_str(), RequestId::new().as_str());
    }
}
