-- Clients, their API keys, and jobs. The jobs row is the source of truth for a
-- job and doubles as the transactional outbox (published_at).

CREATE TABLE clients (
    id          uuid PRIMARY KEY,
    name        text NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Keys are 256-bit random secrets, so a fast SHA-256 is enough to store them:
-- there is nothing to brute-force that a slow hash would protect.
CREATE TABLE api_keys (
    id          uuid PRIMARY KEY,
    client_id   uuid NOT NULL REFERENCES clients (id),
    key_hash    bytea NOT NULL UNIQUE,
    prefix      text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);

CREATE TABLE jobs (
    id                  uuid PRIMARY KEY,
    client_id           uuid NOT NULL REFERENCES clients (id),
    idempotency_key     text NOT NULL,
    -- SHA-256 of the canonical request without the key: same key + other body = 422.
    fingerprint         bytea NOT NULL,
    format              text NOT NULL CHECK (format IN ('xlsx', 'pdf')),
    filename            text NOT NULL,
    payload             json NOT NULL,
    status              text NOT NULL DEFAULT 'queued'
                        CHECK (status IN ('queued', 'processing', 'done', 'failed')),
    attempts            integer NOT NULL DEFAULT 0,
    error               text,
    error_code          text,
    lease_owner         text,
    lease_until         timestamptz,
    artifact_key        text,
    artifact_size       bigint,
    artifact_sha256     text,
    artifact_deleted_at timestamptz,
    published_at        timestamptz,
    created_at          timestamptz NOT NULL DEFAULT now(),
    started_at          timestamptz,
    finished_at         timestamptz,
    updated_at          timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT jobs_client_key UNIQUE (client_id, idempotency_key)
);

-- The relay's scan: committed jobs whose publish RabbitMQ has not confirmed.
CREATE INDEX jobs_unpublished ON jobs (created_at) WHERE published_at IS NULL;
-- The janitor's scan: artifacts still stored, oldest first.
CREATE INDEX jobs_artifacts ON jobs (finished_at)
    WHERE status = 'done' AND artifact_deleted_at IS NULL;
