//! A plugin under rollout: a stable version and a candidate, which of them serves each request
//! (a canary share, sticky per key), what each did (requests, failures, replies by status,
//! guest latency), and the candidate's end: rolled back by itself when it fails too often,
//! promoted or aborted by the operator.
//!
//! A route's chain holds the [`Rollout`] where it would hold the plugin; [`Rollout::pick`]
//! chooses the version for one request, and the request's chain reports what that version did
//! when it ends ([`Rollout::record`]).

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use crate::tap::{Observer, Served, Tapped};
use crate::wasm::plugin::Plugin;

pub mod shadow;
use crate::wasm::settings::Version;

/// How the candidate takes part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The candidate serves this share of the requests, in thousandths (0–1000).
    Canary {
        /// Share in ‰ (`weight_percent` × 10).
        per_mille: u32,
    },
    /// Stable serves every request; the candidate runs after it on this share of them, on
    /// copies, and its decisions are compared with stable's.
    Shadow {
        /// Share in ‰ of the requests replayed to the candidate.
        per_mille: u32,
        /// Shadow runs at once at most; a request ending while all run is not replayed.
        concurrency: usize,
    },
}

/// What decides which version a request gets: the same key always gets the same version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sticky {
    /// The client's address (IP, not port).
    ClientAddress,
    /// The value of this request header (lower-case name); requests without it are spread
    /// by a counter.
    Header(String),
}

/// When the candidate is taken away by itself.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RollbackRule {
    /// Failures ÷ requests of the candidate over the window above which it is rolled back.
    pub max_error_rate: f64,
    /// Requests of the candidate in the window before the rate is judged.
    pub min_requests: u64,
    /// The window.
    pub window: Duration,
    /// Count the candidate's own 5xx local replies as failures.
    pub count_5xx: bool,
}

/// A rollout's settings, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutSettings {
    /// Canary or shadow, and the share.
    pub mode: Mode,
    /// Stickiness key.
    pub sticky: Sticky,
    /// Automatic rollback (`None`: never).
    pub rollback: Option<RollbackRule>,
}

/// Where a rollout stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Both versions serve.
    Running,
    /// The candidate failed too often and was removed; stable serves everything.
    RolledBack {
        /// Why, with the measured figures.
        reason: String,
    },
    /// The operator removed the candidate.
    Aborted,
    /// The operator made the candidate the version that serves everything.
    Promoted,
}

impl State {
    /// `running`, `rolled_back`, `aborted` or `promoted`.
    pub fn as_str(&self) -> &'static str {
        match self {
            State::Running => "running",
            State::RolledBack { .. } => "rolled_back",
            State::Aborted => "aborted",
            State::Promoted => "promoted",
        }
    }

    fn code(&self) -> u8 {
        match self {
            State::Running => RUNNING,
            State::RolledBack { .. } => ROLLED_BACK,
            State::Aborted => ABORTED,
            State::Promoted => PROMOTED,
        }
    }
}

const RUNNING: u8 = 0;
const ROLLED_BACK: u8 = 1;
const ABORTED: u8 = 2;
const PROMOTED: u8 = 3;

/// Why the operator's promote or abort was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("plugin {plugin:?}: the rollout is {state}, not running: nothing to {action}")]
pub struct Ended {
    /// The plugin.
    pub plugin: String,
    /// Its state.
    pub state: &'static str,
    /// `promote` or `abort`.
    pub action: &'static str,
}

/// Upper bounds (µs) of the latency buckets; the last bucket is open.
const LATENCY_BOUNDS_US: [u64; 16] = [
    1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 50_000, 100_000, 1_000_000,
];

/// What one version did since the rollout started.
#[derive(Debug, Default)]
pub struct VersionStats {
    requests: AtomicU64,
    failures: AtomicU64,
    latency: [AtomicU64; LATENCY_BOUNDS_US.len() + 1],
    replies: Mutex<std::collections::BTreeMap<u16, u64>>,
}

