//! What is sent back when the request does not get the upstream's answer: a plugin's reply,
//! a local response, a failure to proxy (502/504 with its reason).

use std::sync::OnceLock;

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::{Error, ErrorSource, ErrorType, Result};

use crate::chain::Reply;
use crate::exchange::{reply_parts, Answer};
use crate::heads::Resp;
use crate::metrics::{RouteMetrics, UNMATCHED_ROUTE};

use super::*;

impl SluiceProxy {
    /// Sends what `reply` becomes (see [`Exchange::answer`]): a response, or a stream reset.
    /// `keepalive`: the connection may serve another request after it (a reply before the
    /// request went upstream). Returns the status sent (0: reset).
    pub(super) async fn answer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        reply: Reply,
        keepalive: bool,
    ) -> u16 {
        let id = ctx.request_id(session).map(str::to_string);
        let answer = match ctx.exchange.as_mut() {
            Some(ex) => {
                ex.answer::<Resp<ResponseHeader>>(reply, id.as_deref())
                    .await
            }
            None => match reply_parts::<Resp<ResponseHeader>>(&reply, id.as_deref()) {
                Ok((resp, body)) => Answer::Send(Box::new(resp), body),
                Err(_) => Answer::Reset,
            },
        };
        match answer {
            Answer::Send(resp, body) => {
                let resp = Box::new(resp.0);
                let status = resp.status.as_u16();
                let sent = if keepalive {
                    match session.write_response_header(resp, false).await {
                        Ok(()) => session.write_response_body(Some(body), true).await,
                        Err(e) => Err(e),
                    }
                } else {
                    session.write_error_response(*resp, body).await
                };
                if let Err(e) = sent {
                    tracing::debug!(error = %e, "could not send the plugin's reply");
                }
                status
            }
            Answer::Reset => {
                session.set_keepalive(None);
                session.downstream_session.shutdown().await;
                0
            }
        }
    }
}

/// The error that makes pingora call `fail_to_proxy`, which sends `ctx.reply`.
pub(super) fn reply_error(ctx: &mut RequestCtx, reply: Reply) -> Box<Error> {
    let code = reply.status;
    ctx.reply = Some(reply);
    Error::explain(ErrorType::HTTPStatus(code), "plugin reply")
}

/// Writes a small local text response.
pub(super) async fn respond(
    session: &mut Session,
    ctx: &RequestCtx,
    code: u16,
    body: String,
) -> Result<()> {
    let resp = local_response_header(ctx.request_id(session), code, body.len())?;
    session.write_response_header(Box::new(resp), false).await?;
    session
        .write_response_body(Some(Bytes::from(body)), true)
        .await
}

/// The header of a response Sluice makes itself: text, with the request's id.
pub(super) fn local_response_header(
    id: Option<&str>,
    code: u16,
    len: usize,
) -> Result<ResponseHeader> {
    let mut resp = ResponseHeader::build(code, Some(4))?;
    resp.insert_header(http::header::CONTENT_TYPE, TEXT_PLAIN)?;
    resp.insert_header(http::header::CONTENT_LENGTH, len)?;
    if let Some(id) = id {
        resp.insert_header(X_REQUEST_ID, id.to_string())?;
    }
    Ok(resp)
}

pub(super) fn unmatched_metrics() -> &'static RouteMetrics {
    static M: OnceLock<RouteMetrics> = OnceLock::new();
    M.get_or_init(|| RouteMetrics::new(UNMATCHED_ROUTE))
}

pub(super) fn is_connect_error(t: &ErrorType) -> bool {
    matches!(
        t,
        ErrorType::ConnectTimedout
            | ErrorType::ConnectRefused
            | ErrorType::ConnectNoRoute
            | ErrorType::ConnectError
            | ErrorType::BindError
            | ErrorType::ConnectProxyFailure
            | ErrorType::TLSHandshakeFailure
            | ErrorType::TLSHandshakeTimedout
            | ErrorType::InvalidCert
            | ErrorType::HandshakeError
    )
}

pub(super) fn is_timeout(t: &ErrorType) -> bool {
    matches!(
        t,
        ErrorType::ConnectTimedout
            | ErrorType::ReadTimedout
            | ErrorType::WriteTimedout
            | ErrorType::TLSHandshakeTimedout
    )
}

/// Status code and body for a request that failed; 0 means the client is gone.
pub(super) fn failure_response(e: &Error, upstream: &str) -> (u16, String) {
    let etype = e.etype();
    if let ErrorType::HTTPStatus(code) = etype {
        let reason = http::StatusCode::from_u16(*code)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("Error");
        return (*code, format!("{code} {reason}\n"));
    }
    match e.esource() {
        ErrorSource::Upstream if is_timeout(etype) => (
            504,
            format!("504 Gateway Timeout: upstream \"{upstream}\" did not answer in time\n"),
        ),
        ErrorSource::Upstream if is_connect_error(etype) => (
            502,
            format!(
                "502 Bad Gateway: upstream \"{upstream}\" is unavailable (no endpoint accepted the connection)\n"
            ),
        ),
        ErrorSource::Upstream => (
            502,
            format!(
                "502 Bad Gateway: upstream \"{upstream}\" closed the connection or sent an invalid response\n"
            ),
        ),
        ErrorSource::Downstream => match etype {
            ErrorType::ReadError | ErrorType::WriteError | ErrorType::ConnectionClosed => {
                (0, String::new())
            }
            ErrorType::ReadTimedout => (408, "408 Request Timeout\n".into()),
            _ => (400, "400 Bad Request\n".into()),
        },
        ErrorSource::Internal | ErrorSource::Unset => {
            (500, "500 Internal Server Error\n".into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_codes() {
        let timeout = Error::new(ErrorType::ReadTimedout).into_up();
        assert_eq!(failure_response(&timeout, "api").0, 504);
        let refused = Error::new(ErrorType::ConnectRefused).into_up();
        let (code, body) = failure_response(&refused, "api");
        assert_eq!(code, 502);
        assert!(body.contains("\"api\" is unavailable"), "{body}");
        let closed = Error::new(ErrorType::ConnectionClosed).into_down();
        assert_eq!(failure_response(&closed, "api").0, 0);
        let status = Error::new(ErrorType::HTTPStatus(413));
        assert_eq!(failure_response(&status, "api").0, 413);
    }
}
