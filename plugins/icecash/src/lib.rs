//! IceCash registers (PRODUCTS.md §3): the `dIceCash` program and its
//! environment.
//!
//! Two kinds of update, told apart by the package's name:
//! - program upgrade, `dIceCash_<version>.tgz`: runs when the server's `version`
//!   variable names this version and the register runs another. Exactly as
//!   IceCash does it: stop `dIceCash` and `DTPrint`, rename the `dIceCash` folder
//!   to `dIceCash_` (the copy a rollback returns to, kept after the upgrade),
//!   unpack the new program, start it, and show the cashier a message that the
//!   program was updated;
//! - environment upgrade, `iceupd_<nnn>.tar.bz2`: runs when the server's `update`
//!   variable names this level. The archive is unpacked and its `install.sh` run
//!   (as root on a register) — only through the host's `services.run-script`,
//!   so only where the device type grants scripts; elsewhere the update is
//!   refused before anything changes. The level reached is recorded in the
//!   register's settings (`update` in `tb_sets`). What the script itself did to
//!   the system cannot be undone: a rollback restores the record only.
//!
//! `inventory` reports what IceCash sends its server with every request: the
//! program version, the environment-update version and the printer model.
//!
//! Layout (plugins/icecash/README.md has the whole picture): `/product` is the
//! register's file system — `home/kassir/dIceCash/dIceCash.py` (its `VERSION`
//! constant is the program's version), `home/kassir/dIceCash_/`,
//! `var/lib/mysql/IceCash/tb_sets.txt`; logs `/logs/dIceCash.log`, `/logs/DTPrint.log`.

use std::time::Duration;

use posup_plugin_common::{
    Watch, exists, file_name, package_text, remember_log_end, remembered_mark, stop_text,
    version_in_name, wait_limit, watch_log,
};
use posup_plugin_sdk::{
    Capabilities, Dir, DirRequest, ErrorKind, Inventory, IoContext, ModuleVersion, Outcome,
    PackageInfo, Plugin, PluginInfo, StepContext, Stop, archive, compare_versions, fs, kv, log,
    progress, prompt, services, step, vars,
};

const DICECASH: &str = "dIceCash";
const DTPRINT: &str = "DTPrint";
const PROGRAM: &str = "/product/home/kassir/dIceCash";
const PREVIOUS: &str = "/product/home/kassir/dIceCash_";
const MAIN: &str = "/product/home/kassir/dIceCash/dIceCash.py";
const SETS: &str = "/product/var/lib/mysql/IceCash/tb_sets.txt";
const DICECASH_LOG: &str = "/logs/dIceCash.log";
const DTPRINT_LOG: &str = "/logs/DTPrint.log";
/// The `dIceCash_` of an earlier upgrade, moved aside while this one runs.
const BACKUP_PREVIOUS: &str = "/backup/dIceCash_";
const BACKUP_SETS: &str = "/backup/tb_sets.txt";
const PROGRAM_PREFIX: &str = "dIceCash_";
const PROGRAM_SUFFIXES: [&str; 3] = [".tgz", ".tar.gz", ".tar.bz2"];
const ENV_PREFIX: &str = "iceupd_";
/// How long verify waits for the services to come up, unless the server sets
/// `icecash-verify-timeout` (seconds).
const VERIFY_TIMEOUT: Duration = Duration::from_secs(90);
/// How long an environment script may run: they install system packages.
const SCRIPT_TIMEOUT_SECS: u32 = 3_600;
const KV_KEYS: [&str; 8] = [
    "staged",
    "applied",
    "previous-moved",
    "renamed",
    "sets-saved",
    "was-running",
    "dicecash-mark",
    "dtprint-mark",
];

/// The two kinds of IceCash update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Program,
    Environment,
}

impl Kind {
    fn of(ctx: &StepContext) -> Self {
        if ctx.info.kind == "environment" {
            Kind::Environment
        } else {
            Kind::Program
        }
    }
}

