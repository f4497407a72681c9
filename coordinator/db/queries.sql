-- Every SQL statement the coordinator runs. Reviewed in one place; code reaches them only through Store.
--
-- Format: a header line `-- name: <name> :<one|many|exec|val>`, a purpose line `-- <what it does>`,
-- then the statement. Parameters are $n. Every write to a leased job is fenced on
-- (id, lease_token, state = 'running'); a fenced write that matches nothing is a stale lease,
-- which the caller turns into a typed answer, never a silent no-op.
--
-- Durations are milliseconds (bigint); `* interval '1 millisecond'` turns them into intervals.

-- name: migrations_bootstrap :exec
-- Create the table that records applied migrations, if missing.
CREATE TABLE IF NOT EXISTS faultline_schema_migrations (
    version     text PRIMARY KEY,
    applied_at  timestamptz NOT NULL DEFAULT now()
);

-- name: migrations_lock :exec
-- Serialise migrators across processes for the rest of the session (released by migrations_unlock).
SELECT pg_advisory_lock(7355608001);

-- name: migrations_unlock :exec
-- Release the migration lock.
SELECT pg_advisory_unlock(7355608001);

-- name: migrations_applied :many
-- Versions already applied.
SELECT version FROM faultline_schema_migrations ORDER BY version;

-- name: migrations_record :exec
-- Record one migration as applied.
INSERT INTO faultline_schema_migrations (version) VALUES ($1);

-- name: ping :val
-- Cheapest round trip that proves Postgres answers.
SELECT 1;

-- name: insert_jobs :many
-- Insert a batch in one statement; returns only what the caller does not know; a row whose (queue, idempotency key) exists is skipped (id IS NULL). A row offered to worker $17[i] with labels $21[i] (direct hand-off) is inserted already leased, token 1 and attempt row opened, when nothing queued in its queue would come before it and the grant policy allows it; otherwise it is queued as usual. $23[i]/$24[i] are the key's dedup window (ms after submit / while unfinished; migration 0005). $22 is the submitting identity (audit; NULL when anonymous).
WITH input AS MATERIALIZED (
    SELECT nextval('faultline_jobs_id_seq') AS new_id, t.*,
        (t.holder IS NOT NULL AND NOT COALESCE(t.run_at > now(), false) AND NOT EXISTS (
            SELECT 1 FROM faultline_jobs q
            WHERE q.state = 'queued' AND q.queue = t.queue AND q.priority >= t.priority
        -- The grant policy (see "flow control" at the end): a limited queue is granted only by
        -- claim_jobs_limited, and a job goes only to a worker whose labels hold its required labels.
        ) AND (t.required_labels IS NULL OR t.required_labels <@ t.holder_labels) AND NOT EXISTS (
            SELECT 1 FROM faultline_queues s WHERE s.queue = t.queue AND s.limited
        )) AS leased
    FROM unnest(
        $1::text[], $2::text[], $3::bytea[], $4::text[], $5::int[], $6::int[], $7::timestamptz[],
        $8::bigint[], $9::bigint[], $10::float8[], $11::float8[],
        $12::bigint[], $13::bigint[], $14::bigint[], $15::jsonb[], $16::jsonb[], $17::text[],
        $19::text[], $20::jsonb[], $21::jsonb[], $23::bigint[], $24::bool[]
    ) WITH ORDINALITY AS t(
        queue, kind, payload, idempotency_key, max_attempts, priority, run_at,
        backoff_initial_ms, backoff_max_ms, backoff_multiplier, backoff_jitter,
        execution_timeout_ms, heartbeat_timeout_ms, schedule_to_start_ms, labels, trace_context, holder,
        concurrency_key, required_labels, holder_labels, dedup_period_ms, dedup_unfinished, ord
    )
),
ins AS (
    INSERT INTO faultline_jobs (
        id, queue, kind, state, payload, idempotency_key, max_attempts, priority, run_at,
        backoff_initial_ms, backoff_max_ms, backoff_multiplier, backoff_jitter,
        execution_timeout_ms, heartbeat_timeout_ms, schedule_to_start_ms, labels, trace_context,
        start_deadline, attempts, lease_token, worker_id, started_at, lease_expires_at, attempt_deadline,
        concurrency_key, required_labels, submitted_by, dedup_until, dedup_unfinished
    )
    SELECT
        new_id, queue, kind,
        (CASE WHEN leased THEN 'running' WHEN run_at > now() THEN 'scheduled' ELSE 'queued' END)::faultline_job_state,
        payload, idempotency_key, max_attempts, priority, GREATEST(COALESCE(run_at, now()), now()),
        backoff_initial_ms, backoff_max_ms, backoff_multiplier, backoff_jitter,
        execution_timeout_ms, heartbeat_timeout_ms, schedule_to_start_ms, labels, trace_context,
        CASE WHEN leased OR run_at > now() THEN NULL
             ELSE now() + schedule_to_start_ms * interval '1 millisecond' END,
        CASE WHEN leased THEN 1 ELSE 0 END,
        CASE WHEN leased THEN 1 ELSE 0 END,
        CASE WHEN leased THEN holder END,
        CASE WHEN leased THEN now() END,
        CASE WHEN leased THEN now() + COALESCE(heartbeat_timeout_ms, $18) * interval '1 millisecond' END,
        CASE WHEN leased THEN now() + execution_timeout_ms * interval '1 millisecond' END,
        concurrency_key, required_labels, $22::text,
        now() + dedup_period_ms * interval '1 millisecond', COALESCE(dedup_unfinished, false)
    FROM input
    ORDER BY ord
    ON CONFLICT (queue, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING id, state, run_at, created_at, updated_at, worker_id, started_at, lease_expires_at, dedup_until
),
opened AS (
    INSERT INTO faultline_attempts (job_id, attempt, lease_token, worker_id, started_at)
    SELECT id, 1, 1, worker_id, started_at FROM ins WHERE state = 'running'
)
SELECT input.ord, ins.id, ins.state, ins.run_at, ins.created_at, ins.updated_at,
    ins.worker_id, ins.started_at, ins.lease_expires_at, ins.dedup_until
FROM input LEFT JOIN ins ON ins.id = input.new_id
ORDER BY input.ord;

-- name: get_jobs_by_keys :many
-- Jobs holding the given (queue $1[i], idempotency key $2[i]) pairs (the winners of conflicting submits).
SELECT j.* FROM faultline_jobs j
JOIN unnest($1::text[], $2::text[]) AS t(queue, idempotency_key)
  ON j.queue = t.queue AND j.idempotency_key = t.idempotency_key;

-- name: get_job :one
-- One job by id.
SELECT * FROM faultline_jobs WHERE id = $1;

-- The labels filter (ListJobs, bulk actions) is jsonb containment (labels @> filter) with no GIN index on
-- purpose: one would be written by every insert on the submit hot path, for the sake of an operator's
-- filter. The filter walks the primary key newest first (or an index of its other filters) and checks
-- each row's labels; a page or a bulk chunk stops at its limit, so the cost is bounded per call.

-- name: list_jobs :many
-- A page of jobs (view FULL), newest first, below cursor $4, with optional queue, kind, state, labels ($7, containment) and idempotency key ($8) filters; stops after the first row that takes the page's payload+result+details bytes to $6 (octet_length reads a TOASTed value's size without reading the value).
WITH page AS (
    SELECT id, sum(octet_length(payload) + COALESCE(octet_length(result), 0)
                   + COALESCE(octet_length(progress_details), 0)) OVER (ORDER BY id DESC) AS bytes_to_here,
           octet_length(payload) + COALESCE(octet_length(result), 0)
               + COALESCE(octet_length(progress_details), 0) AS bytes
    FROM faultline_jobs
    WHERE ($1::text IS NULL OR queue = $1)
      AND ($2::text IS NULL OR kind = $2)
      AND ($3::faultline_job_state IS NULL OR state = $3)
      AND ($4::bigint IS NULL OR id < $4)
      AND ($7::jsonb IS NULL OR labels @> $7)
      AND ($8::text IS NULL OR idempotency_key = $8)
    ORDER BY id DESC
    LIMIT $5
)
SELECT j.* FROM page JOIN faultline_jobs j USING (id)
WHERE page.bytes_to_here - page.bytes < $6
ORDER BY j.id DESC;

