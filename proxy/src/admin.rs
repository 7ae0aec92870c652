//! The admin API, on its own listener (loopback by default), never on a client listener:
//!
//! - `GET /ready`: 200 once every client listener accepts connections; 503 before that and
//!   while draining after a shutdown signal (it keeps answering during the drain).
//! - `GET /metrics`: Prometheus text format.
//! - `GET /config`: the config being served, as JSON, with its version, load time and the
//!   result of the last reload.
//! - `GET /plugins`, `GET /plugins/NAME`: the loaded plugins (source, sha256, the config
//!   version that loaded them, load time, VMs, contexts, memory, errors by kind, the secret
//!   references its config reads — never their values) and the result of the last reload.
//! - `GET /plugins/NAME/rollout`: a plugin's rollout (state, share, rollback rule, and per
//!   version: requests, failures by kind, local replies by status, guest-time percentiles).
//!   `POST /plugins/NAME/rollout/promote` makes the candidate serve every request,
//!   `POST /plugins/NAME/rollout/abort` removes it (409 once the rollout has ended).
//! - `POST /plugins/NAME/capture?requests=N[&timeout_seconds=T]`: records the plugin's next N
//!   requests as it sees them (sanitized: hidden headers never written) and answers them as
//!   a test-kit case file (YAML) once it has them or after T seconds (default 60).
//! - `POST /reload`: reloads the config file; 200 with the new version once it serves, or 422
//!   with the reason it was refused (the running config keeps serving).
//!
//! With `admin.token_file`, every endpoint but `/ready` and `/metrics` (what probes and
//! Prometheus scrape) requires `Authorization: Bearer <token>`, else 401. A non-loopback
//! address without a token is refused by config validation unless `admin.allow_insecure`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::rollout::{Mode, Rollout, State as RolloutState, Sticky};
use crate::runtime::Runtime;
use crate::state::{State, Trigger};
use crate::wasm::plugin::Plugin;
use crate::wasm::settings::{FailurePolicy, Version};

/// The admin listener as a pingora background service.
pub struct AdminService {
    state: Arc<State>,
    listener: std::sync::Mutex<Option<std::net::TcpListener>>,
}

impl AdminService {
    /// Serves the admin API on an already bound listener (bound early so that an address in
    /// use is reported before the proxy starts).
    pub fn new(state: Arc<State>, listener: std::net::TcpListener) -> Self {
        AdminService {
            state,
            listener: std::sync::Mutex::new(Some(listener)),
        }
    }
}

#[async_trait]
impl BackgroundService for AdminService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(std_listener) = self.listener.lock().expect("not poisoned").take() else {
            return;
        };
        let listener = match std_listener
            .set_nonblocking(true)
            .and_then(|()| tokio::net::TcpListener::from_std(std_listener))
        {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "admin listener unusable");
                return;
            }
        };
        let state = self.state.clone();
        tokio::spawn(async move {
            if shutdown.changed().await.is_ok() {
                state.set_draining();
            }
        });
        serve(listener, self.state.clone()).await;
    }
}

/// Accepts admin connections until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, state: Arc<State>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(&state, req).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .body(Full::new(body.into()))
        .expect("valid response")
}

fn json(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut text = serde_json::to_vec_pretty(body).expect("JSON serializes");
    text.push(b'\n');
    reply(status, "application/json", text)
}