struct IceCash;

impl Plugin for IceCash {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "icecash".into(),
            vendor: "posup".into(),
            version: "0.1.0".into(),
            description:
                "IceCash registers: dIceCash program upgrades and environment upgrades (install.sh)"
                    .into(),
            device_types: vec!["icecash".into()],
            capabilities: Capabilities {
                dirs: vec![
                    DirRequest {
                        dir: Dir::Product,
                        write: true,
                    },
                    DirRequest {
                        dir: Dir::Staging,
                        write: true,
                    },
                    DirRequest {
                        dir: Dir::Backup,
                        write: true,
                    },
                    DirRequest {
                        dir: Dir::Logs,
                        write: false,
                    },
                ],
                services: vec![DICECASH.into(), DTPRINT.into()],
                scripts: true,
                prompt: true,
            },
        }
    }

    fn inventory() -> Result<Inventory, String> {
        let version = installed_version().map_err(stop_text)?;
        let sets = read_sets().map_err(stop_text)?;
        let get = |k: &str| sets.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let environment = get("update").unwrap_or_default();
        let mut details = vec![
            ("printer".to_owned(), get("d_devtype").unwrap_or_default()),
            ("printer-name".to_owned(), get("d_name").unwrap_or_default()),
            ("environment-update".to_owned(), environment.clone()),
        ];
        if let Some(v) = get("version") {
            details.push(("server-version".into(), v));
        }
        if let Ok(previous) = program_version(&format!("{PREVIOUS}/dIceCash.py")) {
            details.push(("previous-program".into(), previous));
        }
        let status = |name: &str| match services::status(name) {
            Ok(services::State::Running) => "running",
            Ok(services::State::Stopped) => "stopped",
            Ok(services::State::Failed) => "failed",
            Err(_) => "unknown",
        };
        let state = status(DICECASH);
        details.push(("DTPrint".into(), status(DTPRINT).into()));
        Ok(Inventory {
            product: "IceCash".into(),
            modules: vec![
                ModuleVersion {
                    name: DICECASH.into(),
                    version: version.clone(),
                },
                ModuleVersion {
                    name: "environment".into(),
                    version: environment,
                },
            ],
            version,
            loaded_package: kv::get("staged").ok().flatten(),
            state: state.into(),
            pending_sync: 0,
            ready: state == "running",
            reboot_required: false,
            details,
        })
    }

    fn inspect(package: String) -> Result<PackageInfo, String> {
        let name = file_name(&package);
        if let Some(version) = version_in_name(name, PROGRAM_PREFIX, &PROGRAM_SUFFIXES) {
            let main = package_text(&package, "dIceCash/dIceCash.py", 1024 * 1024)?
                .ok_or_else(|| format!("{name}: the package has no dIceCash/dIceCash.py"))?;
            let inside = version_in_source(&main)
                .ok_or_else(|| format!("{name}: dIceCash/dIceCash.py sets no VERSION"))?;
            if inside != version {
                return Err(format!(
                    "{name}: its name says version {version} but dIceCash/dIceCash.py says {inside}"
                ));
            }
            let changelog =
                package_text(&package, "CHANGELOG.txt", 256 * 1024)?.unwrap_or_default();
            return Ok(PackageInfo {
                version: version.to_owned(),
                kind: "program".into(),
                notes: format!("IceCash program {version}"),
                changelog,
                rollback: true,
            });
        }
        if let Some(level) = version_in_name(name, ENV_PREFIX, &[".tar.bz2"]) {
            if level.parse::<u32>().is_err() {
                return Err(format!(
                    "{name}: environment updates are numbered, e.g. {ENV_PREFIX}001.tar.bz2"
                ));
            }
            let has_install = archive::entries(&package)
                .map_err(|e| e.message)?
                .iter()
                .any(|e| e.path.trim_start_matches("./") == "install.sh");
            if !has_install {
                return Err(format!(
                    "{name}: an environment update must hold install.sh at its top"
                ));
            }
            let changelog =
                package_text(&package, "CHANGELOG.txt", 256 * 1024)?.unwrap_or_default();
            return Ok(PackageInfo {
                version: level.to_owned(),
                kind: "environment".into(),
                notes: format!("IceCash environment update {level}: runs install.sh as root"),
                changelog,
                // What install.sh does to the system cannot be undone.
                rollback: false,
            });
        }
        Err(format!(
            "{name}: IceCash packages are named {PROGRAM_PREFIX}<version>.tgz (program) or {ENV_PREFIX}<nnn>.tar.bz2 (environment)"
        ))
    }

    fn precheck(ctx: StepContext) -> Outcome {
        step(|| {
            match Kind::of(&ctx) {
                Kind::Program => precheck_program(&ctx)?,
                Kind::Environment => precheck_environment(&ctx)?,
            }
            posup_plugin_sdk::require_staging_space(&ctx.package)?;
            Ok(())
        })
    }

    fn stage(ctx: StepContext) -> Outcome {
        step(|| {
            let staged = staged_dir(&ctx);
            let key = ctx.package.clone();
            if kv::get("staged")?.as_deref() == Some(file_name(&key)) && exists(&staged) {
                log::info(&format!("{staged} is already prepared"));
                return Ok(());
            }
            fs::remove_tree(&staged)?;
            std::fs::create_dir(&staged).at(&staged)?;
            progress::report(10, "unpacking the package");
            archive::extract(&ctx.package, &staged)?;
            match Kind::of(&ctx) {
                Kind::Program => {
                    let v = program_version(&format!("{staged}/dIceCash/dIceCash.py"))?;
                    if v != ctx.info.version {
                        return Err(Stop::failed(format!(
                            "{staged}/dIceCash/dIceCash.py: the unpacked program is version {v}, not {}",
                            ctx.info.version
                        )));
                    }
                }
                Kind::Environment => {
                    let script = format!("{staged}/install.sh");
                    if !exists(&script) {
                        return Err(Stop::failed(format!(
                            "{script}: the unpacked update has no install.sh"
                        )));
                    }
                }
            }
            kv::set("staged", file_name(&key))?;
            progress::report(100, "staged");
            Ok(())
        })
    }

    fn apply(ctx: StepContext) -> Outcome {
        step(|| match Kind::of(&ctx) {
            Kind::Program => apply_program(&ctx),
            Kind::Environment => apply_environment(&ctx),
        })
    }

    fn verify(ctx: StepContext) -> Outcome {
        step(|| match Kind::of(&ctx) {
            Kind::Program => verify_program(&ctx),
            Kind::Environment => {
                let level = sets_value("update")?.unwrap_or_default();
                if level != ctx.info.version {
                    return Err(Stop::failed(format!(
                        "{SETS}: the environment update level is {level}, expected {}",
                        ctx.info.version
                    )));
                }
                Ok(())
            }
        })
    }

    fn commit(ctx: StepContext) -> Outcome {
        step(|| {
            // The dIceCash_ of an earlier upgrade is superseded by the one this
            // upgrade made; the program IceCash returns to is the one just replaced.
            fs::remove_tree(BACKUP_PREVIOUS)?;
            fs::remove_tree(BACKUP_SETS)?;
            fs::remove_tree(&staged_dir(&ctx))?;
            for key in KV_KEYS {
                kv::delete(key)?;
            }
            Ok(())
        })
    }

    fn rollback(ctx: StepContext) -> Outcome {
        step(|| {
            let start = match Kind::of(&ctx) {
                Kind::Program => rollback_program(&ctx)?,
                Kind::Environment => {
                    if kv::get("sets-saved")?.is_some() && exists(BACKUP_SETS) {
                        replace_sets_from(BACKUP_SETS)?;
                    }
                    false
                }
            };
            fs::remove_tree(BACKUP_SETS)?;
            fs::remove_tree(&staged_dir(&ctx))?;
            for key in KV_KEYS {
                kv::delete(key)?;
            }
            if start {
                services::start(DTPRINT)?;
                services::start(DICECASH)?;
            }
            Ok(())
        })
    }
}

