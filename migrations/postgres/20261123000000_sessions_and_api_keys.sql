-- voxroute's store on PostgreSQL: API keys (only a hash and a short prefix of each key) and
-- session records (metadata only: never audio, transcripts or provider payloads).
-- The SQLite migration of the same version creates the same tables with the same column names.

CREATE TABLE api_keys (
    -- UUID v7, shown by `voxroute keys list` and taken by `voxroute keys revoke`.
    id           uuid        PRIMARY KEY,
    -- The operator's label for the key.
    name         text        NOT NULL,
    -- The first 12 characters of the key (`vxr_` + 8): finds candidates, safe to display.
    prefix       text        NOT NULL,
    -- SHA-256 of the whole key, lowercase hex. The key itself is never stored.
    hash         text        NOT NULL UNIQUE,
    created_at   timestamptz NOT NULL,
    -- Set once by `voxroute keys revoke`; a revoked key never authenticates again.
    revoked_at   timestamptz,
    -- Concurrent live sessions allowed for the key; NULL means no per-key limit.
    max_sessions integer     CHECK (max_sessions > 0)
);

-- `authenticate` looks keys up by prefix, then compares hashes in constant time.
CREATE INDEX api_keys_prefix_idx ON api_keys (prefix);

CREATE TABLE sessions (
    -- UUID v7 (time-ordered), voxroute's session id.
    id                uuid        PRIMARY KEY,
    -- The caller's key; NULL for `--dev` keyless sessions. Not a foreign key: records must
    -- stay writable (and replayable from a spool) whatever happens to the keys table.
    api_key_id        uuid,
    endpoint          text        NOT NULL,
    -- `telephony`, `websocket` or `webrtc`.
    transport         text        NOT NULL,
    route             text,
    -- The provider last used.
    provider          text        NOT NULL,
    -- Every provider tried, in order.
    providers_tried   text[]      NOT NULL DEFAULT '{}',
    -- The caller's address as text; anonymised (IPv4 /24, IPv6 /48) by retention.
    client_ip         text,
    started_at        timestamptz NOT NULL,
    ended_at          timestamptz,
    duration_ms       bigint,
    -- One of SessionCloseReason's stable strings, e.g. `CLIENT_HANGUP`.
    close_reason      text,
    audio_in_ms       bigint      NOT NULL DEFAULT 0,
    audio_out_ms      bigint      NOT NULL DEFAULT 0,
    failovers         integer     NOT NULL DEFAULT 0,
    first_response_ms bigint
);

-- Listing newest first, and retention's `started_at < cutoff` scans.
CREATE INDEX sessions_started_at_idx ON sessions (started_at);
-- Per-key questions: live sessions of a key (max_sessions), usage per key and day.
CREATE INDEX sessions_api_key_id_started_at_idx ON sessions (api_key_id, started_at);
