-- Several replicas on one PostgreSQL: who is running, and which replica holds which live
-- session. Only the PostgreSQL store uses these tables; the SQLite migration of the same
-- version creates the same tables (unused: SQLite is a single-node store) so that both
-- backends stay at the same schema version.
--
-- Every time here is the database server's `now()`, never a replica's clock: a replica whose
-- clock is skewed still renews and expires on the same clock as every other.

CREATE TABLE replicas (
    -- UUID v7 drawn by the replica at start; a restart is a new node.
    node_id      uuid        PRIMARY KEY,
    started_at   timestamptz NOT NULL,
    -- Set at every heartbeat (every third of the TTL).
    heartbeat_at timestamptz NOT NULL,
    -- heartbeat_at + the replica's TTL: past this, the replica counts as dead.
    expires_at   timestamptz NOT NULL,
    -- The address the replica listens on (`--listen`), for operators.
    address      text
);

CREATE TABLE session_leases (
    -- One live session; deleted when it ends.
    session_id  uuid        PRIMARY KEY,
    -- The caller's key (NULL for keyless `--dev` sessions); counted against `max_sessions`.
    api_key_id  uuid,
    -- The replica holding the session (`replicas.node_id`; not a foreign key, so that a
    -- replica's row can be cleaned up independently).
    node_id     uuid        NOT NULL,
    acquired_at timestamptz NOT NULL,
    -- Renewed with the holder's heartbeat; a lease past it is ignored (its replica died),
    -- which frees the key's slot.
    expires_at  timestamptz NOT NULL
);

-- Admission counts a key's unexpired leases.
CREATE INDEX session_leases_api_key_id_idx ON session_leases (api_key_id, expires_at);
-- A replica renews and, on shutdown, drops its own leases.
CREATE INDEX session_leases_node_id_idx ON session_leases (node_id);
