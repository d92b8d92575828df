//! The kiosk vendor's iikoFront plugin (PRODUCTS.md §2).
//!
//! The field procedure it follows:
//! - the iikoFront plugin is updated only after the same site's BackOffice
//!   plugin was updated, BackOffice started and logged in to the store's RMS: in
//!   any other order the iikoFront plugin fails with a version error. The server
//!   passes BackOffice's readiness as the variable `iiko-backoffice-ready` (the
//!   BackOffice plugin version that is ready, absent while none is); without it,
//!   or with a version older than the package needs, the update is refused as
//!   not-now and nothing is changed;
//! - before the update the old plugin is copied into the folder `old` on the
//!   cashier's desktop (`/product/Desktop/old`, created when missing), as
//!   `old/Kiosk.Front_<old version>`; the copy stays after the update;
//! - after the update iikoFront is started and its log must show the plugin
//!   started, with no plugin failure and no errors.
//!
//! Layout it expects (plugins/iiko-front/README.md has the whole picture):
//! - `/product/Front.Net/Plugins/Kiosk.Front/{Manifest.xml, Kiosk.Front.dll, …}`
//! - `/product/Desktop/` — the cashier's desktop
//! - `/logs/cash-server.log`
//! - packages `iiko-kiosk-front_<version>.zip` holding `Kiosk.Front/…` (its
//!   `Manifest.xml` names `RequiredBackOfficeVersion`) and `CHANGELOG.txt`
//!
//! `stage` unpacks the package into `/staging/iiko-front-<version>`; `apply`
//! stops iikoFront, copies the plugin to `/backup/Kiosk.Front` and to the
//! desktop's `old` folder, and exchanges the staged plugin folder with the
//! installed one atomically; `rollback` exchanges the backup back and removes
//! what the update added to the desktop.

use std::time::Duration;

use posup_plugin_sdk::config::{log_line, log_or, wait_limit};
use posup_plugin_sdk::files::{exists, file_name, package_text, version_in_name, xml_value};
use posup_plugin_sdk::watch::{
    Watch, log_present, remember_log_end, remembered_mark, settle, watch_log,
};
use posup_plugin_sdk::{
    Capabilities, Dir, DirRequest, Inventory, IoContext, ModuleVersion, PackageInfo, Plugin,
    PluginInfo, StepContext, Stop, archive, fs, kv, log, progress, services, vars,
};

const SERVICE: &str = "iikoFront";
/// The log in the logs folder unless the server variable `iiko-front-log` names
/// another (the field procedure asks for its log, but names no file).
const LOG_DEFAULT: &str = "cash-server.log";
const PLUGIN: &str = "Kiosk.Front";
const PLUGIN_DIR: &str = "/product/Front.Net/Plugins/Kiosk.Front";
const DESKTOP: &str = "/product/Desktop";
const OLD: &str = "/product/Desktop/old";
const BACKUP: &str = "/backup/Kiosk.Front";
const PACKAGE_PREFIX: &str = "iiko-kiosk-front_";
/// The server variable naming the BackOffice plugin version that is ready.
const READY_VAR: &str = "iiko-backoffice-ready";
/// How long verify waits for iikoFront to start its plugins, unless the server
/// sets `iiko-verify-timeout` (seconds).
const VERIFY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long iikoFront must keep running after the update where its log cannot
/// be read, unless the server sets `iiko-settle-secs`.
const SETTLE: Duration = Duration::from_secs(10);
/// The log lines the plugin reads, each a server variable with this default
/// (our simulated iikoFront's wording): the plugin's start and iikoFront ready.
const STARTED_LINE: (&str, &str) = ("iiko-plugin-started", "Plugin {plugin} {version} started");
const READY_LINE: (&str, &str) = ("iiko-front-ready", "iikoFront is ready");
/// When the server is asked again while BackOffice is not ready.
const RETRY_SECS: u32 = 600;
const KV_KEYS: [&str; 7] = [
    "staged",
    "applied",
    "backup",
    "start-mark",
    "old-created",
    "old-copy",
    "was-running",
];

struct Front;

