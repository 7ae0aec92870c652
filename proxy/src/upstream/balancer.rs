//! Endpoint selection primitives.

/// The first index from `start` (wrapping) for which `ok` holds.
pub(super) fn scan_from(start: usize, n: usize, ok: impl Fn(usize) -> bool) -> Option<usize> {
    (0..n).map(|k| (start + k) % n).find(|&i| ok(i))
}

/// Rendezvous (highest random weight) hashing: the eligible index with the highest score for
/// `key`. Removing an endpoint only moves the keys that were on it.
pub(super) fn rendezvous(key: &[u8], n: usize, ok: impl Fn(usize) -> bool) -> Option<usize> {
    let h = crate::hash::fnv1a64(key);
    (0..n)
        .filter(|&i| ok(i))
        .max_by_key(|&i| mix(h ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)))
}

/// splitmix64's finaliser: spreads the bits so neighbouring indexes score independently.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_wraps_and_skips() {
        assert_eq!(scan_from(2, 4, |i| i != 2 && i != 3), Some(0));
        assert_eq!(scan_from(1, 3, |_| false), None);
    }

    #[test]
    fn rendezvous_is_stable_and_spreads() {
        let mut counts = [0usize; 4];
        for k in 0..4000u32 {
            let key = k.to_string();
            let a = rendezvous(key.as_bytes(), 4, |_| true).unwrap();
            assert_eq!(Some(a), rendezvous(key.as_bytes(), 4, |_| true));
            counts[a] += 1;
        }
        for c in counts {
            assert!((700..1300).contains(&c), "uneven spread: {counts:?}");
        }
    }

    #[test]
    fn rendezvous_moves_only_keys_of_a_removed_endpoint() {
        for k in 0..1000u32 {
            let key = k.to_string();
            let before = rendezvous(key.as_bytes(), 4, |_| true).unwrap();
            let after = rendezvous(key.as_bytes(), 4, |i| i != 3).unwrap();
            if before != 3 {
                assert_eq!(before, after, "key {key} moved though its endpoint stayed");
            }
        }
    }
}
