//! The kiosk plugin through `posup apply`, against a simulated kiosk that really
//! runs: a fixture terminal with the kiosk installed under opt/kiosk, its log under
//! var/log/kiosk, and the kiosk process supervised by posup's process backend.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use posup_runtime::caps::services::{ProcessSpec, Processes, ServiceManager};
use posup_sim::kiosk::{self, KioskState};

use crate::support::{posup, posup_path, read, snapshot, stderr, wait_for};

struct Terminal {
    _dir: tempfile::TempDir,
    product: PathBuf,
    logs: PathBuf,
    state: PathBuf,
    config: PathBuf,
    packages: PathBuf,
    /// How long the simulated kiosk takes to stop and to start, in milliseconds.
    shutdown_ms: u64,
    start_ms: u64,
}

impl Terminal {
    /// A terminal with kiosk `version` installed and running, in state IDLE.
    async fn new(version: &str) -> Terminal {
        Terminal::slow(version, 0, kiosk::START_DELAY.as_millis() as u64).await
    }

    /// A terminal whose kiosk takes `shutdown_ms` to stop and `start_ms` to start:
    /// the apply step that stops it and the verify step that waits for it to serve
    /// last at least that long, long enough to be caught in the act.
    async fn slow(version: &str, shutdown_ms: u64, start_ms: u64) -> Terminal {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_owned();
        let product = root.join("opt/kiosk");
        let logs = root.join("var/log/kiosk");
        let state = root.join("var/lib/posup/kiosk");
        let packages = root.join("packages");
        std::fs::create_dir_all(&product).unwrap();
        std::fs::create_dir_all(&logs).unwrap();
        std::fs::create_dir_all(&state).unwrap();
        kiosk::init_kiosk(&product, &logs, version).unwrap();
        let config = root.join("kiosk.toml");
        std::fs::write(
            &config,
            format!(
                r#"
[dirs]
logs = "{logs}"

[allow]
services = ["kiosk"]

[services.kiosk]
command = ["{posup}", "sim-product", "kiosk", "--product", "{product}", "--logs", "{logs}", "--shutdown-ms", "{shutdown_ms}", "--start-ms", "{start_ms}"]
log = "{logs}/stdout.log"
"#,
                logs = logs.display(),
                product = product.display(),
                posup = posup_path(),
            ),
        )
        .unwrap();
        let t = Terminal {
            _dir: dir,
            product,
            logs,
            state,
            config,
            packages,
            shutdown_ms,
            start_ms,
        };
        t.services().start("kiosk").await.unwrap();
        t.wait_state("IDLE");
        t
    }

    /// The same process backend `posup apply` builds from the configuration: the
    /// pidfile under the state directory is shared.
    fn services(&self) -> Processes {
        Processes::new(self.state.join("run")).with_service(
            "kiosk",
            ProcessSpec::new(posup_path()).args([
                "sim-product".to_string(),
                "kiosk".into(),
                "--product".into(),
                self.product.display().to_string(),
                "--logs".into(),
                self.logs.display().to_string(),
                "--shutdown-ms".into(),
                self.shutdown_ms.to_string(),
                "--start-ms".into(),
                self.start_ms.to_string(),
            ]),
        )
    }

    fn log(&self) -> String {
        read(&self.logs.join("kiosk.log"))
    }

    fn wait_state(&self, state: &str) {
        wait_for(
            &format!("the kiosk to reach {state}"),
            Duration::from_secs(20),
            || kiosk::last_state(&self.log()) == Some(state),
        );
    }

    fn package(&self, version: &str, broken: bool) -> PathBuf {
        kiosk::kiosk_package(&self.packages, version, broken).unwrap()
    }

    fn apply_command(&self, package: &Path) -> std::process::Command {
        let mut cmd = posup();
        cmd.args(["apply", "--plugin", "kiosk", "--json"])
            .arg("--package")
            .arg(package)
            .arg("--root")
            .arg(&self.product)
            .arg("--state-dir")
            .arg(&self.state)
            .arg("--device-config")
            .arg(&self.config);
        cmd
    }

    fn apply(&self, package: &Path) -> std::process::Output {
        self.apply_command(package).output().unwrap()
    }

    fn version(&self) -> String {
        read(&self.product.join("version")).trim().to_owned()
    }

