//! pingora's request and response heads as the plugin host rewrites them
//! ([`sluice_host::head`]'s traits): writes go through pingora's own methods, which keep the
//! header names' case.

use std::borrow::BorrowMut;

use pingora::http::{RequestHeader, ResponseHeader};
use pingora::{Error, ErrorType};

use crate::head::{HeadError, NewResponseHead, RequestHeadMut, ResponseHeadMut};

/// A pingora request head (owned or borrowed).
pub struct Req<T>(pub T);

/// A pingora response head (owned or borrowed).
pub struct Resp<T>(pub T);

/// A rewrite pingora refused, as pingora's error.
pub fn head_error(e: HeadError) -> Box<Error> {
    Error::explain(ErrorType::InternalError, e.0)
}

fn host_err(e: Box<Error>) -> HeadError {
    HeadError(e.to_string())
}

/// The header writes, the same for both heads (pingora's methods of one name on each).
macro_rules! header_writes {
    () => {
        fn insert_header(&mut self, name: &'static str, value: &[u8]) -> Result<(), HeadError> {
            // A `&'static str` name: pingora keeps it without copying.
            self.0
                .borrow_mut()
                .insert_header(name, value)
                .map_err(host_err)
        }
        fn append_header(&mut self, name: String, value: Vec<u8>) -> Result<(), HeadError> {
            self.0
                .borrow_mut()
                .append_header(name, value)
                .map(|_| ())
                .map_err(host_err)
        }
        fn remove_header(&mut self, name: &str) {
            self.0.borrow_mut().remove_header(name);
        }
    };
}

impl<T: BorrowMut<RequestHeader>> RequestHeadMut for Req<T> {
    fn parts(&self) -> &http::request::Parts {
        self.0.borrow()
    }
    fn set_method(&mut self, method: http::Method) {
        self.0.borrow_mut().set_method(method);
    }
    fn set_raw_path(&mut self, path: &[u8]) -> Result<(), HeadError> {
        self.0.borrow_mut().set_raw_path(path).map_err(host_err)
    }
    header_writes!();
}

impl<T: BorrowMut<ResponseHeader>> ResponseHeadMut for Resp<T> {
    fn parts(&self) -> &http::response::Parts {
        self.0.borrow()
    }
    fn set_status(&mut self, code: u16) -> Result<(), HeadError> {
        self.0.borrow_mut().set_status(code).map_err(host_err)
    }
    header_writes!();
}

impl NewResponseHead for Resp<ResponseHeader> {
    fn build(code: u16, headers: usize) -> Result<Self, HeadError> {
        ResponseHeader::build(code, Some(headers))
            .map(Resp)
            .map_err(host_err)
    }
}
