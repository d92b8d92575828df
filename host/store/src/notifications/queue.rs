//! The queue: messages enqueued per channel, claimed under a lease, their
//! attempts recorded and retried with backoff.

use posup_proto::notify::NotificationView;
use serde_json::json;

use crate::sql::Sql;
use crate::truncate;
use crate::{Error, Result, Store, ts};

use super::{Attempt, Delivery, MAX_ATTEMPTS, MAX_DETAIL, MAX_RETRY, Notice, backoff, parse_kind};

impl Store {
    /// Queues `notice` for its channels in a transaction of its own; returns how
    /// many messages were queued (0 when no enabled channel hears about it).
    pub async fn enqueue(&self, notice: &Notice<'_>, now: i64) -> Result<u64> {
        if notice.event.trim().is_empty() || notice.subject.trim().is_empty() {
            return Err(Error::Invalid(
                "a notification needs an event and a subject".into(),
            ));
        }
        with_write!(self, pool => {
            let mut tx = pool.begin().await?;
            let queued = notify!(&mut *tx, now, notice);
            tx.commit().await?;
            Ok(queued)
        })
    }

    /// Queues an event `test` message to one channel only, to check its settings.
    pub async fn enqueue_test(&self, id: i64, now: i64, actor: &str) -> Result<NotificationView> {
        let notification = with_write!(self, pool => {
            let mut tx = pool.begin().await?;
            let row: Option<(String, Option<String>, bool)> =
                sqlx::query_as("SELECT name, site, enabled FROM channels WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await?;
            let Some((name, site, enabled)) = row else {
                return Err(Error::NotFound(format!("channel {id} does not exist")));
            };
            if !enabled {
                return Err(Error::Conflict(format!(
                    "channel {name} is disabled and would not send the test: enable it first"
                )));
            }
            let body = format!(
                "This is a test message from the posup server to channel {name}. \
                 If you can read it, the channel works."
            );
            let notification: i64 = sqlx::query_scalar(
                "INSERT INTO notifications (channel_id, event, site, subject, body, state, attempts, next_attempt_at, lease_until, created_at) \
                 VALUES ($1, 'test', $2, $3, $4, 'pending', 0, $5, 0, $5) RETURNING id",
            )
            .bind(id)
            .bind(site)
            .bind("posup test message")
            .bind(body)
            .bind(now)
            .fetch_one(&mut *tx)
            .await?;
            audit!(&mut *tx, now, actor, "channel.test", "channel", id,
                json!({"name": name, "notification_id": notification}));
            tx.commit().await?;
            notification
        });
        self.notification_view(notification).await?.ok_or_else(|| {
            Error::NotFound(format!(
                "notification {notification} vanished while being queued"
            ))
        })
    }

    /// Leases up to `limit` due messages (pending, `next_attempt_at <= now`, lease
    /// run out, channel enabled) for `lease_ms` and returns them. A message another
    /// replica claimed at the same moment is not returned.
    pub async fn claim_due_notifications(
        &self,
        now: i64,
        limit: u32,
        lease_ms: i64,
    ) -> Result<Vec<Delivery>> {
        // The outer conditions are checked again on each row as it is locked, so of
        // two replicas claiming the same row, the second one updates nothing.
        let ids: Vec<i64> = with_write!(self, pool => {
            sqlx::query_scalar(
                "UPDATE notifications SET lease_until = $2 WHERE id IN (\
                   SELECT n.id FROM notifications n JOIN channels c ON c.id = n.channel_id \
                   WHERE n.state = 'pending' AND n.next_attempt_at <= $1 AND n.lease_until < $1 AND c.enabled \
                   ORDER BY n.next_attempt_at, n.id LIMIT $3) \
                 AND state = 'pending' AND next_attempt_at <= $1 AND lease_until < $1 RETURNING id",
            )
            .bind(now)
            .bind(now.saturating_add(lease_ms.max(1)))
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await?
        });
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut select = Sql::new(
            "SELECT n.id, n.channel_id, c.name AS channel_name, c.kind, c.url, c.chat_id, c.secret, n.event, n.site, \
             n.rollout_id, n.task_id, n.subject, n.body, n.attempts, n.created_at \
             FROM notifications n JOIN channels c ON c.id = n.channel_id WHERE n.id IN (",
        );
        select.bind_list(&ids);
        select.push(") ORDER BY n.next_attempt_at, n.id");
        #[derive(sqlx::FromRow)]
        struct Row {
            id: i64,
            channel_id: i64,
            channel_name: String,
            kind: String,
            url: String,
            chat_id: Option<String>,
            secret: Option<String>,
            event: String,
            site: Option<String>,
            rollout_id: Option<i64>,
            task_id: Option<i64>,
            subject: String,
            body: String,
            attempts: i64,
            created_at: i64,
        }
        let rows: Vec<Row> = with_write!(self, pool => {
            bind_all!(sqlx::query_as::<_, Row>(&select.text), select.args).fetch_all(pool).await?
        });
        rows.into_iter()
            .map(|r| {
                Ok(Delivery {
                    id: r.id,
                    channel_id: r.channel_id,
                    channel_name: r.channel_name,
                    kind: parse_kind(&r.kind)?,
                    url: r.url,
                    chat_id: r.chat_id,
                    secret: r.secret,
                    event: r.event,
                    site: r.site,
                    rollout_id: r.rollout_id,
                    task_id: r.task_id,
                    subject: r.subject,
                    body: r.body,
                    attempts: r.attempts.clamp(0, i64::from(u32::MAX)) as u32,
                    created_at: ts(r.created_at),
                })
            })
            .collect()
    }

    /// Records one attempt at a claimed message and releases its lease: delivered
    /// messages are `sent`; failed ones are tried again after [`backoff`] (or the
    /// receiver's `retry_after`, when longer, up to [`MAX_RETRY`]), or `failed`
    /// when the failure is permanent or the [`MAX_ATTEMPTS`]th. A message whose
    /// channel was deleted meanwhile is gone and nothing is recorded.
    pub async fn record_delivery(&self, id: i64, now: i64, attempt: &Attempt) -> Result<()> {
        let (ok, status, detail) = match attempt {
            Attempt::Ok { status, detail } => (true, *status, truncate(detail, MAX_DETAIL)),
            Attempt::Error { status, detail, .. } => (false, *status, truncate(detail, MAX_DETAIL)),
        };
        with_write!(self, pool => {
            let mut tx = pool.begin().await?;
            match attempt {
                Attempt::Ok { .. } => {
                    sqlx::query(
                        "UPDATE notifications SET state = 'sent', sent_at = $2, lease_until = 0, last_error = NULL \
                         WHERE id = $1 AND state = 'pending'",
                    )
                    .bind(id)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                }
                Attempt::Error { retry_after, permanent, .. } => {
                    // Counting first and deciding after keeps the count right when
                    // two attempts at one message are recorded at once.
                    let attempts: Option<i64> = sqlx::query_scalar(
                        "UPDATE notifications SET attempts = attempts + 1, last_error = $2, lease_until = 0 \
                         WHERE id = $1 AND state = 'pending' RETURNING attempts",
                    )
                    .bind(id)
                    .bind(&detail)
                    .fetch_optional(&mut *tx)
                    .await?;
                    if let Some(attempts) = attempts {
                        let attempts = attempts.clamp(0, i64::from(u32::MAX)) as u32;
                        if *permanent || attempts >= MAX_ATTEMPTS {
                            sqlx::query("UPDATE notifications SET state = 'failed' WHERE id = $1")
                                .bind(id)
                                .execute(&mut *tx)
                                .await?;
                        } else {
                            let wait = retry_after.unwrap_or_default().min(MAX_RETRY).max(backoff(attempts));
                            sqlx::query("UPDATE notifications SET next_attempt_at = $2 WHERE id = $1")
                                .bind(id)
                                .bind(now.saturating_add(wait.as_millis() as i64))
                                .execute(&mut *tx)
                                .await?;
                        }
                    }
                }
            }
            sqlx::query(
                "INSERT INTO notification_attempts (notification_id, at, ok, status, detail) \
                 SELECT id, $2, $3, $4, $5 FROM notifications WHERE id = $1",
            )
            .bind(id)
            .bind(now)
            .bind(ok)
            .bind(status.map(i64::from))
            .bind(&detail)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
        });
        Ok(())
    }

    /// Puts claimed messages back without an attempt, to be tried no earlier than
    /// `until` (Unix ms): the sender skips the rest of a channel's messages after
    /// one could not be delivered, so the receiver is not pressed while it is down
    /// or rate-limiting, and the messages keep their order.
    pub async fn defer_notifications(&self, ids: &[i64], until: i64) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut sql = Sql::new(
            "UPDATE notifications SET lease_until = 0, next_attempt_at = CASE WHEN next_attempt_at < ",
        );
        sql.bind(until).push(" THEN ").bind(until);
        sql.push(" ELSE next_attempt_at END WHERE state = 'pending' AND id IN (");
        sql.bind_list(ids);
        sql.push(")");
        with_write!(self, pool => {
            bind_all!(sqlx::query(&sql.text), sql.args).execute(pool).await?;
        });
        Ok(())
    }
}
