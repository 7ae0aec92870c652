//! The plugins' request phase: the exchange driven from `request_filter` until the request
//! may go upstream, while the client is watched.

use pingora::proxy::Session;
use pingora::{Error, ErrorType, Result};

use crate::chain::{Reply, Watch};
use crate::exchange::{Exchange, Head, PREREAD_MAX};
use crate::forwarding::Forwarding;
use crate::heads::{head_error, Req};
use crate::recording::RecordingWatch;
use crate::rollout::Sticky;

use super::forwarding::*;
use super::*;

impl SluiceProxy {
    /// Runs the route's plugins on the request before anything goes upstream. A plugin under
    /// rollout runs in the version its rollout picks for this request (canary share, sticky
    /// key); the rollout (and a capture of the plugin, if one runs) watches that chain member
    /// and is told what it did when the request ends. Then: loads the
    /// request head with the forwarding headers (plugins see them, as behind Envoy), runs
    /// `on_request_headers` in order; if a plugin waits for the body, reads the whole body
    /// (up to [`PREREAD_MAX`], what pingora can replay) and runs `on_request_body`; then writes
    /// the plugins' changes back into the request. `Some(reply)`: answer with it instead.
    pub(super) async fn run_request_plugins(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Reply>> {
        let Some(route) = ctx.route() else {
            return Ok(None);
        };
        if route.plugins.is_empty() {
            return Ok(None);
        }
        let mut plugins = route.plugins.clone();
        let mut watches = Vec::new();
        let ip = client_ip(session);
        // The client address's bytes, on the stack (no allocation per request).
        let address = ip.map(|ip| match ip {
            std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
            std::net::IpAddr::V6(v6) => v6.octets(),
        });
        for (at, rollout) in &route.rollouts {
            let key: Option<&[u8]> = match &rollout.settings().sticky {
                Sticky::ClientAddress => address.as_ref().map(|a| a.as_slice()),
                Sticky::Header(name) => session
                    .req_header()
                    .headers
                    .get(name.as_str())
                    .map(|v| v.as_bytes()),
            };
            let pick = rollout.pick(key);
            plugins[*at] = pick.plugin;
            watches.push(Watch {
                at: *at,
                observer: rollout.clone(),
                version: pick.version,
                tap: pick.tap,
            });
        }
        for (at, plugin) in plugins.iter().enumerate() {
            for recording in self.state.recordings_of(&plugin.settings.name) {
                watches.push(Watch {
                    at,
                    observer: Arc::new(RecordingWatch {
                        recording,
                        sanitizer: plugin.settings.sanitizer.clone(),
                    }),
                    version: plugin.settings.version,
                    tap: true,
                });
            }
        }
        let route_name = route.name.clone();
        let forwarding = Forwarding::new(session.req_header(), ctx.new_id.as_ref(), ip, self.tls);
        let id = ctx.request_id(session).unwrap_or("").to_string();
        let info = request_info(session, &route_name, &id, self.tls, ctx.start);
        let mut ex = match Exchange::start_watched(&plugins, watches, info) {
            Ok(e) => e,
            Err(reply) => return Ok(Some(reply)),
        };
        ex.load_request(
            session.req_header(),
            if self.tls { "https" } else { "http" },
            &forwarding,
        );
        let no_body = session.is_body_empty();
        let head = while_client_waits(session, ex.request_headers(no_body)).await;
        // From here on, on_log, on_done and on_delete run when the request ends, whatever
        // happens.
        let ex = ctx.exchange.insert(ex);
        let reply = match head? {
            Err(reply) => Some(reply),
            Ok(Head::Forward) => None,
            Ok(Head::NeedBody) => {
                session.as_mut().enable_retry_buffering();
                let mut body = Vec::new();
                // Past PREREAD_MAX the exchange answers 413.
                while let Some(chunk) = session.read_request_body().await? {
                    body.extend_from_slice(&chunk);
                    if body.len() > PREREAD_MAX {
                        break;
                    }
                }
                while_client_waits(session, ex.whole_request_body(body))
                    .await?
                    .err()
            }
        };
        if reply.is_none() {
            ex.apply_request(&mut Req(session.req_header_mut()), &forwarding)
                .map_err(head_error)?;
        }
        Ok(reply)
    }
}

/// Runs a plugin phase that may wait for a paused plugin (an HTTP callout, a plugin that never
/// resumes) while watching the client: once the request body is fully read, a client that
/// closes the connection (or resets the HTTP/2 stream) ends the wait with its error, so the
/// request's plugin contexts end at once instead of at the plugin's `pause_timeout_ms`.
pub(super) async fn while_client_waits<T>(
    session: &mut Session,
    work: impl std::future::Future<Output = T>,
) -> Result<T> {
    if !session.is_body_done() {
        return Ok(work.await);
    }
    let downstream = &mut session.downstream_session;
    tokio::select! {
        // The work first: when no plugin pauses, it is done before the client is probed.
        biased;
        out = work => Ok(out),
        r = downstream.read_body_or_idle(true) => Err(match r {
            Err(e) => e,
            Ok(_) => Error::explain(
                ErrorType::ConnectionClosed,
                "the client sent data while its request was held by a plugin",
            ),
        }
        .into_down()),
    }
}
