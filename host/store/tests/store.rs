//! Storage tests, each run against SQLite and PostgreSQL.

use chrono::{DateTime, Utc};
use posup_proto::agent::{Action, DeviceIdentity, Feedback, FeedbackState, Site};
use posup_proto::api::*;
use posup_proto::{
    Capabilities, Dir, DirAccess, DirPaths, Inventory, ModuleVersion, Phase, TaskKind,
};
use posup_store::lifecycle::Command;
use posup_store::testing::each_backend;
use posup_store::{
    Asking, At, DeviceAuth, Enrollment, Error, Failure, InventoryReport, LOCK_MS,
    MAX_CLAIMS_AT_ONCE, MAX_FAILED_LOGINS, NewAccount, NewPackage, NewPlugin, Removal, Store,
    VarTarget,
};

const T0: i64 = 1_700_000_000_000;
const MINUTE: i64 = 60_000;

/// Devices count as online for three minutes after their last contact.
fn at(now: i64) -> At {
    At {
        now,
        online_since: now - 3 * MINUTE,
    }
}

fn identity(n: u32, site: &str) -> DeviceIdentity {
    DeviceIdentity {
        guid: format!("guid-{n:04}"),
        site: Site {
            name: site.to_owned(),
            address: format!("{site} street {n}"),
        },
        name: format!("Kassa {n}"),
        number: n,
        device_type: "ukm5".to_owned(),
        agent_version: "0.1.0".to_owned(),
    }
}

async fn device_type(store: &Store) {
    store
        .put_device_type(
            "ukm5",
            &DeviceTypeBody {
                description: "UKM 5 registers".into(),
                allowed: Capabilities {
                    dirs: vec![DirAccess {
                        dir: Dir::Product,
                        write: true,
                    }],
                    services: vec!["ukm5".into()],
                    scripts: false,
                    prompt: true,
                    databases: Vec::new(),
                },
                paths: DirPaths {
                    product: Some("/home/ukm5/mint".into()),
                    ..Default::default()
                },
                poll_interval_secs: None,
                site_limit: None,
                impact: None,
            },
            T0,
            "token admin",
        )
        .await
        .unwrap();
}

/// A device type with an enabled plugin, a package, and `n` devices (numbers 1..=n,
/// sites A and B alternating).
/// A UKM 5 package read by the tests' plugin.
fn ukm5_package(file_name: &str, sha256: String, version: &str) -> NewPackage {
    NewPackage {
        device_type: "ukm5".into(),
        file_name: file_name.into(),
        sha256,
        size: 1234,
        version: version.into(),
        kind: "complete".into(),
        notes: "fixes".into(),
        changelog: String::new(),
        rollback: true,
        plugin_sha256: "aa".repeat(32),
    }
}

async fn fleet(store: &Store, n: u32) -> (Vec<i64>, PackageView) {
    device_type(store).await;
    store
        .insert_plugin(
            NewPlugin {
                sha256: "aa".repeat(32),
                name: "ukm5".into(),
                vendor: "posup".into(),
                version: "1.0.0".into(),
                description: "UKM 5".into(),
                device_types: vec!["ukm5".into()],
                capabilities: Capabilities {
                    dirs: vec![
                        DirAccess {
                            dir: Dir::Product,
                            write: true,
                        },
                        DirAccess {
                            dir: Dir::Staging,
                            write: true,
                        },
                    ],
                    services: vec![],
                    scripts: false,
                    prompt: true,
                    databases: Vec::new(),
                },
                interface: "0.1.0".into(),
                size: 10,
            },
            T0,
            "token vendor",
        )
        .await
        .unwrap();
    store
        .enable_plugin("ukm5", "ukm5", None, T0, "token admin")
        .await
        .unwrap();
    let package = store
        .insert_package(
            ukm5_package("ukm5_pos_1.8.4.tgz", "bb".repeat(32), "1.8.4"),
            T0,
            "token vendor",
        )
        .await
        .unwrap();
    let mut ids = Vec::new();
    for i in 1..=n {
        let site = if i.is_multiple_of(2) { "B" } else { "A" };
        ids.push(
            enroll(store, &identity(i, site), &format!("hash-{i}"))
                .await
                .unwrap(),
        );
    }
    (ids, package)
}

/// The hash of the enrollment token the tests enroll with.
const ENROLL: &str = "enroll-hash";

/// Enrolls a new device with the tests' enrollment token.
async fn enroll(store: &Store, d: &DeviceIdentity, token_hash: &str) -> Result<i64, Error> {
    store.ensure_enrollment_secret("test", ENROLL, T0).await?;
    store
        .enroll(
            Enrollment {
                identity: d,
                secret_hash: Some(ENROLL),
                current_token_hash: None,
                new_token_hash: token_hash,
            },
            T0,
        )
        .await
        .map(|(id, _)| id)
}

async fn auth(store: &Store, n: u32) -> DeviceAuth {
    store
        .device_by_token(&format!("hash-{n}"))
        .await
        .unwrap()
        .unwrap()
}

fn feedback(
    task: &TaskView,
    action: i64,
    device: i64,
    key: &str,
    state: FeedbackState,
) -> Feedback {
    Feedback {
        key: key.to_owned(),
        task_id: task.id,
        action_id: action,
        device_id: device,
        attempt: task.attempt,
        step: Phase::Apply,
        state,
        message: Some(format!("{} {key}", state.as_str())),
        percent: None,
        at: DateTime::<Utc>::from_timestamp_millis(T0).unwrap(),
        retry_after_secs: None,
    }
}

#[tokio::test]
async fn tokens_are_found_by_hash_and_the_last_admin_stays() {
    each_backend(|store| async move {
        let admin = store
            .create_token(
                &CreateToken {
                    name: "root".into(),
                    role: Role::Admin,
                    vendor: None,
                },
                "secret",
                "h1",
                T0,
                "server",
            )
            .await
            .unwrap();
        store
            .create_token(
                &CreateToken {
                    name: "ops".into(),
                    role: Role::Operator,
                    vendor: None,
                },
                "s2",
                "h2",
                T0,
                "token root",
            )
            .await
            .unwrap();
        let who = store.token_by_hash("h2").await.unwrap().unwrap();
        assert_eq!((who.name.as_str(), who.role), ("ops", Role::Operator));
        assert!(store.token_by_hash("nope").await.unwrap().is_none());
        let err = store
            .delete_token(admin.id, T0, "token root")
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::Conflict(ref m) if m.contains("last admin token")),
            "{err}"
        );
        assert!(
            !store
                .ensure_token("cfg", Role::Admin, "h1", T0)
                .await
                .unwrap()
        );
        assert!(
            store
                .ensure_token("cfg", Role::Admin, "h3", T0)
                .await
                .unwrap()
        );
        store
            .delete_token(admin.id, T0, "token root")
            .await
            .unwrap();
        assert_eq!(store.admin_token_count().await.unwrap(), 1);
    })
    .await;
}

#[tokio::test]
async fn accounts_lock_after_repeated_failures_and_sessions_end() {
    each_backend(|store| async move {
        let new = |name: &'static str, role| NewAccount {
            name,
            role,
            password: "$argon2id$stand-in",
            language: Language::Ru,
            time_zone: "Europe/Moscow",
        };
        let admin = store
            .create_account(&new("anna", Role::Admin), T0, "server")
            .await
            .unwrap();
        let viewer = store
            .create_account(&new("boris", Role::Viewer), T0, "account anna")
            .await
            .unwrap();
        let taken = store
            .create_account(&new("anna", Role::Viewer), T0, "server")
            .await
            .unwrap_err();
        assert!(
            matches!(taken, Error::Conflict(ref m) if m.contains("anna exists")),
            "{taken}"
        );
        let zone = store
            .create_account(
                &NewAccount {
                    time_zone: "Moscow",
                    ..new("vera", Role::Viewer)
                },
                T0,
                "server",
            )
            .await
            .unwrap_err();
        assert!(
            matches!(zone, Error::Invalid(ref m) if m.contains("IANA")),
            "{zone}"
        );

        // Four failures count; the fifth locks, and the count starts again.
        for n in 1..MAX_FAILED_LOGINS {
            assert_eq!(
                store.login_failed(viewer, T0).await.unwrap(),
                Failure::Counted(n)
            );
        }
        assert_eq!(
            store.login_failed(viewer, T0).await.unwrap(),
            Failure::Locked(T0 + LOCK_MS)
        );
        let login = store.account_for_login("boris").await.unwrap().unwrap();
        assert_eq!(login.locked_until, T0 + LOCK_MS);
        assert_eq!(
            store.login_failed(viewer, T0).await.unwrap(),
            Failure::Counted(1)
        );
        // A right password starts the count again.
        store
            .open_session(viewer, "s1", "csrf1", T0, T0 + MINUTE)
            .await
            .unwrap();
        assert_eq!(
            store.login_failed(viewer, T0).await.unwrap(),
            Failure::Counted(1)
        );

        let session = store.session("s1", T0).await.unwrap().unwrap();
        assert_eq!(
            (
                session.name.as_str(),
                session.role,
                session.language,
                session.csrf.as_str()
            ),
            ("boris", Role::Viewer, Language::Ru, "csrf1")
        );
        assert!(
            store.session("s1", T0 + MINUTE).await.unwrap().is_none(),
            "expired"
        );
        assert!(store.session("other", T0).await.unwrap().is_none());
        store
            .set_account_preferences(viewer, Language::En, "UTC", T0, "account boris")
            .await
            .unwrap();
        assert_eq!(
            store.session("s1", T0).await.unwrap().unwrap().language,
            Language::En
        );
        // A new password ends every other session of the account.
        store
            .open_session(viewer, "s3", "csrf3", T0, T0 + MINUTE)
            .await
            .unwrap();
        store
            .set_account_password(viewer, "$argon2id$new", "s1", T0, "account boris")
            .await
            .unwrap();
        assert!(
            store.session("s3", T0).await.unwrap().is_none(),
            "the other session ended"
        );
        assert_eq!(
            store
                .account_for_login("boris")
                .await
                .unwrap()
                .unwrap()
                .password,
            "$argon2id$new"
        );
        store.end_session("s1").await.unwrap();
        assert!(store.session("s1", T0).await.unwrap().is_none(), "ended");

        // Deleting an account ends its sessions; the last administrator stays.
        store
            .open_session(viewer, "s2", "csrf2", T0, T0 + MINUTE)
            .await
            .unwrap();
        store
            .delete_account(viewer, T0, "account anna")
            .await
            .unwrap();
        assert!(store.session("s2", T0).await.unwrap().is_none());
        let last = store
            .delete_account(admin, T0, "account anna")
            .await
            .unwrap_err();
        assert!(
            matches!(last, Error::Conflict(ref m) if m.contains("last administrator")),
            "{last}"
        );
        assert_eq!(store.account_count().await.unwrap(), 1);
        let names: Vec<String> = store
            .list_accounts()
            .await
            .unwrap()
            .into_iter()
            .map(|a| a.name)
            .collect();
        assert_eq!(names, ["anna"]);
    })
    .await;
}

