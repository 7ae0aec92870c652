//! Shared data in Redis: keys with a compare-and-swap version, read and written with one round
//! trip each, atomically on the server.
//!
//! Each key is a Redis hash `{key_prefix}{vm_id}:{key}` with fields `v` (the value) and `c`
//! (its version, 1 on creation, +1 at each write, wrapping from 2^32-1 to 1 — what the
//! in-process store does). A read is `HMGET key v c`; a write is a Lua script that compares
//! the version and writes in one step, so two replicas can never both win a compare-and-swap.
//!
//! In a Redis Cluster each key is in one hash slot, so the script touches one key on one shard
//! and stays atomic there; keys of one namespace may be on any shard.
//!
//! Calls block the calling thread (a guest call is synchronous) for at most the configured
//! `timeout_ms`, connecting included. When a call fails for want of Redis (refused, timed out,
//! closed, the master turned replica, the cluster down), the store is marked down: the
//! following calls fail at once instead of each waiting out the timeout, and a background
//! thread tries Redis every 250 ms (asking the sentinels for the master again, or checking
//! every master of the cluster) until it can take writes, then marks it up again. Both changes
//! are logged once and shown by `sluice_shared_data_redis_up`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use prometheus::{Histogram, IntCounter};
use redis::{Script, Value};
use sluice_abi::Status;

use super::topology::{Conn, Failure, Topology};
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

/// [`SET_SCRIPT`], called by its SHA1 (`EVALSHA`), loaded when Redis does not know it.
fn set_script() -> &'static Script {
    static SCRIPT: OnceLock<Script> = OnceLock::new();
    SCRIPT.get_or_init(|| Script::new(SET_SCRIPT))
}

