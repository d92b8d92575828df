-- Rollout policy: sites, maintenance windows, device-type ordering, waves, notice,
-- reports and notification channels. Same tables in ../postgres/0002_rollouts.sql.

-- How many devices of a type may be unavailable per site at once (NULL: no limit),
-- and what updating the type touches, for announcements: 'register-and-software',
-- 'register' or 'software'.
ALTER TABLE device_types ADD COLUMN site_limit INTEGER;
ALTER TABLE device_types ADD COLUMN impact TEXT NOT NULL DEFAULT 'software';

-- A site's own settings. The row is also the site's lock: a claim of one of its
-- devices updates `claims` first, so claims on one site queue across replicas.
CREATE TABLE site_settings (
    site TEXT PRIMARY KEY,
    time_zone TEXT NOT NULL DEFAULT 'UTC',
    always_open INTEGER NOT NULL DEFAULT 0,
    reboot_time TEXT,
    claims INTEGER NOT NULL DEFAULT 0,
    updated_at INTEGER NOT NULL
);

-- Maintenance windows: a cron-like schedule of openings, each lasting
-- `duration_minutes`, in `time_zone`; scope 'site' (site name) or 'group' (group id).
CREATE TABLE windows (
    id INTEGER PRIMARY KEY,
    scope_kind TEXT NOT NULL,
    scope_ref TEXT NOT NULL,
    schedule TEXT NOT NULL,
    duration_minutes INTEGER NOT NULL,
    time_zone TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX windows_scope ON windows (scope_kind, scope_ref);

-- "Devices of `device_type` on a site wait until every device of `after_type` on
-- that site is updated and reports ready." When that holds, the site-scoped
-- variable `variable` (if set) carries the ready version to the waiting plugin.
CREATE TABLE order_rules (
    id INTEGER PRIMARY KEY,
    device_type TEXT NOT NULL REFERENCES device_types (name) ON DELETE CASCADE,
    after_type TEXT NOT NULL REFERENCES device_types (name) ON DELETE CASCADE,
    variable TEXT,
    created_at INTEGER NOT NULL,
    UNIQUE (device_type, after_type)
);

CREATE TABLE rollouts (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    -- The wave under way (0-based); every wave before it has started.
    wave INTEGER NOT NULL,
    pause_reason TEXT,
    max_failed INTEGER,
    max_failed_percent INTEGER,
    conditions TEXT NOT NULL,
    start_at INTEGER NOT NULL,
    announced_at INTEGER NOT NULL,
    notice_override TEXT,
    created_at INTEGER NOT NULL,
    finished_at INTEGER,
    -- Failures before the last resume do not count towards the error threshold.
    resumed_at INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX rollouts_state ON rollouts (state);

CREATE TABLE rollout_packages (
    rollout_id INTEGER NOT NULL REFERENCES rollouts (id) ON DELETE CASCADE,
    package_id INTEGER NOT NULL REFERENCES packages (id),
    PRIMARY KEY (rollout_id, package_id)
);
CREATE INDEX rollout_packages_package ON rollout_packages (package_id);

CREATE TABLE rollout_waves (
    rollout_id INTEGER NOT NULL REFERENCES rollouts (id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    group_id INTEGER REFERENCES groups (id) ON DELETE SET NULL,
    group_name TEXT NOT NULL,
    success_percent INTEGER NOT NULL,
    auto_advance INTEGER NOT NULL,
    started_at INTEGER,
    PRIMARY KEY (rollout_id, position)
);

-- Each site a rollout was announced to, the announcement it got, and the report
-- sent when its part ended.
CREATE TABLE rollout_sites (
    rollout_id INTEGER NOT NULL REFERENCES rollouts (id) ON DELETE CASCADE,
    site TEXT NOT NULL,
    announcement TEXT NOT NULL,
    report TEXT,
    reported_at INTEGER,
    PRIMARY KEY (rollout_id, site)
);

ALTER TABLE tasks ADD COLUMN rollout_id INTEGER REFERENCES rollouts (id) ON DELETE CASCADE;
ALTER TABLE tasks ADD COLUMN wave INTEGER;
ALTER TABLE tasks ADD COLUMN notice_override TEXT;
-- One task per wave and package, however many replicas start the wave at once.
CREATE UNIQUE INDEX tasks_rollout ON tasks (rollout_id, wave, package_id);

-- Why a device's unstarted part waits ('window', 'site-limit', 'order', 'not-now')
-- and what it waits for; a part that reported not-now is not started again before
-- `retry_at`.
ALTER TABLE task_devices ADD COLUMN wait_kind TEXT;
ALTER TABLE task_devices ADD COLUMN wait_reason TEXT;
ALTER TABLE task_devices ADD COLUMN retry_at INTEGER;

-- Notification channels: a generic JSON webhook or a Telegram-Bot-API-compatible
-- sender, for one site or (site NULL) every site.
CREATE TABLE channels (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    site TEXT,
    url TEXT NOT NULL,
    chat_id TEXT,
    secret TEXT,
    enabled INTEGER NOT NULL DEFAULT 1,
    created_at INTEGER NOT NULL
);

-- One message to one channel, and its delivery state: 'pending', 'sent' or 'failed'
-- (gave up). `lease_until` keeps two replicas from sending the same message.
CREATE TABLE notifications (
    id INTEGER PRIMARY KEY,
    channel_id INTEGER NOT NULL REFERENCES channels (id) ON DELETE CASCADE,
    event TEXT NOT NULL,
    site TEXT,
    rollout_id INTEGER,
    task_id INTEGER,
    subject TEXT NOT NULL,
    body TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    lease_until INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    created_at INTEGER NOT NULL,
    sent_at INTEGER
);
CREATE INDEX notifications_due ON notifications (state, next_attempt_at);
CREATE INDEX notifications_channel ON notifications (channel_id, id);

-- The delivery log: every attempt with its outcome.
CREATE TABLE notification_attempts (
    id INTEGER PRIMARY KEY,
    notification_id INTEGER NOT NULL REFERENCES notifications (id) ON DELETE CASCADE,
    at INTEGER NOT NULL,
    ok INTEGER NOT NULL,
    status INTEGER,
    detail TEXT NOT NULL
);
CREATE INDEX notification_attempts_notification ON notification_attempts (notification_id, id);
