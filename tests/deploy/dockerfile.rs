// ---------------------------------------------------------------------------------------------
// The Dockerfile

use super::*;

pub(super) struct Dockerfile {
    pub(super) text: String,
}

impl Dockerfile {
    pub(super) fn load() -> Dockerfile {
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

    pub(super) fn one(&self, keyword: &str) -> String {
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
    pub(super) fn env(&self) -> BTreeMap<String, String> {
        self.all("ENV")
            .iter()
            .flat_map(|e| e.split_whitespace().map(str::to_string).collect::<Vec<_>>())
            .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.into(), v.into())))
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Tests

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
