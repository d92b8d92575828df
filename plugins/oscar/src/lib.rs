//! The MICROS Retail OSCAR POS plugin (PRODUCTS.md §4).
//!
//! An update is an archive `oscupd<nnn>.tgz` (Linux) or `oscupd<nnn>.zip`
//! (Windows) whose `Rules` file says how it is applied:
//! - complete (`completeupdate = 1`): the archive holds the whole program. It is
//!   unpacked into a new directory, `work.srv`, `work/` and the configuration
//!   (`bin/oscar.ini`, `bin/oscar.def`, whichever exist) are copied into it from
//!   the installation, and the two directories are exchanged atomically, so the
//!   old installation sits under the new directory's name: the rollback copy;
//! - partial (`completeupdate = 0`): the installation is copied into the new
//!   directory, the archive unpacked over the copy, the configuration copied into
//!   its `bin`, and the directories exchanged the same way;
//! - small (`smallupdate = 1`): only uncritical files (`*.fgl`, `*.fsm`, `*.asc`,
//!   `*.bmp`), unpacked straight into the installation: no copy, no backup, and
//!   no rollback (`package-info.rollback` is false).
//!
//! `oscar.ini.chg` / `oscar.def.chg` in the archive change `bin/oscar.ini` /
//! `bin/oscar.def` of the new installation: `S:NAME=VALUE` sets a variable,
//! `R:NAME=...` removes it. Before anything is touched, and again right before
//! the server is stopped, there must be no open transaction, no operator signed
//! on at a terminal client, every system unit online, and enough disk space on
//! each of them. OSCAR keeps those facts in its own database, which a plugin
//! cannot read: they are taken from lists a site writes (`oscar-clients`,
//! `oscar-units`), and without them only a Forced update (the operator's word
//! that the store is closed) goes ahead. Every update gets the next number: its archive is stored as
//! `work/update/UPD<nnn>`, every step is written to `work/update/UpdateState.log`,
//! and after success the archive is kept as `Upd<nn>` in the installation root.
//!
//! The new directory is prepared completely in `stage`, while the server runs; the
//! downtime of `apply` is the shutdown, copying the server's data again, the
//! exchange and the restart.
//!
//! Layout and state files: `plugins/oscar/README.md`. Every step can be run again
//! after a crash: progress is read from the trees and from `kv`.

pub mod package;

use package::{Change, change_config, describe, parse_changes, parse_rules};
use std::io::Write;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use posup_plugin_sdk::config::{named_log, product_path};
use posup_plugin_sdk::files::{exists, file_name, package_text, tree_size};
use posup_plugin_sdk::watch::{remember_log_end, remembered_mark, state_name};
use posup_plugin_sdk::{
    Capabilities, Dir, DirRequest, Inventory, IoContext, PackageInfo, Plugin, PluginInfo,
    StepContext, Stop, TaskKind, archive, fs, kv, log, logs, progress, services, vars,
};

const SERVICE: &str = "oscar";
const PRODUCT: &str = "/product";
/// The release an installation runs, where it says so; the OSCAR document names
/// no such file, so it is read only when present.
const VERSION_FILE: &str = "/product/VERSION";
/// Where the client and system-unit lists are read from unless the server
/// variables `oscar-clients` and `oscar-units` name other files.
const CLIENTS: &str = "work.srv/clients.lst";
const UNITS: &str = "work.srv/sysunits.lst";
/// The last update posup installed here, when the installation names no release.
const INSTALLED_KEY: &str = "installed";
/// How long the server must keep running after the update before it is taken
/// as good, unless the server variable `oscar-settle-secs` says otherwise.
const SETTLE: Duration = Duration::from_secs(10);
const UPDATE_DIR: &str = "work/update";
const STATE_LOG: &str = "work/update/UpdateState.log";
/// The configuration carried into every new installation.
const CONFIG: [&str; 2] = ["bin/oscar.ini", "bin/oscar.def"];
/// The change files and the configuration each one changes.
const CHANGES: [(&str, &str); 2] = [
    ("oscar.ini.chg", "bin/oscar.ini"),
    ("oscar.def.chg", "bin/oscar.def"),
];
/// The only files a small update may hold (besides `Rules`).
const UNCRITICAL: [&str; 4] = ["fgl", "fsm", "asc", "bmp"];
/// How long to wait before asking again while clients are busy.
const RETRY_SECS: u32 = 300;
/// How long verify waits for the server, unless the server variable
/// `oscar-verify-timeout` (seconds) says otherwise.
const VERIFY_TIMEOUT: Duration = Duration::from_secs(120);
const KV_KEYS: [&str; 8] = [
    "package",
    "seq",
    "kind",
    "staged",
    "exchanged",
    "small-started",
    "made-update-dir",
    "start-mark",
];

struct Oscar;

/// The three ways an OSCAR update is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Complete,
    Partial,
    Small,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Complete => "complete",
            Kind::Partial => "partial",
            Kind::Small => "small",
        }
    }

    fn parse(s: &str) -> Option<Kind> {
        [Kind::Complete, Kind::Partial, Kind::Small]
            .into_iter()
            .find(|k| k.as_str() == s)
    }

    fn rules(self) -> &'static str {
        match self {
            Kind::Complete => "completeupdate = 1",
            Kind::Partial => "completeupdate = 0",
            Kind::Small => "smallupdate = 1",
        }
    }
}

