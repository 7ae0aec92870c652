//! Modes `grpc`, `grpc-stream` and `grpc-root`: the SDK's typed gRPC API against the
//! `test.Echo` service of the tests, results written into request headers (or, from the root
//! context, into shared data that requests report).

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use sluice_sdk::shared;
use sluice_sdk::{
    Action, Error, GrpcCall, GrpcStatus, GrpcStream, GrpcStreamHandler, Metadata, Request,
};

/// Mode `grpc`: a unary call of `test.Echo/<x-grpc-method, default Unary>` with the message
/// in `x-grpc-msg`, metadata `x-md: sluice`, a deadline of `x-grpc-timeout-ms` (default 2000).
/// The request resumes with `x-grpc-reply: <answer>`, or `x-grpc-status: <code> <name>` and
/// `x-grpc-message`; a call the host refuses adds `x-grpc-error: <error>` and goes on.
pub fn unary(req: &mut Request, upstream: &str) -> Result<Action, Error> {
    let method = req
        .header("x-grpc-method")?
        .unwrap_or_else(|| "Unary".into());
    let timeout = req
        .header("x-grpc-timeout-ms")?
        .and_then(|t| t.parse().ok())
        .unwrap_or(2000);
    let call = GrpcCall::new("test.Echo", method)
        .metadata("x-md", "sluice")
        .message(req.header("x-grpc-msg")?.unwrap_or_default())
        .timeout(Duration::from_millis(timeout));
    let sent = req.grpc_call(upstream, call, |req, result| {
        match result {
            Ok(answer) => req.set_header("x-grpc-reply", &answer)?,
            Err(status) => report_status(req, &status)?,
        }
        Ok(Action::Continue)
    });
    match sent {
        Ok(()) => Ok(Action::Pause),
        Err(e) => {
            req.set_header("x-grpc-error", e.to_string())?;
            Ok(Action::Continue)
        }
    }
}

fn report_status(req: &mut Request, status: &GrpcStatus) -> Result<(), Error> {
    req.set_header(
        "x-grpc-status",
        format!("{} {}", status.code(), status.code_name()),
    )?;
    req.set_header("x-grpc-message", status.message())
}

/// Mode `grpc-stream`: opens `test.Echo/<x-grpc-method, default Bidi>` and sends the
/// comma-separated messages of `x-grpc-msgs` (default `a,b,c`) as the `sdk-rust` mode of the
/// same name does (`ServerStream`: the first, then the half closed with
/// [`GrpcStream::close`]; `ClientStream`: all, the last with `send_last`; `Bidi`: one per
/// answer). The request resumes on the close with
/// `x-grpc-stream: <answers>; status=<code>; initial=<n>; trailing=<n>`, or with
/// `x-grpc-cancel-after: N` right after the N-th answer with `<answers>; cancelled`. The same
/// report goes into `report`, which the filter copies into the response headers. With
/// `x-grpc-no-wait`, the request goes on at once instead of waiting for the stream.
pub fn stream(
    req: &mut Request,
    upstream: &str,
    report: &Rc<RefCell<Option<String>>>,
) -> Result<Action, Error> {
    let method = req
        .header("x-grpc-method")?
        .unwrap_or_else(|| "Bidi".into());
    let sends: Vec<String> = req
        .header("x-grpc-msgs")?
        .unwrap_or_else(|| "a,b,c".into())
        .split(',')
        .map(str::to_string)
        .collect();
    let handler = Echo {
        bidi: method == "Bidi",
        cancel_after: req
            .header("x-grpc-cancel-after")?
            .and_then(|n| n.parse().ok()),
        sends: sends.clone(),
        report: report.clone(),
        seen: Vec::new(),
        initial: 0,
        trailing: 0,
    };
    let opened = req.grpc_stream(
        upstream,
        &GrpcCall::new("test.Echo", method.as_str()).metadata("x-md", "sluice"),
        handler,
    );
    let stream = match opened {
        Ok(s) => s,
        Err(e) => {
            req.set_header("x-grpc-error", e.to_string())?;
            return Ok(Action::Continue);
        }
    };
    match method.as_str() {
        "ServerStream" => {
            stream.send(sends[0].as_bytes())?;
            stream.close()?;
        }
        "ClientStream" => {
            let (last, rest) = sends.split_last().expect("split gives one at least");
            for m in rest {
                stream.send(m.as_bytes())?;
            }
            stream.send_last(last.as_bytes())?;
        }
        _ if sends.len() == 1 => stream.send_last(sends[0].as_bytes())?,
        _ => stream.send(sends[0].as_bytes())?,
    }
    if req.header("x-grpc-no-wait")?.is_some() {
        return Ok(Action::Continue);
    }
    Ok(Action::Pause)
}

