//! What server processes may keep in memory, and how they learn it changed.
//!
//! A poll must stay cheap at fleet scale, so servers cache device tokens, the set
//! of devices that have actions, the newest variable change, and the packages
//! devices download. Changes that invalidate those caches grow a counter in the
//! `generations` table in the same transaction; each process re-reads the
//! counters every second.

use crate::{Result, Store};

/// The counters, and the newest variable change id.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Generations {
    /// Grows when a device token or a device type's settings change.
    pub devices: i64,
    /// Grows when devices may have gained actions (a task created, resumed or
    /// restarted).
    pub tasks: i64,
    /// The newest variable change id.
    pub variables: i64,
    /// Grows when a package is deleted.
    pub packages: i64,
}

impl Store {
    pub async fn generations(&self) -> Result<Generations> {
        let (devices, tasks, variables, packages): (i64, i64, i64, i64) = with_read!(self, pool => {
            sqlx::query_as(
                "SELECT (SELECT value FROM generations WHERE name = 'devices'), \
                 (SELECT value FROM generations WHERE name = 'tasks'), \
                 (SELECT COALESCE(max(id), 0) FROM variable_changes), \
                 (SELECT value FROM generations WHERE name = 'packages')",
            )
            .fetch_one(pool)
            .await?
        });
        Ok(Generations {
            devices,
            tasks,
            variables,
            packages,
        })
    }

    /// Devices that may have actions: those with an unfinished part in a task that
    /// is Scheduled or Running.
    pub async fn devices_with_actions(&self) -> Result<Vec<i64>> {
        Ok(with_read!(self, pool => {
            sqlx::query_scalar(
                "SELECT DISTINCT td.device_id FROM task_devices td JOIN tasks t ON t.id = td.task_id \
                 WHERE td.state IN ('pending', 'running', 'waiting') AND t.state IN ('Scheduled', 'Running')",
            )
            .fetch_all(pool)
            .await?
        }))
    }
}