impl Plugin for Oscar {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "oscar".into(),
            vendor: "posup".into(),
            version: "0.1.0".into(),
            description: "MICROS Retail OSCAR POS: complete, partial and small updates driven by Rules, with the installation exchanged atomically".into(),
            device_types: vec!["oscar".into()],
            capabilities: Capabilities {
                dirs: vec![
                    DirRequest { dir: Dir::Product, write: true },
                    DirRequest { dir: Dir::Staging, write: true },
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
        require_installation()?;
        let version = installed_version()?;
        let state = services::status(SERVICE).map_or("unknown", state_name);
        let mut details = Vec::new();
        if let Ok(Some(clients)) = read_clients() {
            let pos = clients.iter().filter(|c| c.role != "admin");
            let open = pos.clone().filter(|c| c.transaction.is_some()).count();
            let signed = pos.filter(|c| c.operator.is_some()).count();
            details.push(("open-transactions".to_owned(), open.to_string()));
            details.push(("operators-signed-on".to_owned(), signed.to_string()));
        }
        if let Ok(Some(units)) = read_units() {
            let offline: Vec<&str> = units
                .iter()
                .filter(|u| !u.online)
                .map(|u| u.name.as_str())
                .collect();
            details.push(("offline-units".to_owned(), offline.join(" ")));
        }
        let kept = kept_archives();
        if !kept.is_empty() {
            details.push(("kept-archives".to_owned(), kept.join(" ")));
        }
        if let Ok(text) = std::fs::read_to_string(format!("{PRODUCT}/{STATE_LOG}"))
            && let Some(last) = text.lines().last()
        {
            details.push(("update-state".to_owned(), last.to_owned()));
        }
        let staged = kv::get("staged").ok().flatten().is_some();
        Ok(Inventory {
            product: "MICROS Retail OSCAR POS".into(),
            version,
            modules: vec![],
            loaded_package: if staged {
                kv::get("package").ok().flatten()
            } else {
                None
            },
            ready: state == "running",
            state: state.into(),
            pending_sync: 0,
            reboot_required: false,
            details,
        })
    }

    fn inspect(package: &str) -> Result<PackageInfo, Stop> {
        let a = analyse(package)?;
        let notes = match a.kind {
            Kind::Complete => format!("complete update to {} ({})", a.version, a.name),
            Kind::Partial => format!("partial update to {} ({})", a.version, a.name),
            Kind::Small => format!(
                "small update ({}): {} uncritical files, unpacked in place without a backup",
                a.name,
                a.files.len()
            ),
        };
        let changelog = a
            .changes
            .iter()
            .map(|(file, target, changes)| {
                format!("{file} changes {target}: {}", describe(changes))
            })
            .collect::<Vec<_>>()
            .join("\n");
        Ok(PackageInfo {
            version: a.version,
            kind: a.kind.as_str().into(),
            notes,
            changelog,
            rollback: a.kind != Kind::Small,
        })
    }

    fn precheck(ctx: &StepContext) -> Result<(), Stop> {
        require_installation()?;
        let a = analyse(&ctx.package)?;
        same_rules_as_counterpart(&a)?;
        named_log("oscar-log")?;
        check_clients(ctx.task)?;
        let archive_size = std::fs::metadata(&ctx.package).at(&ctx.package)?.len();
        let (needed, place) = match a.kind {
            Kind::Complete => (
                a.unpacked
                    + tree_size(&format!("{PRODUCT}/work.srv"))?
                    + tree_size(&format!("{PRODUCT}/work"))?
                    + archive_size,
                "/staging",
            ),
            Kind::Partial => (tree_size(PRODUCT)? + a.unpacked + archive_size, "/staging"),
            Kind::Small => (a.unpacked + archive_size, PRODUCT),
        };
        let free = fs::free_space(place)?;
        if free < needed {
            return Err(Stop::failed(format!(
                "not enough disk space on the server for the {} update: {free} bytes free for {place}, {needed} needed",
                a.kind.as_str()
            )));
        }
        // Every system unit receives the archive and unpacks it.
        let per_unit = archive_size + a.unpacked;
        for unit in read_units()?.unwrap_or_default() {
            if unit.free < per_unit {
                return Err(Stop::failed(format!(
                    "not enough disk space on system unit {}: {} bytes free, {per_unit} needed for {}",
                    unit.name, unit.free, a.name
                )));
            }
        }
        log::info(&format!("{}: {} update possible", a.name, a.kind.as_str()));
        Ok(())
    }

    fn stage(ctx: &StepContext) -> Result<(), Stop> {
        let a = analyse(&ctx.package)?;
        let seq = match current(ctx)? {
            Some(seq) => seq,
            None => {
                for key in KV_KEYS {
                    kv::delete(key)?;
                }
                next_seq()?
            }
        };
        kv::set("package", &a.name)?;
        kv::set("seq", &seq.to_string())?;
        kv::set("kind", a.kind.as_str())?;
        if a.kind == Kind::Small {
            log::info(&format!(
                "{}: small update (Rules: {}): nothing to prepare, it is unpacked straight into the installation during apply, without a backup",
                a.name,
                a.kind.rules()
            ));
            kv::set("staged", "1")?;
            return Ok(());
        }
        let staged = staged_dir(seq);
        if kv::get("staged")?.is_some() && exists(&staged) {
            log::info(&format!("{staged} is already prepared"));
            return Ok(());
        }
        fs::remove_tree(&staged)?;
        let tag = Tag {
            seq,
            package: &a.name,
        };
        match a.kind {
            Kind::Complete => {
                std::fs::create_dir(&staged).at(&staged)?;
                progress::report(10, "unpacking the complete program");
                archive::extract(&ctx.package, &staged)?;
                // The new program keeps the site's update history: the work
                // folder with the Update State log, and the kept archives.
                progress::report(
                    50,
                    "copying work and the kept archives into the new directory",
                );
                fs::remove_tree(&format!("{staged}/work"))?;
                if exists(&format!("{PRODUCT}/work")) {
                    fs::copy_tree(&format!("{PRODUCT}/work"), &format!("{staged}/work"))?;
                }
                for kept in kept_archives() {
                    fs::remove_tree(&format!("{staged}/{kept}"))?;
                    fs::copy_tree(&format!("{PRODUCT}/{kept}"), &format!("{staged}/{kept}"))?;
                }
                tag.log(&staged, &format!(
                    "update started: complete update to {} (Rules: {}); archive unpacked into the new directory {staged}",
                    a.version,
                    a.kind.rules()
                ))?;
            }
            Kind::Partial => {
                progress::report(10, "copying the installation into the new directory");
                fs::copy_tree(PRODUCT, &staged)?;
                progress::report(50, "unpacking the archive over the copy");
                archive::extract(&ctx.package, &staged)?;
                tag.log(&staged, &format!(
                    "update started: partial update to {} (Rules: {}); installation copied to the new directory {staged} and the archive unpacked over it",
                    a.version,
                    a.kind.rules()
                ))?;
            }
            Kind::Small => unreachable!("small updates returned above"),
        }
        // The update's instructions are not part of the program.
        for file in ["Rules", "oscar.ini.chg", "oscar.def.chg"] {
            fs::remove_tree(&format!("{staged}/{file}"))?;
        }
        progress::report(70, "copying work.srv and the configuration");
        let carried = carry_over(&staged)?;
        tag.log(
            &staged,
            &format!("copied from the installation: {}", carried.join(", ")),
        )?;
        let upd = upd_name(seq, &a.ext);
        let dir = format!("{staged}/{UPDATE_DIR}");
        std::fs::create_dir_all(&dir).at(&dir)?;
        let stored = format!("{dir}/{upd}");
        fs::remove_tree(&stored)?;
        fs::copy_tree(&ctx.package, &stored)?;
        tag.log(&staged, &format!("archive stored as {UPDATE_DIR}/{upd}"))?;
        tag.log(
            &staged,
            "new directory prepared; the update continues in the agreed window",
        )?;
        kv::set("staged", "1")?;
        progress::report(100, "prepared");
        Ok(())
    }

    fn apply(ctx: &StepContext) -> Result<(), Stop> {
        let a = analyse(&ctx.package)?;
        let seq = current(ctx)?
            .filter(|_| kv::get("staged").ok().flatten().is_some())
            .ok_or_else(|| {
                Stop::failed(format!(
                    "{} is not prepared: run the stage step (a Download task) first",
                    a.name
                ))
            })?;
        let tag = Tag {
            seq,
            package: &a.name,
        };
        if a.kind == Kind::Small {
            return apply_small(ctx, &a, &tag);
        }
        let staged = staged_dir(seq);
        let upd = upd_name(seq, &a.ext);
        let exchanged =
            kv::get("exchanged")?.is_some() || exists(&format!("{PRODUCT}/{UPDATE_DIR}/{upd}"));
        if !exchanged {
            if !exists(&staged) {
                return Err(Stop::failed(format!(
                    "{staged} is missing: run the stage step (a Download task) again"
                )));
            }
            shut_down(ctx.task, &tag, &staged)?;
            progress::report(30, "copying work.srv and the configuration again");
            let carried = carry_over(&staged)?;
            tag.log(
                &staged,
                &format!("copied again after the shutdown: {}", carried.join(", ")),
            )?;
            apply_changes(&a, &staged, &tag)?;
            // Written before the exchange, into the tree that becomes the
            // installation: after it, this step's `/product` still names the
            // directory it opened at its start, which is then the old one.
            tag.log(&staged, &format!(
                "exchanging the directories: the installation then holds {}, the previous installation stays in {staged} for a rollback",
                a.version
            ))?;
            progress::report(70, "exchanging the installation");
            fs::exchange(PRODUCT, &staged)?;
            kv::set("exchanged", "1")?;
            log::info(&format!(
                "directories exchanged: {PRODUCT} holds {}",
                a.version
            ));
        }
        start_server()
    }

    fn verify(ctx: &StepContext) -> Result<(), Stop> {
        let a = analyse(&ctx.package)?;
        // Every file the archive brings is installed as it is, except what
        // the update carries over from the installation (the server's data
        // and the configuration, which the `.chg` files then change).
        for (path, size) in &a.files {
            let rel = path.trim_start_matches("./");
            if a.kind != Kind::Small && (rel.starts_with("work.srv/") || CONFIG.contains(&rel)) {
                continue;
            }
            let want = archive::read_entry(&ctx.package, path, size + 1)?;
            let file = format!("{PRODUCT}/{rel}");
            let have = std::fs::read(&file).at(&file)?;
            if have != want {
                return Err(Stop::failed(format!(
                    "{file} differs from {path} in {} after the {} update",
                    a.name,
                    a.kind.as_str()
                )));
            }
        }
        // The release the server now runs, for a configured ready line.
        let installed = if exists(VERSION_FILE) {
            installed_version()?
        } else {
            a.version.clone()
        };
        wait_ready(&installed)?;
        if let Some(seq) = current(ctx)? {
            Tag {
                seq,
                package: &a.name,
            }
            .log(
                PRODUCT,
                &format!(
                    "server started; verified: {} installed and the server runs",
                    a.version
                ),
            )?;
        }
        Ok(())
    }

    fn commit(ctx: &StepContext) -> Result<(), Stop> {
        let name = file_name(&ctx.package).to_owned();
        let Some(seq) = current(ctx)? else {
            return Ok(());
        };
        let ext = extension_of(&name);
        let tag = Tag {
            seq,
            package: &name,
        };
        let stored = format!("{PRODUCT}/{UPDATE_DIR}/{}", upd_name(seq, &ext));
        let kept = kept_name(seq, &ext);
        if exists(&stored) && !exists(&format!("{PRODUCT}/{kept}")) {
            fs::copy_tree(&stored, &format!("{PRODUCT}/{kept}"))?;
        }
        tag.log(PRODUCT, &format!(
            "the original archive is kept as {kept} in the installation root; to repeat the update, rename it to {name} and copy it to work"
        ))?;
        tag.log(PRODUCT, "update finished")?;
        if ctx.info.kind != Kind::Small.as_str() {
            kv::set(INSTALLED_KEY, &ctx.info.version)?;
        }
        // After the exchange the new directory's name holds the old installation.
        fs::remove_tree(&staged_dir(seq))?;
        for key in KV_KEYS {
            kv::delete(key)?;
        }
        Ok(())
    }

    fn rollback(ctx: &StepContext) -> Result<(), Stop> {
        services::stop(SERVICE)?;
        let name = file_name(&ctx.package).to_owned();
        let Some(seq) = current(ctx)? else {
            services::start(SERVICE)?;
            return Ok(());
        };
        let ext = extension_of(&name);
        let upd = upd_name(seq, &ext);
        let stored = format!("{PRODUCT}/{UPDATE_DIR}/{upd}");
        let kind = kv::get("kind")?.as_deref().and_then(Kind::parse);
        if kind == Some(Kind::Small) {
            let started = kv::get("small-started")?.is_some();
            if !started {
                // Nothing was unpacked: only the stored archive goes again.
                fs::remove_tree(&stored)?;
                if kv::get("made-update-dir")?.is_some() {
                    fs::remove_tree(&format!("{PRODUCT}/{UPDATE_DIR}"))?;
                }
            }
            for key in KV_KEYS {
                kv::delete(key)?;
            }
            services::start(SERVICE)?;
            if started {
                return Err(Stop::failed(format!(
                    "{name} is a small update (Rules: smallupdate = 1): it was unpacked straight into the installation without a backup, so it cannot be rolled back; install a corrected small update or a complete update"
                )));
            }
            return Ok(());
        }
        let staged = staged_dir(seq);
        if exists(&stored) {
            if !exists(&staged) {
                return Err(Stop::failed(format!(
                    "the previous installation {staged} is gone, so the installation cannot be restored"
                )));
            }
            // The failed attempt's Update State goes where the restored tree
            // does not overwrite it.
            let record = format!(
                "/staging/UpdateState-{}.log",
                upd.trim_end_matches(&format!(".{ext}"))
            );
            let state = format!("{PRODUCT}/{STATE_LOG}");
            fs::remove_tree(&record)?;
            if exists(&state) {
                fs::copy_tree(&state, &record)?;
            }
            append_line(
                &record,
                &format!(
                    "{} {} {name}: rolled back to the previous installation",
                    timestamp(),
                    upd
                ),
            )?;
            fs::exchange(PRODUCT, &staged)?;
            log::warn(&format!(
                "{name}: rolled back; the failed update's Update State is kept in {record}"
            ));
        }
        fs::remove_tree(&staged)?;
        for key in KV_KEYS {
            kv::delete(key)?;
        }
        services::start(SERVICE)?;
        Ok(())
    }
}

/// Stops the clients and the server after checking once more that nobody works.
fn shut_down(task: TaskKind, tag: &Tag<'_>, state_root: &str) -> Result<(), Stop> {
    if let Err(stop) = check_clients(task) {
        let reason = stop.to_string();
        tag.log(state_root, &format!("cancelled: {reason}"))?;
        return Err(Stop::failed(format!(
            "{reason} (since the precheck); the update was cancelled"
        )));
    }
    tag.log(state_root, "preconditions hold")?;
    progress::report(10, "shutting down the terminal clients and the server");
    services::stop(SERVICE)?;
    tag.log(state_root, "terminal clients and server shut down")
}

fn apply_small(ctx: &StepContext, a: &Analysis, tag: &Tag<'_>) -> Result<(), Stop> {
    if kv::get("small-started")?.is_none() {
        shut_down(ctx.task, tag, PRODUCT)?;
        let dir = format!("{PRODUCT}/{UPDATE_DIR}");
        if !exists(&dir) {
            std::fs::create_dir_all(&dir).at(&dir)?;
            kv::set("made-update-dir", "1")?;
        }
        let stored = format!("{dir}/{}", upd_name(tag.seq, &a.ext));
        if !exists(&stored) {
            fs::copy_tree(&ctx.package, &stored)?;
        }
        tag.log(PRODUCT, &format!(
            "update started: small update (Rules: {}); archive stored as {UPDATE_DIR}/{}; unpacking into the installation without a backup, no rollback is possible",
            a.kind.rules(),
            upd_name(tag.seq, &a.ext)
        ))?;
        // From here on the installation changes in place.
        kv::set("small-started", "1")?;
        progress::report(50, "unpacking the uncritical files into the installation");
        archive::extract(&ctx.package, PRODUCT)?;
        fs::remove_tree(&format!("{PRODUCT}/Rules"))?;
        let list: Vec<&str> = a
            .files
            .iter()
            .map(|(p, _)| p.trim_start_matches("./"))
            .collect();
        tag.log(
            PRODUCT,
            &format!("{} files unpacked: {}", list.len(), list.join(", ")),
        )?;
    }
    start_server()
}

/// Starts the server and the clients. The Update State records the start in
/// `verify`, which sees the installation as it is now.
fn start_server() -> Result<(), Stop> {
    if let Some(log) = named_log("oscar-log")? {
        remember_log_end("start-mark", &log)?;
    }
    progress::report(90, "starting the server");
    services::start(SERVICE)?;
    Ok(())
}

/// Copies `work.srv` and the configuration of the installation into `staged`,
/// replacing what is there; returns what was copied.
fn carry_over(staged: &str) -> Result<Vec<String>, Stop> {
    let mut carried = Vec::new();
    let data = format!("{PRODUCT}/work.srv");
    if exists(&data) {
        fs::remove_tree(&format!("{staged}/work.srv"))?;
        fs::copy_tree(&data, &format!("{staged}/work.srv"))?;
        carried.push("work.srv".to_owned());
    }
    for config in CONFIG {
        let live = format!("{PRODUCT}/{config}");
        if exists(&live) {
            let bin = format!("{staged}/bin");
            std::fs::create_dir_all(&bin).at(&bin)?;
            fs::remove_tree(&format!("{staged}/{config}"))?;
            fs::copy_tree(&live, &format!("{staged}/{config}"))?;
            carried.push(config.to_owned());
        }
    }
    Ok(carried)
}

/// Applies the archive's `.chg` files to the configuration in `root`.
fn apply_changes(a: &Analysis, root: &str, tag: &Tag<'_>) -> Result<(), Stop> {
    for (file, target, changes) in &a.changes {
        let path = format!("{root}/{target}");
        if !exists(&path) {
            return Err(Stop::failed(format!(
                "{} holds {file}, but the installation has no {target} for it to change",
                a.name
            )));
        }
        let text = std::fs::read_to_string(&path).at(&path)?;
        // Windows variables are case-insensitive; Linux ones are not.
        let changed = change_config(&text, changes, target.ends_with(".ini"));
        std::fs::write(&path, changed).at(&path)?;
        tag.log(
            root,
            &format!("{file} applied to {target}: {}", describe(changes)),
        )?;
    }
    Ok(())
}

/// Where the update is written down and which update it is.
struct Tag<'a> {
    seq: u32,
    package: &'a str,
}

