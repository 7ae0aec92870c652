//! The header-map wire format of Proxy-Wasm ABI v0.2.1.
//!
//! ```text
//! u32 count | count × (u32 key_len, u32 value_len) | key₀ NUL value₀ NUL key₁ NUL …
//! ```
//! All integers little-endian; lengths exclude the NUL. An empty map may also arrive as zero
//! bytes or as a single NUL byte; [`decode`] accepts all three forms.
//!
//! Decoding is strict and zero-copy: the whole buffer is checked once (counts, lengths, every
//! NUL, no trailing bytes), in `u64` arithmetic, against caller-given [`Limits`]; iterating
//! the result then cannot fail.

/// Caps applied while decoding untrusted input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most pairs accepted.
    pub max_pairs: u32,
    /// Most bytes accepted for the whole encoded map.
    pub max_bytes: usize,
}

impl Default for Limits {
    /// 8 192 pairs and 1 MiB.
    fn default() -> Self {
        Limits {
            max_pairs: 8192,
            max_bytes: 1 << 20,
        }
    }
}

/// Why a header map could not be decoded or encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapError {
    /// The buffer ends before the data it announces.
    Truncated {
        /// Bytes needed.
        needed: u64,
        /// Bytes present.
        len: usize,
    },
    /// More pairs than [`Limits::max_pairs`].
    TooManyPairs {
        /// Pairs announced.
        count: u32,
        /// The cap.
        max: u32,
    },
    /// The buffer is larger than [`Limits::max_bytes`].
    TooLarge {
        /// Its length.
        len: usize,
        /// The cap.
        max: usize,
    },
    /// The byte after a key or value is not NUL.
    MissingNul {
        /// Offset where the NUL should be.
        offset: u64,
    },
    /// Bytes remain after the last pair.
    TrailingBytes {
        /// How many.
        extra: u64,
    },
    /// A key, a value or the whole map is longer than `u32::MAX` bytes.
    TooLong,
    /// The output buffer is smaller than [`encoded_len`].
    BufferTooSmall {
        /// Bytes needed.
        needed: usize,
        /// Bytes available.
        len: usize,
    },
}

impl core::fmt::Display for MapError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            MapError::Truncated { needed, len } => {
                write!(f, "header map truncated: needs {needed} bytes, has {len}")
            }
            MapError::TooManyPairs { count, max } => {
                write!(
                    f,
                    "header map has {count} pairs, more than the {max} allowed"
                )
            }
            MapError::TooLarge { len, max } => {
                write!(f, "header map is {len} bytes, more than the {max} allowed")
            }
            MapError::MissingNul { offset } => {
                write!(f, "header map: no NUL terminator at offset {offset}")
            }
            MapError::TrailingBytes { extra } => {
                write!(f, "header map: {extra} bytes after the last pair")
            }
            MapError::TooLong => write!(f, "header map: a length does not fit in 32 bits"),
            MapError::BufferTooSmall { needed, len } => {
                write!(f, "header map needs {needed} bytes, the buffer has {len}")
            }
        }
    }
}

