//! Where the store's Redis is and how a connection to it is opened: one server (`url`), the
//! master the sentinels name (`sentinel`), or a Redis Cluster (`cluster`); over TLS for
//! `rediss://` URLs. Every wait here is bounded by a deadline the caller gives.
//!
//! Sentinel discovery is done here on plain connections (`SENTINEL GET-MASTER-ADDR-BY-NAME`,
//! then `ROLE` on the address named) rather than with the client crate's Sentinel type, whose
//! synchronous calls have no timeouts: a call must never wait on a silent sentinel.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use redis::cluster::{ClusterClient, ClusterConnection};
use redis::{
    Client, ConnectionAddr, ConnectionInfo, ConnectionLike, ErrorKind, IntoConnectionInfo,
    RedisConnectionInfo, RedisError, ServerErrorKind, TlsCertificates,
};

use crate::config::shared_data::{Node, RedisSettings, Servers};

/// An open connection: to one server, or to the nodes of a cluster.
pub enum Conn {
    /// One server (the `url`, or the sentinels' master).
    Plain(redis::Connection),
    /// A cluster: one connection per node, commands routed by key.
    Cluster(Box<ClusterConnection>),
}

impl Conn {
    /// The connection to run commands on.
    pub fn as_dyn(&mut self) -> &mut dyn ConnectionLike {
        match self {
            Conn::Plain(c) => c,
            Conn::Cluster(c) => c.as_mut(),
        }
    }

    /// Reads and writes wait at most `left` (at least 1 ms: zero means "forever" to sockets).
    pub fn set_timeouts(&self, left: Duration) -> Result<(), RedisError> {
        let left = Some(left.max(Duration::from_millis(1)));
        match self {
            Conn::Plain(c) => {
                c.set_read_timeout(left)?;
                c.set_write_timeout(left)
            }
            Conn::Cluster(c) => {
                c.set_read_timeout(left)?;
                c.set_write_timeout(left)
            }
        }
    }
}

/// Why a connection could not be made or used, sorted by what the store does about it.
#[derive(Debug)]
pub enum Failure {
    /// Redis cannot be reached or cannot serve (refused, timed out, the master is now a
    /// replica, the cluster is down): the store is marked down.
    Down(String),
    /// The connection was found closed by the other end (a pooled connection after Redis
    /// restarted or dropped it idle): the call may be made again on a new one.
    Closed(String),
    /// A cluster's slots moved: this call fails and the pooled connections, whose slot maps
    /// are stale, are dropped.
    Moved(String),
    /// The server refuses writes (`READONLY`): with Sentinel, the master was demoted by a
    /// failover (the store is marked down, the sentinels asked again); otherwise, refused.
    ReadOnly(String),
    /// Redis refused the command.
    Refused(String),
}

impl From<RedisError> for Failure {
    fn from(e: RedisError) -> Self {
        if e.is_timeout() {
            return Failure::Down("no answer in time".into());
        }
        match e.kind() {
            ErrorKind::Server(ServerErrorKind::ReadOnly) => Failure::ReadOnly(e.to_string()),
            ErrorKind::Server(
                ServerErrorKind::MasterDown
                | ServerErrorKind::ClusterDown
                | ServerErrorKind::TryAgain
                | ServerErrorKind::BusyLoading,
            ) => Failure::Down(e.to_string()),
            ErrorKind::Server(ServerErrorKind::Moved | ServerErrorKind::Ask) => {
                Failure::Moved(e.to_string())
            }
            ErrorKind::Server(_)
            | ErrorKind::AuthenticationFailed
            | ErrorKind::UnexpectedReturnType
            | ErrorKind::Parse
            | ErrorKind::Extension
            | ErrorKind::InvalidClientConfig => Failure::Refused(e.to_string()),
            _ if e.is_connection_refusal() => Failure::Down(e.to_string()),
            _ if e.is_connection_dropped() => Failure::Closed(e.to_string()),
            _ => Failure::Down(e.to_string()),
        }
    }
}

