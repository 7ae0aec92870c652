//! `oci:` — how `oci:` plugins are pulled: the Docker `config.json` holding registry
//! credentials. The file is read when the config is loaded, so a reload reads it again.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::ConfigError;
use crate::source::credentials::DockerConfig;

/// `oci:` as written.
#[derive(Debug, Clone, Default, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OciFile {
    /// A Docker `config.json` (e.g. the `.dockerconfigjson` key of a Kubernetes
    /// `kubernetes.io/dockerconfigjson` Secret) with registry credentials in `auths`; relative
    /// to the config file. Default: `$DOCKER_CONFIG/config.json`, else
    /// `~/.docker/config.json`, if it exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_file: Option<PathBuf>,
}

/// Validated `oci:`.
#[derive(Debug, Clone, Default)]
pub struct OciSettings {
    /// The `config.json` read: the one named by `credentials_file`, else the default one if it
    /// exists and could be read; `None`: no credentials from a file.
    pub docker_config: Option<Arc<DockerConfig>>,
}

impl OciFile {
    pub(super) fn validate(&self, base_dir: &Path, errors: &mut Vec<ConfigError>) -> OciSettings {
        let Some(file) = &self.credentials_file else {
            return OciSettings {
                docker_config: DockerConfig::load_default().map(Arc::new),
            };
        };
        if file.as_os_str().is_empty() {
            errors.push(ConfigError::invalid(
                "oci.credentials_file",
                "is empty; give the path of a Docker config.json",
            ));
            return OciSettings::default();
        }
        let path = base_dir.join(file);
        match DockerConfig::load(&path) {
            Ok(c) => OciSettings {
                docker_config: Some(Arc::new(c)),
            },
            Err(e) => {
                errors.push(ConfigError::invalid(
                    "oci.credentials_file",
                    format!("{}: {e}", path.display()),
                ));
                OciSettings::default()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validate(file: Option<&str>, dir: &Path) -> Result<OciSettings, Vec<ConfigError>> {
        let mut errors = Vec::new();
        let s = OciFile {
            credentials_file: file.map(PathBuf::from),
        }
        .validate(dir, &mut errors);
        if errors.is_empty() {
            Ok(s)
        } else {
            Err(errors)
        }
    }

    #[test]
    fn the_credentials_file_is_read_relative_to_the_config() {
        let dir = std::env::temp_dir().join(format!("sluice-oci-config-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("secret")).unwrap();
        std::fs::write(
            dir.join("secret/.dockerconfigjson"),
            r#"{"auths":{"ghcr.io":{"username":"bot","password":"pat"}}}"#,
        )
        .unwrap();
        let s = validate(Some("secret/.dockerconfigjson"), &dir).unwrap();
        let docker = s.docker_config.unwrap();
        assert_eq!(docker.path, dir.join("secret/.dockerconfigjson"));
        assert_eq!(
            docker.credentials_for("ghcr.io").unwrap().basic,
            Some(("bot".into(), "pat".into()))
        );

        std::fs::write(dir.join("bad.json"), "{ nope").unwrap();
        for (file, why) in [
            ("missing.json", "cannot read it"),
            ("bad.json", "not a Docker config.json"),
            ("", "is empty"),
        ] {
            let errors = validate(Some(file), &dir).unwrap_err();
            assert_eq!(errors.len(), 1);
            let text = errors[0].to_string();
            assert!(
                text.starts_with("oci.credentials_file: ") && text.contains(why),
                "{file}: {text}"
            );
            if !file.is_empty() {
                assert!(
                    text.contains(&dir.join(file).display().to_string()),
                    "{text}"
                );
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
