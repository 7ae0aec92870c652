//! Property paths: segments joined by NUL (`request\0path`).

/// Why a property path was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// The path has no segment.
    Empty,
    /// Segment `index` is empty (two NULs in a row, or a leading NUL).
    EmptySegment {
        /// Its position.
        index: usize,
    },
    /// More segments than allowed.
    TooManySegments {
        /// The cap.
        max: usize,
    },
}

impl core::fmt::Display for PathError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            PathError::Empty => write!(f, "property path is empty"),
            PathError::EmptySegment { index } => {
                write!(f, "property path segment {index} is empty")
            }
            PathError::TooManySegments { max } => {
                write!(f, "property path has more than {max} segments")
            }
        }
    }
}

/// A validated property path borrowing its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Path<'a>(&'a [u8]);

/// Validates `bytes` as a path of at most `max_segments` non-empty segments. One trailing NUL
/// is tolerated (some SDKs send it).
pub fn parse(bytes: &[u8], max_segments: usize) -> Result<Path<'_>, PathError> {
    let bytes = bytes.strip_suffix(&[0]).unwrap_or(bytes);
    if bytes.is_empty() {
        return Err(PathError::Empty);
    }
    for (index, seg) in bytes.split(|&b| b == 0).enumerate() {
        if index >= max_segments {
            return Err(PathError::TooManySegments { max: max_segments });
        }
        if seg.is_empty() {
            return Err(PathError::EmptySegment { index });
        }
    }
    Ok(Path(bytes))
}

impl<'a> Path<'a> {
    /// The segments in order.
    pub fn segments(&self) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.0.split(|&b| b == 0)
    }

    /// The encoded bytes (without a trailing NUL).
    pub fn as_bytes(&self) -> &'a [u8] {
        self.0
    }

    /// Whether the path is exactly `segments`.
    pub fn is(&self, segments: &[&str]) -> bool {
        let mut mine = self.segments();
        segments.iter().all(|s| mine.next() == Some(s.as_bytes())) && mine.next().is_none()
    }
}

/// Joins `segments` with NUL.
#[cfg(feature = "alloc")]
pub fn join(segments: &[&str]) -> alloc::vec::Vec<u8> {
    let mut out = alloc::vec::Vec::new();
    for (i, s) in segments.iter().enumerate() {
        if i > 0 {
            out.push(0);
        }
        out.extend_from_slice(s.as_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_matches() {
        let p = parse(b"request\0path", 8).unwrap();
        assert!(p.is(&["request", "path"]));
        assert!(!p.is(&["request"]));
        assert!(!p.is(&["request", "path", "x"]));
        assert!(parse(b"plugin_name\0", 8).unwrap().is(&["plugin_name"]));
        assert_eq!(join(&["source", "address"]), b"source\0address");
    }

    #[test]
    fn rejects_bad_paths() {
        assert_eq!(parse(b"", 8), Err(PathError::Empty));
        assert_eq!(parse(b"\0", 8), Err(PathError::Empty));
        assert_eq!(
            parse(b"a\0\0b", 8),
            Err(PathError::EmptySegment { index: 1 })
        );
        assert_eq!(parse(b"\0a", 8), Err(PathError::EmptySegment { index: 0 }));
        assert_eq!(
            parse(b"a\0b\0c", 2),
            Err(PathError::TooManySegments { max: 2 })
        );
    }
}
