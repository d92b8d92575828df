//! Rollouts through the API with a set clock: waves and thresholds, maintenance
//! windows, the site limit, ordering across device types, notice and reports.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use posup_proto::rollout::*;
use posup_proto::{Inventory, Page, Phase};
use posup_server::Clock;

use super::*;

/// An agent's view of the server: its id and token.
type Dev = (i64, String);

async fn actions(e: &Env, dev: &Dev) -> Vec<Action> {
    poll(
        e,
        &dev.1,
        PollRequest {
            status: status(),
            ..Default::default()
        },
    )
    .await
    .actions
}

async fn report(
    e: &Env,
    dev: &Dev,
    a: &Action,
    state: FeedbackState,
    retry_after_secs: Option<u64>,
) {
    let key = format!(
        "{}-{}-{}-{}",
        a.action_id,
        a.attempt,
        state.as_str(),
        e.clock.now().timestamp_millis()
    );
    let f = Feedback {
        key,
        task_id: a.task_id,
        action_id: a.action_id,
        device_id: dev.0,
        attempt: a.attempt,
        step: Phase::Apply,
        state,
        message: Some(match state {
            FeedbackState::NotNow => "a customer is at the kiosk".to_string(),
            FeedbackState::Failed => "verify failed: the product did not start".to_string(),
            _ => format!("{} reported", state.as_str()),
        }),
        percent: None,
        at: e.clock.now(),
        retry_after_secs,
    };
    e.ok(
        "POST",
        "/api/v1/agent/feedback",
        &dev.1,
        Some(serde_json::to_value(&f).unwrap()),
    )
    .await;
    // The server's background loop moves rollouts along within a second of a
    // report; reads never do.
    e.tick().await;
}

async fn rollout(e: &Env, id: i64) -> RolloutView {
    serde_json::from_value(
        e.ok("GET", &format!("/api/v1/rollouts/{id}"), ADMIN, None)
            .await,
    )
    .unwrap()
}

async fn create(e: &Env, token: &str, body: Value) -> RolloutView {
    serde_json::from_value(e.ok("POST", "/api/v1/rollouts", token, Some(body)).await).unwrap()
}

/// The wait of `device` in task `task`.
async fn wait_of(e: &Env, task: i64, device: i64) -> Option<Wait> {
    let page: Page<TaskDeviceRow> = serde_json::from_value(
        e.ok(
            "GET",
            &format!("/api/v1/tasks/{task}/devices?per_page=1000"),
            ADMIN,
            None,
        )
        .await,
    )
    .unwrap();
    page.items
        .into_iter()
        .find(|r| r.device_id == device)
        .and_then(|r| r.wait)
}

async fn secret(e: &Env) -> String {
    enrollment_secret(e, "more").await
}

async fn enroll_on_site(
    e: &Env,
    secret: &str,
    guid: &str,
    site: &str,
    name: &str,
    number: u32,
    device_type: &str,
) -> Dev {
    let device = json!({
        "guid": guid, "site": {"name": site, "address": ""}, "name": name,
        "number": number, "device_type": device_type, "agent_version": "0.1.0"});
    enroll(e, secret, device).await
}

/// A device type with a bundled product plugin enabled and one package.
async fn product(e: &Env, device_type: &str, body: Value, package: &Path) -> PackageView {
    e.ok(
        "PUT",
        &format!("/api/v1/device-types/{device_type}"),
        ADMIN,
        Some(body),
    )
    .await;
    let plugin = e
        .upload(
            &format!("/api/v1/plugins?file_name={device_type}.wasm"),
            ADMIN,
            posup_bundled::get(device_type)
                .expect("a bundled plugin")
                .to_vec(),
        )
        .await;
    assert_eq!(
        plugin.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&plugin.bytes)
    );
    e.ok(
        "PUT",
        &format!("/api/v1/device-types/{device_type}/plugin"),
        ADMIN,
        Some(json!({"name": device_type})),
    )
    .await;
    let name = package.file_name().unwrap().to_str().unwrap();
    let p = e
        .upload(
            &format!("/api/v1/packages?device_type={device_type}&file_name={name}"),
            ADMIN,
            std::fs::read(package).unwrap(),
        )
        .await;
    assert_eq!(
        p.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&p.bytes)
    );
    serde_json::from_slice(&p.bytes).unwrap()
}

