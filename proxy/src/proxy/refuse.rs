//! Requests refused before anything else looks at them: ambiguous framing (smuggling), a
//! head or declared body over the listener's limits.

use pingora::http::RequestHeader;

use crate::head::content_length;

use super::*;

impl SluiceProxy {
    /// Why a request must be refused before anything else looks at it: a framing that two
    /// servers could read differently (request smuggling), or a header or declared body over
    /// the listener's limits. pingora has already refused malformed request lines and header
    /// lines, obfuscated `Transfer-Encoding` and conflicting `Content-Length` values.
    pub(super) fn refuse(&self, req: &RequestHeader) -> Option<(u16, String)> {
        let h = &req.headers;
        let lengths = h.get_all(http::header::CONTENT_LENGTH).iter().count();
        if lengths > 1 {
            return Some((
                400,
                "400 Bad Request: more than one Content-Length header\n".into(),
            ));
        }
        if lengths == 1 && h.contains_key(http::header::TRANSFER_ENCODING) {
            return Some((
                400,
                "400 Bad Request: both Content-Length and Transfer-Encoding; the message \
                 framing is ambiguous\n"
                    .into(),
            ));
        }
        let line = req.method.as_str().len() + req.raw_path().len() + 12;
        let size = h
            .iter()
            .fold(line, |n, (k, v)| n + k.as_str().len() + v.len() + 4);
        if size > self.max_header_bytes {
            return Some((
                431,
                format!(
                    "431 Request Header Fields Too Large: {size} bytes of header, this listener \
                     accepts {}\n",
                    self.max_header_bytes
                ),
            ));
        }
        if let (Some(max), Some(len)) = (self.max_body_bytes, content_length(h)) {
            if len > max {
                return Some((
                    413,
                    format!("413 Content Too Large: a body of {len} bytes, this listener accepts {max}\n"),
                ));
            }
        }
        None
    }
}
