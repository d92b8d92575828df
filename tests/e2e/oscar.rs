//! The OSCAR plugin through `posup apply`, against a simulated MICROS Retail
//! OSCAR POS server that really runs: the installation under
//! `opt/osc_usr/osc21`, its log `oscar.log`, the server supervised by posup's
//! process backend. Complete, partial and small updates, the `.chg` files, the
//! `UPD<nnn>` numbering and the kept `Upd<nn>` archive, the preconditions, and
//! rollbacks that restore the installation byte for byte.
//!
//! Most cases run on the simulator's full installation, whose log and client
//! lists the plugin is told of. The *bare* cases have only what the OSCAR
//! document names: no `VERSION`, no client or unit lists, no log named.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use posup_runtime::caps::services::ServiceManager;
use posup_sim::oscar;

use crate::support::{Node, posup, read, sample_package_without, snapshot, stderr, wait_for};
use crate::terminal::{Service, Terminal, detail, steps};

const SERVER: Service = Service {
    name: "oscar",
    product: "oscar",
};

/// An installation of release 21.3.0 with its server running and ready.
async fn installation() -> Terminal {
    let t = Terminal::new("opt/osc_usr/osc21", &[SERVER], false);
    oscar::init_oscar(&t.product, &t.logs, "21.3.0").unwrap();
    t.services().start("oscar").await.unwrap();
    wait_ready(&t, "21.3.0");
    t
}

fn wait_ready(t: &Terminal, version: &str) {
    let line = format!("MICROS Retail OSCAR POS server {version} ready");
    wait_for(
        &format!("server {version} to be ready"),
        Duration::from_secs(20),
        || last_server_line(t).is_some_and(|l| l.contains(&line)),
    );
}

/// The last line the server logged about itself.
fn last_server_line(t: &Terminal) -> Option<String> {
    t.log("oscar.log")
        .lines()
        .rev()
        .find(|l| l.contains("[Server]"))
        .map(str::to_owned)
}

/// The server variables that point the plugin at the simulator's log.
const LOGGED: [(&str, &str); 3] = [
    ("oscar-log", "oscar.log"),
    ("oscar-ready", "POS server {version} ready"),
    ("oscar-settle-secs", "1"),
];

/// A Forced update of `package` on the full installation.
fn apply(t: &Terminal, package: &Path) -> Output {
    apply_with(t, package, true, &LOGGED)
}

fn apply_with(t: &Terminal, package: &Path, forced: bool, vars: &[(&str, &str)]) -> Output {
    let mut cmd = posup();
    cmd.args(["apply", "--plugin", "oscar", "--json"])
        .arg("--package")
        .arg(package)
        .arg("--root")
        .arg(&t.product)
        .arg("--state-dir")
        .arg(&t.state)
        .arg("--device-config")
        .arg(&t.config);
    if forced {
        cmd.arg("--forced");
    }
    for (name, value) in vars {
        cmd.arg("--var").arg(format!("{name}={value}"));
    }
    cmd.output().unwrap()
}

/// An installation of release 21.3.0 with only what the document names: no
/// `VERSION` file and no client or system-unit lists.
async fn bare_installation() -> Terminal {
    let t = Terminal::new("opt/osc_usr/osc21", &[SERVER], false);
    oscar::init_oscar(&t.product, &t.logs, "21.3.0").unwrap();
    for f in [oscar::VERSION_FILE, oscar::CLIENTS, oscar::UNITS] {
        std::fs::remove_file(t.product.join(f)).unwrap();
    }
    t.services().start("oscar").await.unwrap();
    wait_ready(&t, "21.3.0");
    t
}

