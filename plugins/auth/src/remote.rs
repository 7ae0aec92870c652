//! Keys fetched from the identity provider (`jwt.jwks_uri`, through the upstream
//! `jwt.jwks_upstream`).
//!
//! Each VM keeps the keys it uses; shared data holds the last good key set of every VM and
//! replica under [`Source::shared_key`], as the JWKS text behind a small header with its fetch
//! time. A VM adopts the shared copy when it is newer than its own, which it notices from the
//! copy's compare-and-swap version changing: on every tick (each second) and before fetching
//! for an unknown `kid`.
//!
//! Fetches happen on three occasions, each bounded:
//! - at start and every `jwks_refresh_seconds` after the last good fetch, from the root
//!   context's tick; a lease in shared data lets one VM fetch for all of them;
//! - when a token names a `kid` no key has (or there are no keys at all), from the request,
//!   which waits for the answer; at most once per `jwks_min_refetch_seconds` for all VMs;
//! - after a failure, again after a delay doubling from 1 s up to
//!   `jwks_min_refetch_seconds`.
//!
//! A failed fetch keeps the keys in use. A streak of failures is logged once, by the VM that
//! starts it, and its end once (a flag in shared data).

use std::cell::RefCell;
use std::time::Duration;

use serde_json::Value;
use sha2::{Digest as _, Sha256};
use sluice_sdk::abi::Status;
use sluice_sdk::{Call, CallError, CallResponse};

use crate::jwk::{Alg, Jwk, Key};
use crate::jwt::Validator;

/// `jwks_refresh_seconds` when not configured.
pub const DEFAULT_REFRESH_SECONDS: u64 = 300;
/// `jwks_fetch_timeout_ms` when not configured.
pub const DEFAULT_FETCH_TIMEOUT_MS: u64 = 5000;
/// `jwks_min_refetch_seconds` when not configured.
pub const DEFAULT_MIN_REFETCH_SECONDS: u64 = 30;
/// The largest `jwks_refresh_seconds`: a day.
pub const MAX_REFRESH_SECONDS: u64 = 86_400;
/// The largest `jwks_fetch_timeout_ms`.
pub const MAX_FETCH_TIMEOUT_MS: u64 = 60_000;
/// The largest `jwks_min_refetch_seconds`.
pub const MAX_MIN_REFETCH_SECONDS: u64 = 3600;
/// The largest key set accepted, in bytes: checked on the body of every answer, which the
/// host already caps at 4 MiB.
pub const MAX_JWKS_BYTES: usize = 512 * 1024;
/// The longest `jwks_uri`.
pub const MAX_URI_BYTES: usize = 2048;
/// How often each VM looks at shared data and at whether a fetch is due.
pub const TICK: Duration = Duration::from_secs(1);

const SECOND: u64 = 1_000_000_000;
/// The first byte of the shared copy: its format.
const ENVELOPE_VERSION: u8 = 1;

/// Where the keys come from, and how often.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// The upstream pool the fetch goes through.
    pub upstream: String,
    /// The `:authority` sent (empty: the host sends the endpoint's `host:port`).
    pub authority: String,
    /// The `:path` sent, with its query.
    pub path: String,
    /// Seconds between fetches.
    pub refresh_seconds: u64,
    /// Deadline of one fetch, in milliseconds.
    pub timeout_ms: u32,
    /// Fewest seconds between two fetches for unknown `kid`s.
    pub min_refetch_seconds: u64,
}