-- name: list_jobs_basic :many
-- A page of jobs (view BASIC), newest first, below cursor $4, with optional filters (labels $6 by containment, idempotency key $7): every column but payload, result and progress details, which are never read.
SELECT id, queue, kind, state, priority, ''::bytea AS payload, NULL::bytea AS result, last_error, attempts,
    max_attempts, idempotency_key, labels, backoff_initial_ms, backoff_max_ms, backoff_multiplier,
    backoff_jitter, execution_timeout_ms, heartbeat_timeout_ms, schedule_to_start_ms, trace_context,
    lease_token, worker_id, lease_expires_at, cancel_requested, progress_fraction, progress_message,
    NULL::bytea AS progress_details, created_at, run_at, started_at, finished_at, updated_at,
    concurrency_key, required_labels
FROM faultline_jobs
WHERE ($1::text IS NULL OR queue = $1)
  AND ($2::text IS NULL OR kind = $2)
  AND ($3::faultline_job_state IS NULL OR state = $3)
  AND ($4::bigint IS NULL OR id < $4)
  AND ($6::jsonb IS NULL OR labels @> $6)
  AND ($7::text IS NULL OR idempotency_key = $7)
ORDER BY id DESC
LIMIT $5;

-- name: cancel_job :one
-- Cancel a waiting job at once; mark a running one (its worker is told); leave a finished one as it is.
UPDATE faultline_jobs SET
    state = (CASE WHEN state IN ('queued', 'scheduled', 'retrying') THEN 'cancelled' ELSE state END)::faultline_job_state,
    cancel_requested = cancel_requested OR state = 'running',
    finished_at = CASE WHEN state IN ('queued', 'scheduled', 'retrying') THEN now() ELSE finished_at END,
    start_deadline = NULL,
    updated_at = now()
WHERE id = $1
RETURNING *;

-- name: requeue_job :one
-- Bring a dead-lettered or cancelled job back to the queue with $2 more attempts.
UPDATE faultline_jobs SET
    state = 'queued',
    max_attempts = attempts + $2,
    cancel_requested = false,
    run_at = now(),
    finished_at = NULL,
    start_deadline = now() + schedule_to_start_ms * interval '1 millisecond',
    updated_at = now()
WHERE id = $1 AND state IN ('dead_lettered', 'cancelled')
RETURNING *;

-- Bulk actions (BulkCancelJobs, BulkRequeueJobs): one short statement per chunk of at most $8 (cancel) or
-- $9 (requeue) jobs, newest first below cursor $7 (cancel) or $8 (requeue): jobs $1 (ids) or those matching queue $2, kind $3, state $4 and labels $5
-- (containment, see list_jobs). The chunk's rows are locked in id order, as the lease batches lock theirs
-- (see complete_jobs), so a bulk chunk and a completer batch cannot deadlock; each job changes exactly as
-- cancel_job / requeue_job would change it, with the caller's identity $6 recorded as audit_cancelled /
-- audit_requeued would. One row per job the chunk looked at; a finished job (or, for requeue, one neither
-- dead-lettered nor cancelled) comes back with changed = false.

-- name: bulk_cancel_jobs :many
-- Cancel one chunk of matching jobs (see above): waiting ones at once, running ones marked (their workers are told by the caller).
WITH picked AS MATERIALIZED (
    SELECT id FROM faultline_jobs
    WHERE ($1::bigint[] IS NULL OR id = ANY($1))
      AND ($2::text IS NULL OR queue = $2)
      AND ($3::text IS NULL OR kind = $3)
      AND ($4::faultline_job_state IS NULL OR state = $4)
      AND ($5::jsonb IS NULL OR labels @> $5)
      AND ($7::bigint IS NULL OR id < $7)
    ORDER BY id DESC
    LIMIT $8
),
locked AS MATERIALIZED (
    SELECT j.id FROM faultline_jobs j
    WHERE j.id = ANY (ARRAY(SELECT id FROM picked))
      AND j.state IN ('queued', 'scheduled', 'retrying', 'running')
      AND ($4::faultline_job_state IS NULL OR j.state = $4)
    ORDER BY j.id
    FOR UPDATE OF j
),
changed AS (
    UPDATE faultline_jobs j SET
        state = (CASE WHEN j.state IN ('queued', 'scheduled', 'retrying') THEN 'cancelled' ELSE j.state END)::faultline_job_state,
        cancel_requested = j.cancel_requested OR j.state = 'running',
        finished_at = CASE WHEN j.state IN ('queued', 'scheduled', 'retrying') THEN now() ELSE j.finished_at END,
        start_deadline = NULL,
        cancelled_by = COALESCE($6::text, j.cancelled_by),
        updated_at = now()
    FROM locked l
    WHERE j.id = l.id
    RETURNING j.id, j.queue, j.state::text AS state, j.cancel_requested, j.lease_token
)
SELECT p.id, c.queue, c.state, c.cancel_requested, c.lease_token, c.id IS NOT NULL AS changed
FROM picked p LEFT JOIN changed c ON c.id = p.id
ORDER BY p.id DESC;

-- name: bulk_requeue_jobs :many
-- Requeue one chunk of matching dead-lettered or cancelled jobs (see above) with $7 more attempts each.
WITH picked AS MATERIALIZED (
    SELECT id FROM faultline_jobs
    WHERE ($1::bigint[] IS NULL OR id = ANY($1))
      AND ($2::text IS NULL OR queue = $2)
      AND ($3::text IS NULL OR kind = $3)
      AND ($4::faultline_job_state IS NULL OR state = $4)
      AND ($5::jsonb IS NULL OR labels @> $5)
      AND ($8::bigint IS NULL OR id < $8)
    ORDER BY id DESC
    LIMIT $9
),
locked AS MATERIALIZED (
    SELECT j.id FROM faultline_jobs j
    WHERE j.id = ANY (ARRAY(SELECT id FROM picked))
      AND j.state IN ('dead_lettered', 'cancelled')
      AND ($4::faultline_job_state IS NULL OR j.state = $4)
    ORDER BY j.id
    FOR UPDATE OF j
),
changed AS (
    UPDATE faultline_jobs j SET
        state = 'queued',
        max_attempts = j.attempts + $7,
        cancel_requested = false,
        run_at = now(),
        finished_at = NULL,
        start_deadline = now() + j.schedule_to_start_ms * interval '1 millisecond',
        requeued_by = COALESCE($6::text, j.requeued_by),
        updated_at = now()
    FROM locked l
    WHERE j.id = l.id
    RETURNING j.id, j.queue
)
SELECT p.id, c.queue, c.id IS NOT NULL AS changed
FROM picked p LEFT JOIN changed c ON c.id = p.id
ORDER BY p.id DESC;

-- name: job_queues :many
-- The queue of each of the jobs $1 that exists (a bulk action checks a queue-limited key against them first).
SELECT id, queue FROM faultline_jobs WHERE id = ANY($1::bigint[]);

