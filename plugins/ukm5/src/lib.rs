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
//! - an Update waits while a receipt is open (the host has asked the cashier
//!   before `apply`; a Forced update asks nobody), then does what `up.sh` does:
//!   the register leaves sale mode, the program is kept aside for a rollback, the
//!   package is unpacked into `mint/`, and it leaves the drop folder;
//! - a full reboot is required after the update: `apply` leaves the mark
//!   `mint/update/reboot-required` (cleared by the register's next full boot),
//!   logs it, tells the cashier, and `inventory` reports `reboot-required`.
//!
//! Layout and log lines: `plugins/ukm5/README.md`.
//!
//! Every step can be run again after a crash: progress is read from the tree and
//! from `kv`, never assumed.

use std::time::{Duration, Instant};

use posup_plugin_sdk::{
    Capabilities, Dir, DirRequest, ErrorKind, Inventory, IoContext, Outcome, PackageInfo, Plugin,
    PluginInfo, StepContext, Stop, TaskKind, archive, fs, kv, log, logs, progress, prompt,
    services, step, vars,
};

const SERVICE: &str = "ukm5";
const LOG: &str = "/logs/pos.log";
const MINT: &str = "/product/mint";
const VERSION_FILE: &str = "/product/mint/version";
const DROP: &str = "/product/mint/update/version";
const UPDATE_CONF: &str = "/product/mint/update/update.conf";
const REBOOT_MARK: &str = "/product/mint/update/reboot-required";
/// The program as it was before the update: what a rollback restores.
const BACKUP: &str = "/backup/mint";
/// Modes in which the register may be taken out of service.
const READY: [&str; 2] = ["SALE", "LOCKED"];
/// How long verify waits for the register to reach sale mode, unless the server
/// sets `ukm5-verify-timeout` (seconds).
const VERIFY_TIMEOUT: Duration = Duration::from_secs(120);
/// Parts of the package that are the register's own and never come in one.
const NOT_IN_PACKAGES: [&str; 2] = ["conf/", "update/"];
const KV_KEYS: [&str; 4] = ["placed", "backup", "applied", "start-mark"];

struct Ukm5;