#[tokio::test]
async fn enrollment_checks_the_device_type_and_reenrollment_replaces_the_token() {
    each_backend(|store| async move {
        let err = enroll(&store, &identity(1, "A"), "h").await.unwrap_err();
        assert!(
            matches!(err, Error::Invalid(ref m) if m.contains("device type ukm5 does not exist")),
            "{err}"
        );
        // A refused enrollment spends no use of the enrollment token.
        let secrets = store.list_enrollment_secrets().await.unwrap();
        assert_eq!(secrets[0].uses, 0, "{secrets:?}");
        device_type(&store).await;
        let before = store.generations().await.unwrap();
        let id = enroll(&store, &identity(1, "A"), "old").await.unwrap();
        assert_eq!(
            store.generations().await.unwrap(),
            before,
            "a new device invalidates no server's cache"
        );
        let mut again = identity(1, "A");
        again.name = "Kassa renamed".into();
        // The enrollment token alone does not enroll an enrolled GUID again.
        let err = enroll(&store, &again, "stolen").await.unwrap_err();
        assert!(
            matches!(err, Error::Conflict(ref m) if m.contains("already enrolled")),
            "{err}"
        );
        let with_token = |new| Enrollment {
            identity: &again,
            secret_hash: None,
            current_token_hash: Some("old"),
            new_token_hash: new,
        };
        assert_eq!(
            store.enroll(with_token("new"), T0).await.unwrap(),
            (id, true)
        );
        assert!(store.device_by_token("old").await.unwrap().is_none());
        assert!(
            store.generations().await.unwrap().devices > before.devices,
            "servers that cached the old token drop it"
        );
        let dev = store.device_by_token("new").await.unwrap().unwrap();
        assert_eq!((dev.id, dev.access.as_str()), (id, "active"));
        let row = store.device_row(id, &at(T0)).await.unwrap().unwrap();
        assert_eq!(row.name, "Kassa renamed");
        assert!(!row.online, "never polled");
        // The replaced token enrolls nothing either; without an enrollment token
        // it does not even learn that the GUID is enrolled.
        let err = store.enroll(with_token("newer"), T0).await.unwrap_err();
        assert!(matches!(err, Error::Unauthorized(_)), "{err}");
    })
    .await;
}

/// Terminals racing for an enrollment token's last use: exactly one gets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_last_use_of_an_enrollment_token_goes_to_one_terminal() {
    each_backend(|store| async move {
        device_type(&store).await;
        let body = CreateEnrollmentSecret {
            name: "one".into(),
            site: None,
            max_uses: Some(1),
            expires_at: None,
        };
        store
            .create_enrollment_secret(&body, "pes_one", "one-hash", T0, "token admin")
            .await
            .unwrap();
        let tries: Vec<_> = (1..=8)
            .map(|n| {
                let store = store.clone();
                tokio::spawn(async move {
                    store
                        .enroll(
                            Enrollment {
                                identity: &identity(n, "A"),
                                secret_hash: Some("one-hash"),
                                current_token_hash: None,
                                new_token_hash: &format!("t{n}"),
                            },
                            T0,
                        )
                        .await
                })
            })
            .collect();
        let mut results = Vec::new();
        for t in tries {
            results.push(t.await.unwrap());
        }
        let won = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(won, 1, "{results:?}");
        for r in results.iter().filter_map(|r| r.as_ref().err()) {
            assert!(
                matches!(r, Error::Unauthorized(m) if m.contains("used up")),
                "{r}"
            );
        }
        let listed = store.list_enrollment_secrets().await.unwrap();
        assert_eq!(listed[0].uses, 1);
    })
    .await;
}

#[tokio::test]
async fn device_list_sorts_searches_and_pages() {
    each_backend(|store| async move {
        let (ids, _) = fleet(&store, 25).await;
        let now = T0 + 10 * MINUTE;
        // Devices 1..=10 polled a minute ago; the rest long ago.
        store.touch_devices(&ids[..10], now - MINUTE).await.unwrap();
        store.touch_devices(&ids[10..], T0).await.unwrap();
        store
            .set_tags(ids[4], &["pilot".into()], now, "token ops")
            .await
            .unwrap();

        let q = DeviceQuery {
            sort: DeviceSort::Number,
            order: Order::Desc,
            page: Some(2),
            per_page: Some(10),
            ..Default::default()
        };
        let page = store.list_devices(&q, &at(now)).await.unwrap();
        assert_eq!(page.total, 25);
        let numbers: Vec<u32> = page.items.iter().map(|d| d.number).collect();
        assert_eq!(numbers, (6..=15).rev().collect::<Vec<_>>());

        let q = DeviceQuery {
            sort: DeviceSort::Site,
            per_page: Some(100),
            ..Default::default()
        };
        let all = store.list_devices(&q, &at(now)).await.unwrap();
        let sites: Vec<&str> = all.items.iter().map(|d| d.site.as_str()).collect();
        assert_eq!(sites.iter().filter(|s| **s == "A").count(), 13);
        assert!(sites.windows(2).all(|w| w[0] <= w[1]), "{sites:?}");

        // Search ignores case and matches a part; `%` is not a wildcard.
        let q = DeviceQuery {
            name: Some("KASSA 1".into()),
            ..Default::default()
        };
        let found = store.list_devices(&q, &at(now)).await.unwrap();
        assert_eq!(found.total, 11, "Kassa 1 and 10..=19");
        let q = DeviceQuery {
            name: Some("%".into()),
            ..Default::default()
        };
        assert_eq!(store.list_devices(&q, &at(now)).await.unwrap().total, 0);

        let q = DeviceQuery {
            online: Some(true),
            site: Some("b".into()),
            ..Default::default()
        };
        let online_b = store.list_devices(&q, &at(now)).await.unwrap();
        assert_eq!(online_b.total, 5, "even numbers 2..=10");
        assert!(online_b.items.iter().all(|d| d.online));

        let q = DeviceQuery {
            tag: Some("pilot".into()),
            ..Default::default()
        };
        let tagged = store.list_devices(&q, &at(now)).await.unwrap();
        assert_eq!(tagged.items.len(), 1);
        assert_eq!(tagged.items[0].tags, vec!["pilot".to_string()]);

        let q = DeviceQuery {
            group: Some(3),
            number: Some(7),
            ..Default::default()
        };
        assert_eq!(
            store.list_devices(&q, &at(now)).await.unwrap().total,
            1,
            "7 is odd"
        );
        let q = DeviceQuery {
            group: Some(99),
            ..Default::default()
        };
        assert!(matches!(
            store.list_devices(&q, &at(now)).await,
            Err(Error::Invalid(_))
        ));
    })
    .await;
}

#[tokio::test]
async fn groups_builtin_static_and_filter() {
    each_backend(|store| async move {
        let (ids, _) = fleet(&store, 9).await;
        let now = T0;
        let groups = store.list_groups(&at(now)).await.unwrap();
        let counts: Vec<(&str, u64, bool)> = groups
            .iter()
            .map(|g| (g.name.as_str(), g.devices, g.builtin))
            .collect();
        assert_eq!(
            counts,
            vec![("All", 9, true), ("Even", 4, true), ("Odd", 5, true)]
        );

        let pilots = store
            .create_group(
                &CreateGroup {
                    name: "Pilots".into(),
                    description: "first wave".into(),
                    kind: GroupKind::Static,
                    filter: None,
                    devices: vec![ids[0], ids[1]],
                },
                &at(now),
                "token ops",
            )
            .await
            .unwrap();
        assert_eq!(pilots.devices, 2);
        store
            .add_group_members(pilots.id, &[ids[2], ids[0]], now, "token ops")
            .await
            .unwrap();
        store
            .remove_group_members(pilots.id, &[ids[1]], now, "token ops")
            .await
            .unwrap();
        assert_eq!(
            store
                .group(pilots.id, &at(now))
                .await
                .unwrap()
                .unwrap()
                .devices,
            2
        );
        let err = store
            .add_group_members(pilots.id, &[9999], now, "token ops")
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::Invalid(ref m) if m.contains("device 9999")),
            "{err}"
        );

        let site_b = store
            .create_group(
                &CreateGroup {
                    name: "Store B".into(),
                    description: String::new(),
                    kind: GroupKind::Filter,
                    filter: Some(GroupFilter {
                        site: Some("B".into()),
                        ..Default::default()
                    }),
                    devices: vec![],
                },
                &at(now),
                "token ops",
            )
            .await
            .unwrap();
        assert_eq!(site_b.devices, 4);
        let dup = store
            .create_group(
                &CreateGroup {
                    name: "Pilots".into(),
                    description: String::new(),
                    kind: GroupKind::Static,
                    filter: None,
                    devices: vec![],
                },
                &at(now),
                "token ops",
            )
            .await
            .unwrap_err();
        assert!(matches!(dup, Error::Conflict(_)));
        assert!(matches!(
            store.delete_group(1, now, "token ops").await,
            Err(Error::Conflict(_))
        ));
        assert!(matches!(
            store
                .add_group_members(site_b.id, &[ids[0]], now, "token ops")
                .await,
            Err(Error::Invalid(_))
        ));
        let renamed = store
            .update_group(
                site_b.id,
                &UpdateGroup {
                    name: Some("Store B online".into()),
                    description: None,
                    filter: Some(GroupFilter {
                        site: Some("B".into()),
                        online: Some(true),
                        ..Default::default()
                    }),
                },
                &at(now),
                "token ops",
            )
            .await
            .unwrap();
        assert_eq!(
            (renamed.name.as_str(), renamed.devices),
            ("Store B online", 0)
        );
        store
            .delete_group(site_b.id, now, "token ops")
            .await
            .unwrap();
        assert!(store.group(site_b.id, &at(now)).await.unwrap().is_none());
    })
    .await;
}

