//! Making a rollout, and an operator's commands on it: pause, resume,
//! advance, delete.

use super::*;

impl Store {
    /// Creates a rollout and announces it to every site it covers.
    pub async fn create_rollout(
        &self,
        body: &CreateRollout,
        at: &At,
        actor: &str,
    ) -> Result<RolloutView> {
        if let Some(name) = &body.name {
            crate::tokens::check_name("rollout", name)?;
        }
        if body.packages.is_empty() {
            return Err(Error::Invalid(
                "a rollout needs at least one package: give `packages`".into(),
            ));
        }
        for id in &body.packages {
            if let Some(package) = self.package(*id).await? {
                crate::tasks::refuse_archived(&package)?;
            }
        }
        let releases = self.releases(&body.packages).await?;
        for r in &releases {
            let enabled: Option<String> = with_read!(self, pool => {
                sqlx::query_scalar::<_, Option<String>>("SELECT plugin_sha256 FROM device_types WHERE name = $1")
                    .bind(&r.device_type)
                    .fetch_one(pool)
                    .await?
            });
            if enabled.is_none() {
                return Err(Error::Invalid(format!(
                    "device type {} has no plugin enabled: enable one before rolling out {}",
                    r.device_type, r.file_name
                )));
            }
        }
        let waves = if body.waves.is_empty() {
            let pilot: Option<i64> = with_read!(self, pool => {
                sqlx::query_scalar("SELECT id FROM groups WHERE name = 'Pilot'").fetch_optional(pool).await?
            });
            let pilot = pilot.ok_or_else(|| {
                Error::Invalid(
                    "no waves given and there is no group named Pilot: create a Pilot group of a few devices, or give `waves`"
                        .into(),
                )
            })?;
            [pilot, 2, 3]
                .into_iter()
                .map(|group_id| posup_proto::rollout::WaveSpec {
                    group_id,
                    success_percent: 100,
                    auto_advance: true,
                })
                .collect()
        } else {
            body.waves.clone()
        };
        let mut wave_names = Vec::with_capacity(waves.len());
        let mut conds = Vec::with_capacity(waves.len());
        for (i, w) in waves.iter().enumerate() {
            if !(1..=100).contains(&w.success_percent) {
                return Err(Error::Invalid(format!(
                    "wave {i}: success threshold {} % is out of range: give 1 to 100",
                    w.success_percent
                )));
            }
            let name = self.group_name(w.group_id).await?.ok_or_else(|| {
                Error::Invalid(format!("wave {i}: group {} does not exist", w.group_id))
            })?;
            wave_names.push(name);
            conds.push(self.group_cond(w.group_id, at).await?);
        }
        if body.max_failed_percent.is_some_and(|p| p == 0 || p > 100) {
            return Err(Error::Invalid(
                "error threshold `max_failed_percent` is out of range: give 1 to 100".into(),
            ));
        }
        if body.max_failed == Some(0) {
            return Err(Error::Invalid(
                "error threshold `max_failed` of 0 would stop the rollout at once: give 1 or more"
                    .into(),
            ));
        }
        let start_at = body
            .start_at
            .map(|t| t.timestamp_millis())
            .unwrap_or(at.now);
        let name = body.name.clone().unwrap_or_else(|| {
            let files: Vec<&str> = releases.iter().map(|r| r.file_name.as_str()).collect();
            format!("{} {}", kind_label(body.kind), files.join(", "))
        });
        check_notice(
            &format!("rollout {name}"),
            body.kind,
            start_at,
            at.now,
            body.notice_override.as_deref(),
        )?;
        let types: Vec<String> = releases.iter().map(|r| r.device_type.clone()).collect();
        let cond = targets(&types, &conds);
        let messages = self
            .announcements(
                &name,
                body.kind,
                start_at,
                &releases,
                &cond,
                &body.conditions,
            )
            .await?;
        if messages.is_empty() {
            return Err(Error::Invalid(format!(
                "rollout {name}: its waves cover no devices of {}: choose other groups or packages",
                types.join(", ")
            )));
        }
        let state = if start_at <= at.now {
            RolloutState::Running
        } else {
            RolloutState::Scheduled
        };
        let id = with_write!(self, pool => {
            let mut tx = pool.begin().await?;
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO rollouts (name, kind, state, wave, max_failed, max_failed_percent, conditions, start_at, announced_at, notice_override, created_at) \
                 VALUES ($1, $2, 'Scheduled', 0, $3, $4, $5, $6, $7, $8, $7) RETURNING id",
            )
            .bind(&name)
            .bind(body.kind.as_str())
            .bind(body.max_failed.map(i64::from))
            .bind(body.max_failed_percent.map(i64::from))
            .bind(&body.conditions)
            .bind(start_at)
            .bind(at.now)
            .bind(body.notice_override.clone())
            .fetch_one(&mut *tx)
            .await?;
            for r in &releases {
                sqlx::query("INSERT INTO rollout_packages (rollout_id, package_id) VALUES ($1, $2)")
                    .bind(id)
                    .bind(r.id)
                    .execute(&mut *tx)
                    .await?;
            }
            for (i, (w, group_name)) in waves.iter().zip(&wave_names).enumerate() {
                sqlx::query(
                    "INSERT INTO rollout_waves (rollout_id, position, group_id, group_name, success_percent, auto_advance) VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(id)
                .bind(i as i64)
                .bind(w.group_id)
                .bind(group_name)
                .bind(i64::from(w.success_percent))
                .bind(w.auto_advance)
                .execute(&mut *tx)
                .await?;
            }
            for m in &messages {
                sqlx::query("INSERT INTO rollout_sites (rollout_id, site, announcement) VALUES ($1, $2, $3)")
                    .bind(id)
                    .bind(&m.site)
                    .bind(&m.text)
                    .execute(&mut *tx)
                    .await?;
                // A download interrupts nobody: stores hear only of updates.
                if body.kind != TaskKind::Download {
                    notify!(&mut *tx, at.now, &Notice {
                        event: "announcement",
                        site: Some(&m.site),
                        rollout_id: Some(id),
                        task_id: None,
                        // The message's own first line, in the store's language.
                        subject: m.text.lines().next().unwrap_or_default(),
                        body: &m.text,
                    });
                }
            }
            audit!(&mut *tx, at.now, actor, "rollout.create", "rollout", id,
                json!({"name": name, "kind": body.kind, "packages": body.packages, "waves": waves,
                       "start_at": start_at, "notice_override": body.notice_override, "sites": messages.len()}));
            tx.commit().await?;
            id
        });
        if state == RolloutState::Running {
            self.tick_rollouts(at).await?;
        }
        self.rollout(id, at)
            .await?
            .ok_or_else(|| Error::NotFound(format!("rollout {id} vanished while being created")))
    }

