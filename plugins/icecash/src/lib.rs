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
//!   refused before anything changes. The level reached is posup's own record
//!   (the plugin's kv store): the documents do not say where the register
//!   keeps it. What the script itself did to the system cannot be undone.
//!
//! `/product` is the folder that holds `dIceCash` (`/home/kassir` on the
//! document's registers; the device configuration says where). The register's
//! MySQL database is read where the device configuration describes it
//! (`[databases.icecash]`): settings from `tb_sets`, and the receipts and
//! Z-reports not uploaded yet, which an environment update waits for. The
//! document names no log file, so dIceCash's output is read only where the
//! server variable `icecash-log` names it, and otherwise verify goes by the
//! services' state. plugins/icecash/README.md lists every source.

use std::time::Duration;

use posup_plugin_sdk::config::{named_log, wait_limit};
use posup_plugin_sdk::files::{exists, file_name, package_text, version_in_name};
use posup_plugin_sdk::watch::{
    Watch, remember_log_end, remembered_mark, settle, state_name, watch_log,
};
use posup_plugin_sdk::{
    Capabilities, DatabaseRequest, Dir, DirRequest, ErrorKind, Inventory, IoContext, ModuleVersion,
    PackageInfo, Plugin, PluginInfo, StepContext, Stop, archive, database, fs, kv, log, logs,
    progress, prompt, services, vars,
};

