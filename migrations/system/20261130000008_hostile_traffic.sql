-- API keys made from now on carry a server-keyed tag (see src/auth/keys.rs); the rows made
-- before are untagged. While any usable untagged key exists, an untagged key is looked up;
-- once none does, a key without a valid tag is refused without a query.
ALTER TABLE api_keys ADD COLUMN tagged boolean NOT NULL DEFAULT false;

-- A key counts as used from its first verification on any instance, recorded in the same
-- statement that reads it, so that every instance agrees whether DELETE may remove it
-- (`last_used_at` is written in batches and lags by seconds).
ALTER TABLE api_keys ADD COLUMN first_used_at timestamptz;
ALTER TABLE widget_keys ADD COLUMN first_used_at timestamptz;
UPDATE api_keys SET first_used_at = last_used_at WHERE last_used_at IS NOT NULL;
UPDATE widget_keys SET first_used_at = last_used_at WHERE last_used_at IS NOT NULL;

-- Each widget session token may be refreshed once: its `jti` is recorded here until the
-- token could no longer be refreshed anyway (expiry plus the refresh grace).
CREATE TABLE widget_refreshes (
    jti        uuid PRIMARY KEY,
    expires_at timestamptz NOT NULL
);
CREATE INDEX widget_refreshes_expiry ON widget_refreshes (expires_at);

-- User tokens waiting to be exchanged are capped per account.
CREATE INDEX widget_user_tokens_pending ON widget_user_tokens (account, expires_at)
    WHERE consumed_at IS NULL;
