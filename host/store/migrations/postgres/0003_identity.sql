-- Who may enroll, who a terminal is, who owns a plugin, what stays secret.
-- Same columns in ../sqlite/0003_identity.sql.

-- An enrollment token may be for one site only, expire, and serve a number of
-- enrollments; `uses` counts the enrollments it served.
ALTER TABLE enrollment_secrets ADD COLUMN site TEXT;
ALTER TABLE enrollment_secrets ADD COLUMN expires_at BIGINT;
ALTER TABLE enrollment_secrets ADD COLUMN max_uses BIGINT;
ALTER TABLE enrollment_secrets ADD COLUMN uses BIGINT NOT NULL DEFAULT 0;

-- 'active'; 'revoked' (its token refused, it cannot enroll again); or
-- 'awaiting-enrollment' (reset by an administrator: its token refused, the next
-- enrollment with its GUID and a valid enrollment token takes the device over).
ALTER TABLE devices ADD COLUMN access TEXT NOT NULL DEFAULT 'active';

-- A vendor token acts for this vendor only.
ALTER TABLE tokens ADD COLUMN vendor TEXT;

-- A secret variable's value is written by operators and read only by the devices
-- in its scope.
ALTER TABLE variables ADD COLUMN secret BIGINT NOT NULL DEFAULT 0;
-- A secret change's value is not kept in the change log.
ALTER TABLE variable_changes ADD COLUMN secret BIGINT NOT NULL DEFAULT 0;