    /// Applies an operator's command to a rollout.
    pub async fn command_rollout(
        &self,
        id: i64,
        command: RolloutCommand,
        at: &At,
        actor: &str,
    ) -> Result<RolloutView> {
        let row = self
            .rollout_row(id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("rollout {id} does not exist")))?;
        let state = parse_state(&row.state)?;
        use RolloutCommand::*;
        let next = match (command, state) {
            (Pause, RolloutState::Scheduled | RolloutState::Running | RolloutState::Waiting) => {
                RolloutState::Paused
            }
            (Resume, RolloutState::Paused) if row.start_at > at.now => RolloutState::Scheduled,
            (Resume, RolloutState::Paused) => RolloutState::Running,
            (Advance, RolloutState::Waiting) => RolloutState::Running,
            (c, s) => {
                let wants = match c {
                    Pause => "a Scheduled, Running or Waiting",
                    Resume => "a Paused",
                    Advance => "a Waiting",
                };
                return Err(Error::Conflict(format!(
                    "rollout {id} is {}: only {wants} rollout can be told to {}",
                    s.as_str(),
                    c.as_str()
                )));
            }
        };
        with_write!(self, pool => {
            let mut tx = pool.begin().await?;
            let done = sqlx::query("UPDATE rollouts SET state = $2, pause_reason = $3 WHERE id = $1 AND state = $4")
                .bind(id)
                .bind(next.as_str())
                .bind((next == RolloutState::Paused).then(|| format!("paused by {actor}")))
                .bind(state.as_str())
                .execute(&mut *tx)
                .await?;
            if done.rows_affected() == 0 {
                return Err(Error::Conflict(format!("rollout {id} changed meanwhile: look at it again")));
            }
            match command {
                Pause => {
                    sqlx::query("UPDATE tasks SET state = 'Paused' WHERE rollout_id = $1 AND state IN ('Scheduled', 'Running')")
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                }
                Resume => {
                    sqlx::query("UPDATE rollouts SET resumed_at = $2 WHERE id = $1")
                        .bind(id)
                        .bind(at.now)
                        .execute(&mut *tx)
                        .await?;
                    // Failures count from now. Each task's counts row is taken
                    // first, in the order the counting triggers take them (no
                    // deadlock with a report group): once held, every report
                    // before is committed and every report after waits, then
                    // reads the new `since`. Then those counts start again.
                    let tasks: Vec<i64> = sqlx::query_scalar("SELECT id FROM tasks WHERE rollout_id = $1 ORDER BY id")
                        .bind(id)
                        .fetch_all(&mut *tx)
                        .await?;
                    for task in tasks {
                        sqlx::query("UPDATE task_counts SET since = $2 WHERE task_id = $1")
                            .bind(task)
                            .bind(at.now)
                            .execute(&mut *tx)
                            .await?;
                    }
                    sqlx::query(
                        "UPDATE task_counts SET \
                         failed_since = (SELECT count(*) FROM task_devices td \
                           WHERE td.task_id = task_counts.task_id AND td.state = 'failed' AND td.updated_at > task_counts.since), \
                         ended_since = (SELECT count(*) FROM task_devices td \
                           WHERE td.task_id = task_counts.task_id AND td.state IN ('success', 'failed') AND td.updated_at > task_counts.since) \
                         WHERE task_id IN (SELECT id FROM tasks WHERE rollout_id = $1)",
                    )
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                    sqlx::query("UPDATE tasks SET state = 'Running' WHERE rollout_id = $1 AND state = 'Paused'")
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                }
                Advance => {
                    sqlx::query("UPDATE rollouts SET wave = wave + 1 WHERE id = $1")
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                }
            }
            audit!(&mut *tx, at.now, actor, format!("rollout.{}", command.as_str()), "rollout", id,
                json!({"from": state, "to": next}));
            bump!(&mut *tx, "tasks");
            tx.commit().await?;
        });
        self.tick_rollouts(at).await?;
        self.rollout(id, at)
            .await?
            .ok_or_else(|| Error::NotFound(format!("rollout {id} does not exist")))
    }

    /// Deletes a rollout with its tasks.
    pub async fn delete_rollout(&self, id: i64, now: i64, actor: &str) -> Result<()> {
        with_write!(self, pool => {
            let mut tx = pool.begin().await?;
            let name: Option<String> = sqlx::query_scalar("SELECT name FROM rollouts WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
            let Some(name) = name else {
                return Err(Error::NotFound(format!("rollout {id} does not exist")));
            };
            sqlx::query("DELETE FROM tasks WHERE rollout_id = $1").bind(id).execute(&mut *tx).await?;
            sqlx::query("DELETE FROM rollouts WHERE id = $1").bind(id).execute(&mut *tx).await?;
            sqlx::query("DELETE FROM rollout_site_ends WHERE rollout_id = $1").bind(id).execute(&mut *tx).await?;
            audit!(&mut *tx, now, actor, "rollout.delete", "rollout", id, json!({"name": name}));
            bump!(&mut *tx, "tasks");
            tx.commit().await?;
        });
        Ok(())
    }
}
