//! The test kit: runs a plugin's real `.wasm` in the real Sluice host — same engine, limits,
//! sanitizing and phase logic as the proxy — against a scripted request and upstream
//! response, without sockets, and says what happened: what reached the upstream, what the
//! client got, what the plugin logged, counted and stored.
//!
//! ```no_run
//! use sluice_host::testkit::{Kit, Options, TestRequest, TestResponse};
//! let kit = Kit::load("target/wasm32-wasip1/release/my_plugin.wasm", Options::default()).unwrap();
//! let out = kit.run(&TestRequest::get("/x").header("x-in", "1"), &TestResponse::ok("hi"));
//! assert_eq!(out.response.status, 200);
//! ```
//!
//! The crate `sluice-testkit` re-exports this module for plugin authors; `sluice plugin test`
//! drives it from a YAML file of cases.

pub mod capture;
pub mod cases;
pub mod scaffold;
pub(crate) mod transport;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::chain::Reply;
use crate::exchange::{reply_parts, response_has_body, Answer, Exchange, Head};
use crate::forwarding::{Forwarding, RequestId};
use crate::head::{PlainRequest, PlainResponse, RequestHeadMut, ResponseHeadMut};
use crate::wasm::plugin::{Plugin, PluginError};
use crate::wasm::sanitize::Sanitizer;
use crate::wasm::settings::{FailurePolicy, Limits, PluginSettings};
use crate::wasm::stream::RequestInfo;
use crate::wasm::target::{CalloutTarget, TargetProtocol};
use transport::PlainTarget;

pub use capture::LogLine;

/// How the plugin is set up: what a `plugins:` entry of the config says.
#[derive(Debug, Clone)]
pub struct Options {
    /// Bytes for `on_configure` (a JSON text for SDK plugins).
    pub config: Vec<u8>,
    /// Bytes for `on_vm_start`.
    pub vm_config: Vec<u8>,
    /// Root id (`plugin_root_id`).
    pub root_id: String,
    /// Shared-data namespace; default: one of the kit's own, so that kits do not share data.
    pub vm_id: Option<String>,
    /// Hidden data the plugin may see (`authorization`, `client_address`, …).
    pub expose: Vec<String>,
    /// `false`: the plugin sees everything, as on a host without Sluice's sanitizing.
    pub sanitize: bool,
    /// Limits.
    pub limits: Limits,
    /// Failure policy.
    pub on_error: FailurePolicy,
    /// Upstreams the plugin may call out to: name and a real address.
    pub upstreams: Vec<(String, SocketAddr)>,
    /// Upstreams speaking HTTP/2 with prior knowledge (`protocol: h2`), which gRPC calls
    /// need: name and a real address (a gRPC server the test starts).
    pub grpc_upstreams: Vec<(String, SocketAddr)>,
    /// VMs (the default 1 keeps a test deterministic).
    pub vms: usize,
    /// The route name plugins see (`route_name`).
    pub route: String,
    /// `false`: no Sluice-only properties (`route_name`, `upstream.address`), as on another
    /// ABI v0.2.1 host. With `sanitize: false`, a plugin that still works uses nothing
    /// Sluice-specific.
    pub sluice_properties: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            config: Vec::new(),
            vm_config: Vec::new(),
            root_id: String::new(),
            vm_id: None,
            expose: Vec::new(),
            sanitize: true,
            limits: Limits {
                // A loaded test machine must not turn into timeouts.
                timeout: Duration::from_secs(5),
                ..Limits::default()
            },
            on_error: FailurePolicy::FailClosed,
            upstreams: Vec::new(),
            grpc_upstreams: Vec::new(),
            vms: 1,
            route: "test".into(),
            sluice_properties: true,
        }
    }
}

impl Options {
    /// With this configuration, serialized as JSON.
    pub fn config_json(mut self, config: &serde_json::Value) -> Self {
        self.config = serde_json::to_vec(config).expect("a JSON value serializes");
        self
    }

    /// As a plain Proxy-Wasm host would run the plugin: nothing hidden, no Sluice-only
    /// properties.
    pub fn portable(mut self) -> Self {
        self.sanitize = false;
        self.sluice_properties = false;
        self
    }

    /// With these grants.
    pub fn expose(mut self, names: &[&str]) -> Self {
        self.expose = names.iter().map(|s| s.to_string()).collect();
        self
    }
}