impl Tag<'_> {
    /// Appends one step to the Update State log of the installation at `root` and
    /// to the plugin's log.
    fn log(&self, root: &str, message: &str) -> Result<(), Stop> {
        log::info(message);
        let dir = format!("{root}/{UPDATE_DIR}");
        std::fs::create_dir_all(&dir).at(&dir)?;
        append_line(
            &format!("{root}/{STATE_LOG}"),
            &format!(
                "{} UPD{:03} {}: {message}",
                timestamp(),
                self.seq,
                self.package
            ),
        )
    }
}

fn append_line(path: &str, line: &str) -> Result<(), Stop> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .at(path)?;
    f.write_all(format!("{line}\n").as_bytes()).at(path)
}

/// What a package is, read from the archive alone.
struct Analysis {
    /// The archive's file name.
    name: String,
    /// `tgz` or `zip`, as the name ends.
    ext: String,
    kind: Kind,
    /// The release a complete or partial update installs; `oscupd<nnn>` for a
    /// small one, which leaves the release as it is.
    version: String,
    /// Files besides `Rules` and the change files: archive path and size.
    files: Vec<(String, u64)>,
    /// Bytes of all files unpacked.
    unpacked: u64,
    /// Change file, the configuration it changes, its changes.
    changes: Vec<(String, String, Vec<Change>)>,
}

