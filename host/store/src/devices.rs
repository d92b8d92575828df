//! Devices: enrollment, what they report on each poll, and the device list.

use posup_proto::agent::{AgentStatus, DeviceIdentity};
use posup_proto::api::{
    DeviceAccess, DeviceDetail, DeviceQuery, DeviceRow, DeviceSort, DeviceTaskState,
    DeviceTaskSummary, Order, TaskState,
};
use posup_proto::{Inventory, Page, TaskKind};
use serde_json::json;

use crate::sql::{Cond, Sql, SqlText, contains_pattern};
use crate::version::{self, Reference};

use crate::{At, Error, Result, Store, from_json, paging, to_json, ts, ts_opt};

/// A device as its token identifies it on the agent API.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DeviceAuth {
    pub id: i64,
    pub guid: String,
    pub site: String,
    pub number: i64,
    pub device_type: String,
    pub agent_version: String,
    pub plugin_sha256: Option<String>,
    pub agent_message: Option<String>,
    pub inventory_hash: Option<String>,
    /// Revision of the device type's configuration.
    pub revision: i64,
    /// Unix ms of the last recorded contact; 0 for never.
    pub last_contact: i64,
    pub poll_interval_secs: Option<i64>,
    /// `active`, `revoked` or `awaiting-enrollment`: only an active device is served.
    pub access: String,
    /// What the terminal's configuration allows, as its agent last reported it
    /// (JSON), to notice a change without a write.
    pub allows: Option<String>,
}

/// How many inventory reports one transaction records at most: with 15 values
/// each, a group stays far under both drivers' limits on bound values.
pub const MAX_INVENTORIES_AT_ONCE: usize = 64;

/// What a poll reports about the installation.
#[derive(Debug, Clone)]
pub struct InventoryReport<'a> {
    pub inventory: Option<&'a Inventory>,
    pub error: Option<&'a str>,
    /// A digest of both, so an unchanged report costs no write.
    pub hash: &'a str,
}

#[derive(sqlx::FromRow)]
pub(crate) struct ListRow {
    id: i64,
    guid: String,
    site: String,
    address: String,
    name: String,
    number: i64,
    device_type: String,
    agent_version: String,
    version: String,
    loaded_package: String,
    state: String,
    pending_sync: i64,
    last_contact: i64,
    enrolled_at: i64,
    access: String,
}

pub(crate) const LIST_COLUMNS: &str = "d.id, d.guid, d.site, d.address, d.name, d.number, d.device_type, d.agent_version, \
    d.version, d.loaded_package, d.state, d.pending_sync, c.last_contact, d.enrolled_at, d.access";

/// Devices (`d`) with their contact times (`c`), which live in a table of their
/// own: a fleet's polls write them, and a narrow row is a cheap write.
pub(crate) const WITH_CONTACTS: &str = "devices d JOIN device_contacts c ON c.device_id = d.id";

impl ListRow {
    fn row(self, at: &At, tags: Vec<String>) -> DeviceRow {
        DeviceRow {
            // An unknown value reads as revoked: the stricter answer.
            access: DeviceAccess::parse(&self.access).unwrap_or(DeviceAccess::Revoked),
            id: self.id,
            guid: self.guid,
            site: self.site,
            address: self.address,
            name: self.name,
            number: self.number as u32,
            device_type: self.device_type,
            agent_version: self.agent_version,
            version: self.version,
            loaded_package: (!self.loaded_package.is_empty()).then_some(self.loaded_package),
            state: self.state,
            pending_sync: self.pending_sync as u32,
            online: self.last_contact != 0 && self.last_contact >= at.online_since,
            last_contact: ts_opt(self.last_contact),
            enrolled_at: ts(self.enrolled_at),
            tags,
        }
    }
}

