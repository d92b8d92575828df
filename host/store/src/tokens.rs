//! Operator tokens and enrollment secrets. Only sha256 hashes of the secrets are
//! stored; the caller hashes.

use posup_proto::api::{
    CreateEnrollmentSecret, CreateToken, CreatedEnrollmentSecret, CreatedToken,
    EnrollmentSecretView, Role, TokenView,
};
use serde_json::json;

use crate::enrollment::check_new_token;
use crate::{Error, Result, Store, ts};

/// Who an operator token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenIdentity {
    pub id: i64,
    pub name: String,
    pub role: Role,
    /// The vendor a vendor token acts for.
    pub vendor: Option<String>,
}

#[derive(sqlx::FromRow)]
struct TokenRow {
    id: i64,
    name: String,
    role: String,
    vendor: Option<String>,
    created_at: i64,
}

fn role(s: &str) -> Result<Role> {
    Role::parse(s).ok_or_else(|| Error::Corrupt(format!("unknown role `{s}` in the tokens table")))
}

pub(crate) fn check_name(what: &str, name: &str) -> Result<()> {
    if name.trim().is_empty() || name.len() > 200 || name.chars().any(char::is_control) {
        return Err(Error::Invalid(format!(
            "{what} name `{name}` is invalid: give 1 to 200 printable characters"
        )));
    }
    Ok(())
}