async fn handle(state: &Arc<State>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    const TEXT: &str = "text/plain; charset=utf-8";
    let path = req.uri().path();
    let (plugin, sub) = match path.strip_prefix("/plugins/").filter(|n| !n.is_empty()) {
        Some(rest) => match rest.split_once('/') {
            Some((name, sub)) => (Some(name), Some(sub)),
            None => (Some(rest), None),
        },
        None => (None, None),
    };
    if !matches!(
        sub,
        None | Some("rollout") | Some("rollout/promote") | Some("rollout/abort") | Some("capture")
    ) {
        return reply(StatusCode::NOT_FOUND, TEXT, "not found\n");
    }
    let known = matches!(
        path,
        "/ready" | "/metrics" | "/config" | "/plugins" | "/reload"
    ) || plugin.is_some();
    if !known {
        return reply(StatusCode::NOT_FOUND, TEXT, "not found\n");
    }
    // With a token, only the probes' endpoints are open.
    if !matches!(path, "/ready" | "/metrics") {
        if let Some(token) = &state.current().config.admin.token {
            let presented = req
                .headers()
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
            if !presented.is_some_and(|p| token.matches(p)) {
                let mut r = reply(
                    StatusCode::UNAUTHORIZED,
                    TEXT,
                    "this endpoint needs the admin token: Authorization: Bearer <token>\n",
                );
                r.headers_mut().insert(
                    http::header::WWW_AUTHENTICATE,
                    http::HeaderValue::from_static("Bearer realm=\"sluice-admin\""),
                );
                return r;
            }
        }
    }
    if path == "/reload" {
        if req.method() != Method::POST {
            return reply(StatusCode::METHOD_NOT_ALLOWED, TEXT, "use POST\n");
        }
        return match state.reload(Trigger::Api).await {
            Ok(rt) => json(
                StatusCode::OK,
                &serde_json::json!({
                    "result": "ok",
                    "version": rt.version,
                    "last_reload": last_reload(state),
                }),
            ),
            Err(e) => json(
                StatusCode::UNPROCESSABLE_ENTITY,
                &serde_json::json!({
                    "result": "error",
                    "error": e.to_string(),
                    "version": state.current().version,
                }),
            ),
        };
    }
    if let (Some(name), Some("capture")) = (plugin, sub) {
        if req.method() != Method::POST {
            return reply(StatusCode::METHOD_NOT_ALLOWED, TEXT, "use POST\n");
        }
        return capture(state, name, req.uri().query().unwrap_or("")).await;
    }
    if let (Some(name), Some(action @ ("rollout/promote" | "rollout/abort"))) = (plugin, sub) {
        if req.method() != Method::POST {
            return reply(StatusCode::METHOD_NOT_ALLOWED, TEXT, "use POST\n");
        }
        let rt = state.current();
        let Some(rollout) = rt.rollouts.get(name) else {
            return reply(
                StatusCode::NOT_FOUND,
                TEXT,
                format!(
                    "plugin {name:?} has no rollout in config version {}\n",
                    rt.version
                ),
            );
        };
        let done = if action == "rollout/promote" {
            rollout.promote()
        } else {
            rollout.abort()
        };
        return match done {
            Ok(()) => json(StatusCode::OK, &rollout_json(rollout)),
            Err(e) => reply(StatusCode::CONFLICT, TEXT, format!("{e}\n")),
        };
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(StatusCode::METHOD_NOT_ALLOWED, TEXT, "use GET\n");
    }
    match path {
        "/ready" => {
            if state.is_draining() {
                reply(StatusCode::SERVICE_UNAVAILABLE, TEXT, "draining\n")
            } else if state.is_ready() {
                reply(StatusCode::OK, TEXT, "ready\n")
            } else {
                reply(StatusCode::SERVICE_UNAVAILABLE, TEXT, "starting\n")
            }
        }
        "/metrics" => {
            let m = crate::metrics::metrics();
            m.in_flight.set(state.in_flight() as i64);
            for p in state.current().plugins.values() {
                p.update_gauges();
            }
            reply(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                m.render(),
            )
        }
        "/plugins" => {
            let rt = state.current();
            let mut names: Vec<&String> = rt.config.plugins.iter().map(|p| &p.name).collect();
            names.sort();
            let plugins: Vec<serde_json::Value> =
                names.iter().filter_map(|n| plugin_json(&rt, n)).collect();
            json(
                StatusCode::OK,
                &serde_json::json!({
                    "config_version": rt.version,
                    "last_reload": last_reload(state),
                    "plugins": plugins,
                }),
            )
        }
        "/config" => {
            let rt = state.current();
            json(
                StatusCode::OK,
                &serde_json::json!({
                    "version": rt.version,
                    "loaded_at": rfc3339(rt.loaded_at),
                    "source": rt.config.source.as_ref().map(|p| p.display().to_string()),
                    "last_reload": last_reload(state),
                    "config": rt.config.file,
                    "rollouts": rt
                        .rollouts
                        .iter()
                        .map(|(name, r)| (name.clone(), rollout_summary(r)))
                        .collect::<serde_json::Map<_, _>>(),
                }),
            )
        }
        _ => {
            let rt = state.current();
            let name = plugin.unwrap_or_default();
            if sub == Some("rollout") {
                return match rt.rollouts.get(name) {
                    Some(r) => json(StatusCode::OK, &rollout_json(r)),
                    None => reply(
                        StatusCode::NOT_FOUND,
                        TEXT,
                        format!(
                            "plugin {name:?} has no rollout in config version {}\n",
                            rt.version
                        ),
                    ),
                };
            }
            match plugin_json(&rt, name) {
                Some(p) => json(StatusCode::OK, &p),
                None => reply(
                    StatusCode::NOT_FOUND,
                    TEXT,
                    format!(
                        "no plugin named {name:?} in config version {}\n",
                        rt.version
                    ),
                ),
            }
        }
    }
}

