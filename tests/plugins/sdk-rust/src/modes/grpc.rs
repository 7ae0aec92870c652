//! Modes `grpc` and `grpc-stream`: gRPC calls to the upstream named by `upstream`
//! (the `test.Echo` service of the tests), their results written into request headers.

use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;

use crate::config::Settings;

/// Mode `grpc`: a unary call of `test.Echo/<x-grpc-method, default Unary>` with the message
/// in `x-grpc-msg` and metadata `x-md: <tag>`, a deadline of `x-grpc-timeout-ms` (default
/// 2000). The request resumes with `x-grpc-reply: <message>` on success, or
/// `x-grpc-status: <code>` and `x-grpc-message: <message>`; a call the host refuses adds
/// `x-grpc-error: <status>`.
pub struct Unary {
    settings: Rc<Settings>,
}

impl Unary {
    pub fn new(settings: Rc<Settings>) -> Unary {
        Unary { settings }
    }
}

impl Context for Unary {
    fn on_grpc_call_response(&mut self, _token_id: u32, status_code: u32, response_size: usize) {
        if status_code == 0 {
            let body = self
                .get_grpc_call_response_body(0, response_size)
                .unwrap_or_default();
            self.set_http_request_header("x-grpc-reply", Some(&String::from_utf8_lossy(&body)));
        } else {
            let (_, message) = self.get_grpc_status();
            self.set_http_request_header("x-grpc-status", Some(&status_code.to_string()));
            self.set_http_request_header("x-grpc-message", Some(&message.unwrap_or_default()));
        }
        self.resume_http_request();
    }
}

impl HttpContext for Unary {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let msg = self
            .get_http_request_header("x-grpc-msg")
            .unwrap_or_default();
        let method = self
            .get_http_request_header("x-grpc-method")
            .unwrap_or_else(|| "Unary".into());
        let timeout = self
            .get_http_request_header("x-grpc-timeout-ms")
            .and_then(|t| t.parse().ok())
            .unwrap_or(2000);
        match self.dispatch_grpc_call(
            &self.settings.upstream,
            "test.Echo",
            &method,
            vec![("x-md", self.settings.tag.as_bytes())],
            Some(msg.as_bytes()),
            Duration::from_millis(timeout),
        ) {
            Ok(_) => Action::Pause,
            Err(status) => {
                self.set_http_request_header("x-grpc-error", Some(&format!("{status:?}")));
                Action::Continue
            }
        }
    }
}

/// Mode `grpc-stream`: opens `test.Echo/<x-grpc-method, default Bidi>` and sends the
/// comma-separated messages of `x-grpc-msgs` (default `a,b,c`): `ServerStream` sends the first
/// and ends its half, `ClientStream` sends them all at once (the last ends its half), `Bidi`
/// sends the first, then the next on each message received (the last ends its half). The
/// request resumes on the close with
/// `x-grpc-stream: <messages, comma-separated>; status=<code>; initial=<n>; trailing=<n>`,
/// or, with `x-grpc-cancel-after: N`, right after the N-th message with
/// `x-grpc-stream: <messages>; cancelled` (the stream cancelled). With `x-grpc-flood: <n>x<size>`
/// it sends `n` messages of `size` bytes at once instead (the last ends its half).
#[derive(Default)]
pub struct Stream {
    settings: Option<Rc<Settings>>,
    sends: Vec<String>,
    bidi: bool,
    cancel_after: Option<usize>,
    seen: Vec<String>,
    initial: u32,
    trailing: u32,
}

impl Stream {
    pub fn new(settings: Rc<Settings>) -> Stream {
        Stream {
            settings: Some(settings),
            ..Stream::default()
        }
    }
}

impl Context for Stream {
    fn on_grpc_stream_initial_metadata(&mut self, _token_id: u32, num_elements: u32) {
        self.initial = num_elements;
    }

    fn on_grpc_stream_message(&mut self, token_id: u32, message_size: usize) {
        let m = self
            .get_grpc_stream_message(0, message_size)
            .unwrap_or_default();
        self.seen.push(String::from_utf8_lossy(&m).into_owned());
        if self.cancel_after == Some(self.seen.len()) {
            self.cancel_grpc_stream(token_id);
            let report = format!("{}; cancelled", self.seen.join(","));
            self.set_http_request_header("x-grpc-stream", Some(&report));
            self.resume_http_request();
            return;
        }
        if !self.bidi {
            return;
        }
        if let Some(next) = self.sends.get(self.seen.len()) {
            let last = self.seen.len() + 1 == self.sends.len();
            self.send_grpc_stream_message(token_id, Some(next.as_bytes()), last);
        }
    }

    fn on_grpc_stream_trailing_metadata(&mut self, _token_id: u32, num_elements: u32) {
        self.trailing = num_elements;
    }

    fn on_grpc_stream_close(&mut self, _token_id: u32, status_code: u32) {
        let report = format!(
            "{}; status={status_code}; initial={}; trailing={}",
            self.seen.join(","),
            self.initial,
            self.trailing
        );
        self.set_http_request_header("x-grpc-stream", Some(&report));
        self.resume_http_request();
    }
}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let upstream = self
            .settings
            .as_ref()
            .map(|s| s.upstream.clone())
            .unwrap_or_default();
        let method = self
            .get_http_request_header("x-grpc-method")
            .unwrap_or_else(|| "Bidi".into());
        self.sends = self
            .get_http_request_header("x-grpc-msgs")
            .unwrap_or_else(|| "a,b,c".into())
            .split(',')
            .map(str::to_string)
            .collect();
        self.cancel_after = self
            .get_http_request_header("x-grpc-cancel-after")
            .and_then(|n| n.parse().ok());
        self.bidi = method == "Bidi";
        let token = match self.open_grpc_stream(&upstream, "test.Echo", &method, vec![]) {
            Ok(token) => token,
            Err(status) => {
                self.set_http_request_header("x-grpc-error", Some(&format!("{status:?}")));
                return Action::Continue;
            }
        };
        let flood = self.get_http_request_header("x-grpc-flood").and_then(|f| {
            let (n, size) = f.split_once('x')?;
            Some((n.parse::<usize>().ok()?, size.parse::<usize>().ok()?))
        });
        if let Some((n, size)) = flood {
            let message = vec![b'x'; size];
            for i in 0..n {
                self.send_grpc_stream_message(token, Some(&message), i + 1 == n);
            }
            return Action::Pause;
        }
        let count = match method.as_str() {
            "ClientStream" => self.sends.len(),
            _ => 1,
        };
        for (i, m) in self.sends.iter().take(count).enumerate() {
            let last = method == "ServerStream" || i + 1 == self.sends.len();
            self.send_grpc_stream_message(token, Some(m.as_bytes()), last);
        }
        Action::Pause
    }
}
