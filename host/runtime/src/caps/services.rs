//! `services`: the product's services, limited to the granted names, and scripts
//! shipped in packages.
//!
//! The runtime does not know how a terminal runs its product; the host supplies a
//! [`ServiceManager`]. Two come with the runtime:
//!
//! - [`Systemd`] drives units with `systemctl`, for terminals whose product is a
//!   systemd service (UKM 5, IceCash's `dIceCash` and `DTPrint`).
//! - [`Processes`] starts configured programs itself and keeps their state in
//!   pidfiles, for products without a service manager and for the simulated
//!   products of tests and the demo. Its state lives on disk, so `posup apply` run
//!   again, or an agent restarted, still finds the processes an earlier run started.
//!
//! [`ServicesState`] enforces the grant before any backend sees a name: a service
//! not granted to the plugin, or a host without a manager, is `denied`.
//!
//! Scripts (`run-script`) are run by [`run_script`], a free function, not by the
//! backend: the environment a package script gets — `/bin/sh`, its own folder as
//! working directory, an empty environment but `PATH`, its own process group
//! killed at the timeout — is the runtime's sandbox policy and the same on every
//! terminal. A backend could only weaken it, and a terminal whose services are
//! not controlled by posup may still run an IceCash `install.sh`.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use posup_world::latest::services;
/// The service states and script results of the WIT interface, which a
/// [`ServiceManager`] speaks.
pub use posup_world::latest::services::{ScriptResult, State};
use posup_world::latest::types::{Dir, Error as WitError};
use rustix::process::{Pid, Signal};
use wasmtime::component::{HasSelf, Linker};

use super::prompt::BoxFuture;
use super::{CapError, CapResult, Work};
use crate::beneath::Roots;
use crate::grants::Grants;

/// The only environment variable a script or a [`Processes`] service gets unless
/// its spec adds more.
pub const SAFE_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";
/// Bytes of a script's combined output returned to the plugin (its end).
pub const MAX_SCRIPT_OUTPUT: usize = 64 * 1024;
/// The longest a script may run, whatever the plugin asks; environment updates
/// that install system packages take tens of minutes, not hours.
pub const MAX_SCRIPT_TIMEOUT: Duration = Duration::from_secs(4 * 3_600);

/// Starts, stops and queries services on the terminal. Names are the plugin's
/// (`kiosk`, `dIceCash`); the backend maps them to what the terminal runs. The
/// caller has already checked that the name is granted.
pub trait ServiceManager: Send + Sync {
    fn status<'a>(&'a self, name: &'a str) -> BoxFuture<'a, CapResult<State>>;
    /// Starts the service; starting a running service does nothing.
    fn start<'a>(&'a self, name: &'a str) -> BoxFuture<'a, CapResult<()>>;
    /// Stops the service; stopping a stopped service does nothing.
    fn stop<'a>(&'a self, name: &'a str) -> BoxFuture<'a, CapResult<()>>;
    fn restart<'a>(&'a self, name: &'a str) -> BoxFuture<'a, CapResult<()>> {
        Box::pin(async move {
            self.stop(name).await?;
            self.start(name).await
        })
    }
}

/// Per-step state of `services`.
pub struct ServicesState {
    grants: Arc<Grants>,
    roots: Arc<Roots>,
    work: Work,
    manager: Option<Arc<dyn ServiceManager>>,
}

impl ServicesState {
    pub fn new(
        grants: Arc<Grants>,
        roots: Arc<Roots>,
        work: Work,
        manager: Option<Arc<dyn ServiceManager>>,
    ) -> Self {
        Self {
            grants,
            roots,
            work,
            manager,
        }
    }

    /// The backend for `name`, once the name is known to be granted.
    fn manager(&self, name: &str) -> CapResult<Arc<dyn ServiceManager>> {
        if !self.grants.services.iter().any(|s| s == name) {
            return Err(CapError::denied(format!(
                "service {name} is not granted to this plugin"
            )));
        }
        self.manager.clone().ok_or_else(|| {
            CapError::denied(format!(
                "service {name}: this host controls no services (no service manager is configured \
                 for the device type)"
            ))
        })
    }

    /// The backend for starting or stopping `name`: granted, and not in a call
    /// that only looks.
    fn control(&self, name: &str) -> CapResult<Arc<dyn ServiceManager>> {
        let manager = self.manager(name)?;
        if self.grants.look_only {
            return Err(CapError::denied(format!(
                "service {name}: inventory, inspect and precheck only look at services; start and stop them from stage on"
            )));
        }
        Ok(manager)
    }

    /// The script a plugin may run: scripts must be granted and the script must be
    /// a regular file under `/staging`, resolved beneath it. Returns the handle of
    /// its folder (kept open while it runs) and its path through that handle.
    fn script(&self, path: &str) -> CapResult<(cap_std::fs::Dir, PathBuf)> {
        if !self.grants.scripts {
            return Err(CapError::denied(format!(
                "script {path}: running scripts is not granted to this plugin"
            )));
        }
        if self.grants.look_only {
            return Err(CapError::invalid(format!(
                "script {path}: inventory, inspect and precheck run no scripts; run it from stage on"
            )));
        }
        let loc = self.roots.locate(path, false)?;
        if loc.dir != Dir::Staging {
            return Err(CapError::invalid(format!(
                "script {path}: scripts run only from /staging, where packages are unpacked"
            )));
        }
        let (folder, name) = loc.parent()?;
        let shown = format!("script {path}");
        match crate::beneath::open_file_nofollow(folder.as_fd(), &name) {
            Ok(Some(_)) => {}
            Ok(None) => return Err(CapError::not_found(format!("{shown}: does not exist"))),
            Err(e) if e.kind() == io::ErrorKind::InvalidInput => {
                return Err(CapError::invalid(format!("{shown}: {e}")));
            }
            Err(e) => return Err(crate::beneath::resolve_error(&shown, "opening", &e)),
        }
        // The shell opens the script by this path: this process's handle of the
        // folder, then one name that was just seen to be a regular file.
        let host = PathBuf::from(format!(
            "/proc/{}/fd/{}",
            std::process::id(),
            folder.as_raw_fd()
        ))
        .join(name);
        Ok((folder, host))
    }
}

impl services::Host for ServicesState {
    async fn status(&mut self, name: String) -> Result<State, WitError> {
        Ok(self.manager(&name)?.status(&name).await?)
    }

    async fn start(&mut self, name: String) -> Result<(), WitError> {
        Ok(self.control(&name)?.start(&name).await?)
    }

