-- An idempotency key is scoped to its queue: the same key in two queues names two jobs.
--
-- Until now the unique index was on the key alone, so a key first used in one queue made a Submit to
-- another queue answer with the first queue's job and store nothing. Every existing pair is already
-- unique (the old index was stricter), so the new index builds without conflicts. Forward-only.

CREATE UNIQUE INDEX faultline_jobs_queue_idempotency_key ON faultline_jobs (queue, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

DROP INDEX faultline_jobs_idempotency_key;