/// A decoded, validated header map borrowing the encoded bytes.
#[derive(Debug, Clone, Copy)]
pub struct Pairs<'a> {
    /// The `(key_len, value_len)` table.
    table: &'a [u8],
    /// The keys and values with their NULs.
    data: &'a [u8],
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// Decodes and validates an encoded header map.
pub fn decode<'a>(bytes: &'a [u8], limits: &Limits) -> Result<Pairs<'a>, MapError> {
    if bytes.is_empty() || bytes == [0] {
        return Ok(Pairs {
            table: &[],
            data: &[],
        });
    }
    if bytes.len() > limits.max_bytes {
        return Err(MapError::TooLarge {
            len: bytes.len(),
            max: limits.max_bytes,
        });
    }
    if bytes.len() < 4 {
        return Err(MapError::Truncated {
            needed: 4,
            len: bytes.len(),
        });
    }
    let count = u32_at(bytes, 0);
    if count > limits.max_pairs {
        return Err(MapError::TooManyPairs {
            count,
            max: limits.max_pairs,
        });
    }
    let table_end = 4 + 8 * u64::from(count);
    let len = bytes.len() as u64;
    if table_end > len {
        return Err(MapError::Truncated {
            needed: table_end,
            len: bytes.len(),
        });
    }
    // table_end <= len, so it fits in usize.
    let (head, data) = bytes.split_at(table_end as usize);
    let table = &head[4..];
    let mut offset: u64 = 0;
    let data_len = data.len() as u64;
    for i in 0..count as usize {
        for field in 0..2 {
            let n = u64::from(u32_at(table, i * 8 + field * 4));
            let nul = offset + n;
            if nul >= data_len {
                return Err(MapError::Truncated {
                    needed: table_end + nul + 1,
                    len: bytes.len(),
                });
            }
            if data[nul as usize] != 0 {
                return Err(MapError::MissingNul {
                    offset: table_end + nul,
                });
            }
            offset = nul + 1;
        }
    }
    if offset != data_len {
        return Err(MapError::TrailingBytes {
            extra: data_len - offset,
        });
    }
    Ok(Pairs { table, data })
}

impl<'a> Pairs<'a> {
    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.table.len() / 8
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// The pairs in order, as `(key, value)` byte slices (without their NULs).
    pub fn iter(&self) -> PairsIter<'a> {
        PairsIter {
            table: self.table,
            data: self.data,
        }
    }
}

impl<'a> IntoIterator for Pairs<'a> {
    type Item = (&'a [u8], &'a [u8]);
    type IntoIter = PairsIter<'a>;
    fn into_iter(self) -> PairsIter<'a> {
        self.iter()
    }
}

/// Iterator over validated pairs.
#[derive(Debug, Clone)]
pub struct PairsIter<'a> {
    table: &'a [u8],
    data: &'a [u8],
}

impl<'a> Iterator for PairsIter<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        if self.table.len() < 8 {
            return None;
        }
        let k = u32_at(self.table, 0) as usize;
        let v = u32_at(self.table, 4) as usize;
        self.table = &self.table[8..];
        // Validated by `decode`: both fit, each followed by a NUL.
        let key = &self.data[..k];
        let value = &self.data[k + 1..k + 1 + v];
        self.data = &self.data[k + 1 + v + 1..];
        Some((key, value))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.table.len() / 8;
        (n, Some(n))
    }
}

impl ExactSizeIterator for PairsIter<'_> {}

/// Bytes needed to encode `pairs`.
pub fn encoded_len<'a, I>(pairs: I) -> Result<usize, MapError>
where
    I: IntoIterator<Item = (&'a [u8], &'a [u8])>,
{
    let mut total: u64 = 4;
    for (k, v) in pairs {
        if k.len() > u32::MAX as usize || v.len() > u32::MAX as usize {
            return Err(MapError::TooLong);
        }
        total += 8 + k.len() as u64 + v.len() as u64 + 2;
        if total > u64::from(u32::MAX) {
            return Err(MapError::TooLong);
        }
    }
    Ok(total as usize)
}

/// Encodes `pairs` into `out`; returns the number of bytes written.
pub fn encode_into<'a, I>(pairs: I, out: &mut [u8]) -> Result<usize, MapError>
where
    I: IntoIterator<Item = (&'a [u8], &'a [u8])>,
    I::IntoIter: Clone,
{
    let pairs = pairs.into_iter();
    let needed = encoded_len(pairs.clone())?;
    if out.len() < needed {
        return Err(MapError::BufferTooSmall {
            needed,
            len: out.len(),
        });
    }
    let count = pairs.clone().count();
    // encoded_len checked every length and the total against u32::MAX.
    out[..4].copy_from_slice(&(count as u32).to_le_bytes());
    let mut table = 4;
    let mut data = 4 + 8 * count;
    for (k, v) in pairs {
        out[table..table + 4].copy_from_slice(&(k.len() as u32).to_le_bytes());
        out[table + 4..table + 8].copy_from_slice(&(v.len() as u32).to_le_bytes());
        table += 8;
        for part in [k, v] {
            out[data..data + part.len()].copy_from_slice(part);
            out[data + part.len()] = 0;
            data += part.len() + 1;
        }
    }
    Ok(needed)
}

