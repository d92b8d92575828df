//! Sending queued notifications: a generic JSON webhook and a
//! Telegram-Bot-API-compatible sender.
//!
//! [`deliver_due`] runs from the server's background loop: it claims due messages
//! (leased, so replicas sharing a database do not send one twice at once), sends
//! each and records the outcome in the delivery log, where the store decides on
//! retries. Delivery is at least once: a message whose outcome could not be
//! recorded (the process died, the database failed) is sent again when its lease
//! runs out.
//!
//! Receivers are told apart by what they answer:
//! - **webhook**: 2xx is delivered; 408, 429 and 5xx are tried again (after
//!   `Retry-After` seconds, when given and longer than the backoff); a redirect and
//!   any other 4xx are permanent, since repeating the same request cannot help.
//!   Connection failures and timeouts are tried again.
//! - **telegram**: `{"ok": true}` is delivered; `{"ok": false, "error_code", ...}`
//!   maps like an HTTP status, with `parameters.retry_after` for 429.
//!
//! **Invariant:** a channel's secret never reaches the delivery log or the server
//! log: errors are stripped of request URLs (a Telegram URL carries the bot token)
//! and any remaining occurrence of the secret is masked.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;

use futures::StreamExt;
use posup_proto::notify::ChannelKind;
use posup_store::{Attempt, Delivery, FIRST_RETRY, MAX_RETRY};
use serde_json::json;

use crate::state::AppState;

/// Messages claimed per run.
pub const BATCH: u32 = 50;
/// How long a claimed message is reserved for this process. Longer than a run can
/// take (a channel's messages go one after another, each within [`TIMEOUT`] per
/// request), so a slow run does not let another replica send the same message.
pub const LEASE: Duration = Duration::from_secs(600);
/// The longest one request to a receiver may take.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// Telegram's limit on a message's text. Counted in UTF-16 code units, as
/// Telegram counts, which never allows more characters than the limit.
pub const TELEGRAM_LIMIT: usize = 4096;
/// Channels sent to at once within a run; each channel's messages go in order.
const CHANNELS_AT_ONCE: usize = 8;
/// The part of an answer's body read for the delivery log.
const ANSWER_BYTES: usize = 8 << 10;