fn sample(product: &str, version: &str, out: &Path) -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../packages")
        .join(product)
        .join(version);
    posup_sim::package::build(&source, out).unwrap()
}

#[tokio::test]
async fn waves_advance_on_success_pick_up_joiners_and_stop_on_errors() {
    each_backend(|store| async move {
        let e = env(store).await;
        let f = fleet(&e, 6).await;
        let d = &f.devices;
        e.ok("POST", "/api/v1/groups", ADMIN,
            Some(json!({"name": "Pilot", "description": "first registers", "kind": "static", "devices": [d[0].0]}))).await;
        let r = create(&e, ADMIN, json!({"name": "Release 1", "kind": "forced-update", "packages": [f.package.id], "max_failed": 2})).await;
        assert_eq!((r.state, r.wave, r.waves.len()), (RolloutState::Running, 0, 3));
        assert_eq!(r.waves.iter().map(|w| w.group_name.as_str()).collect::<Vec<_>>(), ["Pilot", "Even", "Odd"]);

        // Only the pilot register works until it succeeded.
        for dev in &d[1..] {
            assert!(actions(&e, dev).await.is_empty());
        }
        let pilot = actions(&e, &d[0]).await;
        assert_eq!(pilot.len(), 1);
        report(&e, &d[0], &pilot[0], FeedbackState::Committed, None).await;
        let r = rollout(&e, r.id).await;
        assert_eq!((r.state, r.wave), (RolloutState::Running, 1), "the pilot succeeded: on to Even");
        assert_eq!(r.waves[1].counts.total, 3);

        // Even registers get it, odd ones still wait.
        let mut even = Vec::new();
        for i in [1, 3, 5] {
            let a = actions(&e, &d[i]).await;
            assert_eq!(a.len(), 1, "even device {}", i + 1);
            even.push(a[0].clone());
        }
        for i in [2, 4] {
            assert!(actions(&e, &d[i]).await.is_empty(), "odd device {}", i + 1);
        }

        // A register that joins Even now is picked up by the running rollout.
        let late = enroll_on_site(&e, &secret(&e).await, "late-8", "Store B", "Kassa 8", 8, "test").await;
        e.tick().await;
        let r = rollout(&e, r.id).await;
        assert_eq!(r.waves[1].counts.total, 4);
        let late_action = actions(&e, &late).await;
        assert_eq!(late_action.len(), 1);

        // Two failures reach the error threshold: emergency stop.
        report(&e, &d[1], &even[0], FeedbackState::Failed, None).await;
        assert_eq!(rollout(&e, r.id).await.state, RolloutState::Running);
        report(&e, &d[3], &even[1], FeedbackState::Failed, None).await;
        let r = rollout(&e, r.id).await;
        assert_eq!(r.state, RolloutState::Paused);
        let reason = r.pause_reason.clone().unwrap();
        assert!(reason.contains("emergency stop: 2 device(s) failed"), "{reason}");
        assert!(actions(&e, &d[5]).await.is_empty(), "paused: nothing more starts");

        // Resumed, the failures before no longer count; the wave ends below its
        // 100 % threshold, which pauses the rollout instead of moving on.
        let r: RolloutView = serde_json::from_value(
            e.ok("POST", &format!("/api/v1/rollouts/{}/resume", r.id), ADMIN, None).await,
        )
        .unwrap();
        assert_eq!(r.state, RolloutState::Running);
        let a6 = actions(&e, &d[5]).await;
        report(&e, &d[5], &a6[0], FeedbackState::Committed, None).await;
        report(&e, &late, &late_action[0], FeedbackState::Committed, None).await;
        let r = rollout(&e, r.id).await;
        assert_eq!((r.state, r.wave), (RolloutState::Paused, 1));
        let reason = r.pause_reason.unwrap();
        assert!(reason.contains("ended with 2 of 4 devices updated, below its 100 % success threshold"), "{reason}");
        for i in [2, 4] {
            assert!(actions(&e, &d[i]).await.is_empty(), "odd device {} never started", i + 1);
        }
    })
    .await;
}

