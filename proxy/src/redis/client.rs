//! Shared data in Redis: keys with a compare-and-swap version, read and written with one round
//! trip each, atomically on the server.
//!
//! Each key is a Redis hash `{key_prefix}{vm_id}:{key}` with fields `v` (the value) and `c`
//! (its version, 1 on creation, +1 at each write, wrapping from 2^32-1 to 1 — what the
//! in-process store does). A read is `HMGET key v c`; a write is a Lua script that compares
//! the version and writes in one step, so two replicas can never both win a compare-and-swap.
//!
//! Calls block the calling thread (a guest call is synchronous) for at most the configured
//! `timeout_ms`, connecting included. When a call fails for want of Redis (refused, timed out,
//! closed), the store is marked down: the following calls fail at once instead of each waiting
//! out the timeout, and a background thread pings Redis every 250 ms until it answers, then
//! marks it up again. Both changes are logged once and shown by
//! `sluice_shared_data_redis_up`.

use std::io::{self, BufReader, BufWriter};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use prometheus::{Histogram, IntCounter};
use sluice_abi::Status;

use super::resp::{read_reply, write_command, Reply};
use crate::config::shared_data::RedisSettings;

/// Compares the version and writes: `KEYS[1]` the key, `ARGV[1]` the value, `ARGV[2]` the
/// expected version (`0`: any), `ARGV[3]` the expiry in ms (`0`: none). Returns the new
/// version, or 0 when the versions differ. A missing key is created whatever `ARGV[2]` says.
const SET_SCRIPT: &str = "\
local c = redis.call('HGET', KEYS[1], 'c')
if c and ARGV[2] ~= '0' and ARGV[2] ~= c then return 0 end
local n = 1
if c then n = (tonumber(c) % 4294967295) + 1 end
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'c', n)
if ARGV[3] ~= '0' then redis.call('PEXPIRE', KEYS[1], ARGV[3]) end
return n
";

/// How often a down Redis is tried again.
const PROBE_EVERY: Duration = Duration::from_millis(250);

/// The SHA1 of [`SET_SCRIPT`], the name `EVALSHA` calls it by.
fn script_sha() -> &'static str {
    static SHA: OnceLock<String> = OnceLock::new();
    SHA.get_or_init(|| {
        let d = ring::digest::digest(
            &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
            SET_SCRIPT.as_bytes(),
        );
        crate::wasm::engine::hex(d.as_ref())
    })
}

pub use crate::wasm::shared::Unavailable;

struct Conn {
    r: BufReader<TcpStream>,
    w: BufWriter<TcpStream>,
}

/// The two operations, for metric labels.
#[derive(Clone, Copy)]
enum Op {
    Get,
    Set,
}

impl Op {
    fn as_str(self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::Set => "set",
        }
    }
}

/// Metric handles of one operation, resolved once.
struct OpMetrics {
    duration: Histogram,
    errors: IntCounter,
}

impl OpMetrics {
    fn new(op: Op) -> OpMetrics {
        let m = crate::metrics::metrics();
        OpMetrics {
            duration: m.shared_data_duration.with_label_values(&[op.as_str()]),
            errors: m.shared_data_errors.with_label_values(&[op.as_str()]),
        }
    }
}

/// A Redis server holding shared data, with its connections and state.
pub struct RedisStore {
    settings: RedisSettings,
    idle: Mutex<Vec<Conn>>,
    up: AtomicBool,
    probing: AtomicBool,
    /// The host's addresses as last resolved. Name resolution has no timeout of its own, so
    /// calls only resolve while nothing is known yet; the probe resolves again each time.
    addrs: Mutex<Vec<SocketAddr>>,
    /// Indexed by [`Op`].
    metrics: [OpMetrics; 2],
}

/// Every store of the process (a config reload reuses the store of unchanged settings).
static STORES: OnceLock<Mutex<Vec<Arc<RedisStore>>>> = OnceLock::new();

