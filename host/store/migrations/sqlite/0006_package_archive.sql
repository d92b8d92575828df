-- A package that history (a task, a rollout) refers to is archived instead of
-- deleted: hidden from lists, kept for the record. Same in ../postgres.
ALTER TABLE packages ADD COLUMN archived_at INTEGER;
