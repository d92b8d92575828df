//! Package scripts (`run-script`): run with the runtime's own sandbox policy,
//! whatever the service backend.

use super::{MAX_SCRIPT_OUTPUT, SAFE_PATH, ScriptResult};
use crate::caps::{CapError, CapResult};
use rustix::process::{Pid, Signal};
use std::ffi::OsString;
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A script checked to run, open while it runs: its folder, the file itself,
/// and its name beneath this process's handle of the folder.
pub struct Script {
    pub(super) folder: cap_std::fs::Dir,
    pub(super) file: std::fs::File,
    pub(super) name: OsString,
}

/// Runs `script` (`shown` is how errors name it) with `/bin/sh`, in the script's
/// folder, with only [`SAFE_PATH`] in its environment and in a process group of
/// its own, which is killed when `timeout` passes. Returns the exit code (128 +
/// the signal number when a signal ended it, as shells report it) and the end of
/// stdout and stderr together.
pub async fn run_script(
    script: &Script,
    shown: &str,
    args: &[String],
    timeout: Duration,
) -> CapResult<ScriptResult> {
    // The shell reads the file that was checked, through this process's open
    // handle of it, whatever its name holds by then; `$0` is its name beneath
    // the folder's handle, so a script that finds its folder from `$0` finds it.
    let own = std::process::id();
    let dir = PathBuf::from(format!("/proc/{own}/fd/{}", script.folder.as_raw_fd()));
    let source = format!(". /proc/{own}/fd/{}", script.file.as_raw_fd());
    let (reader, writer) =
        io::pipe().map_err(|e| CapError::from_io(format!("script {shown}: output pipe"), &e))?;
    let writer2 = writer
        .try_clone()
        .map_err(|e| CapError::from_io(format!("script {shown}: output pipe"), &e))?;
    let mut cmd = tokio::process::Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(source)
        .arg(dir.join(&script.name))
        .args(args)
        .current_dir(&dir)
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

pub(super) fn exit_code(status: ExitStatus) -> i32 {
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(-1)
}

/// The last [`MAX_SCRIPT_OUTPUT`] bytes of a stream.
#[derive(Default)]
pub(super) struct OutputTail {
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