/// The store for `settings`, one per distinct Redis settings in the process.
pub fn store(settings: &RedisSettings) -> Arc<RedisStore> {
    let mut all = STORES
        .get_or_init(Default::default)
        .lock()
        .expect("not poisoned");
    if let Some(s) = all.iter().find(|s| &s.settings == settings) {
        return s.clone();
    }
    let s = Arc::new(RedisStore {
        settings: settings.clone(),
        idle: Mutex::new(Vec::new()),
        up: AtomicBool::new(true),
        probing: AtomicBool::new(false),
        addrs: Mutex::new(Vec::new()),
        metrics: [OpMetrics::new(Op::Get), OpMetrics::new(Op::Set)],
    });
    let m = crate::metrics::metrics();
    m.shared_data_redis_up.set(1);
    if all.is_empty() {
        // Shown from the first Redis store on (absent with the in-process backend).
        let _ = m.register(Box::new(m.shared_data_redis_up.clone()));
    }
    all.push(s.clone());
    s
}

/// A failed call: Redis unreachable (connection-level), the connection found closed by the
/// other end (a pooled connection after Redis restarted or dropped it idle), or a refusal.
enum Failure {
    Down(String),
    Closed(String),
    Refused(String),
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Self {
        use io::ErrorKind::*;
        match e.kind() {
            WouldBlock | TimedOut => Failure::Down("no answer in time".to_string()),
            UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe => {
                Failure::Closed(e.to_string())
            }
            _ => Failure::Down(e.to_string()),
        }
    }
}

impl RedisStore {
    /// Its settings.
    pub fn settings(&self) -> &RedisSettings {
        &self.settings
    }

    /// The value of `key` and its version, or `None`.
    pub fn get(self: &Arc<Self>, key: &[u8]) -> Result<Option<(Vec<u8>, u32)>, Unavailable> {
        let reply = self.call(Op::Get, |c| {
            write_command(&mut c.w, &[b"HMGET", key, b"v", b"c"])?;
            Ok(read_reply(&mut c.r)?)
        })?;
        let unexpected = || self.refused(Op::Get, "an unexpected HMGET reply");
        let Reply::Array(Some(items)) = reply else {
            return Err(match reply {
                Reply::Error(e) => self.refused(Op::Get, &e),
                _ => unexpected(),
            });
        };
        let Ok::<[Reply; 2], _>([v, c]) = items.try_into() else {
            return Err(unexpected());
        };
        match (v, c) {
            (Reply::Bulk(Some(v)), Reply::Bulk(Some(c))) => {
                let cas = std::str::from_utf8(&c)
                    .ok()
                    .and_then(|c| c.parse::<u32>().ok())
                    .ok_or_else(|| self.refused(Op::Get, "a key's version is not a number"))?;
                Ok(Some((v, cas)))
            }
            (Reply::Bulk(None), _) | (_, Reply::Bulk(None)) => Ok(None),
            _ => Err(unexpected()),
        }
    }

    /// Sets `key` if `cas` is 0 or its current version (a missing key is always created).
    pub fn set(
        self: &Arc<Self>,
        key: &[u8],
        value: &[u8],
        cas: u32,
    ) -> Result<Status, Unavailable> {
        let cas = cas.to_string();
        let ttl = self.settings.ttl.map_or(0, |t| t.as_millis()).to_string();
        let reply = self.call(Op::Set, |c| {
            let mut args: [&[u8]; 7] = [
                b"EVALSHA",
                script_sha().as_bytes(),
                b"1",
                key,
                value,
                cas.as_bytes(),
                ttl.as_bytes(),
            ];
            write_command(&mut c.w, &args)?;
            match read_reply(&mut c.r)? {
                // Redis restarted or flushed its scripts: EVAL sends the script (and caches it).
                Reply::Error(e) if e.starts_with("NOSCRIPT") => {
                    args[0] = b"EVAL";
                    args[1] = SET_SCRIPT.as_bytes();
                    write_command(&mut c.w, &args)?;
                    Ok(read_reply(&mut c.r)?)
                }
                other => Ok(other),
            }
        })?;
        match reply {
            Reply::Int(0) => Ok(Status::CasMismatch),
            Reply::Int(_) => Ok(Status::Ok),
            Reply::Error(e) => Err(self.refused(Op::Set, &e)),
            _ => Err(self.refused(Op::Set, "an unexpected script reply")),
        }
    }

