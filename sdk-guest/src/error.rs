//! The SDK's error type.

use std::fmt;

use sluice_abi::Status;

/// Why an SDK call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The host answered a call with a status other than OK.
    Host {
        /// What the SDK was doing.
        call: &'static str,
        /// The host's status.
        status: Status,
    },
    /// The plugin configuration is not what the plugin expects.
    Config(String),
    /// Data from the host could not be decoded (a header map, a property value).
    Decode(&'static str),
    /// A shared-data update lost the compare-and-swap race too many times.
    Contended(String),
    /// Anything a plugin wants to report.
    Other(String),
}

impl Error {
    /// An error carrying the plugin's own message.
    pub fn msg(message: impl Into<String>) -> Error {
        Error::Other(message.into())
    }

    /// The host status behind this error, if it came from the host.
    pub fn status(&self) -> Option<Status> {
        match self {
            Error::Host { status, .. } => Some(*status),
            _ => None,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Host { call, status } => write!(f, "{call}: the host answered {status:?}"),
            Error::Config(m) => write!(f, "bad plugin configuration: {m}"),
            Error::Decode(what) => write!(f, "cannot decode {what} from the host"),
            Error::Contended(key) => {
                write!(f, "shared data {key:?}: too many concurrent updates")
            }
            Error::Other(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for Error {}

/// Adds the name of the call to a host status.
pub(crate) trait Context<T> {
    fn during(self, call: &'static str) -> Result<T, Error>;
}

impl<T> Context<T> for Result<T, Status> {
    fn during(self, call: &'static str) -> Result<T, Error> {
        self.map_err(|status| Error::Host { call, status })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_call_and_status() {
        let e: Result<(), Error> = Err(Status::BadArgument).during("set request header");
        let e = e.unwrap_err();
        assert_eq!(e.status(), Some(Status::BadArgument));
        assert_eq!(
            e.to_string(),
            "set request header: the host answered BadArgument"
        );
        assert_eq!(Error::msg("nope").to_string(), "nope");
        assert_eq!(Error::Config("x".into()).status(), None);
    }
}
