//! The posup server's database.
//!
//! One [`Store`] speaks to either SQLite (the embedded default: one file in the data
//! directory) or PostgreSQL (several server replicas sharing one database). Both
//! backends run the same schema from their own migration folder
//! (`migrations/sqlite`, `migrations/postgres`) and the same SQL text: statements
//! use `$n` placeholders, which both drivers bind by number, and only portable SQL.
//! Each query is written once inside [`with_read!`]/[`with_write!`], which expand it
//! for both pools so it is type-checked against both drivers.
//!
//! **Invariant:** the store holds no state of its own beyond its pools, so any
//! number of server processes may share one PostgreSQL database. Time is always
//! passed in ([`At`]), never read here, so callers decide what "now" is.
//!
//! **Boundary:** the store returns the wire types of `posup-proto` and an
//! [`Error`] that never carries SQL text meant for clients.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

#[macro_use]
mod macros;
mod sql;

mod accounts;
mod audit;
mod device_types;
mod devices;
mod enrollment;
mod gates;
mod generations;
mod groups;
mod metrics;
mod notifications;
mod plugins;
mod policy;
mod rollouts;
mod tasks;
mod tokens;
mod tuf;
mod variables;
mod versions;

pub mod lifecycle;
pub mod version;

#[cfg(feature = "test-support")]
pub mod testing;

pub use accounts::{
    AccountView, Failure, LOCK_MS, LoginAccount, MAX_FAILED_LOGINS, NewAccount, SessionAccount,
};
pub use device_types::DeviceTypeConfig;
pub use devices::{DeviceAuth, InventoryReport, MAX_INVENTORIES_AT_ONCE};
pub use enrollment::Enrollment;
pub use gates::{Asking, MAX_CLAIMS_AT_ONCE, PollActions, PollParts, UngatedClaim};
pub use generations::Generations;
pub use metrics::FleetCounts;
pub use notifications::{Attempt, Delivery, FIRST_RETRY, MAX_ATTEMPTS, MAX_RETRY, Notice, backoff};
pub use plugins::{NewPackage, NewPlugin, Removal};
pub use rollouts::{NOTICE, RolloutCommand, Ticked};
pub use tasks::{MAX_REPORTS_AT_ONCE, Recorded};
pub use tokens::TokenIdentity;
pub use tuf::TufFile;
pub use variables::{IGNORE_VERSION_CHECK, LANGUAGE, VarTarget};

/// Which database a [`Store`] uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        })
    }
}

#[derive(Clone)]
pub(crate) enum Db {
    /// SQLite allows one writer at a time. Writes go through a one-connection pool so
    /// they queue in the process instead of failing with "database is locked";
    /// reads use their own pool and see the latest commit through WAL.
    Sqlite {
        read: SqlitePool,
        write: SqlitePool,
    },
    Postgres(PgPool),
}

/// The server's database. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    pub(crate) db: Db,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend())
            .finish()
    }
}

/// What went wrong in the store. Messages of `NotFound`, `Conflict`, `Invalid`,
/// `Unauthorized` and `Forbidden` name the object and are meant for clients; `Database`, `Migrate` and `Corrupt`
/// are for the server log only.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    /// A credential was refused (an enrollment token unknown, expired, used up).
    #[error("{0}")]
    Unauthorized(String),
    /// A credential is valid but not for this (an enrollment token of another site).
    #[error("{0}")]
    Forbidden(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored data is damaged: {0}")]
    Corrupt(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The moment a query runs at, and the contact time from which a device counts as
/// online.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct At {
    /// Unix milliseconds.
    pub now: i64,
    /// Devices whose last contact is at or after this (Unix milliseconds) are online.
    pub online_since: i64,
}

impl At {
    pub fn new(now: DateTime<Utc>, offline_after: Duration) -> At {
        let now = now.timestamp_millis();
        At {
            now,
            online_since: now - offline_after.as_millis() as i64,
        }
    }
}

/// Connection settings.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Connections of the PostgreSQL pool, or of the SQLite read pool.
    pub max_connections: u32,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            max_connections: 16,
        }
    }
}

