//! The body a body callback is about: the chunk that arrived, or everything buffered so far.

use sluice_abi::BufferType;

use crate::error::{Context, Error};
use crate::hostcalls;

/// Where a request or response handle stands in its stream.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct BodyState {
    /// The callback is a body callback (the body is readable).
    pub in_body: bool,
    /// Bytes of body the host offers in this callback.
    pub size: usize,
    /// Nothing follows this callback's headers or body.
    pub end_of_stream: bool,
}

impl BodyState {
    pub fn read(self, t: BufferType) -> Result<Vec<u8>, Error> {
        if !self.in_body || self.size == 0 {
            return Ok(Vec::new());
        }
        Ok(hostcalls::buffer(t, 0, self.size)
            .during("read the body")?
            .unwrap_or_default())
    }

    pub fn replace(&mut self, t: BufferType, data: &[u8]) -> Result<(), Error> {
        if !self.in_body {
            return Err(Error::msg(
                "the body can only be replaced in a body callback",
            ));
        }
        hostcalls::set_buffer(t, 0, self.size, data).during("replace the body")?;
        self.size = data.len();
        Ok(())
    }
}