-- name: claim_jobs :many
-- Lease up to $3 ready jobs of queue $1 with a kind in $2 whose required labels workers with labels $6 have; job n goes to worker slot n of $4; bumps the fencing token and opens the attempt row. Claims nothing from a limited queue (claim_jobs_limited's). Returns the columns a grant needs (state, cancel_requested, progress and finished_at are set here or NULL).
WITH locked AS (
    SELECT id FROM faultline_jobs
    WHERE state = 'queued' AND queue = $1 AND kind = ANY($2::text[])
      AND (required_labels IS NULL OR required_labels <@ $6::jsonb)
      AND NOT EXISTS (SELECT 1 FROM faultline_queues s WHERE s.queue = $1 AND s.limited)
    ORDER BY priority DESC, id
    LIMIT $3
    FOR UPDATE SKIP LOCKED
),
slotted AS (
    SELECT id, row_number() OVER (ORDER BY id) AS slot FROM locked
),
leased AS (
    UPDATE faultline_jobs j SET
        state = 'running',
        attempts = j.attempts + 1,
        lease_token = j.lease_token + 1,
        worker_id = ($4::text[])[s.slot],
        started_at = now(),
        lease_expires_at = now() + COALESCE(j.heartbeat_timeout_ms, $5) * interval '1 millisecond',
        attempt_deadline = now() + j.execution_timeout_ms * interval '1 millisecond',
        start_deadline = NULL,
        cancel_requested = false,
        progress_fraction = NULL,
        progress_message = NULL,
        progress_details = NULL,
        updated_at = now()
    FROM slotted s
    WHERE j.id = s.id
    RETURNING j.id, j.queue, j.kind, j.priority, j.payload, j.result, j.last_error, j.attempts, j.max_attempts,
        j.idempotency_key, j.labels, j.backoff_initial_ms, j.backoff_max_ms, j.backoff_multiplier,
        j.backoff_jitter, j.execution_timeout_ms, j.heartbeat_timeout_ms, j.schedule_to_start_ms,
        j.trace_context, j.lease_token, j.worker_id, j.lease_expires_at, j.created_at, j.run_at,
        j.started_at, j.updated_at, j.concurrency_key, j.required_labels, s.slot
),
opened AS (
    INSERT INTO faultline_attempts (job_id, attempt, lease_token, worker_id, started_at)
    SELECT id, attempts, lease_token, worker_id, started_at FROM leased
)
SELECT * FROM leased;

-- name: release_leases :many
-- Undo leases whose handler never ran: a claim that never reached its worker ($3[i] NULL), or one its holder $3[i] hands back (Release frame). Back to queued (cancelled if a cancel was requested meanwhile), token bumped, attempt row removed, so the attempt is not counted.
WITH released AS (
    UPDATE faultline_jobs j SET
        state = (CASE WHEN j.cancel_requested THEN 'cancelled' ELSE 'queued' END)::faultline_job_state,
        attempts = j.attempts - 1,
        lease_token = j.lease_token + 1,
        worker_id = NULL,
        lease_expires_at = NULL,
        attempt_deadline = NULL,
        started_at = NULL,
        finished_at = CASE WHEN j.cancel_requested THEN now() END,
        start_deadline = CASE WHEN j.cancel_requested THEN NULL
                              ELSE now() + j.schedule_to_start_ms * interval '1 millisecond' END,
        updated_at = now()
    FROM unnest($1::bigint[], $2::bigint[], $3::text[]) AS t(id, token, holder)
    WHERE j.id = t.id AND j.lease_token = t.token AND j.state = 'running'
        AND (t.holder IS NULL OR j.worker_id = t.holder)
    RETURNING j.id, j.queue, j.state, t.token AS old_token
),
removed AS (
    DELETE FROM faultline_attempts a USING released r
    WHERE a.job_id = r.id AND a.lease_token = r.old_token
)
SELECT id, queue, state FROM released;

-- name: resume_leases :many
-- Adopt leases a reconnecting worker ($3) still runs, when they are still current and its own; extends them.
UPDATE faultline_jobs j SET
    lease_expires_at = now() + COALESCE(j.heartbeat_timeout_ms, $4) * interval '1 millisecond'
FROM unnest($1::bigint[], $2::bigint[]) AS t(id, token)
WHERE j.id = t.id AND j.lease_token = t.token AND j.state = 'running' AND j.worker_id = $3
RETURNING j.id, j.lease_token, j.queue, j.kind, j.cancel_requested;

-- name: extend_leases :many
-- Heartbeat a batch of leases (job $1, token $2, holder $3) in one statement; touches no indexed column, so it is a HOT update. Rows are locked in job-id order first (see complete_jobs).
WITH locked AS MATERIALIZED (
    SELECT j.id, t.token, t.worker_id
    FROM unnest($1::bigint[], $2::bigint[], $3::text[]) AS t(id, token, worker_id)
    JOIN faultline_jobs j ON j.id = t.id AND j.lease_token = t.token AND j.state = 'running'
        AND j.worker_id = t.worker_id
    ORDER BY j.id
    FOR UPDATE OF j
)
UPDATE faultline_jobs j SET
    lease_expires_at = now() + COALESCE(j.heartbeat_timeout_ms, $4) * interval '1 millisecond'
FROM locked t
WHERE j.id = t.id AND j.lease_token = t.token AND j.state = 'running' AND j.worker_id = t.worker_id
RETURNING j.id, j.lease_token, j.cancel_requested, j.lease_expires_at;

-- name: record_progress :many
-- Store the latest progress of a batch of leases (also extends them). Rows are locked in job-id order first (see complete_jobs).
WITH locked AS MATERIALIZED (
    SELECT j.id, t.token, t.worker_id, t.fraction, t.message, t.details
    FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::float8[], $5::text[], $6::bytea[])
        AS t(id, token, worker_id, fraction, message, details)
    JOIN faultline_jobs j ON j.id = t.id AND j.lease_token = t.token AND j.state = 'running'
        AND j.worker_id = t.worker_id
    ORDER BY j.id
    FOR UPDATE OF j
)
UPDATE faultline_jobs j SET
    progress_fraction = t.fraction,
    progress_message = t.message,
    progress_details = t.details,
    lease_expires_at = now() + COALESCE(j.heartbeat_timeout_ms, $7) * interval '1 millisecond'
FROM locked t
WHERE j.id = t.id AND j.lease_token = t.token AND j.state = 'running' AND j.worker_id = t.worker_id
RETURNING j.id, j.lease_token, j.cancel_requested;

-- name: complete_jobs :many
-- First write wins: mark a batch of current leases (job $1, token $2, holder $3) succeeded with their results and close their attempts. The batch UPDATEs of leased rows (extend_leases, record_progress, complete_jobs, fail_jobs) lock them in job-id order first (ORDER BY under FOR UPDATE), whatever join the planner picks, so two batches over the same leases cannot deadlock; the rare resume and release batches rely on the deadlock retry in db/store.py.
WITH locked AS MATERIALIZED (
    SELECT j.id, t.token, t.worker_id, t.result
    FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::bytea[]) AS t(id, token, worker_id, result)
    JOIN faultline_jobs j ON j.id = t.id AND j.lease_token = t.token AND j.state = 'running'
        AND j.worker_id = t.worker_id
    ORDER BY j.id
    FOR UPDATE OF j
),
done AS (
    UPDATE faultline_jobs j SET
        state = 'succeeded',
        result = t.result,
        worker_id = NULL,
        lease_expires_at = NULL,
        attempt_deadline = NULL,
        finished_at = now(),
        updated_at = now()
    FROM locked t
    WHERE j.id = t.id AND j.lease_token = t.token AND j.state = 'running' AND j.worker_id = t.worker_id
    RETURNING j.id, j.lease_token, j.queue, j.kind, j.created_at, j.started_at, j.finished_at
),
closed AS (
    UPDATE faultline_attempts a SET finished_at = d.finished_at, outcome = 'succeeded'
    FROM done d
    WHERE a.job_id = d.id AND a.lease_token = d.lease_token
)
SELECT * FROM done;

-- name: fail_jobs :many
-- Close a batch of current leases (job $1, token $2, holder $3) as failed: retry with backoff, dead-letter when spent or not retryable, cancel when asked. $6 overrides the delay; $7-$10 are the default policy.
WITH decided AS (
    SELECT
        j.id, t.token, t.error,
        (CASE WHEN j.cancel_requested THEN 'cancelled'
              WHEN NOT t.retryable OR j.attempts >= j.max_attempts THEN 'dead_lettered'
              ELSE 'retrying' END)::faultline_job_state AS next_state,
        now() + COALESCE(
            t.delay_ms,
            LEAST(
                COALESCE(j.backoff_max_ms, $8),
                COALESCE(j.backoff_initial_ms, $7)
                    * power(COALESCE(j.backoff_multiplier, $9), GREATEST(j.attempts - 1, 0))
                    * (1 + COALESCE(j.backoff_jitter, $10) * (2 * random() - 1))
            )
        ) * interval '1 millisecond' AS next_run_at
    FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::bool[], $6::bigint[])
        AS t(id, token, worker_id, error, retryable, delay_ms)
    JOIN faultline_jobs j ON j.id = t.id AND j.lease_token = t.token AND j.state = 'running'
        AND j.worker_id = t.worker_id
    ORDER BY j.id
    FOR UPDATE OF j
),
failed AS (
    UPDATE faultline_jobs j SET
        state = d.next_state,
        last_error = d.error,
        run_at = CASE WHEN d.next_state = 'retrying' THEN d.next_run_at ELSE j.run_at END,
        finished_at = CASE WHEN d.next_state = 'retrying' THEN NULL ELSE now() END,
        worker_id = NULL,
        lease_expires_at = NULL,
        attempt_deadline = NULL,
        updated_at = now()
    FROM decided d
    WHERE j.id = d.id
    RETURNING j.id, j.lease_token, j.state, j.queue, j.kind, j.run_at, j.attempts, j.started_at, now() AS closed_at
),
closed AS (
    UPDATE faultline_attempts a SET
        finished_at = now(),
        outcome = CASE WHEN f.state = 'cancelled' THEN 'cancelled' ELSE 'failed' END,
        error = d.error
    FROM failed f JOIN decided d ON d.id = f.id
    WHERE a.job_id = f.id AND a.lease_token = f.lease_token
)
SELECT * FROM failed;

