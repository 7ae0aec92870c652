// ---------------------------------------------------------------------------------------------
// Running a config as the container would

use super::*;

/// What cannot work outside a cluster, rewritten; everything else is left as the ConfigMap
/// has it.
pub(super) struct Rewrites<'a> {
    pub(super) upstream: SocketAddr,
    pub(super) dir: &'a Path,
    /// The local Redis for `shared_data.url`, if any.
    pub(super) redis: Option<SocketAddr>,
}

/// The manifests' config made runnable here: listener and admin on free loopback ports,
/// upstream endpoints on the demo upstream, image plugin paths to the built plugins, the admin
/// token file to one in `dir`, the Redis address to a local one. Returns the text
/// and the listener and admin addresses.
pub(super) fn runnable(config: &Value, rw: &Rewrites) -> (String, SocketAddr, SocketAddr) {
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
    // The Secret's files: each written in `dir/secrets` with its test value, and the
    // references pointed there.
    let mut text = serde_yaml::to_string(&c).unwrap();
    for file in secret_files(&c) {
        let name = file.rsplit('/').next().unwrap();
        let local = rw.dir.join("secrets").join(name);
        std::fs::create_dir_all(local.parent().unwrap()).unwrap();
        std::fs::write(&local, format!("{}\n", test_secret(&file))).unwrap();
        text = text.replace(
            &format!("${{file:{file}}}"),
            &format!("${{file:{}}}", local.display()),
        );
    }
    c = serde_yaml::from_str(&text).unwrap();
    if let Some(redis) = rw.redis {
        c["shared_data"]["url"] = Value::from(format!("redis://{redis}/0"));
    }
    (serde_yaml::to_string(&c).unwrap(), listen, admin)
}

/// The container's args with the config path replaced by `local`.
pub(super) fn mapped_args(args: &[String], container_path: &str, local: &Path) -> Vec<String> {
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
pub(super) fn mapped_env(docker: &Dockerfile, dir: &Path) -> Vec<(String, PathBuf)> {
    docker
        .env()
        .into_iter()
        .filter(|(_, v)| v.starts_with('/'))
        .map(|(k, v)| (k, dir.join(v.trim_start_matches('/'))))
        .collect()
}

/// A `sluice` started as a container would start it (its args and the image's ENV, in
/// `dir`), serving on `listen` and `admin`; killed when dropped.
pub(super) fn start_as_container(
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
    // The origin token comes from the Secret's file, never from the ConfigMap.
    let origin = "/etc/sluice/secrets/origin-token";
    if secret_files(&d.config).iter().any(|f| f == origin) {
        assert_eq!(
            echo_header(&echo, "x-origin-token"),
            Some(test_secret(origin).as_str()),
            "{echo}"
        );
        let shown = c
            .get(format!("http://{admin}/config"))
            .bearer_auth("deploy-test-token-0123456789")
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            !shown.contains(&test_secret(origin)),
            "/config shows a secret: {shown}"
        );
    }
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
pub(super) fn check(what: &str, config: &Value, rw: &Rewrites, env: &[(String, PathBuf)]) {
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
pub(super) fn without(v: &Value, key: &str) -> Value {
    let mut m: Mapping = v.as_mapping().unwrap().clone();
    m.remove(key);
    Value::Mapping(m)
}

// ---------------------------------------------------------------------------------------------
// A registry for the oci: variant

/// Debian's `docker-registry` on a free loopback port (as tests/sources/ runs it).
pub(super) struct Registry {
    child: Child,
    addr: String,
}

impl Registry {
    pub(super) async fn start(dir: &Path) -> Registry {
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
