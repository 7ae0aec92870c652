//! The property-path codec (`sluice_abi::path`): any bytes parse to an error or to segments
//! that join back to the same bytes (less one tolerated trailing NUL); nothing panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_abi::path;

fuzz_target!(|data: &[u8]| {
    let Ok(p) = path::parse(data, 16) else {
        return;
    };
    let segments: Vec<&[u8]> = p.segments().collect();
    assert!(segments.len() <= 16);
    // One trailing NUL is tolerated and dropped (some SDKs send it).
    assert_eq!(p.as_bytes(), data.strip_suffix(&[0]).unwrap_or(data));
    if let Ok(text) = segments
        .iter()
        .map(|s| std::str::from_utf8(s))
        .collect::<Result<Vec<&str>, _>>()
    {
        let joined = path::join(&text);
        let again = path::parse(&joined, 16).expect("a joined path parses");
        assert_eq!(again.segments().collect::<Vec<_>>(), segments);
    }
});
