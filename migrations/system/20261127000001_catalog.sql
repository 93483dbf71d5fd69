-- The catalog: where accounts meet. Tenant databases never hold account columns.
CREATE TABLE accounts (
    slug            text PRIMARY KEY CHECK (slug ~ '^[a-z0-9][a-z0-9_-]{0,62}$'),
    display_name    text NOT NULL,
    status          text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended')),
    -- The tenant database, on `database_server` (NULL: the system database's server).
    database_name   text NOT NULL,
    database_server text,
    oidc_org_id     text,
    -- Newest tenant migration applied to the tenant database.
    schema_version  bigint NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE account_members (
    account    text NOT NULL REFERENCES accounts (slug) ON DELETE CASCADE,
    subject    text NOT NULL CHECK (subject <> ''),
    role       text NOT NULL CHECK (role IN ('member', 'admin')),
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account, subject)
);

CREATE INDEX account_members_subject ON account_members (subject);
