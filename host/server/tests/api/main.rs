//! API tests through `app(state)` and tower's `oneshot`, each run against SQLite and
//! PostgreSQL, with a settable clock and the real plugin runtime loading the
//! `test-hostile` component.

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use chrono::DateTime;
use posup_proto::Phase;
use posup_proto::agent::*;
use posup_proto::api::*;
use posup_server::auth::hash_secret;
use posup_server::{AppState, Blobs, ManualClock, Settings, app};
use posup_store::testing::each_backend;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

use support::*;

#[tokio::test]
async fn tokens_and_roles_give_401_and_403() {
    each_backend(|store| async move {
        let e = env(store).await;
        let a = e.call("GET", "/api/v1/devices", None, None).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED);
        assert!(a.error().contains("missing token"), "{}", a.error());
        assert_eq!(a.headers[header::WWW_AUTHENTICATE], "Bearer");
        let a = e.call("GET", "/api/v1/devices", Some("pop_wrong"), None).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED);
        assert!(a.error().contains("unknown operator token"));
        // A device token is not an operator token.
        let a = e.call("POST", "/api/v1/agent/poll", Some(ADMIN), Some(json!({"status": {"agent_version": "1"}}))).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED);

        let viewer = e.token("watcher", Role::Viewer).await;
        let vendor = e.token("vendor", Role::Vendor).await;
        let operator = e.token("ops", Role::Operator).await;
        assert_eq!(e.call("GET", "/api/v1/devices", Some(&viewer), None).await.status, StatusCode::OK);
        let a = e
            .call("POST", "/api/v1/groups", Some(&viewer), Some(json!({"name": "g", "kind": "static"})))
            .await;
        assert_eq!(a.status, StatusCode::FORBIDDEN);
        assert_eq!(
            a.error(),
            "token watcher has role viewer and may not create a static or filter group (POST /api/v1/groups): that needs role admin or operator"
        );
        let a = e.upload("/api/v1/plugins", &operator, hostile()).await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "operators do not upload plugins");
        let a = e.upload("/api/v1/plugins", &vendor, b"x".to_vec()).await;
        assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "vendors do");
        assert_eq!(e.call("GET", "/api/v1/tokens", Some(&operator), None).await.status, StatusCode::FORBIDDEN);
        assert_eq!(e.call("GET", "/api/v1/audit", Some(&viewer), None).await.status, StatusCode::FORBIDDEN);
        let a = e
            .call("POST", "/api/v1/groups", Some(&operator), Some(json!({"name": "Pilots", "kind": "static"})))
            .await;
        assert_eq!(a.status, StatusCode::CREATED);

        // Tokens are stored hashed and can be revoked.
        let tokens = e.ok("GET", "/api/v1/tokens", ADMIN, None).await;
        assert!(!tokens.to_string().contains(&viewer));
        let id = tokens.as_array().unwrap().iter().find(|t| t["name"] == "watcher").unwrap()["id"].as_i64().unwrap();
        e.ok("DELETE", &format!("/api/v1/tokens/{id}"), ADMIN, None).await;
        assert_eq!(e.call("GET", "/api/v1/devices", Some(&viewer), None).await.status, StatusCode::UNAUTHORIZED);

        // Every change is in the audit log, with who made it.
        let audit = e.ok("GET", "/api/v1/audit?limit=10", ADMIN, None).await;
        let entries: Vec<(String, String)> = audit
            .as_array()
            .unwrap()
            .iter()
            .map(|a| (a["actor"].as_str().unwrap().to_owned(), a["action"].as_str().unwrap().to_owned()))
            .collect();
        assert_eq!(entries[0], ("token admin".to_owned(), "token.delete".to_owned()));
        assert_eq!(entries[1], ("token ops".to_owned(), "group.create".to_owned()));

        // Malformed input is a JSON error too.
        let a = e.call("POST", "/api/v1/groups", Some(ADMIN), Some(json!({"kind": "static"}))).await;
        assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(a.error().contains("missing field `name`"), "{}", a.error());
        let a = e.call("GET", "/api/v1/devices?per_page=lots", Some(ADMIN), None).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST);
        assert!(a.error().contains("per_page"), "{}", a.error());
        let a = e.call("GET", "/api/v1/nothing", Some(ADMIN), None).await;
        assert_eq!(a.status, StatusCode::NOT_FOUND);
    })
    .await;
}

#[tokio::test]
async fn device_list_pages_sorts_and_searches_over_the_api() {
    each_backend(|store| async move {
        let e = env(store).await;
        let f = fleet(&e, 12).await;
        // Half the fleet polled just now.
        for (_, token) in f.devices.iter().take(6) {
            poll(
                &e,
                token,
                PollRequest {
                    status: status(),
                    ..Default::default()
                },
            )
            .await;
        }
        let page = e
            .ok(
                "GET",
                "/api/v1/devices?sort=name&order=desc&page=2&per_page=5",
                ADMIN,
                None,
            )
            .await;
        let page: posup_proto::Page<DeviceRow> = serde_json::from_value(page).unwrap();
        assert_eq!((page.total, page.page, page.per_page), (12, 2, 5));
        let names: Vec<&str> = page.items.iter().map(|d| d.name.as_str()).collect();
        // Text order: Kassa 9, 8, 7, 6, 5, 4, 3, 2, 12, 11, 10, 1.
        assert_eq!(
            names,
            vec!["Kassa 4", "Kassa 3", "Kassa 2", "Kassa 12", "Kassa 11"]
        );
        let found: posup_proto::Page<DeviceRow> = serde_json::from_value(
            e.ok(
                "GET",
                "/api/v1/devices?site=store%20b&online=true",
                ADMIN,
                None,
            )
            .await,
        )
        .unwrap();
        assert_eq!(
            found.items.iter().map(|d| d.number).collect::<Vec<_>>(),
            vec![2, 4, 6]
        );
        let found: posup_proto::Page<DeviceRow> = serde_json::from_value(
            e.ok(
                "GET",
                "/api/v1/devices?guid=8F0C-0001&sort=last_contact",
                ADMIN,
                None,
            )
            .await,
        )
        .unwrap();
        assert_eq!(found.total, 3, "8f0c-00010, -00011 and -00012");
        let even: posup_proto::Page<DeviceRow> = serde_json::from_value(
            e.ok("GET", "/api/v1/devices?group=2&per_page=100", ADMIN, None)
                .await,
        )
        .unwrap();
        assert_eq!(even.total, 6);
        let a = e
            .call("GET", "/api/v1/devices?sort=password", Some(ADMIN), None)
            .await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST);
        assert!(
            a.error().contains("unknown variant `password`"),
            "{}",
            a.error()
        );

        let id = f.devices[0].0;
        e.ok(
            "PUT",
            &format!("/api/v1/devices/{id}/tags"),
            ADMIN,
            Some(json!({"tags": ["pilot"]})),
        )
        .await;
        let detail = e
            .ok("GET", &format!("/api/v1/devices/{id}"), ADMIN, None)
            .await;
        assert_eq!(detail["device"]["tags"], json!(["pilot"]));
        assert_eq!(detail["device"]["online"], json!(true));
        let a = e
            .call("GET", "/api/v1/devices/99999", Some(ADMIN), None)
            .await;
        assert_eq!(
            (a.status, a.error()),
            (
                StatusCode::NOT_FOUND,
                "device 99999 does not exist".to_owned()
            )
        );
    })
    .await;
}

