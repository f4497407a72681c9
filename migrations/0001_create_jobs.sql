-- Faultline's first schema: jobs, one row per attempt, step guards.
--
-- Hot-path design:
--   * Claims read only the partial index faultline_jobs_ready (state = 'queued'), so the
--     millions of finished rows never slow a claim.
--   * Heartbeats change only lease_expires_at, which no index covers, so the UPDATE is HOT
--     (heap-only: no index writes). fillfactor leaves room on each page for those versions.
--   * Every write to a leased job is fenced on (id, lease_token, state) in queries.sql.

CREATE TYPE faultline_job_state AS ENUM (
    'scheduled', 'queued', 'running', 'retrying', 'succeeded', 'dead_lettered', 'cancelled'
);

CREATE TABLE faultline_jobs (
    id                      bigint PRIMARY KEY,
    queue                   text NOT NULL,
    kind                    text NOT NULL,
    state                   faultline_job_state NOT NULL,
    priority                integer NOT NULL DEFAULT 0,
    payload                 bytea NOT NULL,
    result                  bytea,
    last_error              text,
    attempts                integer NOT NULL DEFAULT 0,
    max_attempts            integer NOT NULL,
    idempotency_key         text,
    labels                  jsonb NOT NULL DEFAULT '{}',
    -- Retry policy as submitted; NULL takes the coordinator's defaults at failure time.
    backoff_initial_ms      bigint,
    backoff_max_ms          bigint,
    backoff_multiplier      double precision,
    backoff_jitter          double precision,
    -- Timeouts as submitted; NULL means none (heartbeat: the coordinator's lease TTL).
    execution_timeout_ms    bigint,
    heartbeat_timeout_ms    bigint,
    schedule_to_start_ms    bigint,
    -- W3C trace context of the submitting call.
    trace_context           jsonb,
    -- Fencing token: bumped by every claim and by every re-queue of an expired lease.
    lease_token             bigint NOT NULL DEFAULT 0,
    worker_id               text,
    lease_expires_at        timestamptz,
    -- Deadline of the running attempt (execution timeout); NULL when none.
    attempt_deadline        timestamptz,
    -- Deadline for a queued job to start (schedule-to-start timeout); NULL when none.
    start_deadline          timestamptz,
    cancel_requested        boolean NOT NULL DEFAULT false,
    progress_fraction       double precision,
    progress_message        text,
    progress_details        bytea,
    created_at              timestamptz NOT NULL DEFAULT now(),
    run_at                  timestamptz NOT NULL DEFAULT now(),
    started_at              timestamptz,
    finished_at             timestamptz,
    updated_at              timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT faultline_jobs_attempts_bounded CHECK (attempts >= 0 AND attempts <= max_attempts),
    CONSTRAINT faultline_jobs_max_attempts_positive CHECK (max_attempts >= 1),
    CONSTRAINT faultline_jobs_running_has_lease CHECK (state <> 'running' OR lease_expires_at IS NOT NULL)
) WITH (fillfactor = 80);

CREATE SEQUENCE faultline_jobs_id_seq OWNED BY faultline_jobs.id;
ALTER TABLE faultline_jobs ALTER COLUMN id SET DEFAULT nextval('faultline_jobs_id_seq');

-- Idempotent submit: a second insert with the same key conflicts and returns the first job.
CREATE UNIQUE INDEX faultline_jobs_idempotency_key ON faultline_jobs (idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- The claim path: ready jobs only, in dispatch order.
CREATE INDEX faultline_jobs_ready ON faultline_jobs (queue, priority DESC, id)
    WHERE state = 'queued';

-- The reaper's scan: running jobs only (bounded by total worker capacity). Deliberately not on
-- lease_expires_at, so that lease extensions stay HOT updates.
CREATE INDEX faultline_jobs_running ON faultline_jobs (id) WHERE state = 'running';

-- The promoter's scan: jobs waiting for run_at.
CREATE INDEX faultline_jobs_waiting ON faultline_jobs (run_at) WHERE state IN ('scheduled', 'retrying');

-- Schedule-to-start timeouts.
CREATE INDEX faultline_jobs_start_deadline ON faultline_jobs (start_deadline)
    WHERE state = 'queued' AND start_deadline IS NOT NULL;

-- Operator listings (ListJobs newest first with filters use the primary key order).
CREATE INDEX faultline_jobs_dead ON faultline_jobs (queue, id) WHERE state = 'dead_lettered';

-- One row per attempt: who ran it, under which fencing token, and how it ended.
CREATE TABLE faultline_attempts (
    job_id          bigint NOT NULL REFERENCES faultline_jobs (id) ON DELETE CASCADE,
    attempt         integer NOT NULL,
    lease_token     bigint NOT NULL,
    worker_id       text,
    started_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz,
    -- NULL while running; then succeeded, failed, lease_expired, heartbeat_timeout,
    -- execution_timeout, schedule_to_start_timeout or cancelled.
    outcome         text,
    error           text,
    PRIMARY KEY (job_id, attempt)
) WITH (fillfactor = 80);

CREATE UNIQUE INDEX faultline_attempts_token ON faultline_attempts (job_id, lease_token);

-- Step guards: a step's result under (job, key); the first write wins.
CREATE TABLE faultline_steps (
    job_id          bigint NOT NULL REFERENCES faultline_jobs (id) ON DELETE CASCADE,
    step_key        text NOT NULL,
    result          bytea NOT NULL,
    lease_token     bigint NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, step_key)
);
