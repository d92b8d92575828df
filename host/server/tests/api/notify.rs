//! Notification channels against a local receiver: an axum server on 127.0.0.1
//! that records every request and answers from a script. The clock is set, never
//! waited for: each test advances it and calls `deliver_due` itself.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::IntoResponse;
use posup_server::notify::deliver_due;
use posup_store::Notice;

use super::*;

const HOOK_SECRET: &str = "whsec-do-not-leak-4711";
const BOT_TOKEN: &str = "123456:AAH-bot-token-do-not-leak";

/// A request as the receiver got it.
#[derive(Debug, Clone)]
struct Got {
    method: Method,
    path: String,
    headers: HeaderMap,
    body: Value,
}

/// One scripted answer.
struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: String,
}

#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<Vec<Got>>>,
    script: Arc<Mutex<VecDeque<Reply>>>,
    base: String,
}

impl Receiver {
    async fn start() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let receiver = Receiver {
            base: format!("http://{}", listener.local_addr().unwrap()),
            ..Default::default()
        };
        let router = Router::new().fallback(record).with_state(receiver.clone());
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        receiver
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Queues the next answers; when the script is empty the receiver answers
    /// 200 `{"ok": true}`.
    fn then(&self, status: u16, headers: &[(&'static str, &str)], body: &str) {
        self.script.lock().unwrap().push_back(Reply {
            status,
            headers: headers.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
            body: body.to_owned(),
        });
    }

    fn got(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }
}

async fn record(
    State(r): State<Receiver>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    r.got.lock().unwrap().push(Got {
        method,
        path: uri.path().to_owned(),
        headers,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    });
    let reply = r.script.lock().unwrap().pop_front().unwrap_or(Reply {
        status: 200,
        headers: Vec::new(),
        body: r#"{"ok":true,"result":{"message_id":1}}"#.to_owned(),
    });
    let mut response = (StatusCode::from_u16(reply.status).unwrap(), reply.body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    for (name, value) in reply.headers {
        response
            .headers_mut()
            .insert(name, header::HeaderValue::from_str(&value).unwrap());
    }
    response
}

async fn deliver(state: &AppState) -> usize {
    deliver_due(state).await.unwrap()
}

fn notice<'a>(site: Option<&'a str>, subject: &'a str, body: &'a str) -> Notice<'a> {
    Notice {
        event: "emergency-stop",
        site,
        rollout_id: Some(3),
        task_id: Some(9),
        subject,
        body,
    }
}

/// The delivery log entry of the only message to `channel`.
async fn only_message(e: &Env, channel: i64) -> Value {
    let page = e
        .ok(
            "GET",
            &format!("/api/v1/notifications?channel_id={channel}"),
            ADMIN,
            None,
        )
        .await;
    assert_eq!(page["total"], 1, "{page}");
    let id = page["items"][0]["id"].as_i64().unwrap();
    e.ok("GET", &format!("/api/v1/notifications/{id}"), ADMIN, None)
        .await
}

fn attempts(detail: &Value) -> Vec<(bool, Option<u64>)> {
    detail["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["ok"].as_bool().unwrap(), a["status"].as_u64()))
        .collect()
}

#[tokio::test]
async fn webhooks_are_retried_after_each_backoff_until_delivered() {
    each_backend(|store| async move {
        let (e, state) = env_with_state(store).await;
        let rx = Receiver::start().await;
        rx.then(500, &[], "database down");
        rx.then(503, &[("retry-after", "120")], "");
        rx.then(204, &[], "");
        let channel = e
            .ok(
                "POST",
                "/api/v1/channels",
                ADMIN,
                Some(json!({"name": "head office", "kind": "webhook", "url": rx.url("/hooks/posup"), "secret": HOOK_SECRET})),
            )
            .await;
        let channel_id = channel["id"].as_i64().unwrap();
        let body = "3 of 10 registers failed.\nNothing else changes.";
        let queued = state
            .store()
            .enqueue(&notice(Some("Store A"), "Rollout paused", body), state.now_ms())
            .await
            .unwrap();
        assert_eq!(queued, 1);

        assert_eq!(deliver(&state).await, 1, "the first attempt");
        assert_eq!(deliver(&state).await, 0, "nothing is due before the backoff");
        e.advance(29);
        assert_eq!(deliver(&state).await, 0);
        e.advance(1);
        assert_eq!(deliver(&state).await, 1, "30 s after the first failure");
        // The receiver asked for 120 s, longer than the 60 s backoff.
        e.advance(119);
        assert_eq!(deliver(&state).await, 0);
        e.advance(1);
        assert_eq!(deliver(&state).await, 1);
        e.advance(24 * 3600);
        assert_eq!(deliver(&state).await, 0, "a delivered message is not sent again");

        let got = rx.got();
        assert_eq!(got.len(), 3);
        let detail = only_message(&e, channel_id).await;
        let id = detail["notification"]["id"].as_i64().unwrap();
        for g in &got {
            assert_eq!(g.method, Method::POST);
            assert_eq!(g.path, "/hooks/posup");
            assert_eq!(g.headers[header::AUTHORIZATION], format!("Bearer {HOOK_SECRET}").as_str());
            assert_eq!(g.headers[header::CONTENT_TYPE], "application/json");
            let agent = g.headers[header::USER_AGENT].to_str().unwrap();
            assert_eq!(agent, concat!("posup-server/", env!("CARGO_PKG_VERSION")));
            assert_eq!(
                g.body,
                json!({
                    "id": id,
                    "event": "emergency-stop",
                    "site": "Store A",
                    "rollout_id": 3,
                    "task_id": 9,
                    "subject": "Rollout paused",
                    "text": body,
                    "created_at": serde_json::to_value(t0()).unwrap(),
                })
            );
        }
        assert_eq!(attempts(&detail), [(false, Some(500)), (false, Some(503)), (true, Some(204))]);
        let n = &detail["notification"];
        assert_eq!(n["state"], "sent");
        assert_eq!(n["attempts"], 2, "failed attempts");
        assert_eq!(n["next_attempt_at"], Value::Null);
        assert_eq!(n["sent_at"], serde_json::to_value(t0() + chrono::Duration::seconds(150)).unwrap());
        assert!(detail["attempts"][0]["detail"].as_str().unwrap().contains("database down"), "{detail}");
    })
    .await;
}

#[tokio::test]
async fn telegram_gets_plain_text_in_parts_and_waits_when_told() {
    each_backend(|store| async move {
        let (e, state) = env_with_state(store).await;
        let rx = Receiver::start().await;
        // A flood limit; the description echoes the token, as a careless proxy might.
        rx.then(
            429,
            &[],
            &json!({"ok": false, "error_code": 429,
                    "description": format!("Too Many Requests: retry after 300 (bot{BOT_TOKEN})"),
                    "parameters": {"retry_after": 300}})
            .to_string(),
        );
        let channel = e
            .ok(
                "POST",
                "/api/v1/channels",
                ADMIN,
                Some(json!({"name": "Store A chat", "kind": "telegram", "site": "Store A",
                            "url": format!("{}/", rx.url("")), "chat_id": "-1001234567890", "secret": BOT_TOKEN})),
            )
            .await;
        assert_eq!(channel["has_secret"], true);
        assert!(channel.get("secret").is_none());
        let channel_id = channel["id"].as_i64().unwrap();
        // 100 lines of 49 characters and their line breaks: 5000 characters, more
        // than one Telegram message; *markup* must stay as typed.
        let lines: Vec<String> = (0..100)
            .map(|i| format!("{:_<49}", format!("Kassa {i:03}: updated to *1.2.3* ")))
            .collect();
        let body = lines.join("\n") + "!";
        assert_eq!(body.chars().count(), 5000);
        state
            .store()
            .enqueue(&notice(Some("Store A"), "Store A: update finished", &body), state.now_ms())
            .await
            .unwrap();
        // Another site's message does not reach this channel.
        assert_eq!(state.store().enqueue(&notice(Some("Store B"), "B", "b"), state.now_ms()).await.unwrap(), 0);

        assert_eq!(deliver(&state).await, 1);
        assert_eq!(rx.got().len(), 1, "the first part met the flood limit");
        e.advance(299);
        assert_eq!(deliver(&state).await, 0, "retry_after is honoured");
        e.advance(1);
        assert_eq!(deliver(&state).await, 1);

        let got = rx.got();
        assert_eq!(got.len(), 3, "the rate-limited part, then both parts");
        let mut texts = Vec::new();
        for g in &got {
            assert_eq!(g.method, Method::POST);
            assert_eq!(g.path, format!("/bot{BOT_TOKEN}/sendMessage"));
            let mut keys: Vec<&str> = g.body.as_object().unwrap().keys().map(String::as_str).collect();
            keys.sort();
            assert_eq!(keys, ["chat_id", "disable_web_page_preview", "text"], "no parse_mode");
            assert_eq!(g.body["chat_id"], "-1001234567890");
            assert_eq!(g.body["disable_web_page_preview"], true);
            let text = g.body["text"].as_str().unwrap().to_owned();
            assert!(text.chars().count() <= 4096, "{}", text.chars().count());
            texts.push(text);
        }
        assert_eq!(texts[0], texts[1], "a retry sends every part again");
        assert_eq!(
            texts[1..].join("\n"),
            format!("Store A: update finished\n\n{body}"),
            "the parts are the whole text, split at a line end"
        );

        let detail = only_message(&e, channel_id).await;
        assert_eq!(attempts(&detail), [(false, Some(429)), (true, Some(200))]);
        assert_eq!(detail["attempts"][1]["detail"], "delivered in 2 parts");
        let refused = detail["attempts"][0]["detail"].as_str().unwrap();
        assert!(refused.contains("Too Many Requests") && refused.contains("bot***"), "{refused}");
        assert!(!detail.to_string().contains(BOT_TOKEN));
        assert!(!detail.to_string().contains("AAH-bot-token"));
    })
    .await;
}

#[tokio::test]
async fn refusals_are_permanent_and_unreachable_receivers_are_retried_without_leaking() {
    each_backend(|store| async move {
        let (e, state) = env_with_state(store).await;
        let rx = Receiver::start().await;
        rx.then(400, &[], r#"{"error":"unknown field"}"#);
        let hook = e
            .ok(
                "POST",
                "/api/v1/channels",
                ADMIN,
                Some(json!({"name": "strict", "kind": "webhook", "url": rx.url("/strict")})),
            )
            .await;
        // A port nobody listens on.
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let bot = e
            .ok(
                "POST",
                "/api/v1/channels",
                ADMIN,
                Some(
                    json!({"name": "gone", "kind": "telegram", "url": format!("http://{closed}"),
                            "chat_id": "42", "secret": BOT_TOKEN}),
                ),
            )
            .await;
        state
            .store()
            .enqueue(&notice(None, "Announcement", "Tonight."), state.now_ms())
            .await
            .unwrap();

        assert_eq!(deliver(&state).await, 2);
        e.advance(2 * 3600);
        assert_eq!(
            deliver(&state).await,
            1,
            "only the unreachable one is tried again"
        );
        assert_eq!(rx.got().len(), 1);

        let strict = only_message(&e, hook["id"].as_i64().unwrap()).await;
        assert_eq!(attempts(&strict), [(false, Some(400))]);
        assert_eq!(strict["notification"]["state"], "failed");
        assert!(
            strict["attempts"][0]["detail"]
                .as_str()
                .unwrap()
                .contains("unknown field")
        );
        assert_eq!(strict["notification"]["next_attempt_at"], Value::Null);

        let gone = only_message(&e, bot["id"].as_i64().unwrap()).await;
        assert_eq!(attempts(&gone), [(false, None), (false, None)]);
        assert_eq!(gone["notification"]["state"], "pending");
        let why = gone["attempts"][0]["detail"].as_str().unwrap();
        assert!(why.contains("could not connect"), "{why}");
        assert!(!gone.to_string().contains("AAH-bot-token"), "{gone}");
        let failed = e
            .ok("GET", "/api/v1/notifications?state=failed", ADMIN, None)
            .await;
        assert_eq!(failed["total"], 1);
    })
    .await;
}

#[tokio::test]
async fn channels_need_an_admin_and_never_show_their_secret() {
    each_backend(|store| async move {
        let (e, state) = env_with_state(store).await;
        let rx = Receiver::start().await;
        let operator = e.token("ops", Role::Operator).await;
        let viewer = e.token("watcher", Role::Viewer).await;
        let body = json!({"name": "hq", "kind": "webhook", "url": rx.url("/hq"), "secret": HOOK_SECRET});
        let a = e.call("POST", "/api/v1/channels", Some(&operator), Some(body.clone())).await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "channels hold secrets: admins only");
        let mut seen = Vec::new();
        let hq = e.call("POST", "/api/v1/channels", Some(ADMIN), Some(body.clone())).await;
        assert_eq!(hq.status, StatusCode::CREATED);
        let hq = hq.json();
        seen.push(hq.clone());
        let hq_id = hq["id"].as_i64().unwrap();
        assert_eq!(e.call("POST", "/api/v1/channels", Some(ADMIN), Some(body)).await.status, StatusCode::CONFLICT);
        let other = e
            .ok("POST", "/api/v1/channels", ADMIN,
                Some(json!({"name": "other", "kind": "webhook", "url": rx.url("/other")})))
            .await;

        let a = e
            .call("POST", "/api/v1/channels", Some(ADMIN),
                  Some(json!({"name": "t", "kind": "telegram", "url": "https://api.telegram.org", "secret": BOT_TOKEN})))
            .await;
        assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(a.error().contains("chat_id"), "{}", a.error());
        assert!(!a.error().contains(BOT_TOKEN));
        let a = e
            .call("POST", "/api/v1/channels", Some(ADMIN),
                  Some(json!({"name": "t", "kind": "webhook", "url": "ftp://example.com/x"})))
            .await;
        assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(a.error().contains("http:// or https://"), "{}", a.error());

        // Readers see channels and the log, not secrets; they change nothing.
        let listed = e.ok("GET", "/api/v1/channels", &viewer, None).await;
        assert_eq!(listed.as_array().unwrap().len(), 2);
        assert_eq!(listed[0]["has_secret"], true);
        seen.push(listed);
        let a = e.call("POST", &format!("/api/v1/channels/{hq_id}/test"), Some(&operator), None).await;
        assert_eq!(a.status, StatusCode::FORBIDDEN);

        // The test message goes to that channel only.
        let queued = e.call("POST", &format!("/api/v1/channels/{hq_id}/test"), Some(ADMIN), None).await;
        assert_eq!(queued.status, StatusCode::ACCEPTED);
        assert_eq!(queued.json()["event"], "test");
        assert_eq!(deliver(&state).await, 1);
        let got = rx.got();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].path, "/hq");
        assert_eq!(got[0].body["event"], "test");
        let log = e.ok("GET", "/api/v1/notifications?event=test", &viewer, None).await;
        assert_eq!(log["total"], 1);
        assert_eq!(log["items"][0]["channel_id"], hq_id);
        assert_eq!(log["items"][0]["state"], "sent");
        seen.push(log.clone());
        seen.push(e.ok("GET", &format!("/api/v1/notifications/{}", log["items"][0]["id"]), &viewer, None).await);

        // An update without a secret keeps it.
        let updated = e
            .ok("PUT", &format!("/api/v1/channels/{hq_id}"), ADMIN,
                Some(json!({"name": "head office", "kind": "webhook", "url": rx.url("/hq2")})))
            .await;
        assert_eq!((updated["name"].as_str(), updated["has_secret"].as_bool()), (Some("head office"), Some(true)));
        seen.push(updated);
        seen.push(e.ok("GET", &format!("/api/v1/channels/{hq_id}"), &viewer, None).await);
        seen.push(e.ok("GET", "/api/v1/audit?object=channel", ADMIN, None).await);
        for answer in &seen {
            assert!(!answer.to_string().contains(HOOK_SECRET), "{answer}");
        }

        let other_id = other["id"].as_i64().unwrap();
        let a = e.call("DELETE", &format!("/api/v1/channels/{other_id}"), Some(&operator), None).await;
        assert_eq!(a.status, StatusCode::FORBIDDEN);
        e.ok("DELETE", &format!("/api/v1/channels/{other_id}"), ADMIN, None).await;
        let a = e.call("GET", &format!("/api/v1/channels/{other_id}"), Some(ADMIN), None).await;
        assert_eq!(a.status, StatusCode::NOT_FOUND);
        assert_eq!(a.error(), format!("channel {other_id} does not exist"));
    })
    .await;
}