fn analyse(package: &str) -> Result<Analysis, Stop> {
    let name = file_name(package).to_owned();
    let (stem, ext) = archive_name(&name)?;
    let entries = archive::entries(package)?;
    let rules = package_text(package, "Rules", 1024 * 1024)?.ok_or_else(|| {
        format!("{name}: the archive has no Rules file; every OSCAR update holds one that says how it is applied")
    })?;
    let kind = kind_of(&rules).map_err(|e| format!("{name}: {e}"))?;
    let mut files = Vec::new();
    let mut unpacked = 0;
    let mut changes = Vec::new();
    for entry in &entries {
        let path = entry.path.trim_start_matches("./");
        if entry.kind != archive::EntryKind::File {
            if kind == Kind::Small && entry.kind != archive::EntryKind::Directory {
                return Err(format!(
                    "{name}: a small update holds only plain uncritical files, and {} is a link or special file",
                    entry.path
                ).into());
            }
            continue;
        }
        unpacked += entry.size;
        if path == "Rules" {
            continue;
        }
        if let Some((file, target)) = CHANGES.iter().find(|(f, _)| *f == path) {
            if kind == Kind::Small {
                return Err(format!(
                    "{name}: a small update changes no configuration, and it holds {file}; make it a partial update (smallupdate = 0)"
                ).into());
            }
            let text = package_text(package, &entry.path, 1024 * 1024)?.unwrap_or_default();
            let parsed = parse_changes(file, &text).map_err(|e| format!("{name}: {e}"))?;
            changes.push((file.to_string(), target.to_string(), parsed));
            continue;
        }
        if kind == Kind::Small {
            let ext = path
                .rsplit_once('.')
                .map(|(_, e)| e.to_ascii_lowercase())
                .unwrap_or_default();
            if !UNCRITICAL.contains(&ext.as_str()) {
                return Err(format!(
                    "{name}: a small update holds only uncritical files (*.fgl, *.fsm, *.asc, *.bmp), and {path} is not one; make it a partial update (smallupdate = 0)"
                ).into());
            }
        }
        files.push((entry.path.clone(), entry.size));
    }
    // The document names no release file: an archive's `VERSION` is read when
    // it has one, and otherwise the update is known by its archive's name.
    let version = match package_text(package, "VERSION", 1024 * 1024)? {
        Some(text) if kind != Kind::Small => {
            let v = text.trim().to_owned();
            if v.is_empty()
                || !v
                    .split('.')
                    .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            {
                return Err(format!(
                    "{name}: VERSION says {v:?}, which is no release such as 22.0.0"
                )
                .into());
            }
            v
        }
        _ => stem,
    };
    if kind == Kind::Complete
        && !files
            .iter()
            .any(|(p, _)| p.trim_start_matches("./") == "bin/oscar")
    {
        return Err(format!(
            "{name}: a complete update (completeupdate = 1) holds the whole program, and bin/oscar is not in it"
        ).into());
    }
    Ok(Analysis {
        name,
        ext,
        kind,
        version,
        files,
        unpacked,
        changes,
    })
}

