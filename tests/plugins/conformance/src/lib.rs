//! Sluice conformance test plugin, built with the public Rust Proxy-Wasm SDK (`proxy-wasm`
//! 0.2.5) and nothing else of Sluice's.
//!
//! One module and one configuration (`{"tag": "a"}`) serve every conformance test: what the
//! plugin does is chosen per request by `x-conf-*` request headers, and every callback logs
//! one line, so that the tests can assert what the host called, in which order, with which
//! context ids and sizes. `tests/plugins/README.md` is the exact contract.

mod raw;

use std::cell::RefCell;
use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel};

/// Tick period of every root context (the `tick-resume` directive).
const TICK_PERIOD: Duration = Duration::from_millis(20);

/// Timeout of the `callout` directive's HTTP call.
const CALLOUT_TIMEOUT: Duration = Duration::from_secs(1);

/// Proxy-Wasm stream type of the request (`proxy_close_stream`, `proxy_continue_stream`).
const STREAM_REQUEST: u32 = 0;

thread_local! {
    /// Stream contexts paused by `x-conf-tick-resume: 1`, resumed by the next tick.
    static WAITING: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
}

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|context_id| -> Box<dyn RootContext> {
        Box::new(Root { id: context_id, tag: "-".to_owned() })
    });
}}

/// Logs one line at level info (a failure to log is not worth failing a callback for).
fn log(line: &str) {
    let _ = hostcalls::log(LogLevel::Info, line);
}

/// Logs one line at level error.
fn log_error(line: &str) {
    let _ = hostcalls::log(LogLevel::Error, line);
}

fn action_name(a: Action) -> &'static str {
    match a {
        Action::Continue => "continue",
        Action::Pause => "pause",
        _ => "other",
    }
}

/// The plugin's root context: reads the tag and ticks.
struct Root {
    id: u32,
    tag: String,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_vm_start(&mut self, vm_configuration_size: usize) -> bool {
        log(&format!(
            "conf - on_vm_start ctx={} len={vm_configuration_size}",
            self.id
        ));
        true
    }

    fn on_configure(&mut self, plugin_configuration_size: usize) -> bool {
        self.tag = self
            .get_plugin_configuration()
            .and_then(|c| serde_json::from_slice::<serde_json::Value>(&c).ok())
            .and_then(|v| v.get("tag")?.as_str().map(str::to_owned))
            .unwrap_or_else(|| "conf".to_owned());
        log(&format!(
            "conf {} on_configure ctx={} len={plugin_configuration_size}",
            self.tag, self.id
        ));
        self.set_tick_period(TICK_PERIOD);
        true
    }

    fn on_tick(&mut self) {
        let waiting = WAITING.with(|w| std::mem::take(&mut *w.borrow_mut()));
        for id in waiting {
            let effective = raw::set_effective_context(id);
            let resumed = raw::continue_stream(STREAM_REQUEST);
            log(&format!(
                "conf {} on_tick ctx={} resume={id} effective={effective} continue={resumed}",
                self.tag, self.id
            ));
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        log(&format!(
            "conf {} on_context_create ctx={context_id} parent={}",
            self.tag, self.id
        ));
        Some(Box::new(Http {
            id: context_id,
            tag: self.tag.clone(),
            req: "-".to_owned(),
            local: None,
            reset: None,
            request: Body::default(),
            response: Body::default(),
        }))
    }
}

/// A phase named by the `local` and `reset` directives.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    RequestHeaders,
    RequestBody,
    ResponseHeaders,
    ResponseBody,
}