/// `POST /plugins/NAME/capture?requests=N[&timeout_seconds=T]`: records the next N requests
/// (1–10000) of the plugin as it sees them, for at most T seconds (default 60, at most 600),
/// and answers the test-kit case file (YAML).
async fn capture(state: &Arc<State>, name: &str, query: &str) -> Response<Full<Bytes>> {
    const TEXT: &str = "text/plain; charset=utf-8";
    let mut requests = None;
    let mut timeout = 60;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let n: Option<u64> = v.parse().ok();
        match (k, n) {
            ("requests", Some(n)) if (1..=10_000).contains(&n) => requests = Some(n as usize),
            ("timeout_seconds", Some(t)) if (1..=600).contains(&t) => timeout = t,
            _ => {
                return reply(
                    StatusCode::BAD_REQUEST,
                    TEXT,
                    format!(
                        "bad parameter {pair:?}: requests=N (1 to 10000, required) and \
                         timeout_seconds=T (1 to 600) are known\n"
                    ),
                )
            }
        }
    }
    let Some(requests) = requests else {
        return reply(
            StatusCode::BAD_REQUEST,
            TEXT,
            "requests=N (1 to 10000) is required\n",
        );
    };
    let rt = state.current();
    if !rt.config.plugins.iter().any(|p| p.name == name) {
        return reply(
            StatusCode::NOT_FOUND,
            TEXT,
            format!(
                "no plugin named {name:?} in config version {}\n",
                rt.version
            ),
        );
    }
    drop(rt);
    let recording = match state.start_recording(name, requests) {
        Ok(r) => r,
        Err(e) => return reply(StatusCode::CONFLICT, TEXT, format!("{e}\n")),
    };
    // Ended however the wait ends (the admin client may leave).
    struct Stop<'a>(&'a State, Arc<crate::recording::Recording>);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            self.0.stop_recording(&self.1);
        }
    }
    let _stop = Stop(state, recording.clone());
    let cases = recording.finish(Duration::from_secs(timeout)).await;
    let got = cases.cases.len();
    let yaml = serde_yaml::to_string(&cases).unwrap_or_default();
    tracing::info!(plugin = %name, requests = got, "capture done");
    reply(
        StatusCode::OK,
        "application/yaml",
        format!(
            "# {got} of {requests} requests to plugin {name:?}, as it saw them (hidden headers \
             left out), captured {}\n{yaml}",
            rfc3339(SystemTime::now())
        ),
    )
}