/// A bare installation takes an Update only when it can tell nobody works at a
/// client; a Forced update goes ahead, is checked by its files and the server
/// staying up, and a broken one is rolled back byte for byte.
#[tokio::test(flavor = "multi_thread")]
async fn a_bare_installation_is_updated_when_forced_and_rolled_back_byte_for_byte() {
    let t = bare_installation().await;
    let dir = tempfile::tempdir().unwrap();
    let before = snapshot(&t.product);
    let settle = [("oscar-settle-secs", "2")];

    let good = sample_package_without("oscar", "oscupd10-complete", "VERSION", dir.path());
    let out = apply_with(&t, &good, false, &settle);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("posup cannot tell whether a transaction is open")
            && err.contains(
                "there is no /product/work.srv/clients.lst and /product/work.srv/sysunits.lst"
            )
            && err.contains("Forced update"),
        "{err}"
    );
    assert_eq!(snapshot(&t.product), before);

    let broken = sample_package_without("oscar", "oscupd14-broken-complete", "VERSION", dir.path());
    let out = apply_with(&t, &broken, true, &settle);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("the OSCAR server is not running after the update")
            && err.contains("rolled back"),
        "{err}"
    );
    assert_eq!(snapshot(&t.product), before);
    wait_ready(&t, "21.3.0");

    let out = apply_with(&t, &good, true, &settle);
    assert_ok(&out);
    assert_eq!(steps(&out)[0].2, "complete oscupd10");
    assert!(file(&t, "bin/liboscdb.so").starts_with("SIM-ELF liboscdb.so 22.0.0\n"));
    assert!(!t.product.join("VERSION").exists());
    assert_eq!(bytes(&t.product.join("Upd01.tgz")), bytes(&good));
    let inv = t.inventory("oscar").await;
    assert_eq!(inv.version, "oscupd10");
    assert_eq!(inv.state, "running");
    t.services().stop("oscar").await.unwrap();
}

fn file(t: &Terminal, rel: &str) -> String {
    read(&t.product.join(rel))
}

fn bytes(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn sub(tree: &BTreeMap<PathBuf, Node>, prefix: &str) -> BTreeMap<PathBuf, Node> {
    tree.iter()
        .filter(|(p, _)| p.starts_with(prefix))
        .map(|(p, n)| (p.clone(), n.clone()))
        .collect()
}

/// `OscUpd<nn>` folders left in posup's staging area.
fn staged_dirs(t: &Terminal) -> Vec<String> {
    std::fs::read_dir(t.state.join("staging"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("OscUpd"))
                .collect()
        })
        .unwrap_or_default()
}

