//! Modes `trailers` and `trailers-hold`: response trailers seen and edited.

use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;

use crate::config::Settings;

/// Mode `trailers`: in `on_http_response_trailers`, adds `x-sdk-trailers: <tag>:<n>` (n: the
/// number of trailers it was given), prefixes `grpc-message` with `<tag>: ` and removes
/// `x-drop`. Mode `trailers-hold` also holds the response body back (pausing every body
/// chunk that does not end the stream), so that the host must release it before the trailers.
pub struct Trailers {
    settings: Rc<Settings>,
    hold: bool,
}

impl Trailers {
    pub fn new(settings: Rc<Settings>, hold: bool) -> Trailers {
        Trailers { settings, hold }
    }
}

impl Context for Trailers {}

impl HttpContext for Trailers {
    fn on_http_response_body(&mut self, _body_size: usize, end_of_stream: bool) -> Action {
        if self.hold && !end_of_stream {
            Action::Pause
        } else {
            Action::Continue
        }
    }

    fn on_http_response_trailers(&mut self, num_trailers: usize) -> Action {
        let tag = &self.settings.tag;
        self.set_http_response_trailer("x-sdk-trailers", Some(&format!("{tag}:{num_trailers}")));
        if let Some(message) = self.get_http_response_trailer("grpc-message") {
            self.set_http_response_trailer("grpc-message", Some(&format!("{tag}: {message}")));
        }
        self.set_http_response_trailer("x-drop", None);
        Action::Continue
    }
}
