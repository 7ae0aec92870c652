//! The header-map codec (`sluice_abi::map`): any bytes decode to an error or to pairs that
//! encode back to an equivalent map; nothing panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_abi::map;

fuzz_target!(|data: &[u8]| {
    let limits = map::Limits {
        max_pairs: 1024,
        max_bytes: 64 * 1024,
    };
    let Ok(pairs) = map::decode(data, &limits) else {
        return;
    };
    let list: Vec<(&[u8], &[u8])> = pairs.iter().collect();
    assert_eq!(list.len(), pairs.len());
    let encoded = map::encode(list.iter().copied()).expect("decoded pairs encode");
    let again = map::decode(&encoded, &limits).expect("an encoded map decodes");
    let round: Vec<(&[u8], &[u8])> = again.iter().collect();
    assert_eq!(round, list, "the codec does not round-trip");
});
