-- When a started wave's group was last searched for devices without a part,
-- and what that search saw: the `members` counter (grown by every change a
-- group's membership depends on, other than what devices report and time) and
-- the newest device id. See rollouts/tick.rs. Same in ../sqlite and ../postgres.
ALTER TABLE rollout_waves ADD COLUMN searched_at BIGINT;
ALTER TABLE rollout_waves ADD COLUMN searched_members BIGINT;
ALTER TABLE rollout_waves ADD COLUMN searched_max_device BIGINT;
INSERT INTO generations (name, value) VALUES ('members', 0);