impl Phase {
    fn parse(s: &str) -> Option<Phase> {
        Some(match s {
            "request_headers" => Phase::RequestHeaders,
            "request_body" => Phase::RequestBody,
            "response_headers" => Phase::ResponseHeaders,
            "response_body" => Phase::ResponseBody,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Phase::RequestHeaders => "request_headers",
            Phase::RequestBody => "request_body",
            Phase::ResponseHeaders => "response_headers",
            Phase::ResponseBody => "response_body",
        }
    }
}

/// How a body callback treats the body (`req-body`, `resp-body` directives).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
enum Mode {
    /// Every chunk continues unchanged.
    #[default]
    Stream,
    /// Pause until end of stream, then rewrite the whole (buffered) body and continue.
    Buffer,
    /// The first chunk continues; later ones are buffered until the end, then rewritten.
    StreamThenBuffer,
    /// The first chunk is buffered; the next call rewrites what is buffered and continues;
    /// the rest streams unchanged.
    BufferThenStream,
}

impl Mode {
    fn parse(s: &str) -> Option<Mode> {
        Some(match s {
            "buffer" => Mode::Buffer,
            "stream-then-buffer" => Mode::StreamThenBuffer,
            "buffer-then-stream" => Mode::BufferThenStream,
            _ => return None,
        })
    }
}

/// A body rewrite (`req-op`, `resp-op` directives), done with one `proxy_set_buffer_bytes`.
#[derive(Clone, PartialEq, Eq, Debug)]
enum Op {
    /// ASCII upper case: `(0, len)` ← the upper-cased bytes.
    Upper,
    /// `(0, 0)` ← the string.
    Prepend(String),
    /// `(len, 0)` ← the string.
    Append(String),
    /// `(0, len)` ← the string.
    Replace(String),
    /// `(0, len)` ← nothing.
    Clear,
}

impl Op {
    fn parse(s: &str) -> Option<Op> {
        if s == "upper" {
            return Some(Op::Upper);
        }
        if s == "clear" {
            return Some(Op::Clear);
        }
        let (what, arg) = s.split_once(':')?;
        let arg = arg.to_owned();
        Some(match what {
            "prepend" => Op::Prepend(arg),
            "append" => Op::Append(arg),
            "replace" => Op::Replace(arg),
            _ => return None,
        })
    }

    /// Whether the op changes the body's length (the plugin then removes `content-length`).
    fn changes_length(&self) -> bool {
        *self != Op::Upper
    }

    /// `(start, size, data)` for `proxy_set_buffer_bytes` on a buffer of `len` bytes.
    fn args(&self, body: &[u8]) -> (usize, usize, Vec<u8>) {
        let len = body.len();
        match self {
            Op::Upper => (0, len, body.to_ascii_uppercase()),
            Op::Prepend(s) => (0, 0, s.as_bytes().to_vec()),
            Op::Append(s) => (len, 0, s.as_bytes().to_vec()),
            Op::Replace(s) => (0, len, s.as_bytes().to_vec()),
            Op::Clear => (0, len, Vec::new()),
        }
    }
}

/// One direction's body: its directives and what the plugin saw of it.
#[derive(Default)]
struct Body {
    mode: Mode,
    op: Option<Op>,
    /// Body callbacks so far.
    calls: u32,
    /// Bytes of the calls that continued (as the host reported them).
    passed: usize,
    /// `body_size` of the last call if it paused, else 0.
    held: usize,
    /// `buffer-then-stream`: the buffered part was released.
    released: bool,
}

impl Body {
    fn seen(&self) -> usize {
        self.passed + self.held
    }
}

/// A request's context.
struct Http {
    id: u32,
    tag: String,
    /// The request's `x-conf-id`, or `-`.
    req: String,
    local: Option<Phase>,
    reset: Option<Phase>,
    request: Body,
    response: Body,
}

impl Http {
    /// Directive `name`: request header `x-conf-<tag>-<name>`, else `x-conf-<name>`.
    fn directive(&self, name: &str) -> Option<String> {
        self.get_http_request_header(&format!("x-conf-{}-{name}", self.tag))
            .or_else(|| self.get_http_request_header(&format!("x-conf-{name}")))
    }

    /// Reads a directive with `parse`; a value it refuses is logged and ignored.
    fn parsed<T>(&self, name: &str, parse: impl Fn(&str) -> Option<T>) -> Option<T> {
        let value = self.directive(name)?;
        let parsed = parse(&value);
        if parsed.is_none() {
            log_error(&format!(
                "conf {} bad directive ctx={} req={} {name}={value}",
                self.tag, self.id, self.req
            ));
        }
        parsed
    }

    fn prefix(&self, callback: &str) -> String {
        format!(
            "conf {} {callback} ctx={} req={}",
            self.tag, self.id, self.req
        )
    }

