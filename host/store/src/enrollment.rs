//! Who a terminal is. A new GUID enrolls with an enrollment token (maybe for one
//! site only, maybe expiring, maybe good for a number of enrollments). An enrolled
//! GUID enrolls again only with its current device token, or once after an
//! administrator reset it: an enrollment token alone never takes a device over.
//! Site and device type change only by an operator.

use chrono::{DateTime, Utc};
use posup_proto::agent::DeviceIdentity;
use posup_proto::api::{DeviceAccess, MoveDevice};
use serde_json::json;

use crate::device_types::unknown_type;
use crate::devices::check_identity;
use crate::{Error, Result, Store, ts};

/// What a terminal enrolls with.
#[derive(Debug, Clone, Copy)]
pub struct Enrollment<'a> {
    pub identity: &'a DeviceIdentity,
    /// sha256 (hex) of the enrollment token it sent, if it sent one.
    pub secret_hash: Option<&'a str>,
    /// sha256 (hex) of the device token it sent, if it sent one.
    pub current_token_hash: Option<&'a str>,
    /// sha256 (hex) of the device token it is given.
    pub new_token_hash: &'a str,
}

/// An enrollment token as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct TokenRow {
    pub id: i64,
    pub name: String,
    pub site: Option<String>,
    pub expires_at: Option<i64>,
    pub max_uses: Option<i64>,
    pub uses: i64,
}

/// Whether an enrollment token may enroll a terminal of `site` at `now`.
pub(crate) fn judge_token(token: &TokenRow, site: &str, now: i64) -> Result<()> {
    let name = &token.name;
    if let Some(expired) = token.expires_at.filter(|at| *at <= now) {
        return Err(Error::Unauthorized(format!(
            "enrollment token {name} expired at {}: ask an administrator for a new one",
            ts(expired).format("%Y-%m-%d %H:%M UTC")
        )));
    }
    if let Some(max) = token.max_uses.filter(|max| token.uses >= *max) {
        return Err(Error::Unauthorized(format!(
            "enrollment token {name} is used up ({max} of {max} enrollments): ask an administrator for a new one"
        )));
    }
    if let Some(only) = token.site.as_deref().filter(|only| *only != site) {
        return Err(Error::Forbidden(format!(
            "enrollment token {name} is for site {only}, and this terminal says it is in {site}: \
             use the token of its own site, or correct `site` in its configuration"
        )));
    }
    Ok(())
}

/// The enrolled device a GUID names.
#[derive(Debug, sqlx::FromRow)]
struct Enrolled {
    id: i64,
    site: String,
    device_type: String,
    token_hash: String,
    access: String,
}

fn access(s: &str) -> Result<DeviceAccess> {
    DeviceAccess::parse(s)
        .ok_or_else(|| Error::Corrupt(format!("device access `{s}` in the devices table")))
}

/// Checks at creation what an enrollment token promises.
pub(crate) fn check_new_token(
    max_uses: Option<u32>,
    expires_at: Option<DateTime<Utc>>,
    site: Option<&str>,
    now: i64,
) -> Result<()> {
    if max_uses == Some(0) {
        return Err(Error::Invalid(
            "max_uses 0 would enroll nobody: give 1 or more, or leave it out for no limit".into(),
        ));
    }
    if let Some(at) = expires_at.filter(|at| at.timestamp_millis() <= now) {
        return Err(Error::Invalid(format!(
            "expires_at {} is not in the future: give a later time, or leave it out for no expiry",
            at.format("%Y-%m-%d %H:%M UTC")
        )));
    }
    if site.is_some_and(|s| s.trim().is_empty()) {
        return Err(Error::Invalid(
            "site must not be empty: give the site's name, or leave it out for any site".into(),
        ));
    }
    Ok(())
}