/// Splits `jwks_uri` into the `:authority` and `:path` of the fetch: a path (with its query)
/// is sent as it is, with an empty authority; an `https://` (or `http://`) URL gives both.
pub fn parse_uri(uri: &str) -> Result<(String, String), String> {
    const EXPECTED: &str = "expected a path such as /.well-known/jwks.json or an https:// URL";
    if uri.is_empty() || uri.len() > MAX_URI_BYTES {
        return Err(format!("1–{MAX_URI_BYTES} characters; {EXPECTED}"));
    }
    if !uri.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("spaces, control and non-ASCII characters must be percent-encoded".into());
    }
    if uri.contains('#') {
        return Err("a fragment (#…) is never sent: leave it out".into());
    }
    if uri.starts_with("//") {
        return Err(EXPECTED.into());
    }
    if uri.starts_with('/') {
        return Ok((String::new(), uri.to_string()));
    }
    let lower = uri.to_ascii_lowercase();
    let rest = if lower.starts_with("https://") {
        &uri["https://".len()..]
    } else if lower.starts_with("http://") {
        &uri["http://".len()..]
    } else {
        return Err(EXPECTED.into());
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    let authority_ok = !authority.is_empty()
        && authority
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._:[]".contains(&b));
    if !authority_ok {
        return Err(format!(
            "{authority:?} is not a host[:port] (no user information)"
        ));
    }
    let path = match path.strip_prefix('?') {
        Some(query) => format!("/?{query}"),
        None if path.is_empty() => "/".to_string(),
        None => path.to_string(),
    };
    Ok((authority.to_string(), path))
}

impl Source {
    /// The shared-data key of the key set: `auth.jwks.` and 16 hex digits of a hash of the
    /// upstream, authority and path (the namespace is the plugin's `vm_id` already).
    pub fn shared_key(&self) -> String {
        let mut h = Sha256::new();
        for part in [&self.upstream, &self.authority, &self.path] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        let digest = h.finalize();
        let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        format!("auth.jwks.{hex}")
    }

    /// For logs: `"/.well-known/jwks.json" via upstream "idp"`.
    pub fn describe(&self) -> String {
        format!(
            "\"{}{}\" via upstream \"{}\"",
            self.authority, self.path, self.upstream
        )
    }

    /// The request that fetches the keys.
    pub fn call(&self) -> Call {
        Call::get(self.path.clone())
            .authority(self.authority.clone())
            .header("accept", "application/jwk-set+json, application/json")
            .timeout(Duration::from_millis(u64::from(self.timeout_ms)))
    }
}

/// The shared copy: format byte, fetch time (nanoseconds, little-endian), the JWKS text.
pub fn envelope(fetched_at: u64, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(9 + body.len());
    out.push(ENVELOPE_VERSION);
    out.extend_from_slice(&fetched_at.to_le_bytes());
    out.extend_from_slice(body);
    out
}

/// The fetch time and JWKS text of a shared copy; `None` if it is not one.
pub fn open_envelope(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let (&version, rest) = bytes.split_first()?;
    if version != ENVELOPE_VERSION || rest.len() < 8 {
        return None;
    }
    let (time, body) = rest.split_at(8);
    Some((u64::from_le_bytes(time.try_into().ok()?), body))
}

/// The usable keys of a fetched set, and why the others were skipped.
#[derive(Debug)]
pub struct KeySet {
    /// Keys that fit at least one accepted algorithm.
    pub keys: Vec<Key>,
    /// One line per key left out: which key (index and kid) and why.
    pub skipped: Vec<String>,
}

/// Reads a fetched JWK set (`{"keys": [...]}`, other members ignored). Keys the plugin
/// cannot use are skipped; a set with no usable key is an error. Messages never show key
/// material.
pub fn parse_key_set(body: &[u8], algorithms: &[Alg]) -> Result<KeySet, String> {
    if body.len() > MAX_JWKS_BYTES {
        return Err(format!(
            "the key set is over {MAX_JWKS_BYTES} bytes ({})",
            body.len()
        ));
    }
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        format!(
            "the key set is not JSON (line {}, column {})",
            e.line(),
            e.column()
        )
    })?;
    let list = value
        .get("keys")
        .and_then(Value::as_array)
        .ok_or("the answer is not a JWK set: no \"keys\" array")?;
    let mut keys: Vec<Key> = Vec::new();
    let mut skipped = Vec::new();
    for (i, item) in list.iter().enumerate() {
        let name = match item.get("kid").and_then(Value::as_str) {
            Some(kid) => format!("keys[{i}] (kid {kid:?})"),
            None => format!("keys[{i}]"),
        };
        match Jwk::from_fetched(item).and_then(|jwk| Key::from_jwk(&jwk)) {
            Err(why) => skipped.push(format!("{name}: {why}")),
            Ok(k) if k.kid().is_some() && keys.iter().any(|o| o.kid() == k.kid()) => {
                skipped.push(format!("{name}: the same kid as an earlier key"))
            }
            Ok(k) if !algorithms.iter().any(|&a| k.supports(a)) => {
                skipped.push(format!("{name}: fits none of jwt.algorithms"))
            }
            Ok(k) => keys.push(k),
        }
    }
    if keys.is_empty() {
        return Err(match skipped.first() {
            None => "the key set has no keys".to_string(),
            Some(first) => format!(
                "no usable key in the set ({} skipped; {first})",
                skipped.len()
            ),
        });
    }
    Ok(KeySet { keys, skipped })
}