#[tokio::test]
async fn task_state_machine_from_schedule_to_restart() {
    each_backend(|store| async move {
        let (ids, package) = fleet(&store, 4).await;
        let now = T0;
        store.touch_devices(&ids, now).await.unwrap();
        let start = DateTime::<Utc>::from_timestamp_millis(now + 10 * MINUTE).unwrap();
        let task = store
            .create_task(
                // A download: updates are handed out only once their gates pass,
                // which the server's rollout tests cover.
                &CreateTask {
                    name: None,
                    kind: TaskKind::Download,
                    package_id: package.id,
                    group_id: 2,
                    start_at: Some(start),
                    notice_override: None,
                },
                &at(now),
                "token ops",
            )
            .await
            .unwrap();
        assert_eq!(task.state, TaskState::Scheduled);
        assert_eq!(task.counts.total, 2, "Even: devices 2 and 4");
        assert_eq!(task.counts.inprogress, 2);
        // Not handed out before its start (within the horizon it is), and the
        // device is not idle: it has work to come.
        let asking = Asking {
            device_id: ids[1],
            site: "B",
            device_type: "ukm5",
        };
        let waiting = store.poll_actions(asking, &at(now), now).await.unwrap();
        assert!(waiting.actions.is_empty() && !waiting.idle);
        assert!(
            store
                .actions_for_device(ids[1], now)
                .await
                .unwrap()
                .is_empty()
        );
        let early = store
            .actions_for_device(ids[1], now + 10 * MINUTE)
            .await
            .unwrap();
        assert_eq!(early.len(), 1);
        assert_eq!(early[0].not_before, start);

        // Pause, resume before the start: back to Scheduled; the tick starts it.
        let paused = store
            .command_task(task.id, Command::Pause, &at(now), "token ops")
            .await
            .unwrap();
        assert_eq!(paused.state, TaskState::Paused);
        assert!(
            store
                .actions_for_device(ids[1], now + 20 * MINUTE)
                .await
                .unwrap()
                .is_empty()
        );
        let err = store
            .command_task(task.id, Command::Restart, &at(now), "token ops")
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::Conflict(ref m) if m.contains("only a Finished task")),
            "{err}"
        );
        let resumed = store
            .command_task(task.id, Command::Resume, &at(now), "token ops")
            .await
            .unwrap();
        assert_eq!(resumed.state, TaskState::Scheduled);
        let later = now + 11 * MINUTE;
        store.touch_devices(&ids, later).await.unwrap();
        store.tick(&at(later)).await.unwrap();
        let running = store.task(task.id, &at(later)).await.unwrap().unwrap();
        assert_eq!(running.state, TaskState::Running);

        // Device 2 commits, device 4 fails; the task finishes.
        let a2 = store
            .actions_for_device(ids[1], later)
            .await
            .unwrap()
            .remove(0);
        let a4 = store
            .actions_for_device(ids[3], later)
            .await
            .unwrap()
            .remove(0);
        let ack = store
            .record_feedback(
                ids[1],
                &feedback(&running, a2.action_id, ids[1], "k1", FeedbackState::Started),
                &at(later),
            )
            .await
            .unwrap();
        assert!(ack.active && !ack.duplicate);
        let again = store
            .record_feedback(
                ids[1],
                &feedback(&running, a2.action_id, ids[1], "k1", FeedbackState::Started),
                &at(later),
            )
            .await
            .unwrap();
        assert!(again.duplicate, "same key twice is recorded once");
        let wrong = store
            .record_feedback(
                ids[0],
                &feedback(&running, a2.action_id, ids[0], "k9", FeedbackState::Ok),
                &at(later),
            )
            .await
            .unwrap_err();
        assert!(matches!(wrong, Error::Invalid(_)), "{wrong}");
        store
            .record_feedback(
                ids[1],
                &feedback(
                    &running,
                    a2.action_id,
                    ids[1],
                    "k2",
                    FeedbackState::Committed,
                ),
                &at(later),
            )
            .await
            .unwrap();
        let mid = store.task(task.id, &at(later)).await.unwrap().unwrap();
        assert_eq!(
            (mid.counts.success, mid.counts.inprogress, mid.state),
            (1, 1, TaskState::Running)
        );
        store
            .record_feedback(
                ids[3],
                &feedback(&running, a4.action_id, ids[3], "k3", FeedbackState::Failed),
                &at(later),
            )
            .await
            .unwrap();
        store
            .record_feedback(
                ids[3],
                &feedback(
                    &running,
                    a4.action_id,
                    ids[3],
                    "k4",
                    FeedbackState::RolledBack,
                ),
                &at(later),
            )
            .await
            .unwrap();
        let done = store.task(task.id, &at(later)).await.unwrap().unwrap();
        assert_eq!(done.state, TaskState::Finished);
        assert_eq!(
            (done.counts.success, done.counts.failed, done.counts.total),
            (1, 1, 2)
        );
        assert!(done.finished_at.is_some());
        assert!(
            store
                .actions_for_device(ids[3], later)
                .await
                .unwrap()
                .is_empty()
        );

        let detail = store
            .task_device_detail(task.id, ids[3], &at(later))
            .await
            .unwrap();
        assert_eq!(detail.device.state, DeviceTaskState::Failed);
        let states: Vec<FeedbackState> = detail.history.iter().map(|e| e.state).collect();
        assert_eq!(
            states,
            vec![FeedbackState::Failed, FeedbackState::RolledBack]
        );
        let failed_only = store
            .task_devices(
                task.id,
                &TaskDeviceQuery {
                    state: Some(DeviceTaskState::Failed),
                    ..Default::default()
                },
                &at(later),
            )
            .await
            .unwrap();
        assert_eq!(
            failed_only
                .items
                .iter()
                .map(|r| r.device_id)
                .collect::<Vec<_>>(),
            vec![ids[3]]
        );

        let group = store
            .failed_to_group(
                task.id,
                &FailedToGroup {
                    name: "Retry".into(),
                    description: String::new(),
                    devices: None,
                },
                &at(later),
                "token ops",
            )
            .await
            .unwrap();
        assert_eq!((group.kind, group.devices), (GroupKind::Static, 1));

        // Restart: only the failed device runs again, in a new attempt.
        let restarted = store
            .command_task(task.id, Command::Restart, &at(later), "token ops")
            .await
            .unwrap();
        assert_eq!(
            (restarted.state, restarted.attempt),
            (TaskState::Running, 2)
        );
        assert_eq!(
            (restarted.counts.success, restarted.counts.inprogress),
            (1, 1)
        );
        let again = store.actions_for_device(ids[3], later).await.unwrap();
        assert_eq!(again[0].attempt, 2);
        assert!(
            store
                .actions_for_device(ids[1], later)
                .await
                .unwrap()
                .is_empty()
        );
        // A report of the old attempt is kept but moves nothing.
        let stale = store
            .record_feedback(
                ids[3],
                &feedback(
                    &running,
                    a4.action_id,
                    ids[3],
                    "k5",
                    FeedbackState::Committed,
                ),
                &at(later),
            )
            .await
            .unwrap();
        assert!(!stale.active);
        assert_eq!(
            store
                .task(task.id, &at(later))
                .await
                .unwrap()
                .unwrap()
                .counts
                .success,
            1
        );

        // Offline devices are counted apart.
        let much_later = later + 60 * MINUTE;
        let t = store.task(task.id, &at(much_later)).await.unwrap().unwrap();
        assert_eq!((t.counts.offline, t.counts.inprogress), (1, 0));

        // The task refers to the package: deleting it archives it.
        let removal = store
            .delete_package(package.id, later, "token ops")
            .await
            .unwrap();
        assert!(matches!(removal, Removal::Archived(_)), "{removal:?}");
        store
            .delete_task(task.id, later, "token ops")
            .await
            .unwrap();
        assert!(store.task(task.id, &at(later)).await.unwrap().is_none());
        // Nothing refers to it any more: deleting it deletes it.
        let removal = store
            .delete_package(package.id, later, "token ops")
            .await
            .unwrap();
        assert!(
            matches!(
                removal,
                Removal::Deleted {
                    blob_unused: true,
                    ..
                }
            ),
            "{removal:?}"
        );

        let audit = store
            .audit_log(&AuditQuery {
                object: Some("task".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        let actions: Vec<&str> = audit.iter().rev().map(|e| e.action.as_str()).collect();
        assert_eq!(
            actions,
            vec![
                "task.create",
                "task.pause",
                "task.resume",
                "task.start",
                "task.finish",
                "task.restart",
                "task.delete"
            ]
        );
    })
    .await;
}

#[tokio::test]
async fn a_batch_of_reports_records_what_they_would_one_by_one() {
    each_backend(|store| async move {
        let (ids, package) = fleet(&store, 4).await;
        let now = T0;
        store.touch_devices(&ids, now).await.unwrap();
        // A download for devices 2 and 4 (group Even).
        let download = |name: &str| {
            let (store, name) = (store.clone(), name.to_owned());
            async move {
                let body = CreateTask {
                    name: Some(name),
                    kind: TaskKind::Download,
                    package_id: package.id,
                    group_id: 2,
                    start_at: None,
                    notice_override: None,
                };
                store
                    .create_task(&body, &at(now), "token ops")
                    .await
                    .unwrap()
            }
        };
        let task = download("first").await;
        let (d2, d4) = (ids[1], ids[3]);
        let a2 = store.actions_for_device(d2, now).await.unwrap().remove(0);
        let a4 = store.actions_for_device(d4, now).await.unwrap().remove(0);
        let report = |action: i64, device: i64, key: &str, state: FeedbackState| {
            feedback(&task, action, device, key, state)
        };
        // Each report's message ends in its key: which reports were recorded,
        // in which order.
        let key_of = |e: &StepEvent| {
            e.message
                .as_deref()
                .and_then(|m| m.rsplit(' ').next())
                .unwrap_or_default()
                .to_owned()
        };
        let ask = |device_id| Asking {
            device_id,
            site: "B",
            device_type: "ukm5",
        };
        let polled = store.poll_actions(ask(d2), &at(now), now).await.unwrap();
        assert_eq!((polled.actions.len(), polled.idle), (1, false));
        let outside = store
            .poll_actions(
                Asking {
                    site: "A",
                    ..ask(ids[0])
                },
                &at(now),
                now,
            )
            .await
            .unwrap();
        assert!(
            outside.actions.is_empty() && outside.idle,
            "device 1 is in no task"
        );
        // A batch sent before, cut off after its first report had been recorded.
        store
            .record_feedback(
                d2,
                &report(a2.action_id, d2, "k1", FeedbackState::Started),
                &at(now),
            )
            .await
            .unwrap();
        let mut no_message = report(a2.action_id, d2, "k3", FeedbackState::Ok);
        no_message.message = None;
        let batch = [
            report(a2.action_id, d2, "k1", FeedbackState::Started),
            report(a2.action_id, d2, "k2", FeedbackState::Ok),
            no_message,
            // Another device's action, and a report the server cannot read: both
            // refused, the rest recorded.
            report(a4.action_id, d2, "k4", FeedbackState::Ok),
            report(a2.action_id, d2, "", FeedbackState::Ok),
            report(a2.action_id, d2, "k2", FeedbackState::Ok),
            report(a2.action_id, d2, "k5", FeedbackState::Committed),
            report(a2.action_id, d2, "k6", FeedbackState::Ok),
        ];
        let batch: Vec<(i64, &Feedback)> = batch.iter().map(|f| (d2, f)).collect();
        let recorded = store.record_reports(&batch, &at(now)).await.unwrap();
        assert_eq!(recorded.idle, vec![d2], "its only part ended: idle");
        let results = recorded.results;
        let shape: Vec<Option<(bool, bool)>> = results
            .iter()
            .map(|r| r.as_ref().ok().map(|a| (a.duplicate, a.active)))
            .collect();
        assert_eq!(
            shape,
            vec![
                Some((true, true)),
                Some((false, true)),
                Some((false, true)),
                None,
                None,
                Some((true, true)),
                Some((false, false)),
                Some((false, false)),
            ],
            "duplicates acknowledged, refusals apart, the committing report ends the part"
        );
        assert!(
            matches!(results[3], Err(Error::Invalid(_))),
            "{:?}",
            results[3]
        );
        assert!(
            matches!(results[4], Err(Error::Invalid(_))),
            "{:?}",
            results[4]
        );
        let detail = store
            .task_device_detail(task.id, d2, &at(now))
            .await
            .unwrap();
        let history: Vec<String> = detail.history.iter().map(key_of).collect();
        assert_eq!(
            history,
            vec!["k1", "k2", "", "k5", "k6"],
            "each once, in order (k3 carries no message)"
        );
        assert_eq!(detail.device.state, DeviceTaskState::Success);
        assert_eq!(
            (
                detail.device.step.as_deref(),
                detail.device.message.as_deref()
            ),
            (Some("apply"), Some("ok k6")),
            "the row shows the last report, and its last message"
        );
        let mid = store.task(task.id, &at(now)).await.unwrap().unwrap();
        assert_eq!((mid.state, mid.counts.success), (TaskState::Running, 1));

        // Reports of two devices in one call (as a server groups them), one key
        // used by both: each device's is its own. The last part ending finishes
        // the task; its device has a part of another task left, so is not idle.
        let second = download("second").await;
        let (f7, f8) = (
            report(a4.action_id, d4, "k7", FeedbackState::Failed),
            report(a4.action_id, d4, "k8", FeedbackState::RolledBack),
        );
        let late = report(a2.action_id, d2, "k7", FeedbackState::Ok);
        let recorded = store
            .record_reports(&[(d4, &f7), (d2, &late), (d4, &f8)], &at(now))
            .await
            .unwrap();
        assert!(recorded.idle.is_empty(), "{:?}", recorded.idle);
        let results = recorded.results;
        assert!(
            results
                .iter()
                .all(|r| r.as_ref().is_ok_and(|a| !a.active && !a.duplicate)),
            "{results:?}"
        );
        let d2_steps = store
            .task_device_detail(task.id, d2, &at(now))
            .await
            .unwrap()
            .history
            .len();
        assert_eq!(d2_steps, 6);
        let d4_steps: Vec<String> = store
            .task_device_detail(task.id, d4, &at(now))
            .await
            .unwrap()
            .history
            .iter()
            .map(key_of)
            .collect();
        assert_eq!(d4_steps, ["k7", "k8"]);
        let done = store.task(task.id, &at(now)).await.unwrap().unwrap();
        assert_eq!(
            (done.state, done.counts.success, done.counts.failed),
            (TaskState::Finished, 1, 1)
        );
        let polled = store.poll_actions(ask(d4), &at(now), now).await.unwrap();
        assert_eq!(
            (polled.actions[0].task_id, polled.idle),
            (second.id, false),
            "its part of the first task ended; the second's is left"
        );
        let f9 = report(a4.action_id, d4, "k9", FeedbackState::Ok);
        let too_many = vec![(d4, &f9); 65];
        assert!(matches!(
            store.record_reports(&too_many, &at(now)).await,
            Err(Error::Invalid(ref m)) if m.contains("at most 64")
        ));
    })
    .await;
}

/// What the list of a task's devices shows, counted: all, failed, succeeded.
async fn listed(store: &Store, task: i64, now: i64) -> (u64, u64, u64) {
    let count = |state| async move {
        let query = TaskDeviceQuery {
            state,
            ..Default::default()
        };
        store
            .task_devices(task, &query, &at(now))
            .await
            .unwrap()
            .total
    };
    (
        count(None).await,
        count(Some(DeviceTaskState::Failed)).await,
        count(Some(DeviceTaskState::Success)).await,
    )
}

/// A task's counts agree with its parts as listed, and add up.
async fn counts_agree(store: &Store, task: i64, now: i64, what: &str) -> TaskCounts {
    let c = store.task(task, &at(now)).await.unwrap().unwrap().counts;
    assert_eq!(
        (c.total, c.failed, c.success),
        listed(store, task, now).await,
        "{what}: {c:?}"
    );
    assert_eq!(
        c.total,
        c.failed + c.success + c.inprogress + c.offline,
        "{what}: {c:?}"
    );
    c
}

/// Eight devices in touch at `now`, a Download task for all of them, and each
/// one's action.
async fn download_for_eight(store: &Store, now: i64) -> (Vec<i64>, TaskView, Vec<Action>) {
    let (ids, package) = fleet(store, 8).await;
    store.touch_devices(&ids, now).await.unwrap();
    let task = store
        .create_task(
            &CreateTask {
                name: None,
                kind: TaskKind::Download,
                package_id: package.id,
                group_id: 1,
                start_at: None,
                notice_override: None,
            },
            &at(now),
            "token ops",
        )
        .await
        .unwrap();
    let mut actions = Vec::new();
    for id in &ids {
        actions.push(store.actions_for_device(*id, now).await.unwrap().remove(0));
    }
    (ids, task, actions)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn task_counts_follow_every_change_of_their_parts() {
    each_backend(|store| async move {
        let now = T0;
        let (ids, task, actions) = download_for_eight(&store, now).await;
        let c = counts_agree(&store, task.id, now, "created").await;
        assert_eq!((c.total, c.inprogress), (8, 8));
        let report =
            |n: usize, key: &str, state| feedback(&task, actions[n].action_id, ids[n], key, state);

        // A claim moves nothing the counts show.
        let asking = Asking {
            device_id: ids[0],
            site: "A",
            device_type: "ukm5",
        };
        store.poll_actions(asking, &at(now), now).await.unwrap();
        counts_agree(&store, task.id, now, "claimed").await;
        store
            .record_feedback(ids[0], &report(0, "a", FeedbackState::Committed), &at(now))
            .await
            .unwrap();
        let c = counts_agree(&store, task.id, now, "one committed").await;
        assert_eq!((c.success, c.inprogress), (1, 7));

        // Reports recorded together: a success, a failure, a step started, and
        // the first device's success again, which changes nothing.
        let batch = [
            report(1, "b", FeedbackState::Committed),
            report(2, "c", FeedbackState::Failed),
            report(3, "d", FeedbackState::Started),
            report(0, "a", FeedbackState::Committed),
        ];
        let reports: Vec<(i64, &Feedback)> = batch.iter().map(|f| (f.device_id, f)).collect();
        store.record_reports(&reports, &at(now + 1)).await.unwrap();
        let c = counts_agree(&store, task.id, now + 1, "a batch").await;
        assert_eq!((c.success, c.failed, c.inprogress), (2, 1, 5));

        // Four devices report at once: on PostgreSQL, concurrent transactions.
        let mut sent = Vec::new();
        for n in 4..8 {
            let (store, f) = (store.clone(), report(n, "e", FeedbackState::Committed));
            sent.push(tokio::spawn(async move {
                store.record_feedback(f.device_id, &f, &at(now + 2)).await
            }));
        }
        for s in sent {
            s.await.unwrap().unwrap();
        }
        let c = counts_agree(&store, task.id, now + 2, "four at once").await;
        assert_eq!((c.success, c.failed, c.inprogress), (6, 1, 1));

        // The last part fails; a restart sends the failed ones again.
        store
            .record_feedback(ids[3], &report(3, "f", FeedbackState::Failed), &at(now + 3))
            .await
            .unwrap();
        let c = counts_agree(&store, task.id, now + 3, "ended").await;
        assert_eq!((c.success, c.failed, c.inprogress), (6, 2, 0));
        store
            .command_task(task.id, Command::Restart, &at(now + 3), "token ops")
            .await
            .unwrap();
        let c = counts_agree(&store, task.id, now + 3, "restarted").await;
        assert_eq!((c.success, c.failed, c.inprogress), (6, 0, 2));

        // Deleted devices leave the counts: one restarted, one succeeded.
        store
            .delete_device(ids[2], now + 4, "token ops")
            .await
            .unwrap();
        store
            .delete_device(ids[4], now + 4, "token ops")
            .await
            .unwrap();
        let c = counts_agree(&store, task.id, now + 4, "devices deleted").await;
        assert_eq!((c.total, c.success, c.inprogress), (6, 5, 1));

        // Much later the last device is offline, and counted so.
        let c = counts_agree(&store, task.id, now + 60 * MINUTE, "offline").await;
        assert_eq!((c.inprogress, c.offline), (0, 1));
    })
    .await;
}

#[tokio::test]
async fn offline_parts_are_counted_alike_with_few_or_many_devices_out_of_touch() {
    each_backend(|store| async move {
        let now = T0;
        let (ids, task, actions) = download_for_eight(&store, now).await;
        let c = counts_agree(&store, task.id, now, "every device in touch").await;
        assert_eq!((c.inprogress, c.offline), (8, 0));

        // Device 0 ends its part; then it and device 7 fall out of touch: fewer
        // devices out of touch than unfinished parts, and one of them ended.
        store
            .record_feedback(
                ids[0],
                &feedback(
                    &task,
                    actions[0].action_id,
                    ids[0],
                    "a",
                    FeedbackState::Committed,
                ),
                &at(now),
            )
            .await
            .unwrap();
        let later = now + 10 * MINUTE;
        store.touch_devices(&ids[1..7], later).await.unwrap();
        let c = counts_agree(&store, task.id, later, "two out of touch").await;
        assert_eq!((c.success, c.inprogress, c.offline), (1, 6, 1));

        // Devices 1 to 5 end theirs; much later every device is out of touch:
        // more devices out of touch than unfinished parts.
        for n in 1..6 {
            let key = format!("b{n}");
            store
                .record_feedback(
                    ids[n],
                    &feedback(
                        &task,
                        actions[n].action_id,
                        ids[n],
                        &key,
                        FeedbackState::Failed,
                    ),
                    &at(later),
                )
                .await
                .unwrap();
        }
        let c = counts_agree(&store, task.id, later + 60 * MINUTE, "all out of touch").await;
        assert_eq!((c.failed, c.inprogress, c.offline), (5, 0, 2));
        let c = counts_agree(&store, task.id, later, "device 7 alone").await;
        assert_eq!((c.inprogress, c.offline), (1, 1));
    })
    .await;
}

#[tokio::test]
async fn task_needs_devices_of_the_package_type_and_an_enabled_plugin() {
    each_backend(|store| async move {
        let (_, package) = fleet(&store, 1).await;
        let static_empty = store
            .create_group(
                &CreateGroup {
                    name: "Empty".into(),
                    description: String::new(),
                    kind: GroupKind::Static,
                    filter: None,
                    devices: vec![],
                },
                &at(T0),
                "x",
            )
            .await
            .unwrap();
        let body = CreateTask {
            name: None,
            kind: TaskKind::Download,
            package_id: package.id,
            group_id: static_empty.id,
            start_at: None,
            notice_override: None,
        };
        let err = store.create_task(&body, &at(T0), "x").await.unwrap_err();
        assert!(matches!(err, Error::Invalid(ref m) if m.contains("has no devices of device type ukm5")), "{err}");
        assert!(store.list_tasks(None, &at(T0)).await.unwrap().is_empty(), "nothing left behind");
        store.disable_plugin("ukm5", T0, "x").await.unwrap();
        let err = store.create_task(&CreateTask { group_id: 1, ..body }, &at(T0), "x").await.unwrap_err();
        assert!(matches!(err, Error::Invalid(ref m) if m.contains("no plugin enabled")), "{err}");
    })
    .await;
}

#[tokio::test]
async fn variables_since_id_with_scopes() {
    each_backend(|store| async move {
        let (ids, _) = fleet(&store, 3).await;
        let now = T0;
        let a = at(now);
        let dev1 = VarTarget {
            device_id: ids[0],
            site: "A",
        };
        let dev2 = VarTarget {
            device_id: ids[1],
            site: "B",
        };
        let empty = store.variable_changes_for(&dev1, 0, &a).await.unwrap();
        assert_eq!((empty.changes.len(), empty.last_id), (0, 0));

        let c1 = store
            .change_variable("version", &VariableScope::All, Some("1.0"), now, "x")
            .await
            .unwrap()
            .unwrap();
        let c2 = store
            .change_variable(
                "version",
                &VariableScope::Site { site: "B".into() },
                Some("1.1"),
                now,
                "x",
            )
            .await
            .unwrap()
            .unwrap();
        let c3 = store
            .change_variable(
                "temperature",
                &VariableScope::Group { group_id: 3 },
                Some("20"),
                now,
                "x",
            )
            .await
            .unwrap()
            .unwrap();
        assert!(c1 < c2 && c2 < c3);

        let got = store.variable_changes_for(&dev1, 0, &a).await.unwrap();
        let vals: Vec<(&str, Option<&str>)> = got
            .changes
            .iter()
            .map(|c| (c.name.as_str(), c.value.as_deref()))
            .collect();
        assert_eq!(
            vals,
            vec![("version", Some("1.0")), ("temperature", Some("20"))],
            "device 1 is odd, site A"
        );
        assert_eq!(got.last_id, c3);
        let got2 = store.variable_changes_for(&dev2, 0, &a).await.unwrap();
        let vals: Vec<(&str, Option<&str>)> = got2
            .changes
            .iter()
            .map(|c| (c.name.as_str(), c.value.as_deref()))
            .collect();
        assert_eq!(
            vals,
            vec![("version", Some("1.1"))],
            "site B wins over all; device 2 is even"
        );

        // Nothing new since the last id.
        let none = store.variable_changes_for(&dev1, c3, &a).await.unwrap();
        assert!(none.changes.is_empty());
        assert_eq!(none.last_id, c3);

        // A device-scoped value wins; removing it falls back to the fleet's.
        let c4 = store
            .change_variable(
                "version",
                &VariableScope::Device { device_id: ids[0] },
                Some("2.0"),
                now,
                "x",
            )
            .await
            .unwrap()
            .unwrap();
        let got = store.variable_changes_for(&dev1, c3, &a).await.unwrap();
        assert_eq!(got.changes[0].value.as_deref(), Some("2.0"));
        assert_eq!(got.last_id, c4);
        assert!(
            store
                .variable_changes_for(&dev2, c3, &a)
                .await
                .unwrap()
                .changes
                .is_empty(),
            "not device 2's"
        );
        store
            .change_variable(
                "version",
                &VariableScope::Device { device_id: ids[0] },
                None,
                now,
                "x",
            )
            .await
            .unwrap()
            .unwrap();
        let got = store.variable_changes_for(&dev1, c4, &a).await.unwrap();
        assert_eq!(got.changes[0].value.as_deref(), Some("1.0"));
        store
            .change_variable(
                "temperature",
                &VariableScope::Group { group_id: 3 },
                None,
                now,
                "x",
            )
            .await
            .unwrap();
        let got = store.variable_changes_for(&dev1, c4 + 1, &a).await.unwrap();
        assert_eq!(got.changes.len(), 1);
        assert_eq!(
            (
                got.changes[0].name.as_str(),
                got.changes[0].value.as_deref()
            ),
            ("temperature", None)
        );

        // An id the server never issued starts over.
        let reset = store.variable_changes_for(&dev1, 10_000, &a).await.unwrap();
        let vals: Vec<(&str, Option<&str>)> = reset
            .changes
            .iter()
            .map(|c| (c.name.as_str(), c.value.as_deref()))
            .collect();
        assert_eq!(vals, vec![("version", Some("1.0")), ("temperature", None)]);

        let err = store
            .change_variable("bad name", &VariableScope::All, Some("x"), now, "x")
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Invalid(_)));
        let err = store
            .change_variable(
                "v",
                &VariableScope::Group { group_id: 77 },
                Some("x"),
                now,
                "x",
            )
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::Invalid(ref m) if m.contains("group 77")),
            "{err}"
        );
        assert_eq!(
            store.list_variables(Some("version")).await.unwrap().len(),
            2
        );
        assert_eq!(store.variable_changes(0, 100).await.unwrap().len(), 6);

        store
            .set_site_preferences("A", true, now, "x")
            .await
            .unwrap();
        let sites = store.list_sites().await.unwrap();
        let prefs: Vec<(&str, u64, bool)> = sites
            .iter()
            .map(|s| (s.name.as_str(), s.devices, s.ignore_version_check))
            .collect();
        assert_eq!(prefs, vec![("A", 2, true), ("B", 1, false)]);
    })
    .await;
}