/// The enrollment token with hash `$hash` (an `Option<&str>`), read inside the
/// caller's transaction; 401 when none was sent or it is unknown.
macro_rules! read_token {
    ($ex:expr, $hash:expr) => {{
        let hash = $hash.filter(|h: &&str| !h.is_empty()).ok_or_else(|| {
            Error::Unauthorized(
                "no enrollment token: give `enrollment_secret` in the agent's configuration".into(),
            )
        })?;
        let token: Option<TokenRow> = sqlx::query_as(
            "SELECT id, name, site, expires_at, max_uses, uses FROM enrollment_secrets WHERE hash = $1",
        )
        .bind(hash)
        .fetch_optional(&mut *$ex)
        .await?;
        token.ok_or_else(|| {
            Error::Unauthorized(
                "unknown enrollment token: ask an administrator for a valid one".into(),
            )
        })?
    }};
}

/// Spends one use of the enrollment token with hash `$hash` inside the caller's
/// transaction, if it may enroll a terminal of `$site` at `$now`; otherwise says
/// why not. A token without a use limit counts the use in a row of its own, so
/// a fleet enrolling with it at once waits on no shared row. A token with one
/// checks and spends in one statement on its row, so terminals racing for its
/// last use cannot both have it.
macro_rules! spend_token {
    ($ex:expr, $hash:expr, $site:expr, $now:expr) => {{
        let token = read_token!($ex, $hash);
        judge_token(&token, $site, $now)?;
        if token.max_uses.is_none() {
            sqlx::query("INSERT INTO enrollment_uses (secret_id) VALUES ($1)")
                .bind(token.id)
                .execute(&mut *$ex)
                .await?;
            token
        } else {
            let spent: Option<TokenRow> = sqlx::query_as(
                "UPDATE enrollment_secrets SET uses = uses + 1 \
                 WHERE id = $1 AND (expires_at IS NULL OR expires_at > $2) \
                 AND (max_uses IS NULL OR uses < max_uses) AND (site IS NULL OR site = $3) \
                 RETURNING id, name, site, expires_at, max_uses, uses",
            )
            .bind(token.id)
            .bind($now)
            .bind($site)
            .fetch_optional(&mut *$ex)
            .await?;
            match spent {
                Some(token) => token,
                // It was good a moment ago: another terminal took its last use.
                None => {
                    return Err(Error::Unauthorized(format!(
                        "enrollment token {} is used up: ask an administrator for a new one",
                        token.name
                    )));
                }
            }
        }
    }};
}

