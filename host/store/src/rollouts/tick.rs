//! Moving rollouts along: due starts, waves filled with their groups' devices
//! (late joiners too), and the thresholds applied.
//!
//! Searching a wave's group for devices without a part reads every device of
//! the group, so a started wave is searched only when its group may have gained
//! one ([`must_search`]): when the `members` counter or the newest device id
//! moved since its last search, when its group drifts (`groups::drifts`), or
//! when its last search is a minute old. The last covers a device whose
//! enrollment committed after one with a higher id (PostgreSQL hands out ids
//! before commit), and keeps a late joiner waiting at most that long.

use super::*;

/// What a rollout tick did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Ticked {
    /// Devices got new parts or tasks changed state: callers drop what they
    /// cached of actions.
    pub changed: bool,
    /// Started waves whose group was searched for devices without a part.
    pub waves_searched: usize,
    /// Rollouts whose open sites were checked for their end.
    pub sites_checked: usize,
    /// The sites those checks read: every open one, or those where a part
    /// ended since the last check.
    pub sites_read: usize,
}

/// What a search of a wave's group saw: the `members` counter and the newest
/// device id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Seen {
    pub members: i64,
    pub max_device: i64,
}

/// A wave is searched again at least this often (ms); see the module.
const SEARCH_AGAIN_MS: i64 = 60_000;

/// Whether a started wave's group is searched now: never searched, its group
/// drifts, something its membership depends on moved, or its last search is
/// [`SEARCH_AGAIN_MS`] old.
pub(crate) fn must_search(last: Option<(i64, Seen)>, now: (i64, Seen), drifts: bool) -> bool {
    match last {
        None => true,
        Some((at, seen)) => drifts || seen != now.1 || now.0 - at >= SEARCH_AGAIN_MS,
    }
}

impl WaveRow {
    fn last_search(&self) -> Option<(i64, Seen)> {
        Some((
            self.searched_at?,
            Seen {
                members: self.searched_members?,
                max_device: self.searched_max_device?,
            },
        ))
    }
}

impl Store {
    /// Moves every unfinished rollout along: starts due ones, starts waves, adds
    /// devices that joined a started wave's group, applies the thresholds, and
    /// reports sites whose part ended.
    pub async fn tick_rollouts(&self, at: &At) -> Result<Ticked> {
        self.tick(at).await?;
        let rows: Vec<RolloutRow> = with_read!(self, pool => {
            sqlx::query_as(&format!(
                "{ROLLOUT_SELECT} WHERE state IN ('Scheduled', 'Running', 'Waiting', 'Paused') ORDER BY id"
            ))
            .fetch_all(pool)
            .await?
        });
        let mut ticked = Ticked::default();
        if rows.is_empty() {
            return Ok(ticked);
        }
        let (members, max_device): (i64, i64) = with_read!(self, pool => {
            sqlx::query_as(
                "SELECT (SELECT value FROM generations WHERE name = 'members'), \
                 (SELECT COALESCE(max(id), 0) FROM devices)",
            )
            .fetch_one(pool)
            .await?
        });
        let seen = Seen {
            members,
            max_device,
        };
        for r in rows {
            self.tick_rollout(r, seen, at, &mut ticked).await?;
        }
        Ok(ticked)
    }

