//! The mask plugin: redacts sensitive data — e-mail addresses, card numbers (Luhn-checked),
//! IBANs (mod-97-checked), bearer tokens, and custom regular expressions — in response bodies
//! and, optionally, request bodies.
//!
//! A body to mask is buffered until it is complete (up to `max_body_bytes`), then masked
//! once, so that a field split across chunks is found. Every masked field is counted in the
//! counter `mask_fields_total`; a masked request also tells the upstream the count in a
//! header (`x-masked-fields`). See the crate's README for the configuration.
//!
//! ```yaml
//! plugins:
//!   mask: { path: sluice_plugin_mask.wasm, config: { presets: [email, card] } }
//! ```
//!
//! Modules: [`config`] (the configuration), [`presets`] (the named patterns), [`luhn`] and
//! [`iban`] (their checks), [`masker`] (masking a body), [`plan`] (what to do with a body).
#![deny(missing_docs)]

pub mod config;
pub mod iban;
pub mod luhn;
pub mod masker;
pub mod plan;
pub mod presets;

use std::rc::Rc;

use sluice_sdk::metrics::Counter;
use sluice_sdk::{Action, Error, HttpFilter, Plugin, Reply, Request, Response};

use crate::config::{ConfigFile, Oversize, Settings};
use crate::plan::{plan, BodyHeaders, Plan, Unmaskable};

/// The most request body bytes Sluice reads before forwarding a request whose plugin holds it
/// for its body. The count header needs the request held; a request declaring a longer body
/// is masked as it streams, without the header.
pub const HOLD_LIMIT: u64 = 64 * 1024;

/// The plugin: its validated settings and its counters.
pub struct Mask {
    settings: Settings,
    metrics: Metrics,
}

/// The counters the plugin keeps.
struct Metrics {
    /// Fields masked.
    fields: Counter,
    /// Bodies masked (scanned complete, whether anything was found or not).
    bodies: Counter,
    /// Bodies over `max_body_bytes`.
    oversize: Counter,
    /// Compressed bodies.
    encoded: Counter,
}

impl Metrics {
    fn new() -> Result<Metrics, Error> {
        Ok(Metrics {
            fields: Counter::new("mask_fields_total")?,
            bodies: Counter::new("mask_bodies_total")?,
            oversize: Counter::new("mask_oversize_total")?,
            encoded: Counter::new("mask_encoded_total")?,
        })
    }
}

/// Adds `n` to `counter`; a counter the host refuses is logged, never fails the request.
fn count(counter: &Counter, n: u64) {
    if let Err(e) = counter.add(n) {
        sluice_sdk::debug!("mask: cannot count: {e}");
    }
}

impl Plugin for Mask {
    type Config = ConfigFile;
    type Filter = MaskFilter;

    fn new(config: ConfigFile) -> Result<Self, Error> {
        let settings = Settings::from_file(config)?;
        if !settings.request && !settings.response {
            sluice_sdk::warn!("mask: request and response are both false: nothing is masked");
        }
        let rules: Vec<&str> = settings.masker.rules().iter().map(|r| r.name()).collect();
        sluice_sdk::info!("mask: configured, rules: {}", rules.join(", "));
        Ok(Mask {
            settings,
            metrics: Metrics::new()?,
        })
    }

    fn filter(plugin: &Rc<Self>) -> MaskFilter {
        MaskFilter {
            plugin: plugin.clone(),
            request: State::Pass,
            response: State::Pass,
            replied: false,
        }
    }
}

/// Which body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    Request,
    Response,
}

impl Direction {
    fn as_str(self) -> &'static str {
        match self {
            Direction::Request => "request",
            Direction::Response => "response",
        }
    }
}

/// Where one body stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Forwarded as it comes: not to be masked, already masked, or given up.
    Pass,
    /// Buffered until complete, then masked.
    Buffer,
    /// A request held in its headers until its body is complete, then masked; the count
    /// header can still be set.
    Hold,
}

