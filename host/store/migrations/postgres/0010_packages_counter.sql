-- Grows when a package is deleted: servers cache packages by sha256 for
-- downloads, and drop them when it moves. Same in ../sqlite and ../postgres.
INSERT INTO generations (name, value) VALUES ('packages', 0);
