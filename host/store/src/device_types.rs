//! Device types: the enabled plugin, what the operator allows plugins on them, and
//! where their directories are on the terminals.

use posup_proto::agent::{DeviceConfig, PluginRef};
use posup_proto::api::{DeviceTypeBody, DeviceTypeView, PluginSummary};
use posup_proto::{Capabilities, DirPaths};
use serde_json::json;

use crate::plugins::sorted;
use crate::{Error, Result, Store, from_json, to_json, ts};

/// A device type's settings as the poll needs them.
#[derive(Debug, Clone)]
pub struct DeviceTypeConfig {
    pub config: DeviceConfig,
    pub poll_interval_secs: Option<u32>,
}

#[derive(sqlx::FromRow)]
struct Row {
    name: String,
    description: String,
    revision: i64,
    allowed: String,
    paths: String,
    poll_interval_secs: Option<i64>,
    updated_at: i64,
    site_limit: Option<i64>,
    impact: String,
    plugin_sha256: Option<String>,
    plugin_name: Option<String>,
    plugin_version: Option<String>,
    plugin_size: Option<i64>,
    plugin_caps: Option<String>,
    devices: i64,
}

const SELECT: &str = "SELECT dt.name, dt.description, dt.revision, dt.allowed, dt.paths, dt.poll_interval_secs, dt.updated_at, \
    dt.site_limit, dt.impact, dt.plugin_sha256, p.name AS plugin_name, p.version AS plugin_version, p.size AS plugin_size, p.capabilities AS plugin_caps, \
    (SELECT count(*) FROM devices d WHERE d.device_type = dt.name) AS devices \
    FROM device_types dt LEFT JOIN plugins p ON p.sha256 = dt.plugin_sha256";

/// The agent-side URL of a plugin.
pub(crate) fn plugin_url(sha256: &str) -> String {
    format!("{}/plugins/{sha256}", posup_proto::AGENT_PREFIX)
}

/// Checks a device type name: it appears in URLs, file paths and plugin `info`.
pub(crate) fn check_type_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'))
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "device type name `{name}` is invalid: use 1 to 64 lowercase letters, digits, `-`, `_` or `.`, starting with a letter or digit"
        )))
    }
}

fn check_body(name: &str, body: &DeviceTypeBody) -> Result<()> {
    for access in &body.allowed.dirs {
        match body.paths.get(access.dir) {
            None => {
                return Err(Error::Invalid(format!(
                    "device type {name} allows directory `{}` but gives it no path: add paths.{}",
                    access.dir.as_str(),
                    access.dir.as_str()
                )));
            }
            Some(path) if !is_absolute(path) => {
                return Err(Error::Invalid(format!(
                    "device type {name}: path of `{}` must be absolute, not `{path}`",
                    access.dir.as_str()
                )));
            }
            Some(_) => {}
        }
    }
    for service in &body.allowed.services {
        if service.trim().is_empty() || service.len() > 200 || service.chars().any(char::is_control)
        {
            return Err(Error::Invalid(format!(
                "device type {name}: service name `{service}` is invalid"
            )));
        }
    }
    if let Some(secs) = body.poll_interval_secs
        && !(5..=86_400).contains(&secs)
    {
        return Err(Error::Invalid(format!(
            "device type {name}: poll interval {secs} s is out of range: use 5 to 86400"
        )));
    }
    if body.site_limit == Some(0) {
        return Err(Error::Invalid(format!(
            "device type {name}: a site limit of 0 would never let an update start: give 1 or more, or leave it out"
        )));
    }
    if let Some(impact) = &body.impact {
        impact
            .parse::<posup_policy::text::Impact>()
            .map_err(|e| Error::Invalid(format!("device type {name}: {e}")))?;
    }
    Ok(())
}

/// A Unix path, or a Windows one with a drive letter.
fn is_absolute(path: &str) -> bool {
    let b = path.as_bytes();
    path.starts_with('/')
        || (b.len() >= 3
            && b[0].is_ascii_alphabetic()
            && b[1] == b':'
            && matches!(b[2], b'\\' | b'/'))
}

impl Row {
    fn view(self, default_poll: u32) -> Result<DeviceTypeView> {
        let allowed: Capabilities = from_json(&self.allowed, "device type capabilities")?;
        let paths: DirPaths = from_json(&self.paths, "device type paths")?;
        let requested: Option<Capabilities> = self
            .plugin_caps
            .as_deref()
            .map(|c| from_json(c, "plugin capabilities"))
            .transpose()?;
        let plugin = match (self.plugin_sha256, self.plugin_name, self.plugin_version) {
            (Some(sha256), Some(name), Some(version)) => Some(PluginSummary {
                name,
                version,
                sha256,
                size: self.plugin_size.unwrap_or(0) as u64,
            }),
            _ => None,
        };
        Ok(DeviceTypeView {
            granted: requested.map(|r| r.intersect(&allowed)),
            name: self.name,
            description: self.description,
            revision: self.revision,
            plugin,
            allowed,
            paths,
            poll_interval_secs: self
                .poll_interval_secs
                .map(|s| s as u32)
                .unwrap_or(default_poll),
            devices: self.devices as u64,
            updated_at: ts(self.updated_at),
            site_limit: self.site_limit.map(|k| k as u32),
            impact: self.impact,
        })
    }
}

