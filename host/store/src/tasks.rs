//! Tasks: creation from a group, the state machine, per-device progress from
//! agent feedback, and the actions handed to polling agents.

use posup_proto::agent::{Action, Feedback, FeedbackAck, FeedbackState, PackageRef, PluginRef};
use posup_proto::api::{
    CreateTask, DeviceTaskState, FailedToGroup, GroupKind, GroupView, StepEvent, TaskCounts,
    TaskDeviceDetail, TaskDeviceQuery, TaskDeviceRow, TaskState, TaskView,
};
use posup_proto::{Page, TaskKind};
use serde_json::json;

use posup_proto::rollout::{Wait, WaitKind};

use crate::device_types::plugin_url;
use crate::lifecycle::{self, Command};
use crate::notifications::Notice;
use crate::sql::{Cond, Sql, SqlText};
use crate::truncate;
use crate::{At, Error, Result, Store, paging, ts};

/// When a device answering not-now gave no retry time.
const DEFAULT_RETRY_SECS: u64 = 60;

/// States of unfinished devices, as SQL; must match the partial index
/// `task_devices_active`.
const ACTIVE: &str = "('pending', 'running', 'waiting')";

#[derive(sqlx::FromRow)]
struct TaskRow {
    id: i64,
    name: String,
    kind: String,
    state: String,
    package_id: i64,
    package_file: String,
    package_version: String,
    device_type: String,
    group_id: Option<i64>,
    group_name: String,
    start_at: i64,
    created_at: i64,
    finished_at: Option<i64>,
    attempt: i64,
    rollout_id: Option<i64>,
    wave: Option<i64>,
    notice_override: Option<String>,
}

const TASK_SELECT: &str = "SELECT t.id, t.name, t.kind, t.state, t.package_id, p.file_name AS package_file, \
    p.version AS package_version, t.device_type, t.group_id, t.group_name, t.start_at, t.created_at, t.finished_at, t.attempt, \
    t.rollout_id, t.wave, t.notice_override \
    FROM tasks t JOIN packages p ON p.id = t.package_id";

fn parse_state(s: &str) -> Result<TaskState> {
    TaskState::parse(s).ok_or_else(|| Error::Corrupt(format!("task state `{s}`")))
}

fn parse_device_state(s: &str) -> Result<DeviceTaskState> {
    DeviceTaskState::parse(s).ok_or_else(|| Error::Corrupt(format!("device task state `{s}`")))
}

fn parse_kind(s: &str) -> Result<TaskKind> {
    TaskKind::parse(s).ok_or_else(|| Error::Corrupt(format!("task kind `{s}`")))
}

#[derive(sqlx::FromRow)]
struct DeviceRow {
    action_id: i64,
    device_id: i64,
    guid: String,
    name: String,
    site: String,
    number: i64,
    last_contact: i64,
    state: String,
    attempt: i64,
    step: Option<String>,
    message: Option<String>,
    percent: Option<i64>,
    updated_at: i64,
    wait_kind: Option<String>,
    wait_reason: Option<String>,
    retry_at: Option<i64>,
}

const DEVICE_SELECT: &str = "SELECT td.id AS action_id, d.id AS device_id, d.guid, d.name, d.site, d.number, c.last_contact, \
    td.state, td.attempt, td.step, td.message, td.percent, td.updated_at, td.wait_kind, td.wait_reason, td.retry_at \
    FROM task_devices td JOIN devices d ON d.id = td.device_id JOIN device_contacts c ON c.device_id = d.id";

impl DeviceRow {
    fn row(self, at: &At) -> Result<TaskDeviceRow> {
        let state = parse_device_state(&self.state)?;
        let wait = wait_of(
            state,
            self.message.as_deref(),
            self.wait_kind.as_deref(),
            self.wait_reason,
            self.retry_at,
        )?;
        Ok(TaskDeviceRow {
            wait,
            action_id: self.action_id,
            device_id: self.device_id,
            guid: self.guid,
            name: self.name,
            site: self.site,
            number: self.number as u32,
            online: self.last_contact != 0 && self.last_contact >= at.online_since,
            state,
            attempt: self.attempt as u32,
            step: self.step,
            message: self.message,
            percent: self.percent.map(|p| p.clamp(0, 100) as u8),
            updated_at: ts(self.updated_at),
        })
    }
}

/// A device's unfinished part as a poll reads it (see [`Store::parts_on_poll`]).
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct PartOnPoll {
    pub action_id: i64,
    pub attempt: i64,
    /// `pending`, `running` or `waiting`.
    pub state: String,
    pub retry_at: Option<i64>,
    pub wait_kind: Option<String>,
    pub wait_reason: Option<String>,
    pub task_id: i64,
    pub kind: String,
    pub task_state: String,
    pub start_at: i64,
    package_id: i64,
    file_name: String,
    package_sha256: String,
    size: i64,
    package_version: String,
    plugin_name: String,
    plugin_version: String,
    plugin_sha256: String,
    plugin_size: i64,
}

impl PartOnPoll {
    /// Whether the part has downtime, so it starts only once claimed.
    pub fn downtime(&self) -> bool {
        crate::gates::has_downtime(&self.kind)
    }
}

