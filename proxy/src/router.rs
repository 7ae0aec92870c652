//! Route matching: ordered routes, first match wins.

use std::collections::HashMap;
use std::sync::Arc;

use http::Method;

use crate::config::{HostMatch, Route};
use crate::metrics::RouteMetrics;
use crate::rollout::Rollout;
use crate::upstream::Pool;
use crate::wasm::plugin::Plugin;

/// A route ready to serve.
pub struct RouteEntry {
    /// Its name.
    pub name: String,
    host: Option<HostMatch>,
    path_prefix: String,
    methods: Vec<Method>,
    /// The pool that serves it.
    pub pool: Arc<Pool>,
    /// The plugin chain, in request order (the stable version of a plugin under rollout).
    pub plugins: Vec<Arc<Plugin>>,
    /// The chain's plugins under rollout, by position: each request picks its version.
    pub rollouts: Vec<(usize, Arc<Rollout>)>,
    /// Metric handles.
    pub metrics: RouteMetrics,
}

/// All routes of one config.
pub struct Router {
    routes: Vec<RouteEntry>,
}

impl Router {
    /// Builds the router; `pools` must hold every upstream the routes name.
    pub fn new(
        routes: &[Route],
        pools: &[Arc<Pool>],
        plugins: &HashMap<String, Arc<Plugin>>,
        rollouts: &HashMap<String, Arc<Rollout>>,
    ) -> Router {
        let routes = routes
            .iter()
            .map(|r| RouteEntry {
                name: r.name.clone(),
                host: r.host.clone(),
                path_prefix: r.path_prefix.clone(),
                methods: r.methods.clone(),
                pool: pools
                    .iter()
                    .find(|p| p.name == r.upstream)
                    .expect("validated config: route upstream exists")
                    .clone(),
                plugins: r
                    .plugins
                    .iter()
                    .map(|p| {
                        plugins
                            .get(p)
                            .expect("validated config: plugin exists")
                            .clone()
                    })
                    .collect(),
                rollouts: r
                    .plugins
                    .iter()
                    .enumerate()
                    .filter_map(|(i, p)| Some((i, rollouts.get(p)?.clone())))
                    .collect(),
                metrics: RouteMetrics::new(&r.name),
            })
            .collect();
        Router { routes }
    }

    /// The index of the first route matching; `host` is without port.
    pub fn find(&self, host: Option<&str>, path: &str, method: &Method) -> Option<usize> {
        self.routes.iter().position(|r| {
            r.host
                .as_ref()
                .is_none_or(|h| host.is_some_and(|host| h.matches(host)))
                && path.starts_with(r.path_prefix.as_str())
                && (r.methods.is_empty() || r.methods.contains(method))
        })
    }

    /// The route at `idx`.
    pub fn route(&self, idx: usize) -> &RouteEntry {
        &self.routes[idx]
    }
}

/// The host a request is for, without port: the `Host` header, else the URI's authority
/// (HTTP/2 `:authority`).
pub fn request_host(req: &pingora::http::RequestHeader) -> Option<&str> {
    let raw = match req.headers.get(http::header::HOST) {
        Some(v) => v.to_str().ok()?,
        None => req.uri.authority()?.as_str(),
    };
    Some(strip_port(raw))
}

fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::path::Path;

    fn router(yaml: &str) -> Router {
        let c = Config::from_yaml(yaml, Path::new(".")).expect("valid");
        let pools: Vec<_> = c.upstreams.iter().map(|u| Arc::new(Pool::new(u))).collect();
        Router::new(&c.routes, &pools, &HashMap::new(), &HashMap::new())
    }

    const BASE: &str = "listeners: [{name: l, address: '127.0.0.1:18080'}]\nupstreams: {a: {endpoints: ['127.0.0.1:1']}, b: {endpoints: ['127.0.0.1:2']}}\n";

    #[test]
    fn first_match_wins_by_host_path_and_method() {
        let r = router(&format!(
            "{BASE}routes:\n\
             - {{name: exact, match: {{host: api.example.com, path_prefix: /v1}}, upstream: a}}\n\
             - {{name: wild, match: {{host: '*.example.com'}}, upstream: b}}\n\
             - {{name: posts, match: {{path_prefix: /p, methods: [post]}}, upstream: a}}\n\
             - {{name: rest, upstream: b}}\n"
        ));
        let get = Method::GET;
        let name = |h, p, m| r.find(h, p, m).map(|i| r.route(i).name.as_str());
        assert_eq!(name(Some("API.example.com"), "/v1/x", &get), Some("exact"));
        assert_eq!(name(Some("api.example.com"), "/v2", &get), Some("wild"));
        assert_eq!(name(Some("example.com"), "/v1", &get), Some("rest"));
        assert_eq!(name(None, "/p", &Method::POST), Some("posts"));
        assert_eq!(name(None, "/p", &get), Some("rest"));
    }

    #[test]
    fn no_match_is_none() {
        let r = router(&format!(
            "{BASE}routes: [{{name: only, match: {{path_prefix: /api}}, upstream: a}}]\n"
        ));
        assert_eq!(r.find(Some("x"), "/other", &Method::GET), None);
    }

    #[test]
    fn ports_are_stripped() {
        assert_eq!(strip_port("example.com:8080"), "example.com");
        assert_eq!(strip_port("example.com"), "example.com");
        assert_eq!(strip_port("[::1]:80"), "::1");
    }
}
