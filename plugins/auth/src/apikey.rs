//! API keys: a secret a client sends in a header or a query parameter. Keys are configured
//! as SHA-256 digests; a presented key is hashed and compared with every configured digest
//! in constant time.

use crate::encoding::percent_decode;
use crate::secret::Digest;

/// One configured key: its id (forwarded upstream) and digest.
#[derive(Debug)]
pub struct ApiKey {
    /// The id, forwarded in the id header.
    pub id: String,
    /// SHA-256 of the key.
    pub digest: Digest,
}

/// The configured API keys and where they are read.
#[derive(Debug)]
pub struct ApiKeys {
    /// The request header holding a key, if any.
    pub header: Option<String>,
    /// The query parameter holding a key, if any.
    pub query: Option<String>,
    /// The keys.
    pub keys: Vec<ApiKey>,
    /// The header the matching key's id is forwarded in.
    pub id_header: String,
}

impl ApiKeys {
    /// The id of the key `presented`, if it is one of the configured keys. Every digest is
    /// compared, whatever matched before.
    pub fn find(&self, presented: &str) -> Option<&str> {
        let digest = Digest::of(presented.as_bytes());
        let mut found = None;
        for key in &self.keys {
            if key.digest.matches(&digest) && found.is_none() {
                found = Some(key.id.as_str());
            }
        }
        found
    }
}

/// `path` without any query parameter named `name` (compared after percent-decoding); the
/// `?` goes too when nothing is left of the query.
pub fn remove_query_param(path: &str, name: &str) -> String {
    let Some((base, query)) = path.split_once('?') else {
        return path.to_string();
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let key = pair.split_once('=').map_or(*pair, |(k, _)| k);
            percent_decode(key) != name
        })
        .collect();
    if kept.iter().all(|p| p.is_empty()) {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> ApiKeys {
        ApiKeys {
            header: Some("x-api-key".into()),
            query: None,
            keys: vec![
                ApiKey {
                    id: "ci".into(),
                    digest: Digest::of(b"key-one"),
                },
                ApiKey {
                    id: "ops".into(),
                    digest: Digest::of(b"key-two"),
                },
            ],
            id_header: "x-auth-key-id".into(),
        }
    }

    #[test]
    fn keys_are_found_by_digest() {
        let k = keys();
        assert_eq!(k.find("key-one"), Some("ci"));
        assert_eq!(k.find("key-two"), Some("ops"));
        assert_eq!(k.find("key-three"), None);
        assert_eq!(k.find(""), None);
        assert_eq!(k.find("key-one "), None);
    }

    #[test]
    fn query_parameters_are_removed() {
        assert_eq!(remove_query_param("/a?api_key=s&x=1", "api_key"), "/a?x=1");
        assert_eq!(remove_query_param("/a?x=1&api_key=s", "api_key"), "/a?x=1");
        assert_eq!(remove_query_param("/a?api_key=s", "api_key"), "/a");
        assert_eq!(
            remove_query_param("/a?api_key=s&api%5Fkey=t&y", "api_key"),
            "/a?y",
            "every copy, by decoded name"
        );
        assert_eq!(
            remove_query_param("/a?api_keys=s", "api_key"),
            "/a?api_keys=s"
        );
        assert_eq!(remove_query_param("/a", "api_key"), "/a");
        assert_eq!(remove_query_param("/a?api_key", "api_key"), "/a");
    }
}
