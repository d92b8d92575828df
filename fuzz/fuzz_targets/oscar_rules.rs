//! OSCAR's `Rules` file, as any package may carry it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use posup_plugin_oscar::package::parse_rules;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(rules) = parse_rules(text)
    {
        assert!(!(rules.complete && rules.small));
    }
});