/// A request to run through the plugin.
#[derive(Debug, Clone)]
pub struct TestRequest {
    /// Method.
    pub method: String,
    /// Path with query.
    pub path: String,
    /// Headers (a `host` header is added if there is none).
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
    /// The client's address.
    pub client: SocketAddr,
    /// The body goes through the plugin in parts of at most this many bytes (0: one part).
    pub chunk: usize,
}

impl TestRequest {
    /// A request with this method and path.
    pub fn new(method: &str, path: &str) -> TestRequest {
        TestRequest {
            method: method.to_string(),
            path: path.to_string(),
            headers: Vec::new(),
            body: Vec::new(),
            client: SocketAddr::from(([127, 0, 0, 1], 50000)),
            chunk: 0,
        }
    }

    /// A `GET`.
    pub fn get(path: &str) -> TestRequest {
        TestRequest::new("GET", path)
    }

    /// A `POST` with a body.
    pub fn post(path: &str, body: impl Into<Vec<u8>>) -> TestRequest {
        TestRequest::new("POST", path).body(body)
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> TestRequest {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> TestRequest {
        self.body = body.into();
        self
    }

    /// Sets the client's address.
    pub fn client(mut self, addr: SocketAddr) -> TestRequest {
        self.client = addr;
        self
    }

    /// Streams the body in parts of `bytes`.
    pub fn in_chunks(mut self, bytes: usize) -> TestRequest {
        self.chunk = bytes;
        self
    }
}

/// The upstream's scripted response.
#[derive(Debug, Clone)]
pub struct TestResponse {
    /// Status.
    pub status: u16,
    /// Headers (`content-length` is added for the body unless `chunked`).
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
    /// Send the body without `content-length`.
    pub chunked: bool,
    /// The body goes through the plugin in parts of at most this many bytes (0: one part).
    pub chunk: usize,
}

impl TestResponse {
    /// A response with this status and no body.
    pub fn new(status: u16) -> TestResponse {
        TestResponse {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            chunked: false,
            chunk: 0,
        }
    }

    /// 200 with this body.
    pub fn ok(body: impl Into<Vec<u8>>) -> TestResponse {
        TestResponse::new(200).body(body)
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> TestResponse {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> TestResponse {
        self.body = body.into();
        self
    }

    /// Sends the body without `content-length`, in parts of `bytes` (0: one part).
    pub fn chunked(mut self, bytes: usize) -> TestResponse {
        self.chunked = true;
        self.chunk = bytes;
        self
    }
}

/// A message as it went out: the upstream request, or the client's response.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Message {
    /// Status (responses) or 0.
    pub status: u16,
    /// Method (requests).
    pub method: String,
    /// Path with query (requests).
    pub path: String,
    /// Headers, lower-case names.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

impl Message {
    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of header `name`.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// What happened to one request.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The request as the upstream got it; `None` if a plugin answered first.
    pub forwarded: Option<Message>,
    /// The response the client got.
    pub response: Message,
    /// The response came from a plugin (a local reply, or a failure by its policy), not from
    /// the upstream.
    pub local: bool,
    /// The response was cut after its header went out (a failure in the body phase).
    pub cut: bool,
    /// A plugin reset the stream (`proxy_close_stream`): the client got no response (HTTP/2
    /// `RST_STREAM`, HTTP/1 a closed connection); `response` is empty.
    pub reset: bool,
}

/// A loaded plugin, ready to run requests.
pub struct Kit {
    plugin: Arc<Plugin>,
    name: String,
    vm_id: String,
    route: String,
    rt: tokio::runtime::Runtime,
}

/// Why a plugin could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KitError {
    /// The file could not be read.
    #[error("cannot read {path}: {message}")]
    Read {
        /// File.
        path: String,
        /// OS error.
        message: String,
    },
    /// The host refused the plugin.
    #[error("{0}")]
    Plugin(#[from] PluginError),
    /// The wasm host could not start.
    #[error("the wasm host cannot start: {0}")]
    Host(String),
}

fn next_name(base: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(1);
    format!("{base}#{}", N.fetch_add(1, Ordering::Relaxed))
}

impl Kit {
    /// Loads the `.wasm` file at `path` with `options`: compiles it, starts its VMs and runs
    /// `on_vm_start` and `on_configure`, exactly as the proxy does.
    pub fn load(path: impl AsRef<Path>, options: Options) -> Result<Kit, KitError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| KitError::Read {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        let base = path
            .file_stem()
            .map_or("plugin".into(), |s| s.to_string_lossy().into_owned());
        Kit::from_bytes(&base, &bytes, options)
    }

    /// Loads a plugin from its bytes; `name` labels its logs and metrics.
    pub fn from_bytes(name: &str, bytes: &[u8], options: Options) -> Result<Kit, KitError> {
        capture::install();
        let host = crate::wasm::host().map_err(KitError::Host)?;
        let name = next_name(name);
        let vm_id = options.vm_id.clone().unwrap_or_else(|| name.clone());
        let http1 = options.upstreams.iter().map(|u| (u, TargetProtocol::Http1));
        let h2 = options
            .grpc_upstreams
            .iter()
            .map(|u| (u, TargetProtocol::H2));
        let callout_targets: HashMap<String, Arc<dyn CalloutTarget>> = http1
            .chain(h2)
            .map(|((n, addr), protocol)| {
                let target: Arc<dyn CalloutTarget> = Arc::new(PlainTarget::new(n, *addr, protocol));
                (n.clone(), target)
            })
            .collect();
        let sanitizer = if options.sanitize {
            Sanitizer::new(&options.expose, &[])
        } else {
            Sanitizer::seeing_everything()
        };
        let settings = PluginSettings {
            name: name.clone(),
            version: Default::default(),
            root_id: options.root_id.clone(),
            vm_id: vm_id.clone(),
            config: options.config.clone().into(),
            vm_config: options.vm_config.clone().into(),
            sanitizer,
            callout_targets,
            limits: options.limits,
            on_error: options.on_error,
            vms: options.vms.max(1),
            vm_start: crate::wasm::settings::VmStart {
                all_at_load: true,
                idle: None,
            },
            sluice_properties: options.sluice_properties,
            shared_store: None,
        };
        let plugin = Plugin::load(&host.engine, &host.linker, settings, bytes)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| KitError::Host(e.to_string()))?;
        Ok(Kit {
            plugin,
            name,
            vm_id,
            route: options.route,
            rt,
        })
    }

    /// The plugin's name in the host (labels its logs and metrics).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Replaces the plugin's VMs with new ones (start-up and `on_configure` run again), as if
    /// it had just been loaded, without compiling it again. Its shared data and metrics stay.
    pub fn restart(&self) -> Result<(), KitError> {
        self.plugin.restart_vms().map_err(|e| {
            KitError::Plugin(PluginError::Start {
                plugin: self.name.clone(),
                error: e,
            })
        })
    }

    /// Sets the plugin's shared data `key` (unconditionally), as another VM would.
    pub fn set_shared(&self, key: &str, value: &[u8]) {
        let ns = crate::wasm::shared::namespace(&self.vm_id, None);
        let _ = ns.set(key.as_bytes(), value, 0);
    }

    /// Runs `req` through the plugin; if it goes on, the upstream answers `upstream`.
    pub fn run(&self, req: &TestRequest, upstream: &TestResponse) -> Outcome {
        self.rt.block_on(self.run_async(req, upstream))
    }

    /// What the plugin logged so far.
    pub fn logs(&self) -> Vec<LogLine> {
        capture::lines_of(&self.name)
    }

    /// Forgets what the plugin logged so far (a kit reused for many runs).
    pub fn forget_logs(&self) {
        capture::forget(&self.name)
    }

    /// Whether a logged line contains `text`.
    pub fn logged(&self, text: &str) -> bool {
        self.logs().iter().any(|l| l.message.contains(text))
    }

    /// The value of the plugin's metric `name` (a histogram: its sample count).
    pub fn metric(&self, name: &str) -> Option<i64> {
        crate::wasm::guest_metrics::value(&self.name, crate::wasm::settings::Version::Stable, name)
    }

    /// The plugin's shared data under `key`.
    pub fn shared(&self, key: &str) -> Option<Vec<u8>> {
        crate::wasm::shared::namespace(&self.vm_id, None)
            .get(key.as_bytes())
            .ok()
            .flatten()
            .map(|(v, _)| v)
    }

    /// How many of the plugin's calls failed (trap, fuel, timeout, memory, abi) so far.
    pub fn failures(&self) -> u64 {
        let by_kind = crate::metrics::metrics().plugin_errors_by_kind(&self.name, "stable");
        ["trap", "fuel", "timeout", "memory", "abi"]
            .iter()
            .map(|kind| by_kind.get(*kind).copied().unwrap_or(0))
            .sum()
    }

    /// One request, driven hook by hook through the same [`Exchange`] the proxy drives.
    async fn run_async(&self, t: &TestRequest, upstream: &TestResponse) -> Outcome {
        let mut req = request_header(t);
        let new_id = (!req.0.headers.contains_key("x-request-id")).then(RequestId::new);
        let id = new_id.map_or_else(
            || header_str(&req, "x-request-id"),
            |id| id.as_str().to_string(),
        );
        let info = RequestInfo {
            protocol: "HTTP/1.1",
            time_ns: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as i64),
            id: id.clone(),
            source: Some(t.client),
            destination: Some(SocketAddr::from(([127, 0, 0, 1], 8080))),
            connection_id: 1,
            tls: false,
            route_name: self.route.clone(),
            upstream_address: None,
            response_code: None,
            start: Some(std::time::Instant::now()),
            ..RequestInfo::default()
        };
        let forwarding = Forwarding::new(&req.0, new_id.as_ref(), Some(t.client.ip()), false);
        let mut ex = match Exchange::start(std::slice::from_ref(&self.plugin), info) {
            Ok(e) => e,
            Err(reply) => {
                return match reply_parts::<PlainResponse>(&reply, Some(&id)) {
                    Ok((resp, body)) => local(Answer::Send(Box::new(resp), body), None),
                    Err(_) => local(Answer::Reset, None),
                }
            }
        };
        ex.load_request(&req.0, "http", &forwarding);
        let has_body = !t.body.is_empty();
        let head = match ex.request_headers(!has_body).await {
            Ok(h) => h,
            Err(reply) => return finish(ex, reply, &id, None).await,
        };
        if head == Head::NeedBody {
            if let Err(reply) = ex.whole_request_body(t.body.clone()).await {
                return finish(ex, reply, &id, None).await;
            }
        }
        if let Err(e) = ex.apply_request(&mut req, &forwarding) {
            return finish(ex, Reply::internal(&e.to_string()), &id, None).await;
        }
        let mut upstream_req = req.clone();
        if !ex.forwarded_early() {
            let _ = forwarding.apply(&mut upstream_req);
        }
        if let Err(e) = ex.upstream_request(&mut upstream_req, has_body) {
            return finish(ex, Reply::internal(&e.to_string()), &id, None).await;
        }
        let mut body = Vec::new();
        if has_body {
            // After a whole-body read, pingora replays it as one part.
            let size = if head == Head::NeedBody { 0 } else { t.chunk };
            for (chunk, end) in parts(&t.body, size) {
                let mut c = Some(Bytes::copy_from_slice(chunk));
                if let Err(reply) = ex.request_body(&mut c, end).await {
                    return finish(ex, reply, &id, None).await;
                }
                body.extend_from_slice(c.as_deref().unwrap_or_default());
            }
        }
        let forwarded = Some(Message {
            status: 0,
            method: upstream_req.0.method.as_str().to_string(),
            path: upstream_req
                .0
                .uri
                .path_and_query()
                .map_or("/".to_string(), |p| p.as_str().to_string()),
            headers: header_list(&upstream_req.0.headers),
            body,
        });
        ex.stream().info.upstream_address = Some("127.0.0.1:1".into());

        let mut resp = response_header(upstream);
        let head_request = t.method.eq_ignore_ascii_case("HEAD");
        if let Err(reply) = ex.response_head(&mut resp, head_request, false).await {
            return finish(ex, reply, &id, forwarded).await;
        }
        let mut body = Vec::new();
        let mut cut = false;
        if response_has_body(head_request, resp.parts()) {
            for (chunk, end) in parts(&upstream.body, upstream.chunk) {
                let mut c = Some(Bytes::copy_from_slice(chunk));
                if let Err(reply) = ex.response_body(&mut c, end) {
                    // The header is out once the first part is: the proxy can only cut.
                    if body.is_empty() {
                        return finish(ex, reply, &id, forwarded).await;
                    }
                    cut = true;
                    break;
                }
                body.extend_from_slice(c.as_deref().unwrap_or_default());
            }
        }
        let status = resp.0.status.as_u16();
        ex.log(status);
        drop(ex);
        Outcome {
            forwarded,
            response: Message {
                status,
                headers: header_list(&resp.0.headers),
                body,
                ..Message::default()
            },
            local: false,
            cut,
            reset: false,
        }
    }
}

/// `body` in parts of at most `size` bytes (0: one part), each with whether it is the last.
fn parts(body: &[u8], size: usize) -> Vec<(&[u8], bool)> {
    if size == 0 || body.len() <= size {
        return vec![(body, true)];
    }
    let n = body.len().div_ceil(size);
    body.chunks(size)
        .enumerate()
        .map(|(i, c)| (c, i + 1 == n))
        .collect()
}

fn request_header(t: &TestRequest) -> PlainRequest {
    let mut req = PlainRequest::new(t.method.as_str(), t.path.as_bytes())
        .unwrap_or_else(|_| PlainRequest::new("GET", b"/").expect("a valid request"));
    for (k, v) in &t.headers {
        let _ = req.append_header(k.clone(), v.clone().into_bytes());
    }
    if !req.0.headers.contains_key("host") {
        let _ = req.insert_header("host", b"test.local");
    }
    if !t.body.is_empty() && !req.0.headers.contains_key("content-length") {
        let _ = req.insert_header("content-length", t.body.len().to_string().as_bytes());
    }
    req
}

fn response_header(t: &TestResponse) -> PlainResponse {
    let mut resp = PlainResponse::new(t.status)
        .unwrap_or_else(|_| PlainResponse::new(500).expect("a valid status"));
    for (k, v) in &t.headers {
        let _ = resp.append_header(k.clone(), v.clone().into_bytes());
    }
    if !t.chunked && !resp.0.headers.contains_key("content-length") {
        let _ = resp.insert_header("content-length", t.body.len().to_string().as_bytes());
    }
    resp
}

fn header_str(req: &PlainRequest, name: &str) -> String {
    req.0
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

fn header_list(h: &http::HeaderMap) -> Vec<(String, String)> {
    h.iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

/// The client's side of a reply: a response, or a reset stream.
fn local(answer: Answer<PlainResponse>, forwarded: Option<Message>) -> Outcome {
    match answer {
        Answer::Send(resp, body) => Outcome {
            forwarded,
            response: Message {
                status: resp.0.status.as_u16(),
                headers: header_list(&resp.0.headers),
                body: body.to_vec(),
                ..Message::default()
            },
            local: true,
            cut: false,
            reset: false,
        },
        Answer::Reset => Outcome {
            forwarded,
            response: Message::default(),
            local: true,
            cut: false,
            reset: true,
        },
    }
}

/// Sends `reply` as the proxy does (see [`Exchange::answer`]), then ends the request.
async fn finish(mut ex: Exchange, reply: Reply, id: &str, forwarded: Option<Message>) -> Outcome {
    let answer = ex.answer::<PlainResponse>(reply, Some(id)).await;
    let status = match &answer {
        Answer::Send(resp, _) => resp.0.status.as_u16(),
        Answer::Reset => 0,
    };
    ex.log(status);
    drop(ex);
    local(answer, forwarded)
}

/// Builds the `.wasm` of the plugin crate at `manifest_dir` (`cargo build --release --target
/// wasm32-wasip1`) and returns its path. Plugin tests call it with
/// `env!("CARGO_MANIFEST_DIR")`, so that `cargo test` tests the current code. The cargo
/// profile is `$SLUICE_PLUGIN_PROFILE` if set (Sluice's own tests use `plugin`, the profile
/// its plugins ship with), else `release`.
pub fn build_plugin(manifest_dir: impl AsRef<Path>) -> Result<PathBuf, String> {
    let manifest = manifest_dir.as_ref().join("Cargo.toml");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let profile = std::env::var("SLUICE_PLUGIN_PROFILE")
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "release".into());
    let out = std::process::Command::new(cargo)
        .args([
            "build",
            "--profile",
            &profile,
            "--target",
            "wasm32-wasip1",
            "--message-format=json-render-diagnostics",
            "--manifest-path",
        ])
        .arg(&manifest)
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cargo build --profile {profile} --target wasm32-wasip1 --manifest-path {} failed \
             (is the target installed? `rustup target add wasm32-wasip1`)",
            manifest.display()
        ));
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact")
        .flat_map(|m| {
            m["filenames"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter_map(|f| f.as_str().map(PathBuf::from))
        })
        .filter(|f| f.extension().is_some_and(|e| e == "wasm"))
        .collect::<Vec<_>>()
        .pop()
        .ok_or_else(|| {
            format!(
                "building {} produced no .wasm (is it a cdylib?)",
                manifest.display()
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_split_and_mark_the_last() {
        assert_eq!(
            parts(b"abcde", 2),
            vec![(&b"ab"[..], false), (b"cd", false), (b"e", true)]
        );
        assert_eq!(parts(b"abc", 0), vec![(&b"abc"[..], true)]);
        assert_eq!(parts(b"", 4), vec![(&b""[..], true)]);
    }
}
