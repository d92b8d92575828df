//! Who a terminal is: enrollment tokens scoped to a site, with an expiry and a use
//! count; an enrolled GUID is never taken over; revocation, reset and moves by an
//! operator.

use super::*;

async fn enroll_answer(e: &Env, secret: &str, current: Option<&str>, device: Value) -> Answer {
    e.call(
        "POST",
        "/api/v1/agent/enroll",
        current,
        Some(json!({"secret": secret, "device": device})),
    )
    .await
}

async fn idle_poll(e: &Env, token: &str) -> Answer {
    e.call(
        "POST",
        "/api/v1/agent/poll",
        Some(token),
        Some(
            serde_json::to_value(PollRequest {
                status: status(),
                ..Default::default()
            })
            .unwrap(),
        ),
    )
    .await
}

async fn device(e: &Env, id: i64) -> Value {
    e.ok("GET", &format!("/api/v1/devices/{id}"), ADMIN, None)
        .await["device"]
        .clone()
}

#[tokio::test]
async fn enrollment_tokens_bind_site_expiry_and_uses() {
    each_backend(|store| async move {
        let e = env(store).await;
        fleet(&e, 0).await;
        let expires = t0() + chrono::Duration::hours(1);
        let created = e
            .ok(
                "POST",
                "/api/v1/enrollment-secrets",
                ADMIN,
                Some(json!({"name": "Store A batch", "site": "Store A", "max_uses": 2, "expires_at": expires})),
            )
            .await;
        let secret = created["secret"].as_str().unwrap().to_owned();

        // The token is for Store A only: a terminal of Store B is refused by name.
        let b = enroll_answer(&e, &secret, None, identity(2)).await;
        assert_eq!(b.status, StatusCode::FORBIDDEN, "{}", b.error());
        assert!(b.error().contains("Store A") && b.error().contains("Store B"), "{}", b.error());

        // Two uses, then it is used up; a refused enrollment used none.
        for n in [1, 3] {
            let a = enroll_answer(&e, &secret, None, identity(n)).await;
            assert_eq!(a.status, StatusCode::OK, "{}", String::from_utf8_lossy(&a.bytes));
        }
        let used_up = enroll_answer(&e, &secret, None, identity(5)).await;
        assert_eq!(used_up.status, StatusCode::UNAUTHORIZED);
        assert!(used_up.error().contains("used"), "{}", used_up.error());

        let listed = e.ok("GET", "/api/v1/enrollment-secrets", ADMIN, None).await;
        let row = listed
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == "Store A batch")
            .unwrap()
            .clone();
        assert_eq!((row["uses"].as_i64(), row["max_uses"].as_i64()), (Some(2), Some(2)));
        assert_eq!(row["site"], "Store A");
        assert!(row.get("secret").is_none() && row.get("hash").is_none());

        // An expired token enrolls nobody.
        let later = e
            .ok(
                "POST",
                "/api/v1/enrollment-secrets",
                ADMIN,
                Some(json!({"name": "short", "expires_at": expires})),
            )
            .await["secret"]
            .as_str()
            .unwrap()
            .to_owned();
        e.advance(2 * 3600);
        let expired = enroll_answer(&e, &later, None, identity(7)).await;
        assert_eq!(expired.status, StatusCode::UNAUTHORIZED);
        assert!(expired.error().contains("expired"), "{}", expired.error());

        // An expiry in the past or a use count of zero is a mistake, said plainly.
        let bad = e
            .call(
                "POST",
                "/api/v1/enrollment-secrets",
                Some(ADMIN),
                Some(json!({"name": "zero", "max_uses": 0})),
            )
            .await;
        assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", bad.error());
    })
    .await;
}