impl Plugin for Ukm5 {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "ukm5".into(),
            vendor: "posup".into(),
            version: "0.1.0".into(),
            description: "UKM 5 cash registers: loads ukm5_pos packages into mint/update/version, installs them as up.sh does, reports the required reboot".into(),
            device_types: vec!["ukm5".into()],
            capabilities: Capabilities {
                dirs: vec![
                    DirRequest { dir: Dir::Product, write: true },
                    DirRequest { dir: Dir::Staging, write: true },
                    DirRequest { dir: Dir::Backup, write: true },
                    DirRequest { dir: Dir::Logs, write: false },
                ],
                services: vec![SERVICE.into()],
                scripts: false,
                // Only to tell the cashier that a full reboot is due; the consent
                // question before an Update is the host's.
                prompt: true,
            },
        }
    }

    fn inventory() -> Result<Inventory, String> {
        let version = installed_version().map_err(stop_text)?;
        let mode = current_mode().unwrap_or_default();
        let mut details = vec![(
            "autoUpdateTimeout".to_owned(),
            match auto_update_timeout() {
                Ok(Some(m)) => format!("{m} min"),
                Ok(None) => "off".to_owned(),
                Err(e) => e,
            },
        )];
        let reboot = read_file(REBOOT_MARK).ok();
        if let Some(v) = &reboot {
            details.push(("reboot-required-for".into(), v.clone()));
        }
        Ok(Inventory {
            product: "UKM 5".into(),
            version,
            modules: vec![],
            loaded_package: loaded_package(),
            ready: READY.iter().any(|r| mode == *r),
            state: mode,
            pending_sync: 0,
            reboot_required: reboot.is_some(),
            details,
        })
    }

    fn inspect(package: String) -> Result<PackageInfo, String> {
        let name = file_name(&package);
        let version = version_from_name(name)?;
        let inside = read_text(&package, "version", 64)?
            .ok_or_else(|| format!("{name}: the package has no `version` file"))?;
        if inside.trim() != version {
            return Err(format!(
                "{name}: its name says version {version} but its `version` file says {}",
                inside.trim()
            ));
        }
        for entry in archive::entries(&package).map_err(|e| e.message)? {
            let path = entry.path.trim_start_matches("./");
            if let Some(own) = NOT_IN_PACKAGES
                .iter()
                .find(|p| path.starts_with(**p) || path == p.trim_end_matches('/'))
            {
                return Err(format!(
                    "{name}: holds {}, which is the register's own ({own} is never replaced by a package)",
                    entry.path
                ));
            }
        }
        let changelog = read_text(&package, "CHANGELOG.txt", 256 * 1024)?.unwrap_or_default();
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

    fn precheck(ctx: StepContext) -> Outcome {
        step(|| {
            installed_version()?;
            if ctx.task != TaskKind::Download
                && let Some(mode) = current_mode()
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
        })
    }

    fn stage(ctx: StepContext) -> Outcome {
        step(|| {
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
        })
    }

    fn apply(ctx: StepContext) -> Outcome {
        step(|| {
            let version = &ctx.info.version;
            let name = file_name(&ctx.package).to_owned();
            let loaded = format!("{DROP}/{name}");
            if kv::get("applied")?.as_deref() != Some(version.as_str()) {
                let installed = installed_version()?;
                if !exists(&loaded) {
                    return Err(Stop::failed(format!(
                        "{name} is not in {DROP}: run the stage step (a Download task) first"
                    )));
                }
                progress::report(5, "the register leaves sale mode");
                services::stop(SERVICE)?;
                if kv::get("backup")?.as_deref() != Some(installed.as_str()) || !exists(BACKUP) {
                    progress::report(20, "keeping the current program for a rollback");
                    fs::remove_tree(BACKUP)?;
                    fs::copy_tree(MINT, BACKUP)?;
                    kv::set("backup", &installed)?;
                }
                // What `sudo ./up.sh` does: unpack over the program, take the package
                // out of the drop folder, leave the reboot mark.
                progress::report(50, "unpacking the package into mint/");
                archive::extract(&loaded, MINT)?;
                let now = read_file(VERSION_FILE)?;
                if now != *version {
                    return Err(Stop::failed(format!(
                        "{name} was unpacked but {VERSION_FILE} says {now}, expected {version}"
                    )));
                }
                fs::remove_tree(&loaded)?;
                std::fs::write(REBOOT_MARK, format!("{version}\n")).at(REBOOT_MARK)?;
                kv::set("applied", version)?;
                log::warn(&format!(
                    "UKM 5 POS {version} installed (was {installed}): a full reboot of the register is required"
                ));
            }
            let mark = logs::end(LOG)?;
            kv::set("start-mark", &format!("{}:{}", mark.file_id, mark.offset))?;
            progress::report(90, "starting the register program");
            services::start(SERVICE)?;
            Ok(())
        })
    }

    fn verify(ctx: StepContext) -> Outcome {
        step(|| {
            let version = &ctx.info.version;
            let installed = installed_version()?;
            if installed != *version {
                return Err(Stop::failed(format!(
                    "{VERSION_FILE} says {installed}, expected {version}"
                )));
            }
            let mut mark = kv::get("start-mark")?
                .and_then(|m| parse_mark(&m))
                .unwrap_or(logs::Mark {
                    file_id: 0,
                    offset: 0,
                });
            let timeout = vars::get("ukm5-verify-timeout")
                .and_then(|s| s.parse().ok())
                .map(Duration::from_secs)
                .unwrap_or(VERIFY_TIMEOUT);
            let started = Instant::now();
            let starting = format!("Starting UKM 5 POS {version}");
            let mut seen_start = false;
            let mut mode = String::from("unknown");
            loop {
                let patterns = ["Mode changed:".into(), " ERROR ".into(), starting.clone()];
                let scan = logs::scan(LOG, mark, &patterns)?;
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
                    break;
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
            if exists(REBOOT_MARK) {
                let message = format!(
                    "UKM 5 POS {version} is installed. Reboot the register fully (switch it off and on) to complete the update."
                );
                log::warn(&format!(
                    "{version} runs in {mode} mode; a full reboot of the register is required"
                ));
                prompt::notify(&message);
            }
            Ok(())
        })
    }

    fn commit(_ctx: StepContext) -> Outcome {
        step(|| {
            fs::remove_tree(BACKUP)?;
            for key in KV_KEYS {
                kv::delete(key)?;
            }
            Ok(())
        })
    }

    fn rollback(ctx: StepContext) -> Outcome {
        step(|| {
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
        })
    }
}

fn exists(path: &str) -> bool {
    std::fs::symlink_metadata(path).is_ok()
}

fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

fn read_file(path: &str) -> Result<String, Stop> {
    Ok(std::fs::read_to_string(path).at(path)?.trim().to_owned())
}

fn installed_version() -> Result<String, Stop> {
    if !exists(VERSION_FILE) {
        return Err(Stop::failed(format!(
            "no UKM 5 register program at /product: {VERSION_FILE} is missing"
        )));
    }
    read_file(VERSION_FILE)
}

fn stop_text(stop: Stop) -> String {
    match stop {
        Stop::Failed(s) => s,
        Stop::NotNow { reason, .. } => reason,
    }
}

/// Whether two files hold the same bytes (`false` when `b` does not exist).
fn same_file(a: &str, b: &str) -> Result<bool, Stop> {
    let Ok(mb) = std::fs::metadata(b) else {
        return Ok(false);
    };
    let ma = std::fs::metadata(a).at(a)?;
    if ma.len() != mb.len() {
        return Ok(false);
    }
    Ok(std::fs::read(a).at(a)? == std::fs::read(b).at(b)?)
}

/// Bytes of the files under `root`.
fn tree_size(root: &str) -> Result<u64, Stop> {
    let mut total = 0;
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).at(&dir)? {
            let entry = entry.at(&dir)?;
            let path = format!("{dir}/{}", entry.file_name().to_string_lossy());
            let meta = std::fs::symlink_metadata(&path).at(&path)?;
            if meta.is_dir() {
                stack.push(path);
            } else {
                total += meta.len();
            }
        }
    }
    Ok(total)
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
        .max_by(|a, b| posup_plugin_sdk::compare_versions(&a.0, &b.0))
        .map(|(_, n)| n)
}