#[tokio::test]
async fn enrollment_poll_feedback_and_the_task_lifecycle() {
    each_backend(|store| async move {
        let e = env(store).await;
        let f = fleet(&e, 4).await;
        let a = e
            .call("POST", "/api/v1/agent/enroll", None, Some(json!({"secret": "pes_nope", "device": identity(9)})))
            .await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED);
        let secret = e
            .ok("POST", "/api/v1/enrollment-secrets", ADMIN, Some(json!({"name": "second"})))
            .await["secret"]
            .clone();
        let mut alien = identity(9);
        alien["device_type"] = json!("ukm5");
        let a = e
            .call("POST", "/api/v1/agent/enroll", None, Some(json!({"secret": secret, "device": alien})))
            .await;
        assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(a.error().contains("device type ukm5 does not exist"), "{}", a.error());

        // The first poll carries the device type's configuration; later ones only
        // when it changes.
        let (dev2, token2) = f.devices[1].clone();
        let first = poll(&e, &token2, PollRequest { status: status(), ..Default::default() }).await;
        let config = first.config.expect("configuration on the first poll");
        assert_eq!(config.plugin.as_ref().unwrap().sha256, f.plugin_sha);
        assert_eq!(config.paths.product.as_deref(), Some("/opt/test"));
        assert_eq!(config.allowed.services, vec!["kiosk".to_string()]);
        assert_eq!(first.poll_interval_secs, 60);
        assert!(first.actions.is_empty());
        let again = poll(
            &e,
            &token2,
            PollRequest {
                status: status(),
                config_revision: Some(config.revision),
                ..Default::default()
            },
        )
        .await;
        assert!(again.config.is_none());

        // A forced update of the even devices, starting in ten minutes.
        let start = t0() + chrono::Duration::minutes(10);
        let task: TaskView = serde_json::from_value(
            e.ok(
                "POST",
                "/api/v1/tasks",
                ADMIN,
                Some(json!({"kind": "forced-update", "package_id": f.package.id, "group_id": 2, "start_at": start})),
            )
            .await,
        )
        .unwrap();
        assert_eq!((task.state, task.counts.total), (TaskState::Scheduled, 2));
        let none_yet = poll(&e, &token2, PollRequest { status: status(), config_revision: Some(config.revision), ..Default::default() }).await;
        assert!(none_yet.actions.is_empty(), "starts after the next poll");
        e.advance(9 * 60 + 30);
        let soon = poll(&e, &token2, PollRequest { status: status(), config_revision: Some(config.revision), ..Default::default() }).await;
        assert_eq!(soon.actions.len(), 1, "handed out before its start, within one poll interval");
        let action = soon.actions[0].clone();
        assert_eq!(action.not_before, start);
        assert_eq!(action.kind, posup_proto::TaskKind::ForcedUpdate);
        assert_eq!(action.package.sha256, f.package.sha256);
        assert_eq!(action.package.url, format!("/api/v1/agent/packages/{}", f.package.sha256));
        assert_eq!(action.plugin.sha256, f.plugin_sha);
        e.advance(60);
        let t: TaskView = serde_json::from_value(e.ok("GET", &format!("/api/v1/tasks/{}", task.id), ADMIN, None).await).unwrap();
        assert_eq!(t.state, TaskState::Running, "the start time passed");

        let report = |key: &str, state: FeedbackState, attempt: u32| {
            serde_json::to_value(Feedback {
                key: key.into(),
                task_id: task.id,
                action_id: action.action_id,
                device_id: dev2,
                attempt,
                step: Phase::Apply,
                state,
                message: Some(format!("{} via {key}", state.as_str())),
                percent: Some(50),
                at: t0(),
                retry_after_secs: None,
            })
            .unwrap()
        };
        let ack: FeedbackAck = serde_json::from_value(
            e.ok("POST", "/api/v1/agent/feedback", &token2, Some(report("a", FeedbackState::Started, 1))).await,
        )
        .unwrap();
        assert!(ack.active && !ack.duplicate);
        let ack: FeedbackAck = serde_json::from_value(
            e.ok("POST", "/api/v1/agent/feedback", &token2, Some(report("a", FeedbackState::Started, 1))).await,
        )
        .unwrap();
        assert!(ack.duplicate);
        let a = e
            .call("POST", "/api/v1/agent/feedback", Some(&f.devices[0].1), Some(report("b", FeedbackState::Ok, 1)))
            .await;
        assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "another device's action");
        e.ok("POST", "/api/v1/agent/feedback", &token2, Some(report("c", FeedbackState::Failed, 1))).await;

        // Pause hides the action; a paused task cannot be restarted.
        let paused = e.ok("POST", &format!("/api/v1/tasks/{}/pause", task.id), ADMIN, None).await;
        assert_eq!(paused["state"], "Paused");
        let dev4_token = &f.devices[3].1;
        assert!(poll(&e, dev4_token, PollRequest { status: status(), ..Default::default() }).await.actions.is_empty());
        let a = e.call("POST", &format!("/api/v1/tasks/{}/restart", task.id), Some(ADMIN), None).await;
        assert_eq!(a.status, StatusCode::CONFLICT);
        assert!(a.error().contains("only a Finished task can be restarted"), "{}", a.error());
        e.ok("POST", &format!("/api/v1/tasks/{}/resume", task.id), ADMIN, None).await;
        let a4 = poll(&e, dev4_token, PollRequest { status: status(), ..Default::default() }).await.actions[0].clone();
        let commit = Feedback {
            key: "d".into(),
            task_id: task.id,
            action_id: a4.action_id,
            device_id: f.devices[3].0,
            attempt: 1,
            step: Phase::Commit,
            state: FeedbackState::Committed,
            message: None,
            percent: None,
            at: t0(),
            retry_after_secs: None,
        };
        e.ok("POST", "/api/v1/agent/feedback", dev4_token, Some(serde_json::to_value(&commit).unwrap())).await;
        let done: TaskView = serde_json::from_value(e.ok("GET", &format!("/api/v1/tasks/{}", task.id), ADMIN, None).await).unwrap();
        assert_eq!(done.state, TaskState::Finished);
        assert_eq!((done.counts.total, done.counts.success, done.counts.failed), (2, 1, 1));
        let finished = e.ok("GET", "/api/v1/tasks?state=Finished", ADMIN, None).await;
        assert_eq!(finished.as_array().unwrap().len(), 1);

        let detail = e.ok("GET", &format!("/api/v1/tasks/{}/devices/{dev2}", task.id), ADMIN, None).await;
        assert_eq!(detail["device"]["state"], "failed");
        assert_eq!(detail["device"]["message"], "failed via c");
        let steps: Vec<&str> = detail["history"].as_array().unwrap().iter().map(|h| h["state"].as_str().unwrap()).collect();
        assert_eq!(steps, vec!["started", "failed"]);
        let listing = e.ok("GET", &format!("/api/v1/tasks/{}/devices?state=failed", task.id), ADMIN, None).await;
        assert_eq!(listing["total"], 1);

        let group = e
            .ok("POST", &format!("/api/v1/tasks/{}/failed-group", task.id), ADMIN, Some(json!({"name": "Retry tonight"})))
            .await;
        assert_eq!((group["kind"].as_str(), group["devices"].as_u64()), (Some("static"), Some(1)));

        let restarted = e.ok("POST", &format!("/api/v1/tasks/{}/restart", task.id), ADMIN, None).await;
        assert_eq!((restarted["state"].as_str(), restarted["attempt"].as_u64()), (Some("Running"), Some(2)));
        let retry = poll(&e, &token2, PollRequest { status: status(), ..Default::default() }).await;
        assert_eq!(retry.actions[0].attempt, 2);
        // The task refers to the package: deleting it archives it.
        let a = e.call("DELETE", &format!("/api/v1/packages/{}", f.package.id), Some(ADMIN), None).await;
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(a.json()["archived"], true);
        let listed = e.ok("GET", "/api/v1/packages", ADMIN, None).await;
        assert_eq!(listed, json!([]), "an archived package is not listed");
        e.ok("DELETE", &format!("/api/v1/tasks/{}", task.id), ADMIN, None).await;
        assert!(poll(&e, &token2, PollRequest { status: status(), ..Default::default() }).await.actions.is_empty());
        let a = e.call("DELETE", &format!("/api/v1/packages/{}", f.package.id), Some(ADMIN), None).await;
        assert_eq!(a.status, StatusCode::NO_CONTENT);
    })
    .await;
}

