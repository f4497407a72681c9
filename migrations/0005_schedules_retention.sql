-- Schedules (cron and interval), the retention pruner's index, and dedup windows on idempotency keys.
--
-- Additive only: a coordinator of the previous release ignores all of it.

-- One row per schedule. next_run_at is the next tick (NULL while paused); every coordinator's scheduler
-- takes due rows FOR UPDATE SKIP LOCKED, submits the tick's job under a deterministic idempotency key
-- ("schedule:<id>:<tick epoch ms>") and moves next_run_at on, so each tick makes at most one job.
CREATE TABLE faultline_schedules (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name            text NOT NULL UNIQUE,
    cron            text,
    time_zone       text NOT NULL DEFAULT 'UTC',
    every_ms        bigint,
    kind            text NOT NULL,
    queue           text NOT NULL,
    payload         bytea NOT NULL DEFAULT '',
    priority        integer NOT NULL DEFAULT 0,
    max_attempts    integer NOT NULL,
    labels          jsonb NOT NULL DEFAULT '{}',
    catchup         text NOT NULL DEFAULT 'skip',
    overlap         text NOT NULL DEFAULT 'skip',
    paused          boolean NOT NULL DEFAULT false,
    next_run_at     timestamptz,
    last_run_at     timestamptz,
    last_job_id     bigint,
    fired           bigint NOT NULL DEFAULT 0,
    skipped         bigint NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT faultline_schedules_one_spec CHECK ((cron IS NULL) <> (every_ms IS NULL)),
    CONSTRAINT faultline_schedules_every_positive CHECK (every_ms IS NULL OR every_ms >= 1000),
    CONSTRAINT faultline_schedules_catchup CHECK (catchup IN ('skip', 'run_once')),
    CONSTRAINT faultline_schedules_overlap CHECK (overlap IN ('skip', 'allow')),
    CONSTRAINT faultline_schedules_paused_no_next CHECK (NOT paused OR next_run_at IS NULL)
);

CREATE INDEX faultline_schedules_due ON faultline_schedules (next_run_at) WHERE next_run_at IS NOT NULL;

-- The retention pruner's scan: finished jobs by state, oldest first. Only terminal rows are in it.
CREATE INDEX faultline_jobs_finished ON faultline_jobs (state, finished_at)
    WHERE state IN ('succeeded', 'dead_lettered', 'cancelled');

-- Dedup windows: when set, the job's idempotency key stops naming it after dedup_until, or once the job
-- is finished (dedup_unfinished). A later submit with the key then releases it (sets idempotency_key NULL
-- and keeps it in released_idempotency_key) and stores a new job.
ALTER TABLE faultline_jobs
    ADD COLUMN dedup_until timestamptz,
    ADD COLUMN dedup_unfinished boolean NOT NULL DEFAULT false,
    ADD COLUMN released_idempotency_key text;
