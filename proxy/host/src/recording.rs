//! Recording what a plugin sees into test-kit cases: the next N requests and responses as the
//! plugin saw them — sanitized exactly as it sees them, so a header hidden from it is never
//! written — with what it decided as the cases' expectations. `sluice plugin test` runs the
//! file as it is, or replays it to another version (`--against`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::tap::{BodySeen, Observer, Served, Tapped};
use crate::testkit::cases::{Case, CasesFile, Expect, RequestSpec, ResponseSpec};
use crate::wasm::header_list::HeaderList;
use crate::wasm::sanitize::Sanitizer;
use crate::wasm::settings::Version;

/// A recording of one plugin's next requests.
pub struct Recording {
    plugin: String,
    want: usize,
    cases: Mutex<Vec<Case>>,
    full: tokio::sync::Notify,
}

impl Recording {
    /// Records the next `want` requests of plugin `plugin`.
    pub fn new(plugin: &str, want: usize) -> Arc<Recording> {
        Arc::new(Recording {
            plugin: plugin.to_string(),
            want,
            cases: Mutex::new(Vec::new()),
            full: tokio::sync::Notify::new(),
        })
    }

    /// The plugin it records.
    pub fn plugin(&self) -> &str {
        &self.plugin
    }

    /// Whether it has all it wants.
    pub fn is_full(&self) -> bool {
        self.cases.lock().unwrap_or_else(|p| p.into_inner()).len() >= self.want
    }

    /// Waits until it has all it wants, or `timeout`; returns what it has.
    pub async fn finish(&self, timeout: Duration) -> CasesFile {
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.is_full() {
            let notified = self.full.notified();
            if self.is_full() {
                break;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                break;
            }
        }
        let cases = std::mem::take(&mut *self.cases.lock().unwrap_or_else(|p| p.into_inner()));
        CasesFile { cases }
    }

    /// Adds one request, seen through `sanitizer` (the plugin's view).
    pub fn add(&self, sanitizer: &Sanitizer, served: Served, seen: &Tapped) {
        let mut cases = self.cases.lock().unwrap_or_else(|p| p.into_inner());
        if cases.len() >= self.want {
            return;
        }
        if let Some(case) = case_of(sanitizer, served, seen) {
            cases.push(case);
            if cases.len() >= self.want {
                self.full.notify_waiters();
            }
        }
    }
}

/// An observer that records one plugin version's requests, seen as that version sees them.
pub struct RecordingWatch {
    /// Where they go.
    pub recording: Arc<Recording>,
    /// The view of the version recorded.
    pub sanitizer: Sanitizer,
}

impl Observer for RecordingWatch {
    fn done(&self, _version: Version, served: Served, tapped: Option<Tapped>) {
        if let Some(seen) = tapped {
            self.recording.add(&self.sanitizer, served, &seen);
        }
    }
}

/// The headers of `list` the plugin sees (no pseudo-headers), as a map of first values.
fn visible(sanitizer: &Sanitizer, list: &HeaderList) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (k, v) in list {
        if k.starts_with(b":") || sanitizer.hides(k) {
            continue;
        }
        out.entry(String::from_utf8_lossy(k).to_ascii_lowercase())
            .or_insert_with(|| String::from_utf8_lossy(v).into_owned());
    }
    out
}

fn pseudo(list: &HeaderList, name: &[u8]) -> Option<String> {
    crate::wasm::stream::list_get(list, name).map(|v| String::from_utf8_lossy(v).into_owned())
}

fn text(body: &BodySeen, seen: bool) -> String {
    if !seen {
        // A plugin without the body callback never reads the body: it is not written.
        return String::new();
    }
    String::from_utf8_lossy(&body.bytes).into_owned()
}