fn inventory(version: &str, modules: &[(&str, &str)]) -> Inventory {
    Inventory {
        product: "UKM 5".into(),
        version: version.into(),
        modules: modules
            .iter()
            .map(|(n, v)| ModuleVersion {
                name: n.to_string(),
                version: v.to_string(),
            })
            .collect(),
        state: "IDLE".into(),
        pending_sync: 2,
        ..Default::default()
    }
}

/// A group of polls' inventories is written in one transaction, as writing
/// them one by one would: each device's status against its type's reference
/// (the explicit one over the Current package), its modules replaced, and a
/// device reporting twice keeps its later report.
#[tokio::test]
async fn inventories_recorded_together_are_recorded_as_one_by_one() {
    each_backend(|store| async move {
        let (ids, package) = fleet(&store, 4).await;
        let now = T0 + MINUTE;
        store.touch_devices(&ids, now).await.unwrap();
        store
            .set_current_package(package.id, now, "x")
            .await
            .unwrap();
        let module = |name: &str, version: &str| ModuleVersion {
            name: name.into(),
            version: version.into(),
        };
        store
            .set_reference(
                "ukm5",
                &ReferenceBody {
                    version: Some("1.9.0".into()),
                    modules: vec![module("core", "3.0"), module("retail", "1.2")],
                    from_device: None,
                },
                now,
                "x",
            )
            .await
            .unwrap();
        let report = |inventory, error, hash| InventoryReport {
            inventory,
            error,
            hash,
        };
        let three = inventory(
            "1.8.4",
            &[("core", "3.0"), ("extra", "1"), ("retail", "1.2")],
        );
        store
            .record_inventory(
                &auth(&store, 2).await,
                &report(Some(&three), None, "2a"),
                now,
            )
            .await
            .unwrap();

        let same = inventory("1.9.0", &[("core", "3.0"), ("retail", "1.2")]);
        let core_only = inventory("1.9.0", &[("core", "3.0")]);
        let old = inventory("1.8.4", &[("core", "3.0"), ("retail", "1.2")]);
        let (d1, d2, d3) = (
            auth(&store, 1).await,
            auth(&store, 2).await,
            auth(&store, 3).await,
        );
        store
            .record_inventories(
                &[
                    (&d1, report(Some(&core_only), None, "1a")),
                    (&d2, report(Some(&old), None, "2b")),
                    (&d3, report(None, Some("version file unreadable"), "3")),
                    (&d1, report(Some(&same), None, "1b")),
                ],
                now,
            )
            .await
            .unwrap();

        let detail = |n: usize| {
            let store = store.clone();
            let id = ids[n - 1];
            async move { store.version_detail(id, &at(now)).await.unwrap().unwrap() }
        };
        use VersionStatus::*;
        let one = detail(1).await;
        assert_eq!(
            (one.row.status, one.row.version.as_str(), one.modules.len()),
            (Same, "1.9.0", 2),
            "device 1 keeps its later report"
        );
        assert_eq!(one.row.reference_version.as_deref(), Some("1.9.0"));
        assert_eq!(auth(&store, 1).await.inventory_hash.as_deref(), Some("1b"));
        let two = detail(2).await;
        assert_eq!(
            (two.row.status, two.row.version.as_str()),
            (Different, "1.8.4"),
            "the explicit reference, not the Current package, is compared"
        );
        let names: Vec<&str> = two.modules.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["core", "retail"], "the modules are replaced");
        let three = detail(3).await;
        assert_eq!(three.row.status, Unknown);
        assert!(
            three
                .row
                .error
                .as_deref()
                .is_some_and(|e| e.contains("version file unreadable")),
            "{:?}",
            three.row.error
        );
        let four = detail(4).await;
        assert!(four.modules.is_empty(), "device 4 reported nothing");
        assert_eq!(auth(&store, 4).await.inventory_hash, None);
    })
    .await;
}

