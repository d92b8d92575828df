-- A package that history (a task, a rollout) refers to is archived instead of
-- deleted: hidden from lists, kept for the record. Same in ../sqlite.
ALTER TABLE packages ADD COLUMN archived_at BIGINT;
