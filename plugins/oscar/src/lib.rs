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
//!
//! `package` reads an archive's own files without touching the host (pure, so
//! tested on the host target), `site` the site's client and unit lists,
//! `installation` the installation's record of its updates; this file holds the
//! steps.

mod installation;
pub mod package;
mod site;

use installation::{
    current, installed_version, kept_archives, kept_name, next_seq, require_installation,
    staged_dir, timestamp, upd_name,
};
use package::{
    Change, Kind, archive_name, change_config, describe, extension_of, kind_of, parse_changes,
};
use site::{check_clients, read_clients, read_units};
use std::io::Write;
use std::time::{Duration, Instant};

use posup_plugin_sdk::config::named_log;
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

posup_plugin_sdk::export!(Oscar);
