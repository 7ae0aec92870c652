//! `sluice plugin test`: a plugin's options and a list of cases in YAML, run through the test
//! kit, with a readable report.
//!
//! Options (`--config`), the fields of a `plugins:` entry without `path`:
//!
//! ```yaml
//! config: { header: x-tag }        # to on_configure: a map as JSON, a string as is
//! expose: [authorization]
//! limits: { timeout_ms: 100 }
//! sanitize: true                   # false: the plugin sees everything
//! upstreams: { authz: "127.0.0.1:9000" }
//! ```
//!
//! Cases (`--case`):
//!
//! ```yaml
//! cases:
//!   - name: tags the request
//!     request: { method: GET, path: /x, headers: { x-in: "1" }, body: "" }
//!     upstream: { status: 200, headers: { content-type: text/plain }, body: ok }
//!     expect:
//!       status: 200
//!       headers: { x-out: "1" }
//!       upstream_headers: { x-tag: "yes" }
//! ```

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{Kit, Options, Outcome, TestRequest, TestResponse};
use crate::wasm::settings::{encode_config, FailurePolicy, LimitError, LimitsFile};

/// The options file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptionsFile {
    /// To `on_configure`.
    #[serde(default)]
    pub config: Option<serde_yaml::Value>,
    /// To `on_vm_start`.
    #[serde(default)]
    pub vm_config: Option<serde_yaml::Value>,
    /// Root id.
    #[serde(default)]
    pub root_id: String,
    /// Shared-data namespace.
    #[serde(default)]
    pub vm_id: Option<String>,
    /// Grants.
    #[serde(default)]
    pub expose: Vec<String>,
    /// Sanitizing on (default) or off.
    #[serde(default)]
    pub sanitize: Option<bool>,
    /// Limits.
    #[serde(default)]
    pub limits: Option<LimitsFile>,
    /// `fail_closed` or `fail_open`.
    #[serde(default)]
    pub on_error: Option<String>,
    /// Callout targets: name → address.
    #[serde(default)]
    pub upstreams: BTreeMap<String, String>,
}

/// The cases file.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CasesFile {
    /// The cases, run in order against one plugin instance.
    pub cases: Vec<Case>,
}

/// One case.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// What it checks.
    pub name: String,
    /// The request.
    #[serde(default)]
    pub request: RequestSpec,
    /// The upstream's response (default: 200, body `ok`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub upstream: Option<ResponseSpec>,
    /// What must happen.
    #[serde(default)]
    pub expect: Expect,
}

/// A request.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RequestSpec {
    /// Method (default GET).
    #[serde(default = "get")]
    pub method: String,
    /// Path with query (default `/`).
    #[serde(default = "root")]
    pub path: String,
    /// Headers.
    #[serde(skip_serializing_if = "BTreeMap::is_empty", default)]
    pub headers: BTreeMap<String, String>,
    /// Body.
    #[serde(skip_serializing_if = "String::is_empty", default)]
    pub body: String,
    /// The client's address (default `127.0.0.1:50000`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub client: Option<SocketAddr>,
}

impl Default for RequestSpec {
    fn default() -> Self {
        RequestSpec {
            method: get(),
            path: root(),
            headers: BTreeMap::new(),
            body: String::new(),
            client: None,
        }
    }
}

fn get() -> String {
    "GET".into()
}

fn root() -> String {
    "/".into()
}

/// The upstream's response.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseSpec {
    /// Status (default 200).
    #[serde(default = "ok_status")]
    pub status: u16,
    /// Headers.
    #[serde(skip_serializing_if = "BTreeMap::is_empty", default)]
    pub headers: BTreeMap<String, String>,
    /// Body.
    #[serde(skip_serializing_if = "String::is_empty", default)]
    pub body: String,
    /// Without `content-length`.
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub chunked: bool,
}

fn ok_status() -> u16 {
    200
}

