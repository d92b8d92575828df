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
-- triggers.
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

CREATE FUNCTION task_counts_new_task() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO task_counts (task_id, since)
    VALUES (NEW.id, COALESCE((SELECT resumed_at FROM rollouts WHERE id = NEW.rollout_id), 0));
    RETURN NULL;
END $$;

CREATE TRIGGER task_counts_new_task AFTER INSERT ON tasks
    FOR EACH ROW EXECUTE FUNCTION task_counts_new_task();

-- A part as a statement added (+1) or removed (-1) it; an update is both.
CREATE TYPE task_part_change AS (task_id BIGINT, sign INT, state TEXT, updated_at BIGINT);

-- Once per statement, whatever its size: creating a task of 100 000 parts or
-- writing a group of reports adds each task's difference once.
CREATE FUNCTION task_counts_parts() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    changes task_part_change[];
    touched BIGINT[];
BEGIN
    IF TG_OP = 'INSERT' THEN
        changes := ARRAY(SELECT ROW(task_id, 1, state, updated_at)::task_part_change FROM new_parts);
    ELSIF TG_OP = 'DELETE' THEN
        changes := ARRAY(SELECT ROW(task_id, -1, state, updated_at)::task_part_change FROM old_parts);
    ELSE
        changes := ARRAY(
            SELECT ROW(task_id, 1, state, updated_at)::task_part_change FROM new_parts
            UNION ALL
            SELECT ROW(task_id, -1, state, updated_at)::task_part_change FROM old_parts);
    END IF;
    -- The tasks whose counts may change: a part added or removed, or one
    -- ended before or after. A claim, a step started or a progress report
    -- touches none, and locks no row.
    touched := ARRAY(
        SELECT DISTINCT c.task_id FROM unnest(changes) c
        WHERE TG_OP <> 'UPDATE' OR c.state IN ('success', 'failed')
        ORDER BY c.task_id);
    IF cardinality(touched) = 0 THEN
        RETURN NULL;
    END IF;
    -- Rows locked in one order, so two servers' report groups spanning the
    -- same tasks wait for each other instead of deadlocking. Locked before
    -- `since` is read: a resume, which sets it and counts again, has either
    -- committed or not begun.
    PERFORM 1 FROM task_counts WHERE task_id = ANY (touched) ORDER BY task_id FOR UPDATE;
    UPDATE task_counts k SET
        total = k.total + d.total,
        success = k.success + d.success,
        failed = k.failed + d.failed,
        failed_since = k.failed_since + d.failed_since,
        ended_since = k.ended_since + d.ended_since
    FROM (
        SELECT c.task_id,
               sum(c.sign) AS total,
               sum(c.sign * (c.state = 'success')::INT) AS success,
               sum(c.sign * (c.state = 'failed')::INT) AS failed,
               sum(c.sign * (c.state = 'failed' AND c.updated_at > s.since)::INT) AS failed_since,
               sum(c.sign * (c.state IN ('success', 'failed') AND c.updated_at > s.since)::INT) AS ended_since
        FROM unnest(changes) c JOIN task_counts s ON s.task_id = c.task_id
        WHERE c.task_id = ANY (touched)
        GROUP BY c.task_id
    ) d
    WHERE k.task_id = d.task_id;
    RETURN NULL;
END $$;

CREATE TRIGGER task_counts_new_parts AFTER INSERT ON task_devices
    REFERENCING NEW TABLE AS new_parts
    FOR EACH STATEMENT EXECUTE FUNCTION task_counts_parts();
CREATE TRIGGER task_counts_gone_parts AFTER DELETE ON task_devices
    REFERENCING OLD TABLE AS old_parts
    FOR EACH STATEMENT EXECUTE FUNCTION task_counts_parts();
CREATE TRIGGER task_counts_changed_parts AFTER UPDATE ON task_devices
    REFERENCING OLD TABLE AS old_parts NEW TABLE AS new_parts
    FOR EACH STATEMENT EXECUTE FUNCTION task_counts_parts();

CREATE FUNCTION task_parts_stay_in_their_task() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'a task''s part cannot move to another task';
END $$;

CREATE TRIGGER task_parts_stay_in_their_task BEFORE UPDATE OF task_id ON task_devices
    FOR EACH ROW WHEN (OLD.task_id <> NEW.task_id) EXECUTE FUNCTION task_parts_stay_in_their_task();