fn staged_dir(ctx: &StepContext) -> String {
    match Kind::of(ctx) {
        Kind::Program => format!("/staging/icecash-{}", ctx.info.version),
        Kind::Environment => format!("/staging/iceupd-{}", ctx.info.version),
    }
}

/// The `VERSION = '…'` of a `dIceCash.py`.
fn version_in_source(source: &str) -> Option<String> {
    source.lines().find_map(|l| {
        let (name, value) = l.split_once('=')?;
        (name.trim() == "VERSION").then(|| value.trim().trim_matches(['\'', '"']).to_owned())
    })
}

fn program_version(main: &str) -> Result<String, Stop> {
    let source = std::fs::read_to_string(main).at(main)?;
    version_in_source(&source).ok_or_else(|| Stop::failed(format!("{main}: sets no VERSION")))
}

fn installed_version() -> Result<String, Stop> {
    if !exists(MAIN) {
        return Err(Stop::failed(format!(
            "no IceCash program at {PROGRAM}: {MAIN} is missing"
        )));
    }
    program_version(MAIN)
}

/// The rows of `tb_sets`, in file order.
fn read_sets() -> Result<Vec<(String, String)>, Stop> {
    let text = std::fs::read_to_string(SETS).at(SETS)?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect())
}

fn sets_value(name: &str) -> Result<Option<String>, Stop> {
    Ok(read_sets()?
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v))
}

