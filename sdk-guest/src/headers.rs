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
