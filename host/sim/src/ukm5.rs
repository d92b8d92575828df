//! The UKM 5 cash register (PRODUCTS.md §1), simulated.
//!
//! What the update rules need from a register, and what this simulation gives:
//! a home folder laid out like `/home/ukm5` (the program under `mint/`, the update
//! folder `mint/update` with `up.sh`, `update.conf` and the package drop folder
//! `mint/update/version`), a log that tells whether the cashier is in the middle
//! of a receipt, the version the register runs, and the mark a finished update
//! leaves until the register is fully rebooted.
//!
//! The running register ([`run_ukm5`]) checks its program modules, goes to `SALE`
//! (or `LOCKED` when nobody is at it), and announces a package that appears in
//! `mint/update/version` the way `update.conf` says: with `autoUpdateTimeout` set
//! it would ask the cashier after that many minutes, commented out it leaves the
//! package for `sudo ./up.sh` or an explicit update. A module built for another
//! version stops the start with an `ERROR` line and a non-zero exit, as the Java
//! program does when a jar does not match. A control file (see [`control_path`])
//! plays the cashier: it holds `SALE`, `RECEIPT` or `LOCKED`.
//!
//! The layout is described in `plugins/ukm5/README.md`. The plugin relies only on
//! what the UKM 5 document names (`mint/update`, its drop folder, `update.conf`
//! and `up.sh`); the version file, the log and the reboot mark are this
//! simulation's, read by the plugin only where it is told to.

use crate::process::{
    SimProcess, run_until_flag, run_until_signal, with_path, write_atomically, write_file,
};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use crate::product_log::ProductLog;

/// The program folder, under the register's home (`/home/ukm5/mint`).
pub const MINT: &str = "mint";
/// The installed version, one line: `1.8.4` or a bare build number `877`.
pub const VERSION_FILE: &str = "mint/version";
/// Where `up.sh` and `update.conf` live and the update is run from by hand.
pub const UPDATE_DIR: &str = "mint/update";
/// The drop folder: a package placed here is the register's loaded package.
pub const PACKAGE_DIR: &str = "mint/update/version";
/// The update settings of the register type: `autoUpdateTimeout` in minutes.
pub const UPDATE_CONF: &str = "mint/update/update.conf";
/// The manual update script, run as `sudo ./up.sh` from [`UPDATE_DIR`].
pub const UP_SH: &str = "mint/update/up.sh";
/// Left by an update (holding the version it installed) until the register is
/// fully rebooted.
pub const REBOOT_MARK: &str = "mint/update/reboot-required";
/// The register's settings from the store server; never in a package.
pub const SETTINGS_FILE: &str = "mint/conf/mint.properties";
/// The register's log, in the log folder (`/home/ukm5/mint/logs` on a register).
pub const LOG_FILE: &str = "pos.log";
/// The program modules, under [`MINT`], each built for exactly one version.
pub const MODULES: [&str; 3] = ["lib/ukm5-pos.jar", "lib/ukm5-fiscal.jar", "lib/ukm5-ui.jar"];
/// How often the running register looks at its control file and drop folder.
pub const POLL: Duration = Duration::from_millis(100);

/// The register's modes, spelled as its log spells them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Stopped,
    Starting,
    /// Sale mode: the cashier is signed in, no receipt is open.
    Sale,
    /// A receipt is open: the cashier is ringing up a purchase.
    Receipt,
    /// Nobody is at the register: the screen is locked.
    Locked,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Stopped => "STOPPED",
            Mode::Starting => "STARTING",
            Mode::Sale => "SALE",
            Mode::Receipt => "RECEIPT",
            Mode::Locked => "LOCKED",
        }
    }

    /// Parses a mode as the log or a control file writes it (case does not matter).
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim();
        [
            Mode::Stopped,
            Mode::Starting,
            Mode::Sale,
            Mode::Receipt,
            Mode::Locked,
        ]
        .into_iter()
        .find(|m| m.as_str().eq_ignore_ascii_case(s))
    }

    /// The modes the cashier can put a running register in.
    fn at_work(self) -> bool {
        matches!(self, Mode::Sale | Mode::Receipt | Mode::Locked)
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The control file of the register whose home is `home`: `<home>.sim-control`,
/// beside the home folder, so an update never touches it.
pub fn control_path(home: &Path) -> PathBuf {
    let mut name = home.as_os_str().to_owned();
    name.push(".sim-control");
    PathBuf::from(name)
}

/// Puts the (simulated) cashier in `mode`: `Sale`, `Receipt` or `Locked`.
pub fn set_mode(home: &Path, mode: Mode) -> io::Result<()> {
    if !mode.at_work() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("register control: {mode} is not a cashier's mode (SALE, RECEIPT, LOCKED)"),
        ));
    }
    write_atomically(&control_path(home), format!("{mode}\n").as_bytes())
}

