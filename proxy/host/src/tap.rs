//! What a chain member did with one request, for whoever watches it: the figures of a version
//! under rollout ([`Served`]), and for shadow runs and captures, the request and response as
//! the member saw them and as it left them ([`Tapped`]).
//!
//! The chain knows watchers only as [`Observer`]s; they are told when the request ends (the
//! member is dropped with the request's chain).

use crate::wasm::header_list::HeaderList;
use crate::wasm::settings::Version;
use crate::wasm::stream::RequestInfo;

/// What one version did with one request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Served {
    /// It failed (trap, fuel, deadline, memory, ABI, no healthy VM).
    pub failed: bool,
    /// The status of its local reply, if it answered the request itself.
    pub replied: Option<u16>,
    /// It reset the stream.
    pub reset: bool,
    /// Guest time it spent on the request, ns.
    pub nanos: u64,
}

/// A body as it went into or out of a member: its first bytes (up to a cap), its length and a
/// hash of what the cap left out (bodies within the cap, the usual case, are not hashed: they
/// compare byte by byte).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodySeen {
    /// The first bytes, at most the cap given to [`BodySeen::new`].
    pub bytes: Vec<u8>,
    /// Every byte counted.
    pub len: u64,
    /// FNV-1a of the bytes past the cap.
    pub hash: u64,
    cap: usize,
}

impl BodySeen {
    /// An empty body keeping at most `cap` bytes.
    pub fn new(cap: usize) -> BodySeen {
        BodySeen {
            bytes: Vec::new(),
            len: 0,
            hash: crate::hash::fnv1a64(b""),
            cap,
        }
    }

    /// Adds `part`.
    pub fn add(&mut self, part: &[u8]) {
        let room = self.cap.saturating_sub(self.bytes.len());
        let (kept, rest) = part.split_at(room.min(part.len()));
        self.bytes.extend_from_slice(kept);
        self.len += part.len() as u64;
        if !rest.is_empty() {
            self.hash = crate::hash::fnv1a64_update(self.hash, rest);
        }
    }

    /// Whether all of it was kept.
    pub fn complete(&self) -> bool {
        self.bytes.len() as u64 == self.len
    }

    /// Whether `other` holds the same bytes.
    pub fn same(&self, other: &BodySeen) -> bool {
        self.len == other.len && self.hash == other.hash && self.bytes == other.bytes
    }
}

/// The request and response as one member saw them and left them.
#[derive(Debug, Clone)]
pub struct Tapped {
    /// The request's facts as the chain started (id, addresses, route).
    pub info: RequestInfo,
    /// Request headers (pseudo-headers first) before its `on_request_headers`.
    pub request_in: Option<HeaderList>,
    /// ... and after it (and its request-body callbacks, while the header could change).
    pub request_out: Option<HeaderList>,
    /// Whether the request had a body.
    pub request_has_body: bool,
    /// Request body into it, and out of it.
    pub request_body_in: BodySeen,
    /// See `request_body_in`.
    pub request_body_out: BodySeen,
    /// Response headers (with `:status`) before its `on_response_headers`.
    pub response_in: Option<HeaderList>,
    /// ... and after it.
    pub response_out: Option<HeaderList>,
    /// Response body into it, and out of it.
    pub response_body_in: BodySeen,
    /// See `response_body_in`.
    pub response_body_out: BodySeen,
    /// Its module has `proxy_on_request_body` (it can read request bodies).
    pub sees_request_body: bool,
    /// Its module has `proxy_on_response_body`.
    pub sees_response_body: bool,
}

impl Tapped {
    /// An empty record keeping at most `cap` bytes of each body.
    pub fn new(cap: usize) -> Tapped {
        Tapped {
            info: RequestInfo::default(),
            request_in: None,
            request_out: None,
            request_has_body: false,
            request_body_in: BodySeen::new(cap),
            request_body_out: BodySeen::new(cap),
            response_in: None,
            response_out: None,
            response_body_in: BodySeen::new(cap),
            response_body_out: BodySeen::new(cap),
            sees_request_body: false,
            sees_response_body: false,
        }
    }
}

impl Tapped {
    /// The request's or response's body into (`out` false) or out of the member.
    pub fn body(&mut self, kind: crate::wasm::stream::BodyKind, out: bool) -> &mut BodySeen {
        use crate::wasm::stream::BodyKind;
        match (kind, out) {
            (BodyKind::Request, false) => &mut self.request_body_in,
            (BodyKind::Request, true) => &mut self.request_body_out,
            (BodyKind::Response, false) => &mut self.response_body_in,
            (BodyKind::Response, true) => &mut self.response_body_out,
        }
    }
}

/// Told what a chain member did when its request ends.
pub trait Observer: Send + Sync {
    /// The request ended; `tapped` is given when the watch asked for it.
    fn done(&self, version: Version, served: Served, tapped: Option<Tapped>);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_compare_within_and_past_the_cap() {
        let body = |cap: usize, parts: &[&[u8]]| {
            let mut b = BodySeen::new(cap);
            for p in parts {
                b.add(p);
            }
            b
        };
        let a = body(4, &[b"ab", b"cdef"]);
        assert_eq!(
            (a.bytes.as_slice(), a.len, a.complete()),
            (&b"abcd"[..], 6, false)
        );
        assert!(a.same(&body(4, &[b"abcdef"])), "parts do not matter");
        assert!(!a.same(&body(4, &[b"abcdeg"])), "past the cap, the hash");
        assert!(!a.same(&body(4, &[b"xbcdef"])), "within the cap, the bytes");
        assert!(body(8, &[b"abc"]).same(&body(8, &[b"a", b"bc"])));
        assert!(!body(8, &[b"abc"]).same(&body(8, &[b"abd"])));
    }
}
