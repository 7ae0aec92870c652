//! Validating `rollout:` of a plugin (its structs are in `plugin.rs`, beside the entry they
//! belong to) — a candidate version next to the stable one, the share of requests
//! it serves, what keeps a client on one version, and when it is rolled back by itself (see
//! `sluice_host::rollout` for how it runs, docs/operations.md for how to use it).
//!
//! The candidate is a plugin entry of its own (`path`/`url`/`oci` and any other field); the
//! fields it leaves out are the stable version's, except the binary's (`sha256`) and the VM
//! id: the candidate's VMs and shared-data namespace are its own (`VMID/candidate`) unless its
//! `vm_id` names the stable one.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use super::plugin::{PluginFile, RolloutFile, RolloutSpec};
use super::upstream::UpstreamFile;
use super::ConfigError;
use crate::rollout::{Mode, RollbackRule, RolloutSettings, Sticky};

impl RolloutFile {
    /// Validates the rollout of plugin `name`, whose own entry is `stable`.
    pub(super) fn validate(
        &self,
        name: &str,
        stable: &PluginFile,
        base: &Path,
        upstreams: &BTreeMap<String, UpstreamFile>,
        extra_hidden: &[String],
        errors: &mut Vec<ConfigError>,
    ) -> Option<Box<RolloutSpec>> {
        let field = format!("plugins.{name}.rollout");
        let before = errors.len();
        if self.candidate.rollout.is_some() {
            errors.push(ConfigError::invalid(
                format!("{field}.candidate.rollout"),
                "a candidate cannot have a rollout of its own",
            ));
        }
        let c = &self.candidate;
        let stable_vm_id = stable.vm_id.as_deref().unwrap_or(name);
        // What the candidate leaves out is stable's (not the binary's digest).
        let merged = PluginFile {
            path: c.path.clone(),
            url: c.url.clone(),
            oci: c.oci.clone(),
            sha256: c.sha256.clone(),
            signature: c.signature.clone().or_else(|| stable.signature.clone()),
            root_id: if c.root_id.is_empty() {
                stable.root_id.clone()
            } else {
                c.root_id.clone()
            },
            vm_id: Some(
                c.vm_id
                    .clone()
                    .unwrap_or_else(|| format!("{stable_vm_id}/candidate")),
            ),
            config: c.config.clone().or_else(|| stable.config.clone()),
            vm_config: c.vm_config.clone().or_else(|| stable.vm_config.clone()),
            expose: if c.expose.is_empty() {
                stable.expose.clone()
            } else {
                c.expose.clone()
            },
            allowed_upstreams: if c.allowed_upstreams.is_empty() {
                stable.allowed_upstreams.clone()
            } else {
                c.allowed_upstreams.clone()
            },
            limits: c.limits.clone().or_else(|| stable.limits.clone()),
            on_error: c.on_error.clone().or_else(|| stable.on_error.clone()),
            vms: c.vms.or(stable.vms),
            rollout: None,
        };
        let mut candidate_errors = Vec::new();
        let candidate = merged.validate_as(
            name,
            &format!("{field}.candidate"),
            base,
            upstreams,
            extra_hidden,
            &mut candidate_errors,
        );
        errors.extend(candidate_errors);
        let shadow = match self.mode.as_deref() {
            None | Some("canary") => false,
            Some("shadow") => true,
            Some(other) => {
                errors.push(ConfigError::invalid(
                    format!("{field}.mode"),
                    format!("{other:?} is not a rollout mode; canary or shadow"),
                ));
                false
            }
        };
        if shadow && self.sticky_on.is_some() {
            errors.push(ConfigError::invalid(
                format!("{field}.sticky_on"),
                "is for mode: canary (shadow replays an even share of requests)",
            ));
        }
        if !shadow && (self.shadow_callouts || self.shadow_concurrency.is_some()) {
            errors.push(ConfigError::invalid(
                field.clone(),
                "shadow_callouts and shadow_concurrency are for mode: shadow",
            ));
        }
        let concurrency = self.shadow_concurrency.unwrap_or(4);
        if !(1..=1024).contains(&concurrency) {
            errors.push(ConfigError::invalid(
                format!("{field}.shadow_concurrency"),
                format!("{concurrency} must be between 1 and 1024"),
            ));
        }
        let weight = self
            .weight_percent
            .unwrap_or(if shadow { 100.0 } else { 0.0 });
        let per_mille = (weight * 10.0).round();
        if !(0.0..=100.0).contains(&weight) || (weight * 10.0 - per_mille).abs() > 1e-6 {
            errors.push(ConfigError::invalid(
                format!("{field}.weight_percent"),
                format!("{weight} must be between 0 and 100, in steps of 0.1"),
            ));
        }
        let sticky = match self.sticky_on.as_deref() {
            None | Some("client_address") => Sticky::ClientAddress,
            Some(s) => match s.strip_prefix("header:") {
                Some(h)
                    if !h.is_empty()
                        && h.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b)) =>
                {
                    Sticky::Header(h.to_ascii_lowercase())
                }
                _ => {
                    errors.push(ConfigError::invalid(
                        format!("{field}.sticky_on"),
                        format!("{s:?} must be client_address or header:NAME"),
                    ));
                    Sticky::ClientAddress
                }
            },
        };
        let rollback = self.rollback.as_ref().map(|r| {
            let f = format!("{field}.rollback");
            if !(0.0..=1.0).contains(&r.max_error_rate) {
                errors.push(ConfigError::invalid(
                    format!("{f}.max_error_rate"),
                    format!("{} must be between 0 and 1 (0.01 = 1 %)", r.max_error_rate),
                ));
            }
            if r.min_requests == Some(0) {
                errors.push(ConfigError::invalid(
                    format!("{f}.min_requests"),
                    "must be at least 1",
                ));
            }
            let window = r.window_seconds.unwrap_or(60);
            if !(1..=86_400).contains(&window) {
                errors.push(ConfigError::invalid(
                    format!("{f}.window_seconds"),
                    format!("{window} must be between 1 and 86400"),
                ));
            }
            RollbackRule {
                max_error_rate: r.max_error_rate,
                min_requests: r.min_requests.unwrap_or(100),
                window: Duration::from_secs(window),
                count_5xx: r.count_5xx,
            }
        });
        if errors.len() > before {
            return None;
        }
        let mut candidate = candidate?;
        if shadow && !self.shadow_callouts {
            // Its callouts are refused: no upstream is allowed.
            candidate.allowed_upstreams.clear();
        }
        let per_mille = per_mille as u32;
        Some(Box::new(RolloutSpec {
            candidate,
            settings: RolloutSettings {
                mode: if shadow {
                    Mode::Shadow {
                        per_mille,
                        concurrency,
                    }
                } else {
                    Mode::Canary { per_mille }
                },
                sticky,
                rollback,
            },
        }))
    }
}
