//! The version overview (the Openbravo model): each device's version status against
//! its device type's reference, kept up to date when a device reports a changed
//! inventory, when the reference changes, and on demand.

use posup_proto::Page;
use posup_proto::api::{
    ModuleDeviceRow, ModuleDifference, ModuleQuery, ModuleRow, ReferenceBody, ReferenceView,
    ServerStatus, VersionDetail, VersionQuery, VersionRow, VersionStatus,
};
use serde_json::json;

use crate::devices::{WITH_CONTACTS, reference_of};
use crate::sql::{Cond, Sql};
use crate::version::{self, Reference};
use crate::{At, Error, Result, Store, from_json, paging, to_json, ts, ts_opt};

#[derive(sqlx::FromRow)]
struct Row {
    id: i64,
    guid: String,
    name: String,
    site: String,
    device_type: String,
    version: String,
    pending_sync: i64,
    last_contact: i64,
    v_status: String,
    v_error: Option<String>,
    v_computed: String,
    v_reference: Option<String>,
    v_differing: i64,
    v_computed_at: Option<i64>,
    busy: i64,
    ignored: i64,
}

// `busy` repeats the active-state list so the partial index on unfinished task
// devices serves it; `ignored` reads the site's `ignore-version-check` variable.
const SELECT: &str = "SELECT d.id, d.guid, d.name, d.site, d.device_type, d.version, d.pending_sync, c.last_contact, \
    d.v_status, d.v_error, d.v_computed, d.v_reference, d.v_differing, d.v_computed_at, \
    (SELECT count(*) FROM task_devices td WHERE td.device_id = d.id AND td.state IN ('pending', 'running', 'waiting') AND td.state = 'running') AS busy, \
    (SELECT count(*) FROM variables v WHERE v.name = 'ignore-version-check' AND v.scope_kind = 'site' AND v.scope_ref = d.site AND v.value = 'Y') AS ignored \
    FROM devices d JOIN device_contacts c ON c.device_id = d.id";

impl Row {
    fn row(self, at: &At) -> Result<VersionRow> {
        let online = self.last_contact != 0 && self.last_contact >= at.online_since;
        let stored = VersionStatus::parse(&self.v_status)
            .ok_or_else(|| Error::Corrupt(format!("version status `{}`", self.v_status)))?;
        // What the device said is only as good as its contact: out of contact, its
        // version is unknown (the Openbravo overview shows "unreachable").
        let (status, error) = if online {
            (stored, self.v_error)
        } else if self.last_contact == 0 {
            (
                VersionStatus::Unknown,
                Some("the device has never been in contact".to_owned()),
            )
        } else {
            (
                VersionStatus::Unknown,
                Some(format!(
                    "the device is offline since {}",
                    ts(self.last_contact).to_rfc3339()
                )),
            )
        };
        Ok(VersionRow {
            device_id: self.id,
            guid: self.guid,
            name: self.name,
            site: self.site,
            device_type: self.device_type,
            server_status: match (online, self.busy > 0) {
                (false, _) => ServerStatus::Offline,
                (true, true) => ServerStatus::Transitioning,
                (true, false) => ServerStatus::Online,
            },
            status,
            error,
            version: self.version,
            computed_version: self.v_computed,
            reference_version: self.v_reference,
            pending_sync: self.pending_sync as u32,
            differing_modules: self.v_differing as u32,
            ignore_version_check: self.ignored > 0,
            computed_at: self.v_computed_at.and_then(ts_opt),
        })
    }
}

impl Store {
    /// The reference of a device type: the explicit one, else the `Current`
    /// package's version.
    pub(crate) async fn reference_for(&self, device_type: &str) -> Result<Option<Reference>> {
        Ok(self.reference_view(device_type).await?.map(|r| Reference {
            version: r.version,
            modules: r.modules,
        }))
    }

    pub async fn reference_view(&self, device_type: &str) -> Result<Option<ReferenceView>> {
        type Explicit = (String, String, String, i64);
        type Current = (String, String, i64);
        let (explicit, current): (Option<Explicit>, Option<Current>) = with_read!(self, pool => {
            let explicit = sqlx::query_as::<_, Explicit>(
                "SELECT version, modules, source, updated_at FROM version_references WHERE device_type = $1",
            )
            .bind(device_type)
            .fetch_optional(pool)
            .await?;
            let current = sqlx::query_as::<_, Current>(
                "SELECT version, file_name, uploaded_at FROM packages WHERE device_type = $1 AND current = TRUE",
            )
            .bind(device_type)
            .fetch_optional(pool)
            .await?;
            (explicit, current)
        });
        if let Some((version, modules, source, updated_at)) = explicit {
            let r = reference_of(version, &modules)?;
            return Ok(Some(ReferenceView {
                device_type: device_type.to_owned(),
                version: r.version,
                modules: r.modules,
                source,
                updated_at: ts(updated_at),
            }));
        }
        Ok(current.map(|(version, file, uploaded_at)| ReferenceView {
            device_type: device_type.to_owned(),
            version,
            modules: Vec::new(),
            source: format!("package {file}"),
            updated_at: ts(uploaded_at),
        }))
    }