/// A copy of [`VersionStats`] for reports.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StatsReport {
    /// Requests served.
    pub requests: u64,
    /// Requests it failed.
    pub failures: u64,
    /// Its local replies by status.
    pub replies: std::collections::BTreeMap<u16, u64>,
    /// Guest time per request at the 50th, 90th and 99th percentiles, µs (bucket upper
    /// bounds); `None` before the first request.
    pub latency_us: Option<[u64; 3]>,
}

impl VersionStats {
    fn record(&self, s: Served) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if s.failed {
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
        let us = s.nanos / 1000;
        let b = LATENCY_BOUNDS_US
            .iter()
            .position(|&bound| us <= bound)
            .unwrap_or(LATENCY_BOUNDS_US.len());
        self.latency[b].fetch_add(1, Ordering::Relaxed);
        if let Some(status) = s.replied {
            *self
                .replies
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(status)
                .or_default() += 1;
        }
    }

    /// A copy of the figures.
    pub fn report(&self) -> StatsReport {
        let counts: Vec<u64> = self
            .latency
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        let percentile = |q: f64| {
            let rank = ((total as f64) * q).ceil().max(1.0) as u64;
            let mut seen = 0;
            for (i, c) in counts.iter().enumerate() {
                seen += c;
                if seen >= rank {
                    return LATENCY_BOUNDS_US.get(i).copied().unwrap_or(u64::MAX);
                }
            }
            u64::MAX
        };
        StatsReport {
            requests: self.requests.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            replies: self
                .replies
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            latency_us: (total > 0).then(|| [percentile(0.5), percentile(0.9), percentile(0.99)]),
        }
    }
}

/// Slices of the rollback window.
const SLICES: usize = 20;

/// The candidate's requests and failures over the rollback window, in slices.
#[derive(Debug)]
struct Window {
    /// (slice number since `start`, requests, failures).
    slices: [(u64, u64, u64); SLICES],
    start: Instant,
    slice: Duration,
}

impl Window {
    fn new(window: Duration) -> Window {
        Window {
            slices: [(u64::MAX, 0, 0); SLICES],
            start: Instant::now(),
            slice: (window / SLICES as u32).max(Duration::from_millis(1)),
        }
    }

    /// Adds one request; returns the totals (requests, failures) over the window.
    fn add(&mut self, failed: bool, now: Instant) -> (u64, u64) {
        let n = (now.duration_since(self.start).as_nanos() / self.slice.as_nanos()) as u64;
        let s = &mut self.slices[(n % SLICES as u64) as usize];
        if s.0 != n {
            *s = (n, 0, 0);
        }
        s.1 += 1;
        s.2 += u64::from(failed);
        self.slices
            .iter()
            .filter(|(k, _, _)| *k != u64::MAX && *k + (SLICES as u64) > n)
            .fold((0, 0), |(r, f), (_, sr, sf)| (r + sr, f + sf))
    }
}

/// A plugin with a stable version and a candidate.
pub struct Rollout {
    name: String,
    settings: RolloutSettings,
    stable: Arc<Plugin>,
    candidate: Arc<Plugin>,
    state: AtomicU8,
    /// The state with its reason, and when it changed.
    detail: Mutex<(State, SystemTime)>,
    stats: [VersionStats; 2],
    window: Mutex<Window>,
    /// Spreads requests without a sticky key.
    counter: AtomicU64,
    /// Shadow runs under way.
    shadow_slots: Arc<tokio::sync::Semaphore>,
    shadow: ShadowStats,
    /// Itself, for the shadow runs it spawns.
    me: Weak<Rollout>,
}

/// The version one request gets.
pub struct Pick {
    /// The plugin to run.
    pub plugin: Arc<Plugin>,
    /// Which version it is.
    pub version: Version,
    /// The request is replayed to the candidate afterwards (shadow): tap what stable does.
    pub tap: bool,
}

