//! The vendor's loop: `posup plugin new` makes a project outside this
//! repository, it builds for wasm32-wasip2 against the SDK it carries, and
//! `posup plugin test` passes it — and fails a plugin whose rollback does not
//! restore the installation. `posup apply` names what a plugin lacks before any
//! step runs.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::{posup, posup_path, snapshot, stderr, stdout};

/// The vendor projects' build folder: kept between runs, so only the first run
/// compiles the SDK's dependencies.
fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/vendor-kit")
}

/// `./run.sh` of a project: build, package, `posup plugin test`.
fn run_loop(project: &Path) -> std::process::Output {
    let path = format!(
        "{}:{}",
        python_tools().join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    Command::new("sh")
        .arg(project.join("run.sh"))
        .env("PATH", path)
        .env("PYTHONPATH", python_tools())
        .env("POSUP", posup_path())
        .env("CARGO_TARGET_DIR", target_dir())
        .env("TARGET", target_dir())
        // What the outer cargo set for this test must not steer the inner build.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("CARGO_BUILD_TARGET")
        .output()
        .expect("running the project's run.sh")
}

/// The componentize-py a Python project builds with: the machine's where it has
/// one, otherwise installed once from PyPI into the build folder, so the test
/// needs nothing a fresh machine lacks but Python and pip.
fn python_tools() -> PathBuf {
    static TOOLS: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    TOOLS
        .get_or_init(|| {
            let dir = target_dir().join("python");
            let found = |p: &Path| {
                Command::new(p.join("bin/componentize-py"))
                    .arg("--version")
                    .env("PYTHONPATH", &dir)
                    .output()
                    .is_ok_and(|o| o.status.success())
            };
            let on_path = Command::new("componentize-py")
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success());
            if !on_path && !found(&dir) {
                let out = Command::new("python3")
                    .args(["-m", "pip", "install", "-q", "--target"])
                    .arg(&dir)
                    .arg("componentize-py==0.25.1")
                    .output()
                    .expect("running pip");
                assert!(
                    out.status.success(),
                    "installing componentize-py: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                assert!(
                    found(&dir),
                    "componentize-py did not install into {}",
                    dir.display()
                );
            }
            dir
        })
        .clone()
}

#[test]
fn a_new_plugin_builds_outside_the_repository_and_passes_plugin_test() {
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("frontol");
    let out = posup()
        .args(["plugin", "new", "frontol", "--vendor", "ACME", "--dir"])
        .arg(&project)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let manifest = std::fs::read_to_string(project.join("Cargo.toml")).unwrap();
    assert!(
        !manifest.contains("..") && !manifest.contains(env!("CARGO_MANIFEST_DIR")),
        "the project names no path into posup's repository:\n{manifest}"
    );
    // A second `new` into the same folder changes nothing there.
    let again = posup()
        .args(["plugin", "new", "frontol", "--dir"])
        .arg(&project)
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(2));
    assert!(
        stderr(&again).contains("exists already"),
        "{}",
        stderr(&again)
    );

    let wasm = target_dir().join("wasm32-wasip2/release/frontol_plugin.wasm");
    passes_the_contract(&project, &wasm, "frontol");

    // The skeleton's own unit tests pass on the host.
    let out = Command::new("cargo")
        .arg("test")
        .current_dir(&project)
        .env("CARGO_TARGET_DIR", target_dir())
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("2 passed"), "{}", stdout(&out));

    // `--verbose` shows the plugin's own lines; the broken package's failure is
    // logged by the SDK at error level.
    let local = Local::new(dir.path(), &project);
    let before = snapshot(&local.install);
    let out = local.apply(&wasm, "frontol-1.2.0.tar.gz", &["--verbose"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("  5 %: stopping frontol"), "{err}");
    assert!(err.contains(" error: frontol stopped"), "{err}");
    assert_eq!(
        snapshot(&local.install),
        before,
        "rolled back byte for byte"
    );
    local.stop_service("frontol");

    // A plugin that forgets to put the installation back fails the check.
    let lib = project.join("src/lib.rs");
    let source = std::fs::read_to_string(&lib).unwrap();
    let careless = source.replace("        tree::restore(BACKUP, \"/product\", KEEP)?;\n", "");
    assert_ne!(
        careless, source,
        "the template's rollback restores the backup"
    );
    std::fs::write(&lib, careless).unwrap();
    let out = run_loop(&project);
    let table = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{table}");
    let line = table
        .lines()
        .find(|l| l.starts_with("verify fails after doing its work"))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(line.ends_with("FAIL"), "{table}");
    assert!(table.contains("bin/run differs"), "{table}");
}

