//! Modes `shared` and `tick`: counters in the host's shared key-value store.

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;

use crate::util;

/// Shared-data key counted up by every request in mode `shared`.
pub const HITS_KEY: &str = "hits";
/// Shared-data key counted up by every tick in mode `tick`.
pub const TICKS_KEY: &str = "ticks";

/// Mode `shared`: counts requests in shared data with compare-and-swap.
pub struct Shared;

impl Context for Shared {}

impl HttpContext for Shared {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        match util::cas_increment(self, HITS_KEY) {
            Ok(hits) => self.add_http_request_header("x-shared-hits", &hits.to_string()),
            Err(error) => self.add_http_request_header("x-shared-error", &error),
        }
        Action::Continue
    }
}

/// Mode `tick` (request side): reports how many ticks the root context has counted.
pub struct Ticks;

impl Context for Ticks {}

impl HttpContext for Ticks {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let (value, _cas) = self.get_shared_data(TICKS_KEY);
        let ticks = util::decode_counter(value.as_deref()).map_or_else(|e| e, |n| n.to_string());
        self.add_http_request_header("x-ticks", &ticks);
        Action::Continue
    }
}
