//! Variables (the IceCash model): named values for the whole fleet, a group, a site
//! or one device. Every change gets an increasing id; an agent asks for the changes
//! after the last id it applied and gets, for each variable concerned, its value
//! for that device now.

use std::collections::{BTreeMap, HashMap};

use posup_proto::agent::{VariableChange, VariableChanges};
use posup_proto::api::{SiteView, VariableChangeView, VariableScope, VariableView};
use serde_json::json;

use crate::{At, Db, Error, Result, Store, ts};

/// The site preference of the Openbravo hot-fix procedure.
pub const IGNORE_VERSION_CHECK: &str = "ignore-version-check";
pub use posup_proto::agent::LANGUAGE_VARIABLE as LANGUAGE;

/// Changes handed to an agent per poll.
const CHANGES_PER_POLL: i64 = 500;

fn scope_parts(scope: &VariableScope) -> (&'static str, String) {
    match scope {
        VariableScope::All => ("all", String::new()),
        VariableScope::Group { group_id } => ("group", group_id.to_string()),
        VariableScope::Site { site } => ("site", site.clone()),
        VariableScope::Device { device_id } => ("device", device_id.to_string()),
    }
}

fn scope_of(kind: &str, reference: &str) -> Result<VariableScope> {
    let id = || {
        reference
            .parse::<i64>()
            .map_err(|_| Error::Corrupt(format!("variable scope {kind} `{reference}`")))
    };
    Ok(match kind {
        "all" => VariableScope::All,
        "group" => VariableScope::Group { group_id: id()? },
        "site" => VariableScope::Site {
            site: reference.to_owned(),
        },
        "device" => VariableScope::Device { device_id: id()? },
        other => return Err(Error::Corrupt(format!("variable scope `{other}`"))),
    })
}

pub(crate) fn check_variable_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "variable name `{name}` is invalid: use 1 to 128 letters, digits, `-`, `_` or `.`"
        )))
    }
}

/// The device a variable lookup is for.
#[derive(Debug, Clone)]
pub struct VarTarget<'a> {
    pub device_id: i64,
    pub site: &'a str,
}

/// Rank of a scope for one device: higher wins.
fn precedence(kind: &str) -> u8 {
    match kind {
        "device" => 4,
        "group" => 3,
        "site" => 2,
        _ => 1,
    }
}

impl Store {
    async fn check_scope(&self, scope: &VariableScope) -> Result<()> {
        match scope {
            VariableScope::All => Ok(()),
            VariableScope::Group { group_id } => self
                .group_name(*group_id)
                .await?
                .map(|_| ())
                .ok_or_else(|| Error::Invalid(format!("group {group_id} does not exist"))),
            VariableScope::Device { device_id } => {
                let exists: Option<i64> = with_read!(self, pool => {
                    sqlx::query_scalar("SELECT id FROM devices WHERE id = $1")
                        .bind(*device_id)
                        .fetch_optional(pool)
                        .await?
                });
                exists
                    .map(|_| ())
                    .ok_or_else(|| Error::Invalid(format!("device {device_id} does not exist")))
            }
            VariableScope::Site { site } => {
                if site.trim().is_empty() {
                    Err(Error::Invalid(
                        "the site of a site-scoped variable must not be empty".into(),
                    ))
                } else {
                    Ok(())
                }
            }
        }
    }

    /// Sets (`Some`) or removes (`None`) a variable in one scope; returns the change
    /// id. Removing a variable that is not set is not an error and records nothing.
    pub async fn change_variable(
        &self,
        name: &str,
        scope: &VariableScope,
        value: Option<&str>,
        now: i64,
        actor: &str,
    ) -> Result<Option<i64>> {
        self.write_variable(name, scope, value, false, now, actor)
            .await
    }

