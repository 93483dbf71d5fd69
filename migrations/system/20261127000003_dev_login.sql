-- Users of the built-in dev login (`kataven-hub dev`, KATAVEN_DEV_LOGIN=true). Never used in
-- production mode.
CREATE TABLE dev_users (
    account       text NOT NULL REFERENCES accounts (slug) ON DELETE CASCADE,
    email         text NOT NULL,
    subject       text NOT NULL UNIQUE,
    -- argon2id PHC string.
    password_hash text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account, email)
);

-- Keys the service signs with: the dev issuer's ID tokens (and later widget session tokens).
CREATE TABLE signing_keys (
    kid         text PRIMARY KEY,
    purpose     text NOT NULL CHECK (purpose IN ('dev_issuer', 'widget_session')),
    algorithm   text NOT NULL CHECK (algorithm = 'ES256'),
    private_pem text NOT NULL,
    public_jwk  jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    retired_at  timestamptz
);
