//! The UKM 5 cash register plugin (PRODUCTS.md §1).
//!
//! The register's own rules, as this plugin keeps them:
//! - a package is `ukm5_pos_<version>.tgz`, the version dotted (`1.14.9`) or a bare
//!   build number (`877`); any other name is refused by `inspect`;
//! - a Download puts the package into the register's drop folder
//!   `mint/update/version` (the register's `/home/ukm5` is `/product`), in the
//!   background. What happens next is the register's `update.conf`: with
//!   `autoUpdateTimeout` set, the register itself asks the cashier after that many
//!   minutes; commented out, it never asks and only an explicit Update or Forced
//!   update task (or `sudo ./up.sh` by hand) installs it;
//! - an Update (after the host asked the cashier; a Forced update asks nobody)
//!   stops the register program, keeps `mint/` aside for a rollback, and runs the
//!   register's own installer as the document says — `./up.sh` from
//!   `mint/update`, as root — through the granted service `ukm5-up`;
//! - a full reboot is required after the update: the plugin remembers the boot
//!   it installed in (the host's `posup-boot-id`) and reports `reboot-required`
//!   until the terminal has booted again.
//!
//! The document names no log and no version file: they are read only where
//! present or configured (`plugins/ukm5/README.md` lists every source).
//!
//! Every step can be run again after a crash: progress is read from the tree and
//! from `kv`, never assumed.

use std::time::{Duration, Instant};

use posup_plugin_sdk::config::{named_log, product_path};
use posup_plugin_sdk::files::{
    exists, file_name, package_text, read_trimmed, same_file, tree_size,
};
use posup_plugin_sdk::watch::{remember_log_end, remembered_mark, settle};
use posup_plugin_sdk::{
    Capabilities, Dir, DirRequest, ErrorKind, Inventory, IoContext, PackageInfo, Plugin,
    PluginInfo, StepContext, Stop, TaskKind, archive, fs, kv, log, logs, progress, prompt,
    services, vars,
};

const SERVICE: &str = "ukm5";
/// The register's own installer, `./up.sh` in `mint/update` run as root, as a
/// service the device configuration defines and grants.
const INSTALLER: &str = "ukm5-up";
const MINT: &str = "/product/mint";
const UPDATE_DIR: &str = "/product/mint/update";
/// Where the installed version is read unless `ukm5-version-file` says
/// otherwise; used only when present.
const VERSION_FILE: &str = "mint/version";
const DROP: &str = "/product/mint/update/version";
const UPDATE_CONF: &str = "/product/mint/update/update.conf";
/// The version and boot of the last install, until the terminal boots again.
const REBOOT_KEY: &str = "reboot-required";
/// The last version posup installed, where the register names none itself.
const INSTALLED_KEY: &str = "installed";
/// The host's id of the current boot.
const BOOT_ID: &str = "posup-boot-id";
/// How long the register program must keep running after the update, unless
/// the server sets `ukm5-settle-secs`.
const SETTLE: Duration = Duration::from_secs(10);
/// The program as it was before the update: what a rollback restores.
const BACKUP: &str = "/backup/mint";
/// Modes in which the register may be taken out of service.
const READY: [&str; 2] = ["SALE", "LOCKED"];
/// How long verify waits for the register to reach sale mode, unless the server
/// sets `ukm5-verify-timeout` (seconds).
const VERIFY_TIMEOUT: Duration = Duration::from_secs(120);
/// The start line the register program logs, unless `ukm5-started` says
/// otherwise; `{version}` stands for the version.
const STARTED_DEFAULT: &str = "Starting UKM 5 POS {version}";
/// A line of the register's log that says its mode changed: `… -> SALE`.
const MODE_LINE: &str = "Mode changed:";
/// Parts of the package that are the register's own and never come in one.
const NOT_IN_PACKAGES: [&str; 2] = ["conf/", "update/"];
const KV_KEYS: [&str; 5] = ["placed", "backup", "applied", "start-mark", "installer-run"];

struct Ukm5;

