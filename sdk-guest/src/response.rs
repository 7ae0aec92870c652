//! The response, as a filter sees it.

use sluice_abi::{BufferType, MapType};

use crate::body::BodyState;
use crate::error::Error;
use crate::headers::Map;

const MAP: Map = Map(MapType::ResponseHeaders);

/// The response of the current callback: its status, headers and, in a body callback, body.
///
/// Header changes made in `on_response_headers` reach the client; later ones have no effect.
/// A filter that changes the body's length removes `content-length` in
/// `on_response_headers` first.
#[derive(Debug)]
pub struct Response {
    pub(crate) body: BodyState,
}

crate::headers::header_methods!(Response, MAP);

impl Response {
    pub(crate) fn new(body: BodyState) -> Response {
        Response { body }
    }

    /// The status code (`:status`).
    pub fn status(&self) -> Result<u16, Error> {
        MAP.get(":status")?
            .and_then(|s| s.parse().ok())
            .ok_or(Error::Decode("the response's :status"))
    }

    /// Changes the status code.
    pub fn set_status(&mut self, status: u16) -> Result<(), Error> {
        MAP.set(":status", status.to_string().as_bytes())
    }

    /// Whether nothing follows: in `on_response_headers`, the response has no body; in
    /// `on_response_body`, this is its last part.
    pub fn end_of_stream(&self) -> bool {
        self.body.end_of_stream
    }

    /// In `on_response_body`: the body bytes of this callback (what arrived, or everything
    /// buffered so far after `Action::Pause`). Elsewhere: empty.
    pub fn body(&self) -> Result<Vec<u8>, Error> {
        self.body.read(BufferType::ResponseBody)
    }

    /// In `on_response_body`: how many body bytes this callback is about.
    pub fn body_len(&self) -> usize {
        if self.body.in_body {
            self.body.size
        } else {
            0
        }
    }

    /// In `on_response_body`: replaces this callback's body bytes.
    pub fn set_body(&mut self, body: impl AsRef<[u8]>) -> Result<(), Error> {
        self.body.replace(BufferType::ResponseBody, body.as_ref())
    }
}
