//! Groups: the built-in `All`, `Even` and `Odd`, static lists and filters.

use posup_proto::api::{CreateGroup, GroupFilter, GroupKind, GroupView, UpdateGroup};
use serde_json::json;

use crate::devices::online_cond;
use crate::sql::{Cond, Sql};
use crate::tokens::check_name;
use crate::{At, Error, Result, Store, from_json, to_json};

#[derive(sqlx::FromRow)]
struct Row {
    id: i64,
    name: String,
    description: String,
    kind: String,
    filter: Option<String>,
}

fn kind_str(kind: GroupKind) -> &'static str {
    match kind {
        GroupKind::All => "all",
        GroupKind::Even => "even",
        GroupKind::Odd => "odd",
        GroupKind::Static => "static",
        GroupKind::Filter => "filter",
    }
}

fn parse_kind(s: &str) -> Result<GroupKind> {
    Ok(match s {
        "all" => GroupKind::All,
        "even" => GroupKind::Even,
        "odd" => GroupKind::Odd,
        "static" => GroupKind::Static,
        "filter" => GroupKind::Filter,
        other => return Err(Error::Corrupt(format!("group kind `{other}`"))),
    })
}

fn is_builtin(kind: GroupKind) -> bool {
    matches!(kind, GroupKind::All | GroupKind::Even | GroupKind::Odd)
}

/// The membership condition of a group over `devices d`.
pub(crate) fn membership(id: i64, kind: GroupKind, filter: Option<&GroupFilter>, at: &At) -> Cond {
    let mut c = Cond::default();
    match kind {
        GroupKind::All => {
            c.push("1 = 1");
        }
        GroupKind::Even => {
            c.push("d.number % 2 = 0");
        }
        GroupKind::Odd => {
            c.push("d.number % 2 = 1");
        }
        GroupKind::Static => {
            c.push("d.id IN (SELECT device_id FROM group_members WHERE group_id = ")
                .bind(id)
                .push(")");
        }
        GroupKind::Filter => {
            c.push("1 = 1");
            let f = filter.cloned().unwrap_or_default();
            if let Some(site) = f.site {
                c.push(" AND d.site = ").bind(site);
            }
            if let Some(dt) = f.device_type {
                c.push(" AND d.device_type = ").bind(dt);
            }
            if let Some(v) = f.version {
                c.push(" AND d.version = ").bind(v);
            }
            if let Some(online) = f.online {
                c.and(&online_cond(online, at));
            }
            if let Some(tag) = f.tag {
                c.push(" AND d.id IN (SELECT device_id FROM device_tags WHERE tag = ")
                    .bind(tag)
                    .push(")");
            }
        }
    }
    c
}

/// A group's membership condition now, and whether it drifts.
pub(crate) struct Membership {
    pub cond: Cond,
    pub drifts: bool,
}

/// Whether a group's members change without a write that grows the `members`
/// counter: a filter on the installed version follows what devices report, one
/// on being online follows time. Every other membership changes only with
/// devices enrolling, moving or being tagged and with groups being edited, which
/// all grow it.
pub(crate) fn drifts(kind: GroupKind, filter: Option<&GroupFilter>) -> bool {
    kind == GroupKind::Filter && filter.is_some_and(|f| f.version.is_some() || f.online.is_some())
}

fn check_filter(filter: &GroupFilter) -> Result<()> {
    if filter == &GroupFilter::default() {
        return Err(Error::Invalid(
            "a filter group needs at least one condition (site, device_type, version, online or tag); use the built-in group All for every device".into(),
        ));
    }
    Ok(())
}

impl Row {
    fn kind(&self) -> Result<GroupKind> {
        parse_kind(&self.kind)
    }

    fn filter(&self) -> Result<Option<GroupFilter>> {
        self.filter
            .as_deref()
            .map(|f| from_json(f, "group filter"))
            .transpose()
    }
}

impl Store {
    async fn group_row(&self, id: i64) -> Result<Option<Row>> {
        Ok(with_read!(self, pool => {
            sqlx::query_as::<_, Row>("SELECT id, name, description, kind, filter FROM groups WHERE id = $1")
                .bind(id)
                .fetch_optional(pool)
                .await?
        }))
    }

    /// The membership condition of group `id`; `Invalid` naming it when it does not
    /// exist.
    pub(crate) async fn group_cond(&self, id: i64, at: &At) -> Result<Cond> {
        Ok(self.group_membership(id, at).await?.cond)
    }

    /// The membership of group `id` now, and whether it drifts (see
    /// [`drifts`]); `Invalid` naming the group when it does not exist.
    pub(crate) async fn group_membership(&self, id: i64, at: &At) -> Result<Membership> {
        let row = self
            .group_row(id)
            .await?
            .ok_or_else(|| Error::Invalid(format!("group {id} does not exist")))?;
        let (kind, filter) = (row.kind()?, row.filter()?);
        Ok(Membership {
            cond: membership(id, kind, filter.as_ref(), at),
            drifts: drifts(kind, filter.as_ref()),
        })
    }

