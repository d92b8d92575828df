//! Plugins and packages: the records of content-addressed blobs.

use posup_proto::Capabilities;
use posup_proto::api::{PackagePatch, PackageState, PackageView, PluginView};
use serde_json::json;

use crate::{Error, Result, Store, from_json, to_json, ts};

/// A validated plugin, as its `info` described it.
#[derive(Debug, Clone)]
pub struct NewPlugin {
    pub sha256: String,
    pub name: String,
    pub vendor: String,
    pub version: String,
    pub description: String,
    pub device_types: Vec<String>,
    pub capabilities: Capabilities,
    pub interface: String,
    pub size: u64,
}

/// An inspected package.
#[derive(Debug, Clone)]
pub struct NewPackage {
    pub device_type: String,
    pub file_name: String,
    pub sha256: String,
    pub size: u64,
    pub version: String,
    pub kind: String,
    pub notes: String,
    pub changelog: String,
    pub rollback: bool,
    pub plugin_sha256: String,
}

#[derive(sqlx::FromRow)]
struct PluginRow {
    sha256: String,
    name: String,
    vendor: String,
    version: String,
    description: String,
    device_types: String,
    capabilities: String,
    interface: String,
    size: i64,
    uploaded_at: i64,
}

const PLUGIN_COLUMNS: &str = "sha256, name, vendor, version, description, device_types, capabilities, interface, size, uploaded_at";

#[derive(sqlx::FromRow)]
struct PackageRow {
    id: i64,
    device_type: String,
    file_name: String,
    sha256: String,
    size: i64,
    version: String,
    kind: String,
    notes: String,
    changelog: String,
    rollback: bool,
    current: bool,
    plugin_sha256: String,
    uploaded_at: i64,
    archived_at: Option<i64>,
}

const PACKAGE_COLUMNS: &str = "id, device_type, file_name, sha256, size, version, kind, notes, changelog, rollback, current, plugin_sha256, uploaded_at, archived_at";

/// What deleting a package did.
#[derive(Debug, Clone)]
pub enum Removal {
    /// It is gone; `blob_unused` when no other package or plugin has its bytes,
    /// so the blob may go too.
    Deleted {
        package: PackageView,
        blob_unused: bool,
    },
    /// History refers to it: hidden and kept.
    Archived(PackageView),
}

impl PackageRow {
    fn view(self) -> PackageView {
        PackageView {
            id: self.id,
            device_type: self.device_type,
            file_name: self.file_name,
            sha256: self.sha256,
            size: self.size as u64,
            version: self.version,
            kind: self.kind,
            notes: self.notes,
            changelog: self.changelog,
            rollback: self.rollback,
            state: if self.current {
                PackageState::Current
            } else {
                PackageState::Install
            },
            plugin_sha256: self.plugin_sha256,
            uploaded_at: ts(self.uploaded_at),
            // Signatures live in the TUF repository; the server adds them.
            signatures: Vec::new(),
            archived: self.archived_at.is_some(),
        }
    }
}

/// Capabilities as stored: the wire form, in a canonical order.
pub(crate) fn sorted(mut caps: Capabilities) -> Capabilities {
    caps.dirs.sort_by_key(|d| d.dir);
    caps.dirs.dedup_by_key(|d| d.dir);
    caps.services.sort();
    caps.services.dedup();
    caps.databases.sort();
    caps.databases.dedup();
    caps
}