    async fn stop(&mut self, name: String) -> Result<(), WitError> {
        Ok(self.control(&name)?.stop(&name).await?)
    }

    async fn restart(&mut self, name: String) -> Result<(), WitError> {
        Ok(self.control(&name)?.restart(&name).await?)
    }

    async fn run_script(
        &mut self,
        path: String,
        args: Vec<String>,
        timeout_secs: u32,
    ) -> Result<ScriptResult, WitError> {
        let (_folder, host) = self.script(&path)?;
        if timeout_secs == 0 {
            return Err(CapError::invalid(format!(
                "script {path}: the timeout must be at least 1 second"
            ))
            .into());
        }
        let timeout = Duration::from_secs(timeout_secs.into()).min(MAX_SCRIPT_TIMEOUT);
        Ok(super::counted(&self.work, run_script(&host, &path, &args, timeout)).await?)
    }
}

pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> &mut ServicesState,
) -> wasmtime::Result<()> {
    services::add_to_linker::<T, HasSelf<ServicesState>>(linker, get)
}

/// Runs `script` (a host path; `shown` is how errors name it) with `/bin/sh`, in
/// the script's folder, with only [`SAFE_PATH`] in its environment and in a
/// process group of its own, which is killed when `timeout` passes. Returns the
/// exit code (128 + the signal number when a signal ended it, as shells report
/// it) and the end of stdout and stderr together.
pub async fn run_script(
    script: &Path,
    shown: &str,
    args: &[String],
    timeout: Duration,
) -> CapResult<ScriptResult> {
    let dir = script.parent().unwrap_or(Path::new("/"));
    let (reader, writer) =
        io::pipe().map_err(|e| CapError::from_io(format!("script {shown}: output pipe"), &e))?;
    let writer2 = writer
        .try_clone()
        .map_err(|e| CapError::from_io(format!("script {shown}: output pipe"), &e))?;
    let mut cmd = tokio::process::Command::new("/bin/sh");
    cmd.arg(script)
        .args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", SAFE_PATH)
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(writer2)
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .map_err(|e| CapError::from_io(format!("script {shown}: starting /bin/sh"), &e))?;
    // The command holds the pipe's write ends; dropping it leaves them only to the
    // script, so the reader sees the end of output when the script is done.
    drop(cmd);
    let pid = child.id().and_then(|id| Pid::from_raw(id as i32));
    // Whatever ends this call — the script's own end, its timeout, or the step's
    // deadline dropping the call — nothing the script started outlives it.
    let _group = GroupKiller(pid);

    let output = Arc::new(Mutex::new(OutputTail::default()));
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    {
        let output = output.clone();
        std::thread::spawn(move || {
            let mut reader = reader;
            let mut buf = vec![0u8; 16 * 1024];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                output.lock().unwrap().push(&buf[..n]);
            }
            let _ = done_tx.send(());
        });
    }

    let status = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(status) => status.map_err(|e| CapError::from_io(format!("script {shown}"), &e))?,
        Err(_) => {
            if let Some(pid) = pid {
                let _ = rustix::process::kill_process_group(pid, Signal::KILL);
            }
            let _ = child.wait().await;
            let last = output.lock().unwrap().text();
            let last = last.lines().rev().take(5).collect::<Vec<_>>();
            let last = last.into_iter().rev().collect::<Vec<_>>().join("\n");
            return Err(CapError::timeout(format!(
                "script {shown} did not finish within {} s and was killed with its processes; \
                 its last output:\n{last}",
                timeout.as_secs()
            )));
        }
    };
    // A process the script left running in the background may keep the pipe open;
    // its output after the script ended is not waited for long.
    let _ = tokio::time::timeout(Duration::from_secs(2), done_rx).await;
    let output = output.lock().unwrap().text();
    Ok(ScriptResult {
        exit_code: exit_code(status),
        output,
    })
}

/// Kills a script's process group when dropped.
struct GroupKiller(Option<Pid>);

impl Drop for GroupKiller {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            let _ = rustix::process::kill_process_group(pid, Signal::KILL);
        }
    }
}

fn exit_code(status: ExitStatus) -> i32 {
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(-1)
}

/// The last [`MAX_SCRIPT_OUTPUT`] bytes of a stream.
#[derive(Default)]
struct OutputTail {
    bytes: Vec<u8>,
    cut: bool,
}

impl OutputTail {
    fn push(&mut self, data: &[u8]) {
        self.bytes.extend_from_slice(data);
        if self.bytes.len() > 2 * MAX_SCRIPT_OUTPUT {
            let excess = self.bytes.len() - MAX_SCRIPT_OUTPUT;
            self.bytes.drain(..excess);
            self.cut = true;
        }
    }

    /// The kept output; when its start was cut off, from the first whole line.
    fn text(&self) -> String {
        let mut bytes = &self.bytes[self.bytes.len().saturating_sub(MAX_SCRIPT_OUTPUT)..];
        if (self.cut || bytes.len() < self.bytes.len())
            && let Some(i) = bytes.iter().position(|&b| b == b'\n')
        {
            bytes = &bytes[i + 1..];
        }
        String::from_utf8_lossy(bytes).into_owned()
    }
}

/// Names become file names (pidfiles) and unit names: only plain names are taken.
fn check_name(name: &str) -> CapResult<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._@-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(CapError::invalid(format!(
            "service {name:?}: a service name is letters, digits, `.`, `_`, `@` and `-`"
        )))
    }
}

/// Services that are systemd units, driven with `systemctl`.
#[derive(Debug, Clone)]
pub struct Systemd {
    units: BTreeMap<String, String>,
    timeout: Duration,
}

impl Default for Systemd {
    fn default() -> Self {
        Self::new()
    }
}

impl Systemd {
    /// Every name maps to `<name>.service`; `systemctl` calls time out after
    /// 120 s, a little over systemd's own default start timeout of 90 s.
    pub fn new() -> Self {
        Self {
            units: BTreeMap::new(),
            timeout: Duration::from_secs(120),
        }
    }

