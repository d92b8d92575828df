//! The delivery log: messages and their attempts, as operators read them.

use posup_proto::Page;
use posup_proto::notify::{AttemptView, NotificationDetail, NotificationQuery, NotificationView};

use crate::sql::{Cond, Sql};
use crate::{Result, Store, paging, ts};

use super::{NOTIFICATION_SELECT, NotificationRow};

impl Store {
    /// One page of the delivery log, newest first.
    pub async fn notifications(&self, q: &NotificationQuery) -> Result<Page<NotificationView>> {
        let mut cond = Cond::new("1 = 1");
        if let Some(c) = q.channel_id {
            cond.push(" AND n.channel_id = ").bind(c);
        }
        if let Some(s) = q.state {
            cond.push(" AND n.state = ").bind(s.as_str());
        }
        if let Some(e) = &q.event {
            cond.push(" AND n.event = ").bind(e.as_str());
        }
        if let Some(s) = &q.site {
            cond.push(" AND n.site = ").bind(s.as_str());
        }
        if let Some(r) = q.rollout_id {
            cond.push(" AND n.rollout_id = ").bind(r);
        }
        if let Some(t) = q.task_id {
            cond.push(" AND n.task_id = ").bind(t);
        }
        let (page, per_page) = paging(q.page, q.per_page);
        let mut select = Sql::new(&format!("{NOTIFICATION_SELECT} WHERE "));
        select
            .append(&cond)
            .push(" ORDER BY n.id DESC")
            .page(page, per_page);
        let mut count = Sql::new("SELECT count(*) FROM notifications n WHERE ");
        count.append(&cond);
        let (rows, total): (Vec<NotificationRow>, i64) =
            fetch_page!(self, NotificationRow, select, count);
        Ok(Page {
            items: rows
                .into_iter()
                .map(NotificationRow::view)
                .collect::<Result<_>>()?,
            total: total as u64,
            page,
            per_page,
        })
    }

    pub(super) async fn notification_view(&self, id: i64) -> Result<Option<NotificationView>> {
        let row: Option<NotificationRow> = with_read!(self, pool => {
            sqlx::query_as(&format!("{NOTIFICATION_SELECT} WHERE n.id = $1"))
                .bind(id)
                .fetch_optional(pool)
                .await?
        });
        row.map(NotificationRow::view).transpose()
    }

    /// A message with every delivery attempt, oldest first.
    pub async fn notification(&self, id: i64) -> Result<Option<NotificationDetail>> {
        let Some(notification) = self.notification_view(id).await? else {
            return Ok(None);
        };
        let rows: Vec<(i64, bool, Option<i64>, String)> = with_read!(self, pool => {
            sqlx::query_as(
                "SELECT at, ok, status, detail FROM notification_attempts WHERE notification_id = $1 ORDER BY id",
            )
            .bind(id)
            .fetch_all(pool)
            .await?
        });
        Ok(Some(NotificationDetail {
            notification,
            attempts: rows
                .into_iter()
                .map(|(at, ok, status, detail)| AttemptView {
                    at: ts(at),
                    ok,
                    status: status.and_then(|s| u16::try_from(s).ok()),
                    detail,
                })
                .collect(),
        }))
    }
}