#[tokio::test]
async fn variables_reach_agents_by_change_id() {
    each_backend(|store| async move {
        let e = env(store).await;
        let f = fleet(&e, 2).await;
        let (dev1, token1) = f.devices[0].clone();
        let token2 = f.devices[1].1.clone();
        let set = |name: &str, value: &str, scope: Value| {
            let mut body = scope;
            body["name"] = json!(name);
            body["value"] = json!(value);
            body
        };
        e.ok(
            "PUT",
            "/api/v1/variables",
            ADMIN,
            Some(set("version", "2.4", json!({"scope": "all"}))),
        )
        .await;
        e.ok(
            "PUT",
            "/api/v1/variables",
            ADMIN,
            Some(set(
                "update",
                "iceupd_001",
                json!({"scope": "group", "group_id": 3}),
            )),
        )
        .await;
        let last = e
            .ok(
                "PUT",
                "/api/v1/variables",
                ADMIN,
                Some(set(
                    "version",
                    "2.5",
                    json!({"scope": "device", "device_id": dev1}),
                )),
            )
            .await["change_id"]
            .as_i64()
            .unwrap();
        let p1 = poll(
            &e,
            &token1,
            PollRequest {
                status: status(),
                ..Default::default()
            },
        )
        .await;
        let got: Vec<(&str, Option<&str>)> = p1
            .variables
            .changes
            .iter()
            .map(|c| (c.name.as_str(), c.value.as_deref()))
            .collect();
        assert_eq!(
            got,
            vec![("version", Some("2.5")), ("update", Some("iceupd_001"))]
        );
        assert_eq!(p1.variables.last_id, last);
        let p2 = poll(
            &e,
            &token2,
            PollRequest {
                status: status(),
                ..Default::default()
            },
        )
        .await;
        let got: Vec<(&str, Option<&str>)> = p2
            .variables
            .changes
            .iter()
            .map(|c| (c.name.as_str(), c.value.as_deref()))
            .collect();
        assert_eq!(got, vec![("version", Some("2.4"))], "device 2 is even");

        let quiet = poll(
            &e,
            &token1,
            PollRequest {
                status: status(),
                vars_since: last,
                ..Default::default()
            },
        )
        .await;
        assert!(quiet.variables.changes.is_empty());
        assert_eq!(quiet.variables.last_id, last);
        let removed = e
            .ok(
                "DELETE",
                "/api/v1/variables",
                ADMIN,
                Some(json!({"name": "version", "scope": "device", "device_id": dev1})),
            )
            .await["change_id"]
            .as_i64()
            .unwrap();
        let back = poll(
            &e,
            &token1,
            PollRequest {
                status: status(),
                vars_since: last,
                ..Default::default()
            },
        )
        .await;
        assert_eq!(
            back.variables.changes,
            vec![VariableChange {
                name: "version".into(),
                value: Some("2.4".into())
            }]
        );
        assert_eq!(back.variables.last_id, removed);

        let changes = e
            .ok(
                "GET",
                &format!("/api/v1/variables/changes?since={last}"),
                ADMIN,
                None,
            )
            .await;
        assert_eq!(changes.as_array().unwrap().len(), 1);
        assert_eq!(changes[0]["value"], Value::Null);
        let a = e
            .call(
                "PUT",
                "/api/v1/variables",
                Some(ADMIN),
                Some(set("x", "1", json!({"scope": "device", "device_id": 4242}))),
            )
            .await;
        assert_eq!(
            (a.status, a.error()),
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                "device 4242 does not exist".to_owned()
            )
        );
    })
    .await;
}