const DICECASH: &str = "dIceCash";
const DTPRINT: &str = "DTPrint";
const PROGRAM: &str = "/product/dIceCash";
const PREVIOUS: &str = "/product/dIceCash_";
const MAIN: &str = "/product/dIceCash/dIceCash.py";
/// The `dIceCash_` of an earlier upgrade, moved aside while this one runs.
const BACKUP_PREVIOUS: &str = "/backup/dIceCash_";
const PROGRAM_PREFIX: &str = "dIceCash_";
const PROGRAM_SUFFIXES: [&str; 3] = [".tgz", ".tar.gz", ".tar.bz2"];
const ENV_PREFIX: &str = "iceupd_";
/// The server variable naming dIceCash's output file under `/logs`.
const DICECASH_LOG_VAR: &str = "icecash-log";
/// The server variable naming DTPrint's output file under `/logs`.
const DTPRINT_LOG_VAR: &str = "dtprint-log";
/// The server variable with the line dIceCash prints when it has started.
const STARTED_VAR: &str = "icecash-started";
/// What dIceCash prints when it has started (`{version}` is the program's
/// version): the program's own start line, `Start dIceCash Server v 2.0.060 [10110]`.
const STARTED_DEFAULT: &str = "Start dIceCash Server v {version}";
/// What in a service's output means it failed: Python ends a traceback with
/// `SomeError: why`, the line that names the cause.
const ERROR_PATTERNS: [&str; 3] = [" ERROR ", "Error:", "can't open file"];
/// How long verify waits for dIceCash's start line, unless the server sets
/// `icecash-verify-timeout` (seconds).
const VERIFY_TIMEOUT: Duration = Duration::from_secs(90);
/// How long both services must keep running after the upgrade before it is
/// taken as good, unless the server sets `icecash-settle-secs`. A Python program
/// missing a module or a setting dies within a second or two of its start.
const SETTLE: Duration = Duration::from_secs(10);
/// How long an environment script may run: they install system packages.
const SCRIPT_TIMEOUT_SECS: u32 = 3_600;
/// The environment-update level this register reached: posup's record, kept
/// across updates (not one of [`KV_KEYS`]).
const LEVEL_KEY: &str = "environment-update";
/// What one update remembers between its steps; gone after commit or rollback.
const KV_KEYS: [&str; 7] = [
    "staged",
    "applied",
    "previous-moved",
    "renamed",
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
            version: "0.2.0".into(),
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
                    // Only where the server names the services' output files.
                    DirRequest {
                        dir: Dir::Logs,
                        write: false,
                    },
                ],
                services: vec![DICECASH.into(), DTPRINT.into()],
                scripts: true,
                prompt: true,
                // Where the device configuration names the register's MySQL
                // database: its settings and what is not uploaded yet.
                databases: vec![DatabaseRequest::new(DATABASE, &[SETS, RECEIPTS, ZREPORTS])],
            },
        }
    }

    fn inventory() -> Result<Inventory, Stop> {
        let version = installed_version()?;
        let environment = kv::get(LEVEL_KEY)?.unwrap_or_default();
        let mut details = vec![("environment-update".to_owned(), environment.clone())];
        if let Some(v) = vars::get("version") {
            details.push(("server-version".into(), v));
        }
        if let Ok(previous) = program_version(&format!("{PREVIOUS}/dIceCash.py")) {
            details.push(("previous-program".into(), previous));
        }
        let status = |name: &str| services::status(name).map_or("unknown", state_name);
        let state = status(DICECASH);
        details.push(("DTPrint".into(), status(DTPRINT).into()));
        let mut pending_sync = 0;
        match read_database() {
            Db::NotGranted => {}
            Db::Unreadable(why) => details.push(("database".into(), why)),
            Db::Read {
                sets,
                receipts,
                zreports,
            } => {
                pending_sync = receipts + zreports;
                details.extend(
                    sets.into_iter()
                        .filter(|(name, _)| REPORTED_SETS.contains(&name.as_str())),
                );
            }
        }
        Ok(Inventory {
            product: "IceCash".into(),
            modules: vec![
                ModuleVersion {
                    name: DICECASH.into(),
                    version: version.clone(),
                },
                // Named as environment updates are (`iceupd_<nnn>`), so a
                // level is measured against the level reached.
                ModuleVersion {
                    name: "iceupd".into(),
                    version: environment,
                },
            ],
            version,
            loaded_package: kv::get("staged").ok().flatten(),
            state: state.into(),
            pending_sync,
            ready: state == "running",
            reboot_required: false,
            details,
        })
    }

    fn inspect(package: &str) -> Result<PackageInfo, Stop> {
        let name = file_name(package);
        if let Some(version) = version_in_name(name, PROGRAM_PREFIX, &PROGRAM_SUFFIXES) {
            let main = package_text(package, "dIceCash/dIceCash.py", 1024 * 1024)?
                .ok_or_else(|| format!("{name}: the package has no dIceCash/dIceCash.py"))?;
            let inside = version_in_source(&main)
                .ok_or_else(|| format!("{name}: dIceCash/dIceCash.py sets no VERSION"))?;
            if inside != version {
                return Err(format!(
                    "{name}: its name says version {version} but dIceCash/dIceCash.py says {inside}"
                )
                .into());
            }
            let changelog = package_text(package, "CHANGELOG.txt", 256 * 1024)?.unwrap_or_default();
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
                )
                .into());
            }
            let has_install = archive::entries(package)?
                .iter()
                .any(|e| e.path.trim_start_matches("./") == "install.sh");
            if !has_install {
                return Err(format!(
                    "{name}: an environment update must hold install.sh at its top"
                )
                .into());
            }
            let changelog = package_text(package, "CHANGELOG.txt", 256 * 1024)?.unwrap_or_default();
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
        ).into())
    }

    fn precheck(ctx: &StepContext) -> Result<(), Stop> {
        match Kind::of(ctx) {
            Kind::Program => precheck_program(ctx)?,
            Kind::Environment => precheck_environment(ctx)?,
        }
        posup_plugin_sdk::tree::require_staging_space(&ctx.package)?;
        Ok(())
    }

    fn stage(ctx: &StepContext) -> Result<(), Stop> {
        let staged = staged_dir(ctx);
        let key = ctx.package.clone();
        if kv::get("staged")?.as_deref() == Some(file_name(&key)) && exists(&staged) {
            log::info(&format!("{staged} is already prepared"));
            return Ok(());
        }
        fs::remove_tree(&staged)?;
        std::fs::create_dir(&staged).at(&staged)?;
        progress::report(10, "unpacking the package");
        archive::extract(&ctx.package, &staged)?;
        match Kind::of(ctx) {
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
    }

    fn apply(ctx: &StepContext) -> Result<(), Stop> {
        match Kind::of(ctx) {
            Kind::Program => apply_program(ctx),
            Kind::Environment => apply_environment(ctx),
        }
    }

    fn verify(ctx: &StepContext) -> Result<(), Stop> {
        match Kind::of(ctx) {
            Kind::Program => verify_program(ctx),
            Kind::Environment => {
                if kv::get("applied")?.as_deref() != Some(ctx.info.version.as_str()) {
                    return Err(Stop::failed(format!(
                        "environment update {}: install.sh has not completed on this register",
                        ctx.info.version
                    )));
                }
                Ok(())
            }
        }
    }

    fn commit(ctx: &StepContext) -> Result<(), Stop> {
        if Kind::of(ctx) == Kind::Environment {
            kv::set(LEVEL_KEY, &ctx.info.version)?;
        }
        // The dIceCash_ of an earlier upgrade is superseded by the one this
        // upgrade made; the program IceCash returns to is the one just replaced.
        fs::remove_tree(BACKUP_PREVIOUS)?;
        fs::remove_tree(&staged_dir(ctx))?;
        for key in KV_KEYS {
            kv::delete(key)?;
        }
        Ok(())
    }

    fn rollback(ctx: &StepContext) -> Result<(), Stop> {
        // An environment update changes nothing posup could restore: its
        // level is recorded only at commit.
        let start = match Kind::of(ctx) {
            Kind::Program => rollback_program(ctx)?,
            Kind::Environment => false,
        };
        fs::remove_tree(&staged_dir(ctx))?;
        for key in KV_KEYS {
            kv::delete(key)?;
        }
        if start {
            services::start(DTPRINT)?;
            services::start(DICECASH)?;
        }
        Ok(())
    }
}