/// The mode named by the last `Mode changed:` line of a register log's text.
pub fn last_mode(log: &str) -> Option<&str> {
    log.lines()
        .rev()
        .find_map(|l| {
            l.split_once("Mode changed: ")
                .and_then(|(_, s)| s.split_once(" -> "))
        })
        .map(|(_, to)| to.trim_end())
}

/// `autoUpdateTimeout` from the text of `update.conf`: `Some(minutes)` when set,
/// `None` when commented out or absent. A value that is not a number of minutes
/// is an error naming the line.
pub fn parse_auto_update_timeout(text: &str) -> Result<Option<u32>, String> {
    let mut found = None;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((name, value)) = line.split_once('=') else {
            return Err(format!(
                "update.conf line {}: `{line}` is not `name = value`",
                n + 1
            ));
        };
        if name.trim() == "autoUpdateTimeout" {
            let minutes = value.trim().parse::<u32>().map_err(|_| {
                format!(
                    "update.conf line {}: autoUpdateTimeout = {:?} is not a number of minutes",
                    n + 1,
                    value.trim()
                )
            })?;
            found = Some(minutes);
        }
    }
    Ok(found)
}

/// Reads `autoUpdateTimeout` from the register's `update.conf`.
pub fn auto_update_timeout(home: &Path) -> io::Result<Option<u32>> {
    let file = home.join(UPDATE_CONF);
    let text = fs::read_to_string(&file).map_err(|e| with_path(&file, e))?;
    parse_auto_update_timeout(&text).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Sets `autoUpdateTimeout` in `update.conf` to `minutes`, or comments it out
/// (`None`), as the store server's register-type settings do.
pub fn set_auto_update_timeout(home: &Path, minutes: Option<u32>) -> io::Result<()> {
    let file = home.join(UPDATE_CONF);
    let text = fs::read_to_string(&file).map_err(|e| with_path(&file, e))?;
    let mut out = String::new();
    let mut done = false;
    for line in text.lines() {
        let bare = line.trim().trim_start_matches('#').trim();
        let is_setting = bare
            .split_once('=')
            .is_some_and(|(name, _)| name.trim() == "autoUpdateTimeout");
        if is_setting && !done {
            out.push_str(&auto_update_line(minutes, bare));
            done = true;
        } else if !is_setting {
            out.push_str(line);
        } else {
            continue;
        }
        out.push('\n');
    }
    if !done {
        out.push_str(&auto_update_line(minutes, "autoUpdateTimeout=10"));
        out.push('\n');
    }
    write_atomically(&file, out.as_bytes())
}

fn auto_update_line(minutes: Option<u32>, current: &str) -> String {
    match minutes {
        Some(m) => format!("autoUpdateTimeout={m}"),
        // Commenting out keeps the old value visible, as an operator does by hand.
        None => format!("#{current}"),
    }
}

/// Lays out a register running `version` with its home at `home` (the
/// `/home/ukm5` equivalent), its log going to `logs`. Settings already there
/// (`mint.properties`, `update.conf`) are kept, as an update keeps them.
pub fn init_ukm5(home: &Path, logs: &Path, version: &str) -> io::Result<()> {
    check_version(version)?;
    let mint = home.join(MINT);
    for (path, bytes, mode) in program_files(version) {
        write_file(&mint.join(path), &bytes, mode)?;
    }
    let settings = home.join(SETTINGS_FILE);
    if !settings.exists() {
        write_file(&settings, DEFAULT_SETTINGS.as_bytes(), 0o644)?;
    }
    let conf = home.join(UPDATE_CONF);
    if !conf.exists() {
        write_file(&conf, DEFAULT_UPDATE_CONF.as_bytes(), 0o644)?;
    }
    write_file(&home.join(UP_SH), UP_SH_TEXT.as_bytes(), 0o755)?;
    let drop = home.join(PACKAGE_DIR);
    fs::create_dir_all(&drop).map_err(|e| with_path(&drop, e))?;
    fs::create_dir_all(logs).map_err(|e| with_path(logs, e))?;
    Ok(())
}

/// Writes the source of the package `ukm5_pos_<version>.tgz` into `dir`
/// (`package.toml` and `content/`, for [`crate::package::build`]): the program
/// files as they lie under `mint/`, and `CHANGELOG.txt`. Never the register's
/// settings.
pub fn write_package_source(dir: &Path, version: &str, note: &str) -> io::Result<()> {
    check_version(version)?;
    let manifest = format!(
        "file = \"ukm5_pos_{version}.tgz\"\ndevice_type = \"ukm5\"\nnote = {}\n",
        toml::Value::String(note.to_owned())
    );
    write_file(&dir.join("package.toml"), manifest.as_bytes(), 0o644)?;
    let content = dir.join("content");
    for (path, bytes, mode) in program_files(version) {
        write_file(&content.join(path), &bytes, mode)?;
    }
    write_file(
        &content.join("CHANGELOG.txt"),
        changelog(version, note).as_bytes(),
        0o644,
    )
}

/// The program files of `version`, as paths under `mint/`, contents and modes.
pub fn program_files(version: &str) -> Vec<(String, Vec<u8>, u32)> {
    let mut files = vec![
        (
            "version".to_owned(),
            format!("{version}\n").into_bytes(),
            0o644,
        ),
        (
            "bin/mint.sh".to_owned(),
            LAUNCHER.as_bytes().to_vec(),
            0o755,
        ),
    ];
    for (module, title) in MODULES.iter().zip([
        "UKM 5 POS",
        "UKM 5 fiscal registrar drivers",
        "UKM 5 cashier screens",
    ]) {
        files.push((module.to_string(), jar(module, version, title), 0o644));
    }
    files
}

/// A stand-in for a jar: its first line names the module and the version it was
/// built for, which the register checks on start.
fn jar(module: &str, version: &str, title: &str) -> Vec<u8> {
    let name = module.rsplit('/').next().unwrap_or(module);
    format!(
        "SIM-JAR {name} {version}\nImplementation-Title: {title}\nImplementation-Version: {version}\n"
    )
    .into_bytes()
}

fn changelog(version: &str, note: &str) -> String {
    format!(
        "UKM 5 POS {version}\n\
         \n\
         {note}\n\
         \n\
         Update notes\n\
         The register leaves sale mode while it updates (15-20 minutes).\n\
         A full reboot of the register is required after the update.\n\
         The settings in conf/ and update/update.conf are kept.\n"
    )
}

/// Runs the register whose home is `home`, logging to `<logs>/pos.log`, until
/// SIGTERM or SIGINT; then logs `UKM 5 POS stopped` and returns. Returns an error
/// (the process exits non-zero) when the program cannot start.
pub fn run_ukm5(home: &Path, logs: &Path) -> io::Result<()> {
    Register::new(home, logs).run()
}

/// `sim-product ukm5`: runs the simulated register in the foreground.
#[derive(Debug, Clone, clap::Args)]
pub struct Ukm5Args {
    /// The register's home folder, the `/home/ukm5` equivalent (holds `mint/`).
    #[arg(long)]
    pub product: PathBuf,
    /// The folder of `pos.log`.
    #[arg(long)]
    pub logs: PathBuf,
    /// The control file a test writes the cashier's mode to; by default
    /// `<product>.sim-control`.
    #[arg(long)]
    pub control: Option<PathBuf>,
    /// Start as after a full reboot of the terminal: an update waiting for the
    /// reboot is then in force, and its mark is cleared.
    #[arg(long)]
    pub cold_boot: bool,
}

impl Ukm5Args {
    pub fn run(&self) -> io::Result<()> {
        let mut register = Register::new(&self.product, &self.logs).cold_boot(self.cold_boot);
        if let Some(control) = &self.control {
            register = register.with_control(control);
        }
        register.run()
    }
}

/// A running simulated register.
#[derive(Debug)]
pub struct Register {
    home: PathBuf,
    log: ProductLog,
    control: PathBuf,
    cold_boot: bool,
    mode: Mode,
    /// Receipts opened since start; the open one is this number.
    receipts: u32,
    /// Packages in the drop folder already announced in the log.
    announced: Vec<String>,
    /// The last unreadable control-file content reported, so it is told once.
    bad_control: Option<String>,
}

impl Register {
    pub fn new(home: &Path, logs: &Path) -> Self {
        Self {
            home: home.to_path_buf(),
            log: ProductLog::new(logs.join(LOG_FILE)),
            control: control_path(home),
            cold_boot: false,
            mode: Mode::Stopped,
            receipts: 0,
            announced: Vec::new(),
            bad_control: None,
        }
    }

    /// Reads the cashier's mode from `control` instead of the default path.
    pub fn with_control(mut self, control: impl Into<PathBuf>) -> Self {
        self.control = control.into();
        self
    }

    /// Starts as after a full reboot of the terminal.
    pub fn cold_boot(mut self, yes: bool) -> Self {
        self.cold_boot = yes;
        self
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Runs until SIGTERM or SIGINT.
    pub fn run(self) -> io::Result<()> {
        run_until_signal(self, POLL)
    }

    /// Runs until `stop` is set: for tests that run it on a thread.
    pub fn run_until(self, stop: &AtomicBool) -> io::Result<()> {
        run_until_flag(self, POLL, stop)
    }

    /// Logs why the program cannot start and ends the process with an error.
    fn fail(&mut self, message: &str) -> io::Result<()> {
        self.log.error("Mint", message)?;
        self.change(Mode::Stopped)?;
        Err(io::Error::other(format!(
            "UKM 5 POS did not start: {message}"
        )))
    }

    /// Follows the cashier into `wanted`.
    fn serve(&mut self, wanted: Mode) -> io::Result<()> {
        let from = self.mode;
        if wanted == Mode::Receipt {
            self.receipts += 1;
            self.log
                .info("Receipt", &format!("Receipt #{} opened", self.receipts))?;
        }
        self.change(wanted)?;
        if from == Mode::Receipt {
            self.log.info(
                "Receipt",
                &format!("Receipt #{} closed, paid", self.receipts),
            )?;
        }
        Ok(())
    }

    /// Announces packages that appeared in the drop folder, as `update.conf` says.
    fn check_packages(&mut self) -> io::Result<()> {
        let drop = self.home.join(PACKAGE_DIR);
        let Ok(entries) = fs::read_dir(&drop) else {
            return Ok(());
        };
        let mut names: Vec<String> = entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("ukm5_pos_") && n.ends_with(".tgz"))
            .collect();
        names.sort();
        // A package taken away (installed or withdrawn) is announced again if it
        // comes back.
        self.announced.retain(|a| names.contains(a));
        for name in names {
            if self.announced.contains(&name) {
                continue;
            }
            let update_dir = self.home.join(UPDATE_DIR);
            match auto_update_timeout(&self.home) {
                Ok(Some(minutes)) => self.log.info(
                    "Updater",
                    &format!(
                        "Update package {name} found in {}: the cashier will be asked to update in {minutes} min (autoUpdateTimeout)",
                        drop.display()
                    ),
                )?,
                Ok(None) => self.log.info(
                    "Updater",
                    &format!(
                        "Update package {name} found in {}: autoUpdateTimeout is off, the register does not ask; run sudo ./up.sh in {}",
                        drop.display(),
                        update_dir.display()
                    ),
                )?,
                Err(e) => self.log.warn("Updater", &format!("{e}"))?,
            }
            self.announced.push(name);
        }
        Ok(())
    }

    fn change(&mut self, to: Mode) -> io::Result<()> {
        let from = self.mode;
        self.mode = to;
        self.log
            .info("SaleMode", &format!("Mode changed: {from} -> {to}"))
    }

    /// The cashier's mode from the control file: `SALE` when there is none.
    fn read_control(&mut self) -> Option<Mode> {
        let text = match fs::read_to_string(&self.control) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Some(Mode::Sale),
            Err(_) => return None,
        };
        match Mode::parse(&text).filter(|m| m.at_work()) {
            Some(m) => Some(m),
            None if text.trim().is_empty() => Some(Mode::Sale),
            None => {
                if self.bad_control.as_deref() != Some(text.as_str()) {
                    // Not in the register's log: the control file is the
                    // simulation's, not the product's.
                    eprintln!(
                        "register simulation: control file {}: {:?} is not SALE, RECEIPT or LOCKED",
                        self.control.display(),
                        text.trim()
                    );
                    self.bad_control = Some(text);
                }
                None
            }
        }
    }
}