/// How long to wait before trying again after `failures` failed fetches in a row: 1 s, 2 s,
/// 4 s … up to `cap_seconds` (at least 1 s).
pub fn retry_delay(failures: u32, cap_seconds: u64) -> u64 {
    let doubled = SECOND.saturating_mul(1u64 << failures.saturating_sub(1).min(20));
    doubled.min(cap_seconds.max(1).saturating_mul(SECOND))
}

/// What a VM knows about its fetched keys.
#[derive(Debug, Default)]
struct State {
    /// Version of the shared copy last looked at (0: none).
    seen_cas: u32,
    /// When the keys in use were fetched, nanoseconds (0: none yet).
    fetched_at: u64,
    /// SHA-256 of the JWKS text in use: its skipped keys are logged once.
    digest: Option<[u8; 32]>,
    /// When a fetch from the root context was sent, while it is out.
    in_flight_since: Option<u64>,
    /// No periodic fetch before this (after a failure).
    next_try: u64,
    /// Failed fetches in a row (the streak is logged once, at its start).
    failures: u32,
    /// The last fetch for an unknown kid this VM knows of (its own or another VM's).
    last_demand: u64,
}

/// The fetched keys of one VM.
#[derive(Debug)]
pub struct Remote {
    /// Where they come from.
    pub source: Source,
    key: String,
    lease_key: String,
    demand_key: String,
    failing_key: String,
    state: RefCell<State>,
}

impl Remote {
    /// Nothing fetched yet.
    pub fn new(source: Source) -> Remote {
        let key = source.shared_key();
        Remote {
            lease_key: format!("{key}.lease"),
            demand_key: format!("{key}.demand"),
            failing_key: format!("{key}.failing"),
            key,
            source,
            state: RefCell::new(State::default()),
        }
    }

    /// Takes the shared copy if it changed and is newer than the keys in use; returns whether
    /// the keys changed. Shared data that cannot be read changes nothing.
    pub fn adopt_shared(&self, v: &Validator) -> bool {
        let Ok(Some((bytes, cas))) = sluice_sdk::shared::get_versioned::<Vec<u8>>(&self.key) else {
            return false;
        };
        {
            let mut st = self.state.borrow_mut();
            if cas == st.seen_cas {
                return false;
            }
            st.seen_cas = cas;
        }
        let Some((fetched_at, body)) = open_envelope(&bytes) else {
            return false;
        };
        if fetched_at <= self.state.borrow().fetched_at {
            return false;
        }
        match parse_key_set(body, &v.algorithms) {
            Ok(set) => {
                self.install(v, set, body, fetched_at);
                true
            }
            Err(why) => {
                sluice_sdk::debug!("auth: the shared key set is not usable: {why}");
                false
            }
        }
    }

    /// Puts `set` (parsed from `body`) in use.
    fn install(&self, v: &Validator, set: KeySet, body: &[u8], fetched_at: u64) {
        let digest: [u8; 32] = Sha256::digest(body).into();
        let changed = self.state.borrow().digest != Some(digest);
        if changed {
            let kids: Vec<&str> = set.keys.iter().map(|k| k.kid().unwrap_or("-")).collect();
            sluice_sdk::info!(
                "auth: JWKS from {}: {} keys in use (kid {})",
                self.source.describe(),
                set.keys.len(),
                kids.join(", ")
            );
            for why in &set.skipped {
                sluice_sdk::warn!("auth: JWKS from {}: skipped {why}", self.source.describe());
            }
            v.set_remote(set.keys);
        }
        let mut st = self.state.borrow_mut();
        st.fetched_at = fetched_at;
        st.digest = Some(digest);
    }