-- name: classify_leases :many
-- Why fenced writes for ($1 job, $2 token) matched nothing: the job's state and token now, and how that lease's attempt ended.
SELECT t.id, t.token, j.state, j.lease_token AS current_token, j.worker_id AS holder, j.result, a.outcome
FROM unnest($1::bigint[], $2::bigint[]) AS t(id, token)
LEFT JOIN faultline_jobs j ON j.id = t.id
LEFT JOIN faultline_attempts a ON a.job_id = t.id AND a.lease_token = t.token;

-- name: expire_leases :many
-- Reap up to $1 running jobs whose lease or execution deadline passed (Postgres clock): bump the token in the same UPDATE, then retry, dead-letter or cancel. $2-$5 are the default policy.
WITH expired AS (
    SELECT j.id, j.lease_token AS old_token, j.worker_id AS old_worker,
        CASE WHEN j.attempt_deadline < now() THEN 'execution_timeout'
             WHEN j.heartbeat_timeout_ms IS NOT NULL THEN 'heartbeat_timeout'
             ELSE 'lease_expired' END AS reason,
        (CASE WHEN j.cancel_requested THEN 'cancelled'
              WHEN j.attempts >= j.max_attempts THEN 'dead_lettered'
              ELSE 'retrying' END)::faultline_job_state AS next_state,
        now() + LEAST(
            COALESCE(j.backoff_max_ms, $3),
            COALESCE(j.backoff_initial_ms, $2)
                * power(COALESCE(j.backoff_multiplier, $4), GREATEST(j.attempts - 1, 0))
                * (1 + COALESCE(j.backoff_jitter, $5) * (2 * random() - 1))
        ) * interval '1 millisecond' AS next_run_at
    FROM faultline_jobs j
    WHERE j.state = 'running' AND (j.lease_expires_at < now() OR j.attempt_deadline < now())
    ORDER BY j.id
    LIMIT $1
    FOR UPDATE SKIP LOCKED
),
reaped AS (
    UPDATE faultline_jobs j SET
        state = e.next_state,
        lease_token = j.lease_token + 1,
        last_error = e.reason,
        run_at = CASE WHEN e.next_state = 'retrying' THEN e.next_run_at ELSE j.run_at END,
        finished_at = CASE WHEN e.next_state = 'retrying' THEN NULL ELSE now() END,
        worker_id = NULL,
        lease_expires_at = NULL,
        attempt_deadline = NULL,
        updated_at = now()
    FROM expired e
    WHERE j.id = e.id
    RETURNING j.id, j.state, j.queue, j.kind, j.run_at, j.started_at, e.old_token, e.old_worker, e.reason
),
closed AS (
    UPDATE faultline_attempts a SET finished_at = now(), outcome = r.reason, error = r.reason
    FROM reaped r
    WHERE a.job_id = r.id AND a.lease_token = r.old_token
)
SELECT * FROM reaped;

-- name: expire_start_deadlines :many
-- Dead-letter up to $1 queued jobs whose schedule-to-start deadline passed, recording the timeout as an attempt.
WITH due AS (
    SELECT id FROM faultline_jobs
    WHERE state = 'queued' AND start_deadline < now()
    ORDER BY start_deadline
    LIMIT $1
    FOR UPDATE SKIP LOCKED
),
timed_out AS (
    UPDATE faultline_jobs j SET
        state = 'dead_lettered',
        attempts = j.attempts + 1,
        lease_token = j.lease_token + 1,
        last_error = 'schedule_to_start_timeout',
        start_deadline = NULL,
        finished_at = now(),
        updated_at = now()
    FROM due
    WHERE j.id = due.id
    RETURNING j.id, j.queue, j.kind, j.attempts, j.lease_token
),
recorded AS (
    INSERT INTO faultline_attempts (job_id, attempt, lease_token, started_at, finished_at, outcome, error)
    SELECT id, attempts, lease_token, now(), now(), 'schedule_to_start_timeout', 'schedule_to_start_timeout'
    FROM timed_out
)
SELECT * FROM timed_out;

-- name: promote_due :many
-- Move up to $1 scheduled or retrying jobs whose run_at has come into the ready queue.
WITH due AS (
    SELECT id FROM faultline_jobs
    WHERE state IN ('scheduled', 'retrying') AND run_at <= now()
    ORDER BY run_at
    LIMIT $1
    FOR UPDATE SKIP LOCKED
)
UPDATE faultline_jobs j SET
    state = 'queued',
    start_deadline = now() + j.schedule_to_start_ms * interval '1 millisecond',
    updated_at = now()
FROM due
WHERE j.id = due.id
RETURNING j.id, j.queue;

-- name: next_due_in :val
-- Seconds until the earliest scheduled or retrying job is due, by Postgres' clock (NULL when none).
SELECT EXTRACT(EPOCH FROM min(run_at) - now())::float8 FROM faultline_jobs WHERE state IN ('scheduled', 'retrying');

-- name: get_step :one
-- Whether the lease ($2, held by $4) is current for job $1, and the stored result of step $3 if any.
SELECT (j.lease_token = $2 AND j.state = 'running' AND j.worker_id = $4) AS current, s.result, s.step_key IS NOT NULL AS found
FROM faultline_jobs j
LEFT JOIN faultline_steps s ON s.job_id = j.id AND s.step_key = $3
WHERE j.id = $1;

-- name: record_step :one
-- Store step $3's result for job $1 when lease $2 (held by $5) is current; the first write wins and the stored result is returned.
WITH fence AS (
    SELECT id FROM faultline_jobs
    WHERE id = $1 AND lease_token = $2 AND state = 'running' AND worker_id = $5
    FOR SHARE
),
ins AS (
    INSERT INTO faultline_steps (job_id, step_key, result, lease_token)
    SELECT id, $3, $4, $2 FROM fence
    ON CONFLICT (job_id, step_key) DO NOTHING
    RETURNING result
)
SELECT EXISTS (SELECT 1 FROM fence) AS current, (SELECT result FROM ins) AS inserted;

-- name: get_step_result :val
-- The stored result of one step (after a record_step lost the race).
SELECT result FROM faultline_steps WHERE job_id = $1 AND step_key = $2;

-- name: notify_ready :exec
-- Tell other coordinators' listeners that queues have ready jobs; $1 is "<sender id> <queue>,<queue>,..." (actors/peers.py).
SELECT pg_notify('faultline_ready', $1);

-- name: queue_depths :many
-- Jobs per (queue, state) for the non-finished states and the dead-letter queue; each state has a partial index.
SELECT queue, state::text AS state, count(*) AS depth
FROM faultline_jobs
WHERE state IN ('queued', 'running', 'scheduled', 'retrying', 'dead_lettered')
GROUP BY queue, state;

-- name: oldest_ready :many
-- Per queue, when the oldest ready job became ready.
SELECT queue, min(run_at) AS oldest_run_at, now() AS now
FROM faultline_jobs
WHERE state = 'queued'
GROUP BY queue;

-- name: leases_not_held :many
-- Of the leases ($1 job, $2 token) that sessions think worker $3[i] holds, those that are not the job's current running lease held by that worker (lease reconciler: one statement for every session).
SELECT t.id, t.token, t.holder
FROM unnest($1::bigint[], $2::bigint[], $3::text[]) AS t(id, token, holder)
LEFT JOIN faultline_jobs j ON j.id = t.id AND j.lease_token = t.token AND j.state = 'running'
    AND j.worker_id = t.holder
WHERE j.id IS NULL;