impl SimProcess for Register {
    fn start(&mut self) -> io::Result<()> {
        // A register that keeps no version file runs the version its main
        // module was built for.
        let version_file = self.home.join(VERSION_FILE);
        let version = fs::read_to_string(&version_file)
            .map(|v| v.trim().to_owned())
            .or_else(|e| module_version(&self.home, MODULES[0]).ok_or(e));
        self.log.info(
            "Mint",
            &format!(
                "Starting UKM 5 POS {}",
                version.as_deref().unwrap_or("(unknown version)")
            ),
        )?;
        self.change(Mode::Starting)?;
        let version = match version {
            Ok(v) => v,
            Err(e) => {
                return self.fail(&format!(
                    "Installation is damaged: cannot read {}: {e}",
                    version_file.display()
                ));
            }
        };
        let mark = self.home.join(REBOOT_MARK);
        if self.cold_boot {
            self.log
                .info("System", "Register started after a full reboot")?;
            if let Ok(updated) = fs::read_to_string(&mark) {
                fs::remove_file(&mark).map_err(|e| with_path(&mark, e))?;
                self.log.info(
                    "Updater",
                    &format!(
                        "The update to {} is in force after the full reboot",
                        updated.trim()
                    ),
                )?;
            }
        }
        let settings = fs::read_to_string(self.home.join(SETTINGS_FILE)).unwrap_or_default();
        let prop = |k: &str| property(&settings, k).unwrap_or("(not set)").to_owned();
        self.log.info(
            "Mint",
            &format!(
                "Register {} (GUID {}) of store {} \"{}\", store server {}",
                prop("register.number"),
                prop("register.guid"),
                prop("store.id"),
                prop("store.name"),
                prop("server.address"),
            ),
        )?;
        for module in MODULES {
            let file = self.home.join(MINT).join(module);
            let first = fs::read_to_string(&file)
                .map(|t| t.lines().next().unwrap_or_default().to_owned())
                .map_err(|e| e.to_string());
            let name = module.rsplit('/').next().unwrap_or(module);
            let built_for = match &first {
                Ok(line) => line
                    .strip_prefix("SIM-JAR ")
                    .and_then(|rest| rest.strip_prefix(name))
                    .map(|v| v.trim().to_owned()),
                Err(_) => None,
            };
            match (first, built_for) {
                (Err(e), _) => {
                    return self.fail(&format!("Cannot load {module}: {e}"));
                }
                (Ok(_), None) => {
                    return self.fail(&format!("Cannot load {module}: invalid or corrupt jarfile"));
                }
                (Ok(_), Some(v)) if v != version => {
                    return self.fail(&format!(
                        "Cannot load {module}: it was built for {v}, the register runs {version}"
                    ));
                }
                _ => {}
            }
        }
        self.log
            .info("Fiscal", "Fiscal registrar connected, shift is open")?;
        if let Ok(updated) = fs::read_to_string(&mark) {
            self.log.warn(
                "Updater",
                &format!(
                    "UKM 5 POS {} was installed by an update: a full reboot of the register is required",
                    updated.trim()
                ),
            )?;
        }
        let wanted = self.read_control().unwrap_or(Mode::Sale);
        self.change(wanted)?;
        self.check_packages()
    }