/// Polls arriving together have their inventories written as one group: each
/// device keeps its own version and modules, whatever another device sent.
#[tokio::test]
async fn inventories_of_polls_arriving_together_are_each_recorded() {
    each_backend(|store| async move {
        let e = env(store).await;
        let f = fleet(&e, 24).await;
        let request = |n: usize| PollRequest {
            inventory: Some(posup_proto::Inventory {
                product: "Openbravo".into(),
                version: format!("23.{n}"),
                modules: vec![posup_proto::ModuleVersion {
                    name: "core".into(),
                    version: format!("3.{n}"),
                }],
                ..Default::default()
            }),
            status: status(),
            ..Default::default()
        };
        // The last device is deleted while it polls (this server still knows
        // its token): its modules cannot be written, and that must not take
        // the others' with it.
        let bad = f.devices.len() - 1;
        poll(
            &e,
            &f.devices[bad].1,
            PollRequest {
                status: status(),
                ..Default::default()
            },
        )
        .await;
        e.state
            .store()
            .delete_device(f.devices[bad].0, e.state.at().now, "token ops")
            .await
            .unwrap();
        let hostile = serde_json::to_value(request(bad)).unwrap();
        let (_, bad_answer) = futures::future::join(
            futures::future::join_all(
                f.devices[..bad]
                    .iter()
                    .enumerate()
                    .map(|(n, (_, token))| poll(&e, token, request(n))),
            ),
            e.call(
                "POST",
                "/api/v1/agent/poll",
                Some(&f.devices[bad].1),
                Some(hostile),
            ),
        )
        .await;
        assert_eq!(bad_answer.status, StatusCode::INTERNAL_SERVER_ERROR);
        let all: posup_proto::Page<VersionRow> = serde_json::from_value(
            e.ok("GET", "/api/v1/versions?per_page=100", ADMIN, None)
                .await,
        )
        .unwrap();
        for (n, (id, _)) in f.devices[..bad].iter().enumerate() {
            let row = all.items.iter().find(|r| r.device_id == *id).unwrap();
            assert_eq!(row.version, format!("23.{n}"), "device {id}");
            let detail: VersionDetail = serde_json::from_value(
                e.ok("GET", &format!("/api/v1/versions/{id}"), ADMIN, None)
                    .await,
            )
            .unwrap();
            let modules: Vec<(String, String)> = detail
                .modules
                .into_iter()
                .map(|m| (m.name, m.version))
                .collect();
            assert_eq!(modules, [("core".to_owned(), format!("3.{n}"))]);
        }
    })
    .await;
}

/// PostgreSQL stores no NUL character. An operator's request with one in a
/// text is refused, saying so; a device's text is kept with the NUL as U+FFFD,
/// so its inventory and its reports still count. The same on both backends.
#[tokio::test]
async fn a_nul_in_a_text_is_refused_from_an_operator_and_replaced_from_a_device() {
    each_backend(|store| async move {
        let e = env(store).await;
        let f = fleet(&e, 2).await;
        let a = e
            .call(
                "POST",
                "/api/v1/groups",
                Some(ADMIN),
                Some(json!({"name": "Pilot\u{0}", "description": "", "kind": "static", "devices": []})),
            )
            .await;
        assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(a.error().contains("NUL character"), "{}", a.error());

        let (id, token) = f.devices[0].clone();
        let inventory = posup_proto::Inventory {
            product: "Openbravo".into(),
            version: "23.\0".into(),
            modules: vec![posup_proto::ModuleVersion {
                name: "co\0re".into(),
                version: "3.1".into(),
            }],
            ..Default::default()
        };
        poll(&e, &token, PollRequest { inventory: Some(inventory), status: status(), ..Default::default() }).await;
        let all: posup_proto::Page<VersionRow> =
            serde_json::from_value(e.ok("GET", "/api/v1/versions?per_page=100", ADMIN, None).await).unwrap();
        let row = all.items.iter().find(|r| r.device_id == id).unwrap();
        assert_eq!(row.version, "23.\u{FFFD}");
        let detail: VersionDetail =
            serde_json::from_value(e.ok("GET", &format!("/api/v1/versions/{id}"), ADMIN, None).await).unwrap();
        assert_eq!(detail.modules[0].name, "co\u{FFFD}re");

        let task: TaskView = serde_json::from_value(
            e.ok("POST", "/api/v1/tasks", ADMIN, Some(json!({"kind": "download", "package_id": f.package.id, "group_id": 1})))
                .await,
        )
        .unwrap();
        let action = poll(&e, &token, PollRequest { status: status(), ..Default::default() }).await.actions[0].clone();
        let report = Feedback {
            key: "k\0".into(),
            task_id: task.id,
            action_id: action.action_id,
            device_id: id,
            attempt: 1,
            step: Phase::Stage,
            state: FeedbackState::Failed,
            message: Some("disk\0full".into()),
            percent: None,
            at: t0(),
            retry_after_secs: None,
        };
        let batch = json!({"reports": [serde_json::to_value(&report).unwrap()]});
        let ack = e.ok("POST", "/api/v1/agent/feedback/batch", &token, Some(batch)).await;
        assert_eq!(ack["results"][0]["ack"]["key"], "k\u{FFFD}", "{ack}");
        let detail = e.ok("GET", &format!("/api/v1/tasks/{}/devices/{id}", task.id), ADMIN, None).await;
        assert_eq!(detail["device"]["state"], "failed");
        assert_eq!(detail["device"]["message"], "disk\u{FFFD}full");
    })
    .await;
}

