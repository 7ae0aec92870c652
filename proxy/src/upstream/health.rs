//! Active health checks: each endpoint of a pool with `health_check` gets a task that GETs the
//! configured path every interval and flips the endpoint's health after the configured number of
//! consecutive failures or successes. A task stops by itself once its pool is no longer in use
//! (it holds only a weak reference), so replacing the config retires old checks.

use std::sync::{Arc, Weak};

use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;

use super::{Endpoint, Pool};
use crate::config::HealthCheck;

/// Starts the health-check tasks of `pool` on the current tokio runtime. No-op without
/// `health_check`.
pub fn spawn(pool: &Arc<Pool>) {
    let Some(hc) = pool.health_check.clone() else {
        return;
    };
    let connector = Arc::new(Connector::new(None));
    for idx in 0..pool.endpoints.len() {
        let weak = Arc::downgrade(pool);
        let hc = hc.clone();
        let connector = connector.clone();
        tokio::spawn(async move { run(weak, idx, hc, connector).await });
    }
}

async fn run(pool: Weak<Pool>, idx: usize, hc: HealthCheck, connector: Arc<Connector>) {
    let (mut fails, mut oks) = (0u32, 0u32);
    loop {
        let Some(pool) = pool.upgrade() else {
            return;
        };
        let ep = &pool.endpoints[idx];
        match check(&connector, ep, &hc).await {
            Ok(()) => {
                fails = 0;
                oks = oks.saturating_add(1);
                if oks >= hc.healthy_threshold && ep.set_healthy(true) {
                    tracing::info!(upstream = %pool.name, endpoint = %ep.label, "endpoint is healthy again");
                }
            }
            Err(reason) => {
                oks = 0;
                fails = fails.saturating_add(1);
                if fails >= hc.unhealthy_threshold && ep.set_healthy(false) {
                    tracing::warn!(upstream = %pool.name, endpoint = %ep.label, %reason, "endpoint marked unhealthy");
                } else {
                    tracing::debug!(upstream = %pool.name, endpoint = %ep.label, %reason, "health check failed");
                }
            }
        }
        drop(pool);
        tokio::time::sleep(hc.interval).await;
    }
}

/// One check: connect, `GET path`, read the status. 2xx and 3xx are healthy.
async fn check(connector: &Connector, ep: &Endpoint, hc: &HealthCheck) -> Result<(), String> {
    let mut peer = ep.peer();
    peer.options.connection_timeout = Some(hc.timeout);
    peer.options.read_timeout = Some(hc.timeout);
    let attempt = async {
        let (mut session, _) = connector.get_http_session(&*peer).await?;
        let mut req = RequestHeader::build("GET", hc.path.as_bytes(), None)?;
        req.insert_header("host", ep.label.as_str())?;
        req.insert_header("user-agent", "sluice-health-check")?;
        session.write_request_header(Box::new(req)).await?;
        session.finish_request_body().await?;
        session.read_response_header().await?;
        Ok::<_, Box<pingora::Error>>(session.response_header().map_or(0, |r| r.status.as_u16()))
    };
    match tokio::time::timeout(hc.timeout, attempt).await {
        Ok(Ok(status)) if (200..400).contains(&status) => Ok(()),
        Ok(Ok(status)) => Err(format!("status {status}")),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {} ms", hc.timeout.as_millis())),
    }
}