/// The column a sort orders by, and its tie-breaker: the device id, read from
/// the side whose index serves the order.
fn sort_column(sort: DeviceSort) -> (&'static str, &'static str) {
    let column = match sort {
        DeviceSort::Id => "d.id",
        DeviceSort::Guid => "d.guid",
        DeviceSort::Site => "d.site",
        DeviceSort::Address => "d.address",
        DeviceSort::Name => "d.name",
        DeviceSort::Number => "d.number",
        DeviceSort::DeviceType => "d.device_type",
        DeviceSort::AgentVersion => "d.agent_version",
        DeviceSort::Version => "d.version",
        DeviceSort::LoadedPackage => "d.loaded_package",
        DeviceSort::State => "d.state",
        DeviceSort::PendingSync => "d.pending_sync",
        DeviceSort::LastContact => return ("c.last_contact", "c.device_id"),
        DeviceSort::EnrolledAt => "d.enrolled_at",
    };
    (column, "d.id")
}

/// Whether device `d` is online (or offline): a condition of its own, so any
/// query over `devices d` can use it, groups' filters among them.
pub(crate) fn online_cond(online: bool, at: &At) -> Cond {
    let mut c = Cond::default();
    c.push("d.id IN (SELECT device_id FROM device_contacts WHERE ");
    if online {
        c.push("last_contact >= ")
            .bind(at.online_since)
            .push(" AND last_contact > 0");
    } else {
        c.push("last_contact < ")
            .bind(at.online_since)
            .push(" OR last_contact = 0");
    }
    c.push(")");
    c
}

pub(crate) fn check_identity(d: &DeviceIdentity) -> Result<()> {
    let field = |what: &str, value: &str, max: usize, required: bool| -> Result<()> {
        if (required && value.trim().is_empty())
            || value.len() > max
            || value.chars().any(char::is_control)
        {
            return Err(Error::Invalid(format!(
                "device {}: {what} `{value}` is invalid: give {} to {max} printable characters",
                d.guid,
                if required { 1 } else { 0 }
            )));
        }
        Ok(())
    };
    field("guid", &d.guid, 100, true)?;
    field("site name", &d.site.name, 200, true)?;
    field("site address", &d.site.address, 500, false)?;
    field("name", &d.name, 200, true)?;
    field("agent version", &d.agent_version, 100, false)?;
    Ok(())
}

impl Store {
    /// The device whose token has this hash.
    pub async fn device_by_token(&self, token_hash: &str) -> Result<Option<DeviceAuth>> {
        Ok(with_read!(self, pool => {
            sqlx::query_as::<_, DeviceAuth>(
                "SELECT d.id, d.guid, d.site, d.number, d.device_type, d.agent_version, d.plugin_sha256, d.agent_message, \
                 d.inventory_hash, dt.revision, dt.poll_interval_secs, c.last_contact, d.access, d.allows \
                 FROM devices d JOIN device_contacts c ON c.device_id = d.id JOIN device_types dt ON dt.name = d.device_type \
                 WHERE d.token_hash = $1",
            )
            .bind(token_hash)
            .fetch_optional(pool)
            .await?
        }))
    }

    /// Stores a changed inventory report and recomputes the device's version status.
    pub async fn record_inventory(
        &self,
        device: &DeviceAuth,
        report: &InventoryReport<'_>,
        now: i64,
    ) -> Result<()> {
        self.record_inventories(&[(device, report.clone())], now)
            .await
    }

