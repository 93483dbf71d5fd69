-- Requests counted per account and UTC day by instances without Redis, so that daily caps
-- survive restarts. Instances add their deltas every few seconds.
CREATE TABLE usage_daily (
    account  text NOT NULL REFERENCES accounts (slug) ON DELETE CASCADE,
    day      date NOT NULL,
    requests bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (account, day)
);

-- Limit overrides changed: every instance drops its cached limits (payload `limits:<slug>`).
CREATE FUNCTION kataven_notify_limits() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('kataven_catalog', 'limits:' || CASE WHEN TG_OP = 'DELETE' THEN OLD.account ELSE NEW.account END);
    RETURN NULL;
END
$$;

CREATE TRIGGER account_limits_notify AFTER INSERT OR UPDATE OR DELETE ON account_limits
    FOR EACH ROW EXECUTE FUNCTION kataven_notify_limits();
