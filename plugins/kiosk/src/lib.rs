//! The iiko self-service kiosk plugin (PRODUCTS.md §2).
//!
//! The field procedure it follows: never interrupt a customer — read the kiosk log
//! first and wait while the kiosk is in `menu browsing` or at payment; after the
//! update start the kiosk and check in its log that it reached `IDLE` (cash shift
//! open) or `maintenance` without errors.
//!
//! What it reads (plugins/kiosk/README.md lists every source):
//! - the kiosk's log (`kiosk-log`, default `kiosk.log` in the logs folder), its
//!   state from lines like `… State changed: STARTING -> IDLE` (`kiosk-state-line`);
//! - `/product/config/`, the site's settings, carried over by every update;
//! - `/product/version` where the installation has one; otherwise the version
//!   posup installed last;
//! - packages `kiosk_<version>.tgz` holding the program and `CHANGELOG.txt`.
//!
//! How an update moves through the directories:
//! - stage: the package is unpacked into `/staging/kiosk-<version>` and the site's
//!   `config/` is copied into it, without stopping the kiosk;
//! - apply: the kiosk is stopped, `/product` is copied to `/backup/kiosk`, and the
//!   staged tree is exchanged atomically with `/product`;
//! - rollback: `/product` is exchanged with `/backup/kiosk`, which is a faithful copy
//!   of the installation before the update, so the old tree returns byte for byte.
//!
//! Every step can be run again after a crash: progress is read from the trees
//! themselves and from `kv`, never assumed.

use std::time::{Duration, Instant};

use posup_plugin_sdk::config::{log_or, wait_limit};
use posup_plugin_sdk::files::{exists, package_text, read_trimmed};
use posup_plugin_sdk::watch::{log_present, remember_log_end, remembered_mark, settle, state_name};
use posup_plugin_sdk::{
    Capabilities, Dir, DirRequest, Inventory, IoContext, PackageInfo, Plugin, PluginInfo,
    StepContext, Stop, TaskKind, archive, fs, kv, log, logs, progress, services, vars,
};

const SERVICE: &str = "kiosk";
/// The kiosk's log in the logs folder unless the server variable `kiosk-log`
/// names another.
const LOG_DEFAULT: &str = "kiosk.log";
/// What a log line that says the kiosk's state changed holds, before
/// `<old> -> <new>`, unless the server variable `kiosk-state-line` says otherwise.
const STATE_LINE_DEFAULT: &str = "State changed:";
const VERSION_FILE: &str = "/product/version";
/// Left in the staged tree before the exchange: after a crash it tells on which
/// side of the exchange the installation is.
const MARK: &str = ".posup-update";
/// The last version posup installed, where the installation names none itself.
const INSTALLED_KEY: &str = "installed";
/// How long the kiosk must keep running after the update, unless the server sets
/// `kiosk-settle-secs`; the check where no log tells its state.
const SETTLE: Duration = Duration::from_secs(10);
const BACKUP: &str = "/backup/kiosk";
/// States in which a customer is using the kiosk.
const BUSY: [&str; 2] = ["menu browsing", "payment"];
/// How long to wait before asking again while a customer uses the kiosk, unless
/// the server sets `kiosk-busy-retry-secs`.
const BUSY_RETRY: Duration = Duration::from_secs(60);
/// States the kiosk must reach after an update.
const READY: [&str; 2] = ["IDLE", "maintenance"];
/// How long verify waits for the kiosk to become ready, unless the server sets the
/// variable `kiosk-verify-timeout` (seconds).
const VERIFY_TIMEOUT: Duration = Duration::from_secs(90);

struct Kiosk;