/// A server variable this register must have; IceCash acts only on them.
fn server_var(name: &str, why: &str) -> Result<String, Stop> {
    vars::get(name)
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .ok_or_else(|| {
            Stop::failed(format!(
                "the server variable `{name}` is not set for this register: {why}"
            ))
        })
}

fn precheck_program(ctx: &StepContext) -> Result<(), Stop> {
    let installed = installed_version()?;
    let offered = server_var(
        "version",
        "IceCash upgrades its program only to the version the server offers",
    )?;
    let version = &ctx.info.version;
    if offered != *version {
        return Err(Stop::failed(format!(
            "the server's `version` variable offers {offered}, but this package is {version}"
        )));
    }
    if installed == offered {
        return Err(Stop::failed(format!(
            "the register already runs dIceCash {installed}, the version the server offers; nothing to upgrade"
        )));
    }
    log::info(&format!(
        "the server offers dIceCash {offered}; the register runs {installed}"
    ));
    Ok(())
}

fn precheck_environment(ctx: &StepContext) -> Result<(), Stop> {
    scripts_granted()?;
    let level = &ctx.info.version;
    let wanted = server_var(
        "update",
        "IceCash runs an environment update only when the server's `update` variable names it",
    )?;
    if wanted != *level {
        return Err(Stop::failed(format!(
            "the server's `update` variable asks for environment update {wanted}, but this package is {level}"
        )));
    }
    let done = sets_value("update")?.unwrap_or_default();
    if !done.is_empty() && compare_versions(&done, level).is_ge() {
        return Err(Stop::failed(format!(
            "the register's environment is already at update {done} ({SETS}); nothing to run"
        )));
    }
    Ok(())
}

/// Running `install.sh` needs the scripts capability. The host answers a script
/// request with `denied` before it looks at the path when scripts are not
/// granted, so asking for one that does not exist tells without running anything.
fn scripts_granted() -> Result<(), Stop> {
    match services::run_script("/staging/.icecash-scripts-probe.sh", &[], 1) {
        Err(e) if e.kind == ErrorKind::Denied => Err(Stop::failed(format!(
            "an environment update runs the archive's install.sh as root, and this device type does not grant \
             scripts to the icecash plugin (allow.scripts = true in the device configuration); nothing was changed ({})",
            e.message
        ))),
        _ => Ok(()),
    }
}

