//! What the iiko BackOffice, iikoFront, IceCash and Openbravo plugins share:
//! reading files of the installation and of packages, remembering a log position
//! across steps, reading values of small XML files, and waiting for a product's
//! log to show it started.
//!
//! Everything here is a thin layer over the SDK's host calls and `std::fs` under
//! the granted directories; errors are [`Stop`]s that name the file involved.

use std::time::{Duration, Instant};

use posup_plugin_sdk::{ErrorKind, Stop, archive, kv, logs, services};

/// Whether anything (file, folder or link) exists at a guest path.
pub fn exists(path: &str) -> bool {
    std::fs::symlink_metadata(path).is_ok()
}

/// The file name of a guest path.
pub fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// `<prefix><version><suffix>` → `version`, for package file names such as
/// `dIceCash_2.0.060.tgz`. Versions are letters, digits, `.`, `-` and `_`.
pub fn version_in_name<'a>(name: &'a str, prefix: &str, suffixes: &[&str]) -> Option<&'a str> {
    let rest = name.strip_prefix(prefix)?;
    suffixes
        .iter()
        .find_map(|s| rest.strip_suffix(s))
        .filter(|v| {
            !v.is_empty()
                && v.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
                && v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || ".-_".contains(c))
        })
}

/// A text entry of a package archive, `None` when the package has no such entry.
/// Entries are matched with and without a leading `./`, as `tar` writes both.
pub fn package_text(package: &str, entry: &str, max: u64) -> Result<Option<String>, String> {
    for name in [entry.to_owned(), format!("./{entry}")] {
        match archive::read_entry(package, &name, max) {
            Ok(bytes) => {
                return String::from_utf8(bytes)
                    .map(Some)
                    .map_err(|_| format!("{package}: {entry} is not UTF-8 text"));
            }
            Err(e) if e.kind == ErrorKind::NotFound => continue,
            Err(e) => return Err(e.message),
        }
    }
    Ok(None)
}

/// The text of the first `<tag>…</tag>` of a small XML document, trimmed and
/// without a CDATA wrapper.
pub fn xml_value<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let start = xml.find(&open)? + open.len();
    let len = xml[start..].find(&format!("</{tag}>"))?;
    let value = xml[start..start + len].trim();
    Some(
        value
            .strip_prefix("<![CDATA[")
            .and_then(|v| v.strip_suffix("]]>"))
            .unwrap_or(value),
    )
}

/// The message of a [`Stop`], for answers that are plain strings (`inventory`).
pub fn stop_text(stop: Stop) -> String {
    match stop {
        Stop::Failed(s) => s,
        Stop::NotNow { reason, .. } => reason,
    }
}

/// Remembers the current end of `log` under `key`, so a later step reads only
/// what the product logs after this moment.
pub fn remember_log_end(key: &str, log: &str) -> Result<(), Stop> {
    let mark = logs::end(log)?;
    kv::set(key, &format!("{}:{}", mark.file_id, mark.offset))?;
    Ok(())
}

/// The log position remembered under `key`; the start of the log when none is.
pub fn remembered_mark(key: &str) -> Result<logs::Mark, Stop> {
    let mark = kv::get(key)?.and_then(|m| {
        let (id, off) = m.split_once(':')?;
        Some(logs::Mark {
            file_id: id.parse().ok()?,
            offset: off.parse().ok()?,
        })
    });
    Ok(mark.unwrap_or(logs::Mark {
        file_id: 0,
        offset: 0,
    }))
}

/// How long a plugin waits for its product to come up: the server variable
/// `var` in seconds, or `default`.
pub fn wait_limit(var: &str, default: Duration) -> Duration {
    posup_plugin_sdk::vars::get(var)
        .and_then(|s| s.trim().parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(default)
}

/// What [`watch_log`]'s judge says about the lines seen so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Watch {
    /// Keep reading.
    Wait,
    /// The product is up as expected.
    Done,
    /// The product failed; the reason is shown to operators.
    Fail(String),
}

/// Reads `log` from `mark` until `judge` decides, the service stops running, or
/// `limit` passes. `judge` gets each new line containing one of `patterns`
/// (with the pattern's index) and answers for the log as seen so far.
/// `waiting_for` names what a timeout missed.
pub fn watch_log(
    log: &str,
    mut mark: logs::Mark,
    patterns: &[&str],
    service: &str,
    limit: Duration,
    waiting_for: &str,
    mut judge: impl FnMut(u32, &str) -> Watch,
) -> Result<(), Stop> {
    let patterns: Vec<String> = patterns.iter().map(|p| (*p).to_owned()).collect();
    let started = Instant::now();
    loop {
        // The state is taken before the log is read: when the program has ended,
        // everything it wrote is then in the log, and its last lines are judged.
        let running = services::status(service)? == services::State::Running;
        let scan = logs::scan(log, mark, &patterns)?;
        mark = scan.next;
        for found in scan.found {
            match judge(found.pattern, found.line.trim()) {
                Watch::Wait => {}
                Watch::Done => return Ok(()),
                Watch::Fail(reason) => return Err(Stop::failed(reason)),
            }
        }
        if !running {
            // A program that crashed on start said why in its last line.
            let last = logs::tail(log, 1).ok().and_then(|l| l.last().cloned());
            return Err(Stop::failed(match last {
                Some(line) => format!(
                    "{service} is not running after the update; the last line of {log}: {}",
                    line.trim()
                ),
                None => format!("{service} is not running after the update; see {log}"),
            }));
        }
        if started.elapsed() > limit {
            return Err(Stop::failed(format!(
                "{service}: {waiting_for} did not appear in {log} within {} s",
                limit.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_in_names() {
        assert_eq!(
            version_in_name("dIceCash_2.0.060.tgz", "dIceCash_", &[".tgz", ".tar.gz"]),
            Some("2.0.060")
        );
        assert_eq!(
            version_in_name("dIceCash_.tgz", "dIceCash_", &[".tgz"]),
            None
        );
        assert_eq!(
            version_in_name("dIceCash_../x.tgz", "dIceCash_", &[".tgz"]),
            None
        );
        assert_eq!(version_in_name("other_1.tgz", "dIceCash_", &[".tgz"]), None);
    }

    #[test]
    fn xml_values() {
        let xml = "<a><VERSION><![CDATA[1.8.3900]]></VERSION><Version> 3.2.0 </Version></a>";
        assert_eq!(xml_value(xml, "VERSION"), Some("1.8.3900"));
        assert_eq!(xml_value(xml, "Version"), Some("3.2.0"));
        assert_eq!(xml_value(xml, "Missing"), None);
    }
}
