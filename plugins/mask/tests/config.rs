//! Loading the plugin: good configurations load, bad ones are refused by the host.

mod common;

use common::{kit, try_load};
use sluice_testkit::{json, Options};

#[test]
fn a_good_configuration_loads_and_names_its_rules() {
    let kit = kit(json!({
        "presets": ["email", "card"],
        "patterns": [{ "name": "ssn", "regex": "[0-9]{3}-[0-9]{2}-[0-9]{4}" }]
    }));
    assert!(kit.logged("mask: configured, rules: email, card, ssn"));
}

#[test]
fn an_empty_configuration_uses_every_preset() {
    let kit = try_load(Options::default()).expect("loads");
    assert!(kit.logged("mask: configured, rules: email, card, iban, bearer"));
}

#[test]
fn bad_configurations_are_refused() {
    for bad in [
        json!({ "presets": ["email", "phone"] }),
        json!({ "presets": ["email", "email"] }),
        json!({ "presets": [] }),
        json!({ "patterns": [{ "name": "x", "regex": "(" }] }),
        json!({ "patterns": [{ "name": "x", "regex": "a*" }] }),
        json!({ "patterns": [{ "name": "x", "regex": "\\p{Greek}" }] }),
        json!({ "patterns": [{ "name": "", "regex": "a" }] }),
        json!({ "patterns": [{ "regex": "a" }] }),
        json!({ "patterns": [{ "name": "x", "regex": "a", "flags": "i" }] }),
        json!({ "oversize": "drop" }),
        json!({ "max_body_bytes": 0 }),
        json!({ "content_types": [""] }),
        json!({ "count_header": "x masked" }),
        json!({ "response": "yes" }),
        json!({ "presets": ["email"], "replacment": "x" }),
    ] {
        let r = try_load(Options::default().config_json(&bad));
        let err = r.err().unwrap_or_else(|| panic!("accepted {bad}"));
        assert!(
            err.to_string()
                .contains("proxy_on_configure returned false"),
            "{bad}: {err}"
        );
    }
}
