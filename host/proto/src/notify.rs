//! Notification channels and the delivery log, under `/api/v1/channels` and
//! `/api/v1/notifications`.
//!
//! The server queues plain-text messages for stores (announcements before an
//! update, a site's report when its part of a rollout ends, an emergency stop) and
//! sends each to every enabled channel of the site and to every tenant-wide channel.
//! Each message is retried with a growing delay until it is delivered or given up;
//! every attempt is in the delivery log.
//!
//! A channel's secret (a webhook's bearer token, a Telegram bot token) is
//! write-only: no answer carries it, views say only whether one is set.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// How a channel sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "kebab-case")]
pub enum ChannelKind {
    /// A JSON `POST` to `url`, with `Authorization: Bearer <secret>` when a secret
    /// is set. The body carries `id`, `event`, `site`, `rollout_id`, `task_id`,
    /// `subject`, `text` and `created_at`.
    Webhook,
    /// A Telegram-Bot-API-compatible `sendMessage` to `chat_id`: `url` is the API
    /// base (`https://api.telegram.org`), `secret` the bot token. Long messages go
    /// out in several parts.
    Telegram,
}

impl ChannelKind {
    pub const ALL: [ChannelKind; 2] = [ChannelKind::Webhook, ChannelKind::Telegram];

    pub fn as_str(self) -> &'static str {
        match self {
            ChannelKind::Webhook => "webhook",
            ChannelKind::Telegram => "telegram",
        }
    }

    pub fn parse(s: &str) -> Option<ChannelKind> {
        ChannelKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

fn enabled_by_default() -> bool {
    true
}

/// `POST /api/v1/channels`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct CreateChannel {
    /// Unique; 1 to 200 printable characters.
    pub name: String,
    /// How the channel sends.
    pub kind: ChannelKind,
    /// The one site whose messages the channel gets; absent: every site's and the
    /// messages about no site (tenant-wide).
    #[serde(default)]
    pub site: Option<String>,
    /// `http://` or `https://`: the webhook's address, or the Bot API base.
    pub url: String,
    /// The chat messages go to; required for Telegram, refused for webhooks.
    #[serde(default)]
    pub chat_id: Option<String>,
    /// The webhook's bearer token (optional) or the Telegram bot token (required).
    /// Stored, never answered.
    #[serde(default)]
    pub secret: Option<String>,
    /// A disabled channel gets no new messages; default `true`.
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
}

/// `PUT /api/v1/channels/{id}`: replaces a channel's settings. The secret is the
/// exception, since no answer shows it: absent, the stored one stays.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct UpdateChannel {
    /// Unique; 1 to 200 printable characters.
    pub name: String,
    /// How the channel sends.
    pub kind: ChannelKind,
    /// The one site whose messages the channel gets; absent: every site's and the
    /// messages about no site.
    #[serde(default)]
    pub site: Option<String>,
    /// `http://` or `https://`: the webhook's address, or the Bot API base.
    pub url: String,
    /// The chat messages go to; required for Telegram, refused for webhooks.
    #[serde(default)]
    pub chat_id: Option<String>,
    /// A new secret; absent keeps the stored one.
    #[serde(default)]
    pub secret: Option<String>,
    /// Removes the stored secret (webhooks only: Telegram needs its bot token).
    #[serde(default)]
    pub clear_secret: bool,
    /// A disabled channel gets no new messages and sends none of its queued ones
    /// until enabled again; default `true`.
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
}

/// A channel, without its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ChannelView {
    /// The channel's id.
    pub id: i64,
    /// Its unique name.
    pub name: String,
    /// How it sends.
    pub kind: ChannelKind,
    /// The one site it serves; `null`: every site (tenant-wide).
    pub site: Option<String>,
    /// Where it sends, without any password in the address.
    pub url: String,
    /// The Telegram chat.
    pub chat_id: Option<String>,
    /// Whether a secret (bearer token, bot token) is stored.
    pub has_secret: bool,
    /// Whether it gets and sends messages.
    pub enabled: bool,
    /// When it was created.
    pub created_at: DateTime<Utc>,
}

/// Where a message is in its delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "kebab-case")]
pub enum NotificationState {
    /// Not delivered yet; tried again at `next_attempt_at`.
    Pending,
    /// The receiver accepted it.
    Sent,
    /// Given up: the receiver refused it for good, or every attempt failed.
    Failed,
}

impl NotificationState {
    pub const ALL: [NotificationState; 3] = [
        NotificationState::Pending,
        NotificationState::Sent,
        NotificationState::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            NotificationState::Pending => "pending",
            NotificationState::Sent => "sent",
            NotificationState::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<NotificationState> {
        NotificationState::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// Query string of `GET /api/v1/notifications`; every filter is optional and they
/// combine with AND.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct NotificationQuery {
    /// Only messages to this channel.
    pub channel_id: Option<i64>,
    /// Only messages in this state.
    pub state: Option<NotificationState>,
    /// Only this event (`test`, or the rollout events such as `announce`).
    pub event: Option<String>,
    /// Only messages about this site (exactly).
    pub site: Option<String>,
    /// Only messages about this rollout.
    pub rollout_id: Option<i64>,
    /// Only messages about this task.
    pub task_id: Option<i64>,
    /// 1-based; default 1.
    pub page: Option<u32>,
    /// Default 50, at most 1000.
    pub per_page: Option<u32>,
}

/// One message to one channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct NotificationView {
    /// The message's id (per channel: one message to two channels has two ids).
    pub id: i64,
    /// The channel it goes to.
    pub channel_id: i64,
    /// That channel's name.
    pub channel_name: String,
    /// What happened: `test`, or an event of rollouts.
    pub event: String,
    /// The site it is about; `null`: no one site.
    pub site: Option<String>,
    /// The rollout it is about.
    pub rollout_id: Option<i64>,
    /// The task it is about.
    pub task_id: Option<i64>,
    /// The first line of the message.
    pub subject: String,
    /// The rest of the message, plain text.
    pub body: String,
    /// Where it is in its delivery.
    pub state: NotificationState,
    /// Failed attempts so far (a delivered message's last attempt is not counted).
    pub attempts: u32,
    /// When it is tried next; only while pending.
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// What went wrong last, while not delivered.
    pub last_error: Option<String>,
    /// When it was queued.
    pub created_at: DateTime<Utc>,
    /// When the receiver accepted it.
    pub sent_at: Option<DateTime<Utc>>,
}

/// `GET /api/v1/notifications/{id}`: a message with every delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct NotificationDetail {
    /// The message.
    pub notification: NotificationView,
    /// Its attempts, oldest first.
    pub attempts: Vec<AttemptView>,
}

/// One delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct AttemptView {
    /// When it was made.
    pub at: DateTime<Utc>,
    /// Whether the receiver accepted the message.
    pub ok: bool,
    /// The receiver's HTTP status (for Telegram its `error_code` when it gave
    /// one); `null` when no answer came (connection failed, timeout).
    pub status: Option<u16>,
    /// What happened, in words; never contains the channel's secret.
    pub detail: String,
}
