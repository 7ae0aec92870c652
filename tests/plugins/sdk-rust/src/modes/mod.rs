//! One HTTP context type per mode (or family of modes).

pub mod body;
pub mod callout;
pub mod deny;
pub mod faults;
pub mod grpc;
pub mod headers;
pub mod log;
pub mod metrics;
pub mod properties;
pub mod shared;
pub mod trailers;
pub mod visible;

use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext};

use crate::config::{Mode, Settings};

/// Creates the HTTP context for the configured mode; without a valid configuration (the host
/// should not create contexts then) the request passes through untouched.
pub fn new_http_context(settings: Option<Rc<Settings>>) -> Box<dyn HttpContext> {
    let Some(settings) = settings else {
        return Box::new(Passthrough);
    };
    match settings.mode {
        Mode::Headers => Box::new(headers::Headers::new(settings)),
        Mode::CopyHeader => Box::new(headers::CopyHeader),
        Mode::Visible => Box::new(visible::Visible),
        Mode::Deny => Box::new(deny::Deny::new(settings)),
        Mode::InspectBody => Box::new(body::InspectBody),
        Mode::RespBody => Box::new(body::RespBody::new(settings, false)),
        Mode::RespBodyKeepLength => Box::new(body::RespBody::new(settings, true)),
        Mode::RespUpper => Box::new(body::RespUpper),
        Mode::ReqUpper => Box::new(body::ReqUpper),
        Mode::Properties => Box::new(properties::Properties::new(settings)),
        Mode::Shared => Box::new(shared::Shared),
        Mode::Metrics => Box::new(metrics::Metrics::new(settings)),
        Mode::Tick => Box::new(shared::Ticks),
        Mode::Callout => Box::new(callout::Callout::new(settings)),
        Mode::Log => Box::new(log::Log::new(settings)),
        Mode::Panic(phase) => Box::new(faults::PanicAt::new(phase)),
        Mode::Loop(phase) => Box::new(faults::LoopAt::new(phase)),
        Mode::Grow => Box::new(faults::Grow::default()),
        Mode::BadPtr => Box::new(faults::BadPtr),
        Mode::PauseForever => Box::new(faults::PauseForever),
        Mode::ConfigureFalse => Box::new(Passthrough),
        Mode::Trailers => Box::new(trailers::Trailers::new(settings, false)),
        Mode::Grpc => Box::new(grpc::Unary::new(settings)),
        Mode::GrpcStream => Box::new(grpc::Stream::new(settings)),
        Mode::TrailersHold => Box::new(trailers::Trailers::new(settings, true)),
    }
}

/// Continues in every phase and changes nothing.
struct Passthrough;

impl Context for Passthrough {}
impl HttpContext for Passthrough {}
