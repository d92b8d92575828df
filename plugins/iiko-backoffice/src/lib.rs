//! The kiosk vendor's iiko BackOffice plugin (PRODUCTS.md §2).
//!
//! The field procedure it follows:
//! - before the update the client's kiosk menu — the plugin's configuration file,
//!   which an update can lose — is saved; the saved copy is kept after the update;
//! - after the update BackOffice is started and must log in to the store's RMS,
//!   and the menu must be present and unchanged, with its kiosks configured;
//! - `inventory` reports `ready` once BackOffice was started and logged in to
//!   RMS with the installed plugin (read from its log): the iikoFront plugin of
//!   the same site may be updated only then, and the server orders the two
//!   updates by it.
//!
//! Layout it expects (plugins/iiko-backoffice/README.md has the whole picture):
//! - `/product/Office/Plugins/Kiosk.BackOffice/{Manifest.xml, Kiosk.BackOffice.dll,
//!   Kiosk.BackOffice.dll.config, Config/KioskMenu.xml}`, `/product/Rms/backclient.config.xml`
//! - `/logs/backoffice.log`
//! - packages `iiko-kiosk-backoffice_<version>.zip` holding `Kiosk.BackOffice/…`
//!   (with an empty menu template) and `CHANGELOG.txt`
//!
//! How an update moves through the directories: `stage` unpacks the package into
//! `/staging/iiko-backoffice-<version>`; `apply` stops BackOffice, saves the menu
//! to `/backup/kiosk-menu/`, copies the plugin folder to `/backup/Kiosk.BackOffice`,
//! puts the saved menu into the staged plugin and exchanges the staged plugin
//! folder with the installed one atomically; `rollback` exchanges the backup back.

use std::time::Duration;

use posup_plugin_sdk::config::{log_line, log_or, wait_limit};
use posup_plugin_sdk::files::{exists, file_name, package_text, version_in_name, xml_value};
use posup_plugin_sdk::watch::{
    Watch, log_present, remember_log_end, remembered_mark, settle, watch_log,
};
use posup_plugin_sdk::{
    Capabilities, Dir, DirRequest, Inventory, IoContext, ModuleVersion, PackageInfo, Plugin,
    PluginInfo, StepContext, Stop, archive, fs, kv, log, logs, progress, services,
};

const SERVICE: &str = "BackOffice";
/// The log in the logs folder unless the server variable `iiko-backoffice-log` names
/// another (the field procedure asks for its log, but names no file).
const LOG_DEFAULT: &str = "backoffice.log";
const PLUGIN: &str = "Kiosk.BackOffice";
const PLUGIN_DIR: &str = "/product/Office/Plugins/Kiosk.BackOffice";
const MENU: &str = "/product/Office/Plugins/Kiosk.BackOffice/Config/KioskMenu.xml";
const MENU_IN_PLUGIN: &str = "Config/KioskMenu.xml";
const RMS_CONFIG: &str = "/product/Rms/backclient.config.xml";
const BACKUP: &str = "/backup/Kiosk.BackOffice";
/// Saved menus, one per update, kept after it.
const MENU_SAVES: &str = "/backup/kiosk-menu";
const PACKAGE_PREFIX: &str = "iiko-kiosk-backoffice_";
/// How long verify waits for BackOffice to log in to RMS, unless the server sets
/// `iiko-verify-timeout` (seconds).
const VERIFY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long BackOffice must keep running after the update where its log cannot
/// be read, unless the server sets `iiko-settle-secs`.
const SETTLE: Duration = Duration::from_secs(10);
/// The log lines the plugin reads, each a server variable with this default
/// (our simulated iikoOffice's wording): the plugin's start (`{plugin}`,
/// `{version}`), the RMS login, and the start of iikoOffice.
const STARTED_LINE: (&str, &str) = ("iiko-plugin-started", "Plugin {plugin} {version} started");
const RMS_LOGIN_LINE: (&str, &str) = ("iiko-rms-login", "Logged in to RMS");
const OFFICE_START_LINE: (&str, &str) = ("iiko-office-start", "Starting iikoOffice ");
/// Lines of the log `inventory` reads back for BackOffice's last start.
const INVENTORY_LINES: u32 = 5_000;
const KV_KEYS: [&str; 6] = [
    "staged",
    "applied",
    "backup",
    "start-mark",
    "menu-save",
    "was-running",
];

struct BackOffice;