/// The kind of update a `Rules` text describes. `Rules` allows no other
/// combination, so two archives have identical `Rules` exactly when their
/// kinds agree.
fn kind_of(rules: &str) -> Result<Kind, String> {
    let rules = parse_rules(rules)?;
    Ok(if rules.complete {
        Kind::Complete
    } else if rules.small {
        Kind::Small
    } else {
        Kind::Partial
    })
}

/// A mixed Windows/Linux system receives one update twice: `oscupd<nnn>.tgz`
/// for its Linux units and `oscupd<nnn>.zip` for its Windows units, both
/// copied to the server's `work` folder, and the document requires identical
/// `Rules` in both. Where the other archive lies in `work/`, its `Rules` must
/// say what this package's do, or the units would apply different updates.
fn same_rules_as_counterpart(a: &Analysis) -> Result<(), Stop> {
    let (stem, _) = archive_name(&a.name)?;
    let other_name = format!("{stem}.{}", if a.ext == "zip" { "tgz" } else { "zip" });
    let other = format!("{PRODUCT}/work/{other_name}");
    if !exists(&other) {
        return Ok(());
    }
    let mixed = "a mixed Windows/Linux system needs identical Rules in both archives of an update";
    let text = package_text(&other, "Rules", 1024 * 1024)?.ok_or_else(|| {
        format!("work/{other_name}, this update for the system's other units, has no Rules file; {mixed}")
    })?;
    let theirs = kind_of(&text).map_err(|e| format!("work/{other_name}: {e}; {mixed}"))?;
    if theirs != a.kind {
        return Err(Stop::failed(format!(
            "{}: its Rules ({}) differ from those of work/{other_name} ({}), this update for the system's other units; {mixed}",
            a.name,
            a.kind.rules(),
            theirs.rules()
        )));
    }
    Ok(())
}

