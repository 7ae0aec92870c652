//! HTTP downloads with a size cap: the one client every network source uses.

use std::time::Duration;

use reqwest::header::HeaderMap;
use reqwest::{RequestBuilder, StatusCode};

/// Why a download failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DownloadError {
    /// The server answered with an error status.
    #[error("the server answered {status}{detail}")]
    Status {
        /// The HTTP status.
        status: u16,
        /// A short excerpt of the body (with a leading separator), or nothing.
        detail: String,
    },
    /// The body is larger than allowed.
    #[error("the body is larger than the limit of {limit} bytes{}", announced.map(|n| format!(" (Content-Length: {n})")).unwrap_or_default())]
    TooLarge {
        /// The limit.
        limit: u64,
        /// What `Content-Length` announced, if it did.
        announced: Option<u64>,
    },
    /// Connecting or the whole request took too long.
    #[error("timed out (connect timeout {connect_s} s, request timeout {total_s} s)")]
    Timeout {
        /// Connect timeout in seconds.
        connect_s: u64,
        /// Request timeout in seconds.
        total_s: u64,
    },
    /// Connection, TLS or protocol failure.
    #[error("{0}")]
    Transport(String),
}

/// A client with the timeouts of plugin downloads.
#[derive(Debug, Clone)]
pub struct Http {
    client: reqwest::Client,
    connect_timeout: Duration,
    timeout: Duration,
    /// Largest body accepted.
    pub max_bytes: u64,
}

/// An answer whose body was read in full.
#[derive(Debug)]
pub struct Answer {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: Vec<u8>,
}

impl Http {
    /// A client with these limits (HTTPS trusts the system's roots and the webpki roots).
    pub fn new(
        connect_timeout: Duration,
        timeout: Duration,
        max_bytes: u64,
    ) -> Result<Http, String> {
        // Registries redirect blob downloads to storage; follow up to 10 redirects, never
        // from https to plain http.
        let redirects = reqwest::redirect::Policy::custom(|attempt| {
            let downgrade = attempt.url().scheme() == "http"
                && attempt.previous().iter().any(|u| u.scheme() == "https");
            if downgrade {
                let to = attempt.url().to_string();
                attempt.error(format!(
                    "refusing a redirect from https to plain http ({to})"
                ))
            } else if attempt.previous().len() > 10 {
                attempt.error("more than 10 redirects")
            } else {
                attempt.follow()
            }
        });
        let client = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .timeout(timeout)
            .redirect(redirects)
            .user_agent(concat!("sluice/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {}", chain(&e)))?;
        Ok(Http {
            client,
            connect_timeout,
            timeout,
            max_bytes,
        })
    }

    /// The underlying client, to build requests with.
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// Sends `req` and reads the whole answer, whatever its status, refusing a body larger
    /// than `max_bytes` (announced or actual).
    pub async fn send(&self, req: RequestBuilder) -> Result<Answer, DownloadError> {
        let mut resp = req.send().await.map_err(|e| self.error(e))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        if let Some(n) = resp.content_length() {
            if n > self.max_bytes {
                return Err(DownloadError::TooLarge {
                    limit: self.max_bytes,
                    announced: Some(n),
                });
            }
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| self.error(e))? {
            if (body.len() as u64).saturating_add(chunk.len() as u64) > self.max_bytes {
                return Err(DownloadError::TooLarge {
                    limit: self.max_bytes,
                    announced: None,
                });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Answer {
            status,
            headers,
            body,
        })
    }

    /// Sends `req`; a status other than 2xx is an error.
    pub async fn get_ok(&self, req: RequestBuilder) -> Result<Answer, DownloadError> {
        let a = self.send(req).await?;
        if !a.status.is_success() {
            return Err(status_error(&a));
        }
        Ok(a)
    }

    fn error(&self, e: reqwest::Error) -> DownloadError {
        if e.is_timeout() {
            DownloadError::Timeout {
                connect_s: self.connect_timeout.as_secs(),
                total_s: self.timeout.as_secs(),
            }
        } else {
            // The URL is already in every message that shows this error.
            DownloadError::Transport(chain(&e.without_url()))
        }
    }
}

/// The error for an answer with an unexpected status (with the registry's error codes, or an
/// excerpt of the body).
pub fn status_error(a: &Answer) -> DownloadError {
    DownloadError::Status {
        status: a.status.as_u16(),
        detail: registry_errors(&a.body).unwrap_or_else(|| excerpt(&a.body)),
    }
}

/// `: CODE: message; …` from a distribution API error body
/// (`{"errors": [{"code": …, "message": …}]}`).
fn registry_errors(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Errors {
        errors: Vec<Item>,
    }
    #[derive(serde::Deserialize)]
    struct Item {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    let e: Errors = serde_json::from_slice(body).ok()?;
    let parts: Vec<String> = e
        .errors
        .iter()
        .take(5)
        .map(|i| format!("{}: {}", i.code, i.message))
        .collect();
    (!parts.is_empty()).then(|| excerpt(parts.join("; ").as_bytes()))
}

/// ` (first line of the body)`, at most 200 characters, printable only; or nothing.
fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let line: String = text
        .split(['\n', '\r'])
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
        .chars()
        .filter(|c| !c.is_control())
        .take(200)
        .collect();
    if line.is_empty() {
        String::new()
    } else {
        format!(": {line}")
    }
}

/// An error with its sources, `a: b: c`.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        let m = inner.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpts_are_short_and_printable() {
        assert_eq!(excerpt(b""), "");
        assert_eq!(excerpt(b"\n\n  not found \nmore"), ": not found");
        assert_eq!(excerpt(&[b'a'; 500]).len(), 202);
        assert_eq!(excerpt(b"a\x07b"), ": ab");
    }

    #[test]
    fn registry_error_bodies_are_summarized() {
        let body = br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{"Tag":"v2"}}]}"#;
        assert_eq!(
            registry_errors(body).as_deref(),
            Some(": MANIFEST_UNKNOWN: manifest unknown")
        );
        assert_eq!(registry_errors(b"{\"errors\":[]}"), None);
        assert_eq!(registry_errors(b"not json"), None);
    }
}
