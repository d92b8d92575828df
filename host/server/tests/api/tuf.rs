//! The TUF repository through the API, on both backends: who may publish what,
//! what the server refuses, and what it serves.

use super::*;
use posup_trust::offline::{self, Delegation, InitSpec, RepoDir};
use posup_trust::{SigningKey, names};
use std::path::Path;

struct Keys {
    root: SigningKey,
    targets: SigningKey,
    vendor: SigningKey,
    release: SigningKey,
}

/// A repository naming the server's online keys, with a vendor role for
/// `posup tests` (kiosk plugins) and the release role, each signed once.
fn repository(state: &AppState, dir: &Path) -> (RepoDir, Keys) {
    let keys = Keys {
        root: SigningKey::generate().unwrap(),
        targets: SigningKey::generate().unwrap(),
        vendor: SigningKey::generate().unwrap(),
        release: SigningKey::generate().unwrap(),
    };
    let repo = RepoDir::open(dir).unwrap();
    let online = state.online_keys();
    let spec = InitSpec {
        root_keys: vec![keys.root.public()],
        root_threshold: 1,
        targets_keys: vec![keys.targets.public()],
        targets_threshold: 1,
        snapshot_key: online.snapshot.public(),
        timestamp_key: online.timestamp.public(),
        root_days: 30,
        targets_days: 30,
    };
    offline::init(&repo, &spec, &[&keys.root], &[&keys.targets]).unwrap();
    let vendor = names::vendor_role("posup tests").unwrap();
    for (name, key, paths) in [
        (
            vendor.as_str(),
            &keys.vendor,
            vec![names::plugin_pattern("kiosk", "kiosk").unwrap()],
        ),
        (
            names::RELEASE,
            &keys.release,
            vec![names::package_pattern(None).unwrap()],
        ),
    ] {
        let d = Delegation {
            name: name.into(),
            keys: vec![key.public()],
            threshold: 1,
            paths,
        };
        offline::delegate(&repo, &d, &[&keys.targets], 30).unwrap();
        offline::sign_targets(&repo, name, vec![], &[key], 30).unwrap();
    }
    (repo, keys)
}

fn files(repo: &RepoDir, roles: &[&str]) -> Value {
    let files: Vec<Value> = roles
        .iter()
        .map(|role| {
            let (_, _, bytes) = repo
                .latest_files()
                .unwrap()
                .into_iter()
                .find(|(r, _, _)| r == role)
                .unwrap();
            json!({"role": role, "metadata": serde_json::from_slice::<Value>(&bytes).unwrap()})
        })
        .collect();
    json!({ "files": files })
}

#[tokio::test]
async fn the_repository_is_published_by_whom_it_belongs_to_and_served_as_signed() {
    each_backend(|store| async move {
        let (e, state) = env_with_state(store).await;
        let status = e.ok("GET", "/api/v1/tuf", ADMIN, None).await;
        assert!(
            status["warnings"][0]
                .as_str()
                .unwrap()
                .contains("no repository"),
            "{status}"
        );
        assert_eq!(
            status["online_keys"]["snapshot_keyid"],
            state.online_keys().snapshot.key_id()
        );
        let tmp = tempfile::tempdir().unwrap();
        let (repo, keys) = repository(&state, tmp.path());
        let all = files(&repo, &["root", "targets", "release", "vendor-posup-tests"]);

        // Viewers and vendors do not publish the fleet's root.
        let viewer = e.token("v", Role::Viewer).await;
        let vendor = e.token("lab", Role::Vendor).await;
        for token in [&viewer, &vendor] {
            let a = e
                .call(
                    "POST",
                    "/api/v1/tuf/metadata",
                    Some(token),
                    Some(all.clone()),
                )
                .await;
            assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.error());
        }
        let published = e
            .ok("POST", "/api/v1/tuf/metadata", ADMIN, Some(all.clone()))
            .await;
        let roles: Vec<&str> = published["roles"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["role"].as_str().unwrap())
            .collect();
        assert_eq!(roles.len(), 6, "{published}");

        // Served as stored, to anyone; a name that is no metadata file is not.
        let a = e.call("GET", "/tuf/metadata/1.root.json", None, None).await;
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(
            a.bytes,
            serde_json::to_vec_pretty(&all["files"][0]["metadata"])
                .unwrap()
                .into_iter()
                .chain([b'\n'])
                .collect::<Vec<u8>>()
        );
        let a = e
            .call("GET", "/tuf/metadata/timestamp.json", None, None)
            .await;
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(a.headers[header::CACHE_CONTROL], "no-store");
        for bad in [
            "..%2F..%2Fetc%2Fpasswd",
            "root.json",
            "1.root.json.bak",
            "2.root.json",
        ] {
            let a = e
                .call("GET", &format!("/tuf/metadata/{bad}"), None, None)
                .await;
            assert_eq!(a.status, StatusCode::NOT_FOUND, "{bad}");
        }
        // Targets are for devices.
        let a = e
            .call(
                "GET",
                &format!("/tuf/targets/packages/kiosk/{}.x.tgz", "a".repeat(64)),
                None,
                None,
            )
            .await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED);

        // The same version again is a rollback.
        let again = files(&repo, &["release"]);
        let a = e
            .call("POST", "/api/v1/tuf/metadata", Some(ADMIN), Some(again))
            .await;
        assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(
            a.error().contains("not newer than the published version"),
            "{}",
            a.error()
        );

        // A vendor publishes its own role; not another vendor's, and not a
        // target whose bytes the server lacks.
        let name = names::plugin_target("kiosk", "kiosk", "1.0.0").unwrap();
        let t = offline::plugin_target(b"not uploaded", "kiosk", "1.0.0", "posup tests");
        offline::sign_targets(
            &repo,
            "vendor-posup-tests",
            vec![(name, t)],
            &[&keys.vendor],
            30,
        )
        .unwrap();
        let mine = files(&repo, &["vendor-posup-tests"]);
        let other = crate::identity::vendor_token(&e, "core", "posup").await;
        let a = e
            .call(
                "POST",
                "/api/v1/tuf/metadata",
                Some(&other),
                Some(mine.clone()),
            )
            .await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.error());
        assert!(a.error().contains("vendor-posup"), "{}", a.error());
        let a = e
            .call("POST", "/api/v1/tuf/metadata", Some(&vendor), Some(mine))
            .await;
        assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", a.error());
        assert!(
            a.error().contains("upload the plugin or package first"),
            "{}",
            a.error()
        );
        let _ = keys.release;

        // Publishing is audited.
        let audit = e.ok("GET", "/api/v1/audit", ADMIN, None).await;
        assert!(audit.to_string().contains("1.root.json"), "{audit}");
    })
    .await;
}