/// Expectations; every one given must hold.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// The client's status.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// The response came from the plugin (true) or the upstream (false).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local: Option<bool>,
    /// Response headers: name → first value.
    #[serde(skip_serializing_if = "BTreeMap::is_empty", default)]
    pub headers: BTreeMap<String, String>,
    /// Response headers that must be absent.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub headers_absent: Vec<String>,
    /// The whole response body.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// Texts the response body contains.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub body_contains: Vec<String>,
    /// Whether the request reached the upstream.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forwarded: Option<bool>,
    /// Upstream request headers: name → first value.
    #[serde(skip_serializing_if = "BTreeMap::is_empty", default)]
    pub upstream_headers: BTreeMap<String, String>,
    /// Upstream request headers that must be absent.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub upstream_headers_absent: Vec<String>,
    /// The upstream request's path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_path: Option<String>,
    /// The upstream request's body.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_body: Option<String>,
    /// Texts that lines the plugin logged contain.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub logs_contain: Vec<String>,
}

/// Why a cases or options file could not be used (unreadable or invalid).
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct CaseError {
    /// The file.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

fn read_yaml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, CaseError> {
    let err = |message: String| CaseError {
        path: path.display().to_string(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    // serde_yaml's messages start with the path of the field they are about.
    serde_yaml::from_str(&text).map_err(|e| err(e.to_string()))
}

/// Reads the options file (`None`: defaults) into kit options.
pub fn load_options(path: Option<&Path>) -> Result<Options, CaseError> {
    let file: OptionsFile = match path {
        Some(p) => read_yaml(p)?,
        None => OptionsFile::default(),
    };
    let where_ = path.map_or("options".into(), |p| p.display().to_string());
    let err = |message: String| CaseError {
        path: where_.clone(),
        message,
    };
    let mut errors: Vec<LimitError> = Vec::new();
    let limits_file = file.limits.unwrap_or_default();
    let timeout_given = limits_file.timeout_ms.is_some();
    let mut limits = limits_file.validate("", &mut errors);
    if !timeout_given {
        // The kit's generous default: a loaded test machine must not turn into timeouts.
        limits.timeout = Options::default().limits.timeout;
    }
    if let Some(e) = errors.first() {
        return Err(err(format!(
            "{}: {}",
            e.field.trim_start_matches('.'),
            e.message
        )));
    }
    let on_error = match file.on_error.as_deref() {
        None | Some("fail_closed") => FailurePolicy::FailClosed,
        Some("fail_open") => FailurePolicy::FailOpen,
        Some(other) => {
            return Err(err(format!(
                "on_error: {other:?} must be fail_closed or fail_open"
            )))
        }
    };
    let mut upstreams = Vec::new();
    for (name, addr) in &file.upstreams {
        let a: SocketAddr = addr
            .parse()
            .map_err(|_| err(format!("upstreams.{name}: {addr:?} is not an ip:port")))?;
        upstreams.push((name.clone(), a));
    }
    Ok(Options {
        config: encode_config(&file.config).map_err(|m| err(format!("config: {m}")))?,
        vm_config: encode_config(&file.vm_config).map_err(|m| err(format!("vm_config: {m}")))?,
        root_id: file.root_id,
        vm_id: file.vm_id,
        expose: file.expose,
        sanitize: file.sanitize.unwrap_or(true),
        limits,
        on_error,
        upstreams,
        ..Options::default()
    })
}

/// Reads the cases file.
pub fn load_cases(path: &Path) -> Result<CasesFile, CaseError> {
    read_yaml(path)
}

/// What one case found wrong (empty: it passed).
pub fn check(case: &Case, out: &Outcome, kit: &Kit) -> Vec<String> {
    let e = &case.expect;
    let mut bad = Vec::new();
    let resp = &out.response;
    if let Some(s) = e.status {
        if resp.status != s {
            bad.push(format!("status: want {s}, got {}", resp.status));
        }
    }
    if let Some(l) = e.local {
        if out.local != l {
            bad.push(format!(
                "want the response from {}, it came from {}",
                if l { "the plugin" } else { "the upstream" },
                if out.local {
                    "the plugin"
                } else {
                    "the upstream"
                }
            ));
        }
    }
    for (k, v) in &e.headers {
        match resp.header(k) {
            Some(got) if got == v => {}
            got => bad.push(format!("response header {k}: want {v:?}, got {got:?}")),
        }
    }
    for k in &e.headers_absent {
        if let Some(got) = resp.header(k) {
            bad.push(format!("response header {k}: want none, got {got:?}"));
        }
    }
    if let Some(b) = &e.body {
        if resp.text() != *b {
            bad.push(format!("body: want {b:?}, got {:?}", resp.text()));
        }
    }
    for t in &e.body_contains {
        if !resp.text().contains(t.as_str()) {
            bad.push(format!(
                "body: want it to contain {t:?}, got {:?}",
                resp.text()
            ));
        }
    }
    if let Some(f) = e.forwarded {
        if out.forwarded.is_some() != f {
            bad.push(format!(
                "want the request {}forwarded, it was {}",
                if f { "" } else { "not " },
                if out.forwarded.is_some() {
                    "forwarded"
                } else {
                    "not forwarded"
                }
            ));
        }
    }
    let wants_upstream = !e.upstream_headers.is_empty()
        || !e.upstream_headers_absent.is_empty()
        || e.upstream_path.is_some()
        || e.upstream_body.is_some();
    match (&out.forwarded, wants_upstream) {
        (None, true) => bad.push("the request did not reach the upstream".into()),
        (Some(up), true) => {
            for (k, v) in &e.upstream_headers {
                match up.header(k) {
                    Some(got) if got == v => {}
                    got => bad.push(format!("upstream header {k}: want {v:?}, got {got:?}")),
                }
            }
            for k in &e.upstream_headers_absent {
                if let Some(got) = up.header(k) {
                    bad.push(format!("upstream header {k}: want none, got {got:?}"));
                }
            }
            if let Some(p) = &e.upstream_path {
                if up.path != *p {
                    bad.push(format!("upstream path: want {p:?}, got {:?}", up.path));
                }
            }
            if let Some(b) = &e.upstream_body {
                if up.text() != *b {
                    bad.push(format!("upstream body: want {b:?}, got {:?}", up.text()));
                }
            }
        }
        _ => {}
    }
    if !e.logs_contain.is_empty() {
        let logs = kit.logs();
        for t in &e.logs_contain {
            if !logs.iter().any(|l| l.message.contains(t.as_str())) {
                bad.push(format!("no log line contains {t:?}"));
            }
        }
    }
    bad
}

/// The request and upstream response of a case, for the kit.
fn inputs(case: &Case) -> (TestRequest, TestResponse) {
    let r = &case.request;
    let mut req = TestRequest::new(&r.method, &r.path).body(r.body.as_bytes().to_vec());
    for (k, v) in &r.headers {
        req = req.header(k, v);
    }
    if let Some(c) = r.client {
        req = req.client(c);
    }
    let upstream = match &case.upstream {
        None => TestResponse::ok("ok"),
        Some(u) => {
            let mut t = TestResponse::new(u.status).body(u.body.as_bytes().to_vec());
            for (k, v) in &u.headers {
                t = t.header(k, v);
            }
            if u.chunked {
                t = t.chunked(0);
            }
            t
        }
    };
    (req, upstream)
}

/// Runs every case on `kit`; returns the report and how many failed.
pub fn run(kit: &Kit, cases: &CasesFile) -> (String, usize) {
    let mut report = String::new();
    let mut failed = 0;
    for case in &cases.cases {
        let (req, upstream) = inputs(case);
        let out = kit.run(&req, &upstream);
        let bad = check(case, &out, kit);
        if bad.is_empty() {
            let _ = writeln!(report, "PASS  {}", case.name);
        } else {
            failed += 1;
            let _ = writeln!(report, "FAIL  {}", case.name);
            for b in bad {
                let _ = writeln!(report, "      {b}");
            }
            let _ = writeln!(
                report,
                "      (got {} {}{}, body {:?})",
                out.response.status,
                if out.local {
                    "from the plugin"
                } else {
                    "from the upstream"
                },
                if out.cut { ", cut" } else { "" },
                truncate(&out.response.text(), 200)
            );
        }
    }
    let n = cases.cases.len();
    let _ = writeln!(
        report,
        "{n} case{}: {} passed, {failed} failed",
        if n == 1 { "" } else { "s" },
        n - failed
    );
    (report, failed)
}

/// Runs every case on `new` and on `old` and reports the cases where they decided otherwise:
/// the client's status, where the response came from, whether the request reached the
/// upstream, and the headers and bodies each side got. Returns the report and how many cases
/// differ.
pub fn compare(new: &Kit, old: &Kit, cases: &CasesFile) -> (String, usize) {
    let mut report = String::new();
    let mut differ = 0;
    for case in &cases.cases {
        let (req, upstream) = inputs(case);
        let a = new.run(&req, &upstream);
        let b = old.run(&req, &upstream);
        let diffs = decisions_differ(&a, &b);
        if diffs.is_empty() {
            let _ = writeln!(report, "SAME  {}", case.name);
        } else {
            differ += 1;
            let _ = writeln!(report, "DIFF  {}", case.name);
            for d in diffs {
                let _ = writeln!(report, "      {d}");
            }
        }
    }
    let n = cases.cases.len();
    let _ = writeln!(
        report,
        "{n} case{}: {} decided the same, {differ} differently",
        if n == 1 { "" } else { "s" },
        n - differ
    );
    (report, differ)
}

/// How two outcomes of one case differ (`new` first), in words.
fn decisions_differ(new: &Outcome, old: &Outcome) -> Vec<String> {
    let mut d = Vec::new();
    let from = |o: &Outcome| {
        if o.reset {
            "a reset"
        } else if o.local {
            "the plugin"
        } else {
            "the upstream"
        }
    };
    if new.response.status != old.response.status || from(new) != from(old) {
        d.push(format!(
            "reply: new {} from {}, old {} from {}",
            new.response.status,
            from(new),
            old.response.status,
            from(old)
        ));
    }
    match (&new.forwarded, &old.forwarded) {
        (Some(a), Some(b)) => {
            if sorted(&a.headers) != sorted(&b.headers) {
                d.push(format!(
                    "upstream headers: new {:?}, old {:?}",
                    only_in(&a.headers, &b.headers),
                    only_in(&b.headers, &a.headers)
                ));
            }
            if a.body != b.body {
                d.push("upstream body differs".into());
            }
            if a.path != b.path || a.method != b.method {
                d.push(format!(
                    "upstream request: new {} {}, old {} {}",
                    a.method, a.path, b.method, b.path
                ));
            }
        }
        (None, None) => {}
        (a, _) => d.push(format!(
            "forwarded: new {}, old {}",
            a.is_some(),
            !a.is_some()
        )),
    }
    if !d.iter().any(|x| x.starts_with("reply")) {
        if sorted(&new.response.headers) != sorted(&old.response.headers) {
            d.push(format!(
                "response headers: new {:?}, old {:?}",
                only_in(&new.response.headers, &old.response.headers),
                only_in(&old.response.headers, &new.response.headers)
            ));
        }
        if new.response.body != old.response.body {
            d.push("response body differs".into());
        }
    }
    d
}

fn sorted(h: &[(String, String)]) -> Vec<(String, String)> {
    let mut v = h.to_vec();
    v.sort();
    v
}

/// The headers of `a` not in `b`.
fn only_in(a: &[(String, String)], b: &[(String, String)]) -> Vec<String> {
    a.iter()
        .filter(|h| !b.contains(h))
        .map(|(k, v)| format!("{k}: {v}"))
        .collect()
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut cut = max;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}…", &s[..cut])
}
