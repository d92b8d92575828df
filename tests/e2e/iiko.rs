//! The iiko BackOffice and iikoFront plugins through `posup apply`, against a
//! simulated iikoOffice and iikoFront that really run.
//!
//! Fixture terminals: BackOffice under `office/` (`Office/Plugins/Kiosk.BackOffice`,
//! `Rms/backclient.config.xml`), Front under `front/` (`Front.Net/Plugins/Kiosk.Front`,
//! `Desktop/`), logs under `logs/`. The site's order — BackOffice first, started
//! and logged in to RMS, then iikoFront — is passed the way the server passes it:
//! the BackOffice inventory's `ready` and version become the Front's
//! `iiko-backoffice-ready` variable.

use std::time::Duration;

use posup_runtime::caps::services::ServiceManager;
use posup_sim::iiko::{self, RmsLogin};

use crate::support::{read, snapshot, stderr, wait_for};
use crate::terminal::{Service, Terminal, steps};

const BACKOFFICE: Service = Service {
    name: "BackOffice",
    product: "iiko-backoffice",
};
const FRONT: Service = Service {
    name: "iikoFront",
    product: "iiko-front",
};

/// BackOffice with the kiosk plugin `version`, started and logged in to RMS.
async fn backoffice(version: &str) -> Terminal {
    let t = Terminal::new("office", &[BACKOFFICE], false);
    iiko::init_backoffice(&t.product, &t.logs, version).unwrap();
    t.services().start("BackOffice").await.unwrap();
    wait_for(
        "BackOffice to log in to RMS",
        Duration::from_secs(30),
        || t.log(iiko::BACKOFFICE_LOG).contains("published to RMS"),
    );
    t
}

/// iikoFront with the kiosk plugin `version` (needing the BackOffice plugin
/// `needs`), started with its plugin running.
async fn front(version: &str, needs: &str) -> Terminal {
    let t = Terminal::new("front", &[FRONT], false);
    iiko::init_front(&t.product, &t.logs, version, needs).unwrap();
    t.services().start("iikoFront").await.unwrap();
    wait_for("iikoFront to start", Duration::from_secs(30), || {
        t.log(iiko::FRONT_LOG)
            .contains("iikoFront is ready: 1 of 1")
    });
    t
}

