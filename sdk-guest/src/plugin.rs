//! The two traits a plugin implements: [`Plugin`] (one per VM, made from the configuration)
//! and [`HttpFilter`] (one per request).

use std::rc::Rc;
use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::error::Error;
use crate::reply::{Action, Reply};
use crate::request::Request;
use crate::response::Response;

/// A plugin: made once per VM from its configuration, it makes a filter for each request.
///
/// ```
/// use std::rc::Rc;
/// use sluice_sdk::{Action, Error, HttpFilter, Plugin, Request};
///
/// #[derive(serde::Deserialize)]
/// struct Config { header: String }
///
/// struct Tagger { header: String }
///
/// impl Plugin for Tagger {
///     type Config = Config;
///     type Filter = TagFilter;
///     fn new(config: Config) -> Result<Self, Error> {
///         Ok(Tagger { header: config.header })
///     }
///     fn filter(plugin: &Rc<Self>) -> TagFilter {
///         TagFilter { plugin: plugin.clone() }
///     }
/// }
///
/// struct TagFilter { plugin: Rc<Tagger> }
///
/// impl HttpFilter for TagFilter {
///     fn on_request_headers(&mut self, req: &mut Request) -> Result<Action, Error> {
///         req.set_header(&self.plugin.header, "yes")?;
///         Ok(Action::Continue)
///     }
/// }
/// ```
pub trait Plugin: Sized + 'static {
    /// The configuration, parsed from the JSON the host passes to `on_configure` (an empty
    /// configuration parses as `{}`).
    type Config: DeserializeOwned;
    /// The per-request filter.
    type Filter: HttpFilter;

    /// Makes the plugin from its configuration. An error refuses the configuration: the host
    /// does not load the plugin, and the error is logged.
    fn new(config: Self::Config) -> Result<Self, Error>;

    /// Makes the filter of one request.
    fn filter(plugin: &Rc<Self>) -> Self::Filter;

    /// How often [`Plugin::on_tick`] runs (`None`: never). Asked once, after [`Plugin::new`].
    fn tick_period(&self) -> Option<Duration> {
        None
    }

    /// Runs every [`Plugin::tick_period`].
    fn on_tick(&self) {}
}

/// The filter of one request. Every callback is optional; the defaults go on unchanged.
///
/// A callback that returns `Err` makes the request fail closed: the error is logged and the
/// request is answered with [`HttpFilter::on_error`]'s reply (by default a 500).
pub trait HttpFilter: 'static {
    /// The request headers arrived. [`Request::end_of_stream`] says whether a body follows.
    fn on_request_headers(&mut self, req: &mut Request) -> Result<Action, Error> {
        let _ = req;
        Ok(Action::Continue)
    }

    /// Request body bytes arrived ([`Request::body`]). [`Action::Pause`] buffers them: the
    /// next call gets everything so far.
    fn on_request_body(&mut self, req: &mut Request) -> Result<Action, Error> {
        let _ = req;
        Ok(Action::Continue)
    }

    /// The response headers arrived.
    fn on_response_headers(&mut self, resp: &mut Response) -> Result<Action, Error> {
        let _ = resp;
        Ok(Action::Continue)
    }

    /// Response body bytes arrived ([`Response::body`]). [`Action::Pause`] buffers them.
    fn on_response_body(&mut self, resp: &mut Response) -> Result<Action, Error> {
        let _ = resp;
        Ok(Action::Continue)
    }

    /// The request is over (the response was sent, or the client left): a place for access
    /// logs and metrics.
    fn on_log(&mut self) {}

    /// The reply for a callback that failed with `error`. Default: 500 with a short text body.
    fn on_error(&mut self, error: &Error) -> Reply {
        let _ = error;
        Reply::new(500)
            .header("content-type", "text/plain; charset=utf-8")
            .body("500 Internal Server Error: plugin error\n")
    }
}