/// What is left of `deadline`, or a timeout.
fn left(deadline: Instant) -> Result<Duration, Failure> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(Failure::Down("no answer in time".into()));
    }
    Ok(left)
}

/// The servers of one store and how to connect to them.
pub struct Topology {
    kind: Kind,
    /// Authentication and database on the data nodes.
    data: RedisConnectionInfo,
    /// `tls.ca_file` (PEM), if given.
    ca: Option<Vec<u8>>,
}

enum Kind {
    /// One server. A plain (non-TLS) one is connected to by the addresses its name last
    /// resolved to: name resolution has no timeout of its own, so calls only resolve while
    /// nothing is known yet, and the probe resolves again each time.
    Single {
        node: Node,
        client: Client,
        addrs: Mutex<Vec<SocketAddr>>,
    },
    /// The master the sentinels name, as last found.
    Sentinel {
        master: String,
        sentinels: Vec<(String, Client)>,
        tls: bool,
        current: Mutex<Option<(String, Client)>>,
    },
    /// A cluster.
    Cluster(ClusterClient),
}

impl Topology {
    /// The topology of `s`; an error when the TLS settings cannot be used.
    pub fn new(s: &RedisSettings) -> Result<Topology, String> {
        let ca = s.ca_pem.clone();
        let kind = match &s.servers {
            Servers::Single(node) => Kind::Single {
                client: make_client(&ca, node, node.host.clone(), data_settings(s))?,
                node: node.clone(),
                addrs: Mutex::new(Vec::new()),
            },
            Servers::Sentinel { master, sentinels } => Kind::Sentinel {
                master: master.clone(),
                sentinels: sentinels
                    .iter()
                    .map(|n| {
                        let c = make_client(&ca, n, n.host.clone(), node_settings(n))?;
                        Ok((format!("{}:{}", n.host, n.port), c))
                    })
                    .collect::<Result<_, String>>()?,
                tls: s.servers.tls(),
                current: Mutex::new(None),
            },
            Servers::Cluster(nodes) => {
                let infos = nodes
                    .iter()
                    .map(|n| {
                        Ok(addr(n, n.host.clone())
                            .into_connection_info()?
                            .set_redis_settings(data_settings(s)))
                    })
                    .collect::<Result<Vec<ConnectionInfo>, RedisError>>()
                    .map_err(|e| e.to_string())?;
                let mut b = ClusterClient::builder(infos)
                    .connection_timeout(s.timeout)
                    .response_timeout(s.timeout)
                    // No retry inside the crate: a command that timed out must not be sent
                    // again (a compare-and-swap could be applied twice); redirections and
                    // outages are handled by the store (see `Failure`).
                    .retries(0);
                if let Some(u) = &s.username {
                    b = b.username(u);
                }
                if let Some(p) = &s.password {
                    b = b.password(p);
                }
                if let Some(ca) = &s.ca_pem {
                    b = b.certs(certificates(ca));
                }
                Kind::Cluster(b.build().map_err(|e| e.to_string())?)
            }
        };
        Ok(Topology {
            kind,
            data: data_settings(s),
            ca,
        })
    }