#[tokio::test]
async fn version_overview_same_different_unknown_over_the_api() {
    each_backend(|store| async move {
        let e = env(store).await;
        let f = fleet(&e, 3).await;
        let inventory = |modules: &[(&str, &str)]| posup_proto::Inventory {
            product: "Openbravo".into(),
            version: "23.4".into(),
            modules: modules
                .iter()
                .map(|(n, v)| posup_proto::ModuleVersion {
                    name: n.to_string(),
                    version: v.to_string(),
                })
                .collect(),
            state: "online".into(),
            pending_sync: 3,
            ..Default::default()
        };
        let reports = [
            PollRequest {
                inventory: Some(inventory(&[("core", "3.0.1"), ("pos", "1.1")])),
                status: status(),
                ..Default::default()
            },
            PollRequest {
                inventory: Some(inventory(&[("core", "3.0.2"), ("pos", "1.1")])),
                status: status(),
                ..Default::default()
            },
            PollRequest {
                inventory_error: Some("cannot read /product/modules".into()),
                status: status(),
                ..Default::default()
            },
        ];
        for ((_, token), report) in f.devices.iter().zip(reports) {
            poll(&e, token, report).await;
        }
        let (dev1, dev2, dev3) = (f.devices[0].0, f.devices[1].0, f.devices[2].0);
        e.ok(
            "PUT",
            "/api/v1/device-types/test/reference",
            ADMIN,
            Some(json!({"from_device": dev1})),
        )
        .await;
        let view = |v: Value| serde_json::from_value::<posup_proto::Page<VersionRow>>(v).unwrap();
        let all = view(e.ok("GET", "/api/v1/versions", ADMIN, None).await);
        let by_id = |id: i64| {
            all.items
                .iter()
                .find(|r| r.device_id == id)
                .unwrap()
                .clone()
        };
        assert_eq!(by_id(dev1).status, VersionStatus::Same);
        assert_eq!(by_id(dev2).status, VersionStatus::Different);
        assert_eq!(by_id(dev2).differing_modules, 1);
        assert_eq!(by_id(dev3).status, VersionStatus::Unknown);
        assert!(
            by_id(dev3)
                .error
                .unwrap()
                .contains("cannot read /product/modules")
        );
        assert_eq!(by_id(dev1).pending_sync, 3);
        assert_eq!(by_id(dev1).server_status, ServerStatus::Online);

        let detail: VersionDetail = serde_json::from_value(
            e.ok("GET", &format!("/api/v1/versions/{dev2}"), ADMIN, None)
                .await,
        )
        .unwrap();
        assert_eq!(
            detail.differences,
            vec![ModuleDifference {
                name: "core".into(),
                reference: Some("3.0.1".into()),
                device: Some("3.0.2".into())
            }]
        );
        let modules = e
            .ok("GET", "/api/v1/versions/modules?module=core", ADMIN, None)
            .await;
        assert_eq!(modules["total"], 2);

        // The hot-fix procedure: the site's ignore-version-check preference.
        let site = e
            .ok(
                "PUT",
                "/api/v1/sites/Store%20B/preferences",
                ADMIN,
                Some(json!({"ignore_version_check": true})),
            )
            .await;
        assert_eq!(site["ignore_version_check"], true);
        let p = poll(
            &e,
            &f.devices[1].1,
            PollRequest {
                status: status(),
                ..Default::default()
            },
        )
        .await;
        assert!(p.variables.changes.contains(&VariableChange {
            name: "ignore-version-check".into(),
            value: Some("Y".into())
        }));
        let row = view(
            e.ok("GET", "/api/v1/versions?site=Store%20B", ADMIN, None)
                .await,
        );
        assert!(row.items[0].ignore_version_check);

        let recomputed = e
            .ok("POST", "/api/v1/versions/recompute", ADMIN, Some(json!({})))
            .await;
        assert_eq!(recomputed["devices"], 3);
        let unknown = view(
            e.ok("GET", "/api/v1/versions?status=Unknown", ADMIN, None)
                .await,
        );
        assert_eq!(unknown.total, 1);

        // Out of contact, every device's version is unknown.
        e.advance(600);
        let unknown = view(
            e.ok("GET", "/api/v1/versions?status=Unknown", ADMIN, None)
                .await,
        );
        assert_eq!(unknown.total, 3);
        assert!(
            unknown.items[0]
                .error
                .as_deref()
                .unwrap()
                .contains("offline since")
        );
        assert_eq!(unknown.items[0].server_status, ServerStatus::Offline);
    })
    .await;
}

/// Downloads ask the store once per package, then a cache: a deleted package
/// is no longer served, even to a device that downloaded it.
#[tokio::test]
async fn a_deleted_package_is_no_longer_served() {
    each_backend(|store| async move {
        let e = env(store).await;
        let f = fleet(&e, 1).await;
        let token = &f.devices[0].1;
        let url = format!("/api/v1/agent/packages/{}", f.package.sha256);
        let download = || e.call("GET", &url, Some(token), None);
        assert_eq!(download().await.status, StatusCode::OK);
        assert_eq!(download().await.status, StatusCode::OK);
        let a = e
            .call(
                "DELETE",
                &format!("/api/v1/packages/{}", f.package.id),
                Some(ADMIN),
                None,
            )
            .await;
        assert_eq!(a.status, StatusCode::NO_CONTENT);
        let gone = download().await;
        assert_eq!(gone.status, StatusCode::NOT_FOUND);
        assert!(
            gone.error()
                .contains("is not a package of device type test"),
            "{}",
            gone.error()
        );
    })
    .await;
}

#[tokio::test]
async fn packages_download_with_range_and_etag() {
    each_backend(|store| async move {
        let e = env(store).await;
        let f = fleet(&e, 1).await;
        let token = &f.devices[0].1;
        let url = format!("/api/v1/agent/packages/{}", f.package.sha256);
        let bytes = package_bytes();
        let get = |range: Option<&str>, extra: Option<(&str, String)>| {
            let mut b = Request::builder()
                .uri(url.clone())
                .header(header::AUTHORIZATION, format!("Bearer {token}"));
            if let Some(r) = range {
                b = b.header(header::RANGE, r);
            }
            if let Some((k, v)) = extra {
                b = b.header(k, v);
            }
            b.body(Body::empty()).unwrap()
        };
        let etag = format!("\"{}\"", f.package.sha256);
        let full = e.send(get(None, None)).await;
        assert_eq!(full.status, StatusCode::OK);
        assert_eq!(full.bytes, bytes);
        assert_eq!(full.headers[header::ETAG], etag.as_str());
        assert_eq!(full.headers[header::ACCEPT_RANGES], "bytes");

        let part = e.send(get(Some("bytes=1000-1999"), None)).await;
        assert_eq!(part.status, StatusCode::PARTIAL_CONTENT);
        assert_eq!(part.bytes, &bytes[1000..2000]);
        assert_eq!(
            part.headers[header::CONTENT_RANGE],
            format!("bytes 1000-1999/{PACKAGE_BYTES}").as_str()
        );

        // Resuming an interrupted download: everything from an offset.
        let rest = e.send(get(Some("bytes=150000-"), None)).await;
        assert_eq!(rest.status, StatusCode::PARTIAL_CONTENT);
        assert_eq!(rest.bytes, &bytes[150_000..]);
        let tail = e.send(get(Some("bytes=-10"), None)).await;
        assert_eq!(tail.bytes, &bytes[PACKAGE_BYTES - 10..]);

        let outside = e
            .send(get(Some(&format!("bytes={PACKAGE_BYTES}-")), None))
            .await;
        assert_eq!(outside.status, StatusCode::RANGE_NOT_SATISFIABLE);
        assert_eq!(
            outside.headers[header::CONTENT_RANGE],
            format!("bytes */{PACKAGE_BYTES}").as_str()
        );
        assert!(outside.error().contains("range not satisfiable"));

        let cached = e
            .send(get(None, Some(("if-none-match", etag.clone()))))
            .await;
        assert_eq!(cached.status, StatusCode::NOT_MODIFIED);
        let stale = e
            .send(get(
                Some("bytes=0-9"),
                Some(("if-range", "\"other\"".into())),
            ))
            .await;
        assert_eq!(
            (stale.status, stale.bytes.len()),
            (StatusCode::OK, PACKAGE_BYTES),
            "If-Range mismatch sends it all"
        );

        let a = e.call("GET", &url, None, None).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED);
        let a = e
            .call(
                "GET",
                &format!("/api/v1/agent/packages/{}", "0".repeat(64)),
                Some(token),
                None,
            )
            .await;
        assert_eq!(a.status, StatusCode::NOT_FOUND);
        let plugin = e
            .call(
                "GET",
                &format!("/api/v1/agent/plugins/{}", f.plugin_sha),
                Some(token),
                None,
            )
            .await;
        assert_eq!((plugin.status, plugin.bytes), (StatusCode::OK, hostile()));
    })
    .await;
}