impl Plugin for Ukm5 {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "ukm5".into(),
            vendor: "posup".into(),
            version: "0.2.0".into(),
            description: "UKM 5 cash registers: loads ukm5_pos packages into mint/update/version, installs them with the register's up.sh, reports the required reboot".into(),
            device_types: vec!["ukm5".into()],
            capabilities: Capabilities {
                dirs: vec![
                    DirRequest { dir: Dir::Product, write: true },
                    DirRequest { dir: Dir::Staging, write: true },
                    DirRequest { dir: Dir::Backup, write: true },
                    DirRequest { dir: Dir::Logs, write: false },
                ],
                services: vec![SERVICE.into(), INSTALLER.into()],
                scripts: false,
                // Only to tell the cashier that a full reboot is due; the consent
                // question before an Update is the host's.
                prompt: true,
                databases: Vec::new(),
            },
        }
    }

    fn inventory() -> Result<Inventory, Stop> {
        require_register()?;
        let version = installed_version()?;
        let running = services::status(SERVICE)? == services::State::Running;
        // The register's mode where its log tells it; otherwise what the
        // service's state says.
        let mode = current_mode()
            .ok()
            .flatten()
            .unwrap_or_else(|| if running { "RUNNING" } else { "STOPPED" }.to_owned());
        let mut details = vec![(
            "autoUpdateTimeout".to_owned(),
            match auto_update_timeout() {
                Ok(Some(m)) => format!("{m} min"),
                Ok(None) => "off".to_owned(),
                Err(e) => e,
            },
        )];
        let reboot = reboot_pending()?;
        if let Some(v) = &reboot {
            details.push(("reboot-required-for".into(), v.clone()));
        }
        Ok(Inventory {
            product: "UKM 5".into(),
            version,
            modules: vec![],
            loaded_package: loaded_package(),
            ready: running && (READY.iter().any(|r| mode == *r) || mode == "RUNNING"),
            state: mode,
            pending_sync: 0,
            reboot_required: reboot.is_some(),
            details,
        })
    }

    fn inspect(package: &str) -> Result<PackageInfo, Stop> {
        let name = file_name(package);
        let version = version_from_name(name)?;
        // The document names packages, never their contents: a `version` file
        // is checked where a package has one.
        if let Some(inside) = package_text(package, "version", 64)?
            && inside.trim() != version
        {
            return Err(format!(
                "{name}: its name says version {version} but its `version` file says {}",
                inside.trim()
            )
            .into());
        }
        for entry in archive::entries(package)? {
            let path = entry.path.trim_start_matches("./");
            if let Some(own) = NOT_IN_PACKAGES
                .iter()
                .find(|p| path.starts_with(**p) || path == p.trim_end_matches('/'))
            {
                return Err(format!(
                    "{name}: holds {}, which is the register's own ({own} is never replaced by a package)",
                    entry.path
                ).into());
            }
        }
        let changelog = package_text(package, "CHANGELOG.txt", 256 * 1024)?.unwrap_or_default();
        Ok(PackageInfo {
            notes: format!(
                "UKM 5 POS {version}; a full reboot of the register is required after it"
            ),
            version,
            kind: "program".into(),
            changelog,
            rollback: true,
        })
    }

    fn precheck(ctx: &StepContext) -> Result<(), Stop> {
        require_register()?;
        if ctx.task != TaskKind::Download {
            installer_granted()?;
        }
        if ctx.task != TaskKind::Download
            && let Some(mode) = current_mode()?
            && mode == "RECEIPT"
        {
            return Err(Stop::not_now(
                "a receipt is open at the register: the update waits until the cashier closes it",
                120,
            ));
        }
        // Room for the package in the drop folder and the copy of the program
        // a rollback needs.
        let package = std::fs::metadata(&ctx.package).at(&ctx.package)?.len();
        let program = tree_size(MINT)?;
        let needed = package.saturating_mul(2).saturating_add(program);
        let free = fs::free_space("/product")?;
        if free < needed {
            return Err(Stop::failed(format!(
                "not enough disk space on the register: {free} bytes free under /home/ukm5, {needed} needed"
            )));
        }
        Ok(())
    }

    fn stage(ctx: &StepContext) -> Result<(), Stop> {
        let name = file_name(&ctx.package).to_owned();
        let target = format!("{DROP}/{name}");
        if !exists(DROP) {
            return Err(Stop::failed(format!(
                "{DROP} does not exist: this is not a UKM 5 register home, or its update folder was removed"
            )));
        }
        let loaded = same_file(&ctx.package, &target)?;
        // Whether this update placed the package decides whether its rollback
        // takes it away again. A Download loads it for good: the register
        // keeps it until it is installed.
        if ctx.task == TaskKind::Download {
            kv::delete("placed")?;
        } else if !loaded && kv::get("placed")?.as_deref() != Some(name.as_str()) {
            if exists(&target) {
                kv::delete("placed")?;
            } else {
                kv::set("placed", &name)?;
            }
        }
        if loaded {
            log::info(&format!("{name} is already loaded in {DROP}"));
        } else {
            progress::report(20, "loading the package into the register's update folder");
            // Under a hidden name first: the register watches the folder and
            // must never see half a package.
            let partial = format!("{DROP}/.{name}.partial");
            std::fs::copy(&ctx.package, &partial).at(&partial)?;
            std::fs::rename(&partial, &target).at(&target)?;
        }
        match auto_update_timeout() {
            Ok(Some(minutes)) => log::info(&format!(
                "{name} is loaded; update.conf sets autoUpdateTimeout = {minutes}: the register asks the cashier to update in {minutes} min"
            )),
            Ok(None) => log::info(&format!(
                "{name} is loaded; autoUpdateTimeout is commented out in update.conf: the register does not ask, an Update or Forced update task installs it"
            )),
            Err(e) => log::warn(&e),
        }
        progress::report(100, "loaded");
        Ok(())
    }

    fn apply(ctx: &StepContext) -> Result<(), Stop> {
        let version = &ctx.info.version;
        let name = file_name(&ctx.package).to_owned();
        let loaded = format!("{DROP}/{name}");
        if kv::get("applied")?.as_deref() != Some(version.as_str()) {
            installer_granted()?;
            if kv::get("installer-run")?.is_none() {
                if !exists(&loaded) {
                    return Err(Stop::failed(format!(
                        "{name} is not in {DROP}: run the stage step (a Download task) first"
                    )));
                }
                progress::report(5, "the register leaves sale mode");
                services::stop(SERVICE)?;
                if kv::get("backup")?.as_deref() != Some(name.as_str()) || !exists(BACKUP) {
                    progress::report(20, "keeping the current program for a rollback");
                    fs::remove_tree(BACKUP)?;
                    fs::copy_tree(MINT, BACKUP)?;
                    kv::set("backup", &name)?;
                }
                progress::report(40, "running up.sh in mint/update");
                services::start(INSTALLER)?;
                // From here on a rerun after a crash waits for up.sh or
                // judges how it ended. A crash just before this line runs
                // it again, rather than taking an install that never ran
                // for done.
                kv::set("installer-run", &name)?;
            }
            wait_installer(&name)?;
            if let Some(now) = version_file()?
                && now != *version
            {
                return Err(Stop::failed(format!(
                    "up.sh installed {name}, but the register's version file says {now}, expected {version}"
                )));
            }
            // The register would ask to install a package still waiting here
            // again at its next start.
            fs::remove_tree(&loaded)?;
            kv::set("applied", version)?;
            log::warn(&format!(
                "UKM 5 POS {version} installed by up.sh: a full reboot of the register is required"
            ));
        }
        if let Some(log) = named_log("ukm5-log")? {
            remember_log_end("start-mark", &log)?;
        }
        progress::report(90, "starting the register program");
        services::start(SERVICE)?;
        Ok(())
    }

    fn verify(ctx: &StepContext) -> Result<(), Stop> {
        let version = &ctx.info.version;
        if let Some(installed) = version_file()?
            && installed != *version
        {
            return Err(Stop::failed(format!(
                "the register's version file says {installed}, expected {version}"
            )));
        }
        let mode = match named_log("ukm5-log")? {
            Some(log) => watch_start(&log, version)?,
            None => "RUNNING".to_owned(),
        };
        settle(&[SERVICE], "ukm5-settle-secs", SETTLE)?;
        let message = reboot_message(version, vars::get("posup-language").as_deref());
        log::warn(&format!(
            "{version} runs ({mode}); a full reboot of the register is required"
        ));
        prompt::notify(&message);
        Ok(())
    }

    fn commit(ctx: &StepContext) -> Result<(), Stop> {
        let version = &ctx.info.version;
        let boot = vars::get(BOOT_ID).unwrap_or_default();
        kv::set(REBOOT_KEY, &format!("{version} {boot}"))?;
        kv::set(INSTALLED_KEY, version)?;
        fs::remove_tree(BACKUP)?;
        for key in KV_KEYS {
            kv::delete(key)?;
        }
        Ok(())
    }

    fn rollback(ctx: &StepContext) -> Result<(), Stop> {
        if kv::get("installer-run")?.is_some() {
            services::stop(INSTALLER)?;
        }
        services::stop(SERVICE)?;
        // The backup is a faithful copy of mint/ taken before anything was
        // unpacked; putting it back is idempotent, so a rollback interrupted
        // half-way is simply run again. It is removed only at the very end.
        if kv::get("backup")?.is_some() && exists(BACKUP) {
            progress::report(30, "restoring the program kept before the update");
            fs::remove_tree(MINT)?;
            fs::copy_tree(BACKUP, MINT)?;
        }
        // A package this update loaded leaves with it; one that was there
        // before stays.
        let name = file_name(&ctx.package);
        if kv::get("placed")?.as_deref() == Some(name) {
            fs::remove_tree(&format!("{DROP}/{name}"))?;
        }
        fs::remove_tree(&format!("{DROP}/.{name}.partial"))?;
        fs::remove_tree(BACKUP)?;
        for key in KV_KEYS {
            kv::delete(key)?;
        }
        services::start(SERVICE)?;
        Ok(())
    }
}