    fn poll(&mut self) -> io::Result<()> {
        if self.mode.at_work()
            && let Some(wanted) = self.read_control()
            && wanted != self.mode
        {
            self.serve(wanted)?;
        }
        self.check_packages()
    }

    fn stop(&mut self, _why: &str) -> io::Result<()> {
        if self.mode == Mode::Receipt {
            self.log.warn(
                "Receipt",
                &format!(
                    "Receipt #{} cancelled: the program is stopping",
                    self.receipts
                ),
            )?;
        }
        if self.mode != Mode::Stopped {
            self.change(Mode::Stopped)?;
        }
        self.log.info("Mint", "UKM 5 POS stopped")
    }
}

/// The value of `key` in a `.properties` text.
fn property<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines().find_map(|l| {
        let l = l.trim();
        if l.starts_with('#') {
            return None;
        }
        let (k, v) = l.split_once('=')?;
        (k.trim() == key).then(|| v.trim())
    })
}

const DEFAULT_SETTINGS: &str = "\
# Register settings, received from the store server (Магазин — Типы касс).
# Kept across program updates.
store.id=1143
store.name=Магазин на восточной
register.number=3
register.guid=15229
server.address=192.168.10.111
fiscal.port=/dev/ttyS0
";

const DEFAULT_UPDATE_CONF: &str = "\
# Update settings of this register type (store server: Магазин — Типы касс — Настройки).
# Minutes after a package appears in version/ before the register asks the cashier
# to update. Commented out, the register never asks: run sudo ./up.sh by hand.
autoUpdateTimeout=10
";