-- Maintenance queries: coordinator/actors/maintenance.py vacuums and analyzes the job tables itself, so that
-- claims stay fast whether or not the server's autovacuum runs. VACUUM and ANALYZE run on a connection of
-- their own (db/store.py MaintenanceSession), never in a transaction block.

-- name: maintenance_table_stats :many
-- Row counts that decide VACUUM and ANALYZE of the job tables, faultline_jobs first; planned_rows is the planner's reltuples (0 before the first analyze), and pg_stat counters trail writes by up to a second.
SELECT c.relname AS table_name,
       s.n_live_tup AS live_rows,
       s.n_dead_tup AS dead_rows,
       s.n_mod_since_analyze AS modified_rows,
       greatest(c.reltuples, 0)::bigint AS planned_rows
FROM pg_class c
JOIN pg_stat_user_tables s ON s.relid = c.oid
WHERE c.oid IN ('faultline_jobs'::regclass, 'faultline_attempts'::regclass)
ORDER BY c.oid = 'faultline_jobs'::regclass DESC;

-- name: maintenance_try_lock :val
-- Take the maintenance lock for this session unless another session holds it: one maintainer per database (7355608001 is the migration lock).
SELECT pg_try_advisory_lock(7355608002);

-- name: maintenance_unlock :exec
-- Release the maintenance lock (ending the session releases it too).
SELECT pg_advisory_unlock(7355608002);

-- name: vacuum_jobs :exec
-- Remove faultline_jobs' dead row versions and their index entries (which claim_jobs would otherwise skip), then refresh its planner statistics.
VACUUM (ANALYZE) faultline_jobs;

-- name: vacuum_attempts :exec
-- Remove faultline_attempts' dead row versions, then refresh its planner statistics.
VACUUM (ANALYZE) faultline_attempts;

-- name: analyze_jobs :exec
-- Refresh faultline_jobs' planner statistics (after a burst of inserts the planner would still think it empty).
ANALYZE faultline_jobs;

-- name: analyze_attempts :exec
-- Refresh faultline_attempts' planner statistics.
ANALYZE faultline_attempts;

-- Checker queries: read-only audits that coordinator/drills/checker.py runs after a failure drill.
-- They state the invariants of docs/invariants.md in SQL; each returns the rows that break one.

-- name: check_state_counts :many
-- Checker: jobs per state.
SELECT state::text AS state, count(*) AS n FROM faultline_jobs GROUP BY state;

-- name: check_kind_states :many
-- Checker: jobs per (kind, state), to compare with the final state each drill expects per kind.
SELECT kind, state::text AS state, count(*) AS n FROM faultline_jobs GROUP BY kind, state;

-- name: check_missing_jobs :many
-- Checker: job ids that producers were acknowledged with ($1) but that have no row (lost jobs).
SELECT t.id FROM unnest($1::bigint[]) AS t(id)
WHERE NOT EXISTS (SELECT 1 FROM faultline_jobs j WHERE j.id = t.id)
ORDER BY t.id LIMIT 50;

-- name: check_unacknowledged_jobs :many
-- Checker: jobs that no producer was acknowledged with ($1): a submit that was stored but whose retry made another job.
SELECT j.id, j.idempotency_key FROM faultline_jobs j
WHERE NOT EXISTS (SELECT 1 FROM unnest($1::bigint[]) AS t(id) WHERE t.id = j.id)
ORDER BY j.id LIMIT 50;

-- name: check_not_terminal :many
-- Checker: jobs not in a terminal state (succeeded, dead_lettered, cancelled).
SELECT id, kind, state::text AS state, attempts, worker_id, lease_expires_at FROM faultline_jobs
WHERE state NOT IN ('succeeded', 'dead_lettered', 'cancelled')
ORDER BY id LIMIT 50;

-- name: check_running_without_live_lease :many
-- Checker: running jobs with no holder, no lease, or a lease that expired more than $1 ms ago by Postgres' clock (the reaper's slack).
SELECT id, lease_token, worker_id, lease_expires_at FROM faultline_jobs
WHERE state = 'running'
  AND (worker_id IS NULL OR lease_expires_at IS NULL OR lease_expires_at < now() - $1 * interval '1 millisecond')
ORDER BY id LIMIT 50;

-- name: check_attempts_over_max :many
-- Checker: jobs that ran more attempts than they allow.
SELECT id, attempts, max_attempts FROM faultline_jobs WHERE attempts > max_attempts ORDER BY id LIMIT 50;

-- name: check_succeeded_completions :many
-- Checker: succeeded jobs without exactly one succeeded attempt under the job's current token, and other jobs with any.
SELECT j.id, j.state::text AS state, j.lease_token,
       count(a.job_id) FILTER (WHERE a.outcome = 'succeeded') AS accepted,
       max(a.lease_token) FILTER (WHERE a.outcome = 'succeeded') AS accepted_token
FROM faultline_jobs j
LEFT JOIN faultline_attempts a ON a.job_id = j.id
GROUP BY j.id
HAVING count(a.job_id) FILTER (WHERE a.outcome = 'succeeded') <> (CASE WHEN j.state = 'succeeded' THEN 1 ELSE 0 END)
    OR (j.state = 'succeeded' AND max(a.lease_token) FILTER (WHERE a.outcome = 'succeeded') <> j.lease_token)
ORDER BY j.id LIMIT 50;

-- name: check_attempt_history :many
-- Checker: jobs whose attempt rows disagree with the job row: row count vs attempts, numbering 1..n, tokens strictly increasing and never above the job's, one open attempt exactly when running.
WITH a AS (
    SELECT job_id, attempt, lease_token, outcome,
           lag(lease_token) OVER (PARTITION BY job_id ORDER BY attempt) AS prev_token,
           row_number() OVER (PARTITION BY job_id ORDER BY attempt) AS rn
    FROM faultline_attempts
),
per_job AS (
    SELECT job_id, count(*) AS n,
           bool_and(attempt = rn) AS numbered,
           bool_and(prev_token IS NULL OR lease_token > prev_token) AS increasing,
           max(lease_token) AS max_token,
           count(*) FILTER (WHERE outcome IS NULL) AS open
    FROM a GROUP BY job_id
)
SELECT j.id, j.state::text AS state, j.attempts, j.lease_token,
       COALESCE(p.n, 0) AS attempt_rows, COALESCE(p.numbered, true) AS numbered,
       COALESCE(p.increasing, true) AS increasing, p.max_token, COALESCE(p.open, 0) AS open_attempts
FROM faultline_jobs j
LEFT JOIN per_job p ON p.job_id = j.id
WHERE COALESCE(p.n, 0) <> j.attempts
   OR NOT COALESCE(p.numbered, true)
   OR NOT COALESCE(p.increasing, true)
   OR p.max_token > j.lease_token
   OR COALESCE(p.open, 0) <> (CASE WHEN j.state = 'running' THEN 1 ELSE 0 END)
ORDER BY j.id LIMIT 50;

-- name: check_attempt_outcomes :many
-- Checker: attempts per outcome (NULL while running), for the drill's figures.
SELECT COALESCE(outcome, 'open') AS outcome, count(*) AS n FROM faultline_attempts GROUP BY outcome;

-- name: check_results :many
-- Checker: id, current token and stored result of the succeeded jobs of the kinds in $1.
SELECT id, lease_token, result FROM faultline_jobs WHERE state = 'succeeded' AND kind = ANY($1::text[]);

-- name: check_held_by :many
-- Checker: the running leases (job, token) that worker $1 holds, as a drill records them before it kills the worker.
SELECT id, lease_token FROM faultline_jobs WHERE state = 'running' AND worker_id = $1;

-- name: check_attempts_of :many
-- Checker: every attempt of the jobs in $1, in order, to time how long recovery of a fault took.
SELECT job_id, attempt, lease_token, worker_id, started_at, finished_at, outcome
FROM faultline_attempts WHERE job_id = ANY($1::bigint[]) ORDER BY job_id, attempt;

-- === security: API keys and audit ===

-- name: api_key_insert :one
-- Store a new key (its hash, never the secret); a name already active fails on faultline_api_keys_active_name.
INSERT INTO faultline_api_keys (id, name, salt, secret_hash, scopes, queues, rate_per_s, burst)
VALUES ($1, $2, $3, $4, $5::text[], $6::text[], $7, $8)
RETURNING id, name, scopes, queues, rate_per_s, burst, created_at, revoked_at;

