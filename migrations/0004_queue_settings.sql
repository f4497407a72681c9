-- Flow control: per-queue settings (pause, caps, rate limit), per-job concurrency keys and required labels.
--
-- Queues were only strings on jobs; a queue's settings now live in a row of their own, created by the first
-- PauseQueue or SetQueueSettings. A queue without a row, or whose row limits nothing, is claimed exactly as
-- before (claim_jobs); any other is claimed only by claim_jobs_limited, under that row's lock and checked
-- against its claim_seq (queries.sql, "flow control"), which is what makes every limit hold for any number
-- of coordinators. Expand-only.

CREATE TABLE faultline_queues (
    queue                   text PRIMARY KEY,
    paused                  boolean NOT NULL DEFAULT false,
    -- Running jobs at most per concurrency key, and in the queue as a whole; NULL: no cap.
    per_key_concurrency     integer CHECK (per_key_concurrency >= 1),
    max_running             integer CHECK (max_running >= 1),
    -- Token bucket: grants per second and the most tokens it holds; NULL rate: no rate limit.
    rate_per_s              double precision CHECK (rate_per_s > 0),
    burst                   integer CHECK (burst >= 1),
    tokens                  double precision NOT NULL DEFAULT 0,
    refilled_at             timestamptz NOT NULL DEFAULT now(),
    -- Bumped by every limited claim that leased something: a claim whose snapshot predates the latest one
    -- would count too few running jobs, so it claims nothing and runs again.
    claim_seq               bigint NOT NULL DEFAULT 0,
    -- Per-key queues are served round-robin over their keys: the last key a claim granted, where the next
    -- claim's walk over the keys starts.
    key_cursor              text,
    -- Anything the plain claim would get wrong: such a queue is claimed under its row's lock only.
    limited                 boolean GENERATED ALWAYS AS (
        paused OR per_key_concurrency IS NOT NULL OR max_running IS NOT NULL OR rate_per_s IS NOT NULL
    ) STORED,
    updated_at              timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE faultline_jobs
    -- At most per_key_concurrency running jobs of a queue share one key (a customer id, say); NULL: none.
    ADD COLUMN concurrency_key text,
    -- Only a worker whose hello labels contain all of these is granted the job; NULL: any worker.
    ADD COLUMN required_labels jsonb,
    -- Leased by the limited claim: when this lease ends, the trigger below tells every coordinator.
    ADD COLUMN gated boolean NOT NULL DEFAULT false;

-- The limited claim walks a queue's ready jobs key by key (a skip scan over distinct keys from the cursor,
-- then each key's head), so a key at its cap with a million jobs queued costs one probe, not a million rows,
-- and a claim visits only as many keys as it has slots to fill.
CREATE INDEX faultline_jobs_ready_key ON faultline_jobs (queue, concurrency_key, priority DESC, id)
    WHERE state = 'queued';

-- Running jobs per queue and key: what a cap counts (bounded by worker capacity, not by the backlog).
CREATE INDEX faultline_jobs_running_queue ON faultline_jobs (queue, concurrency_key) WHERE state = 'running';

-- Ready jobs that need worker labels, counted for ListQueues and the metrics sampler without reading the
-- rest of the backlog.
CREATE INDEX faultline_jobs_ready_labels ON faultline_jobs (queue) WHERE state = 'queued' AND required_labels IS NOT NULL;

-- A slot of a limited queue freed (its lease ended by any path: completion, failure, expiry, release):
-- wake every coordinator's dispatcher for that queue, so work held back by a cap is claimed at once, not
-- on a poll. The WHEN clause reads only the row, so ungated jobs (every queue without limits) never call
-- the function; the payload is actors/peers.py's "<sender> <queues>" with a sender no coordinator has.
CREATE FUNCTION faultline_slot_freed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('faultline_ready', 'slot ' || NEW.queue);
    RETURN NULL;
END
$$;

CREATE TRIGGER faultline_jobs_slot_freed
    AFTER UPDATE OF state ON faultline_jobs
    FOR EACH ROW
    WHEN (OLD.state = 'running' AND NEW.state <> 'running' AND OLD.gated)
    EXECUTE FUNCTION faultline_slot_freed();