fn apply_program(ctx: &StepContext) -> Result<(), Stop> {
    let version = &ctx.info.version;
    let staged_program = format!("{}/dIceCash", staged_dir(ctx));
    if kv::get("applied")?.as_deref() != Some(version.as_str()) {
        if !exists(&staged_program) {
            return Err(Stop::failed(format!(
                "{staged_program} is not prepared: run the stage step (a Download task) first"
            )));
        }
        if kv::get("was-running")?.is_none() {
            let running = services::status(DICECASH)? == services::State::Running;
            kv::set("was-running", if running { "yes" } else { "no" })?;
        }
        progress::report(5, "stopping dIceCash and DTPrint");
        services::stop(DICECASH)?;
        services::stop(DTPRINT)?;
        if kv::get("renamed")?.is_none() {
            // The dIceCash_ of an earlier upgrade makes room, kept aside until commit.
            if exists(PREVIOUS) && kv::get("previous-moved")?.is_none() {
                progress::report(15, "keeping the previous dIceCash_ aside");
                fs::remove_tree(BACKUP_PREVIOUS)?;
                fs::copy_tree(PREVIOUS, BACKUP_PREVIOUS)?;
                kv::set("previous-moved", "yes")?;
            }
            fs::remove_tree(PREVIOUS)?;
            progress::report(30, "renaming dIceCash to dIceCash_");
            std::fs::rename(PROGRAM, PREVIOUS).at(PROGRAM)?;
            kv::set("renamed", "yes")?;
        }
        progress::report(50, "unpacking the new program");
        fs::remove_tree(PROGRAM)?;
        fs::copy_tree(&staged_program, PROGRAM)?;
        kv::set("applied", version)?;
    }
    remember_log_end("dicecash-mark", DICECASH_LOG)?;
    remember_log_end("dtprint-mark", DTPRINT_LOG)?;
    progress::report(90, "starting DTPrint and dIceCash");
    services::start(DTPRINT)?;
    services::start(DICECASH)?;
    Ok(())
}

fn verify_program(ctx: &StepContext) -> Result<(), Stop> {
    let version = ctx.info.version.clone();
    let installed = installed_version()?;
    if installed != version {
        return Err(Stop::failed(format!(
            "{MAIN} says {installed}, expected {version}"
        )));
    }
    let limit = wait_limit("icecash-verify-timeout", VERIFY_TIMEOUT);
    let mut started = false;
    watch_log(
        DICECASH_LOG,
        remembered_mark("dicecash-mark")?,
        // Python ends a traceback with `SomeError: why`, the line that names the cause.
        &[
            " ERROR ",
            "Error:",
            "can't open file",
            "IceCash ",
            "Serving the register interface",
        ],
        DICECASH,
        limit,
        "`Serving the register interface`",
        |pattern, line| match pattern {
            0..=2 => Watch::Fail(format!("dIceCash failed after the upgrade: {line}")),
            3 if line.contains(&format!("IceCash {version} started")) => {
                started = true;
                Watch::Wait
            }
            3 => Watch::Fail(format!("dIceCash started another version: {line}")),
            _ if started => Watch::Done,
            _ => Watch::Wait,
        },
    )?;
    watch_log(
        DTPRINT_LOG,
        remembered_mark("dtprint-mark")?,
        &[" ERROR ", "Error:", "can't open file", ": ready"],
        DTPRINT,
        limit,
        "the printer's `ready`",
        |pattern, line| match pattern {
            0..=2 => Watch::Fail(format!("DTPrint failed after the upgrade: {line}")),
            _ => Watch::Done,
        },
    )?;
    // IceCash tells the person at the register that the program changed under them.
    prompt::notify(&format!(
        "Внимание! Программа IceCash обновлена до версии {version}. Сервис перезапущен; выйдите из режима \
         регистрации и войдите снова: интерфейс мог измениться."
    ));
    log::info(&format!("dIceCash {version} and DTPrint are up"));
    Ok(())
}

