-- Idempotency-Key for writes to the catalog (members, API keys, widget keys): the same table as
-- in every tenant database (see src/idempotency.rs), `owner` prefixed with the account
-- (`<slug> user:<sub>`), since the catalog is shared by every account.
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
