-- The TUF repository the server serves: every version of every role's metadata,
-- exactly as served. Same columns in ../postgres/0004_tuf.sql.
-- `name` is the file name (`3.targets.json`, `timestamp.json`); the timestamp
-- has one row, replaced by each new version, the others one row per version.
CREATE TABLE tuf_metadata (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    version BIGINT NOT NULL,
    body TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX tuf_metadata_role ON tuf_metadata (role, version);