const LAUNCHER: &str = "\
#!/bin/sh
# Starts the UKM 5 register program with the settings in conf/.
cd \"$(dirname \"$0\")/..\" || exit 1
exec java -Xmx512m -cp 'lib/*' ukm5.pos.Main --config conf/mint.properties
";

/// `up.sh`, the manual update as the register's documentation gives it:
/// `cd /home/ukm5/mint/update && sudo ./up.sh`.
const UP_SH_TEXT: &str = "\
#!/bin/sh
# Installs the UKM 5 package waiting in ./version, by hand and as root:
#   cd /home/ukm5/mint/update && sudo ./up.sh
# Stop the register program first. A full reboot of the register is required
# afterwards.
set -eu
cd \"$(dirname \"$0\")\"
package=$(ls version/ukm5_pos_*.tgz 2>/dev/null | head -n 1)
if [ -z \"$package\" ]; then
    echo \"up.sh: no ukm5_pos_<version>.tgz in $(pwd)/version\" >&2
    exit 1
fi
mint=$(cd .. && pwd)
echo \"up.sh: installing $(basename \"$package\") into $mint\"
tar -xzf \"$package\" -C \"$mint\"
rm -f \"$package\"
version=${package#version/ukm5_pos_}
echo \"${version%.tgz}\" > reboot-required
echo \"up.sh: $(basename \"$package\") installed; reboot the register fully\"
";

/// The version a program module under `mint/` was built for, from its first
/// line (`SIM-JAR ukm5-pos.jar 1.14.9`).
fn module_version(home: &Path, module: &str) -> Option<String> {
    let text = fs::read_to_string(home.join(MINT).join(module)).ok()?;
    let name = module.rsplit('/').next().unwrap_or(module);
    let rest = text
        .lines()
        .next()?
        .strip_prefix("SIM-JAR ")?
        .strip_prefix(name)?;
    Some(rest.trim().to_owned())
}

/// Versions are dotted numbers (`1.14.9`) or a bare build number (`877`).
fn check_version(version: &str) -> io::Result<()> {
    if is_ukm5_version(version) {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "UKM 5 version {version:?}: use a dotted version (1.14.9) or a build number (877)"
            ),
        ))
    }
}