#[tokio::test]
async fn plugin_uploads_are_validated_by_the_runtime() {
    each_backend(|store| async move {
        let e = env(store).await;
        let a = e.upload("/api/v1/plugins?file_name=junk.wasm", ADMIN, b"definitely not wasm".to_vec()).await;
        assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(
            a.error().starts_with("plugin junk.wasm was refused: plugin junk.wasm is not a valid WebAssembly component"),
            "{}",
            a.error()
        );
        let a = e.upload("/api/v1/plugins", ADMIN, Vec::new()).await;
        assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);

        let first = e.upload("/api/v1/plugins", ADMIN, hostile()).await;
        assert_eq!(first.status, StatusCode::OK, "{}", String::from_utf8_lossy(&first.bytes));
        let plugin: PluginView = serde_json::from_slice(&first.bytes).unwrap();
        assert_eq!((plugin.name.as_str(), plugin.interface.as_str()), ("test-hostile", "0.1.1"));
        assert_eq!(plugin.device_types, vec!["test".to_string()]);
        assert_eq!(plugin.capabilities.services, vec!["kiosk".to_string(), "sshd".to_string()]);
        // The same bytes again are the same plugin.
        let again = e.upload("/api/v1/plugins", ADMIN, hostile()).await;
        assert_eq!(again.status, StatusCode::OK);
        assert_eq!(e.ok("GET", "/api/v1/plugins", ADMIN, None).await.as_array().unwrap().len(), 1);

        // A plugin only serves the device types its `info` names.
        e.ok("PUT", "/api/v1/device-types/ukm5", ADMIN, Some(json!({}))).await;
        let a = e.call("PUT", "/api/v1/device-types/ukm5/plugin", Some(ADMIN), Some(json!({"name": "test-hostile"}))).await;
        assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(a.error().contains("does not update device type ukm5 (it updates: test)"), "{}", a.error());

        // Grants: what the plugin asks for, intersected with what the operator allows.
        e.ok(
            "PUT",
            "/api/v1/device-types/test",
            ADMIN,
            Some(json!({"allowed": {"dirs": [{"dir": "product", "write": false}], "services": ["kiosk", "nginx"]},
                        "paths": {"product": "/opt/test"}})),
        )
        .await;
        let dt = e.ok("PUT", "/api/v1/device-types/test/plugin", ADMIN, Some(json!({"name": "test-hostile"}))).await;
        assert_eq!(dt["granted"]["dirs"], json!([{"dir": "product", "write": false}]));
        assert_eq!(dt["granted"]["services"], json!(["kiosk"]));
        let a = e.call("DELETE", &format!("/api/v1/plugins/{}", plugin.sha256), Some(ADMIN), None).await;
        assert_eq!(a.status, StatusCode::CONFLICT);
        assert!(a.error().contains("enabled for device type test"), "{}", a.error());

        let a = e
            .call("PUT", "/api/v1/device-types/test", Some(ADMIN), Some(json!({"allowed": {"dirs": [{"dir": "logs"}]}})))
            .await;
        assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(a.error().contains("allows directory `logs` but gives it no path"), "{}", a.error());
    })
    .await;
}

/// A small package whose tar long-name record claims a gigabyte is refused at the
/// host's bound while the plugin lists it, naming the bound.
#[tokio::test]
async fn a_package_made_to_exhaust_the_server_is_refused() {
    each_backend(|store| async move {
        let e = env(store).await;
        fleet(&e, 1).await;
        let a = e
            .upload(
                "/api/v1/packages?device_type=test&file_name=list-bomb.tar",
                ADMIN,
                posup_sim::hostile::long_name_bomb(),
            )
            .await;
        assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(
            a.error().contains("plugin test-hostile")
                && a.error().contains("long-name record of 1073741824 bytes")
                && a.error().contains("64 KiB"),
            "{}",
            a.error()
        );
    })
    .await;
}

#[tokio::test]
async fn package_uploads_name_what_is_wrong() {
    each_backend(|store| async move {
        let e = env(store).await;
        let a = e
            .upload(
                "/api/v1/packages?device_type=ukm5&file_name=ukm5_pos_1.8.4.tgz",
                ADMIN,
                b"x".to_vec(),
            )
            .await;
        assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(
            a.error(),
            "device type ukm5 does not exist: create it before uploading packages for it"
        );
        e.ok("PUT", "/api/v1/device-types/ukm5", ADMIN, Some(json!({})))
            .await;
        let a = e
            .upload(
                "/api/v1/packages?device_type=ukm5&file_name=ukm5_pos_1.8.4.tgz",
                ADMIN,
                b"x".to_vec(),
            )
            .await;
        assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(
            a.error().contains("device type ukm5 has no plugin enabled"),
            "{}",
            a.error()
        );

        let f = fleet(&e, 1).await;
        assert_eq!(
            (f.package.version.as_str(), f.package.kind.as_str()),
            ("0", "test")
        );
        assert_eq!(f.package.state, PackageState::Install);
        assert_eq!(f.package.size, PACKAGE_BYTES as u64);
        let a = e
            .upload(
                "/api/v1/packages?device_type=test&file_name=../escape.tgz",
                ADMIN,
                b"x".to_vec(),
            )
            .await;
        assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(
            a.error()
                .contains("package file name `../escape.tgz` is invalid"),
            "{}",
            a.error()
        );
        // A plugin that crashes while reading the package refuses it.
        let a = e
            .upload(
                "/api/v1/packages?device_type=test&file_name=trap",
                ADMIN,
                b"x".to_vec(),
            )
            .await;
        assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(
            a.error()
                .starts_with("package trap could not be read: plugin test-hostile"),
            "{}",
            a.error()
        );
        let a = e
            .upload(
                "/api/v1/packages?device_type=test&file_name=other.tgz",
                ADMIN,
                package_bytes(),
            )
            .await;
        assert_eq!(a.status, StatusCode::CONFLICT, "same content, same type");

        let current = e
            .ok(
                "POST",
                &format!("/api/v1/packages/{}/current", f.package.id),
                ADMIN,
                None,
            )
            .await;
        assert_eq!(current["state"], "Current");
        let edited = e
            .ok(
                "PATCH",
                &format!("/api/v1/packages/{}", f.package.id),
                ADMIN,
                Some(json!({"changelog": "- faster"})),
            )
            .await;
        assert_eq!(edited["changelog"], "- faster");
        let listed = e
            .ok("GET", "/api/v1/packages?device_type=test", ADMIN, None)
            .await;
        assert_eq!(listed.as_array().unwrap().len(), 1);
    })
    .await;
}

