//! The macros that write a query once for both backends.
//!
//! `with_read!(store, pool => body)` and `with_write!(store, pool => body)` expand
//! `body` twice, once with `pool` a `SqlitePool` and once a `PgPool`, so the same
//! statement is compiled (and its row types checked) against both drivers. Generic
//! functions over `sqlx::Database` would need a wall of bounds repeated on every
//! function; the expansion keeps the code plain.

/// Runs `$body` with `$pool` bound to the pool for reads.
macro_rules! with_read {
    ($store:expr, $pool:ident => $body:expr) => {
        match &$store.db {
            $crate::Db::Sqlite { read: $pool, .. } => $body,
            $crate::Db::Postgres($pool) => $body,
        }
    };
}

/// Runs `$body` with `$pool` bound to the pool for writes (and reads that must see
/// the transaction's own writes).
macro_rules! with_write {
    ($store:expr, $pool:ident => $body:expr) => {
        match &$store.db {
            $crate::Db::Sqlite { write: $pool, .. } => $body,
            $crate::Db::Postgres($pool) => $body,
        }
    };
}

/// Binds every [`crate::sql::Arg`] of a built statement, in order.
macro_rules! bind_all {
    ($query:expr, $args:expr) => {{
        let mut q = $query;
        for arg in $args.iter() {
            q = match arg {
                $crate::sql::Arg::I64(v) => q.bind(*v),
                $crate::sql::Arg::Text(v) => q.bind(v.clone()),
                $crate::sql::Arg::OptText(v) => q.bind(v.clone()),
                $crate::sql::Arg::OptI64(v) => q.bind(*v),
                $crate::sql::Arg::Bool(v) => q.bind(*v),
            };
        }
        q
    }};
}

/// Appends an entry to the audit log inside the caller's transaction.
macro_rules! audit {
    ($ex:expr, $now:expr, $actor:expr, $action:expr, $object:expr, $object_id:expr, $detail:expr) => {
        sqlx::query(
            "INSERT INTO audit (at, actor, action, object, object_id, detail) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind($now)
        .bind(($actor).to_string())
        .bind($action)
        .bind($object)
        .bind(($object_id).to_string())
        .bind(($detail).to_string())
        .execute($ex)
        .await?
    };
}

/// Adds devices to a static group inside a transaction, refusing unknown devices by
/// id. Devices already in the group stay.
macro_rules! add_members {
    ($tx:expr, $group:expr, $devices:expr) => {
        for device in $devices.iter() {
            let exists: Option<i64> = sqlx::query_scalar("SELECT id FROM devices WHERE id = $1")
                .bind(*device)
                .fetch_optional(&mut **$tx)
                .await?;
            if exists.is_none() {
                return Err($crate::Error::Invalid(format!("device {device} does not exist")));
            }
            sqlx::query(
                "INSERT INTO group_members (group_id, device_id) VALUES ($1, $2) ON CONFLICT (group_id, device_id) DO NOTHING",
            )
            .bind($group)
            .bind(*device)
            .execute(&mut **$tx)
            .await?;
        }
    };
}

/// Grows a generation counter inside the caller's transaction, telling every server
/// process to drop what it cached of that kind (`devices` or `tasks`).
macro_rules! bump {
    ($ex:expr, $name:expr) => {
        sqlx::query("UPDATE generations SET value = value + 1 WHERE name = $1")
            .bind($name)
            .execute($ex)
            .await?
    };
}

/// Queues a message for every enabled channel that should hear about it, inside the
/// caller's transaction, so a message exists exactly when the change it reports
/// was committed: `notify!(&mut *tx, now_ms, &Notice { .. })` with a
/// [`crate::notifications::Notice`]. A notice about a site goes to that site's
/// channels and to the tenant-wide ones (no site); a notice about no site only to
/// the tenant-wide ones. Evaluates to the number of messages queued (`u64`).
macro_rules! notify {
    ($ex:expr, $now:expr, $notice:expr) => {{
        let notice: &$crate::notifications::Notice<'_> = $notice;
        let now: i64 = $now;
        sqlx::query($crate::notifications::ENQUEUE)
            .bind(notice.event)
            .bind(notice.site)
            .bind(notice.rollout_id)
            .bind(notice.task_id)
            .bind(notice.subject)
            .bind(notice.body)
            .bind(now)
            .execute($ex)
            .await?
            .rows_affected()
    }};
}

/// Runs one page's `SELECT` (rows of type `$row`) and the `count(*)` of all its
/// rows, both built with [`crate::sql::Sql`]; gives `(rows, total)`.
macro_rules! fetch_page {
    ($store:expr, $row:ty, $select:expr, $count:expr) => {
        with_read!($store, pool => {
            let rows = bind_all!(sqlx::query_as::<_, $row>(&$select.text), $select.args).fetch_all(pool).await?;
            let total = bind_all!(sqlx::query_scalar::<_, i64>(&$count.text), $count.args).fetch_one(pool).await?;
            (rows, total)
        })
    };
}