/// Returns whether the services are to be started again.
fn rollback_program(ctx: &StepContext) -> Result<bool, Stop> {
    let version = &ctx.info.version;
    services::stop(DICECASH)?;
    services::stop(DTPRINT)?;
    if kv::get("renamed")?.is_some() && exists(PREVIOUS) {
        let previous = program_version(&format!("{PREVIOUS}/dIceCash.py")).unwrap_or_default();
        if previous != *version {
            fs::remove_tree(PROGRAM)?;
            std::fs::rename(PREVIOUS, PROGRAM).at(PREVIOUS)?;
        }
    }
    kv::delete("renamed")?;
    if kv::get("previous-moved")?.is_some() && exists(BACKUP_PREVIOUS) {
        fs::remove_tree(PREVIOUS)?;
        fs::copy_tree(BACKUP_PREVIOUS, PREVIOUS)?;
        fs::remove_tree(BACKUP_PREVIOUS)?;
    }
    Ok(kv::get("was-running")?.as_deref() != Some("no"))
}

fn apply_environment(ctx: &StepContext) -> Result<(), Stop> {
    let level = &ctx.info.version;
    if kv::get("applied")?.as_deref() == Some(level.as_str()) {
        return Ok(());
    }
    let script = format!("{}/install.sh", staged_dir(ctx));
    if !exists(&script) {
        return Err(Stop::failed(format!(
            "{script} is not prepared: run the stage step (a Download task) first"
        )));
    }
    if kv::get("sets-saved")?.is_none() || !exists(BACKUP_SETS) {
        fs::remove_tree(BACKUP_SETS)?;
        fs::copy_tree(SETS, BACKUP_SETS)?;
        kv::set("sets-saved", "yes")?;
    }
    progress::report(20, "running install.sh");
    let result = services::run_script(&script, &[], SCRIPT_TIMEOUT_SECS)?;
    for line in result.output.lines() {
        log::info(&format!("install.sh: {line}"));
    }
    if result.exit_code != 0 {
        let last = result
            .output
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("no output");
        return Err(Stop::failed(format!(
            "environment update {level}: install.sh exited with code {}: {}",
            result.exit_code,
            last.trim()
        )));
    }
    progress::report(90, "recording the environment update");
    set_sets_value("update", level)?;
    kv::set("applied", level)?;
    Ok(())
}

/// Sets one row of `tb_sets`, keeping the others, the comments and the file's
/// mode: the new table is written beside the old and renamed over it.
fn set_sets_value(name: &str, value: &str) -> Result<(), Stop> {
    let text = std::fs::read_to_string(SETS).at(SETS)?;
    let mut found = false;
    let mut out: String = text
        .lines()
        .map(|l| match l.split_once('=') {
            Some((k, _)) if k.trim() == name && !l.trim_start().starts_with('#') => {
                found = true;
                format!("{name} = {value}\n")
            }
            _ => format!("{l}\n"),
        })
        .collect();
    if !found {
        out.push_str(&format!("{name} = {value}\n"));
    }
    let next = format!("{SETS}.posup-new");
    fs::remove_tree(&next)?;
    fs::copy_tree(SETS, &next)?;
    std::fs::write(&next, out).at(&next)?;
    std::fs::rename(&next, SETS).at(SETS)?;
    Ok(())
}

/// Puts a saved `tb_sets` back, byte for byte and with its mode.
fn replace_sets_from(saved: &str) -> Result<(), Stop> {
    let next = format!("{SETS}.posup-restore");
    fs::remove_tree(&next)?;
    fs::copy_tree(saved, &next)?;
    std::fs::rename(&next, SETS).at(SETS)?;
    Ok(())
}

posup_plugin_sdk::export!(IceCash);