/// `oscupd10.tgz` → (`oscupd10`, `tgz`). The name ends in `.tgz` (Linux) or
/// `.zip` (Windows); `nnn` is a free description.
fn archive_name(name: &str) -> Result<(String, String), String> {
    let lower = name.to_ascii_lowercase();
    let parsed = lower.strip_prefix("oscupd").and_then(|rest| {
        let (desc, ext) = rest.rsplit_once('.')?;
        let ok = !desc.is_empty()
            && desc
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        (ok && (ext == "tgz" || ext == "zip")).then(|| (format!("oscupd{desc}"), ext.to_owned()))
    });
    parsed.ok_or_else(|| {
        format!("{name}: OSCAR update archives are named oscupd<nnn>.tgz (Linux) or oscupd<nnn>.zip (Windows), e.g. oscupd10.tgz")
    })
}

fn extension_of(name: &str) -> String {
    archive_name(name)
        .map(|(_, e)| e)
        .unwrap_or_else(|_| "tgz".into())
}

/// One terminal client from `work.srv/clients.lst`.
struct Client {
    name: String,
    role: String,
    operator: Option<String>,
    transaction: Option<String>,
}

/// One system unit from `work.srv/sysunits.lst`.
struct Unit {
    name: String,
    online: bool,
    free: u64,
}

fn state_lines(path: &str) -> Result<Vec<(usize, Vec<String>)>, Stop> {
    let text = std::fs::read_to_string(path).at(path)?;
    Ok(text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map(|(n, l)| (n + 1, l.split_whitespace().map(str::to_owned).collect()))
        .collect())
}

fn dash(s: &str) -> Option<String> {
    (s != "-").then(|| s.to_owned())
}

/// The terminal clients, when the site keeps their list; `None` when it does not.
fn read_clients() -> Result<Option<Vec<Client>>, Stop> {
    let path = product_path("oscar-clients", CLIENTS)?;
    if !exists(&path) {
        return Ok(None);
    }
    state_lines(&path)?
        .into_iter()
        .map(|(n, cols)| match cols.as_slice() {
            [name, _unit, role, operator, transaction] => Ok(Client {
                name: name.clone(),
                role: role.clone(),
                operator: dash(operator),
                transaction: dash(transaction),
            }),
            _ => Err(Stop::failed(format!(
                "{path} line {n}: expected `client unit role operator transaction`; the server's client list cannot be read"
            ))),
        })
        .collect::<Result<_, _>>()
        .map(Some)
}

/// The system units, when the site keeps their list; `None` when it does not.
fn read_units() -> Result<Option<Vec<Unit>>, Stop> {
    let path = product_path("oscar-units", UNITS)?;
    if !exists(&path) {
        return Ok(None);
    }
    state_lines(&path)?
        .into_iter()
        .map(|(n, cols)| match cols.as_slice() {
            [name, _role, state, free] if state == "online" || state == "offline" => Ok(Unit {
                name: name.clone(),
                online: state == "online",
                free: free.parse().map_err(|_| {
                    Stop::failed(format!(
                        "{path} line {n}: free space {free:?} is not a number of bytes"
                    ))
                })?,
            }),
            _ => Err(Stop::failed(format!(
                "{path} line {n}: expected `unit role online|offline free-bytes`"
            ))),
        })
        .collect::<Result<_, _>>()
        .map(Some)
}

