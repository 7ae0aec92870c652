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

/// A port that was free a moment ago, and never handed out before by this process: two calls
/// in a row (a listener and its admin address) never get the same port, as they could when
/// the kernel offers a just-released port again.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("bind an ephemeral port")
            .port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
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
        let mut s = Sluice::spawn(
            Command::new(sluice_bin())
                .arg("run")
                .arg("--config")
                .arg(&config)
                .args([
                    "--log-level",
                    &std::env::var("SLUICE_TEST_LOG").unwrap_or("info".into()),
                ]),
            addr,
            admin,
            dir,
        );
        s.wait_ready().await;
        s
    }

    /// Runs `cmd` (a sluice command line: any arguments, environment, directory) as a sluice
    /// serving on `addr` with its admin API on `admin`, logging to `dir/sluice.log`; does not
    /// wait for it.
    pub fn spawn(cmd: &mut Command, addr: SocketAddr, admin: SocketAddr, dir: PathBuf) -> Sluice {
        let child = spawn_logged(cmd, &dir.join("sluice.log"));
        Sluice {
            child: Some(child),
            addr,
            admin,
            dir,
        }
    }

    /// Waits for `/ready` to answer 200 (20 s at most).
    pub async fn wait_ready(&mut self) {
        self.wait_ok("/ready").await
    }

    /// Waits for GET `path` on the admin API to answer 200 (20 s at most).
    pub async fn wait_ok(&mut self, path: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let url = self.admin_url(path);
        let client = client();
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "sluice exited ({status}) before {url} answered 200:\n{}",
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
                "{url} did not answer 200 within 20 s:\n{}",
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
        self.wait_metric_within(prefix, want, Duration::from_secs(5))
            .await
    }

    /// Waits (at most `wait`) until the first series starting with `prefix` has value `want`.
    pub async fn wait_metric_within(&self, prefix: &str, want: f64, wait: Duration) {
        let deadline = Instant::now() + wait;
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

/// A sluice with one plain listener (`listener_extra` added to its settings, e.g.
/// `", max_connections: 5"`) whose one route runs the headers plugin as `tag` (it sets
/// `x-tag: yes` on responses) in front of a demo upstream. Needs `make wasm`.
pub async fn start_tagged(listener_extra: &str) -> Sluice {
    let up = upstream("backend").await;
    let dir = temp_dir("tagged");
    std::fs::copy(
        target_dir().join("wasm32-wasip1/plugin/sluice_plugin_headers.wasm"),
        dir.join("tag.wasm"),
    )
    .expect("build the plugins with `make wasm` first");
    let config = format!(
        "server: {{ threads: 2, grace_period_seconds: 1 }}\n\
         listeners: [{{ name: public, address: '{{LISTEN}}'{listener_extra} }}]\n\
         admin: {{ address: '{{ADMIN}}' }}\n\
         upstreams:\n  backend: {{ endpoints: ['{up}'] }}\n\
         routes:\n  - {{ name: all, upstream: backend, plugins: [tag] }}\n\
         plugins:\n  tag: {{ path: tag.wasm, config: {{ rules: [{{ response: {{ set: {{ x-tag: yes }} }} }}] }} }}\n"
    );
    Sluice::start_in(&config, dir).await
}

/// Closed-loop load: `clients` clients each sending `GET url` one after another for `secs`.
/// Returns every request's latency, sorted; fails on an error or a status other than 200.
pub async fn closed_loop(url: String, clients: usize, secs: u64) -> Vec<Duration> {
    let until = Instant::now() + Duration::from_secs(secs);
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (c, url) = (client(), url.clone());
            tokio::spawn(async move {
                let mut lat = Vec::new();
                while Instant::now() < until {
                    let t = Instant::now();
                    let r = c.get(&url).send().await.expect("request failed");
                    assert_eq!(r.status(), 200, "{url}");
                    r.bytes().await.expect("body failed");
                    lat.push(t.elapsed());
                }
                lat
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort();
    all
}

/// The `p` quantile (0..=1) of sorted latencies.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

/// A `redis-server` (or `redis-sentinel`) on a port of 127.0.0.1, killed when dropped. Its
/// output goes to `redis-PORT.log` in its directory.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    program: String,
    args: Vec<String>,
    /// How the test talks to it (plain, or TLS with the test's CA).
    client: redis::Client,
}

impl RedisServer {
    /// On a free port, in a new temp dir, without persistence.
    pub fn start() -> RedisServer {
        RedisServer::start_on(free_port(), temp_dir("redis"))
    }

    /// On `port`, with `dir` as its working directory, without persistence; waits until it
    /// answers PING.
    pub fn start_on(port: u16, dir: PathBuf) -> RedisServer {
        let args = [
            "--port",
            &port.to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        .map(String::from)
        .to_vec();
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}/0")).unwrap();
        RedisServer::spawn("redis-server", port, dir, args, client).ready()
    }

    /// Starts `program` (`redis-server` or `redis-sentinel`) with `args` (bound to
    /// 127.0.0.1, in `dir`) without waiting for it; `client` reaches it on `port`.
    pub fn spawn(
        program: &str,
        port: u16,
        dir: PathBuf,
        args: Vec<String>,
        client: redis::Client,
    ) -> RedisServer {
        let mut r = RedisServer {
            child: None,
            port,
            dir,
            program: program.into(),
            args,
            client,
        };
        r.launch();
        r
    }

    fn launch(&mut self) {
        std::fs::create_dir_all(&self.dir).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let child = Command::new(&self.program)
            .args(&self.args)
            .args(["--bind", "127.0.0.1", "--dir"])
            .arg(&self.dir)
            .current_dir(&self.dir)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {}: {e} (Debian's redis-server and redis-sentinel packages; \
                     `make test-deps` installs them)",
                    self.program
                )
            });
        self.child = Some(child);
    }

    /// Its output so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join(format!("redis-{}.log", self.port))
    }

    /// Waits until it answers PING (10 s at most).
    pub fn ready(self) -> RedisServer {
        let deadline = Instant::now() + Duration::from_secs(10);
        while let Err(e) = self.command(&[b"PING"]) {
            assert!(
                Instant::now() < deadline,
                "{} did not answer on {}: {e}\n{}",
                self.program,
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Runs one command on a new connection.
    pub fn command(&self, args: &[&[u8]]) -> redis::RedisResult<redis::Value> {
        let mut c = self
            .client
            .get_connection_with_timeout(Duration::from_secs(5))?;
        c.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut cmd = redis::cmd(std::str::from_utf8(args[0]).unwrap());
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query(&mut c)
    }

    /// The keys matching `pattern`.
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        match self.command(&[b"KEYS", pattern.as_bytes()]).unwrap() {
            redis::Value::Array(items) => items
                .into_iter()
                .map(|i| match i {
                    redis::Value::BulkString(k) => String::from_utf8_lossy(&k).into_owned(),
                    other => panic!("a key {other:?}"),
                })
                .collect(),
            other => panic!("KEYS answered {other:?}"),
        }
    }

    /// Kills the server at once (no shutdown: as a crash or a lost node would).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port with the same arguments and directory (a server
    /// without persistence comes back empty).
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.command(&[b"PING"]).is_err() {
            assert!(
                Instant::now() < deadline,
                "{} did not answer on {} after a restart\n{}",
                self.program,
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A CA and a certificate for 127.0.0.1 it signed, as PEM: (CA, certificate, key).
pub fn tls_material() -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "sluice test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    (ca.pem(), cert.pem(), key.serialize_pem())
}

/// `redis-server` with TLS only (`--port 0`), its certificate signed by `ca`.
pub fn start_tls_redis(ca: &str, cert: &str, key: &str) -> RedisServer {
    let dir = temp_dir("redis-tls");
    for (name, text) in [("ca.pem", ca), ("server.pem", cert), ("server.key", key)] {
        std::fs::write(dir.join(name), text).unwrap();
    }
    let port = free_port();
    let path = |f: &str| dir.join(f).display().to_string();
    let args = vec![
        "--port".into(),
        "0".into(),
        "--tls-port".into(),
        port.to_string(),
        "--tls-cert-file".into(),
        path("server.pem"),
        "--tls-key-file".into(),
        path("server.key"),
        "--tls-ca-cert-file".into(),
        path("ca.pem"),
        "--tls-auth-clients".into(),
        "no".into(),
        "--save".into(),
        String::new(),
        "--appendonly".into(),
        "no".into(),
    ];
    let client = redis::Client::build_with_tls(
        format!("rediss://127.0.0.1:{port}/0"),
        redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(ca.as_bytes().to_vec()),
        },
    )
    .unwrap();
    RedisServer::spawn("redis-server", port, dir, args, client).ready()
}

/// A plain `redis-server` on `port` in `dir` with `extra` arguments, not waited for.
pub fn spawn_redis(port: u16, dir: PathBuf, extra: &[&str]) -> RedisServer {
    let mut args: Vec<String> = vec!["--port".into(), port.to_string()];
    args.extend(extra.iter().map(|a| a.to_string()));
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/0")).unwrap();
    RedisServer::spawn("redis-server", port, dir, args, client)
}

/// Polls `check` every 50 ms for `secs` seconds; panics with `what` if it never holds.
pub fn wait_until(secs: u64, what: &str, mut check: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        match check() {
            Ok(()) => return,
            Err(e) if Instant::now() > deadline => panic!("{what}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

pub fn redis_text(v: redis::RedisResult<redis::Value>) -> Result<String, String> {
    match v {
        Ok(redis::Value::BulkString(b)) => Ok(String::from_utf8_lossy(&b).into_owned()),
        Ok(redis::Value::SimpleString(s)) => Ok(s),
        Ok(other) => Ok(format!("{other:?}")),
        Err(e) => Err(e.to_string()),
    }
}

/// One master, one replica and `n` sentinels (`mymaster`, quorum 2, the master down after 1 s
/// without an answer) on loopback, started in parallel; ready when the sentinels can fail
/// over and the replica is in sync.
pub struct RedisSentinels {
    pub master: RedisServer,
    pub replica: RedisServer,
    pub sentinels: Vec<RedisServer>,
}

impl RedisSentinels {
    pub fn start(n: usize) -> RedisSentinels {
        let dir = temp_dir("sentinel");
        let (m, r) = (free_port(), free_port());
        let no_persistence = ["--save", "", "--appendonly", "no"];
        let master = spawn_redis(m, dir.join("master"), &no_persistence);
        let master_port = m.to_string();
        let mut replica_args = no_persistence.to_vec();
        replica_args.extend(["--replicaof", "127.0.0.1", &master_port]);
        let replica = spawn_redis(r, dir.join("replica"), &replica_args);
        let sentinels: Vec<RedisServer> = (0..n)
            .map(|i| {
                let port = free_port();
                let sdir = dir.join(format!("sentinel{i}"));
                std::fs::create_dir_all(&sdir).unwrap();
                let conf = sdir.join("sentinel.conf");
                std::fs::write(
                    &conf,
                    format!(
                        "port {port}\n\
                         sentinel monitor mymaster 127.0.0.1 {m} {}\n\
                         sentinel down-after-milliseconds mymaster 1000\n\
                         sentinel failover-timeout mymaster 10000\n",
                        n.min(2)
                    ),
                )
                .unwrap();
                let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
                RedisServer::spawn(
                    "redis-sentinel",
                    port,
                    sdir,
                    vec![conf.display().to_string()],
                    client,
                )
            })
            .collect();
        for s in [&master, &replica].into_iter().chain(&sentinels) {
            wait_until(10, "a server answers", || {
                s.command(&[b"PING"]).map(drop).map_err(|e| e.to_string())
            });
        }
        let started = Instant::now();
        wait_until(20, "the sentinels reach their quorum", || {
            for s in &sentinels {
                redis_text(s.command(&[b"SENTINEL", b"CKQUORUM", b"mymaster"]))?;
                let replicas = redis_text(s.command(&[b"SENTINEL", b"REPLICAS", b"mymaster"]))?;
                if !replicas.contains(&r.to_string()) {
                    return Err(format!("no replica yet: {replicas}"));
                }
            }
            let info = redis_text(replica.command(&[b"INFO", b"replication"]))?;
            if !info.contains("master_link_status:up") {
                return Err(info);
            }
            Ok(())
        });
        eprintln!("sentinels ready in {:?}", started.elapsed());
        RedisSentinels {
            master,
            replica,
            sentinels,
        }
    }

    /// `sentinel: { … }` for `shared_data`.
    pub fn shared_data(&self) -> String {
        let urls: Vec<String> = self
            .sentinels
            .iter()
            .map(|s| format!("'redis://127.0.0.1:{}'", s.port()))
            .collect();
        format!(
            "sentinel: {{ master: mymaster, urls: [{}] }}",
            urls.join(", ")
        )
    }
}

/// A Redis Cluster of `n` masters without replicas on loopback (each node's writes on disk
/// at once, so a restarted node comes back with its keys), joined with `redis-cli --cluster
/// create`; ready when every node says `cluster_state:ok`.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start(n: usize) -> RedisCluster {
        let dir = temp_dir("cluster");
        let nodes: Vec<RedisServer> = (0..n)
            .map(|i| {
                let (port, bus) = (free_port(), free_port());
                let ndir = dir.join(format!("node{i}"));
                std::fs::create_dir_all(&ndir).unwrap();
                let bus = bus.to_string();
                spawn_redis(
                    port,
                    ndir,
                    &[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        "--cluster-port",
                        &bus,
                        "--cluster-node-timeout",
                        "1000",
                        "--save",
                        "",
                        "--appendonly",
                        "yes",
                        "--appendfsync",
                        "always",
                    ],
                )
            })
            .collect();
        for n in &nodes {
            wait_until(10, "a node answers", || {
                n.command(&[b"PING"]).map(drop).map_err(|e| e.to_string())
            });
        }
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(nodes.iter().map(|n| n.addr().to_string()))
            .arg("--cluster-yes")
            .output()
            .expect("run redis-cli (Debian's redis-tools package; `make test-deps` installs it)");
        assert!(out.status.success(), "redis-cli --cluster create: {out:?}");
        RedisCluster::wait_ok(&nodes);
        RedisCluster { nodes }
    }

    /// Waits (20 s at most) until every node says `cluster_state:ok`.
    pub fn wait_ok(nodes: &[RedisServer]) {
        wait_until(20, "the cluster's state is ok", || {
            for n in nodes {
                let info = redis_text(n.command(&[b"CLUSTER", b"INFO"]))?;
                if !info.contains("cluster_state:ok") {
                    return Err(info);
                }
            }
            Ok(())
        })
    }

    /// `cluster: { … }` for `shared_data`.
    pub fn shared_data(&self) -> String {
        let urls: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("'redis://{}'", n.addr()))
            .collect();
        format!("cluster: {{ urls: [{}] }}", urls.join(", "))
    }
}

/// `template` with `{LISTEN}`/`{ADMIN}` filled with `proxy`'s addresses (to rewrite a running
/// sluice's config file).
pub fn fill(template: &str, proxy: &Sluice) -> String {
    template
        .replace("{LISTEN}", &proxy.addr.to_string())
        .replace("{ADMIN}", &proxy.admin.to_string())
}

/// The version that answered a request (its one `x-version` header, on a 200), or what went
/// wrong.
pub async fn version_of(req: reqwest::RequestBuilder) -> Result<String, String> {
    let r = req
        .send()
        .await
        .map_err(|e| format!("request error: {e}"))?;
    let status = r.status().as_u16();
    let tags: Vec<String> = r
        .headers()
        .get_all("x-version")
        .iter()
        .map(|v| v.to_str().unwrap_or("?").to_string())
        .collect();
    r.bytes().await.map_err(|e| format!("body error: {e}"))?;
    match (status, tags.as_slice()) {
        (200, [one]) => Ok(one.clone()),
        _ => Err(format!("status {status}, x-version {tags:?}")),
    }
}

/// Steady load: `clients` tasks sending GETs until stopped. Every response must be a 200
/// carrying exactly one `x-version` among `versions` (any, if empty); anything else is
/// recorded as a failure.
pub struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    counts: std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<String, u64>>>,
    /// What went wrong, one entry per failed request.
    pub failures: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Load {
    /// Starts the clients.
    pub fn start(url: String, clients: usize, versions: &'static [&'static str]) -> Load {
        use std::sync::atomic::AtomicBool;
        use std::sync::{Arc, Mutex};
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(Mutex::new(std::collections::BTreeMap::new()));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let tasks = (0..clients)
            .map(|_| {
                let (stop, counts, failures, url) =
                    (stop.clone(), counts.clone(), failures.clone(), url.clone());
                let c = client();
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let outcome = match version_of(c.get(&url)).await {
                            Ok(v) if !versions.is_empty() && !versions.contains(&v.as_str()) => {
                                Err(format!("x-version {v:?}"))
                            }
                            other => other,
                        };
                        match outcome {
                            Ok(v) => *counts.lock().unwrap().entry(v).or_insert(0) += 1,
                            Err(e) => failures.lock().unwrap().push(e),
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            tasks,
            counts,
            failures,
        }
    }

    /// Answers so far, by version.
    pub fn counts(&self) -> std::collections::BTreeMap<String, u64> {
        self.counts.lock().unwrap().clone()
    }

    /// Waits until `n` more answers were counted (30 s at most).
    pub async fn wait_answers(&self, n: u64) {
        let start: u64 = self.counts().values().sum();
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.counts().values().sum::<u64>() < start + n {
            assert!(Instant::now() < deadline, "load stalled");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops the clients; returns the answers by version, and the failures.
    pub async fn finish(self) -> (std::collections::BTreeMap<String, u64>, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        let counts = self.counts.lock().unwrap().clone();
        let failures = self.failures.lock().unwrap().clone();
        (counts, failures)
    }
}

/// A built plugin from the target directory (`wasm32-wasip1/<profile>/<file.wasm>`).
pub fn built(file: &str) -> Vec<u8> {
    let path = target_dir().join(file);
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}: build the plugins with `make wasm` first",
            path.display()
        )
    })
}