impl Store {
    /// Opens the database at `url` (`sqlite://<file>` or `postgres://…`), creating a
    /// SQLite file when missing, and brings its schema up to date.
    pub async fn connect(url: &str, options: &StoreOptions) -> Result<Store> {
        if is_postgres_url(url) {
            let opts = PgConnectOptions::from_str(url)?;
            Self::connect_postgres(opts, options).await
        } else if url.starts_with("sqlite:") {
            let opts = SqliteConnectOptions::from_str(url)?;
            Self::connect_sqlite(opts, options).await
        } else {
            Err(Error::Invalid(format!(
                "database URL `{}` is neither sqlite:… nor postgres://…",
                redact(url)
            )))
        }
    }

    /// Opens (creating) a SQLite database file and migrates it.
    pub async fn open_sqlite_file(path: &std::path::Path, options: &StoreOptions) -> Result<Store> {
        Self::connect_sqlite(SqliteConnectOptions::new().filename(path), options).await
    }

    pub async fn connect_sqlite(
        opts: SqliteConnectOptions,
        options: &StoreOptions,
    ) -> Result<Store> {
        let opts = opts
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // With WAL, NORMAL loses at most the last transactions on power loss, never
            // consistency; FULL would fsync on every poll's write.
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            // A statement touching many pages (a group of reports) keeps their
            // originals in a statement journal; past 64 KiB SQLite would spill it
            // to a temporary file, a disk write per page. Kept in memory, it is
            // bounded by what one statement touches; a temporary sort holds at
            // most a query's rows, the fleet's size.
            .pragma("temp_store", "memory")
            // A checkpoint copies each page changed since the last one back to
            // the database: an update's writes touch the same few hot pages, so
            // a longer log (16 MB instead of 4) copies them less often.
            .pragma("wal_autocheckpoint", "4000")
            .busy_timeout(Duration::from_secs(30));
        // A pool tests a connection before each use by default: for SQLite a
        // round trip to the connection's thread that finds nothing (the file is
        // in this process), on every statement outside a transaction.
        let write = SqlitePoolOptions::new()
            .max_connections(1)
            .test_before_acquire(false)
            .connect_with(opts.clone())
            .await?;
        sqlx::migrate!("./migrations/sqlite").run(&write).await?;
        let read = SqlitePoolOptions::new()
            .max_connections(options.max_connections.max(1))
            .test_before_acquire(false)
            .connect_with(opts)
            .await?;
        Ok(Store {
            db: Db::Sqlite { read, write },
        })
    }

    pub async fn connect_postgres(opts: PgConnectOptions, options: &StoreOptions) -> Result<Store> {
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections.max(2))
            .connect_with(opts)
            .await?;
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        let autovacuum: String = sqlx::query_scalar("SHOW autovacuum")
            .fetch_one(&pool)
            .await?;
        if let Some(warning) = autovacuum_warning(&autovacuum) {
            tracing::warn!("{warning}");
        }
        Ok(Store {
            db: Db::Postgres(pool),
        })
    }

    pub fn backend(&self) -> Backend {
        match self.db {
            Db::Sqlite { .. } => Backend::Sqlite,
            Db::Postgres(_) => Backend::Postgres,
        }
    }

    /// Tells PostgreSQL's planner of `rows` just written to `table` at once,
    /// when they are many: autovacuum notices only after its next nap (a
    /// minute by default), and until then a new rollout's 100 000 parts are
    /// planned for as the table was, empty, and read whole where a handful
    /// would do. SQLite plans without such statistics.
    pub(crate) async fn analyze_after(&self, table: &'static str, rows: u64) -> Result<()> {
        if let Db::Postgres(pool) = &self.db
            && rows >= ANALYZE_AFTER_ROWS
        {
            sqlx::query(&format!("ANALYZE {table}"))
                .execute(pool)
                .await?;
        }
        Ok(())
    }

    /// Closes every connection; waits for running queries.
    pub async fn close(&self) {
        match &self.db {
            Db::Sqlite { read, write } => {
                read.close().await;
                write.close().await;
            }
            Db::Postgres(pool) => pool.close().await,
        }
    }
}

/// Whether a database URL names PostgreSQL (`postgres://` or `postgresql://`).
pub fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// The URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// Unix milliseconds to a timestamp.
pub(crate) fn ts(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

/// A stored time that may be unset (0).
pub(crate) fn ts_opt(ms: i64) -> Option<DateTime<Utc>> {
    (ms != 0).then(|| ts(ms))
}

pub(crate) fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("wire types serialize")
}

