-- Job control: cancellation, metadata and the per-client job list.
--
-- `canceled` is a final status like `done` and `failed`. A cancel of a
-- `processing` job is only recorded (`cancel_requested_at`): its worker stops
-- at its next checkpoint and moves the job to `canceled` itself, and the
-- `done` commit refuses a job whose cancel was requested.
ALTER TABLE jobs DROP CONSTRAINT jobs_status_check;
ALTER TABLE jobs ADD CONSTRAINT jobs_status_check
    CHECK (status IN ('queued', 'processing', 'done', 'failed', 'canceled'));
ALTER TABLE jobs ADD COLUMN cancel_requested_at timestamptz;

-- The client's own labels (at most 20 string values), shown with the job.
ALTER TABLE jobs ADD COLUMN metadata jsonb;

-- `GET /jobs`: a client's jobs newest first, keyset-paginated on (created_at, id).
CREATE INDEX jobs_by_client ON jobs (client_id, created_at DESC, id DESC);

-- Retention deletes canceled jobs like the other final ones.
DROP INDEX jobs_final;
CREATE INDEX jobs_final ON jobs (finished_at) WHERE status IN ('done', 'failed', 'canceled');
