-- Every change to accounts or members is announced on `kataven_catalog`, so that every
-- instance drops its cached decisions at once. Payloads:
--   `accounts:<slug>`  the account row changed (status, name, org, schema version)
--   `placement:<slug>` the account was deleted or its database moved: tenant pools are dropped
--   `members:<slug>`   a member row of the account changed
CREATE FUNCTION kataven_notify_catalog() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_TABLE_NAME = 'accounts' THEN
        IF TG_OP = 'DELETE' THEN
            PERFORM pg_notify('kataven_catalog', 'placement:' || OLD.slug);
        ELSIF TG_OP = 'UPDATE' AND (NEW.database_name IS DISTINCT FROM OLD.database_name
                OR NEW.database_server IS DISTINCT FROM OLD.database_server) THEN
            PERFORM pg_notify('kataven_catalog', 'placement:' || NEW.slug);
        ELSE
            PERFORM pg_notify('kataven_catalog', 'accounts:' || NEW.slug);
        END IF;
    ELSIF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('kataven_catalog', 'members:' || OLD.account);
    ELSE
        PERFORM pg_notify('kataven_catalog', 'members:' || NEW.account);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER accounts_notify AFTER INSERT OR UPDATE OR DELETE ON accounts
    FOR EACH ROW EXECUTE FUNCTION kataven_notify_catalog();
CREATE TRIGGER account_members_notify AFTER INSERT OR UPDATE OR DELETE ON account_members
    FOR EACH ROW EXECUTE FUNCTION kataven_notify_catalog();