/// What shadow runs found.
#[derive(Debug, Default)]
struct ShadowStats {
    /// Runs whose decisions were the same.
    same: AtomicU64,
    /// Runs with at least one difference.
    different: AtomicU64,
    /// Requests not replayed (every shadow slot busy, or no runtime to run on).
    skipped: AtomicU64,
    /// Differences by kind ([`shadow::KINDS`] order).
    kinds: [AtomicU64; shadow::KINDS.len()],
    /// When a difference was last logged (at most one a second).
    last_logged: Mutex<Option<Instant>>,
}

/// A copy of the shadow figures.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShadowReport {
    /// Runs with the same decisions.
    pub same: u64,
    /// Runs with a difference.
    pub different: u64,
    /// Requests not replayed.
    pub skipped: u64,
    /// Differences by kind.
    pub kinds: std::collections::BTreeMap<&'static str, u64>,
}

impl Rollout {
    /// A rollout of plugin `name` in `state` (a reload carries an ended rollout's state over
    /// while its candidate is unchanged).
    pub fn new(
        name: &str,
        settings: RolloutSettings,
        stable: Arc<Plugin>,
        candidate: Arc<Plugin>,
        state: State,
    ) -> Arc<Rollout> {
        let window = Window::new(
            settings
                .rollback
                .map_or(Duration::from_secs(60), |r| r.window),
        );
        let slots = match settings.mode {
            Mode::Shadow { concurrency, .. } => concurrency,
            Mode::Canary { .. } => 0,
        };
        Arc::new_cyclic(|me| Rollout {
            name: name.to_string(),
            settings,
            stable,
            candidate,
            state: AtomicU8::new(state.code()),
            detail: Mutex::new((state, SystemTime::now())),
            stats: Default::default(),
            window: Mutex::new(window),
            counter: AtomicU64::new(0),
            shadow_slots: Arc::new(tokio::sync::Semaphore::new(slots)),
            shadow: ShadowStats::default(),
            me: me.clone(),
        })
    }

    /// What shadow runs found so far.
    pub fn shadow_report(&self) -> ShadowReport {
        let s = &self.shadow;
        ShadowReport {
            same: s.same.load(Ordering::Relaxed),
            different: s.different.load(Ordering::Relaxed),
            skipped: s.skipped.load(Ordering::Relaxed),
            kinds: shadow::KINDS
                .iter()
                .zip(&s.kinds)
                .map(|(k, n)| (*k, n.load(Ordering::Relaxed)))
                .collect(),
        }
    }

    /// The plugin's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its settings.
    pub fn settings(&self) -> &RolloutSettings {
        &self.settings
    }

    /// The stable version.
    pub fn stable(&self) -> &Arc<Plugin> {
        &self.stable
    }

    /// The candidate.
    pub fn candidate(&self) -> &Arc<Plugin> {
        &self.candidate
    }

    /// The version that serves every request once the rollout ended (`None` while it runs).
    pub fn serving(&self) -> Option<&Arc<Plugin>> {
        match self.state.load(Ordering::Acquire) {
            RUNNING => None,
            PROMOTED => Some(&self.candidate),
            _ => Some(&self.stable),
        }
    }

