-- A new or retired signing key reaches every instance at once (payload `signingkeys:<purpose>`).
CREATE FUNCTION kataven_notify_signing_keys() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('kataven_catalog', 'signingkeys:' || CASE WHEN TG_OP = 'DELETE' THEN OLD.purpose ELSE NEW.purpose END);
    RETURN NULL;
END
$$;

CREATE TRIGGER signing_keys_notify AFTER INSERT OR UPDATE OR DELETE ON signing_keys
    FOR EACH ROW EXECUTE FUNCTION kataven_notify_signing_keys();