    /// Maps the plugin's service `name` to a systemd `unit` (e.g. `dIceCash` to
    /// `dicecash.service`).
    pub fn with_unit(mut self, name: impl Into<String>, unit: impl Into<String>) -> Self {
        self.units.insert(name.into(), unit.into());
        self
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The unit a service name stands for.
    pub fn unit(&self, name: &str) -> String {
        self.units
            .get(name)
            .cloned()
            .unwrap_or_else(|| format!("{name}.service"))
    }

    async fn systemctl(&self, name: &str, args: &[&str]) -> CapResult<std::process::Output> {
        check_name(name)?;
        let unit = self.unit(name);
        let mut cmd = tokio::process::Command::new("systemctl");
        cmd.arg("--no-ask-password")
            .args(args)
            .arg(&unit)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let what = format!("service {name} (unit {unit}): systemctl {}", args.join(" "));
        match tokio::time::timeout(self.timeout, cmd.output()).await {
            Ok(out) => out.map_err(|e| CapError::from_io(&what, &e)),
            Err(_) => Err(CapError::timeout(format!(
                "{what} did not finish within {} s",
                self.timeout.as_secs()
            ))),
        }
    }

    async fn control(&self, name: &str, verb: &str) -> CapResult<()> {
        let out = self.systemctl(name, &[verb]).await?;
        if out.status.success() {
            return Ok(());
        }
        Err(CapError::io(format!(
            "service {name} (unit {}): systemctl {verb} failed ({}): {}; see `journalctl -u {}`",
            self.unit(name),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            self.unit(name)
        )))
    }
}

/// Reads `systemctl show -p LoadState -p ActiveState` output. `show` is used
/// rather than `is-active` because it also tells a unit that does not exist
/// (`LoadState=not-found`) from one that is merely stopped.
fn parse_show(name: &str, unit: &str, text: &str) -> CapResult<State> {
    let value = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
            .map(str::trim)
    };
    if value("LoadState") == Some("not-found") {
        return Err(CapError::not_found(format!(
            "service {name}: the unit {unit} is not installed on this terminal"
        )));
    }
    match value("ActiveState") {
        Some("active" | "activating" | "reloading" | "refreshing") => Ok(State::Running),
        Some("inactive" | "deactivating" | "maintenance") => Ok(State::Stopped),
        Some("failed") => Ok(State::Failed),
        other => Err(CapError::io(format!(
            "service {name}: systemctl reported no known state for {unit} ({other:?})"
        ))),
    }
}