    /// Sends the local response of the `local` directive.
    fn local_reply(&self, phase: Phase) {
        log(&format!("{} phase={}", self.prefix("local"), phase.name()));
        let body = format!("local from {}", self.tag);
        self.send_http_response(
            418,
            vec![("x-conf-local", &self.tag)],
            Some(body.as_bytes()),
        );
    }

    /// Resets the stream (`proxy_close_stream(REQUEST)`), as the `reset` directive asks.
    fn reset_stream(&self, phase: Phase) {
        let status = raw::close_stream(STREAM_REQUEST);
        log(&format!(
            "{} phase={} status={status}",
            self.prefix("reset"),
            phase.name()
        ));
    }

    /// The `local` or `reset` directive for `phase`, if it is that phase: Pause.
    fn stop_in(&self, phase: Phase) -> Option<Action> {
        if self.reset == Some(phase) {
            self.reset_stream(phase);
            return Some(Action::Pause);
        }
        if self.local == Some(phase) {
            self.local_reply(phase);
            return Some(Action::Pause);
        }
        None
    }

    /// Rewrites the whole body buffer of `buffer` with `op`.
    fn rewrite(&self, buffer: BufferType, op: &Op, len: usize, which: &str) {
        let body = hostcalls::get_buffer(buffer, 0, len)
            .unwrap_or_default()
            .unwrap_or_default();
        let (start, size, data) = op.args(&body);
        let _ = hostcalls::set_buffer(buffer, start, size, &data);
        let after = hostcalls::get_buffer(buffer, 0, usize::MAX)
            .unwrap_or_default()
            .map_or(0, |b| b.len());
        log(&format!(
            "{} which={which} start={start} size={size} from={} to={after}",
            self.prefix("rewrite"),
            body.len()
        ));
    }

    /// A body callback of either direction.
    fn body(&mut self, request: bool, len: usize, eos: bool) -> Action {
        let (phase, buffer, which) = if request {
            (Phase::RequestBody, BufferType::HttpRequestBody, "request")
        } else {
            (
                Phase::ResponseBody,
                BufferType::HttpResponseBody,
                "response",
            )
        };
        let state = if request {
            &mut self.request
        } else {
            &mut self.response
        };
        state.calls += 1;
        let first = state.calls == 1;
        let mode = state.mode;
        let op = state.op.clone();
        let released = state.released;
        let action = if eos && (self.local == Some(phase) || self.reset == Some(phase)) {
            self.stop_in(phase).unwrap_or(Action::Pause)
        } else {
            match mode {
                Mode::Stream => Action::Continue,
                Mode::Buffer | Mode::StreamThenBuffer if !eos => {
                    if mode == Mode::StreamThenBuffer && first {
                        Action::Continue
                    } else {
                        Action::Pause
                    }
                }
                Mode::Buffer | Mode::StreamThenBuffer => {
                    if let Some(op) = &op {
                        self.rewrite(buffer, op, len, which);
                    }
                    Action::Continue
                }
                Mode::BufferThenStream if released => Action::Continue,
                Mode::BufferThenStream if first && !eos => Action::Pause,
                Mode::BufferThenStream => {
                    if let Some(op) = &op {
                        self.rewrite(buffer, op, len, which);
                    }
                    if request {
                        self.request.released = true;
                    } else {
                        self.response.released = true;
                    }
                    Action::Continue
                }
            }
        };
        let state = if request {
            &mut self.request
        } else {
            &mut self.response
        };
        if action == Action::Continue {
            state.passed += len;
            state.held = 0;
        } else {
            state.held = len;
        }
        let callback = if request {
            "on_request_body"
        } else {
            "on_response_body"
        };
        log(&format!(
            "{} len={len} eos={eos} action={}",
            self.prefix(callback),
            action_name(action)
        ));
        action
    }

