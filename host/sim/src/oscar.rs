//! The MICROS Retail OSCAR POS server (PRODUCTS.md §4), simulated.
//!
//! What an OSCAR software update needs from an installation, and what this
//! simulation gives: the installation folder (the `D:\osc_usr\osc21` or
//! `/opt/osc_usr/osc21` equivalent) with the program in `bin/`, its configuration
//! `bin/oscar.def` (Linux) and `bin/oscar.ini` (the Windows clients of a mixed
//! system), the uncritical files (`*.fgl`, `*.fsm`, `*.asc`, `*.bmp`), the update
//! folder `work/` and the server's data `work.srv/`. The server keeps what the
//! update preconditions ask about in `work.srv`: the terminal clients with the
//! operator signed on and the transaction open at each (`clients.lst`), and the
//! system units with their state and free disk space (`sysunits.lst`). Tests
//! change them through [`sign_on`], [`open_transaction`] and [`set_unit`],
//! standing in for the people at the clients.
//!
//! The running server ([`run_oscar`]) loads its program libraries, which must be
//! of its own release (major.minor of `VERSION`), opens its database
//! `work.srv/oscar.db`, loads the forms, and connects the clients; then it logs
//! `MICROS Retail OSCAR POS server <version> ready`. Anything missing or of
//! another release ends the start with an `ERROR` line and a non-zero exit.
//!
//! The layout is described in `plugins/oscar/README.md`; the plugin relies on it.

use crate::process::{
    SimProcess, run_until_flag, run_until_signal, with_path, write_atomically, write_file,
};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use crate::product_log::ProductLog;

/// The installed release, one line, e.g. `21.3.0`.
pub const VERSION_FILE: &str = "VERSION";
/// The program: each file's first line names it and the release it belongs to.
pub const PROGRAM: [&str; 3] = ["bin/oscar", "bin/liboscar.so", "bin/liboscdb.so"];
/// The environment of the Linux server.
pub const CONFIG_DEF: &str = "bin/oscar.def";
/// The environment of the Windows clients of a mixed system.
pub const CONFIG_INI: &str = "bin/oscar.ini";
/// The work folder: update archives `oscupd<nnn>` are copied here.
pub const WORK: &str = "work";
/// Where updates are numbered (`UPD<nnn>`) and recorded.
pub const UPDATE_DIR: &str = "work/update";
/// The Update State log: one line per step of every update.
pub const STATE_LOG: &str = "work/update/UpdateState.log";
/// The server's data, carried into every new installation.
pub const WORK_SRV: &str = "work.srv";
/// The server database.
pub const DATABASE: &str = "work.srv/oscar.db";
/// The terminal clients: operator signed on and open transaction at each.
pub const CLIENTS: &str = "work.srv/clients.lst";
/// The system units: role, online or offline, free disk space.
pub const UNITS: &str = "work.srv/sysunits.lst";
/// The server's log, in the log folder.
pub const LOG_FILE: &str = "oscar.log";
/// How often the running server looks at its clients.
pub const POLL: Duration = Duration::from_millis(100);

/// One terminal client, as `clients.lst` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    pub name: String,
    /// The system unit it runs on.
    pub unit: String,
    /// `admin` (the login client that runs updates) or `pos`.
    pub role: String,
    /// The operator signed on, if any.
    pub operator: Option<String>,
    /// The number of the open transaction, if any.
    pub transaction: Option<String>,
}

/// One system unit, as `sysunits.lst` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unit {
    pub name: String,
    /// `server` or `client`.
    pub role: String,
    pub online: bool,
    /// Free disk space in bytes.
    pub free: u64,
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// The meaningful lines of a state list: no blanks, no `#` comments.
fn list_lines(text: &str) -> impl Iterator<Item = (usize, Vec<&str>)> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map(|(n, l)| (n + 1, l.split_whitespace().collect()))
}

fn dash(s: &str) -> Option<String> {
    (s != "-").then(|| s.to_owned())
}