impl Plugin for Front {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "iiko-front".into(),
            vendor: "posup".into(),
            version: "0.1.0".into(),
            description: "The kiosk vendor's iikoFront plugin: after BackOffice, old copy on the desktop, checks the start".into(),
            device_types: vec!["iiko-front".into()],
            capabilities: Capabilities {
                dirs: vec![
                    DirRequest { dir: Dir::Product, write: true },
                    DirRequest { dir: Dir::Staging, write: true },
                    DirRequest { dir: Dir::Backup, write: true },
                    DirRequest { dir: Dir::Logs, write: false },
                ],
                services: vec![SERVICE.into()],
                scripts: false,
                prompt: false,
                databases: Vec::new(),
            },
        }
    }

    fn inventory() -> Result<Inventory, Stop> {
        let manifest = installed_manifest()?;
        let version = field(&manifest, "Version")?;
        let mut details = Vec::new();
        if let Some(needs) = xml_value(&manifest, "RequiredBackOfficeVersion") {
            details.push(("requires-backoffice".to_owned(), needs.to_owned()));
        }
        let state = match services::status(SERVICE) {
            Ok(services::State::Running) => "running",
            Ok(services::State::Failed) => "failed",
            Ok(services::State::Stopped) => "stopped",
            Err(_) => "unknown",
        };
        Ok(Inventory {
            product: "iikoFront".into(),
            modules: vec![ModuleVersion {
                name: PLUGIN.into(),
                version: version.clone(),
            }],
            version,
            loaded_package: kv::get("staged")
                .ok()
                .flatten()
                .map(|v| format!("{PACKAGE_PREFIX}{v}.zip")),
            state: state.into(),
            pending_sync: 0,
            ready: state == "running",
            reboot_required: false,
            details,
        })
    }

    fn inspect(package: &str) -> Result<PackageInfo, Stop> {
        let name = file_name(package);
        let version = version_in_name(name, PACKAGE_PREFIX, &[".zip"]).ok_or_else(|| {
            format!("{name}: iikoFront plugin packages are named {PACKAGE_PREFIX}<version>.zip, e.g. {PACKAGE_PREFIX}2.4.0.zip")
        })?;
        let manifest = package_manifest(package)?;
        let inside = xml_value(&manifest, "Version")
            .ok_or_else(|| format!("{name}: {PLUGIN}/Manifest.xml has no <Version>"))?;
        if inside != version {
            return Err(format!(
                "{name}: its name says version {version} but {PLUGIN}/Manifest.xml says {inside}"
            )
            .into());
        }
        let needs = xml_value(&manifest, "RequiredBackOfficeVersion").ok_or_else(|| {
            format!("{name}: {PLUGIN}/Manifest.xml has no <RequiredBackOfficeVersion>")
        })?;
        let changelog = package_text(package, "CHANGELOG.txt", 256 * 1024)?.unwrap_or_default();
        Ok(PackageInfo {
            version: version.to_owned(),
            kind: "plugin".into(),
            notes: format!(
                "Kiosk plugin for iikoFront {version}; needs the BackOffice plugin {needs} or newer, started and logged in to RMS"
            ),
            changelog,
            rollback: true,
        })
    }

    fn precheck(ctx: &StepContext) -> Result<(), Stop> {
        let installed = field(&installed_manifest()?, "Version")?;
        if installed == ctx.info.version {
            return Err(Stop::failed(format!(
                "the iikoFront plugin {installed} is already installed; nothing to update"
            )));
        }
        let manifest = package_manifest(&ctx.package)?;
        let needs = field(&manifest, "RequiredBackOfficeVersion")?;
        backoffice_ready(&needs)?;
        if !std::fs::metadata(DESKTOP).is_ok_and(|m| m.is_dir()) {
            return Err(Stop::failed(format!(
                "no desktop folder at {DESKTOP}: the old plugin must be copied to the desktop's `old` folder before the update"
            )));
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
        let manifest = format!("{staged}/{PLUGIN}/Manifest.xml");
        let text = std::fs::read_to_string(&manifest).at(&manifest)?;
        if xml_value(&text, "Version") != Some(version.as_str()) {
            return Err(Stop::failed(format!(
                "{manifest}: the unpacked plugin is not version {version}"
            )));
        }
        kv::set("staged", version)?;
        progress::report(100, "staged");
        Ok(())
    }

    fn apply(ctx: &StepContext) -> Result<(), Stop> {
        let version = &ctx.info.version;
        let staged_plugin = format!("{}/{PLUGIN}", staged_dir(version));
        if kv::get("applied")?.as_deref() != Some(version.as_str()) {
            if kv::get("staged")?.as_deref() != Some(version.as_str()) || !exists(&staged_plugin) {
                return Err(Stop::failed(format!(
                    "{} is not prepared: run the stage step (a Download task) first",
                    staged_dir(version)
                )));
            }
            // The order rule is checked again at the last moment: the
            // variables are those of this step.
            backoffice_ready(&field(
                &std::fs::read_to_string(format!("{staged_plugin}/Manifest.xml"))
                    .at(&staged_plugin)?,
                "RequiredBackOfficeVersion",
            )?)?;
            let installed = field(&installed_manifest()?, "Version")?;
            if kv::get("was-running")?.is_none() {
                let running = services::status(SERVICE)? == services::State::Running;
                kv::set("was-running", if running { "yes" } else { "no" })?;
            }
            progress::report(5, "stopping iikoFront");
            services::stop(SERVICE)?;
            if kv::get("backup")?.as_deref() != Some(installed.as_str()) || !exists(BACKUP) {
                progress::report(20, "backing up the plugin");
                fs::remove_tree(BACKUP)?;
                fs::copy_tree(PLUGIN_DIR, BACKUP)?;
                kv::set("backup", &installed)?;
            }
            progress::report(40, "copying the old plugin to the desktop");
            copy_to_desktop(&installed)?;
            progress::report(80, "installing");
            fs::exchange(PLUGIN_DIR, &staged_plugin)?;
            kv::set("applied", version)?;
        }
        remember_log_end("start-mark", &log()?)?;
        progress::report(90, "starting iikoFront");
        services::start(SERVICE)?;
        Ok(())
    }

    fn verify(ctx: &StepContext) -> Result<(), Stop> {
        let version = ctx.info.version.clone();
        let installed = field(&installed_manifest()?, "Version")?;
        if installed != version {
            return Err(Stop::failed(format!(
                "{PLUGIN_DIR}/Manifest.xml says {installed}, expected {version}"
            )));
        }
        let log = log()?;
        if !log_present(&log) {
            settle(&[SERVICE], "iiko-settle-secs", SETTLE)?;
            log::warn(&format!(
                "{log} cannot be read: iikoFront keeps running, which is all that tells the plugin started; \
                 name iikoFront's log in the server variable `iiko-front-log`"
            ));
            return Ok(());
        }
        let limit = wait_limit("iiko-verify-timeout", VERIFY_TIMEOUT);
        let started_line = log_line(STARTED_LINE.0, STARTED_LINE.1, PLUGIN);
        // A plugin's own line, whatever it says (started, crashed, failed).
        let plugin_pattern = started_line
            .split("{version}")
            .next()
            .unwrap_or_default()
            .to_owned();
        let started_line = started_line.replace("{version}", &version);
        let ready = log_line(READY_LINE.0, READY_LINE.1, PLUGIN);
        let mut started = false;
        watch_log(
            &log,
            remembered_mark("start-mark")?,
            &[
                " ERROR ",
                "[PluginHost] Plugin ",
                ready.as_str(),
                plugin_pattern.as_str(),
            ],
            SERVICE,
            limit,
            &format!("`{ready}`"),
            |pattern, line| match pattern {
                0 => Watch::Fail(format!(
                    "iikoFront logged an error after the update: {line}"
                )),
                1 | 3 if line.contains(&started_line) => {
                    started = true;
                    Watch::Wait
                }
                1 | 3 if line.contains(PLUGIN) => {
                    Watch::Fail(format!("the plugin failed on start: {line}"))
                }
                2 if started => Watch::Done,
                2 => Watch::Fail(format!(
                    "iikoFront started without the plugin {PLUGIN} {version}: {line}"
                )),
                _ => Watch::Wait,
            },
        )?;
        log::info(&format!("iikoFront runs {PLUGIN} {version} without errors"));
        Ok(())
    }

    fn commit(ctx: &StepContext) -> Result<(), Stop> {
        fs::remove_tree(BACKUP)?;
        // After the exchange the staged folder holds the previous plugin; its
        // copy on the desktop stays, as the field procedure wants.
        fs::remove_tree(&staged_dir(&ctx.info.version))?;
        for key in KV_KEYS {
            kv::delete(key)?;
        }
        Ok(())
    }

    fn rollback(ctx: &StepContext) -> Result<(), Stop> {
        let version = &ctx.info.version;
        services::stop(SERVICE)?;
        if exists(BACKUP) {
            let backup = std::fs::read_to_string(format!("{BACKUP}/Manifest.xml")).at(BACKUP)?;
            let backup_version = field(&backup, "Version")?;
            let installed = installed_manifest()
                .and_then(|m| field(&m, "Version"))
                .unwrap_or_default();
            if installed == *version && backup_version != *version {
                fs::exchange(PLUGIN_DIR, BACKUP)?;
            }
            fs::remove_tree(BACKUP)?;
        }
        fs::remove_tree(&staged_dir(version))?;
        // What the update put on the desktop goes too: the desktop is as before.
        if let Some(copy) = kv::get("old-copy")? {
            fs::remove_tree(&copy)?;
        }
        if kv::get("old-created")?.as_deref() == Some("yes") {
            fs::remove_tree(OLD)?;
        }
        let start = kv::get("was-running")?.as_deref() != Some("no");
        for key in KV_KEYS {
            kv::delete(key)?;
        }
        if start {
            services::start(SERVICE)?;
        }
        Ok(())
    }
}

