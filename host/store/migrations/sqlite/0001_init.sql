-- posup server schema, SQLite flavour. The PostgreSQL flavour in ../postgres has the
-- same tables, columns and indexes; times are Unix milliseconds in both.

CREATE TABLE tokens (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    hash TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL
);

CREATE TABLE enrollment_secrets (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    hash TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL
);

CREATE TABLE plugins (
    sha256 TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    vendor TEXT NOT NULL,
    version TEXT NOT NULL,
    description TEXT NOT NULL,
    device_types TEXT NOT NULL,
    capabilities TEXT NOT NULL,
    interface TEXT NOT NULL,
    size INTEGER NOT NULL,
    uploaded_at INTEGER NOT NULL,
    UNIQUE (name, version)
);

CREATE TABLE device_types (
    name TEXT PRIMARY KEY,
    description TEXT NOT NULL,
    revision INTEGER NOT NULL,
    plugin_sha256 TEXT REFERENCES plugins (sha256),
    allowed TEXT NOT NULL,
    paths TEXT NOT NULL,
    poll_interval_secs INTEGER,
    updated_at INTEGER NOT NULL
);

CREATE TABLE devices (
    id INTEGER PRIMARY KEY,
    guid TEXT NOT NULL UNIQUE,
    site TEXT NOT NULL,
    address TEXT NOT NULL,
    name TEXT NOT NULL,
    number INTEGER NOT NULL,
    device_type TEXT NOT NULL REFERENCES device_types (name),
    agent_version TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    version TEXT NOT NULL DEFAULT '',
    loaded_package TEXT NOT NULL DEFAULT '',
    state TEXT NOT NULL DEFAULT '',
    pending_sync INTEGER NOT NULL DEFAULT 0,
    inventory TEXT,
    inventory_error TEXT,
    inventory_hash TEXT,
    agent_message TEXT,
    plugin_sha256 TEXT,
    -- 0 until the first poll.
    last_contact INTEGER NOT NULL DEFAULT 0,
    enrolled_at INTEGER NOT NULL,
    v_status TEXT NOT NULL DEFAULT 'Unknown',
    v_error TEXT,
    v_computed TEXT NOT NULL DEFAULT '',
    v_reference TEXT,
    v_differing INTEGER NOT NULL DEFAULT 0,
    v_differences TEXT,
    v_computed_at INTEGER
);
-- One index per sortable column, with the id as tie-breaker, so every sort order of
-- the device list pages through an index at 100 000 devices.
CREATE INDEX devices_site ON devices (site, id);
CREATE INDEX devices_address ON devices (address, id);
CREATE INDEX devices_name ON devices (name, id);
CREATE INDEX devices_number ON devices (number, id);
CREATE INDEX devices_device_type ON devices (device_type, id);
CREATE INDEX devices_agent_version ON devices (agent_version, id);
CREATE INDEX devices_version ON devices (version, id);
CREATE INDEX devices_loaded_package ON devices (loaded_package, id);
CREATE INDEX devices_state ON devices (state, id);
CREATE INDEX devices_pending_sync ON devices (pending_sync, id);
CREATE INDEX devices_last_contact ON devices (last_contact, id);
CREATE INDEX devices_enrolled_at ON devices (enrolled_at, id);

CREATE TABLE device_tags (
    device_id INTEGER NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    tag TEXT NOT NULL,
    PRIMARY KEY (device_id, tag)
);
CREATE INDEX device_tags_tag ON device_tags (tag, device_id);

CREATE TABLE device_modules (
    device_id INTEGER NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    PRIMARY KEY (device_id, name)
);
CREATE INDEX device_modules_name ON device_modules (name, device_id);

CREATE TABLE packages (
    id INTEGER PRIMARY KEY,
    device_type TEXT NOT NULL REFERENCES device_types (name),
    file_name TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    version TEXT NOT NULL,
    kind TEXT NOT NULL,
    notes TEXT NOT NULL,
    changelog TEXT NOT NULL,
    rollback INTEGER NOT NULL,
    current INTEGER NOT NULL DEFAULT 0,
    plugin_sha256 TEXT NOT NULL REFERENCES plugins (sha256),
    uploaded_at INTEGER NOT NULL,
    UNIQUE (device_type, sha256)
);
CREATE INDEX packages_sha256 ON packages (sha256);
-- At most one Current package per device type.
CREATE UNIQUE INDEX packages_current ON packages (device_type) WHERE current = 1;

