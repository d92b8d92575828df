-- Uses of enrollment tokens without a use limit, a row each. Counted in the
-- token's own row, every enrollment with the token waited for the one before
-- it to commit: a fleet enrolling at once with one token enrolled one terminal
-- at a time. A token's uses are its `uses` (every use of a token with a limit,
-- whose check and spending stay one statement on its row, and the uses before
-- this table) and its rows here. No foreign key: on PostgreSQL its check
-- would lock the token's row for every use again; deleting a token deletes
-- its rows. Same in ../sqlite.
CREATE TABLE enrollment_uses (
    secret_id BIGINT NOT NULL
);
CREATE INDEX enrollment_uses_secret ON enrollment_uses (secret_id);
