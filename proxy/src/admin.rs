//! The admin API, on its own listener (loopback by default), never on a client listener:
//!
//! - `GET /ready`: 200 once every client listener accepts connections; 503 before that and
//!   while draining after a shutdown signal (it keeps answering during the drain).
//! - `GET /metrics`: Prometheus text format.
//! - `GET /config`: the config being served, as JSON, with its version and load time.

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

use crate::runtime::State;

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
                async move { Ok::<_, Infallible>(handle(&state, req)) }
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

fn handle(state: &State, req: Request<Incoming>) -> Response<Full<Bytes>> {
    const TEXT: &str = "text/plain; charset=utf-8";
    let path = req.uri().path();
    let known = matches!(path, "/ready" | "/metrics" | "/config");
    if !known {
        return reply(StatusCode::NOT_FOUND, TEXT, "not found\n");
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
        _ => {
            let rt = state.current();
            let body = serde_json::json!({
                "version": rt.version,
                "loaded_at": rfc3339(rt.loaded_at),
                "source": rt.config.source.as_ref().map(|p| p.display().to_string()),
                "config": rt.config.file,
            });
            reply(
                StatusCode::OK,
                "application/json",
                serde_json::to_vec_pretty(&body).expect("config serializes"),
            )
        }
    }
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
