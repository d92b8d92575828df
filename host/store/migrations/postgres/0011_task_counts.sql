-- Each task's parts counted as they change, so reading a task, the task list,
-- a rollout and a rollout's judge each tick cost a row per task, not a row per
-- part. Triggers keep them: every insert, update and delete of a part, cascades
-- included, adds its difference, so no code path can forget one.
--
-- `since` is the task's rollout's `resumed_at` (0 for a task of its own):
-- `failed_since` and `ended_since` count the parts failed, and ended, whose
-- last change came after it, as a rollout's error threshold reads them. A
-- resume sets it and counts those two again (rollouts/create.rs).
-- A part never moves between tasks. Same in ../sqlite, there with row
-- triggers for inserts and deletes too.
CREATE TABLE task_counts (
    task_id BIGINT PRIMARY KEY REFERENCES tasks (id) ON DELETE CASCADE,
    since BIGINT NOT NULL,
    total BIGINT NOT NULL DEFAULT 0,
    success BIGINT NOT NULL DEFAULT 0,
    failed BIGINT NOT NULL DEFAULT 0,
    failed_since BIGINT NOT NULL DEFAULT 0,
    ended_since BIGINT NOT NULL DEFAULT 0
);

INSERT INTO task_counts (task_id, since, total, success, failed, failed_since, ended_since)
SELECT t.id, COALESCE(r.resumed_at, 0), count(td.id),
       count(*) FILTER (WHERE td.state = 'success'),
       count(*) FILTER (WHERE td.state = 'failed'),
       count(*) FILTER (WHERE td.state = 'failed' AND td.updated_at > COALESCE(r.resumed_at, 0)),
       count(*) FILTER (WHERE td.state IN ('success', 'failed') AND td.updated_at > COALESCE(r.resumed_at, 0))
FROM tasks t LEFT JOIN rollouts r ON r.id = t.rollout_id LEFT JOIN task_devices td ON td.task_id = t.id
GROUP BY t.id, r.resumed_at;

-- A wave's task created while its rollout is resumed waits for the resume and
-- takes its `resumed_at`: the resume does not see the new task to set it.
CREATE FUNCTION task_counts_new_task() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO task_counts (task_id, since)
    VALUES (NEW.id, COALESCE((SELECT resumed_at FROM rollouts WHERE id = NEW.rollout_id FOR SHARE), 0));
    RETURN NULL;
END $$;

CREATE TRIGGER task_counts_new_task AFTER INSERT ON tasks
    FOR EACH ROW EXECUTE FUNCTION task_counts_new_task();

-- A part a statement added (+1) or removed (-1).
CREATE TYPE task_part_change AS (task_id BIGINT, sign INT, state TEXT, updated_at BIGINT);

-- Parts added or removed: once per statement, whatever its size, so creating
-- a task of 100 000 parts, a wave picking up its group or a device's deletion
-- adds each task's difference once.
CREATE FUNCTION task_counts_parts() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    changes task_part_change[];
    touched BIGINT[];
BEGIN
    -- The parts added or removed, and their tasks in order.
    IF TG_OP = 'INSERT' THEN
        SELECT array_agg(ROW(p.task_id, 1, p.state, p.updated_at)::task_part_change),
               array_agg(DISTINCT p.task_id ORDER BY p.task_id)
        INTO changes, touched FROM new_parts p;
    ELSIF TG_OP = 'DELETE' THEN
        SELECT array_agg(ROW(p.task_id, -1, p.state, p.updated_at)::task_part_change),
               array_agg(DISTINCT p.task_id ORDER BY p.task_id)
        INTO changes, touched FROM old_parts p;
    END IF;
    IF changes IS NULL THEN
        RETURN NULL;
    END IF;
    -- Rows locked in one order, so two statements spanning the same tasks
    -- wait for each other instead of deadlocking.
    IF cardinality(touched) > 1 THEN
        PERFORM 1 FROM task_counts WHERE task_id = ANY (touched) ORDER BY task_id FOR UPDATE;
    END IF;
    -- Each row's difference is worked out against the row as updated, so a
    -- resume that set `since` and counted again meanwhile is seen.
    UPDATE task_counts k SET (total, success, failed, failed_since, ended_since) = (
        SELECT k.total + sum(c.sign),
               k.success + sum(c.sign * (c.state = 'success')::INT),
               k.failed + sum(c.sign * (c.state = 'failed')::INT),
               k.failed_since + sum(c.sign * (c.state = 'failed' AND c.updated_at > k.since)::INT),
               k.ended_since + sum(c.sign * (c.state IN ('success', 'failed') AND c.updated_at > k.since)::INT)
        FROM unnest(changes) c WHERE c.task_id = k.task_id)
    WHERE k.task_id = ANY (touched);
    RETURN NULL;
END $$;

CREATE TRIGGER task_counts_new_parts AFTER INSERT ON task_devices
    REFERENCING NEW TABLE AS new_parts
    FOR EACH STATEMENT EXECUTE FUNCTION task_counts_parts();
CREATE TRIGGER task_counts_gone_parts AFTER DELETE ON task_devices
    REFERENCING OLD TABLE AS old_parts
    FOR EACH STATEMENT EXECUTE FUNCTION task_counts_parts();
-- Only a part ended before or after can change a count: a claim, a step
-- started or a progress report runs no function. Each row's difference is
-- worked out against the counts row as updated, so a resume that set `since`
-- and counted again meanwhile is seen.
CREATE FUNCTION task_counts_part_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE task_counts SET
        success = success + (NEW.state = 'success')::INT - (OLD.state = 'success')::INT,
        failed = failed + (NEW.state = 'failed')::INT - (OLD.state = 'failed')::INT,
        failed_since = failed_since + (NEW.state = 'failed' AND NEW.updated_at > since)::INT
            - (OLD.state = 'failed' AND OLD.updated_at > since)::INT,
        ended_since = ended_since + (NEW.state IN ('success', 'failed') AND NEW.updated_at > since)::INT
            - (OLD.state IN ('success', 'failed') AND OLD.updated_at > since)::INT
    WHERE task_id = NEW.task_id;
    RETURN NULL;
END $$;

CREATE TRIGGER task_counts_changed_part AFTER UPDATE OF state, updated_at ON task_devices
    FOR EACH ROW
    WHEN ((OLD.state IN ('success', 'failed') OR NEW.state IN ('success', 'failed'))
        AND (OLD.state <> NEW.state OR OLD.updated_at <> NEW.updated_at))
    EXECUTE FUNCTION task_counts_part_changed();

CREATE FUNCTION task_parts_stay_in_their_task() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'a task''s part cannot move to another task';
END $$;

CREATE TRIGGER task_parts_stay_in_their_task BEFORE UPDATE OF task_id ON task_devices
    FOR EACH ROW WHEN (OLD.task_id <> NEW.task_id) EXECUTE FUNCTION task_parts_stay_in_their_task();
