//! Proxy-Wasm ABI v0.2.1 types shared by the Sluice host and the guest SDK.
//!
//! `no_std`, no `unsafe`, no policy: the numbers of the ABI as Rust enums with checked
//! conversions from the raw `u32`s that cross the boundary, the header-map codec ([`map`]),
//! the property-path codec ([`path`]) and the import/export names ([`names`]).
//!
//! The `alloc` feature (on by default) adds the functions that return vectors.
#![no_std]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

#[cfg(any(feature = "alloc", test))]
extern crate alloc;

pub mod map;
pub mod names;
pub mod path;

/// Defines a `#[repr(u32)]` enum with a checked `TryFrom<u32>`.
macro_rules! abi_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $value:expr,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u32)]
        pub enum $name {
            $($(#[$vmeta])* $variant = $value,)*
        }

        impl TryFrom<u32> for $name {
            type Error = UnknownValue;
            fn try_from(v: u32) -> Result<Self, UnknownValue> {
                match v {
                    $($value => Ok($name::$variant),)*
                    _ => Err(UnknownValue { kind: stringify!($name), value: v }),
                }
            }
        }

        impl From<$name> for u32 {
            fn from(v: $name) -> u32 {
                v as u32
            }
        }
    };
}

/// A raw value that is not one of the enum's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnknownValue {
    /// The enum's name.
    pub kind: &'static str,
    /// The raw value.
    pub value: u32,
}

impl core::fmt::Display for UnknownValue {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{} is not a valid {}", self.value, self.kind)
    }
}

abi_enum!(
    /// Result of every host call.
    Status {
        /// Success.
        Ok = 0,
        /// The key or item does not exist.
        NotFound = 1,
        /// An argument is invalid.
        BadArgument = 2,
        /// A value could not be serialized.
        SerializationFailure = 3,
        /// A value could not be parsed.
        ParseFailure = 4,
        /// A pointer or length is outside guest memory.
        InvalidMemoryAccess = 6,
        /// The queue or buffer is empty.
        Empty = 7,
        /// Compare-and-swap failed.
        CasMismatch = 8,
        /// The host failed.
        InternalFailure = 10,
        /// The host does not implement the call.
        Unimplemented = 12,
    }
);

abi_enum!(
    /// What a stream callback asks the host to do next.
    Action {
        /// Go on with the next filter or phase.
        Continue = 0,
        /// Stop until the plugin resumes the stream (or, for bodies, buffer).
        Pause = 1,
    }
);

abi_enum!(
    /// Log levels of `proxy_log`.
    LogLevel {
        /// Trace.
        Trace = 0,
        /// Debug.
        Debug = 1,
        /// Info.
        Info = 2,
        /// Warn.
        Warn = 3,
        /// Error.
        Error = 4,
        /// Critical.
        Critical = 5,
    }
);

abi_enum!(
    /// Header maps a plugin can read and change.
    MapType {
        /// Request headers (with pseudo-headers).
        RequestHeaders = 0,
        /// Request trailers.
        RequestTrailers = 1,
        /// Response headers (with `:status`).
        ResponseHeaders = 2,
        /// Response trailers.
        ResponseTrailers = 3,
        /// gRPC initial metadata.
        GrpcInitialMetadata = 4,
        /// gRPC trailing metadata.
        GrpcTrailingMetadata = 5,
        /// Headers of an HTTP callout's response.
        HttpCallResponseHeaders = 6,
        /// Trailers of an HTTP callout's response.
        HttpCallResponseTrailers = 7,
    }
);

abi_enum!(
    /// Buffers a plugin can read and change.
    BufferType {
        /// Request body.
        RequestBody = 0,
        /// Response body.
        ResponseBody = 1,
        /// Downstream data (TCP).
        DownstreamData = 2,
        /// Upstream data (TCP).
        UpstreamData = 3,
        /// Body of an HTTP callout's response.
        HttpCallResponseBody = 4,
        /// A gRPC message.
        GrpcMessage = 5,
        /// The VM configuration.
        VmConfiguration = 6,
        /// The plugin configuration.
        PluginConfiguration = 7,
        /// Arguments of a foreign function call.
        ForeignFunctionArguments = 8,
    }
);

abi_enum!(
    /// Streams of `proxy_continue_stream` / `proxy_close_stream`.
    StreamType {
        /// The HTTP request.
        Request = 0,
        /// The HTTP response.
        Response = 1,
        /// Downstream TCP data.
        Downstream = 2,
        /// Upstream TCP data.
        Upstream = 3,
    }
);

abi_enum!(
    /// Metric kinds of `proxy_define_metric`.
    MetricType {
        /// Monotonic counter.
        Counter = 0,
        /// Gauge.
        Gauge = 1,
        /// Histogram.
        Histogram = 2,
    }
);

abi_enum!(
    /// Which side closed a connection.
    PeerType {
        /// Not known.
        Unknown = 0,
        /// This side (the proxy).
        Local = 1,
        /// The other side.
        Remote = 2,
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_are_checked() {
        assert_eq!(Status::try_from(8), Ok(Status::CasMismatch));
        assert_eq!(u32::from(Status::Unimplemented), 12);
        let err = Status::try_from(5).unwrap_err();
        assert_eq!(
            err,
            UnknownValue {
                kind: "Status",
                value: 5
            }
        );
        assert_eq!(MapType::try_from(6), Ok(MapType::HttpCallResponseHeaders));
        assert!(MapType::try_from(8).is_err());
        assert_eq!(BufferType::try_from(7), Ok(BufferType::PluginConfiguration));
        assert_eq!(Action::try_from(1), Ok(Action::Pause));
        assert!(LogLevel::try_from(6).is_err());
    }
}