#[tokio::test]
async fn a_wave_without_auto_advance_waits_for_the_operator() {
    each_backend(|store| async move {
        let e = env(store).await;
        let f = fleet(&e, 2).await;
        let d = &f.devices;
        let r = create(
            &e,
            ADMIN,
            json!({"kind": "forced-update", "packages": [f.package.id],
            "waves": [{"group_id": 3, "auto_advance": false}, {"group_id": 2}]}),
        )
        .await;
        let a = actions(&e, &d[0]).await;
        report(&e, &d[0], &a[0], FeedbackState::Committed, None).await;
        let r = rollout(&e, r.id).await;
        assert_eq!((r.state, r.wave), (RolloutState::Waiting, 0));
        assert!(actions(&e, &d[1]).await.is_empty());
        let viewer = e.token("viewer", Role::Viewer).await;
        let denied = e
            .call(
                "POST",
                &format!("/api/v1/rollouts/{}/advance", r.id),
                Some(&viewer),
                None,
            )
            .await;
        assert_eq!(denied.status, StatusCode::FORBIDDEN);
        let r: RolloutView = serde_json::from_value(
            e.ok(
                "POST",
                &format!("/api/v1/rollouts/{}/advance", r.id),
                ADMIN,
                None,
            )
            .await,
        )
        .unwrap();
        assert_eq!((r.state, r.wave), (RolloutState::Running, 1));
        let a = actions(&e, &d[1]).await;
        report(&e, &d[1], &a[0], FeedbackState::Committed, None).await;
        let r = rollout(&e, r.id).await;
        assert_eq!(r.state, RolloutState::Finished);
        assert_eq!(r.counts.success, 2);
        let again = e
            .call(
                "POST",
                &format!("/api/v1/rollouts/{}/advance", r.id),
                Some(ADMIN),
                None,
            )
            .await;
        assert_eq!(again.status, StatusCode::CONFLICT);

        // A wave's task goes only with its rollout, which takes its tasks along.
        let wave_task = r.waves[0].tasks[0];
        let del = e
            .call(
                "DELETE",
                &format!("/api/v1/tasks/{wave_task}"),
                Some(ADMIN),
                None,
            )
            .await;
        assert_eq!(del.status, StatusCode::CONFLICT);
        assert!(
            del.error().contains("is a wave of rollout"),
            "{}",
            del.error()
        );
        e.ok("DELETE", &format!("/api/v1/rollouts/{}", r.id), ADMIN, None)
            .await;
        let gone = e
            .call(
                "GET",
                &format!("/api/v1/tasks/{wave_task}"),
                Some(ADMIN),
                None,
            )
            .await;
        assert_eq!(gone.status, StatusCode::NOT_FOUND);
        e.ok(
            "DELETE",
            &format!("/api/v1/packages/{}", f.package.id),
            ADMIN,
            None,
        )
        .await;
    })
    .await;
}