/// The one HTTP client: redirects are not followed (a receiver's address is set on
/// the channel, and a redirect would carry the bearer token elsewhere).
fn client() -> Result<&'static reqwest::Client, String> {
    static CLIENT: OnceLock<Result<reqwest::Client, String>> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            reqwest::Client::builder()
                .timeout(TIMEOUT)
                .redirect(reqwest::redirect::Policy::none())
                .user_agent(concat!("posup-server/", env!("CARGO_PKG_VERSION")))
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// Claims the messages due at the state's clock, sends them and records each
/// attempt; returns how many were attempted. A channel whose message could not be
/// delivered (but may be later) gets no more messages in this run: the rest of its
/// claimed messages are put back for when that message is tried again, so a
/// receiver that is down or rate-limiting is not pressed and messages keep their
/// order.
pub async fn deliver_due(state: &AppState) -> posup_store::Result<usize> {
    let claimed = state
        .store()
        .claim_due_notifications(state.now_ms(), BATCH, LEASE.as_millis() as i64)
        .await?;
    if claimed.is_empty() {
        return Ok(0);
    }
    // Per channel, in the order claimed (oldest due first).
    let mut order: Vec<i64> = Vec::new();
    let mut by_channel: HashMap<i64, Vec<Delivery>> = HashMap::new();
    for d in claimed {
        if !by_channel.contains_key(&d.channel_id) {
            order.push(d.channel_id);
        }
        by_channel.entry(d.channel_id).or_default().push(d);
    }
    let groups: Vec<Vec<Delivery>> = order
        .into_iter()
        .filter_map(|c| by_channel.remove(&c))
        .collect();
    let results: Vec<(usize, posup_store::Result<()>)> = futures::stream::iter(groups)
        .map(|group| deliver_channel(state, group))
        .buffer_unordered(CHANNELS_AT_ONCE)
        .collect()
        .await;
    let mut attempted = 0;
    let mut first_error = None;
    for (n, result) in results {
        attempted += n;
        if let Err(e) = result {
            first_error.get_or_insert(e);
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(attempted),
    }
}

/// Sends one channel's messages in order.
async fn deliver_channel(
    state: &AppState,
    group: Vec<Delivery>,
) -> (usize, posup_store::Result<()>) {
    let mut attempted = 0;
    let mut rest = group.into_iter();
    while let Some(d) = rest.next() {
        let attempt = send(&d).await;
        attempted += 1;
        let now = state.now_ms();
        if let Err(e) = state.store().record_delivery(d.id, now, &attempt).await {
            // The lease runs out and the message is sent again later.
            let ids: Vec<i64> = rest.by_ref().map(|d| d.id).collect();
            let _ = state.store().defer_notifications(&ids, now).await;
            return (attempted, Err(e));
        }
        match &attempt {
            Attempt::Ok { detail, .. } => {
                tracing::info!(
                    notification = d.id,
                    channel = %d.channel_name,
                    event = %d.event,
                    "notification {detail}"
                );
            }
            Attempt::Error {
                detail,
                retry_after,
                permanent,
                ..
            } => {
                tracing::warn!(
                    notification = d.id,
                    channel = %d.channel_name,
                    attempt = d.attempts + 1,
                    permanent,
                    "notification not delivered: {detail}"
                );
                if !permanent {
                    let ids: Vec<i64> = rest.by_ref().map(|d| d.id).collect();
                    let wait = retry_after
                        .unwrap_or(FIRST_RETRY)
                        .clamp(FIRST_RETRY, MAX_RETRY);
                    let until = now.saturating_add(wait.as_millis() as i64);
                    if let Err(e) = state.store().defer_notifications(&ids, until).await {
                        return (attempted, Err(e));
                    }
                    break;
                }
            }
        }
    }
    (attempted, Ok(()))
}

/// Makes one attempt at delivering `d`, with the secret masked in what it reports.
pub async fn send(d: &Delivery) -> Attempt {
    let attempt = match client() {
        Err(e) => Attempt::Error {
            status: None,
            detail: format!("the HTTP client could not be built: {e}"),
            retry_after: None,
            permanent: false,
        },
        Ok(client) => match d.kind {
            ChannelKind::Webhook => webhook(client, d).await,
            ChannelKind::Telegram => telegram(client, d).await,
        },
    };
    mask(attempt, d.secret.as_deref())
}

/// Replaces every occurrence of `secret` in the attempt's text: a receiver may
/// echo what it was sent.
fn mask(attempt: Attempt, secret: Option<&str>) -> Attempt {
    let Some(secret) = secret.filter(|s| !s.is_empty()) else {
        return attempt;
    };
    attempt.map_detail(|detail| detail.replace(secret, "***"))
}

async fn webhook(client: &reqwest::Client, d: &Delivery) -> Attempt {
    let body = json!({
        "id": d.id,
        "event": d.event,
        "site": d.site,
        "rollout_id": d.rollout_id,
        "task_id": d.task_id,
        "subject": d.subject,
        "text": d.body,
        "created_at": d.created_at,
    });
    let mut request = client.post(&d.url).json(&body);
    if let Some(secret) = &d.secret {
        request = request.bearer_auth(secret);
    }
    let response = match request.send().await {
        Ok(r) => r,
        Err(e) => return transport_error(e),
    };
    let status = response.status();
    if status.is_success() {
        return Attempt::Ok {
            status: Some(status.as_u16()),
            detail: format!("delivered (HTTP {status})"),
        };
    }
    let retry_after = retry_after_header(response.headers());
    let location = response
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let answer = read_answer(response).await;
    let mut detail = format!("the webhook answered HTTP {status}");
    if let Some(to) = location.filter(|_| status.is_redirection()) {
        detail.push_str(&format!(
            " to {}: redirects are not followed, set the channel's URL to the final address",
            posup_store::redact(&to)
        ));
    }
    let answer = String::from_utf8_lossy(&answer);
    let answer = answer.trim();
    if !answer.is_empty() {
        detail.push_str(": ");
        detail.push_str(&snippet(answer));
    }
    classify(status.as_u16(), retry_after, detail)
}

/// What a Bot API method answers.
#[derive(serde::Deserialize)]
struct BotAnswer {
    ok: bool,
    error_code: Option<i64>,
    description: Option<String>,
    parameters: Option<BotParameters>,
}

#[derive(serde::Deserialize)]
struct BotParameters {
    retry_after: Option<u64>,
}

/// Sends the subject, an empty line and the body as plain text (no `parse_mode`:
/// nothing in it is markup), in parts of at most [`TELEGRAM_LIMIT`]. A failure
/// after some parts went out fails the whole message, and the retry sends every
/// part again: a long message may then be read twice in part, which is better than
/// its end never arriving.
async fn telegram(client: &reqwest::Client, d: &Delivery) -> Attempt {
    let (Some(token), Some(chat_id)) = (&d.secret, &d.chat_id) else {
        return Attempt::Error {
            status: None,
            detail: format!(
                "channel {} lacks its chat_id or bot token: set them",
                d.channel_name
            ),
            retry_after: None,
            permanent: true,
        };
    };
    let endpoint = format!("{}/bot{token}/sendMessage", d.url.trim_end_matches('/'));
    let text = format!("{}\n\n{}", d.subject, d.body);
    let parts = split_message(&text, TELEGRAM_LIMIT);
    let total = parts.len();
    let of = |i: usize| {
        if total > 1 {
            format!(" (part {} of {total})", i + 1)
        } else {
            String::new()
        }
    };
    for (i, part) in parts.iter().enumerate() {
        let body = json!({"chat_id": chat_id, "text": part, "disable_web_page_preview": true});
        let response = match client.post(&endpoint).json(&body).send().await {
            Ok(r) => r,
            Err(e) => {
                return transport_error(e).map_detail(|detail| format!("{detail}{}", of(i)));
            }
        };
        let status = response.status();
        let header_retry = retry_after_header(response.headers());
        let answer = read_answer(response).await;
        match serde_json::from_slice::<BotAnswer>(&answer) {
            Ok(a) if a.ok => {}
            Ok(a) => {
                let code = a
                    .error_code
                    .and_then(|c| u16::try_from(c).ok())
                    .unwrap_or(status.as_u16());
                let retry_after = a
                    .parameters
                    .and_then(|p| p.retry_after)
                    .map(Duration::from_secs)
                    .or(header_retry);
                let description = a.description.unwrap_or_default();
                return classify(
                    code,
                    retry_after,
                    format!(
                        "Telegram refused the message{}: {code} {}",
                        of(i),
                        snippet(&description)
                    ),
                );
            }
            Err(_) => {
                let text = String::from_utf8_lossy(&answer);
                let detail = format!(
                    "the Bot API answered HTTP {status} without a Bot API result{}: {}",
                    of(i),
                    snippet(text.trim())
                );
                // A success status without `"ok": true` is not a delivery we can
                // vouch for; try again rather than give up.
                let code = if status.is_success() {
                    500
                } else {
                    status.as_u16()
                };
                let mut attempt = classify(code, header_retry, detail);
                if let Attempt::Error { status: s, .. } = &mut attempt {
                    *s = Some(status.as_u16());
                }
                return attempt;
            }
        }
    }
    Attempt::Ok {
        status: Some(200),
        detail: if total > 1 {
            format!("delivered in {total} parts")
        } else {
            "delivered".to_owned()
        },
    }
}

/// 408, 429 and 5xx may pass later; every other status will not.
fn classify(status: u16, retry_after: Option<Duration>, detail: String) -> Attempt {
    let retryable = matches!(status, 408 | 429) || !(300..500).contains(&status);
    Attempt::Error {
        status: Some(status),
        detail,
        retry_after: if retryable { retry_after } else { None },
        permanent: !retryable,
    }
}

/// No answer: a later attempt may get one.
fn transport_error(e: reqwest::Error) -> Attempt {
    // The URL of a Telegram request holds the bot token.
    let e = e.without_url();
    let what = if e.is_timeout() {
        format!("no answer within {} s", TIMEOUT.as_secs())
    } else if e.is_connect() {
        "could not connect".to_owned()
    } else {
        "the request failed".to_owned()
    };
    let mut detail = format!("{what}: {e}");
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        detail.push_str(": ");
        detail.push_str(&s.to_string());
        source = s.source();
    }
    Attempt::Error {
        status: None,
        detail,
        retry_after: None,
        permanent: false,
    }
}