/// A UKM 5 register's home has the update folder the document names.
fn require_register() -> Result<(), Stop> {
    if !std::fs::metadata(UPDATE_DIR).is_ok_and(|m| m.is_dir()) {
        return Err(Stop::failed(format!(
            "no UKM 5 register at /product: {UPDATE_DIR} is missing (the device configuration's \
             `product` must be the register's home, /home/ukm5)"
        )));
    }
    Ok(())
}

/// The version the register's version file names, where it has one.
fn version_file() -> Result<Option<String>, Stop> {
    let path = product_path("ukm5-version-file", VERSION_FILE)?;
    if !exists(&path) {
        return Ok(None);
    }
    read_trimmed(&path).map(Some)
}

/// The register's version file where it has one; otherwise the last version
/// posup installed; empty when neither tells.
fn installed_version() -> Result<String, Stop> {
    if let Some(v) = version_file()? {
        return Ok(v);
    }
    Ok(kv::get(INSTALLED_KEY)?.unwrap_or_default())
}

/// The version whose install still waits for a full reboot: until the host's
/// boot id differs from the one the install was committed in (ids never come
/// back, so the mark is only read: `inventory` changes nothing). Without a
/// boot id the requirement stays, erring towards one reboot too many.
fn reboot_pending() -> Result<Option<String>, Stop> {
    let Some(mark) = kv::get(REBOOT_KEY)? else {
        return Ok(None);
    };
    let (version, boot) = mark.split_once(' ').unwrap_or((mark.as_str(), ""));
    let now = vars::get(BOOT_ID).unwrap_or_default();
    if !boot.is_empty() && !now.is_empty() && boot != now {
        return Ok(None);
    }
    Ok(Some(version.to_owned()))
}