impl Store {
    /// Records a validated plugin. Uploading the same bytes again returns the
    /// existing record; another component under the same name and version is a
    /// conflict.
    pub async fn insert_plugin(
        &self,
        plugin: NewPlugin,
        now: i64,
        actor: &str,
    ) -> Result<PluginView> {
        with_write!(self, pool => {
            let mut tx = pool.begin().await?;
            // A plugin name belongs to the vendor that published it first, so no
            // vendor's build can stand in for another's on a device type.
            let owner: Option<String> = sqlx::query_scalar("SELECT vendor FROM plugins WHERE name = $1 AND vendor <> $2 LIMIT 1")
                .bind(&plugin.name)
                .bind(&plugin.vendor)
                .fetch_optional(&mut *tx)
                .await?;
            if let Some(owner) = owner {
                return Err(Error::Conflict(format!(
                    "plugin name {} belongs to vendor {owner}; this plugin says vendor {}: give it a name of its own",
                    plugin.name, plugin.vendor
                )));
            }
            let existing: Option<String> = sqlx::query_scalar("SELECT sha256 FROM plugins WHERE name = $1 AND version = $2")
                .bind(&plugin.name)
                .bind(&plugin.version)
                .fetch_optional(&mut *tx)
                .await?;
            match existing {
                Some(sha) if sha == plugin.sha256 => {}
                Some(sha) => {
                    return Err(Error::Conflict(format!(
                        "plugin {} version {} is already uploaded with other content (sha256 {sha}): give the new build a new version",
                        plugin.name, plugin.version
                    )));
                }
                None => {
                    sqlx::query(
                        "INSERT INTO plugins (sha256, name, vendor, version, description, device_types, capabilities, interface, size, uploaded_at) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                    )
                    .bind(&plugin.sha256)
                    .bind(&plugin.name)
                    .bind(&plugin.vendor)
                    .bind(&plugin.version)
                    .bind(&plugin.description)
                    .bind(to_json(&plugin.device_types))
                    .bind(to_json(&sorted(plugin.capabilities.clone())))
                    .bind(&plugin.interface)
                    .bind(plugin.size as i64)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                    audit!(&mut *tx, now, actor, "plugin.upload", "plugin", plugin.sha256,
                        json!({"name": plugin.name, "version": plugin.version}));
                }
            }
            tx.commit().await?;
        });
        self.plugin(&plugin.sha256).await?.ok_or_else(|| {
            Error::NotFound(format!(
                "plugin {} vanished while being stored",
                plugin.sha256
            ))
        })
    }

    pub async fn list_plugins(&self) -> Result<Vec<PluginView>> {
        let rows: Vec<PluginRow> = with_read!(self, pool => {
            sqlx::query_as(&format!("SELECT {PLUGIN_COLUMNS} FROM plugins ORDER BY name, uploaded_at"))
                .fetch_all(pool)
                .await?
        });
        let enabled = self.enabled_plugins().await?;
        rows.into_iter().map(|r| plugin_view(r, &enabled)).collect()
    }

    pub async fn plugin(&self, sha256: &str) -> Result<Option<PluginView>> {
        let row: Option<PluginRow> = with_read!(self, pool => {
            sqlx::query_as(&format!("SELECT {PLUGIN_COLUMNS} FROM plugins WHERE sha256 = $1"))
                .bind(sha256)
                .fetch_optional(pool)
                .await?
        });
        let enabled = self.enabled_plugins().await?;
        row.map(|r| plugin_view(r, &enabled)).transpose()
    }

    /// The plugin of that name at `version`, or its newest upload.
    pub async fn plugin_by_name(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> Result<Option<PluginView>> {
        let row: Option<PluginRow> = with_read!(self, pool => {
            match version {
                Some(v) => sqlx::query_as(&format!("SELECT {PLUGIN_COLUMNS} FROM plugins WHERE name = $1 AND version = $2"))
                    .bind(name)
                    .bind(v)
                    .fetch_optional(pool)
                    .await?,
                None => sqlx::query_as(&format!(
                    "SELECT {PLUGIN_COLUMNS} FROM plugins WHERE name = $1 ORDER BY uploaded_at DESC, sha256 LIMIT 1"
                ))
                .bind(name)
                .fetch_optional(pool)
                .await?,
            }
        });
        let enabled = self.enabled_plugins().await?;
        row.map(|r| plugin_view(r, &enabled)).transpose()
    }

    async fn enabled_plugins(&self) -> Result<Vec<(String, String)>> {
        Ok(with_read!(self, pool => {
            sqlx::query_as("SELECT plugin_sha256, name FROM device_types WHERE plugin_sha256 IS NOT NULL ORDER BY name")
                .fetch_all(pool)
                .await?
        }))
    }

    /// Deletes a plugin that no device type enables and no task or package uses.
    pub async fn delete_plugin(&self, sha256: &str, now: i64, actor: &str) -> Result<()> {
        with_write!(self, pool => {
            let mut tx = pool.begin().await?;
            let name: Option<String> = sqlx::query_scalar("SELECT name FROM plugins WHERE sha256 = $1")
                .bind(sha256)
                .fetch_optional(&mut *tx)
                .await?;
            let Some(name) = name else {
                return Err(Error::NotFound(format!("plugin {sha256} does not exist")));
            };
            let enabled: Option<String> = sqlx::query_scalar("SELECT name FROM device_types WHERE plugin_sha256 = $1 LIMIT 1")
                .bind(sha256)
                .fetch_optional(&mut *tx)
                .await?;
            if let Some(dt) = enabled {
                return Err(Error::Conflict(format!(
                    "plugin {name} ({sha256}) is enabled for device type {dt}: disable it there first"
                )));
            }
            let task: Option<i64> = sqlx::query_scalar("SELECT id FROM tasks WHERE plugin_sha256 = $1 LIMIT 1")
                .bind(sha256)
                .fetch_optional(&mut *tx)
                .await?;
            if let Some(task) = task {
                return Err(Error::Conflict(format!(
                    "plugin {name} ({sha256}) is used by task {task}: delete the task first"
                )));
            }
            let package: Option<i64> = sqlx::query_scalar("SELECT id FROM packages WHERE plugin_sha256 = $1 LIMIT 1")
                .bind(sha256)
                .fetch_optional(&mut *tx)
                .await?;
            if let Some(package) = package {
                return Err(Error::Conflict(format!(
                    "plugin {name} ({sha256}) inspected package {package}: delete the package first"
                )));
            }
            sqlx::query("DELETE FROM plugins WHERE sha256 = $1").bind(sha256).execute(&mut *tx).await?;
            audit!(&mut *tx, now, actor, "plugin.delete", "plugin", sha256, json!({"name": name}));
            tx.commit().await?;
            Ok(())
        })
    }

    /// Records an inspected package (state `Install`).
    pub async fn insert_package(
        &self,
        p: NewPackage,
        now: i64,
        actor: &str,
    ) -> Result<PackageView> {
        let id = with_write!(self, pool => {
            let mut tx = pool.begin().await?;
            let existing: Option<(i64, String, Option<i64>)> = sqlx::query_as(
                "SELECT id, file_name, archived_at FROM packages WHERE device_type = $1 AND sha256 = $2",
            )
            .bind(&p.device_type)
            .bind(&p.sha256)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some((id, _, Some(_))) = existing {
                // The same bytes uploaded again: the archived package comes back.
                sqlx::query("UPDATE packages SET archived_at = NULL WHERE id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                audit!(&mut *tx, now, actor, "package.restore", "package", id,
                    json!({"device_type": p.device_type, "file_name": p.file_name}));
                tx.commit().await?;
                return self
                    .package(id)
                    .await?
                    .ok_or_else(|| Error::NotFound(format!("package {id} vanished while being restored")));
            }
            if let Some((id, file, None)) = existing {
                return Err(Error::Conflict(format!(
                    "this file is already uploaded for device type {} as package {id} ({file})",
                    p.device_type
                )));
            }
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO packages (device_type, file_name, sha256, size, version, kind, notes, changelog, rollback, current, plugin_sha256, uploaded_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, FALSE, $10, $11) RETURNING id",
            )
            .bind(&p.device_type)
            .bind(&p.file_name)
            .bind(&p.sha256)
            .bind(p.size as i64)
            .bind(&p.version)
            .bind(&p.kind)
            .bind(&p.notes)
            .bind(&p.changelog)
            .bind(p.rollback)
            .bind(&p.plugin_sha256)
            .bind(now)
            .fetch_one(&mut *tx)
            .await?;
            audit!(&mut *tx, now, actor, "package.upload", "package", id,
                json!({"device_type": p.device_type, "file_name": p.file_name, "version": p.version, "sha256": p.sha256}));
            tx.commit().await?;
            id
        });
        self.package(id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("package {id} vanished while being stored")))
    }

