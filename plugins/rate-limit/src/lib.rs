//! The rate-limit plugin: a token bucket per key (client address, header values, route, …)
//! and class of requests, kept in shared data so that every VM of the plugin counts the same
//! requests, updated by compare-and-swap so that concurrent requests are counted exactly.
//! Refused requests get 429 with `Retry-After`; every response gets the `RateLimit-*`
//! headers. See `README.md`.

pub mod bucket;
pub mod config;

use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};

use sluice_sdk::metrics::Counter;
use sluice_sdk::shared::{self, SharedValue};
use sluice_sdk::{properties, Action, Error, HttpFilter, Plugin, Reply, Request, Response};

use bucket::{Bucket, Decision, Rate};
use config::{Class, Config, ConfigFile, KeyPart};

impl SharedValue for Bucket {
    fn encode(&self) -> Vec<u8> {
        Bucket::encode(self)
    }
    fn decode(bytes: &[u8]) -> Option<Bucket> {
        Bucket::decode(bytes)
    }
}

/// The plugin: its configuration and counters.
pub struct RateLimit {
    config: Config,
    allowed: Counter,
    limited: Counter,
    store_errors: Counter,
}

impl Plugin for RateLimit {
    type Config = ConfigFile;
    type Filter = RateLimitFilter;

    fn new(file: ConfigFile) -> Result<Self, Error> {
        Ok(RateLimit {
            config: config::validate(file)?,
            allowed: Counter::new("ratelimit_allowed")?,
            limited: Counter::new("ratelimit_limited")?,
            store_errors: Counter::new("ratelimit_store_errors")?,
        })
    }

    fn filter(plugin: &Rc<Self>) -> RateLimitFilter {
        RateLimitFilter {
            plugin: plugin.clone(),
            headers: None,
        }
    }
}

/// One request: the headers its response gets.
pub struct RateLimitFilter {
    plugin: Rc<RateLimit>,
    headers: Option<Vec<(&'static str, String)>>,
}

/// Logged once per VM: the client address is hidden from this plugin.
static WARNED_NO_ADDRESS: AtomicBool = AtomicBool::new(false);

fn matches(class: &Class, req: &Request, path: &str) -> Result<bool, Error> {
    if let Some(p) = &class.path_prefix {
        if !path.starts_with(p.as_str()) {
            return Ok(false);
        }
    }
    if let Some((name, value)) = &class.header {
        match (req.header(name)?, value) {
            (None, _) => return Ok(false),
            (Some(got), Some(want)) if got != *want => return Ok(false),
            _ => {}
        }
    }
    Ok(true)
}

/// The bucket's key for this request.
fn key(parts: &[KeyPart], class: &str, req: &Request, path: &str) -> Result<String, Error> {
    let mut k = format!("rl|{class}");
    for p in parts {
        let v = match p {
            KeyPart::ClientAddress => match properties::client_ip()? {
                Some(ip) => ip,
                None => {
                    if !WARNED_NO_ADDRESS.swap(true, Ordering::Relaxed) {
                        sluice_sdk::warn!(
                            "rate-limit: the client address is hidden from this plugin (grant \
                             it with `expose: [client_address]`); every client shares one bucket"
                        );
                    }
                    "-".into()
                }
            },
            KeyPart::Route => properties::route_name()?.unwrap_or_default(),
            KeyPart::Method => req.method()?,
            KeyPart::Path => path.to_string(),
            KeyPart::Header(h) => req.header(h)?.unwrap_or_else(|| "-".into()),
        };
        k.push('|');
        k.push_str(&v);
    }
    // Keep keys short whatever clients send (the store caps key sizes).
    if k.len() > 256 {
        k = format!("rl|{class}|#{:016x}", fnv1a(k.as_bytes()));
    }
    Ok(k)
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn headers(rate: &Rate, d: &Decision) -> Vec<(&'static str, String)> {
    vec![
        ("ratelimit-limit", rate.tokens.to_string()),
        ("ratelimit-remaining", d.remaining.to_string()),
        ("ratelimit-reset", d.reset_s.to_string()),
        (
            "ratelimit-policy",
            format!("{};w={}", rate.tokens, rate.period_ns / 1_000_000_000),
        ),
    ]
}

impl HttpFilter for RateLimitFilter {
    fn on_request_headers(&mut self, req: &mut Request) -> Result<Action, Error> {
        let p = self.plugin.clone();
        let cfg = &p.config;
        let path = req.path_only()?;
        let mut class = cfg
            .classes
            .last()
            .expect("the default class is always there");
        for c in &cfg.classes {
            if matches(c, req, &path)? {
                class = c;
                break;
            }
        }
        let key = key(&cfg.key, &class.name, req, &path)?;
        let now = properties::now_nanos()?;
        let rate = class.rate;
        let decided = shared::update(&key, |old: Option<Bucket>| {
            let (b, d) = old
                .unwrap_or_else(|| Bucket::full(&rate, now))
                .take(&rate, now);
            // Only a taken token changes the bucket; a refusal leaves it for the next one.
            (d.allowed.then_some(b), d)
        });
        let d = match decided {
            Ok(d) => d,
            Err(e) => {
                let _ = p.store_errors.inc();
                sluice_sdk::error!("rate-limit: {e}");
                if cfg.deny_on_store_error {
                    return Ok(Reply::new(503)
                        .header("content-type", "text/plain; charset=utf-8")
                        .body("503 Service Unavailable: rate limiter unavailable\n")
                        .into());
                }
                return Ok(Action::Continue);
            }
        };
        if d.allowed {
            let _ = p.allowed.inc();
        } else {
            let _ = p.limited.inc();
        }
        if cfg.shadow {
            if !d.allowed {
                sluice_sdk::info!("rate-limit (shadow): would refuse {key}");
            }
            return Ok(Action::Continue);
        }
        let hs = cfg.headers.then(|| headers(&rate, &d));
        if d.allowed {
            self.headers = hs;
            return Ok(Action::Continue);
        }
        sluice_sdk::debug!("rate-limit: refused {key}");
        let mut reply = Reply::new(429)
            .header("content-type", "text/plain; charset=utf-8")
            .header("retry-after", d.retry_after_s.to_string())
            .body(format!(
                "429 Too Many Requests: try again in {} s\n",
                d.retry_after_s
            ));
        for (k, v) in hs.unwrap_or_default() {
            reply = reply.header(k, v);
        }
        Ok(reply.into())
    }

    fn on_response_headers(&mut self, resp: &mut Response) -> Result<Action, Error> {
        for (k, v) in self.headers.take().unwrap_or_default() {
            resp.set_header(k, v)?;
        }
        Ok(Action::Continue)
    }
}

sluice_sdk::plugin!(RateLimit);
// config.schema.json, checked by the host before on_configure.
sluice_sdk::config_schema!();
