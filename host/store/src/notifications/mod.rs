//! Notification channels, the queue of messages to them, and the delivery log.
//!
//! Other parts of the store queue messages with [`notify!`] inside their own write
//! transactions; the server claims due messages with
//! [`Store::claim_due_notifications`], sends them and reports each attempt with
//! [`Store::record_delivery`]. A failed attempt is retried after a delay that
//! doubles from [`FIRST_RETRY`] up to [`MAX_RETRY`] (or after the receiver's own
//! `retry_after`, when longer), until [`MAX_ATTEMPTS`] attempts failed or the
//! receiver refused the message for good.
//!
//! **Invariant:** a claimed message is leased (`lease_until`), and only messages
//! whose lease ran out can be claimed again, so server replicas sharing one
//! database do not send a message twice at once. A replica that dies while sending
//! leaves the lease to run out and the message is sent again: delivery is at least
//! once.
//!
//! **Boundary:** a channel's secret leaves the store only in a [`Delivery`] (for the
//! sender); views and the audit log say only whether one is set.

mod channels;
mod log;
mod queue;

use std::time::Duration;

use chrono::{DateTime, Utc};
use posup_proto::notify::{ChannelKind, ChannelView, NotificationState, NotificationView};

use crate::{Error, Result, ts};

/// Attempts after which a message that still fails is given up (`failed`).
pub const MAX_ATTEMPTS: u32 = 8;
/// The delay after the first failed attempt; each further failure doubles it.
pub const FIRST_RETRY: Duration = Duration::from_secs(30);
/// The longest delay between attempts, also for a receiver's `retry_after`: with
/// [`MAX_ATTEMPTS`], a message is given up within about eight hours.
pub const MAX_RETRY: Duration = Duration::from_secs(3600);

/// Longest error text kept per attempt.
const MAX_DETAIL: usize = 2000;

/// The statement behind [`notify!`]: one row per enabled channel of the notice's
/// site or of no site. `c.site = NULL` is never true, so a notice about no site
/// reaches only the tenant-wide channels.
pub(crate) const ENQUEUE: &str = "INSERT INTO notifications \
    (channel_id, event, site, rollout_id, task_id, subject, body, state, attempts, next_attempt_at, lease_until, created_at) \
    SELECT c.id, $1, $2, $3, $4, $5, $6, 'pending', 0, $7, 0, $7 FROM channels c \
    WHERE c.enabled AND (c.site IS NULL OR c.site = $2)";

/// A message to queue with [`notify!`] or [`Store::enqueue`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Notice<'a> {
    /// What happened, a short machine-readable word (`announce`, `site-report`,
    /// `emergency-stop`, `test`…); receivers may filter on it.
    pub event: &'a str,
    /// The site it is about: its channels and the tenant-wide ones get it. `None`:
    /// only the tenant-wide channels.
    pub site: Option<&'a str>,
    /// The rollout it is about.
    pub rollout_id: Option<i64>,
    /// The task it is about.
    pub task_id: Option<i64>,
    /// The first line, plain text.
    pub subject: &'a str,
    /// The rest, plain text (never markup: receivers show it as is).
    pub body: &'a str,
}

/// A claimed message with what its sender needs, secret included.
#[derive(Clone)]
pub struct Delivery {
    pub id: i64,
    pub channel_id: i64,
    pub channel_name: String,
    pub kind: ChannelKind,
    pub url: String,
    pub chat_id: Option<String>,
    /// The bearer token or bot token; never log it.
    pub secret: Option<String>,
    pub event: String,
    pub site: Option<String>,
    pub rollout_id: Option<i64>,
    pub task_id: Option<i64>,
    pub subject: String,
    pub body: String,
    /// Failed attempts before this one.
    pub attempts: u32,
    pub created_at: DateTime<Utc>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("id", &self.id)
            .field("channel_id", &self.channel_id)
            .field("kind", &self.kind)
            .field("event", &self.event)
            .field("site", &self.site)
            .field("has_secret", &self.secret.is_some())
            .field("attempts", &self.attempts)
            .finish_non_exhaustive()
    }
}