-- name: api_keys_active :many
-- Every key not revoked, as the key ring loads it every refresh interval.
SELECT id, name, salt, secret_hash, scopes, queues, rate_per_s, burst
FROM faultline_api_keys WHERE revoked_at IS NULL;

-- name: api_keys_list :many
-- Every key, revoked ones included, for `faultline keys ls` (no hash, no salt).
SELECT id, name, scopes, queues, rate_per_s, burst, created_at, revoked_at
FROM faultline_api_keys ORDER BY created_at, id;

-- name: api_key_revoke :many
-- Revoke the active key named $1; no row when there is none.
UPDATE faultline_api_keys SET revoked_at = now()
WHERE name = $1 AND revoked_at IS NULL
RETURNING id, name, revoked_at;

-- name: audit_cancelled :exec
-- Record who cancelled job $1.
UPDATE faultline_jobs SET cancelled_by = $2 WHERE id = $1;

-- name: audit_requeued :exec
-- Record who requeued job $1.
UPDATE faultline_jobs SET requeued_by = $2 WHERE id = $1;

-- name: audit_of :one
-- The audit columns of job $1, for `faultline jobs show` and GetJob.
SELECT submitted_by, cancelled_by, requeued_by FROM faultline_jobs WHERE id = $1;

-- name: audit_attempts :many
-- Every attempt of job $1: the holder that ran it, its fencing token, times, outcome and error (the first $2 characters), for GetJob's audit.
SELECT attempt, COALESCE(worker_id, '') AS worker_id, COALESCE(outcome, '') AS outcome, lease_token,
    started_at, finished_at, left(error, $2) AS error
FROM faultline_attempts WHERE job_id = $1 ORDER BY attempt;

-- === flow control ===
-- The grant policy. A queue with a faultline_queues row that limits something (`limited`: paused, a cap or a
-- rate) is granted only by claim_jobs_limited; claim_jobs and the hand-off in insert_jobs grant nothing
-- there, and all three require `required_labels <@ the worker's labels`. Every other queue costs the plain
-- claim one primary-key probe of this small table.
--
-- Why the limits hold across coordinators: claim_jobs_limited locks the queue's row (FOR UPDATE), so the
-- limited claims of one queue run one at a time, whichever coordinator sends them; the token bucket is read
-- from the locked, latest row version. The running jobs it counts come from the statement's snapshot,
-- which may predate a claim that committed while this one waited for the lock: every claim that leases
-- something bumps the row's claim_seq, and a claim whose snapshot shows an older claim_seq than the locked
-- row leases nothing and answers `stale` (the Store runs it again, now with a newer snapshot). A completion
-- that commits after the snapshot only makes the count high for one claim: the cap is never passed.

