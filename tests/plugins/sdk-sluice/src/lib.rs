//! Test plugin built with `sluice-sdk`: one mode per family of SDK calls (the `mode` field of
//! its configuration), each reporting what it saw in headers so that the tests in `tests/`
//! can check every API path against the real host.

mod grpc;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use serde::Deserialize;
use sluice_sdk::metrics::{Counter, Gauge, Histogram};
use sluice_sdk::shared::{self, Json};
use sluice_sdk::{
    properties, Action, Call, CallError, Error, HttpFilter, Plugin, Reply, Request, Response,
};

/// The configuration.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// What the plugin does.
    pub mode: Mode,
    /// Upstream of the `callout` mode.
    #[serde(default)]
    pub upstream: String,
}

/// The modes.
#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Header, pseudo-header and query calls on the request and the response.
    Headers,
    /// Request body buffered and upper-cased; response body with `!` appended.
    Body,
    /// Local replies from the request and the response phases.
    Reply,
    /// A callback that fails: the custom `on_error` reply.
    Error,
    /// An HTTP call whose closure decides.
    Callout,
    /// Shared data updates (a counter and a JSON value).
    Shared,
    /// Counter, gauge and histogram.
    Metrics,
    /// Properties.
    Properties,
    /// One line per log macro.
    Log,
    /// A 10 ms tick counting in shared data.
    Tick,
    /// A call from the root context (the first tick) whose closure stores what it got in
    /// shared data (`root-call`); requests report it.
    RootCall,
    /// A unary gRPC call from a request (see the `grpc` module).
    Grpc,
    /// A gRPC stream from a request.
    GrpcStream,
    /// A unary call and a server stream from the root context (the first tick).
    GrpcRoot,
}

/// The plugin.
pub struct Api {
    mode: Mode,
    upstream: String,
    metrics: Option<(Counter, Gauge, Histogram)>,
    /// The root call went out (mode `root-call`).
    called: Cell<bool>,
}

impl Plugin for Api {
    type Config = Config;
    type Filter = ApiFilter;

    fn new(c: Config) -> Result<Self, Error> {
        let metrics = if c.mode == Mode::Metrics {
            Some((
                Counter::new("api_requests")?,
                Gauge::new("api_gauge")?,
                Histogram::new("api_sizes")?,
            ))
        } else {
            None
        };
        Ok(Api {
            mode: c.mode,
            upstream: c.upstream,
            metrics,
            called: Cell::new(false),
        })
    }

    fn filter(plugin: &Rc<Self>) -> ApiFilter {
        ApiFilter {
            plugin: plugin.clone(),
            seen: Vec::new(),
            grpc_report: Rc::default(),
        }
    }

    fn tick_period(&self) -> Option<Duration> {
        matches!(self.mode, Mode::Tick | Mode::RootCall | Mode::GrpcRoot)
            .then_some(Duration::from_millis(10))
    }

    fn on_tick(&self) {
        if self.mode == Mode::Tick {
            let _ = shared::update("ticks", |n: Option<u64>| (Some(n.unwrap_or(0) + 1), ()));
            return;
        }
        if self.called.replace(true) {
            return;
        }
        if self.mode == Mode::GrpcRoot {
            grpc::from_root(&self.upstream);
            return;
        }
        let sent = Call::get("/root?status=200")
            .header("x-from", "sdk")
            .send_from_root(&self.upstream, |r| {
                let seen = match r {
                    Ok(resp) => format!(
                        "{} {} {}",
                        resp.status(),
                        resp.header("x-upstream").unwrap_or("-"),
                        resp.body().len()
                    ),
                    Err(e) => format!("error: {e}"),
                };
                let _ = shared::set("root-call", &seen);
            });
        if let Err(e) = sent {
            let _ = shared::set("root-call", &format!("not sent: {e}"));
        }
    }
}

/// One request.
pub struct ApiFilter {
    plugin: Rc<Api>,
    /// Headers to add to the response.
    seen: Vec<(String, String)>,
    /// What the gRPC stream of mode `grpc-stream` reported, once it closed.
    grpc_report: Rc<RefCell<Option<String>>>,
}

fn opt(v: Option<String>) -> String {
    v.unwrap_or_else(|| "none".into())
}