    /// Where it stands, and since when.
    pub fn state(&self) -> (State, SystemTime) {
        self.detail
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The figures of one version.
    pub fn stats(&self, version: Version) -> StatsReport {
        self.stats[version as usize].report()
    }

    /// The version for one request; `key` is the sticky key's bytes (the client's address
    /// or the header's value), if the request has one.
    pub fn pick(&self, key: Option<&[u8]>) -> Pick {
        let mut tap = false;
        let version = match self.state.load(Ordering::Acquire) {
            PROMOTED => Version::Candidate,
            RUNNING => {
                let (per_mille, shadow) = match self.settings.mode {
                    Mode::Canary { per_mille } => (per_mille, false),
                    Mode::Shadow { per_mille, .. } => (per_mille, true),
                };
                // Shadow samples requests evenly, not keys: one busy client must not decide
                // whether the candidate sees anything.
                let key = if shadow { None } else { key };
                let bucket = match key {
                    Some(k) => (spread(self.name.as_bytes(), k) % 1000) as u32,
                    // Evenly spread by a counter (every 1000 requests, exact shares).
                    None => {
                        let n = self.counter.fetch_add(1, Ordering::Relaxed);
                        ((n.wrapping_mul(7919)) % 1000) as u32
                    }
                };
                if shadow {
                    tap = bucket < per_mille;
                    Version::Stable
                } else if bucket < per_mille {
                    Version::Candidate
                } else {
                    Version::Stable
                }
            }
            _ => Version::Stable,
        };
        Pick {
            plugin: match version {
                Version::Stable => self.stable.clone(),
                Version::Candidate => self.candidate.clone(),
            },
            version,
            tap,
        }
    }

    /// What `version` did with one request. A candidate report may end the rollout: when
    /// its failure rate over the window passes the rule's bound after its minimum of
    /// requests, the candidate is rolled back at once (logged once).
    pub fn record(&self, version: Version, served: Served) {
        self.stats[version as usize].record(served);
        if version != Version::Candidate || self.state.load(Ordering::Acquire) != RUNNING {
            return;
        }
        let Some(rule) = self.settings.rollback else {
            return;
        };
        let failed = served.failed || (rule.count_5xx && served.replied.is_some_and(|s| s >= 500));
        let (requests, failures) = self
            .window
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .add(failed, Instant::now());
        if requests < rule.min_requests {
            return;
        }
        let rate = failures as f64 / requests as f64;
        if rate <= rule.max_error_rate {
            return;
        }
        let reason = format!(
            "the candidate failed {failures} of its last {requests} requests ({:.2} %) within \
             {} s, over max_error_rate {:.2} %",
            rate * 100.0,
            rule.window.as_secs_f64(),
            rule.max_error_rate * 100.0
        );
        if self.end(State::RolledBack {
            reason: reason.clone(),
        }) {
            crate::metrics::metrics()
                .plugin_rollbacks
                .with_label_values(&[&self.name])
                .inc();
            tracing::error!(plugin = %self.name, %reason, "rollout rolled back: stable serves every request");
        }
    }

    /// Replays a request stable served to the candidate (in a task of its own, if a shadow
    /// slot is free) and counts how their decisions differ.
    fn shadow(&self, stable: Served, seen: Tapped) {
        let m = crate::metrics::metrics();
        let skipped = || {
            self.shadow.skipped.fetch_add(1, Ordering::Relaxed);
            m.rollout_shadow_runs
                .with_label_values(&[&self.name, "skipped"])
                .inc();
        };
        let (Ok(handle), Some(me)) = (tokio::runtime::Handle::try_current(), self.me.upgrade())
        else {
            return skipped();
        };
        let Ok(slot) = self.shadow_slots.clone().try_acquire_owned() else {
            return skipped();
        };
        handle.spawn(async move {
            let decision = shadow::run(&me.candidate, &seen).await;
            drop(slot);
            me.record(Version::Candidate, decision.served);
            let kinds = shadow::compare(&stable, &seen, &decision);
            let m = crate::metrics::metrics();
            let result = if kinds.is_empty() {
                "same"
            } else {
                "different"
            };
            m.rollout_shadow_runs
                .with_label_values(&[&me.name, result])
                .inc();
            if kinds.is_empty() {
                me.shadow.same.fetch_add(1, Ordering::Relaxed);
                return;
            }
            me.shadow.different.fetch_add(1, Ordering::Relaxed);
            for kind in &kinds {
                if let Some(i) = shadow::KINDS.iter().position(|k| k == kind) {
                    me.shadow.kinds[i].fetch_add(1, Ordering::Relaxed);
                }
                m.rollout_diffs
                    .with_label_values(&[me.name.as_str(), kind])
                    .inc();
            }
            let now = Instant::now();
            let mut last = me
                .shadow
                .last_logged
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if last.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1)) {
                *last = Some(now);
                tracing::info!(
                    plugin = %me.name,
                    request_id = %seen.info.id,
                    kinds = %kinds.join(","),
                    stable = %summary(&stable),
                    candidate = %summary(&decision.served),
                    "shadow: the candidate decided otherwise (one sample a second at most)"
                );
            }
        });
    }

    /// Makes the candidate serve every request.
    pub fn promote(&self) -> Result<(), Ended> {
        self.operator_end(State::Promoted, "promote")
    }

    /// Removes the candidate: stable serves every request.
    pub fn abort(&self) -> Result<(), Ended> {
        self.operator_end(State::Aborted, "abort")
    }

    fn operator_end(&self, to: State, action: &'static str) -> Result<(), Ended> {
        if self.end(to.clone()) {
            tracing::info!(plugin = %self.name, state = to.as_str(), "rollout ended by the operator");
            Ok(())
        } else {
            Err(Ended {
                plugin: self.name.clone(),
                state: self.state().0.as_str(),
                action,
            })
        }
    }

    /// Moves a running rollout to `to`; false if it had already ended.
    fn end(&self, to: State) -> bool {
        let mut detail = self.detail.lock().unwrap_or_else(|p| p.into_inner());
        if self
            .state
            .compare_exchange(RUNNING, to.code(), Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return false;
        }
        *detail = (to, SystemTime::now());
        true
    }
}

