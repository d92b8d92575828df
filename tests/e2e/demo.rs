//! `posup demo`, the README's main command, end to end: an embedded server,
//! two stores with every product posup updates, their agents, a download and a
//! rollout pilot → even → odd, a hot fix rolled back, and the stores' reports.

use crate::support::{posup, stderr};

#[test]
fn the_demo_updates_the_whole_fleet_and_the_stores_get_their_reports() {
    let dir = tempfile::tempdir().unwrap();
    let out = posup()
        .args(["demo", "--wave-timeout", "120", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", stderr(&out));
    for step in [
        "[download] every package to its terminals — 13 of 13 succeeded, 0 failed",
        "[wave 1/3] Pilot (Night release) — 2 of 2 succeeded, 0 failed",
        "[wave 2/3] Even (Night release) — 6 of 6 succeeded, 0 failed",
        "[wave 3/3] Odd (Night release) — 5 of 5 succeeded, 0 failed",
        "(Forced update) — 0 of 1 succeeded, 1 failed",
    ] {
        assert!(stdout.contains(step), "missing `{step}` in:\n{stdout}");
    }
    // Every terminal ends on its new version; the Openbravo store server, whose
    // hot fix could not start, is back on the night's version.
    let table: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("Лесная ") || l.starts_with("Восточная "))
        .collect();
    assert_eq!(table.len(), 13, "{stdout}");
    for (product, to) in [
        ("ukm5", "1.14.9"),
        ("kiosk", "7.5.0"),
        ("iiko-back", "3.2.0"),
        ("iiko-front", "2.4.0"),
        ("icecash", "2.0.060"),
        ("oscar", "22.0.0"),
        ("openbravo", "1.8.4000"),
    ] {
        let rows: Vec<&&str> = table.iter().filter(|l| l.contains(product)).collect();
        assert!(!rows.is_empty(), "no {product} in:\n{stdout}");
        assert!(
            rows.iter().all(|l| l.contains(&format!("→ {to} "))),
            "{product} not on {to}:\n{stdout}"
        );
    }
    assert!(
        stdout.contains("hot fix 1.8.4100-broken: failed"),
        "{stdout}"
    );
    // UKM 5 registers ask for the full reboot their documentation requires.
    assert!(
        table
            .iter()
            .filter(|l| l.contains("ukm5"))
            .all(|l| l.contains("required")),
        "{stdout}"
    );
    // The version overview: different from central before, the same after.
    assert!(stdout.contains("before Openbravo 4") && stdout.contains("Different"));
    assert!(stdout.contains("after  Openbravo 4") && stdout.contains("Same"));
    // Each store received its plain-text report, in its own language.
    for (store, report, site) in [
        (
            "Лесная",
            "Отчёт об обновлении: Night release",
            "Магазин: Лесная",
        ),
        (
            "Восточная",
            "Update report: Night release",
            "Site: Восточная",
        ),
    ] {
        let received = stdout
            .split(&format!("── What store «{store}» received ──"))
            .nth(1)
            .unwrap_or_default();
        let received = received.split("── What store").next().unwrap_or_default();
        assert!(
            received.contains(report) && received.contains(site),
            "{store}:\n{received}"
        );
        assert!(!received.contains("**"), "no Markdown: {received}");
        if store == "Лесная" {
            // Subjects too are in the store's language.
            assert!(
                !received.contains("Update report:") && !received.contains("Planned update:"),
                "{received}"
            );
        }
    }
}
