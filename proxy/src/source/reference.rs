//! OCI references as the config writes them: `[oci://]REGISTRY/REPOSITORY[:TAG][@sha256:DIGEST]`.
//!
//! The registry is always explicit: a bare `NAME[:TAG]` is refused (Docker would read it as
//! `docker.io/library/NAME`; a plugin runs inside the proxy, so where it comes from is never
//! guessed, and the first component of `host/repo` is always the registry, as it was before).
//! Docker Hub is spelled as Docker does: `docker.io`, `index.docker.io` (and
//! `registry-1.docker.io`) all mean the registry `registry-1.docker.io`, where a
//! one-component repository is an official image: `docker.io/foo` is
//! `registry-1.docker.io/library/foo`.

use super::cache::is_sha256_hex;

/// A parsed OCI reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OciReference {
    /// `host[:port]`.
    pub registry: String,
    /// Repository path (`plugins/hello`).
    pub repository: String,
    /// Tag (`latest` when neither a tag nor a digest was given).
    pub tag: Option<String>,
    /// Manifest digest, `sha256:<64 hex>` (lower case).
    pub digest: Option<String>,
}

impl std::fmt::Display for OciReference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for OciReference {
    type Err = String;

    /// Parses `[oci://]REGISTRY/REPOSITORY[:TAG][@sha256:DIGEST]`.
    fn from_str(s: &str) -> Result<OciReference, String> {
        const FORM: &str = "REGISTRY/REPOSITORY[:TAG][@sha256:DIGEST]";
        let s = s.strip_prefix("oci://").unwrap_or(s);
        if s.is_empty() {
            return Err(format!("is empty; the form is {FORM}"));
        }
        if let Some(c) = s.chars().find(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!("{s:?} contains {c:?}; the form is {FORM}"));
        }
        let Some((registry, rest)) = s.split_once('/') else {
            let name = s.split(['@', ':']).next().unwrap_or(s);
            return Err(format!(
                "{s:?} names no registry; the form is {FORM}: the registry is always explicit \
                 (e.g. ghcr.io/org/plugin:1.0; for Docker Hub, docker.io/library/{name})"
            ));
        };
        check_registry(registry).map_err(|m| format!("registry {registry:?} {m}"))?;
        let (name, digest) = match rest.split_once('@') {
            Some((n, d)) => {
                let hexpart = d.strip_prefix("sha256:").ok_or_else(|| {
                    format!("digest {d:?} is not sha256:<64 hex digits> (only sha256 is supported)")
                })?;
                let lower = hexpart.to_ascii_lowercase();
                if !is_sha256_hex(&lower) {
                    return Err(format!("digest {d:?} is not sha256:<64 hex digits>"));
                }
                (n, Some(format!("sha256:{lower}")))
            }
            None => (rest, None),
        };
        let (repository, tag) = match name.split_once(':') {
            Some((r, t)) => (r, Some(t)),
            None => (name, None),
        };
        check_repository(repository).map_err(|m| format!("repository {repository:?} {m}"))?;
        if let Some(t) = tag {
            check_tag(t).map_err(|m| format!("tag {t:?} {m}"))?;
        }
        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_string()),
            (None, Some(_)) => None,
            (None, None) => Some("latest".to_string()),
        };
        let (registry, repository) = normalize_docker_hub(registry, repository);
        Ok(OciReference {
            registry,
            repository,
            tag,
            digest,
        })
    }
}

impl OciReference {
    /// What to ask the registry's manifest endpoint for: the digest if pinned, else the tag.
    pub fn manifest_ref(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }
}

/// The host that serves Docker Hub's distribution API.
pub const DOCKER_HUB_REGISTRY: &str = "registry-1.docker.io";

/// Docker Hub as Docker names it: `docker.io`, `index.docker.io` and `registry-1.docker.io`
/// (any case, no port) are [`DOCKER_HUB_REGISTRY`], and a one-component repository there is an
/// official image, under `library/`.
fn normalize_docker_hub(registry: &str, repository: &str) -> (String, String) {
    let hub = ["docker.io", "index.docker.io", DOCKER_HUB_REGISTRY]
        .iter()
        .any(|h| registry.eq_ignore_ascii_case(h));
    if !hub {
        return (registry.to_string(), repository.to_string());
    }
    let repository = if repository.contains('/') {
        repository.to_string()
    } else {
        format!("library/{repository}")
    };
    (DOCKER_HUB_REGISTRY.to_string(), repository)
}

fn check_registry(registry: &str) -> Result<(), String> {
    let (host, port) = if let Some(rest) = registry.strip_prefix('[') {
        let (ip, after) = rest
            .split_once(']')
            .ok_or("has an unclosed '['".to_string())?;
        ip.parse::<std::net::Ipv6Addr>()
            .map_err(|_| format!("has an invalid IPv6 address {ip:?}"))?;
        match after {
            "" => (None, None),
            p => (
                None,
                Some(
                    p.strip_prefix(':')
                        .ok_or("has junk after ']'".to_string())?,
                ),
            ),
        }
    } else {
        match registry.split_once(':') {
            Some((h, p)) => (Some(h), Some(p)),
            None => (Some(registry), None),
        }
    };
    if let Some(host) = host {
        if host.is_empty() || host.len() > 253 {
            return Err("is not a host name".into());
        }
        for label in host.split('.') {
            let ok = !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-');
            if !ok {
                return Err("is not a host name (host[:port])".into());
            }
        }
    }
    if let Some(p) = port {
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) || p.parse::<u16>().is_err() {
            return Err(format!("has an invalid port {p:?}"));
        }
        if p.parse::<u16>() == Ok(0) {
            return Err("has port 0".into());
        }
    }
    Ok(())
}

/// Repository components: lower-case letters and digits, separated inside a component by
/// `.`, `_`, `__` or runs of `-` (the distribution spec's grammar).
fn check_repository(repo: &str) -> Result<(), String> {
    if repo.is_empty() {
        return Err("is empty".into());
    }
    if repo.len() > 255 {
        return Err("is longer than 255 characters".into());
    }
    for component in repo.split('/') {
        let b = component.as_bytes();
        let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
        let mut ok = !b.is_empty() && alnum(b[0]) && alnum(b[b.len() - 1]);
        let mut i = 0;
        while ok && i < b.len() {
            if alnum(b[i]) {
                i += 1;
                continue;
            }
            let start = i;
            while i < b.len() && !alnum(b[i]) {
                i += 1;
            }
            let sep = &component[start..i];
            ok = matches!(sep, "." | "_" | "__") || sep.bytes().all(|c| c == b'-');
        }
        if !ok {
            return Err(format!(
                "has an invalid component {component:?} (lower-case letters and digits, separated by '.', '_', '__' or '-')"
            ));
        }
    }
    Ok(())
}

fn check_tag(tag: &str) -> Result<(), String> {
    let b = tag.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err("is not a valid tag (letters, digits, '_', '.', '-'; at most 128)".into())
    }
}