    fn request_headers(&mut self) -> Action {
        self.local = self.parsed("local", Phase::parse);
        self.reset = self.parsed("reset", Phase::parse);
        self.request.mode = self.parsed("req-body", Mode::parse).unwrap_or_default();
        self.request.op = self.parsed("req-op", Op::parse);
        self.response.mode = self.parsed("resp-body", Mode::parse).unwrap_or_default();
        self.response.op = self.parsed("resp-op", Op::parse);
        if let Some(stop) = self.stop_in(Phase::RequestHeaders) {
            return stop;
        }
        if self.request.op.as_ref().is_some_and(Op::changes_length) {
            self.set_http_request_header("content-length", None);
        }
        if let Some(path) = self.directive("callout") {
            let headers = vec![
                (":method", "GET"),
                (":path", path.as_str()),
                (":authority", "callout.test"),
            ];
            match self.dispatch_http_call("callout", headers, None, vec![], CALLOUT_TIMEOUT) {
                Ok(token) => {
                    log(&format!("{} token={token}", self.prefix("dispatch")));
                    return Action::Pause;
                }
                Err(status) => {
                    log(&format!("{} error={status:?}", self.prefix("dispatch")));
                    self.set_http_request_header(
                        "x-conf-callout-status",
                        Some(&format!("dispatch-{status:?}")),
                    );
                }
            }
        }
        if self.directive("tick-resume").as_deref() == Some("1") {
            WAITING.with(|w| w.borrow_mut().push(self.id));
            return Action::Pause;
        }
        Action::Continue
    }

    fn response_headers(&mut self) -> Action {
        if let Some(stop) = self.stop_in(Phase::ResponseHeaders) {
            return stop;
        }
        if self.response.op.as_ref().is_some_and(Op::changes_length) {
            self.set_http_response_header("content-length", None);
        }
        Action::Continue
    }
}

impl Context for Http {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        num_headers: usize,
        body_size: usize,
        num_trailers: usize,
    ) {
        let status = if num_headers == 0 {
            "failed".to_owned()
        } else {
            self.get_http_call_response_header(":status")
                .unwrap_or_else(|| "none".to_owned())
        };
        log(&format!(
            "{} token={token_id} headers={num_headers} body={body_size} trailers={num_trailers} status={status}",
            self.prefix("on_http_call_response")
        ));
        self.set_http_request_header("x-conf-callout-status", Some(&status));
        self.resume_http_request();
    }

    fn on_done(&mut self) -> bool {
        log(&self.prefix("on_done"));
        true
    }
}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, num_headers: usize, end_of_stream: bool) -> Action {
        if let Some(id) = self.get_http_request_header("x-conf-id") {
            self.req = id;
        }
        let action = self.request_headers();
        log(&format!(
            "{} headers={num_headers} eos={end_of_stream} action={}",
            self.prefix("on_request_headers"),
            action_name(action)
        ));
        action
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.body(true, body_size, end_of_stream)
    }

    fn on_http_request_trailers(&mut self, num_trailers: usize) -> Action {
        log(&format!(
            "{} trailers={num_trailers} action=continue",
            self.prefix("on_request_trailers")
        ));
        Action::Continue
    }

    fn on_http_response_headers(&mut self, num_headers: usize, end_of_stream: bool) -> Action {
        let status = self
            .get_http_response_header(":status")
            .unwrap_or_else(|| "none".to_owned());
        self.add_http_response_header(&format!("x-conf-seen-{}", self.tag), &status);
        let action = self.response_headers();
        log(&format!(
            "{} headers={num_headers} eos={end_of_stream} status={status} action={}",
            self.prefix("on_response_headers"),
            action_name(action)
        ));
        action
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.body(false, body_size, end_of_stream)
    }

    fn on_http_response_trailers(&mut self, num_trailers: usize) -> Action {
        log(&format!(
            "{} trailers={num_trailers} action=continue",
            self.prefix("on_response_trailers")
        ));
        Action::Continue
    }

    fn on_log(&mut self) {
        // Through the SDK on purpose: it panics on any status but Ok and NotFound.
        let status = self
            .get_http_response_header(":status")
            .unwrap_or_else(|| "none".to_owned());
        log(&format!(
            "{} status={status} req_body={} resp_body={}",
            self.prefix("on_log"),
            self.request.seen(),
            self.response.seen()
        ));
    }
}

impl Drop for Http {
    /// The SDK drops a context in `proxy_on_delete`.
    fn drop(&mut self) {
        WAITING.with(|w| w.borrow_mut().retain(|&id| id != self.id));
        log(&self.prefix("on_delete"));
    }
}
