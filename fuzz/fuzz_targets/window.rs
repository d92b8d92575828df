//! Maintenance-window schedules as operators type them, with a duration and an
//! instant: parsing answers, and an opening found is open.
#![no_main]

use chrono::{TimeZone, Utc};
use libfuzzer_sys::fuzz_target;
use posup_policy::Window;

fuzz_target!(|data: &[u8]| {
    if data.len() < 6 {
        return;
    }
    let minutes = u32::from(u16::from_le_bytes([data[0], data[1]]));
    let at = i64::from(u32::from_le_bytes([data[2], data[3], data[4], data[5]]));
    let Ok(text) = std::str::from_utf8(&data[6..]) else {
        return;
    };
    let Ok(w) = Window::new(text, minutes, "Europe/Berlin") else {
        return;
    };
    let at = Utc.timestamp_opt(1_700_000_000 + at, 0).unwrap();
    if let Some(open) = w.next_open(at) {
        assert!(open > at && w.is_open(open));
    }
});