/// Masks the bodies of one request and its response.
pub struct MaskFilter {
    plugin: Rc<Mask>,
    request: State,
    response: State,
    /// This plugin answered the request itself: the response callbacks that the host runs over
    /// that reply (as Envoy does) leave it alone.
    replied: bool,
}

/// What to do with a body after one callback's bytes.
enum Step {
    /// Forward the body as it is.
    Forward,
    /// Wait for more (buffer).
    Wait,
    /// Replace it; this many fields were masked.
    Masked(Vec<u8>, usize),
    /// Nothing was found (the count is 0).
    Clean,
    /// Refuse the message.
    Refuse(Reply),
}

impl MaskFilter {
    fn settings(&self) -> &Settings {
        &self.plugin.settings
    }

    /// A body that cannot be masked: a reply refusing it, or `None` to forward it unmasked.
    /// Either way it is logged and counted.
    fn unmaskable(&self, dir: Direction, why: &Unmaskable) -> Option<Reply> {
        let metrics = &self.plugin.metrics;
        count(
            match why {
                Unmaskable::TooLarge(_) => &metrics.oversize,
                Unmaskable::Encoded(_) => &metrics.encoded,
            },
            1,
        );
        let what = dir.as_str();
        match self.settings().oversize {
            Oversize::Pass => {
                sluice_sdk::warn!("mask: {what} body not masked: {why}; passed unmasked");
                None
            }
            Oversize::Block => {
                sluice_sdk::warn!("mask: {what} body not masked: {why}; refused");
                let (status, reason) = match (dir, why) {
                    (Direction::Request, Unmaskable::TooLarge(_)) => (413, "Content Too Large"),
                    (Direction::Request, Unmaskable::Encoded(_)) => (415, "Unsupported Media Type"),
                    (Direction::Response, _) => (502, "Bad Gateway"),
                };
                Some(
                    Reply::new(status)
                        .header("content-type", "text/plain; charset=utf-8")
                        .body(format!(
                            "{status} {reason}: the {what} body cannot be masked: {why}\n"
                        ))
                        .details(format!("mask: {what} body {why}")),
                )
            }
        }
    }

    /// Decides from the headers what happens to the body; `Some(reply)` refuses the message.
    /// On [`Plan::Mask`] the state becomes [`State::Buffer`].
    fn start(&mut self, dir: Direction, eos: bool, headers: &BodyHeaders) -> Option<Reply> {
        let settings = self.settings();
        let enabled = match dir {
            Direction::Request => settings.request,
            Direction::Response => settings.response,
        };
        let state = match plan(settings, enabled, eos, headers) {
            Plan::Skip => State::Pass,
            Plan::Mask => State::Buffer,
            Plan::Unmaskable(why) => {
                let reply = self.unmaskable(dir, &why);
                if reply.is_some() {
                    return reply;
                }
                State::Pass
            }
        };
        match dir {
            Direction::Request => self.request = state,
            Direction::Response => self.response = state,
        }
        None
    }

    /// One body callback of a body in `state`: `len` bytes so far, `eos` whether complete,
    /// `read` reads them.
    fn step(
        &mut self,
        dir: Direction,
        len: usize,
        eos: bool,
        read: impl FnOnce() -> Result<Vec<u8>, Error>,
    ) -> Result<Step, Error> {
        let state = match dir {
            Direction::Request => &mut self.request,
            Direction::Response => &mut self.response,
        };
        if *state == State::Pass {
            return Ok(Step::Forward);
        }
        let settings = &self.plugin.settings;
        if len > settings.max_body_bytes {
            *state = State::Pass;
            let why = Unmaskable::TooLarge(len as u64);
            return Ok(match self.unmaskable(dir, &why) {
                Some(reply) => Step::Refuse(reply),
                None => Step::Forward,
            });
        }
        if !eos {
            return Ok(Step::Wait);
        }
        *state = State::Pass;
        let body = read()?;
        let masked = settings.masker.mask(&body);
        let total = masked.total();
        count(&self.plugin.metrics.bodies, 1);
        count(&self.plugin.metrics.fields, total as u64);
        let what = dir.as_str();
        Ok(match masked.body {
            Some(out) => {
                let summary = settings.masker.summary(&masked.counts);
                sluice_sdk::debug!("mask: {what} body: {total} fields masked ({summary})");
                Step::Masked(out, total)
            }
            None => {
                sluice_sdk::debug!("mask: {what} body: 0 fields masked");
                Step::Clean
            }
        })
    }
}

