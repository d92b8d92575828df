//! Openbravo store servers (PRODUCTS.md §5): module updates.
//!
//! What it keeps to:
//! - `inventory` reports every installed module with its version, the store
//!   server's computed version (see [`computed_version`]), and the batches of
//!   store data pending to sync to central;
//! - a module update is refused (not-now, nothing changed) while data is pending
//!   to sync: store and central would have different versions with data pending,
//!   the case in which Openbravo logs WebPOS users out of central. A hot fix that
//!   must go in anyway is allowed by the site's `ignore-version-check` variable
//!   set to `Y` (`N` or no variable refuses, anything else is an error);
//! - versions only grow: a package that is not newer than the installed module
//!   is refused;
//! - after the update the store server is restarted, recomputes its version
//!   information, and its log must show the version this plugin computes from the
//!   modules now installed, without errors.
//!
//! Layout (plugins/openbravo/README.md has the whole picture and every source):
//! `/product` is the Openbravo installation — the core's
//! `src-db/database/sourcedata/AD_MODULE.xml`,
//! `modules/<javapackage>/src-db/database/sourcedata/AD_MODULE.xml`. Openbravo
//! keeps the data pending to sync in its database: the plugin counts it where a
//! folder of pending batches is kept (`openbravo-pending-dir`), reads the store
//! server's log only where it is named (`openbravo-log`), and without a count
//! lets only a Forced update or a hot fix through. Packages are Openbravo module
//! files `<javapackage>-<version>.obx` (zip) holding `<javapackage>/…`.

use std::time::Duration;

use posup_plugin_sdk::config::{named_log, product_path, wait_limit};
use posup_plugin_sdk::files::{exists, file_name, package_text, xml_value};
use posup_plugin_sdk::watch::{Watch, remember_log_end, remembered_mark, settle, watch_log};
use posup_plugin_sdk::{
    Capabilities, Dir, DirRequest, Inventory, IoContext, ModuleVersion, PackageInfo, Plugin,
    PluginInfo, StepContext, Stop, TaskKind, archive, fs, kv, log, logs, progress, services, vars,
};

const SERVICE: &str = "openbravo";
/// Where pending batches are counted unless `openbravo-pending-dir` says
/// otherwise, inside the installation; used when present.
const PENDING_DEFAULT: &str = "sync/pending";
/// The line the store server logs when it recomputed its version, before the
/// number, unless `openbravo-version-line` says otherwise.
const VERSION_LINE_DEFAULT: &str = "Version information recomputed: version ";
/// How long the store server must keep running after the update, unless
/// `openbravo-settle-secs` says otherwise.
const SETTLE: Duration = Duration::from_secs(10);
const PRODUCT: &str = "/product";
const MODULES: &str = "/product/modules";
const MODULE_FILE: &str = "src-db/database/sourcedata/AD_MODULE.xml";
const PROPERTIES: &str = "/product/config/Openbravo.properties";
const CORE: &str = "org.openbravo";
/// The per-site preference that lets a hot fix in while data is pending to sync.
const IGNORE_VAR: &str = "ignore-version-check";
/// How long verify waits for the store server to start, unless the server sets
/// `openbravo-verify-timeout` (seconds).
const VERIFY_TIMEOUT: Duration = Duration::from_secs(300);
/// When to ask again while data is pending to sync.
const RETRY_SECS: u32 = 300;
const KV_KEYS: [&str; 5] = ["staged", "applied", "backup", "new-module", "start-mark"];

struct Openbravo;

