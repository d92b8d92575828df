-- Each task's parts counted as they change, so reading a task, the task list,
-- a rollout and a rollout's judge each tick cost a row per task, not a row per
-- part. Triggers keep them: every insert, update and delete of a part, cascades
-- included, adds its difference, so no code path can forget one.
--
-- `since` is the task's rollout's `resumed_at` (0 for a task of its own):
-- `failed_since` and `ended_since` count the parts failed, and ended, whose
-- last change came after it, as a rollout's error threshold reads them. A
-- resume sets it and counts those two again (rollouts/create.rs).
-- A part never moves between tasks. Same in ../postgres, there with
-- statement triggers for inserts and deletes.
CREATE TABLE task_counts (
    task_id INTEGER PRIMARY KEY REFERENCES tasks (id) ON DELETE CASCADE,
    since INTEGER NOT NULL,
    total INTEGER NOT NULL DEFAULT 0,
    success INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0,
    failed_since INTEGER NOT NULL DEFAULT 0,
    ended_since INTEGER NOT NULL DEFAULT 0
);

INSERT INTO task_counts (task_id, since, total, success, failed, failed_since, ended_since)
SELECT t.id, COALESCE(r.resumed_at, 0), count(td.id),
       count(*) FILTER (WHERE td.state = 'success'),
       count(*) FILTER (WHERE td.state = 'failed'),
       count(*) FILTER (WHERE td.state = 'failed' AND td.updated_at > COALESCE(r.resumed_at, 0)),
       count(*) FILTER (WHERE td.state IN ('success', 'failed') AND td.updated_at > COALESCE(r.resumed_at, 0))
FROM tasks t LEFT JOIN rollouts r ON r.id = t.rollout_id LEFT JOIN task_devices td ON td.task_id = t.id
GROUP BY t.id, r.resumed_at;

CREATE TRIGGER task_counts_new_task AFTER INSERT ON tasks BEGIN
    INSERT INTO task_counts (task_id, since)
    VALUES (NEW.id, COALESCE((SELECT resumed_at FROM rollouts WHERE id = NEW.rollout_id), 0));
END;

CREATE TRIGGER task_counts_new_part AFTER INSERT ON task_devices BEGIN
    UPDATE task_counts SET
        total = total + 1,
        success = success + (NEW.state = 'success'),
        failed = failed + (NEW.state = 'failed'),
        failed_since = failed_since + (NEW.state = 'failed' AND NEW.updated_at > since),
        ended_since = ended_since + (NEW.state IN ('success', 'failed') AND NEW.updated_at > since)
    WHERE task_id = NEW.task_id;
END;

CREATE TRIGGER task_counts_gone_part AFTER DELETE ON task_devices BEGIN
    UPDATE task_counts SET
        total = total - 1,
        success = success - (OLD.state = 'success'),
        failed = failed - (OLD.state = 'failed'),
        failed_since = failed_since - (OLD.state = 'failed' AND OLD.updated_at > since),
        ended_since = ended_since - (OLD.state IN ('success', 'failed') AND OLD.updated_at > since)
    WHERE task_id = OLD.task_id;
END;

-- Only a part ended before or after can change a count: a claim, a step
-- started or a progress report runs no trigger.
CREATE TRIGGER task_counts_changed_part AFTER UPDATE OF state, updated_at ON task_devices
WHEN (OLD.state IN ('success', 'failed') OR NEW.state IN ('success', 'failed'))
    AND (OLD.state <> NEW.state OR OLD.updated_at <> NEW.updated_at)
BEGIN
    UPDATE task_counts SET
        success = success + (NEW.state = 'success') - (OLD.state = 'success'),
        failed = failed + (NEW.state = 'failed') - (OLD.state = 'failed'),
        failed_since = failed_since + (NEW.state = 'failed' AND NEW.updated_at > since)
            - (OLD.state = 'failed' AND OLD.updated_at > since),
        ended_since = ended_since + (NEW.state IN ('success', 'failed') AND NEW.updated_at > since)
            - (OLD.state IN ('success', 'failed') AND OLD.updated_at > since)
    WHERE task_id = NEW.task_id;
END;

CREATE TRIGGER task_parts_stay_in_their_task BEFORE UPDATE OF task_id ON task_devices
WHEN OLD.task_id <> NEW.task_id
BEGIN
    SELECT RAISE(ABORT, 'a task''s part cannot move to another task');
END;