/// `Retry-After` in seconds (the HTTP-date form is not used by the receivers we
/// know and is ignored).
fn retry_after_header(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// The start of an answer's body: enough for the log, bounded however much the
/// receiver sends.
async fn read_answer(mut response: reqwest::Response) -> Vec<u8> {
    let mut body = Vec::new();
    while body.len() < ANSWER_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            _ => break,
        }
    }
    body.truncate(ANSWER_BYTES);
    body
}

fn snippet(text: &str) -> String {
    const MAX: usize = 300;
    match text.char_indices().nth(MAX) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

/// Splits `text` into parts of at most `limit` UTF-16 code units, at line ends
/// where it can and inside a line only when the line alone is too long. Parts are
/// trimmed of the line breaks at their ends; empty parts are dropped.
pub fn split_message(text: &str, limit: usize) -> Vec<String> {
    let limit = limit.max(2);
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut len = 0;
    let mut flush = |current: &mut String, len: &mut usize| {
        let part = current.trim_matches(['\n', '\r']);
        if !part.trim().is_empty() {
            parts.push(part.to_owned());
        }
        current.clear();
        *len = 0;
    };
    for line in text.split_inclusive('\n') {
        let line_len: usize = line.chars().map(char::len_utf16).sum();
        if len + line_len > limit {
            flush(&mut current, &mut len);
        }
        if line_len > limit {
            for c in line.chars() {
                if len + c.len_utf16() > limit {
                    flush(&mut current, &mut len);
                }
                current.push(c);
                len += c.len_utf16();
            }
        } else {
            current.push_str(line);
            len += line_len;
        }
    }
    flush(&mut current, &mut len);
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn units(s: &str) -> usize {
        s.chars().map(char::len_utf16).sum()
    }

    #[test]
    fn messages_split_at_line_ends_within_the_limit() {
        assert_eq!(split_message("short\n\nbody", 4096), ["short\n\nbody"]);
        let lines: Vec<String> = (0..100)
            .map(|i| format!("{i:03} {}", "x".repeat(45)))
            .collect();
        let text = lines.join("\n");
        assert_eq!(text.chars().count(), 100 * 49 + 99);
        let parts = split_message(&text, 1000);
        assert_eq!(parts.len(), 5);
        for p in &parts {
            assert!(units(p) <= 1000);
            assert!(
                p.starts_with(char::is_numeric),
                "parts start at a line: {p:.10}"
            );
        }
        assert_eq!(parts.join("\n"), text, "nothing is lost");
        // A line longer than a part is cut; characters, not bytes, count.
        let long = "ж".repeat(2500);
        let parts = split_message(&long, 1000);
        assert_eq!(
            parts.iter().map(|p| p.chars().count()).collect::<Vec<_>>(),
            [1000, 1000, 500]
        );
        // Characters outside the BMP count twice, as in Telegram.
        let parts = split_message(&"😀".repeat(600), 1000);
        assert_eq!(
            parts.iter().map(|p| p.chars().count()).collect::<Vec<_>>(),
            [500, 100]
        );
    }

    #[test]
    fn statuses_map_to_retries() {
        let of = |status| match classify(status, Some(Duration::from_secs(5)), String::new()) {
            Attempt::Error {
                permanent,
                retry_after,
                ..
            } => (permanent, retry_after.is_some()),
            Attempt::Ok { .. } => unreachable!(),
        };
        assert_eq!(of(500), (false, true));
        assert_eq!(of(503), (false, true));
        assert_eq!(of(429), (false, true));
        assert_eq!(of(408), (false, true));
        assert_eq!(of(400), (true, false));
        assert_eq!(of(401), (true, false));
        assert_eq!(of(404), (true, false));
        assert_eq!(of(302), (true, false));
    }

    #[test]
    fn secrets_are_masked() {
        let a = mask(
            Attempt::Error {
                status: Some(401),
                detail: "bad token 123:abc in /bot123:abc/sendMessage".into(),
                retry_after: None,
                permanent: true,
            },
            Some("123:abc"),
        );
        assert!(
            matches!(a, Attempt::Error { ref detail, .. } if detail == "bad token *** in /bot***/sendMessage")
        );
    }
}
