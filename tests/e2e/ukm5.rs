//! The UKM 5 plugin through `posup apply` (and a Download task through the agent's
//! pipeline), against a simulated register that really runs: its home laid out as
//! `/home/ukm5` under `home/ukm5`, its log `pos.log`, the register program
//! supervised by posup's process backend, its own `up.sh` granted as the service
//! `ukm5-up`.
//!
//! Most cases tell the plugin where the simulated register logs (`ukm5-log`); a
//! *bare* register has only what the UKM 5 document names: no version file, no
//! log, packages without a `version` file.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use posup_agent::pipeline::{PipelineError, Settings, UpdateRequest, UpdateResult};
use posup_agent::{DeviceConfig, Pipeline};
use posup_runtime::caps::services::ServiceManager;
use posup_runtime::types::TaskKind;
use posup_runtime::{Grants, HostEnv, Runtime, RuntimeConfig};
use posup_sim::ukm5::{self, Mode};

use crate::support::{posup, posup_path, read, sample_package_without, snapshot, stderr, wait_for};
use crate::terminal::{Service, Terminal, steps};

const REGISTER: Service = Service {
    name: "ukm5",
    product: "ukm5",
};

/// The server variables of a register whose log the plugin reads, in the boot
/// the tests call `boot-1`.
const LOGGED: [&str; 6] = [
    "--var",
    "ukm5-log=pos.log",
    "--var",
    "ukm5-settle-secs=1",
    "--var",
    "posup-boot-id=boot-1",
];

/// A register running `version`, in sale mode.
async fn register(version: &str) -> Terminal {
    let t = Terminal::new("home/ukm5", &[REGISTER], false);
    ukm5::init_ukm5(&t.product, &t.logs, version).unwrap();
    let update = t.product.join(ukm5::UPDATE_DIR);
    t.grant_command(
        "ukm5-up",
        &[update.join("up.sh").to_str().unwrap()],
        &update,
    );
    t.services().start("ukm5").await.unwrap();
    wait_mode(&t, "SALE");
    t
}

fn wait_mode(t: &Terminal, mode: &str) {
    wait_for(
        &format!("the register to reach {mode}"),
        Duration::from_secs(20),
        || ukm5::last_mode(&t.log("pos.log")) == Some(mode),
    );
}

/// `posup apply` on a register whose log the plugin reads.
fn apply(t: &Terminal, package: &Path, extra: &[&str]) -> Output {
    apply_bare(t, package, &[&LOGGED[..], extra].concat())
}

/// The plugin's inventory of a register whose log it reads, in boot `boot`.
async fn inventory(t: &Terminal, boot: &str) -> posup_runtime::types::Inventory {
    t.inventory_with("ukm5", &[("ukm5-log", "pos.log"), ("posup-boot-id", boot)])
        .await
}

fn apply_bare(t: &Terminal, package: &Path, extra: &[&str]) -> Output {
    posup()
        .args(["apply", "--plugin", "ukm5", "--json"])
        .arg("--package")
        .arg(package)
        .arg("--root")
        .arg(&t.product)
        .arg("--state-dir")
        .arg(&t.state)
        .arg("--device-config")
        .arg(&t.config)
        .args(extra)
        // The messages shown to the cashier are logged at info.
        .env("POSUP_LOG", "posup_runtime::caps::prompt=info")
        .output()
        .unwrap()
}

fn version(t: &Terminal) -> String {
    read(&t.product.join(ukm5::VERSION_FILE)).trim().to_owned()
}

fn step_names(out: &Output) -> Vec<String> {
    steps(out).into_iter().map(|(s, _, _)| s).collect()
}

/// Runs a Download task through the agent's pipeline, as the agent does for the
/// update server's Download tasks (`posup apply` runs Update and Forced tasks).
async fn download(t: &Terminal, package: &Path) -> UpdateResult {
    let request = UpdateRequest {
        package: package.to_owned(),
        file_name: None,
        sha256: None,
        task: TaskKind::Download,
        skip_installed: false,
        signed: None,
    };
    run_pipeline(t, &request).await.unwrap()
}