CREATE TABLE groups (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    description TEXT NOT NULL,
    kind TEXT NOT NULL,
    filter TEXT,
    created_at INTEGER NOT NULL
);
-- The built-in groups have fixed ids; operator groups start after them.
INSERT INTO groups (id, name, description, kind, filter, created_at) VALUES
    (1, 'All', 'Every device', 'all', NULL, 0),
    (2, 'Even', 'Devices with an even number in their store', 'even', NULL, 0),
    (3, 'Odd', 'Devices with an odd number in their store', 'odd', NULL, 0);

CREATE TABLE group_members (
    group_id INTEGER NOT NULL REFERENCES groups (id) ON DELETE CASCADE,
    device_id INTEGER NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    PRIMARY KEY (group_id, device_id)
);
CREATE INDEX group_members_device ON group_members (device_id);

CREATE TABLE tasks (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    package_id INTEGER NOT NULL REFERENCES packages (id),
    plugin_sha256 TEXT NOT NULL REFERENCES plugins (sha256),
    device_type TEXT NOT NULL,
    group_id INTEGER REFERENCES groups (id) ON DELETE SET NULL,
    group_name TEXT NOT NULL,
    start_at INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    finished_at INTEGER,
    attempt INTEGER NOT NULL
);
CREATE INDEX tasks_state ON tasks (state, start_at);
CREATE INDEX tasks_package ON tasks (package_id);

CREATE TABLE task_devices (
    id INTEGER PRIMARY KEY,
    task_id INTEGER NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    device_id INTEGER NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    state TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    step TEXT,
    message TEXT,
    percent INTEGER,
    updated_at INTEGER NOT NULL,
    UNIQUE (task_id, device_id)
);
CREATE INDEX task_devices_task_state ON task_devices (task_id, state);
-- The poll looks up a device's unfinished actions; most rows are finished.
CREATE INDEX task_devices_active ON task_devices (device_id)
    WHERE state IN ('pending', 'running', 'waiting');

CREATE TABLE task_events (
    id INTEGER PRIMARY KEY,
    task_device_id INTEGER NOT NULL REFERENCES task_devices (id) ON DELETE CASCADE,
    device_id INTEGER NOT NULL,
    key TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    step TEXT NOT NULL,
    state TEXT NOT NULL,
    message TEXT,
    percent INTEGER,
    at INTEGER NOT NULL,
    received_at INTEGER NOT NULL,
    UNIQUE (device_id, key)
);
CREATE INDEX task_events_action ON task_events (task_device_id, id);

CREATE TABLE variables (
    name TEXT NOT NULL,
    scope_kind TEXT NOT NULL,
    scope_ref TEXT NOT NULL,
    value TEXT NOT NULL,
    change_id INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (name, scope_kind, scope_ref)
);

CREATE TABLE variable_changes (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    scope_kind TEXT NOT NULL,
    scope_ref TEXT NOT NULL,
    value TEXT,
    at INTEGER NOT NULL
);

CREATE TABLE version_references (
    device_type TEXT PRIMARY KEY REFERENCES device_types (name) ON DELETE CASCADE,
    version TEXT NOT NULL,
    modules TEXT NOT NULL,
    source TEXT NOT NULL,
    updated_at INTEGER NOT NULL
);

CREATE TABLE audit (
    id INTEGER PRIMARY KEY,
    at INTEGER NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    object TEXT NOT NULL,
    object_id TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX audit_object ON audit (object, id);

-- Counters that grow with every change a server process may have cached: device
-- tokens and device-type settings ('devices'), which devices have actions
-- ('tasks'). Every process re-reads them each second and drops what changed.
CREATE TABLE generations (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT INTO generations (name, value) VALUES ('devices', 0), ('tasks', 0);
