//! Reading and changing one of the host's header maps (request, response, callout response).

use sluice_abi::map::{self, Limits};
use sluice_abi::MapType;

use crate::error::{Context, Error};
use crate::hostcalls;

/// Decodes an encoded header map into owned pairs (values lossily as UTF-8).
pub(crate) fn decode_pairs(bytes: &[u8]) -> Result<Vec<(String, String)>, Error> {
    let limits = Limits {
        max_pairs: 8192,
        max_bytes: 16 << 20,
    };
    let pairs = map::decode(bytes, &limits).map_err(|_| Error::Decode("a header map"))?;
    Ok(pairs
        .iter()
        .map(|(k, v)| {
            (
                String::from_utf8_lossy(k).into_owned(),
                String::from_utf8_lossy(v).into_owned(),
            )
        })
        .collect())
}

/// Encodes pairs for the host.
pub(crate) fn encode_pairs<'a, I>(pairs: I) -> Result<Vec<u8>, Error>
where
    I: IntoIterator<Item = (&'a str, &'a [u8])>,
    I::IntoIter: Clone,
{
    map::encode(pairs.into_iter().map(|(k, v)| (k.as_bytes(), v)))
        .map_err(|_| Error::Other("headers too large to encode".into()))
}

/// One header map of the host.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Map(pub MapType);

impl Map {
    pub fn get_bytes(self, name: &str) -> Result<Option<Vec<u8>>, Error> {
        hostcalls::header_value(self.0, name).during("read a header")
    }

    pub fn get(self, name: &str) -> Result<Option<String>, Error> {
        Ok(self
            .get_bytes(name)?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    pub fn all(self) -> Result<Vec<(String, String)>, Error> {
        match hostcalls::header_pairs(self.0).during("read the headers")? {
            Some(bytes) => decode_pairs(&bytes),
            None => Ok(Vec::new()),
        }
    }

    pub fn set(self, name: &str, value: &[u8]) -> Result<(), Error> {
        hostcalls::replace_header(self.0, name, value).during("set a header")
    }

    pub fn add(self, name: &str, value: &[u8]) -> Result<(), Error> {
        hostcalls::add_header(self.0, name, value).during("add a header")
    }

    pub fn remove(self, name: &str) -> Result<(), Error> {
        hostcalls::remove_header(self.0, name).during("remove a header")
    }
}

/// Header access, shared by [`crate::Request`] and [`crate::Response`]: for code that works
/// on either. Both also have these as their own methods, so using them needs no import.
pub trait Headers {
    /// The first value of header `name` (any case), as text (invalid UTF-8 replaced).
    fn header(&self, name: &str) -> Result<Option<String>, Error>;
    /// The first value of header `name`, as bytes.
    fn header_bytes(&self, name: &str) -> Result<Option<Vec<u8>>, Error>;
    /// Every header, pseudo-headers first, in order.
    fn headers(&self) -> Result<Vec<(String, String)>, Error>;
    /// Sets header `name` to `value`, replacing every value it had.
    fn set_header(&mut self, name: &str, value: &[u8]) -> Result<(), Error>;
    /// Adds a value of header `name`.
    fn add_header(&mut self, name: &str, value: &[u8]) -> Result<(), Error>;
    /// Removes every value of header `name`.
    fn remove_header(&mut self, name: &str) -> Result<(), Error>;
}

/// The header methods of a request or response handle reading and changing `$map`, as its
/// own methods and as [`Headers`].
macro_rules! header_methods {
    ($ty:ty, $map:expr) => {
        impl $ty {
            /// The first value of header `name` (any case), as text (invalid UTF-8 replaced).
            pub fn header(&self, name: &str) -> Result<Option<String>, Error> {
                $map.get(name)
            }

            /// The first value of header `name`, as bytes.
            pub fn header_bytes(&self, name: &str) -> Result<Option<Vec<u8>>, Error> {
                $map.get_bytes(name)
            }

            /// Every header, pseudo-headers first, in order.
            pub fn headers(&self) -> Result<Vec<(String, String)>, Error> {
                $map.all()
            }

            /// Sets header `name` to `value`, replacing every value it had.
            pub fn set_header(&mut self, name: &str, value: impl AsRef<[u8]>) -> Result<(), Error> {
                $map.set(name, value.as_ref())
            }

            /// Adds a value of header `name`.
            pub fn add_header(&mut self, name: &str, value: impl AsRef<[u8]>) -> Result<(), Error> {
                $map.add(name, value.as_ref())
            }

            /// Removes every value of header `name`.
            pub fn remove_header(&mut self, name: &str) -> Result<(), Error> {
                $map.remove(name)
            }
        }

        impl $crate::headers::Headers for $ty {
            fn header(&self, name: &str) -> Result<Option<String>, Error> {
                <$ty>::header(self, name)
            }
            fn header_bytes(&self, name: &str) -> Result<Option<Vec<u8>>, Error> {
                <$ty>::header_bytes(self, name)
            }
            fn headers(&self) -> Result<Vec<(String, String)>, Error> {
                <$ty>::headers(self)
            }
            fn set_header(&mut self, name: &str, value: &[u8]) -> Result<(), Error> {
                <$ty>::set_header(self, name, value)
            }
            fn add_header(&mut self, name: &str, value: &[u8]) -> Result<(), Error> {
                <$ty>::add_header(self, name, value)
            }
            fn remove_header(&mut self, name: &str) -> Result<(), Error> {
                <$ty>::remove_header(self, name)
            }
        }
    };
}
pub(crate) use header_methods;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_round_trip() {
        let bytes = encode_pairs([(":status", &b"200"[..]), ("x-a", b"1"), ("x-a", b"2")]).unwrap();
        let pairs = decode_pairs(&bytes).unwrap();
        assert_eq!(
            pairs,
            vec![
                (":status".to_string(), "200".to_string()),
                ("x-a".to_string(), "1".to_string()),
                ("x-a".to_string(), "2".to_string())
            ]
        );
        assert!(decode_pairs(b"\x05\0\0\0").is_err(), "truncated map");
        assert!(
            decode_pairs(b"").unwrap().is_empty(),
            "empty map as 0 bytes"
        );
    }
}