impl Plugin for Openbravo {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "openbravo".into(),
            vendor: "posup".into(),
            version: "0.1.0".into(),
            description: "Openbravo store server modules: waits for pending sync, honours ignore-version-check".into(),
            device_types: vec!["openbravo".into()],
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
        let modules = installed_modules()?;
        let version = computed_version(modules.iter().map(|m| m.version.as_str()))?;
        let pending = pending_batches()?;
        let running = services::status(SERVICE).ok() == Some(services::State::Running);
        let logged = named_log("openbravo-log")?.is_some();
        let state = match (running, logged) {
            (false, _) => "offline".to_owned(),
            (true, true) => last_status().unwrap_or_else(|| "transitioning".into()),
            // Without its log nothing says whether it reaches central.
            (true, false) => "running".to_owned(),
        };
        let mut details = vec![
            (
                "version-rule".to_owned(),
                "sum over modules of major*10^12 + minor*10^6 + patch".to_owned(),
            ),
            (
                "pending-sync".to_owned(),
                pending.map_or("unknown".to_owned(), |n| n.to_string()),
            ),
        ];
        if let Ok(props) = std::fs::read_to_string(PROPERTIES)
            && let Some(store) = props
                .lines()
                .find_map(|l| l.trim().strip_prefix("store.server.identifier="))
        {
            details.push(("store".into(), store.trim().to_owned()));
        }
        Ok(Inventory {
            product: "Openbravo store server".into(),
            version: version.to_string(),
            modules: modules
                .into_iter()
                .map(|m| ModuleVersion {
                    name: m.javapackage,
                    version: m.version,
                })
                .collect(),
            loaded_package: kv::get("staged").ok().flatten(),
            ready: state == "online" || state == "running",
            state,
            pending_sync: pending.unwrap_or(0),
            reboot_required: false,
            details,
        })
    }

    fn inspect(package: &str) -> Result<PackageInfo, Stop> {
        let name = file_name(package);
        let (javapackage, version) = name
            .strip_suffix(".obx")
            .and_then(|n| n.rsplit_once('-'))
            .filter(|(p, v)| !p.is_empty() && !v.is_empty() && p.contains('.'))
            .ok_or_else(|| {
                format!("{name}: Openbravo modules come as <javapackage>-<version>.obx, e.g. org.openbravo.retail.posterminal-1.8.4000.obx")
            })?;
        if javapackage == CORE {
            return Err(format!(
                "{name}: the core ({CORE}) is not updated as a module; use the Openbravo upgrade procedure"
            ).into());
        }
        let xml = package_text(package, &format!("{javapackage}/{MODULE_FILE}"), 256 * 1024)?
            .ok_or_else(|| format!("{name}: the module has no {javapackage}/{MODULE_FILE}"))?;
        let module = Module::from_xml(&xml).map_err(|e| format!("{name}: {e}"))?;
        if module.javapackage != javapackage || module.version != version {
            return Err(format!(
                "{name}: its AD_MODULE.xml describes {} {}, not {javapackage} {version}",
                module.javapackage, module.version
            )
            .into());
        }
        computed_version([version])?;
        Ok(PackageInfo {
            version: version.to_owned(),
            kind: "module".into(),
            notes: format!("{} ({javapackage}) {version}", module.name),
            changelog: package_text(package, &format!("{javapackage}/CHANGELOG.txt"), 256 * 1024)?
                .unwrap_or_default(),
            rollback: true,
        })
    }

    fn precheck(ctx: &StepContext) -> Result<(), Stop> {
        let javapackage = package_module(ctx)?;
        let modules = installed_modules()?;
        if let Some(m) = modules.iter().find(|m| m.javapackage == javapackage)
            && posup_plugin_sdk::version::compare(&ctx.info.version, &m.version).is_le()
        {
            return Err(Stop::failed(format!(
                "{javapackage} {} is installed; {} is not newer, and module versions only grow",
                m.version, ctx.info.version
            )));
        }
        named_log("openbravo-log")?;
        pending_sync_allows(ctx.task)?;
        posup_plugin_sdk::tree::require_staging_space(&ctx.package)?;
        Ok(())
    }

    fn stage(ctx: &StepContext) -> Result<(), Stop> {
        let javapackage = package_module(ctx)?;
        let staged = staged_dir(ctx)?;
        let marker = file_name(&ctx.package).to_owned();
        if kv::get("staged")?.as_deref() == Some(marker.as_str()) && exists(&staged) {
            log::info(&format!("{staged} is already prepared"));
            return Ok(());
        }
        fs::remove_tree(&staged)?;
        std::fs::create_dir(&staged).at(&staged)?;
        progress::report(10, "unpacking the module");
        archive::extract(&ctx.package, &staged)?;
        let module = Module::read(&format!("{staged}/{javapackage}"))?;
        if module.version != ctx.info.version {
            return Err(Stop::failed(format!(
                "{staged}/{javapackage}: the unpacked module is version {}, not {}",
                module.version, ctx.info.version
            )));
        }
        kv::set("staged", &marker)?;
        progress::report(100, "staged");
        Ok(())
    }

    fn apply(ctx: &StepContext) -> Result<(), Stop> {
        let version = &ctx.info.version;
        let javapackage = package_module(ctx)?;
        let target = format!("{MODULES}/{javapackage}");
        let staged_module = format!("{}/{javapackage}", staged_dir(ctx)?);
        let backup = backup_dir(&javapackage);
        if kv::get("applied")?.as_deref() != Some(version.as_str()) {
            if !exists(&staged_module) {
                return Err(Stop::failed(format!(
                    "{staged_module} is not prepared: run the stage step (a Download task) first"
                )));
            }
            // Data may have come in since the precheck.
            pending_sync_allows(ctx.task)?;
            progress::report(5, "stopping the store server");
            services::stop(SERVICE)?;
            if exists(&target) {
                let installed = Module::read(&target)?.version;
                if kv::get("backup")?.as_deref() != Some(installed.as_str()) || !exists(&backup) {
                    progress::report(20, "backing up the module");
                    fs::remove_tree(&backup)?;
                    fs::copy_tree(&target, &backup)?;
                    kv::set("backup", &installed)?;
                }
                progress::report(70, "installing the module");
                fs::exchange(&target, &staged_module)?;
            } else {
                progress::report(70, "installing the new module");
                kv::set("new-module", "yes")?;
                fs::copy_tree(&staged_module, &target)?;
            }
            kv::set("applied", version)?;
        }
        if let Some(log) = named_log("openbravo-log")? {
            remember_log_end("start-mark", &log)?;
        }
        progress::report(90, "starting the store server");
        services::start(SERVICE)?;
        Ok(())
    }

    fn verify(ctx: &StepContext) -> Result<(), Stop> {
        let javapackage = package_module(ctx)?;
        let module = Module::read(&format!("{MODULES}/{javapackage}"))?;
        if module.version != ctx.info.version {
            return Err(Stop::failed(format!(
                "{MODULES}/{javapackage} is version {}, expected {}",
                module.version, ctx.info.version
            )));
        }
        let modules = installed_modules()?;
        let expected = computed_version(modules.iter().map(|m| m.version.as_str()))?;
        let Some(log) = named_log("openbravo-log")? else {
            return settle(&[SERVICE], "openbravo-settle-secs", SETTLE);
        };
        let limit = wait_limit("openbravo-verify-timeout", VERIFY_TIMEOUT);
        let version_line = vars::get("openbravo-version-line")
            .filter(|v| !v.trim().is_empty())
            .unwrap_or_else(|| VERSION_LINE_DEFAULT.to_owned());
        let mut recomputed = false;
        watch_log(
            &log,
            remembered_mark("start-mark")?,
            &[" ERROR ", version_line.as_str(), "Data pending to sync:"],
            SERVICE,
            limit,
            "the recomputed version information",
            |pattern, line| match pattern {
                0 => Watch::Fail(format!(
                    "the store server logged an error after the update: {line}"
                )),
                1 => {
                    let found = line
                        .split(version_line.as_str())
                        .nth(1)
                        .and_then(|r| r.split_whitespace().next())
                        .unwrap_or_default();
                    if found == expected.to_string() {
                        recomputed = true;
                        Watch::Wait
                    } else {
                        Watch::Fail(format!(
                            "the store server recomputed version {found}, but its modules make {expected}"
                        ))
                    }
                }
                _ if recomputed => Watch::Done,
                _ => Watch::Wait,
            },
        )?;
        log::info(&format!(
            "the store server runs {javapackage} {} (version {expected})",
            ctx.info.version
        ));
        Ok(())
    }

    fn commit(ctx: &StepContext) -> Result<(), Stop> {
        let javapackage = package_module(ctx)?;
        fs::remove_tree(&backup_dir(&javapackage))?;
        // After the exchange the staged folder holds the previous module.
        fs::remove_tree(&staged_dir(ctx)?)?;
        for key in KV_KEYS {
            kv::delete(key)?;
        }
        Ok(())
    }

    fn rollback(ctx: &StepContext) -> Result<(), Stop> {
        let version = &ctx.info.version;
        let javapackage = package_module(ctx)?;
        let target = format!("{MODULES}/{javapackage}");
        let backup = backup_dir(&javapackage);
        services::stop(SERVICE)?;
        let installed = Module::read(&target).map(|m| m.version).unwrap_or_default();
        if exists(&backup) {
            let saved = Module::read(&backup)?.version;
            // A rollback run again after its own exchange finds the saved
            // version installed and does not swap back.
            if installed == *version && saved != *version {
                fs::exchange(&target, &backup)?;
            }
            fs::remove_tree(&backup)?;
        } else if kv::get("new-module")?.is_some() && installed == *version {
            fs::remove_tree(&target)?;
        }
        fs::remove_tree(&staged_dir(ctx)?)?;
        for key in KV_KEYS {
            kv::delete(key)?;
        }
        services::start(SERVICE)?;
        Ok(())
    }
}