/// A hash of the plugin's name and a sticky key, evenly spread over u64 (FNV-1a, then the
/// splitmix64 finalizer: FNV alone keeps neighbouring keys' low digits close).
fn spread(name: &[u8], key: &[u8]) -> u64 {
    let h = crate::hash::fnv1a64_update(crate::hash::fnv1a64(name), key);
    let mut z = h.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Observer for Rollout {
    fn done(&self, version: Version, served: Served, tapped: Option<Tapped>) {
        self.record(version, served);
        if let (Some(seen), Version::Stable, RUNNING) =
            (tapped, version, self.state.load(Ordering::Acquire))
        {
            self.shadow(served, seen);
        }
    }
}

/// A decision in a few words, for the sample log line.
fn summary(s: &Served) -> String {
    match (s.failed, s.replied, s.reset) {
        (true, _, _) => "failed".into(),
        (_, Some(status), _) => format!("replied {status}"),
        (_, _, true) => "reset".into(),
        _ => "continued".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_keys_share_within_bounds() {
        // 2000 neighbouring addresses, 5 %: within 4 standard deviations of 100.
        let n = (0..2000u32)
            .filter(|i| {
                spread(b"auth", format!("10.0.{}.{}", i / 256, i % 256).as_bytes()) % 1000 < 50
            })
            .count();
        assert!((60..=140).contains(&n), "{n}");
    }

    #[test]
    fn window_forgets_old_slices() {
        let mut w = Window::new(Duration::from_secs(2));
        let t0 = w.start;
        assert_eq!(w.add(true, t0), (1, 1));
        assert_eq!(w.add(false, t0 + Duration::from_millis(500)), (2, 1));
        // 2.5 s later the first two are out of the window.
        assert_eq!(w.add(false, t0 + Duration::from_millis(2600)), (1, 0));
    }

    #[test]
    fn stats_percentiles_and_replies() {
        let s = VersionStats::default();
        assert_eq!(s.report().latency_us, None);
        for i in 0..100u64 {
            s.record(Served {
                failed: i == 0,
                replied: (i % 10 == 0).then_some(403),
                nanos: if i < 95 { 3_000 } else { 400_000 },
                reset: false,
            });
        }
        let r = s.report();
        assert_eq!(r.requests, 100);
        assert_eq!(r.failures, 1);
        assert_eq!(r.replies.get(&403), Some(&10));
        assert_eq!(r.latency_us, Some([5, 5, 500]));
    }
}