/// The handler of mode `grpc-stream`.
struct Echo {
    bidi: bool,
    cancel_after: Option<usize>,
    sends: Vec<String>,
    report: Rc<RefCell<Option<String>>>,
    seen: Vec<String>,
    initial: usize,
    trailing: usize,
}

impl GrpcStreamHandler for Echo {
    fn on_initial_metadata(
        &mut self,
        _stream: GrpcStream,
        _req: Option<&mut Request>,
        metadata: Metadata,
    ) -> Result<Action, Error> {
        self.initial = metadata.len();
        Ok(Action::Pause)
    }

    fn on_message(
        &mut self,
        stream: GrpcStream,
        req: Option<&mut Request>,
        message: Vec<u8>,
    ) -> Result<Action, Error> {
        self.seen
            .push(String::from_utf8_lossy(&message).into_owned());
        if self.cancel_after == Some(self.seen.len()) {
            stream.cancel()?;
            let report = format!("{}; cancelled", self.seen.join(","));
            *self.report.borrow_mut() = Some(report.clone());
            if let Some(req) = req {
                req.set_header("x-grpc-stream", report)?;
            }
            return Ok(Action::Continue);
        }
        if self.bidi {
            if let Some(next) = self.sends.get(self.seen.len()) {
                if self.seen.len() + 1 == self.sends.len() {
                    stream.send_last(next.as_bytes())?;
                } else {
                    stream.send(next.as_bytes())?;
                }
            }
        }
        Ok(Action::Pause)
    }

    fn on_trailing_metadata(
        &mut self,
        _stream: GrpcStream,
        _req: Option<&mut Request>,
        metadata: Metadata,
    ) -> Result<Action, Error> {
        self.trailing = metadata.len();
        Ok(Action::Pause)
    }

    fn on_close(
        &mut self,
        _stream: GrpcStream,
        req: Option<&mut Request>,
        status: GrpcStatus,
    ) -> Result<Action, Error> {
        let report = format!(
            "{}; status={}; initial={}; trailing={}",
            self.seen.join(","),
            status.code(),
            self.initial,
            self.trailing
        );
        *self.report.borrow_mut() = Some(report.clone());
        if let Some(req) = req {
            req.set_header("x-grpc-stream", report)?;
        }
        Ok(Action::Continue)
    }
}

/// Mode `grpc-root`, first tick: a unary call (`root`) and a server stream (`2`) from the root
/// context; what they bring is stored in shared data (`grpc-root-unary`, `grpc-root-stream`).
pub fn from_root(upstream: &str) {
    let sent = GrpcCall::new("test.Echo", "Unary")
        .message(b"root".to_vec())
        .send_from_root(upstream, |r| {
            let seen = match r {
                Ok(answer) => String::from_utf8_lossy(&answer).into_owned(),
                Err(status) => status.to_string(),
            };
            let _ = shared::set("grpc-root-unary", &seen);
        });
    if let Err(e) = sent {
        let _ = shared::set("grpc-root-unary", &format!("not sent: {e}"));
    }
    let opened = GrpcCall::new("test.Echo", "ServerStream")
        .message(b"2".to_vec())
        .open_stream_from_root(upstream, RootStream(Vec::new()));
    match opened {
        Ok(stream) => {
            if let Err(e) = stream.close() {
                let _ = shared::set("grpc-root-stream", &format!("not closed: {e}"));
            }
        }
        Err(e) => {
            let _ = shared::set("grpc-root-stream", &format!("not opened: {e}"));
        }
    }
}

/// The handler of the root stream: collects the messages, stores them on the close.
struct RootStream(Vec<String>);

impl GrpcStreamHandler for RootStream {
    fn on_message(
        &mut self,
        _stream: GrpcStream,
        req: Option<&mut Request>,
        message: Vec<u8>,
    ) -> Result<Action, Error> {
        if req.is_some() {
            return Err(Error::msg("a root stream got a request"));
        }
        self.0.push(String::from_utf8_lossy(&message).into_owned());
        Ok(Action::Pause)
    }

    fn on_close(
        &mut self,
        _stream: GrpcStream,
        _req: Option<&mut Request>,
        status: GrpcStatus,
    ) -> Result<Action, Error> {
        let seen = format!("{}; status={}", self.0.join(","), status.code());
        shared::set("grpc-root-stream", &seen)?;
        Ok(Action::Continue)
    }
}

/// Mode `grpc-root`, a request: reports what the root calls brought
/// (`x-grpc-root-unary`, `x-grpc-root-stream`; `none` until they are done).
pub fn report_root(req: &mut Request) -> Result<Action, Error> {
    for key in ["grpc-root-unary", "grpc-root-stream"] {
        let seen: Option<String> = shared::get(key)?;
        req.set_header(&format!("x-{key}"), seen.unwrap_or_else(|| "none".into()))?;
    }
    Ok(Action::Continue)
}
