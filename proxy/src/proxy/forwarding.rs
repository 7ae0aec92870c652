//! Facts about the request for the upstream and for plugins: the forwarding headers, the
//! client's address, the request's properties.

use std::net::IpAddr;
use std::time::Instant;

use pingora::http::RequestHeader;
use pingora::proxy::Session;
use pingora::Result;

use crate::forwarding::{Forwarding, RequestId};
use crate::heads::{head_error, Req};
use crate::wasm::stream::RequestInfo;

/// Sets `x-request-id` (if Sluice made the id), appends the client address to
/// `x-forwarded-for` and sets `x-forwarded-proto`.
pub(super) fn add_forwarding(
    req: &mut RequestHeader,
    new_id: Option<&RequestId>,
    client: Option<IpAddr>,
    tls: bool,
) -> Result<()> {
    Forwarding::new(req, new_id, client, tls)
        .apply(&mut Req(req))
        .map_err(head_error)
}

/// Facts about the request that plugins read as properties.
pub(super) fn request_info(
    session: &Session,
    route: &str,
    id: &str,
    tls: bool,
    start: Instant,
) -> RequestInfo {
    let req = session.req_header();
    let source = session.client_addr().and_then(|a| a.as_inet()).copied();
    let destination = session.server_addr().and_then(|a| a.as_inet()).copied();
    let mut conn = crate::hash::FNV1A64_START;
    for a in [source, destination].into_iter().flatten() {
        let ip = match a.ip() {
            IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
            IpAddr::V6(v6) => v6.octets(),
        };
        conn = crate::hash::fnv1a64_update(conn, &ip);
        conn = crate::hash::fnv1a64_update(conn, &a.port().to_be_bytes());
    }
    // The TLS version is in the connection's digest (HTTP/1 and HTTP/2). The SNI is on the TLS
    // stream, which pingora exposes for HTTP/1 sessions only; over HTTP/2 it is known if the
    // listener's handshake callback kept it (as a `String`) in the digest's extension.
    let downstream = session.as_downstream();
    let ssl = downstream.digest().and_then(|d| d.ssl_digest.as_deref());
    let requested_server_name = downstream
        .stream()
        .and_then(|s| s.get_ssl())
        .and_then(|t| t.server_name())
        .or_else(|| ssl.and_then(|d| d.extension.get::<String>().map(String::as_str)))
        .filter(|n| !n.is_empty())
        .map(str::to_string);
    RequestInfo {
        protocol: match req.version {
            http::Version::HTTP_2 => "HTTP/2",
            http::Version::HTTP_10 => "HTTP/1.0",
            _ => "HTTP/1.1",
        },
        time_ns: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i64),
        id: id.to_string(),
        source,
        destination,
        connection_id: conn,
        tls,
        route_name: route.to_string(),
        upstream_address: None,
        response_code: None,
        start: Some(start),
        requested_server_name,
        tls_version: ssl.and_then(|d| RequestInfo::tls_version_name(&d.version)),
        ..RequestInfo::default()
    }
}

pub(super) fn client_ip(session: &Session) -> Option<IpAddr> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
}
