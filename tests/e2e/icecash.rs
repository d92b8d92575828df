//! The IceCash plugin through `posup apply`, against a simulated register whose
//! `dIceCash` and `DTPrint` services really run.
//!
//! Fixture terminal: the register's `/home/kassir` (which holds `dIceCash`) is
//! the product folder, logs under `logs/`. The server's variables are passed with
//! `--var`. A *bare* register is only what the IceCash document names: the
//! program folder and its two services, no log the plugin is told of; a *logged*
//! one names dIceCash's output (`icecash-log`), whose start line the plugin reads.

use std::time::Duration;

use posup_runtime::caps::services::ServiceManager;
use posup_sim::icecash;

use crate::support::mariadb::Scratch;
use crate::support::{read, snapshot, stderr, wait_for};
use crate::terminal::{Service, Terminal, detail};

const SERVICES: [Service; 2] = [
    Service {
        name: "dIceCash",
        product: "dicecash",
    },
    Service {
        name: "DTPrint",
        product: "dtprint",
    },
];

/// The variables of a register whose dIceCash output the plugin reads.
const LOGGED: [(&str, &str); 2] = [
    ("icecash-log", "dIceCash.log"),
    ("icecash-settle-secs", "1"),
];
/// The variables of a bare register: verify goes by the services' state.
const BARE: [(&str, &str); 1] = [("icecash-settle-secs", "2")];

/// A register running dIceCash `version`; `scripts` is whether the device type
/// grants package scripts.
async fn register(version: &str, scripts: bool) -> Terminal {
    let t = Terminal::new("register/home/kassir", &SERVICES, scripts);
    icecash::init_icecash(&t.product, &t.logs, version).unwrap();
    let services = t.services();
    services.start("DTPrint").await.unwrap();
    services.start("dIceCash").await.unwrap();
    wait_for("dIceCash to start", Duration::from_secs(30), || {
        t.log(icecash::DICECASH_LOG)
            .contains("Start dIceCash Server v")
    });
    t
}

/// The server variables `vars` with those of the fixture's kind.
fn with<'a>(kind: &[(&'a str, &'a str)], vars: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    kind.iter().chain(vars).copied().collect()
}

