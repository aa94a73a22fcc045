-- The same tables as the PostgreSQL migration of the same version, so that both backends stay
-- at the same schema version. SQLite is a single-node store: voxroute never uses these tables
-- on it (the live-session registry and per-key limits stay in the process).

CREATE TABLE replicas (
    node_id      BLOB PRIMARY KEY NOT NULL CHECK (length(node_id) = 16),
    started_at   TEXT NOT NULL,
    heartbeat_at TEXT NOT NULL,
    expires_at   TEXT NOT NULL,
    address      TEXT
) STRICT;

CREATE TABLE session_leases (
    session_id  BLOB PRIMARY KEY NOT NULL CHECK (length(session_id) = 16),
    api_key_id  BLOB,
    node_id     BLOB NOT NULL,
    acquired_at TEXT NOT NULL,
    expires_at  TEXT NOT NULL
) STRICT;

CREATE INDEX session_leases_api_key_id_idx ON session_leases (api_key_id, expires_at);
CREATE INDEX session_leases_node_id_idx ON session_leases (node_id);
