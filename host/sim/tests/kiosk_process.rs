//! The simulated kiosk as a real process: started and stopped by the runtime's
//! `Processes` service manager, the way `posup apply` drives it on a terminal
//! without systemd, and stopped by SIGTERM with a clean exit.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use posup_runtime::caps::services::{ProcessSpec, Processes, ServiceManager, State};
use posup_runtime::types::ErrorKind;
use posup_sim::kiosk::{self, KioskState, LOG_FILE};

const SIM: &str = env!("CARGO_BIN_EXE_posup-sim");

/// Waits until the kiosk's log satisfies `f`; the bound only keeps a broken build
/// from hanging.
fn wait_for_log(logs: &Path, mut f: impl FnMut(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(logs.join(LOG_FILE)).unwrap_or_default();
        if f(&text) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "the kiosk log never got there:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn manager(tmp: &Path, product: &Path, logs: &Path) -> Processes {
    let spec = ProcessSpec::new(SIM)
        .args([
            "kiosk",
            "--product",
            product.to_str().unwrap(),
            "--logs",
            logs.to_str().unwrap(),
        ])
        .log(tmp.join("run/kiosk.out"));
    Processes::new(tmp.join("run")).with_service("kiosk", spec)
}

#[tokio::test]
async fn the_processes_backend_runs_the_kiosk() {
    let tmp = tempfile::tempdir().unwrap();
    let product = tmp.path().join("kiosk");
    let logs = tmp.path().join("logs");
    kiosk::init_kiosk(&product, &logs, "7.4.2").unwrap();

    let services = manager(tmp.path(), &product, &logs);
    services.start("kiosk").await.unwrap();
    wait_for_log(&logs, |t| t.contains("State changed: STARTING -> IDLE"));
    assert_eq!(services.status("kiosk").await.unwrap(), State::Running);

    // A customer walks up; a later `posup apply` (a new manager) still finds the
    // kiosk and sees it through its log.
    kiosk::set_customer(&product, KioskState::Payment).unwrap();
    let log = wait_for_log(&logs, |t| t.contains("State changed: IDLE -> payment"));
    assert_eq!(kiosk::last_state(&log), Some("payment"));
    let later = manager(tmp.path(), &product, &logs);
    assert_eq!(later.status("kiosk").await.unwrap(), State::Running);

    later.stop("kiosk").await.unwrap();
    assert_eq!(later.status("kiosk").await.unwrap(), State::Stopped);
    let log = std::fs::read_to_string(logs.join(LOG_FILE)).unwrap();
    let last = log.lines().last().unwrap();
    assert!(last.ends_with("INFO  [KioskApp] Kiosk stopped"), "{last}");
    assert!(
        log.contains("INFO  [KioskApp] Stopping kiosk (SIGTERM)"),
        "{log}"
    );

    let err = later.start("oscar").await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::NotFound);
}

#[test]
fn sigterm_stops_the_kiosk_with_exit_code_zero() {
    let tmp = tempfile::tempdir().unwrap();
    let product = tmp.path().join("kiosk");
    let logs = tmp.path().join("logs");
    kiosk::init_kiosk(&product, &logs, "7.4.2").unwrap();
    let mut child = Command::new(SIM)
        .args(["kiosk", "--product"])
        .arg(&product)
        .arg("--logs")
        .arg(&logs)
        .spawn()
        .unwrap();
    wait_for_log(&logs, |t| t.contains("-> IDLE"));
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = child.wait().unwrap();
    assert!(status.success(), "the kiosk exited with {status}");
    let log = std::fs::read_to_string(logs.join(LOG_FILE)).unwrap();
    assert!(
        log.lines()
            .last()
            .unwrap()
            .ends_with("INFO  [KioskApp] Kiosk stopped"),
        "{log}"
    );
}

#[test]
fn bad_arguments_are_refused() {
    let out = Command::new(SIM)
        .args(["kiosk", "--logs", "/tmp"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--product"));
}
