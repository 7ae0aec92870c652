//! Modes `headers` (request and response header reads and writes through the SDK) and
//! `copy-header` (the least a header filter does: read one header, add one).

use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;

use crate::config::Settings;

pub struct Headers {
    settings: Rc<Settings>,
}

impl Headers {
    pub fn new(settings: Rc<Settings>) -> Headers {
        Headers { settings }
    }

    /// Sets request header `name` to a copy of request header `source`, or to `none`.
    fn copy_request_header(&self, source: &str, name: &str) {
        let value = self.get_http_request_header_bytes(source);
        self.set_http_request_header_bytes(name, Some(value.as_deref().unwrap_or(b"none")));
    }
}

impl Context for Headers {}

impl HttpContext for Headers {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.add_http_request_header("x-sdk-tag", &self.settings.tag);
        self.copy_request_header("x-in", "x-sdk-in");
        self.copy_request_header(":path", "x-sdk-path");
        self.copy_request_header(":method", "x-sdk-method");
        if let Some(path) = self.get_http_request_header_bytes("x-rewrite-path") {
            self.set_http_request_header_bytes(":path", Some(&path));
        }
        self.remove_http_request_header("x-strip");
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.add_http_response_header("x-sdk-tag", &self.settings.tag);
        Action::Continue
    }
}

/// Mode `copy-header`.
pub struct CopyHeader;

impl Context for CopyHeader {}

impl HttpContext for CopyHeader {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let value = self.get_http_request_header_bytes("x-in");
        self.add_http_request_header_bytes("x-sdk-in", value.as_deref().unwrap_or(b"none"));
        Action::Continue
    }
}