fn staged_dir(ctx: &StepContext) -> String {
    match Kind::of(ctx) {
        Kind::Program => format!("/staging/icecash-{}", ctx.info.version),
        Kind::Environment => format!("/staging/iceupd-{}", ctx.info.version),
    }
}

/// The `VERSION = '…'` of a `dIceCash.py`: IceCash takes its own version from a
/// constant of the program.
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
            "no IceCash program at {PROGRAM}: {MAIN} is missing (the device configuration's \
             `product` folder must be the one that holds dIceCash, e.g. /home/kassir)"
        )));
    }
    program_version(MAIN)
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

/// What a line holding the start pattern says: `Some(true)` when it is the
/// start line of `version`, `Some(false)` when another version started, `None`
/// when the line is not a start line. `template` is the start line with
/// `{version}` where the version stands.
fn start_line(line: &str, template: &str, version: &str) -> Option<bool> {
    let Some((before, after)) = template.split_once("{version}") else {
        return line.contains(template).then_some(true);
    };
    let at = line.find(before)? + before.len();
    let rest = &line[at..];
    let started = rest
        .split(|c: char| !(c.is_ascii_alphanumeric() || ".-_".contains(c)))
        .next()
        .unwrap_or("");
    Some(started == version && rest[started.len()..].starts_with(after.trim_end()))
}

/// The configured start line (`icecash-started`) and the text a log scan looks
/// for: what stands before `{version}`, which must not be empty.
fn start_template() -> Result<(String, String), Stop> {
    let template = vars::get(STARTED_VAR)
        .filter(|t| !t.trim().is_empty())
        .unwrap_or_else(|| STARTED_DEFAULT.to_owned());
    let pattern = match template.split_once("{version}") {
        None => template.clone(),
        Some((before, _)) => before.to_owned(),
    };
    if pattern.trim().is_empty() {
        return Err(Stop::failed(format!(
            "the server variable `{STARTED_VAR}` must have text before {{version}}, as in `{STARTED_DEFAULT}`"
        )));
    }
    Ok((template, pattern))
}

/// The name device configurations give the register's MySQL database
/// (`[databases.icecash]`; IceCash's own is `IceCash`).
const DATABASE: &str = "icecash";
/// IceCash's settings: one `name`/`value` a row.
const SETS: &str = "tb_sets";
/// Receipts and Z-reports: a row is uploaded to IceServ once its `up` is 1.
const RECEIPTS: &str = "tb_trsc_hd";
const ZREPORTS: &str = "tb_Zet";
/// Settings the inventory reports: the store's and the register's numbers
/// IceServ knows it by, and the id of the last server change it replicated.
const REPORTED_SETS: [&str; 3] = ["idplace", "nkassa", "sets"];
/// Rows counted at most per table (the host's own cap).
const MAX_COUNTED: u32 = 1_000;