/// One installed module, as its `AD_MODULE.xml` describes it.
#[derive(Debug, Clone)]
struct Module {
    name: String,
    javapackage: String,
    version: String,
}

impl Module {
    fn from_xml(xml: &str) -> Result<Self, String> {
        let field = |tag: &str| {
            xml_value(xml, tag)
                .map(str::to_owned)
                .ok_or_else(|| format!("AD_MODULE.xml has no <{tag}>"))
        };
        Ok(Self {
            name: field("NAME")?,
            javapackage: field("JAVAPACKAGE")?,
            version: field("VERSION")?,
        })
    }

    /// The module whose folder is `dir` (`/product` for the core).
    fn read(dir: &str) -> Result<Self, Stop> {
        let file = format!("{dir}/{MODULE_FILE}");
        let xml = std::fs::read_to_string(&file).at(&file)?;
        Self::from_xml(&xml).map_err(|e| Stop::failed(format!("{file}: {e}")))
    }
}

/// The core first, then the modules by java package.
fn installed_modules() -> Result<Vec<Module>, Stop> {
    let mut modules = vec![Module::read(PRODUCT)?];
    let mut dirs: Vec<String> = std::fs::read_dir(MODULES)
        .at(MODULES)?
        .flatten()
        .map(|e| format!("{MODULES}/{}", e.file_name().to_string_lossy()))
        .filter(|d| exists(&format!("{d}/{MODULE_FILE}")))
        .collect();
    dirs.sort();
    for dir in dirs {
        modules.push(Module::read(&dir)?);
    }
    Ok(modules)
}