    async fn tick_rollout(
        &self,
        r: RolloutRow,
        seen: Seen,
        at: &At,
        ticked: &mut Ticked,
    ) -> Result<()> {
        let mut state = parse_state(&r.state)?;
        if state == RolloutState::Scheduled && r.start_at <= at.now {
            let moved = with_write!(self, pool => {
                let mut tx = pool.begin().await?;
                let moved = sqlx::query("UPDATE rollouts SET state = 'Running' WHERE id = $1 AND state = 'Scheduled'")
                    .bind(r.id)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if moved > 0 {
                    audit!(&mut *tx, at.now, "server", "rollout.start", "rollout", r.id, json!({"from": "Scheduled", "to": "Running"}));
                }
                tx.commit().await?;
                moved
            });
            if moved > 0 {
                state = RolloutState::Running;
            }
        }
        if state == RolloutState::Scheduled {
            return Ok(());
        }
        let waves: Vec<WaveRow> = with_read!(self, pool => {
            sqlx::query_as(&format!(
                "SELECT {WAVE_COLUMNS} FROM rollout_waves WHERE rollout_id = $1 ORDER BY position"
            ))
            .bind(r.id)
            .fetch_all(pool)
            .await?
        });
        let current = r.wave;
        // Waves up to the current one have their tasks, and pick up devices that
        // joined their group since (not while paused: nothing should start).
        if matches!(state, RolloutState::Running | RolloutState::Waiting) {
            for w in waves.iter().filter(|w| w.position <= current) {
                self.fill_wave(&r, w, seen, at, ticked).await?;
            }
        }
        if state == RolloutState::Running {
            self.judge(&r, &waves, seen, at, ticked).await?;
        }
        self.report_sites(&r, &waves, at, ticked).await?;
        Ok(())
    }

    /// Creates the wave's tasks when missing and adds the group's devices not yet
    /// in this rollout's task of the same package, when its group must be
    /// searched ([`must_search`]).
    async fn fill_wave(
        &self,
        r: &RolloutRow,
        w: &WaveRow,
        seen: Seen,
        at: &At,
        ticked: &mut Ticked,
    ) -> Result<()> {
        let Some(group_id) = w.group_id else {
            return Ok(());
        };
        let membership = self.group_membership(group_id, at).await?;
        if !must_search(w.last_search(), (at.now, seen), membership.drifts) {
            return Ok(());
        }
        ticked.waves_searched += 1;
        let members = membership.cond;
        // Recorded only once every package's devices were added: a device type
        // without its plugin yet is searched again on the next tick.
        let mut complete = true;
        let packages: Vec<(i64, String, Option<String>)> = with_read!(self, pool => {
            sqlx::query_as(
                "SELECT p.id, p.device_type, dt.plugin_sha256 FROM rollout_packages rp JOIN packages p ON p.id = rp.package_id \
                 JOIN device_types dt ON dt.name = p.device_type WHERE rp.rollout_id = $1 ORDER BY p.id",
            )
            .bind(r.id)
            .fetch_all(pool)
            .await?
        });
        for (package_id, device_type, plugin) in packages {
            let Some(plugin) = plugin else {
                complete = false;
                continue;
            };
            // `$1` is the task id, `$2` the rollout, `$3` the package, `$4` now.
            let mut insert = Sql::new(
                "INSERT INTO task_devices (task_id, device_id, state, attempt, updated_at) SELECT ",
            );
            insert.bind(0i64);
            insert.push(", d.id, 'pending', 1, ");
            insert.bind(at.now);
            insert.push(" FROM devices d WHERE d.device_type = ");
            insert.bind(device_type.as_str());
            insert.push(" AND NOT EXISTS (SELECT 1 FROM task_devices x JOIN tasks xt ON xt.id = x.task_id WHERE xt.rollout_id = ");
            insert.bind(r.id);
            insert.push(" AND xt.package_id = ");
            insert.bind(package_id);
            insert.push(" AND x.device_id = d.id)");
            insert.and(&members);
            // Two replicas adding the same joiner at once: one of them adds it.
            insert.push(" ON CONFLICT (task_id, device_id) DO NOTHING");
            with_write!(self, pool => {
                let mut tx = pool.begin().await?;
                let existing: Option<(i64, String)> = sqlx::query_as(
                    "SELECT id, state FROM tasks WHERE rollout_id = $1 AND wave = $2 AND package_id = $3",
                )
                .bind(r.id)
                .bind(w.position)
                .bind(package_id)
                .fetch_optional(&mut *tx)
                .await?;
                let (task_id, task_state) = match existing {
                    Some(t) => t,
                    None => {
                        let name = format!("{} · wave {} ({})", r.name, w.position + 1, w.group_name);
                        // Another replica starting the same wave at this moment: its
                        // insert wins, and this one takes the task it made.
                        let id: Option<i64> = sqlx::query_scalar(
                            "INSERT INTO tasks (name, kind, state, package_id, plugin_sha256, device_type, group_id, group_name, start_at, created_at, attempt, rollout_id, wave, notice_override) \
                             VALUES ($1, $2, 'Running', $3, $4, $5, $6, $7, $8, $8, 1, $9, $10, $11) \
                             ON CONFLICT (rollout_id, wave, package_id) DO NOTHING RETURNING id",
                        )
                        .bind(&name)
                        .bind(&r.kind)
                        .bind(package_id)
                        .bind(&plugin)
                        .bind(&device_type)
                        .bind(group_id)
                        .bind(&w.group_name)
                        .bind(at.now)
                        .bind(r.id)
                        .bind(w.position)
                        .bind(r.notice_override.clone())
                        .fetch_optional(&mut *tx)
                        .await?;
                        match id {
                            Some(id) => {
                                sqlx::query("UPDATE rollout_waves SET started_at = $3 WHERE rollout_id = $1 AND position = $2 AND started_at IS NULL")
                                    .bind(r.id)
                                    .bind(w.position)
                                    .bind(at.now)
                                    .execute(&mut *tx)
                                    .await?;
                                audit!(&mut *tx, at.now, "server", "task.create", "task", id,
                                    json!({"name": name, "rollout_id": r.id, "wave": w.position}));
                                (id, "Running".to_owned())
                            }
                            None => sqlx::query_as(
                                "SELECT id, state FROM tasks WHERE rollout_id = $1 AND wave = $2 AND package_id = $3",
                            )
                            .bind(r.id)
                            .bind(w.position)
                            .bind(package_id)
                            .fetch_one(&mut *tx)
                            .await?,
                        }
                    }
                };
                let mut args = insert.args.clone();
                args[0] = Arg::I64(task_id);
                let added = bind_all!(sqlx::query(&insert.text), args).execute(&mut *tx).await?.rows_affected();
                if added > 0 && task_state == "Finished" {
                    sqlx::query("UPDATE tasks SET state = 'Running', finished_at = NULL WHERE id = $1")
                        .bind(task_id)
                        .execute(&mut *tx)
                        .await?;
                }
                if added > 0 {
                    bump!(&mut *tx, "tasks");
                    ticked.changed = true;
                }
                tx.commit().await?;
                self.analyze_after("task_devices", added).await?;
            });
        }
        if complete {
            with_write!(self, pool => {
                sqlx::query(
                    "UPDATE rollout_waves SET searched_at = $3, searched_members = $4, searched_max_device = $5 \
                     WHERE rollout_id = $1 AND position = $2",
                )
                .bind(r.id)
                .bind(w.position)
                .bind(at.now)
                .bind(seen.members)
                .bind(seen.max_device)
                .execute(pool)
                .await?;
            });
        }
        Ok(())
    }