impl Store {
    /// Creates a device type or replaces its settings (not its plugin).
    pub async fn put_device_type(
        &self,
        name: &str,
        body: &DeviceTypeBody,
        now: i64,
        actor: &str,
    ) -> Result<()> {
        check_type_name(name)?;
        check_body(name, body)?;
        let allowed = to_json(&sorted(body.allowed.clone()));
        let paths = to_json(&body.paths);
        let poll = body.poll_interval_secs.map(i64::from);
        let site_limit = body.site_limit.map(i64::from);
        let impact = body.impact.as_deref().unwrap_or("software");
        with_write!(self, pool => {
            let mut tx = pool.begin().await?;
            let updated = sqlx::query(
                "UPDATE device_types SET description = $2, allowed = $3, paths = $4, poll_interval_secs = $5, \
                 revision = revision + 1, updated_at = $6, site_limit = $7, impact = $8 WHERE name = $1",
            )
            .bind(name)
            .bind(&body.description)
            .bind(&allowed)
            .bind(&paths)
            .bind(poll)
            .bind(now)
            .bind(site_limit)
            .bind(impact)
            .execute(&mut *tx)
            .await?;
            let action = if updated.rows_affected() == 0 {
                sqlx::query(
                    "INSERT INTO device_types (name, description, revision, plugin_sha256, allowed, paths, poll_interval_secs, updated_at, site_limit, impact) \
                     VALUES ($1, $2, 1, NULL, $3, $4, $5, $6, $7, $8)",
                )
                .bind(name)
                .bind(&body.description)
                .bind(&allowed)
                .bind(&paths)
                .bind(poll)
                .bind(now)
                .bind(site_limit)
                .bind(impact)
                .execute(&mut *tx)
                .await?;
                "device_type.create"
            } else {
                "device_type.update"
            };
            audit!(&mut *tx, now, actor, action, "device_type", name, json!(body));
            bump!(&mut *tx, "devices");
            tx.commit().await?;
        });
        Ok(())
    }