/// Runs `request` through the agent's pipeline with the ukm5 plugin, nobody at
/// the register.
async fn run_pipeline(
    t: &Terminal,
    request: &UpdateRequest,
) -> Result<UpdateResult, PipelineError> {
    let rt = Runtime::new(RuntimeConfig {
        cache_dir: Some(t.state.join("cache")),
        ..RuntimeConfig::default()
    })
    .unwrap();
    let plugin = rt
        .load("ukm5", posup_bundled::get("ukm5").expect("ukm5 is bundled"))
        .unwrap();
    let info = plugin.info().await.unwrap();
    let mut config = DeviceConfig::load(&t.config).unwrap();
    config.dirs.insert("product".into(), t.product.clone());
    for name in ["staging", "backup"] {
        let dir = t.state.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        config.dirs.insert(name.into(), dir);
    }
    let env = HostEnv {
        grants: Grants::intersect(&info.capabilities, &[], &config.allowance()),
        services: config.service_manager(&t.state.join("run")),
        kv_dir: Some(t.state.join("kv")),
        ..HostEnv::default()
    };
    let pipeline = Pipeline {
        plugin: &plugin,
        env,
        settings: Settings {
            state_dir: t.state.clone(),
            staging: t.state.join("staging"),
            prompter: None,
            consent_timeout: Duration::from_secs(5),
            deadline: posup_runtime::Step::default_deadline,
            fail_after: None,
        },
        observer: None,
    };
    pipeline.run(request).await
}