pub(crate) fn from_json<T: serde::de::DeserializeOwned>(text: &str, what: &str) -> Result<T> {
    serde_json::from_str(text).map_err(|e| Error::Corrupt(format!("{what}: {e}")))
}

/// `s` cut to at most `max` bytes at a character boundary, marked with `…` when
/// cut: agent messages and receivers' answers are stored bounded.
pub(crate) fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Page number and size from a query, with the defaults and the upper bound every
/// listing shares.
pub(crate) fn paging(page: Option<u32>, per_page: Option<u32>) -> (u32, u32) {
    (
        page.unwrap_or(1).max(1),
        per_page.unwrap_or(50).clamp(1, 1000),
    )
}

/// Rows written to a table at once from which [`Store::analyze_after`]
/// refreshes its statistics.
const ANALYZE_AFTER_ROWS: u64 = 1000;

/// What an operator is told when PostgreSQL runs without autovacuum
/// (`SHOW autovacuum` gave `setting`): a rollout rewrites every part of its
/// fleet several times, and without it neither the dead rows nor the
/// planner's statistics are kept up, so a large rollout slows down the more
/// it has done.
fn autovacuum_warning(setting: &str) -> Option<String> {
    (setting != "on").then(|| {
        format!(
            "PostgreSQL runs with autovacuum = {setting}: dead rows and the planner's statistics \
             are not kept up, and large rollouts slow down as they go; set autovacuum = on \
             (PostgreSQL's default) or run VACUUM ANALYZE after large changes"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn many_rows_written_at_once_refresh_postgresqls_statistics() {
        let Some(db) = crate::testing::TestDb::postgres().await else {
            return;
        };
        let Db::Postgres(pool) = &db.store.db else {
            unreachable!("a PostgreSQL store")
        };
        // -1: never analyzed (nor vacuumed).
        let tuples = || async {
            sqlx::query_scalar::<_, f32>(
                "SELECT reltuples FROM pg_class WHERE oid = 'task_devices'::regclass",
            )
            .fetch_one(pool)
            .await
            .unwrap()
        };
        let fresh = tuples().await;
        assert_eq!(fresh, -1.0, "a fresh schema's parts were never analyzed");
        db.store
            .analyze_after("task_devices", ANALYZE_AFTER_ROWS - 1)
            .await
            .unwrap();
        assert_eq!(tuples().await, fresh, "a few rows leave it to autovacuum");
        db.store
            .analyze_after("task_devices", ANALYZE_AFTER_ROWS)
            .await
            .unwrap();
        assert_eq!(tuples().await, 0.0, "analyzed: the table is known empty");
        db.cleanup().await;
    }

    #[test]
    fn postgresql_without_autovacuum_is_named() {
        assert_eq!(autovacuum_warning("on"), None);
        let w = autovacuum_warning("off").unwrap();
        assert!(
            w.contains("autovacuum = off") && w.contains("set autovacuum = on"),
            "{w}"
        );
    }

    /// A group of reports is one statement touching many pages; its statement
    /// journal spilled to a temporary file was a disk write per page.
    #[tokio::test]
    async fn sqlite_keeps_statement_journals_and_temporary_tables_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sqlite_file(
            &dir.path().join("posup.db"),
            &StoreOptions { max_connections: 2 },
        )
        .await
        .unwrap();
        let Db::Sqlite { read, write } = &store.db else {
            unreachable!("a SQLite store")
        };
        for (name, pool) in [("read", read), ("write", write)] {
            let temp_store: i64 = sqlx::query_scalar("PRAGMA temp_store")
                .fetch_one(pool)
                .await
                .unwrap();
            assert_eq!(temp_store, 2, "temp_store of the {name} connections");
        }
    }

    #[test]
    fn redact_hides_the_password_only() {
        assert_eq!(
            redact("postgres://app:s3cret@db:5432/posup"),
            "postgres://app:***@db:5432/posup"
        );
        assert_eq!(redact("postgres://app@db/posup"), "postgres://app@db/posup");
        assert_eq!(redact("sqlite://x.db"), "sqlite://x.db");
    }
}