    /// Whether a periodic fetch is due at `now`: none is out, and no keys were fetched yet or
    /// the last good ones are `jwks_refresh_seconds` old, and no failure asks to wait.
    fn due(&self, now: u64) -> bool {
        let mut st = self.state.borrow_mut();
        let deadline = u64::from(self.source.timeout_ms) * 1_000_000 + 5 * SECOND;
        match st.in_flight_since {
            // The answer never came (the host always delivers one; belt and braces).
            Some(since) if now >= since.saturating_add(deadline) => st.in_flight_since = None,
            Some(_) => return false,
            None => {}
        }
        let stale = st.fetched_at == 0
            || now
                >= st
                    .fetched_at
                    .saturating_add(self.source.refresh_seconds * SECOND);
        stale && now >= st.next_try
    }

    /// Runs on each tick of the root context: adopts the shared copy, and starts a periodic
    /// fetch if one is due and no other VM holds the lease; `on_response` runs with its
    /// answer.
    pub fn tick(
        &self,
        v: &Validator,
        now: u64,
        on_response: impl FnOnce(Result<CallResponse, CallError>) + 'static,
    ) -> Result<(), String> {
        self.adopt_shared(v);
        if !self.due(now) {
            return Ok(());
        }
        let hold = now.saturating_add(u64::from(self.source.timeout_ms) * 1_000_000 + SECOND);
        let claimed = sluice_sdk::shared::update(&self.lease_key, |until: Option<u64>| {
            if until.is_none_or(|u| now >= u) {
                (Some(hold), true)
            } else {
                (None, false)
            }
        });
        // Shared data out of reach: fetch anyway (the failure delay still bounds it).
        if !claimed.unwrap_or(true) {
            return Ok(());
        }
        self.source
            .call()
            .send_from_root(&self.source.upstream, on_response)
            .map_err(|e| send_error(&self.source, &e))?;
        self.state.borrow_mut().in_flight_since = Some(now);
        Ok(())
    }

    /// Whether a token with an unknown kid may fetch now; claims the slot (for every VM,
    /// through shared data) if so.
    pub fn claim_refetch(&self, now: u64) -> bool {
        let min = self.source.min_refetch_seconds * SECOND;
        if self.state.borrow().last_demand.saturating_add(min) > now {
            return false;
        }
        let claimed =
            sluice_sdk::shared::update(&self.demand_key, |last: Option<u64>| match last {
                Some(t) if t.saturating_add(min) > now => (None, Err(t)),
                _ => (Some(now), Ok(())),
            });
        let mut st = self.state.borrow_mut();
        match claimed {
            Ok(Err(other)) => {
                st.last_demand = other;
                false
            }
            // Claimed, or shared data out of reach (then this VM's own bound holds).
            Ok(Ok(())) | Err(_) => {
                st.last_demand = now;
                true
            }
        }
    }

    /// Takes the answer to a fetch (from the root context or a request) at `now`. Good keys
    /// are put in use and shared; on a failure the keys in use stay. Returns the number of
    /// keys now in use, or why the fetch failed.
    pub fn accept(
        &self,
        v: &Validator,
        answer: Result<CallResponse, CallError>,
        now: u64,
        from_root: bool,
    ) -> Result<usize, String> {
        if from_root {
            self.state.borrow_mut().in_flight_since = None;
        }
        let parsed = match &answer {
            Err(e) => Err(e.to_string()),
            Ok(r) if !(200..300).contains(&r.status()) => Err(format!("answered {}", r.status())),
            Ok(r) => parse_key_set(r.body(), &v.algorithms),
        };
        match parsed {
            Ok(set) => {
                let body = answer.map(|r| r.body().to_vec()).unwrap_or_default();
                let n = set.keys.len();
                self.install(v, set, &body, now);
                self.publish(now, &body);
                let local_failures = {
                    let mut st = self.state.borrow_mut();
                    st.next_try = 0;
                    std::mem::take(&mut st.failures)
                };
                // The streak ends for every VM: the first to see it says so.
                let ended = sluice_sdk::shared::update(&self.failing_key, |f: Option<u64>| {
                    if f == Some(1) {
                        (Some(0), true)
                    } else {
                        (None, false)
                    }
                });
                if ended.unwrap_or(local_failures > 0) {
                    sluice_sdk::info!(
                        "auth: JWKS from {} fetched again after failing; {n} keys in use",
                        self.source.describe()
                    );
                }
                Ok(n)
            }
            Err(why) => {
                self.failed(v, &why, now);
                Err(why)
            }
        }
    }