#[tokio::test]
async fn openapi_documents_real_routes_only() {
    let db = posup_store::testing::TestDb::sqlite().await;
    let e = env(db.store.clone()).await;
    let doc = e
        .call("GET", "/api/v1/openapi.json", None, None)
        .await
        .json();
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 40, "{}", paths.len());
    // What is routed is documented and what is documented is routed, read from
    // the route tables themselves.
    let documented: std::collections::BTreeSet<(String, String)> = paths
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .map(move |m| (m.clone(), path.clone()))
        })
        .collect();
    let routed: std::collections::BTreeSet<(String, String)> =
        posup_server::documented_routes(&e.state)
            .into_iter()
            .collect();
    let undocumented: Vec<_> = routed.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "routed, not documented: {undocumented:?}"
    );
    let unrouted: Vec<_> = documented.difference(&routed).collect();
    assert!(unrouted.is_empty(), "documented, not routed: {unrouted:?}");
    for (path, item) in paths {
        let uri = path
            .replace("{id}", "1")
            .replace("{device_id}", "1")
            .replace("{sha256}", &"a".repeat(64))
            .replace("{name}", "test");
        for method in item.as_object().unwrap().keys() {
            let a = e
                .call(&method.to_uppercase(), &uri, Some(ADMIN), None)
                .await;
            let routed = a.status != StatusCode::METHOD_NOT_ALLOWED
                && !(a.status == StatusCode::NOT_FOUND
                    && a.bytes.starts_with(b"{\"error\":\"no route"));
            assert!(
                routed,
                "{method} {path} is documented but not routed: {}",
                a.status
            );
        }
    }
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    for name in [
        "PollRequest",
        "PollResponse",
        "Feedback",
        "EnrollRequest",
        "TaskView",
        "VersionRow",
    ] {
        assert!(schemas.contains_key(name), "schema {name} is missing");
    }
    // The console: `/` leads to the device list, which asks a visitor to log in.
    let page = e.call("GET", "/", None, None).await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    assert_eq!(page.headers[header::LOCATION], "/devices");
    let page = e.call("GET", "/login", None, None).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(String::from_utf8_lossy(&page.bytes).contains("name=\"password\""));
    db.cleanup().await;
}

/// Every documented operation, called by every role and by nobody: the roles
/// the document names pass the gate (whatever the handler then says about the
/// request), the others get 403, a call without a token 401 — before the body
/// is read, so an empty body changes nothing. Device operations want a device
/// token; public ones want none.
#[tokio::test]
async fn every_documented_operation_enforces_its_documented_roles() {
    let db = posup_store::testing::TestDb::sqlite().await;
    let e = env(db.store.clone()).await;
    let mut tokens = Vec::new();
    for role in Role::ALL {
        tokens.push((
            role,
            e.token(&format!("walker-{}", role.as_str()), role).await,
        ));
    }
    let doc = e
        .call("GET", "/api/v1/openapi.json", None, None)
        .await
        .json();
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        let uri = path
            .replace("{id}", "1")
            .replace("{device_id}", "1")
            .replace("{sha256}", &"a".repeat(64))
            .replace("{name}", "test")
            .replace("{role}", "release");
        for (method, op) in item.as_object().unwrap() {
            let method = method.to_uppercase();
            let security = &op["security"][0];
            let anonymous = e.call(&method, &uri, None, None).await;
            if security.get("operatorToken").is_some() {
                assert_eq!(
                    anonymous.status,
                    StatusCode::UNAUTHORIZED,
                    "{method} {path} without a token"
                );
                let allowed: Vec<&str> = op["x-roles"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| r.as_str().unwrap())
                    .collect();
                for (role, token) in &tokens {
                    let a = e.call(&method, &uri, Some(token), None).await;
                    if allowed.contains(&role.as_str()) {
                        assert!(
                            a.status != StatusCode::FORBIDDEN
                                && a.status != StatusCode::UNAUTHORIZED,
                            "{method} {path} documents role {} but refused it: {} {}",
                            role.as_str(),
                            a.status,
                            String::from_utf8_lossy(&a.bytes)
                        );
                    } else {
                        assert_eq!(
                            a.status,
                            StatusCode::FORBIDDEN,
                            "{method} {path} does not document role {} but let it through: {}",
                            role.as_str(),
                            String::from_utf8_lossy(&a.bytes)
                        );
                        assert!(a.error().contains("needs role"), "{}", a.error());
                    }
                    checked += 1;
                }
            } else if security.get("deviceToken").is_some() {
                assert_eq!(
                    anonymous.status,
                    StatusCode::UNAUTHORIZED,
                    "{method} {path} without a device token"
                );
            } else {
                assert_ne!(
                    anonymous.status,
                    StatusCode::UNAUTHORIZED,
                    "{method} {path} is public"
                );
                assert_ne!(
                    anonymous.status,
                    StatusCode::FORBIDDEN,
                    "{method} {path} is public"
                );
            }
        }
    }
    assert!(checked >= 4 * 60, "{checked} role checks");
    db.cleanup().await;
}

/// A bare HTTP/1.1 GET over TCP, for the server started by `run`.
async fn http_get(addr: std::net::SocketAddr, path: &str, token: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(request.as_bytes()).await.unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).await.unwrap();
    let code = text[9..12].parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (code, body)
}

