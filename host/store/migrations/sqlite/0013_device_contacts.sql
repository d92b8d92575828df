-- Contact times in a narrow table of their own. A fleet polling every 30 s
-- records one per device per poll; kept in `devices`, each rewrote the
-- device's whole row (its inventory with it) and, on PostgreSQL, added an
-- entry to every one of the device list's indexes. Here a write is a small
-- row and one index entry. Every device has exactly one row, 0 until its
-- first poll: the trigger adds it, however the device was created. Same in
-- ../postgres.
CREATE TABLE device_contacts (
    device_id INTEGER PRIMARY KEY REFERENCES devices (id) ON DELETE CASCADE,
    last_contact INTEGER NOT NULL DEFAULT 0
);
INSERT INTO device_contacts (device_id, last_contact) SELECT id, last_contact FROM devices;
-- The device list sorts and filters by contact through this index, as by
-- every other column.
CREATE INDEX device_contacts_last_contact ON device_contacts (last_contact, device_id);

DROP INDEX devices_last_contact;
ALTER TABLE devices DROP COLUMN last_contact;

CREATE TRIGGER device_contacts_new_device AFTER INSERT ON devices BEGIN
    INSERT INTO device_contacts (device_id) VALUES (NEW.id);
END;