    /// A reply that is not the expected one: counted, and reported as Redis refusing `op`.
    fn refused(&self, op: Op, message: &str) -> Unavailable {
        self.metrics[op as usize].errors.inc();
        self.unavailable(format!("Redis refused the {}: {message}", op.as_str()))
    }

    fn unavailable(&self, message: String) -> Unavailable {
        Unavailable {
            store: "Redis",
            at: self.settings.display.clone(),
            message,
        }
    }

    /// Runs `f` on a pooled connection within the timeout, keeping the connection if all went
    /// well and marking Redis down if it could not be reached.
    fn call(
        self: &Arc<Self>,
        op: Op,
        f: impl Fn(&mut Conn) -> Result<Reply, Failure>,
    ) -> Result<Reply, Unavailable> {
        let m = &self.metrics[op as usize];
        if !self.up.load(Ordering::Acquire) {
            m.errors.inc();
            return Err(self.unavailable(
                "Redis is unreachable (retried every 250 ms in the background)".into(),
            ));
        }
        let started = Instant::now();
        // The calling worker thread waits (at most the timeout). Handing the worker's other
        // tasks to another thread first (`tokio::task::block_in_place`) was measured: it
        // halved throughput and doubled CPU per request at a Redis round trip of ~0.1 ms, so
        // the wait is kept short instead (`timeout_ms`, and no wait at all while Redis is down).
        let result = self.attempt(started + self.settings.timeout, f);
        m.duration.observe(started.elapsed().as_secs_f64());
        match result {
            Ok((c, reply)) => {
                let mut idle = self.idle.lock().expect("not poisoned");
                if idle.len() < self.settings.pool_size {
                    idle.push(c);
                }
                Ok(reply)
            }
            Err(Failure::Refused(message)) => {
                m.errors.inc();
                Err(self.unavailable(message))
            }
            Err(Failure::Down(message) | Failure::Closed(message)) => {
                m.errors.inc();
                self.mark_down(&message);
                Err(self.unavailable(message))
            }
        }
    }

    /// One call on a pooled connection (or a new one). A pooled connection found closed by
    /// Redis (it restarted, or dropped the connection while idle) is replaced by a new one and
    /// the call made again: the command cannot have run on a connection the server had
    /// already closed.
    fn attempt(
        &self,
        deadline: Instant,
        f: impl Fn(&mut Conn) -> Result<Reply, Failure>,
    ) -> Result<(Conn, Reply), Failure> {
        if let Some(mut c) = self.idle.lock().expect("not poisoned").pop() {
            match run(&mut c, deadline, &f) {
                Ok(reply) => return Ok((c, reply)),
                Err(Failure::Closed(_)) => {}
                Err(e) => return Err(e),
            }
        }
        let mut c = self.connect(deadline, false)?;
        let reply = run(&mut c, deadline, &f)?;
        Ok((c, reply))
    }