    /// The group's name, when it exists.
    pub(crate) async fn group_name(&self, id: i64) -> Result<Option<String>> {
        Ok(self.group_row(id).await?.map(|r| r.name))
    }

    /// Whether device `device_id` is a member of group `group_id` now.
    pub(crate) async fn is_member(&self, device_id: i64, group_id: i64, at: &At) -> Result<bool> {
        let Some(row) = self.group_row(group_id).await? else {
            return Ok(false);
        };
        let cond = membership(group_id, row.kind()?, row.filter()?.as_ref(), at);
        let mut sql = Sql::new("SELECT count(*) FROM devices d WHERE d.id = ");
        sql.bind(device_id).and(&cond);
        let n: i64 = with_read!(self, pool => {
            bind_all!(sqlx::query_scalar::<_, i64>(&sql.text), sql.args).fetch_one(pool).await?
        });
        Ok(n > 0)
    }

    async fn view(&self, row: Row, at: &At) -> Result<GroupView> {
        let kind = row.kind()?;
        let filter = row.filter()?;
        let cond = membership(row.id, kind, filter.as_ref(), at);
        let mut sql = Sql::new("SELECT count(*) FROM devices d WHERE ");
        sql.append(&cond);
        let devices: i64 = with_read!(self, pool => {
            bind_all!(sqlx::query_scalar::<_, i64>(&sql.text), sql.args).fetch_one(pool).await?
        });
        Ok(GroupView {
            id: row.id,
            name: row.name,
            description: row.description,
            kind,
            filter,
            builtin: is_builtin(kind),
            devices: devices as u64,
        })
    }