#[tokio::test]
async fn an_enrolled_guid_is_never_taken_over() {
    each_backend(|store| async move {
        let e = env(store).await;
        let f = fleet(&e, 2).await;
        let (id, token) = f.devices[0].clone();
        let secret = enrollment_secret(&e, "fleet-wide").await;

        // Another terminal claims device 1's GUID, from another site and type.
        let mut thief = identity(1);
        thief["site"] = json!({"name": "Store Z", "address": "elsewhere"});
        let a = enroll_answer(&e, &secret, None, thief.clone()).await;
        assert_eq!(
            a.status,
            StatusCode::CONFLICT,
            "{}",
            String::from_utf8_lossy(&a.bytes)
        );
        assert!(
            a.error().contains("already enrolled") && a.error().contains("reset"),
            "{}",
            a.error()
        );
        // Without a valid enrollment token nobody even learns the GUID is enrolled.
        for (secret, current) in [("", None), ("pes_unknown", None), ("", Some("pdt_made_up"))] {
            let a = enroll_answer(&e, secret, current, thief.clone()).await;
            assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{}", a.error());
        }
        // A made-up device token is no better.
        let a = enroll_answer(&e, &secret, Some("pdt_made_up"), thief).await;
        assert_eq!(a.status, StatusCode::CONFLICT);
        // The real terminal is untouched: its token works, its site is its own.
        assert_eq!(idle_poll(&e, &token).await.status, StatusCode::OK);
        assert_eq!(device(&e, id).await["site"], "Store A");

        // The terminal itself may enroll again with its current token: a new token,
        // the old one stops working, and it cannot move itself.
        let mut moved = identity(1);
        moved["site"] = json!({"name": "Store Z", "address": "elsewhere"});
        let a = enroll_answer(&e, "", Some(&token), moved).await;
        assert_eq!(a.status, StatusCode::CONFLICT);
        assert!(a.error().contains("operator"), "{}", a.error());
        let a = enroll_answer(&e, "", Some(&token), identity(1)).await;
        assert_eq!(
            a.status,
            StatusCode::OK,
            "{}",
            String::from_utf8_lossy(&a.bytes)
        );
        let renewed = a.json()["token"].as_str().unwrap().to_owned();
        assert_eq!(idle_poll(&e, &token).await.status, StatusCode::UNAUTHORIZED);
        assert_eq!(idle_poll(&e, &renewed).await.status, StatusCode::OK);

        // Only an operator moves it.
        let operator = e.token("night", Role::Operator).await;
        let moved = e
            .ok(
                "PATCH",
                &format!("/api/v1/devices/{id}"),
                &operator,
                Some(json!({"site": {"name": "Store Z", "address": "Lenina 1"}})),
            )
            .await;
        assert_eq!(moved["site"], "Store Z");
        assert_eq!(moved["address"], "Lenina 1");
        let wrong_type = e
            .call(
                "PATCH",
                &format!("/api/v1/devices/{id}"),
                Some(&operator),
                Some(json!({"device_type": "nope"})),
            )
            .await;
        assert_eq!(
            wrong_type.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{}",
            wrong_type.error()
        );
        let viewer = e.token("eyes", Role::Viewer).await;
        let a = e
            .call(
                "PATCH",
                &format!("/api/v1/devices/{id}"),
                Some(&viewer),
                Some(json!({"site": {"name": "X", "address": ""}})),
            )
            .await;
        assert_eq!(a.status, StatusCode::FORBIDDEN);
    })
    .await;
}