/// Parses the text of `clients.lst`.
pub fn parse_clients(text: &str) -> io::Result<Vec<Client>> {
    list_lines(text)
        .map(|(n, cols)| match cols.as_slice() {
            [name, unit, role, operator, transaction] => Ok(Client {
                name: name.to_string(),
                unit: unit.to_string(),
                role: role.to_string(),
                operator: dash(operator),
                transaction: dash(transaction),
            }),
            _ => Err(invalid(format!(
                "{CLIENTS} line {n}: expected `client unit role operator transaction`"
            ))),
        })
        .collect()
}

/// Parses the text of `sysunits.lst`.
pub fn parse_units(text: &str) -> io::Result<Vec<Unit>> {
    list_lines(text)
        .map(|(n, cols)| match cols.as_slice() {
            [name, role, state, free] if ["online", "offline"].contains(state) => Ok(Unit {
                name: name.to_string(),
                role: role.to_string(),
                online: *state == "online",
                free: free.parse().map_err(|_| {
                    invalid(format!(
                        "{UNITS} line {n}: free space {free:?} is not a number of bytes"
                    ))
                })?,
            }),
            _ => Err(invalid(format!(
                "{UNITS} line {n}: expected `unit role online|offline free-bytes`"
            ))),
        })
        .collect()
}

pub fn read_clients(product: &Path) -> io::Result<Vec<Client>> {
    let file = product.join(CLIENTS);
    parse_clients(&fs::read_to_string(&file).map_err(|e| with_path(&file, e))?)
}

pub fn read_units(product: &Path) -> io::Result<Vec<Unit>> {
    let file = product.join(UNITS);
    parse_units(&fs::read_to_string(&file).map_err(|e| with_path(&file, e))?)
}

fn write_clients(product: &Path, clients: &[Client]) -> io::Result<()> {
    let mut text = String::from(CLIENTS_HEADER);
    for c in clients {
        text.push_str(&format!(
            "{:<9} {:<9} {:<6} {:<9} {}\n",
            c.name,
            c.unit,
            c.role,
            c.operator.as_deref().unwrap_or("-"),
            c.transaction.as_deref().unwrap_or("-")
        ));
    }
    write_atomically(&product.join(CLIENTS), text.as_bytes())
}

fn write_units(product: &Path, units: &[Unit]) -> io::Result<()> {
    let mut text = String::from(UNITS_HEADER);
    for u in units {
        let state = if u.online { "online" } else { "offline" };
        text.push_str(&format!(
            "{:<9} {:<7} {:<8} {}\n",
            u.name, u.role, state, u.free
        ));
    }
    write_atomically(&product.join(UNITS), text.as_bytes())
}

fn change_client(product: &Path, client: &str, f: impl FnOnce(&mut Client)) -> io::Result<()> {
    let mut clients = read_clients(product)?;
    let c = clients
        .iter_mut()
        .find(|c| c.name == client)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("{CLIENTS}: there is no terminal client {client}"),
            )
        })?;
    f(c);
    write_clients(product, &clients)
}

/// Signs `operator` on at `client`, or off when `None`.
pub fn sign_on(product: &Path, client: &str, operator: Option<&str>) -> io::Result<()> {
    change_client(product, client, |c| {
        c.operator = operator.map(str::to_owned)
    })
}

/// Opens transaction `number` at `client`, or closes the open one when `None`.
pub fn open_transaction(product: &Path, client: &str, number: Option<&str>) -> io::Result<()> {
    change_client(product, client, |c| {
        c.transaction = number.map(str::to_owned)
    })
}

/// Sets a system unit's state and free disk space.
pub fn set_unit(product: &Path, unit: &str, online: bool, free: u64) -> io::Result<()> {
    let mut units = read_units(product)?;
    let u = units.iter_mut().find(|u| u.name == unit).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("{UNITS}: there is no system unit {unit}"),
        )
    })?;
    u.online = online;
    u.free = free;
    write_units(product, &units)
}