    /// Counts a failed fetch: the first of a streak (of all VMs, through shared data) is
    /// logged; the next periodic try waits.
    pub fn failed(&self, v: &Validator, why: &str, now: u64) {
        let first_here = {
            let mut st = self.state.borrow_mut();
            st.failures = st.failures.saturating_add(1);
            st.failures == 1
        };
        let first = sluice_sdk::shared::update(&self.failing_key, |f: Option<u64>| {
            if f == Some(1) {
                (None, false)
            } else {
                (Some(1), true)
            }
        })
        .unwrap_or(first_here);
        let next_try = {
            let mut st = self.state.borrow_mut();
            let cap = self
                .source
                .min_refetch_seconds
                .min(self.source.refresh_seconds);
            st.next_try = now.saturating_add(retry_delay(st.failures, cap));
            if first {
                let keeping = if st.fetched_at == 0 && !v.has_keys() {
                    "no keys yet: bearer tokens are answered 503 until a fetch succeeds".to_string()
                } else if st.fetched_at == 0 {
                    "only the configured keys are in use".to_string()
                } else {
                    format!(
                        "keeping the keys fetched {} s ago",
                        now.saturating_sub(st.fetched_at) / SECOND
                    )
                };
                sluice_sdk::warn!(
                    "auth: cannot fetch the JWKS from {}: {why}; {keeping} (logged once until a fetch works again)",
                    self.source.describe()
                );
            }
            st.next_try
        };
        // Other VMs wait as well.
        let _ = sluice_sdk::shared::update(&self.lease_key, |until: Option<u64>| {
            if until.is_none_or(|u| u < next_try) {
                (Some(next_try), ())
            } else {
                (None, ())
            }
        });
    }

    /// Writes a good key set to shared data, unless the copy there is as new.
    fn publish(&self, fetched_at: u64, body: &[u8]) {
        let value = envelope(fetched_at, body);
        for _ in 0..8 {
            let cas = match sluice_sdk::shared::get_versioned::<Vec<u8>>(&self.key) {
                Ok(Some((bytes, cas))) => {
                    if open_envelope(&bytes).is_some_and(|(t, _)| t >= fetched_at) {
                        return;
                    }
                    cas
                }
                Ok(None) => 0,
                Err(_) => return,
            };
            match sluice_sdk::shared::set_if_version(&self.key, &value, cas) {
                Ok(false) => continue,
                Ok(true) | Err(_) => return,
            }
        }
    }
}

fn call_refused(source: &Source, status: Status) -> String {
    match status {
        Status::BadArgument => format!(
            "the host refused the call ({status:?}): is \"{}\" an upstream listed in the plugin's allowed_upstreams?",
            source.upstream
        ),
        other => format!("the host refused the call ({other:?})"),
    }
}

