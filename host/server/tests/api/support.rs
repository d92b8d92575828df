//! The API tests' harness: a server in the test process on each backend (`Env`),
//! its answers, and a fleet of enrolled devices that poll and report.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use chrono::{DateTime, Utc};
use posup_proto::Phase;
use posup_proto::agent::*;
use posup_proto::api::*;
use posup_runtime::{Runtime, RuntimeConfig};
use posup_server::auth::hash_secret;
use posup_server::{AppState, Blobs, ManualClock, Settings, app};
use posup_store::Store;
use serde_json::{Value, json};
use tower::ServiceExt;

pub(crate) const ADMIN: &str = "pop_admin_token_for_tests";

pub(crate) fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp(1_700_000_000, 0).unwrap()
}

/// One runtime per test process, with its compiled-component cache kept between
/// runs in cargo's temporary directory.
pub(crate) fn runtime() -> Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            Runtime::new(RuntimeConfig {
                cache_dir: Some(
                    std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("server-plugin-cache"),
                ),
                ..Default::default()
            })
            .expect("starting the plugin runtime")
        })
        .clone()
}

pub(crate) fn hostile() -> Vec<u8> {
    std::fs::read(posup_bundled::TEST_HOSTILE).expect("reading the test-hostile component")
}

pub(crate) struct Env {
    pub(crate) app: Router,
    pub(crate) state: AppState,
    pub(crate) clock: Arc<ManualClock>,
    pub(crate) _blobs: tempfile::TempDir,
}

pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) headers: axum::http::HeaderMap,
    pub(crate) bytes: Vec<u8>,
}

impl Answer {
    pub(crate) fn json(&self) -> Value {
        serde_json::from_slice(&self.bytes)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.bytes)))
    }

    pub(crate) fn error(&self) -> String {
        self.json()["error"]
            .as_str()
            .expect("an error body")
            .to_owned()
    }
}

pub(crate) async fn env(store: Store) -> Env {
    env_with_state(store).await.0
}

/// The environment, and the state behind it for calls that bypass HTTP.
pub(crate) async fn env_with_state(store: Store) -> (Env, AppState) {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(t0()));
    let state = AppState::new(
        store,
        Blobs::open(dir.path()).unwrap(),
        runtime(),
        clock.clone(),
        Settings::default(),
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
    (e, state)
}

impl Env {
    pub(crate) async fn send(&self, request: Request<Body>) -> Answer {
        let response = self.app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap()
            .to_vec();
        Answer {
            status,
            headers,
            bytes,
        }
    }

    pub(crate) async fn call(
        &self,
        method: &str,
        uri: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Answer {
        let mut b = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let request = match body {
            Some(v) => b
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(v.to_string()))
                .unwrap(),
            None => b.body(Body::empty()).unwrap(),
        };
        self.send(request).await
    }

    /// A call that must succeed; returns the JSON answer.
    pub(crate) async fn ok(
        &self,
        method: &str,
        uri: &str,
        token: &str,
        body: Option<Value>,
    ) -> Value {
        let a = self.call(method, uri, Some(token), body).await;
        assert!(
            a.status.is_success(),
            "{method} {uri}: {} {}",
            a.status,
            String::from_utf8_lossy(&a.bytes)
        );
        if a.bytes.is_empty() {
            Value::Null
        } else {
            a.json()
        }
    }

    pub(crate) async fn upload(&self, uri: &str, token: &str, bytes: Vec<u8>) -> Answer {
        let request = Request::builder()
            .method("POST")
            .uri(uri)
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .body(Body::from(bytes))
            .unwrap();
        self.send(request).await
    }

    /// A new token; a vendor token acts for the test plugin's vendor.
    pub(crate) async fn token(&self, name: &str, role: Role) -> String {
        let vendor = (role == Role::Vendor).then_some("posup tests");
        let created = self
            .ok(
                "POST",
                "/api/v1/tokens",
                ADMIN,
                Some(json!({"name": name, "role": role, "vendor": vendor})),
            )
            .await;
        created["token"].as_str().unwrap().to_owned()
    }

    pub(crate) fn advance(&self, secs: u64) {
        self.clock.advance(Duration::from_secs(secs));
    }

    /// What the server's background loop does every second: moves tasks and
    /// rollouts along. Reads never do.
    pub(crate) async fn tick(&self) {
        self.state.tick_rollouts(&self.state.at()).await.unwrap();
    }
}

/// A device type `test` with the test-hostile plugin enabled, an enrollment
/// secret, `n` enrolled devices (numbers 1..=n; sites "Store A" and "Store B"
/// alternating) and one package.
pub(crate) struct Fleet {
    pub(crate) devices: Vec<(i64, String)>,
    pub(crate) package: PackageView,
    pub(crate) plugin_sha: String,
}

pub(crate) const PACKAGE_BYTES: usize = 200_000;