/// The program files of `version`: paths under the installation, contents, modes.
pub fn program_files(version: &str) -> Vec<(String, Vec<u8>, u32)> {
    let mut files = vec![(
        VERSION_FILE.to_owned(),
        format!("{version}\n").into_bytes(),
        0o644,
    )];
    for (path, (what, mode)) in PROGRAM.iter().zip([
        ("MICROS Retail OSCAR POS server and client program", 0o755),
        ("MICROS Retail OSCAR POS runtime library", 0o644),
        ("MICROS Retail OSCAR POS database library", 0o644),
    ]) {
        files.push((path.to_string(), elf(path, version, what), mode));
    }
    files
}

/// A stand-in for a compiled file: its first line names it and its release.
fn elf(path: &str, version: &str, what: &str) -> Vec<u8> {
    let name = path.rsplit('/').next().unwrap_or(path);
    format!("SIM-ELF {name} {version}\n{what}\n").into_bytes()
}

/// The uncritical files of a first installation: reports, forms, texts, images.
pub fn uncritical_files() -> Vec<(String, Vec<u8>, u32)> {
    vec![
        (
            "fgl/LstUpdateState.fgl".into(),
            fgl("LstUpdateState", "Update State list"),
            0o644,
        ),
        (
            "fgl/Receipt.fgl".into(),
            fgl("Receipt", "Customer receipt, layout 1"),
            0o644,
        ),
        (
            "fsm/Login.fsm".into(),
            fsm("Login", "Operator sign-on"),
            0o644,
        ),
        (
            "fsm/Sale.fsm".into(),
            fsm("Sale", "Sales screen, 4 x 6 keys"),
            0o644,
        ),
        (
            "asc/Texts.asc".into(),
            b"TXT 0001 Bitte anmelden\nTXT 0002 Summe\nTXT 0003 Bon Ende\n".to_vec(),
            0o644,
        ),
        ("bmp/Logo.bmp".into(), bmp([0x20, 0x40, 0xa0]), 0o644),
    ]
}

/// A report definition as the report chain reads it.
pub fn fgl(name: &str, title: &str) -> Vec<u8> {
    format!("REPORT {name}\nTITLE \"{title}\"\nEND\n").into_bytes()
}

/// A form definition; the server refuses one that does not start with `FORM`.
pub fn fsm(name: &str, title: &str) -> Vec<u8> {
    format!("FORM {name}\nTITLE \"{title}\"\nEND\n").into_bytes()
}

/// A 2 x 2 pixel 24-bit BMP in one colour (blue, green, red).
pub fn bmp(bgr: [u8; 3]) -> Vec<u8> {
    let row = [bgr[0], bgr[1], bgr[2], bgr[0], bgr[1], bgr[2], 0, 0];
    let mut out = Vec::new();
    out.extend_from_slice(b"BM");
    out.extend_from_slice(&70u32.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&54u32.to_le_bytes());
    out.extend_from_slice(&40u32.to_le_bytes());
    out.extend_from_slice(&2i32.to_le_bytes());
    out.extend_from_slice(&2i32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&24u16.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&[0; 16]);
    out.extend_from_slice(&row);
    out.extend_from_slice(&row);
    out
}

/// Lays out an OSCAR installation of `version` at `product`, its log going to
/// `logs`. Configuration and server data already there are kept, as an update
/// keeps them.
pub fn init_oscar(product: &Path, logs: &Path, version: &str) -> io::Result<()> {
    check_version(version)?;
    for (path, bytes, mode) in program_files(version).into_iter().chain(uncritical_files()) {
        write_file(&product.join(path), &bytes, mode)?;
    }
    for (path, text) in [
        (CONFIG_DEF, DEFAULT_DEF),
        (CONFIG_INI, DEFAULT_INI),
        (DATABASE, DEFAULT_DATABASE),
        (CLIENTS, DEFAULT_CLIENTS),
        (UNITS, DEFAULT_UNITS),
    ] {
        let file = product.join(path);
        if !file.exists() {
            write_file(&file, text.as_bytes(), 0o644)?;
        }
    }
    let work = product.join(WORK);
    fs::create_dir_all(&work).map_err(|e| with_path(&work, e))?;
    fs::create_dir_all(logs).map_err(|e| with_path(logs, e))?;
    Ok(())
}