/// Nobody may be working at a terminal client, and every system unit must be
/// online. The admin client, which runs the update, may be signed on. Where the
/// site keeps no list to tell, only a Forced update goes ahead: the operator
/// ordered it for a closed store, as the document's forced updates are meant.
fn check_clients(task: TaskKind) -> Result<(), Stop> {
    let (clients, units) = (read_clients()?, read_units()?);
    let forced = task == TaskKind::ForcedUpdate;
    if (clients.is_none() || units.is_none()) && !forced {
        let missing: Vec<String> = [
            clients
                .is_none()
                .then(|| product_path("oscar-clients", CLIENTS)),
            units.is_none().then(|| product_path("oscar-units", UNITS)),
        ]
        .into_iter()
        .flatten()
        .collect::<Result<_, _>>()?;
        return Err(Stop::failed(format!(
            "posup cannot tell whether a transaction is open, an operator is signed on or a system unit is offline: \
             there is no {}. Have the site write them (server variables `oscar-clients`, `oscar-units`; format in the \
             plugin's README), or run this update as a Forced update when the store is closed; nothing was changed",
            missing.join(" and ")
        )));
    }
    if forced && (clients.is_none() || units.is_none()) {
        log::warn(
            "no client or system-unit list to check: a Forced update goes ahead as ordered, without knowing whether anybody works at a client",
        );
    }
    for c in clients.iter().flatten().filter(|c| c.role != "admin") {
        if let Some(t) = &c.transaction {
            return Err(Stop::not_now(
                format!(
                    "transaction {t} is open at terminal client {}: the update waits until it is closed",
                    c.name
                ),
                RETRY_SECS,
            ));
        }
        if let Some(o) = &c.operator {
            return Err(Stop::not_now(
                format!(
                    "operator {o} is signed on at terminal client {}: the update waits until nobody is signed on",
                    c.name
                ),
                RETRY_SECS,
            ));
        }
    }
    if let Some(u) = units.iter().flatten().find(|u| !u.online) {
        return Err(Stop::not_now(
            format!(
                "system unit {} is offline: every terminal client must be online for the update",
                u.name
            ),
            RETRY_SECS,
        ));
    }
    Ok(())
}

