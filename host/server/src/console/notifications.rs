//! Notifications: the channels stores' messages go out through (webhook or
//! Telegram), a test message, and the delivery log with every attempt.

use std::collections::HashMap;

use askama::Template;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use posup_proto::notify::{
    ChannelKind, CreateChannel, NotificationQuery, NotificationState, NotificationView,
};

use super::session::{Posted, Session};
use super::{Fail, Frame, Params, Tr, When, render, render_form};
use crate::state::AppState;

const PER_PAGE: u32 = 100;

fn state_id(s: NotificationState) -> &'static str {
    match s {
        NotificationState::Pending => "notification-pending",
        NotificationState::Sent => "notification-sent",
        NotificationState::Failed => "notification-failed",
    }
}

pub struct ChannelLine {
    pub id: i64,
    pub name: String,
    pub kind: &'static str,
    pub site: String,
    pub url: String,
    pub chat_id: String,
    pub has_secret: bool,
    pub enabled: bool,
}

pub struct MessageLine {
    pub id: i64,
    pub channel: String,
    pub event: String,
    pub site: String,
    pub subject: String,
    pub state: String,
    pub state_key: &'static str,
    pub attempts: u32,
    pub last_error: String,
    pub created: When,
    pub sent: Option<When>,
    pub next: Option<When>,
}

fn message_line(m: NotificationView, frame: &Frame) -> MessageLine {
    MessageLine {
        id: m.id,
        channel: m.channel_name,
        event: m.event,
        site: m.site.unwrap_or_default(),
        subject: m.subject,
        state: frame.tr.t(state_id(m.state)),
        state_key: m.state.as_str(),
        attempts: m.attempts,
        last_error: m.last_error.unwrap_or_default(),
        created: frame.when(m.created_at),
        sent: m.sent_at.map(|t| frame.when(t)),
        next: m.next_attempt_at.map(|t| frame.when(t)),
    }
}

#[derive(Template)]
#[template(path = "notifications.html")]
struct NotificationsPage {
    frame: Frame,
    channels: Vec<ChannelLine>,
    messages: Vec<MessageLine>,
    state: String,
    problems: Vec<String>,
}

async fn notifications_page(
    state: &AppState,
    session: &Session,
    chosen: Option<NotificationState>,
    problems: Vec<String>,
) -> Result<Response, Fail> {
    let frame = Frame::new(session, "notifications", "/notifications".into());
    let tr: Tr = frame.tr;
    let channels = state.store().list_channels().await?;
    let messages = state
        .store()
        .notifications(&NotificationQuery {
            state: chosen,
            per_page: Some(PER_PAGE),
            ..Default::default()
        })
        .await?;
    let refused = !problems.is_empty();
    render_form(
        &NotificationsPage {
            channels: channels
                .into_iter()
                .map(|c| ChannelLine {
                    id: c.id,
                    name: c.name,
                    kind: c.kind.as_str(),
                    site: c.site.unwrap_or_else(|| tr.t("access-any-site")),
                    url: c.url,
                    chat_id: c.chat_id.unwrap_or_default(),
                    has_secret: c.has_secret,
                    enabled: c.enabled,
                })
                .collect(),
            messages: messages
                .items
                .into_iter()
                .map(|m| message_line(m, &frame))
                .collect(),
            state: chosen.map(|s| s.as_str()).unwrap_or_default().to_owned(),
            problems,
            frame,
        },
        refused,
    )
}

pub async fn list(
    State(state): State<AppState>,
    session: Session,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, Fail> {
    let chosen = params
        .get("state")
        .and_then(|s| NotificationState::ALL.into_iter().find(|k| k.as_str() == s));
    notifications_page(&state, &session, chosen, Vec::new()).await
}

pub async fn create_channel(
    State(state): State<AppState>,
    posted: Posted,
) -> Result<Response, Fail> {
    let session = &posted.session;
    session.require_admin()?;
    let text = |n: &str| Some(posted.field(n).to_owned()).filter(|v| !v.is_empty());
    let kind = if posted.field("kind") == "telegram" {
        ChannelKind::Telegram
    } else {
        ChannelKind::Webhook
    };
    let body = CreateChannel {
        name: posted.field("name").to_owned(),
        kind,
        site: text("site"),
        url: posted.field("url").to_owned(),
        chat_id: text("chat_id"),
        secret: text("secret"),
        enabled: true,
    };
    match state
        .store()
        .create_channel(&body, state.now_ms(), &session.actor())
        .await
    {
        Ok(_) => Ok(Redirect::to("/notifications").into_response()),
        Err(posup_store::Error::Invalid(m) | posup_store::Error::Conflict(m)) => {
            notifications_page(&state, session, None, vec![m]).await
        }
        Err(e) => Err(e.into()),
    }
}

pub async fn channel_command(
    State(state): State<AppState>,
    Params((id, command)): Params<(i64, String)>,
    posted: Posted,
) -> Result<Response, Fail> {
    let session = &posted.session;
    session.require_admin()?;
    let (now, actor) = (state.now_ms(), session.actor());
    match command.as_str() {
        "test" => {
            state.store().enqueue_test(id, now, &actor).await?;
        }
        "delete" => state.store().delete_channel(id, now, &actor).await?,
        _ => return Err(Fail::BadForm),
    }
    Ok(Redirect::to("/notifications").into_response())
}

pub struct AttemptLine {
    pub at: When,
    pub ok: bool,
    pub status: String,
    pub detail: String,
}

#[derive(Template)]
#[template(path = "notification.html")]
struct NotificationPage {
    frame: Frame,
    message: MessageLine,
    body: String,
    attempts: Vec<AttemptLine>,
}

pub async fn page(
    State(state): State<AppState>,
    session: Session,
    Params(id): Params<i64>,
) -> Result<Response, Fail> {
    let frame = Frame::new(&session, "notifications", format!("/notifications/{id}"));
    let tr = frame.tr;
    let detail = state
        .store()
        .notification(id)
        .await?
        .ok_or_else(|| posup_store::Error::NotFound(tr.t1("notification-no-such", "id", id)))?;
    let m = detail.notification;
    render(&NotificationPage {
        body: m.body.clone(),
        attempts: detail
            .attempts
            .into_iter()
            .map(|a| AttemptLine {
                at: frame.when(a.at),
                ok: a.ok,
                status: a.status.map(|s| s.to_string()).unwrap_or_default(),
                detail: a.detail,
            })
            .collect(),
        message: message_line(m, &frame),
        frame,
    })
}