/// `./run.sh` passes: `posup plugin test` ran every case and each passed. Then,
/// with the product's log saying a sale is open, an update waits (not now)
/// and changes nothing.
fn passes_the_contract(project: &Path, wasm: &Path, name: &str) {
    let out = run_loop(project);
    let table = stdout(&out);
    assert!(
        out.status.success(),
        "{table}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for row in [
        "update",
        "declined by the person at the terminal",
        "posup killed after stage, run again",
        "posup killed after apply, run again",
        "posup killed after verify, run again",
        "apply fails after doing its work",
        "verify fails after doing its work",
        "broken package",
    ] {
        let line = table
            .lines()
            .find(|l| l.starts_with(row))
            .unwrap_or_else(|| panic!("no case {row:?} in\n{table}"));
        assert!(line.ends_with("pass"), "{line}\n{table}");
    }
    assert!(table.contains(" 0 failed"), "{table}");
    // Every product process a case started was stopped with it (they run in
    // the project's folder, where run.sh starts posup).
    let left: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| std::fs::read_link(e.path().join("cwd")).is_ok_and(|cwd| cwd == project))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(left.is_empty(), "processes left running: {left:?}");

    let dir = tempfile::tempdir().unwrap();
    let local = Local::new(dir.path(), project);
    std::fs::write(
        local.logs.join(format!("{name}.log")),
        format!("{name} 1.0.0 started\nSTATE: READY\nSTATE: SALE\n"),
    )
    .unwrap();
    let before = snapshot(&local.install);
    let out = local.apply(wasm, &format!("{name}-1.1.0.tar.gz"), &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("a sale is open"), "{err}");
    assert_eq!(snapshot(&local.install), before);
}

/// A copy of a project's fixture with its device configuration, for a direct
/// `posup apply`.
struct Local {
    install: PathBuf,
    logs: PathBuf,
    config: PathBuf,
}

impl Local {
    fn new(dir: &Path, project: &Path) -> Local {
        let install = dir.join("install");
        let logs = dir.join("logs");
        copy(&project.join("fixture/product"), &install);
        std::fs::create_dir(&logs).unwrap();
        let config = dir.join("device.toml");
        std::fs::write(
            &config,
            std::fs::read_to_string(project.join("device.toml"))
                .unwrap()
                .replace("${PRODUCT}", &install.display().to_string())
                .replace("${LOGS}", &logs.display().to_string()),
        )
        .unwrap();
        Local {
            install,
            logs,
            config,
        }
    }

    fn apply(&self, wasm: &Path, package: &str, extra: &[&str]) -> std::process::Output {
        let name = package.split('-').next().unwrap_or_default();
        posup()
            .args(["apply", "--var", &format!("{name}-settle-secs=1")])
            .args(extra)
            .arg("--plugin")
            .arg(wasm)
            .arg("--package")
            .arg(target_dir().join("packages").join(package))
            .arg("--root")
            .arg(&self.install)
            .arg("--logs")
            .arg(&self.logs)
            .arg("--device-config")
            .arg(&self.config)
            .output()
            .unwrap()
    }

    /// Stops the sample product a direct `posup apply` left running: its
    /// pidfile is in the state folder beside the installation.
    fn stop_service(&self, name: &str) {
        let pidfile = self
            .install
            .with_file_name(format!("install.posup/run/{name}.pid"));
        // The pidfile's first line is the pid, which leads the service's own
        // process group.
        let pid = std::fs::read_to_string(pidfile).unwrap_or_default();
        if let Some(pid) = pid
            .lines()
            .next()
            .and_then(|l| l.trim().parse::<u32>().ok())
            && pid > 1
        {
            let _ = Command::new("kill")
                .args(["--", &format!("-{pid}")])
                .status();
        }
    }
}

#[test]
fn a_python_plugin_passes_the_same_contract() {
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("pyfrontol");
    let out = posup()
        .args(["plugin", "new", "pyfrontol", "--lang", "python", "--dir"])
        .arg(&project)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    passes_the_contract(
        &project,
        &target_dir().join("pyfrontol_plugin.wasm"),
        "pyfrontol",
    );
}

fn copy(from: &Path, to: &Path) {
    let status = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn apply_names_what_a_plugin_lacks_before_any_step() {
    let dir = tempfile::tempdir().unwrap();
    let product = dir.path().join("kiosk");
    posup_sim::kiosk::init_kiosk(&product, &dir.path().join("logs"), "7.4.2").unwrap();
    let packages = dir.path().join("packages");
    std::fs::create_dir(&packages).unwrap();
    let pkg = posup_sim::kiosk::kiosk_package(&packages, "7.5.0", false).unwrap();
    let before = snapshot(&product);
    let out = posup()
        .args(["apply", "--plugin", "kiosk"])
        .arg("--package")
        .arg(&pkg)
        .arg("--root")
        .arg(&product)
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    for line in [
        "[dirs] logs = ",
        "[allow] services = [\"kiosk\", …]",
        "[services.kiosk] command = ",
        "--device-config FILE",
    ] {
        assert!(err.contains(line), "{line:?} in {err}");
    }
    assert!(!err.contains("precheck"), "no step ran: {err}");
    assert_eq!(snapshot(&product), before);
}