/// The register's installer must be granted: the document's one install
/// procedure is its `up.sh`, and the plugin does not imitate it.
fn installer_granted() -> Result<(), Stop> {
    match services::status(INSTALLER) {
        Err(e) if e.kind == ErrorKind::Denied || e.kind == ErrorKind::NotFound => {
            Err(Stop::failed(format!(
                "the register's installer is not available to the ukm5 plugin ({}). UKM 5 installs an update with \
                 `sudo ./up.sh` in /home/ukm5/mint/update: define it in the device configuration as \
                 [services.ukm5-up] command = [\"/home/ukm5/mint/update/up.sh\"], cwd = \"/home/ukm5/mint/update\" \
                 (or a oneshot systemd unit) and add \"ukm5-up\" to [allow] services; nothing was changed",
                e.message
            )))
        }
        Err(e) => Err(e.into()),
        Ok(_) => Ok(()),
    }
}

/// Waits for `up.sh` to end: stopped is success, failed is its non-zero exit.
fn wait_installer(name: &str) -> Result<(), Stop> {
    loop {
        match services::status(INSTALLER)? {
            services::State::Running => std::thread::sleep(Duration::from_millis(200)),
            services::State::Stopped => return Ok(()),
            services::State::Failed => {
                return Err(Stop::failed(format!(
                    "up.sh failed installing {name} (the service {INSTALLER} exited with an error; its output is \
                     where the device configuration sends it)"
                )));
            }
        }
    }
}