    /// A new connection, ready for commands, within `deadline`. `resolve`: look the host's
    /// name up again (the probe does, calls do not).
    pub fn connect(&self, deadline: Instant, resolve: bool) -> Result<Conn, Failure> {
        match &self.kind {
            Kind::Single {
                node,
                client,
                addrs,
            } => {
                if node.tls {
                    // The name is needed for the certificate check: the client resolves it.
                    let c = client.get_connection_with_timeout(left(deadline)?)?;
                    return Ok(Conn::Plain(c));
                }
                let cached = addrs.lock().expect("not poisoned").clone();
                let found = if resolve || cached.is_empty() {
                    let fresh: Vec<SocketAddr> = (node.host.as_str(), node.port)
                        .to_socket_addrs()
                        .map_err(|e| Failure::Down(format!("cannot resolve {}: {e}", node.host)))?
                        .collect();
                    if !fresh.is_empty() {
                        *addrs.lock().expect("not poisoned") = fresh.clone();
                    }
                    fresh
                } else {
                    cached
                };
                let mut last = Failure::Down(format!("{} resolves to no address", node.host));
                for a in found {
                    let at = Node {
                        port: a.port(),
                        ..node.clone()
                    };
                    let c = make_client(&None, &at, a.ip().to_string(), self.data.clone())
                        .map_err(Failure::Refused)?;
                    match c.get_connection_with_timeout(left(deadline)?) {
                        Ok(c) => return Ok(Conn::Plain(c)),
                        Err(e) => last = Failure::from(e),
                    }
                }
                Err(last)
            }
            Kind::Sentinel { current, .. } => {
                let known = current.lock().expect("not poisoned").clone();
                match known {
                    Some((_, client)) => Ok(Conn::Plain(
                        client.get_connection_with_timeout(left(deadline)?)?,
                    )),
                    // Not found yet (or lost after a failover): ask the sentinels now.
                    None => self.discover(deadline),
                }
            }
            Kind::Cluster(client) => {
                left(deadline)?;
                Ok(Conn::Cluster(Box::new(client.get_connection()?)))
            }
        }
    }

    /// A connection to a server that can take writes now, for the probe: the master the
    /// sentinels name now (remembered for the calls), a cluster whose every master answers
    /// and whose state is `ok`, or the server if it answers `PING`.
    pub fn probe(&self, deadline: Instant) -> Result<Conn, Failure> {
        let mut c = match &self.kind {
            Kind::Sentinel { .. } => return self.discover(deadline),
            _ => self.connect(deadline, true)?,
        };
        c.set_timeouts(left(deadline)?)?;
        match &mut c {
            Conn::Plain(p) => redis::cmd("PING").exec(p)?,
            Conn::Cluster(cc) => {
                // PING goes to every master.
                redis::cmd("PING").exec(cc.as_mut())?;
                let info: String = redis::cmd("CLUSTER").arg("INFO").query(cc.as_mut())?;
                if !info.lines().any(|l| l.trim() == "cluster_state:ok") {
                    return Err(Failure::Down(
                        "the cluster's state is not ok (a shard has no master)".into(),
                    ));
                }
            }
        }
        Ok(c)
    }

    /// Whether a `READONLY` refusal means the master changed (Sentinel).
    pub fn follows_failovers(&self) -> bool {
        matches!(self.kind, Kind::Sentinel { .. })
    }

    /// Forgets the sentinels' master (after it failed: the next connection asks them again).
    pub fn forget_master(&self) {
        if let Kind::Sentinel { current, .. } = &self.kind {
            *current.lock().expect("not poisoned") = None;
        }
    }