#[tokio::test]
async fn updates_start_only_inside_the_window_and_a_closing_window_interrupts_nothing() {
    each_backend(|store| async move {
        let e = env(store).await;
        let f = fleet(&e, 4).await;
        let d = &f.devices;
        let noon = DateTime::parse_from_rfc3339("2026-11-23T12:00:00Z").unwrap().to_utc();
        e.clock.set(noon);
        let bad = e.call("POST", "/api/v1/windows", Some(ADMIN),
            Some(json!({"scope": "site", "site": "Store A", "schedule": "0 25 * * *", "duration_minutes": 120}))).await;
        assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(bad.error().contains("0 25 * * *"), "{}", bad.error());
        let w: WindowView = serde_json::from_value(e.ok("POST", "/api/v1/windows", ADMIN,
            Some(json!({"scope": "site", "site": "Store A", "schedule": "0 22 * * *", "duration_minutes": 120, "time_zone": "UTC"}))).await).unwrap();
        assert!(!w.open);
        let task: TaskView = serde_json::from_value(e.ok("POST", "/api/v1/tasks", ADMIN,
            Some(json!({"kind": "forced-update", "package_id": f.package.id, "group_id": 1}))).await).unwrap();

        // Store A (devices 1 and 3) has a closed window; Store B has none.
        assert!(actions(&e, &d[0]).await.is_empty());
        assert_eq!(actions(&e, &d[1]).await.len(), 1);
        let wait = wait_of(&e, task.id, d[0].0).await.expect("a reason to wait");
        assert_eq!(wait.kind, WaitKind::Window);
        assert!(wait.reason.contains("site Store A is closed: it opens 2026-11-23 22:00 UTC"), "{}", wait.reason);

        let detail = e.ok("GET", &format!("/api/v1/devices/{}", d[0].0), ADMIN, None).await;
        assert_eq!(detail["tasks"][0]["wait"]["kind"], "window", "{detail}");

        // The window opens: device 1 starts.
        e.clock.set(noon + chrono::Duration::hours(10));
        let a1 = actions(&e, &d[0]).await;
        assert_eq!(a1.len(), 1);
        assert_eq!(wait_of(&e, task.id, d[0].0).await, None);

        // It closes while device 1 works: device 1 goes on, device 3 waits.
        e.clock.set(noon + chrono::Duration::minutes(12 * 60 + 30));
        assert_eq!(actions(&e, &d[0]).await.len(), 1, "a running update is never interrupted");
        assert!(actions(&e, &d[2]).await.is_empty());
        let wait = wait_of(&e, task.id, d[2].0).await.unwrap();
        assert!(wait.reason.contains("opens 2026-11-24 22:00 UTC"), "{}", wait.reason);
        report(&e, &d[0], &a1[0], FeedbackState::Committed, None).await;
    })
    .await;
}

#[tokio::test]
async fn three_kiosks_on_a_site_are_never_two_down() {
    each_backend(|store| async move {
        let e = env(store).await;
        let dir = tempfile::tempdir().unwrap();
        let pkg = posup_sim::kiosk::kiosk_package(dir.path(), "7.5.0", false).unwrap();
        let package = product(
            &e,
            "kiosk",
            json!({"description": "self-service kiosks", "site_limit": 1}),
            &pkg,
        )
        .await;
        let s = secret(&e).await;
        let mut k = Vec::new();
        for n in 1..=3 {
            k.push(
                enroll_on_site(
                    &e,
                    &s,
                    &format!("kiosk-{n}"),
                    "Mall",
                    &format!("Kiosk {n}"),
                    n,
                    "kiosk",
                )
                .await,
            );
        }
        let task: TaskView = serde_json::from_value(
            e.ok(
                "POST",
                "/api/v1/tasks",
                ADMIN,
                Some(json!({"kind": "forced-update", "package_id": package.id, "group_id": 1})),
            )
            .await,
        )
        .unwrap();

        // Which kiosks hold an update; checked after every poll.
        let mut down: BTreeSet<usize> = BTreeSet::new();
        let mut held: Vec<Option<Action>> = vec![None, None, None];
        let mut rounds = 0;
        // How often a kiosk was seen waiting for the one that is down.
        let mut limited = 0;
        while held.iter().any(Option::is_none) || !down.is_empty() {
            rounds += 1;
            assert!(rounds < 12, "the kiosks did not all get updated");
            let order = [[0, 1, 2], [2, 1, 0], [1, 0, 2]][rounds % 3];
            for i in order {
                if let Some(a) = actions(&e, &k[i]).await.first() {
                    down.insert(i);
                    held[i] = Some(a.clone());
                }
                assert!(down.len() <= 1, "two kiosks down at once: {down:?}");
            }
            let Some(&i) = down.iter().next() else {
                // The only holder answered not-now: time passes.
                e.advance(121);
                continue;
            };
            let a = held[i].clone().unwrap();
            if i == 0 && rounds == 1 {
                // A customer is at the first kiosk: it lets the next one go first.
                report(&e, &k[i], &a, FeedbackState::NotNow, Some(120)).await;
                down.remove(&i);
                held[i] = None;
                let w = wait_of(&e, task.id, k[0].0).await.unwrap();
                assert_eq!(w.kind, WaitKind::NotNow);
                assert!(w.until.is_some());
                continue;
            }
            // The others see why they wait.
            for j in (0..3).filter(|j| *j != i) {
                if let Some(w) = wait_of(&e, task.id, k[j].0).await
                    && w.kind == WaitKind::SiteLimit
                {
                    assert!(
                        w.reason.contains(&format!("updating now: Kiosk {}", i + 1)),
                        "{}",
                        w.reason
                    );
                    limited += 1;
                }
            }
            report(&e, &k[i], &a, FeedbackState::Committed, None).await;
            down.remove(&i);
        }
        let done: TaskView = serde_json::from_value(
            e.ok("GET", &format!("/api/v1/tasks/{}", task.id), ADMIN, None)
                .await,
        )
        .unwrap();
        assert_eq!((done.state, done.counts.success), (TaskState::Finished, 3));
        assert!(limited > 0, "no kiosk was ever held back by the site limit");
    })
    .await;
}