#[tokio::test]
async fn version_overview_same_different_unknown() {
    each_backend(|store| async move {
        let (ids, package) = fleet(&store, 4).await;
        let now = T0 + MINUTE;
        store.touch_devices(&ids[..3], now).await.unwrap();
        let same = inventory("1.8.4", &[("core", "3.0"), ("retail", "1.2")]);
        let diff = inventory("1.8.4", &[("core", "3.1"), ("retail", "1.2")]);
        for (n, report) in [
            (
                1,
                InventoryReport {
                    inventory: Some(&same),
                    error: None,
                    hash: "1",
                },
            ),
            (
                2,
                InventoryReport {
                    inventory: Some(&diff),
                    error: None,
                    hash: "2",
                },
            ),
            (
                3,
                InventoryReport {
                    inventory: None,
                    error: Some("version file unreadable"),
                    hash: "3",
                },
            ),
        ] {
            store
                .record_inventory(&auth(&store, n).await, &report, now)
                .await
                .unwrap();
        }
        // No reference yet: everything Unknown, saying why.
        let page = store
            .versions(&VersionQuery::default(), &at(now))
            .await
            .unwrap();
        assert!(
            page.items
                .iter()
                .all(|r| r.status == VersionStatus::Unknown)
        );
        assert!(
            page.items[0]
                .error
                .as_deref()
                .unwrap()
                .contains("no reference version")
        );

        // The Current package is the reference: versions compared, modules not.
        store
            .set_current_package(package.id, now, "x")
            .await
            .unwrap();
        let page = store
            .versions(&VersionQuery::default(), &at(now))
            .await
            .unwrap();
        let statuses: Vec<VersionStatus> = page.items.iter().map(|r| r.status).collect();
        use VersionStatus::*;
        assert_eq!(
            statuses,
            vec![Same, Unknown, Same, Unknown],
            "sorted by site then number: 1, 3, 2, 4"
        );

        // An explicit reference with modules.
        let reference = store
            .set_reference(
                "ukm5",
                &ReferenceBody {
                    version: Some("1.8.4".into()),
                    modules: vec![
                        ModuleVersion {
                            name: "core".into(),
                            version: "3.0".into(),
                        },
                        ModuleVersion {
                            name: "retail".into(),
                            version: "1.2".into(),
                        },
                    ],
                    from_device: None,
                },
                now,
                "x",
            )
            .await
            .unwrap();
        assert_eq!(reference.source, "explicit");
        let d1 = store
            .version_detail(ids[0], &at(now))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(d1.row.status, Same);
        assert_eq!(d1.row.pending_sync, 2);
        let d2 = store
            .version_detail(ids[1], &at(now))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(d2.row.status, Different);
        assert_eq!(d2.row.differing_modules, 1);
        assert_eq!(
            (
                d2.differences[0].name.as_str(),
                d2.differences[0].reference.as_deref(),
                d2.differences[0].device.as_deref()
            ),
            ("core", Some("3.0"), Some("3.1"))
        );
        assert_eq!(d2.modules.len(), 2);
        assert_eq!(d2.modules[0].reference.as_deref(), Some("3.0"));
        assert!(
            d1.row.computed_version.parse::<u128>().unwrap()
                < d2.row.computed_version.parse::<u128>().unwrap()
        );
        let d3 = store
            .version_detail(ids[2], &at(now))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(d3.row.status, Unknown);
        assert!(
            d3.row
                .error
                .as_deref()
                .unwrap()
                .contains("version file unreadable")
        );
        let d4 = store
            .version_detail(ids[3], &at(now))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(d4.row.server_status, ServerStatus::Offline);
        assert!(
            d4.row
                .error
                .as_deref()
                .unwrap()
                .contains("never been in contact")
        );

        let different = store
            .versions(
                &VersionQuery {
                    status: Some(Different),
                    ..Default::default()
                },
                &at(now),
            )
            .await
            .unwrap();
        assert_eq!(
            different
                .items
                .iter()
                .map(|r| r.device_id)
                .collect::<Vec<_>>(),
            vec![ids[1]]
        );
        let unknown = store
            .versions(
                &VersionQuery {
                    status: Some(Unknown),
                    ..Default::default()
                },
                &at(now),
            )
            .await
            .unwrap();
        assert_eq!(unknown.total, 2);

        // Device 2 becomes the reference: now it is Same and device 1 Different.
        store
            .set_reference(
                "ukm5",
                &ReferenceBody {
                    from_device: Some(ids[1]),
                    ..Default::default()
                },
                now,
                "x",
            )
            .await
            .unwrap();
        assert_eq!(
            store
                .version_detail(ids[1], &at(now))
                .await
                .unwrap()
                .unwrap()
                .row
                .status,
            Same
        );
        assert_eq!(
            store
                .version_detail(ids[0], &at(now))
                .await
                .unwrap()
                .unwrap()
                .row
                .status,
            Different
        );
        assert_eq!(store.recompute_versions(None, now).await.unwrap(), 4);

        // Offline devices are Unknown whatever they said last.
        let late = now + 60 * MINUTE;
        let d1 = store
            .version_detail(ids[0], &at(late))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(d1.row.status, Unknown);
        assert!(d1.row.error.as_deref().unwrap().contains("offline since"));

        store
            .set_site_preferences("A", true, now, "x")
            .await
            .unwrap();
        assert!(
            store
                .version_detail(ids[0], &at(now))
                .await
                .unwrap()
                .unwrap()
                .row
                .ignore_version_check
        );
        assert!(
            !store
                .version_detail(ids[1], &at(now))
                .await
                .unwrap()
                .unwrap()
                .row
                .ignore_version_check
        );

        let listing = store
            .module_listing(&ModuleQuery {
                module: "core".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        let versions: Vec<(&str, Option<&str>)> = listing
            .items
            .iter()
            .map(|r| (r.version.as_str(), r.reference.as_deref()))
            .collect();
        assert_eq!(versions, vec![("3.0", Some("3.1")), ("3.1", Some("3.1"))]);
    })
    .await;
}

/// A forced update of `package` for every device (group 1), starting at T0.
async fn forced_update_of_all(store: &Store, package: &PackageView) -> TaskView {
    store
        .create_task(
            &CreateTask {
                name: None,
                kind: TaskKind::ForcedUpdate,
                package_id: package.id,
                group_id: 1,
                start_at: None,
                notice_override: None,
            },
            &at(T0),
            "token ops",
        )
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_claims_never_exceed_the_site_limit() {
    each_backend(|store| async move {
        let (ids, package) = fleet(&store, 24).await;
        store
            .put_device_type(
                "ukm5",
                &DeviceTypeBody {
                    description: "UKM 5 registers, one down per store at a time".into(),
                    site_limit: Some(1),
                    ..Default::default()
                },
                T0,
                "token admin",
            )
            .await
            .unwrap();
        forced_update_of_all(&store, &package).await;
        // The stores' rows exist already, so nothing but the claim's own lock
        // orders the claims.
        for site in ["A", "B"] {
            store
                .set_site_settings(site, &Default::default(), T0, "token ops")
                .await
                .unwrap();
        }
        // Every register of both stores asks at once, twice over: on PostgreSQL
        // these are concurrent transactions.
        let mut asks = Vec::new();
        for round in 0..2 {
            for (i, id) in ids.iter().copied().enumerate() {
                let store = store.clone();
                let site = if i % 2 == 0 { "A" } else { "B" };
                asks.push(tokio::spawn(async move {
                    let asking = Asking {
                        device_id: id,
                        site,
                        device_type: "ukm5",
                    };
                    store
                        .poll_actions(asking, &at(T0 + round), T0 + MINUTE)
                        .await
                }));
            }
        }
        for ask in asks {
            ask.await.unwrap().unwrap();
        }
        for (site, first) in [("A", 0), ("B", 1)] {
            let mut holding = 0;
            for id in ids.iter().skip(first).step_by(2) {
                if !store
                    .actions_for_device(*id, T0 + MINUTE)
                    .await
                    .unwrap()
                    .is_empty()
                {
                    holding += 1;
                }
            }
            assert_eq!(holding, 1, "site {site}: exactly one register may be down");
        }
    })
    .await;
}

#[tokio::test]
async fn the_claims_of_many_polls_are_made_together_and_a_gated_one_is_left_to_its_gates() {
    each_backend(|store| async move {
        // Registers 1 and 3 at store A, 2 and 4 at store B, which has a
        // maintenance window: its registers' claims are the gates' to decide.
        let (ids, package) = fleet(&store, 4).await;
        store
            .create_window(
                &posup_proto::rollout::CreateWindow {
                    scope: posup_proto::rollout::WindowScope::Site { site: "B".into() },
                    schedule: "always".into(),
                    duration_minutes: 0,
                    time_zone: "UTC".into(),
                },
                DateTime::<Utc>::from_timestamp_millis(T0).unwrap(),
                "token ops",
            )
            .await
            .unwrap();
        forced_update_of_all(&store, &package).await;
        let ask = |i: usize| Asking {
            device_id: ids[i],
            site: if i.is_multiple_of(2) { "A" } else { "B" },
            device_type: "ukm5",
        };
        let mut polls = Vec::new();
        for id in &ids {
            polls.push(store.poll_parts(*id, &at(T0), T0).await.unwrap());
        }
        let mut claims: Vec<_> = (0..4)
            .map(|i| {
                polls[i]
                    .ungated_claim(ask(i))
                    .expect("an unstarted update part")
            })
            .collect();
        // Register 1 polled twice at once: its part is claimed for one poll.
        claims.push(claims[0]);
        let claimed = store.claim_ungated(&claims, &at(T0)).await.unwrap();
        assert_eq!(claimed, vec![true, false, true, false, false]);
        // A claimed part is handed out; a part left to its gates is not yet.
        for (i, holds) in [(0, true), (1, false), (2, true), (3, false)] {
            let actions = store.actions_for_device(ids[i], T0).await.unwrap();
            assert_eq!(!actions.is_empty(), holds, "register {}", i + 1);
        }
        // The polls settle: store B's window is always open, so its registers'
        // gates let them start; what register 1 claimed is handed out once.
        let mut polls = polls.into_iter();
        for (i, was) in claimed.iter().take(4).enumerate() {
            let settled = store
                .settle_poll(ask(i), polls.next().unwrap(), *was, &at(T0))
                .await
                .unwrap();
            assert_eq!(settled.actions.len(), 1, "register {}", i + 1);
        }
        for id in &ids {
            assert_eq!(store.actions_for_device(*id, T0).await.unwrap().len(), 1);
        }
        // A part running already is not claimed again.
        assert_eq!(
            store.claim_ungated(&claims[..1], &at(T0)).await.unwrap(),
            vec![false]
        );
        let many = vec![claims[0]; MAX_CLAIMS_AT_ONCE + 1];
        assert!(matches!(
            store.claim_ungated(&many, &at(T0)).await,
            Err(Error::Invalid(_))
        ));
    })
    .await;
}

/// A rollout of `package` now, in one wave over group `group_id` that must
/// fully succeed, without thresholds or notice.
fn one_wave(
    kind: TaskKind,
    package: &PackageView,
    group_id: i64,
) -> posup_proto::rollout::CreateRollout {
    posup_proto::rollout::CreateRollout {
        name: None,
        kind,
        packages: vec![package.id],
        waves: vec![posup_proto::rollout::WaveSpec {
            group_id,
            success_percent: 100,
            auto_advance: true,
        }],
        max_failed: None,
        max_failed_percent: None,
        start_at: None,
        conditions: String::new(),
        notice_override: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_ticking_at_once_start_a_wave_once() {
    each_backend(|store| async move {
        let (ids, package) = fleet(&store, 8).await;
        let start = T0 + 10 * MINUTE;
        let rollout = store
            .create_rollout(
                &posup_proto::rollout::CreateRollout {
                    name: Some("Night release".into()),
                    start_at: DateTime::<Utc>::from_timestamp_millis(start),
                    ..one_wave(TaskKind::ForcedUpdate, &package, 1)
                },
                &at(T0),
                "token ops",
            )
            .await
            .unwrap();
        assert!(rollout.waves[0].tasks.is_empty(), "not started yet");
        // Four server replicas reach the start time together.
        let ticks: Vec<_> = (0..4)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move { store.tick_rollouts(&at(start)).await })
            })
            .collect();
        for t in ticks {
            t.await.unwrap().unwrap();
        }
        let view = store
            .rollout(rollout.id, &at(start))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(view.waves[0].tasks.len(), 1, "one task for the wave");
        assert_eq!(view.counts.total, ids.len() as u64, "every register once");
    })
    .await;
}

/// A started wave searches for devices that joined its group only when
/// something its membership depends on changed since its last search, or when
/// the group depends on what devices report or on time; a fleet's rollout does
/// not scan every device every second for nothing.
#[tokio::test]
async fn a_started_wave_searches_for_joiners_only_when_its_group_may_have_changed() {
    each_backend(|store| async move {
        let (ids, package) = fleet(&store, 4).await;
        let ops = "token ops";
        store
            .set_tags(ids[0], &["night".into()], T0, ops)
            .await
            .unwrap();
        let filter = |f: GroupFilter| CreateGroup {
            name: "Night".into(),
            description: String::new(),
            kind: GroupKind::Filter,
            filter: Some(f),
            devices: Vec::new(),
        };
        let night = store
            .create_group(
                &filter(GroupFilter {
                    tag: Some("night".into()),
                    ..GroupFilter::default()
                }),
                &at(T0),
                ops,
            )
            .await
            .unwrap();
        let pilots = store
            .create_group(
                &CreateGroup {
                    name: "Pilots".into(),
                    description: String::new(),
                    kind: GroupKind::Static,
                    filter: None,
                    devices: vec![ids[1]],
                },
                &at(T0),
                ops,
            )
            .await
            .unwrap();
        let create = |group_id| one_wave(TaskKind::ForcedUpdate, &package, group_id);
        let by_tag = store
            .create_rollout(&create(night.id), &at(T0), ops)
            .await
            .unwrap();
        let by_list = store
            .create_rollout(&create(pilots.id), &at(T0), ops)
            .await
            .unwrap();
        let total = |id| {
            let store = store.clone();
            async move {
                store
                    .rollout(id, &at(T0))
                    .await
                    .unwrap()
                    .unwrap()
                    .counts
                    .total
            }
        };
        assert_eq!((total(by_tag.id).await, total(by_list.id).await), (1, 1));
        let searched = || {
            let store = store.clone();
            async move { store.tick_rollouts(&at(T0)).await.unwrap().waves_searched }
        };
        // The Night group's filter, changed by an operator.
        let refilter = |filter: GroupFilter| {
            let store = store.clone();
            async move {
                let change = UpdateGroup {
                    filter: Some(filter),
                    ..UpdateGroup::default()
                };
                store
                    .update_group(night.id, &change, &at(T0), ops)
                    .await
                    .unwrap();
            }
        };
        // Both waves were searched when they started; nothing changed since.
        assert_eq!(searched().await, 0, "nothing changed: no wave is searched");

        // Each change a membership depends on makes the started waves search
        // once, and the joiner gets its part.
        store
            .set_tags(ids[2], &["night".into()], T0, ops)
            .await
            .unwrap();
        assert_eq!(searched().await, 2, "a tag changed");
        assert_eq!(total(by_tag.id).await, 2);
        assert_eq!(searched().await, 0);

        store
            .add_group_members(pilots.id, &[ids[3]], T0, ops)
            .await
            .unwrap();
        assert_eq!(searched().await, 2, "a static group's members changed");
        assert_eq!(total(by_list.id).await, 2);
        assert_eq!(searched().await, 0);

        let late = enroll(&store, &identity(9, "B"), "hash-9").await.unwrap();
        assert_eq!(searched().await, 2, "a device enrolled");
        assert_eq!(searched().await, 0);
        refilter(GroupFilter {
            site: Some("B".into()),
            ..GroupFilter::default()
        })
        .await;
        assert_eq!(searched().await, 2, "a group's filter changed");
        // Devices 2, 4 and the late one at site B join the two tagged ones.
        assert_eq!(total(by_tag.id).await, 5);
        assert_eq!(searched().await, 0);

        store
            .move_device(
                late,
                &MoveDevice {
                    site: Some(Site {
                        name: "C".into(),
                        address: "C street".into(),
                    }),
                    device_type: None,
                },
                T0,
                ops,
            )
            .await
            .unwrap();
        assert_eq!(searched().await, 2, "a device moved");
        assert_eq!(searched().await, 0);

        // Whether a device is online changes with time alone: such a group is
        // searched on every tick.
        refilter(GroupFilter {
            online: Some(false),
            ..GroupFilter::default()
        })
        .await;
        assert_eq!(searched().await, 2);
        assert_eq!(
            searched().await,
            1,
            "an online filter is searched each tick"
        );
        assert_eq!(searched().await, 1);
    })
    .await;
}

/// A download rollout in one wave over `fleet`'s devices (sites A: 1, 3, 5 and
/// B: 2, 4), and what its site tests do with it.
struct SiteRollout {
    store: Store,
    id: i64,
    task: TaskView,
    ids: Vec<i64>,
}

impl SiteRollout {
    async fn new(store: &Store, devices: u32) -> SiteRollout {
        let (ids, package) = fleet(store, devices).await;
        let rollout = store
            .create_rollout(
                &posup_proto::rollout::CreateRollout {
                    name: Some("November".into()),
                    ..one_wave(TaskKind::Download, &package, 1)
                },
                &at(T0),
                "token ops",
            )
            .await
            .unwrap();
        let task_id = store
            .rollout(rollout.id, &at(T0))
            .await
            .unwrap()
            .unwrap()
            .waves[0]
            .tasks[0];
        let task = store.task(task_id, &at(T0)).await.unwrap().unwrap();
        SiteRollout {
            store: store.clone(),
            id: rollout.id,
            task,
            ids,
        }
    }

    /// Ticks: the rollouts whose open sites were checked, and the sites read.
    async fn tick(&self) -> (usize, usize) {
        let ticked = self.store.tick_rollouts(&at(T0)).await.unwrap();
        (ticked.sites_checked, ticked.sites_read)
    }

    async fn reported(&self) -> Vec<String> {
        self.store
            .rollout_sites(self.id, &at(T0))
            .await
            .unwrap()
            .into_iter()
            .filter(|(s, _)| s.report.is_some())
            .map(|(s, _)| s.site)
            .collect()
    }

    /// Device `n` (from 0) reports `state` for its part.
    async fn report(&self, n: usize, state: FeedbackState) {
        let device = self.ids[n];
        let action = self.store.actions_for_device(device, T0).await.unwrap()[0].action_id;
        let key = format!("{n} {}", state.as_str());
        let f = feedback(&self.task, action, device, &key, state);
        self.store
            .record_feedback(device, &f, &at(T0))
            .await
            .unwrap();
    }
}

/// A rollout's open sites are checked for their end only when a part of the
/// rollout ended or its devices may have changed since the last check: a
/// rollout waiting on its last devices does not scan its fleet every second.
#[tokio::test]
async fn a_rollouts_sites_are_checked_only_when_one_may_have_ended() {
    each_backend(|store| async move {
        let r = SiteRollout::new(&store, 5).await;
        let ops = "token ops";
        let checked = || async { r.tick().await.0 };
        checked().await;
        assert_eq!(checked().await, 0, "nothing changed: no site is checked");

        r.report(0, FeedbackState::Committed).await;
        assert_eq!(checked().await, 1, "a part ended");
        assert_eq!(checked().await, 0);
        r.report(2, FeedbackState::Failed).await;
        r.report(3, FeedbackState::Started).await;
        assert_eq!(checked().await, 1, "a part ended, another began");
        assert!(r.reported().await.is_empty(), "device 5 has not ended");

        store.delete_device(r.ids[4], T0, ops).await.unwrap();
        assert_eq!(checked().await, 1, "a device was deleted");
        assert_eq!(
            r.reported().await,
            ["A"],
            "site A's last device was deleted"
        );
        assert_eq!(checked().await, 0);

        store
            .set_tags(r.ids[1], &["night".into()], T0, ops)
            .await
            .unwrap();
        assert_eq!(checked().await, 1, "a membership may have changed");
        assert_eq!(checked().await, 0);

        r.report(1, FeedbackState::Committed).await;
        r.report(3, FeedbackState::Committed).await;
        assert_eq!(checked().await, 1);
        assert_eq!(r.reported().await, ["A", "B"]);
        assert_eq!(checked().await, 0, "no site is open");
    })
    .await;
}

/// A check reads only the open sites where a part ended since the last one;
/// when what decides the devices a site's end waits on may have moved, every
/// open site.
#[tokio::test]
async fn a_site_check_reads_the_sites_where_a_part_ended() {
    each_backend(|store| async move {
        let r = SiteRollout::new(&store, 5).await;
        // Its start checked every site.
        assert_eq!(r.tick().await, (0, 0));
        r.report(0, FeedbackState::Committed).await;
        assert_eq!(r.tick().await, (1, 1), "a part ended at site A");
        r.report(1, FeedbackState::Failed).await;
        r.report(3, FeedbackState::Started).await;
        assert_eq!(r.tick().await, (1, 1), "a part ended at site B");
        assert_eq!(r.tick().await, (0, 0));

        // A device moved from B to A, below site A's devices still pending:
        // A waits for it now, and B no longer does.
        store
            .move_device(
                r.ids[3],
                &MoveDevice {
                    site: Some(Site {
                        name: "A".into(),
                        address: "A street".into(),
                    }),
                    device_type: None,
                },
                T0,
                "token ops",
            )
            .await
            .unwrap();
        assert_eq!(r.tick().await, (1, 2), "a device moved: every open site");
        assert_eq!(r.reported().await, ["B"]);
        r.report(2, FeedbackState::Committed).await;
        r.report(4, FeedbackState::Committed).await;
        assert_eq!(r.tick().await, (1, 1));
        assert_eq!(
            r.reported().await,
            ["B"],
            "device 4, now at A, has not ended"
        );
        r.report(3, FeedbackState::Committed).await;
        assert_eq!(r.tick().await, (1, 1));
        assert_eq!(r.reported().await, ["A", "B"]);
        assert_eq!(r.tick().await, (0, 0), "no site is open");
    })
    .await;
}

/// A plugin name belongs to the vendor that published it first.
#[tokio::test]
async fn a_plugin_name_belongs_to_its_first_vendor() {
    each_backend(|store| async move {
        fleet(&store, 0).await;
        let mut impostor = store.plugin(&"aa".repeat(32)).await.unwrap().unwrap();
        impostor.vendor = "iiko".into();
        let err = store
            .insert_plugin(
                NewPlugin {
                    sha256: "bb".repeat(32),
                    name: impostor.name.clone(),
                    vendor: impostor.vendor.clone(),
                    version: "9.9.9".into(),
                    description: impostor.description.clone(),
                    device_types: impostor.device_types.clone(),
                    capabilities: Default::default(),
                    interface: "0.1.0".into(),
                    size: 10,
                },
                T0,
                "token other",
            )
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::Conflict(ref m) if m.contains("belongs to vendor posup")),
            "{err}"
        );
    })
    .await;
}

