-- What a rollout's last check of its open sites for their end saw: its parts
-- ended so far and the `members`, `devices` and `tasks` counters, as text. A
-- site's part can end only when one of them moves (a part ends; a device leaves
-- the rollout's groups, moves or is deleted; a task restarts), so a tick that
-- sees the same skips the check, which reads every device the rollout covers.
-- See rollouts/report.rs. Same in ../sqlite and ../postgres.
ALTER TABLE rollouts ADD COLUMN sites_seen TEXT;
