//! Plugin sources end to end: `path:`, `url:` and `oci:` binaries fetched through real sockets
//! — a real OCI registry (distribution 2.8, Debian's `docker-registry`, installed by
//! `make test-deps`) and a small HTTP file server on 127.0.0.1 — with the cache, size and digest
//! checks, ed25519 signatures, and `sluice plugin keygen/sign/push` as users run them.

mod support;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice::config::{Config, PluginSpec};
use sluice::source::{self, FetchOptions, Fetched, SourceError};
use support::*;

const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

// ---------------------------------------------------------------------------------------------
// Helpers

/// A valid (empty) WebAssembly module with a custom section holding `tag`, so that every
/// test has bytes of its own.
fn module(tag: &str) -> Vec<u8> {
    wasm_variant(b"\0asm\x01\0\0\0", tag)
}

/// Validates a config whose only plugin `p` is `entry` (YAML flow mapping); relative paths
/// resolve against `base`.
fn try_spec(entry: &str, base: &Path) -> Result<PluginSpec, String> {
    let yaml = format!(
        "listeners: [{{ name: public, address: '127.0.0.1:18080' }}]\n\
         admin: {{ address: '127.0.0.1:19901' }}\n\
         upstreams: {{ backend: {{ endpoints: ['127.0.0.1:3000'] }} }}\n\
         routes: [{{ name: all, upstream: backend }}]\n\
         plugins:\n  p: {entry}\n"
    );
    Config::from_yaml(&yaml, base)
        .map(|c| c.plugins.into_iter().next().expect("one plugin"))
        .map_err(|e| e.to_string())
}

fn spec(entry: &str, base: &Path) -> PluginSpec {
    try_spec(entry, base).unwrap_or_else(|e| panic!("invalid config for {entry}: {e}"))
}

/// Fetch options with a cache of the test's own (never the user's).
fn options(cache: &Path) -> FetchOptions {
    FetchOptions {
        cache_dir: Some(cache.to_path_buf()),
        ..FetchOptions::default()
    }
}

async fn fetch(spec: &PluginSpec, cache: &Path) -> Result<Fetched, SourceError> {
    source::fetch_with(spec, &options(cache)).await
}

fn assert_contains(text: &str, parts: &[&str]) {
    for p in parts {
        assert!(text.contains(p), "{p:?} missing from:\n{text}");
    }
}

/// Runs `sluice ARGS` with a cache dir of its own and no registry credentials.
fn sluice(args: &[&str], cache: &Path) -> Output {
    sluice_env(args, cache, &[])
}

/// `sluice ARGS` with these environment variables (and no others of Sluice's).
fn sluice_env(args: &[&str], cache: &Path, env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(sluice_bin());
    cmd.args(args)
        .env("SLUICE_PLUGIN_CACHE", cache)
        .env_remove("SLUICE_OCI_USERNAME")
        .env_remove("SLUICE_OCI_PASSWORD")
        .env_remove("SLUICE_OCI_TOKEN")
        .env_remove("SLUICE_OCI_INSECURE");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run sluice")
}

fn stdout_ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `sluice plugin push FILE oci://TARGET EXTRA…`; the printed reference.
fn push(file: &Path, target: &str, extra: &[&str], cache: &Path) -> String {
    let target_arg = format!("oci://{target}");
    let mut args = vec!["plugin", "push", file.to_str().unwrap(), &target_arg];
    args.extend_from_slice(extra);
    let printed = stdout_ok(&sluice(&args, cache), "sluice plugin push");
    let (reference, digest) = printed
        .split_once('@')
        .unwrap_or_else(|| panic!("push printed {printed:?}"));
    assert_eq!(reference, target);
    assert!(
        digest.starts_with("sha256:") && digest.len() == 71,
        "{printed}"
    );
    printed
}

// ---------------------------------------------------------------------------------------------
// A real OCI registry

/// `docker-registry serve` on a free 127.0.0.1 port with its storage in a temp dir; killed
/// when dropped.
struct Registry {
    child: Option<Child>,
    /// `127.0.0.1:PORT`.
    addr: String,
    dir: PathBuf,
}

impl Registry {
    async fn start() -> Registry {
        Registry::start_with("").await
    }

