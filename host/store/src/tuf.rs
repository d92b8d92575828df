//! The TUF repository's metadata files, as the server serves them.
//!
//! The store keeps bytes and versions only; what may be published is decided by
//! `posup-trust` before anything is saved. Several server replicas may publish or
//! renew the timestamp at once: a new version is inserted only if its file name
//! is free and the timestamp replaced only if it is still the version the caller
//! read, so one of two racing writers wins and the other gets a conflict and
//! reads again.

use crate::{Error, Result, Store};

/// One metadata file to save.
#[derive(Debug, Clone)]
pub struct TufFile {
    pub role: String,
    pub version: i64,
    /// The file name served (`N.<role>.json`, `timestamp.json`).
    pub name: String,
    pub body: String,
}

impl Store {
    /// The newest version of each role: (role, version, body).
    pub async fn tuf_latest(&self) -> Result<Vec<(String, i64, String)>> {
        Ok(with_read!(self, pool => {
            sqlx::query_as(
                "SELECT m.role, m.version, m.body FROM tuf_metadata m \
                 WHERE m.version = (SELECT max(n.version) FROM tuf_metadata n WHERE n.role = m.role) \
                 ORDER BY m.role",
            )
            .fetch_all(pool)
            .await?
        }))
    }

    /// One file by the name it is served under.
    pub async fn tuf_file(&self, name: &str) -> Result<Option<String>> {
        Ok(with_read!(self, pool => {
            sqlx::query_scalar("SELECT body FROM tuf_metadata WHERE name = $1")
                .bind(name)
                .fetch_optional(pool)
                .await?
        }))
    }

    /// Saves new files in one transaction. `timestamp_was` is the timestamp
    /// version the caller built on (0: none yet). `actor` is audited for a
    /// publish; the server's own renewals pass `None`.
    pub async fn tuf_save(
        &self,
        files: &[TufFile],
        timestamp_was: i64,
        actor: Option<&str>,
        now: i64,
    ) -> Result<()> {
        let conflict = || {
            Error::Conflict(
                "the repository changed while this was signed (another publish or server); send it again".into(),
            )
        };
        with_write!(self, pool => {
            let mut tx = pool.begin().await?;
            for f in files {
                let done = if f.role == "timestamp" && timestamp_was > 0 {
                    sqlx::query(
                        "UPDATE tuf_metadata SET version = $1, body = $2, created_at = $3 \
                         WHERE name = 'timestamp.json' AND version = $4",
                    )
                    .bind(f.version)
                    .bind(&f.body)
                    .bind(now)
                    .bind(timestamp_was)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected()
                } else {
                    sqlx::query(
                        "INSERT INTO tuf_metadata (name, role, version, body, created_at) \
                         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (name) DO NOTHING",
                    )
                    .bind(&f.name)
                    .bind(&f.role)
                    .bind(f.version)
                    .bind(&f.body)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected()
                };
                if done != 1 {
                    return Err(conflict());
                }
                if let Some(actor) = actor
                    && !matches!(f.role.as_str(), "snapshot" | "timestamp")
                {
                    audit!(&mut *tx, now, actor, "publish", "metadata", &f.name, format!("{} version {}", f.role, f.version));
                }
            }
            tx.commit().await?;
        });
        Ok(())
    }
}