impl ServiceManager for Systemd {
    fn status<'a>(&'a self, name: &'a str) -> BoxFuture<'a, CapResult<State>> {
        Box::pin(async move {
            let out = self
                .systemctl(name, &["show", "-p", "LoadState", "-p", "ActiveState"])
                .await?;
            if !out.status.success() {
                return Err(CapError::io(format!(
                    "service {name} (unit {}): systemctl show failed ({}): {}",
                    self.unit(name),
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
            parse_show(
                name,
                &self.unit(name),
                &String::from_utf8_lossy(&out.stdout),
            )
        })
    }

    fn start<'a>(&'a self, name: &'a str) -> BoxFuture<'a, CapResult<()>> {
        Box::pin(self.control(name, "start"))
    }

    fn stop<'a>(&'a self, name: &'a str) -> BoxFuture<'a, CapResult<()>> {
        Box::pin(self.control(name, "stop"))
    }

    fn restart<'a>(&'a self, name: &'a str) -> BoxFuture<'a, CapResult<()>> {
        Box::pin(self.control(name, "restart"))
    }
}

/// How [`Processes`] runs one service.
#[derive(Debug, Clone)]
pub struct ProcessSpec {
    /// The program; a bare name is looked up in the service's `PATH`.
    pub program: PathBuf,
    pub args: Vec<String>,
    /// Working directory; the host's when `None`.
    pub cwd: Option<PathBuf>,
    /// Environment variables on top of `PATH=`[`SAFE_PATH`]; nothing else is
    /// inherited from the host, as with a systemd service.
    pub env: Vec<(String, String)>,
    /// File that stdout and stderr are appended to; discarded when `None`.
    pub log: Option<PathBuf>,
}

impl ProcessSpec {
    pub fn new(program: impl Into<PathBuf>) -> Self {
        Self {
            program: program.into(),
            args: Vec::new(),
            cwd: None,
            env: Vec::new(),
            log: None,
        }
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn cwd(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cwd = Some(dir.into());
        self
    }

    pub fn env(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((name.into(), value.into()));
        self
    }

    pub fn log(mut self, file: impl Into<PathBuf>) -> Self {
        self.log = Some(file.into());
        self
    }

    /// Whether a process's command line is this program's: the program itself is
    /// the first argument, or the second when an interpreter runs it (`#!`
    /// scripts show as `/bin/sh /path/script`). File names are compared, since a
    /// bare program name is found through `PATH`.
    fn matches(&self, cmdline: &[Vec<u8>]) -> bool {
        use std::os::unix::ffi::OsStrExt;
        let want = self.program.file_name();
        cmdline
            .iter()
            .take(2)
            .any(|arg| Path::new(OsStr::from_bytes(arg)).file_name() == want && want.is_some())
    }
}

/// Services that are plain processes started by posup, their state kept in
/// `<run_dir>/<name>.pid` (the pid, then the process's start time in clock ticks
/// since boot) and `<run_dir>/<name>.exit` (how it ended, when the host that
/// started it saw it end).
///
/// Processes start in a process group of their own, detached from the host's
/// terminal and signals; `stop` sends SIGTERM to the group, and SIGKILL after the
/// stop timeout. A pid counts as the service only while the process with that pid
/// has the recorded start time (or, for a pidfile without one, runs the
/// configured program), so a recycled pid is never taken for the service, nor
/// signalled; a start script that `exec`s the real program stays the service.
///
/// The host that starts a process reaps it from a thread, so no zombie stays
/// behind, and records its exit status: a service that exits non-zero (or is
/// killed by a signal other than SIGTERM, SIGINT, SIGHUP or SIGPIPE) is `failed`,
/// as systemd counts it. When that host has exited first, the process is reaped by
/// init and its status is unknown: it counts as `stopped`.
#[derive(Debug, Clone)]
pub struct Processes {
    run_dir: PathBuf,
    specs: BTreeMap<String, ProcessSpec>,
    stop_timeout: Duration,
    /// Pids this host started whose exit it has not recorded yet. Such a
    /// process is still the service's even while it is between fork and exec
    /// (its command line is the host's) or exited but not yet reaped: reporting
    /// it `stopped` then would hide how a one-shot service ended.
    unreaped: Arc<Mutex<std::collections::HashSet<i32>>>,
}

/// A pidfile or exit record in the run directory, read through its handle: a
/// link or anything but a regular file there holds no record.
fn read_record(folder: std::os::fd::BorrowedFd<'_>, name: &str) -> io::Result<Option<String>> {
    let file = match crate::beneath::open_file_nofollow(folder, name.as_ref()) {
        Ok(Some(file)) => file,
        Ok(None) => return Ok(None),
        Err(e)
            if e.kind() == io::ErrorKind::InvalidInput || e.raw_os_error() == Some(libc::ELOOP) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    let mut text = String::new();
    // A record is two short lines.
    file.take(4096).read_to_string(&mut text)?;
    Ok(Some(text))
}

/// How long to wait for a process killed with SIGKILL to go.
const KILL_WAIT: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(20);

impl Processes {
    /// Pidfiles go to `run_dir`, created on first start. Stop waits 10 s for a
    /// service to exit after SIGTERM.
    pub fn new(run_dir: impl Into<PathBuf>) -> Self {
        Self {
            run_dir: run_dir.into(),
            specs: BTreeMap::new(),
            stop_timeout: Duration::from_secs(10),
            unreaped: Arc::default(),
        }
    }

    pub fn with_service(mut self, name: impl Into<String>, spec: ProcessSpec) -> Self {
        self.specs.insert(name.into(), spec);
        self
    }

    pub fn with_stop_timeout(mut self, timeout: Duration) -> Self {
        self.stop_timeout = timeout;
        self
    }

    pub fn pidfile(&self, name: &str) -> PathBuf {
        self.run_dir.join(format!("{name}.pid"))
    }

    /// Where the exit record of `name` is (the tests look at it).
    #[cfg(test)]
    fn exitfile(&self, name: &str) -> PathBuf {
        self.run_dir.join(format!("{name}.exit"))
    }

    /// The run directory's handle, if it exists: pidfiles and exit records are
    /// read, written and removed only through it, never through a link.
    fn run_folder(&self) -> CapResult<Option<cap_std::fs::Dir>> {
        match crate::beneath::open_real_dir(&self.run_dir) {
            Ok(dir) => Ok(Some(dir)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(CapError::from_io(
                format!("run directory {}", self.run_dir.display()),
                &e,
            )),
        }
    }

    fn spec(&self, name: &str) -> CapResult<&ProcessSpec> {
        check_name(name)?;
        self.specs.get(name).ok_or_else(|| {
            CapError::not_found(format!(
                "service {name} is not configured on this host: no program is set for it"
            ))
        })
    }

    /// The pid recorded for `name`, when that process is alive and is the service.
    fn running(&self, name: &str, spec: &ProcessSpec) -> CapResult<Option<Recorded>> {
        let Some(rec) = self.recorded(name)? else {
            return Ok(None);
        };
        let alive = proc_stat(rec.pid)
            .is_some_and(|st| st.alive() && rec.start.is_none_or(|s| s == st.start));
        // The pid and its start time name one process for good (a recycled pid
        // starts later). Only a pidfile without a start time falls back to the
        // command line — which a start script's `exec` of the real program
        // changes, so it cannot be required when the start time is known.
        let is_service =
            rec.start.is_some() || proc_cmdline(rec.pid).is_some_and(|c| spec.matches(&c));
        if alive && is_service {
            Ok(Some(rec))
        } else {
            Ok(None)
        }
    }

    fn recorded(&self, name: &str) -> CapResult<Option<Recorded>> {
        let Some(folder) = self.run_folder()? else {
            return Ok(None);
        };
        let text = match read_record(folder.as_fd(), &format!("{name}.pid")) {
            Ok(Some(t)) => t,
            Ok(None) => return Ok(None),
            Err(e) => {
                return Err(CapError::from_io(
                    format!("service {name}: pidfile {}", self.pidfile(name).display()),
                    &e,
                ));
            }
        };
        let mut lines = text.lines();
        // A pidfile that does not hold a pid (half written, edited by hand) names
        // no process: the service counts as not running.
        let Some(pid) = lines
            .next()
            .and_then(|l| l.trim().parse::<i32>().ok())
            .filter(|p| *p > 0)
        else {
            return Ok(None);
        };
        let start = lines.next().and_then(|l| l.trim().parse::<u64>().ok());
        Ok(Some(Recorded { pid, start }))
    }

    fn clear(&self, name: &str) -> CapResult<()> {
        let Some(folder) = self.run_folder()? else {
            return Ok(());
        };
        for file in [format!("{name}.pid"), format!("{name}.exit")] {
            match rustix::fs::unlinkat(&folder, file.as_str(), rustix::fs::AtFlags::empty()) {
                Ok(()) | Err(rustix::io::Errno::NOENT) => {}
                Err(e) => {
                    return Err(CapError::from_io(
                        format!("service {name}: {}", self.run_dir.join(&file).display()),
                        &e.into(),
                    ));
                }
            }
        }
        Ok(())
    }

    fn status_now(&self, name: &str) -> CapResult<State> {
        let spec = self.spec(name)?;
        if self.running(name, spec)?.is_some() {
            return Ok(State::Running);
        }
        let Some(rec) = self.recorded(name)? else {
            return Ok(State::Stopped);
        };
        if self.is_unreaped(rec.pid) {
            return Ok(State::Running);
        }
        let failed = self
            .run_folder()?
            .and_then(|folder| read_record(folder.as_fd(), &format!("{name}.exit")).ok())
            .flatten()
            .and_then(|t| ExitRecord::parse(&t))
            .is_some_and(|e| e.pid == rec.pid && e.failed());
        Ok(if failed {
            State::Failed
        } else {
            State::Stopped
        })
    }

    fn spawn(&self, name: &str, spec: &ProcessSpec) -> CapResult<()> {
        let what =
            |e: &io::Error, step: &str| CapError::from_io(format!("service {name}: {step}"), e);
        let folder = crate::beneath::open_private_dir(&self.run_dir)
            .map_err(|e| what(&e, &format!("run directory {}", self.run_dir.display())))?;
        self.clear(name)?;
        let (out, err) = match &spec.log {
            Some(log) => {
                // The log folder may be the product's, writable by it and by its
                // plugin: no link on the output file's path is followed.
                let f = crate::beneath::open_append_nofollow(log)
                    .map_err(|e| what(&e, &format!("output file {}", log.display())))?;
                let f2 = f.try_clone().map_err(|e| what(&e, "output file"))?;
                (Stdio::from(f), Stdio::from(f2))
            }
            None => (Stdio::null(), Stdio::null()),
        };
        let mut cmd = std::process::Command::new(&spec.program);
        cmd.args(&spec.args)
            .env_clear()
            .env("PATH", SAFE_PATH)
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            // Its own process group: the host's Ctrl-C does not reach it, and stop
            // can signal everything the service started.
            .process_group(0);
        if let Some(dir) = &spec.cwd {
            cmd.current_dir(dir);
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| what(&e, &format!("starting {}", spec.program.display())))?;
        let pid = child.id() as i32;
        // The start time is fixed at fork, so it is right even if the process
        // exited already; it is what tells this process from a later one with the
        // same pid.
        let start = proc_stat(pid).map(|s| s.start).unwrap_or(0);
        let (pidfile, exitfile) = (format!("{name}.pid"), format!("{name}.exit"));
        let written = crate::beneath::replace_file(
            folder.as_fd(),
            &pidfile,
            format!("{pid}\n{start}\n").as_bytes(),
        );
        if let Err(e) = written {
            let _ = child.kill();
            let _ = child.wait();
            return Err(what(
                &e,
                &format!("pidfile {}", self.pidfile(name).display()),
            ));
        }
        // Reaping on a thread of its own keeps the process from lingering as a
        // zombie of a long-running host (the agent) and records how it ended.
        let unreaped = self.unreaped.clone();
        lock(&unreaped).insert(pid);
        std::thread::spawn(move || {
            let _done = Unreaped(unreaped, pid);
            if let Ok(status) = child.wait() {
                let still_ours = read_record(folder.as_fd(), &pidfile)
                    .ok()
                    .flatten()
                    .and_then(|t| t.lines().next().and_then(|l| l.trim().parse::<i32>().ok()))
                    == Some(pid);
                if still_ours {
                    let record = ExitRecord::from_status(pid, status).to_string();
                    let _ =
                        crate::beneath::replace_file(folder.as_fd(), &exitfile, record.as_bytes());
                }
            }
        });
        Ok(())
    }

    fn is_unreaped(&self, pid: i32) -> bool {
        lock(&self.unreaped).contains(&pid)
    }

    async fn stop_now(&self, name: &str) -> CapResult<()> {
        let spec = self.spec(name)?;
        let Some(rec) = self.running(name, spec)? else {
            return self.clear(name);
        };
        let pid = Pid::from_raw(rec.pid).expect("recorded pids are positive");
        let own_group = proc_stat(rec.pid).is_some_and(|s| s.pgrp == rec.pid);
        let signal = |sig: Signal| {
            let r = if own_group {
                rustix::process::kill_process_group(pid, sig)
            } else {
                rustix::process::kill_process(pid, sig)
            };
            match r {
                Ok(()) | Err(rustix::io::Errno::SRCH) => Ok(()),
                Err(e) => Err(CapError::io(format!(
                    "service {name}: signalling process {}: {e}",
                    rec.pid
                ))),
            }
        };
        let gone = || {
            !proc_stat(rec.pid)
                .is_some_and(|st| st.alive() && rec.start.is_none_or(|s| s == st.start))
        };

        signal(Signal::TERM)?;
        if !wait_until(self.stop_timeout, gone).await {
            tracing::warn!(
                service = name,
                pid = rec.pid,
                "no exit {:?} after SIGTERM; sending SIGKILL",
                self.stop_timeout
            );
            signal(Signal::KILL)?;
            if !wait_until(KILL_WAIT, gone).await {
                return Err(CapError::timeout(format!(
                    "service {name}: process {} did not exit after SIGKILL",
                    rec.pid
                )));
            }
        }
        // The service's main process is gone; whatever else of its group ignored
        // SIGTERM goes with it rather than outliving a stopped service.
        if own_group && rustix::process::test_kill_process_group(pid).is_ok() {
            let _ = rustix::process::kill_process_group(pid, Signal::KILL);
        }
        self.clear(name)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The set stays consistent whatever a panicking holder did: inserts and
    // removes are single operations.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Takes a reaped pid out of [`Processes::unreaped`] once its exit is
/// recorded, or when the reaper gives up.
struct Unreaped(Arc<Mutex<std::collections::HashSet<i32>>>, i32);

impl Drop for Unreaped {
    fn drop(&mut self) {
        lock(&self.0).remove(&self.1);
    }
}

async fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
}

impl ServiceManager for Processes {
    fn status<'a>(&'a self, name: &'a str) -> BoxFuture<'a, CapResult<State>> {
        Box::pin(async move { self.status_now(name) })
    }

    fn start<'a>(&'a self, name: &'a str) -> BoxFuture<'a, CapResult<()>> {
        Box::pin(async move {
            let spec = self.spec(name)?;
            if self.running(name, spec)?.is_some() {
                return Ok(());
            }
            self.spawn(name, spec)
        })
    }

    fn stop<'a>(&'a self, name: &'a str) -> BoxFuture<'a, CapResult<()>> {
        Box::pin(self.stop_now(name))
    }
}

/// What a pidfile says.
struct Recorded {
    pid: i32,
    /// Start time in clock ticks since boot; `None` in a pidfile with the pid only.
    start: Option<u64>,
}

/// How a service process ended, as its reaper wrote it: `<pid> exit <code>` or
/// `<pid> signal <number>`.
#[derive(Debug, PartialEq, Eq)]
struct ExitRecord {
    pid: i32,
    code: Option<i32>,
    signal: Option<i32>,
}

impl ExitRecord {
    fn from_status(pid: i32, status: ExitStatus) -> Self {
        Self {
            pid,
            code: status.code(),
            signal: status.signal(),
        }
    }

    fn parse(text: &str) -> Option<Self> {
        let mut words = text.split_whitespace();
        let pid = words.next()?.parse().ok()?;
        let kind = words.next()?;
        let value = words.next()?.parse().ok()?;
        match kind {
            "exit" => Some(Self {
                pid,
                code: Some(value),
                signal: None,
            }),
            "signal" => Some(Self {
                pid,
                code: None,
                signal: Some(value),
            }),
            _ => None,
        }
    }

    /// systemd's notion of a clean end: exit code 0, or one of the signals a
    /// service is normally stopped with.
    fn failed(&self) -> bool {
        match (self.code, self.signal) {
            (Some(code), _) => code != 0,
            (None, Some(sig)) => {
                ![libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGPIPE].contains(&sig)
            }
            (None, None) => true,
        }
    }
}

impl std::fmt::Display for ExitRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.code, self.signal) {
            (Some(code), _) => writeln!(f, "{} exit {code}", self.pid),
            (None, Some(sig)) => writeln!(f, "{} signal {sig}", self.pid),
            (None, None) => writeln!(f, "{} exit -1", self.pid),
        }
    }
}

/// The fields of `/proc/<pid>/stat` that identify a process.
struct ProcStat {
    state: char,
    pgrp: i32,
    /// Start time in clock ticks since boot.
    start: u64,
}

impl ProcStat {
    /// Running or sleeping, not a zombie waiting to be reaped.
    fn alive(&self) -> bool {
        !matches!(self.state, 'Z' | 'X' | 'x')
    }
}

fn proc_stat(pid: i32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may itself hold spaces and
    // parentheses; the fields after the last `)` are plain.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): field n is fields[n - 3].
    Some(ProcStat {
        state: fields.first()?.chars().next()?,
        pgrp: fields.get(2)?.parse().ok()?,
        start: fields.get(19)?.parse().ok()?,
    })
}

fn proc_cmdline(pid: i32) -> Option<Vec<Vec<u8>>> {
    let mut bytes = Vec::new();
    File::open(format!("/proc/{pid}/cmdline"))
        .ok()?
        .read_to_end(&mut bytes)
        .ok()?;
    if bytes.is_empty() {
        return None;
    }
    Some(
        bytes
            .split(|&b| b == 0)
            .filter(|a| !a.is_empty())
            .map(<[u8]>::to_vec)
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grants::DirGrant;
    use posup_world::latest::services::Host as _;
    use posup_world::latest::types::ErrorKind;

    /// Waits for a condition that the code under test brings about; the bound
    /// only keeps a broken build from hanging.
    async fn eventually(mut f: impl FnMut() -> bool) -> bool {
        wait_until(Duration::from_secs(20), &mut f).await
    }

    fn sleeper(tmp: &Path) -> Processes {
        Processes::new(tmp.join("run"))
            .with_service(
                "kiosk",
                ProcessSpec::new("sleep")
                    .args(["300"])
                    .log(tmp.join("out/kiosk.out")),
            )
            .with_stop_timeout(Duration::from_secs(5))
    }

    fn pid_of(p: &Processes, name: &str) -> i32 {
        p.recorded(name).unwrap().expect("a pidfile").pid
    }

    fn gone(pid: i32) -> bool {
        !proc_stat(pid).is_some_and(|s| s.alive())
    }

    #[tokio::test]
    async fn start_status_stop_restart() {
        let tmp = tempfile::tempdir().unwrap();
        let p = sleeper(tmp.path());
        assert_eq!(p.status("kiosk").await.unwrap(), State::Stopped);
        p.start("kiosk").await.unwrap();
        assert_eq!(p.status("kiosk").await.unwrap(), State::Running);
        let pid = pid_of(&p, "kiosk");
        assert_eq!(
            proc_stat(pid).unwrap().pgrp,
            pid,
            "the service leads its own process group"
        );

        // Starting a running service changes nothing.
        p.start("kiosk").await.unwrap();
        assert_eq!(pid_of(&p, "kiosk"), pid);

        p.restart("kiosk").await.unwrap();
        let pid2 = pid_of(&p, "kiosk");
        assert_ne!(pid2, pid);
        assert!(gone(pid));
        assert_eq!(p.status("kiosk").await.unwrap(), State::Running);

        p.stop("kiosk").await.unwrap();
        assert!(gone(pid2));
        assert_eq!(p.status("kiosk").await.unwrap(), State::Stopped);
        assert!(!p.pidfile("kiosk").exists());
        // Stopping a stopped service is fine too.
        p.stop("kiosk").await.unwrap();
        assert!(tmp.path().join("out/kiosk.out").exists());

        let err = p.status("sshd").await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::NotFound);
        assert!(err.message.contains("sshd"), "{}", err.message);
    }

    /// A link planted in the output file's path, or at the pidfile, is never
    /// followed: the service is refused, and nothing is written where it led.
    #[tokio::test]
    async fn links_on_the_output_or_pidfile_path_are_never_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let elsewhere = tmp.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, tmp.path().join("out")).unwrap();
        let p = sleeper(tmp.path());
        let err = p.start("kiosk").await.unwrap_err();
        assert!(err.message.contains("output file"), "{}", err.message);
        assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
        assert_eq!(p.status("kiosk").await.unwrap(), State::Stopped);

        // A pidfile that is a link to another file names no process, and starting
        // replaces the link instead of writing through it.
        std::fs::remove_file(tmp.path().join("out")).unwrap();
        let victim = tmp.path().join("victim");
        std::fs::write(&victim, format!("{}\n", std::process::id())).unwrap();
        std::fs::create_dir_all(tmp.path().join("run")).unwrap();
        std::os::unix::fs::symlink(&victim, p.pidfile("kiosk")).unwrap();
        assert!(p.recorded("kiosk").unwrap().is_none());
        p.start("kiosk").await.unwrap();
        assert_eq!(
            std::fs::read_to_string(&victim).unwrap(),
            format!("{}\n", std::process::id())
        );
        assert!(
            !std::fs::symlink_metadata(p.pidfile("kiosk"))
                .unwrap()
                .is_symlink()
        );
        p.stop("kiosk").await.unwrap();
    }

    #[tokio::test]
    async fn pidfiles_carry_the_state_to_a_new_manager() {
        let tmp = tempfile::tempdir().unwrap();
        sleeper(tmp.path()).start("kiosk").await.unwrap();
        // Another `posup apply`: a new manager over the same run directory.
        let again = sleeper(tmp.path());
        let pid = pid_of(&again, "kiosk");
        assert_eq!(again.status("kiosk").await.unwrap(), State::Running);
        again.start("kiosk").await.unwrap();
        assert_eq!(pid_of(&again, "kiosk"), pid);
        again.stop("kiosk").await.unwrap();
        assert!(gone(pid));
        assert_eq!(
            sleeper(tmp.path()).status("kiosk").await.unwrap(),
            State::Stopped
        );
    }

    #[tokio::test]
    async fn a_recycled_pid_is_neither_the_service_nor_signalled() {
        let tmp = tempfile::tempdir().unwrap();
        let p = sleeper(tmp.path());
        std::fs::create_dir_all(tmp.path().join("run")).unwrap();

        // Another program now has the recorded pid.
        let mut other = std::process::Command::new("tail")
            .args(["-f", "/dev/null"])
            .spawn()
            .unwrap();
        std::fs::write(p.pidfile("kiosk"), format!("{}\n", other.id())).unwrap();
        assert_eq!(p.status("kiosk").await.unwrap(), State::Stopped);
        p.stop("kiosk").await.unwrap();
        assert!(
            other.try_wait().unwrap().is_none(),
            "an unrelated process was signalled"
        );
        other.kill().unwrap();
        other.wait().unwrap();

        // The same program, but not the process that was started: another start time.
        let mut same = std::process::Command::new("sleep")
            .arg("300")
            .spawn()
            .unwrap();
        let start = proc_stat(same.id() as i32).unwrap().start;
        std::fs::write(
            p.pidfile("kiosk"),
            format!("{}\n{}\n", same.id(), start + 1),
        )
        .unwrap();
        assert_eq!(p.status("kiosk").await.unwrap(), State::Stopped);
        p.stop("kiosk").await.unwrap();
        assert!(
            same.try_wait().unwrap().is_none(),
            "an unrelated sleep was signalled"
        );
        same.kill().unwrap();
        same.wait().unwrap();
    }

    /// A caller that waits for a one-shot service (UKM 5's `up.sh`) to end
    /// must see how it ended, never "stopped" in the moment between its exit
    /// and the reaper's record.
    #[tokio::test]
    async fn a_service_seen_ending_has_its_exit_recorded() {
        let tmp = tempfile::tempdir().unwrap();
        let p = Processes::new(tmp.path().join("run"))
            .with_service("bad", ProcessSpec::new("/bin/sh").args(["-c", "exit 3"]));
        for _ in 0..200 {
            p.start("bad").await.unwrap();
            let state = loop {
                match p.status("bad").await.unwrap() {
                    State::Running => std::thread::yield_now(),
                    other => break other,
                }
            };
            assert_eq!(state, State::Failed);
            p.stop("bad").await.unwrap();
        }
    }

    #[tokio::test]
    async fn a_service_that_exits_non_zero_has_failed() {
        let tmp = tempfile::tempdir().unwrap();
        let p = Processes::new(tmp.path().join("run"))
            .with_service("bad", ProcessSpec::new("/bin/sh").args(["-c", "exit 3"]))
            .with_service("done", ProcessSpec::new("/bin/sh").args(["-c", "exit 0"]));
        p.start("bad").await.unwrap();
        p.start("done").await.unwrap();
        assert!(eventually(|| p.exitfile("bad").exists() && p.exitfile("done").exists()).await);
        assert_eq!(p.status("bad").await.unwrap(), State::Failed);
        assert_eq!(p.status("done").await.unwrap(), State::Stopped);
        // Stopping a failed service clears the failure.
        p.stop("bad").await.unwrap();
        assert_eq!(p.status("bad").await.unwrap(), State::Stopped);
    }

    /// A product's start script often ends in `exec` of the real program, so
    /// the process no longer runs the configured command: it is still the
    /// service (same pid, same start time), and stop ends it.
    #[tokio::test]
    async fn a_service_whose_script_execs_its_program_is_known_and_stopped() {
        let tmp = tempfile::tempdir().unwrap();
        let p = Processes::new(tmp.path().join("run"))
            .with_service(
                "pos",
                ProcessSpec::new("/bin/sh").args(["-c", "exec sleep 300"]),
            )
            .with_stop_timeout(Duration::from_secs(5));
        p.start("pos").await.unwrap();
        let pid = pid_of(&p, "pos");
        assert!(
            eventually(
                || proc_cmdline(pid).is_some_and(|c| c.first().is_some_and(|a| a == b"sleep"))
            )
            .await
        );
        assert_eq!(p.status("pos").await.unwrap(), State::Running);
        p.stop("pos").await.unwrap();
        assert!(
            eventually(|| gone(pid)).await,
            "the exec'd program was stopped"
        );
        assert_eq!(p.status("pos").await.unwrap(), State::Stopped);
    }

    #[tokio::test]
    async fn stop_kills_a_group_that_ignores_sigterm() {
        let tmp = tempfile::tempdir().unwrap();
        let children = tmp.path().join("children");
        let script = format!(
            "trap '' TERM; sleep 300 & echo $! > {}; while :; do sleep 1; done",
            children.display()
        );
        let p = Processes::new(tmp.path().join("run"))
            .with_service(
                "stubborn",
                ProcessSpec::new("/bin/sh").args(["-c", &script]),
            )
            .with_stop_timeout(Duration::from_millis(300));
        p.start("stubborn").await.unwrap();
        assert!(
            eventually(|| std::fs::read_to_string(&children).is_ok_and(|t| t.ends_with('\n')))
                .await
        );
        let child: i32 = std::fs::read_to_string(&children)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let pid = pid_of(&p, "stubborn");
        p.stop("stubborn").await.unwrap();
        assert!(gone(pid));
        assert!(
            eventually(|| gone(child)).await,
            "the service's child outlived it"
        );
        assert_eq!(p.status("stubborn").await.unwrap(), State::Stopped);
    }

    #[test]
    fn command_lines_are_matched_by_program() {
        let spec = ProcessSpec::new("/opt/posup/bin/posup");
        let args = |a: &[&str]| a.iter().map(|s| s.as_bytes().to_vec()).collect::<Vec<_>>();
        assert!(spec.matches(&args(&["/opt/posup/bin/posup", "sim-product", "kiosk"])));
        assert!(spec.matches(&args(&["/bin/sh", "/opt/posup/bin/posup"])));
        assert!(!spec.matches(&args(&["/usr/bin/tail", "-f", "/opt/posup/bin/posup"])));
        assert!(!spec.matches(&args(&["/usr/bin/posupx"])));
    }

    #[test]
    fn systemctl_show_output() {
        let s = |t| parse_show("kiosk", "kiosk.service", t);
        assert_eq!(
            s("LoadState=loaded\nActiveState=active\n").unwrap(),
            State::Running
        );
        assert_eq!(
            s("ActiveState=inactive\nLoadState=loaded\n").unwrap(),
            State::Stopped
        );
        assert_eq!(
            s("LoadState=loaded\nActiveState=failed\n").unwrap(),
            State::Failed
        );
        let err = s("LoadState=not-found\nActiveState=inactive\n").unwrap_err();
        assert_eq!(err.kind, ErrorKind::NotFound);
        assert!(err.message.contains("kiosk.service"), "{}", err.message);
        assert_eq!(
            Systemd::new()
                .with_unit("dIceCash", "dicecash.service")
                .unit("dIceCash"),
            "dicecash.service"
        );
        assert_eq!(Systemd::new().unit("DTPrint"), "DTPrint.service");
    }

    #[test]
    fn exit_records() {
        let r = ExitRecord::parse("12 exit 3\n").unwrap();
        assert!(r.failed());
        assert!(!ExitRecord::parse("12 exit 0").unwrap().failed());
        assert!(!ExitRecord::parse("12 signal 15").unwrap().failed());
        assert!(ExitRecord::parse("12 signal 9").unwrap().failed());
        assert_eq!(ExitRecord::parse(&r.to_string()).unwrap(), r);
        assert!(ExitRecord::parse("garbage").is_none());
    }

    fn grants(tmp: &Path, scripts: bool) -> Grants {
        Grants {
            dirs: vec![
                DirGrant {
                    dir: Dir::Staging,
                    host: tmp.join("staging"),
                    write: true,
                },
                DirGrant {
                    dir: Dir::Product,
                    host: tmp.join("product"),
                    write: true,
                },
            ],
            services: vec!["kiosk".into()],
            scripts,
            ..Grants::default()
        }
    }

    /// In a call that only looks (precheck among them), a granted service is
    /// queried but never started or stopped, and a granted script does not run.
    #[tokio::test]
    async fn a_look_only_call_changes_no_service_and_runs_no_script() {
        let tmp = tempfile::tempdir().unwrap();
        for d in ["staging/upd", "product"] {
            std::fs::create_dir_all(tmp.path().join(d)).unwrap();
        }
        std::fs::write(tmp.path().join("staging/upd/x.sh"), "touch ran\n").unwrap();
        let g = grants(tmp.path(), true).read_only();
        let roots = Arc::new(Roots::open(&g).unwrap());
        let manager: Arc<dyn ServiceManager> = Arc::new(sleeper(tmp.path()));
        let mut s = ServicesState::new(Arc::new(g), roots, Work::default(), Some(manager));
        assert_eq!(s.status("kiosk".into()).await.unwrap(), State::Stopped);
        let err = s.start("kiosk".into()).await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::Denied, "{}", err.message);
        assert_eq!(s.status("kiosk".into()).await.unwrap(), State::Stopped);
        let err = s
            .run_script("/staging/upd/x.sh".into(), vec![], 10)
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::Invalid, "{}", err.message);
        assert!(!tmp.path().join("staging/upd/ran").exists());
    }

    fn state(tmp: &Path, scripts: bool) -> ServicesState {
        for d in ["staging/upd", "product"] {
            std::fs::create_dir_all(tmp.join(d)).unwrap();
        }
        let manager: Arc<dyn ServiceManager> = Arc::new(sleeper(tmp));
        let g = grants(tmp, scripts);
        let roots = Arc::new(Roots::open(&g).unwrap());
        ServicesState::new(Arc::new(g), roots, Work::default(), Some(manager))
    }

    #[tokio::test]
    async fn only_granted_services_are_reached() {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = state(tmp.path(), false);
        let err = s.status("sshd".into()).await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::Denied);
        assert_eq!(err.message, "service sshd is not granted to this plugin");
        let err = s.stop("sshd".into()).await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::Denied);
        assert_eq!(s.status("kiosk".into()).await.unwrap(), State::Stopped);