/// The `NAME=VALUE` variables of an `oscar.def` / `oscar.ini` text, in order.
pub fn variables(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| {
            let t = l.trim_start();
            !t.is_empty() && !t.starts_with('#') && !t.starts_with(';') && !t.starts_with('[')
        })
        .filter_map(|l| l.split_once('='))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

/// Runs the OSCAR server installed at `product`, logging to `<logs>/oscar.log`,
/// until SIGTERM or SIGINT; then shuts its clients down and returns. Returns an
/// error (the process exits non-zero) when the server cannot start.
pub fn run_oscar(product: &Path, logs: &Path) -> io::Result<()> {
    Server::new(product, logs).run()
}

/// `sim-product oscar`: runs the simulated OSCAR server in the foreground.
#[derive(Debug, Clone, clap::Args)]
pub struct OscarArgs {
    /// The installation folder (`VERSION`, `bin/`, `work/`, `work.srv/`).
    #[arg(long)]
    pub product: PathBuf,
    /// The folder of `oscar.log`.
    #[arg(long)]
    pub logs: PathBuf,
}

impl OscarArgs {
    pub fn run(&self) -> io::Result<()> {
        run_oscar(&self.product, &self.logs)
    }
}

/// A running simulated OSCAR server.
#[derive(Debug)]
pub struct Server {
    product: PathBuf,
    log: ProductLog,
    /// The clients as last seen, to log what changed.
    clients: Vec<Client>,
    started: bool,
}

impl Server {
    pub fn new(product: &Path, logs: &Path) -> Self {
        Self {
            product: product.to_path_buf(),
            log: ProductLog::new(logs.join(LOG_FILE)),
            clients: Vec::new(),
            started: false,
        }
    }

    /// Runs until SIGTERM or SIGINT.
    pub fn run(self) -> io::Result<()> {
        run_until_signal(self, POLL)
    }

    /// Runs until `stop` is set: for tests that run it on a thread.
    pub fn run_until(self, stop: &AtomicBool) -> io::Result<()> {
        run_until_flag(self, POLL, stop)
    }

    fn fail(&mut self, component: &str, message: &str) -> io::Result<()> {
        self.log.error(component, message)?;
        Err(io::Error::other(format!(
            "the OSCAR server did not start: {message}"
        )))
    }
}

