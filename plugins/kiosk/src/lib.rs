//! The iiko self-service kiosk plugin (PRODUCTS.md §2).
//!
//! The field procedure it follows: never interrupt a customer — read the kiosk log
//! first and wait while the kiosk is in `menu browsing` or at payment; after the
//! update start the kiosk and check in its log that it reached `IDLE` (cash shift
//! open) or `maintenance` without errors.
//!
//! Layout it expects (see host/sim's README for the simulated kiosk):
//! - `/product/version`, `/product/app/…`, `/product/config/kiosk.config.xml`
//! - `/logs/kiosk.log`, lines like `… INFO  [StateMachine] State changed: STARTING -> IDLE`
//! - packages `kiosk_<version>.tgz` holding `version`, `app/…` and `CHANGELOG.txt`
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

use posup_plugin_sdk::{
    Capabilities, Dir, DirRequest, Inventory, IoContext, Outcome, PackageInfo, Plugin, PluginInfo,
    StepContext, Stop, archive, fs, kv, log, logs, progress, services, step, vars,
};

const SERVICE: &str = "kiosk";
const LOG: &str = "/logs/kiosk.log";
const BACKUP: &str = "/backup/kiosk";
/// States in which a customer is using the kiosk.
const BUSY: [&str; 2] = ["menu browsing", "payment"];
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
            version: "0.1.0".into(),
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
            },
        }
    }

    fn inventory() -> Result<Inventory, String> {
        let version = installed_version().map_err(stop_text)?;
        let state = current_state().unwrap_or_default();
        let loaded = kv::get("staged")
            .ok()
            .flatten()
            .map(|v| format!("kiosk_{v}.tgz"));
        Ok(Inventory {
            product: "iiko kiosk".into(),
            version,
            modules: vec![],
            loaded_package: loaded,
            ready: READY.iter().any(|r| state.eq_ignore_ascii_case(r)),
            state,
            pending_sync: 0,
            reboot_required: false,
            details: vec![],
        })
    }

    fn inspect(package: String) -> Result<PackageInfo, String> {
        let version = version_from_name(&package)?;
        let inside = read_text(&package, "version", 64)?
            .ok_or_else(|| format!("{package}: the package has no `version` file"))?;
        if inside.trim() != version {
            return Err(format!(
                "{package}: its name says version {version} but its `version` file says {}",
                inside.trim()
            ));
        }
        let changelog = read_text(&package, "CHANGELOG.txt", 256 * 1024)?.unwrap_or_default();
        Ok(PackageInfo {
            notes: format!("iiko kiosk software {version}"),
            version,
            kind: "program".into(),
            changelog,
            rollback: true,
        })
    }

    fn precheck(ctx: StepContext) -> Outcome {
        step(|| {
            installed_version()?;
            if let Some(state) = current_state()
                && BUSY.iter().any(|b| state.eq_ignore_ascii_case(b))
            {
                return Err(Stop::not_now(
                    format!("the kiosk is in `{state}`: a customer is using it"),
                    60,
                ));
            }
            posup_plugin_sdk::require_staging_space(&ctx.package)?;
            Ok(())
        })
    }

    fn stage(ctx: StepContext) -> Outcome {
        step(|| {
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
            let staged_version = read_file(&format!("{staged}/version"))?;
            if staged_version != *version {
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
            kv::set("staged", version)?;
            progress::report(100, "staged");
            Ok(())
        })
    }

    fn apply(ctx: StepContext) -> Outcome {
        step(|| {
            let version = &ctx.info.version;
            let staged = staged_dir(version);
            let installed = installed_version()?;
            let exchanged = kv::get("applied")?.as_deref() == Some(version.as_str())
                || (installed == *version
                    && read_file(&format!("{staged}/version")).ok().as_deref()
                        != Some(version.as_str()));
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
            let mark = logs::end(LOG)?;
            kv::set("start-mark", &format!("{}:{}", mark.file_id, mark.offset))?;
            progress::report(90, "starting the kiosk");
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
                    "/product/version says {installed}, expected {version}"
                )));
            }
            let mut mark = match kv::get("start-mark")?.and_then(|m| parse_mark(&m)) {
                Some(m) => m,
                None => logs::Mark {
                    file_id: 0,
                    offset: 0,
                },
            };
            let timeout = vars::get("kiosk-verify-timeout")
                .and_then(|s| s.parse().ok())
                .map(Duration::from_secs)
                .unwrap_or(VERIFY_TIMEOUT);
            let started = Instant::now();
            let mut state = String::from("unknown");
            loop {
                let scan = logs::scan(LOG, mark, &["State changed:".into(), " ERROR ".into()])?;
                mark = scan.next;
                for found in scan.found {
                    if found.pattern == 1 {
                        return Err(Stop::failed(format!(
                            "the kiosk logged an error after the update: {}",
                            found.line.trim()
                        )));
                    }
                    if let Some(s) = state_of(&found.line) {
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
        })
    }

    fn commit(ctx: StepContext) -> Outcome {
        step(|| {
            fs::remove_tree(BACKUP)?;
            // After the exchange the staged name holds the previous installation.
            fs::remove_tree(&staged_dir(&ctx.info.version))?;
            for key in ["staged", "applied", "backup", "start-mark"] {
                kv::delete(key)?;
            }
            Ok(())
        })
    }

    fn rollback(ctx: StepContext) -> Outcome {
        step(|| {
            let version = &ctx.info.version;
            services::stop(SERVICE)?;
            if exists(BACKUP) {
                let backup_version = read_file(&format!("{BACKUP}/version"))?;
                let installed = installed_version().unwrap_or_default();
                // The exchange happened when the product runs the new version while the
                // backup holds another; a rollback re-run after its own exchange sees
                // the backup version installed and does not swap back.
                if installed == *version && backup_version != *version {
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
        })
    }
}

fn staged_dir(version: &str) -> String {
    format!("/staging/kiosk-{version}")
}

fn exists(path: &str) -> bool {
    std::fs::symlink_metadata(path).is_ok()
}

fn read_file(path: &str) -> Result<String, Stop> {
    Ok(std::fs::read_to_string(path).at(path)?.trim().to_owned())
}

fn installed_version() -> Result<String, Stop> {
    if !exists("/product/version") {
        return Err(Stop::failed(
            "no kiosk installation at /product: /product/version is missing",
        ));
    }
    read_file("/product/version")
}

fn stop_text(stop: Stop) -> String {
    match stop {
        Stop::Failed(s) => s,
        Stop::NotNow { reason, .. } => reason,
    }
}

/// The kiosk's state after the last `State changed:` line in its log.
fn current_state() -> Option<String> {
    let lines = logs::tail(LOG, 500).ok()?;
    lines.iter().rev().find_map(|l| state_of(l))
}

fn state_of(line: &str) -> Option<String> {
    let (_, change) = line.split_once("State changed:")?;
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

/// A text entry of the package, `None` when it has no such entry.
fn read_text(package: &str, entry: &str, max: u64) -> Result<Option<String>, String> {
    for name in [entry.to_owned(), format!("./{entry}")] {
        match archive::read_entry(package, &name, max) {
            Ok(bytes) => {
                return String::from_utf8(bytes)
                    .map(Some)
                    .map_err(|_| format!("{package}: {entry} is not UTF-8 text"));
            }
            Err(e) if e.kind == posup_plugin_sdk::ErrorKind::NotFound => continue,
            Err(e) => return Err(e.message),
        }
    }
    Ok(None)
}

posup_plugin_sdk::export!(Kiosk);