    /// Sets the explicit reference of a device type and recomputes its devices.
    pub async fn set_reference(
        &self,
        device_type: &str,
        body: &ReferenceBody,
        now: i64,
        actor: &str,
    ) -> Result<ReferenceView> {
        self.require_device_type(device_type).await?;
        let (version, modules, source) = match (body.from_device, &body.version) {
            (Some(id), None) if body.modules.is_empty() => {
                let (inv, _, guid) = self
                    .stored_inventory(id)
                    .await?
                    .ok_or_else(|| Error::Invalid(format!("device {id} does not exist")))?;
                let inv = inv.ok_or_else(|| {
                    Error::Invalid(format!(
                        "device {id} ({guid}) has not reported its installation yet"
                    ))
                })?;
                (inv.version, inv.modules, format!("device {guid}"))
            }
            (None, Some(v)) => (v.clone(), body.modules.clone(), "explicit".to_owned()),
            _ => {
                return Err(Error::Invalid(format!(
                    "reference of device type {device_type}: give either `version` (and `modules`) or `from_device`"
                )));
            }
        };
        with_write!(self, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query(
                "INSERT INTO version_references (device_type, version, modules, source, updated_at) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (device_type) DO UPDATE SET version = excluded.version, modules = excluded.modules, \
                 source = excluded.source, updated_at = excluded.updated_at",
            )
            .bind(device_type)
            .bind(&version)
            .bind(to_json(&modules))
            .bind(&source)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            audit!(&mut *tx, now, actor, "reference.set", "device_type", device_type,
                json!({"version": version, "modules": modules, "source": source}));
            tx.commit().await?;
        });
        self.recompute_versions(Some(device_type), now).await?;
        self.reference_view(device_type).await?.ok_or_else(|| {
            Error::NotFound(format!("reference of device type {device_type} vanished"))
        })
    }

    /// Removes the explicit reference (the `Current` package is the reference again).
    pub async fn clear_reference(&self, device_type: &str, now: i64, actor: &str) -> Result<()> {
        self.require_device_type(device_type).await?;
        with_write!(self, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query("DELETE FROM version_references WHERE device_type = $1")
                .bind(device_type)
                .execute(&mut *tx)
                .await?;
            audit!(&mut *tx, now, actor, "reference.clear", "device_type", device_type, json!({}));
            tx.commit().await?;
        });
        self.recompute_versions(Some(device_type), now).await?;
        Ok(())
    }

    /// Recomputes the version status of every device (of one type). Returns how
    /// many devices were computed.
    pub async fn recompute_versions(&self, device_type: Option<&str>, now: i64) -> Result<u64> {
        let types: Vec<String> = match device_type {
            Some(t) => {
                self.require_device_type(t).await?;
                vec![t.to_owned()]
            }
            None => with_read!(self, pool => {
                sqlx::query_scalar("SELECT name FROM device_types ORDER BY name").fetch_all(pool).await?
            }),
        };
        let mut total = 0u64;
        for dt in types {
            let reference = self.reference_for(&dt).await?;
            let mut after = 0i64;
            loop {
                let batch: Vec<(i64, Option<String>, Option<String>)> = with_read!(self, pool => {
                    sqlx::query_as(
                        "SELECT id, inventory, inventory_error FROM devices WHERE device_type = $1 AND id > $2 ORDER BY id LIMIT 1000",
                    )
                    .bind(&dt)
                    .bind(after)
                    .fetch_all(pool)
                    .await?
                });
                let Some(last) = batch.last() else { break };
                after = last.0;
                let mut updates = Vec::with_capacity(batch.len());
                for (id, inv, err) in &batch {
                    let inv: Option<posup_proto::Inventory> = inv
                        .as_deref()
                        .map(|i| from_json(i, "device inventory"))
                        .transpose()?;
                    updates.push((
                        *id,
                        version::compute(&dt, inv.as_ref(), err.as_deref(), reference.as_ref()),
                    ));
                }
                with_write!(self, pool => {
                    let mut tx = pool.begin().await?;
                    for (id, c) in &updates {
                        sqlx::query(
                            "UPDATE devices SET v_status = $2, v_error = $3, v_computed = $4, v_reference = $5, v_differing = $6, \
                             v_differences = $7, v_computed_at = $8 WHERE id = $1",
                        )
                        .bind(*id)
                        .bind(c.status.as_str())
                        .bind(c.error.clone())
                        .bind(&c.computed_version)
                        .bind(reference.as_ref().map(|r| r.version.clone()))
                        .bind(c.differences.len() as i64)
                        .bind(to_json(&c.differences))
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                    }
                    tx.commit().await?;
                });
                total += updates.len() as u64;
            }
        }
        Ok(total)
    }

    /// One page of the version overview.
    pub async fn versions(&self, q: &VersionQuery, at: &At) -> Result<Page<VersionRow>> {
        let mut cond = Cond::new("1 = 1");
        if let Some(dt) = &q.device_type {
            cond.push(" AND d.device_type = ").bind(dt.as_str());
        }
        if let Some(site) = &q.site {
            cond.push(" AND d.site = ").bind(site.as_str());
        }
        match q.status {
            Some(VersionStatus::Unknown) => {
                cond.push(
                    " AND (d.v_status = 'Unknown' OR c.last_contact = 0 OR c.last_contact < ",
                )
                .bind(at.online_since)
                .push(")");
            }
            Some(s) => {
                cond.push(" AND d.v_status = ")
                    .bind(s.as_str())
                    .push(" AND c.last_contact > 0 AND c.last_contact >= ")
                    .bind(at.online_since);
            }
            None => {}
        }
        let (page, per_page) = paging(q.page, q.per_page);
        let mut select = Sql::new(&format!("{SELECT} WHERE "));
        select
            .append(&cond)
            .push(" ORDER BY d.site, d.number, d.id")
            .page(page, per_page);
        let mut count = Sql::new(&format!("SELECT count(*) FROM {WITH_CONTACTS} WHERE "));
        count.append(&cond);
        let (rows, total): (Vec<Row>, i64) = fetch_page!(self, Row, select, count);
        Ok(Page {
            items: rows.into_iter().map(|r| r.row(at)).collect::<Result<_>>()?,
            total: total as u64,
            page,
            per_page,
        })
    }

    /// One device in the version overview, with its differing modules and every
    /// module next to the reference's version.
    pub async fn version_detail(&self, device_id: i64, at: &At) -> Result<Option<VersionDetail>> {
        let row: Option<(Row, Option<String>)> = with_read!(self, pool => {
            let row = sqlx::query_as::<_, Row>(&format!("{SELECT} WHERE d.id = $1"))
                .bind(device_id)
                .fetch_optional(pool)
                .await?;
            match row {
                Some(r) => {
                    let diffs: Option<String> = sqlx::query_scalar("SELECT v_differences FROM devices WHERE id = $1")
                        .bind(device_id)
                        .fetch_one(pool)
                        .await?;
                    Some((r, diffs))
                }
                None => None,
            }
        });
        let Some((row, diffs)) = row else {
            return Ok(None);
        };
        let reference = self.reference_for(&row.device_type).await?;
        let differences: Vec<ModuleDifference> = diffs
            .as_deref()
            .map(|d| from_json(d, "version differences"))
            .transpose()?
            .unwrap_or_default();
        let modules: Vec<(String, String)> = with_read!(self, pool => {
            sqlx::query_as("SELECT name, version FROM device_modules WHERE device_id = $1 ORDER BY name")
                .bind(device_id)
                .fetch_all(pool)
                .await?
        });
        let reference_of = |name: &str| {
            reference
                .as_ref()
                .and_then(|r| r.modules.iter().find(|m| m.name == name))
                .map(|m| m.version.clone())
        };
        Ok(Some(VersionDetail {
            row: row.row(at)?,
            differences,
            modules: modules
                .into_iter()
                .map(|(name, version)| ModuleRow {
                    reference: reference_of(&name),
                    name,
                    version,
                })
                .collect(),
        }))
    }

    /// One module across devices: each device's version of it.
    pub async fn module_listing(&self, q: &ModuleQuery) -> Result<Page<ModuleDeviceRow>> {
        if q.module.is_empty() {
            return Err(Error::Invalid(
                "name the module to list with `module`".into(),
            ));
        }
        let mut cond = Cond::new("m.name = ");
        cond.bind(q.module.as_str());
        if let Some(dt) = &q.device_type {
            cond.push(" AND d.device_type = ").bind(dt.as_str());
        }
        let (page, per_page) = paging(q.page, q.per_page);
        let mut select = Sql::new(
            "SELECT d.id, d.guid, d.name, d.site, d.device_type, m.version FROM device_modules m JOIN devices d ON d.id = m.device_id WHERE ",
        );
        select
            .append(&cond)
            .push(" ORDER BY d.site, d.number, d.id")
            .page(page, per_page);
        let mut count = Sql::new(
            "SELECT count(*) FROM device_modules m JOIN devices d ON d.id = m.device_id WHERE ",
        );
        count.append(&cond);
        type R = (i64, String, String, String, String, String);
        let (rows, total): (Vec<R>, i64) = fetch_page!(self, R, select, count);
        let mut references: std::collections::HashMap<String, Option<Reference>> =
            Default::default();
        let mut items = Vec::with_capacity(rows.len());
        for (id, guid, name, site, dt, version) in rows {
            if !references.contains_key(&dt) {
                let r = self.reference_for(&dt).await?;
                references.insert(dt.clone(), r);
            }
            let reference = references[&dt]
                .as_ref()
                .and_then(|r| r.modules.iter().find(|m| m.name == q.module))
                .map(|m| m.version.clone());
            items.push(ModuleDeviceRow {
                device_id: id,
                guid,
                name,
                site,
                version,
                reference,
            });
        }
        Ok(Page {
            items,
            total: total as u64,
            page,
            per_page,
        })
    }
}