/// The store server's version, computed from the versions of all installed
/// modules: a module version `major.minor.patch` weighs
/// `major·10¹² + minor·10⁶ + patch`, and the server's version is the sum over
/// its modules. Every part is below a million, so any module's version growing
/// makes the sum grow: a higher number is a newer server, as Openbravo's version
/// overview has it. Versions with more than three parts or other parts are errors.
fn computed_version<'a>(versions: impl IntoIterator<Item = &'a str>) -> Result<u64, String> {
    let mut total: u64 = 0;
    for v in versions {
        let parts: Vec<&str> = v.split('.').collect();
        if parts.len() > 3 {
            return Err(format!("module version {v:?}: expected major.minor.patch"));
        }
        let mut value: u64 = 0;
        for i in 0..3 {
            let part = match parts.get(i) {
                Some(p) => p
                    .parse::<u64>()
                    .ok()
                    .filter(|n| *n < 1_000_000)
                    .ok_or_else(|| {
                        format!("module version {v:?}: {p:?} is not a number below 1000000")
                    })?,
                None => 0,
            };
            value = value * 1_000_000 + part;
        }
        total = total
            .checked_add(value)
            .ok_or_else(|| "the store server's computed version overflows".to_owned())?;
    }
    Ok(total)
}

/// Batches of store data pending to sync; `None` when the installation keeps
/// no folder of them, so nothing tells.
fn pending_batches() -> Result<Option<u32>, Stop> {
    let dir = product_path("openbravo-pending-dir", PENDING_DEFAULT)?;
    match std::fs::read_dir(&dir) {
        Ok(entries) => Ok(Some(
            entries
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
                .count() as u32,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Stop::failed(format!("{dir}: {e}"))),
    }
}

/// Not now while data is pending to sync, unless `ignore-version-check` is `Y`.
/// Where nothing counts the pending data, only a hot fix (`Y`) or a Forced
/// update — the operator's word that the store is closed and synchronized —
/// goes ahead.
fn pending_sync_allows(task: TaskKind) -> Result<(), Stop> {
    let ignore = match vars::get(IGNORE_VAR)
        .map(|v| v.trim().to_owned())
        .as_deref()
    {
        Some("Y") => true,
        None | Some("N") => false,
        Some(other) => {
            return Err(Stop::failed(format!(
                "the site's `{IGNORE_VAR}` is {other:?}: it must be Y (enabled) or N (disabled)"
            )));
        }
    };
    let pending = match pending_batches()? {
        Some(0) => return Ok(()),
        Some(n) => n,
        None if ignore || task == TaskKind::ForcedUpdate => {
            log::warn(&format!(
                "nothing counts the data pending to sync ({} is missing): going ahead as ordered",
                product_path("openbravo-pending-dir", PENDING_DEFAULT)?
            ));
            return Ok(());
        }
        None => {
            return Err(Stop::failed(format!(
                "posup cannot tell whether store data is pending to sync to central: {} is missing. Name the \
                 folder of pending batches in the server variable `openbravo-pending-dir`, set the site's \
                 `{IGNORE_VAR}` to Y for a hot fix, or run this update as a Forced update; nothing was changed",
                product_path("openbravo-pending-dir", PENDING_DEFAULT)?
            )));
        }
    };
    if ignore {
        log::warn(&format!(
            "{pending} batches are pending to sync to central; installing anyway as a hot fix ({IGNORE_VAR} = Y)"
        ));
        return Ok(());
    }
    Err(Stop::not_now(
        format!(
            "{pending} batches of store data are pending to sync to central: updating a module now would make \
             store and central versions differ with data pending, which logs WebPOS users out of central. \
             Wait until the data is synchronized, or set the site's `{IGNORE_VAR}` to Y for a hot fix"
        ),
        RETRY_SECS,
    ))
}

/// The java package of the package's module.
fn package_module(ctx: &StepContext) -> Result<String, Stop> {
    let name = file_name(&ctx.package);
    name.strip_suffix(".obx")
        .and_then(|n| n.rsplit_once('-'))
        .map(|(p, _)| p.to_owned())
        .ok_or_else(|| Stop::failed(format!("{name}: not a <javapackage>-<version>.obx module")))
}

fn staged_dir(ctx: &StepContext) -> Result<String, Stop> {
    Ok(format!(
        "/staging/openbravo-{}-{}",
        package_module(ctx)?,
        ctx.info.version
    ))
}

fn backup_dir(javapackage: &str) -> String {
    format!("/backup/openbravo-{javapackage}")
}

/// The last `Server status:` the store server logged.
fn last_status() -> Option<String> {
    let lines = logs::tail(&named_log("openbravo-log").ok()??, 2_000).ok()?;
    lines.iter().rev().find_map(|l| {
        l.split("Server status: ")
            .nth(1)
            .map(|s| s.trim().to_owned())
    })
}

posup_plugin_sdk::export!(Openbravo);