/// Encodes `pairs` into a new vector.
#[cfg(feature = "alloc")]
pub fn encode<'a, I>(pairs: I) -> Result<alloc::vec::Vec<u8>, MapError>
where
    I: IntoIterator<Item = (&'a [u8], &'a [u8])>,
    I::IntoIter: Clone,
{
    let pairs = pairs.into_iter();
    let mut out = alloc::vec![0; encoded_len(pairs.clone())?];
    encode_into(pairs, &mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    fn pairs(p: &Pairs<'_>) -> Vec<(Vec<u8>, Vec<u8>)> {
        p.iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect()
    }

    #[test]
    fn known_encoding() {
        let enc = encode([(&b":path"[..], &b"/a"[..]), (b"x", b"")]).unwrap();
        let mut want = Vec::new();
        want.extend_from_slice(&2u32.to_le_bytes());
        for n in [5u32, 2, 1, 0] {
            want.extend_from_slice(&n.to_le_bytes());
        }
        want.extend_from_slice(b":path\0/a\0x\0\0");
        assert_eq!(enc, want);
        let d = decode(&enc, &Limits::default()).unwrap();
        assert_eq!(d.len(), 2);
        assert_eq!(
            pairs(&d),
            [
                (b":path".to_vec(), b"/a".to_vec()),
                (b"x".to_vec(), Vec::new())
            ]
        );
    }

    #[test]
    fn three_forms_of_empty() {
        let l = Limits::default();
        for empty in [&[][..], &[0][..], &[0, 0, 0, 0][..]] {
            assert!(decode(empty, &l).unwrap().is_empty(), "{empty:?}");
        }
        assert_eq!(encode(core::iter::empty()).unwrap(), [0, 0, 0, 0]);
    }

    #[test]
    fn rejects_malformed_input() {
        let l = Limits::default();
        let good = encode([(&b"k"[..], &b"v"[..])]).unwrap();
        // Trailing byte.
        let mut t = good.clone();
        t.push(0);
        assert_eq!(
            decode(&t, &l).unwrap_err(),
            MapError::TrailingBytes { extra: 1 }
        );
        // Missing NUL after the key.
        let mut m = good.clone();
        m[12 + 1] = b'!';
        assert_eq!(
            decode(&m, &l).unwrap_err(),
            MapError::MissingNul { offset: 13 }
        );
        // Truncated data, truncated table, truncated count.
        assert!(matches!(
            decode(&good[..good.len() - 1], &l),
            Err(MapError::Truncated { .. })
        ));
        assert!(matches!(
            decode(&good[..8], &l),
            Err(MapError::Truncated { .. })
        ));
        assert!(matches!(
            decode(&[1, 0], &l),
            Err(MapError::Truncated { .. })
        ));
        // A length that points far beyond the buffer (no overflow, no panic).
        let mut huge = good.clone();
        huge[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(decode(&huge, &l), Err(MapError::Truncated { .. })));
        // An absurd count.
        let absurd = u32::MAX.to_le_bytes();
        assert_eq!(
            decode(&absurd, &l).unwrap_err(),
            MapError::TooManyPairs {
                count: u32::MAX,
                max: 8192
            }
        );
        // Over the byte cap.
        let small = Limits {
            max_pairs: 10,
            max_bytes: 8,
        };
        assert_eq!(
            decode(&good, &small).unwrap_err(),
            MapError::TooLarge {
                len: good.len(),
                max: 8
            }
        );
    }

    #[test]
    fn encode_into_checks_the_buffer() {
        let mut buf = [0u8; 8];
        assert_eq!(
            encode_into([(&b"k"[..], &b"v"[..])], &mut buf).unwrap_err(),
            MapError::BufferTooSmall { needed: 16, len: 8 }
        );
    }
}