/// Reads the register's log from the mark left by `apply` until it shows the
/// start line (`ukm5-started`, `{version}` standing for the version) and a mode
/// in which the register works; an ` ERROR ` line fails. Returns that mode.
fn watch_start(log: &str, version: &str) -> Result<String, Stop> {
    let mut mark = remembered_mark("start-mark")?;
    let timeout = vars::get("ukm5-verify-timeout")
        .and_then(|s| s.trim().parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(VERIFY_TIMEOUT);
    let starting = vars::get("ukm5-started")
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| STARTED_DEFAULT.to_owned())
        .replace("{version}", version);
    let started = Instant::now();
    let mut seen_start = false;
    let mut mode = String::from("unknown");
    loop {
        let patterns = [MODE_LINE.into(), " ERROR ".into(), starting.clone()];
        let scan = logs::scan(log, mark, &patterns)?;
        mark = scan.next;
        for found in scan.found {
            match found.pattern {
                1 => {
                    return Err(Stop::failed(format!(
                        "the register logged an error after the update: {}",
                        found.line.trim()
                    )));
                }
                2 => seen_start |= found.line.trim_end().ends_with(&starting),
                _ => {
                    if let Some(m) = mode_of(&found.line) {
                        mode = m;
                    }
                }
            }
        }
        if seen_start && READY.contains(&mode.as_str()) {
            return Ok(mode);
        }
        if services::status(SERVICE)? != services::State::Running {
            return Err(Stop::failed(format!(
                "the register program is not running after the update (last mode: {mode})"
            )));
        }
        if started.elapsed() > timeout {
            return Err(Stop::failed(format!(
                "the register did not reach sale mode with {version} within {} s (last mode: {mode})",
                timeout.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `autoUpdateTimeout` from `update.conf`: minutes when set, `None` when
/// commented out or absent; a value that is no number of minutes is an error
/// naming its line.
fn auto_update_timeout() -> Result<Option<u32>, String> {
    let text = std::fs::read_to_string(UPDATE_CONF).map_err(|e| format!("{UPDATE_CONF}: {e}"))?;
    let mut found = None;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((name, value)) = line.split_once('=') else {
            return Err(format!(
                "{UPDATE_CONF} line {}: `{line}` is not `name = value`",
                n + 1
            ));
        };
        if name.trim() == "autoUpdateTimeout" {
            found = Some(value.trim().parse::<u32>().map_err(|_| {
                format!(
                    "{UPDATE_CONF} line {}: autoUpdateTimeout = {:?} is not a number of minutes",
                    n + 1,
                    value.trim()
                )
            })?);
        }
    }
    Ok(found)
}

/// The package waiting in the drop folder; of several, the newest version.
fn loaded_package() -> Option<String> {
    let entries = std::fs::read_dir(DROP).ok()?;
    entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter_map(|n| version_from_name(&n).ok().map(|v| (v, n)))
        .max_by(|a, b| posup_plugin_sdk::version::compare(&a.0, &b.0))
        .map(|(_, n)| n)
}

/// The register's mode after the last mode line of its log, where the server
/// names the log; `None` without a log or a mode line.
fn current_mode() -> Result<Option<String>, Stop> {
    let Some(log) = named_log("ukm5-log")? else {
        return Ok(None);
    };
    let Ok(lines) = logs::tail(&log, 500) else {
        return Ok(None);
    };
    Ok(lines.iter().rev().find_map(|l| mode_of(l)))
}

fn mode_of(line: &str) -> Option<String> {
    let (_, change) = line.split_once(MODE_LINE)?;
    let (_, to) = change.split_once("->")?;
    Some(to.trim().to_owned())
}

/// `ukm5_pos_1.8.4.tgz` → `1.8.4`; `ukm5_pos_877.tgz` → `877`.
fn version_from_name(name: &str) -> Result<String, String> {
    name.strip_prefix("ukm5_pos_")
        .and_then(|n| n.strip_suffix(".tgz"))
        .filter(|v| {
            !v.is_empty()
                && v.split('.')
                    .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        })
        .map(str::to_owned)
        .ok_or_else(|| {
            format!(
                "{name}: UKM 5 packages are named ukm5_pos_<version>.tgz, the version dotted or a bare build number, e.g. ukm5_pos_1.8.4.tgz or ukm5_pos_877.tgz"
            )
        })
}

posup_plugin_sdk::export!(Ukm5);

/// What the cashier is told after the update, in the store's language.
fn reboot_message(version: &str, language: Option<&str>) -> String {
    match language {
        Some("ru") => format!(
            "Установлена UKM 5 POS {version}. Чтобы завершить обновление, полностью перезагрузите кассу (выключите и включите)."
        ),
        _ => format!(
            "UKM 5 POS {version} is installed. Reboot the register fully (switch it off and on) to complete the update."
        ),
    }
}
