-- API keys and the audit trail of who did what (issue 12).
--
-- A key row keeps HMAC-SHA256(salt, secret), never the secret (coordinator/auth/keys.py says why a keyed
-- fast hash suffices for a 256-bit random secret). A revoked key keeps its row (revoked_at set) so that
-- audit columns still name it; a name is unique among the keys not revoked, so a name can be reused
-- after a rotation. Coordinators reload the active keys every few seconds: a revocation reaches every
-- coordinator, and the streams its key opened, within that interval.
--
-- Audit: the identity (key:NAME, or cn:SUBJECT for a client certificate) that submitted, last cancelled
-- and last requeued each job. Which identity ran an attempt is faultline_attempts.worker_id, qualified
-- with the identity when auth is on. Nullable columns without a default: adding them rewrites nothing.

CREATE TABLE faultline_api_keys (
    id              text PRIMARY KEY,
    name            text NOT NULL,
    salt            bytea NOT NULL,
    secret_hash     bytea NOT NULL,
    scopes          text[] NOT NULL,
    -- Queue names or prefixes ending in '*'; empty means every queue.
    queues          text[] NOT NULL DEFAULT '{}',
    -- Job creation rate (jobs per second) and bucket size; NULL means unlimited.
    rate_per_s      double precision,
    burst           integer,
    created_at      timestamptz NOT NULL DEFAULT now(),
    revoked_at      timestamptz,
    CONSTRAINT faultline_api_keys_rate_positive CHECK (rate_per_s IS NULL OR rate_per_s > 0),
    CONSTRAINT faultline_api_keys_burst_positive CHECK (burst IS NULL OR burst >= 1)
);

CREATE UNIQUE INDEX faultline_api_keys_active_name ON faultline_api_keys (name) WHERE revoked_at IS NULL;

ALTER TABLE faultline_jobs
    ADD COLUMN submitted_by text,
    ADD COLUMN cancelled_by text,
    ADD COLUMN requeued_by text;
