//! Upstream pools: endpoints, their health, and endpoint selection.

mod balancer;
pub mod callout;
pub mod health;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use pingora::protocols::ALPN;
use pingora::upstreams::peer::HttpPeer;

use crate::config::{Balancing, HealthCheck, HostHeader, Protocol, Upstream};
use crate::metrics::EndpointMetrics;

/// One endpoint of a pool.
pub struct Endpoint {
    /// As written in the config (`host:port`), used in labels and logs.
    pub label: String,
    /// Resolved address.
    pub addr: SocketAddr,
    healthy: AtomicBool,
    /// Its metric handles.
    pub metrics: EndpointMetrics,
    peer: HttpPeer,
}

impl Endpoint {
    /// Whether the endpoint passes its health checks (always true without checks).
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Records a health-check verdict; returns true if it changed.
    pub fn set_healthy(&self, healthy: bool) -> bool {
        self.metrics.healthy.set(healthy as i64);
        self.healthy.swap(healthy, Ordering::Relaxed) != healthy
    }

    /// A peer for this endpoint with the pool's TLS and timeout settings.
    pub fn peer(&self) -> Box<HttpPeer> {
        Box::new(self.peer.clone())
    }
}

/// Concurrent streams one HTTP/2 connection to an endpoint carries before another is opened
/// (the server's own limit applies when lower).
const H2_STREAMS_PER_CONNECTION: usize = 100;

/// Pings on idle HTTP/2 connections to endpoints.
const H2_PING_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);

/// A connection-pool key for a set of trusted certificates (never 0, the key of the system's).
fn trust_key(ca: &[Vec<u8>]) -> u64 {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for der in ca {
        h.update((der.len() as u64).to_be_bytes());
        h.update(der);
    }
    let d = h.finalize();
    u64::from_be_bytes(d[..8].try_into().expect("8 bytes")).max(1)
}

/// A named pool of endpoints.
pub struct Pool {
    /// Its name.
    pub name: String,
    /// Its endpoints, in config order.
    pub endpoints: Vec<Endpoint>,
    balancing: Balancing,
    next: AtomicUsize,
    /// Active health checking, if configured.
    pub health_check: Option<HealthCheck>,
    /// Host header policy.
    pub host_header: HostHeader,
    /// HTTP version(s) spoken to the endpoints.
    pub protocol: Protocol,
}

/// A set of endpoint indexes already tried by one request.
#[derive(Debug, Default, Clone, Copy)]
pub struct Tried(u128);

impl Tried {
    /// Marks `idx` as tried (indexes beyond 127 are not tracked).
    pub fn insert(&mut self, idx: usize) {
        if idx < 128 {
            self.0 |= 1 << idx;
        }
    }
    /// Whether `idx` was tried.
    pub fn contains(&self, idx: usize) -> bool {
        idx < 128 && self.0 & (1 << idx) != 0
    }
    /// How many were tried.
    pub fn len(&self) -> usize {
        self.0.count_ones() as usize
    }
    /// Whether none was.
    pub fn is_empty(&self) -> bool {
        self.0 == 0
    }
}

impl Pool {
    /// Builds a pool from its validated config.
    pub fn new(u: &Upstream) -> Self {
        let endpoints = u
            .endpoints
            .iter()
            .map(|(label, addr)| {
                let (tls, sni) = match &u.tls {
                    Some(t) => (
                        true,
                        t.sni.clone().unwrap_or_else(|| {
                            label
                                .rsplit_once(':')
                                .map_or(label.as_str(), |(h, _)| h)
                                .to_string()
                        }),
                    ),
                    None => (false, String::new()),
                };
                let mut peer = HttpPeer::new(*addr, tls, sni);
                peer.options.connection_timeout = Some(u.connect_timeout);
                peer.options.read_timeout = Some(u.read_timeout);
                // pingora chooses HTTP/2 from the ALPN options, TLS or not: `H2` alone on a
                // plain peer is prior knowledge (h2c), `H2H1` over TLS lets the endpoint pick.
                peer.options.alpn = match u.protocol {
                    Protocol::Http1 => ALPN::H1,
                    Protocol::H2 => ALPN::H2,
                    Protocol::Auto => ALPN::H2H1,
                };
                if u.protocol != Protocol::Http1 {
                    // Requests (and callouts) to an endpoint share its HTTP/2 connections.
                    peer.options.max_h2_streams = H2_STREAMS_PER_CONNECTION;
                    // A dead connection is found by a ping rather than by the next request.
                    peer.options.h2_ping_interval = Some(H2_PING_INTERVAL);
                }
                if let Some(t) = &u.tls {
                    peer.options.verify_cert = t.verify;
                    peer.options.verify_hostname = t.verify;
                    if let Some(ca) = &t.ca {
                        // Checked to parse when the config was validated.
                        let certs: Vec<_> = ca
                            .iter()
                            .map(|der| {
                                pingora::utils::tls::WrappedX509::new(
                                    der.clone(),
                                    pingora::utils::tls::parse_x509,
                                )
                            })
                            .collect();
                        peer.options.ca = Some(std::sync::Arc::from(certs.into_boxed_slice()));
                        // pingora's connection pools key connections by address, SNI and
                        // verification flags, not by the trusted certificates: without a key of
                        // their own, a connection verified against this CA would be reused for
                        // a pool trusting other certificates (or the reverse).
                        peer.group_key = trust_key(ca);
                    }
                }
                let metrics = EndpointMetrics::new(&u.name, label);
                metrics.healthy.set(1);
                Endpoint {
                    label: label.clone(),
                    addr: *addr,
                    healthy: AtomicBool::new(true),
                    metrics,
                    peer,
                }
            })
            .collect();
        Pool {
            name: u.name.clone(),
            endpoints,
            balancing: u.balancing.clone(),
            next: AtomicUsize::new(0),
            health_check: u.health_check.clone(),
            host_header: u.host_header.clone(),
            protocol: u.protocol,
        }
    }

    /// The balancing policy.
    pub fn balancing(&self) -> &Balancing {
        &self.balancing
    }

    /// Picks an endpoint not in `tried`, preferring healthy ones. When every untried endpoint is
    /// unhealthy it still picks one of them: better a likely failure than a certain one.
    /// `key` is the hash key for `hash` balancing (`None` falls back to round robin). `last` is
    /// the endpoint of the previous attempt of the same request: a retry moves on from it
    /// without taking a turn from the round-robin rotation of other requests.
    pub fn select(&self, key: Option<&[u8]>, tried: Tried, last: Option<usize>) -> Option<usize> {
        let n = self.endpoints.len();
        if tried.len() >= n {
            return None;
        }
        let start = match (&self.balancing, last) {
            (Balancing::Hash(_), _) if key.is_some() => 0,
            (_, Some(last)) => last + 1,
            (Balancing::Random, None) => fastrand::usize(..n),
            (_, None) => self.next.fetch_add(1, Ordering::Relaxed),
        } % n;
        for healthy_only in [true, false] {
            let ok =
                |i: usize| !tried.contains(i) && (!healthy_only || self.endpoints[i].is_healthy());
            let pick = match key {
                Some(key) if matches!(self.balancing, Balancing::Hash(_)) => {
                    balancer::rendezvous(key, n, ok)
                }
                _ => balancer::scan_from(start, n, ok),
            };
            if pick.is_some() {
                return pick;
            }
        }
        None
    }
}