#[tokio::test]
async fn iiko_front_starts_only_after_its_sites_backoffice_is_updated_and_ready() {
    each_backend(|store| async move {
        let e = env(store).await;
        let dir = tempfile::tempdir().unwrap();
        let bo_pkg = product(&e, "iiko-backoffice", json!({"description": "iiko BackOffice"}),
            &sample("iiko-backoffice", "3.2.0", dir.path())).await;
        let front_pkg = product(&e, "iiko-front", json!({"description": "iikoFront registers"}),
            &sample("iiko-front", "2.4.0", dir.path())).await;
        let rule = e.ok("POST", "/api/v1/order-rules", ADMIN,
            Some(json!({"device_type": "iiko-front", "after_type": "iiko-backoffice", "variable": "iiko-backoffice-ready"}))).await;
        assert_eq!(rule["after_type"], "iiko-backoffice");
        let cycle = e.call("POST", "/api/v1/order-rules", Some(ADMIN),
            Some(json!({"device_type": "iiko-backoffice", "after_type": "iiko-front"}))).await;
        assert_eq!(cycle.status, StatusCode::UNPROCESSABLE_ENTITY, "a cycle is refused");

        let s = secret(&e).await;
        let bo1 = enroll_on_site(&e, &s, "bo-1", "Cafe 1", "BackOffice 1", 1, "iiko-backoffice").await;
        let f1 = enroll_on_site(&e, &s, "front-1", "Cafe 1", "Front 1", 2, "iiko-front").await;
        let bo2 = enroll_on_site(&e, &s, "bo-2", "Cafe 2", "BackOffice 2", 1, "iiko-backoffice").await;
        let f2 = enroll_on_site(&e, &s, "front-2", "Cafe 2", "Front 2", 2, "iiko-front").await;
        let r = create(&e, ADMIN, json!({"kind": "forced-update", "packages": [bo_pkg.id, front_pkg.id],
            "waves": [{"group_id": 1}]})).await;
        let mut front_task = None;
        for id in &r.waves[0].tasks {
            let t: TaskView = serde_json::from_value(e.ok("GET", &format!("/api/v1/tasks/{id}"), ADMIN, None).await).unwrap();
            if t.device_type == "iiko-front" {
                front_task = Some(t.id);
            }
        }
        let front_task = front_task.expect("a task for the fronts");

        let inventory = |ready: bool| PollRequest {
            status: status(),
            inventory: Some(Inventory { product: "iiko BackOffice".into(), version: "3.2.0".into(), ready, ..Default::default() }),
            ..Default::default()
        };
        // Neither front starts while its BackOffice has not been updated.
        assert!(actions(&e, &f1).await.is_empty());
        assert!(actions(&e, &f2).await.is_empty());
        let w = wait_of(&e, front_task, f1.0).await.unwrap();
        assert_eq!(w.kind, WaitKind::Order);
        assert!(w.reason.contains("iiko-backoffice on site Cafe 1 to be updated first: BackOffice 1"), "{}", w.reason);

        // Cafe 1's BackOffice is updated but not yet logged in to RMS.
        let a = actions(&e, &bo1).await;
        report(&e, &bo1, &a[0], FeedbackState::Committed, None).await;
        poll(&e, &bo1.1, inventory(false)).await;
        assert!(actions(&e, &f1).await.is_empty());
        let w = wait_of(&e, front_task, f1.0).await.unwrap();
        assert!(w.reason.contains("to report ready after its update: BackOffice 1"), "{}", w.reason);

        // Ready: Cafe 1's front starts and learns the ready version; Cafe 2's waits.
        poll(&e, &bo1.1, inventory(true)).await;
        let got = poll(&e, &f1.1, PollRequest { status: status(), ..Default::default() }).await;
        assert_eq!(got.actions.len(), 1);
        let ready: Vec<_> = got.variables.changes.iter().filter(|c| c.name == "iiko-backoffice-ready").collect();
        assert_eq!(ready.len(), 1);
        assert_eq!(ready[0].value.as_deref(), Some("3.2.0"));
        assert!(actions(&e, &f2).await.is_empty(), "Cafe 2 goes at its own pace");
        let w = wait_of(&e, front_task, f2.0).await.unwrap();
        assert!(w.reason.contains("Cafe 2") && w.reason.contains("BackOffice 2"), "{}", w.reason);

        let a = actions(&e, &bo2).await;
        report(&e, &bo2, &a[0], FeedbackState::Committed, None).await;
        poll(&e, &bo2.1, inventory(true)).await;
        assert_eq!(actions(&e, &f2).await.len(), 1);
    })
    .await;
}