impl HttpFilter for ApiFilter {
    fn on_request_headers(&mut self, req: &mut Request) -> Result<Action, Error> {
        match self.plugin.mode {
            Mode::Headers => {
                let names: Vec<String> = req
                    .headers()?
                    .into_iter()
                    .map(|(k, _)| k)
                    .filter(|k| k.starts_with(':') || k.starts_with("x-"))
                    .collect();
                req.set_header("x-names", names.join(","))?;
                req.set_header(
                    "x-pseudo",
                    format!(
                        "{} {} {} {} {} eos={}",
                        req.method()?,
                        req.path()?,
                        req.path_only()?,
                        req.authority()?,
                        req.scheme()?,
                        req.end_of_stream()
                    ),
                )?;
                req.set_header("x-query-k", opt(req.query_param("k")?))?;
                req.set_header("x-in-copy", opt(req.header("x-in")?))?;
                let raw = req.header_bytes("x-bin")?.unwrap_or_default();
                req.set_header("x-bin-len", raw.len().to_string())?;
                req.add_header("x-multi", "added")?;
                req.remove_header("x-drop")?;
                if let Some(p) = req.header("x-new-path")? {
                    req.set_path(&p)?;
                }
                self.seen
                    .push(("x-body-len-in-headers".into(), req.body_len().to_string()));
                Ok(Action::Continue)
            }
            Mode::Body => {
                req.remove_header("content-length")?;
                Ok(Action::Continue)
            }
            Mode::Reply if req.header("x-reply-now")?.is_some() => Ok(Reply::new(418)
                .header("x-teapot", "yes")
                .header("x-teapot", "twice")
                .body("short and stout")
                .details("teapot")
                .into()),
            Mode::Error if req.header("x-fail")?.is_some() => Err(Error::msg("asked to fail")),
            Mode::Error => {
                // A host refusal surfaces as an error too: this header is hidden from us.
                req.set_header("authorization", "forged")?;
                Ok(Action::Continue)
            }
            Mode::Callout => {
                let want = opt(req.header("x-want")?);
                let call = Call::get(format!("/call?status={want}"))
                    .authority("callee.test")
                    .header("x-from", "sdk")
                    .timeout(Duration::from_millis(2000));
                req.http_call(&self.plugin.upstream, call, |req, result| match result {
                    Ok(r) if r.status() == 200 => {
                        req.set_header("x-call-status", "200")?;
                        req.set_header(
                            "x-call-upstream",
                            r.header("x-upstream").unwrap_or("none"),
                        )?;
                        req.set_header("x-call-body-len", r.body().len().to_string())?;
                        Ok(Action::Continue)
                    }
                    Ok(r) => Ok(Reply::new(403)
                        .body(format!("callee said {}", r.status()))
                        .into()),
                    Err(CallError::Failed) => Ok(Reply::new(502).body("call failed").into()),
                    Err(e) => Err(Error::msg(e.to_string())),
                })?;
                Ok(Action::Pause)
            }
            Mode::Shared => {
                let n: u64 = shared::update("hits", |old: Option<u64>| {
                    let n = old.unwrap_or(0) + 1;
                    (Some(n), n)
                })?;
                let list = shared::update("paths", |old: Option<Json<Vec<String>>>| {
                    let mut v = old.map(|j| j.0).unwrap_or_default();
                    v.push(req.path().unwrap_or_default());
                    (Some(Json(v.clone())), v)
                })?;
                shared::set("last", &"set-directly".to_string())?;
                let last: Option<String> = shared::get("last")?;
                let absent: Option<u64> = shared::get("never-set")?;
                req.set_header("x-hits", n.to_string())?;
                req.set_header("x-paths", list.join(","))?;
                req.set_header("x-last", opt(last))?;
                req.set_header("x-absent", format!("{absent:?}"))?;
                // Versions: a write with a stale one is refused, with the current one it lands.
                let (_, version): (u64, u32) =
                    shared::get_versioned("hits")?.expect("just updated");
                let fresh = shared::set_if_version("hits", &n, version)?;
                let stale = shared::set_if_version("hits", &n, version)?;
                req.set_header("x-cas", format!("fresh={fresh} stale={stale}"))?;
                Ok(Action::Continue)
            }
            Mode::Metrics => {
                let (c, g, h) = self.plugin.metrics.as_ref().expect("defined in new");
                c.inc()?;
                c.add(2)?;
                g.set(10)?;
                g.add(-3)?;
                h.record(5)?;
                req.set_header("x-counter", c.value()?.to_string())?;
                req.set_header("x-gauge", g.value()?.to_string())?;
                Ok(Action::Continue)
            }
            Mode::Properties => {
                req.set_header("x-id", opt(properties::request_id()?))?;
                req.set_header("x-route", opt(properties::route_name()?))?;
                req.set_header("x-plugin", opt(properties::plugin_name()?))?;
                req.set_header("x-client", opt(properties::client_address()?))?;
                req.set_header("x-client-ip", opt(properties::client_ip()?))?;
                req.set_header(
                    "x-protocol",
                    opt(properties::get_string(&["request", "protocol"])?),
                )?;
                let t = properties::get_u64(&["request", "time"])?.unwrap_or(0);
                let now = properties::now_nanos()?;
                req.set_header("x-time-ok", (t > 0 && t <= now).to_string())?;
                let _ = properties::now()?;
                properties::set(&["sdk", "note"], b"kept")?;
                req.set_header("x-custom", opt(properties::get_string(&["sdk", "note"])?))?;
                Ok(Action::Continue)
            }
            Mode::Log => {
                sluice_sdk::trace!("api-log trace {}", 1);
                sluice_sdk::debug!("api-log debug {}", 2);
                sluice_sdk::info!("api-log info {}", 3);
                sluice_sdk::warn!("api-log warn {}", 4);
                sluice_sdk::error!("api-log error {}", 5);
                sluice_sdk::critical!("api-log critical {}", 6);
                Ok(Action::Continue)
            }
            Mode::RootCall => {
                let seen: Option<String> = shared::get("root-call")?;
                req.set_header("x-root-call", opt(seen))?;
                Ok(Action::Continue)
            }
            Mode::Tick => {
                let ticks: u64 = shared::get("ticks")?.unwrap_or(0);
                req.set_header("x-ticks", ticks.to_string())?;
                Ok(Action::Continue)
            }
            Mode::Grpc => grpc::unary(req, &self.plugin.upstream),
            Mode::GrpcStream => grpc::stream(req, &self.plugin.upstream, &self.grpc_report),
            Mode::GrpcRoot => grpc::report_root(req),
            Mode::Reply => Ok(Action::Continue),
        }
    }