#[cfg(test)]
impl PartOnPoll {
    /// A part for the pure decisions' tests.
    pub(crate) fn example(id: i64, kind: TaskKind, state: &str, task_state: &str) -> PartOnPoll {
        PartOnPoll {
            action_id: id,
            attempt: 1,
            state: state.into(),
            retry_at: None,
            wait_kind: None,
            wait_reason: None,
            task_id: id,
            kind: kind.as_str().into(),
            task_state: task_state.into(),
            start_at: 0,
            package_id: 1,
            file_name: "p.tgz".into(),
            package_sha256: "00".repeat(32),
            size: 1,
            package_version: "2".into(),
            plugin_name: "kiosk".into(),
            plugin_version: "1".into(),
            plugin_sha256: "11".repeat(32),
            plugin_size: 1,
        }
    }
}

/// The actions a device is handed: parts of Scheduled or Running tasks, updates
/// only once claimed (`running`).
pub(crate) fn handed_out(parts: &[PartOnPoll]) -> Result<Vec<Action>> {
    parts
        .iter()
        .filter(|r| matches!(r.task_state.as_str(), "Scheduled" | "Running"))
        .filter(|r| !r.downtime() || r.state == "running")
        .map(|r| {
            Ok(Action {
                task_id: r.task_id,
                action_id: r.action_id,
                attempt: r.attempt as u32,
                kind: parse_kind(&r.kind)?,
                package: PackageRef {
                    id: r.package_id,
                    url: format!(
                        "{}/packages/{}",
                        posup_proto::AGENT_PREFIX,
                        r.package_sha256
                    ),
                    file_name: r.file_name.clone(),
                    sha256: r.package_sha256.clone(),
                    size: r.size as u64,
                    version: r.package_version.clone(),
                },
                plugin: PluginRef {
                    url: plugin_url(&r.plugin_sha256),
                    name: r.plugin_name.clone(),
                    version: r.plugin_version.clone(),
                    sha256: r.plugin_sha256.clone(),
                    size: r.plugin_size as u64,
                },
                not_before: ts(r.start_at),
            })
        })
        .collect()
}

/// An archived package starts nothing new.
pub(crate) fn refuse_archived(package: &posup_proto::api::PackageView) -> Result<()> {
    if package.archived {
        return Err(Error::Invalid(format!(
            "package {} ({}) is archived: upload its file again to use it",
            package.id, package.file_name
        )));
    }
    Ok(())
}