impl SimProcess for Server {
    fn start(&mut self) -> io::Result<()> {
        // An installation need not name its release: the program file says
        // which release it is.
        let version_file = self.product.join(VERSION_FILE);
        let version = fs::read_to_string(&version_file)
            .map(|v| v.trim().to_owned())
            .or_else(|e| program_release(&self.product).ok_or(e));
        self.log.info(
            "Server",
            &format!(
                "MICROS Retail OSCAR POS server {} starting in {}",
                version.as_deref().unwrap_or("(unknown version)"),
                self.product.display()
            ),
        )?;
        let version = match version {
            Ok(v) => v,
            Err(e) => return self.fail("Server", &format!("Cannot read {VERSION_FILE}: {e}")),
        };
        for config in [CONFIG_DEF, CONFIG_INI] {
            if let Ok(text) = fs::read_to_string(self.product.join(config)) {
                let vars = variables(&text);
                self.log
                    .info("Config", &format!("{config}: {} variables", vars.len()))?;
                if vars.iter().any(|(n, v)| n == "OSINTERDEBUG" && v == "Y") {
                    self.log
                        .info("Config", "Interface debug output is on (OSINTERDEBUG=Y)")?;
                }
            }
        }
        let release = release_of(&version);
        for path in PROGRAM {
            let first = match fs::read_to_string(self.product.join(path)) {
                Ok(t) => t.lines().next().unwrap_or_default().to_owned(),
                Err(e) => return self.fail("Server", &format!("Cannot load {path}: {e}")),
            };
            let name = path.rsplit('/').next().unwrap_or(path);
            let Some(built) = first
                .strip_prefix("SIM-ELF ")
                .and_then(|r| r.strip_prefix(name))
                .map(str::trim)
            else {
                return self.fail("Server", &format!("Cannot load {path}: not a program file"));
            };
            if release_of(built) != release {
                return self.fail(
                    "Server",
                    &format!(
                        "{path} is release {built}; server {version} needs {release}.x: incompatible program files"
                    ),
                );
            }
        }
        if let Err(e) = fs::metadata(self.product.join(DATABASE)) {
            return self.fail("Database", &format!("Cannot open {DATABASE}: {e}"));
        }
        self.log.info("Database", &format!("{DATABASE} opened"))?;
        let mut counts = [0u32; 4];
        for (i, (dir, ext)) in [
            ("fgl", "fgl"),
            ("fsm", "fsm"),
            ("asc", "asc"),
            ("bmp", "bmp"),
        ]
        .into_iter()
        .enumerate()
        {
            let Ok(entries) = fs::read_dir(self.product.join(dir)) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                if path.extension().and_then(|e| e.to_str()) != Some(ext) {
                    continue;
                }
                if ext == "fsm" {
                    let text = fs::read_to_string(&path).unwrap_or_default();
                    if !text.starts_with("FORM ") {
                        let name = entry.file_name().to_string_lossy().into_owned();
                        return self.fail("Forms", &format!("{dir}/{name}: not a form definition"));
                    }
                }
                counts[i] += 1;
            }
        }
        self.log.info(
            "Forms",
            &format!(
                "{} reports (fgl), {} forms (fsm), {} text files (asc), {} images (bmp) loaded",
                counts[0], counts[1], counts[2], counts[3]
            ),
        )?;
        let units = read_units(&self.product).unwrap_or_default();
        // The client list is this simulation's stand-in for OSCAR's database;
        // an installation without one has no clients to connect.
        let clients = match read_clients(&self.product) {
            Ok(c) => c,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return self.fail("Clients", &e.to_string()),
        };
        let mut connected = 0;
        for c in &clients {
            let online = units.iter().any(|u| u.name == c.unit && u.online);
            if online {
                connected += 1;
                self.log.info(
                    "Clients",
                    &format!("Terminal client {} on {} connected", c.name, c.unit),
                )?;
            } else {
                self.log.warn(
                    "Clients",
                    &format!(
                        "Terminal client {}: system unit {} is offline",
                        c.name, c.unit
                    ),
                )?;
            }
        }
        self.clients = clients;
        self.started = true;
        self.log.info(
            "Server",
            &format!(
                "MICROS Retail OSCAR POS server {version} ready, {connected} terminal clients connected"
            ),
        )
    }

    /// Logs sign-ons and transactions as the clients report them.
    fn poll(&mut self) -> io::Result<()> {
        let Ok(now) = read_clients(&self.product) else {
            return Ok(());
        };
        for c in &now {
            let before = self.clients.iter().find(|b| b.name == c.name);
            let (op_before, tr_before) = before
                .map(|b| (b.operator.clone(), b.transaction.clone()))
                .unwrap_or_default();
            if c.operator != op_before {
                match (&op_before, &c.operator) {
                    (Some(old), _) if c.operator.is_none() => self.log.info(
                        "Clients",
                        &format!("Operator {old} signed off at {}", c.name),
                    )?,
                    (_, Some(new)) => self.log.info(
                        "Clients",
                        &format!("Operator {new} signed on at {}", c.name),
                    )?,
                    _ => {}
                }
            }
            if c.transaction != tr_before {
                match (&tr_before, &c.transaction) {
                    (Some(old), None) => self
                        .log
                        .info("Sales", &format!("Transaction {old} closed at {}", c.name))?,
                    (_, Some(new)) => self
                        .log
                        .info("Sales", &format!("Transaction {new} opened at {}", c.name))?,
                    _ => {}
                }
            }
        }
        self.clients = now;
        Ok(())
    }

    fn stop(&mut self, _why: &str) -> io::Result<()> {
        if self.started {
            let names: Vec<&str> = self
                .clients
                .iter()
                .filter(|c| c.role != "admin")
                .map(|c| c.name.as_str())
                .collect();
            self.log.info(
                "Clients",
                &format!("Shutting down terminal clients: {}", names.join(", ")),
            )?;
        }
        self.log
            .info("Server", "MICROS Retail OSCAR POS server stopped")
    }
}

