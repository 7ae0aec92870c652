//! Mode `log`: one message at every log level, and a line from each end-of-request callback.

use std::rc::Rc;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, LogLevel};

use crate::config::Settings;
use crate::util;

const LEVELS: [(LogLevel, &str); 6] = [
    (LogLevel::Trace, "trace"),
    (LogLevel::Debug, "debug"),
    (LogLevel::Info, "info"),
    (LogLevel::Warn, "warn"),
    (LogLevel::Error, "error"),
    (LogLevel::Critical, "critical"),
];

pub struct Log {
    settings: Rc<Settings>,
}

impl Log {
    pub fn new(settings: Rc<Settings>) -> Log {
        Log { settings }
    }
}

impl Log {
    fn line(&self, what: &str) {
        // Nowhere to report a failure from these callbacks; the tests look for the lines.
        let _ = hostcalls::log(
            LogLevel::Info,
            &format!("sdk-log {what} {}", self.settings.tag),
        );
    }
}

impl Context for Log {
    fn on_done(&mut self) -> bool {
        self.line("on_done");
        true
    }
}

/// The SDK drops the context in `on_delete`.
impl Drop for Log {
    fn drop(&mut self) {
        self.line("on_delete");
    }
}

impl HttpContext for Log {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        for (level, name) in LEVELS {
            let message = format!("sdk-log {name} {}", self.settings.tag);
            if let Err(status) = hostcalls::log(level, &message) {
                util::add_error(self, "log", status);
            }
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        self.line("on_log");
    }
}