    /// Stores the changed inventory reports of several devices (at most
    /// [`MAX_INVENTORIES_AT_ONCE`]) and recomputes their version status, in one
    /// transaction of a few statements whatever their number: a fleet's first
    /// polls, and its polls after an update, arrive together (group commit). A
    /// device reported twice keeps its later report.
    pub async fn record_inventories(
        &self,
        reports: &[(&DeviceAuth, InventoryReport<'_>)],
        now: i64,
    ) -> Result<()> {
        if reports.len() > MAX_INVENTORIES_AT_ONCE {
            return Err(Error::Invalid(format!(
                "{} inventories at once: record at most {MAX_INVENTORIES_AT_ONCE}",
                reports.len()
            )));
        }
        // The later report of a device stands.
        let mut latest: Vec<&(&DeviceAuth, InventoryReport<'_>)> =
            Vec::with_capacity(reports.len());
        for r in reports.iter().rev() {
            if !latest.iter().any(|l| l.0.id == r.0.id) {
                latest.push(r);
            }
        }
        if latest.is_empty() {
            return Ok(());
        }
        let mut types: Vec<&str> = latest.iter().map(|(d, _)| d.device_type.as_str()).collect();
        types.sort_unstable();
        types.dedup();
        // The explicit reference if there is one (rank 0), else the Current
        // package's version (rank 1).
        let mut references = Sql::new(
            "SELECT device_type, CAST(0 AS BIGINT), version, modules FROM version_references WHERE device_type IN (",
        );
        references.bind_list(&types).push(") UNION ALL SELECT device_type, CAST(1 AS BIGINT), version, '[]' FROM packages WHERE current = TRUE AND device_type IN (");
        references.bind_list(&types).push(")");
        let with_modules: Vec<i64> = latest
            .iter()
            .filter(|(_, r)| r.inventory.is_some())
            .map(|(d, _)| d.id)
            .collect();
        with_write!(self, pool => {
            let mut tx = pool.begin().await?;
            let text = pool.text(&references);
            let mut rows: Vec<(String, i64, String, String)> =
                bind_all!(sqlx::query_as(&text), references.args).fetch_all(&mut *tx).await?;
            rows.sort_by_key(|r| r.1);
            let mut reference: Vec<(String, Reference)> = Vec::new();
            for (device_type, _, version, modules) in rows {
                if !reference.iter().any(|(t, _)| *t == device_type) {
                    reference.push((device_type, reference_of(version, &modules)?));
                }
            }
            // One statement for every device: the values are typed so both
            // backends read them alike.
            let mut update = Sql::new(
                "UPDATE devices SET inventory = v.column2, inventory_error = v.column3, inventory_hash = v.column4, \
                 version = COALESCE(v.column5, devices.version), loaded_package = COALESCE(v.column6, devices.loaded_package), \
                 state = COALESCE(v.column7, devices.state), pending_sync = COALESCE(v.column8, devices.pending_sync), \
                 v_status = v.column9, v_error = v.column10, v_computed = v.column11, v_reference = v.column12, \
                 v_differing = v.column13, v_differences = v.column14, v_computed_at = ",
            );
            update.bind(now).push(" FROM (VALUES ");
            for (i, (device, report)) in latest.iter().enumerate() {
                let inv = report.inventory;
                let reference = reference.iter().find(|(t, _)| *t == device.device_type).map(|(_, r)| r);
                let computed = version::compute(&device.device_type, inv, report.error, reference);
                update.push(if i == 0 { "(CAST(" } else { ", (CAST(" });
                update.bind(device.id).push(" AS BIGINT), CAST(").bind(inv.map(to_json));
                update.push(" AS TEXT), CAST(").bind(report.error.map(str::to_owned));
                update.push(" AS TEXT), CAST(").bind(report.hash.to_owned());
                update.push(" AS TEXT), CAST(").bind(inv.map(|i| i.version.clone()));
                update.push(" AS TEXT), CAST(").bind(inv.map(|i| i.loaded_package.clone().unwrap_or_default()));
                update.push(" AS TEXT), CAST(").bind(inv.map(|i| i.state.clone()));
                update.push(" AS TEXT), CAST(").bind(inv.map(|i| i64::from(i.pending_sync)));
                update.push(" AS BIGINT), CAST(").bind(computed.status.as_str());
                update.push(" AS TEXT), CAST(").bind(computed.error.clone());
                update.push(" AS TEXT), CAST(").bind(computed.computed_version.clone());
                update.push(" AS TEXT), CAST(").bind(reference.map(|r| r.version.clone()));
                update.push(" AS TEXT), CAST(").bind(computed.differences.len() as i64);
                update.push(" AS BIGINT), CAST(").bind(to_json(&computed.differences));
                update.push(" AS TEXT))");
            }
            update.push(") AS v WHERE devices.id = v.column1");
            let text = pool.text(&update);
            bind_all!(sqlx::query(&text), update.args).execute(&mut *tx).await?;
            if !with_modules.is_empty() {
                let mut delete = Sql::new("DELETE FROM device_modules WHERE device_id IN (");
                delete.bind_list(&with_modules).push(")");
                let text = pool.text(&delete);
                bind_all!(sqlx::query(&text), delete.args).execute(&mut *tx).await?;
            }
            let mut modules: Vec<(i64, &posup_proto::ModuleVersion)> = Vec::new();
            for (device, report) in &latest {
                let mut mine: Vec<&posup_proto::ModuleVersion> =
                    report.inventory.map(|i| i.modules.iter().collect()).unwrap_or_default();
                mine.sort_by(|a, b| a.name.cmp(&b.name));
                mine.dedup_by(|a, b| a.name == b.name);
                modules.extend(mine.into_iter().map(|m| (device.id, m)));
            }
            // Multi-row inserts, in chunks that stay under both drivers' parameter limits.
            for chunk in modules.chunks(1000) {
                let mut insert = Sql::new("INSERT INTO device_modules (device_id, name, version) VALUES ");
                for (i, (device_id, m)) in chunk.iter().enumerate() {
                    insert.push(if i == 0 { "(" } else { ", (" });
                    insert.bind(*device_id).push(", ").bind(m.name.as_str()).push(", ").bind(m.version.as_str()).push(")");
                }
                let text = pool.text(&insert);
                bind_all!(sqlx::query(&text), insert.args).execute(&mut *tx).await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// Stores a changed agent status.
    pub async fn record_agent_status(&self, device_id: i64, status: &AgentStatus) -> Result<()> {
        let allows = status.allows.as_ref().map(to_json);
        with_write!(self, pool => {
            sqlx::query("UPDATE devices SET agent_version = $2, plugin_sha256 = $3, agent_message = $4, allows = COALESCE($5, allows) WHERE id = $1")
                .bind(device_id)
                .bind(&status.agent_version)
                .bind(status.plugin_sha256.clone())
                .bind(status.message.clone())
                .bind(allows)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// What the terminals of a device type allow a plugin, each distinct
    /// configuration with how many terminals have it; `None` for terminals whose
    /// agent has not said (older agents, or not yet polled).
    pub async fn terminal_allowances(
        &self,
        device_type: &str,
    ) -> Result<Vec<(Option<posup_proto::Capabilities>, i64)>> {
        let rows: Vec<(Option<String>, i64)> = with_read!(self, pool => {
            sqlx::query_as("SELECT allows, count(*) FROM devices WHERE device_type = $1 GROUP BY allows ORDER BY count(*) DESC")
                .bind(device_type)
                .fetch_all(pool)
                .await?
        });
        rows.into_iter()
            .map(|(allows, n)| {
                Ok((
                    allows
                        .as_deref()
                        .map(|a| from_json(a, "a terminal's allowance"))
                        .transpose()?,
                    n,
                ))
            })
            .collect()
    }

    /// Records that these devices were in contact at `now`, in one statement: the
    /// server collects polls and writes their contact times in batches.
    pub async fn touch_devices(&self, ids: &[i64], now: i64) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        match &self.db {
            crate::Db::Sqlite { write, .. } => {
                // json_each keeps the statement one size whatever the batch holds.
                sqlx::query("UPDATE device_contacts SET last_contact = $1 WHERE device_id IN (SELECT value FROM json_each($2))")
                    .bind(now)
                    .bind(to_json(&ids))
                    .execute(write)
                    .await?;
            }
            crate::Db::Postgres(pool) => {
                sqlx::query(
                    "UPDATE device_contacts SET last_contact = $1 WHERE device_id = ANY($2)",
                )
                .bind(now)
                .bind(ids)
                .execute(pool)
                .await?;
            }
        }
        Ok(())
    }

    /// One page of the device list.
    pub async fn list_devices(&self, q: &DeviceQuery, at: &At) -> Result<Page<DeviceRow>> {
        let mut cond = Cond::new("1 = 1");
        let mut text = |column: &str, value: &Option<String>| {
            if let Some(v) = value.as_deref().filter(|v| !v.is_empty()) {
                cond.push(&format!(" AND lower({column}) LIKE "))
                    .bind(contains_pattern(v))
                    .push(" ESCAPE '\\'");
            }
        };
        text("d.guid", &q.guid);
        text("d.site", &q.site);
        text("d.address", &q.address);
        text("d.name", &q.name);
        text("d.device_type", &q.device_type);
        text("d.agent_version", &q.agent_version);
        text("d.version", &q.version);
        text("d.loaded_package", &q.loaded_package);
        text("d.state", &q.state);
        if let Some(n) = q.number {
            cond.push(" AND d.number = ").bind(i64::from(n));
        }
        if let Some(online) = q.online {
            cond.and(&online_cond(online, at));
        }
        if let Some(tag) = &q.tag {
            cond.push(" AND d.id IN (SELECT device_id FROM device_tags WHERE tag = ")
                .bind(tag.as_str())
                .push(")");
        }
        if let Some(group) = q.group {
            let members = self.group_cond(group, at).await?;
            cond.and(&members);
        }
        let (page, per_page) = paging(q.page, q.per_page);
        let dir = match q.order {
            Order::Asc => "ASC",
            Order::Desc => "DESC",
        };
        let (col, id) = sort_column(q.sort);
        let mut select = Sql::new(&format!(
            "SELECT {LIST_COLUMNS} FROM {WITH_CONTACTS} WHERE "
        ));
        select.append(&cond);
        if col == "d.id" {
            select.push(&format!(" ORDER BY d.id {dir}"));
        } else {
            select.push(&format!(" ORDER BY {col} {dir}, {id} {dir}"));
        }
        select.page(page, per_page);
        let mut count = Sql::new("SELECT count(*) FROM devices d WHERE ");
        count.append(&cond);
        let (rows, total): (Vec<ListRow>, i64) = fetch_page!(self, ListRow, select, count);
        let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
        let mut tags = self.tags_of(&ids).await?;
        Ok(Page {
            items: rows
                .into_iter()
                .map(|r| {
                    let t = tags.remove(&r.id).unwrap_or_default();
                    r.row(at, t)
                })
                .collect(),
            total: total as u64,
            page,
            per_page,
        })
    }

    async fn tags_of(&self, ids: &[i64]) -> Result<std::collections::HashMap<i64, Vec<String>>> {
        let mut map: std::collections::HashMap<i64, Vec<String>> = std::collections::HashMap::new();
        if ids.is_empty() {
            return Ok(map);
        }
        let mut sql = Sql::new("SELECT device_id, tag FROM device_tags WHERE device_id IN (");
        sql.bind_list(ids);
        sql.push(") ORDER BY device_id, tag");
        let rows: Vec<(i64, String)> = with_read!(self, pool => {
            bind_all!(sqlx::query_as::<_, (i64, String)>(&sql.text), sql.args).fetch_all(pool).await?
        });
        for (id, tag) in rows {
            map.entry(id).or_default().push(tag);
        }
        Ok(map)
    }

    pub async fn device_row(&self, id: i64, at: &At) -> Result<Option<DeviceRow>> {
        let row: Option<ListRow> = with_read!(self, pool => {
            sqlx::query_as(&format!("SELECT {LIST_COLUMNS} FROM {WITH_CONTACTS} WHERE d.id = $1"))
                .bind(id)
                .fetch_optional(pool)
                .await?
        });
        let Some(row) = row else { return Ok(None) };
        let mut tags = self.tags_of(&[id]).await?;
        Ok(Some(row.row(at, tags.remove(&id).unwrap_or_default())))
    }

    pub async fn device_detail(&self, id: i64, at: &At) -> Result<Option<DeviceDetail>> {
        let Some(device) = self.device_row(id, at).await? else {
            return Ok(None);
        };
        #[derive(sqlx::FromRow)]
        struct Extra {
            inventory: Option<String>,
            inventory_error: Option<String>,
            agent_message: Option<String>,
        }
        #[derive(sqlx::FromRow)]
        struct TaskRow {
            task_id: i64,
            task_name: String,
            kind: String,
            task_state: String,
            state: String,
            step: Option<String>,
            message: Option<String>,
            updated_at: i64,
            wait_kind: Option<String>,
            wait_reason: Option<String>,
            retry_at: Option<i64>,
        }
        let (extra, tasks): (Extra, Vec<TaskRow>) = with_read!(self, pool => {
            let extra = sqlx::query_as::<_, Extra>("SELECT inventory, inventory_error, agent_message FROM devices WHERE id = $1")
                .bind(id)
                .fetch_one(pool)
                .await?;
            let tasks = sqlx::query_as::<_, TaskRow>(
                "SELECT t.id AS task_id, t.name AS task_name, t.kind, t.state AS task_state, td.state, td.step, td.message, td.updated_at, \
                 td.wait_kind, td.wait_reason, td.retry_at \
                 FROM task_devices td JOIN tasks t ON t.id = td.task_id WHERE td.device_id = $1 ORDER BY t.id DESC LIMIT 100",
            )
            .bind(id)
            .fetch_all(pool)
            .await?;
            (extra, tasks)
        });
        Ok(Some(DeviceDetail {
            device,
            inventory: extra
                .inventory
                .as_deref()
                .map(|i| from_json(i, "device inventory"))
                .transpose()?,
            inventory_error: extra.inventory_error,
            agent_message: extra.agent_message,
            tasks: tasks
                .into_iter()
                .map(|t| {
                    let state = DeviceTaskState::parse(&t.state).ok_or_else(|| {
                        Error::Corrupt(format!("device task state `{}`", t.state))
                    })?;
                    Ok(DeviceTaskSummary {
                        wait: crate::tasks::wait_of(
                            state,
                            t.message.as_deref(),
                            t.wait_kind.as_deref(),
                            t.wait_reason,
                            t.retry_at,
                        )?,
                        task_id: t.task_id,
                        task_name: t.task_name,
                        kind: TaskKind::parse(&t.kind)
                            .ok_or_else(|| Error::Corrupt(format!("task kind `{}`", t.kind)))?,
                        task_state: TaskState::parse(&t.task_state).ok_or_else(|| {
                            Error::Corrupt(format!("task state `{}`", t.task_state))
                        })?,
                        state,
                        step: t.step,
                        message: t.message,
                        updated_at: ts(t.updated_at),
                    })
                })
                .collect::<Result<_>>()?,
        }))
    }

    pub async fn delete_device(&self, id: i64, now: i64, actor: &str) -> Result<()> {
        with_write!(self, pool => {
            let mut tx = pool.begin().await?;
            let guid: Option<String> = sqlx::query_scalar("SELECT guid FROM devices WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
            let Some(guid) = guid else {
                return Err(Error::NotFound(format!("device {id} does not exist")));
            };
            sqlx::query("DELETE FROM devices WHERE id = $1").bind(id).execute(&mut *tx).await?;
            audit!(&mut *tx, now, actor, "device.delete", "device", id, json!({"guid": guid}));
            bump!(&mut *tx, "devices");
            tx.commit().await?;
            Ok(())
        })
    }

    pub async fn set_tags(&self, id: i64, tags: &[String], now: i64, actor: &str) -> Result<()> {
        for tag in tags {
            if tag.trim().is_empty() || tag.len() > 100 || tag.chars().any(char::is_control) {
                return Err(Error::Invalid(format!(
                    "device {id}: tag `{tag}` is invalid: give 1 to 100 printable characters"
                )));
            }
        }
        let mut tags: Vec<&String> = tags.iter().collect();
        tags.sort();
        tags.dedup();
        with_write!(self, pool => {
            let mut tx = pool.begin().await?;
            let exists: Option<i64> = sqlx::query_scalar("SELECT id FROM devices WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
            if exists.is_none() {
                return Err(Error::NotFound(format!("device {id} does not exist")));
            }
            sqlx::query("DELETE FROM device_tags WHERE device_id = $1").bind(id).execute(&mut *tx).await?;
            for tag in &tags {
                sqlx::query("INSERT INTO device_tags (device_id, tag) VALUES ($1, $2)")
                    .bind(id)
                    .bind(tag.as_str())
                    .execute(&mut *tx)
                    .await?;
            }
            audit!(&mut *tx, now, actor, "device.tags", "device", id, json!({"tags": tags}));
            // Started waves search their groups again (see `groups::drifts`).
            bump!(&mut *tx, "members");
            tx.commit().await?;
            Ok(())
        })
    }

    /// The inventory and module list of a device as last reported.
    pub(crate) async fn stored_inventory(
        &self,
        id: i64,
    ) -> Result<Option<(Option<Inventory>, Option<String>, String)>> {
        let row: Option<(Option<String>, Option<String>, String)> = with_read!(self, pool => {
            sqlx::query_as("SELECT inventory, inventory_error, guid FROM devices WHERE id = $1")
                .bind(id)
                .fetch_optional(pool)
                .await?
        });
        row.map(|(inv, err, guid)| {
            Ok((
                inv.as_deref()
                    .map(|i| from_json(i, "device inventory"))
                    .transpose()?,
                err,
                guid,
            ))
        })
        .transpose()
    }
}

impl Store {
    /// Enrolls many devices in one transaction with one audit entry, for fleet
    /// imports and benchmarks. Each item is an identity and its token's hash.
    pub async fn bulk_enroll(
        &self,
        devices: &[(DeviceIdentity, String)],
        now: i64,
        actor: &str,
    ) -> Result<()> {
        let mut types = std::collections::BTreeSet::new();
        for d in devices {
            check_identity(&d.0)?;
            types.insert(d.0.device_type.as_str());
        }
        for t in types {
            self.require_device_type(t).await?;
        }
        with_write!(self, pool => {
            let mut tx = pool.begin().await?;
            for chunk in devices.chunks(500) {
                let mut sql = Sql::new(
                    "INSERT INTO devices (guid, site, address, name, number, device_type, agent_version, token_hash, enrolled_at) VALUES ",
                );
                for (i, (d, hash)) in chunk.iter().enumerate() {
                    if i > 0 {
                        sql.push(", ");
                    }
                    sql.push("(")
                        .bind(d.guid.as_str())
                        .push(", ")
                        .bind(d.site.name.as_str())
                        .push(", ")
                        .bind(d.site.address.as_str())
                        .push(", ")
                        .bind(d.name.as_str())
                        .push(", ")
                        .bind(i64::from(d.number))
                        .push(", ")
                        .bind(d.device_type.as_str())
                        .push(", ")
                        .bind(d.agent_version.as_str())
                        .push(", ")
                        .bind(hash.as_str())
                        .push(", ")
                        .bind(now)
                        .push(")");
                }
                bind_all!(sqlx::query(&sql.text), sql.args).execute(&mut *tx).await?;
            }
            audit!(&mut *tx, now, actor, "device.bulk_enroll", "device", "*", json!({"devices": devices.len()}));
            bump!(&mut *tx, "devices");
            bump!(&mut *tx, "members");
            tx.commit().await?;
        });
        Ok(())
    }
}

pub(crate) fn reference_of(version: String, modules: &str) -> Result<Reference> {
    Ok(Reference {
        version,
        modules: from_json(modules, "reference modules")?,
    })
}