    /// A registry whose config has `extra` (YAML lines) appended; `/v2/` may then answer 401.
    async fn start_with(extra: &str) -> Registry {
        assert!(
            Path::new(REGISTRY_BIN).is_file(),
            "{REGISTRY_BIN} is missing: these tests run a real OCI registry; install it with `make test-deps` \
             (it runs `apt-get install docker-registry`)"
        );
        let dir = temp_dir("registry");
        let addr = format!("127.0.0.1:{}", free_port());
        let config = dir.join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\n\
                 log: {{ level: warn, accesslog: {{ disabled: true }} }}\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n  delete: {{ enabled: true }}\n\
                 http:\n  addr: {addr}\n  secret: sluice-test-secret\n{extra}",
                dir.join("data").display()
            ),
        )
        .unwrap();
        let child = spawn_logged(
            Command::new(REGISTRY_BIN).arg("serve").arg(&config),
            &dir.join("registry.log"),
        );
        let mut r = Registry {
            child: Some(child),
            addr,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        let c = client();
        loop {
            if let Some(status) = r.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("docker-registry exited ({status}):\n{}", r.logs());
            }
            if let Ok(resp) = c.get(format!("http://{}/v2/", r.addr)).send().await {
                if resp.status() == 200 || resp.status() == 401 {
                    return r;
                }
            }
            assert!(
                Instant::now() < deadline,
                "docker-registry not ready:\n{}",
                r.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(self.dir.join("registry.log")).unwrap_or_default()
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Where the registry keeps the blob (or manifest) with this digest.
    fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap();
        self.dir
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// The manifest of `repo:reference` as the registry serves it.
    async fn manifest(&self, repo: &str, reference: &str) -> serde_json::Value {
        let r = client()
            .get(format!(
                "http://{}/v2/{repo}/manifests/{reference}",
                self.addr
            ))
            .header("accept", "application/vnd.oci.image.manifest.v1+json")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        serde_json::from_str(&r.text().await.unwrap()).unwrap()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A small HTTP file server

#[derive(Clone)]
enum Body {
    /// Reads the request and answers nothing for this long.
    Stall(Duration),
    /// Served with its Content-Length.
    Bytes(Vec<u8>),
    /// Announces this Content-Length, sends a few bytes and closes.
    Announce(u64),
    /// Chunked, this many bytes of zeros, no Content-Length.
    Chunked(usize),
}

/// An HTTP/1.1 server on 127.0.0.1 answering GETs of fixed paths (404 otherwise), one
/// connection at a time, counting requests; stopped when dropped.
struct FileServer {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FileServer {
    fn start(files: Vec<(&str, Body)>) -> FileServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let files: Vec<(String, Body)> =
            files.into_iter().map(|(p, b)| (p.to_string(), b)).collect();
        let hits = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (h, s) = (hits.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(mut conn) = conn else { continue };
                h.fetch_add(1, Ordering::SeqCst);
                let _ = serve_one(&mut conn, &files);
            }
        });
        FileServer {
            addr,
            hits,
            stop,
            thread: Some(thread),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Stops accepting and closes the socket: later fetches get "connection refused".
    fn stop(&mut self) {
        if let Some(t) = self.thread.take() {
            self.stop.store(true, Ordering::SeqCst);
            let _ = TcpStream::connect(self.addr);
            let _ = t.join();
        }
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve_one(conn: &mut TcpStream, files: &[(String, Body)]) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if conn.read(&mut byte)? == 0 {
            return Ok(());
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    let path = head.split(' ').nth(1).unwrap_or("/");
    match files.iter().find(|(p, _)| p == path).map(|(_, b)| b) {
        None => conn.write_all(
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 10\r\nconnection: close\r\n\r\nnot found\n",
        ),
        Some(Body::Bytes(b)) => {
            conn.write_all(
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    b.len()
                )
                .as_bytes(),
            )?;
            conn.write_all(b)
        }
        Some(Body::Stall(d)) => {
            std::thread::sleep(*d);
            Ok(())
        }
        Some(Body::Announce(n)) => {
            conn.write_all(
                format!("HTTP/1.1 200 OK\r\ncontent-length: {n}\r\nconnection: close\r\n\r\n")
                    .as_bytes(),
            )?;
            conn.write_all(&[0u8; 1024])
        }
        Some(Body::Chunked(total)) => {
            conn.write_all(
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n",
            )?;
            let chunk = vec![0u8; 1 << 20];
            let mut sent = 0;
            while sent < *total {
                let n = chunk.len().min(total - sent);
                conn.write_all(format!("{n:x}\r\n").as_bytes())?;
                conn.write_all(&chunk[..n])?;
                conn.write_all(b"\r\n")?;
                sent += n;
            }
            conn.write_all(b"0\r\n\r\n")
        }
    }
}

// ---------------------------------------------------------------------------------------------
// OCI

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oci_push_then_pull_by_tag_and_by_digest_then_from_the_cache_without_network() {
    let mut registry = Registry::start().await;
    let dir = temp_dir("oci-pull");
    let cache = dir.join("cache");
    let wasm = module("oci-pull");
    std::fs::write(dir.join("p.wasm"), &wasm).unwrap();
    let target = format!("{}/plugins/hello:v1", registry.addr);
    let pushed = push(&dir.join("p.wasm"), &target, &[], &cache);
    let digest = pushed.split_once('@').unwrap().1.to_string();

    // The wasm layout: a layer holding the module itself.
    let m = registry.manifest("plugins/hello", "v1").await;
    assert_eq!(m["mediaType"], "application/vnd.oci.image.manifest.v1+json");
    assert_eq!(
        m["config"]["mediaType"],
        "application/vnd.module.wasm.config.v1+json"
    );
    assert_eq!(
        m["layers"][0]["mediaType"],
        "application/vnd.module.wasm.content.layer.v1+wasm"
    );
    assert_eq!(
        m["layers"][0]["digest"],
        format!("sha256:{}", sha256_hex(&wasm))
    );

    // By tag: from the registry, then the blob from the cache (the manifest is asked again).
    let by_tag = spec(&format!("{{ oci: '{target}' }}"), &dir);
    let f = fetch(&by_tag, &cache).await.unwrap();
    assert_eq!(*f.bytes().unwrap(), wasm[..]);
    assert_eq!(f.sha256, sha256_hex(&wasm));
    assert!(!f.from_cache);
    assert_eq!(f.origin, format!("oci:{pushed}"));
    let f = fetch(&by_tag, &cache).await.unwrap();
    assert_eq!(*f.bytes().unwrap(), wasm[..]);
    assert!(f.from_cache, "the blob is not downloaded again");

    // By digest, with an empty cache: from the registry.
    let pinned = format!("{}/plugins/hello@{digest}", registry.addr);
    let by_digest = spec(&format!("{{ oci: '{pinned}' }}"), &dir);
    let other_cache = dir.join("other-cache");
    let f = fetch(&by_digest, &other_cache).await.unwrap();
    assert_eq!(*f.bytes().unwrap(), wasm[..]);
    assert!(!f.from_cache);
    assert_eq!(f.origin, format!("oci:{pinned}"));
    // The plugin's sha256 (of the wasm bytes) may be given too.
    let both = spec(
        &format!("{{ oci: '{pinned}', sha256: '{}' }}", sha256_hex(&wasm)),
        &dir,
    );
    assert!(fetch(&both, &cache).await.is_ok());

    // Without the registry: a digest-pinned reference whose blobs are cached needs no network.
    registry.stop();
    for c in [&cache, &other_cache] {
        let f = fetch(&by_digest, c).await.unwrap();
        assert_eq!(*f.bytes().unwrap(), wasm[..]);
        assert!(f.from_cache);
    }
    // A tag must still be resolved by the registry, which is gone.
    let e = fetch(&by_tag, &cache).await.unwrap_err().to_string();
    assert_contains(
        &e,
        &[
            "plugin \"p\"",
            &format!("oci:{target}"),
            &format!("GET http://{}/v2/plugins/hello/manifests/v1", registry.addr),
        ],
    );
    // So must a digest that was never cached.
    let e = fetch(&by_digest, &dir.join("empty-cache"))
        .await
        .unwrap_err()
        .to_string();
    assert_contains(&e, &["plugin \"p\"", &pinned]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oci_tar_layout_yields_the_same_bytes() {
    let registry = Registry::start().await;
    let dir = temp_dir("oci-tar");
    let cache = dir.join("cache");
    let wasm = module("oci-tar");
    std::fs::write(dir.join("p.wasm"), &wasm).unwrap();
    let target = format!("{}/plugins/tarred:1.0", registry.addr);
    let pushed = push(&dir.join("p.wasm"), &target, &["--layout", "tar"], &cache);

    let m = registry.manifest("plugins/tarred", "1.0").await;
    assert_eq!(
        m["layers"][0]["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
    assert_eq!(m["layers"].as_array().unwrap().len(), 1);
    assert_eq!(
        m["config"]["mediaType"],
        "application/vnd.oci.image.config.v1+json"
    );

    for (reference, cached) in [(target.as_str(), false), (pushed.as_str(), true)] {
        let s = spec(&format!("{{ oci: '{reference}' }}"), &dir);
        let f = fetch(&s, &cache).await.unwrap();
        assert_eq!(
            *f.bytes().unwrap(),
            wasm[..],
            "plugin.wasm extracted from the tar layer"
        );
        assert_eq!(f.sha256, sha256_hex(&wasm));
        assert_eq!(f.from_cache, cached);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oci_wrong_digests_are_refused() {
    let registry = Registry::start().await;
    let dir = temp_dir("oci-digests");
    let cache = dir.join("cache");
    let wasm = module("oci-digests");
    std::fs::write(dir.join("p.wasm"), &wasm).unwrap();
    let target = format!("{}/plugins/pinned:v1", registry.addr);
    let pushed = push(&dir.join("p.wasm"), &target, &[], &cache);
    let digest = pushed.split_once('@').unwrap().1.to_string();

    // The plugin's sha256 does not match the module.
    let wrong = "ab".repeat(32);
    let s = spec(&format!("{{ oci: '{target}', sha256: '{wrong}' }}"), &dir);
    let e = fetch(&s, &cache).await.unwrap_err();
    assert!(matches!(e, SourceError::Digest { .. }), "{e:?}");
    assert_contains(
        &e.to_string(),
        &["plugin \"p\"", &pushed, &sha256_hex(&wasm), &wrong],
    );

    // A manifest digest the registry does not have.
    let unknown = format!("{}/plugins/pinned@sha256:{}", registry.addr, "0".repeat(64));
    let s = spec(&format!("{{ oci: '{unknown}' }}"), &dir);
    let e = fetch(&s, &cache).await.unwrap_err().to_string();
    assert_contains(&e, &["plugin \"p\"", &unknown, "404", "MANIFEST_UNKNOWN"]);

    // The registry serves a manifest that is not the pinned one (its stored copy changed).
    let manifest_file = registry.blob_file(&digest);
    let mut m = std::fs::read(&manifest_file).unwrap();
    m.push(b'\n');
    std::fs::write(&manifest_file, &m).unwrap();
    let pinned = format!("{}/plugins/pinned@{digest}", registry.addr);
    let s = spec(&format!("{{ oci: '{pinned}' }}"), &dir);
    let e = fetch(&s, &dir.join("fresh-cache"))
        .await
        .unwrap_err()
        .to_string();
    assert_contains(
        &e,
        &[
            "plugin \"p\"",
            &pinned,
            &format!("the manifest's sha256 is sha256:{}", sha256_hex(&m)),
            &format!("the reference pins {digest}"),
        ],
    );

    // The registry serves a layer that is not the one its descriptor names.
    let layer = format!("sha256:{}", sha256_hex(&wasm));
    let layer_file = registry.blob_file(&layer);
    let mut bad = wasm.clone();
    *bad.last_mut().unwrap() ^= 1;
    std::fs::write(&layer_file, &bad).unwrap();
    let s = spec(&format!("{{ oci: '{target}' }}"), &dir);
    let e = fetch(&s, &dir.join("fresh-cache-2"))
        .await
        .unwrap_err()
        .to_string();
    assert_contains(
        &e,
        &[
            "plugin \"p\"",
            &format!("blob {layer}"),
            &format!("the downloaded bytes' sha256 is {}", sha256_hex(&bad)),
        ],
    );
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------------------
// Registry authentication: the bearer token flow

/// A token issuer the registry trusts: signs ES256 JWTs with a self-signed certificate (in
/// their `x5c` header) that is the registry's `rootcertbundle`. Anonymous clients get `pull`;
/// `pusher:s3cret` (basic auth) gets `pull,push`; wrong credentials get a 401.
struct TokenServer {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

const TOKEN_SERVICE: &str = "sluice-test-registry";
const TOKEN_ISSUER: &str = "sluice-test-issuer";

impl TokenServer {
    /// Starts it; writes the certificate to `root_pem`.
    fn start(root_pem: &Path) -> TokenServer {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["sluice-test-token".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        std::fs::write(root_pem, cert.pem()).unwrap();
        let signer = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &key.serialize_der(),
            &ring::rand::SystemRandom::new(),
        )
        .unwrap();
        let x5c = b64(cert.der().as_ref());
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (h, st) = (hits.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(mut conn) = conn else { continue };
                h.fetch_add(1, Ordering::SeqCst);
                let _ = answer_token(&mut conn, &signer, &x5c);
            }
        });
        TokenServer {
            addr,
            hits,
            stop,
            thread: Some(thread),
        }
    }

    /// The registry's `auth:` section for this issuer.
    fn registry_config(&self, root_pem: &Path) -> String {
        format!(
            "auth:\n  token:\n    realm: http://{}/token\n    service: {TOKEN_SERVICE}\n    \
             issuer: {TOKEN_ISSUER}\n    rootcertbundle: {}\n",
            self.addr,
            root_pem.display()
        )
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            self.stop.store(true, Ordering::SeqCst);
            let _ = TcpStream::connect(self.addr);
            let _ = t.join();
        }
    }
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn b64url(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn answer_token(
    conn: &mut TcpStream,
    signer: &ring::signature::EcdsaKeyPair,
    x5c: &str,
) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if conn.read(&mut byte)? == 0 {
            return Ok(());
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let target = head.split(' ').nth(1).unwrap_or("/");
    let url = reqwest::Url::parse(&format!("http://token{target}")).unwrap();
    let authorization = head
        .lines()
        .find_map(|l| {
            l.split_once(':')
                .filter(|(n, _)| n.eq_ignore_ascii_case("authorization"))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_default();
    let allowed: &[&str] = if authorization.is_empty() {
        &["pull"]
    } else if authorization == format!("Basic {}", b64(b"pusher:s3cret")) {
        &["pull", "push"]
    } else {
        return conn.write_all(
            b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 14\r\nconnection: close\r\n\r\nbad password\r\n",
        );
    };
    let service = url
        .query_pairs()
        .find(|(k, _)| k == "service")
        .map(|(_, v)| v.into_owned());
    assert_eq!(service.as_deref(), Some(TOKEN_SERVICE), "{target}");
    let access: Vec<serde_json::Value> = url
        .query_pairs()
        .filter(|(k, _)| k == "scope")
        .filter_map(|(_, scope)| {
            let mut parts = scope.splitn(3, ':');
            let (kind, name, actions) = (parts.next()?, parts.next()?, parts.next()?);
            let granted: Vec<&str> = actions.split(',').filter(|a| allowed.contains(a)).collect();
            Some(serde_json::json!({ "type": kind, "name": name, "actions": granted }))
        })
        .collect();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let header = serde_json::json!({ "typ": "JWT", "alg": "ES256", "x5c": [x5c] });
    let claims = serde_json::json!({
        "iss": TOKEN_ISSUER, "sub": "test", "aud": TOKEN_SERVICE,
        "exp": now + 300, "nbf": now - 10, "iat": now, "jti": format!("{now}-{}", fastrand::u64(..)),
        "access": access,
    });
    let signing_input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let sig = signer
        .sign(&ring::rand::SystemRandom::new(), signing_input.as_bytes())
        .unwrap();
    let token = format!("{signing_input}.{}", b64url(sig.as_ref()));
    let body = serde_json::json!({ "token": token, "expires_in": 300 }).to_string();
    conn.write_all(
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registries_that_want_tokens_get_them_anonymously_or_with_credentials() {
    let dir = temp_dir("oci-auth");
    let cache = dir.join("cache");
    let root = dir.join("token-root.pem");
    let tokens = TokenServer::start(&root);
    let registry = Registry::start_with(&tokens.registry_config(&root)).await;
    let wasm = module("oci-auth");
    let file = dir.join("p.wasm");
    std::fs::write(&file, &wasm).unwrap();
    let target = format!("{}/plugins/auth:v1", registry.addr);
    let target_arg = format!("oci://{target}");
    let push_args = ["plugin", "push", file.to_str().unwrap(), &target_arg];

    // Anonymous: a token for pull only, so the upload is refused.
    let out = sluice(&push_args, &cache);
    assert!(!out.status.success());
    assert_contains(
        &String::from_utf8_lossy(&out.stderr),
        &[
            "authentication failed",
            "still unauthorized after authenticating anonymously",
            "SLUICE_OCI_USERNAME",
        ],
    );
    // Wrong password: the token request itself fails.
    let out = sluice_env(
        &push_args,
        &cache,
        &[
            ("SLUICE_OCI_USERNAME", "pusher"),
            ("SLUICE_OCI_PASSWORD", "nope"),
        ],
    );
    assert!(!out.status.success());
    assert_contains(
        &String::from_utf8_lossy(&out.stderr),
        &["token request to", "401"],
    );
    // With credentials: pushed.
    let out = sluice_env(
        &push_args,
        &cache,
        &[
            ("SLUICE_OCI_USERNAME", "pusher"),
            ("SLUICE_OCI_PASSWORD", "s3cret"),
        ],
    );
    let pushed = stdout_ok(&out, "sluice plugin push with credentials");
    assert!(pushed.starts_with(&format!("{target}@sha256:")), "{pushed}");

    // Pulled anonymously through the token flow, by tag and by digest.
    let hits = tokens.hits.load(Ordering::SeqCst);
    for reference in [&target, &pushed] {
        let s = spec(&format!("{{ oci: '{reference}' }}"), &dir);
        let f = fetch(&s, &dir.join(format!("cache-{}", reference.len())))
            .await
            .unwrap();
        assert_eq!(*f.bytes().unwrap(), wasm[..]);
    }
    assert!(
        tokens.hits.load(Ordering::SeqCst) > hits,
        "tokens were asked for"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------------------
// url:

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_sources_are_checked_capped_and_cached() {
    let wasm = module("url");
    let mut server = FileServer::start(vec![
        ("/p.wasm", Body::Bytes(wasm.clone())),
        ("/huge.wasm", Body::Announce(100 << 20)),
        ("/stream.wasm", Body::Chunked(65 << 20)),
    ]);
    let dir = temp_dir("url");
    let cache = dir.join("cache");
    let digest = sha256_hex(&wasm);
    let url = server.url("/p.wasm");

    // The right digest loads, from the network.
    let good = spec(&format!("{{ url: '{url}', sha256: '{digest}' }}"), &dir);
    let f = fetch(&good, &cache).await.unwrap();
    assert_eq!(*f.bytes().unwrap(), wasm[..]);
    assert!(!f.from_cache);
    assert_eq!(f.origin, format!("url:{url}"));
    assert_eq!(server.hits(), 1);

    // A wrong digest is refused, naming the plugin, the URL and both digests; nothing cached.
    let wrong = "cd".repeat(32);
    let bad = spec(&format!("{{ url: '{url}', sha256: '{wrong}' }}"), &dir);
    let e = fetch(&bad, &cache).await.unwrap_err();
    assert!(matches!(e, SourceError::Digest { .. }), "{e:?}");
    assert_contains(
        &e.to_string(),
        &[
            "plugin \"p\"",
            &url,
            &format!("is {digest}"),
            &format!("expects {wrong}"),
        ],
    );
    assert!(!cache.join("sha256").join(&wrong).exists());

    // Bodies over the cap: announced, or streamed without a Content-Length (with an empty
    // cache: the cache is keyed by digest, and this one is cached now).
    let empty = dir.join("empty");
    let huge = spec(
        &format!(
            "{{ url: '{}', sha256: '{digest}' }}",
            server.url("/huge.wasm")
        ),
        &dir,
    );
    let e = fetch(&huge, &empty).await.unwrap_err().to_string();
    assert_contains(
        &e,
        &[
            "plugin \"p\"",
            &server.url("/huge.wasm"),
            "larger than the limit of 67108864 bytes (Content-Length: 104857600)",
        ],
    );
    let stream = spec(
        &format!(
            "{{ url: '{}', sha256: '{digest}' }}",
            server.url("/stream.wasm")
        ),
        &dir,
    );
    let e = fetch(&stream, &empty).await.unwrap_err().to_string();
    assert_contains(
        &e,
        &[
            "plugin \"p\"",
            &server.url("/stream.wasm"),
            "larger than the limit of 67108864 bytes",
        ],
    );
    // A 404.
    let missing = spec(
        &format!(
            "{{ url: '{}', sha256: '{digest}' }}",
            server.url("/nope.wasm")
        ),
        &dir,
    );
    let e = fetch(&missing, &empty).await.unwrap_err().to_string();
    assert_contains(&e, &["plugin \"p\"", "/nope.wasm", "404"]);

    // With the server gone, the cached binary still loads.
    server.stop();
    let f = fetch(&good, &cache).await.unwrap();
    assert_eq!(*f.bytes().unwrap(), wasm[..]);
    assert!(f.from_cache);
    // Without a cache, the fetch fails and names the plugin and the URL.
    let e = fetch(&good, &empty).await.unwrap_err().to_string();
    assert_contains(&e, &["plugin \"p\"", &format!("cannot fetch {url}")]);
    // Through fetch_all, which the runtime uses, with the same options.
    let all = source::fetch_all_with(std::slice::from_ref(&good), &options(&cache))
        .await
        .unwrap();
    assert!(all["p"].from_cache);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_does_not_answer_times_out() {
    let server = FileServer::start(vec![("/slow.wasm", Body::Stall(Duration::from_secs(3)))]);
    let dir = temp_dir("url-timeout");
    let url = server.url("/slow.wasm");
    let s = spec(
        &format!("{{ url: '{url}', sha256: '{}' }}", "ab".repeat(32)),
        &dir,
    );
    let opts = FetchOptions {
        timeout: Duration::from_secs(1),
        ..options(&dir.join("cache"))
    };
    let started = Instant::now();
    let e = source::fetch_with(&s, &opts).await.unwrap_err().to_string();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_contains(&e, &["plugin \"p\"", &url, "1 s"]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_binary_that_changed_on_disk_is_fetched_again() {
    let wasm = module("url-corrupt");
    let mut server = FileServer::start(vec![("/p.wasm", Body::Bytes(wasm.clone()))]);
    let dir = temp_dir("url-corrupt");
    let cache = dir.join("cache");
    let digest = sha256_hex(&wasm);
    let s = spec(
        &format!("{{ url: '{}', sha256: '{digest}' }}", server.url("/p.wasm")),
        &dir,
    );
    assert!(!fetch(&s, &cache).await.unwrap().from_cache);
    let entry = cache.join("sha256").join(&digest);
    assert_eq!(std::fs::read(&entry).unwrap(), wasm);
    std::fs::write(&entry, b"corrupted").unwrap();
    let f = fetch(&s, &cache).await.unwrap();
    assert!(!f.from_cache, "a corrupt entry is not used");
    assert_eq!(*f.bytes().unwrap(), wasm[..]);
    assert_eq!(server.hits(), 2);
    assert_eq!(std::fs::read(&entry).unwrap(), wasm, "and is replaced");
    server.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------------------
// Signatures

/// `sluice plugin keygen --out DIR/NAME`: the public key it printed.
fn keygen(dir: &Path, name: &str, cache: &Path) -> String {
    use std::os::unix::fs::PermissionsExt as _;
    let key = dir.join(name);
    let public = stdout_ok(
        &sluice(&["plugin", "keygen", "--out", key.to_str().unwrap()], cache),
        "sluice plugin keygen",
    );
    let mode = std::fs::metadata(&key).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the private key is private");
    assert_eq!(public.len(), 44, "base64 of 32 bytes: {public}");
    public
}

fn sign(file: &Path, key: &Path, cache: &Path) {
    let printed = stdout_ok(
        &sluice(
            &[
                "plugin",
                "sign",
                file.to_str().unwrap(),
                "--key",
                key.to_str().unwrap(),
            ],
            cache,
        ),
        "sluice plugin sign",
    );
    assert_eq!(printed, format!("{}.sig", file.display()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_path_plugins_load_and_unsigned_or_tampered_ones_are_refused() {
    let dir = temp_dir("sig-path");
    let cache = dir.join("cache");
    let public = keygen(&dir, "release.key", &cache);
    let other_public = keygen(&dir, "other.key", &cache);
    std::fs::write(dir.join("release.pub"), format!("{public}\n")).unwrap();

    // Signed with the release key: loads, with the key inline or from a file.
    std::fs::write(dir.join("signed.wasm"), module("signed")).unwrap();
    sign(&dir.join("signed.wasm"), &dir.join("release.key"), &cache);
    let sig_text = std::fs::read_to_string(dir.join("signed.wasm.sig")).unwrap();
    assert_eq!(sig_text.trim().len(), 88, "base64 of 64 bytes: {sig_text}");
    for key in [
        format!("public_key: '{public}'"),
        "public_key_file: release.pub".to_string(),
    ] {
        let s = spec(
            &format!("{{ path: signed.wasm, signature: {{ {key} }} }}"),
            &dir,
        );
        let f = fetch(&s, &cache).await.unwrap();
        assert_eq!(*f.bytes().unwrap(), module("signed")[..]);
    }
    // A raw 64-byte signature file is accepted too.
    use base64::Engine as _;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(sig_text.trim())
        .unwrap();
    std::fs::write(dir.join("raw.wasm"), module("signed")).unwrap();
    std::fs::write(dir.join("raw.wasm.sig"), &raw).unwrap();
    let s = spec(
        &format!("{{ path: raw.wasm, signature: {{ public_key: '{public}' }} }}"),
        &dir,
    );
    fetch(&s, &cache).await.unwrap();

    let refused = |file: &str, key: &str| {
        spec(
            &format!("{{ path: {file}, signature: {{ public_key: '{key}' }} }}"),
            &dir,
        )
    };
    // No signature file.
    std::fs::write(dir.join("unsigned.wasm"), module("unsigned")).unwrap();
    let e = fetch(&refused("unsigned.wasm", &public), &cache)
        .await
        .unwrap_err();
    assert!(matches!(e, SourceError::Signature { .. }), "{e:?}");
    assert_contains(
        &e.to_string(),
        &[
            "plugin \"p\"",
            "refused",
            &format!(
                "no signature: {} does not exist",
                dir.join("unsigned.wasm.sig").display()
            ),
        ],
    );
    // Changed after signing.
    std::fs::write(dir.join("tampered.wasm"), module("tampered")).unwrap();
    sign(&dir.join("tampered.wasm"), &dir.join("release.key"), &cache);
    std::fs::write(dir.join("tampered.wasm"), module("tampereD")).unwrap();
    let e = fetch(&refused("tampered.wasm", &public), &cache)
        .await
        .unwrap_err()
        .to_string();
    assert_contains(
        &e,
        &[
            "plugin \"p\"",
            "refused",
            "does not verify with the configured public key",
        ],
    );
    // Signed by another key.
    let e = fetch(&refused("signed.wasm", &other_public), &cache)
        .await
        .unwrap_err()
        .to_string();
    assert_contains(&e, &["plugin \"p\"", "does not verify"]);
    // A malformed signature file.
    std::fs::write(dir.join("unsigned.wasm.sig"), "this is not a signature").unwrap();
    let e = fetch(&refused("unsigned.wasm", &public), &cache)
        .await
        .unwrap_err()
        .to_string();
    assert_contains(&e, &["plugin \"p\"", "malformed signature"]);
    // Without `signature:` in the config, no signature is looked for.
    let s = spec("{ path: unsigned.wasm }", &dir);
    fetch(&s, &cache).await.unwrap();

    // The CLI refuses what it cannot do.
    let out = sluice(
        &[
            "plugin",
            "keygen",
            "--out",
            dir.join("release.key").to_str().unwrap(),
        ],
        &cache,
    );
    assert!(!out.status.success());
    assert_contains(&String::from_utf8_lossy(&out.stderr), &["already exists"]);
    let out = sluice(
        &[
            "plugin",
            "sign",
            dir.join("signed.wasm").to_str().unwrap(),
            "--key",
            dir.join("release.pub").to_str().unwrap(),
        ],
        &cache,
    );
    assert!(!out.status.success());
    assert_contains(
        &String::from_utf8_lossy(&out.stderr),
        &["release.pub", "not an ed25519 private key"],
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_url_plugins_verify_and_are_cached_with_their_signature() {
    let dir = temp_dir("sig-url");
    let cache = dir.join("cache");
    let public = keygen(&dir, "k", &cache);
    let wasm = module("signed-url");
    std::fs::write(dir.join("p.wasm"), &wasm).unwrap();
    sign(&dir.join("p.wasm"), &dir.join("k"), &cache);
    let sig = std::fs::read(dir.join("p.wasm.sig")).unwrap();
    let mut server = FileServer::start(vec![
        ("/p.wasm", Body::Bytes(wasm.clone())),
        ("/p.wasm.sig", Body::Bytes(sig)),
        ("/unsigned.wasm", Body::Bytes(wasm.clone())),
    ]);
    let digest = sha256_hex(&wasm);
    let entry = |path: &str| {
        format!(
            "{{ url: '{}', sha256: '{digest}', signature: {{ public_key: '{public}' }} }}",
            server.url(path)
        )
    };
    let s = spec(&entry("/p.wasm"), &dir);
    assert!(!fetch(&s, &cache).await.unwrap().from_cache);
    let e = fetch(&spec(&entry("/unsigned.wasm"), &dir), &dir.join("c2"))
        .await
        .unwrap_err()
        .to_string();
    assert_contains(
        &e,
        &[
            "plugin \"p\"",
            "refused",
            &format!(
                "no signature: cannot fetch {}",
                server.url("/unsigned.wasm.sig")
            ),
            "404",
        ],
    );
    server.stop();
    let f = fetch(&s, &cache).await.unwrap();
    assert!(f.from_cache, "binary and signature both from the cache");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_oci_pushes_verify_on_pull() {
    let registry = Registry::start().await;
    let dir = temp_dir("sig-oci");
    let cache = dir.join("cache");
    let public = keygen(&dir, "k", &cache);
    let other = keygen(&dir, "other", &cache);
    let wasm = module("signed-oci");
    std::fs::write(dir.join("p.wasm"), &wasm).unwrap();
    let key = dir.join("k");
    let signed = format!("{}/plugins/signed:v1", registry.addr);
    let signed_tar = format!("{}/plugins/signed:tar", registry.addr);
    let unsigned = format!("{}/plugins/signed:unsigned", registry.addr);
    push(
        &dir.join("p.wasm"),
        &signed,
        &["--sign", key.to_str().unwrap()],
        &cache,
    );
    push(
        &dir.join("p.wasm"),
        &signed_tar,
        &["--layout", "tar", "--sign", key.to_str().unwrap()],
        &cache,
    );
    push(&dir.join("p.wasm"), &unsigned, &[], &cache);

    let m = registry.manifest("plugins/signed", "v1").await;
    assert_eq!(
        m["layers"][1]["mediaType"],
        "application/vnd.sluice.wasm.signature.v1"
    );

    for reference in [&signed, &signed_tar] {
        let s = spec(
            &format!("{{ oci: '{reference}', signature: {{ public_key: '{public}' }} }}"),
            &dir,
        );
        let f = fetch(&s, &cache).await.unwrap();
        assert_eq!(*f.bytes().unwrap(), wasm[..]);
        let s = spec(
            &format!("{{ oci: '{reference}', signature: {{ public_key: '{other}' }} }}"),
            &dir,
        );
        let e = fetch(&s, &cache).await.unwrap_err().to_string();
        assert_contains(
            &e,
            &["plugin \"p\"", "refused", reference, "does not verify"],
        );
    }
    let s = spec(
        &format!("{{ oci: '{unsigned}', signature: {{ public_key: '{public}' }} }}"),
        &dir,
    );
    let e = fetch(&s, &cache).await.unwrap_err().to_string();
    assert_contains(
        &e,
        &[
            "plugin \"p\"",
            "refused",
            "no layer of media type application/vnd.sluice.wasm.signature.v1",
        ],
    );
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------------------
// The proxy

/// A `sluice run` child with its own plugin cache; killed when dropped.
struct Proxy {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proxy {
    fn logs(&self) -> String {
        std::fs::read_to_string(self.dir.join("sluice.log")).unwrap_or_default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sluice_run_serves_through_a_plugin_pulled_from_a_registry() {
    let hello = target_dir().join("wasm32-wasip1/plugin/sluice_plugin_hello.wasm");
    assert!(
        hello.is_file(),
        "{} is missing: build it with `make wasm` first",
        hello.display()
    );
    let registry = Registry::start().await;
    let dir = temp_dir("oci-run");
    let cache = dir.join("cache");
    let target = format!("{}/plugins/hello:v1", registry.addr);
    let pushed = push(&hello, &target, &[], &cache);
    let up = upstream("backend").await;
    let (text, addr, admin) = with_ports(&format!(
        "listeners: [{{ name: public, address: '{{LISTEN}}' }}]\n\
         admin: {{ address: '{{ADMIN}}' }}\n\
         upstreams: {{ backend: {{ endpoints: ['{up}'] }} }}\n\
         routes: [{{ name: all, upstream: backend, plugins: [hello] }}]\n\
         plugins:\n  hello: {{ oci: '{target}', config: {{ greeting: 'pulled from a registry' }} }}\n"
    ));
    let config = dir.join("sluice.yaml");
    std::fs::write(&config, text).unwrap();

    // `sluice check` pulls and loads it too.
    let out = sluice(&["check", "--config", config.to_str().unwrap()], &cache);
    assert_contains(&stdout_ok(&out, "sluice check"), &["OK", "1 plugin)"]);

    let child = spawn_logged(
        Command::new(sluice_bin())
            .args(["run", "--config", config.to_str().unwrap()])
            .args(["--log-level", "info"])
            .env("SLUICE_PLUGIN_CACHE", &cache),
        &dir.join("sluice.log"),
    );
    let mut proxy = Proxy {
        child,
        addr,
        dir: dir.clone(),
    };
    let c = client();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = proxy.child.try_wait().unwrap() {
            panic!("sluice exited ({status}):\n{}", proxy.logs());
        }
        if let Ok(r) = c.get(format!("http://{admin}/ready")).send().await {
            if r.status() == 200 {
                break;
            }
        }
        assert!(Instant::now() < deadline, "not ready:\n{}", proxy.logs());
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let r = c
        .get(format!("http://{}/hello", proxy.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-hello"], "pulled from a registry");
    assert_eq!(echo(r).await["upstream"], "backend");
    // The module is in the cache under the layer's digest.
    let digest = pushed.split_once("@sha256:").unwrap().1;
    assert!(
        cache.join("sha256").join(digest).is_file(),
        "manifest cached"
    );
    let wasm = std::fs::read(&hello).unwrap();
    assert!(cache.join("sha256").join(sha256_hex(&wasm)).is_file());
    drop(proxy);
    let _ = std::fs::remove_dir_all(&dir);
}
