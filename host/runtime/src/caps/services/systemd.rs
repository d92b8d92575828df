//! The systemd backend: units driven with `systemctl`.

use super::{ServiceManager, State, check_name};
use crate::caps::prompt::BoxFuture;
use crate::caps::{CapError, CapResult};
use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

/// Services that are systemd units, driven with `systemctl`.
#[derive(Debug, Clone)]
pub struct Systemd {
    units: BTreeMap<String, String>,
    timeout: Duration,
}

impl Default for Systemd {
    fn default() -> Self {
        Self::new()
    }
}

impl Systemd {
    /// Every name maps to `<name>.service`; `systemctl` calls time out after
    /// 120 s, a little over systemd's own default start timeout of 90 s.
    pub fn new() -> Self {
        Self {
            units: BTreeMap::new(),
            timeout: Duration::from_secs(120),
        }
    }

    /// Maps the plugin's service `name` to a systemd `unit` (e.g. `dIceCash` to
    /// `dicecash.service`).
    pub fn with_unit(mut self, name: impl Into<String>, unit: impl Into<String>) -> Self {
        self.units.insert(name.into(), unit.into());
        self
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The unit a service name stands for.
    pub fn unit(&self, name: &str) -> String {
        self.units
            .get(name)
            .cloned()
            .unwrap_or_else(|| format!("{name}.service"))
    }

    async fn systemctl(&self, name: &str, args: &[&str]) -> CapResult<std::process::Output> {
        check_name(name)?;
        let unit = self.unit(name);
        let mut cmd = tokio::process::Command::new("systemctl");
        cmd.arg("--no-ask-password")
            .args(args)
            .arg(&unit)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let what = format!("service {name} (unit {unit}): systemctl {}", args.join(" "));
        match tokio::time::timeout(self.timeout, cmd.output()).await {
            Ok(out) => out.map_err(|e| CapError::from_io(&what, &e)),
            Err(_) => Err(CapError::timeout(format!(
                "{what} did not finish within {} s",
                self.timeout.as_secs()
            ))),
        }
    }

    async fn control(&self, name: &str, verb: &str) -> CapResult<()> {
        let out = self.systemctl(name, &[verb]).await?;
        if out.status.success() {
            return Ok(());
        }
        Err(CapError::io(format!(
            "service {name} (unit {}): systemctl {verb} failed ({}): {}; see `journalctl -u {}`",
            self.unit(name),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            self.unit(name)
        )))
    }
}

/// Reads `systemctl show -p LoadState -p ActiveState` output. `show` is used
/// rather than `is-active` because it also tells a unit that does not exist
/// (`LoadState=not-found`) from one that is merely stopped.
pub(super) fn parse_show(name: &str, unit: &str, text: &str) -> CapResult<State> {
    let value = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
            .map(str::trim)
    };
    if value("LoadState") == Some("not-found") {
        return Err(CapError::not_found(format!(
            "service {name}: the unit {unit} is not installed on this terminal"
        )));
    }
    match value("ActiveState") {
        Some("active" | "activating" | "reloading" | "refreshing") => Ok(State::Running),
        Some("inactive" | "deactivating" | "maintenance") => Ok(State::Stopped),
        Some("failed") => Ok(State::Failed),
        other => Err(CapError::io(format!(
            "service {name}: systemctl reported no known state for {unit} ({other:?})"
        ))),
    }
}

impl ServiceManager for Systemd {
    fn status<'a>(&'a self, name: &'a str) -> BoxFuture<'a, CapResult<State>> {
        Box::pin(async move {
            let out = self
                .systemctl(name, &["show", "-p", "LoadState", "-p", "ActiveState"])
                .await?;
            if !out.status.success() {
                return Err(CapError::io(format!(
                    "service {name} (unit {}): systemctl show failed ({}): {}",
                    self.unit(name),
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
            parse_show(
                name,
                &self.unit(name),
                &String::from_utf8_lossy(&out.stdout),
            )
        })
    }

    fn start<'a>(&'a self, name: &'a str) -> BoxFuture<'a, CapResult<()>> {
        Box::pin(self.control(name, "start"))
    }

    fn stop<'a>(&'a self, name: &'a str) -> BoxFuture<'a, CapResult<()>> {
        Box::pin(self.control(name, "stop"))
    }

    fn restart<'a>(&'a self, name: &'a str) -> BoxFuture<'a, CapResult<()>> {
        Box::pin(self.control(name, "restart"))
    }
}
