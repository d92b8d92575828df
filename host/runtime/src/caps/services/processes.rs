//! The process backend: programs posup starts and supervises itself, their
//! state kept in pidfiles and exit records under the agent's own folder.

use super::{SAFE_PATH, ServiceManager, State, check_name};
use crate::caps::prompt::BoxFuture;
use crate::caps::{CapError, CapResult};
use rustix::process::{Pid, Signal};
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

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
    pub(super) fn matches(&self, cmdline: &[Vec<u8>]) -> bool {
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
pub(super) fn read_record(
    folder: std::os::fd::BorrowedFd<'_>,
    name: &str,
) -> io::Result<Option<String>> {
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
pub(super) const KILL_WAIT: Duration = Duration::from_secs(5);
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
    pub(super) fn exitfile(&self, name: &str) -> PathBuf {
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

    pub(super) fn recorded(&self, name: &str) -> CapResult<Option<Recorded>> {
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
pub(super) struct Unreaped(Arc<Mutex<std::collections::HashSet<i32>>>, i32);

impl Drop for Unreaped {
    fn drop(&mut self) {
        lock(&self.0).remove(&self.1);
    }
}

pub(super) async fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
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
pub(super) struct Recorded {
    pub(super) pid: i32,
    /// Start time in clock ticks since boot; `None` in a pidfile with the pid only.
    pub(super) start: Option<u64>,
}

/// How a service process ended, as its reaper wrote it: `<pid> exit <code>` or
/// `<pid> signal <number>`.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct ExitRecord {
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

    pub(super) fn parse(text: &str) -> Option<Self> {
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
    pub(super) fn failed(&self) -> bool {
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

/// The most of a command line read to compare it with a service's: far more
/// than any service's program and arguments.
pub(super) const CMDLINE_MAX: usize = 64 * 1024;

/// The fields of `/proc/<pid>/stat` that identify a process.
pub(super) struct ProcStat {
    pub(super) state: char,
    pub(super) pgrp: i32,
    /// Start time in clock ticks since boot.
    pub(super) start: u64,
}

impl ProcStat {
    /// Running or sleeping, not a zombie waiting to be reaped.
    pub(super) fn alive(&self) -> bool {
        !matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// `/proc`, opened once: a process's files are read beneath this handle, by a
/// pid this host formats itself.
fn proc_root() -> Option<&'static cap_std::fs::Dir> {
    static PROC: OnceLock<Option<cap_std::fs::Dir>> = OnceLock::new();
    PROC.get_or_init(|| crate::beneath::open_real_dir(Path::new("/proc")).ok())
        .as_ref()
}

/// Up to `max` bytes of `/proc/<pid>/<file>`; `None` once the process is gone.
fn proc_file(pid: i32, file: &str, max: usize) -> Option<Vec<u8>> {
    if pid <= 0 {
        return None;
    }
    let opened = proc_root()?.open(format!("{pid}/{file}")).ok()?;
    let mut bytes = Vec::new();
    opened
        .into_std()
        .take(max as u64)
        .read_to_end(&mut bytes)
        .ok()?;
    Some(bytes)
}

pub(super) fn proc_stat(pid: i32) -> Option<ProcStat> {
    // The command name is at most 16 bytes: the whole line is far shorter.
    let text = String::from_utf8(proc_file(pid, "stat", 4096)?).ok()?;
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

pub(super) fn proc_cmdline(pid: i32) -> Option<Vec<Vec<u8>>> {
    let bytes = proc_file(pid, "cmdline", CMDLINE_MAX)?;
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