    /// Reads what the rollout's thresholds need from its tasks' counts (a row
    /// per wave, whatever the fleet's size) and moves it as
    /// `posup_policy::rollout::judge` decides. Failures count from the last
    /// resume: `task_counts.since` is the rollout's `resumed_at`.
    async fn judge(
        &self,
        r: &RolloutRow,
        waves: &[WaveRow],
        seen: Seen,
        at: &At,
        ticked: &mut Ticked,
    ) -> Result<()> {
        let (failed, ended, unfinished): (i64, i64, i64) = with_read!(self, pool => {
            sqlx::query_as(
                "SELECT CAST(COALESCE(sum(c.failed_since), 0) AS BIGINT), CAST(COALESCE(sum(c.ended_since), 0) AS BIGINT), \
                 CAST(COALESCE(sum(c.total - c.success - c.failed), 0) AS BIGINT) \
                 FROM task_counts c JOIN tasks t ON t.id = c.task_id WHERE t.rollout_id = $1",
            )
            .bind(r.id)
            .fetch_one(pool)
            .await?
        });
        let Some(wave) = waves.iter().find(|w| w.position == r.wave) else {
            return Ok(());
        };
        let (total, success, active): (i64, i64, i64) = with_read!(self, pool => {
            sqlx::query_as(
                "SELECT CAST(COALESCE(sum(c.total), 0) AS BIGINT), CAST(COALESCE(sum(c.success), 0) AS BIGINT), \
                 CAST(COALESCE(sum(c.total - c.success - c.failed), 0) AS BIGINT) \
                 FROM task_counts c JOIN tasks t ON t.id = c.task_id WHERE t.rollout_id = $1 AND t.wave = $2",
            )
            .bind(r.id)
            .bind(wave.position)
            .fetch_one(pool)
            .await?
        });
        let decision = rollout::judge(
            rollout::ErrorThreshold {
                max_failed: r.max_failed,
                max_failed_percent: r.max_failed_percent,
            },
            rollout::Wave {
                position: wave.position,
                group: &wave.group_name,
                success_percent: wave.success_percent,
                auto_advance: wave.auto_advance,
                last: wave.position + 1 >= waves.len() as i64,
            },
            rollout::Counts {
                failed,
                ended,
                unfinished,
                wave_total: total,
                wave_success: success,
                wave_active: active,
            },
        );
        let (next, reason, wave_no) = match decision {
            Decision::Stay => return Ok(()),
            Decision::Finish => (RolloutState::Finished, None, r.wave),
            Decision::Advance { to } => (RolloutState::Running, None, to),
            Decision::Wait => (RolloutState::Waiting, None, r.wave),
            Decision::Pause { reason } => (RolloutState::Paused, Some(reason), r.wave),
        };
        let moved = with_write!(self, pool => {
            let mut tx = pool.begin().await?;
            let moved = sqlx::query(
                "UPDATE rollouts SET state = $2, wave = $3, pause_reason = $4, finished_at = $5 WHERE id = $1 AND state = 'Running' AND wave = $6",
            )
            .bind(r.id)
            .bind(next.as_str())
            .bind(wave_no)
            .bind(reason.clone())
            .bind((next == RolloutState::Finished).then_some(at.now))
            .bind(r.wave)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if moved > 0 {
                if next == RolloutState::Paused {
                    sqlx::query("UPDATE tasks SET state = 'Paused' WHERE rollout_id = $1 AND state IN ('Scheduled', 'Running')")
                        .bind(r.id)
                        .execute(&mut *tx)
                        .await?;
                    let text = reason.clone().unwrap_or_default();
                    notify!(&mut *tx, at.now, &Notice {
                        event: "emergency-stop",
                        site: None,
                        rollout_id: Some(r.id),
                        task_id: None,
                        subject: &format!("Rollout paused: {}", r.name),
                        body: &text,
                    });
                }
                audit!(&mut *tx, at.now, "server", "rollout.advance", "rollout", r.id,
                    json!({"to": next, "wave": wave_no, "reason": reason}));
                bump!(&mut *tx, "tasks");
            }
            tx.commit().await?;
            moved > 0
        });
        ticked.changed |= moved;
        if moved && next == RolloutState::Running {
            // The next wave's tasks at once, not a tick later.
            if let Some(w) = waves.iter().find(|w| w.position == wave_no) {
                let r = self
                    .rollout_row(r.id)
                    .await?
                    .ok_or_else(|| Error::NotFound(format!("rollout {} does not exist", r.id)))?;
                self.fill_wave(&r, w, seen, at, ticked).await?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wave_is_searched_when_its_group_may_have_gained_a_device() {
        let seen = Seen {
            members: 4,
            max_device: 100,
        };
        let at = 1_000_000;
        let last = Some((at - 1000, seen));
        assert!(must_search(None, (at, seen), false), "never searched");
        assert!(!must_search(last, (at, seen), false), "nothing moved");
        assert!(must_search(last, (at, seen), true), "a drifting group");
        for moved in [
            Seen { members: 5, ..seen },
            Seen {
                max_device: 101,
                ..seen
            },
        ] {
            assert!(must_search(last, (at, moved), false), "{moved:?}");
        }
        assert!(
            must_search(Some((at - SEARCH_AGAIN_MS, seen)), (at, seen), false),
            "a minute since the last search"
        );
    }
}
