-- Retention and per-client limits.
--
-- A final job no longer needs its document: `done` drops it at once, `failed`
-- once it is out of the DLQ replay window (the janitor), so the payload
-- becomes nullable. Final job rows are deleted after the job retention.
ALTER TABLE jobs ALTER COLUMN payload DROP NOT NULL;

-- The janitor's scans: final jobs by age (row deletion), and failed jobs
-- still holding their document (payload drop after the replay window).
CREATE INDEX jobs_final ON jobs (finished_at) WHERE status IN ('done', 'failed');
CREATE INDEX jobs_failed_payload ON jobs (finished_at)
    WHERE status = 'failed' AND payload IS NOT NULL;
-- A client's jobs not yet final, counted (bounded) at most once a second per
-- API replica for the `too_many_jobs` cap.
CREATE INDEX jobs_unfinished ON jobs (client_id) WHERE status IN ('queued', 'processing');

-- Per-client overrides of the configured limits (NULL: the configured default),
-- set with `artefatos keys limits`.
ALTER TABLE clients ADD COLUMN rate_limit integer CHECK (rate_limit > 0);
ALTER TABLE clients ADD COLUMN max_unfinished_jobs integer CHECK (max_unfinished_jobs > 0);