#[tokio::test]
async fn revoked_reset_and_deleted_devices() {
    each_backend(|store| async move {
        let e = env(store).await;
        let f = fleet(&e, 3).await;
        let secret = enrollment_secret(&e, "again").await;
        let operator = e.token("night", Role::Operator).await;

        // Revoked: 401 on every agent call, and it cannot enroll its way back.
        let (id, token) = f.devices[0].clone();
        let a = e
            .call(
                "POST",
                &format!("/api/v1/devices/{id}/revoke"),
                Some(&operator),
                None,
            )
            .await;
        assert_eq!(
            a.status,
            StatusCode::FORBIDDEN,
            "revoking is an administrator's act"
        );
        let a = e
            .call(
                "POST",
                &format!("/api/v1/devices/{id}/revoke"),
                Some(ADMIN),
                None,
            )
            .await;
        assert_eq!(
            a.status,
            StatusCode::NO_CONTENT,
            "{}",
            String::from_utf8_lossy(&a.bytes)
        );
        let refused = idle_poll(&e, &token).await;
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
        assert!(refused.error().contains("revoked"), "{}", refused.error());
        let blob = e
            .call(
                "GET",
                &format!("/api/v1/agent/packages/{}", f.package.sha256),
                Some(&token),
                None,
            )
            .await;
        assert_eq!(blob.status, StatusCode::UNAUTHORIZED);
        assert_eq!(
            enroll_answer(&e, &secret, Some(&token), identity(1))
                .await
                .status,
            StatusCode::CONFLICT
        );
        assert_eq!(device(&e, id).await["access"], "revoked");

        // Reset by an administrator: one enrollment with a valid enrollment token.
        let (id2, token2) = f.devices[1].clone();
        let a = e
            .call(
                "POST",
                &format!("/api/v1/devices/{id2}/reset"),
                Some(ADMIN),
                None,
            )
            .await;
        assert_eq!(a.status, StatusCode::NO_CONTENT);
        assert_eq!(
            idle_poll(&e, &token2).await.status,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(device(&e, id2).await["access"], "awaiting-enrollment");
        let a = enroll_answer(&e, &secret, None, identity(2)).await;
        assert_eq!(
            a.status,
            StatusCode::OK,
            "{}",
            String::from_utf8_lossy(&a.bytes)
        );
        assert_eq!(
            a.json()["device_id"].as_i64(),
            Some(id2),
            "the same device, its history kept"
        );
        let fresh = a.json()["token"].as_str().unwrap().to_owned();
        assert_eq!(idle_poll(&e, &fresh).await.status, StatusCode::OK);
        assert_eq!(device(&e, id2).await["access"], "active");
        // The reset served once.
        assert_eq!(
            enroll_answer(&e, &secret, None, identity(2)).await.status,
            StatusCode::CONFLICT
        );
        // The revoked device is enrolled again after a reset, too.
        e.ok("POST", &format!("/api/v1/devices/{id}/reset"), ADMIN, None)
            .await;
        assert_eq!(
            enroll_answer(&e, &secret, None, identity(1)).await.status,
            StatusCode::OK
        );

        let audit = e
            .ok("GET", "/api/v1/audit?object=device", ADMIN, None)
            .await;
        let actions: Vec<&str> = audit
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["action"].as_str().unwrap())
            .collect();
        for wanted in ["device.revoke", "device.reset", "device.reenroll"] {
            assert!(actions.contains(&wanted), "{wanted} in {actions:?}");
        }

        // Deleted: 401, nothing else.
        let (id3, token3) = f.devices[2].clone();
        e.ok("DELETE", &format!("/api/v1/devices/{id3}"), &operator, None)
            .await;
        assert_eq!(
            idle_poll(&e, &token3).await.status,
            StatusCode::UNAUTHORIZED
        );
    })
    .await;
}