#[tokio::test(flavor = "multi_thread")]
async fn the_site_updates_backoffice_then_front() {
    let bo = backoffice("3.1.0").await;
    let fr = front("2.3.0", "3.1.0").await;
    let menu = read(&bo.product.join(iiko::MENU_FILE));

    // BackOffice first: the menu is saved, kept, and BackOffice logs in to RMS.
    let out = bo.apply(
        "iiko-backoffice",
        &bo.package("iiko-backoffice", "3.2.0"),
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let names: Vec<String> = steps(&out).into_iter().map(|s| s.0).collect();
    assert_eq!(
        names,
        [
            "inspect", "precheck", "stage", "consent", "apply", "verify", "commit"
        ]
    );
    assert_eq!(read(&bo.product.join(iiko::MENU_FILE)), menu);
    let saved = bo
        .state
        .join("backup/kiosk-menu/KioskMenu.3.1.0-before-3.2.0.xml");
    assert_eq!(
        read(&saved),
        menu,
        "the menu saved before the update is kept"
    );
    assert!(!bo.state.join("backup/Kiosk.BackOffice").exists());
    let log = bo.log(iiko::BACKOFFICE_LOG);
    assert!(
        log.contains("Plugin Kiosk.BackOffice 3.2.0 started"),
        "{log}"
    );
    let inv = bo.inventory("iiko-backoffice").await;
    assert_eq!(inv.version, "3.2.0");
    assert!(inv.ready, "{inv:?}");
    assert_eq!(inv.state, "logged in to RMS");

    // RMS now holds the new kiosk settings; the server hands BackOffice's ready
    // version to the Front.
    iiko::set_rms_kiosk_settings(&fr.product, &inv.version).unwrap();
    let old_plugin = snapshot(&fr.product.join("Front.Net/Plugins/Kiosk.Front"));
    let out = fr.apply(
        "iiko-front",
        &fr.package("iiko-front", "2.4.0"),
        &[("iiko-backoffice-ready", &inv.version)],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let manifest = read(
        &fr.product
            .join("Front.Net/Plugins/Kiosk.Front/Manifest.xml"),
    );
    assert!(manifest.contains("<Version>2.4.0</Version>"), "{manifest}");
    // The old plugin is on the desktop, in `old`, as it was.
    assert_eq!(
        snapshot(&fr.product.join("Desktop/old/Kiosk.Front_2.3.0")),
        old_plugin
    );
    let log = fr.log(iiko::FRONT_LOG);
    assert!(log.contains("Plugin Kiosk.Front 2.4.0 started"), "{log}");
    let inv = fr.inventory("iiko-front").await;
    assert_eq!(inv.version, "2.4.0");
    assert_eq!(inv.state, "running");
}

#[tokio::test(flavor = "multi_thread")]
async fn backoffice_readiness_follows_its_rms_login() {
    let bo = backoffice("3.1.0").await;
    let inv = bo.inventory("iiko-backoffice").await;
    assert!(inv.ready && inv.version == "3.1.0", "{inv:?}");
    assert_eq!(
        crate::terminal::detail(&inv, "menu"),
        Some("8 items in 3 groups, 2 kiosks configured")
    );

    // Restarted with its login refused, BackOffice is not ready.
    iiko::set_rms_login(&bo.product, RmsLogin::Refused).unwrap();
    bo.services().restart("BackOffice").await.unwrap();
    wait_for("the refused login", Duration::from_secs(30), || {
        bo.log(iiko::BACKOFFICE_LOG)
            .matches("wrong user name or password")
            .count()
            == 1
    });
    let inv = bo.inventory("iiko-backoffice").await;
    assert!(!inv.ready, "{inv:?}");
    assert_eq!(inv.state, "RMS login refused");

    // An update cannot be verified while RMS refuses the login: rolled back.
    let before = snapshot(&bo.product);
    let out = bo.apply(
        "iiko-backoffice",
        &bo.package("iiko-backoffice", "3.2.0"),
        &[("iiko-verify-timeout", "20")],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("refused"), "{}", stderr(&out));
    assert_eq!(snapshot(&bo.product), before);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backoffice_plugin_that_loses_the_menu_is_rolled_back() {
    let bo = backoffice("3.1.0").await;
    let before = snapshot(&bo.product);
    let out = bo.apply(
        "iiko-backoffice",
        &bo.package("iiko-backoffice", "3.2.1-broken"),
        &[],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("the client's kiosk menu changed during the update")
            && err.contains("8 items in 3 groups, 2 kiosks configured before")
            && err.contains("rolled back"),
        "{err}"
    );
    assert_eq!(snapshot(&bo.product), before);
    // The old plugin runs again with the client's menu.
    wait_for("BackOffice to come back", Duration::from_secs(30), || {
        bo.log(iiko::BACKOFFICE_LOG)
            .matches("Kiosk settings version 3.1.0 published")
            .count()
            == 2
    });
    let inv = bo.inventory("iiko-backoffice").await;
    assert!(inv.ready && inv.version == "3.1.0", "{inv:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn front_waits_until_backoffice_is_ready() {
    let fr = front("2.3.0", "3.1.0").await;
    let before = snapshot(&fr.product);
    let package = fr.package("iiko-front", "2.4.0");

    let out = fr.apply("iiko-front", &package, &[]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("BackOffice is not yet updated, started and logged in to RMS")
            && err.contains("version error"),
        "{err}"
    );
    assert_eq!(snapshot(&fr.product), before);

    // Ready, but with a plugin older than the package needs.
    let out = fr.apply(
        "iiko-front",
        &package,
        &[("iiko-backoffice-ready", "3.1.0")],
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("needs 3.2.0 or newer"),
        "{}",
        stderr(&out)
    );
    assert_eq!(snapshot(&fr.product), before);
    assert!(!fr.product.join("Desktop/old").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_front_plugin_with_a_version_error_is_rolled_back() {
    // The server says BackOffice is ready, but RMS still holds the old settings.
    let fr = front("2.3.0", "3.1.0").await;
    iiko::set_rms_kiosk_settings(&fr.product, "3.1.0").unwrap();
    let before = snapshot(&fr.product);
    let out = fr.apply(
        "iiko-front",
        &fr.package("iiko-front", "2.4.0"),
        &[("iiko-backoffice-ready", "3.2.0")],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("Version error") && err.contains("rolled back"),
        "{err}"
    );
    assert_eq!(snapshot(&fr.product), before);
    assert!(!fr.product.join("Desktop/old").exists());
    wait_for(
        "the old plugin to start again",
        Duration::from_secs(30),
        || {
            fr.log(iiko::FRONT_LOG)
                .matches("Plugin Kiosk.Front 2.3.0 started")
                .count()
                == 2
        },
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_front_plugin_that_cannot_load_is_rolled_back() {
    let fr = front("2.3.0", "3.1.0").await;
    // The desktop's `old` folder exists already, with an earlier copy.
    let earlier = fr.product.join("Desktop/old/Kiosk.Front_2.2.0");
    std::fs::create_dir_all(&earlier).unwrap();
    std::fs::write(earlier.join("Manifest.xml"), "<Manifest />\n").unwrap();
    let before = snapshot(&fr.product);
    let out = fr.apply(
        "iiko-front",
        &fr.package("iiko-front", "2.4.1-broken"),
        &[("iiko-backoffice-ready", "3.2.0")],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("Could not load type 'Kiosk.Front.FrontPlugin'")
            && err.contains("rolled back"),
        "{err}"
    );
    assert_eq!(snapshot(&fr.product), before);
}

/// A site whose BackOffice and iikoFront logs the plugins are not told of: both
/// update, checked by staying up; BackOffice never reports `ready`, since
/// nothing confirms its RMS login, so the server holds the Front back until an
/// operator lets it go (here, the variable given by hand).
#[tokio::test(flavor = "multi_thread")]
async fn without_their_logs_the_site_updates_and_backoffice_is_never_taken_for_ready() {
    let bo = backoffice("3.1.0").await;
    let unknown = [
        ("iiko-backoffice-log", "not-named.log"),
        ("iiko-settle-secs", "1"),
    ];
    let out = bo.apply(
        "iiko-backoffice",
        &bo.package("iiko-backoffice", "3.2.0"),
        &unknown,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let inv = bo.inventory_with("iiko-backoffice", &unknown).await;
    assert_eq!(inv.version, "3.2.0");
    assert!(!inv.ready, "{inv:?}");
    assert_eq!(inv.state, "running; RMS login unknown (no log)");

    let fr = front("2.3.0", "3.1.0").await;
    iiko::set_rms_kiosk_settings(&fr.product, "3.2.0").unwrap();
    let unknown = [
        ("iiko-front-log", "not-named.log"),
        ("iiko-settle-secs", "1"),
        ("iiko-backoffice-ready", "3.2.0"),
    ];
    let out = fr.apply("iiko-front", &fr.package("iiko-front", "2.4.0"), &unknown);
    assert!(out.status.success(), "{}", stderr(&out));
    let manifest = read(
        &fr.product
            .join("Front.Net/Plugins/Kiosk.Front/Manifest.xml"),
    );
    assert!(manifest.contains("<Version>2.4.0</Version>"), "{manifest}");
}
