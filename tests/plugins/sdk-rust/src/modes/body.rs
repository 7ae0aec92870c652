//! Modes `inspect-body`, `resp-body` and `resp-upper`: body buffering and rewriting.

use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;

use crate::config::Settings;

/// Mode `inspect-body`: buffers the whole request body, rejects it when it contains
/// `forbidden`, and otherwise upper-cases it.
pub struct InspectBody;

impl Context for InspectBody {}

impl HttpContext for InspectBody {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        if end_of_stream {
            Action::Continue
        } else {
            Action::Pause
        }
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if !end_of_stream {
            return Action::Pause;
        }
        let body = self.get_http_request_body(0, body_size).unwrap_or_default();
        if contains(&body, b"forbidden") {
            self.send_http_response(403, vec![], Some(b"body rejected"));
            return Action::Pause;
        }
        self.set_http_request_header("x-sdk-body-len", Some(&body_size.to_string()));
        self.set_http_request_body(0, body_size, &body.to_ascii_uppercase());
        Action::Continue
    }
}

/// Mode `resp-body`: buffers the whole response body and prefixes it with `<tag>|`.
pub struct RespBody {
    settings: Rc<Settings>,
    /// Mode `resp-body-keep-length`: leave `content-length` (a bug the host must contain).
    keep_length: bool,
}

impl RespBody {
    pub fn new(settings: Rc<Settings>, keep_length: bool) -> RespBody {
        RespBody {
            settings,
            keep_length,
        }
    }
}

impl Context for RespBody {}

impl HttpContext for RespBody {
    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        // The body's length changes below: its content-length must go (as on Envoy).
        if !self.keep_length {
            self.set_http_response_header("content-length", None);
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if !end_of_stream {
            return Action::Pause;
        }
        let body = self
            .get_http_response_body(0, body_size)
            .unwrap_or_default();
        let mut rewritten = Vec::with_capacity(self.settings.tag.len() + 1 + body.len());
        rewritten.extend_from_slice(self.settings.tag.as_bytes());
        rewritten.push(b'|');
        rewritten.extend_from_slice(&body);
        self.set_http_response_body(0, body_size, &rewritten);
        Action::Continue
    }
}

/// Mode `resp-upper`: upper-cases every response body chunk as it streams through.
pub struct RespUpper;

impl Context for RespUpper {}

impl HttpContext for RespUpper {
    fn on_http_response_body(&mut self, body_size: usize, _end_of_stream: bool) -> Action {
        if let Some(chunk) = self.get_http_response_body(0, body_size) {
            if !chunk.is_empty() {
                self.set_http_response_body(0, body_size, &chunk.to_ascii_uppercase());
            }
        }
        Action::Continue
    }
}

/// Mode `req-upper`: upper-cases every request body chunk as it streams to the upstream.
pub struct ReqUpper;

impl Context for ReqUpper {}

impl HttpContext for ReqUpper {
    fn on_http_request_body(&mut self, body_size: usize, _end_of_stream: bool) -> Action {
        if let Some(chunk) = self.get_http_request_body(0, body_size) {
            if !chunk.is_empty() {
                self.set_http_request_body(0, body_size, &chunk.to_ascii_uppercase());
            }
        }
        Action::Continue
    }
}

/// Whether `needle` occurs in `haystack`.
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}
