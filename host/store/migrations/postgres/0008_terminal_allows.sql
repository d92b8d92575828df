-- What each terminal's own configuration allows a plugin (JSON capabilities, as
-- its agent reports them): the ceiling of every grant there. Same in ../sqlite.
ALTER TABLE devices ADD COLUMN allows TEXT;
