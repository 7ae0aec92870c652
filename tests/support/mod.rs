//! Test harness: the real `sluice` binary as a child process, real upstream servers (the demo
//! echo upstream) on ephemeral 127.0.0.1 ports, and an HTTP client.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The `sluice` binary under test.
/// Cargo's target directory (where `make wasm` puts the plugins).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

pub fn sluice_bin() -> &'static str {
    env!("CARGO_BIN_EXE_sluice")
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

/// A fresh directory under the system temp dir.
pub fn temp_dir(tag: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "sluice-test-{}-{tag}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

/// Starts a demo upstream named `name` on an ephemeral port of 127.0.0.1 (on the test's tokio
/// runtime) and returns its address.
pub async fn upstream(name: &str) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind upstream");
    let addr = l.local_addr().unwrap();
    let name = name.to_string();
    tokio::spawn(async move { sluice::demo::upstream::serve(l, &name).await });
    addr
}

/// Writes a self-signed certificate for `host` to `dir/cert.pem` and its key to `dir/key.pem`;
/// returns the certificate PEM (to trust it in a client).
pub fn write_self_signed(dir: &Path, host: &str) -> String {
    let cert = rcgen::generate_simple_self_signed(vec![host.to_string()]).unwrap();
    std::fs::write(dir.join("cert.pem"), cert.cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), cert.key_pair.serialize_pem()).unwrap();
    cert.cert.pem()
}

/// Config of a sluice with one TLS listener (cert.pem/key.pem beside the config) proxying
/// everything to `upstream`.
pub fn tls_listener_config(upstream: SocketAddr) -> String {
    format!(
        "listeners: [{{ name: tls, address: '{{LISTEN}}', tls: {{ cert: cert.pem, key: key.pem }} }}]\n\
         admin: {{ address: '{{ADMIN}}' }}\n\
         upstreams: {{ backend: {{ endpoints: ['{upstream}'] }} }}\n\
         routes: [{{ name: all, upstream: backend }}]\n"
    )
}

/// A running `sluice run` process, killed when dropped.
pub struct Sluice {
    child: Option<Child>,
    /// Address of the first listener.
    pub addr: SocketAddr,
    /// Address of the admin API.
    pub admin: SocketAddr,
    /// Its temp dir (config and log).
    pub dir: PathBuf,
}

/// Config text with `{LISTEN}` and `{ADMIN}` placeholders filled with fresh ports; returns the
/// text and the two addresses.
pub fn with_ports(template: &str) -> (String, SocketAddr, SocketAddr) {
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let text = template
        .replace("{LISTEN}", &listen.to_string())
        .replace("{ADMIN}", &admin.to_string());
    (text, listen, admin)
}

impl Sluice {
    /// Writes `template` (with `{LISTEN}`/`{ADMIN}` filled) to a file and runs sluice on it,
    /// waiting until `/ready` answers 200.
    pub async fn start(template: &str) -> Sluice {
        let dir = temp_dir("proxy");
        Self::start_in(template, dir).await
    }

    /// As `start`, with the config written into `dir` (for configs with relative paths).
    pub async fn start_in(template: &str, dir: PathBuf) -> Sluice {
        let (text, addr, admin) = with_ports(template);
        let config = dir.join("sluice.yaml");
        std::fs::write(&config, text).unwrap();
        let child = spawn_logged(
            Command::new(sluice_bin())
                .arg("run")
                .arg("--config")
                .arg(&config)
                .args(["--log-level", "info"]),
            &dir.join("sluice.log"),
        );
        let mut s = Sluice {
            child: Some(child),
            addr,
            admin,
            dir,
        };
        s.wait_ready().await;
        s
    }

    /// Waits for `/ready` to answer 200 (20 s at most).
    pub async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let url = format!("http://{}/ready", self.admin);
        let client = client();
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "sluice exited ({status}) before it was ready:\n{}",
                    self.logs()
                );
            }
            if let Ok(r) = client.get(&url).send().await {
                if r.status() == 200 {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "sluice not ready after 20 s:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// `http://LISTENER{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `http://ADMIN{path}`.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// Everything the process logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.dir.join("sluice.log")).unwrap_or_default()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Sends a signal to the process.
    pub fn signal(&self, sig: i32) {
        let pid = self.child.as_ref().unwrap().id() as i32;
        // SAFETY: kill(2) with a pid we own; no memory is involved.
        let rc = unsafe { libc::kill(pid, sig) };
        assert_eq!(rc, 0, "kill({pid}, {sig}) failed");
    }

    /// Waits for the process to exit, up to `timeout`; None if it is still running.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits (5 s at most) until the metric sample `prefix` has the value `want`, and fails the
    /// test with the last value seen otherwise. Request metrics are recorded just after the
    /// response is sent, so a check right after a request must wait for them.
    pub async fn wait_metric(&self, prefix: &str, want: f64) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let got = self.metric(prefix).await;
            if got == Some(want) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{prefix}: want {want}, have {got:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The value of a metric sample whose line starts with `prefix` (name and labels).
    pub async fn metric(&self, prefix: &str) -> Option<f64> {
        let text = client()
            .get(self.admin_url("/metrics"))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        metric_value(&text, prefix)
    }
}

/// Finds `prefix` at the start of a line of Prometheus text and parses its value.
pub fn metric_value(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

impl Drop for Sluice {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Spawns `cmd` with stdout and stderr appended to `log`.
pub fn spawn_logged(cmd: &mut Command, log: &Path) -> Child {
    let out = std::fs::File::create(log).expect("create log file");
    let err = out.try_clone().unwrap();
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .spawn()
        .expect("spawn sluice")
}

/// An HTTP client that does not retry or follow redirects, with a 30 s timeout.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// Parses an echo answer of the demo upstream.
pub async fn echo(resp: reqwest::Response) -> serde_json::Value {
    let status = resp.status();
    let text = resp.text().await.unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not an echo ({status}): {e}: {text}"))
}

/// First value of header `name` in an echo answer.
pub fn echo_header<'a>(echo: &'a serde_json::Value, name: &str) -> Option<&'a str> {
    echo["headers"][name][0].as_str()
}

/// `module` with a custom section `sluice-test-version` holding `tag` appended: the same code
/// as different bytes (another sha256, compiled separately), e.g. two "versions" of a plugin.
pub fn wasm_variant(module: &[u8], tag: &str) -> Vec<u8> {
    fn leb(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let name = b"sluice-test-version";
    let mut payload = Vec::new();
    leb(name.len(), &mut payload);
    payload.extend_from_slice(name);
    payload.extend_from_slice(tag.as_bytes());
    let mut out = module.to_vec();
    out.push(0);
    leb(payload.len(), &mut out);
    out.extend_from_slice(&payload);
    out
}

/// Lower-case hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `POST /reload` on the admin API: the status and the JSON answer.
pub async fn post_reload(proxy: &Sluice) -> (u16, serde_json::Value) {
    let r = client()
        .post(proxy.admin_url("/reload"))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (
        status,
        serde_json::from_str(&r.text().await.unwrap()).unwrap(),
    )
}

/// GET `url` and parse its JSON body.
pub async fn get_json(url: String) -> serde_json::Value {
    let text = client()
        .get(url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Reads a numeric environment setting of a benchmark, or `default`.
pub fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
