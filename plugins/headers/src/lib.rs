//! The headers plugin: adds, sets and removes request and response headers, with values that
//! may hold placeholders (`{request.id}`, `{route}`, `{request.header.NAME}`, …), each rule
//! optionally limited to path prefixes. See `README.md`.

pub mod config;
pub mod template;

use std::rc::Rc;

use sluice_sdk::{properties, Action, Error, HttpFilter, Plugin, Request, Response};

use config::{Changes, ConfigFile, Rule};
use template::{Part, Var};

/// The plugin: its rules.
pub struct Headers {
    rules: Vec<Rule>,
}

impl Plugin for Headers {
    type Config = ConfigFile;
    type Filter = HeadersFilter;

    fn new(config: ConfigFile) -> Result<Self, Error> {
        Ok(Headers {
            rules: config::validate(config)?,
        })
    }

    fn filter(plugin: &Rc<Self>) -> HeadersFilter {
        HeadersFilter {
            plugin: plugin.clone(),
            applies: Vec::new(),
            values: Values::default(),
        }
    }
}

/// One request: which rules apply, and the request facts response values may need.
pub struct HeadersFilter {
    plugin: Rc<Headers>,
    /// Per rule: whether it applies to this request.
    applies: Vec<bool>,
    /// Placeholder values read from the request, for the response's rules.
    values: Values,
}

/// The value of a placeholder, read from the request.
fn lookup(req: &Request, var: &Var) -> Result<Option<String>, Error> {
    Ok(match var {
        Var::RequestId => properties::request_id()?,
        Var::Route => properties::route_name()?,
        Var::Path => Some(req.path()?),
        Var::Method => Some(req.method()?),
        Var::Host => Some(req.authority()?),
        Var::Header(h) => req.header(h)?,
    })
}

/// Placeholder values, read once.
#[derive(Default)]
struct Values(Vec<(Var, Option<String>)>);

impl Values {
    /// Reads from `req` every placeholder of `changes` not read yet.
    fn read(&mut self, req: &Request, changes: &Changes) -> Result<(), Error> {
        for (_, t) in changes.set.iter().chain(&changes.add) {
            for part in &t.0 {
                if let Part::Var(v) = part {
                    if !self.0.iter().any(|(k, _)| k == v) {
                        let value = lookup(req, v)?;
                        self.0.push((v.clone(), value));
                    }
                }
            }
        }
        Ok(())
    }

    fn get(&self, v: &Var) -> Option<String> {
        self.0
            .iter()
            .find(|(k, _)| k == v)
            .and_then(|(_, x)| x.clone())
    }
}

/// Removals, then sets, then additions; a value whose placeholder has no value is skipped.
fn apply(
    changes: &Changes,
    values: &Values,
    target: &mut impl sluice_sdk::Headers,
) -> Result<(), Error> {
    for name in &changes.remove {
        target.remove_header(name)?;
    }
    for (name, t) in &changes.set {
        if let Some(v) = t.render(|var| values.get(var)) {
            target.set_header(name, v.as_bytes())?;
        }
    }
    for (name, t) in &changes.add {
        if let Some(v) = t.render(|var| values.get(var)) {
            target.add_header(name, v.as_bytes())?;
        }
    }
    Ok(())
}

impl HttpFilter for HeadersFilter {
    fn on_request_headers(&mut self, req: &mut Request) -> Result<Action, Error> {
        let path = req.path_only()?;
        let plugin = self.plugin.clone();
        self.applies = plugin.rules.iter().map(|r| r.applies(&path)).collect();
        let applying = || plugin.rules.iter().zip(&self.applies).filter(|(_, a)| **a);
        // Values for the response's rules come from the request as the client sent it: the
        // request is gone by the time the response comes.
        let mut for_response = Values::default();
        for (rule, _) in applying() {
            for_response.read(req, &rule.response)?;
        }
        for (rule, _) in applying() {
            // Each rule's placeholders see the request as the rules before it left it.
            let mut values = Values::default();
            values.read(req, &rule.request)?;
            apply(&rule.request, &values, req)?;
        }
        self.values = for_response;
        Ok(Action::Continue)
    }

    fn on_response_headers(&mut self, resp: &mut Response) -> Result<Action, Error> {
        for (rule, _) in self
            .plugin
            .rules
            .iter()
            .zip(&self.applies)
            .filter(|(_, a)| **a)
        {
            apply(&rule.response, &self.values, resp)?;
        }
        Ok(Action::Continue)
    }
}

sluice_sdk::plugin!(Headers);
// config.schema.json, checked by the host before on_configure.
sluice_sdk::config_schema!();