/// What the register's database says, where the device configuration names it.
enum Db {
    /// No database granted: the facts below are not known.
    NotGranted,
    /// Granted, but it could not be read; why.
    Unreadable(String),
    Read {
        sets: Vec<(String, String)>,
        /// Receipts and Z-reports not uploaded yet (`up = 0`), each counted up
        /// to [`MAX_COUNTED`].
        receipts: u32,
        zreports: u32,
    },
}

fn read_database() -> Db {
    let sets = match database::select(
        DATABASE,
        SETS,
        &["name".to_owned(), "value".to_owned()],
        None,
        MAX_COUNTED,
    ) {
        Err(e) if e.kind == ErrorKind::Denied => return Db::NotGranted,
        Err(e) => return Db::Unreadable(e.message),
        Ok(rows) => rows
            .into_iter()
            .filter_map(|row| match row.as_slice() {
                [Some(name), value] => Some((name.clone(), value.clone().unwrap_or_default())),
                _ => None,
            })
            .collect(),
    };
    let not_uploaded = |table: &str| {
        database::select(
            DATABASE,
            table,
            &["id".to_owned()],
            Some(("up", "0")),
            MAX_COUNTED,
        )
        .map(|rows| rows.len() as u32)
    };
    match (not_uploaded(RECEIPTS), not_uploaded(ZREPORTS)) {
        (Ok(receipts), Ok(zreports)) => Db::Read {
            sets,
            receipts,
            zreports,
        },
        (Err(e), _) | (_, Err(e)) => Db::Unreadable(e.message),
    }
}

/// `n` things in words: `1 receipt`, `3 receipts`, `1000+ receipts`.
fn counted(n: u32, thing: &str) -> String {
    match n {
        1 => format!("1 {thing}"),
        MAX_COUNTED.. => format!("{MAX_COUNTED}+ {thing}s"),
        _ => format!("{n} {thing}s"),
    }
}

/// An environment update alters tables (the document: "installs packages,
/// alters tables"), so it waits until IceCash has uploaded every receipt and
/// Z-report: what IceServ has not received must not meet a changing schema.
/// Without a database in the device configuration this is not known and the
/// update goes ahead, as IceCash's own upgrade does; with one that cannot be
/// read, it waits.
fn uploads_done() -> Result<(), Stop> {
    match read_database() {
        Db::NotGranted => Ok(()),
        Db::Unreadable(why) => Err(Stop::not_now(
            format!(
                "cannot tell whether every receipt is uploaded to IceServ, so the environment update waits: {why}"
            ),
            UPLOAD_RETRY_SECS,
        )),
        Db::Read {
            receipts: 0,
            zreports: 0,
            ..
        } => Ok(()),
        Db::Read {
            receipts, zreports, ..
        } => Err(Stop::not_now(
            format!(
                "{} and {} are not uploaded to IceServ yet (up = 0 in {RECEIPTS} and {ZREPORTS}); an environment \
                 update alters tables, so it waits until IceCash has uploaded them",
                counted(receipts, "receipt"),
                counted(zreports, "Z-report")
            ),
            UPLOAD_RETRY_SECS,
        )),
    }
}