#[tokio::test(flavor = "multi_thread")]
async fn the_pipeline_measures_an_update_against_the_register_before_it_begins() {
    let t = register("1.14.9").await;
    let pkg = t.package("ukm5", "1.14.9");
    let before = snapshot(&t.product);
    let request = |sha256: Option<String>| UpdateRequest {
        package: pkg.clone(),
        file_name: None,
        sha256,
        task: TaskKind::Update,
        skip_installed: true,
        signed: None,
    };
    // A package whose bytes are not the ones verified on delivery is not run.
    let err = run_pipeline(&t, &request(Some("0".repeat(64))))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("not the package verified"), "{err}");
    assert!(!t.state.join("staging/ukm5_pos_1.14.9.tgz").exists());
    // The version installed: done at once, without a step and without downtime.
    use sha2::Digest;
    let sha = hex::encode(sha2::Sha256::digest(std::fs::read(&pkg).unwrap()));
    let result = run_pipeline(&t, &request(Some(sha))).await.unwrap();
    assert_eq!(
        result,
        UpdateResult::AlreadyInstalled {
            version: "1.14.9".into()
        }
    );
    assert_eq!(snapshot(&t.product), before);
    assert!(!t.state.join("staging/ukm5_pos_1.14.9.tgz").exists());
    assert!(!t.state.join("journal/ukm5.json").exists());
    assert!(
        t.log("pos.log")
            .ends_with("Mode changed: STARTING -> SALE\n")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_download_loads_the_package_and_the_register_announces_it_as_update_conf_says() {
    let t = register("1.8.4").await;
    let program = snapshot(&t.product.join("mint/lib"));
    let pkg = t.package("ukm5", "1.14.9");
    let result = download(&t, &pkg).await;
    assert_eq!(
        result,
        UpdateResult::Staged {
            version: "1.14.9".into()
        }
    );
    // Loaded into the drop folder; nothing installed, sale went on.
    let loaded = t
        .product
        .join(ukm5::PACKAGE_DIR)
        .join("ukm5_pos_1.14.9.tgz");
    assert_eq!(
        std::fs::read(&loaded).unwrap(),
        std::fs::read(&pkg).unwrap()
    );
    assert_eq!(version(&t), "1.8.4");
    assert_eq!(snapshot(&t.product.join("mint/lib")), program);
    assert!(!t.state.join("backup/mint").exists());
    // autoUpdateTimeout = 10: the register itself will ask the cashier.
    wait_for(
        "the register to see the package",
        Duration::from_secs(20),
        || {
            t.log("pos.log")
                .contains("Update package ukm5_pos_1.14.9.tgz found")
        },
    );
    assert!(
        t.log("pos.log")
            .contains("the cashier will be asked to update in 10 min")
    );
    let inv = inventory(&t, "boot-1").await;
    assert_eq!(inv.version, "1.8.4");
    assert_eq!(inv.loaded_package.as_deref(), Some("ukm5_pos_1.14.9.tgz"));
    assert_eq!(inv.state, "SALE");
    assert!(inv.ready && !inv.reboot_required);
    assert_eq!(
        crate::terminal::detail(&inv, "autoUpdateTimeout"),
        Some("10 min")
    );

    // Commented out, the register never asks: only an explicit update installs it.
    ukm5::set_auto_update_timeout(&t.product, None).unwrap();
    let pkg = t.package("ukm5", "877");
    assert_eq!(
        download(&t, &pkg).await,
        UpdateResult::Staged {
            version: "877".into()
        }
    );
    wait_for(
        "the register to see the second package",
        Duration::from_secs(20),
        || {
            t.log("pos.log")
                .contains("Update package ukm5_pos_877.tgz found")
        },
    );
    assert!(
        t.log("pos.log")
            .contains("autoUpdateTimeout is off, the register does not ask; run sudo ./up.sh in")
    );
    let inv = t.inventory("ukm5").await;
    assert_eq!(
        crate::terminal::detail(&inv, "autoUpdateTimeout"),
        Some("off")
    );
    // Of two loaded packages the newest is reported.
    assert_eq!(inv.loaded_package.as_deref(), Some("ukm5_pos_877.tgz"));
    assert_eq!(version(&t), "1.8.4");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_update_installs_like_up_sh_and_requires_a_full_reboot() {
    let t = register("1.8.4").await;
    let settings = read(&t.product.join(ukm5::SETTINGS_FILE));
    let update_conf = read(&t.product.join(ukm5::UPDATE_CONF));
    let pkg = t.package("ukm5", "1.14.9");
    let out = apply(&t, &pkg, &["--answer", "yes"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        step_names(&out),
        [
            "inspect", "precheck", "stage", "consent", "apply", "verify", "commit"
        ]
    );
    assert!(
        steps(&out).iter().all(|(_, r, _)| r == "ok"),
        "{:?}",
        steps(&out)
    );
    assert_eq!(version(&t), "1.14.9");
    for module in ukm5::MODULES {
        let text = read(&t.product.join("mint").join(module));
        assert!(
            text.lines().next().unwrap().ends_with(" 1.14.9"),
            "{module}: {text}"
        );
    }
    // The register's own settings are untouched; the package left the drop
    // folder; the rollback copy is gone.
    assert_eq!(read(&t.product.join(ukm5::SETTINGS_FILE)), settings);
    assert_eq!(read(&t.product.join(ukm5::UPDATE_CONF)), update_conf);
    assert_eq!(
        std::fs::read_dir(t.product.join(ukm5::PACKAGE_DIR))
            .unwrap()
            .count(),
        0
    );
    assert!(!t.state.join("backup/mint").exists());
    // The register's own up.sh installed it.
    assert!(
        t.log("ukm5-up.out")
            .contains("up.sh: ukm5_pos_1.14.9.tgz installed"),
        "{}",
        t.log("ukm5-up.out")
    );
    let log = t.log("pos.log");
    assert!(
        log.contains("INFO  [Mint] Starting UKM 5 POS 1.14.9"),
        "{log}"
    );
    // A full reboot is required: told to the cashier, reported in the inventory
    // for as long as the terminal runs in the boot it was installed in.
    assert!(
        stderr(&out).contains("Reboot the register fully"),
        "{}",
        stderr(&out)
    );
    let inv = inventory(&t, "boot-1").await;
    assert_eq!(inv.version, "1.14.9");
    assert_eq!(inv.loaded_package, None);
    assert!(inv.reboot_required);
    assert_eq!(
        crate::terminal::detail(&inv, "reboot-required-for"),
        Some("1.14.9")
    );
    assert!(inventory(&t, "boot-1").await.reboot_required);

    // After the full reboot (a new boot id) the update is in force.
    t.services().stop("ukm5").await.unwrap();
    let mut boot = std::process::Command::new(posup_path())
        .args(["sim-product", "ukm5", "--cold-boot", "--product"])
        .arg(&t.product)
        .arg("--logs")
        .arg(&t.logs)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(
        "the register after the reboot",
        Duration::from_secs(20),
        || {
            t.log("pos.log")
                .contains("The update to 1.14.9 is in force after the full reboot")
        },
    );
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &boot.id().to_string()])
        .status();
    boot.wait().unwrap();
    assert!(!inventory(&t, "boot-2").await.reboot_required);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forced_update_asks_nobody_and_takes_a_bare_build_number() {
    let t = register("1.8.4").await;
    ukm5::set_mode(&t.product, Mode::Locked).unwrap();
    wait_mode(&t, "LOCKED");
    // A Russian store: the cashier's message is in Russian.
    let out = apply(
        &t,
        &t.package("ukm5", "877"),
        &["--forced", "--var", "posup-language=ru"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        step_names(&out),
        ["inspect", "precheck", "stage", "apply", "verify", "commit"]
    );
    assert!(
        stderr(&out).contains(
            "Установлена UKM 5 POS 877. Чтобы завершить обновление, полностью перезагрузите кассу"
        ),
        "{}",
        stderr(&out)
    );
    assert_eq!(version(&t), "877");
    // Nobody is at the register: it comes back locked.
    wait_mode(&t, "LOCKED");
    assert!(inventory(&t, "boot-1").await.reboot_required);
}

/// A register with only what the document names: the plugin needs its `up.sh`,
/// knows the version it installed, and tells a good start from a bad one by the
/// register program staying up.
#[tokio::test(flavor = "multi_thread")]
async fn a_bare_register_is_updated_by_its_up_sh_and_rolled_back_byte_for_byte() {
    let t = register("1.8.4").await;
    std::fs::remove_file(t.product.join(ukm5::VERSION_FILE)).unwrap();
    t.services().restart("ukm5").await.unwrap();
    wait_mode(&t, "SALE");
    let dir = tempfile::tempdir().unwrap();
    let bare = |name: &str| sample_package_without("ukm5", name, "version", dir.path());
    let settle = [
        "--var",
        "ukm5-settle-secs=2",
        "--var",
        "posup-boot-id=boot-1",
    ];
    let before = snapshot(&t.product);

    let out = apply_bare(
        &t,
        &bare("1.14.10-broken"),
        &[&settle[..], &["--forced"]].concat(),
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("ukm5 stopped") && err.contains("rolled back"),
        "{err}"
    );
    assert_eq!(snapshot(&t.product), before);
    wait_mode(&t, "SALE");

    let out = apply_bare(
        &t,
        &bare("1.14.9"),
        &[&settle[..], &["--answer", "yes"]].concat(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    for module in ukm5::MODULES {
        let text = read(&t.product.join("mint").join(module));
        assert!(
            text.lines().next().unwrap().ends_with(" 1.14.9"),
            "{module}: {text}"
        );
    }
    let inv = t
        .inventory_with("ukm5", &[("posup-boot-id", "boot-1")])
        .await;
    assert_eq!(inv.version, "1.14.9");
    assert_eq!(inv.state, "RUNNING");
    assert!(inv.ready && inv.reboot_required);
}

/// Without its installer the register is not touched: the plugin says how to
/// grant it.
#[tokio::test(flavor = "multi_thread")]
async fn an_update_without_the_registers_installer_is_refused() {
    let t = Terminal::new("home/ukm5", &[REGISTER], false);
    ukm5::init_ukm5(&t.product, &t.logs, "1.8.4").unwrap();
    t.services().start("ukm5").await.unwrap();
    wait_mode(&t, "SALE");
    let before = snapshot(&t.product);
    // `posup apply` names the missing grant before any step runs…
    let out = apply(&t, &t.package("ukm5", "1.14.9"), &["--forced"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("nothing was changed")
            && err.contains("[allow] services = [\"ukm5-up\", …]")
            && err.contains("[services.ukm5-up]"),
        "{err}"
    );
    assert_eq!(snapshot(&t.product), before);
    // …and the plugin itself refuses in precheck, as it does under an agent.
    let out = apply(
        &t,
        &t.package("ukm5", "1.14.9"),
        &["--forced", "--partial-grants"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("precheck failed")
            && err.contains("sudo ./up.sh")
            && err.contains("[services.ukm5-up]"),
        "{err}"
    );
    assert_eq!(snapshot(&t.product), before);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_open_receipt_and_a_declining_cashier_leave_the_program_alone() {
    let t = register("1.8.4").await;
    ukm5::set_mode(&t.product, Mode::Receipt).unwrap();
    wait_mode(&t, "RECEIPT");
    let before = snapshot(&t.product);
    let pkg = t.package("ukm5", "1.14.9");
    for extra in [&[][..], &["--forced"][..]] {
        let out = apply(&t, &pkg, extra);
        assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
        assert!(
            stderr(&out).contains("a receipt is open at the register"),
            "{}",
            stderr(&out)
        );
        assert_eq!(snapshot(&t.product), before);
    }
    // The receipt was not interrupted.
    assert_eq!(ukm5::last_mode(&t.log("pos.log")), Some("RECEIPT"));

    // The receipt is closed; the cashier declines. The package stays loaded, as
    // on the register, which asks again later; the program is untouched.
    ukm5::set_mode(&t.product, Mode::Sale).unwrap();
    wait_mode(&t, "SALE");
    let out = apply(&t, &pkg, &["--answer", "no"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("declined"), "{}", stderr(&out));
    assert_eq!(
        step_names(&out),
        ["inspect", "precheck", "stage", "consent"]
    );
    assert_eq!(version(&t), "1.8.4");
    let mut after = snapshot(&t.product);
    let loaded = PathBuf::from(ukm5::PACKAGE_DIR).join("ukm5_pos_1.14.9.tgz");
    assert!(after.remove(&loaded).is_some(), "the package is loaded");
    assert_eq!(after, before);
    assert_eq!(ukm5::last_mode(&t.log("pos.log")), Some("SALE"));

    // Asked again, the cashier agrees: the loaded package is installed.
    let out = apply(&t, &pkg, &["--answer", "yes"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(version(&t), "1.14.9");
}

#[test]
fn a_wrongly_named_package_is_refused_before_anything_changes() {
    let t = Terminal::new("home/ukm5", &[REGISTER], false);
    ukm5::init_ukm5(&t.product, &t.logs, "1.8.4").unwrap();
    let before = snapshot(&t.product);
    let pkg = t.package("ukm5", "misnamed");
    assert!(pkg.ends_with("ukm5-pos-1.15.0.tar.gz"));
    let out = apply(&t, &pkg, &["--partial-grants"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("ukm5-pos-1.15.0.tar.gz") && err.contains("ukm5_pos_<version>.tgz"),
        "{err}"
    );
    assert_eq!(step_names(&out), ["inspect"]);
    assert_eq!(snapshot(&t.product), before);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_register_that_does_not_start_is_rolled_back_byte_for_byte() {
    let t = register("1.8.4").await;
    let before = snapshot(&t.product);
    let out = apply(
        &t,
        &t.package("ukm5", "1.14.10-broken"),
        &["--answer", "yes"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("verify failed") && err.contains("rolled back"),
        "{err}"
    );
    assert!(err.contains("Cannot load lib/ukm5-fiscal.jar"), "{err}");
    // The summary says what the register runs now.
    assert!(err.contains("installed version: 1.8.4"), "{err}");
    // Program, settings, drop folder and reboot mark: all as before.
    assert_eq!(snapshot(&t.product), before);
    assert!(!t.state.join("backup/mint").exists());
    // The old program sells again.
    wait_mode(&t, "SALE");
    assert!(
        t.log("pos.log")
            .ends_with("Mode changed: STARTING -> SALE\n")
    );
    let inv = inventory(&t, "boot-1").await;
    assert_eq!(inv.version, "1.8.4");
    assert!(!inv.reboot_required && inv.loaded_package.is_none());
}
