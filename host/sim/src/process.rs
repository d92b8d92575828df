//! What the simulated products share: a main loop
//! that runs until SIGTERM or SIGINT, the control file a test steers a product
//! with, stand-ins for compiled program files, and small file helpers.
//!
//! A control file holds `name = value` lines (`#` starts a comment). It lies
//! beside the product folder (`<product>.sim-control`), not in it, so it survives
//! an update that replaces the folder and is never part of the installed tree a
//! test compares before and after a rollback.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// A simulated product process: started once, polled, stopped by a signal.
pub(crate) trait SimProcess {
    /// Logs the start and begins work. An error ends the process with a failure
    /// exit code, as a program that crashes on start does.
    fn start(&mut self) -> io::Result<()>;
    /// Called every poll interval while the process runs.
    fn poll(&mut self) -> io::Result<()>;
    /// Logs the stop; `why` names the signal.
    fn stop(&mut self, why: &str) -> io::Result<()>;
}

/// Runs `process` until SIGTERM or SIGINT, polling it every `interval`.
pub(crate) fn run_until_signal(mut process: impl SimProcess, interval: Duration) -> io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        use tokio::signal::unix::{SignalKind, signal};
        // The handlers are in place before the first line is logged: a stop that
        // comes at once still ends with the product's stop lines.
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        process.start()?;
        loop {
            tokio::select! {
                _ = term.recv() => return process.stop("SIGTERM"),
                _ = int.recv() => return process.stop("SIGINT"),
                _ = tokio::time::sleep(interval) => process.poll()?,
            }
        }
    })
}

/// Runs `process` on the calling thread until `stop` is set: for unit tests.
pub(crate) fn run_until_flag(
    mut process: impl SimProcess,
    interval: Duration,
    stop: &AtomicBool,
) -> io::Result<()> {
    process.start()?;
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(interval);
        process.poll()?;
    }
    process.stop("stop requested")
}

/// The control file of the product installed at `product`.
pub(crate) fn control_path(product: &Path) -> PathBuf {
    let mut name = product.as_os_str().to_owned();
    name.push(".sim-control");
    PathBuf::from(name)
}

/// The `name = value` lines of a control file; none when it does not exist.
pub(crate) fn read_control(path: &Path) -> BTreeMap<String, String> {
    fs::read_to_string(path)
        .map(|text| parse_settings(&text, '='))
        .unwrap_or_default()
}

/// Sets one value in a control file, keeping the others.
pub(crate) fn set_control(path: &Path, name: &str, value: &str) -> io::Result<()> {
    let mut values = read_control(path);
    values.insert(name.to_owned(), value.to_owned());
    let text: String = values.iter().map(|(k, v)| format!("{k} = {v}\n")).collect();
    write_atomically(path, text.as_bytes())
}

/// `name<sep>value` lines, trimmed; blank lines and `#` comments are skipped.
pub(crate) fn parse_settings(text: &str, sep: char) -> BTreeMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once(sep))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

/// Bytes that stand for a compiled program: a first line naming it and its
/// version (`MZ SIM <what> <version>`), then filler that differs between
/// versions, so an update really changes the file.
pub(crate) fn stand_in_binary(what: &str, version: &str, len: usize) -> Vec<u8> {
    let mut out = format!("MZ SIM {what} {version}\n").into_bytes();
    let mut x: u32 = version.bytes().fold(2_166_136_261, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(16_777_619)
    });
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        out.push(x as u8);
    }
    out
}

/// The version a stand-in program names in its first line, when `what` is the
/// program it names.
pub(crate) fn stand_in_version(file: &Path, what: &str) -> io::Result<String> {
    let bytes = fs::read(file).map_err(|e| with_path(file, e))?;
    let first = bytes.split(|&b| b == b'\n').next().unwrap_or_default();
    let first = String::from_utf8_lossy(first);
    first
        .strip_prefix(&format!("MZ SIM {what} "))
        .map(|v| v.trim().to_owned())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: not a {what} program file", file.display()),
            )
        })
}

pub(crate) use posup_plugin_sdk::version::compare as compare_versions;

/// The text of the first `<tag>...</tag>` of a small XML file, without a CDATA
/// wrapper.
pub(crate) fn xml_value<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
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

/// Versions and names become file names: no folders, nothing hidden.
pub(crate) fn check_name(what: &str, value: &str) -> io::Result<()> {
    let ok = !value.is_empty()
        && !value.starts_with('.')
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-+".contains(c));
    if ok {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{what} {value:?}: use letters, digits, `.`, `_`, `-` and `+`"),
        ))
    }
}

/// Writes a file (and its folder) with the given mode.
pub(crate) fn write_file(file: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = file.parent() {
        fs::create_dir_all(dir).map_err(|e| with_path(dir, e))?;
    }
    fs::write(file, bytes).map_err(|e| with_path(file, e))?;
    fs::set_permissions(file, fs::Permissions::from_mode(mode)).map_err(|e| with_path(file, e))
}

/// Replaces a file in one rename, so a reader never sees half of it.
pub(crate) fn write_atomically(file: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut tmp = file.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    fs::write(&tmp, bytes).map_err(|e| with_path(&tmp, e))?;
    fs::rename(&tmp, file).map_err(|e| with_path(file, e))
}

pub(crate) fn with_path(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_files_keep_other_values() {
        let tmp = tempfile::tempdir().unwrap();
        let product = tmp.path().join("office");
        let control = control_path(&product);
        assert_eq!(control, tmp.path().join("office.sim-control"));
        assert!(read_control(&control).is_empty());
        set_control(&control, "rms", "refused").unwrap();
        set_control(&control, "central", "offline").unwrap();
        set_control(&control, "rms", "ok").unwrap();
        let values = read_control(&control);
        assert_eq!(values["rms"], "ok");
        assert_eq!(values["central"], "offline");
    }

    #[test]
    fn stand_ins_name_their_program() {
        let tmp = tempfile::tempdir().unwrap();
        let exe = tmp.path().join("BackOffice.exe");
        write_file(
            &exe,
            &stand_in_binary("iikoOffice", "8.9.6021.0", 4096),
            0o755,
        )
        .unwrap();
        assert_eq!(stand_in_version(&exe, "iikoOffice").unwrap(), "8.9.6021.0");
        assert!(stand_in_version(&exe, "iikoFront").is_err());
        assert_ne!(
            stand_in_binary("x", "1.0", 64),
            stand_in_binary("x", "1.1", 64)
        );
    }

    #[test]
    fn names_and_xml() {
        let xml = "<a><VERSION><![CDATA[1.8.3900]]></VERSION><B> x </B></a>";
        assert_eq!(xml_value(xml, "VERSION"), Some("1.8.3900"));
        assert_eq!(xml_value(xml, "B"), Some("x"));
        assert_eq!(xml_value(xml, "C"), None);
        assert!(check_name("version", "../x").is_err());
        assert!(check_name("version", "3.2.0").is_ok());
    }
}
