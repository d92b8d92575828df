-- Where a rollout's part ended since its last site check: a row for each part
-- of a rollout's task that succeeded or failed, written by a trigger in the
-- transaction that ended it, so no code path can forget one. The check reads
-- these rows, looks at their open sites only, then deletes the rows it read:
-- a check costs the sites that moved, not every open site of the rollout each
-- second. What else can end a site (a device deleted, moved or leaving the
-- rollout's groups; a task restarted or a wave started) moves the `members`,
-- `devices` or `tasks` counter, and a moved counter checks every open site.
-- `sites_seen` holds those counters only from now on; cleared so the next tick
-- checks every open site once. No foreign key: on PostgreSQL its check would
-- lock the rollout's row for every part that ends; deleting a rollout deletes
-- its rows. See rollouts/report.rs. Same in ../postgres.
CREATE TABLE rollout_site_ends (
    id INTEGER PRIMARY KEY,
    rollout_id INTEGER NOT NULL,
    site TEXT NOT NULL
);
CREATE INDEX rollout_site_ends_rollout ON rollout_site_ends (rollout_id);

CREATE TRIGGER rollout_site_ends_part_ended AFTER UPDATE OF state ON task_devices
WHEN NEW.state IN ('success', 'failed') AND OLD.state NOT IN ('success', 'failed')
BEGIN
    INSERT INTO rollout_site_ends (rollout_id, site)
    SELECT t.rollout_id, d.site FROM tasks t, devices d
    WHERE t.id = NEW.task_id AND t.rollout_id IS NOT NULL AND d.id = NEW.device_id;
END;

UPDATE rollouts SET sites_seen = NULL;
