//! The log files the simulated products write, in the layout most point-of-sale
//! Java and .NET programs use:
//!
//! ```text
//! 2026-11-22 18:00:00.123 INFO  [KioskApp] Starting self-service kiosk 7.4.2
//! ```
//!
//! local time with milliseconds, the level padded to five characters, the
//! component in brackets, the message.
//!
//! Every line is appended with one write to a file opened in append mode and
//! closed again, so a line is never torn, and a log rotated while the product runs
//! (renamed away, or copied and truncated) simply continues in the new file.

use std::fmt;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The level of a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Debug,
    Info,
    Warn,
    Error,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Level::Debug => "DEBUG",
            Level::Info => "INFO",
            Level::Warn => "WARN",
            Level::Error => "ERROR",
        };
        // Padded here so `{:<5}` in a line's format applies.
        f.pad(s)
    }
}

/// One product log file.
#[derive(Debug, Clone)]
pub struct ProductLog {
    path: PathBuf,
}

impl ProductLog {
    /// The log at `path`; its folder is created on the first line.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one line stamped with the current local time.
    pub fn line(&self, level: Level, component: &str, message: &str) -> io::Result<()> {
        let now = chrono::Local::now().format("%Y-%m-%d %H:%M:%S%.3f");
        self.append(&format!("{now} {level:<5} [{component}] {message}\n"))
    }

    pub fn info(&self, component: &str, message: &str) -> io::Result<()> {
        self.line(Level::Info, component, message)
    }

    pub fn warn(&self, component: &str, message: &str) -> io::Result<()> {
        self.line(Level::Warn, component, message)
    }

    pub fn error(&self, component: &str, message: &str) -> io::Result<()> {
        self.line(Level::Error, component, message)
    }

    fn append(&self, line: &str) -> io::Result<()> {
        let context =
            |e: io::Error| io::Error::new(e.kind(), format!("log {}: {e}", self.path.display()));
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(context)?;
        }
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(context)?;
        file.write_all(line.as_bytes()).map_err(context)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_have_the_product_layout() {
        let tmp = tempfile::tempdir().unwrap();
        let log = ProductLog::new(tmp.path().join("logs/kiosk.log"));
        log.info("KioskApp", "Starting self-service kiosk 7.4.2")
            .unwrap();
        log.error("KioskApp", "Failed to load menu: x").unwrap();
        let text = std::fs::read_to_string(log.path()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        // `2026-11-22 18:00:00.123 ` is 24 characters.
        let (stamp, rest) = lines[0].split_at(24);
        assert!(
            chrono::NaiveDateTime::parse_from_str(stamp.trim_end(), "%Y-%m-%d %H:%M:%S%.3f")
                .is_ok(),
            "{stamp}"
        );
        assert_eq!(rest, "INFO  [KioskApp] Starting self-service kiosk 7.4.2");
        assert_eq!(&lines[1][24..], "ERROR [KioskApp] Failed to load menu: x");
    }
}
