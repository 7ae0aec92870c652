//! The plugin configuration: `{"mode": "...", "tag": "...", "upstream": "...", "phase": "..."}`.

use serde::Deserialize;

/// `tag` when the configuration has none.
const DEFAULT_TAG: &str = "sdk";
/// `upstream` of the `callout` mode when the configuration has none.
const DEFAULT_UPSTREAM: &str = "callout";

/// What the plugin does; chosen by the configuration's `mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Headers,
    CopyHeader,
    Visible,
    Deny,
    InspectBody,
    RespBody,
    RespBodyKeepLength,
    RespUpper,
    ReqUpper,
    Properties,
    Shared,
    Metrics,
    Tick,
    Callout,
    Log,
    Panic(Phase),
    Loop(Phase),
    Grow,
    BadPtr,
    PauseForever,
    ConfigureFalse,
    Trailers,
    TrailersHold,
    Grpc,
    GrpcStream,
}

/// A callback named by the `phase` field of the `panic` and `loop` modes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Configure,
    RequestHeaders,
    RequestBody,
    ResponseHeaders,
    ResponseBody,
    Log,
    Tick,
}

impl Phase {
    fn parse(name: &str) -> Option<Phase> {
        Some(match name {
            "configure" => Phase::Configure,
            "request_headers" => Phase::RequestHeaders,
            "request_body" => Phase::RequestBody,
            "response_headers" => Phase::ResponseHeaders,
            "response_body" => Phase::ResponseBody,
            "log" => Phase::Log,
            "tick" => Phase::Tick,
            _ => return None,
        })
    }

    /// The phase's name as written in the configuration.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Configure => "configure",
            Phase::RequestHeaders => "request_headers",
            Phase::RequestBody => "request_body",
            Phase::ResponseHeaders => "response_headers",
            Phase::ResponseBody => "response_body",
            Phase::Log => "log",
            Phase::Tick => "tick",
        }
    }
}

/// Ids of the metrics the `metrics` mode defines in `on_configure`.
#[derive(Clone, Copy, Debug)]
pub struct MetricIds {
    pub counter: u32,
    pub gauge: u32,
    pub histogram: u32,
}

/// The parsed configuration, shared by the root context and its HTTP contexts.
#[derive(Debug)]
pub struct Settings {
    pub mode: Mode,
    pub tag: String,
    pub upstream: String,
    /// Set by `on_configure` in the `metrics` mode.
    pub metrics: Option<MetricIds>,
}

#[derive(Deserialize)]
struct RawConfig {
    mode: String,
    tag: Option<String>,
    upstream: Option<String>,
    phase: Option<String>,
}

impl Settings {
    /// Parses the plugin configuration; the error says what is wrong with it.
    pub fn parse(configuration: Option<&[u8]>) -> Result<Settings, String> {
        let bytes = configuration.unwrap_or_default();
        if bytes.is_empty() {
            return Err("no plugin configuration (a JSON object with a \"mode\")".to_owned());
        }
        let raw: RawConfig = serde_json::from_slice(bytes).map_err(|err| err.to_string())?;
        let phase = |allowed: &[Phase]| -> Result<Phase, String> {
            let name = raw.phase.as_deref().unwrap_or("request_headers");
            match Phase::parse(name) {
                Some(phase) if allowed.contains(&phase) => Ok(phase),
                _ => Err(format!(
                    "phase {name:?} is not valid for mode {:?}",
                    raw.mode
                )),
            }
        };
        let mode = match raw.mode.as_str() {
            "headers" => Mode::Headers,
            "copy-header" => Mode::CopyHeader,
            "visible" => Mode::Visible,
            "deny" => Mode::Deny,
            "inspect-body" => Mode::InspectBody,
            "resp-body" => Mode::RespBody,
            "resp-body-keep-length" => Mode::RespBodyKeepLength,
            "resp-upper" => Mode::RespUpper,
            "req-upper" => Mode::ReqUpper,
            "properties" => Mode::Properties,
            "shared" => Mode::Shared,
            "metrics" => Mode::Metrics,
            "tick" => Mode::Tick,
            "callout" => Mode::Callout,
            "log" => Mode::Log,
            "panic" => Mode::Panic(phase(&[
                Phase::Configure,
                Phase::RequestHeaders,
                Phase::RequestBody,
                Phase::ResponseHeaders,
                Phase::ResponseBody,
                Phase::Log,
                Phase::Tick,
            ])?),
            "loop" => Mode::Loop(phase(&[
                Phase::RequestHeaders,
                Phase::ResponseHeaders,
                Phase::Configure,
            ])?),
            "grow" => Mode::Grow,
            "badptr" => Mode::BadPtr,
            "pause-forever" => Mode::PauseForever,
            "configure-false" => Mode::ConfigureFalse,
            "trailers" => Mode::Trailers,
            "trailers-hold" => Mode::TrailersHold,
            "grpc" => Mode::Grpc,
            "grpc-stream" => Mode::GrpcStream,
            other => return Err(format!("unknown mode {other:?}")),
        };
        Ok(Settings {
            mode,
            tag: raw.tag.unwrap_or_else(|| DEFAULT_TAG.to_owned()),
            upstream: raw.upstream.unwrap_or_else(|| DEFAULT_UPSTREAM.to_owned()),
            metrics: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Settings, String> {
        Settings::parse(Some(json.as_bytes()))
    }

    #[test]
    fn defaults_apply() {
        let settings = parse(r#"{"mode": "headers"}"#).unwrap();
        assert_eq!(settings.mode, Mode::Headers);
        assert_eq!(settings.tag, "sdk");
        assert_eq!(settings.upstream, "callout");
        let settings = parse(r#"{"mode": "panic"}"#).unwrap();
        assert_eq!(settings.mode, Mode::Panic(Phase::RequestHeaders));
    }

    #[test]
    fn fields_are_read() {
        let settings =
            parse(r#"{"mode": "callout", "tag": "a", "upstream": "auth", "extra": 1}"#).unwrap();
        assert_eq!(settings.mode, Mode::Callout);
        assert_eq!(settings.tag, "a");
        assert_eq!(settings.upstream, "auth");
        let settings = parse(r#"{"mode": "loop", "phase": "configure"}"#).unwrap();
        assert_eq!(settings.mode, Mode::Loop(Phase::Configure));
        let settings = parse(r#"{"mode": "panic", "phase": "tick"}"#).unwrap();
        assert_eq!(settings.mode, Mode::Panic(Phase::Tick));
    }

    #[test]
    fn bad_configurations_are_rejected() {
        assert!(Settings::parse(None).is_err());
        assert!(parse("").is_err());
        assert!(parse("not json").is_err());
        assert!(parse(r#"{"tag": "a"}"#).is_err());
        assert!(parse(r#"{"mode": "nope"}"#).is_err());
        assert!(parse(r#"{"mode": "panic", "phase": "nope"}"#).is_err());
        assert!(parse(r#"{"mode": "loop", "phase": "log"}"#).is_err());
    }
}