/// IceCash uploads receipts every minute, 100 at a time.
const UPLOAD_RETRY_SECS: u32 = 120;

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
    // Refused here, before anything changes, rather than at verify.
    named_log(DICECASH_LOG_VAR)?;
    named_log(DTPRINT_LOG_VAR)?;
    start_template()?;
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
    let done = kv::get(LEVEL_KEY)?.unwrap_or_default();
    if !done.is_empty() && posup_plugin_sdk::version::compare(&done, level).is_ge() {
        return Err(Stop::failed(format!(
            "posup already ran environment update {done} on this register; nothing to run"
        )));
    }
    uploads_done()
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
    if let Some(log) = named_log(DICECASH_LOG_VAR)? {
        remember_log_end("dicecash-mark", &log)?;
    }
    if let Some(log) = named_log(DTPRINT_LOG_VAR)? {
        remember_log_end("dtprint-mark", &log)?;
    }
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
    let dicecash_log = named_log(DICECASH_LOG_VAR)?;
    if let Some(log) = &dicecash_log {
        let (template, prefix) = start_template()?;
        let mut patterns = ERROR_PATTERNS.to_vec();
        patterns.push(&prefix);
        watch_log(
            log,
            remembered_mark("dicecash-mark")?,
            &patterns,
            DICECASH,
            wait_limit("icecash-verify-timeout", VERIFY_TIMEOUT),
            &format!(
                "the start line `{}`",
                template.replace("{version}", &version)
            ),
            |_, line| match start_line(line, &template, &version) {
                Some(true) => Watch::Done,
                Some(false) => Watch::Fail(format!("dIceCash started another version: {line}")),
                None => Watch::Fail(format!("dIceCash failed after the upgrade: {line}")),
            },
        )?;
    }
    settle(&[DICECASH, DTPRINT], "icecash-settle-secs", SETTLE)?;
    if let Some(log) = named_log(DTPRINT_LOG_VAR)? {
        let scan = logs::scan(
            &log,
            remembered_mark("dtprint-mark")?,
            &ERROR_PATTERNS.map(str::to_owned),
        )?;
        if let Some(found) = scan.found.first() {
            return Err(Stop::failed(format!(
                "DTPrint failed after the upgrade: {}",
                found.line.trim()
            )));
        }
    }
    // IceCash tells the person at the register that the program changed under them.
    prompt::notify(&upgraded_message(
        &version,
        vars::get("posup-language").as_deref(),
    ));
    log::info(&format!("dIceCash {version} and DTPrint are up"));
    Ok(())
}

/// What the register shows after an upgrade: in Russian, IceCash's own
/// language, unless the store's language is English.
fn upgraded_message(version: &str, language: Option<&str>) -> String {
    match language {
        Some("en") => format!(
            "Attention! IceCash was updated to version {version}. The service was restarted; leave registration \
             mode and enter it again: the screens may have changed."
        ),
        _ => format!(
            "Внимание! Программа IceCash обновлена до версии {version}. Сервис перезапущен; выйдите из режима \
             регистрации и войдите снова: интерфейс мог измениться."
        ),
    }
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
    kv::set("applied", level)?;
    Ok(())
}

posup_plugin_sdk::export!(IceCash);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_programs_own_start_line_is_recognised() {
        let t = STARTED_DEFAULT;
        assert_eq!(
            start_line("Start dIceCash Server v 2.0.060 [10110]", t, "2.0.060"),
            Some(true)
        );
        assert_eq!(
            start_line(
                "2026-12-06 INFO Start dIceCash Server v 2.0.060",
                t,
                "2.0.060"
            ),
            Some(true)
        );
        // Another version, and a version that only begins like this one.
        assert_eq!(
            start_line("Start dIceCash Server v 2.0.059 [10110]", t, "2.0.060"),
            Some(false)
        );
        assert_eq!(
            start_line("Start dIceCash Server v 2.0.0601 [10110]", t, "2.0.060"),
            Some(false)
        );
        assert_eq!(start_line("ImportError: No module", t, "2.0.060"), None);
        // A configured line without the version.
        assert_eq!(
            start_line("INFO register ready", "register ready", "2"),
            Some(true)
        );
        // A configured line with text after the version.
        let custom = "IceCash {version} started";
        assert_eq!(
            start_line("INFO IceCash 2.0.060 started: place 12", custom, "2.0.060"),
            Some(true)
        );
        assert_eq!(
            start_line("INFO IceCash 2.0.060 stopped", custom, "2.0.060"),
            Some(false)
        );
    }
    #[test]
    fn the_upgrade_message_is_in_the_stores_language() {
        assert!(
            upgraded_message("2.0.060", None)
                .contains("Программа IceCash обновлена до версии 2.0.060")
        );
        assert!(upgraded_message("2.0.060", Some("ru")).starts_with("Внимание!"));
        assert!(
            upgraded_message("2.0.060", Some("en"))
                .contains("IceCash was updated to version 2.0.060")
        );
    }
}
