//! Mode `deny`: local 403 responses sent from the request or the response headers phase.

use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;

use crate::config::Settings;

pub struct Deny {
    settings: Rc<Settings>,
    /// Whether the request carried `x-deny-response`.
    deny_response: bool,
}

impl Deny {
    pub fn new(settings: Rc<Settings>) -> Deny {
        Deny {
            settings,
            deny_response: false,
        }
    }

    fn deny(&self, body: String) -> Action {
        let tag = self.settings.tag.as_str();
        self.send_http_response(403, vec![("x-denied-by", tag)], Some(body.as_bytes()));
        Action::Pause
    }
}

impl Context for Deny {}

impl HttpContext for Deny {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.deny_response = self
            .get_http_request_header_bytes("x-deny-response")
            .is_some();
        if self.get_http_request_header_bytes("x-deny").is_some() {
            return self.deny(format!("denied by {}", self.settings.tag));
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if self.deny_response {
            return self.deny(format!("response denied by {}", self.settings.tag));
        }
        Action::Continue
    }
}