    /// Changes only what the operator allows plugins on a device type (the grants
    /// editor), checked as [`Store::put_device_type`] checks it; the rest stays.
    pub async fn set_allowed(
        &self,
        name: &str,
        allowed: &posup_proto::Capabilities,
        now: i64,
        actor: &str,
    ) -> Result<()> {
        let current = self
            .device_type(name, 60)
            .await?
            .ok_or_else(|| Error::NotFound(format!("device type {name} does not exist")))?;
        check_body(
            name,
            &DeviceTypeBody {
                allowed: allowed.clone(),
                paths: current.paths.clone(),
                ..Default::default()
            },
        )?;
        let json_allowed = to_json(&sorted(allowed.clone()));
        with_write!(self, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query("UPDATE device_types SET allowed = $2, revision = revision + 1, updated_at = $3 WHERE name = $1")
                .bind(name)
                .bind(&json_allowed)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            audit!(&mut *tx, now, actor, "device_type.allow", "device_type", name, json!(allowed));
            bump!(&mut *tx, "devices");
            tx.commit().await?;
        });
        Ok(())
    }

    pub async fn device_type(
        &self,
        name: &str,
        default_poll: u32,
    ) -> Result<Option<DeviceTypeView>> {
        let row: Option<Row> = with_read!(self, pool => {
            sqlx::query_as(&format!("{SELECT} WHERE dt.name = $1"))
                .bind(name)
                .fetch_optional(pool)
                .await?
        });
        row.map(|r| r.view(default_poll)).transpose()
    }

    pub async fn list_device_types(&self, default_poll: u32) -> Result<Vec<DeviceTypeView>> {
        let rows: Vec<Row> = with_read!(self, pool => {
            sqlx::query_as(&format!("{SELECT} ORDER BY dt.name"))
                .fetch_all(pool)
                .await?
        });
        rows.into_iter().map(|r| r.view(default_poll)).collect()
    }

    pub(crate) async fn require_device_type(&self, name: &str) -> Result<()> {
        let exists: Option<i64> = with_read!(self, pool => {
            sqlx::query_scalar("SELECT revision FROM device_types WHERE name = $1")
                .bind(name)
                .fetch_optional(pool)
                .await?
        });
        exists.map(|_| ()).ok_or_else(|| unknown_type(name))
    }

    /// Deletes a device type without devices or packages.
    pub async fn delete_device_type(&self, name: &str, now: i64, actor: &str) -> Result<()> {
        with_write!(self, pool => {
            let mut tx = pool.begin().await?;
            let devices: i64 = sqlx::query_scalar("SELECT count(*) FROM devices WHERE device_type = $1")
                .bind(name)
                .fetch_one(&mut *tx)
                .await?;
            if devices > 0 {
                return Err(Error::Conflict(format!(
                    "device type {name} still has {devices} devices: delete them first"
                )));
            }
            let packages: i64 = sqlx::query_scalar("SELECT count(*) FROM packages WHERE device_type = $1")
                .bind(name)
                .fetch_one(&mut *tx)
                .await?;
            if packages > 0 {
                return Err(Error::Conflict(format!(
                    "device type {name} still has {packages} packages: delete them first"
                )));
            }
            let done = sqlx::query("DELETE FROM device_types WHERE name = $1")
                .bind(name)
                .execute(&mut *tx)
                .await?;
            if done.rows_affected() == 0 {
                return Err(Error::NotFound(format!("device type {name} does not exist")));
            }
            audit!(&mut *tx, now, actor, "device_type.delete", "device_type", name, json!({}));
            bump!(&mut *tx, "devices");
            tx.commit().await?;
            Ok(())
        })
    }

    /// Enables a plugin for a device type. The plugin must say in its `info` that it
    /// updates this device type.
    pub async fn enable_plugin(
        &self,
        device_type: &str,
        name: &str,
        version: Option<&str>,
        now: i64,
        actor: &str,
    ) -> Result<PluginSummary> {
        self.require_device_type(device_type).await?;
        let plugin = self.plugin_by_name(name, version).await?.ok_or_else(|| {
            Error::Invalid(match version {
                Some(v) => format!("plugin {name} version {v} is not uploaded: upload it first"),
                None => format!("plugin {name} is not uploaded: upload it first"),
            })
        })?;
        if !plugin.device_types.iter().any(|t| t == device_type) {
            return Err(Error::Invalid(format!(
                "plugin {} {} does not update device type {device_type} (it updates: {})",
                plugin.name,
                plugin.version,
                plugin.device_types.join(", ")
            )));
        }
        with_write!(self, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query(
                "UPDATE device_types SET plugin_sha256 = $2, revision = revision + 1, updated_at = $3 WHERE name = $1",
            )
            .bind(device_type)
            .bind(&plugin.sha256)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            audit!(&mut *tx, now, actor, "device_type.enable_plugin", "device_type", device_type,
                json!({"plugin": plugin.name, "version": plugin.version, "sha256": plugin.sha256}));
            bump!(&mut *tx, "devices");
            tx.commit().await?;
        });
        Ok(PluginSummary {
            name: plugin.name,
            version: plugin.version,
            sha256: plugin.sha256,
            size: plugin.size,
        })
    }

    pub async fn disable_plugin(&self, device_type: &str, now: i64, actor: &str) -> Result<()> {
        with_write!(self, pool => {
            let mut tx = pool.begin().await?;
            let done = sqlx::query(
                "UPDATE device_types SET plugin_sha256 = NULL, revision = revision + 1, updated_at = $2 WHERE name = $1",
            )
            .bind(device_type)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() == 0 {
                return Err(unknown_type(device_type));
            }
            audit!(&mut *tx, now, actor, "device_type.disable_plugin", "device_type", device_type, json!({}));
            bump!(&mut *tx, "devices");
            tx.commit().await?;
            Ok(())
        })
    }

    /// What an agent of this device type is told.
    pub async fn device_config(&self, device_type: &str) -> Result<DeviceTypeConfig> {
        let row: Option<Row> = with_read!(self, pool => {
            sqlx::query_as(&format!("{SELECT} WHERE dt.name = $1"))
                .bind(device_type)
                .fetch_optional(pool)
                .await?
        });
        let row = row.ok_or_else(|| unknown_type(device_type))?;
        let poll_interval_secs = row.poll_interval_secs.map(|s| s as u32);
        let view = row.view(0)?;
        Ok(DeviceTypeConfig {
            config: DeviceConfig {
                device_type: view.name,
                revision: view.revision,
                plugin: view.plugin.map(|p| PluginRef {
                    url: plugin_url(&p.sha256),
                    name: p.name,
                    version: p.version,
                    sha256: p.sha256,
                    size: p.size,
                }),
                allowed: view.allowed,
                paths: view.paths,
            },
            poll_interval_secs,
        })
    }
}

/// The error for a device type name that does not exist, wherever it is named.
pub(crate) fn unknown_type(name: &str) -> Error {
    Error::Invalid(format!(
        "device type {name} does not exist: create it with PUT /api/v1/device-types/{name}"
    ))
}