/// Why a call could not be sent, for the log.
pub fn send_error(source: &Source, error: &sluice_sdk::Error) -> String {
    match error.status() {
        Some(status) => call_refused(source, status),
        None => error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    use serde_json::json;

    fn oct(kid: &str, byte: u8) -> Value {
        json!({"kty": "oct", "kid": kid, "k": URL_SAFE_NO_PAD.encode([byte; 32])})
    }

    fn source() -> Source {
        Source {
            upstream: "idp".into(),
            authority: String::new(),
            path: "/jwks".into(),
            refresh_seconds: 300,
            timeout_ms: 5000,
            min_refetch_seconds: 30,
        }
    }

    fn validator() -> Validator {
        Validator {
            keys: Vec::new(),
            remote: Default::default(),
            algorithms: Alg::ALL.to_vec(),
            issuer: None,
            audiences: None,
            leeway: 60,
            require_exp: false,
            verified: Default::default(),
        }
    }

    #[test]
    fn uris() {
        assert_eq!(
            parse_uri("/.well-known/jwks.json?v=2").unwrap(),
            (String::new(), "/.well-known/jwks.json?v=2".to_string())
        );
        assert_eq!(
            parse_uri("https://idp.example:8443/keys").unwrap(),
            ("idp.example:8443".to_string(), "/keys".to_string())
        );
        assert_eq!(
            parse_uri("HTTPS://idp.example").unwrap(),
            ("idp.example".to_string(), "/".to_string())
        );
        assert_eq!(
            parse_uri("https://idp.example?x=1").unwrap(),
            ("idp.example".to_string(), "/?x=1".to_string())
        );
        assert_eq!(
            parse_uri("http://[::1]:80/k").unwrap(),
            ("[::1]:80".to_string(), "/k".to_string())
        );
        for (bad, words) in [
            ("", "characters"),
            ("jwks.json", "expected a path"),
            ("ftp://idp/keys", "expected a path"),
            ("//idp/keys", "expected a path"),
            ("https:///keys", "not a host"),
            ("https://user:pw@idp/keys", "not a host"),
            ("/keys#frag", "fragment"),
            ("/my keys", "percent-encoded"),
            ("/k\u{e9}", "percent-encoded"),
        ] {
            let e = parse_uri(bad).unwrap_err();
            assert!(e.contains(words), "{bad:?}: {e}");
        }
        assert!(parse_uri(&format!("/{}", "a".repeat(MAX_URI_BYTES))).is_err());
    }

    #[test]
    fn the_shared_key_depends_on_where_keys_come_from() {
        let a = source();
        let key = a.shared_key();
        assert!(key.starts_with("auth.jwks.") && key.len() == "auth.jwks.".len() + 16);
        assert_eq!(key, source().shared_key(), "stable");
        let other = Source {
            path: "/other".into(),
            ..source()
        };
        assert_ne!(key, other.shared_key());
        let elsewhere = Source {
            upstream: "idp2".into(),
            ..source()
        };
        assert_ne!(key, elsewhere.shared_key());
        let slower = Source {
            refresh_seconds: 5,
            ..source()
        };
        assert_eq!(key, slower.shared_key(), "timings do not matter");
    }

    #[test]
    fn envelopes_round_trip() {
        let e = envelope(42, b"{\"keys\":[]}");
        assert_eq!(open_envelope(&e), Some((42, &b"{\"keys\":[]}"[..])));
        assert_eq!(open_envelope(&envelope(7, b"")), Some((7, &b""[..])));
        assert_eq!(open_envelope(b""), None);
        assert_eq!(open_envelope(&[1, 2, 3]), None, "short");
        let mut other = e.clone();
        other[0] = 9;
        assert_eq!(open_envelope(&other), None, "another format");
    }

    #[test]
    fn key_sets_skip_what_they_cannot_use() {
        let body = json!({"keys": [
            oct("a", 1),
            {"kty": "OKP", "kid": "ed", "crv": "Ed25519", "x": "abc"},
            oct("a", 2),
            {"kty": "oct", "kid": "short", "k": "AAEC"},
            {"kty": "RSA", "kid": "r", "n": "AQAB", "e": "AQAB", "x5c": ["..."], "issuer": "x"},
            oct("b", 3),
            "not a key",
        ], "extra": true})
        .to_string();
        let set = parse_key_set(body.as_bytes(), &Alg::ALL).unwrap();
        let kids: Vec<_> = set.keys.iter().map(|k| k.kid()).collect();
        assert_eq!(kids, [Some("a"), Some("b")]);
        assert_eq!(set.skipped.len(), 5, "{:?}", set.skipped);
        assert!(set.skipped[0].starts_with("keys[1] (kid \"ed\"): unsupported \"kty\""));
        assert!(set.skipped[1].contains("the same kid"));
        assert!(set.skipped[2].contains("keys[3] (kid \"short\")"));
        assert!(set.skipped[3].contains("RSA modulus"));
        assert!(set.skipped[4].starts_with("keys[6]: not a JSON object"));
        let secret = URL_SAFE_NO_PAD.encode([2u8; 32]);
        assert!(
            set.skipped.iter().all(|s| !s.contains(&secret)),
            "no key material in logs"
        );

        let rs_only = parse_key_set(
            json!({"keys": [oct("a", 1)]}).to_string().as_bytes(),
            &[Alg::RS256],
        )
        .unwrap_err();
        assert!(rs_only.contains("fits none of jwt.algorithms"), "{rs_only}");
    }

    #[test]
    fn bad_key_sets_are_errors() {
        for (body, words) in [
            (&b"<html>"[..], "not JSON"),
            (b"{\"keys\": {}}", "no \"keys\" array"),
            (b"[1]", "no \"keys\" array"),
            (b"{\"keys\": []}", "has no keys"),
        ] {
            let e = parse_key_set(body, &Alg::ALL).unwrap_err();
            assert!(e.contains(words), "{e}");
        }
        let big = vec![b' '; MAX_JWKS_BYTES + 1];
        assert!(parse_key_set(&big, &Alg::ALL).unwrap_err().contains("over"));
    }

    #[test]
    fn retries_back_off_up_to_the_cap() {
        assert_eq!(retry_delay(1, 30), SECOND);
        assert_eq!(retry_delay(2, 30), 2 * SECOND);
        assert_eq!(retry_delay(5, 30), 16 * SECOND);
        assert_eq!(retry_delay(6, 30), 30 * SECOND);
        assert_eq!(retry_delay(u32::MAX, 30), 30 * SECOND);
        assert_eq!(retry_delay(3, 0), SECOND, "at least a second");
    }

    #[test]
    fn fetches_are_due_at_start_then_after_the_refresh_period() {
        let r = Remote::new(source());
        let v = validator();
        let now = 1_000 * SECOND;
        assert!(r.due(now), "nothing fetched yet");
        let body = json!({"keys": [oct("a", 1)]}).to_string();
        let answer = CallResponse::new(200, Vec::new(), body.into_bytes());
        assert_eq!(r.accept(&v, Ok(answer), now, true), Ok(1));
        assert!(v.has_keys());
        assert!(!r.due(now + 299 * SECOND));
        assert!(r.due(now + 300 * SECOND));
        // A failure keeps the keys and delays the next try.
        let later = now + 300 * SECOND;
        let e = r
            .accept(&v, Err(CallError::Failed), later, true)
            .unwrap_err();
        assert!(e.contains("failed"), "{e}");
        assert_eq!(v.remote.borrow().len(), 1, "kept");
        assert!(!r.due(later + SECOND / 2));
        assert!(r.due(later + SECOND));
        let e = r
            .accept(
                &v,
                Ok(CallResponse::new(500, Vec::new(), Vec::new())),
                later,
                false,
            )
            .unwrap_err();
        assert_eq!(e, "answered 500");
        assert!(!r.due(later + SECOND), "two failures: 2 s");
        let e = r
            .accept(
                &v,
                Ok(CallResponse::new(200, Vec::new(), b"{}".to_vec())),
                later,
                false,
            )
            .unwrap_err();
        assert!(e.contains("no \"keys\""), "{e}");
        assert_eq!(v.remote.borrow().len(), 1, "still kept");
        // Success resets the streak.
        let body = json!({"keys": [oct("b", 2), oct("c", 3)]}).to_string();
        let answer = CallResponse::new(200, Vec::new(), body.into_bytes());
        assert_eq!(r.accept(&v, Ok(answer), later, false), Ok(2));
        assert_eq!(r.state.borrow().failures, 0);
        assert!(!r.due(later + 10 * SECOND));
    }

    #[test]
    fn a_fetch_out_blocks_the_next_until_its_deadline() {
        let r = Remote::new(source());
        r.state.borrow_mut().in_flight_since = Some(SECOND);
        assert!(!r.due(2 * SECOND));
        assert!(r.due(SECOND + 10 * SECOND), "5 s timeout + 5 s: forgotten");
    }

    #[test]
    fn refetches_for_unknown_kids_are_rate_limited() {
        // Off wasm shared data is out of reach: this VM's own bound applies.
        let r = Remote::new(source());
        let now = 100 * SECOND;
        assert!(r.claim_refetch(now));
        assert!(!r.claim_refetch(now + 29 * SECOND));
        assert!(r.claim_refetch(now + 30 * SECOND));
    }
}
