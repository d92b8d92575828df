//! A plugin's settings from server variables: where a product's log and facts
//! are on this site, and how long to wait for it. Each has a documented default,
//! so a plugin works before anyone set anything.

use std::time::Duration;

use super::{Stop, vars};

/// A duration in seconds from the server variable `var`, or `default` where it
/// is unset or not a number.
pub fn wait_limit(var: &str, default: Duration) -> Duration {
    vars::get(var)
        .and_then(|s| s.trim().parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(default)
}

/// The server variable `var`, trimmed; `None` where it is unset or empty.
pub fn text(var: &str) -> Option<String> {
    vars::get(var)
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// The guest path of the log the server variable `var` names in the logs
/// folder; `None` where the variable is unset or empty. Only a plain file name
/// is taken, never a path.
pub fn named_log(var: &str) -> Result<Option<String>, Stop> {
    let Some(name) = text(var) else {
        return Ok(None);
    };
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

/// The server variable `var`, or `default`, with `{plugin}` replaced by
/// `plugin`: the text of a log line a plugin looks for. The value is taken as
/// it is, spaces included (` ERROR ` is not `ERROR`).
pub fn log_line(var: &str, default: &str, plugin: &str) -> String {
    vars::get(var)
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| default.to_owned())
        .replace("{plugin}", plugin)
}

/// A path inside `/product` named by the server variable `var`, or `default`:
/// a relative path without `.` or `..` components, so it stays inside.
pub fn product_path(var: &str, default: &str) -> Result<String, Stop> {
    let rel = text(var).unwrap_or_else(|| default.to_owned());
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