    /// The master the sentinels name, checked to be one (`ROLE`), remembered, and a
    /// connection to it.
    fn discover(&self, deadline: Instant) -> Result<Conn, Failure> {
        let Kind::Sentinel {
            master,
            sentinels,
            tls,
            current,
        } = &self.kind
        else {
            unreachable!("only with sentinels");
        };
        let mut last = Failure::Down("no sentinel answered".into());
        for (name, sentinel) in sentinels {
            let asked = (|| -> Result<Option<(String, u16)>, Failure> {
                let mut c = sentinel.get_connection_with_timeout(left(deadline)?)?;
                c.set_read_timeout(Some(left(deadline)?))?;
                c.set_write_timeout(Some(left(deadline)?))?;
                Ok(redis::cmd("SENTINEL")
                    .arg("GET-MASTER-ADDR-BY-NAME")
                    .arg(master)
                    .query(&mut c)?)
            })();
            let (host, port) = match asked {
                Ok(Some(addr)) => addr,
                Ok(None) => {
                    last =
                        Failure::Down(format!("sentinel {name} knows no master named {master:?}"));
                    continue;
                }
                Err(e) => {
                    last = Failure::Down(format!("sentinel {name}: {}", e.message()));
                    continue;
                }
            };
            let at = format!("{host}:{port}");
            let found = (|| -> Result<(Client, redis::Connection), Failure> {
                let node = Node {
                    host: host.clone(),
                    port,
                    tls: *tls,
                    username: None,
                    password: None,
                };
                let client = make_client(&self.ca, &node, host.clone(), self.data.clone())
                    .map_err(Failure::Refused)?;
                let mut c = client.get_connection_with_timeout(left(deadline)?)?;
                c.set_read_timeout(Some(left(deadline)?))?;
                c.set_write_timeout(Some(left(deadline)?))?;
                check_master(&mut c, &format!("{at} (named by sentinel {name})"))?;
                Ok((client, c))
            })();
            match found {
                Ok((client, c)) => {
                    let mut cur = current.lock().expect("not poisoned");
                    if cur.as_ref().is_none_or(|(was, _)| *was != at) {
                        tracing::info!(master = %at, sentinel = %name, "shared data: the sentinels name this Redis master");
                    }
                    *cur = Some((at, client));
                    return Ok(Conn::Plain(c));
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }
}

impl Failure {
    /// What went wrong, for logs and errors.
    pub fn message(&self) -> &str {
        match self {
            Failure::Down(m)
            | Failure::Closed(m)
            | Failure::Moved(m)
            | Failure::ReadOnly(m)
            | Failure::Refused(m) => m,
        }
    }
}

/// Fails unless the server on `c` is a master (after a failover, the old master is a
/// replica that refuses writes).
fn check_master(c: &mut redis::Connection, what: &str) -> Result<(), Failure> {
    let role: redis::Value = redis::cmd("ROLE").query(c)?;
    let first = match &role {
        redis::Value::Array(items) => items.first(),
        _ => None,
    };
    match first {
        Some(redis::Value::BulkString(b)) if b == b"master" => Ok(()),
        _ => Err(Failure::Down(format!("{what} is not a master"))),
    }
}

/// Authentication and database on the data nodes (the server, the master or the cluster's
/// nodes); no client name sent (one command fewer per connection).
fn data_settings(s: &RedisSettings) -> RedisConnectionInfo {
    let mut r = RedisConnectionInfo::default()
        .set_db(i64::from(s.db))
        .set_skip_set_lib_name();
    if let Some(u) = &s.username {
        r = r.set_username(u);
    }
    if let Some(p) = &s.password {
        r = r.set_password(p);
    }
    r
}

/// A sentinel's own authentication, from its URL.
fn node_settings(n: &Node) -> RedisConnectionInfo {
    let mut r = RedisConnectionInfo::default().set_skip_set_lib_name();
    if let Some(u) = &n.username {
        r = r.set_username(u);
    }
    if let Some(p) = &n.password {
        r = r.set_password(p);
    }
    r
}

/// The address of `n` at `host` (a name or one of its addresses), with TLS when it has it.
fn addr(n: &Node, host: String) -> ConnectionAddr {
    if n.tls {
        ConnectionAddr::TcpTls {
            host,
            port: n.port,
            insecure: false,
            tls_params: None,
        }
    } else {
        ConnectionAddr::Tcp(host, n.port)
    }
}

/// The CA certificates of `tls.ca_file`, for the client crate.
fn certificates(ca_pem: &[u8]) -> TlsCertificates {
    TlsCertificates {
        client_tls: None,
        root_cert: Some(ca_pem.to_vec()),
    }
}

/// A client for `n` at `host`, trusting `ca` (PEM) for TLS when given.
fn make_client(
    ca: &Option<Vec<u8>>,
    n: &Node,
    host: String,
    settings: RedisConnectionInfo,
) -> Result<Client, String> {
    let info = addr(n, host)
        .into_connection_info()
        .map_err(|e| e.to_string())?
        .set_redis_settings(settings);
    match ca {
        Some(pem) if n.tls => Client::build_with_tls(info, certificates(pem)),
        _ => Client::open(info),
    }
    .map_err(|e| format!("{}:{}: {e}", n.host, n.port))
}
