//! The Openbravo plugin through `posup apply`, against a simulated store server
//! that really runs.
//!
//! Fixture terminal: the Openbravo installation under `openbravo/` (core
//! `src-db/…/AD_MODULE.xml`, `modules/<javapackage>/…`, pending batches in
//! `sync/pending/`), logs under `logs/`. The site preference
//! `ignore-version-check` is passed with `--var`. Most cases name the store
//! server's log (`openbravo-log`); the *bare* case has only what Openbravo's
//! documents name: no folder of pending batches, no log.

use std::time::Duration;

use posup_runtime::caps::services::ServiceManager;
use posup_sim::openbravo;

use std::path::Path;
use std::process::Output;

use crate::support::{snapshot, stderr, wait_for};
use crate::terminal::{Service, Terminal, detail};

const SERVER: Service = Service {
    name: "openbravo",
    product: "openbravo",
};
const MODULE: &str = "org.openbravo.retail.posterminal";
/// The variable that points the plugin at the simulated server's log.
const LOGGED: (&str, &str) = ("openbravo-log", openbravo::LOG_FILE);

/// `posup apply` on a store server whose log the plugin reads.
fn apply(t: &Terminal, package: &Path, vars: &[(&str, &str)]) -> Output {
    let vars: Vec<_> = [LOGGED].iter().chain(vars).copied().collect();
    t.apply("openbravo", package, &vars)
}

async fn inventory(t: &Terminal) -> posup_runtime::types::Inventory {
    t.inventory_with("openbravo", &[LOGGED]).await
}

/// A store server with the baseline modules, running, central `online` or not.
async fn store(central_online: bool) -> Terminal {
    let t = Terminal::new("openbravo", &[SERVER], false);
    openbravo::init_openbravo(&t.product, &t.logs).unwrap();
    openbravo::set_central(&t.product, central_online).unwrap();
    t.services().start("openbravo").await.unwrap();
    let status = if central_online { "online" } else { "offline" };
    wait_for("the store server to start", Duration::from_secs(30), || {
        t.log(openbravo::LOG_FILE)
            .contains(&format!("Server status: {status}"))
    });
    t
}

fn computed(t: &Terminal) -> u64 {
    let modules = openbravo::installed_modules(&t.product).unwrap();
    openbravo::computed_version(modules.iter().map(|m| m.version.as_str())).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_module_update_raises_the_computed_version() {
    let t = store(true).await;
    let inv = inventory(&t).await;
    let before: u64 = inv.version.parse().unwrap();
    assert_eq!(before, computed(&t));
    assert_eq!(inv.modules.len(), 5);
    assert_eq!(inv.modules[0].name, "org.openbravo");
    assert!(
        inv.modules
            .iter()
            .any(|m| m.name == MODULE && m.version == "1.8.3900"),
        "{inv:?}"
    );
    assert_eq!(inv.pending_sync, 0);
    assert_eq!(inv.state, "online");

    let out = apply(&t, &t.package("openbravo", "1.8.4000"), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let after = computed(&t);
    assert!(after > before);
    assert!(
        t.log(openbravo::LOG_FILE).contains(&format!(
            "Version information recomputed: version {after} from 5 modules"
        )),
        "{}",
        t.log(openbravo::LOG_FILE)
    );
    let inv = inventory(&t).await;
    assert_eq!(inv.version, after.to_string());
    assert!(
        inv.modules
            .iter()
            .any(|m| m.name == MODULE && m.version == "1.8.4000")
    );

    // Versions only grow: the same module again is refused.
    let snap = snapshot(&t.product);
    let out = apply(&t, &t.package("openbravo", "1.8.4000"), &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("only grow"), "{}", stderr(&out));
    assert_eq!(snapshot(&t.product), snap);
}

#[tokio::test(flavor = "multi_thread")]
async fn data_pending_to_sync_holds_the_update_back() {
    let t = store(false).await;
    openbravo::add_pending_batches(&t.product, 3).unwrap();
    let inv = inventory(&t).await;
    assert_eq!(inv.pending_sync, 3);
    assert_eq!(inv.state, "offline");
    let before = snapshot(&t.product);
    let package = t.package("openbravo", "1.8.4000");

    for vars in [vec![], vec![("ignore-version-check", "N")]] {
        let out = apply(&t, &package, &vars);
        assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains("3 batches of store data are pending to sync")
                && err.contains("ignore-version-check"),
            "{err}"
        );
        assert_eq!(snapshot(&t.product), before);
    }
    let out = apply(&t, &package, &[("ignore-version-check", "yes")]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("must be Y"), "{}", stderr(&out));
    assert_eq!(snapshot(&t.product), before);

    // A hot fix goes in with the site's ignore-version-check set to Y; the
    // pending data stays pending.
    let out = apply(&t, &package, &[("ignore-version-check", "Y")]);
    assert!(out.status.success(), "{}", stderr(&out));
    let inv = inventory(&t).await;
    assert_eq!(inv.pending_sync, 3);
    assert_eq!(inv.version, computed(&t).to_string());
    assert!(
        inv.modules
            .iter()
            .any(|m| m.name == MODULE && m.version == "1.8.4000")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_module_the_server_cannot_start_with_is_rolled_back() {
    let t = store(true).await;
    let before = snapshot(&t.product);
    let out = apply(&t, &t.package("openbravo", "1.8.4100-broken"), &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("needs org.openbravo.mobile.core 1.8.4100 or newer")
            && err.contains("rolled back"),
        "{err}"
    );
    assert_eq!(snapshot(&t.product), before);
    wait_for(
        "the store server to start again",
        Duration::from_secs(30),
        || {
            t.log(openbravo::LOG_FILE)
                .matches("Version information recomputed")
                .count()
                == 2
        },
    );
    assert_eq!(
        t.services().status("openbravo").await.unwrap(),
        posup_runtime::caps::services::State::Running
    );
}

/// A store server with only what the documents name: nothing counts the data
/// pending to sync, so an Update is refused and a Forced update goes ahead,
/// checked by the server staying up; a module it cannot start with is rolled
/// back byte for byte.
#[tokio::test(flavor = "multi_thread")]
async fn a_bare_store_server_is_updated_only_when_forced() {
    let t = store(true).await;
    std::fs::remove_dir_all(t.product.join(openbravo::PENDING_DIR)).unwrap();
    let before = snapshot(&t.product);
    let settle = [("openbravo-settle-secs", "2")];
    let good = t.package("openbravo", "1.8.4000");

    let out = t.apply("openbravo", &good, &settle);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("posup cannot tell whether store data is pending to sync"),
        "{}",
        stderr(&out)
    );
    assert_eq!(snapshot(&t.product), before);

    let broken = t.package("openbravo", "1.8.4100-broken");
    let out = t.apply_with("openbravo", &broken, &settle, &["--forced"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("openbravo stopped") && stderr(&out).contains("rolled back"),
        "{}",
        stderr(&out)
    );
    assert_eq!(snapshot(&t.product), before);

    let out = t.apply_with("openbravo", &good, &settle, &["--forced"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let inv = t.inventory("openbravo").await;
    assert_eq!(inv.state, "running");
    assert_eq!(detail(&inv, "pending-sync"), Some("unknown"));
    assert!(
        inv.modules
            .iter()
            .any(|m| m.name == MODULE && m.version == "1.8.4000")
    );
}