impl Store {
    /// Creates a task over the group's devices of the package's device type, with
    /// the plugin enabled for that type now.
    pub async fn create_task(&self, body: &CreateTask, at: &At, actor: &str) -> Result<TaskView> {
        let package = self
            .package(body.package_id)
            .await?
            .ok_or_else(|| Error::Invalid(format!("package {} does not exist", body.package_id)))?;
        refuse_archived(&package)?;
        let group_name = self
            .group_name(body.group_id)
            .await?
            .ok_or_else(|| Error::Invalid(format!("group {} does not exist", body.group_id)))?;
        let members = self.group_cond(body.group_id, at).await?;
        let plugin: Option<String> = with_read!(self, pool => {
            sqlx::query_scalar::<_, Option<String>>("SELECT plugin_sha256 FROM device_types WHERE name = $1")
                .bind(&package.device_type)
                .fetch_one(pool)
                .await?
        });
        let plugin = plugin.ok_or_else(|| {
            Error::Invalid(format!(
                "device type {} has no plugin enabled: enable one before creating tasks for it",
                package.device_type
            ))
        })?;
        if let Some(name) = &body.name {
            crate::tokens::check_name("task", name)?;
        }
        let start_at = body
            .start_at
            .map(|t| t.timestamp_millis())
            .unwrap_or(at.now);
        let state = lifecycle::initial(start_at <= at.now);
        let name = body.name.clone().unwrap_or_else(|| {
            format!(
                "{} {} → {group_name}",
                body.kind.as_str(),
                package.file_name
            )
        });
        crate::rollouts::check_notice(
            &format!("task {name}"),
            body.kind,
            start_at,
            at.now,
            body.notice_override.as_deref(),
        )?;
        // Downloads interrupt nobody: only updates are announced.
        let announcements = if body.kind == TaskKind::Download {
            Vec::new()
        } else {
            self.task_announcements(
                &name,
                body.kind,
                start_at,
                package.id,
                &package.device_type,
                &members,
            )
            .await?
        };
        let mut insert = Sql::new(
            "INSERT INTO task_devices (task_id, device_id, state, attempt, updated_at) SELECT ",
        );
        // The task id is bound first, below, as $1.
        insert.bind(0i64);
        insert
            .push(", d.id, 'pending', 1, ")
            .bind(at.now)
            .push(" FROM devices d WHERE d.device_type = ")
            .bind(package.device_type.as_str())
            .and(&members);
        let (id, added) = with_write!(self, pool => {
            let mut tx = pool.begin().await?;
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO tasks (name, kind, state, package_id, plugin_sha256, device_type, group_id, group_name, start_at, created_at, attempt, notice_override) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 1, $11) RETURNING id",
            )
            .bind(&name)
            .bind(body.kind.as_str())
            .bind(state.as_str())
            .bind(package.id)
            .bind(&plugin)
            .bind(&package.device_type)
            .bind(body.group_id)
            .bind(&group_name)
            .bind(start_at)
            .bind(at.now)
            .bind(body.notice_override.clone())
            .fetch_one(&mut *tx)
            .await?;
            let mut args = insert.args.clone();
            args[0] = crate::sql::Arg::I64(id);
            let added = bind_all!(sqlx::query(&insert.text), args).execute(&mut *tx).await?.rows_affected();
            if added == 0 {
                return Err(Error::Invalid(format!(
                    "group {group_name} has no devices of device type {}: choose another group or package",
                    package.device_type
                )));
            }
            for m in &announcements {
                notify!(&mut *tx, at.now, &Notice {
                    event: "announcement",
                    site: Some(&m.site),
                    rollout_id: None,
                    task_id: Some(id),
                    // The message's own first line, in the store's language.
                    subject: m.text.lines().next().unwrap_or_default(),
                    body: &m.text,
                });
            }
            audit!(&mut *tx, at.now, actor, "task.create", "task", id,
                json!({"name": name, "kind": body.kind, "package_id": package.id, "group_id": body.group_id,
                       "start_at": start_at, "devices": added, "notice_override": body.notice_override}));
            bump!(&mut *tx, "tasks");
            tx.commit().await?;
            (id, added)
        });
        self.analyze_after("task_devices", added).await?;
        self.task(id, at)
            .await?
            .ok_or_else(|| Error::NotFound(format!("task {id} vanished while being created")))
    }

    /// A task's counts: its parts as `task_counts` keeps them, and of those
    /// not ended, the ones whose device has not been in touch lately. The
    /// latter changes with time, not with the parts, so it is counted; ended
    /// parts are not read.
    pub(crate) async fn counts(&self, id: i64, at: &At) -> Result<TaskCounts> {
        let (total, failed, success): (i64, i64, i64) = with_read!(self, pool => {
            sqlx::query_as("SELECT total, failed, success FROM task_counts WHERE task_id = $1")
                .bind(id)
                .fetch_optional(pool)
                .await?
                .unwrap_or_default()
        });
        let offline = self.offline_parts(id, total - failed - success, at).await?;
        Ok(counts_of(total, failed, success, offline))
    }

    /// How many of task `id`'s `active` unfinished parts are of devices out of
    /// touch, counted from the smaller side: the task's unfinished parts, or
    /// the fleet's devices out of touch (a console watching a rollout of
    /// 100 000 terminals reads this every second or two, with a handful off).
    async fn offline_parts(&self, id: i64, active: i64, at: &At) -> Result<i64> {
        if active <= 0 {
            return Ok(0);
        }
        // A device never in touch has `last_contact` 0: still below the bound
        // when a test's clock makes `online_since` 0 or less.
        let since = at.online_since.max(1);
        Ok(with_read!(self, pool => {
            // Stops at one more than the task's unfinished parts.
            let out_of_touch: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM (SELECT 1 FROM device_contacts WHERE last_contact < $1 LIMIT $2) o",
            )
            .bind(since)
            .bind(active + 1)
            .fetch_one(pool)
            .await?;
            if out_of_touch == 0 {
                0
            } else if out_of_touch <= active {
                sqlx::query_scalar(&format!(
                    "SELECT count(*) FROM device_contacts c WHERE c.last_contact < $2 AND EXISTS \
                     (SELECT 1 FROM task_devices td WHERE td.task_id = $1 AND td.device_id = c.device_id AND td.state IN {ACTIVE})"
                ))
                .bind(id)
                .bind(since)
                .fetch_one(pool)
                .await?
            } else {
                sqlx::query_scalar(&format!(
                    "SELECT count(*) FROM task_devices td JOIN device_contacts c ON c.device_id = td.device_id \
                     WHERE td.task_id = $1 AND td.state IN {ACTIVE} AND c.last_contact < $2"
                ))
                .bind(id)
                .bind(since)
                .fetch_one(pool)
                .await?
            }
        }))
    }

    async fn task_view(&self, r: TaskRow, at: &At) -> Result<TaskView> {
        let counts = self.counts(r.id, at).await?;
        Ok(TaskView {
            id: r.id,
            name: r.name,
            kind: parse_kind(&r.kind)?,
            state: parse_state(&r.state)?,
            package_id: r.package_id,
            package_file: r.package_file,
            package_version: r.package_version,
            device_type: r.device_type,
            group_id: r.group_id,
            group_name: r.group_name,
            start_at: ts(r.start_at),
            created_at: ts(r.created_at),
            finished_at: r.finished_at.map(ts),
            attempt: r.attempt as u32,
            counts,
            rollout_id: r.rollout_id,
            wave: r.wave.map(|w| w as u32),
            notice_override: r.notice_override,
        })
    }

    pub async fn task(&self, id: i64, at: &At) -> Result<Option<TaskView>> {
        let row: Option<TaskRow> = with_read!(self, pool => {
            sqlx::query_as(&format!("{TASK_SELECT} WHERE t.id = $1"))
                .bind(id)
                .fetch_optional(pool)
                .await?
        });
        match row {
            Some(r) => Ok(Some(self.task_view(r, at).await?)),
            None => Ok(None),
        }
    }

    /// Tasks newest first, optionally only those in `state`.
    pub async fn list_tasks(&self, state: Option<TaskState>, at: &At) -> Result<Vec<TaskView>> {
        let rows: Vec<TaskRow> = with_read!(self, pool => {
            match state {
                Some(s) => sqlx::query_as(&format!("{TASK_SELECT} WHERE t.state = $1 ORDER BY t.id DESC"))
                    .bind(s.as_str())
                    .fetch_all(pool)
                    .await?,
                None => sqlx::query_as(&format!("{TASK_SELECT} ORDER BY t.id DESC")).fetch_all(pool).await?,
            }
        });
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            out.push(self.task_view(r, at).await?);
        }
        Ok(out)
    }

    /// Applies an operator's command to a task.
    pub async fn command_task(
        &self,
        id: i64,
        command: Command,
        at: &At,
        actor: &str,
    ) -> Result<TaskView> {
        with_write!(self, pool => {
            let mut tx = pool.begin().await?;
            let row: Option<(String, i64, i64)> = sqlx::query_as("SELECT state, start_at, attempt FROM tasks WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
            let Some((state, start_at, attempt)) = row else {
                return Err(Error::NotFound(format!("task {id} does not exist")));
            };
            let state = parse_state(&state)?;
            let next = lifecycle::transition(id, state, command, start_at <= at.now).map_err(Error::Conflict)?;
            if command == Command::Restart {
                let attempt = attempt + 1;
                sqlx::query("UPDATE tasks SET state = $2, start_at = $3, finished_at = NULL, attempt = $4 WHERE id = $1")
                    .bind(id)
                    .bind(next.as_str())
                    .bind(at.now)
                    .bind(attempt)
                    .execute(&mut *tx)
                    .await?;
                // Devices that succeeded keep their success; the others start over.
                sqlx::query(
                    "UPDATE task_devices SET state = 'pending', attempt = $2, step = NULL, message = NULL, percent = NULL, updated_at = $3 \
                     WHERE task_id = $1 AND state <> 'success'",
                )
                .bind(id)
                .bind(attempt)
                .bind(at.now)
                .execute(&mut *tx)
                .await?;
            } else {
                sqlx::query("UPDATE tasks SET state = $2 WHERE id = $1")
                    .bind(id)
                    .bind(next.as_str())
                    .execute(&mut *tx)
                    .await?;
            }
            audit!(&mut *tx, at.now, actor, format!("task.{}", command.as_str()), "task", id,
                json!({"from": state, "to": next}));
            bump!(&mut *tx, "tasks");
            tx.commit().await?;
        });
        // A restarted task whose devices all succeeded before is finished at once.
        self.tick(at).await?;
        self.task(id, at)
            .await?
            .ok_or_else(|| Error::NotFound(format!("task {id} does not exist")))
    }

    pub async fn delete_task(&self, id: i64, now: i64, actor: &str) -> Result<()> {
        with_write!(self, pool => {
            let mut tx = pool.begin().await?;
            let row: Option<(String, String, Option<i64>)> = sqlx::query_as("SELECT name, state, rollout_id FROM tasks WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
            let Some((name, state, rollout)) = row else {
                return Err(Error::NotFound(format!("task {id} does not exist")));
            };
            // The rollout would start the wave again and update its devices twice.
            if let Some(rollout) = rollout {
                return Err(Error::Conflict(format!(
                    "task {id} is a wave of rollout {rollout}: pause or delete the rollout instead"
                )));
            }
            sqlx::query("DELETE FROM tasks WHERE id = $1").bind(id).execute(&mut *tx).await?;
            audit!(&mut *tx, now, actor, "task.delete", "task", id, json!({"name": name, "state": state}));
            tx.commit().await?;
            Ok(())
        })
    }

    /// Moves tasks along by time and progress: `Scheduled` tasks whose start time
    /// came are `Running`; `Running` tasks whose devices all finished are
    /// `Finished`. Safe to run from any number of server processes at once.
    pub async fn tick(&self, at: &At) -> Result<()> {
        with_write!(self, pool => {
            let mut tx = pool.begin().await?;
            let started: Vec<i64> = sqlx::query_scalar(
                "UPDATE tasks SET state = 'Running' WHERE state = 'Scheduled' AND start_at <= $1 RETURNING id",
            )
            .bind(at.now)
            .fetch_all(&mut *tx)
            .await?;
            for id in started {
                audit!(&mut *tx, at.now, "server", "task.start", "task", id, json!({"from": "Scheduled", "to": "Running"}));
            }
            let finished: Vec<i64> = sqlx::query_scalar(&format!(
                "UPDATE tasks SET state = 'Finished', finished_at = $1 WHERE state = 'Running' \
                 AND NOT EXISTS (SELECT 1 FROM task_devices td WHERE td.task_id = tasks.id AND td.state IN {ACTIVE}) RETURNING id"
            ))
            .bind(at.now)
            .fetch_all(&mut *tx)
            .await?;
            for id in finished {
                audit!(&mut *tx, at.now, "server", "task.finish", "task", id, json!({"from": "Running", "to": "Finished"}));
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// One page of a task's devices.
    pub async fn task_devices(
        &self,
        id: i64,
        q: &TaskDeviceQuery,
        at: &At,
    ) -> Result<Page<TaskDeviceRow>> {
        self.require_task(id).await?;
        let mut cond = Cond::new("td.task_id = ");
        cond.bind(id);
        if let Some(s) = q.state {
            cond.push(" AND td.state = ").bind(s.as_str());
        }
        let (page, per_page) = paging(q.page, q.per_page);
        let mut select = Sql::new(&format!("{DEVICE_SELECT} WHERE "));
        select
            .append(&cond)
            .push(" ORDER BY d.site, d.number, d.id")
            .page(page, per_page);
        let mut count = Sql::new("SELECT count(*) FROM task_devices td WHERE ");
        count.append(&cond);
        let (rows, total): (Vec<DeviceRow>, i64) = fetch_page!(self, DeviceRow, select, count);
        Ok(Page {
            items: rows.into_iter().map(|r| r.row(at)).collect::<Result<_>>()?,
            total: total as u64,
            page,
            per_page,
        })
    }

    async fn require_task(&self, id: i64) -> Result<()> {
        let exists: Option<i64> = with_read!(self, pool => {
            sqlx::query_scalar("SELECT id FROM tasks WHERE id = $1").bind(id).fetch_optional(pool).await?
        });
        exists
            .map(|_| ())
            .ok_or_else(|| Error::NotFound(format!("task {id} does not exist")))
    }

    /// One device of a task with every step it reported.
    pub async fn task_device_detail(
        &self,
        id: i64,
        device_id: i64,
        at: &At,
    ) -> Result<TaskDeviceDetail> {
        self.require_task(id).await?;
        #[derive(sqlx::FromRow)]
        struct Event {
            attempt: i64,
            step: String,
            state: String,
            message: Option<String>,
            percent: Option<i64>,
            at: i64,
            received_at: i64,
        }
        let (row, events): (Option<DeviceRow>, Vec<Event>) = with_read!(self, pool => {
            let row = sqlx::query_as::<_, DeviceRow>(&format!("{DEVICE_SELECT} WHERE td.task_id = $1 AND td.device_id = $2"))
                .bind(id)
                .bind(device_id)
                .fetch_optional(pool)
                .await?;
            let events = sqlx::query_as::<_, Event>(
                "SELECT e.attempt, e.step, e.state, e.message, e.percent, e.at, e.received_at FROM task_events e \
                 JOIN task_devices td ON td.id = e.task_device_id WHERE td.task_id = $1 AND td.device_id = $2 ORDER BY e.id",
            )
            .bind(id)
            .bind(device_id)
            .fetch_all(pool)
            .await?;
            (row, events)
        });
        let row = row.ok_or_else(|| {
            Error::NotFound(format!("device {device_id} is not part of task {id}"))
        })?;
        Ok(TaskDeviceDetail {
            device: row.row(at)?,
            history: events
                .into_iter()
                .map(|e| {
                    Ok(StepEvent {
                        attempt: e.attempt as u32,
                        step: e.step,
                        state: FeedbackState::parse(&e.state).ok_or_else(|| {
                            Error::Corrupt(format!("feedback state `{}`", e.state))
                        })?,
                        message: e.message,
                        percent: e.percent.map(|p| p.clamp(0, 100) as u8),
                        at: ts(e.at),
                        received_at: ts(e.received_at),
                    })
                })
                .collect::<Result<_>>()?,
        })
    }

    /// A new static group of the task's failed devices (or the given ones of them).
    pub async fn failed_to_group(
        &self,
        id: i64,
        body: &FailedToGroup,
        at: &At,
        actor: &str,
    ) -> Result<GroupView> {
        self.require_task(id).await?;
        let failed: Vec<i64> = with_read!(self, pool => {
            sqlx::query_scalar("SELECT device_id FROM task_devices WHERE task_id = $1 AND state = 'failed' ORDER BY device_id")
                .bind(id)
                .fetch_all(pool)
                .await?
        });
        let devices = match &body.devices {
            Some(chosen) => {
                if let Some(d) = chosen.iter().find(|d| !failed.contains(d)) {
                    return Err(Error::Invalid(format!(
                        "device {d} did not fail in task {id}"
                    )));
                }
                chosen.clone()
            }
            None => failed,
        };
        if devices.is_empty() {
            return Err(Error::Invalid(format!("task {id} has no failed devices")));
        }
        self.create_group(
            &posup_proto::api::CreateGroup {
                name: body.name.clone(),
                description: body.description.clone(),
                kind: GroupKind::Static,
                filter: None,
                devices,
            },
            at,
            actor,
        )
        .await
    }

    /// The actions a device should work on: its unfinished parts of tasks that are
    /// not paused and start before `horizon` (Unix ms).
    pub async fn actions_for_device(&self, device_id: i64, horizon: i64) -> Result<Vec<Action>> {
        handed_out(&self.parts_on_poll(device_id, horizon).await?.0)
    }

    /// The device's unfinished parts of tasks that hold or may start before
    /// `horizon`, with what the gates and the answer need: the one read of a poll.
    /// Also whether the device has no unfinished part at all, whatever its start.
    pub(crate) async fn parts_on_poll(
        &self,
        device_id: i64,
        horizon: i64,
    ) -> Result<(Vec<PartOnPoll>, bool)> {
        let mut parts: Vec<PartOnPoll> = with_read!(self, pool => {
            sqlx::query_as(&format!(
                "SELECT td.id AS action_id, td.attempt, td.state, td.retry_at, td.wait_kind, td.wait_reason, \
                 t.id AS task_id, t.kind, t.state AS task_state, t.start_at, \
                 p.id AS package_id, p.file_name, p.sha256 AS package_sha256, p.size, p.version AS package_version, \
                 pl.name AS plugin_name, pl.version AS plugin_version, pl.sha256 AS plugin_sha256, pl.size AS plugin_size \
                 FROM task_devices td \
                 JOIN tasks t ON t.id = td.task_id \
                 JOIN packages p ON p.id = t.package_id \
                 JOIN plugins pl ON pl.sha256 = t.plugin_sha256 \
                 WHERE td.device_id = $1 AND td.state IN {ACTIVE} \
                 AND t.state IN ('Scheduled', 'Running', 'Paused') \
                 ORDER BY t.start_at, t.id"
            ))
            .bind(device_id)
            .fetch_all(pool)
            .await?
        });
        let none = parts.is_empty();
        parts.retain(|p| p.start_at <= horizon);
        Ok((parts, none))
    }

    /// Records one step report of a device. A key seen before from the same device
    /// is acknowledged without recording it again.
    pub async fn record_feedback(
        &self,
        device_id: i64,
        f: &Feedback,
        at: &At,
    ) -> Result<FeedbackAck> {
        self.record_reports(&[(device_id, f)], at)
            .await?
            .results
            .pop()
            .expect("one result per report")
    }

    /// Records reports, each with the device whose token sent it, in one
    /// transaction, with the same effect as recording them one by one in order:
    /// each is acknowledged or refused on its own (an inner error: the report is
    /// invalid or its action is gone), and only a failure of the database fails
    /// them all. A server gathers the reports of many devices arriving together
    /// into one call (group commit).
    ///
    /// A call costs a number of statements that grows with the tasks it
    /// concerns, not with its size (at most [`MAX_REPORTS_AT_ONCE`]): its parts
    /// read at once, its reports inserted together, each task's parts written
    /// in a statement for those whose state moved and one for those whose
    /// state stayed (not rewriting its indexes' entries), the devices whose
    /// part ended asked at once whether they have another, and each task
    /// finished when its last part ended.
    pub async fn record_reports(&self, reports: &[(i64, &Feedback)], at: &At) -> Result<Recorded> {
        if reports.len() > MAX_REPORTS_AT_ONCE {
            return Err(Error::Invalid(format!(
                "{} reports at once: record at most {MAX_REPORTS_AT_ONCE}",
                reports.len()
            )));
        }
        let mut results: Vec<Result<FeedbackAck>> = reports
            .iter()
            .map(|(device_id, f)| check_report(*device_id, f))
            .collect();
        let mut actions: Vec<i64> = reports
            .iter()
            .zip(&results)
            .filter(|(_, r)| r.is_ok())
            .map(|((_, f), _)| f.action_id)
            .collect();
        actions.sort_unstable();
        actions.dedup();
        if actions.is_empty() {
            return Ok(Recorded {
                results,
                idle: Vec::new(),
            });
        }
        with_write!(self, pool => {
            let mut tx = pool.begin().await?;
            let mut select = Sql::new(
                "SELECT td.id, td.task_id, td.device_id, td.state, td.attempt, t.state AS task_state \
                 FROM task_devices td JOIN tasks t ON t.id = td.task_id WHERE td.id IN (",
            );
            select.bind_list(&actions);
            select.push(")");
            let text = pool.text(&select);
            let rows: Vec<PartRow> = bind_all!(sqlx::query_as::<_, PartRow>(&text), select.args)
                .fetch_all(&mut *tx)
                .await?;
            let mut parts = Vec::with_capacity(rows.len());
            for r in rows {
                parts.push(Part::read(r)?);
            }
            // Reports that name a part of their device; the others are refused.
            for ((device_id, f), result) in reports.iter().zip(results.iter_mut()) {
                let device_id = *device_id;
                if result.is_err() {
                    continue;
                }
                *result = match parts.iter().find(|p| p.id == f.action_id) {
                    None => Err(Error::NotFound(format!(
                        "action {} does not exist (its task may have been deleted)",
                        f.action_id
                    ))),
                    Some(p) if p.device_id != device_id || p.task_id != f.task_id => {
                        Err(Error::Invalid(format!(
                            "action {} is not device {device_id}'s part of task {}",
                            f.action_id, f.task_id
                        )))
                    }
                    Some(_) => Ok(FeedbackAck { key: f.key.clone(), duplicate: true, active: false }),
                };
            }
            let fresh: Vec<(i64, &Feedback, Option<String>)> = reports
                .iter()
                .zip(&results)
                .filter(|(_, r)| r.is_ok())
                .map(|((device_id, f), _)| (*device_id, *f, f.message.as_ref().map(|m| truncate(m, 4000))))
                .collect();
            let mut insert = Sql::new(
                "INSERT INTO task_events (task_device_id, device_id, key, attempt, step, state, message, percent, at, received_at) VALUES ",
            );
            for (i, (device_id, f, message)) in fresh.iter().enumerate() {
                insert.push(if i == 0 { "(" } else { ", (" });
                insert.bind(f.action_id).push(", ").bind(*device_id).push(", ").bind(f.key.as_str());
                insert.push(", ").bind(i64::from(f.attempt)).push(", ").bind(f.step.as_str());
                insert.push(", ").bind(f.state.as_str()).push(", ").bind(message.clone());
                insert.push(", ").bind(f.percent.map(i64::from)).push(", ").bind(f.at.timestamp_millis());
                insert.push(", ").bind(at.now).push(")");
            }
            insert.push(" ON CONFLICT (device_id, key) DO NOTHING RETURNING device_id, key");
            let inserted: Vec<(i64, String)> = if fresh.is_empty() {
                Vec::new()
            } else {
                let text = pool.text(&insert);
                bind_all!(sqlx::query_as::<_, (i64, String)>(&text), insert.args)
                    .fetch_all(&mut *tx)
                    .await?
            };
            let inserted: std::collections::HashSet<(i64, String)> = inserted.into_iter().collect();
            // The reports in order, each moving its part as it would alone; a key
            // twice in one call counts once.
            let mut seen = std::collections::HashSet::new();
            for ((device_id, f), result) in reports.iter().zip(results.iter_mut()) {
                let Ok(ack) = result else { continue };
                let Some(part) = parts.iter_mut().find(|p| p.id == f.action_id) else { continue };
                let key = (*device_id, f.key.clone());
                ack.duplicate = !(inserted.contains(&key) && seen.insert(key));
                let current_attempt = i64::from(f.attempt) == part.attempt;
                let running_task = matches!(part.task_state, TaskState::Scheduled | TaskState::Running);
                let mut active = current_attempt && running_task && !part.state.is_terminal();
                if !ack.duplicate && current_attempt {
                    let before = part.state;
                    let after = lifecycle::after_feedback(before, f.state);
                    part.state = after;
                    part.step = Some(f.step.as_str().to_owned());
                    if let Some(m) = &f.message {
                        part.message = Some(truncate(m, 4000));
                    }
                    part.percent = f.percent.map(i64::from);
                    // A device that answered not-now is not handed the part again
                    // before it tries again itself (see `gates`).
                    part.retry_at = (after == DeviceTaskState::Waiting).then(|| {
                        at.now + f.retry_after_secs.unwrap_or(DEFAULT_RETRY_SECS).min(86_400) as i64 * 1000
                    });
                    part.changed = true;
                    part.moved |= after != before;
                    if after.is_terminal() && !before.is_terminal() {
                        part.finished = true;
                        active = false;
                    }
                }
                ack.active = active;
            }
            let mut changed: Vec<&Part> = parts.iter().filter(|p| p.changed).collect();
            // One statement for the parts of a task whose state moved and one
            // for those whose state stayed (most reports: a step started or
            // done): SQLite rewrites the entries of every index on a column an
            // UPDATE sets, whatever its value, and both state indexes hold a
            // part's entry on another page. The values are typed so both
            // backends read them alike. Statements per task, in task order,
            // because the parts' counting triggers take their task's counts
            // row as each statement ends: two servers' groups that span the
            // same tasks take them in the same order, and never deadlock.
            changed.sort_by_key(|p| (p.task_id, !p.moved));
            for changed in changed.chunk_by(|a, b| (a.task_id, a.moved) == (b.task_id, b.moved)) {
                let moved = changed[0].moved;
                let mut update = Sql::new(if moved {
                    "UPDATE task_devices SET state = v.column2, "
                } else {
                    "UPDATE task_devices SET "
                });
                update.push("step = v.column3, message = COALESCE(v.column4, task_devices.message), \
                    percent = v.column5, retry_at = v.column6, updated_at = ");
                update.bind(at.now).push(" FROM (VALUES ");
                for (i, p) in changed.iter().enumerate() {
                    update.push(if i == 0 { "(CAST(" } else { ", (CAST(" });
                    update.bind(p.id).push(" AS BIGINT), CAST(").bind(p.state.as_str());
                    update.push(" AS TEXT), CAST(").bind(p.step.clone()).push(" AS TEXT), CAST(");
                    update.bind(p.message.clone()).push(" AS TEXT), CAST(").bind(p.percent);
                    update.push(" AS BIGINT), CAST(").bind(p.retry_at).push(" AS BIGINT))");
                }
                update.push(") AS v WHERE task_devices.id = v.column1");
                let text = pool.text(&update);
                bind_all!(sqlx::query(&text), update.args).execute(&mut *tx).await?;
            }
            // Devices whose part ended and that have no other part left, as a
            // poll would find them: their next poll need not ask.
            let mut idle: Vec<i64> = parts.iter().filter(|p| p.finished).map(|p| p.device_id).collect();
            idle.sort_unstable();
            idle.dedup();
            if !idle.is_empty() {
                let mut busy = Sql::new(&format!(
                    "SELECT DISTINCT td.device_id FROM task_devices td JOIN tasks t ON t.id = td.task_id \
                     WHERE td.state IN {ACTIVE} AND t.state IN ('Scheduled', 'Running', 'Paused') AND td.device_id IN ("
                ));
                busy.bind_list(&idle);
                busy.push(")");
                let text = pool.text(&busy);
                let busy: Vec<i64> = bind_all!(sqlx::query_scalar::<_, i64>(&text), busy.args)
                    .fetch_all(&mut *tx)
                    .await?;
                idle.retain(|d| !busy.contains(d));
            }
            // The last part ending finishes its task: its counts row, kept by
            // the triggers as each statement above ended, says so in one row
            // where a search of the task's parts reads the ended ones' old
            // versions too.
            let mut ended: Vec<i64> = parts.iter().filter(|p| p.finished).map(|p| p.task_id).collect();
            ended.sort_unstable();
            ended.dedup();
            for task_id in ended {
                let finished: Option<i64> = sqlx::query_scalar(
                    "UPDATE tasks SET state = 'Finished', finished_at = $1 WHERE id = $2 AND state = 'Running' \
                     AND (SELECT c.total - c.success - c.failed FROM task_counts c WHERE c.task_id = tasks.id) = 0 RETURNING id"
                )
                .bind(at.now)
                .bind(task_id)
                .fetch_optional(&mut *tx)
                .await?;
                if let Some(id) = finished {
                    audit!(&mut *tx, at.now, "server", "task.finish", "task", id, json!({"from": "Running", "to": "Finished"}));
                }
            }
            tx.commit().await?;
            Ok(Recorded { results, idle })
        })
    }
}

/// Parts counted as a task shows them: in progress are those neither ended
/// nor offline.
pub(crate) fn counts_of(total: i64, failed: i64, success: i64, offline: i64) -> TaskCounts {
    TaskCounts {
        total: total as u64,
        offline: offline as u64,
        inprogress: (total - failed - success - offline).max(0) as u64,
        failed: failed as u64,
        success: success as u64,
    }
}

/// What [`Store::record_reports`] did.
#[derive(Debug)]
pub struct Recorded {
    /// Each report's outcome, in order.
    pub results: Vec<Result<FeedbackAck>>,
    /// Devices whose part ended in this call and that have no unfinished part
    /// left: a poll now would find them idle.
    pub idle: Vec<i64>,
}

/// The most reports [`Store::record_reports`] takes at once. A group holds the
/// database's writer for its whole transaction and each of its devices waits
/// for all of it, so larger groups would buy little for the latency they cost.
pub const MAX_REPORTS_AT_ONCE: usize = 64;

/// A part named by a feedback batch, as read and then as its reports leave it.
struct Part {
    id: i64,
    task_id: i64,
    device_id: i64,
    state: DeviceTaskState,
    attempt: i64,
    task_state: TaskState,
    step: Option<String>,
    message: Option<String>,
    percent: Option<i64>,
    retry_at: Option<i64>,
    /// Its row must be written.
    changed: bool,
    /// Its state is another than the one read.
    moved: bool,
    /// A report of the batch ended it.
    finished: bool,
}

#[derive(sqlx::FromRow)]
struct PartRow {
    id: i64,
    task_id: i64,
    device_id: i64,
    state: String,
    attempt: i64,
    task_state: String,
}

impl Part {
    fn read(r: PartRow) -> Result<Part> {
        Ok(Part {
            id: r.id,
            task_id: r.task_id,
            device_id: r.device_id,
            state: parse_device_state(&r.state)?,
            attempt: r.attempt,
            task_state: parse_state(&r.task_state)?,
            step: None,
            message: None,
            percent: None,
            retry_at: None,
            changed: false,
            moved: false,
            finished: false,
        })
    }
}

/// The checks of one report that need no database.
fn check_report(device_id: i64, f: &Feedback) -> Result<FeedbackAck> {
    if f.device_id != device_id {
        return Err(Error::Invalid(format!(
            "feedback names device {} but comes with the token of device {device_id}",
            f.device_id
        )));
    }
    if f.key.is_empty() || f.key.len() > 200 {
        return Err(Error::Invalid(format!(
            "feedback key `{}` is invalid: give 1 to 200 characters",
            f.key
        )));
    }
    if f.percent.is_some_and(|p| p > 100) {
        return Err(Error::Invalid(format!(
            "feedback for action {}: percent {} is over 100",
            f.action_id,
            f.percent.unwrap_or_default()
        )));
    }
    Ok(FeedbackAck {
        key: f.key.clone(),
        duplicate: false,
        active: false,
    })
}

/// Why an unstarted part waits: its not-now answer while `waiting`, the gate
/// that held it back while `pending`; nothing once it runs or ended.
pub(crate) fn wait_of(
    state: DeviceTaskState,
    message: Option<&str>,
    wait_kind: Option<&str>,
    wait_reason: Option<String>,
    retry_at: Option<i64>,
) -> Result<Option<Wait>> {
    Ok(match (state, wait_kind, wait_reason) {
        (DeviceTaskState::Waiting, _, _) => Some(Wait {
            kind: WaitKind::NotNow,
            reason: message.unwrap_or("answered not-now").to_owned(),
            until: retry_at.map(ts),
        }),
        (DeviceTaskState::Pending, Some(kind), Some(reason)) => Some(Wait {
            kind: WaitKind::parse(kind)
                .ok_or_else(|| Error::Corrupt(format!("wait kind `{kind}`")))?,
            reason,
            until: None,
        }),
        _ => None,
    })
}
