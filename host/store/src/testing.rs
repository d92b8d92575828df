//! Test harness: runs a test body against a fresh SQLite database and a fresh
//! PostgreSQL schema, then removes both.
//!
//! PostgreSQL is reached at `POSUP_TEST_PG` (default
//! `postgres://postgres@127.0.0.1:5432/test`). When it cannot be reached the
//! PostgreSQL half is skipped with a message — unless the `CI` environment variable
//! is set, where an unreachable database fails the test.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::str::FromStr;

use futures::FutureExt;
use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection};

use crate::{Backend, Store, StoreOptions};

/// The maintenance database tests create their schemas in.
pub fn postgres_url() -> String {
    std::env::var("POSUP_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// A fresh database for one test. Call [`TestDb::cleanup`] when done
/// ([`each_backend`] does).
pub struct TestDb {
    pub store: Store,
    cleanup: Cleanup,
}

enum Cleanup {
    Sqlite(tempfile::TempDir),
    Postgres { schema: String },
}

impl TestDb {
    pub async fn sqlite() -> TestDb {
        let dir =
            tempfile::tempdir().expect("creating a temporary directory for the test database");
        let store = Store::open_sqlite_file(
            &dir.path().join("posup.db"),
            &StoreOptions { max_connections: 4 },
        )
        .await
        .expect("opening a fresh SQLite database");
        TestDb {
            store,
            cleanup: Cleanup::Sqlite(dir),
        }
    }

    /// A fresh schema in the test PostgreSQL database, or `None` when PostgreSQL
    /// is unreachable outside CI.
    pub async fn postgres() -> Option<TestDb> {
        let url = postgres_url();
        let mut admin = match PgConnection::connect(&url).await {
            Ok(c) => c,
            Err(e) => {
                if std::env::var_os("CI").is_some() {
                    panic!(
                        "PostgreSQL at {} is unreachable and CI is set: {e}",
                        crate::redact(&url)
                    );
                }
                eprintln!(
                    "skipping the PostgreSQL half: {} is unreachable ({e}); start it with \
                     `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`",
                    crate::redact(&url)
                );
                return None;
            }
        };
        let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(&format!("CREATE SCHEMA {schema}"))
            .execute(&mut admin)
            .await
            .expect("creating a test schema");
        admin.close().await.ok();
        let opts = PgConnectOptions::from_str(&url)
            .expect("parsing the PostgreSQL URL")
            .options([("search_path", schema.as_str())]);
        let store = Store::connect_postgres(opts, &StoreOptions { max_connections: 4 })
            .await
            .expect("migrating a fresh PostgreSQL schema");
        Some(TestDb {
            store,
            cleanup: Cleanup::Postgres { schema },
        })
    }

    pub fn backend(&self) -> Backend {
        self.store.backend()
    }

    /// A URL that opens this same database (for code that connects by URL, such as
    /// a whole server under test).
    pub fn url(&self) -> String {
        match &self.cleanup {
            Cleanup::Sqlite(dir) => format!("sqlite://{}", dir.path().join("posup.db").display()),
            Cleanup::Postgres { schema } => {
                let base = postgres_url();
                let sep = if base.contains('?') { '&' } else { '?' };
                format!("{base}{sep}options[search_path]={schema}")
            }
        }
    }

    /// Closes the store and removes its database.
    pub async fn cleanup(self) {
        self.store.close().await;
        match self.cleanup {
            Cleanup::Sqlite(dir) => drop(dir),
            Cleanup::Postgres { schema } => {
                if let Ok(mut admin) = PgConnection::connect(&postgres_url()).await {
                    let _ = sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
                        .execute(&mut admin)
                        .await;
                    admin.close().await.ok();
                }
            }
        }
    }
}

impl TestDb {
    /// A fresh database of `backend`, or `None` for an unreachable PostgreSQL
    /// outside CI.
    pub async fn of(backend: Backend) -> Option<TestDb> {
        match backend {
            Backend::Sqlite => Some(TestDb::sqlite().await),
            Backend::Postgres => TestDb::postgres().await,
        }
    }
}

/// Runs `test` on SQLite, then on PostgreSQL, each with a fresh database that is
/// removed afterwards even when the test panics. A panic names the backend.
pub async fn each_backend<F, Fut>(test: F)
where
    F: Fn(Store) -> Fut,
    Fut: Future<Output = ()>,
{
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let Some(db) = TestDb::of(backend).await else {
            continue;
        };
        let result = AssertUnwindSafe(test(db.store.clone()))
            .catch_unwind()
            .await;
        db.cleanup().await;
        if let Err(panic) = result {
            eprintln!("the test failed on {backend}");
            std::panic::resume_unwind(panic);
        }
    }
}
