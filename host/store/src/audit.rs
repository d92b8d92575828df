//! Reading the audit log. Entries are written by every changing store function, in
//! the same transaction as the change (the `audit!` macro).

use posup_proto::api::{AuditEntry, AuditQuery};

use crate::sql::Sql;
use crate::{Result, Store, ts};

#[derive(sqlx::FromRow)]
struct Row {
    id: i64,
    at: i64,
    actor: String,
    action: String,
    object: String,
    object_id: String,
    detail: String,
}

impl Store {
    /// Entries newest first.
    pub async fn audit_log(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>> {
        let mut sql = Sql::new(
            "SELECT id, at, actor, action, object, object_id, detail FROM audit WHERE 1 = 1",
        );
        if let Some(before) = query.before {
            sql.push(" AND id < ").bind(before);
        }
        if let Some(object) = &query.object {
            sql.push(" AND object = ").bind(object.as_str());
        }
        let limit = i64::from(query.limit.unwrap_or(100).clamp(1, 1000));
        sql.push(" ORDER BY id DESC LIMIT ").bind(limit);
        let rows: Vec<Row> = with_read!(self, pool => {
            bind_all!(sqlx::query_as::<_, Row>(&sql.text), sql.args).fetch_all(pool).await?
        });
        Ok(rows
            .into_iter()
            .map(|r| AuditEntry {
                id: r.id,
                at: ts(r.at),
                actor: r.actor,
                action: r.action,
                object: r.object,
                object_id: r.object_id,
                detail: serde_json::from_str(&r.detail)
                    .unwrap_or(serde_json::Value::String(r.detail)),
            })
            .collect())
    }
}