/// What changed from `before` to `after`: headers set (name → new first value) and removed.
fn changes(
    before: &BTreeMap<String, String>,
    after: &BTreeMap<String, String>,
) -> (BTreeMap<String, String>, Vec<String>) {
    let set = after
        .iter()
        .filter(|(k, v)| before.get(*k) != Some(*v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let removed = before
        .keys()
        .filter(|k| !after.contains_key(*k))
        .cloned()
        .collect();
    (set, removed)
}

/// One case from what a plugin saw and did; `None` if it never saw the request header.
fn case_of(sanitizer: &Sanitizer, served: Served, seen: &Tapped) -> Option<Case> {
    let req_in = seen.request_in.as_ref()?;
    let method = pseudo(req_in, b":method").unwrap_or_else(|| "GET".into());
    let path = pseudo(req_in, b":path").unwrap_or_else(|| "/".into());
    let mut headers = visible(sanitizer, req_in);
    if let Some(authority) = pseudo(req_in, b":authority") {
        headers.entry("host".into()).or_insert(authority);
    }
    let mut notes = Vec::new();
    if !seen.request_body_in.complete() && seen.sees_request_body {
        notes.push("request body cut at max_body_bytes");
    }
    if (seen.sees_request_body && std::str::from_utf8(&seen.request_body_in.bytes).is_err())
        || (seen.sees_response_body && std::str::from_utf8(&seen.response_body_in.bytes).is_err())
    {
        notes.push("a body is not UTF-8: written lossy");
    }
    let request = RequestSpec {
        method: method.clone(),
        path: path.clone(),
        headers: headers.clone(),
        body: text(&seen.request_body_in, seen.sees_request_body),
        client: seen.info.source.filter(|_| sanitizer.sees_client_address()),
    };
    let upstream = seen.response_in.as_ref().map(|r| ResponseSpec {
        status: pseudo(r, b":status")
            .and_then(|s| s.parse().ok())
            .unwrap_or(200),
        headers: visible(sanitizer, r),
        body: text(&seen.response_body_in, seen.sees_response_body),
        chunked: !r
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case(b"content-length")),
    });
    let mut expect = Expect::default();
    if let Some(status) = served.replied {
        expect.status = Some(status);
        expect.local = Some(true);
        expect.forwarded = Some(false);
    } else if served.failed || served.reset {
        notes.push(if served.failed {
            "the plugin failed"
        } else {
            "the plugin reset the stream"
        });
    } else {
        expect.forwarded = Some(seen.request_out.is_some());
        if let Some(out) = &seen.request_out {
            let (set, removed) = changes(&visible(sanitizer, req_in), &visible(sanitizer, out));
            expect.upstream_headers = set;
            expect.upstream_headers_absent = removed;
            if seen.request_body_in.complete() && !seen.request_body_out.same(&seen.request_body_in)
            {
                expect.upstream_body = Some(text(&seen.request_body_out, true));
            }
        }
        if let (Some(r_in), Some(r_out)) = (&seen.response_in, &seen.response_out) {
            expect.local = Some(false);
            expect.status = pseudo(r_out, b":status").and_then(|s| s.parse().ok());
            let (set, removed) = changes(&visible(sanitizer, r_in), &visible(sanitizer, r_out));
            expect.headers = set;
            expect.headers_absent = removed;
            if seen.response_body_in.complete()
                && !seen.response_body_out.same(&seen.response_body_in)
            {
                expect.body = Some(text(&seen.response_body_out, true));
            }
        }
    }
    let mut name = format!("{method} {path} (request {})", seen.info.id);
    if !notes.is_empty() {
        name.push_str(&format!(" [{}]", notes.join("; ")));
    }
    Some(Case {
        name,
        request,
        upstream,
        expect,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(pairs: &[(&str, &str)]) -> HeaderList {
        pairs
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn a_case_holds_only_what_the_plugin_sees() {
        let mut seen = Tapped::new(1024);
        seen.info.id = "r-1".into();
        seen.request_in = Some(list(&[
            (":method", "POST"),
            (":path", "/a?b=1"),
            (":authority", "api.local"),
            ("authorization", "Bearer secret"),
            ("cookie", "s=1"),
            ("x-forwarded-for", "10.0.0.9"),
            ("x-in", "1"),
        ]));
        seen.request_out = Some(list(&[(":method", "POST"), ("x-in", "1"), ("x-tag", "t")]));
        seen.request_body_in.add(b"hello");
        seen.request_body_out.add(b"hello");
        seen.response_in = Some(list(&[
            (":status", "201"),
            ("set-cookie", "k=v"),
            ("content-length", "2"),
        ]));
        seen.response_out = Some(list(&[
            (":status", "201"),
            ("x-out", "2"),
            ("content-length", "2"),
        ]));
        seen.response_body_in.add(b"ok");
        seen.response_body_out.add(b"ok");
        seen.sees_request_body = true;
        let sanitizer = Sanitizer::new(&[], &[]);
        let case = case_of(&sanitizer, Served::default(), &seen).unwrap();
        let yaml = serde_yaml::to_string(&CasesFile { cases: vec![case] }).unwrap();
        for hidden in ["secret", "authorization", "cookie", "10.0.0.9", "k=v"] {
            assert!(!yaml.contains(hidden), "{hidden} written:\n{yaml}");
        }
        let back: CasesFile = serde_yaml::from_str(&yaml).unwrap();
        let c = &back.cases[0];
        assert_eq!(c.name, "POST /a?b=1 (request r-1)");
        assert_eq!(
            c.request.headers.get("host").map(String::as_str),
            Some("api.local")
        );
        assert_eq!(c.request.body, "hello");
        assert_eq!(
            c.expect.upstream_headers.get("x-tag").map(String::as_str),
            Some("t")
        );
        assert_eq!(c.expect.forwarded, Some(true));
        assert_eq!(c.expect.status, Some(201));
        assert_eq!(c.expect.headers.get("x-out").map(String::as_str), Some("2"));
        assert_eq!(c.upstream.as_ref().unwrap().status, 201);
        assert_eq!(c.request.client, None, "the address is hidden");
    }
}