pub(crate) fn package_bytes() -> Vec<u8> {
    (0..PACKAGE_BYTES).map(|i| (i % 251) as u8).collect()
}

pub(crate) fn identity(n: u32) -> Value {
    let site = if n.is_multiple_of(2) {
        "Store B"
    } else {
        "Store A"
    };
    json!({
        "guid": format!("8f0c-{n:05}"),
        "site": {"name": site, "address": format!("{site}, Main street 1")},
        "name": format!("Kassa {n}"),
        "number": n,
        "device_type": "test",
        "agent_version": "0.1.0"
    })
}

pub(crate) async fn fleet(e: &Env, n: u32) -> Fleet {
    e.ok(
        "PUT",
        "/api/v1/device-types/test",
        ADMIN,
        Some(json!({
            "description": "test terminals",
            "allowed": {"dirs": [{"dir": "staging"}, {"dir": "product", "write": true}], "services": ["kiosk"]},
            "paths": {"product": "/opt/test", "staging": "/var/lib/posup/staging"}
        })),
    )
    .await;
    let plugin = e
        .upload("/api/v1/plugins?file_name=hostile.wasm", ADMIN, hostile())
        .await;
    assert_eq!(
        plugin.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&plugin.bytes)
    );
    let plugin_sha = plugin.json()["sha256"].as_str().unwrap().to_owned();
    e.ok(
        "PUT",
        "/api/v1/device-types/test/plugin",
        ADMIN,
        Some(json!({"name": "test-hostile"})),
    )
    .await;
    let secret = enrollment_secret(e, "rollout").await;
    let mut devices = Vec::new();
    for i in 1..=n {
        devices.push(enroll(e, &secret, identity(i)).await);
    }
    let p = e
        .upload(
            "/api/v1/packages?device_type=test&file_name=test_pos_1.0.tgz",
            ADMIN,
            package_bytes(),
        )
        .await;
    assert_eq!(
        p.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&p.bytes)
    );
    Fleet {
        devices,
        package: serde_json::from_slice(&p.bytes).unwrap(),
        plugin_sha,
    }
}

/// Enrolls `device` (a device identity) with `secret`: its id and token.
pub(crate) async fn enroll(e: &Env, secret: &str, device: Value) -> (i64, String) {
    let a = e
        .call(
            "POST",
            "/api/v1/agent/enroll",
            None,
            Some(json!({"secret": secret, "device": device})),
        )
        .await;
    assert_eq!(
        a.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&a.bytes)
    );
    let r: EnrollResponse = serde_json::from_slice(&a.bytes).unwrap();
    (r.device_id, r.token)
}

/// A new enrollment secret named `name`.
pub(crate) async fn enrollment_secret(e: &Env, name: &str) -> String {
    e.ok(
        "POST",
        "/api/v1/enrollment-secrets",
        ADMIN,
        Some(json!({ "name": name })),
    )
    .await["secret"]
        .as_str()
        .unwrap()
        .to_owned()
}

pub(crate) async fn poll(e: &Env, token: &str, body: PollRequest) -> PollResponse {
    let a = e
        .call(
            "POST",
            "/api/v1/agent/poll",
            Some(token),
            Some(serde_json::to_value(body).unwrap()),
        )
        .await;
    assert_eq!(
        a.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&a.bytes)
    );
    serde_json::from_slice(&a.bytes).unwrap()
}

/// The terminal polls with its installation as `inventory`.
pub(crate) async fn report_inventory(
    e: &Env,
    token: &str,
    inventory: posup_proto::Inventory,
) -> PollResponse {
    poll(
        e,
        token,
        PollRequest {
            inventory: Some(inventory),
            status: status(),
            ..Default::default()
        },
    )
    .await
}

/// What a terminal is handed when it polls with nothing to report.
pub(crate) async fn actions(e: &Env, token: &str) -> Vec<Action> {
    poll(
        e,
        token,
        PollRequest {
            status: status(),
            ..Default::default()
        },
    )
    .await
    .actions
}

/// The terminal reports that `step` of `action` reached `state`, saying `message`
/// (and, for not-now, that it tries again in 15 minutes).
pub(crate) async fn report(
    e: &Env,
    token: &str,
    action: &Action,
    device: i64,
    step: &str,
    state: FeedbackState,
    message: &str,
) {
    let feedback = Feedback {
        key: format!("{device}-{step}-{message}"),
        task_id: action.task_id,
        action_id: action.action_id,
        device_id: device,
        attempt: 1,
        step: Phase::parse(step).expect("a phase of an update"),
        state,
        message: Some(message.into()),
        percent: None,
        at: t0(),
        retry_after_secs: Some(900),
    };
    e.ok(
        "POST",
        "/api/v1/agent/feedback",
        token,
        Some(serde_json::to_value(&feedback).unwrap()),
    )
    .await;
}

pub(crate) fn status() -> AgentStatus {
    AgentStatus {
        agent_version: "0.1.0".into(),
        ..Default::default()
    }
}