#[tokio::test]
async fn repository_metadata_takes_one_of_two_racing_writers() {
    each_backend(|store| async move {
        let file = |role: &str, version: i64, name: &str| posup_store::TufFile {
            role: role.into(),
            version,
            name: name.into(),
            body: format!("{{\"{role}\": {version}}}"),
        };
        store
            .tuf_save(
                &[
                    file("root", 1, "1.root.json"),
                    file("timestamp", 1, "timestamp.json"),
                ],
                0,
                Some("token admin"),
                1,
            )
            .await
            .unwrap();
        // Two servers renewing the same timestamp: the second built on a stale one.
        store
            .tuf_save(&[file("timestamp", 2, "timestamp.json")], 1, None, 2)
            .await
            .unwrap();
        let stale = store
            .tuf_save(&[file("timestamp", 2, "timestamp.json")], 1, None, 3)
            .await;
        assert!(
            matches!(stale, Err(posup_store::Error::Conflict(_))),
            "{stale:?}"
        );
        // A version once stored is never replaced, and a failed save leaves nothing.
        let again = store
            .tuf_save(
                &[
                    file("targets", 1, "1.targets.json"),
                    file("root", 1, "1.root.json"),
                ],
                2,
                None,
                4,
            )
            .await;
        assert!(
            matches!(again, Err(posup_store::Error::Conflict(_))),
            "{again:?}"
        );
        assert_eq!(store.tuf_file("1.targets.json").await.unwrap(), None);
        assert_eq!(
            store.tuf_file("timestamp.json").await.unwrap().as_deref(),
            Some("{\"timestamp\": 2}")
        );
        let latest = store.tuf_latest().await.unwrap();
        assert_eq!(
            latest
                .iter()
                .map(|(r, v, _)| (r.as_str(), *v))
                .collect::<Vec<_>>(),
            [("root", 1), ("timestamp", 2)]
        );
    })
    .await;
}