/// The server must run and keep running for the settle time
/// (`oscar-settle-secs`). Where the server names its log (`oscar-log`), no line
/// may hold the error text (`oscar-error`, ` ERROR `), and where it names the
/// line that means ready (`oscar-ready`, `{version}` standing for the installed
/// release), that line must appear first, within `oscar-verify-timeout`.
fn wait_ready(version: &str) -> Result<(), Stop> {
    let log = named_log("oscar-log")?;
    let mut mark = remembered_mark("start-mark")?;
    let seconds = |var: &str, default: Duration| {
        vars::get(var)
            .and_then(|s| s.trim().parse().ok())
            .map(Duration::from_secs)
            .unwrap_or(default)
    };
    let timeout = seconds("oscar-verify-timeout", VERIFY_TIMEOUT);
    let settle = seconds("oscar-settle-secs", SETTLE);
    let error = vars::get("oscar-error")
        .filter(|e| !e.trim().is_empty())
        .unwrap_or_else(|| " ERROR ".to_owned());
    let ready = vars::get("oscar-ready")
        .filter(|r| !r.trim().is_empty())
        .map(|r| r.replace("{version}", version));
    let mut ready_at = if ready.is_some() && log.is_some() {
        None
    } else {
        Some(Instant::now())
    };
    let started = Instant::now();
    loop {
        if let Some(log) = &log {
            let mut patterns = vec![error.clone()];
            patterns.extend(ready.clone());
            let scan = logs::scan(log, mark, &patterns)?;
            mark = scan.next;
            if let Some(e) = scan.found.iter().find(|f| f.pattern == 0) {
                return Err(Stop::failed(format!(
                    "the server logged an error after the update: {}",
                    e.line.trim()
                )));
            }
            if ready_at.is_none() && !scan.found.is_empty() {
                ready_at = Some(Instant::now());
            }
        }
        let state = services::status(SERVICE)?;
        if state != services::State::Running {
            return Err(Stop::failed(format!(
                "the OSCAR server is not running after the update ({})",
                state_name(state)
            )));
        }
        match ready_at {
            Some(at) if at.elapsed() >= settle => return Ok(()),
            None if started.elapsed() > timeout => {
                return Err(Stop::failed(format!(
                    "the OSCAR server did not report `{}` within {} s",
                    ready.unwrap_or_default(),
                    timeout.as_secs()
                )));
            }
            _ => {}
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The sequence number of the update of this step's package, once staged.
fn current(ctx: &StepContext) -> Result<Option<u32>, Stop> {
    if kv::get("package")?.as_deref() != Some(file_name(&ctx.package)) {
        return Ok(None);
    }
    Ok(kv::get("seq")?.and_then(|s| s.parse().ok()))
}

/// One more than the highest `UPD<nnn>` in `work/update`.
fn next_seq() -> Result<u32, Stop> {
    let dir = format!("{PRODUCT}/{UPDATE_DIR}");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(1);
    };
    let mut max = 0;
    for entry in entries {
        let name = entry.at(&dir)?.file_name().to_string_lossy().into_owned();
        if let Some(n) = name
            .strip_prefix("UPD")
            .and_then(|r| r.split_once('.'))
            .and_then(|(n, _)| n.parse::<u32>().ok())
        {
            max = max.max(n);
        }
    }
    Ok(max + 1)
}

fn upd_name(seq: u32, ext: &str) -> String {
    format!("UPD{seq:03}.{ext}")
}

fn kept_name(seq: u32, ext: &str) -> String {
    format!("Upd{seq:02}.{ext}")
}

/// The new installation directory of update `seq`, beside the installation's
/// staging area: the name that holds the old installation after the exchange.
fn staged_dir(seq: u32) -> String {
    format!("/staging/OscUpd{seq:02}")
}

/// `Upd<nn>.*` archives kept in the installation root.
fn kept_archives() -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(PRODUCT) else {
        return Vec::new();
    };
    let mut kept: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| {
            n.strip_prefix("Upd")
                .and_then(|r| r.split_once('.'))
                .is_some_and(|(d, _)| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
        })
        .collect();
    kept.sort();
    kept
}

/// An OSCAR installation has the server's data (`work.srv`) and its programs
/// (`bin`), as the document describes it.
fn require_installation() -> Result<(), Stop> {
    for dir in ["work.srv", "bin"] {
        if !std::fs::metadata(format!("{PRODUCT}/{dir}")).is_ok_and(|m| m.is_dir()) {
            return Err(Stop::failed(format!(
                "no MICROS Retail OSCAR POS installation at {PRODUCT}: its {dir} folder is missing \
                 (the device configuration's `product` must be the installation folder, e.g. /opt/osc_usr/osc21)"
            )));
        }
    }
    Ok(())
}

/// The installation's `VERSION` where it has one; otherwise the last update
/// posup installed here; empty when neither tells.
fn installed_version() -> Result<String, Stop> {
    if exists(VERSION_FILE) {
        return Ok(std::fs::read_to_string(VERSION_FILE)
            .at(VERSION_FILE)?
            .trim()
            .to_owned());
    }
    Ok(kv::get(INSTALLED_KEY)?.unwrap_or_default())
}

/// Now, as the Update State log writes it (UTC: the sandbox has no time zone).
fn timestamp() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rest) = ((secs / 86_400) as i64, secs % 86_400);
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}Z",
        rest / 3_600,
        rest % 3_600 / 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::package::Rules;

    #[test]
    fn rules_are_read_strictly() {
        assert_eq!(
            parse_rules("completeupdate = 1\n"),
            Ok(Rules {
                complete: true,
                small: false
            })
        );
        assert_eq!(
            parse_rules("completeupdate = 0\r\nSmallupdate = 1\r\n"),
            Ok(Rules {
                complete: false,
                small: true
            })
        );
        assert_eq!(
            parse_rules("CompleteUpdate=0\n\nSmallUpdate=0\n"),
            Ok(Rules {
                complete: false,
                small: false
            })
        );
        assert_eq!(
            parse_rules(""),
            Ok(Rules {
                complete: false,
                small: false
            })
        );
        let err = parse_rules("completeupdate = 1\nfastupdate = 1\n").unwrap_err();
        assert!(
            err.contains("line 2") && err.contains("fastupdate"),
            "{err}"
        );
        let err = parse_rules("completeupdate = yes\n").unwrap_err();
        assert!(err.contains("line 1") && err.contains("0 or 1"), "{err}");
        let err = parse_rules("completeupdate\n").unwrap_err();
        assert!(err.contains("line 1"), "{err}");
        let err = parse_rules("smallupdate = 1\nSMALLUPDATE = 0\n").unwrap_err();
        assert!(err.contains("line 2") && err.contains("line 1"), "{err}");
        assert!(parse_rules("completeupdate = 1\nsmallupdate = 1\n").is_err());
        assert!(parse_rules("# comment\ncompleteupdate = 1\n").is_err());
    }

    #[test]
    fn change_files_set_and_remove_variables() {
        let changes = parse_changes(
            "oscar.ini.chg",
            "R:MICROS Retail OSCAR POS_OMLPATH=..\\logs,30\r\nS:MICROS Retail OSCAR POS_VERSION=\"Oscar3_ASU_Test_3\"\r\n",
        )
        .unwrap();
        assert_eq!(
            changes,
            vec![
                Change::Remove("MICROS Retail OSCAR POS_OMLPATH".into()),
                Change::Set(
                    "MICROS Retail OSCAR POS_VERSION".into(),
                    "\"Oscar3_ASU_Test_3\"".into()
                ),
            ]
        );
        let ini = "; clients\r\nMICROS Retail OSCAR POS_OMLPATH=..\\logs,30\r\nmicros retail oscar pos_version=\"old\"\r\nX=1\r\n";
        assert_eq!(
            change_config(ini, &changes, true),
            "; clients\r\nMICROS Retail OSCAR POS_VERSION=\"Oscar3_ASU_Test_3\"\r\nX=1\r\n"
        );
        let def = parse_changes("oscar.def.chg", "R:SALESDEBUG =Y\nS:OSINTERDEBUG=Y\n").unwrap();
        assert_eq!(
            change_config("# linux\nSALESDEBUG=Y\nLANG=C\n", &def, false),
            "# linux\nLANG=C\nOSINTERDEBUG=Y\n"
        );
        // Linux names are case-sensitive.
        assert_eq!(
            change_config("salesdebug=Y\n", &def, false),
            "salesdebug=Y\nOSINTERDEBUG=Y\n"
        );
        let err = parse_changes("oscar.def.chg", "S:A=1\nX:B=2\n").unwrap_err();
        assert!(err.contains("oscar.def.chg line 2"), "{err}");
        assert!(parse_changes("oscar.def.chg", "S:NOVALUE\n").is_err());
        assert!(parse_changes("oscar.def.chg", "R:=x\n").is_err());
    }

    #[test]
    fn archive_names() {
        assert_eq!(
            archive_name("oscupd10.tgz"),
            Ok(("oscupd10".into(), "tgz".into()))
        );
        assert_eq!(
            archive_name("OSCUPD4.ZIP"),
            Ok(("oscupd4".into(), "zip".into()))
        );
        assert_eq!(
            archive_name("oscupd_spring-2.zip"),
            Ok(("oscupd_spring-2".into(), "zip".into()))
        );
        for bad in [
            "oscupd.tgz",
            "oscupd10.tar.gz",
            "upd10.zip",
            "oscupd10.rar",
            "oscupd1 0.zip",
        ] {
            assert!(
                archive_name(bad).unwrap_err().contains("oscupd<nnn>.tgz"),
                "{bad}"
            );
        }
        assert_eq!(upd_name(3, "tgz"), "UPD003.tgz");
        assert_eq!(kept_name(3, "zip"), "Upd03.zip");
        assert_eq!(staged_dir(12), "/staging/OscUpd12");
    }
}

posup_plugin_sdk::export!(Oscar);
