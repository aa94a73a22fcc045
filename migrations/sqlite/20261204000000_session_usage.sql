-- Metering: each session's audio per provider (a session that failed over used several).
-- The same table and column names as the PostgreSQL migration of the same version; see it for
-- what each column holds. The store deletes these rows itself before their session's row
-- (SQLite enforces the foreign key only where `PRAGMA foreign_keys` is on).

CREATE TABLE session_usage (
    session_id   BLOB    NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    provider     TEXT    NOT NULL,
    audio_in_ms  INTEGER NOT NULL DEFAULT 0,
    audio_out_ms INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (session_id, provider)
) STRICT;