    /// [`Store::change_variable`], for a value that may be secret: a secret value
    /// is kept only in the variable itself, never in the change log or the audit
    /// log, and the API shows it to nobody.
    pub async fn write_variable(
        &self,
        name: &str,
        scope: &VariableScope,
        value: Option<&str>,
        secret: bool,
        now: i64,
        actor: &str,
    ) -> Result<Option<i64>> {
        check_variable_name(name)?;
        if value.is_some_and(|v| v.len() > 65_536) {
            return Err(Error::Invalid(format!(
                "variable {name}: value is over 64 KiB"
            )));
        }
        self.check_scope(scope).await?;
        let (kind, reference) = scope_parts(scope);
        let is_pg = matches!(self.db, Db::Postgres(_));
        with_write!(self, pool => {
            let mut tx = pool.begin().await?;
            if is_pg {
                // Change ids must become visible in increasing order, or an agent that
                // saw id 6 would never see a slower transaction's id 5. Variable writes
                // are rare, so they are serialized (SQLite's writer already is).
                sqlx::query("LOCK TABLE variable_changes IN EXCLUSIVE MODE").execute(&mut *tx).await?;
            }
            if value.is_none() {
                let exists: Option<i64> = sqlx::query_scalar(
                    "SELECT change_id FROM variables WHERE name = $1 AND scope_kind = $2 AND scope_ref = $3",
                )
                .bind(name)
                .bind(kind)
                .bind(&reference)
                .fetch_optional(&mut *tx)
                .await?;
                if exists.is_none() {
                    return Ok(None);
                }
            }
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO variable_changes (name, scope_kind, scope_ref, value, at, secret) VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
            )
            .bind(name)
            .bind(kind)
            .bind(&reference)
            .bind(if secret { None } else { value })
            .bind(now)
            .bind(i64::from(secret))
            .fetch_one(&mut *tx)
            .await?;
            match value {
                Some(v) => {
                    sqlx::query(
                        "INSERT INTO variables (name, scope_kind, scope_ref, value, change_id, updated_at, secret) VALUES ($1, $2, $3, $4, $5, $6, $7) \
                         ON CONFLICT (name, scope_kind, scope_ref) DO UPDATE SET value = excluded.value, change_id = excluded.change_id, \
                         updated_at = excluded.updated_at, secret = excluded.secret",
                    )
                    .bind(name)
                    .bind(kind)
                    .bind(&reference)
                    .bind(v)
                    .bind(id)
                    .bind(now)
                    .bind(i64::from(secret))
                    .execute(&mut *tx)
                    .await?;
                }
                None => {
                    sqlx::query("DELETE FROM variables WHERE name = $1 AND scope_kind = $2 AND scope_ref = $3")
                        .bind(name)
                        .bind(kind)
                        .bind(&reference)
                        .execute(&mut *tx)
                        .await?;
                }
            }
            let action = if value.is_some() { "variable.set" } else { "variable.delete" };
            let shown = if secret { None } else { value };
            audit!(&mut *tx, now, actor, action, "variable", name, json!({"scope": scope, "value": shown, "secret": secret, "change_id": id}));
            tx.commit().await?;
            Ok(Some(id))
        })
    }

    /// Variables as set, optionally only one name.
    pub async fn list_variables(&self, name: Option<&str>) -> Result<Vec<VariableView>> {
        type Row = (String, String, String, String, i64, i64, i64);
        let rows: Vec<Row> = with_read!(self, pool => {
            match name {
                Some(n) => sqlx::query_as(
                    "SELECT name, scope_kind, scope_ref, value, change_id, updated_at, secret FROM variables WHERE name = $1 ORDER BY name, scope_kind, scope_ref",
                )
                .bind(n)
                .fetch_all(pool)
                .await?,
                None => sqlx::query_as(
                    "SELECT name, scope_kind, scope_ref, value, change_id, updated_at, secret FROM variables ORDER BY name, scope_kind, scope_ref",
                )
                .fetch_all(pool)
                .await?,
            }
        });
        rows.into_iter()
            .map(
                |(name, kind, reference, value, change_id, updated_at, secret)| {
                    Ok(VariableView {
                        name,
                        scope: scope_of(&kind, &reference)?,
                        value: (secret == 0).then_some(value),
                        secret: secret != 0,
                        change_id,
                        updated_at: ts(updated_at),
                    })
                },
            )
            .collect()
    }

    /// The change log after `since`, oldest first.
    pub async fn variable_changes(
        &self,
        since: i64,
        limit: u32,
    ) -> Result<Vec<VariableChangeView>> {
        type Row = (i64, String, String, String, Option<String>, i64, i64);
        let rows: Vec<Row> = with_read!(self, pool => {
            sqlx::query_as(
                "SELECT id, name, scope_kind, scope_ref, value, at, secret FROM variable_changes WHERE id > $1 ORDER BY id LIMIT $2",
            )
            .bind(since)
            .bind(i64::from(limit.clamp(1, 1000)))
            .fetch_all(pool)
            .await?
        });
        rows.into_iter()
            .map(|(id, name, kind, reference, value, at, secret)| {
                Ok(VariableChangeView {
                    id,
                    name,
                    scope: scope_of(&kind, &reference)?,
                    value: if secret != 0 { None } else { value },
                    secret: secret != 0,
                    at: ts(at),
                })
            })
            .collect()
    }

    /// What a polling agent gets: for each variable changed after `since` that
    /// concerns the device, its value for the device now. An agent that holds an id
    /// the server never issued (a restored database) starts over from 0.
    pub async fn variable_changes_for(
        &self,
        target: &VarTarget<'_>,
        since: i64,
        at: &At,
    ) -> Result<VariableChanges> {
        let mut since = since.max(0);
        loop {
            // One statement for the steady state: the changes after `since` (usually
            // none) plus the newest change, which tells whether `since` is valid.
            let rows: Vec<(i64, String, String, String)> = with_read!(self, pool => {
                sqlx::query_as(
                    "SELECT id, name, scope_kind, scope_ref FROM (\
                       SELECT id, name, scope_kind, scope_ref FROM (SELECT id, name, scope_kind, scope_ref FROM variable_changes WHERE id > $1 ORDER BY id LIMIT $2) a \
                       UNION \
                       SELECT id, name, scope_kind, scope_ref FROM variable_changes WHERE id = (SELECT max(id) FROM variable_changes)\
                     ) c ORDER BY id",
                )
                .bind(since)
                .bind(CHANGES_PER_POLL + 1)
                .fetch_all(pool)
                .await?
            });
            let newest = rows.last().map(|r| r.0).unwrap_or(0);
            if newest < since {
                since = 0;
                continue;
            }
            let mut fresh: Vec<_> = rows.into_iter().filter(|r| r.0 > since).collect();
            let more = fresh.len() as i64 > CHANGES_PER_POLL;
            fresh.truncate(CHANGES_PER_POLL as usize);
            let last_id = fresh.last().map(|r| r.0).unwrap_or(since);
            let mut membership: HashMap<i64, bool> = HashMap::new();
            let mut names: Vec<String> = Vec::new();
            for (_, name, kind, reference) in &fresh {
                if names.contains(name) {
                    continue;
                }
                if self
                    .concerns(target, kind, reference, &mut membership, at)
                    .await?
                {
                    names.push(name.clone());
                }
            }
            let mut changes = Vec::with_capacity(names.len());
            for name in names {
                let value = self
                    .effective_value(target, &name, &mut membership, at)
                    .await?;
                changes.push(VariableChange { name, value });
            }
            return Ok(VariableChanges {
                changes,
                last_id,
                more,
            });
        }
    }

    async fn concerns(
        &self,
        target: &VarTarget<'_>,
        kind: &str,
        reference: &str,
        membership: &mut HashMap<i64, bool>,
        at: &At,
    ) -> Result<bool> {
        Ok(match kind {
            "all" => true,
            "site" => reference == target.site,
            "device" => reference == target.device_id.to_string(),
            "group" => match reference.parse::<i64>() {
                Ok(group) => {
                    self.member_cached(target.device_id, group, membership, at)
                        .await?
                }
                Err(_) => false,
            },
            _ => false,
        })
    }

    async fn member_cached(
        &self,
        device: i64,
        group: i64,
        cache: &mut HashMap<i64, bool>,
        at: &At,
    ) -> Result<bool> {
        if let Some(m) = cache.get(&group) {
            return Ok(*m);
        }
        let m = self.is_member(device, group, at).await?;
        cache.insert(group, m);
        Ok(m)
    }

    /// The value of `name` for a device: its own, else a group's (the most recently
    /// set), else its site's, else the fleet's.
    async fn effective_value(
        &self,
        target: &VarTarget<'_>,
        name: &str,
        membership: &mut HashMap<i64, bool>,
        at: &At,
    ) -> Result<Option<String>> {
        let rows: Vec<(String, String, String, i64)> = with_read!(self, pool => {
            sqlx::query_as("SELECT scope_kind, scope_ref, value, change_id FROM variables WHERE name = $1")
                .bind(name)
                .fetch_all(pool)
                .await?
        });
        let mut best: Option<(u8, i64, String)> = None;
        for (kind, reference, value, change_id) in rows {
            if !self
                .concerns(target, &kind, &reference, membership, at)
                .await?
            {
                continue;
            }
            let rank = (precedence(&kind), change_id);
            if best.as_ref().is_none_or(|(p, c, _)| rank > (*p, *c)) {
                best = Some((rank.0, rank.1, value));
            }
        }
        Ok(best.map(|(_, _, v)| v))
    }

    /// Every site with its device count and preferences.
    pub async fn list_sites(&self) -> Result<Vec<SiteView>> {
        let (rows, ignored): (Vec<(String, String, i64)>, Vec<String>) = with_read!(self, pool => {
            let rows = sqlx::query_as::<_, (String, String, i64)>(
                "SELECT site, min(address), count(*) FROM devices GROUP BY site ORDER BY site",
            )
            .fetch_all(pool)
            .await?;
            let ignored = sqlx::query_scalar::<_, String>(
                "SELECT scope_ref FROM variables WHERE name = $1 AND scope_kind = 'site' AND value = 'Y'",
            )
            .bind(IGNORE_VERSION_CHECK)
            .fetch_all(pool)
            .await?;
            (rows, ignored)
        });
        let mut sites: BTreeMap<String, SiteView> = rows
            .into_iter()
            .map(|(name, address, devices)| {
                (
                    name.clone(),
                    SiteView {
                        ignore_version_check: ignored.contains(&name),
                        name,
                        address,
                        devices: devices as u64,
                        settings: Default::default(),
                    },
                )
            })
            .collect();
        for name in ignored {
            sites.entry(name.clone()).or_insert(SiteView {
                name,
                address: String::new(),
                devices: 0,
                ignore_version_check: true,
                settings: Default::default(),
            });
        }
        for (name, settings) in self.all_site_settings().await? {
            sites
                .entry(name.clone())
                .or_insert(SiteView {
                    name,
                    address: String::new(),
                    devices: 0,
                    ignore_version_check: false,
                    settings: Default::default(),
                })
                .settings = settings;
        }
        Ok(sites.into_values().collect())
    }

    /// Sets a site's `ignore-version-check` preference, as the site-scoped variable of
    /// that name (`Y`/`N`), so the site's plugins read it too.
    pub async fn set_site_preferences(
        &self,
        site: &str,
        ignore_version_check: bool,
        now: i64,
        actor: &str,
    ) -> Result<()> {
        let value = if ignore_version_check { "Y" } else { "N" };
        self.change_variable(
            IGNORE_VERSION_CHECK,
            &VariableScope::Site {
                site: site.to_owned(),
            },
            Some(value),
            now,
            actor,
        )
        .await?;
        Ok(())
    }
}