/// `21.3` of `21.3.0`: files of one release work together.
/// The release `bin/oscar` was built for, from its first line.
fn program_release(product: &Path) -> Option<String> {
    let text = fs::read_to_string(product.join(PROGRAM[0])).ok()?;
    let first = text.lines().next()?;
    Some(first.strip_prefix("SIM-ELF oscar")?.trim().to_owned())
}

fn release_of(version: &str) -> String {
    version.split('.').take(2).collect::<Vec<_>>().join(".")
}

const CLIENTS_HEADER: &str = "\
# Terminal clients of this installation, as the server database lists them.
# client  unit      role   operator  transaction   (- for none)
";

const UNITS_HEADER: &str = "\
# System units of this installation: name, role, state, free disk space in bytes.
";

const DEFAULT_CLIENTS: &str = "\
# Terminal clients of this installation, as the server database lists them.
# client  unit      role   operator  transaction   (- for none)
ADMIN     OSCSRV01  admin  -         -
POS01     POS01     pos    -         -
POS02     POS02     pos    -         -
";

const DEFAULT_UNITS: &str = "\
# System units of this installation: name, role, state, free disk space in bytes.
OSCSRV01  server  online   53687091200
POS01     client  online   21474836480
POS02     client  online   21474836480
";

const DEFAULT_DEF: &str = "\
# MICROS Retail OSCAR POS environment of the Linux server.
MICROS Retail OSCAR POS_OMLPATH=../logs,30
MICROS Retail OSCAR POS_VERSION=\"Oscar3_21\"
OSCDBNAME=work.srv/oscar.db
SALESDEBUG=Y
LANG=de_DE.UTF-8
";

const DEFAULT_INI: &str = "\
; MICROS Retail OSCAR POS environment of the Windows clients.
MICROS Retail OSCAR POS_OMLPATH=..\\logs,30
MICROS Retail OSCAR POS_VERSION=\"Oscar3_21\"
OSCDBNAME=..\\work.srv\\oscar.db
";

const DEFAULT_DATABASE: &str = "\
SIM-DB oscar
ARTICLES 1842
OPERATORS 12
";