    pub async fn list_packages(&self, device_type: Option<&str>) -> Result<Vec<PackageView>> {
        let rows: Vec<PackageRow> = with_read!(self, pool => {
            match device_type {
                Some(dt) => sqlx::query_as(&format!("SELECT {PACKAGE_COLUMNS} FROM packages WHERE device_type = $1 AND archived_at IS NULL ORDER BY id"))
                    .bind(dt)
                    .fetch_all(pool)
                    .await?,
                None => sqlx::query_as(&format!("SELECT {PACKAGE_COLUMNS} FROM packages WHERE archived_at IS NULL ORDER BY id"))
                    .fetch_all(pool)
                    .await?,
            }
        });
        Ok(rows.into_iter().map(PackageRow::view).collect())
    }

    pub async fn package(&self, id: i64) -> Result<Option<PackageView>> {
        let row: Option<PackageRow> = with_read!(self, pool => {
            sqlx::query_as(&format!("SELECT {PACKAGE_COLUMNS} FROM packages WHERE id = $1"))
                .bind(id)
                .fetch_optional(pool)
                .await?
        });
        Ok(row.map(PackageRow::view))
    }

    /// A package of `device_type` with this content, for agent downloads.
    pub async fn package_by_sha(
        &self,
        sha256: &str,
        device_type: &str,
    ) -> Result<Option<PackageView>> {
        let row: Option<PackageRow> = with_read!(self, pool => {
            sqlx::query_as(&format!("SELECT {PACKAGE_COLUMNS} FROM packages WHERE sha256 = $1 AND device_type = $2"))
                .bind(sha256)
                .bind(device_type)
                .fetch_optional(pool)
                .await?
        });
        Ok(row.map(PackageRow::view))
    }

