-- voxroute's store on SQLite: the same tables and column names as the PostgreSQL migration of
-- the same version, with SQLite's natural types (STRICT tables, so a wrong type is an error):
--   UUIDs       BLOB, the 16 bytes (how sqlx encodes `Uuid`; sorts by time for UUID v7)
--   timestamps  TEXT, RFC 3339 in UTC (`2026-11-23T19:29:47.123456+00:00`), which sorts and
--               compares correctly as text because every value is written in UTC
--   lists       TEXT holding a JSON array of strings

CREATE TABLE api_keys (
    id           BLOB    PRIMARY KEY NOT NULL CHECK (length(id) = 16),
    name         TEXT    NOT NULL,
    -- The first 12 characters of the key (`vxr_` + 8): finds candidates, safe to display.
    prefix       TEXT    NOT NULL,
    -- SHA-256 of the whole key, lowercase hex. The key itself is never stored.
    hash         TEXT    NOT NULL UNIQUE,
    created_at   TEXT    NOT NULL,
    revoked_at   TEXT,
    -- Concurrent live sessions allowed for the key; NULL means no per-key limit.
    max_sessions INTEGER CHECK (max_sessions > 0)
) STRICT;

CREATE INDEX api_keys_prefix_idx ON api_keys (prefix);

CREATE TABLE sessions (
    id                BLOB    PRIMARY KEY NOT NULL CHECK (length(id) = 16),
    api_key_id        BLOB,
    endpoint          TEXT    NOT NULL,
    transport         TEXT    NOT NULL,
    route             TEXT,
    provider          TEXT    NOT NULL,
    providers_tried   TEXT    NOT NULL DEFAULT '[]' CHECK (json_valid(providers_tried)),
    client_ip         TEXT,
    started_at        TEXT    NOT NULL,
    ended_at          TEXT,
    duration_ms       INTEGER,
    close_reason      TEXT,
    audio_in_ms       INTEGER NOT NULL DEFAULT 0,
    audio_out_ms      INTEGER NOT NULL DEFAULT 0,
    failovers         INTEGER NOT NULL DEFAULT 0,
    first_response_ms INTEGER
) STRICT;

CREATE INDEX sessions_started_at_idx ON sessions (started_at);
CREATE INDEX sessions_api_key_id_started_at_idx ON sessions (api_key_id, started_at);