impl Store {
    /// Enrolls a terminal; returns the device's id and whether it replaced the
    /// token of an enrolled device. See the module for who may.
    pub async fn enroll(&self, e: Enrollment<'_>, now: i64) -> Result<(i64, bool)> {
        let d = e.identity;
        check_identity(d)?;
        with_write!(self, pool => {
            let mut tx = pool.begin().await?;
            // A new GUID is the common case, a fleet enrolling: its row goes in at
            // once, and the device type's foreign key is the check that the type
            // exists. An enrolled GUID inserts nothing and is handled below; a
            // refusal rolls the row back with the transaction.
            let inserted: Option<i64> = match sqlx::query_scalar(
                "INSERT INTO devices (guid, site, address, name, number, device_type, agent_version, token_hash, enrolled_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (guid) DO NOTHING RETURNING id",
            )
            .bind(&d.guid)
            .bind(&d.site.name)
            .bind(&d.site.address)
            .bind(&d.name)
            .bind(i64::from(d.number))
            .bind(&d.device_type)
            .bind(&d.agent_version)
            .bind(e.new_token_hash)
            .bind(now)
            .fetch_optional(&mut *tx)
            .await
            {
                Ok(id) => id,
                Err(sqlx::Error::Database(db))
                    if db.kind() == sqlx::error::ErrorKind::ForeignKeyViolation =>
                {
                    return Err(unknown_type(&d.device_type));
                }
                Err(e) => return Err(e.into()),
            };
            if let Some(id) = inserted {
                let token = spend_token!(tx, e.secret_hash, d.site.name.as_str(), now);
                audit!(&mut *tx, now, format!("enrollment token {}", token.name), "device.enroll", "device", id, json!(d));
                tx.commit().await?;
                // A new device invalidates nothing cached: no token of it was ever
                // taken, and it is in no task yet.
                return Ok((id, false));
            }
            let old: Enrolled = sqlx::query_as(
                "SELECT id, site, device_type, token_hash, access FROM devices WHERE guid = $1",
            )
            .bind(&d.guid)
            .fetch_one(&mut *tx)
            .await?;
            if old.device_type != d.device_type {
                let known: Option<i64> = sqlx::query_scalar("SELECT 1 FROM device_types WHERE name = $1")
                    .bind(&d.device_type)
                    .fetch_optional(&mut *tx)
                    .await?;
                if known.is_none() {
                    return Err(unknown_type(&d.device_type));
                }
            }
            let state = access(&old.access)?;
            let own_token = state == DeviceAccess::Active
                && e.current_token_hash == Some(old.token_hash.as_str());
            if !own_token && state != DeviceAccess::AwaitingEnrollment {
                // Only a holder of a valid enrollment token learns that
                // the GUID is enrolled.
                judge_token(&read_token!(tx, e.secret_hash), &d.site.name, now)?;
                let id = old.id;
                let why = if state == DeviceAccess::Revoked {
                    "is revoked"
                } else {
                    "is already enrolled"
                };
                return Err(Error::Conflict(format!(
                    "device {} (id {id}) {why}: a terminal enrolls again only with its current device token, \
                     or once after an administrator resets it (POST /api/v1/devices/{id}/reset)",
                    d.guid
                )));
            }
            if old.site != d.site.name || old.device_type != d.device_type {
                return Err(Error::Conflict(format!(
                    "device {} (id {}) is enrolled at site {} as {}, and now says {} as {}: \
                     only an operator moves a device (PATCH /api/v1/devices/{})",
                    d.guid, old.id, old.site, old.device_type, d.site.name, d.device_type, old.id
                )));
            }
            // After a reset the terminal spends an enrollment token's use.
            let spent = if own_token {
                None
            } else {
                Some(spend_token!(tx, e.secret_hash, d.site.name.as_str(), now))
            };
            sqlx::query(
                "UPDATE devices SET name = $2, number = $3, agent_version = $4, token_hash = $5, access = 'active' \
                 WHERE id = $1",
            )
            .bind(old.id)
            .bind(&d.name)
            .bind(i64::from(d.number))
            .bind(&d.agent_version)
            .bind(e.new_token_hash)
            .execute(&mut *tx)
            .await?;
            let actor = match &spent {
                Some(t) => format!("enrollment token {}", t.name),
                None => format!("device {}", d.guid),
            };
            audit!(&mut *tx, now, actor, "device.reenroll", "device", old.id, json!({"identity": d, "after_reset": !own_token}));
            // Servers that cached the old token must stop taking it.
            bump!(&mut *tx, "devices");
            // Its number may have changed, and with it its groups.
            bump!(&mut *tx, "members");
            tx.commit().await?;
            Ok((old.id, true))
        })
    }

    /// Revokes a device's token (`Revoked`) or lets its GUID enroll once more
    /// (`AwaitingEnrollment`); either way its current token stops working.
    pub async fn set_device_access(
        &self,
        id: i64,
        to: DeviceAccess,
        now: i64,
        actor: &str,
    ) -> Result<()> {
        let action = match to {
            DeviceAccess::Revoked => "device.revoke",
            DeviceAccess::AwaitingEnrollment => "device.reset",
            DeviceAccess::Active => {
                return Err(Error::Invalid(
                    "a device becomes active only by enrolling".into(),
                ));
            }
        };
        with_write!(self, pool => {
            let mut tx = pool.begin().await?;
            let guid: Option<String> = sqlx::query_scalar("UPDATE devices SET access = $2 WHERE id = $1 RETURNING guid")
                .bind(id)
                .bind(to.as_str())
                .fetch_optional(&mut *tx)
                .await?;
            let Some(guid) = guid else {
                return Err(Error::NotFound(format!("device {id} does not exist")));
            };
            audit!(&mut *tx, now, actor, action, "device", id, json!({"guid": guid}));
            bump!(&mut *tx, "devices");
            tx.commit().await?;
            Ok(())
        })
    }

