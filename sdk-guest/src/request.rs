//! The request, as a filter sees it.

use sluice_abi::{BufferType, MapType};

use crate::body::BodyState;
use crate::dispatcher;
use crate::error::Error;
use crate::headers::Map;
use crate::http_call::{Call, CallError, CallResponse};
use crate::reply::Action;

const MAP: Map = Map(MapType::RequestHeaders);

/// What a callout's closure receives, and what it decides.
pub type OnCallResponse =
    Box<dyn FnOnce(&mut Request, Result<CallResponse, CallError>) -> Result<Action, Error>>;

/// The request of the current callback: its headers (with the pseudo-headers `:method`,
/// `:path`, `:authority` and `:scheme`), and in a body callback its body.
///
/// Header changes made in `on_request_headers` (or while the request is paused there) reach
/// the upstream; later ones have no effect.
#[derive(Debug)]
pub struct Request {
    pub(crate) body: BodyState,
}

crate::headers::header_methods!(Request, MAP);

impl Request {
    pub(crate) fn new(body: BodyState) -> Request {
        Request { body }
    }

    fn pseudo(&self, name: &str) -> Result<String, Error> {
        Ok(MAP.get(name)?.unwrap_or_default())
    }

    /// The method (`:method`).
    pub fn method(&self) -> Result<String, Error> {
        self.pseudo(":method")
    }

    /// The path with its query (`:path`).
    pub fn path(&self) -> Result<String, Error> {
        self.pseudo(":path")
    }

    /// The path without its query.
    pub fn path_only(&self) -> Result<String, Error> {
        let p = self.path()?;
        Ok(match p.split_once('?') {
            Some((path, _)) => path.to_string(),
            None => p,
        })
    }

    /// The value of query parameter `name`, percent-decoded (`+` as a space).
    pub fn query_param(&self, name: &str) -> Result<Option<String>, Error> {
        let p = self.path()?;
        Ok(query_param(&p, name))
    }

    /// Sets the path (with its query).
    pub fn set_path(&mut self, path: &str) -> Result<(), Error> {
        MAP.set(":path", path.as_bytes())
    }

    /// The authority (`:authority`, the Host).
    pub fn authority(&self) -> Result<String, Error> {
        self.pseudo(":authority")
    }

    /// The scheme (`:scheme`).
    pub fn scheme(&self) -> Result<String, Error> {
        self.pseudo(":scheme")
    }

    /// Whether nothing follows: in `on_request_headers`, the request has no body; in
    /// `on_request_body`, this is its last part.
    pub fn end_of_stream(&self) -> bool {
        self.body.end_of_stream
    }

    /// In `on_request_body`: the body bytes of this callback (what arrived, or everything
    /// buffered so far after [`Action::Pause`]). Elsewhere: empty.
    pub fn body(&self) -> Result<Vec<u8>, Error> {
        self.body.read(BufferType::RequestBody)
    }

    /// In `on_request_body`: how many body bytes this callback is about.
    pub fn body_len(&self) -> usize {
        if self.body.in_body {
            self.body.size
        } else {
            0
        }
    }

    /// In `on_request_body`: replaces this callback's body bytes. If the length changes,
    /// remove `content-length` in `on_request_headers` first.
    pub fn set_body(&mut self, body: impl AsRef<[u8]>) -> Result<(), Error> {
        self.body.replace(BufferType::RequestBody, body.as_ref())
    }

    /// Sends `call` to `upstream` (an upstream the host lets this plugin call). When the
    /// response arrives (or the call fails), `on_response` runs with this request and decides:
    /// [`Action::Continue`] resumes a paused request, [`Action::Reply`] answers it. Return
    /// [`Action::Pause`] from the current callback to wait for it.
    pub fn http_call(
        &mut self,
        upstream: &str,
        call: Call,
        on_response: impl FnOnce(&mut Request, Result<CallResponse, CallError>) -> Result<Action, Error>
            + 'static,
    ) -> Result<(), Error> {
        let token = call.send(upstream)?;
        dispatcher::await_call(token, Box::new(on_response));
        Ok(())
    }
}

/// The value of `name` in the query of `path`, percent-decoded.
pub fn query_param(path: &str, name: &str) -> Option<String> {
    let (_, query) = path.split_once('?')?;
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k) == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params() {
        assert_eq!(
            query_param("/a?x=1&key=s%20e+c%2Fr", "key").as_deref(),
            Some("s e c/r")
        );
        assert_eq!(query_param("/a?x=1", "key"), None);
        assert_eq!(query_param("/a", "x"), None);
        assert_eq!(query_param("/a?flag&x=2", "flag").as_deref(), Some(""));
        assert_eq!(
            query_param("/a?k=%zz%4", "k").as_deref(),
            Some("%zz%4"),
            "bad escapes kept"
        );
        assert_eq!(query_param("/a?k=%41", "k").as_deref(), Some("A"));
    }
}
