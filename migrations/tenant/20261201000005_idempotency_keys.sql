-- Idempotency-Key: the stored answer of a write made with a key, committed in the same
-- transaction as the write (see src/idempotency.rs). `owner` is the caller (`user:<sub>`,
-- `api_key:<id>`); the answer is replayed to that caller only, for the same request
-- (`fingerprint`: SHA-256 of method, path and body), until `expires_at`.
CREATE TABLE idempotency_keys (
    owner       text        NOT NULL,
    key         text        NOT NULL,
    fingerprint bytea       NOT NULL,
    status      smallint    NOT NULL,
    headers     jsonb       NOT NULL DEFAULT '[]',
    body        bytea       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    PRIMARY KEY (owner, key)
);
CREATE INDEX idempotency_keys_expires_at ON idempotency_keys (expires_at);
