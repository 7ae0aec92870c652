//! Mode `visible`: reports which request headers and properties the plugin can see, then
//! tries to overwrite `authorization` with a raw host call.

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;

use crate::raw;
use crate::util;

pub struct Visible;

impl Visible {
    /// Adds request header `name` with the value of request header `source`, or `absent`.
    fn report_header(&self, source: &str, name: &str) {
        let value = self.get_http_request_header_bytes(source);
        self.add_http_request_header_bytes(name, value.as_deref().unwrap_or(b"absent"));
    }
}

impl Context for Visible {}

impl HttpContext for Visible {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        // The `_bytes` variant: header values need not be UTF-8, and only names matter here.
        let mut names: Vec<String> = self
            .get_http_request_headers_bytes()
            .into_iter()
            .map(|(name, _)| name.to_ascii_lowercase())
            .filter(|name| !name.starts_with(':') && !name.starts_with("x-sdk-"))
            .collect();
        names.sort();
        names.dedup();
        self.add_http_request_header("x-sdk-visible", &names.join(","));
        self.report_header("authorization", "x-sdk-authorization");
        self.report_header("cookie", "x-sdk-cookie");
        self.report_header("x-forwarded-for", "x-sdk-xff");
        let source = self.get_property(vec!["source", "address"]);
        self.add_http_request_header(
            "x-sdk-source",
            &util::render_str_property(source.as_deref()),
        );

        let status =
            raw::replace_header_map_value(raw::MAP_REQUEST_HEADERS, b"authorization", b"forged");
        self.add_http_request_header("x-sdk-write-status", &status.to_string());
        Action::Continue
    }
}
