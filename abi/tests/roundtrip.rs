//! Property tests of the header-map codec: whatever is encoded decodes to the same pairs, and
//! no input makes the decoder panic.

use proptest::prelude::*;
use sluice_abi::map::{decode, encode, Limits};

fn header_pairs() -> impl Strategy<Value = Vec<(Vec<u8>, Vec<u8>)>> {
    // Keys and values may hold any byte but NUL (NUL terminates them on the wire).
    let bytes = proptest::collection::vec(1u8..=255, 0..40);
    proptest::collection::vec((bytes.clone(), bytes), 0..30)
}

proptest! {
    #[test]
    fn encode_then_decode_round_trips(pairs in header_pairs()) {
        let enc = encode(pairs.iter().map(|(k, v)| (&k[..], &v[..]))).unwrap();
        let dec = decode(&enc, &Limits::default()).unwrap();
        prop_assert_eq!(dec.len(), pairs.len());
        let back: Vec<(Vec<u8>, Vec<u8>)> =
            dec.iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect();
        prop_assert_eq!(back, pairs);
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        if let Ok(pairs) = decode(&bytes, &Limits::default()) {
            // Whatever decodes re-encodes to exactly the same bytes (or an accepted empty form).
            let again = encode(pairs.iter()).unwrap();
            if !pairs.is_empty() {
                prop_assert_eq!(again, bytes);
            }
        }
    }

    #[test]
    fn truncating_a_valid_map_is_an_error(pairs in header_pairs(), cut in 1usize..64) {
        let enc = encode(pairs.iter().map(|(k, v)| (&k[..], &v[..]))).unwrap();
        let keep = enc.len().saturating_sub(cut);
        if keep > 4 {
            prop_assert!(decode(&enc[..keep], &Limits::default()).is_err());
        }
    }

    #[test]
    fn corrupting_one_byte_never_panics(pairs in header_pairs(), at in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let mut enc = encode(pairs.iter().map(|(k, v)| (&k[..], &v[..]))).unwrap();
        let i = at.index(enc.len());
        enc[i] = byte;
        if let Ok(dec) = decode(&enc, &Limits::default()) {
            // Still valid after the change: then it is exactly a canonical encoding.
            if !dec.is_empty() {
                prop_assert_eq!(encode(dec.iter()).unwrap(), enc);
            }
        }
    }
}