    fn connect(&self, deadline: Instant, resolve: bool) -> Result<Conn, Failure> {
        let s = &self.settings;
        let cached = self.addrs.lock().expect("not poisoned").clone();
        let addrs = if resolve || cached.is_empty() {
            let fresh: Vec<SocketAddr> = (s.host.as_str(), s.port)
                .to_socket_addrs()
                .map_err(|e| Failure::Down(format!("cannot resolve {}: {e}", s.host)))?
                .collect();
            if !fresh.is_empty() {
                *self.addrs.lock().expect("not poisoned") = fresh.clone();
            }
            fresh
        } else {
            cached
        };
        let mut last = Failure::Down(format!("{} resolves to no address", s.host));
        for addr in addrs {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Failure::Down("no answer in time".into()));
            }
            match TcpStream::connect_timeout(&addr, left) {
                Ok(tcp) => {
                    let _ = tcp.set_nodelay(true);
                    let mut c = Conn {
                        r: BufReader::new(tcp.try_clone().map_err(Failure::from)?),
                        w: BufWriter::new(tcp),
                    };
                    set_timeouts(&c, deadline.saturating_duration_since(Instant::now()))?;
                    self.hello(&mut c)?;
                    return Ok(c);
                }
                Err(e) => last = Failure::from(e),
            }
        }
        Err(last)
    }

    /// Authenticates and selects the database on a new connection.
    fn hello(&self, c: &mut Conn) -> Result<(), Failure> {
        let s = &self.settings;
        if let Some(pw) = &s.password {
            match &s.username {
                Some(u) => write_command(&mut c.w, &[b"AUTH", u.as_bytes(), pw.as_bytes()])?,
                None => write_command(&mut c.w, &[b"AUTH", pw.as_bytes()])?,
            }
            if let Reply::Error(e) = read_reply(&mut c.r)? {
                return Err(Failure::Refused(format!("AUTH: {e}")));
            }
        }
        if s.db != 0 {
            write_command(&mut c.w, &[b"SELECT", s.db.to_string().as_bytes()])?;
            if let Reply::Error(e) = read_reply(&mut c.r)? {
                return Err(Failure::Refused(format!("SELECT {}: {e}", s.db)));
            }
        }
        Ok(())
    }

    fn mark_down(self: &Arc<Self>, why: &str) {
        self.idle.lock().expect("not poisoned").clear();
        if self.up.swap(false, Ordering::AcqRel) {
            crate::metrics::metrics().shared_data_redis_up.set(0);
            tracing::error!(
                redis = %self.settings.display,
                error = why,
                "shared data: Redis is unreachable; shared-data calls fail (the plugins' \
                 on_error policy answers) until it answers again"
            );
        }
        self.probe();
    }

    /// Pings Redis from a background thread until it answers, then marks it up.
    fn probe(self: &Arc<Self>) {
        if self.probing.swap(true, Ordering::AcqRel) {
            return;
        }
        let me = self.clone();
        let spawned = std::thread::Builder::new()
            .name("sluice-redis-probe".into())
            .spawn(move || loop {
                std::thread::sleep(PROBE_EVERY);
                let wait = me.settings.timeout.max(Duration::from_millis(200));
                let ok = me.connect(Instant::now() + wait, true).and_then(|mut c| {
                    write_command(&mut c.w, &[b"PING"])?;
                    match read_reply(&mut c.r)? {
                        Reply::Status(_) => Ok(c),
                        other => Err(Failure::Refused(format!("PING: {other:?}"))),
                    }
                });
                if let Ok(c) = ok {
                    me.idle.lock().expect("not poisoned").push(c);
                    me.probing.store(false, Ordering::Release);
                    me.up.store(true, Ordering::Release);
                    crate::metrics::metrics().shared_data_redis_up.set(1);
                    tracing::info!(redis = %me.settings.display, "shared data: Redis answers again");
                    return;
                }
            });
        if let Err(e) = spawned {
            self.probing.store(false, Ordering::Release);
            tracing::error!(error = %e, "cannot start the Redis probe");
        }
    }
}

/// `f` on `c` with what is left of the deadline as its socket timeouts.
fn run(
    c: &mut Conn,
    deadline: Instant,
    f: &impl Fn(&mut Conn) -> Result<Reply, Failure>,
) -> Result<Reply, Failure> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(Failure::Down("no answer in time".into()));
    }
    set_timeouts(c, left)?;
    f(c)
}

fn set_timeouts(c: &Conn, left: Duration) -> Result<(), Failure> {
    let left = left.max(Duration::from_millis(1));
    c.w.get_ref().set_write_timeout(Some(left))?;
    c.r.get_ref().set_read_timeout(Some(left))?;
    Ok(())
}