        let g = grants(tmp.path(), false);
        let roots = Arc::new(Roots::open(&g).unwrap());
        let mut none = ServicesState::new(Arc::new(g), roots, Work::default(), None);
        let err = none.start("kiosk".into()).await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::Denied);
        assert!(
            err.message.contains("no service manager"),
            "{}",
            err.message
        );
    }

    #[tokio::test]
    async fn scripts_need_the_grant_and_staging() {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = state(tmp.path(), false);
        std::fs::write(tmp.path().join("staging/upd/install.sh"), "exit 0\n").unwrap();
        let err = s
            .run_script("/staging/upd/install.sh".into(), vec![], 10)
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::Denied);
        assert!(err.message.contains("not granted"), "{}", err.message);

        let mut s = state(tmp.path(), true);
        std::fs::write(tmp.path().join("product/evil.sh"), "exit 0\n").unwrap();
        let err = s
            .run_script("/product/evil.sh".into(), vec![], 10)
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::Invalid);
        assert!(err.message.contains("/staging"), "{}", err.message);
        let err = s
            .run_script("/staging/upd/none.sh".into(), vec![], 10)
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::NotFound);
        let err = s
            .run_script("/staging/upd/install.sh".into(), vec![], 0)
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::Invalid);
    }

    #[tokio::test]
    async fn a_script_runs_in_its_folder_with_a_clean_environment() {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = state(tmp.path(), true);
        std::fs::write(
            tmp.path().join("staging/upd/install.sh"),
            "echo \"dir=$(pwd)\"\necho \"PATH=$PATH\"\necho \"HOME=${HOME-unset}\"\necho \"args=$1,$2\"\necho oops >&2\nexit 7\n",
        )
        .unwrap();
        let r = s
            .run_script(
                "/staging/upd/install.sh".into(),
                vec!["a b".into(), "c".into()],
                30,
            )
            .await
            .unwrap();
        assert_eq!(r.exit_code, 7);
        let dir = tmp.path().join("staging/upd").canonicalize().unwrap();
        assert!(
            r.output.contains(&format!("dir={}\n", dir.display())),
            "{}",
            r.output
        );
        assert!(
            r.output.contains(&format!("PATH={SAFE_PATH}\n")),
            "{}",
            r.output
        );
        assert!(r.output.contains("HOME=unset\n"), "{}", r.output);
        assert!(r.output.contains("args=a b,c\n"), "{}", r.output);
        assert!(r.output.contains("oops\n"), "{}", r.output);
    }

    #[tokio::test]
    async fn script_output_keeps_its_end() {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = state(tmp.path(), true);
        std::fs::write(
            tmp.path().join("staging/upd/noisy.sh"),
            "i=0\nwhile [ $i -lt 20000 ]; do echo \"line $i of the noisy script\"; i=$((i+1)); done\n",
        )
        .unwrap();
        let r = s
            .run_script("/staging/upd/noisy.sh".into(), vec![], 60)
            .await
            .unwrap();
        assert_eq!(r.exit_code, 0);
        assert!(r.output.len() <= MAX_SCRIPT_OUTPUT);
        assert!(r.output.len() > MAX_SCRIPT_OUTPUT - 100);
        assert!(
            r.output.starts_with("line "),
            "starts mid-line: {:?}",
            &r.output[..40]
        );
        assert!(r.output.ends_with("line 19999 of the noisy script\n"));
    }

    #[tokio::test]
    async fn a_script_over_its_time_is_killed_with_its_children() {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = state(tmp.path(), true);
        std::fs::write(
            tmp.path().join("staging/upd/hang.sh"),
            "sleep 300 &\necho $! > child.pid\necho waiting\nwait\n",
        )
        .unwrap();
        let err = s
            .run_script("/staging/upd/hang.sh".into(), vec![], 1)
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::Timeout);
        assert!(
            err.message.contains("/staging/upd/hang.sh"),
            "{}",
            err.message
        );
        assert!(err.message.contains("waiting"), "{}", err.message);
        let child: i32 = std::fs::read_to_string(tmp.path().join("staging/upd/child.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(
            eventually(|| gone(child)).await,
            "the script's background child survived"
        );
    }
}