    pub async fn list_groups(&self, at: &At) -> Result<Vec<GroupView>> {
        let rows: Vec<Row> = with_read!(self, pool => {
            sqlx::query_as("SELECT id, name, description, kind, filter FROM groups ORDER BY id")
                .fetch_all(pool)
                .await?
        });
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            out.push(self.view(r, at).await?);
        }
        Ok(out)
    }

    pub async fn group(&self, id: i64, at: &At) -> Result<Option<GroupView>> {
        match self.group_row(id).await? {
            Some(r) => Ok(Some(self.view(r, at).await?)),
            None => Ok(None),
        }
    }

    pub async fn create_group(
        &self,
        body: &CreateGroup,
        at: &At,
        actor: &str,
    ) -> Result<GroupView> {
        check_name("group", &body.name)?;
        let filter = match body.kind {
            GroupKind::Static => {
                if body.filter.is_some() {
                    return Err(Error::Invalid(format!(
                        "group {}: a static group has no filter; use kind `filter`",
                        body.name
                    )));
                }
                None
            }
            GroupKind::Filter => {
                let f = body.filter.as_ref().ok_or_else(|| {
                    Error::Invalid(format!("filter group {} needs a `filter`", body.name))
                })?;
                check_filter(f)?;
                if !body.devices.is_empty() {
                    return Err(Error::Invalid(format!(
                        "filter group {}: members come from the filter; `devices` is only for static groups",
                        body.name
                    )));
                }
                Some(to_json(f))
            }
            other => {
                return Err(Error::Invalid(format!(
                    "group {}: kind `{}` is built in; create a `static` or `filter` group",
                    body.name,
                    kind_str(other)
                )));
            }
        };
        let id = with_write!(self, pool => {
            let mut tx = pool.begin().await?;
            let taken: Option<i64> = sqlx::query_scalar("SELECT id FROM groups WHERE name = $1")
                .bind(&body.name)
                .fetch_optional(&mut *tx)
                .await?;
            if let Some(other) = taken {
                return Err(Error::Conflict(format!(
                    "a group named {} already exists (group {other}): choose another name",
                    body.name
                )));
            }
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO groups (name, description, kind, filter, created_at) VALUES ($1, $2, $3, $4, $5) RETURNING id",
            )
            .bind(&body.name)
            .bind(&body.description)
            .bind(kind_str(body.kind))
            .bind(filter)
            .bind(at.now)
            .fetch_one(&mut *tx)
            .await?;
            add_members!(&mut tx, id, &body.devices);
            audit!(&mut *tx, at.now, actor, "group.create", "group", id, json!(body));
            tx.commit().await?;
            id
        });
        self.group(id, at)
            .await?
            .ok_or_else(|| Error::NotFound(format!("group {id} vanished while being created")))
    }

    pub async fn update_group(
        &self,
        id: i64,
        body: &UpdateGroup,
        at: &At,
        actor: &str,
    ) -> Result<GroupView> {
        let row = self
            .group_row(id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("group {id} does not exist")))?;
        let kind = row.kind()?;
        if is_builtin(kind) {
            return Err(Error::Conflict(format!(
                "group {} is built in and cannot be edited",
                row.name
            )));
        }
        if let Some(name) = &body.name {
            check_name("group", name)?;
        }
        let filter = match (&body.filter, kind) {
            (Some(f), GroupKind::Filter) => {
                check_filter(f)?;
                Some(to_json(f))
            }
            (Some(_), _) => {
                return Err(Error::Invalid(format!(
                    "group {} is static: only filter groups have a filter",
                    row.name
                )));
            }
            (None, _) => None,
        };
        with_write!(self, pool => {
            let mut tx = pool.begin().await?;
            if let Some(name) = &body.name {
                let taken: Option<i64> = sqlx::query_scalar("SELECT id FROM groups WHERE name = $1 AND id <> $2")
                    .bind(name)
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await?;
                if let Some(other) = taken {
                    return Err(Error::Conflict(format!(
                        "a group named {name} already exists (group {other}): choose another name"
                    )));
                }
            }
            sqlx::query(
                "UPDATE groups SET name = COALESCE($2, name), description = COALESCE($3, description), filter = COALESCE($4, filter) WHERE id = $1",
            )
            .bind(id)
            .bind(body.name.clone())
            .bind(body.description.clone())
            .bind(filter)
            .execute(&mut *tx)
            .await?;
            audit!(&mut *tx, at.now, actor, "group.update", "group", id, json!(body));
            // Started waves search this group again (see `drifts`).
            bump!(&mut *tx, "members");
            tx.commit().await?;
        });
        self.group(id, at)
            .await?
            .ok_or_else(|| Error::NotFound(format!("group {id} does not exist")))
    }

    /// Deletes an operator group. Tasks created from it keep their devices and the
    /// group's name.
    pub async fn delete_group(&self, id: i64, now: i64, actor: &str) -> Result<()> {
        let row = self
            .group_row(id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("group {id} does not exist")))?;
        if is_builtin(row.kind()?) {
            return Err(Error::Conflict(format!(
                "group {} is built in and cannot be deleted",
                row.name
            )));
        }
        with_write!(self, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query("DELETE FROM groups WHERE id = $1").bind(id).execute(&mut *tx).await?;
            audit!(&mut *tx, now, actor, "group.delete", "group", id, json!({"name": row.name}));
            tx.commit().await?;
        });
        Ok(())
    }

    async fn static_group(&self, id: i64) -> Result<Row> {
        let row = self
            .group_row(id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("group {id} does not exist")))?;
        if row.kind()? != GroupKind::Static {
            return Err(Error::Invalid(format!(
                "group {} is a {} group: devices can only be added to or removed from static groups",
                row.name, row.kind
            )));
        }
        Ok(row)
    }

    /// The groups a device is in now (built-in, static and filter groups alike).
    pub async fn groups_of_device(&self, device_id: i64, at: &At) -> Result<Vec<GroupView>> {
        let mut found = Vec::new();
        for group in self.list_groups(at).await? {
            let mut sql = Sql::new("SELECT count(*) FROM devices d WHERE d.id = ");
            sql.bind(device_id).push(" AND ");
            sql.append(&self.group_cond(group.id, at).await?);
            let n: i64 = with_read!(self, pool => {
                bind_all!(sqlx::query_scalar::<_, i64>(&sql.text), sql.args).fetch_one(pool).await?
            });
            if n > 0 {
                found.push(group);
            }
        }
        Ok(found)
    }

    pub async fn add_group_members(
        &self,
        id: i64,
        devices: &[i64],
        now: i64,
        actor: &str,
    ) -> Result<()> {
        self.static_group(id).await?;
        with_write!(self, pool => {
            let mut tx = pool.begin().await?;
            add_members!(&mut tx, id, devices);
            audit!(&mut *tx, now, actor, "group.add_devices", "group", id, json!({"devices": devices}));
            bump!(&mut *tx, "members");
            tx.commit().await?;
        });
        Ok(())
    }

    pub async fn remove_group_members(
        &self,
        id: i64,
        devices: &[i64],
        now: i64,
        actor: &str,
    ) -> Result<()> {
        self.static_group(id).await?;
        with_write!(self, pool => {
            let mut tx = pool.begin().await?;
            for d in devices {
                sqlx::query("DELETE FROM group_members WHERE group_id = $1 AND device_id = $2")
                    .bind(id)
                    .bind(*d)
                    .execute(&mut *tx)
                    .await?;
            }
            audit!(&mut *tx, now, actor, "group.remove_devices", "group", id, json!({"devices": devices}));
            tx.commit().await?;
        });
        Ok(())
    }
}
