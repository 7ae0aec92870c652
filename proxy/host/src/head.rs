//! Request and response heads as the exchange reads and rewrites them.
//!
//! The exchange reads a head through `http`'s parts and writes it through these traits, so
//! that the same code rewrites pingora's heads in the proxy (which keeps their header-name
//! case) and the test kit's own.

use http::{request, response, Method};

/// Why a head could not be rewritten (a name or value a header cannot hold, a bad path).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct HeadError(pub String);

impl HeadError {
    /// Wraps any error's text.
    pub fn from_display(e: impl std::fmt::Display) -> Self {
        HeadError(e.to_string())
    }
}

/// A request head the exchange rewrites.
pub trait RequestHeadMut {
    /// Method, URI and headers.
    fn parts(&self) -> &request::Parts;
    /// Replaces the method.
    fn set_method(&mut self, method: Method);
    /// Replaces the path and query.
    fn set_raw_path(&mut self, path: &[u8]) -> Result<(), HeadError>;
    /// Sets a header (every value of `name` before is dropped). Names are the host's own
    /// constants, so an embedding can keep them without copying.
    fn insert_header(&mut self, name: &'static str, value: &[u8]) -> Result<(), HeadError>;
    /// Adds a value of a header.
    fn append_header(&mut self, name: String, value: Vec<u8>) -> Result<(), HeadError>;
    /// Drops every value of a header.
    fn remove_header(&mut self, name: &str);
}

/// A response head the exchange rewrites.
pub trait ResponseHeadMut {
    /// Status and headers.
    fn parts(&self) -> &response::Parts;
    /// Replaces the status.
    fn set_status(&mut self, code: u16) -> Result<(), HeadError>;
    /// Sets a header (every value of `name` before is dropped). Names are the host's own
    /// constants, so an embedding can keep them without copying.
    fn insert_header(&mut self, name: &'static str, value: &[u8]) -> Result<(), HeadError>;
    /// Adds a value of a header.
    fn append_header(&mut self, name: String, value: Vec<u8>) -> Result<(), HeadError>;
    /// Drops every value of a header.
    fn remove_header(&mut self, name: &str);
}

/// A response head that can be made from nothing (a reply's).
pub trait NewResponseHead: ResponseHeadMut + Sized {
    /// A head of `code` with room for `headers` headers.
    fn build(code: u16, headers: usize) -> Result<Self, HeadError>;
}

/// The declared `content-length` of a head, if it is a number.
pub fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// A request head of `http` parts alone (the test kit's, and any host without its own).
#[derive(Debug, Clone)]
pub struct PlainRequest(pub request::Parts);

/// A response head of `http` parts alone.
#[derive(Debug, Clone)]
pub struct PlainResponse(pub response::Parts);

fn name(n: &str) -> Result<http::HeaderName, HeadError> {
    http::HeaderName::from_bytes(n.as_bytes()).map_err(HeadError::from_display)
}

fn value(v: &[u8]) -> Result<http::HeaderValue, HeadError> {
    http::HeaderValue::from_bytes(v).map_err(HeadError::from_display)
}

fn insert(h: &mut http::HeaderMap, n: &str, v: &[u8]) -> Result<(), HeadError> {
    h.insert(name(n)?, value(v)?);
    Ok(())
}

fn append(h: &mut http::HeaderMap, n: &str, v: &[u8]) -> Result<(), HeadError> {
    h.append(name(n)?, value(v)?);
    Ok(())
}

impl PlainRequest {
    /// A request of `method` for `path` (path and query), no headers.
    pub fn new(method: &str, path: &[u8]) -> Result<Self, HeadError> {
        let method = Method::from_bytes(method.as_bytes()).map_err(HeadError::from_display)?;
        let uri = http::Uri::try_from(path).map_err(HeadError::from_display)?;
        let (mut parts, ()) = http::Request::new(()).into_parts();
        parts.method = method;
        parts.uri = uri;
        Ok(PlainRequest(parts))
    }
}

impl PlainResponse {
    /// A response of `code`, no headers.
    pub fn new(code: u16) -> Result<Self, HeadError> {
        let status = http::StatusCode::from_u16(code).map_err(HeadError::from_display)?;
        let (mut parts, ()) = http::Response::new(()).into_parts();
        parts.status = status;
        Ok(PlainResponse(parts))
    }
}

impl NewResponseHead for PlainResponse {
    fn build(code: u16, _headers: usize) -> Result<Self, HeadError> {
        PlainResponse::new(code)
    }
}

impl RequestHeadMut for PlainRequest {
    fn parts(&self) -> &request::Parts {
        &self.0
    }
    fn set_method(&mut self, method: Method) {
        self.0.method = method;
    }
    fn set_raw_path(&mut self, path: &[u8]) -> Result<(), HeadError> {
        self.0.uri = http::Uri::try_from(path).map_err(HeadError::from_display)?;
        Ok(())
    }
    fn insert_header(&mut self, n: &'static str, v: &[u8]) -> Result<(), HeadError> {
        insert(&mut self.0.headers, n, v)
    }
    fn append_header(&mut self, n: String, v: Vec<u8>) -> Result<(), HeadError> {
        append(&mut self.0.headers, &n, &v)
    }
    fn remove_header(&mut self, n: &str) {
        self.0.headers.remove(n);
    }
}

impl ResponseHeadMut for PlainResponse {
    fn parts(&self) -> &response::Parts {
        &self.0
    }
    fn set_status(&mut self, code: u16) -> Result<(), HeadError> {
        self.0.status = http::StatusCode::from_u16(code).map_err(HeadError::from_display)?;
        Ok(())
    }
    fn insert_header(&mut self, n: &'static str, v: &[u8]) -> Result<(), HeadError> {
        insert(&mut self.0.headers, n, v)
    }
    fn append_header(&mut self, n: String, v: Vec<u8>) -> Result<(), HeadError> {
        append(&mut self.0.headers, &n, &v)
    }
    fn remove_header(&mut self, n: &str) {
        self.0.headers.remove(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_heads_rewrite_and_refuse() {
        let mut r = PlainRequest::new("GET", b"/a?b=1").unwrap();
        r.insert_header("x-a", b"1").unwrap();
        r.append_header("x-a".into(), b"2".to_vec()).unwrap();
        assert_eq!(r.0.headers.get_all("x-a").iter().count(), 2);
        r.set_raw_path(b"/c").unwrap();
        assert_eq!(r.0.uri.path(), "/c");
        assert!(r.insert_header("bad name", b"1").is_err());
        assert!(r.insert_header("x-b", b"a\nb").is_err());
        r.remove_header("x-a");
        assert!(r.0.headers.is_empty());
        let mut s = PlainResponse::new(200).unwrap();
        s.set_status(404).unwrap();
        assert_eq!(s.0.status, 404);
        assert!(s.set_status(1000).is_err());
        assert!(PlainRequest::new("GET", b"not a path").is_err());
    }

    #[test]
    fn content_length_reads_numbers_only() {
        let mut h = http::HeaderMap::new();
        assert_eq!(content_length(&h), None);
        h.insert(http::header::CONTENT_LENGTH, " 12 ".parse().unwrap());
        assert_eq!(content_length(&h), Some(12));
        h.insert(http::header::CONTENT_LENGTH, "x".parse().unwrap());
        assert_eq!(content_length(&h), None);
    }
}
