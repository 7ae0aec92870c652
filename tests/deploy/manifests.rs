// ---------------------------------------------------------------------------------------------
// Rendering and validating

use super::*;

/// What a kustomization renders to.
pub(super) struct Rendered {
    /// The directory, relative to the workspace.
    pub(super) dir: String,
    /// The rendered text.
    pub(super) text: String,
    docs: Vec<Value>,
}

pub(super) fn render(dir: &str) -> Rendered {
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
    pub(super) fn find(&self, kind: &str, name: &str) -> &Value {
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
    pub(super) fn validate(&self) {
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
pub(super) struct Deployed {
    /// The sluice container.
    pub(super) container: Value,
    pub(super) pod: Value,
    service: Value,
    /// The ConfigMap's sluice.yaml, parsed.
    pub(super) config: Value,
    /// Where the container reads its config (`--config` in its args).
    pub(super) config_path: String,
    pub(super) args: Vec<String>,
    pub(super) annotations: Value,
    termination_grace: u64,
    pre_stop_sleep: u64,
}

impl Deployed {
    pub(super) fn of(r: &Rendered) -> Deployed {
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

    pub(super) fn listener_port(&self) -> u16 {
        port_of(str_at(&self.config, "listeners.0.address"))
    }

    pub(super) fn admin_port(&self) -> u16 {
        port_of(str_at(&self.config, "admin.address"))
    }

    pub(super) fn grace_period(&self) -> u64 {
        opt(&self.config, "server.grace_period_seconds")
            .and_then(Value::as_u64)
            .unwrap_or(30)
    }

    pub(super) fn probe_path(&self, probe: &str) -> String {
        str_at(&self.container, &format!("{probe}.httpGet.path")).to_string()
    }

    /// Paths mounted from emptyDir volumes (writable under a read-only root).
    pub(super) fn writable_mounts(&self) -> Vec<String> {
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
        // Each file a plugin's config reads is in a mounted Secret, mounted as a directory
        // (the kubelet updates those, and sluice reloads).
        for file in secret_files(&self.config) {
            let (dir_of_file, _) = file.rsplit_once('/').unwrap();
            let mount = seq(&self.container, "volumeMounts")
                .iter()
                .find(|m| str_at(m, "mountPath") == dir_of_file)
                .unwrap_or_else(|| panic!("{dir}: ${{file:{file}}} is in no mounted volume"));
            assert!(opt(mount, "subPath").is_none(), "{dir}: {file}: no subPath");
            let volume = seq(&self.pod, "volumes")
                .iter()
                .find(|v| v["name"] == mount["name"])
                .unwrap();
            assert!(
                opt(volume, "secret.secretName").is_some(),
                "{dir}: ${{file:{file}}} must come from a Secret"
            );
        }
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
// Tests

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