#[tokio::test]
async fn a_package_history_refers_to_is_archived_not_deleted() {
    each_backend(|store| async move {
        let (_, package) = fleet(&store, 2).await;
        let download = |package_id| CreateTask {
            name: None,
            kind: TaskKind::Download,
            package_id,
            group_id: 1,
            start_at: None,
            notice_override: None,
        };
        store
            .create_task(&download(package.id), &at(T0), "token ops")
            .await
            .unwrap();
        store
            .set_current_package(package.id, T0, "token ops")
            .await
            .unwrap();

        // Deleting it archives it: hidden from the list, kept for the task.
        let removal = store
            .delete_package(package.id, T0, "token ops")
            .await
            .unwrap();
        let Removal::Archived(archived) = removal else {
            panic!("a package a task uses is archived: {removal:?}");
        };
        assert!(archived.archived);
        assert_eq!(archived.state, PackageState::Install, "no longer current");
        assert!(store.list_packages(None).await.unwrap().is_empty());
        assert!(store.package(package.id).await.unwrap().unwrap().archived);
        assert_eq!(
            store.list_tasks(None, &at(T0)).await.unwrap()[0].package_file,
            "ukm5_pos_1.8.4.tgz"
        );

        // An archived package starts nothing new and cannot become current.
        let err = store
            .create_task(&download(package.id), &at(T0), "token ops")
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::Invalid(ref m) if m.contains("archived")),
            "{err}"
        );
        let err = store
            .set_current_package(package.id, T0, "token ops")
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::Invalid(ref m) if m.contains("archived")),
            "{err}"
        );

        // Uploading the same file again brings it back.
        let again = store
            .insert_package(
                ukm5_package("ukm5_pos_1.8.4.tgz", "bb".repeat(32), "1.8.4"),
                T0,
                "token vendor",
            )
            .await
            .unwrap();
        assert_eq!((again.id, again.archived), (package.id, false));
        assert_eq!(store.list_packages(None).await.unwrap().len(), 1);

        // A package nothing refers to is deleted outright.
        let other = store
            .insert_package(
                ukm5_package("ukm5_pos_1.8.5.tgz", "cc".repeat(32), "1.8.5"),
                T0,
                "token vendor",
            )
            .await
            .unwrap();
        let removal = store
            .delete_package(other.id, T0, "token ops")
            .await
            .unwrap();
        assert!(
            matches!(
                removal,
                Removal::Deleted {
                    blob_unused: true,
                    ..
                }
            ),
            "{removal:?}"
        );
        assert!(store.package(other.id).await.unwrap().is_none());
    })
    .await;
}