impl Plugin for Kiosk {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "kiosk".into(),
            vendor: "posup".into(),
            version: "0.2.0".into(),
            description: "iiko self-service kiosk software: waits for idle, updates, checks the kiosk reaches IDLE".into(),
            device_types: vec!["kiosk".into()],
            capabilities: Capabilities {
                dirs: vec![
                    DirRequest { dir: Dir::Product, write: true },
                    DirRequest { dir: Dir::Staging, write: true },
                    DirRequest { dir: Dir::Backup, write: true },
                    DirRequest { dir: Dir::Logs, write: false },
                ],
                services: vec![SERVICE.into()],
                scripts: false,
                prompt: true,
                databases: Vec::new(),
            },
        }
    }

    fn inventory() -> Result<Inventory, Stop> {
        let version = installed_version()?;
        let state = match current_state()? {
            Some(state) => state,
            None => state_name(services::status(SERVICE)?).to_owned(),
        };
        let loaded = kv::get("staged")
            .ok()
            .flatten()
            .map(|v| format!("kiosk_{v}.tgz"));
        Ok(Inventory {
            product: "iiko kiosk".into(),
            version,
            modules: vec![],
            loaded_package: loaded,
            ready: READY
                .iter()
                .chain(&["running"])
                .any(|r| state.eq_ignore_ascii_case(r)),
            state,
            pending_sync: 0,
            reboot_required: false,
            details: vec![],
        })
    }

    fn inspect(package: &str) -> Result<PackageInfo, Stop> {
        let version = version_from_name(package)?;
        // A `version` file is checked where a package has one.
        if let Some(inside) = package_text(package, "version", 64)?
            && inside.trim() != version
        {
            return Err(format!(
                "{package}: its name says version {version} but its `version` file says {}",
                inside.trim()
            )
            .into());
        }
        let changelog = package_text(package, "CHANGELOG.txt", 256 * 1024)?.unwrap_or_default();
        Ok(PackageInfo {
            notes: format!("iiko kiosk software {version}"),
            version,
            kind: "program".into(),
            changelog,
            rollback: true,
        })
    }

    fn precheck(ctx: &StepContext) -> Result<(), Stop> {
        installed_version()?;
        match current_state()? {
            Some(state) if BUSY.iter().any(|b| state.eq_ignore_ascii_case(b)) => {
                return Err(Stop::not_now(
                    format!("the kiosk is in `{state}`: a customer is using it"),
                    wait_limit("kiosk-busy-retry-secs", BUSY_RETRY).as_secs() as u32,
                ));
            }
            Some(_) => {}
            // No log to read: nothing tells whether a customer is at the
            // kiosk. Only a Forced update, the operator's word that the
            // store is closed, goes ahead.
            None if ctx.task == TaskKind::ForcedUpdate => log::warn(
                "the kiosk's log tells no state: a Forced update goes ahead as ordered, without knowing whether a customer is at the kiosk",
            ),
            None => {
                return Err(Stop::failed(format!(
                    "posup cannot tell whether a customer is using the kiosk: {} has no state line. \
                     Name the kiosk's log in the server variable `kiosk-log` (and its state line in \
                     `kiosk-state-line`), or run this update as a Forced update when the store is closed; \
                     nothing was changed",
                    log_or("kiosk-log", LOG_DEFAULT)?
                )));
            }
        }
        posup_plugin_sdk::tree::require_staging_space(&ctx.package)?;
        Ok(())
    }

    fn stage(ctx: &StepContext) -> Result<(), Stop> {
        let version = &ctx.info.version;
        let staged = staged_dir(version);
        if kv::get("staged")?.as_deref() == Some(version.as_str()) && exists(&staged) {
            log::info(&format!("{staged} is already prepared"));
            return Ok(());
        }
        fs::remove_tree(&staged)?;
        std::fs::create_dir(&staged).at(&staged)?;
        progress::report(10, "unpacking the package");
        archive::extract(&ctx.package, &staged)?;
        if let Ok(staged_version) = read_trimmed(&format!("{staged}/version"))
            && staged_version != *version
        {
            return Err(Stop::failed(format!(
                "{}: unpacked version {staged_version} differs from {version}",
                ctx.package
            )));
        }
        // The site's settings stay as they are: the package never carries them.
        progress::report(70, "carrying the site configuration over");
        fs::remove_tree(&format!("{staged}/config"))?;
        if exists("/product/config") {
            fs::copy_tree("/product/config", &format!("{staged}/config"))?;
        }
        std::fs::write(format!("{staged}/{MARK}"), version).at(&staged)?;
        kv::set("staged", version)?;
        progress::report(100, "staged");
        Ok(())
    }

    fn apply(ctx: &StepContext) -> Result<(), Stop> {
        let version = &ctx.info.version;
        let staged = staged_dir(version);
        let installed = installed_version()?;
        let exchanged =
            kv::get("applied")?.as_deref() == Some(version.as_str()) || exchanged_to(version);
        if !exchanged {
            if kv::get("staged")?.as_deref() != Some(version.as_str()) || !exists(&staged) {
                return Err(Stop::failed(format!(
                    "{staged} is not prepared: run the stage step (a Download task) first"
                )));
            }
            progress::report(5, "stopping the kiosk");
            services::stop(SERVICE)?;
            if kv::get("backup")?.as_deref() != Some(installed.as_str()) || !exists(BACKUP) {
                progress::report(20, "backing up the installation");
                fs::remove_tree(BACKUP)?;
                fs::copy_tree("/product", BACKUP)?;
                kv::set("backup", &installed)?;
            }
            progress::report(80, "installing");
            fs::exchange("/product", &staged)?;
            kv::set("applied", version)?;
        }
        remember_log_end("start-mark", &log_or("kiosk-log", LOG_DEFAULT)?)?;
        progress::report(90, "starting the kiosk");
        services::start(SERVICE)?;
        Ok(())
    }

    fn verify(ctx: &StepContext) -> Result<(), Stop> {
        let version = &ctx.info.version;
        if !exchanged_to(version) {
            return Err(Stop::failed(format!(
                "/product does not hold the staged {version}: the update was not installed"
            )));
        }
        if let Ok(installed) = read_trimmed(VERSION_FILE)
            && installed != *version
        {
            return Err(Stop::failed(format!(
                "{VERSION_FILE} says {installed}, expected {version}"
            )));
        }
        let log = log_or("kiosk-log", LOG_DEFAULT)?;
        if !log_present(&log) {
            // No log to read: the kiosk staying up is the one sign of a good start.
            return settle(&[SERVICE], "kiosk-settle-secs", SETTLE);
        }
        let mut mark = remembered_mark("start-mark")?;
        let timeout = vars::get("kiosk-verify-timeout")
            .and_then(|s| s.parse().ok())
            .map(Duration::from_secs)
            .unwrap_or(VERIFY_TIMEOUT);
        let state_line = state_line();
        let started = Instant::now();
        let mut state = String::from("unknown");
        loop {
            let scan = logs::scan(&log, mark, &[state_line.clone(), " ERROR ".into()])?;
            mark = scan.next;
            for found in scan.found {
                if found.pattern == 1 {
                    return Err(Stop::failed(format!(
                        "the kiosk logged an error after the update: {}",
                        found.line.trim()
                    )));
                }
                if let Some(s) = state_of(&found.line, &state_line) {
                    state = s;
                }
            }
            if READY.iter().any(|r| state.eq_ignore_ascii_case(r)) {
                log::info(&format!("kiosk {version} is up in state {state}"));
                return Ok(());
            }
            if services::status(SERVICE)? != services::State::Running {
                return Err(Stop::failed(format!(
                    "the kiosk process is not running after the update (last state: {state})"
                )));
            }
            if started.elapsed() > timeout {
                return Err(Stop::failed(format!(
                    "the kiosk did not reach IDLE or maintenance within {} s (last state: {state})",
                    timeout.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn commit(ctx: &StepContext) -> Result<(), Stop> {
        kv::set(INSTALLED_KEY, &ctx.info.version)?;
        fs::remove_tree(&format!("/product/{MARK}"))?;
        fs::remove_tree(BACKUP)?;
        // After the exchange the staged name holds the previous installation.
        fs::remove_tree(&staged_dir(&ctx.info.version))?;
        for key in ["staged", "applied", "backup", "start-mark"] {
            kv::delete(key)?;
        }
        Ok(())
    }

    fn rollback(ctx: &StepContext) -> Result<(), Stop> {
        let version = &ctx.info.version;
        services::stop(SERVICE)?;
        if exists(BACKUP) {
            // The exchange happened when the installation holds the staged
            // tree's mark; a rollback re-run after its own exchange finds the
            // old tree back, without the mark, and does not swap again.
            if exchanged_to(version) {
                fs::exchange("/product", BACKUP)?;
            }
            fs::remove_tree(BACKUP)?;
        }
        fs::remove_tree(&staged_dir(version))?;
        for key in ["staged", "applied", "backup", "start-mark"] {
            kv::delete(key)?;
        }
        services::start(SERVICE)?;
        Ok(())
    }
}

fn staged_dir(version: &str) -> String {
    format!("/staging/kiosk-{version}")
}

/// The installation's `version` file where it has one; otherwise the version
/// posup installed last; empty when neither tells.
fn installed_version() -> Result<String, Stop> {
    if exists(VERSION_FILE) {
        return read_trimmed(VERSION_FILE);
    }
    Ok(kv::get(INSTALLED_KEY)?.unwrap_or_default())
}

/// Whether `/product` is the staged tree of `version`: the exchange happened.
fn exchanged_to(version: &str) -> bool {
    std::fs::read_to_string(format!("/product/{MARK}")).is_ok_and(|v| v == version)
}

fn state_line() -> String {
    vars::get("kiosk-state-line")
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| STATE_LINE_DEFAULT.to_owned())
}

/// The kiosk's state after the last state line in its log; `None` when there
/// is no log or no state line in its last 500 lines.
fn current_state() -> Result<Option<String>, Stop> {
    let Ok(lines) = logs::tail(&log_or("kiosk-log", LOG_DEFAULT)?, 500) else {
        return Ok(None);
    };
    let state_line = state_line();
    Ok(lines.iter().rev().find_map(|l| state_of(l, &state_line)))
}

fn state_of(line: &str, state_line: &str) -> Option<String> {
    let (_, change) = line.split_once(state_line)?;
    let (_, to) = change.split_once("->")?;
    Some(to.trim().to_owned())
}

/// `kiosk_7.4.2.tgz` → `7.4.2`.
fn version_from_name(package: &str) -> Result<String, String> {
    let name = package.rsplit('/').next().unwrap_or(package);
    let version = name
        .strip_prefix("kiosk_")
        .and_then(|n| n.strip_suffix(".tgz"))
        .filter(|v| {
            !v.is_empty()
                && v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
        })
        .ok_or_else(|| {
            format!("{name}: kiosk packages are named kiosk_<version>.tgz, e.g. kiosk_7.4.2.tgz")
        })?;
    Ok(version.to_owned())
}

posup_plugin_sdk::export!(Kiosk);