/// Releases are dotted numbers, e.g. `21.3.0`.
fn check_version(version: &str) -> io::Result<()> {
    let ok = !version.is_empty()
        && version
            .split('.')
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    if ok {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("OSCAR release {version:?}: use a dotted number such as 21.3.0"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{Running, wait_for};

    fn wait_for_log(logs: &Path, f: impl FnMut(&str) -> bool) -> String {
        wait_for(&logs.join(LOG_FILE), f)
    }

    /// The server installed at `product`, running on a thread.
    fn run(product: &Path, logs: &Path) -> Running {
        let server = Server::new(product, logs);
        Running::spawn(move |stop| server.run_until(stop))
    }

    fn fixture(version: &str) -> (tempfile::TempDir, PathBuf, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let product = tmp.path().join("osc21");
        let logs = tmp.path().join("logs");
        init_oscar(&product, &logs, version).unwrap();
        (tmp, product, logs)
    }

    fn messages(log: &str) -> Vec<&str> {
        log.lines().map(|l| &l[24..]).collect()
    }

    #[test]
    fn an_installation_looks_like_one() {
        let (_tmp, product, logs) = fixture("21.3.0");
        assert_eq!(
            fs::read_to_string(product.join(VERSION_FILE)).unwrap(),
            "21.3.0\n"
        );
        for f in PROGRAM {
            assert!(
                fs::read_to_string(product.join(f))
                    .unwrap()
                    .starts_with("SIM-ELF ")
            );
        }
        assert!(product.join("work").is_dir());
        assert!(
            !product.join(UPDATE_DIR).exists(),
            "the first update creates work/update"
        );
        assert_eq!(&fs::read(product.join("bmp/Logo.bmp")).unwrap()[..2], b"BM");
        assert_eq!(fs::read(product.join("bmp/Logo.bmp")).unwrap().len(), 70);
        let def = variables(&fs::read_to_string(product.join(CONFIG_DEF)).unwrap());
        assert!(def.contains(&("SALESDEBUG".into(), "Y".into())));
        let ini = variables(&fs::read_to_string(product.join(CONFIG_INI)).unwrap());
        assert!(ini.contains(&(
            "MICROS Retail OSCAR POS_OMLPATH".into(),
            "..\\logs,30".into()
        )));
        let clients = read_clients(&product).unwrap();
        assert_eq!(clients.len(), 3);
        assert!(
            clients
                .iter()
                .all(|c| c.operator.is_none() && c.transaction.is_none())
        );
        assert_eq!(read_units(&product).unwrap().len(), 3);
        assert!(logs.is_dir());
        assert!(init_oscar(&product, &logs, "21.x").is_err());
    }

    #[test]
    fn state_lists_are_changed_and_checked() {
        let (_tmp, product, _logs) = fixture("21.3.0");
        sign_on(&product, "POS01", Some("1001")).unwrap();
        open_transaction(&product, "POS02", Some("4711")).unwrap();
        set_unit(&product, "POS02", false, 1_000).unwrap();
        let clients = read_clients(&product).unwrap();
        assert_eq!(clients[1].operator.as_deref(), Some("1001"));
        assert_eq!(clients[2].transaction.as_deref(), Some("4711"));
        let units = read_units(&product).unwrap();
        assert!(!units[2].online);
        assert_eq!(units[2].free, 1_000);
        assert!(sign_on(&product, "POS09", Some("1")).is_err());
        let err = parse_units("A server online lots\n").unwrap_err();
        assert!(err.to_string().contains("line 1"), "{err}");
        let err = parse_clients("# c\nPOS01 POS01 pos\n").unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
    }

    #[test]
    fn starts_ready_logs_the_clients_and_stops() {
        let (_tmp, product, logs) = fixture("21.3.0");
        let server = run(&product, &logs);
        let log = wait_for_log(&logs, |t| t.contains(" ready, "));
        let m = messages(&log);
        assert!(
            m[0].starts_with("INFO  [Server] MICROS Retail OSCAR POS server 21.3.0 starting in ")
        );
        assert!(m.contains(&"INFO  [Config] bin/oscar.def: 5 variables"));
        assert!(m.contains(&"INFO  [Forms] 2 reports (fgl), 2 forms (fsm), 1 text files (asc), 1 images (bmp) loaded"));
        assert!(m.contains(&"INFO  [Clients] Terminal client POS01 on POS01 connected"));
        assert!(m.contains(&"INFO  [Server] MICROS Retail OSCAR POS server 21.3.0 ready, 3 terminal clients connected"));
        sign_on(&product, "POS01", Some("1001")).unwrap();
        wait_for_log(&logs, |t| t.contains("Operator 1001 signed on at POS01"));
        open_transaction(&product, "POS01", Some("4711")).unwrap();
        wait_for_log(&logs, |t| t.contains("Transaction 4711 opened at POS01"));
        open_transaction(&product, "POS01", None).unwrap();
        sign_on(&product, "POS01", None).unwrap();
        wait_for_log(&logs, |t| t.contains("Operator 1001 signed off at POS01"));
        server.stop().unwrap();
        let log = fs::read_to_string(logs.join(LOG_FILE)).unwrap();
        assert!(log.contains("Transaction 4711 closed at POS01"));
        let m = messages(&log);
        assert_eq!(
            m[m.len() - 2],
            "INFO  [Clients] Shutting down terminal clients: POS01, POS02"
        );
        assert_eq!(
            m[m.len() - 1],
            "INFO  [Server] MICROS Retail OSCAR POS server stopped"
        );
        assert!(!log.contains("ERROR"));
    }

    #[test]
    fn a_start_fails_on_missing_or_foreign_program_files_and_bad_forms() {
        type Damage = fn(&Path);
        let cases: [(&str, Damage); 4] = [
            ("ERROR [Server] Cannot load bin/liboscdb.so: ", |p| {
                fs::remove_file(p.join("bin/liboscdb.so")).unwrap()
            }),
            (
                "ERROR [Server] bin/liboscdb.so is release 21.2.4; server 21.3.0 needs 21.3.x: incompatible program files",
                |p| {
                    fs::write(
                        p.join("bin/liboscdb.so"),
                        elf("bin/liboscdb.so", "21.2.4", "x"),
                    )
                    .unwrap()
                },
            ),
            ("ERROR [Database] Cannot open work.srv/oscar.db: ", |p| {
                fs::remove_dir_all(p.join(WORK_SRV)).unwrap()
            }),
            ("ERROR [Forms] fsm/Sale.fsm: not a form definition", |p| {
                fs::write(p.join("fsm/Sale.fsm"), "garbage").unwrap()
            }),
        ];
        for (expected, damage) in cases {
            let (_tmp, product, logs) = fixture("21.3.0");
            damage(&product);
            let err = Server::new(&product, &logs)
                .run_until(&AtomicBool::new(true))
                .unwrap_err();
            assert!(err.to_string().contains("did not start"), "{err}");
            let log = fs::read_to_string(logs.join(LOG_FILE)).unwrap();
            assert!(log.contains(expected), "{expected}\n{log}");
            assert!(!log.contains(" ready, "));
        }
        // A partial update of the same release keeps the other libraries.
        let (_tmp, product, logs) = fixture("21.3.0");
        for (path, bytes, _) in program_files("21.3.1").into_iter().take(2) {
            fs::write(product.join(path), bytes).unwrap();
        }
        let server = run(&product, &logs);
        wait_for_log(&logs, |t| t.contains("server 21.3.1 ready"));
        server.stop().unwrap();
    }

    /// The sample packages under `packages/oscar` that carry a program carry the
    /// simulated vendor's program of their release, unless their note says they
    /// are broken on purpose.
    #[test]
    fn sample_program_packages_hold_the_program_of_their_release() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packages/oscar");
        let mut checked = 0;
        for source in crate::package::sources(&root).unwrap() {
            let manifest = crate::package::manifest(&source).unwrap();
            assert_eq!(manifest.device_type, "oscar");
            let content = source.join("content");
            let Ok(version) = fs::read_to_string(content.join(VERSION_FILE)) else {
                continue;
            };
            if manifest.note.starts_with("Broken") {
                continue;
            }
            for (path, bytes, _) in program_files(version.trim()) {
                if let Ok(got) = fs::read(content.join(&path)) {
                    assert_eq!(got, bytes, "{} {path}", source.display());
                }
            }
            checked += 1;
        }
        assert!(
            checked >= 2,
            "packages/oscar holds a good complete and partial update"
        );
    }
}
