//! Misbehaving modes: `panic`, `loop`, `grow`, `badptr` and `pause-forever`. They check that
//! the host contains a faulty plugin.

use std::ptr;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;

use crate::config::Phase;
use crate::raw;
use crate::util;

/// Mode `panic`: panics in the configured callback; Continue everywhere else.
pub struct PanicAt {
    phase: Phase,
}

impl PanicAt {
    pub fn new(phase: Phase) -> PanicAt {
        PanicAt { phase }
    }

    fn panic_if(&self, phase: Phase) {
        if self.phase == phase {
            panic!("sdk-test panic in {}", phase.name());
        }
    }
}

impl Context for PanicAt {}

impl HttpContext for PanicAt {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.panic_if(Phase::RequestHeaders);
        Action::Continue
    }

    fn on_http_request_body(&mut self, _body_size: usize, _end_of_stream: bool) -> Action {
        self.panic_if(Phase::RequestBody);
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.panic_if(Phase::ResponseHeaders);
        Action::Continue
    }

    fn on_http_response_body(&mut self, _body_size: usize, _end_of_stream: bool) -> Action {
        self.panic_if(Phase::ResponseBody);
        Action::Continue
    }

    fn on_log(&mut self) {
        self.panic_if(Phase::Log);
    }
}

/// Mode `loop`: never returns from the configured callback.
pub struct LoopAt {
    phase: Phase,
}

impl LoopAt {
    pub fn new(phase: Phase) -> LoopAt {
        LoopAt { phase }
    }
}

impl Context for LoopAt {}

impl HttpContext for LoopAt {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if self.phase == Phase::RequestHeaders {
            util::spin_forever();
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if self.phase == Phase::ResponseHeaders {
            util::spin_forever();
        }
        Action::Continue
    }
}

/// Mode `grow`: allocates memory until the allocator fails, which aborts the module.
#[derive(Default)]
pub struct Grow {
    hoard: Vec<Vec<u8>>,
}

const MIB: usize = 1 << 20;
const PAGE: usize = 4096;

impl Context for Grow {}

impl HttpContext for Grow {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        loop {
            let mut chunk = vec![0u8; MIB];
            for offset in (0..MIB).step_by(PAGE) {
                chunk[offset] = 1;
            }
            self.hoard.push(core::hint::black_box(chunk));
        }
    }
}

/// Mode `badptr`: raw host calls with pointers or lengths outside linear memory.
pub struct BadPtr;

/// An address in the last 16 bytes of the 4 GiB wasm32 address space: never inside memory.
const BAD_ADDRESS: usize = 0xFFFF_FFF0;

impl BadPtr {
    /// Makes the calls in the documented order and returns the host's status for each.
    fn calls() -> [u32; 7] {
        let bad = ptr::without_provenance::<u8>(BAD_ADDRESS);
        let mut data: *mut u8 = ptr::null_mut();
        let mut size: usize = 0;
        let mut id: u32 = 0;
        let path = b"request\0path";
        // SAFETY: the guest never dereferences the out-of-range addresses: they only go to
        // the host, which must bounds-check every guest pointer. All other pointers point to
        // live locals of the right type, which the host may write during the call; anything
        // it returns through them is deliberately leaked.
        unsafe {
            [
                raw::proxy_log(2, bad, 100),
                raw::proxy_get_header_map_value(
                    raw::MAP_REQUEST_HEADERS,
                    bad,
                    8,
                    &mut data,
                    &mut size,
                ),
                raw::proxy_get_header_map_pairs(
                    raw::MAP_REQUEST_HEADERS,
                    ptr::without_provenance_mut(BAD_ADDRESS),
                    ptr::without_provenance_mut(0xFFFF_FFF4),
                ),
                raw::proxy_set_buffer_bytes(0, 0, 0, bad, 64),
                raw::proxy_get_property(path.as_ptr(), 0x8000_0000, &mut data, &mut size),
                raw::proxy_set_shared_data(b"k".as_ptr(), 1, bad, 16, 0),
                raw::proxy_define_metric(0, bad, 10, &mut id),
            ]
        }
    }
}

impl Context for BadPtr {}

impl HttpContext for BadPtr {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let statuses: Vec<String> = BadPtr::calls().iter().map(u32::to_string).collect();
        self.add_http_request_header("x-badptr", &statuses.join(","));
        Action::Continue
    }
}

/// Mode `pause-forever`: pauses the request and never resumes it.
pub struct PauseForever;

impl Context for PauseForever {}

impl HttpContext for PauseForever {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        Action::Pause
    }
}
