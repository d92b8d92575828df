//! `posup demo`, the README's main command, end to end: an embedded server,
//! simulated kiosks with their own agents, a download and a rollout
//! pilot → even → odd.

use crate::support::{posup, stderr};

#[test]
fn the_demo_updates_every_terminal_wave_by_wave() {
    let dir = tempfile::tempdir().unwrap();
    let out = posup()
        .args(["demo", "--terminals", "4", "--wave-timeout", "120", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", stderr(&out));
    for step in [
        "[download] kiosk_7.5.0.tgz to every terminal — 4 of 4 succeeded, 0 failed",
        "[wave 1/3] Pilot (Demo release) — 2 of 2 succeeded, 0 failed",
        "[wave 2/3] Even (Demo release) — 1 of 1 succeeded, 0 failed",
        "[wave 3/3] Odd (Demo release) — 1 of 1 succeeded, 0 failed",
    ] {
        assert!(stdout.contains(step), "missing `{step}` in:\n{stdout}");
    }
    // Every terminal ends on the new version.
    let table: Vec<&str> = stdout.lines().filter(|l| l.starts_with("Kiosk ")).collect();
    assert_eq!(table.len(), 4, "{stdout}");
    assert!(table.iter().all(|l| l.contains("7.5.0")), "{stdout}");
}
