//! What the built-in plugins share: reading files of the installation and of
//! packages, remembering a log position across steps, reading values of small
//! XML files, waiting for a product's log to show it started, and the
//! configuration every plugin takes from server variables — where a product's
//! log or facts are, and how long a product must keep running after an update
//! when nothing else tells that it started well.
//!
//! Everything here is a thin layer over the SDK's host calls and `std::fs` under
//! the granted directories; errors are [`Stop`]s that name the file involved.

use std::time::{Duration, Instant};

use posup_plugin_sdk::{ErrorKind, Stop, archive, kv, logs, services, vars};

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
/// what the product logs after this moment. A log not written yet is read from
/// its start later.
pub fn remember_log_end(key: &str, log: &str) -> Result<(), Stop> {
    match logs::end(log) {
        Ok(mark) => kv::set(key, &format!("{}:{}", mark.file_id, mark.offset))?,
        Err(e) if e.kind == ErrorKind::NotFound => kv::delete(key)?,
        Err(e) => return Err(e.into()),
    }
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
    vars::get(var)
        .and_then(|s| s.trim().parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(default)
}

/// The guest path of the log the server variable `var` names in the logs folder;
/// `None` where the variable is unset or empty. Only a plain file name is
/// taken, never a path.
pub fn named_log(var: &str) -> Result<Option<String>, Stop> {
    let Some(name) = vars::get(var).map(|v| v.trim().to_owned()) else {
        return Ok(None);
    };
    if name.is_empty() {
        return Ok(None);
    }
    if name.contains('/') || name == "." || name == ".." {
        return Err(Stop::failed(format!(
            "the server variable `{var}` must name a file in the device's logs folder, not a path: {name}"
        )));
    }
    Ok(Some(format!("/logs/{name}")))
}

/// The log the server variable `var` names, or `default` in the logs folder.
pub fn log_or(var: &str, default: &str) -> Result<String, Stop> {
    Ok(named_log(var)?.unwrap_or_else(|| format!("/logs/{default}")))
}

/// Whether `log` can be read: a product whose log is not where the device's
/// variables say is verified by its services staying up instead.
pub fn log_present(log: &str) -> bool {
    logs::tail(log, 1).is_ok()
}

/// The server variable `var`, or `default`, with `{plugin}` replaced by
/// `plugin`: the text of a log line a plugin looks for.
pub fn log_line(var: &str, default: &str, plugin: &str) -> String {
    vars::get(var)
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| default.to_owned())
        .replace("{plugin}", plugin)
}

/// A path inside `/product` named by the server variable `var`, or `default`:
/// a relative path without `.` or `..` components, so it stays inside.
pub fn product_path(var: &str, default: &str) -> Result<String, Stop> {
    let rel = vars::get(var)
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_owned());
    if rel.starts_with('/')
        || rel
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(Stop::failed(format!(
            "the server variable `{var}` must be a path inside the installation such as {default}, not {rel:?}"
        )));
    }
    Ok(format!("/product/{rel}"))
}

/// A service's state in words.
pub fn state_name(state: services::State) -> &'static str {
    match state {
        services::State::Running => "running",
        services::State::Stopped => "stopped",
        services::State::Failed => "failed",
    }
}

/// Every one of `names` must keep running for `limit` (the server variable
/// `var` in seconds, or `default`): where no log tells, the one sign a product
/// gives that it started well. A program that fails later is not caught.
pub fn settle(names: &[&str], var: &str, default: Duration) -> Result<(), Stop> {
    let limit = wait_limit(var, default);
    let started = Instant::now();
    loop {
        for name in names {
            let state = services::status(name)?;
            if state != services::State::Running {
                return Err(Stop::failed(format!(
                    "{name} stopped ({}) {} s after it was started with the update",
                    state_name(state),
                    started.elapsed().as_secs()
                )));
            }
        }
        if started.elapsed() >= limit {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
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
