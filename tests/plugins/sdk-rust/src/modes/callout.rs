//! Mode `callout`: an HTTP call to another upstream decides whether the request goes on.

use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;

use crate::config::Settings;

const CALLOUT_TIMEOUT: Duration = Duration::from_secs(1);

pub struct Callout {
    settings: Rc<Settings>,
}

impl Callout {
    pub fn new(settings: Rc<Settings>) -> Callout {
        Callout { settings }
    }
}

impl Context for Callout {
    fn on_http_call_response(
        &mut self,
        _token_id: u32,
        num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        if num_headers == 0 {
            self.send_http_response(
                503,
                vec![("x-callout-status", "failed")],
                Some(b"callout failed"),
            );
            return;
        }
        match self.get_http_call_response_header(":status").as_deref() {
            Some("200") => {
                self.set_http_request_header("x-callout-status", Some("200"));
                self.set_http_request_header("x-callout-body-len", Some(&body_size.to_string()));
                self.resume_http_request();
            }
            status => self.send_http_response(
                403,
                vec![("x-callout-status", status.unwrap_or("none"))],
                Some(b"callout denied"),
            ),
        }
    }
}

impl HttpContext for Callout {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let want = self.get_http_request_header_bytes("x-callout-want");
        let want = want
            .as_deref()
            .map_or("200".into(), String::from_utf8_lossy);
        let path = format!("/callout?status={want}");
        let headers = vec![
            (":method", "GET"),
            (":path", path.as_str()),
            (":authority", "callout.test"),
        ];
        match self.dispatch_http_call(
            &self.settings.upstream,
            headers,
            None,
            vec![],
            CALLOUT_TIMEOUT,
        ) {
            Ok(_token) => Action::Pause,
            Err(status) => {
                self.add_http_request_header("x-callout-error", &format!("{status:?}"));
                Action::Continue
            }
        }
    }
}