/// The outcome of one delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// The receiver accepted the message.
    Ok {
        /// Its HTTP status.
        status: Option<u16>,
        /// What happened, for the log (`delivered in 2 parts`).
        detail: String,
    },
    /// The receiver did not accept it, or could not be reached.
    Error {
        /// The HTTP status (or Telegram `error_code`); `None` when no answer came.
        status: Option<u16>,
        /// What went wrong, without secrets; stored truncated.
        detail: String,
        /// How long the receiver asked to wait before the next attempt.
        retry_after: Option<Duration>,
        /// Trying again cannot help (the receiver refused the message itself).
        permanent: bool,
    },
}

impl Attempt {
    /// The same outcome with its text rewritten (masked, or told which part).
    pub fn map_detail(self, f: impl FnOnce(String) -> String) -> Attempt {
        match self {
            Attempt::Ok { status, detail } => Attempt::Ok {
                status,
                detail: f(detail),
            },
            Attempt::Error {
                status,
                detail,
                retry_after,
                permanent,
            } => Attempt::Error {
                status,
                detail: f(detail),
                retry_after,
                permanent,
            },
        }
    }
}

/// The delay before the next attempt after `attempts` failed ones: 30 s, doubling,
/// at most an hour.
pub fn backoff(attempts: u32) -> Duration {
    let doublings = attempts.saturating_sub(1).min(20);
    FIRST_RETRY.saturating_mul(1u32 << doublings).min(MAX_RETRY)
}

#[derive(sqlx::FromRow)]
struct ChannelRow {
    id: i64,
    name: String,
    kind: String,
    site: Option<String>,
    url: String,
    chat_id: Option<String>,
    secret: Option<String>,
    enabled: bool,
    created_at: i64,
}

const CHANNEL_SELECT: &str =
    "SELECT id, name, kind, site, url, chat_id, secret, enabled, created_at FROM channels";

fn parse_kind(s: &str) -> Result<ChannelKind> {
    ChannelKind::parse(s).ok_or_else(|| Error::Corrupt(format!("channel kind `{s}`")))
}

impl ChannelRow {
    fn view(self) -> Result<ChannelView> {
        Ok(ChannelView {
            id: self.id,
            kind: parse_kind(&self.kind)?,
            name: self.name,
            site: self.site,
            url: crate::redact(&self.url),
            chat_id: self.chat_id,
            has_secret: self.secret.is_some(),
            enabled: self.enabled,
            created_at: ts(self.created_at),
        })
    }
}

#[derive(sqlx::FromRow)]
struct NotificationRow {
    id: i64,
    channel_id: i64,
    channel_name: String,
    event: String,
    site: Option<String>,
    rollout_id: Option<i64>,
    task_id: Option<i64>,
    subject: String,
    body: String,
    state: String,
    attempts: i64,
    next_attempt_at: i64,
    last_error: Option<String>,
    created_at: i64,
    sent_at: Option<i64>,
}

const NOTIFICATION_SELECT: &str = "SELECT n.id, n.channel_id, c.name AS channel_name, n.event, n.site, n.rollout_id, n.task_id, \
    n.subject, n.body, n.state, n.attempts, n.next_attempt_at, n.last_error, n.created_at, n.sent_at \
    FROM notifications n JOIN channels c ON c.id = n.channel_id";