    pub async fn patch_package(
        &self,
        id: i64,
        patch: &PackagePatch,
        now: i64,
        actor: &str,
    ) -> Result<PackageView> {
        with_write!(self, pool => {
            let mut tx = pool.begin().await?;
            let done = sqlx::query(
                "UPDATE packages SET notes = COALESCE($2, notes), changelog = COALESCE($3, changelog) WHERE id = $1",
            )
            .bind(id)
            .bind(patch.notes.clone())
            .bind(patch.changelog.clone())
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() == 0 {
                return Err(Error::NotFound(format!("package {id} does not exist")));
            }
            audit!(&mut *tx, now, actor, "package.edit", "package", id, json!(patch));
            tx.commit().await?;
        });
        self.package(id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("package {id} does not exist")))
    }

    /// Makes a package the `Current` one of its device type; the others become
    /// `Install`.
    pub async fn set_current_package(&self, id: i64, now: i64, actor: &str) -> Result<PackageView> {
        let device_type = with_write!(self, pool => {
            let mut tx = pool.begin().await?;
            let row: Option<(String, Option<i64>)> =
                sqlx::query_as("SELECT device_type, archived_at FROM packages WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await?;
            let Some((dt, archived)) = row else {
                return Err(Error::NotFound(format!("package {id} does not exist")));
            };
            if archived.is_some() {
                return Err(Error::Invalid(format!(
                    "package {id} is archived: upload its file again to use it"
                )));
            }
            // Two statements: the unique index on the Current package is checked row
            // by row, so the old one must be cleared before the new one is set.
            sqlx::query("UPDATE packages SET current = FALSE WHERE device_type = $1 AND current = TRUE")
                .bind(&dt)
                .execute(&mut *tx)
                .await?;
            sqlx::query("UPDATE packages SET current = TRUE WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            audit!(&mut *tx, now, actor, "package.current", "package", id, json!({"device_type": dt}));
            tx.commit().await?;
            dt
        });
        // Without an explicit reference, the Current package is the reference.
        self.recompute_versions(Some(&device_type), now).await?;
        self.package(id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("package {id} does not exist")))
    }

    /// Deletes a package, or archives it when a task or a rollout refers to it:
    /// history keeps naming the package it ran, and a deleted package would be a
    /// dead end (a task to delete first, a rollout before it).
    pub async fn delete_package(&self, id: i64, now: i64, actor: &str) -> Result<Removal> {
        let package = self
            .package(id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("package {id} does not exist")))?;
        let archived = with_write!(self, pool => {
            let mut tx = pool.begin().await?;
            let referred: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM tasks WHERE package_id = $1) \
                 OR EXISTS (SELECT 1 FROM rollout_packages WHERE package_id = $1)",
            )
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
            let blob_unused = if referred {
                sqlx::query("UPDATE packages SET archived_at = $2, current = FALSE WHERE id = $1")
                    .bind(id)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                audit!(&mut *tx, now, actor, "package.archive", "package", id,
                    json!({"file_name": package.file_name, "device_type": package.device_type}));
                false
            } else {
                let done = sqlx::query("DELETE FROM packages WHERE id = $1").bind(id).execute(&mut *tx).await?;
                if done.rows_affected() == 0 {
                    return Err(Error::NotFound(format!("package {id} does not exist")));
                }
                audit!(&mut *tx, now, actor, "package.delete", "package", id,
                    json!({"file_name": package.file_name, "device_type": package.device_type}));
                bump!(&mut *tx, "packages");
                let others: i64 = sqlx::query_scalar(
                    "SELECT (SELECT count(*) FROM packages WHERE sha256 = $1) + (SELECT count(*) FROM plugins WHERE sha256 = $1)",
                )
                .bind(&package.sha256)
                .fetch_one(&mut *tx)
                .await?;
                others == 0
            };
            tx.commit().await?;
            referred.then_some(()).ok_or(blob_unused)
        });
        if package.state == PackageState::Current {
            self.recompute_versions(Some(&package.device_type), now)
                .await?;
        }
        Ok(match archived {
            Ok(()) => Removal::Archived(
                self.package(id)
                    .await?
                    .ok_or_else(|| Error::NotFound(format!("package {id} does not exist")))?,
            ),
            Err(blob_unused) => Removal::Deleted {
                package,
                blob_unused,
            },
        })
    }
}

fn plugin_view(r: PluginRow, enabled: &[(String, String)]) -> Result<PluginView> {
    Ok(PluginView {
        device_types: from_json(&r.device_types, "plugin device types")?,
        capabilities: from_json(&r.capabilities, "plugin capabilities")?,
        enabled_for: enabled
            .iter()
            .filter(|(sha, _)| *sha == r.sha256)
            .map(|(_, dt)| dt.clone())
            .collect(),
        sha256: r.sha256,
        name: r.name,
        vendor: r.vendor,
        version: r.version,
        description: r.description,
        interface: r.interface,
        size: r.size as u64,
        uploaded_at: ts(r.uploaded_at),
        signatures: Vec::new(),
    })
}
