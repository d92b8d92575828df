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

mod processes;
mod scripts;
mod systemd;

pub use processes::{ProcessSpec, Processes};
use scripts::run_script;
pub use systemd::Systemd;

use std::io::{self};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use posup_world::latest::services;
/// The service states and script results of the WIT interface, which a
/// [`ServiceManager`] speaks.
pub use posup_world::latest::services::{ScriptResult, State};
use posup_world::latest::types::{Dir, Error as WitError};
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
    /// a regular file under `/staging`, resolved beneath it and opened there.
    fn script(&self, path: &str) -> CapResult<scripts::Script> {
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
        let file = match crate::beneath::open_file_nofollow(folder.as_fd(), &name) {
            Ok(Some(file)) => file,
            Ok(None) => return Err(CapError::not_found(format!("{shown}: does not exist"))),
            Err(e) if e.kind() == io::ErrorKind::InvalidInput => {
                return Err(CapError::invalid(format!("{shown}: {e}")));
            }
            Err(e) => return Err(crate::beneath::resolve_error(&shown, "opening", &e)),
        };
        Ok(scripts::Script { folder, file, name })
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
        let script = self.script(&path)?;
        if timeout_secs == 0 {
            return Err(CapError::invalid(format!(
                "script {path}: the timeout must be at least 1 second"
            ))
            .into());
        }
        let timeout = Duration::from_secs(timeout_secs.into()).min(MAX_SCRIPT_TIMEOUT);
        Ok(super::counted(&self.work, run_script(&script, &path, &args, timeout)).await?)
    }
}

pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> &mut ServicesState,
) -> wasmtime::Result<()> {
    services::add_to_linker::<T, HasSelf<ServicesState>>(linker, get)
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

#[cfg(test)]
mod tests {
    use super::processes::{ExitRecord, proc_cmdline, proc_stat, wait_until};
    use super::systemd::parse_show;
    use super::*;
    use crate::grants::DirGrant;
    use posup_world::latest::services::Host as _;
    use posup_world::latest::types::ErrorKind;
    use std::path::Path;

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

    /// A process's command line is the kernel's to bound (up to a quarter of
    /// its stack limit); reading it for the check keeps no more than the host
    /// needs to compare it with a service's program and arguments.
    #[test]
    fn a_long_command_line_is_read_only_up_to_the_bound() {
        let long = "x".repeat(super::processes::CMDLINE_MAX + 4096);
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 30", "sh", &long])
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        // The kernel shows the new command line only once exec has set up the
        // process's stack, a moment after `spawn` returns.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let args = loop {
            match proc_cmdline(pid) {
                Some(args) => break args,
                None if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                None => panic!("no command line for the child"),
            }
        };
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(&args[..2], &[b"sh".to_vec(), b"-c".to_vec()]);
        let read: usize = args.iter().map(Vec::len).sum();
        assert!(
            read <= super::processes::CMDLINE_MAX,
            "{read} bytes of command line read"
        );
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

    /// The script that runs is the file checked, whatever its name comes to
    /// hold after the check: a plugin that swaps it for a link to a file outside
    /// `/staging` still runs what it was allowed to.
    #[tokio::test]
    async fn the_script_checked_is_the_script_run() {
        let tmp = tempfile::tempdir().unwrap();
        let s = state(tmp.path(), true);
        let script = tmp.path().join("staging/upd/install.sh");
        std::fs::write(
            &script,
            "echo checked\ncd \"$(dirname \"$0\")\" && pwd -P\n",
        )
        .unwrap();
        std::fs::write(tmp.path().join("product/other.sh"), "echo other\n").unwrap();
        let checked = s.script("/staging/upd/install.sh").unwrap();
        std::fs::remove_file(&script).unwrap();
        std::os::unix::fs::symlink(tmp.path().join("product/other.sh"), &script).unwrap();
        let r = scripts::run_script(
            &checked,
            "/staging/upd/install.sh",
            &[],
            Duration::from_secs(30),
        )
        .await
        .unwrap();
        let dir = tmp.path().join("staging/upd").canonicalize().unwrap();
        assert_eq!(r.output, format!("checked\n{}\n", dir.display()));
        assert_eq!(r.exit_code, 0);
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
