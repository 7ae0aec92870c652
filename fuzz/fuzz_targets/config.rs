//! Config parsing and validation: any text is a valid config or a list of errors, each
//! naming a field; nothing panics. Paths resolve against an empty directory, so no file a
//! config names exists.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(errors) =
        sluice::config::Config::from_yaml(text, std::path::Path::new("/nonexistent-fuzz-base"))
    {
        assert!(!errors.0.is_empty(), "an error without a message");
        for e in &errors.0 {
            assert!(!e.to_string().is_empty());
        }
    }
});
