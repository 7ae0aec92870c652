//! Plugin sources end to end: `path:`, `url:` and `oci:` binaries fetched through real sockets
//! — a real OCI registry (distribution 2.8, Debian's `docker-registry`, installed by
//! `make test-deps`) and a small HTTP file server on 127.0.0.1 — with the cache, size and digest
//! checks, ed25519 signatures, and `sluice plugin keygen/sign/push` as users run them.

#[path = "../support/mod.rs"]
mod support;

// The tests, one module per subject.
mod credentials;
mod oci;
mod registry_auth;
mod signatures;
mod sluice_run;
mod url;

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

/// `sluice ARGS` with these environment variables (and no others of Sluice's; no Docker
/// `config.json` unless `DOCKER_CONFIG` is among them).
fn sluice_env(args: &[&str], cache: &Path, env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(sluice_bin());
    cmd.args(args)
        .env("SLUICE_PLUGIN_CACHE", cache)
        .env("DOCKER_CONFIG", cache.join("no-docker-config"))
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