#[tokio::test]
async fn run_bootstraps_serves_and_shuts_down() {
    for backend in [posup_store::Backend::Sqlite, posup_store::Backend::Postgres] {
        let Some(db) = posup_store::testing::TestDb::of(backend).await else {
            continue;
        };
        // `run` opens the database itself, by URL.
        db.store.close().await;
        let data = tempfile::tempdir().unwrap();
        let mut config = posup_server::ServerConfig::new(data.path());
        config.database = Some(db.url());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(posup_server::run(config, listener, async {
            let _ = stopped.await;
        }));
        // The listener is bound already: this request waits until the server
        // serves, which is after the first-start bootstrap.
        let (code, body) = http_get(addr, "/api/v1/health", "").await;
        assert_eq!(
            (code, body.as_str()),
            (200, "{\"status\":\"ok\"}"),
            "on {backend}"
        );
        let token_file = data.path().join("admin-token");
        let token = std::fs::read_to_string(&token_file)
            .unwrap()
            .trim()
            .to_owned();
        assert!(data.path().join("enrollment-secret").exists());
        // The console's first administrator, with a password only this file holds.
        let password = std::fs::read_to_string(data.path().join("admin-password")).unwrap();
        assert_eq!(password.trim().len(), 24, "{password}");
        let (code, body) = http_get(addr, "/login", "").await;
        assert!(
            code == 200 && body.contains("name=\"password\""),
            "{code} {body}"
        );
        let (code, body) = http_get(addr, "/api/v1/device-types", &token).await;
        assert_eq!((code, body.as_str()), (200, "[]"), "on {backend}");
        let (code, _) = http_get(addr, "/api/v1/device-types", "pop_wrong").await;
        assert_eq!(code, 401);
        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err(),
            "stopped listening on {backend}"
        );
        db.cleanup().await;
    }
}

#[tokio::test]
async fn batched_contacts_are_written_on_flush() {
    each_backend(|store| async move {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(t0()));
        let settings = Settings {
            contact_flush: Some(Duration::from_secs(1)),
            ..Settings::default()
        };
        let state = AppState::new(
            store,
            Blobs::open(dir.path()).unwrap(),
            runtime(),
            clock.clone(),
            settings,
        );
        state
            .store()
            .ensure_token("admin", Role::Admin, &hash_secret(ADMIN), 0)
            .await
            .unwrap();
        let e = Env {
            app: app(state.clone()),
            state: state.clone(),
            clock,
            _blobs: dir,
        };
        let f = fleet(&e, 2).await;
        poll(
            &e,
            &f.devices[0].1,
            PollRequest {
                status: status(),
                ..Default::default()
            },
        )
        .await;
        let online = |v: Value| {
            v["items"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|d| d["online"] == true)
                .count()
        };
        assert_eq!(
            online(e.ok("GET", "/api/v1/devices", ADMIN, None).await),
            0,
            "not written yet"
        );
        state.flush_contacts().await.unwrap();
        assert_eq!(online(e.ok("GET", "/api/v1/devices", ADMIN, None).await), 1);
    })
    .await;
}

/// Two server processes on one database: what one changes, the other's poll caches
/// follow once it reads the change counters (every second in `run`).
#[tokio::test]
async fn replicas_follow_each_others_changes() {
    each_backend(|store| async move {
        let a = env(store.clone()).await;
        let dir = tempfile::tempdir().unwrap();
        let b_state = AppState::new(
            store,
            Blobs::open(dir.path()).unwrap(),
            runtime(),
            Arc::new(ManualClock::new(t0())),
            Settings::default(),
        );
        let b = Env {
            app: app(b_state.clone()),
            state: b_state.clone(),
            clock: Arc::new(ManualClock::new(t0())),
            _blobs: dir,
        };
        let f = fleet(&a, 2).await;
        b_state.refresh_caches().await.unwrap();
        let (_, token) = f.devices[0].clone();
        let idle = PollRequest {
            status: status(),
            ..Default::default()
        };
        assert!(poll(&b, &token, idle.clone()).await.actions.is_empty());

        // A task created on replica A reaches polls on replica B after its refresh.
        a.ok(
            "POST",
            "/api/v1/tasks",
            ADMIN,
            Some(json!({"kind": "download", "package_id": f.package.id, "group_id": 1})),
        )
        .await;
        assert!(
            poll(&b, &token, idle.clone()).await.actions.is_empty(),
            "B still has its cache"
        );
        b_state.refresh_caches().await.unwrap();
        assert_eq!(poll(&b, &token, idle.clone()).await.actions.len(), 1);

        // A device enrolling again through A: its old token stops working on B.
        a.ok(
            "POST",
            "/api/v1/agent/enroll",
            &token,
            Some(json!({"device": identity(1)})),
        )
        .await;
        b_state.refresh_caches().await.unwrap();
        let a2 = b
            .call(
                "POST",
                "/api/v1/agent/poll",
                Some(&token),
                Some(serde_json::to_value(&idle).unwrap()),
            )
            .await;
        assert_eq!(a2.status, StatusCode::UNAUTHORIZED);
    })
    .await;
}

/// An operator's change drops only the caches it concerns, as the store's change
/// counters tell: a new task leaves the fleet's device tokens cached (a fleet
/// does not read every token again after each click) while its devices are
/// asked for actions again, and a device moved is read again at once.
#[tokio::test]
async fn an_operators_change_drops_only_the_caches_it_concerns() {
    each_backend(|store| async move {
        let e = env(store).await;
        let f = fleet(&e, 2).await;
        let (id, token) = f.devices[0].clone();
        let idle = PollRequest {
            status: status(),
            ..Default::default()
        };
        assert!(poll(&e, &token, idle.clone()).await.actions.is_empty());
        let key: [u8; 32] = hex::decode(posup_server::auth::hash_secret(&token))
            .unwrap()
            .try_into()
            .unwrap();
        assert!(e.state.caches().device(&key).is_some(), "kept by its poll");

        e.ok(
            "POST",
            "/api/v1/tasks",
            ADMIN,
            Some(json!({"kind": "download", "package_id": f.package.id, "group_id": 1})),
        )
        .await;
        assert!(
            e.state.caches().device(&key).is_some(),
            "a task changes no device's token or settings"
        );
        assert_eq!(poll(&e, &token, idle.clone()).await.actions.len(), 1);

        e.ok(
            "PATCH",
            &format!("/api/v1/devices/{id}"),
            ADMIN,
            Some(json!({"site": {"name": "Store Z", "address": "Z street 1"}})),
        )
        .await;
        assert!(e.state.caches().device(&key).is_none(), "the device moved");
        poll(&e, &token, idle.clone()).await;
        assert_eq!(e.state.caches().device(&key).unwrap().site, "Store Z");
    })
    .await;
}

mod console;
mod identity;
mod metrics;
mod notify;
mod rollout;
mod support;
mod tuf;
mod webdriver;
