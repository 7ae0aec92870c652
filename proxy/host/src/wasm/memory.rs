//! Bounds-checked access to a guest's linear memory.
//!
//! Every pointer and length a guest hands the host is untrusted. These functions take the
//! memory as a byte slice (`Memory::data`), do all arithmetic in `u64`, and return
//! [`MemError`] — never panic — for anything outside it. Host calls turn that error into
//! `INVALID_MEMORY_ACCESS`.

/// A guest pointer/length that the host refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MemError {
    /// `[ptr, ptr + len)` is not inside the memory.
    #[error("guest range {ptr:#x}+{len} is outside its {size}-byte memory")]
    OutOfBounds {
        /// Start.
        ptr: u32,
        /// Length.
        len: u32,
        /// Memory size.
        size: usize,
    },
    /// The length is over the cap for this kind of value.
    #[error("guest value of {len} bytes is over the {max}-byte limit")]
    TooLarge {
        /// Length asked for.
        len: u32,
        /// The cap.
        max: u32,
    },
}

fn range(size: usize, ptr: u32, len: u32) -> Result<std::ops::Range<usize>, MemError> {
    let end = u64::from(ptr) + u64::from(len);
    if end > size as u64 {
        return Err(MemError::OutOfBounds { ptr, len, size });
    }
    // end <= size, which is a usize, so both fit.
    Ok(ptr as usize..end as usize)
}

/// The guest bytes `[ptr, ptr + len)`.
pub fn slice(mem: &[u8], ptr: u32, len: u32) -> Result<&[u8], MemError> {
    Ok(&mem[range(mem.len(), ptr, len)?])
}

/// The guest bytes `[ptr, ptr + len)`, at most `max` of them.
pub fn slice_capped(mem: &[u8], ptr: u32, len: u32, max: u32) -> Result<&[u8], MemError> {
    if len > max {
        return Err(MemError::TooLarge { len, max });
    }
    slice(mem, ptr, len)
}

/// The guest bytes `[ptr, ptr + len)`, writable.
pub fn slice_mut(mem: &mut [u8], ptr: u32, len: u32) -> Result<&mut [u8], MemError> {
    let r = range(mem.len(), ptr, len)?;
    Ok(&mut mem[r])
}

/// Reads a little-endian `u32` at `ptr`.
pub fn read_u32(mem: &[u8], ptr: u32) -> Result<u32, MemError> {
    let b = slice(mem, ptr, 4)?;
    Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// Writes a little-endian `u32` at `ptr`.
pub fn write_u32(mem: &mut [u8], ptr: u32, value: u32) -> Result<(), MemError> {
    slice_mut(mem, ptr, 4)?.copy_from_slice(&value.to_le_bytes());
    Ok(())
}

/// Writes a little-endian `u64` at `ptr`.
pub fn write_u64(mem: &mut [u8], ptr: u32, value: u64) -> Result<(), MemError> {
    slice_mut(mem, ptr, 8)?.copy_from_slice(&value.to_le_bytes());
    Ok(())
}

/// Copies `bytes` to `ptr`.
pub fn write(mem: &mut [u8], ptr: u32, bytes: &[u8]) -> Result<(), MemError> {
    let len = u32::try_from(bytes.len()).map_err(|_| MemError::TooLarge {
        len: u32::MAX,
        max: u32::MAX,
    })?;
    slice_mut(mem, ptr, len)?.copy_from_slice(bytes);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_at_the_edges() {
        let mem = [7u8; 16];
        assert_eq!(slice(&mem, 0, 16).unwrap().len(), 16);
        assert_eq!(slice(&mem, 16, 0).unwrap().len(), 0);
        assert_eq!(
            slice(&mem, 15, 2),
            Err(MemError::OutOfBounds {
                ptr: 15,
                len: 2,
                size: 16
            })
        );
        assert!(slice(&mem, 17, 0).is_err());
        // No wrap-around: ptr + len overflows u32 but not u64.
        assert!(slice(&mem, u32::MAX, u32::MAX).is_err());
        assert!(slice(&mem, 1, u32::MAX).is_err());
        assert_eq!(
            slice_capped(&mem, 0, 10, 8),
            Err(MemError::TooLarge { len: 10, max: 8 })
        );
    }

    #[test]
    fn integers_round_trip_and_are_checked() {
        let mut mem = [0u8; 12];
        write_u32(&mut mem, 8, 0xdead_beef).unwrap();
        assert_eq!(read_u32(&mem, 8).unwrap(), 0xdead_beef);
        assert_eq!(&mem[8..], &[0xef, 0xbe, 0xad, 0xde]);
        assert!(write_u32(&mut mem, 9, 1).is_err());
        assert!(read_u32(&mem, 10).is_err());
        write_u64(&mut mem, 0, u64::MAX).unwrap();
        assert!(write_u64(&mut mem, 5, 1).is_err());
        write(&mut mem, 2, b"ab").unwrap();
        assert_eq!(&mem[2..4], b"ab");
        assert!(write(&mut mem, 11, b"ab").is_err());
    }
}
