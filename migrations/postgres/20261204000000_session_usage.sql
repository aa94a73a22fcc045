-- Metering: each session's audio per provider (a session that failed over used several).
-- Written with the session's end, in the same transaction; a replayed end sets the same values
-- again (never adds). Read by `GET /v1/usage`, summed per key, day and provider.
-- The SQLite migration of the same version creates the same table with the same column names.

CREATE TABLE session_usage (
    -- The session; its usage goes when its record goes (retention, GDPR erasure).
    session_id   uuid   NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    -- The provider's name, as in `sessions.provider` and `providers_tried`.
    provider     text   NOT NULL,
    -- Caller audio counted for this provider (forwarded, or held for it during a failover).
    audio_in_ms  bigint NOT NULL DEFAULT 0,
    -- This provider's audio sent to the caller.
    audio_out_ms bigint NOT NULL DEFAULT 0,
    -- A provider tried twice in one session has one row: the sum of its segments.
    PRIMARY KEY (session_id, provider)
);