impl NotificationRow {
    fn view(self) -> Result<NotificationView> {
        let state = NotificationState::parse(&self.state)
            .ok_or_else(|| Error::Corrupt(format!("notification state `{}`", self.state)))?;
        Ok(NotificationView {
            id: self.id,
            channel_id: self.channel_id,
            channel_name: self.channel_name,
            event: self.event,
            site: self.site,
            rollout_id: self.rollout_id,
            task_id: self.task_id,
            subject: self.subject,
            body: self.body,
            state,
            attempts: self.attempts.clamp(0, i64::from(u32::MAX)) as u32,
            next_attempt_at: (state == NotificationState::Pending)
                .then(|| ts(self.next_attempt_at)),
            last_error: self.last_error,
            created_at: ts(self.created_at),
            sent_at: self.sent_at.map(ts),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Store;
    use crate::testing::each_backend;
    use posup_proto::api::AuditQuery;
    use posup_proto::notify::{CreateChannel, NotificationQuery, UpdateChannel};

    const T0: i64 = 1_700_000_000_000;
    const SEC: i64 = 1000;
    const LEASE: i64 = 60 * SEC;

    fn webhook(name: &str, site: Option<&str>) -> CreateChannel {
        CreateChannel {
            name: name.into(),
            kind: ChannelKind::Webhook,
            site: site.map(Into::into),
            url: format!("https://hooks.example.com/{name}"),
            chat_id: None,
            secret: None,
            enabled: true,
        }
    }

    fn notice<'a>(site: Option<&'a str>) -> Notice<'a> {
        Notice {
            event: "announce",
            site,
            rollout_id: Some(7),
            task_id: None,
            subject: "Update tonight",
            body: "Registers restart at 23:00.",
        }
    }

    fn error(status: Option<u16>, retry_after: Option<Duration>, permanent: bool) -> Attempt {
        Attempt::Error {
            status,
            detail: format!("HTTP {status:?}"),
            retry_after,
            permanent,
        }
    }

    /// The channel names a notice reached, by name.
    async fn reached(store: &Store, notice: &Notice<'_>) -> Vec<String> {
        let before = store
            .notifications(&NotificationQuery::default())
            .await
            .unwrap()
            .items
            .first()
            .map_or(0, |n| n.id);
        // Through the macro, inside a transaction, as the rollout code uses it.
        let queued = with_write!(store, pool => {
            let mut tx = pool.begin().await.unwrap();
            let queued = (async {
                let n = notify!(&mut *tx, T0, notice);
                Ok::<_, Error>(n)
            })
            .await
            .unwrap();
            tx.commit().await.unwrap();
            queued
        });
        let mut names: Vec<String> = store
            .notifications(&NotificationQuery::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|n| n.id > before)
            .map(|n| n.channel_name)
            .collect();
        assert_eq!(queued as usize, names.len());
        names.sort();
        names
    }

    #[tokio::test]
    async fn notices_reach_their_sites_channels_and_the_tenant_wide_ones() {
        each_backend(|store| async move {
            for (name, site) in [
                ("store-a", Some("Store A")),
                ("store-b", Some("Store B")),
                ("tenant", None),
            ] {
                store
                    .create_channel(&webhook(name, site), T0, "test")
                    .await
                    .unwrap();
            }
            let mut off = webhook("store-a-off", Some("Store A"));
            off.enabled = false;
            store.create_channel(&off, T0, "test").await.unwrap();
            let mut tenant_off = webhook("tenant-off", None);
            tenant_off.enabled = false;
            store.create_channel(&tenant_off, T0, "test").await.unwrap();

            assert_eq!(
                reached(&store, &notice(Some("Store A"))).await,
                ["store-a", "tenant"]
            );
            assert_eq!(
                reached(&store, &notice(Some("Store B"))).await,
                ["store-b", "tenant"]
            );
            assert_eq!(reached(&store, &notice(Some("Store C"))).await, ["tenant"]);
            assert_eq!(reached(&store, &notice(None)).await, ["tenant"]);

            // The queued rows carry the notice, due now.
            let page = store
                .notifications(&NotificationQuery {
                    site: Some("Store A".into()),
                    ..Default::default()
                })
                .await
                .unwrap();
            assert_eq!(page.total, 2);
            let n = &page.items[0];
            assert_eq!(
                (
                    n.event.as_str(),
                    n.rollout_id,
                    n.task_id,
                    n.subject.as_str(),
                    n.state,
                    n.attempts
                ),
                (
                    "announce",
                    Some(7),
                    None,
                    "Update tonight",
                    NotificationState::Pending,
                    0
                )
            );
            assert_eq!(n.next_attempt_at, Some(ts(T0)));
            // Store::enqueue is the same statement in a transaction of its own.
            assert_eq!(
                store.enqueue(&notice(Some("Store B")), T0).await.unwrap(),
                2
            );
            assert!(
                store
                    .enqueue(
                        &Notice {
                            subject: " ",
                            ..notice(None)
                        },
                        T0
                    )
                    .await
                    .is_err()
            );
        })
        .await;
    }

    /// A webhook channel and one notice queued for it at `T0`.
    async fn one_queued(store: &Store) {
        store
            .create_channel(&webhook("tenant", None), T0, "test")
            .await
            .unwrap();
        store.enqueue(&notice(None), T0).await.unwrap();
    }

    #[tokio::test]
    async fn claims_respect_leases_and_due_times() {
        each_backend(|store| async move {
            one_queued(&store).await;
            // Not due before it was queued.
            assert!(
                store
                    .claim_due_notifications(T0 - 1, 10, LEASE)
                    .await
                    .unwrap()
                    .is_empty()
            );
            let claimed = store.claim_due_notifications(T0, 10, LEASE).await.unwrap();
            assert_eq!(claimed.len(), 1);
            let d = &claimed[0];
            assert_eq!(
                (d.kind, d.event.as_str(), d.attempts),
                (ChannelKind::Webhook, "announce", 0)
            );
            assert_eq!(d.url, "https://hooks.example.com/tenant");
            // Leased: another replica gets nothing until the lease ran out.
            assert!(
                store
                    .claim_due_notifications(T0 + 1, 10, LEASE)
                    .await
                    .unwrap()
                    .is_empty()
            );
            assert!(
                store
                    .claim_due_notifications(T0 + LEASE, 10, LEASE)
                    .await
                    .unwrap()
                    .is_empty()
            );
            let again = store
                .claim_due_notifications(T0 + LEASE + 1, 10, LEASE)
                .await
                .unwrap();
            assert_eq!(again.len(), 1, "a lease that ran out is claimed again");
            let now = T0 + LEASE + 1;

            // A failure releases the lease but sets the next attempt 30 s out.
            store
                .record_delivery(d.id, now, &error(Some(500), None, false))
                .await
                .unwrap();
            assert!(
                store
                    .claim_due_notifications(now + 30 * SEC - 1, 10, LEASE)
                    .await
                    .unwrap()
                    .is_empty()
            );
            let retry = store
                .claim_due_notifications(now + 30 * SEC, 10, LEASE)
                .await
                .unwrap();
            assert_eq!(retry.len(), 1);
            assert_eq!(retry[0].attempts, 1);

            // The limit holds, oldest due first.
            store.enqueue(&notice(None), T0 + 1).await.unwrap();
            store.enqueue(&notice(None), T0 + 2).await.unwrap();
            let two = store
                .claim_due_notifications(now + 60 * SEC, 1, LEASE)
                .await
                .unwrap();
            assert_eq!(two.len(), 1);
            assert!(two[0].id > d.id);

            // A delivered message is never claimed again.
            store
                .record_delivery(
                    d.id,
                    now + 30 * SEC,
                    &Attempt::Ok {
                        status: Some(200),
                        detail: "HTTP 200".into(),
                    },
                )
                .await
                .unwrap();
            let later = store
                .claim_due_notifications(now + 10 * LEASE, 10, LEASE)
                .await
                .unwrap();
            assert_eq!(later.len(), 2);
            assert!(later.iter().all(|l| l.id != d.id));
            let sent = store.notification(d.id).await.unwrap().unwrap();
            assert_eq!(sent.notification.state, NotificationState::Sent);
            assert_eq!(sent.notification.sent_at, Some(ts(now + 30 * SEC)));
            assert_eq!(sent.notification.next_attempt_at, None);
            assert_eq!(sent.notification.last_error, None);
            let log: Vec<(bool, Option<u16>)> =
                sent.attempts.iter().map(|a| (a.ok, a.status)).collect();
            assert_eq!(log, [(false, Some(500)), (true, Some(200))]);

            // A disabled channel's queued messages wait.
            let mut channel = store.list_channels().await.unwrap().remove(0);
            channel.enabled = false;
            store
                .update_channel(
                    channel.id,
                    &UpdateChannel {
                        name: channel.name,
                        kind: channel.kind,
                        site: channel.site,
                        url: channel.url,
                        chat_id: channel.chat_id,
                        secret: None,
                        clear_secret: false,
                        enabled: false,
                    },
                    now,
                    "test",
                )
                .await
                .unwrap();
            assert!(
                store
                    .claim_due_notifications(now + 100 * LEASE, 10, LEASE)
                    .await
                    .unwrap()
                    .is_empty()
            );
        })
        .await;
    }

    #[tokio::test]
    async fn failures_back_off_doubling_until_the_last_attempt() {
        each_backend(|store| async move {
            one_queued(&store).await;
            let mut now = T0;
            let mut waits = Vec::new();
            for attempt in 1..=MAX_ATTEMPTS {
                let claimed = store.claim_due_notifications(now, 10, LEASE).await.unwrap();
                assert_eq!(claimed.len(), 1, "attempt {attempt}");
                // The first time the receiver asks for 5 min, longer than the
                // backoff, and gets it; the third time for 90 s, shorter than the
                // 2 min backoff, which wins.
                let retry_after = match attempt {
                    1 => Some(Duration::from_secs(300)),
                    3 => Some(Duration::from_secs(90)),
                    _ => None,
                };
                store
                    .record_delivery(claimed[0].id, now, &error(Some(503), retry_after, false))
                    .await
                    .unwrap();
                let view = store
                    .notification(claimed[0].id)
                    .await
                    .unwrap()
                    .unwrap()
                    .notification;
                assert_eq!(view.attempts, attempt);
                if attempt < MAX_ATTEMPTS {
                    assert_eq!(view.state, NotificationState::Pending);
                    let next = view.next_attempt_at.unwrap().timestamp_millis();
                    assert!(
                        store
                            .claim_due_notifications(next - 1, 10, LEASE)
                            .await
                            .unwrap()
                            .is_empty()
                    );
                    waits.push((next - now) / SEC);
                    now = next;
                } else {
                    assert_eq!(view.state, NotificationState::Failed);
                    assert_eq!(view.next_attempt_at, None);
                    assert_eq!(view.last_error.as_deref(), Some("HTTP Some(503)"));
                }
            }
            assert_eq!(waits, [300, 60, 120, 240, 480, 960, 1920]);
            assert!(
                store
                    .claim_due_notifications(now + 1_000 * LEASE, 10, LEASE)
                    .await
                    .unwrap()
                    .is_empty()
            );
            assert_eq!(backoff(8), Duration::from_secs(3600), "capped at an hour");
            assert_eq!(backoff(40), MAX_RETRY);
        })
        .await;
    }

    #[tokio::test]
    async fn permanent_failures_are_given_up_at_once_and_errors_are_truncated() {
        each_backend(|store| async move {
            one_queued(&store).await;
            let d = store
                .claim_due_notifications(T0, 10, LEASE)
                .await
                .unwrap()
                .remove(0);
            let long = "ошибка ".repeat(1000);
            let attempt = Attempt::Error {
                status: Some(400),
                detail: long,
                retry_after: None,
                permanent: true,
            };
            store.record_delivery(d.id, T0, &attempt).await.unwrap();
            let detail = store.notification(d.id).await.unwrap().unwrap();
            assert_eq!(detail.notification.state, NotificationState::Failed);
            assert_eq!(detail.notification.attempts, 1);
            assert_eq!(detail.attempts.len(), 1);
            assert!(detail.attempts[0].detail.len() <= MAX_DETAIL + '…'.len_utf8());
            assert!(detail.attempts[0].detail.ends_with('…'));
            assert!(
                store
                    .claim_due_notifications(T0 + 100 * LEASE, 10, LEASE)
                    .await
                    .unwrap()
                    .is_empty()
            );

            // The log filters by state; deferring puts a message back without an attempt.
            store.enqueue(&notice(None), T0).await.unwrap();
            let d2 = store
                .claim_due_notifications(T0, 10, LEASE)
                .await
                .unwrap()
                .remove(0);
            store
                .defer_notifications(&[d2.id], T0 + 45 * SEC)
                .await
                .unwrap();
            assert!(
                store
                    .claim_due_notifications(T0 + 44 * SEC, 10, LEASE)
                    .await
                    .unwrap()
                    .is_empty()
            );
            assert_eq!(
                store
                    .claim_due_notifications(T0 + 45 * SEC, 10, LEASE)
                    .await
                    .unwrap()[0]
                    .attempts,
                0
            );
            let failed = store
                .notifications(&NotificationQuery {
                    state: Some(NotificationState::Failed),
                    ..Default::default()
                })
                .await
                .unwrap();
            assert_eq!(
                failed.items.iter().map(|n| n.id).collect::<Vec<_>>(),
                [d.id]
            );

            // A message whose channel was deleted while it was being sent is gone.
            store
                .delete_channel(d2.channel_id, T0, "test")
                .await
                .unwrap();
            store
                .record_delivery(d2.id, T0, &error(None, None, false))
                .await
                .unwrap();
            assert!(store.notification(d2.id).await.unwrap().is_none());
        })
        .await;
    }

    #[tokio::test]
    async fn channels_are_validated_and_keep_their_secret() {
        each_backend(|store| async move {
            let telegram = CreateChannel {
                name: "shop chat".into(),
                kind: ChannelKind::Telegram,
                site: Some("Store A".into()),
                url: "https://api.telegram.org".into(),
                chat_id: Some("-100123".into()),
                secret: Some("123456:bot-token-secret".into()),
                enabled: true,
            };
            let invalid = |mut change: Box<dyn FnMut(&mut CreateChannel)>| {
                let mut body = telegram.clone();
                change(&mut body);
                let store = store.clone();
                async move {
                    match store.create_channel(&body, T0, "test").await {
                        Err(Error::Invalid(m)) => m,
                        other => panic!("expected Invalid, got {other:?}"),
                    }
                }
            };
            assert!(
                invalid(Box::new(|b| b.url = "ftp://x".into()))
                    .await
                    .contains("http:// or https://")
            );
            assert!(
                invalid(Box::new(|b| b.url = "https:///path".into()))
                    .await
                    .contains("no host")
            );
            assert!(
                invalid(Box::new(|b| b.url = "https://h:99999".into()))
                    .await
                    .contains("port")
            );
            assert!(
                invalid(Box::new(|b| b.chat_id = None))
                    .await
                    .contains("chat_id")
            );
            assert!(
                invalid(Box::new(|b| b.secret = None))
                    .await
                    .contains("bot token")
            );
            assert!(
                invalid(Box::new(|b| b.secret = Some("a/b".into())))
                    .await
                    .contains("may not contain")
            );
            assert!(
                invalid(Box::new(|b| b.name = " ".into()))
                    .await
                    .contains("channel name")
            );
            let m = invalid(Box::new(|b| b.secret = Some("has space".into()))).await;
            assert!(!m.contains("has space"), "{m}");
            assert!(
                invalid(Box::new(|b| {
                    b.kind = ChannelKind::Webhook;
                }))
                .await
                .contains("webhooks have no chat_id")
            );

            let view = store
                .create_channel(&telegram, T0, "token admin")
                .await
                .unwrap();
            assert!(view.has_secret);
            assert_eq!(view.site.as_deref(), Some("Store A"));
            assert!(matches!(
                store.create_channel(&telegram, T0, "test").await,
                Err(Error::Conflict(_))
            ));

            // An update without a secret keeps it; Telegram cannot lose it.
            let update = UpdateChannel {
                name: "shop chat".into(),
                kind: ChannelKind::Telegram,
                site: None,
                url: "https://api.telegram.org/".into(),
                chat_id: Some("-100999".into()),
                secret: None,
                clear_secret: false,
                enabled: true,
            };
            let v = store
                .update_channel(view.id, &update, T0, "test")
                .await
                .unwrap();
            assert_eq!(
                (v.has_secret, v.site, v.chat_id.as_deref()),
                (true, None, Some("-100999"))
            );
            let cleared = UpdateChannel {
                clear_secret: true,
                ..update.clone()
            };
            assert!(matches!(
                store.update_channel(view.id, &cleared, T0, "test").await,
                Err(Error::Invalid(_))
            ));
            let hook = UpdateChannel {
                kind: ChannelKind::Webhook,
                url: "http://user:pw@hooks.example.com:8080/x".into(),
                chat_id: None,
                ..cleared
            };
            let v = store
                .update_channel(view.id, &hook, T0, "test")
                .await
                .unwrap();
            assert!(!v.has_secret);
            assert_eq!(v.url, "http://user:***@hooks.example.com:8080/x");
            let claimed = {
                store.enqueue_test(view.id, T0, "test").await.unwrap();
                store.claim_due_notifications(T0, 10, LEASE).await.unwrap()
            };
            assert_eq!(claimed[0].secret, None);
            assert_eq!(claimed[0].event, "test");
            assert!(
                !format!("{:?}", claimed[0]).contains("pw@"),
                "Debug shows no URL"
            );

            let audit = store.audit_log(&AuditQuery::default()).await.unwrap();
            let text = serde_json::to_string(&audit).unwrap();
            assert!(
                text.contains("channel.create")
                    && text.contains("channel.update")
                    && text.contains("channel.test")
            );
            assert!(!text.contains("bot-token-secret"), "{text}");
            assert!(matches!(
                store.delete_channel(view.id + 100, T0, "test").await,
                Err(Error::NotFound(_))
            ));
            store.delete_channel(view.id, T0, "test").await.unwrap();
            assert!(store.list_channels().await.unwrap().is_empty());
        })
        .await;
    }
}
