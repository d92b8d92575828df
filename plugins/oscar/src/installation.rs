//! The installation's own record of its updates: the next update number, the
//! archives kept as `Upd<nn>`, the staged directory of an update, the installed
//! release.

use std::time::{SystemTime, UNIX_EPOCH};

use posup_plugin_sdk::files::{exists, file_name};
use posup_plugin_sdk::{IoContext, StepContext, Stop, kv};

use crate::{INSTALLED_KEY, PRODUCT, UPDATE_DIR, VERSION_FILE};

/// The sequence number of the update of this step's package, once staged.
pub(crate) fn current(ctx: &StepContext) -> Result<Option<u32>, Stop> {
    if kv::get("package")?.as_deref() != Some(file_name(&ctx.package)) {
        return Ok(None);
    }
    Ok(kv::get("seq")?.and_then(|s| s.parse().ok()))
}

/// One more than the highest `UPD<nnn>` in `work/update`.
pub(crate) fn next_seq() -> Result<u32, Stop> {
    let dir = format!("{PRODUCT}/{UPDATE_DIR}");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(1);
    };
    let mut max = 0;
    for entry in entries {
        let name = entry.at(&dir)?.file_name().to_string_lossy().into_owned();
        if let Some(n) = name
            .strip_prefix("UPD")
            .and_then(|r| r.split_once('.'))
            .and_then(|(n, _)| n.parse::<u32>().ok())
        {
            max = max.max(n);
        }
    }
    Ok(max + 1)
}

pub(crate) fn upd_name(seq: u32, ext: &str) -> String {
    format!("UPD{seq:03}.{ext}")
}

pub(crate) fn kept_name(seq: u32, ext: &str) -> String {
    format!("Upd{seq:02}.{ext}")
}

/// The new installation directory of update `seq`, beside the installation's
/// staging area: the name that holds the old installation after the exchange.
pub(crate) fn staged_dir(seq: u32) -> String {
    format!("/staging/OscUpd{seq:02}")
}

/// `Upd<nn>.*` archives kept in the installation root.
pub(crate) fn kept_archives() -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(PRODUCT) else {
        return Vec::new();
    };
    let mut kept: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| {
            n.strip_prefix("Upd")
                .and_then(|r| r.split_once('.'))
                .is_some_and(|(d, _)| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
        })
        .collect();
    kept.sort();
    kept
}

/// An OSCAR installation has the server's data (`work.srv`) and its programs
/// (`bin`), as the document describes it.
pub(crate) fn require_installation() -> Result<(), Stop> {
    for dir in ["work.srv", "bin"] {
        if !std::fs::metadata(format!("{PRODUCT}/{dir}")).is_ok_and(|m| m.is_dir()) {
            return Err(Stop::failed(format!(
                "no MICROS Retail OSCAR POS installation at {PRODUCT}: its {dir} folder is missing \
                 (the device configuration's `product` must be the installation folder, e.g. /opt/osc_usr/osc21)"
            )));
        }
    }
    Ok(())
}

/// The installation's `VERSION` where it has one; otherwise the last update
/// posup installed here; empty when neither tells.
pub(crate) fn installed_version() -> Result<String, Stop> {
    if exists(VERSION_FILE) {
        return Ok(std::fs::read_to_string(VERSION_FILE)
            .at(VERSION_FILE)?
            .trim()
            .to_owned());
    }
    Ok(kv::get(INSTALLED_KEY)?.unwrap_or_default())
}

/// Now, as the Update State log writes it (UTC: the sandbox has no time zone).
pub(crate) fn timestamp() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rest) = ((secs / 86_400) as i64, secs % 86_400);
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}Z",
        rest / 3_600,
        rest % 3_600 / 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn update_names() {
        assert_eq!(upd_name(3, "tgz"), "UPD003.tgz");
        assert_eq!(kept_name(3, "zip"), "Upd03.zip");
        assert_eq!(staged_dir(12), "/staging/OscUpd12");
    }
}
