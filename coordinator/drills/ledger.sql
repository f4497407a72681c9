-- The drills' effects ledger: a stand-in for the user's downstream system, which drill handlers
-- write directly (asyncpg, from the worker process), fenced by the lease's fencing token.
-- Reviewed like coordinator/db/queries.sql and in the same format:
-- `-- name: <name> :<one|many|exec|val>`, a purpose line, then the statement.
--
-- The downstream keeps, per job, the highest fencing token it has seen (the fence, as in
-- Kleppmann's fencing tokens) and whether the job's effect has been applied. A write with a token
-- below the fence is refused as stale; a write for a job whose effect exists is "already
-- applied" (idempotent by job id). Every write that was asked for is logged, so the checker can
-- count applications independently of the dedupe that is supposed to prevent doubles.

-- name: ledger_schema :exec
-- Create the ledger tables and its fenced apply function (idempotent).
CREATE TABLE IF NOT EXISTS drill_effects (
    job_id          bigint PRIMARY KEY,
    fence_token     bigint NOT NULL,
    applied_token   bigint,
    applied_by      text,
    applied_at      timestamptz
);
CREATE TABLE IF NOT EXISTS drill_effect_log (
    id              bigserial PRIMARY KEY,
    job_id          bigint NOT NULL,
    token           bigint NOT NULL,
    worker_id       text NOT NULL,
    -- applied | already_applied | stale
    verdict         text NOT NULL,
    at              timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS drill_effect_log_job ON drill_effect_log (job_id);
CREATE OR REPLACE FUNCTION drill_apply(p_job bigint, p_token bigint, p_worker text, p_apply boolean)
RETURNS TABLE (verdict text, applied_token bigint)
LANGUAGE plpgsql AS $$
DECLARE
    r drill_effects%ROWTYPE;
    v text;
BEGIN
    INSERT INTO drill_effects (job_id, fence_token) VALUES (p_job, p_token) ON CONFLICT (job_id) DO NOTHING;
    -- The row lock serialises every writer of this job; each statement sees the latest commit.
    SELECT * INTO r FROM drill_effects e WHERE e.job_id = p_job FOR UPDATE;
    IF r.fence_token > p_token THEN
        v := 'stale';
    ELSIF NOT p_apply THEN
        v := 'registered';
    ELSIF r.applied_token IS NOT NULL THEN
        v := 'already_applied';
    ELSE
        v := 'applied';
    END IF;
    IF v <> 'stale' THEN
        UPDATE drill_effects e SET
            fence_token = p_token,
            applied_token = CASE WHEN v = 'applied' THEN p_token ELSE e.applied_token END,
            applied_by = CASE WHEN v = 'applied' THEN p_worker ELSE e.applied_by END,
            applied_at = CASE WHEN v = 'applied' THEN clock_timestamp() ELSE e.applied_at END
        WHERE e.job_id = p_job
        RETURNING e.applied_token INTO r.applied_token;
    END IF;
    IF v <> 'registered' THEN
        INSERT INTO drill_effect_log (job_id, token, worker_id, verdict) VALUES (p_job, p_token, p_worker, v);
    END IF;
    RETURN QUERY SELECT v, r.applied_token;
END;
$$;

-- name: ledger_register :one
-- Raise the job's fence to this attempt's token when it starts (refused as stale if a newer attempt registered).
SELECT verdict, applied_token FROM drill_apply($1, $2, $3, false);

-- name: ledger_apply :one
-- Apply the job's effect under token $2 unless it is applied already or a newer token was seen.
SELECT verdict, applied_token FROM drill_apply($1, $2, $3, true);

-- name: ledger_verdicts :many
-- Checker: how many writes the ledger accepted, found already applied, or refused as stale.
SELECT verdict, count(*) AS n FROM drill_effect_log GROUP BY verdict;

-- name: ledger_double_applied :many
-- Checker: jobs whose effect was applied more than once (the duplicate effects the drills hunt).
SELECT job_id, count(*) AS applications, array_agg(token ORDER BY id) AS tokens, array_agg(worker_id ORDER BY id) AS workers
FROM drill_effect_log WHERE verdict = 'applied'
GROUP BY job_id HAVING count(*) > 1
ORDER BY job_id LIMIT 50;

-- name: ledger_missing_effects :many
-- Checker: succeeded jobs of the kinds in $1 whose effect was never applied (a success without its effect).
SELECT j.id, j.kind FROM faultline_jobs j
LEFT JOIN drill_effects e ON e.job_id = j.id
WHERE j.state = 'succeeded' AND j.kind = ANY($1::text[]) AND e.applied_token IS NULL
ORDER BY j.id LIMIT 50;

-- name: ledger_foreign_effects :many
-- Checker: applied effects whose token was never granted for that job (no attempt row), or whose job does not exist.
SELECT e.job_id, e.applied_token FROM drill_effects e
LEFT JOIN faultline_attempts a ON a.job_id = e.job_id AND a.lease_token = e.applied_token
WHERE e.applied_token IS NOT NULL AND a.job_id IS NULL
ORDER BY e.job_id LIMIT 50;