/// A fleet polling every 30 s records a contact time per device per poll; kept
/// in the device's own row, each write rewrote a wide row and, on PostgreSQL,
/// an entry in every one of its indexes. Contact times live in a narrow table:
/// recording them must leave every device row alone, and devices enrolled one by
/// one or in bulk, and removed, keep exactly one contact each.
#[tokio::test]
async fn contact_times_rewrite_no_device_row() {
    use posup_store::Backend;
    use posup_store::testing::TestDb;
    use sqlx::Connection;

    for backend in [Backend::Sqlite, Backend::Postgres] {
        let Some(db) = TestDb::of(backend).await else {
            continue;
        };
        let store = db.store.clone();
        let (ids, _) = fleet(&store, 3).await;
        let mut bulk = identity(4, "A");
        bulk.guid = "bulk-0004".into();
        store
            .bulk_enroll(&[(bulk, "hash-4".into())], T0, "token admin")
            .await
            .unwrap();
        store
            .delete_device(ids[2], T0, "token admin")
            .await
            .unwrap();
        let bulk_id = auth(&store, 4).await.id;
        let touched = [ids[0], ids[1], bulk_id];

        // From here on, any write to a device row fails; the contacts are
        // counted on the side.
        macro_rules! refuse_rows_and_count {
            ($conn:ty, $refuse:expr) => {{
                let mut c = <$conn>::connect(&db.url()).await.unwrap();
                sqlx::raw_sql($refuse).execute(&mut c).await.unwrap();
                let n: i64 = sqlx::query_scalar("SELECT count(*) FROM device_contacts")
                    .fetch_one(&mut c)
                    .await
                    .unwrap();
                c.close().await.ok();
                n
            }};
        }
        let contacts = match backend {
            Backend::Sqlite => refuse_rows_and_count!(
                sqlx::SqliteConnection,
                "CREATE TRIGGER refuse_device_rows BEFORE UPDATE ON devices \
                 BEGIN SELECT RAISE(ABORT, 'a device row was rewritten'); END"
            ),
            Backend::Postgres => refuse_rows_and_count!(
                sqlx::PgConnection,
                "CREATE FUNCTION refuse_device_rows() RETURNS trigger LANGUAGE plpgsql AS $$ \
                 BEGIN RAISE EXCEPTION 'a device row was rewritten'; END $$; \
                 CREATE TRIGGER refuse_device_rows BEFORE UPDATE ON devices \
                 FOR EACH ROW EXECUTE FUNCTION refuse_device_rows();"
            ),
        };
        assert_eq!(
            contacts, 3,
            "one contact per device, none for the removed one"
        );

        let now = T0 + 10 * MINUTE;
        store
            .touch_devices(&touched[..2], now - MINUTE)
            .await
            .unwrap();
        store.touch_devices(&touched[2..], now).await.unwrap();
        assert_eq!(auth(&store, 4).await.last_contact, now);
        let q = DeviceQuery {
            sort: DeviceSort::LastContact,
            order: Order::Desc,
            online: Some(true),
            ..Default::default()
        };
        let page = store.list_devices(&q, &at(now)).await.unwrap();
        let listed: Vec<i64> = page.items.iter().map(|d| d.id).collect();
        assert_eq!(listed, vec![bulk_id, ids[1], ids[0]], "{backend}");
        db.cleanup().await;
    }
}

/// A fleet enrolls with one token at once. Spending a use of the token's row
/// made each enrollment wait for the one before it to commit (on PostgreSQL the
/// row's lock is held to the commit): a token without a use limit counts its
/// uses apart, and enrolling leaves its row alone.
#[tokio::test]
async fn enrolling_with_a_token_without_a_limit_leaves_its_row_alone() {
    use posup_store::Backend;
    use posup_store::testing::TestDb;
    use sqlx::Connection;

    for backend in [Backend::Sqlite, Backend::Postgres] {
        let Some(db) = TestDb::of(backend).await else {
            continue;
        };
        let store = db.store.clone();
        device_type(&store).await;
        enroll(&store, &identity(1, "A"), "hash-1").await.unwrap();
        let refuse = match backend {
            Backend::Sqlite => {
                "CREATE TRIGGER refuse_token_rows BEFORE UPDATE ON enrollment_secrets \
                 BEGIN SELECT RAISE(ABORT, 'a token row was rewritten'); END"
            }
            Backend::Postgres => {
                "CREATE FUNCTION refuse_token_rows() RETURNS trigger LANGUAGE plpgsql AS $$ \
                 BEGIN RAISE EXCEPTION 'a token row was rewritten'; END $$; \
                 CREATE TRIGGER refuse_token_rows BEFORE UPDATE ON enrollment_secrets \
                 FOR EACH ROW EXECUTE FUNCTION refuse_token_rows();"
            }
        };
        match backend {
            Backend::Sqlite => {
                let mut c = sqlx::SqliteConnection::connect(&db.url()).await.unwrap();
                sqlx::raw_sql(refuse).execute(&mut c).await.unwrap();
                c.close().await.ok();
            }
            Backend::Postgres => {
                let mut c = sqlx::PgConnection::connect(&db.url()).await.unwrap();
                sqlx::raw_sql(refuse).execute(&mut c).await.unwrap();
                c.close().await.ok();
            }
        }
        for i in 2..=3 {
            enroll(&store, &identity(i, "B"), &format!("hash-{i}"))
                .await
                .unwrap_or_else(|e| panic!("{backend}: register {i}: {e}"));
        }
        let tokens = store.list_enrollment_secrets().await.unwrap();
        let uses: Vec<(&str, u32)> = tokens.iter().map(|t| (t.name.as_str(), t.uses)).collect();
        assert_eq!(uses, vec![("test", 3)], "{backend}: every use counted");
        db.cleanup().await;
    }
}
