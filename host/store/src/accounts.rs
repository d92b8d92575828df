//! Console accounts and sessions.
//!
//! The store keeps what the server hashed: an argon2id PHC string per account and
//! the sha256 of each session cookie. Whether a password is right is the server's
//! decision; the store counts failures and locks an account after
//! [`MAX_FAILED_LOGINS`] of them in a row, for [`LOCK_MS`].

use posup_proto::api::{Language, Role};
use serde_json::json;

use crate::tokens::check_name;
use crate::{Error, Result, Store};

/// Failed logins in a row that lock an account.
pub const MAX_FAILED_LOGINS: i64 = 5;
/// How long a locked account stays locked: long enough to make guessing slow, short
/// enough that an operator who mistyped at night is not out until morning.
pub const LOCK_MS: i64 = 15 * 60 * 1000;

/// An account to create.
#[derive(Debug, Clone)]
pub struct NewAccount<'a> {
    pub name: &'a str,
    pub role: Role,
    /// An argon2id PHC string.
    pub password: &'a str,
    pub language: Language,
    /// An IANA zone name: the console shows times in it.
    pub time_zone: &'a str,
}

/// An account as a login sees it.
#[derive(Debug, Clone)]
pub struct LoginAccount {
    pub id: i64,
    pub name: String,
    /// The argon2id PHC string to check the password against.
    pub password: String,
    /// Unix ms until which the account refuses every login; 0 when not locked.
    pub locked_until: i64,
}

/// The account behind a live session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionAccount {
    pub account_id: i64,
    pub name: String,
    pub role: Role,
    pub language: Language,
    pub time_zone: String,
    /// The token every form of this session must carry.
    pub csrf: String,
}

/// An account in the accounts list.
#[derive(Debug, Clone)]
pub struct AccountView {
    pub id: i64,
    pub name: String,
    pub role: Role,
    pub language: Language,
    pub time_zone: String,
    pub locked_until: i64,
    pub created_at: i64,
}

/// What one failed login did to the account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Still open; this many failures in a row so far.
    Counted(i64),
    /// This failure locked it until the given Unix ms.
    Locked(i64),
}

#[derive(sqlx::FromRow)]
struct AccountRow {
    id: i64,
    name: String,
    role: String,
    language: String,
    time_zone: String,
    locked_until: i64,
    created_at: i64,
}

fn role(s: &str) -> Result<Role> {
    Role::parse(s)
        .ok_or_else(|| Error::Corrupt(format!("unknown role `{s}` in the accounts table")))
}

fn language(s: &str) -> Result<Language> {
    Language::parse(s)
        .ok_or_else(|| Error::Corrupt(format!("unknown language `{s}` in the accounts table")))
}

fn check_time_zone(account: &str, zone: &str) -> Result<()> {
    zone.parse::<chrono_tz::Tz>().map(|_| ()).map_err(|_| {
        Error::Invalid(format!(
            "account {account}: time zone `{zone}` is unknown: give an IANA name such as Europe/Moscow"
        ))
    })
}

impl Store {
    /// Creates an account. Names are unique.
    pub async fn create_account(&self, new: &NewAccount<'_>, now: i64, actor: &str) -> Result<i64> {
        check_name("account", new.name)?;
        check_time_zone(new.name, new.time_zone)?;
        with_write!(self, pool => {
            let mut tx = pool.begin().await?;
            let taken: Option<i64> = sqlx::query_scalar("SELECT id FROM accounts WHERE name = $1")
                .bind(new.name)
                .fetch_optional(&mut *tx)
                .await?;
            if taken.is_some() {
                return Err(Error::Conflict(format!(
                    "account {} exists already: choose another name",
                    new.name
                )));
            }
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO accounts (name, role, password, language, time_zone, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
            )
            .bind(new.name)
            .bind(new.role.as_str())
            .bind(new.password)
            .bind(new.language.as_str())
            .bind(new.time_zone)
            .bind(now)
            .fetch_one(&mut *tx)
            .await?;
            audit!(&mut *tx, now, actor, "account.create", "account", id,
                json!({"name": new.name, "role": new.role, "language": new.language}));
            tx.commit().await?;
            Ok(id)
        })
    }