#[tokio::test]
async fn the_server_renews_its_timestamp_and_snapshot_before_they_expire() {
    each_backend(|store| async move {
        let (e, state) = env_with_state(store).await;
        // Nothing to renew before a repository is published.
        posup_server::tuf::renew(&state).await.unwrap();
        assert_eq!(
            e.call("GET", "/tuf/metadata/timestamp.json", None, None)
                .await
                .status,
            StatusCode::NOT_FOUND
        );
        let tmp = tempfile::tempdir().unwrap();
        let (repo, _keys) = repository(&state, tmp.path());
        let all = files(&repo, &["root", "targets", "release", "vendor-posup-tests"]);
        e.ok("POST", "/api/v1/tuf/metadata", ADMIN, Some(all)).await;
        let version = |status: &Value, role: &str| {
            status["roles"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["role"] == role)
                .unwrap()["version"]
                .as_u64()
                .unwrap()
        };
        let before = e.ok("GET", "/api/v1/tuf", ADMIN, None).await;
        // Fresh: nothing is signed again.
        posup_server::tuf::renew(&state).await.unwrap();
        let same = e.ok("GET", "/api/v1/tuf", ADMIN, None).await;
        assert_eq!(version(&same, "timestamp"), version(&before, "timestamp"));
        // Half a day on, a new timestamp of the same snapshot.
        e.advance(13 * 3600);
        posup_server::tuf::renew(&state).await.unwrap();
        let later = e.ok("GET", "/api/v1/tuf", ADMIN, None).await;
        assert_eq!(
            version(&later, "timestamp"),
            version(&before, "timestamp") + 1
        );
        assert_eq!(version(&later, "snapshot"), version(&before, "snapshot"));
        // Four days on, a new snapshot too.
        e.advance(4 * 86_400);
        posup_server::tuf::renew(&state).await.unwrap();
        let much_later = e.ok("GET", "/api/v1/tuf", ADMIN, None).await;
        assert_eq!(
            version(&much_later, "snapshot"),
            version(&before, "snapshot") + 1
        );
        let a = e
            .call(
                "GET",
                &format!(
                    "/tuf/metadata/{}.snapshot.json",
                    version(&much_later, "snapshot")
                ),
                None,
                None,
            )
            .await;
        assert_eq!(a.status, StatusCode::OK);
        assert!(
            much_later["warnings"].as_array().unwrap().is_empty(),
            "{much_later}"
        );
        // A server that stops renewing warns the fleet before terminals refuse.
        e.advance(20 * 3600);
        let stale = e.ok("GET", "/api/v1/tuf", ADMIN, None).await;
        let warnings = stale["warnings"].to_string();
        assert!(
            warnings.contains("timestamp") && warnings.contains("has not renewed"),
            "{stale}"
        );
    })
    .await;
}
