//! The IceCash plugin through `posup apply`, against a simulated register whose
//! `dIceCash` and `DTPrint` services really run.
//!
//! Fixture terminal: the register's file system under `register/`
//! (`home/kassir/dIceCash`, `var/lib/mysql/IceCash/tb_sets.txt`), logs under
//! `logs/`. The server's variables `version` and `update` are passed with `--var`.

use std::time::Duration;

use posup_runtime::caps::services::ServiceManager;
use posup_sim::icecash;

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

/// A register running dIceCash `version`; `scripts` is whether the device type
/// grants package scripts.
async fn register(version: &str, scripts: bool) -> Terminal {
    let t = Terminal::new("register", &SERVICES, scripts);
    icecash::init_icecash(&t.product, &t.logs, version).unwrap();
    let services = t.services();
    services.start("DTPrint").await.unwrap();
    services.start("dIceCash").await.unwrap();
    wait_for("dIceCash to serve", Duration::from_secs(30), || {
        t.log(icecash::DICECASH_LOG)
            .contains("Serving the register interface")
    });
    t
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
        &[("version", "2.0.060")],
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
    assert!(log.contains("IceCash 2.0.060 started"), "{log}");
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
    assert_eq!(detail(&inv, "printer"), Some("KKM_FPRINT"));
    assert_eq!(detail(&inv, "environment-update"), Some("000"));
    assert_eq!(detail(&inv, "previous-program"), Some("2.0.059"));
    icecash::set_printer(&t.product, "KKM_SHTRIHM", "shtrihm").unwrap();
    let inv = t.inventory("icecash").await;
    assert_eq!(detail(&inv, "printer"), Some("KKM_SHTRIHM"));
    assert_eq!(detail(&inv, "printer-name"), Some("shtrihm"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_program_upgrade_needs_the_servers_version() {
    let t = register("2.0.059", false).await;
    let before = snapshot(&t.product);
    let package = t.package("icecash", "2.0.060");

    let out = t.apply("icecash", &package, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("the server variable `version` is not set"),
        "{}",
        stderr(&out)
    );
    let out = t.apply("icecash", &package, &[("version", "2.0.061")]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("offers 2.0.061"), "{}", stderr(&out));
    let out = t.apply("icecash", &package, &[("version", "2.0.059")]);
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
        &[("version", "2.0.061")],
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
                .matches("IceCash 2.0.059 started")
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
    assert_eq!(icecash::read_sets(&t.product).unwrap()["update"], "001");
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
        stderr(&again).contains("already at update 001"),
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
    assert_eq!(icecash::read_sets(&t.product).unwrap()["update"], "000");
    // The register kept running throughout.
    assert_eq!(
        t.services().status("dIceCash").await.unwrap(),
        posup_runtime::caps::services::State::Running
    );
}
