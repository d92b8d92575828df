//! OSCAR's `.chg` files and their application to a configuration file: the input
//! is the change file and the configuration, split at the first NUL byte.
#![no_main]

use libfuzzer_sys::fuzz_target;
use posup_plugin_oscar::package::{change_config, describe, parse_changes};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (chg, config) = text.split_once('\0').unwrap_or((text, ""));
    if let Ok(changes) = parse_changes("fuzz.chg", chg) {
        let _ = describe(&changes);
        let once = change_config(config, &changes, true);
        // Applying the same changes again changes nothing more.
        assert_eq!(change_config(&once, &changes, true), once);
    }
});
