-- Contact times in a narrow table of their own. A fleet polling every 30 s
-- records one per device per poll; kept in `devices`, each was a new version
-- of the device's whole row and an entry in every one of the table's
-- indexes, the device list's twelve among them (not a heap-only update: the
-- contact time is indexed). Here a write is a small row and two index
-- entries. Every device has exactly one row, 0 until its first poll: the
-- trigger adds it, however the device was created. Same in ../sqlite.
CREATE TABLE device_contacts (
    device_id BIGINT PRIMARY KEY REFERENCES devices (id) ON DELETE CASCADE,
    last_contact BIGINT NOT NULL DEFAULT 0
);
INSERT INTO device_contacts (device_id, last_contact) SELECT id, last_contact FROM devices;
-- The device list sorts and filters by contact through this index, as by
-- every other column.
CREATE INDEX device_contacts_last_contact ON device_contacts (last_contact, device_id);

DROP INDEX devices_last_contact;
ALTER TABLE devices DROP COLUMN last_contact;

-- Once per statement, whatever its size: a bulk enrollment of 100 000
-- devices adds their contacts in one insert.
CREATE FUNCTION device_contacts_new_devices() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO device_contacts (device_id) SELECT id FROM new_devices;
    RETURN NULL;
END $$;

CREATE TRIGGER device_contacts_new_devices AFTER INSERT ON devices
    REFERENCING NEW TABLE AS new_devices
    FOR EACH STATEMENT EXECUTE FUNCTION device_contacts_new_devices();