fn program_version(t: &Terminal, dir: &str) -> Option<String> {
    icecash::program_version(&read(&t.product.join(dir).join("dIceCash.py")))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_program_upgrade_renames_the_old_program_and_tells_the_cashier() {
    let t = register("2.0.059", false).await;
    let old_program = snapshot(&t.product.join(icecash::PROGRAM_DIR));
    let out = t.apply(
        "icecash",
        &t.package("icecash", "2.0.060"),
        &with(&LOGGED, &[("version", "2.0.060")]),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        program_version(&t, icecash::PROGRAM_DIR).as_deref(),
        Some("2.0.060")
    );
    // The old program is `dIceCash_`, exactly as it was.
    assert_eq!(
        snapshot(&t.product.join(icecash::PREVIOUS_DIR)),
        old_program
    );
    let log = t.log(icecash::DICECASH_LOG);
    assert!(
        log.contains("Start dIceCash Server v 2.0.060 [10110]"),
        "{log}"
    );
    assert!(
        t.log(icecash::DTPRINT_LOG)
            .matches("DTPrint started")
            .count()
            == 2
    );
    // The cashier was told.
    assert!(
        stderr(&out).contains("Программа IceCash обновлена до версии 2.0.060"),
        "{}",
        stderr(&out)
    );

    let inv = t.inventory("icecash").await;
    assert_eq!(inv.version, "2.0.060");
    assert_eq!(inv.state, "running");
    assert_eq!(detail(&inv, "DTPrint"), Some("running"));
    // No environment update has run through posup yet.
    assert_eq!(detail(&inv, "environment-update"), Some(""));
    assert_eq!(detail(&inv, "previous-program"), Some("2.0.059"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bare_register_is_upgraded_and_rolled_back_by_its_services_state() {
    let t = register("2.0.059", false).await;
    let before = snapshot(&t.product);
    // A program that dies on start: the services' state alone shows it.
    let out = t.apply(
        "icecash",
        &t.package("icecash", "2.0.061-broken"),
        &with(&BARE, &[("version", "2.0.061")]),
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("dIceCash stopped")
            && err.contains("after it was started with the update")
            && err.contains("rolled back"),
        "{err}"
    );
    assert_eq!(snapshot(&t.product), before);

    let out = t.apply(
        "icecash",
        &t.package("icecash", "2.0.060"),
        &with(&BARE, &[("version", "2.0.060")]),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        program_version(&t, icecash::PROGRAM_DIR).as_deref(),
        Some("2.0.060")
    );
    assert_eq!(
        program_version(&t, icecash::PREVIOUS_DIR).as_deref(),
        Some("2.0.059")
    );
    assert!(
        stderr(&out).contains("Программа IceCash обновлена до версии 2.0.060"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_start_line_of_another_version_fails_the_upgrade() {
    let t = register("2.0.059", false).await;
    let before = snapshot(&t.product);
    // The register is told to expect another start line than the program prints.
    let out = t.apply(
        "icecash",
        &t.package("icecash", "2.0.060"),
        &with(
            &LOGGED,
            &[
                ("version", "2.0.060"),
                (
                    "icecash-started",
                    "Start dIceCash Server v {version} [10119]",
                ),
                ("icecash-verify-timeout", "5"),
            ],
        ),
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("dIceCash started another version: "),
        "{}",
        stderr(&out)
    );
    assert_eq!(snapshot(&t.product), before);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_program_upgrade_needs_the_servers_version() {
    let t = register("2.0.059", false).await;
    let before = snapshot(&t.product);
    let package = t.package("icecash", "2.0.060");

    let out = t.apply("icecash", &package, &BARE);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("the server variable `version` is not set"),
        "{}",
        stderr(&out)
    );
    let out = t.apply("icecash", &package, &with(&BARE, &[("version", "2.0.061")]));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("offers 2.0.061"), "{}", stderr(&out));
    let out = t.apply("icecash", &package, &with(&BARE, &[("version", "2.0.059")]));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    // A log the server names must be a file of the logs folder, never a path.
    let out = t.apply(
        "icecash",
        &package,
        &[
            ("version", "2.0.060"),
            ("icecash-log", "../register/home/kassir/x"),
        ],
    );
    assert!(
        stderr(&out).contains("must name a file in the device's logs folder"),
        "{}",
        stderr(&out)
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(snapshot(&t.product), before);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_program_that_does_not_start_is_rolled_back_byte_for_byte() {
    let t = register("2.0.059", false).await;
    // An earlier upgrade left its dIceCash_ behind; it comes back too.
    let earlier = t.product.join(icecash::PREVIOUS_DIR);
    std::fs::create_dir_all(&earlier).unwrap();
    std::fs::write(
        earlier.join("dIceCash.py"),
        "#!/usr/bin/python\nVERSION     = '2.0.058'\n",
    )
    .unwrap();
    let before = snapshot(&t.product);
    let out = t.apply(
        "icecash",
        &t.package("icecash", "2.0.061-broken"),
        &with(&LOGGED, &[("version", "2.0.061")]),
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("ImportError: No module named dbIceCash") && err.contains("rolled back"),
        "{err}"
    );
    assert_eq!(snapshot(&t.product), before);
    // The old program serves again.
    wait_for(
        "dIceCash 2.0.059 to serve again",
        Duration::from_secs(30),
        || {
            t.log(icecash::DICECASH_LOG)
                .matches("Start dIceCash Server v 2.0.059")
                .count()
                == 2
        },
    );
    assert!(
        !stderr(&out).contains("обновлена"),
        "no message for a failed upgrade"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_environment_update_runs_install_sh_where_scripts_are_granted() {
    let t = register("2.0.059", true).await;
    let out = t.apply(
        "icecash",
        &t.package("icecash", "001"),
        &[("update", "001")],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let inv = t.inventory("icecash").await;
    assert_eq!(detail(&inv, "environment-update"), Some("001"));
    assert_eq!(inv.version, "2.0.059");
    // The same update again has nothing to do.
    let again = t.apply(
        "icecash",
        &t.package("icecash", "001"),
        &[("update", "001")],
    );
    assert_eq!(again.status.code(), Some(1), "{}", stderr(&again));
    assert!(
        stderr(&again).contains("already ran environment update 001"),
        "{}",
        stderr(&again)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_environment_update_is_refused_without_the_scripts_grant() {
    let t = register("2.0.059", false).await;
    let before = snapshot(&t.product);
    let out = t.apply(
        "icecash",
        &t.package("icecash", "001"),
        &[("update", "001")],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("precheck failed") && err.contains("does not grant scripts"),
        "{err}"
    );
    assert_eq!(snapshot(&t.product), before);
    assert!(!t.state.join("staging/iceupd-001").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_install_sh_leaves_the_register_as_it_was() {
    let t = register("2.0.059", true).await;
    let before = snapshot(&t.product);
    let out = t.apply(
        "icecash",
        &t.package("icecash", "002-broken"),
        &[("update", "002")],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("install.sh exited with code 1") && err.contains("rolled back"),
        "{err}"
    );
    assert_eq!(snapshot(&t.product), before);
    let inv = t.inventory("icecash").await;
    assert_eq!(detail(&inv, "environment-update"), Some(""));
    // The register kept running throughout.
    assert_eq!(
        t.services().status("dIceCash").await.unwrap(),
        posup_runtime::caps::services::State::Running
    );
}

/// IceCash keeps its settings (`tb_sets`) and the upload flags of its receipts
/// and Z-reports (`up` in `tb_trsc_hd` and `tb_Zet`) in MySQL. Where the device
/// configuration names that database, the plugin reports what is not uploaded
/// yet and the register's numbers, and an environment update, which alters
/// tables, waits until everything is uploaded.
#[tokio::test(flavor = "multi_thread")]
async fn with_its_database_an_environment_update_waits_for_uploads() {
    let db = Scratch::create("icecash").await;
    db.run(&[
        // IceCash's own definition of tb_sets (dbIceCash's _create).
        "CREATE TABLE tb_sets (`id` int(4) unsigned NOT NULL AUTO_INCREMENT, \
         `group` char(64) default 'simple', `name` char(64) default 'simple', \
         `value` char(255) default '', primary key (`id`), unique key `name` (`name`))",
        "INSERT INTO tb_sets (`group`, `name`, `value`) VALUES \
         ('magazine', 'idplace', '3'), ('magazine', 'nkassa', '2'), \
         ('server', 'sets', '117'), ('server', 'version', '2.0.060'), ('server', 'update', '001')",
        "CREATE TABLE tb_trsc_hd (`id` int unsigned NOT NULL AUTO_INCREMENT, \
         `up` tinyint(1) default 0, primary key (`id`))",
        "INSERT INTO tb_trsc_hd (`up`) VALUES (0), (0), (0), (1), (1)",
        "CREATE TABLE tb_Zet (`id` int unsigned NOT NULL AUTO_INCREMENT, \
         `up` tinyint(1) default 0, primary key (`id`))",
        "INSERT INTO tb_Zet (`up`) VALUES (0), (1)",
    ])
    .await;
    let t = register("2.0.059", true).await;
    t.grant_database("icecash", &db.url());

    let inv = t.inventory("icecash").await;
    assert_eq!(inv.pending_sync, 4, "{inv:?}");
    assert_eq!(detail(&inv, "idplace"), Some("3"));
    assert_eq!(detail(&inv, "nkassa"), Some("2"));
    assert_eq!(detail(&inv, "sets"), Some("117"));

    let before = snapshot(&t.product);
    let waits = t.apply(
        "icecash",
        &t.package("icecash", "001"),
        &[("update", "001")],
    );
    assert_eq!(waits.status.code(), Some(3), "{}", stderr(&waits));
    let err = stderr(&waits);
    assert!(
        err.contains("3 receipts and 1 Z-report") && err.contains("not uploaded"),
        "{err}"
    );
    assert_eq!(snapshot(&t.product), before);

    // IceCash's own upload marks them (up=1); then the update runs.
    db.run(&["UPDATE tb_trsc_hd SET up = 1", "UPDATE tb_Zet SET up = 1"])
        .await;
    let out = t.apply(
        "icecash",
        &t.package("icecash", "001"),
        &[("update", "001")],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let inv = t.inventory("icecash").await;
    assert_eq!(inv.pending_sync, 0);
    assert_eq!(detail(&inv, "environment-update"), Some("001"));
    db.drop().await;
}

/// A database the configuration names but that cannot be read does not stop a
/// program upgrade; the inventory says why its facts are missing.
#[tokio::test(flavor = "multi_thread")]
async fn an_unreadable_database_is_reported_not_fatal() {
    let t = register("2.0.059", false).await;
    // Nothing listens on port 1.
    t.grant_database("icecash", "mysql://icecash:secret@127.0.0.1:1/IceCash");
    let inv = t.inventory("icecash").await;
    let why = detail(&inv, "database").unwrap_or_default().to_owned();
    assert!(why.contains("cannot connect"), "{inv:?}");
    assert!(!why.contains("secret"), "{why}");
    let out = t.apply(
        "icecash",
        &t.package("icecash", "2.0.060"),
        &with(&BARE, &[("version", "2.0.060")]),
    );
    assert!(out.status.success(), "{}", stderr(&out));
}