    /// Moves a device to another site or device type.
    pub async fn move_device(&self, id: i64, to: &MoveDevice, now: i64, actor: &str) -> Result<()> {
        if let Some(site) = &to.site {
            let bad = |v: &str, max: usize| v.len() > max || v.chars().any(char::is_control);
            if site.name.trim().is_empty() || bad(&site.name, 200) || bad(&site.address, 500) {
                return Err(Error::Invalid(format!(
                    "device {id}: site name `{}` or address is invalid: give a name of 1 to 200 printable characters",
                    site.name
                )));
            }
        }
        if let Some(t) = &to.device_type {
            self.require_device_type(t).await?;
        }
        with_write!(self, pool => {
            let mut tx = pool.begin().await?;
            let done = sqlx::query(
                "UPDATE devices SET site = COALESCE($2, site), address = COALESCE($3, address), \
                 device_type = COALESCE($4, device_type) WHERE id = $1",
            )
            .bind(id)
            .bind(to.site.as_ref().map(|s| s.name.as_str()))
            .bind(to.site.as_ref().map(|s| s.address.as_str()))
            .bind(to.device_type.as_deref())
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() == 0 {
                return Err(Error::NotFound(format!("device {id} does not exist")));
            }
            audit!(&mut *tx, now, actor, "device.move", "device", id, json!(to));
            bump!(&mut *tx, "devices");
            bump!(&mut *tx, "members");
            tx.commit().await?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> TokenRow {
        TokenRow {
            id: 1,
            name: "batch".into(),
            site: None,
            expires_at: None,
            max_uses: None,
            uses: 0,
        }
    }

    #[test]
    fn an_unbounded_token_enrolls_anywhere() {
        assert!(judge_token(&token(), "Store A", 5).is_ok());
    }

    #[test]
    fn expiry_is_exclusive() {
        let t = TokenRow {
            expires_at: Some(10),
            ..token()
        };
        assert!(judge_token(&t, "Store A", 9).is_ok());
        let e = judge_token(&t, "Store A", 10).unwrap_err().to_string();
        assert!(e.contains("expired"), "{e}");
    }

    #[test]
    fn uses_run_out() {
        let t = TokenRow {
            max_uses: Some(2),
            uses: 1,
            ..token()
        };
        assert!(judge_token(&t, "Store A", 0).is_ok());
        let t = TokenRow { uses: 2, ..t };
        let e = judge_token(&t, "Store A", 0).unwrap_err().to_string();
        assert!(e.contains("used up (2 of 2"), "{e}");
    }

    #[test]
    fn a_site_token_names_both_sites() {
        let t = TokenRow {
            site: Some("Store A".into()),
            ..token()
        };
        assert!(judge_token(&t, "Store A", 0).is_ok());
        let e = judge_token(&t, "Store B", 0).unwrap_err();
        assert!(matches!(e, Error::Forbidden(_)));
        assert!(e.to_string().contains("Store A") && e.to_string().contains("Store B"));
    }

    #[test]
    fn new_tokens_promise_something() {
        assert!(check_new_token(Some(0), None, None, 0).is_err());
        assert!(check_new_token(None, Some(ts(5)), None, 5).is_err());
        assert!(check_new_token(None, None, Some(" "), 0).is_err());
        assert!(check_new_token(Some(1), Some(ts(6)), Some("Store A"), 5).is_ok());
    }
}