pub(crate) async fn vendor_token(e: &Env, name: &str, vendor: &str) -> String {
    e.ok(
        "POST",
        "/api/v1/tokens",
        ADMIN,
        Some(json!({"name": name, "role": "vendor", "vendor": vendor})),
    )
    .await["token"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn vendor_tokens_manage_only_their_own_plugins() {
    each_backend(|store| async move {
        let e = env(store).await;
        // A vendor token names its vendor; other roles do not.
        let a = e
            .call(
                "POST",
                "/api/v1/tokens",
                Some(ADMIN),
                Some(json!({"name": "v", "role": "vendor"})),
            )
            .await;
        assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", a.error());
        let a = e
            .call(
                "POST",
                "/api/v1/tokens",
                Some(ADMIN),
                Some(json!({"name": "o", "role": "operator", "vendor": "x"})),
            )
            .await;
        assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", a.error());

        let tests_vendor = vendor_token(&e, "lab", "posup tests").await;
        let posup_vendor = vendor_token(&e, "core", "posup").await;
        let kiosk = posup_bundled::get("kiosk")
            .expect("the bundled kiosk plugin")
            .to_vec();

        // A plugin that names another vendor is refused, naming both.
        let a = e
            .upload(
                "/api/v1/plugins?file_name=kiosk.wasm",
                &tests_vendor,
                kiosk.clone(),
            )
            .await;
        assert_eq!(
            a.status,
            StatusCode::FORBIDDEN,
            "{}",
            String::from_utf8_lossy(&a.bytes)
        );
        assert!(
            a.error().contains("posup tests") && a.error().contains("vendor posup"),
            "{}",
            a.error()
        );
        let mine = e
            .upload(
                "/api/v1/plugins?file_name=hostile.wasm",
                &tests_vendor,
                hostile(),
            )
            .await;
        assert_eq!(mine.status, StatusCode::OK);
        let mine = mine.json()["sha256"].as_str().unwrap().to_owned();
        let theirs = e
            .upload("/api/v1/plugins?file_name=kiosk.wasm", &posup_vendor, kiosk)
            .await;
        assert_eq!(theirs.status, StatusCode::OK);
        let theirs = theirs.json()["sha256"].as_str().unwrap().to_owned();

        // Nor may it delete another vendor's plugin; its own, yes.
        let a = e
            .call(
                "DELETE",
                &format!("/api/v1/plugins/{theirs}"),
                Some(&tests_vendor),
                None,
            )
            .await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.error());
        let a = e
            .call(
                "DELETE",
                &format!("/api/v1/plugins/{mine}"),
                Some(&tests_vendor),
                None,
            )
            .await;
        assert_eq!(a.status, StatusCode::NO_CONTENT);
        let tokens = e.ok("GET", "/api/v1/tokens", ADMIN, None).await;
        assert!(
            tokens
                .as_array()
                .unwrap()
                .iter()
                .any(|t| t["name"] == "lab" && t["vendor"] == "posup tests")
        );
    })
    .await;
}

#[tokio::test]
async fn secret_variables_reach_only_their_devices() {
    each_backend(|store| async move {
        let e = env(store).await;
        let f = fleet(&e, 2).await;
        let password = "s3cr3t-db-password";
        e.ok(
            "PUT",
            "/api/v1/variables",
            ADMIN,
            Some(json!({"name": "db-password", "value": password, "secret": true, "scope": "site", "site": "Store A"})),
        )
        .await;
        let viewer = e.token("eyes", Role::Viewer).await;
        let vendor = vendor_token(&e, "lab", "posup tests").await;
        for token in [ADMIN, viewer.as_str(), vendor.as_str()] {
            for path in ["/api/v1/variables", "/api/v1/variables/changes", "/api/v1/audit"] {
                let a = e.call("GET", path, Some(token), None).await;
                assert!(
                    !String::from_utf8_lossy(&a.bytes).contains(password),
                    "{path} shows the secret: {}",
                    String::from_utf8_lossy(&a.bytes)
                );
            }
        }
        let listed = e.ok("GET", "/api/v1/variables", ADMIN, None).await;
        let row = &listed.as_array().unwrap()[0];
        assert_eq!((row["secret"].as_bool(), row["value"].is_null()), (Some(true), true));

        // The device of Store A gets it; the device of Store B does not.
        let (_, in_a) = f.devices[0].clone();
        let (_, in_b) = f.devices[1].clone();
        let got = poll(&e, &in_a, PollRequest { status: status(), ..Default::default() }).await;
        let value = got.variables.changes.iter().find(|c| c.name == "db-password").and_then(|c| c.value.clone());
        assert_eq!(value.as_deref(), Some(password));
        let got = poll(&e, &in_b, PollRequest { status: status(), ..Default::default() }).await;
        assert!(got.variables.changes.iter().all(|c| c.name != "db-password"));
    })
    .await;
}