/// The last reload's outcome (`null` before the first).
fn last_reload(state: &State) -> serde_json::Value {
    match state.last_reload() {
        None => serde_json::Value::Null,
        Some(r) => {
            let mut v = serde_json::json!({
                "trigger": r.trigger.as_str(),
                "at": rfc3339(r.at),
                "duration_ms": (r.duration.as_secs_f64() * 1e6).round() / 1e3,
            });
            match r.result {
                Ok(version) => {
                    v["result"] = "ok".into();
                    v["version"] = version.into();
                }
                Err(e) => {
                    v["result"] = "error".into();
                    v["error"] = e.into();
                }
            }
            v
        }
    }
}

/// The secret references of a plugin's config (`env:NAME`, `file:PATH`): what it reads, never
/// the values.
fn secret_references(rt: &Runtime, name: &str) -> Vec<String> {
    rt.config
        .plugins
        .iter()
        .find(|p| p.name == name)
        .map(|p| p.secrets.references.clone())
        .unwrap_or_default()
}

fn plugin_json(rt: &Runtime, name: &str) -> Option<serde_json::Value> {
    let p = rt.plugins.get(name)?;
    let info = rt.plugin_info.get(name)?;
    let vms = p.vms();
    let routes: Vec<&str> = rt
        .config
        .routes
        .iter()
        .filter(|r| r.plugins.iter().any(|n| n == name))
        .map(|r| r.name.as_str())
        .collect();
    Some(serde_json::json!({
        "name": name,
        "source": info.origin,
        "sha256": info.sha256,
        "from_cache": info.from_cache,
        "version": info.loaded_in,
        "loaded_at": rfc3339(info.loaded_at),
        "load_ms": (info.load_time.as_secs_f64() * 1e6).round() / 1e3,
        "vm_id": p.settings.vm_id,
        "on_error": match p.settings.on_error {
            FailurePolicy::FailClosed => "fail_closed",
            FailurePolicy::FailOpen => "fail_open",
        },
        "vms": {
            "configured": p.settings.vms,
            "started": vms.len(),
            "healthy": p.healthy_vms(),
        },
        "contexts": vms.iter().map(|vm| vm.contexts()).sum::<usize>(),
        "memory_bytes": vms.iter().map(|vm| vm.memory_bytes()).sum::<usize>(),
        "errors": crate::metrics::metrics().plugin_errors_by_kind(name, Version::Stable),
        "cost": cost_json(p),
        "routes": routes,
        "secrets": secret_references(rt, name),
        "rollout": rt.rollouts.get(name).map(|r| rollout_json(r)),
    }))
}

/// The state of a rollout and what serves, for `/config`.
fn rollout_summary(r: &Rollout) -> serde_json::Value {
    let (state, since) = r.state();
    let serving = match r.serving() {
        None => "both",
        Some(p) if Arc::ptr_eq(p, r.candidate()) => "candidate",
        Some(_) => "stable",
    };
    let mut v = serde_json::json!({
        "state": state.as_str(),
        "since": rfc3339(since),
        "serving": serving,
    });
    if let RolloutState::RolledBack { reason } = &state {
        v["reason"] = reason.clone().into();
    }
    if state == RolloutState::Promoted {
        v["note"] = "the candidate is the stable version of the running config; the config \
                     file still names the old one (a reload that keeps this candidate keeps it \
                     promoted)"
            .into();
    }
    v
}