    fn on_request_body(&mut self, req: &mut Request) -> Result<Action, Error> {
        if self.plugin.mode != Mode::Body {
            return Ok(Action::Continue);
        }
        if !req.end_of_stream() {
            return Ok(Action::Pause);
        }
        let body = req.body()?;
        self.seen
            .push(("x-request-body-len".into(), req.body_len().to_string()));
        req.set_body(body.to_ascii_uppercase())?;
        Ok(Action::Continue)
    }

    fn on_response_headers(&mut self, resp: &mut Response) -> Result<Action, Error> {
        for (k, v) in std::mem::take(&mut self.seen) {
            resp.set_header(&k, v)?;
        }
        if let Some(report) = self.grpc_report.borrow().as_ref() {
            resp.set_header("x-grpc-stream", report)?;
        }
        match self.plugin.mode {
            Mode::Headers => {
                let status = resp.status()?;
                resp.set_header("x-upstream-status", status.to_string())?;
                if resp.header("x-make-201")?.is_some() {
                    resp.set_status(201)?;
                }
                resp.add_header("x-resp-multi", "b")?;
                resp.remove_header("x-resp-drop")?;
                let n = resp.headers()?.len();
                resp.set_header("x-resp-count", n.to_string())?;
                let raw = resp.header_bytes("x-resp-multi")?.unwrap_or_default();
                resp.set_header("x-resp-first", String::from_utf8_lossy(&raw).into_owned())?;
                resp.set_header("x-resp-eos", resp.end_of_stream().to_string())?;
                Ok(Action::Continue)
            }
            Mode::Body => {
                resp.remove_header("content-length")?;
                Ok(Action::Continue)
            }
            Mode::Reply if resp.header("x-replace")?.is_some() => {
                Ok(Reply::new(503).body("replaced").into())
            }
            _ => Ok(Action::Continue),
        }
    }

    fn on_response_body(&mut self, resp: &mut Response) -> Result<Action, Error> {
        if self.plugin.mode != Mode::Body {
            return Ok(Action::Continue);
        }
        if !resp.end_of_stream() {
            return Ok(Action::Pause);
        }
        let mut body = resp.body()?;
        body.extend_from_slice(format!("!{}", resp.body_len()).as_bytes());
        resp.set_body(body)?;
        Ok(Action::Continue)
    }

    fn on_error(&mut self, error: &Error) -> Reply {
        Reply::new(599).body(format!("custom: {error}"))
    }
}

sluice_sdk::plugin!(Api);