/// The register's mode after the last `Mode changed:` line of its log.
fn current_mode() -> Option<String> {
    let lines = logs::tail(LOG, 500).ok()?;
    lines.iter().rev().find_map(|l| mode_of(l))
}

fn mode_of(line: &str) -> Option<String> {
    let (_, change) = line.split_once("Mode changed:")?;
    let (_, to) = change.split_once("->")?;
    Some(to.trim().to_owned())
}

fn parse_mark(s: &str) -> Option<logs::Mark> {
    let (id, off) = s.split_once(':')?;
    Some(logs::Mark {
        file_id: id.parse().ok()?,
        offset: off.parse().ok()?,
    })
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

/// A text entry of the package, `None` when it has no such entry.
fn read_text(package: &str, entry: &str, max: u64) -> Result<Option<String>, String> {
    for name in [entry.to_owned(), format!("./{entry}")] {
        match archive::read_entry(package, &name, max) {
            Ok(bytes) => {
                return String::from_utf8(bytes)
                    .map(Some)
                    .map_err(|_| format!("{}: {entry} is not UTF-8 text", file_name(package)));
            }
            Err(e) if e.kind == ErrorKind::NotFound => continue,
            Err(e) => return Err(e.message),
        }
    }
    Ok(None)
}

posup_plugin_sdk::export!(Ukm5);
