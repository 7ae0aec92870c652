//! Local replies and what a filter callback returns.

/// A response the plugin sends instead of going on (`proxy_send_local_response`): a request
/// that is denied, rate limited, or answered by the plugin itself.
///
/// ```
/// use sluice_sdk::Reply;
/// let r = Reply::new(403)
///     .header("content-type", "text/plain")
///     .body("forbidden\n");
/// assert_eq!(r.status(), 403);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, Vec<u8>)>,
    pub(crate) body: Vec<u8>,
    pub(crate) details: String,
}

impl Reply {
    /// A reply with this status (200–599), no headers and no body.
    pub fn new(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            details: String::new(),
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: impl Into<String>, value: impl AsRef<[u8]>) -> Reply {
        self.headers.push((name.into(), value.as_ref().to_vec()));
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Reply {
        self.body = body.into();
        self
    }

    /// A short reason for the host's logs (not sent to the client).
    pub fn details(mut self, details: impl Into<String>) -> Reply {
        self.details = details.into();
        self
    }

    /// The status.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The headers, in order.
    pub fn headers(&self) -> &[(String, Vec<u8>)] {
        &self.headers
    }

    /// The body.
    pub fn body_bytes(&self) -> &[u8] {
        &self.body
    }
}

/// What a filter callback tells the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Go on: the next plugin, the upstream, the client.
    Continue,
    /// Stop here. In a header callback: until the plugin resumes the stream (from an HTTP
    /// callout's response, returning [`Action::Continue`]) or replies. In a body callback:
    /// buffer, and call again with the body so far when more arrives.
    Pause,
    /// Answer with this response instead of going on.
    Reply(Reply),
}

impl From<Reply> for Action {
    fn from(r: Reply) -> Action {
        Action::Reply(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_keeps_everything() {
        let r = Reply::new(429)
            .header("retry-after", "3")
            .header("x-a", b"1")
            .body("slow down")
            .details("rate limited");
        assert_eq!(r.status(), 429);
        assert_eq!(
            r.headers(),
            &[
                ("retry-after".to_string(), b"3".to_vec()),
                ("x-a".to_string(), b"1".to_vec())
            ]
        );
        assert_eq!(r.body_bytes(), b"slow down");
        assert_eq!(r.details, "rate limited");
        assert_eq!(Action::from(r.clone()), Action::Reply(r));
    }
}