impl Store {
    /// Stores a new operator token (its hash); `secret` is returned in the answer
    /// and not kept.
    pub async fn create_token(
        &self,
        body: &CreateToken,
        secret: &str,
        hash: &str,
        now: i64,
        actor: &str,
    ) -> Result<CreatedToken> {
        let (name, role, vendor) = (body.name.as_str(), body.role, body.vendor.as_deref());
        check_name("token", name)?;
        match (role, vendor) {
            (Role::Vendor, None) => {
                return Err(Error::Invalid(format!(
                    "token {name}: a vendor token acts for one vendor: give `vendor`, the name its plugins declare"
                )));
            }
            (Role::Vendor, Some(v)) => check_name("vendor", v)?,
            (_, Some(_)) => {
                return Err(Error::Invalid(format!(
                    "token {name}: only a vendor token names a vendor: leave `vendor` out for role {}",
                    role.as_str()
                )));
            }
            (_, None) => {}
        }
        let id = with_write!(self, pool => {
            let mut tx = pool.begin().await?;
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO tokens (name, role, hash, created_at, vendor) VALUES ($1, $2, $3, $4, $5) RETURNING id",
            )
            .bind(name)
            .bind(role.as_str())
            .bind(hash)
            .bind(now)
            .bind(vendor)
            .fetch_one(&mut *tx)
            .await?;
            audit!(&mut *tx, now, actor, "token.create", "token", id, json!({"name": name, "role": role, "vendor": vendor}));
            tx.commit().await?;
            id
        });
        Ok(CreatedToken {
            id,
            name: name.to_owned(),
            role,
            token: secret.to_owned(),
        })
    }

    /// Stores a token given by configuration unless one with that hash exists.
    /// Returns whether it was added.
    pub async fn ensure_token(&self, name: &str, role: Role, hash: &str, now: i64) -> Result<bool> {
        with_write!(self, pool => {
            let mut tx = pool.begin().await?;
            let exists: Option<i64> = sqlx::query_scalar("SELECT id FROM tokens WHERE hash = $1")
                .bind(hash)
                .fetch_optional(&mut *tx)
                .await?;
            if exists.is_some() {
                return Ok(false);
            }
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO tokens (name, role, hash, created_at) VALUES ($1, $2, $3, $4) RETURNING id",
            )
            .bind(name)
            .bind(role.as_str())
            .bind(hash)
            .bind(now)
            .fetch_one(&mut *tx)
            .await?;
            audit!(&mut *tx, now, "server", "token.create", "token", id, json!({"name": name, "role": role}));
            tx.commit().await?;
            Ok(true)
        })
    }

    /// How many administrator tokens exist.
    pub async fn admin_token_count(&self) -> Result<i64> {
        Ok(with_read!(self, pool => {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM tokens WHERE role = 'admin'")
                .fetch_one(pool)
                .await?
        }))
    }

    pub async fn token_by_hash(&self, hash: &str) -> Result<Option<TokenIdentity>> {
        let row: Option<(i64, String, String, Option<String>)> = with_read!(self, pool => {
            sqlx::query_as("SELECT id, name, role, vendor FROM tokens WHERE hash = $1")
                .bind(hash)
                .fetch_optional(pool)
                .await?
        });
        row.map(|(id, name, r, vendor)| {
            Ok(TokenIdentity {
                id,
                name,
                role: role(&r)?,
                vendor,
            })
        })
        .transpose()
    }

    pub async fn list_tokens(&self) -> Result<Vec<TokenView>> {
        let rows: Vec<TokenRow> = with_read!(self, pool => {
            sqlx::query_as("SELECT id, name, role, vendor, created_at FROM tokens ORDER BY id")
                .fetch_all(pool)
                .await?
        });
        rows.into_iter()
            .map(|r| {
                Ok(TokenView {
                    id: r.id,
                    name: r.name,
                    role: role(&r.role)?,
                    vendor: r.vendor,
                    created_at: ts(r.created_at),
                })
            })
            .collect()
    }

    /// Deletes a token. The last administrator token cannot be deleted, so the
    /// server never locks its operators out.
    pub async fn delete_token(&self, id: i64, now: i64, actor: &str) -> Result<()> {
        with_write!(self, pool => {
            let mut tx = pool.begin().await?;
            let row: Option<(String, String)> = sqlx::query_as("SELECT name, role FROM tokens WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
            let Some((name, r)) = row else {
                return Err(Error::NotFound(format!("token {id} does not exist")));
            };
            if r == "admin" {
                let admins: i64 = sqlx::query_scalar("SELECT count(*) FROM tokens WHERE role = 'admin'")
                    .fetch_one(&mut *tx)
                    .await?;
                if admins <= 1 {
                    return Err(Error::Conflict(format!(
                        "token {id} ({name}) is the last admin token: create another admin token first"
                    )));
                }
            }
            sqlx::query("DELETE FROM tokens WHERE id = $1").bind(id).execute(&mut *tx).await?;
            audit!(&mut *tx, now, actor, "token.delete", "token", id, json!({"name": name}));
            tx.commit().await?;
            Ok(())
        })
    }

    /// Stores a new enrollment token (its hash) with what it may enroll; `secret`
    /// is returned in the answer and not kept.
    pub async fn create_enrollment_secret(
        &self,
        body: &CreateEnrollmentSecret,
        secret: &str,
        hash: &str,
        now: i64,
        actor: &str,
    ) -> Result<CreatedEnrollmentSecret> {
        check_name("enrollment token", &body.name)?;
        check_new_token(body.max_uses, body.expires_at, body.site.as_deref(), now)?;
        let expires_at = body.expires_at.map(|at| at.timestamp_millis());
        let max_uses = body.max_uses.map(i64::from);
        let id = with_write!(self, pool => {
            let mut tx = pool.begin().await?;
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO enrollment_secrets (name, hash, created_at, site, expires_at, max_uses) \
                 VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
            )
            .bind(&body.name)
            .bind(hash)
            .bind(now)
            .bind(body.site.as_deref())
            .bind(expires_at)
            .bind(max_uses)
            .fetch_one(&mut *tx)
            .await?;
            audit!(&mut *tx, now, actor, "enrollment_secret.create", "enrollment_secret", id, json!(body));
            tx.commit().await?;
            id
        });
        Ok(CreatedEnrollmentSecret {
            id,
            name: body.name.clone(),
            secret: secret.to_owned(),
        })
    }

    /// Stores an enrollment secret given by configuration unless it exists.
    pub async fn ensure_enrollment_secret(&self, name: &str, hash: &str, now: i64) -> Result<bool> {
        with_write!(self, pool => {
            let mut tx = pool.begin().await?;
            let exists: Option<i64> = sqlx::query_scalar("SELECT id FROM enrollment_secrets WHERE hash = $1")
                .bind(hash)
                .fetch_optional(&mut *tx)
                .await?;
            if exists.is_some() {
                return Ok(false);
            }
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO enrollment_secrets (name, hash, created_at) VALUES ($1, $2, $3) RETURNING id",
            )
            .bind(name)
            .bind(hash)
            .bind(now)
            .fetch_one(&mut *tx)
            .await?;
            audit!(&mut *tx, now, "server", "enrollment_secret.create", "enrollment_secret", id, json!({"name": name}));
            tx.commit().await?;
            Ok(true)
        })
    }

    pub async fn enrollment_secret_count(&self) -> Result<i64> {
        Ok(with_read!(self, pool => {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM enrollment_secrets")
                .fetch_one(pool)
                .await?
        }))
    }

    pub async fn list_enrollment_secrets(&self) -> Result<Vec<EnrollmentSecretView>> {
        type Row = (
            i64,
            String,
            Option<String>,
            Option<i64>,
            Option<i64>,
            i64,
            i64,
        );
        let rows: Vec<Row> = with_read!(self, pool => {
            sqlx::query_as(
                "SELECT s.id, s.name, s.site, s.max_uses, s.expires_at, \
                 s.uses + (SELECT count(*) FROM enrollment_uses u WHERE u.secret_id = s.id), s.created_at \
                 FROM enrollment_secrets s ORDER BY s.id",
            )
            .fetch_all(pool)
            .await?
        });
        Ok(rows
            .into_iter()
            .map(
                |(id, name, site, max_uses, expires_at, uses, created_at)| EnrollmentSecretView {
                    id,
                    name,
                    site,
                    max_uses: max_uses.map(|m| m as u32),
                    uses: uses as u32,
                    expires_at: expires_at.map(ts),
                    created_at: ts(created_at),
                },
            )
            .collect())
    }

    pub async fn delete_enrollment_secret(&self, id: i64, now: i64, actor: &str) -> Result<()> {
        with_write!(self, pool => {
            let mut tx = pool.begin().await?;
            let done = sqlx::query("DELETE FROM enrollment_secrets WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            if done.rows_affected() == 0 {
                return Err(Error::NotFound(format!("enrollment secret {id} does not exist")));
            }
            sqlx::query("DELETE FROM enrollment_uses WHERE secret_id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            audit!(&mut *tx, now, actor, "enrollment_secret.delete", "enrollment_secret", id, json!({}));
            tx.commit().await?;
            Ok(())
        })
    }
}