#[tokio::test]
async fn an_update_needs_24_hours_notice_unless_an_admin_overrides() {
    each_backend(|store| async move {
        let e = env(store).await;
        let f = fleet(&e, 2).await;
        e.ok("PUT", "/api/v1/device-types/test", ADMIN, Some(json!({
            "description": "test terminals",
            "allowed": {"dirs": [{"dir": "staging"}, {"dir": "product", "write": true}], "services": ["kiosk"]},
            "paths": {"product": "/opt/test", "staging": "/var/lib/posup/staging"},
            "impact": "register-and-software"
        }))).await;
        e.ok("PUT", "/api/v1/sites/Store%20A/settings", ADMIN,
            Some(json!({"time_zone": "Europe/Moscow", "always_open": true, "reboot_time": "04:00"}))).await;

        let now = e.call("POST", "/api/v1/rollouts", Some(ADMIN),
            Some(json!({"kind": "update", "packages": [f.package.id], "waves": [{"group_id": 1}]}))).await;
        assert_eq!(now.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(now.error().contains("must start at least 24 hours after it is announced"), "{}", now.error());
        let task = e.call("POST", "/api/v1/tasks", Some(ADMIN),
            Some(json!({"kind": "update", "package_id": f.package.id, "group_id": 1}))).await;
        assert_eq!(task.status, StatusCode::UNPROCESSABLE_ENTITY, "plain tasks too");

        let operator = e.token("night shift", Role::Operator).await;
        let denied = e.call("POST", "/api/v1/rollouts", Some(&operator),
            Some(json!({"kind": "update", "packages": [f.package.id], "waves": [{"group_id": 1}],
                        "notice_override": "store agreed by phone"}))).await;
        assert_eq!(denied.status, StatusCode::FORBIDDEN);
        let denied = e.call("POST", "/api/v1/tasks", Some(&operator),
            Some(json!({"kind": "update", "package_id": f.package.id, "group_id": 1,
                        "notice_override": "store agreed by phone"}))).await;
        assert_eq!(denied.status, StatusCode::FORBIDDEN, "plain tasks too");
        assert!(denied.error().contains("24 hours' notice"), "{}", denied.error());
        let r = create(&e, ADMIN, json!({"kind": "update", "packages": [f.package.id], "waves": [{"group_id": 1}],
            "notice_override": "store agreed by phone"})).await;
        assert_eq!(r.notice_override.as_deref(), Some("store agreed by phone"));
        assert_eq!(r.state, RolloutState::Running);
        let audit = e.ok("GET", "/api/v1/audit?object=rollout", ADMIN, None).await;
        assert!(audit.to_string().contains("store agreed by phone"), "{audit}");

        // With notice: accepted from an operator, and announced per site.
        let start = t0() + chrono::Duration::hours(24);
        let r = create(&e, &operator, json!({"name": "November release", "kind": "update", "packages": [f.package.id],
            "waves": [{"group_id": 1}], "start_at": start, "conditions": "Close the **shift** before 22:00."})).await;
        assert_eq!(r.state, RolloutState::Scheduled);
        let messages: Vec<SiteMessage> = serde_json::from_value(
            e.ok("GET", &format!("/api/v1/rollouts/{}/announcements", r.id), ADMIN, None).await).unwrap();
        assert_eq!(messages.len(), 2);
        assert_eq!(messages[0].site, "Store A");
        assert_eq!(
            messages[0].text,
            format!(
                "Planned update: November release\n\
                 Site: Store A, Store A, Main street 1\n\
                 Start: 2023-11-16 01:13 (Europe/Moscow)\n\
                 Type: Update\n\
                 Release: test {v} (test_pos_1.0.tgz)\n\
                 Affected nodes:\n  Register and software: Kassa 1 (test)\n\
                 Please:\n  • do not power off the registers;\n  • do not unplug the router;\n  \
                 • do not switch the registers off overnight;\n  • the registers reboot at the agreed time 04:00;\n  \
                 • Close the shift before 22:00.\n",
                v = f.package.version
            )
        );
        assert!(posup_policy::text::is_plain(&messages[1].text), "{}", messages[1].text);
        assert!(!messages[1].text.contains("reboot"), "Store B is not open 24/7");
    })
    .await;
}

#[tokio::test]
async fn a_sites_report_goes_out_in_plain_text_when_its_part_ends() {
    each_backend(|store| async move {
        let e = env(store).await;
        let f = fleet(&e, 2).await;
        let d = &f.devices;
        e.ok("PATCH", &format!("/api/v1/packages/{}", f.package.id), ADMIN,
            Some(json!({"changelog": "## 1.0\n\n- **New** payment screen\n- Fixed `receipt` printing, see [notes](https://example.com/n)\n"}))).await;
        e.ok("POST", "/api/v1/channels", ADMIN, Some(json!({
            "name": "store-a-chat", "kind": "webhook", "site": "Store A", "url": "http://127.0.0.1:9/hook"}))).await;
        let r = create(&e, ADMIN, json!({"name": "November release", "kind": "forced-update",
            "packages": [f.package.id], "waves": [{"group_id": 1}]})).await;

        let a = actions(&e, &d[0]).await;
        report(&e, &d[0], &a[0], FeedbackState::Committed, None).await;
        let sites: Vec<RolloutSite> =
            serde_json::from_value(e.ok("GET", &format!("/api/v1/rollouts/{}/sites", r.id), ADMIN, None).await).unwrap();
        let expected = format!(
            "Update report: November release\n\
             Site: Store A, Store A, Main street 1\n\
             Date: 2023-11-14\n\
             Release: test {v} (test_pos_1.0.tgz)\n\
             Changes in test {v}:\n  1.0\n\n  • New payment screen\n  • Fixed receipt printing, see notes (https://example.com/n)\n\
             Devices:\n  Kassa 1 (test): updated\n",
            v = f.package.version
        );
        assert_eq!(sites[0].site, "Store A");
        assert_eq!(sites[0].report.as_deref(), Some(expected.as_str()));
        assert!(posup_policy::text::is_plain(&expected));
        assert_eq!((sites[1].site.as_str(), sites[1].report.as_deref()), ("Store B", None), "Store B has not finished");

        // The store's channel got it, once.
        rollout(&e, r.id).await;
        let sent = e.ok("GET", "/api/v1/notifications?event=report", ADMIN, None).await;
        let items = sent["items"].as_array().unwrap();
        assert_eq!(items.len(), 1, "{sent}");
        assert_eq!(items[0]["body"], expected.as_str());
        assert_eq!(items[0]["site"], "Store A");
    })
    .await;
}

#[tokio::test]
async fn a_site_is_told_only_of_the_releases_for_its_own_devices() {
    each_backend(|store| async move {
        let e = env(store).await;
        let dir = tempfile::tempdir().unwrap();
        let bo_pkg = product(
            &e,
            "iiko-backoffice",
            json!({"description": "iiko BackOffice"}),
            &sample("iiko-backoffice", "3.2.0", dir.path()),
        )
        .await;
        let front_pkg = product(
            &e,
            "iiko-front",
            json!({"description": "iikoFront registers"}),
            &sample("iiko-front", "2.4.0", dir.path()),
        )
        .await;
        let s = secret(&e).await;
        let bo = enroll_on_site(
            &e,
            &s,
            "bo-1",
            "Office",
            "BackOffice 1",
            1,
            "iiko-backoffice",
        )
        .await;
        let front = enroll_on_site(&e, &s, "front-1", "Cafe", "Front 1", 1, "iiko-front").await;
        let r = create(
            &e,
            ADMIN,
            json!({"name": "Kiosk plugins", "kind": "forced-update",
            "packages": [bo_pkg.id, front_pkg.id], "waves": [{"group_id": 1}]}),
        )
        .await;

        let messages: Vec<SiteMessage> = serde_json::from_value(
            e.ok(
                "GET",
                &format!("/api/v1/rollouts/{}/announcements", r.id),
                ADMIN,
                None,
            )
            .await,
        )
        .unwrap();
        let text = |site: &str| {
            messages
                .iter()
                .find(|m| m.site == site)
                .map(|m| m.text.clone())
                .unwrap()
        };
        assert!(
            text("Office").contains("Release: iiko-backoffice 3.2.0"),
            "{}",
            text("Office")
        );
        assert!(!text("Office").contains("iiko-front"), "{}", text("Office"));
        assert!(
            text("Cafe").contains("Release: iiko-front 2.4.0"),
            "{}",
            text("Cafe")
        );
        assert!(
            !text("Cafe").contains("iiko-backoffice 3.2.0"),
            "{}",
            text("Cafe")
        );

        for dev in [&bo, &front] {
            let a = actions(&e, dev).await;
            report(&e, dev, &a[0], FeedbackState::Committed, None).await;
        }
        let sites: Vec<RolloutSite> = serde_json::from_value(
            e.ok(
                "GET",
                &format!("/api/v1/rollouts/{}/sites", r.id),
                ADMIN,
                None,
            )
            .await,
        )
        .unwrap();
        let report = |site: &str| {
            sites
                .iter()
                .find(|s| s.site == site)
                .and_then(|s| s.report.clone())
                .unwrap()
        };
        assert!(
            report("Office").contains("Release: iiko-backoffice 3.2.0"),
            "{}",
            report("Office")
        );
        assert!(
            !report("Office").contains("iiko-front"),
            "{}",
            report("Office")
        );
        assert!(
            report("Cafe").contains("Release: iiko-front 2.4.0"),
            "{}",
            report("Cafe")
        );
        assert!(
            !report("Cafe").contains("Changes in iiko-backoffice"),
            "{}",
            report("Cafe")
        );
    })
    .await;
}

/// Reading rollouts changes nothing: a rollout whose start time passed starts
/// when the server's loop moves it along, not when someone looks.
#[tokio::test]
async fn reading_a_rollout_never_moves_it() {
    each_backend(|store| async move {
        let e = env(store).await;
        let f = fleet(&e, 2).await;
        let start = (t0() + chrono::Duration::hours(1)).to_rfc3339();
        let r = create(
            &e,
            ADMIN,
            json!({"name": "Later", "kind": "forced-update",
            "packages": [f.package.id], "waves": [{"group_id": 1}], "start_at": start}),
        )
        .await;
        assert_eq!(r.state, RolloutState::Scheduled);
        e.advance(2 * 3600);
        for path in [
            "/api/v1/rollouts".to_owned(),
            format!("/api/v1/rollouts/{}", r.id),
            format!("/api/v1/rollouts/{}/sites", r.id),
        ] {
            e.ok("GET", &path, ADMIN, None).await;
        }
        assert_eq!(rollout(&e, r.id).await.state, RolloutState::Scheduled);
        e.tick().await;
        assert_eq!(rollout(&e, r.id).await.state, RolloutState::Running);
    })
    .await;
}