/// A rollout: its state, settings and what each version did.
fn rollout_json(r: &Rollout) -> serde_json::Value {
    let mut v = rollout_summary(r);
    let settings = r.settings();
    let per_mille = match settings.mode {
        Mode::Canary { per_mille } => {
            v["mode"] = "canary".into();
            per_mille
        }
        Mode::Shadow {
            per_mille,
            concurrency,
        } => {
            v["mode"] = "shadow".into();
            v["shadow_concurrency"] = concurrency.into();
            let s = r.shadow_report();
            v["shadow"] = serde_json::json!({
                "same": s.same,
                "different": s.different,
                "skipped": s.skipped,
                "diffs": s.kinds,
            });
            per_mille
        }
    };
    v["weight_percent"] = (f64::from(per_mille) / 10.0).into();
    v["sticky_on"] = match &settings.sticky {
        Sticky::ClientAddress => "client_address".to_string(),
        Sticky::Header(h) => format!("header:{h}"),
    }
    .into();
    if let Some(rule) = &settings.rollback {
        v["rollback"] = serde_json::json!({
            "max_error_rate": rule.max_error_rate,
            "min_requests": rule.min_requests,
            "window_seconds": rule.window.as_secs(),
            "count_5xx": rule.count_5xx,
        });
    }
    let version = |p: &Arc<Plugin>, which: Version| {
        let s = r.stats(which);
        serde_json::json!({
            "sha256": crate::wasm::engine::hex(&p.sha256),
            "vm_id": p.settings.vm_id,
            "requests": s.requests,
            "failures": s.failures,
            "errors": crate::metrics::metrics().plugin_errors_by_kind(r.name(), which),
            "replies": s
                .replies
                .iter()
                .map(|(status, n)| (status.to_string(), serde_json::Value::from(*n)))
                .collect::<serde_json::Map<_, _>>(),
            "guest_us": s.latency_us.map(|[p50, p90, p99]| serde_json::json!({
                "p50": p50, "p90": p90, "p99": p99,
            })),
        })
    };
    v["name"] = r.name().into();
    v["versions"] = serde_json::json!({
        "stable": version(r.stable(), Version::Stable),
        "candidate": version(r.candidate(), Version::Candidate),
    });
    v
}

/// What a plugin spent since the process started (every version under its name): guest time
/// and fuel by phase, and their means per request served.
fn cost_json(p: &crate::wasm::plugin::Plugin) -> serde_json::Value {
    let (requests, costs) = p.costs();
    let seconds: f64 = costs.iter().map(|c| c.seconds).sum();
    let fuel: u64 = costs.iter().map(|c| c.fuel).sum();
    let per_request = |total: f64| {
        if requests == 0 {
            serde_json::Value::Null
        } else {
            ((total / requests as f64 * 1e3).round() / 1e3).into()
        }
    };
    let phases: serde_json::Map<String, serde_json::Value> = costs
        .iter()
        .map(|c| {
            (
                c.phase.as_str().to_string(),
                serde_json::json!({
                    "calls": c.calls,
                    "guest_us": (c.seconds * 1e9).round() / 1e3,
                    "fuel": c.fuel,
                }),
            )
        })
        .collect();
    // Per route, this version only: the request phases (not on_done/on_delete, which run
    // after the request's state is gone).
    let routes: serde_json::Map<String, serde_json::Value> = p
        .route_costs()
        .into_iter()
        .map(|(route, n, nanos, fuel)| {
            let mean = |total: f64| {
                if n == 0 {
                    serde_json::Value::Null
                } else {
                    ((total / n as f64 * 1e3).round() / 1e3).into()
                }
            };
            (
                route,
                serde_json::json!({
                    "requests": n,
                    "guest_us_per_request": mean(nanos as f64 / 1e3),
                    "fuel_per_request": mean(fuel as f64),
                }),
            )
        })
        .collect();
    serde_json::json!({
        "requests": requests,
        "guest_us_per_request": per_request(seconds * 1e6),
        "fuel_per_request": per_request(fuel as f64),
        "phases": phases,
        "routes": routes,
    })
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` in UTC.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil-from-days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_utc() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_709_210_096_789); // a leap-year date
        assert_eq!(rfc3339(t), "2024-02-29T12:34:56.789Z");
    }
}