-- name: claim_jobs_limited :many
-- Lease up to $3 ready jobs of limited queue $1 (kinds $2, worker labels $6, slots $4) within its pause, max_running, per-key and token-bucket limits, under its row's lock; one row of verdict columns always, with the leased job's columns when any (job id NULL otherwise). Keys at their cap are skipped, not waited on: keys with ready jobs are walked round-robin from the row's key_cursor by a skip scan, each contributing only its room.
WITH RECURSIVE
locked_queue AS (
    SELECT q.* FROM faultline_queues q WHERE q.queue = $1 FOR UPDATE
),
seen AS (
    SELECT claim_seq FROM faultline_queues WHERE queue = $1
),
settings AS (
    SELECT q.paused, q.per_key_concurrency, q.max_running, q.rate_per_s, q.key_cursor, statement_timestamp() AS at,
        q.claim_seq <> s.claim_seq AS stale,
        CASE WHEN q.rate_per_s IS NOT NULL THEN
            LEAST(COALESCE(q.burst, GREATEST(1, ceil(q.rate_per_s / 10))),
                  q.tokens + q.rate_per_s * GREATEST(EXTRACT(EPOCH FROM statement_timestamp() - q.refilled_at), 0))
        END AS avail
    FROM locked_queue q, seen s
),
running AS (
    SELECT count(*) AS n FROM faultline_jobs WHERE state = 'running' AND queue = $1
),
room AS (
    SELECT CASE WHEN COALESCE(s.paused OR s.stale, false) THEN 0 ELSE
        GREATEST(LEAST($3::int, COALESCE(s.max_running - r.n, $3::int), COALESCE(floor(s.avail)::int, $3::int)), 0)
        END AS n,
        GREATEST(LEAST($3::int, COALESCE(s.max_running - r.n, $3::int)), 0) AS untimed
    FROM running r LEFT JOIN settings s ON true
),
busy AS (
    SELECT concurrency_key, count(*) AS n FROM faultline_jobs
    WHERE state = 'running' AND queue = $1 AND concurrency_key IS NOT NULL
    GROUP BY concurrency_key
),
keys_after AS (
    (SELECT concurrency_key AS k, 1 AS ord FROM faultline_jobs
     WHERE state = 'queued' AND queue = $1 AND concurrency_key > (SELECT COALESCE(key_cursor, '') FROM settings)
       AND (SELECT per_key_concurrency FROM settings) IS NOT NULL AND (SELECT n FROM room) > 0
     ORDER BY concurrency_key LIMIT 1)
    UNION ALL
    SELECT (SELECT j.concurrency_key FROM faultline_jobs j
            WHERE j.state = 'queued' AND j.queue = $1 AND j.concurrency_key > keys_after.k
            ORDER BY j.concurrency_key LIMIT 1), keys_after.ord + 1
    FROM keys_after WHERE keys_after.k IS NOT NULL
),
keys_before AS (
    (SELECT concurrency_key AS k, 1 AS ord FROM faultline_jobs
     WHERE state = 'queued' AND queue = $1 AND concurrency_key IS NOT NULL
       AND concurrency_key <= (SELECT key_cursor FROM settings)
       AND (SELECT per_key_concurrency FROM settings) IS NOT NULL AND (SELECT n FROM room) > 0
     ORDER BY concurrency_key LIMIT 1)
    UNION ALL
    SELECT (SELECT j.concurrency_key FROM faultline_jobs j
            WHERE j.state = 'queued' AND j.queue = $1 AND j.concurrency_key > keys_before.k
              AND j.concurrency_key <= (SELECT key_cursor FROM settings)
            ORDER BY j.concurrency_key LIMIT 1), keys_before.ord + 1
    FROM keys_before WHERE keys_before.k IS NOT NULL
),
keyed AS (
    -- Keys in rotation order from the cursor (a walk that stops once the claim's room is filled), each
    -- contributing its head jobs up to its own room under the per-key cap.
    SELECT c.id, c.priority, w.k, w.ord FROM (
        SELECT k, ord FROM keys_after WHERE k IS NOT NULL
        UNION ALL
        SELECT k, ord + 1000000000 FROM keys_before WHERE k IS NOT NULL
    ) w
    CROSS JOIN LATERAL (
        SELECT j.id, j.priority FROM faultline_jobs j
        WHERE j.state = 'queued' AND j.queue = $1 AND j.concurrency_key = w.k AND j.kind = ANY($2::text[])
          AND (j.required_labels IS NULL OR j.required_labels <@ $6::jsonb)
        ORDER BY j.priority DESC, j.id
        LIMIT LEAST(GREATEST((SELECT per_key_concurrency FROM settings)
                             - COALESCE((SELECT b.n FROM busy b WHERE b.concurrency_key = w.k), 0), 0),
                    (SELECT n FROM room))
    ) c
    LIMIT (SELECT n FROM room)
),
keyless AS (
    SELECT j.id, j.priority FROM faultline_jobs j
    WHERE j.state = 'queued' AND j.queue = $1 AND j.concurrency_key IS NULL AND j.kind = ANY($2::text[])
      AND (j.required_labels IS NULL OR j.required_labels <@ $6::jsonb)
      AND (SELECT per_key_concurrency FROM settings) IS NOT NULL
    ORDER BY j.priority DESC, j.id
    LIMIT (SELECT n FROM room)
),
plain AS (
    SELECT j.id, j.priority FROM faultline_jobs j
    WHERE j.state = 'queued' AND j.queue = $1 AND j.kind = ANY($2::text[])
      AND (j.required_labels IS NULL OR j.required_labels <@ $6::jsonb)
      AND (SELECT per_key_concurrency FROM settings) IS NULL
    ORDER BY j.priority DESC, j.id
    LIMIT (SELECT n FROM room)
),
picked AS (
    SELECT id, priority FROM (
        SELECT id, priority FROM keyed UNION ALL SELECT id, priority FROM keyless
        UNION ALL SELECT id, priority FROM plain
    ) u
    ORDER BY priority DESC, id
    LIMIT (SELECT n FROM room)
),
locked AS (
    -- By primary key (= ANY of an array): the planner cannot know how few rows picked holds, and a join
    -- on it was planned as a hash join over every row of faultline_jobs.
    SELECT j.id FROM faultline_jobs j
    WHERE j.id = ANY (ARRAY(SELECT id FROM picked)) AND j.state = 'queued'
    FOR UPDATE OF j SKIP LOCKED
),
slotted AS (
    SELECT l.id, row_number() OVER (ORDER BY p.priority DESC, l.id) AS slot
    FROM locked l JOIN picked p ON p.id = l.id
),
leased AS (
    UPDATE faultline_jobs j SET
        state = 'running',
        attempts = j.attempts + 1,
        lease_token = j.lease_token + 1,
        worker_id = ($4::text[])[s.slot],
        started_at = now(),
        lease_expires_at = now() + COALESCE(j.heartbeat_timeout_ms, $5) * interval '1 millisecond',
        attempt_deadline = now() + j.execution_timeout_ms * interval '1 millisecond',
        start_deadline = NULL,
        cancel_requested = false,
        progress_fraction = NULL,
        progress_message = NULL,
        progress_details = NULL,
        gated = true,
        updated_at = now()
    FROM slotted s
    WHERE j.id = s.id AND j.id = ANY (ARRAY(SELECT id FROM slotted))
    RETURNING j.id, j.queue, j.kind, j.priority, j.payload, j.result, j.last_error, j.attempts, j.max_attempts,
        j.idempotency_key, j.labels, j.backoff_initial_ms, j.backoff_max_ms, j.backoff_multiplier,
        j.backoff_jitter, j.execution_timeout_ms, j.heartbeat_timeout_ms, j.schedule_to_start_ms,
        j.trace_context, j.lease_token, j.worker_id, j.lease_expires_at, j.created_at, j.run_at,
        j.started_at, j.updated_at, j.concurrency_key, j.required_labels, s.slot
),
opened AS (
    INSERT INTO faultline_attempts (job_id, attempt, lease_token, worker_id, started_at)
    SELECT id, attempts, lease_token, worker_id, started_at FROM leased
),
granted AS (
    SELECT count(*)::int AS n FROM leased
),
spent AS (
    UPDATE faultline_queues q SET
        claim_seq = q.claim_seq + 1,
        key_cursor = COALESCE((SELECT kd.k FROM keyed kd JOIN leased l ON l.id = kd.id ORDER BY kd.ord DESC LIMIT 1),
                              q.key_cursor),
        tokens = CASE WHEN s.avail IS NOT NULL THEN s.avail - g.n ELSE q.tokens END,
        refilled_at = CASE WHEN s.avail IS NOT NULL THEN s.at ELSE q.refilled_at END
    FROM settings s, granted g
    WHERE q.queue = $1 AND g.n > 0
),
verdict AS (
    SELECT COALESCE(s.paused, false) AS paused, COALESCE(s.stale, false) AS stale,
        -- Cut short by the bucket (not by the backlog, a cap or the slots): when the next token is due.
        (s.avail IS NOT NULL AND NOT s.paused AND NOT s.stale AND g.n = r.n AND r.n < r.untimed) AS throttled,
        CASE WHEN s.avail IS NOT NULL AND NOT s.paused AND NOT s.stale AND g.n = r.n AND r.n < r.untimed
             THEN ceil((1 - (s.avail - g.n)) / s.rate_per_s * 1000)::bigint END AS refill_ms
    FROM granted g, room r LEFT JOIN settings s ON true
)
SELECT v.paused, v.stale, v.throttled, v.refill_ms, l.* FROM verdict v LEFT JOIN leased l ON true;

-- name: queue_settings_all :many
-- Every queue's settings row (a small table: one row per queue that was ever paused or limited).
SELECT queue, paused, per_key_concurrency, max_running, rate_per_s, burst FROM faultline_queues ORDER BY queue;

-- name: pause_queue :one
-- Pause queue $1 ($2 true) or resume it ($2 false), creating its settings row when missing.
INSERT INTO faultline_queues AS q (queue, paused) VALUES ($1, $2)
ON CONFLICT (queue) DO UPDATE SET paused = EXCLUDED.paused, updated_at = now()
RETURNING queue, paused, per_key_concurrency, max_running, rate_per_s, burst;

-- name: set_queue_settings :one
-- Change queue $1's limits: each of per-key concurrency ($3), max running ($5), rate ($7) and burst ($9) only when its flag ($2, $4, $6, $8) is set; NULL clears. A new rate or burst starts with a full bucket.
INSERT INTO faultline_queues AS q (queue, per_key_concurrency, max_running, rate_per_s, burst, tokens, refilled_at)
VALUES ($1, CASE WHEN $2::bool THEN $3::int END, CASE WHEN $4::bool THEN $5::int END,
        CASE WHEN $6::bool THEN $7::float8 END, CASE WHEN $8::bool THEN $9::int END,
        COALESCE(CASE WHEN $8::bool THEN $9::int END, GREATEST(1, ceil(COALESCE(CASE WHEN $6::bool THEN $7::float8 END, 0) / 10))),
        now())
ON CONFLICT (queue) DO UPDATE SET
    per_key_concurrency = CASE WHEN $2::bool THEN EXCLUDED.per_key_concurrency ELSE q.per_key_concurrency END,
    max_running = CASE WHEN $4::bool THEN EXCLUDED.max_running ELSE q.max_running END,
    rate_per_s = CASE WHEN $6::bool THEN EXCLUDED.rate_per_s ELSE q.rate_per_s END,
    burst = CASE WHEN $8::bool THEN EXCLUDED.burst WHEN $6::bool AND EXCLUDED.rate_per_s IS NULL THEN NULL ELSE q.burst END,
    tokens = CASE WHEN $6::bool OR $8::bool THEN
        COALESCE(CASE WHEN $8::bool THEN EXCLUDED.burst ELSE q.burst END,
                 GREATEST(1, ceil(COALESCE(CASE WHEN $6::bool THEN EXCLUDED.rate_per_s ELSE q.rate_per_s END, 0) / 10)))
        ELSE q.tokens END,
    refilled_at = CASE WHEN $6::bool OR $8::bool THEN now() ELSE q.refilled_at END,
    updated_at = now()
RETURNING queue, paused, per_key_concurrency, max_running, rate_per_s, burst;

-- name: queue_flow_waiting :many
-- Per queue, ready jobs that wait on flow control: held back by a concurrency key at its cap (counted through the keys at their cap only, found from the running jobs), and requiring worker labels (a partial index holds only those).
WITH capped AS (
    SELECT r.queue, r.concurrency_key FROM faultline_jobs r
    JOIN faultline_queues s ON s.queue = r.queue AND s.per_key_concurrency IS NOT NULL
    WHERE r.state = 'running' AND r.concurrency_key IS NOT NULL
    GROUP BY r.queue, r.concurrency_key, s.per_key_concurrency
    HAVING count(*) >= s.per_key_concurrency
),
on_key AS (
    SELECT c.queue, count(*) AS n FROM capped c
    JOIN faultline_jobs j ON j.state = 'queued' AND j.queue = c.queue AND j.concurrency_key = c.concurrency_key
    GROUP BY c.queue
),
on_labels AS (
    SELECT queue, count(*) AS n FROM faultline_jobs
    WHERE state = 'queued' AND required_labels IS NOT NULL
    GROUP BY queue
)
SELECT COALESCE(k.queue, l.queue) AS queue, COALESCE(l.n, 0) AS requiring_labels, COALESCE(k.n, 0) AS waiting_on_key
FROM on_key k FULL JOIN on_labels l ON l.queue = k.queue;

-- === time: watches, schedules, retention, dedup windows (coordinator/watch.py, coordinator/schedules.py,
-- coordinator/actors/scheduler.py, coordinator/actors/pruner.py) ===

-- name: watch_jobs :many
-- The watched jobs $1 as they are now (view BASIC: no payload, result or progress details); one statement per poll for every watcher of this coordinator.
SELECT id, queue, kind, state, priority, ''::bytea AS payload, NULL::bytea AS result, last_error, attempts,
    max_attempts, idempotency_key, labels, backoff_initial_ms, backoff_max_ms, backoff_multiplier,
    backoff_jitter, execution_timeout_ms, heartbeat_timeout_ms, schedule_to_start_ms, trace_context,
    lease_token, worker_id, lease_expires_at, cancel_requested, progress_fraction, progress_message,
    NULL::bytea AS progress_details, created_at, run_at, started_at, finished_at, updated_at
FROM faultline_jobs WHERE id = ANY($1::bigint[]);

-- name: db_now :val
-- Postgres' clock: schedules compute their ticks against it, never against a coordinator's own.
SELECT now();

-- name: insert_schedule :one
-- Store a new schedule with its first tick $13; NULL when the name is taken.
INSERT INTO faultline_schedules (name, cron, time_zone, every_ms, kind, queue, payload, priority, max_attempts,
    labels, catchup, overlap, next_run_at, created_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
ON CONFLICT (name) DO NOTHING
RETURNING *;

-- name: list_schedules :many
-- Every schedule, by name.
SELECT * FROM faultline_schedules ORDER BY name;

-- name: get_schedule :one
-- One schedule by name.
SELECT * FROM faultline_schedules WHERE name = $1;

-- name: pause_schedule :one
-- Pause a schedule: no next tick until resumed.
UPDATE faultline_schedules SET paused = true, next_run_at = NULL, updated_at = now()
WHERE name = $1
RETURNING *;

-- name: resume_schedule :one
-- Resume a paused schedule with next tick $2; a schedule that is not paused is returned unchanged.
UPDATE faultline_schedules SET
    paused = false,
    next_run_at = CASE WHEN paused THEN $2 ELSE next_run_at END,
    updated_at = now()
WHERE name = $1
RETURNING *;

-- name: delete_schedule :val
-- Remove a schedule; its id, NULL when there was none.
DELETE FROM faultline_schedules WHERE name = $1 RETURNING id;

-- name: record_schedule_run :one
-- Note that schedule $1 submitted job $2 for tick $3 outside its ticks (TriggerSchedule); the next tick is unchanged.
UPDATE faultline_schedules SET last_run_at = $3, last_job_id = $2, fired = fired + 1, updated_at = now()
WHERE id = $1
RETURNING *;

-- name: claim_due_schedules :many
-- In the scheduler's transaction: lock up to $1 due schedules that no other coordinator holds, with Postgres' clock and the state of each one's last job (NULL when none or pruned).
SELECT s.*, now() AS db_now, j.state::text AS last_job_state
FROM faultline_schedules s
LEFT JOIN faultline_jobs j ON j.id = s.last_job_id
WHERE s.next_run_at <= now()
ORDER BY s.next_run_at
LIMIT $1
FOR UPDATE OF s SKIP LOCKED;

-- name: advance_schedule :one
-- In the scheduler's transaction: move schedule $1 from tick $2 to tick $3, recording the job it fired ($4 at tick $5, or NULL) and the ticks it skipped ($6); fenced on the tick it was claimed at.
UPDATE faultline_schedules SET
    next_run_at = $3,
    last_run_at = COALESCE($5, last_run_at),
    last_job_id = COALESCE($4, last_job_id),
    fired = fired + (CASE WHEN $4::bigint IS NULL THEN 0 ELSE 1 END),
    skipped = skipped + $6,
    updated_at = now()
WHERE id = $1 AND next_run_at = $2 AND NOT paused
RETURNING id;

-- name: next_schedule_due_in :val
-- Seconds until the earliest schedule tick, by Postgres' clock (NULL when none).
SELECT EXTRACT(EPOCH FROM min(next_run_at) - now())::float8 FROM faultline_schedules WHERE next_run_at IS NOT NULL;

-- name: prune_finished :one
-- Delete up to $3 jobs in finished state $1 older than $2 ms (keyed jobs: older than $4 ms, never when NULL), attempts and steps with them (ON DELETE CASCADE), when this transaction gets the pruner's lock (7355608003): one coordinator prunes at a time.
WITH got AS MATERIALIZED (
    SELECT pg_try_advisory_xact_lock(7355608003) AS locked
),
doomed AS (
    SELECT j.id FROM faultline_jobs j
    WHERE (SELECT locked FROM got)
      AND j.state = $1::faultline_job_state
      AND j.finished_at < now() - $2 * interval '1 millisecond'
      AND (j.idempotency_key IS NULL
           OR ($4::bigint IS NOT NULL AND j.finished_at < now() - $4 * interval '1 millisecond'))
    ORDER BY j.finished_at
    LIMIT $3
    FOR UPDATE SKIP LOCKED
),
gone AS (
    DELETE FROM faultline_jobs j USING doomed d WHERE j.id = d.id RETURNING j.id
)
SELECT (SELECT locked FROM got) AS locked, (SELECT count(*) FROM gone) AS deleted;

-- name: release_dedup_keys :many
-- Before an insert: free the (queue $1[i], key $2[i]) pairs whose job's dedup window is over (past dedup_until, or finished with dedup_unfinished), so the insert stores a new job; the key moves to released_idempotency_key.
UPDATE faultline_jobs j SET
    released_idempotency_key = j.idempotency_key,
    idempotency_key = NULL,
    updated_at = now()
FROM unnest($1::text[], $2::text[]) AS t(queue, idempotency_key)
WHERE j.queue = t.queue AND j.idempotency_key = t.idempotency_key
  AND ((j.dedup_until IS NOT NULL AND j.dedup_until <= now())
       OR (j.dedup_unfinished AND j.state IN ('succeeded', 'dead_lettered', 'cancelled')))
RETURNING j.id;

-- === Bench only (scripts/console_bench.py): never called by the coordinator or the console ===

-- name: bench_fill_jobs :val
-- BENCH ONLY: insert $2 synthetic jobs numbered from $1 over $3 queues (mostly finished, some queued, dead-lettered, cancelled, scheduled, retrying; labels tenant=tN; every 1000th with an idempotency key); returns the rows inserted.
WITH ins AS (
    INSERT INTO faultline_jobs (queue, kind, state, payload, result, last_error, attempts, max_attempts,
                                idempotency_key, labels, created_at, run_at, started_at, finished_at, updated_at)
    SELECT 'bench-q' || (g % $3), 'bench.kind' || (g % 7), s.state, convert_to('{"n": ' || g || '}', 'UTF8'),
           CASE WHEN s.state = 'succeeded' THEN '\x6f6b'::bytea END,
           CASE WHEN s.state IN ('dead_lettered', 'retrying') THEN 'bench failure ' || g END,
           CASE WHEN s.state IN ('queued', 'scheduled') THEN 0 WHEN s.state = 'dead_lettered' THEN 3 ELSE 1 END, 3,
           CASE WHEN g % 1000 = 0 THEN 'bench-key-' || g END,
           jsonb_build_object('tenant', 't' || (g % 50)),
           now() - (($1 + $2 - g) * interval '1 millisecond'),
           CASE WHEN s.state = 'scheduled' THEN now() + interval '1 day' ELSE now() END,
           CASE WHEN s.state IN ('queued', 'scheduled') THEN NULL ELSE now() END,
           CASE WHEN s.state IN ('succeeded', 'dead_lettered', 'cancelled') THEN now() END,
           now()
    FROM generate_series($1::bigint, $1::bigint + $2::bigint - 1) AS g,
         LATERAL (SELECT (CASE WHEN g % 100 < 75 THEN 'succeeded' WHEN g % 100 < 88 THEN 'queued'
                               WHEN g % 100 < 94 THEN 'dead_lettered' WHEN g % 100 < 97 THEN 'cancelled'
                               WHEN g % 100 < 99 THEN 'scheduled' ELSE 'retrying' END)::faultline_job_state AS state) s
    RETURNING 1
)
SELECT count(*) FROM ins;

-- name: bench_analyze_jobs :exec
-- BENCH ONLY: refresh the planner's statistics after the fill, as autovacuum would a while later.
ANALYZE faultline_jobs;
