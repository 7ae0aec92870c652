//! Mode `properties`: reports well-known properties and passes a custom one down the chain.

use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;

use crate::config::Settings;
use crate::util;

/// Properties rendered as UTF-8 strings (lossy), in the order their headers are added.
const STRING_PROPERTIES: &[&str] = &[
    "request.path",
    "request.url_path",
    "request.method",
    "request.host",
    "request.scheme",
    "request.protocol",
    "request.id",
    "request.query",
    "plugin_name",
    "plugin_root_id",
    "plugin_vm_id",
    "route_name",
];

/// Properties holding an 8-byte little-endian integer, rendered in decimal.
const INTEGER_PROPERTIES: &[&str] = &["connection.id", "request.time"];

/// Path of the custom property each plugin in a chain reads, then overwrites with its tag.
const CUSTOM_PROPERTY: [&str; 2] = ["sluice_test", "custom"];

pub struct Properties {
    settings: Rc<Settings>,
}

impl Properties {
    pub fn new(settings: Rc<Settings>) -> Properties {
        Properties { settings }
    }

    /// The property at dotted `name`, e.g. `request.path` → `["request", "path"]`.
    fn property(&self, name: &str) -> Option<Vec<u8>> {
        self.get_property(name.split('.').collect())
    }
}

/// `x-prop-` followed by the property name with its dots replaced by dashes.
fn header_name(property: &str) -> String {
    format!("x-prop-{}", property.replace('.', "-"))
}

impl Context for Properties {}

impl HttpContext for Properties {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        for name in STRING_PROPERTIES {
            let value = util::render_str_property(self.property(name).as_deref());
            self.add_http_request_header(&header_name(name), &value);
        }
        for name in INTEGER_PROPERTIES {
            let value = util::render_u64_property(self.property(name).as_deref());
            self.add_http_request_header(&header_name(name), &value);
        }
        let custom = self.get_property(CUSTOM_PROPERTY.to_vec());
        self.add_http_request_header(
            "x-prop-custom",
            &util::render_str_property(custom.as_deref()),
        );
        self.set_property(CUSTOM_PROPERTY.to_vec(), Some(self.settings.tag.as_bytes()));
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let code = util::render_u64_property(self.property("response.code").as_deref());
        self.add_http_response_header("x-prop-response-code", &code);
        let upstream = util::render_str_property(self.property("upstream.address").as_deref());
        self.add_http_response_header("x-prop-upstream-address", &upstream);
        Action::Continue
    }
}