/// The headers of a request or response that decide what happens to its body.
fn body_headers(
    get: impl Fn(&str) -> Result<Option<String>, Error>,
) -> Result<[Option<String>; 3], Error> {
    Ok([
        get("content-type")?,
        get("content-encoding")?,
        get("content-length")?,
    ])
}

fn as_body_headers(h: &[Option<String>; 3]) -> BodyHeaders<'_> {
    BodyHeaders {
        content_type: h[0].as_deref(),
        content_encoding: h[1].as_deref(),
        content_length: h[2].as_deref(),
    }
}

impl HttpFilter for MaskFilter {
    fn on_request_headers(&mut self, req: &mut Request) -> Result<Action, Error> {
        if self.settings().response {
            // The response must come uncompressed to be masked.
            req.remove_header("accept-encoding")?;
        }
        let h = body_headers(|n| req.header(n))?;
        let headers = as_body_headers(&h);
        if let Some(reply) = self.start(Direction::Request, req.end_of_stream(), &headers) {
            self.replied = true;
            return Ok(Action::Reply(reply));
        }
        if self.request != State::Buffer {
            return Ok(Action::Continue);
        }
        // The length will change.
        req.remove_header("content-length")?;
        let holdable = headers.length().is_none_or(|n| n <= HOLD_LIMIT);
        if self.settings().count_header.is_some() && holdable {
            // Hold the request until its body is complete, so that the count header can
            // still go upstream.
            self.request = State::Hold;
            return Ok(Action::Pause);
        }
        Ok(Action::Continue)
    }

    fn on_request_body(&mut self, req: &mut Request) -> Result<Action, Error> {
        let held = self.request == State::Hold;
        let step = self.step(
            Direction::Request,
            req.body_len(),
            req.end_of_stream(),
            || req.body(),
        )?;
        let total = match step {
            Step::Forward => return Ok(Action::Continue),
            Step::Wait => return Ok(Action::Pause),
            Step::Refuse(reply) => {
                self.replied = true;
                return Ok(Action::Reply(reply));
            }
            Step::Masked(body, total) => {
                req.set_body(body)?;
                total
            }
            Step::Clean => 0,
        };
        if let (true, Some(name)) = (held, &self.plugin.settings.count_header) {
            req.set_header(name, total.to_string())?;
        }
        Ok(Action::Continue)
    }

    fn on_response_headers(&mut self, resp: &mut Response) -> Result<Action, Error> {
        if self.replied {
            return Ok(Action::Continue);
        }
        let h = body_headers(|n| resp.header(n))?;
        let headers = as_body_headers(&h);
        if let Some(reply) = self.start(Direction::Response, resp.end_of_stream(), &headers) {
            return Ok(Action::Reply(reply));
        }
        if self.response == State::Buffer {
            // The length will change. (The count cannot go in a response header: on Sluice
            // the header is sent before the body is complete.)
            resp.remove_header("content-length")?;
        }
        Ok(Action::Continue)
    }

    fn on_response_body(&mut self, resp: &mut Response) -> Result<Action, Error> {
        let step = self.step(
            Direction::Response,
            resp.body_len(),
            resp.end_of_stream(),
            || resp.body(),
        )?;
        match step {
            Step::Forward | Step::Clean => Ok(Action::Continue),
            Step::Wait => Ok(Action::Pause),
            Step::Refuse(reply) => Ok(Action::Reply(reply)),
            Step::Masked(body, _) => {
                resp.set_body(body)?;
                Ok(Action::Continue)
            }
        }
    }
}

sluice_sdk::plugin!(Mask);
// config.schema.json, checked by the host before on_configure.
sluice_sdk::config_schema!();