pub use crate::wasm::shared::Unavailable;

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
    /// The servers; `Err`: the settings cannot be used (a bad CA file), every call fails.
    topology: Result<Topology, String>,
    idle: Mutex<Vec<Conn>>,
    up: AtomicBool,
    probing: AtomicBool,
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
    let topology = Topology::new(settings);
    if let Err(e) = &topology {
        tracing::error!(redis = %settings.display, error = %e, "shared data: cannot use these Redis settings");
    }
    let s = Arc::new(RedisStore {
        settings: settings.clone(),
        topology,
        idle: Mutex::new(Vec::new()),
        up: AtomicBool::new(true),
        probing: AtomicBool::new(false),
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

impl RedisStore {
    /// Its settings.
    pub fn settings(&self) -> &RedisSettings {
        &self.settings
    }

    /// The value of `key` and its version, or `None`.
    pub fn get(self: &Arc<Self>, key: &[u8]) -> Result<Option<(Vec<u8>, u32)>, Unavailable> {
        let reply = self.call(Op::Get, |c| {
            Ok(redis::cmd("HMGET")
                .arg(key)
                .arg("v")
                .arg("c")
                .query::<Value>(c.as_dyn())?)
        })?;
        let unexpected = || self.refused(Op::Get, "an unexpected HMGET reply");
        let Value::Array(items) = reply else {
            return Err(unexpected());
        };
        let Ok::<[Value; 2], _>([v, c]) = items.try_into() else {
            return Err(unexpected());
        };
        match (v, c) {
            (Value::BulkString(v), Value::BulkString(c)) => {
                let cas = std::str::from_utf8(&c)
                    .ok()
                    .and_then(|c| c.parse::<u32>().ok())
                    .ok_or_else(|| self.refused(Op::Get, "a key's version is not a number"))?;
                Ok(Some((v, cas)))
            }
            (Value::Nil, _) | (_, Value::Nil) => Ok(None),
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
        let ttl = self.settings.ttl.map_or(0, |t| t.as_millis());
        // EVALSHA; on NOSCRIPT (Redis restarted or flushed its scripts) SCRIPT LOAD, then
        // EVALSHA again.
        let reply = self.call(Op::Set, |c| {
            Ok(set_script()
                .key(key)
                .arg(value)
                .arg(cas)
                .arg(ttl.to_string())
                .invoke::<Value>(c.as_dyn())?)
        })?;
        match reply {
            Value::Int(0) => Ok(Status::CasMismatch),
            Value::Int(_) => Ok(Status::Ok),
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
        f: impl Fn(&mut Conn) -> Result<Value, Failure>,
    ) -> Result<Value, Unavailable> {
        let m = &self.metrics[op as usize];
        let topology = match &self.topology {
            Ok(t) => t,
            Err(e) => {
                m.errors.inc();
                return Err(self.unavailable(e.clone()));
            }
        };
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
        let result = self.attempt(topology, started + self.settings.timeout, f);
        m.duration.observe(started.elapsed().as_secs_f64());
        match result {
            Ok((c, reply)) => {
                let mut idle = self.idle.lock().expect("not poisoned");
                if idle.len() < self.settings.pool_size {
                    idle.push(c);
                }
                Ok(reply)
            }
            Err(Failure::ReadOnly(message)) if topology.follows_failovers() => {
                m.errors.inc();
                self.mark_down(topology, &message);
                Err(self.unavailable(message))
            }
            Err(Failure::Refused(message) | Failure::ReadOnly(message)) => {
                m.errors.inc();
                Err(self.unavailable(format!("Redis refused the {}: {message}", op.as_str())))
            }
            Err(Failure::Moved(message)) => {
                // The cluster's slots changed: the pooled connections' maps are stale.
                m.errors.inc();
                self.idle.lock().expect("not poisoned").clear();
                Err(self.unavailable(message))
            }
            Err(Failure::Down(message) | Failure::Closed(message)) => {
                m.errors.inc();
                self.mark_down(topology, &message);
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
        topology: &Topology,
        deadline: Instant,
        f: impl Fn(&mut Conn) -> Result<Value, Failure>,
    ) -> Result<(Conn, Value), Failure> {
        let pooled = self.idle.lock().expect("not poisoned").pop();
        if let Some(mut c) = pooled {
            match run(&mut c, deadline, &f) {
                Ok(reply) => return Ok((c, reply)),
                Err(Failure::Closed(_)) => {}
                Err(e) => return Err(e),
            }
        }
        let mut c = topology.connect(deadline, false)?;
        let reply = run(&mut c, deadline, &f)?;
        Ok((c, reply))
    }

    fn mark_down(self: &Arc<Self>, topology: &Topology, why: &str) {
        self.idle.lock().expect("not poisoned").clear();
        topology.forget_master();
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

    /// Tries Redis from a background thread until it can take writes, then marks it up.
    fn probe(self: &Arc<Self>) {
        if self.probing.swap(true, Ordering::AcqRel) {
            return;
        }
        let me = self.clone();
        let spawned = std::thread::Builder::new()
            .name("sluice-redis-probe".into())
            .spawn(move || loop {
                std::thread::sleep(PROBE_EVERY);
                let Ok(topology) = &me.topology else {
                    return;
                };
                let wait = me.settings.timeout.max(Duration::from_millis(200));
                match topology.probe(Instant::now() + wait) {
                    Ok(c) => {
                        me.idle.lock().expect("not poisoned").push(c);
                        me.probing.store(false, Ordering::Release);
                        me.up.store(true, Ordering::Release);
                        crate::metrics::metrics().shared_data_redis_up.set(1);
                        tracing::info!(redis = %me.settings.display, "shared data: Redis answers again");
                        return;
                    }
                    Err(e) => {
                        tracing::debug!(redis = %me.settings.display, error = e.message(), "shared data: Redis probe failed");
                    }
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
    f: &impl Fn(&mut Conn) -> Result<Value, Failure>,
) -> Result<Value, Failure> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(Failure::Down("no answer in time".into()));
    }
    c.set_timeouts(left)?;
    f(c)
}