    async fn stop(&self) {
        self.services().stop("kiosk").await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_kiosk_is_updated_and_comes_back_idle() {
    let t = Terminal::new("7.4.2").await;
    let config_before = read(&t.product.join("config/kiosk.config.xml"));
    let pkg = t.package("7.5.0", false);
    let out = t.apply(&pkg);
    assert!(out.status.success(), "{}", stderr(&out));
    let steps: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let names: Vec<&str> = steps.iter().map(|s| s["step"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "inspect", "precheck", "stage", "consent", "apply", "verify", "commit"
        ]
    );
    assert!(steps.iter().all(|s| s["result"] == "ok"), "{steps:?}");
    assert_eq!(t.version(), "7.5.0");
    // The site's settings survive the update; the rollback copy is gone.
    assert_eq!(
        read(&t.product.join("config/kiosk.config.xml")),
        config_before
    );
    assert!(!t.state.join("backup/kiosk").exists());
    assert!(t.log().contains("7.5.0"));
    assert_eq!(kiosk::last_state(&t.log()), Some("IDLE"));
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kiosk_serving_a_customer_is_left_alone() {
    let t = Terminal::new("7.4.2").await;
    kiosk::set_customer(&t.product, KioskState::MenuBrowsing).unwrap();
    t.wait_state("menu browsing");
    let before = snapshot(&t.product);
    let out = t.apply(&t.package("7.5.0", false));
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("menu browsing"), "{}", stderr(&out));
    assert_eq!(snapshot(&t.product), before);
    // The customer was not interrupted.
    assert_eq!(kiosk::last_state(&t.log()), Some("menu browsing"));

    // At payment too; once the customer has gone, the update goes through.
    kiosk::set_customer(&t.product, KioskState::Payment).unwrap();
    t.wait_state("payment");
    let out = t.apply(&t.package("7.5.0", false));
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    kiosk::set_customer(&t.product, KioskState::Idle).unwrap();
    t.wait_state("IDLE");
    let out = t.apply(&t.package("7.5.0", false));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(t.version(), "7.5.0");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kiosk_that_fails_to_start_is_rolled_back_byte_for_byte() {
    let t = Terminal::new("7.4.2").await;
    let before = snapshot(&t.product);
    let out = t.apply(&t.package("7.5.0", true));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("verify failed") && err.contains("rolled back"),
        "{err}"
    );
    assert!(
        err.contains("Failed to load menu") || err.contains("ERROR"),
        "{err}"
    );
    assert_eq!(snapshot(&t.product), before);
    // The old kiosk serves again.
    t.wait_state("IDLE");
    assert!(
        t.log().ends_with("State changed: STARTING -> IDLE\n"),
        "{}",
        t.log()
    );
    t.stop().await;
}

/// A kiosk whose log the plugin is not told of: nothing says whether a customer
/// is at it, so only a Forced update goes ahead, checked by the kiosk staying up.
#[tokio::test(flavor = "multi_thread")]
async fn without_its_log_a_kiosk_is_updated_only_when_forced() {
    let t = Terminal::new("7.4.2").await;
    // Nor does it keep a version file; its packages carry none either.
    std::fs::remove_file(t.product.join(kiosk::VERSION_FILE)).unwrap();
    t.services().restart("kiosk").await.unwrap();
    t.wait_state("IDLE");
    let before = snapshot(&t.product);
    let unknown = [
        "--var",
        "kiosk-log=not-named.log",
        "--var",
        "kiosk-settle-secs=2",
    ];
    let pkg = without_version_file(&t.package("7.5.0", false));
    let out = t.apply_command(&pkg).args(unknown).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("posup cannot tell whether a customer is using the kiosk")
            && stderr(&out).contains("Forced update"),
        "{}",
        stderr(&out)
    );
    assert_eq!(snapshot(&t.product), before);

    let out = t
        .apply_command(&pkg)
        .args(unknown)
        .arg("--forced")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        std::fs::read(t.product.join("app/Kiosk.bin"))
            .unwrap()
            .starts_with("\u{7f}SIM iiko Kiosk 7.5.0\n".as_bytes()),
        "the new program is installed"
    );
    // Nothing of posup's is left in the installation.
    assert!(!t.product.join(".posup-update").exists());
    t.wait_state("IDLE");
    t.stop().await;
}

/// A copy of a kiosk package without its `version` file, beside it.
fn without_version_file(package: &Path) -> PathBuf {
    let dir = package.with_extension("unpacked");
    std::fs::create_dir_all(&dir).unwrap();
    let status = std::process::Command::new("tar")
        .arg("-xzf")
        .arg(package)
        .arg("-C")
        .arg(&dir)
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::remove_file(dir.join(kiosk::VERSION_FILE)).unwrap();
    let bare_dir = dir.join("bare");
    std::fs::create_dir_all(&bare_dir).unwrap();
    let bare = bare_dir.join(package.file_name().unwrap());
    let status = std::process::Command::new("tar")
        .arg("-czf")
        .arg(&bare)
        .arg("-C")
        .arg(&dir)
        .args(["app", "CHANGELOG.txt"])
        .status()
        .unwrap();
    assert!(status.success());
    bare
}

