//! Counts for the server's `/metrics`: each a `GROUP BY` over an indexed column,
//! read when Prometheus scrapes.

use crate::devices::online_cond;
use crate::sql::Sql;
use crate::{At, Result, Store};

/// The fleet in numbers, as of one scrape.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FleetCounts {
    /// (device type, online, devices).
    pub devices: Vec<(String, bool, i64)>,
    /// (state, tasks).
    pub tasks: Vec<(String, i64)>,
    /// (state, rollouts).
    pub rollouts: Vec<(String, i64)>,
    /// Devices' parts of tasks that ended: (device type, task kind, state
    /// `success`/`failed`, the step it ended on, count).
    pub outcomes: Vec<(String, String, String, String, i64)>,
    /// Messages to stores not yet delivered.
    pub notifications_pending: i64,
}

impl Store {
    pub async fn fleet_counts(&self, at: &At) -> Result<FleetCounts> {
        let mut online = Sql::new("SELECT device_type, count(*) FROM devices d WHERE ");
        online.append(&online_cond(true, at));
        online.push(" GROUP BY device_type");
        let (online, all, tasks, rollouts, outcomes, pending) = with_read!(self, pool => {
            let online: Vec<(String, i64)> = bind_all!(sqlx::query_as(&online.text), online.args)
                .fetch_all(pool)
                .await?;
            let all: Vec<(String, i64)> =
                sqlx::query_as("SELECT device_type, count(*) FROM devices GROUP BY device_type")
                    .fetch_all(pool)
                    .await?;
            let tasks: Vec<(String, i64)> =
                sqlx::query_as("SELECT state, count(*) FROM tasks GROUP BY state")
                    .fetch_all(pool)
                    .await?;
            let rollouts: Vec<(String, i64)> =
                sqlx::query_as("SELECT state, count(*) FROM rollouts GROUP BY state")
                    .fetch_all(pool)
                    .await?;
            let outcomes: Vec<(String, String, String, String, i64)> = sqlx::query_as(
                "SELECT t.device_type, t.kind, td.state, COALESCE(td.step, ''), count(*) \
                 FROM task_devices td JOIN tasks t ON t.id = td.task_id \
                 WHERE td.state IN ('success', 'failed') \
                 GROUP BY t.device_type, t.kind, td.state, COALESCE(td.step, '')",
            )
            .fetch_all(pool)
            .await?;
            let pending: i64 =
                sqlx::query_scalar("SELECT count(*) FROM notifications WHERE state = 'pending'")
                    .fetch_one(pool)
                    .await?;
            (online, all, tasks, rollouts, outcomes, pending)
        });
        let mut devices = Vec::new();
        for (device_type, total) in all {
            let up = online
                .iter()
                .find(|(t, _)| *t == device_type)
                .map_or(0, |(_, n)| *n);
            devices.push((device_type.clone(), true, up));
            devices.push((device_type, false, total - up));
        }
        Ok(FleetCounts {
            devices,
            tasks,
            rollouts,
            outcomes,
            notifications_pending: pending,
        })
    }
}
