-- API keys (`sk_live_…`) and widget keys (`pk_live_…`) of accounts, stored as
-- HMAC-SHA256(pepper, key): the plaintext is shown once at creation and never stored.
CREATE TABLE api_keys (
    id           uuid PRIMARY KEY,
    account      text NOT NULL REFERENCES accounts (slug) ON DELETE CASCADE,
    name         text NOT NULL,
    key_hash     bytea NOT NULL UNIQUE,
    last8        text NOT NULL,
    expires_at   timestamptz,
    disabled_at  timestamptz,
    last_used_at timestamptz,
    created_by   text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX api_keys_account ON api_keys (account, created_at DESC);

CREATE TABLE widget_keys (
    id               uuid PRIMARY KEY,
    account          text NOT NULL REFERENCES accounts (slug) ON DELETE CASCADE,
    name             text NOT NULL,
    key_hash         bytea NOT NULL UNIQUE,
    last8            text NOT NULL,
    domain_allowlist text[] NOT NULL DEFAULT '{}',
    -- Pins the key to one agent of the account's database (not a foreign key: another database).
    agent_id         uuid,
    disabled_at      timestamptz,
    last_used_at     timestamptz,
    created_by       text NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX widget_keys_account ON widget_keys (account, created_at DESC);

-- Single-use user tokens minted server-to-server for the widget's signed-in users.
CREATE TABLE widget_user_tokens (
    token_hash       bytea PRIMARY KEY,
    account          text NOT NULL REFERENCES accounts (slug) ON DELETE CASCADE,
    external_user_id text NOT NULL,
    display_name     text,
    email            text,
    agent_id         uuid,
    expires_at       timestamptz NOT NULL,
    consumed_at      timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX widget_user_tokens_expiry ON widget_user_tokens (expires_at);

-- Key changes reach every instance at once (payloads `apikey:<hash hex>`, `widgetkey:<hash hex>`).
CREATE FUNCTION kataven_notify_keys() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    kind text := CASE WHEN TG_TABLE_NAME = 'api_keys' THEN 'apikey:' ELSE 'widgetkey:' END;
    hash bytea := CASE WHEN TG_OP = 'DELETE' THEN OLD.key_hash ELSE NEW.key_hash END;
BEGIN
    PERFORM pg_notify('kataven_catalog', kind || encode(hash, 'hex'));
    RETURN NULL;
END
$$;

-- `last_used_at` updates do not change what a key may do: no notification for them.
CREATE TRIGGER api_keys_notify AFTER INSERT OR DELETE OR UPDATE OF name, expires_at, disabled_at, account
    ON api_keys FOR EACH ROW EXECUTE FUNCTION kataven_notify_keys();
CREATE TRIGGER widget_keys_notify AFTER INSERT OR DELETE OR UPDATE OF domain_allowlist, agent_id, disabled_at, account
    ON widget_keys FOR EACH ROW EXECUTE FUNCTION kataven_notify_keys();