/// Kills `posup apply` once the journal says `step` started, and returns.
fn kill_during(t: &Terminal, package: &Path, step: &str) {
    let mut child: Child = t
        .apply_command(package)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let journal = t.state.join("journal/kiosk.json");
    wait_for(&format!("{step} to start"), Duration::from_secs(60), || {
        let Ok(record) = serde_json::from_str::<serde_json::Value>(&read(&journal)) else {
            return false;
        };
        let last = &record["entries"]
            .as_array()
            .and_then(|e| e.last().cloned())
            .unwrap_or_default();
        last["step"] == step && last["event"] == "started"
    });
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_mid_apply_a_rerun_rolls_back_then_a_new_run_installs() {
    // Apply otherwise ends between two looks at the journal on a fast machine.
    let t = Terminal::slow("7.4.2", 1500, kiosk::START_DELAY.as_millis() as u64).await;
    let before = snapshot(&t.product);
    let pkg = t.package("7.5.0", false);
    kill_during(&t, &pkg, "apply");

    // Whatever the kill interrupted, the rerun settles it: fully old.
    let out = t.apply(&pkg);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("interrupted during apply"),
        "{}",
        stderr(&out)
    );
    assert_eq!(snapshot(&t.product), before);
    t.wait_state("IDLE");

    // A fresh run installs it: fully new.
    let out = t.apply(&pkg);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(t.version(), "7.5.0");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_during_verify_a_rerun_restores_the_old_kiosk() {
    // Verify otherwise ends between two looks at the journal on a fast machine.
    let t = Terminal::slow("7.4.2", 0, 1500).await;
    let before = snapshot(&t.product);
    let pkg = t.package("7.5.0", false);
    kill_during(&t, &pkg, "verify");
    let out = t.apply(&pkg);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("interrupted during verify"),
        "{}",
        stderr(&out)
    );
    assert_eq!(snapshot(&t.product), before);
    t.wait_state("IDLE");
    t.stop().await;
}

#[test]
fn a_package_with_a_wrong_name_is_refused_before_anything_changes() {
    let dir = tempfile::tempdir().unwrap();
    let product = dir.path().join("kiosk");
    kiosk::init_kiosk(&product, &dir.path().join("logs"), "7.4.2").unwrap();
    let before = snapshot(&product);
    let pkg = dir.path().join("kiosk-7.5.0.tar.gz");
    std::fs::write(&pkg, b"not even an archive").unwrap();
    // Without a device configuration the kiosk's service and logs are not
    // granted; the package is refused by inspect all the same.
    let out = posup()
        .args([
            "apply",
            "--plugin",
            "kiosk",
            "--answer",
            "yes",
            "--partial-grants",
        ])
        .arg("--package")
        .arg(&pkg)
        .arg("--root")
        .arg(&product)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("kiosk-7.5.0.tar.gz") && err.contains("kiosk_<version>.tgz"),
        "{err}"
    );
    assert_eq!(snapshot(&product), before);
}

/// Staging is plugin-writable, so a plugin can leave links there. Placing the next
/// package follows none of them: the root-owned file they point at keeps its bytes.
#[tokio::test(flavor = "multi_thread")]
async fn placing_a_package_never_follows_a_link_planted_in_staging() {
    let t = Terminal::new("7.4.2").await;
    let pkg = t.package("7.5.0", false);
    let name = pkg.file_name().unwrap().to_string_lossy().into_owned();
    let staging = t.state.join("staging");
    std::fs::create_dir_all(&staging).unwrap();
    let victim = t._dir.path().join("etc-shadow");
    std::fs::write(&victim, b"root:precious").unwrap();
    // Every name a copy into staging has gone through, planted as a link.
    let stem = name.trim_end_matches(".tgz");
    for planted in [
        format!("{stem}.posup-partial"),
        format!(".{name}.posup-partial"),
        name.clone(),
    ] {
        std::os::unix::fs::symlink(&victim, staging.join(planted)).unwrap();
    }
    let out = t.apply(&pkg);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read(&victim).unwrap(), b"root:precious");
    assert_eq!(t.version(), "7.5.0");
    t.stop().await;
}
