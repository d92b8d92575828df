-- What each terminal's own configuration allows a plugin (JSON capabilities, as
-- its agent reports them): the ceiling of every grant there. Same in ../postgres.
ALTER TABLE devices ADD COLUMN allows TEXT;