    pub async fn account_count(&self) -> Result<i64> {
        Ok(with_read!(self, pool => {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM accounts")
                .fetch_one(pool)
                .await?
        }))
    }

    pub async fn list_accounts(&self) -> Result<Vec<AccountView>> {
        let rows: Vec<AccountRow> = with_read!(self, pool => {
            sqlx::query_as(
                "SELECT id, name, role, language, time_zone, locked_until, created_at FROM accounts ORDER BY name",
            )
            .fetch_all(pool)
            .await?
        });
        rows.into_iter()
            .map(|r| {
                Ok(AccountView {
                    role: role(&r.role)?,
                    language: language(&r.language)?,
                    id: r.id,
                    name: r.name,
                    time_zone: r.time_zone,
                    locked_until: r.locked_until,
                    created_at: r.created_at,
                })
            })
            .collect()
    }

    /// Deletes an account and ends its sessions. The last administrator stays, so
    /// the console always has someone who can manage accounts.
    pub async fn delete_account(&self, id: i64, now: i64, actor: &str) -> Result<()> {
        with_write!(self, pool => {
            let mut tx = pool.begin().await?;
            let row: Option<(String, String)> =
                sqlx::query_as("SELECT name, role FROM accounts WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await?;
            let Some((name, r)) = row else {
                return Err(Error::NotFound(format!("account {id} does not exist")));
            };
            if r == Role::Admin.as_str() {
                let admins: i64 =
                    sqlx::query_scalar("SELECT count(*) FROM accounts WHERE role = 'admin'")
                        .fetch_one(&mut *tx)
                        .await?;
                if admins <= 1 {
                    return Err(Error::Conflict(format!(
                        "account {name} is the last administrator: create another administrator first"
                    )));
                }
            }
            sqlx::query("DELETE FROM sessions WHERE account_id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM accounts WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            audit!(&mut *tx, now, actor, "account.delete", "account", id, json!({"name": name}));
            tx.commit().await?;
            Ok(())
        })
    }

    /// The account a login names, if it exists.
    pub async fn account_for_login(&self, name: &str) -> Result<Option<LoginAccount>> {
        let row: Option<(i64, String, String, i64)> = with_read!(self, pool => {
            sqlx::query_as("SELECT id, name, password, locked_until FROM accounts WHERE name = $1")
                .bind(name)
                .fetch_optional(pool)
                .await?
        });
        Ok(row.map(|(id, name, password, locked_until)| LoginAccount {
            id,
            name,
            password,
            locked_until,
        }))
    }

    /// Counts a wrong password; the [`MAX_FAILED_LOGINS`]th in a row locks the
    /// account for [`LOCK_MS`] and starts the count again.
    pub async fn login_failed(&self, id: i64, now: i64) -> Result<Failure> {
        with_write!(self, pool => {
            let mut tx = pool.begin().await?;
            let failed: i64 = sqlx::query_scalar(
                "UPDATE accounts SET failed_logins = failed_logins + 1 WHERE id = $1 RETURNING failed_logins",
            )
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
            let outcome = if failed >= MAX_FAILED_LOGINS {
                let until = now + LOCK_MS;
                sqlx::query("UPDATE accounts SET failed_logins = 0, locked_until = $2 WHERE id = $1")
                    .bind(id)
                    .bind(until)
                    .execute(&mut *tx)
                    .await?;
                audit!(&mut *tx, now, "server", "account.lock", "account", id,
                    json!({"failed_logins": failed, "locked_until": until}));
                Failure::Locked(until)
            } else {
                Failure::Counted(failed)
            };
            tx.commit().await?;
            Ok(outcome)
        })
    }

    /// Opens a session for an account whose password was right: the failure count
    /// starts again and the session is stored by the hash of its cookie.
    pub async fn open_session(
        &self,
        account_id: i64,
        hash: &str,
        csrf: &str,
        now: i64,
        expires_at: i64,
    ) -> Result<()> {
        with_write!(self, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query("UPDATE accounts SET failed_logins = 0 WHERE id = $1")
                .bind(account_id)
                .execute(&mut *tx)
                .await?;
            // Ended sessions go with each login, so the table stays the size of the
            // sessions in use.
            sqlx::query("DELETE FROM sessions WHERE expires_at <= $1")
                .bind(now)
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "INSERT INTO sessions (hash, account_id, csrf, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(hash)
            .bind(account_id)
            .bind(csrf)
            .bind(now)
            .bind(expires_at)
            .execute(&mut *tx)
            .await?;
            audit!(&mut *tx, now, "server", "account.login", "account", account_id, json!({}));
            tx.commit().await?;
            Ok(())
        })
    }

    /// The account of an unexpired session.
    pub async fn session(&self, hash: &str, now: i64) -> Result<Option<SessionAccount>> {
        let row: Option<(i64, String, String, String, String, String)> = with_read!(self, pool => {
            sqlx::query_as(
                "SELECT a.id, a.name, a.role, a.language, a.time_zone, s.csrf \
                 FROM sessions s JOIN accounts a ON a.id = s.account_id \
                 WHERE s.hash = $1 AND s.expires_at > $2",
            )
            .bind(hash)
            .bind(now)
            .fetch_optional(pool)
            .await?
        });
        row.map(|(account_id, name, r, l, time_zone, csrf)| {
            Ok(SessionAccount {
                account_id,
                name,
                role: role(&r)?,
                language: language(&l)?,
                time_zone,
                csrf,
            })
        })
        .transpose()
    }

    pub async fn end_session(&self, hash: &str) -> Result<()> {
        with_write!(self, pool => {
            sqlx::query("DELETE FROM sessions WHERE hash = $1")
                .bind(hash)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// Replaces an account's password hash and ends its other sessions: whoever
    /// knew the old password is logged out.
    pub async fn set_account_password(
        &self,
        id: i64,
        password: &str,
        keep_session: &str,
        now: i64,
        actor: &str,
    ) -> Result<()> {
        with_write!(self, pool => {
            let mut tx = pool.begin().await?;
            let changed = sqlx::query("UPDATE accounts SET password = $2, failed_logins = 0 WHERE id = $1")
                .bind(id)
                .bind(password)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if changed == 0 {
                return Err(Error::NotFound(format!("account {id} does not exist")));
            }
            sqlx::query("DELETE FROM sessions WHERE account_id = $1 AND hash <> $2")
                .bind(id)
                .bind(keep_session)
                .execute(&mut *tx)
                .await?;
            audit!(&mut *tx, now, actor, "account.password", "account", id, json!({}));
            tx.commit().await?;
            Ok(())
        })
    }

    /// Sets the language and time zone an account's console speaks and shows.
    pub async fn set_account_preferences(
        &self,
        id: i64,
        lang: Language,
        time_zone: &str,
        now: i64,
        actor: &str,
    ) -> Result<()> {
        check_time_zone(actor, time_zone)?;
        with_write!(self, pool => {
            let mut tx = pool.begin().await?;
            let changed = sqlx::query("UPDATE accounts SET language = $2, time_zone = $3 WHERE id = $1")
                .bind(id)
                .bind(lang.as_str())
                .bind(time_zone)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if changed == 0 {
                return Err(Error::NotFound(format!("account {id} does not exist")));
            }
            audit!(&mut *tx, now, actor, "account.preferences", "account", id,
                json!({"language": lang, "time_zone": time_zone}));
            tx.commit().await?;
            Ok(())
        })
    }
}