fn staged_dir(version: &str) -> String {
    format!("/staging/iiko-front-{version}")
}

fn installed_manifest() -> Result<String, Stop> {
    let manifest = format!("{PLUGIN_DIR}/Manifest.xml");
    if !exists(&manifest) {
        return Err(Stop::failed(format!(
            "no kiosk iikoFront plugin at {PLUGIN_DIR}: {manifest} is missing"
        )));
    }
    std::fs::read_to_string(&manifest).at(&manifest)
}

fn field(manifest: &str, tag: &str) -> Result<String, Stop> {
    xml_value(manifest, tag)
        .map(str::to_owned)
        .ok_or_else(|| Stop::failed(format!("{PLUGIN}/Manifest.xml has no <{tag}>")))
}

fn package_manifest(package: &str) -> Result<String, Stop> {
    package_text(package, &format!("{PLUGIN}/Manifest.xml"), 64 * 1024)?.ok_or_else(|| {
        Stop::failed(format!(
            "{}: the package has no {PLUGIN}/Manifest.xml",
            file_name(package)
        ))
    })
}

/// Not now unless the server says the site's BackOffice plugin `needs` or newer
/// is updated, started and logged in to RMS.
fn backoffice_ready(needs: &str) -> Result<(), Stop> {
    match vars::get(READY_VAR)
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
    {
        None => Err(Stop::not_now(
            format!(
                "the site's BackOffice is not yet updated, started and logged in to RMS (the server has not set \
                 `{READY_VAR}`); this iikoFront plugin needs the BackOffice plugin {needs} or newer first, \
                 otherwise it fails with a version error"
            ),
            RETRY_SECS,
        )),
        Some(ready) if posup_plugin_sdk::version::compare(&ready, needs).is_lt() => {
            Err(Stop::not_now(
                format!(
                    "the site's BackOffice is ready with plugin {ready}, but this iikoFront plugin needs {needs} or \
                 newer: update BackOffice first, start it and log in to RMS"
                ),
                RETRY_SECS,
            ))
        }
        Some(ready) => {
            log::info(&format!(
                "the site's BackOffice is ready with plugin {ready}"
            ));
            Ok(())
        }
    }
}

/// Copies the installed plugin to `/product/Desktop/old/Kiosk.Front_<installed>`,
/// creating `old` when missing. A copy of that version already there is left as
/// it is (and left behind by a rollback).
fn copy_to_desktop(installed: &str) -> Result<(), Stop> {
    if !exists(OLD) {
        std::fs::create_dir(OLD).at(OLD)?;
        kv::set("old-created", "yes")?;
    }
    let copy = format!("{OLD}/{PLUGIN}_{installed}");
    if kv::get("old-copy")?.as_deref() == Some(copy.as_str()) {
        // This update made the copy before (an apply run again): make it anew.
        fs::remove_tree(&copy)?;
    } else if exists(&copy) {
        log::info(&format!("{copy} is already on the desktop"));
        return Ok(());
    }
    fs::copy_tree(PLUGIN_DIR, &copy)?;
    kv::set("old-copy", &copy)?;
    log::info(&format!("the old plugin {installed} is copied to {copy}"));
    Ok(())
}

fn log() -> Result<String, Stop> {
    log_or("iiko-front-log", LOG_DEFAULT)
}

posup_plugin_sdk::export!(Front);
