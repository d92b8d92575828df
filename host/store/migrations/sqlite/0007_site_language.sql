-- The language a store reads its announcements and reports in. Same in
-- ../postgres.
ALTER TABLE site_settings ADD COLUMN language TEXT NOT NULL DEFAULT 'en';