impl Plugin for BackOffice {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "iiko-backoffice".into(),
            vendor: "posup".into(),
            version: "0.1.0".into(),
            description: "The kiosk vendor's iiko BackOffice plugin: keeps the client's menu, checks the RMS login".into(),
            device_types: vec!["iiko-backoffice".into()],
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
        let version = installed_version()?;
        let session = last_session();
        let ready =
            session.plugin_version.as_deref() == Some(version.as_str()) && session.logged_in;
        let mut details = vec![("ready-rule".to_owned(), READY_RULE.to_owned())];
        if let Ok(config) = std::fs::read_to_string(RMS_CONFIG)
            && let Some(url) = xml_value(&config, "ServerUrl")
        {
            details.push(("rms".into(), url.to_owned()));
        }
        if let Ok(menu) = std::fs::read_to_string(MENU) {
            details.push(("menu".into(), Menu::of(&menu).to_string()));
        }
        let mut modules = vec![ModuleVersion {
            name: PLUGIN.into(),
            version: version.clone(),
        }];
        if let Some(office) = &session.office_version {
            modules.push(ModuleVersion {
                name: "iikoOffice".into(),
                version: office.clone(),
            });
        }
        Ok(Inventory {
            product: "iiko BackOffice".into(),
            version,
            modules,
            loaded_package: kv::get("staged")
                .ok()
                .flatten()
                .map(|v| format!("{PACKAGE_PREFIX}{v}.zip")),
            state: session.state,
            pending_sync: 0,
            ready,
            reboot_required: false,
            details,
        })
    }

    fn inspect(package: &str) -> Result<PackageInfo, Stop> {
        let name = file_name(package);
        let version = version_in_name(name, PACKAGE_PREFIX, &[".zip"]).ok_or_else(|| {
            format!("{name}: BackOffice plugin packages are named {PACKAGE_PREFIX}<version>.zip, e.g. {PACKAGE_PREFIX}3.2.0.zip")
        })?;
        let manifest = package_text(package, &format!("{PLUGIN}/Manifest.xml"), 64 * 1024)?
            .ok_or_else(|| format!("{name}: the package has no {PLUGIN}/Manifest.xml"))?;
        let inside = xml_value(&manifest, "Version")
            .ok_or_else(|| format!("{name}: {PLUGIN}/Manifest.xml has no <Version>"))?;
        if inside != version {
            return Err(format!(
                "{name}: its name says version {version} but {PLUGIN}/Manifest.xml says {inside}"
            )
            .into());
        }
        let changelog = package_text(package, "CHANGELOG.txt", 256 * 1024)?.unwrap_or_default();
        Ok(PackageInfo {
            version: version.to_owned(),
            kind: "plugin".into(),
            notes: format!("Kiosk plugin for iiko BackOffice {version}"),
            changelog,
            rollback: true,
        })
    }

    fn precheck(ctx: &StepContext) -> Result<(), Stop> {
        let installed = installed_version()?;
        if installed == ctx.info.version {
            return Err(Stop::failed(format!(
                "the BackOffice plugin {installed} is already installed; nothing to update"
            )));
        }
        let menu = std::fs::read_to_string(MENU).map_err(|e| {
            Stop::failed(format!(
                "{MENU}: the client's kiosk menu cannot be read ({e}); restore it before updating the plugin"
            ))
        })?;
        let menu = Menu::of(&menu);
        if menu.kiosks == 0 {
            return Err(Stop::failed(format!(
                "{MENU} configures no kiosk ({menu}); check the client's menu before updating the plugin"
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
        let staged = staged_dir(version);
        let staged_plugin = format!("{staged}/{PLUGIN}");
        if kv::get("applied")?.as_deref() != Some(version.as_str()) {
            if kv::get("staged")?.as_deref() != Some(version.as_str()) || !exists(&staged_plugin) {
                return Err(Stop::failed(format!(
                    "{staged} is not prepared: run the stage step (a Download task) first"
                )));
            }
            let installed = installed_version()?;
            if kv::get("was-running")?.is_none() {
                let running = services::status(SERVICE)? == services::State::Running;
                kv::set("was-running", if running { "yes" } else { "no" })?;
            }
            progress::report(5, "stopping BackOffice");
            services::stop(SERVICE)?;
            let save = save_menu(&installed, version)?;
            if kv::get("backup")?.as_deref() != Some(installed.as_str()) || !exists(BACKUP) {
                progress::report(20, "backing up the plugin");
                fs::remove_tree(BACKUP)?;
                fs::copy_tree(PLUGIN_DIR, BACKUP)?;
                kv::set("backup", &installed)?;
            }
            progress::report(60, "carrying the client's menu over");
            let menu = std::fs::read(&save).at(&save)?;
            let target = format!("{staged_plugin}/{MENU_IN_PLUGIN}");
            let config_dir = format!("{staged_plugin}/Config");
            std::fs::create_dir_all(&config_dir).at(&config_dir)?;
            std::fs::write(&target, &menu).at(&target)?;
            progress::report(80, "installing");
            fs::exchange(PLUGIN_DIR, &staged_plugin)?;
            kv::set("applied", version)?;
        }
        remember_log_end("start-mark", &log()?)?;
        progress::report(90, "starting BackOffice");
        services::start(SERVICE)?;
        Ok(())
    }

    fn verify(ctx: &StepContext) -> Result<(), Stop> {
        let version = ctx.info.version.clone();
        let installed = installed_version()?;
        if installed != version {
            return Err(Stop::failed(format!(
                "{PLUGIN_DIR}/Manifest.xml says {installed}, expected {version}"
            )));
        }
        let log = log()?;
        if !log_present(&log) {
            // Nothing tells whether BackOffice logged in to RMS: the plugin
            // started well if BackOffice keeps running, and it never reports
            // `ready`, so the site's iikoFront waits rather than fail.
            settle(&[SERVICE], "iiko-settle-secs", SETTLE)?;
            check_menu()?;
            log::warn(&format!(
                "{log} cannot be read: BackOffice runs, but its RMS login cannot be confirmed, so the site's \
                 iikoFront waits; name BackOffice's log in the server variable `iiko-backoffice-log`"
            ));
            return Ok(());
        }
        let limit = wait_limit("iiko-verify-timeout", VERIFY_TIMEOUT);
        let started_line = log_line(STARTED_LINE.0, STARTED_LINE.1, PLUGIN);
        let started_pattern = started_line
            .split("{version}")
            .next()
            .unwrap_or_default()
            .to_owned();
        let started_line = started_line.replace("{version}", &version);
        let rms_login = log_line(RMS_LOGIN_LINE.0, RMS_LOGIN_LINE.1, PLUGIN);
        let mut started = false;
        let mut last_rms = String::from("no RMS connection attempt yet");
        watch_log(
            &log,
            remembered_mark("start-mark")?,
            &[
                " ERROR ",
                started_pattern.as_str(),
                "[RmsConnection]",
                rms_login.as_str(),
            ],
            SERVICE,
            limit,
            "the login to RMS",
            |pattern, line| {
                if pattern == 0 {
                    return Watch::Fail(format!("BackOffice logged an error after the update: {line}"));
                }
                if pattern == 1 && line.contains(&started_line) {
                    started = true;
                } else if line.contains(&rms_login) {
                    if !started {
                        return Watch::Fail(format!(
                            "BackOffice logged in to RMS without starting {PLUGIN} {version}: {line}"
                        ));
                    }
                    return Watch::Done;
                } else if pattern == 2 {
                    last_rms = line.to_owned();
                    log::info(&format!("waiting for the RMS login: {line}"));
                }
                Watch::Wait
            },
        )
        .map_err(|e| match e {
            Stop::Failed(reason) if reason.contains("did not appear") => {
                Stop::failed(format!("{reason}; last RMS message: {last_rms}"))
            }
            other => other,
        })?;
        check_menu()?;
        log::info(&format!(
            "BackOffice runs {PLUGIN} {version} and is logged in to RMS"
        ));
        Ok(())
    }

    fn commit(ctx: &StepContext) -> Result<(), Stop> {
        fs::remove_tree(BACKUP)?;
        // After the exchange the staged folder holds the previous plugin.
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
            let backup_version = manifest_version(&format!("{BACKUP}/Manifest.xml"))?;
            let installed = installed_version().unwrap_or_default();
            // A rollback run again after its own exchange finds the backup's
            // version installed and does not swap back.
            if installed == *version && backup_version != *version {
                fs::exchange(PLUGIN_DIR, BACKUP)?;
            }
            fs::remove_tree(BACKUP)?;
        }
        fs::remove_tree(&staged_dir(version))?;
        if let Some(save) = kv::get("menu-save")? {
            fs::remove_tree(&save)?;
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

/// What `ready` means, as inventory reports it.
const READY_RULE: &str = "BackOffice was started and logged in to RMS with the installed plugin";

fn staged_dir(version: &str) -> String {
    format!("/staging/iiko-backoffice-{version}")
}

fn manifest_version(path: &str) -> Result<String, Stop> {
    let text = std::fs::read_to_string(path).at(path)?;
    xml_value(&text, "Version")
        .map(str::to_owned)
        .ok_or_else(|| Stop::failed(format!("{path}: no <Version>")))
}

fn installed_version() -> Result<String, Stop> {
    let manifest = format!("{PLUGIN_DIR}/Manifest.xml");
    if !exists(&manifest) {
        return Err(Stop::failed(format!(
            "no kiosk BackOffice plugin at {PLUGIN_DIR}: {manifest} is missing"
        )));
    }
    manifest_version(&manifest)
}

/// Saves the client's menu before the update as
/// `/backup/kiosk-menu/KioskMenu.<installed>-before-<version>.xml`, once.
fn save_menu(installed: &str, version: &str) -> Result<String, Stop> {
    let save = format!("{MENU_SAVES}/KioskMenu.{installed}-before-{version}.xml");
    if kv::get("menu-save")?.as_deref() == Some(save.as_str()) && exists(&save) {
        return Ok(save);
    }
    let menu = std::fs::read(MENU).at(MENU)?;
    std::fs::create_dir_all(MENU_SAVES).at(MENU_SAVES)?;
    let tmp = format!("{save}.partial");
    std::fs::write(&tmp, &menu).at(&tmp)?;
    std::fs::rename(&tmp, &save).at(&save)?;
    kv::set("menu-save", &save)?;
    log::info(&format!(
        "the client's kiosk menu ({}) is saved as {save}",
        Menu::of(&String::from_utf8_lossy(&menu))
    ));
    Ok(save)
}

/// The menu after the update must be the one saved before it.
fn check_menu() -> Result<(), Stop> {
    let save = kv::get("menu-save")?.ok_or_else(|| {
        Stop::failed("no saved menu is recorded for this update: run apply first")
    })?;
    let before = std::fs::read(&save).at(&save)?;
    let now = std::fs::read(MENU).map_err(|e| {
        Stop::failed(format!(
            "the client's kiosk menu is missing after the update ({MENU}: {e}); the copy from before is {save}"
        ))
    })?;
    if now != before {
        return Err(Stop::failed(format!(
            "the client's kiosk menu changed during the update: {} before, {} now; the copy from before is {save}",
            Menu::of(&String::from_utf8_lossy(&before)),
            Menu::of(&String::from_utf8_lossy(&now))
        )));
    }
    let menu = Menu::of(&String::from_utf8_lossy(&now));
    if menu.kiosks == 0 {
        return Err(Stop::failed(format!(
            "the kiosk menu configures no kiosk after the update ({menu})"
        )));
    }
    Ok(())
}

/// The size of a kiosk menu.
#[derive(Debug, Clone, Copy)]
struct Menu {
    items: usize,
    groups: usize,
    kiosks: usize,
}

impl Menu {
    fn of(xml: &str) -> Self {
        Self {
            items: xml.matches("<Item ").count(),
            groups: xml.matches("<Group ").count(),
            kiosks: xml.matches("<Kiosk ").count(),
        }
    }
}

impl std::fmt::Display for Menu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} items in {} groups, {} kiosks configured",
            self.items, self.groups, self.kiosks
        )
    }
}

/// BackOffice's last start, as its log tells it.
#[derive(Debug, Default)]
struct Session {
    office_version: Option<String>,
    /// The kiosk plugin version that started in it.
    plugin_version: Option<String>,
    logged_in: bool,
    state: String,
}

/// Reads the log from the last `Starting iikoOffice` line on.
fn last_session() -> Session {
    let Some(lines) = log()
        .ok()
        .and_then(|l| logs::tail(&l, INVENTORY_LINES).ok())
    else {
        let state = match services::status(SERVICE) {
            Ok(services::State::Running) => "running; RMS login unknown (no log)",
            Ok(_) => "stopped",
            Err(_) => "unknown",
        };
        return Session {
            state: state.into(),
            ..Session::default()
        };
    };
    let office_start = log_line(OFFICE_START_LINE.0, OFFICE_START_LINE.1, PLUGIN);
    let Some(start) = lines.iter().rposition(|l| l.contains(&office_start)) else {
        return Session {
            state: "not started since installation".into(),
            ..Session::default()
        };
    };
    let mut s = Session {
        office_version: lines[start]
            .split(&office_start)
            .nth(1)
            .map(|v| v.trim().to_owned()),
        state: "started".into(),
        ..Session::default()
    };
    let started_line = log_line(STARTED_LINE.0, STARTED_LINE.1, PLUGIN);
    let (before, after) = started_line
        .split_once("{version}")
        .unwrap_or((started_line.as_str(), ""));
    let rms_login = log_line(RMS_LOGIN_LINE.0, RMS_LOGIN_LINE.1, PLUGIN);
    for line in &lines[start..] {
        if let Some(rest) = line.split(before).nth(1)
            && let Some(v) = rest.strip_suffix(after)
        {
            s.plugin_version = Some(v.trim().to_owned());
        }
        if line.contains(&rms_login) {
            s.logged_in = true;
            s.state = "logged in to RMS".into();
        } else if line.contains("[RmsConnection]") && line.contains("refused") {
            s.state = "RMS login refused".into();
        } else if line.contains("Cannot connect to RMS") && !s.logged_in {
            s.state = "RMS not reachable".into();
        } else if line.contains("iikoOffice stopped") {
            s.state = "stopped".into();
        }
    }
    s
}

fn log() -> Result<String, Stop> {
    log_or("iiko-backoffice-log", LOG_DEFAULT)
}

posup_plugin_sdk::export!(BackOffice);