fn assert_ok(out: &Output) {
    assert!(out.status.success(), "{}\n{:?}", stderr(out), steps(out));
    assert!(
        steps(out).iter().all(|(_, r, _)| r == "ok"),
        "{:?}",
        steps(out)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_complete_update_exchanges_the_installation_and_keeps_the_site_data() {
    let t = installation().await;
    let before = snapshot(&t.product);
    let def_before = file(&t, oscar::CONFIG_DEF);
    let pkg = t.package("oscar", "oscupd10-complete");
    let out = apply(&t, &pkg);
    assert_ok(&out);
    let inspect = &steps(&out)[0];
    assert_eq!(inspect.2, "complete 22.0.0");

    let after = snapshot(&t.product);
    assert_eq!(file(&t, "VERSION"), "22.0.0\n");
    assert!(file(&t, "bin/liboscdb.so").starts_with("SIM-ELF liboscdb.so 22.0.0\n"));
    assert!(file(&t, "fgl/Receipt.fgl").contains("layout 2"));
    // work.srv and bin/oscar.def are the installation's, not the archive's.
    assert_eq!(sub(&after, "work.srv"), sub(&before, "work.srv"));
    assert_eq!(file(&t, oscar::CONFIG_DEF), def_before);
    // bin/oscar.ini is the installation's, changed by oscar.ini.chg.
    let ini = file(&t, oscar::CONFIG_INI);
    assert_eq!(
        ini,
        "; MICROS Retail OSCAR POS environment of the Windows clients.\n\
         MICROS Retail OSCAR POS_VERSION=\"Oscar3_ASU_Test_3\"\n\
         OSCDBNAME=..\\work.srv\\oscar.db\n"
    );
    // The update's instructions are not installed.
    for f in ["Rules", "oscar.ini.chg"] {
        assert!(!t.product.join(f).exists(), "{f}");
    }
    // Numbered and kept.
    assert_eq!(
        bytes(&t.product.join("work/update/UPD001.tgz")),
        bytes(&pkg)
    );
    assert_eq!(bytes(&t.product.join("Upd01.tgz")), bytes(&pkg));
    let state = file(&t, oscar::STATE_LOG);
    for step in [
        "UPD001 oscupd10.tgz: update started: complete update to 22.0.0 (Rules: completeupdate = 1)",
        "copied from the installation: work.srv, bin/oscar.ini, bin/oscar.def",
        "archive stored as work/update/UPD001.tgz",
        "terminal clients and server shut down",
        "oscar.ini.chg applied to bin/oscar.ini: removed MICROS Retail OSCAR POS_OMLPATH, set MICROS Retail OSCAR POS_VERSION=\"Oscar3_ASU_Test_3\"",
        "exchanging the directories: the installation then holds 22.0.0",
        "server started; verified: 22.0.0 installed and the server runs",
        "the original archive is kept as Upd01.tgz in the installation root",
        "UPD001 oscupd10.tgz: update finished",
    ] {
        assert!(state.contains(step), "{step}\n{state}");
    }
    // The previous installation served as the rollback copy until the commit.
    assert!(staged_dirs(&t).is_empty(), "{:?}", staged_dirs(&t));
    wait_ready(&t, "22.0.0");
    let log = t.log("oscar.log");
    assert!(log.contains("Shutting down terminal clients: POS01, POS02"));
    let inv = t.inventory("oscar").await;
    assert_eq!(inv.version, "22.0.0");
    assert_eq!(inv.state, "running");
    assert_eq!(detail(&inv, "kept-archives"), Some("Upd01.tgz"));

    // The next update gets the next number; a small one keeps the release.
    let small = t.package("oscar", "oscupd12-small");
    let out = apply(&t, &small);
    assert_ok(&out);
    assert_eq!(
        bytes(&t.product.join("work/update/UPD002.zip")),
        bytes(&small)
    );
    assert_eq!(bytes(&t.product.join("Upd02.zip")), bytes(&small));
    assert!(t.product.join("Upd01.tgz").exists());
    assert_eq!(file(&t, "VERSION"), "22.0.0\n");
    assert!(file(&t, oscar::STATE_LOG).contains("UPD002 oscupd12.zip: update finished"));
    assert_eq!(
        detail(&t.inventory("oscar").await, "kept-archives"),
        Some("Upd01.tgz Upd02.zip")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_partial_update_unpacks_over_a_copy_and_applies_oscar_def_chg() {
    let t = installation().await;
    let before = snapshot(&t.product);
    let pkg = t.package("oscar", "oscupd11-partial");
    let out = apply(&t, &pkg);
    assert_ok(&out);
    assert_eq!(steps(&out)[0].2, "partial 21.3.1");
    let after = snapshot(&t.product);
    assert_eq!(file(&t, "VERSION"), "21.3.1\n");
    assert!(file(&t, "bin/oscar").starts_with("SIM-ELF oscar 21.3.1\n"));
    // What the archive does not hold stays as installed.
    for kept in [
        "bin/liboscdb.so",
        "fgl/Receipt.fgl",
        "bmp/Logo.bmp",
        "bin/oscar.ini",
    ] {
        assert_eq!(after[Path::new(kept)], before[Path::new(kept)], "{kept}");
    }
    assert_eq!(sub(&after, "work.srv"), sub(&before, "work.srv"));
    assert_eq!(
        file(&t, oscar::CONFIG_DEF),
        "# MICROS Retail OSCAR POS environment of the Linux server.\n\
         MICROS Retail OSCAR POS_OMLPATH=../logs,30\n\
         MICROS Retail OSCAR POS_VERSION=\"Oscar3_21\"\n\
         OSCDBNAME=work.srv/oscar.db\n\
         LANG=de_DE.UTF-8\n\
         OSINTERDEBUG=Y\n"
    );
    assert!(!t.product.join("Rules").exists() && !t.product.join("oscar.def.chg").exists());
    assert_eq!(bytes(&t.product.join("Upd01.tgz")), bytes(&pkg));
    assert!(file(&t, oscar::STATE_LOG).contains(
        "oscar.def.chg applied to bin/oscar.def: removed SALESDEBUG, set OSINTERDEBUG=Y"
    ));
    wait_ready(&t, "21.3.1");
    assert!(
        t.log("oscar.log")
            .contains("Interface debug output is on (OSINTERDEBUG=Y)")
    );
    assert!(staged_dirs(&t).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_small_update_unpacks_in_place_without_a_backup() {
    let t = installation().await;
    let before = snapshot(&t.product);
    let pkg = t.package("oscar", "oscupd12-small");
    let out = apply(&t, &pkg);
    assert_ok(&out);
    assert_eq!(steps(&out)[0].2, "small oscupd12");
    let after = snapshot(&t.product);
    assert!(file(&t, "fsm/Sale.fsm").contains("5 x 8 keys"));
    assert!(file(&t, "asc/Texts.asc").contains("Kundenkarte"));
    assert!(t.product.join("bmp/Promo.bmp").is_file());
    assert_ne!(
        after[Path::new("bmp/Logo.bmp")],
        before[Path::new("bmp/Logo.bmp")]
    );
    // The program and everything else the archive does not hold are untouched.
    for (path, node) in &before {
        let p = path.to_string_lossy();
        if ![
            "fgl/Receipt.fgl",
            "fsm/Sale.fsm",
            "asc/Texts.asc",
            "bmp/Logo.bmp",
            "work",
        ]
        .contains(&p.as_ref())
        {
            assert_eq!(after.get(path), Some(node), "{p}");
        }
    }
    assert!(!t.product.join("Rules").exists());
    assert_eq!(
        bytes(&t.product.join("work/update/UPD001.zip")),
        bytes(&pkg)
    );
    assert_eq!(bytes(&t.product.join("Upd01.zip")), bytes(&pkg));
    assert!(
        file(&t, oscar::STATE_LOG)
            .contains("unpacking into the installation without a backup, no rollback is possible")
    );
    // No new directory and no copy of the installation was made.
    assert!(staged_dirs(&t).is_empty());
    wait_ready(&t, "21.3.0");
}

#[tokio::test(flavor = "multi_thread")]
async fn preconditions_refuse_the_update_and_leave_the_installation_alone() {
    let t = installation().await;
    let pkg = t.package("oscar", "oscupd10-complete");
    type Setup = fn(&Path);
    let busy: [(Setup, Setup, &str); 3] = [
        (
            |p| oscar::open_transaction(p, "POS01", Some("4711")).unwrap(),
            |p| oscar::open_transaction(p, "POS01", None).unwrap(),
            "transaction 4711 is open at terminal client POS01",
        ),
        (
            |p| oscar::sign_on(p, "POS02", Some("1001")).unwrap(),
            |p| oscar::sign_on(p, "POS02", None).unwrap(),
            "operator 1001 is signed on at terminal client POS02",
        ),
        (
            |p| oscar::set_unit(p, "POS02", false, 21_474_836_480).unwrap(),
            |p| oscar::set_unit(p, "POS02", true, 21_474_836_480).unwrap(),
            "system unit POS02 is offline",
        ),
    ];
    for (set, clear, reason) in busy {
        set(&t.product);
        if reason.starts_with("transaction") {
            // The running server sees the sale (it reads its clients on a
            // timer), so the refusal below meets a server in business.
            wait_for(
                "the server to log the transaction",
                Duration::from_secs(20),
                || {
                    t.log("oscar.log")
                        .contains("Transaction 4711 opened at POS01")
                },
            );
        }
        let before = snapshot(&t.product);
        let out = apply(&t, &pkg);
        assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
        assert!(stderr(&out).contains(reason), "{reason}\n{}", stderr(&out));
        assert_eq!(snapshot(&t.product), before);
        clear(&t.product);
    }
    // The server went on serving the whole time.
    assert!(last_server_line(&t).unwrap().contains("21.3.0 ready"));

    // Not enough disk space on a system unit is a failure, not a wait.
    oscar::set_unit(&t.product, "POS02", true, 1_000).unwrap();
    let before = snapshot(&t.product);
    let out = apply(&t, &pkg);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("not enough disk space on system unit POS02: 1000 bytes free"),
        "{}",
        stderr(&out)
    );
    assert_eq!(snapshot(&t.product), before);
    assert_eq!(file(&t, "VERSION"), "21.3.0\n");
}

#[test]
fn a_package_with_bad_rules_or_a_wrong_name_is_refused() {
    let t = Terminal::new("opt/osc_usr/osc21", &[SERVER], false);
    oscar::init_oscar(&t.product, &t.logs, "21.3.0").unwrap();
    let before = snapshot(&t.product);
    let out = apply(&t, &t.package("oscar", "oscupd13-bad-rules"));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("oscupd13.tgz: Rules line 2: unknown value `fastupdate`"),
        "{err}"
    );
    assert_eq!(snapshot(&t.product), before);

    let renamed = t.state.join("update-10.tgz");
    std::fs::copy(t.package("oscar", "oscupd10-complete"), &renamed).unwrap();
    let out = apply(&t, &renamed);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("oscupd<nnn>.tgz (Linux) or oscupd<nnn>.zip (Windows)"),
        "{}",
        stderr(&out)
    );
    assert_eq!(snapshot(&t.product), before);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_complete_update_is_rolled_back_byte_for_byte() {
    let t = installation().await;
    let before = snapshot(&t.product);
    let out = apply(&t, &t.package("oscar", "oscupd14-broken-complete"));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("verify failed") && err.contains("rolled back"),
        "{err}"
    );
    assert!(err.contains("Cannot load bin/liboscdb.so"), "{err}");
    assert_eq!(snapshot(&t.product), before);
    assert!(staged_dirs(&t).is_empty());
    // The failed attempt's Update State is kept outside the restored tree.
    let record = read(&t.state.join("staging/UpdateState-UPD001.log"));
    assert!(
        record.contains("UPD001 oscupd14.tgz: exchanging the directories"),
        "{record}"
    );
    assert!(
        record.contains("rolled back to the previous installation"),
        "{record}"
    );
    wait_ready(&t, "21.3.0");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_partial_update_is_rolled_back_byte_for_byte() {
    let t = installation().await;
    let before = snapshot(&t.product);
    let out = apply(&t, &t.package("oscar", "oscupd15-broken-partial"));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("bin/liboscdb.so is release 21.3.0; server 22.1.0 needs 22.1.x"),
        "{err}"
    );
    assert_eq!(snapshot(&t.product), before);
    wait_ready(&t, "21.3.0");
    // The same installation then takes a good update.
    let out = apply(&t, &t.package("oscar", "oscupd11-partial"));
    assert_ok(&out);
    assert!(
        t.product.join("work/update/UPD001.tgz").exists(),
        "the failed attempt used no number"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_small_update_says_it_cannot_be_rolled_back() {
    let t = installation().await;
    let out = apply(&t, &t.package("oscar", "oscupd16-broken-small"));
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("fsm/Sale.fsm: not a form definition"), "{err}");
    assert!(
        err.contains("oscupd16.zip is a small update (Rules: smallupdate = 1): it was unpacked straight into the installation without a backup, so it cannot be rolled back"),
        "{err}"
    );
    // As documented for small updates: the files are replaced in place.
    assert!(file(&t, "fgl/Receipt.fgl").contains("layout 3"));
    assert!(file(&t, oscar::STATE_LOG).contains("no rollback is possible"));
    t.services().stop("oscar").await.unwrap();
}

/// The same update for the Windows units of a mixed system, `oscupd10.zip`,
/// built from `Rules` alone: what the store copied to the server's `work`.
fn windows_counterpart(t: &Terminal, rules: &str) {
    let source = tempfile::tempdir().unwrap();
    std::fs::write(
        source.path().join("package.toml"),
        "file = \"oscupd10.zip\"\ndevice_type = \"oscar\"\nnote = \"the Windows units' archive\"\n",
    )
    .unwrap();
    std::fs::create_dir(source.path().join("content")).unwrap();
    std::fs::write(source.path().join("content/Rules"), rules).unwrap();
    let out = tempfile::tempdir().unwrap();
    let zip = posup_sim::package::build(source.path(), out.path()).unwrap();
    std::fs::copy(zip, t.product.join("work/oscupd10.zip")).unwrap();
}

/// A mixed Windows/Linux system needs identical `Rules` in both archives of an
/// update: where the Windows archive lies in `work/` with other `Rules`, the
/// Linux update is refused before anything changes; with the same `Rules` it
/// goes ahead.
#[tokio::test(flavor = "multi_thread")]
async fn a_mixed_systems_archives_must_agree_on_their_rules() {
    let t = installation().await;
    let pkg = t.package("oscar", "oscupd10-complete");
    windows_counterpart(&t, "completeupdate = 0\r\nsmallupdate = 1\r\n");
    let before = snapshot(&t.product);
    let out = apply(&t, &pkg);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("precheck failed")
            && err.contains("differ from those of work/oscupd10.zip")
            && err.contains("identical Rules"),
        "{err}"
    );
    assert_eq!(snapshot(&t.product), before);

    windows_counterpart(&t, "CompleteUpdate = 1\r\n");
    let out = apply(&t, &pkg);
    assert_ok(&out);
    assert_eq!(file(&t, "VERSION"), "22.0.0\n");
}

/// One OSCAR installation of a multi-installation on one machine, with its own
/// `posup agent` configuration and state folder: its own device.
struct Installation {
    product: PathBuf,
    config: PathBuf,
    /// The agent's own process backend (pidfiles in its state folder).
    services: std::sync::Arc<dyn ServiceManager>,
}

impl Installation {
    async fn new(
        machine: &Path,
        folder: &str,
        name: &str,
        number: u32,
        server: &str,
        secret: &str,
    ) -> Self {
        let product = machine.join("opt/osc_usr").join(folder);
        let logs = machine.join("var/log").join(folder);
        let state = machine.join("var/lib/posup").join(folder);
        oscar::init_oscar(&product, &logs, "21.3.0").unwrap();
        let config = machine.join(format!("etc/posup/{folder}.toml"));
        std::fs::create_dir_all(config.parent().unwrap()).unwrap();
        std::fs::write(
            &config,
            format!(
                r#"server = "{server}"
insecure_http = true
insecure_unsigned = true
enrollment_secret = "{secret}"
state_dir = "{state}"

[device]
guid = "e2e-oscar-{folder}"
site = "Test store"
name = "{name}"
number = {number}
device_type = "oscar"

[device_types.oscar.dirs]
product = "{product}"
staging = "{machine}/opt/osc_usr/.posup-{folder}/staging"
backup = "{machine}/opt/osc_usr/.posup-{folder}/backup"
logs = "{logs}"

[device_types.oscar.allow]
services = ["oscar"]

[device_types.oscar.services.oscar]
command = ["{posup}", "sim-product", "oscar", "--product", "{product}", "--logs", "{logs}"]
log = "{logs}/stdout.log"
"#,
                state = state.display(),
                product = product.display(),
                machine = machine.display(),
                logs = logs.display(),
                posup = crate::support::posup_path(),
            ),
        )
        .unwrap();
        let services = posup_agent::AgentConfig::load(&config)
            .unwrap()
            .device_config()
            .service_manager(&state.join("run"))
            .unwrap();
        services.start("oscar").await.unwrap();
        Installation {
            product,
            config,
            services,
        }
    }

    /// `posup agent --once` for this installation.
    fn poll(&self) {
        let out = posup()
            .args(["agent", "--once", "--config"])
            .arg(&self.config)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
    }

    fn version(&self) -> String {
        read(&self.product.join(oscar::VERSION_FILE))
            .trim()
            .to_owned()
    }

    async fn stop(&self) {
        self.services.stop("oscar").await.unwrap();
    }
}

/// A multi-installation (head office and branch on one server machine): each
/// installation is its own device with its own agent, configuration and state
/// folder. The server shows each one's version and update state, and a task
/// for the branch updates the branch alone.
#[tokio::test(flavor = "multi_thread")]
async fn each_installation_of_a_multi_installation_is_its_own_device() {
    use posup_proto::api::{
        CreateGroup, CreateTask, DeviceTaskState, GroupKind, PackageView, TaskView,
    };
    use posup_proto::{DirPaths, TaskKind};

    let data = tempfile::tempdir().unwrap();
    let server = crate::agent::Server::start(data.path(), None).await;
    let api = server.api();
    // Where installations usually are; each terminal's own [dirs] wins.
    api.bundled_device_type(
        "oscar",
        "MICROS Retail OSCAR POS servers",
        DirPaths {
            product: Some("/opt/osc_usr/osc21".into()),
            staging: Some("/opt/osc_usr/.posup/staging".into()),
            backup: Some("/opt/osc_usr/.posup/backup".into()),
            logs: Some("/opt/osc_usr/osc21/log".into()),
        },
    )
    .await;
    // The server started at once, as on a machine nobody works at.
    api.put(
        "/api/v1/variables",
        &posup_proto::api::SetVariable {
            name: "oscar-settle-secs".into(),
            value: "1".into(),
            secret: false,
            scope: posup_proto::api::VariableScope::All,
        },
    )
    .await;

    let machine = tempfile::tempdir().unwrap();
    let (url, secret) = (server.url(), server.secret.clone());
    let head = Installation::new(machine.path(), "osc_ho", "Head office", 1, &url, &secret).await;
    let branch = Installation::new(machine.path(), "osc_br", "Branch 7", 2, &url, &secret).await;
    // The first poll enrolls and fetches the plugin; the next reports the
    // installation.
    for _ in 0..2 {
        head.poll();
        branch.poll();
    }
    let devices = api.devices().await;
    let version_of = |guid: &str| {
        devices
            .iter()
            .find(|d| d.guid == guid)
            .map(|d| d.version.clone())
            .unwrap_or_else(|| panic!("{guid} is not a device: {devices:?}"))
    };
    assert_eq!(devices.len(), 2);
    assert_eq!(version_of("e2e-oscar-osc_ho"), "21.3.0");
    assert_eq!(version_of("e2e-oscar-osc_br"), "21.3.0");
    let branch_id = devices
        .iter()
        .find(|d| d.guid == "e2e-oscar-osc_br")
        .unwrap()
        .id;

    let source =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packages/oscar/oscupd10-complete");
    let file = posup_sim::package::build(&source, &data.path().join("pkgs")).unwrap();
    let package: PackageView = api
        .post_bytes(
            "/api/v1/packages?device_type=oscar&file_name=oscupd10.tgz",
            std::fs::read(&file).unwrap(),
        )
        .await;
    let group: posup_proto::api::GroupView = api
        .post(
            "/api/v1/groups",
            &CreateGroup {
                name: "Branches".into(),
                description: String::new(),
                kind: GroupKind::Static,
                filter: None,
                devices: vec![branch_id],
            },
        )
        .await;
    let task: TaskView = api
        .post(
            "/api/v1/tasks",
            &CreateTask {
                name: None,
                kind: TaskKind::ForcedUpdate,
                package_id: package.id,
                group_id: group.id,
                start_at: None,
                notice_override: Some("test: simulated installations".into()),
            },
        )
        .await;
    head.poll();
    branch.poll();
    let task = api.wait_finished(task.id).await;
    assert_eq!(task.counts.success, 1, "{task:?}");
    let rows = api.task_devices(task.id).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0].guid.as_str(), rows[0].state),
        ("e2e-oscar-osc_br", DeviceTaskState::Success)
    );
    assert_eq!(branch.version(), "22.0.0");
    assert_eq!(head.version(), "21.3.0");
    head.poll();
    branch.poll();
    let devices = api.devices().await;
    let now = |guid: &str| {
        devices
            .iter()
            .find(|d| d.guid == guid)
            .unwrap()
            .version
            .clone()
    };
    assert_eq!(now("e2e-oscar-osc_br"), "22.0.0");
    assert_eq!(now("e2e-oscar-osc_ho"), "21.3.0");
    head.stop().await;
    branch.stop().await;
    server.stop().await;
}