/// Whether `v` is a UKM 5 version: numbers joined by single dots.
pub fn is_ukm5_version(v: &str) -> bool {
    !v.is_empty()
        && v.split('.')
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{Running, wait_for};

    fn wait_for_log(logs: &Path, f: impl FnMut(&str) -> bool) -> String {
        wait_for(&logs.join(LOG_FILE), f)
    }

    /// `register`, running on a thread.
    fn run(register: Register) -> Running {
        Running::spawn(move |stop| register.run_until(stop))
    }

    fn fixture(version: &str) -> (tempfile::TempDir, PathBuf, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let home = tmp.path().join("ukm5");
        let logs = tmp.path().join("logs");
        init_ukm5(&home, &logs, version).unwrap();
        (tmp, home, logs)
    }

    fn messages(log: &str) -> Vec<&str> {
        log.lines().map(|l| &l[24..]).collect()
    }

    #[test]
    fn an_installed_register_looks_like_one() {
        let (_tmp, home, logs) = fixture("1.8.4");
        assert_eq!(
            fs::read_to_string(home.join(VERSION_FILE)).unwrap(),
            "1.8.4\n"
        );
        for module in MODULES {
            let text = fs::read_to_string(home.join(MINT).join(module)).unwrap();
            assert!(text.starts_with("SIM-JAR ukm5-"), "{text}");
            assert!(text.lines().next().unwrap().ends_with(" 1.8.4"), "{text}");
        }
        assert!(home.join(PACKAGE_DIR).is_dir());
        assert!(home.join(UP_SH).is_file());
        assert_eq!(auto_update_timeout(&home).unwrap(), Some(10));
        assert!(logs.is_dir());
        // A reinstall keeps the register's settings.
        set_auto_update_timeout(&home, None).unwrap();
        init_ukm5(&home, &logs, "877").unwrap();
        assert_eq!(
            fs::read_to_string(home.join(VERSION_FILE)).unwrap(),
            "877\n"
        );
        assert_eq!(auto_update_timeout(&home).unwrap(), None);
        assert!(init_ukm5(&home, &logs, "1.8.x").is_err());
        assert!(init_ukm5(&home, &logs, "../1").is_err());
    }

    #[test]
    fn update_conf_is_read_and_written_as_operators_do() {
        assert_eq!(
            parse_auto_update_timeout("autoUpdateTimeout = 15\n"),
            Ok(Some(15))
        );
        assert_eq!(
            parse_auto_update_timeout("#autoUpdateTimeout=15\n"),
            Ok(None)
        );
        assert_eq!(parse_auto_update_timeout("# nothing\n\n"), Ok(None));
        let err = parse_auto_update_timeout("# x\nautoUpdateTimeout=soon\n").unwrap_err();
        assert!(err.contains("line 2"), "{err}");
        let err = parse_auto_update_timeout("autoUpdateTimeout\n").unwrap_err();
        assert!(err.contains("line 1"), "{err}");

        let (_tmp, home, _logs) = fixture("1.8.4");
        set_auto_update_timeout(&home, None).unwrap();
        let text = fs::read_to_string(home.join(UPDATE_CONF)).unwrap();
        assert!(text.contains("\n#autoUpdateTimeout=10\n"), "{text}");
        assert!(
            text.starts_with("# Update settings"),
            "comments are kept: {text}"
        );
        set_auto_update_timeout(&home, Some(30)).unwrap();
        let text = fs::read_to_string(home.join(UPDATE_CONF)).unwrap();
        assert_eq!(text.matches("autoUpdateTimeout=").count(), 1, "{text}");
        assert_eq!(auto_update_timeout(&home).unwrap(), Some(30));
    }

    #[test]
    fn starts_into_sale_follows_the_cashier_and_stops() {
        let (_tmp, home, logs) = fixture("1.8.4");
        let register = run(Register::new(&home, &logs));
        let log = wait_for_log(&logs, |t| t.contains("Mode changed: STARTING -> SALE"));
        let m = messages(&log);
        assert_eq!(m[0], "INFO  [Mint] Starting UKM 5 POS 1.8.4");
        assert_eq!(m[1], "INFO  [SaleMode] Mode changed: STOPPED -> STARTING");
        assert!(m.contains(&"INFO  [Mint] Register 3 (GUID 15229) of store 1143 \"Магазин на восточной\", store server 192.168.10.111"));
        assert!(!log.contains("ERROR"));
        set_mode(&home, Mode::Receipt).unwrap();
        wait_for_log(&logs, |t| t.contains("Mode changed: SALE -> RECEIPT"));
        set_mode(&home, Mode::Locked).unwrap();
        let log = wait_for_log(&logs, |t| t.contains("Mode changed: RECEIPT -> LOCKED"));
        assert!(log.contains("INFO  [Receipt] Receipt #1 opened"));
        assert!(log.contains("INFO  [Receipt] Receipt #1 closed, paid"));
        assert_eq!(last_mode(&log), Some("LOCKED"));
        assert!(set_mode(&home, Mode::Starting).is_err());
        register.stop().unwrap();
        let log = fs::read_to_string(logs.join(LOG_FILE)).unwrap();
        assert_eq!(
            messages(&log).last().unwrap(),
            &"INFO  [Mint] UKM 5 POS stopped"
        );
        assert_eq!(last_mode(&log), Some("STOPPED"));
    }

    #[test]
    fn a_module_of_another_version_stops_the_start() {
        let (_tmp, home, logs) = fixture("1.14.9");
        fs::write(
            home.join(MINT).join("lib/ukm5-fiscal.jar"),
            jar("ukm5-fiscal.jar", "1.14.8", "x"),
        )
        .unwrap();
        let err = Register::new(&home, &logs)
            .run_until(&AtomicBool::new(true))
            .unwrap_err();
        assert!(err.to_string().contains("lib/ukm5-fiscal.jar"), "{err}");
        let log = fs::read_to_string(logs.join(LOG_FILE)).unwrap();
        assert!(
            log.contains("ERROR [Mint] Cannot load lib/ukm5-fiscal.jar: it was built for 1.14.8, the register runs 1.14.9"),
            "{log}"
        );
        assert_eq!(last_mode(&log), Some("STOPPED"));
        assert!(!log.contains("-> SALE"));
    }

    #[test]
    fn a_loaded_package_is_announced_as_update_conf_says() {
        let (_tmp, home, logs) = fixture("1.8.4");
        fs::write(home.join(PACKAGE_DIR).join("ukm5_pos_1.14.9.tgz"), b"x").unwrap();
        let register = run(Register::new(&home, &logs));
        let log = wait_for_log(&logs, |t| t.contains("Update package ukm5_pos_1.14.9.tgz"));
        assert!(
            log.contains("the cashier will be asked to update in 10 min (autoUpdateTimeout)"),
            "{log}"
        );
        register.stop().unwrap();

        set_auto_update_timeout(&home, None).unwrap();
        fs::remove_file(logs.join(LOG_FILE)).unwrap();
        let register = run(Register::new(&home, &logs));
        let log = wait_for_log(&logs, |t| t.contains("Update package ukm5_pos_1.14.9.tgz"));
        assert!(
            log.contains(
                "autoUpdateTimeout is off, the register does not ask; run sudo ./up.sh in"
            ),
            "{log}"
        );
        register.stop().unwrap();
    }

    #[test]
    fn the_reboot_mark_is_reported_until_a_cold_boot() {
        let (_tmp, home, logs) = fixture("1.14.9");
        fs::write(home.join(REBOOT_MARK), "1.14.9\n").unwrap();
        let register = run(Register::new(&home, &logs));
        let log = wait_for_log(&logs, |t| t.contains("-> SALE"));
        assert!(log.contains("WARN  [Updater] UKM 5 POS 1.14.9 was installed by an update: a full reboot of the register is required"));
        register.stop().unwrap();
        assert!(
            home.join(REBOOT_MARK).exists(),
            "a quick restart is not a reboot"
        );

        fs::remove_file(logs.join(LOG_FILE)).unwrap();
        let register = run(Register::new(&home, &logs).cold_boot(true));
        let log = wait_for_log(&logs, |t| t.contains("-> SALE"));
        assert!(
            log.contains("INFO  [Updater] The update to 1.14.9 is in force after the full reboot")
        );
        assert!(!log.contains("reboot of the register is required"));
        register.stop().unwrap();
        assert!(!home.join(REBOOT_MARK).exists());
    }

    /// The register's own `up.sh` installs a package the way its documentation
    /// says, so the simulated tree is one a real update could have produced.
    #[test]
    fn up_sh_installs_the_waiting_package() {
        let (tmp, home, _logs) = fixture("1.8.4");
        let source = tmp.path().join("src");
        write_package_source(&source, "1.14.9", "Sample").unwrap();
        let package = crate::package::build(&source, &home.join(PACKAGE_DIR)).unwrap();
        let out = std::process::Command::new("sh")
            .arg(home.join(UP_SH))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            fs::read_to_string(home.join(VERSION_FILE)).unwrap(),
            "1.14.9\n"
        );
        assert_eq!(
            fs::read_to_string(home.join(REBOOT_MARK)).unwrap(),
            "1.14.9\n"
        );
        assert!(!package.exists());
        // Nothing of its own outside mint/: keeping the old program is posup's.
        assert!(!home.join("mint.bak").exists());
        assert!(home.join(SETTINGS_FILE).is_file());
    }

    /// The sample packages under `packages/ukm5` are what the simulated vendor
    /// ships, except the deliberately broken ones their notes name.
    #[test]
    fn sample_packages_hold_the_program_of_their_version() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packages/ukm5");
        let mut checked = 0;
        for source in crate::package::sources(&root).unwrap() {
            let manifest = crate::package::manifest(&source).unwrap();
            assert_eq!(manifest.device_type, "ukm5");
            let Some(version) = manifest
                .file
                .strip_prefix("ukm5_pos_")
                .and_then(|f| f.strip_suffix(".tgz"))
                .filter(|v| is_ukm5_version(v))
            else {
                continue;
            };
            if manifest.note.starts_with("Broken") {
                continue;
            }
            for (path, bytes, _) in program_files(version) {
                let got = fs::read(source.join("content").join(&path)).unwrap();
                assert_eq!(got, bytes, "{} {path}", source.display());
            }
            checked += 1;
        }
        assert!(
            checked >= 2,
            "packages/ukm5 holds at least two good versions"
        );
    }
}
