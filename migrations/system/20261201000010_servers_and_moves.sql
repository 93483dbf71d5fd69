-- The fleet (docs/fleet.md): the database servers tenant databases live on, and account moves
-- between them.

-- A server. The system database's server is `main`, its URL NULL: whatever
-- KATAVEN_DATABASE_URL names. Other URLs never carry a password: the catalog keeps no secret
-- (credentials come from KATAVEN_SERVER_SECRETS_DIR/<id>, or are the system database's).
CREATE TABLE servers (
    id                text PRIMARY KEY CHECK (id ~ '^[a-z0-9][a-z0-9_-]{0,62}$'),
    url               text UNIQUE CHECK (url IS NULL OR (url ~ '^postgres(ql)?://'
                          AND url !~ '^[a-z]+://[^/@]*:[^/@]*@' AND url !~* '[?&]password=')),
    -- Placement sends new accounts to the active server with the fewest accounts per weight.
    weight            integer NOT NULL DEFAULT 100 CHECK (weight BETWEEN 1 AND 10000),
    state             text NOT NULL DEFAULT 'active'
                          CHECK (state IN ('active', 'draining', 'retired')),
    -- Connections one instance opens to this server at most (NULL: KATAVEN_DB_CONNECTION_BUDGET).
    connection_budget integer CHECK (connection_budget > 0),
    created_at        timestamptz NOT NULL DEFAULT now(),
    CHECK ((id = 'main') = (url IS NULL))
);
INSERT INTO servers (id, url) VALUES ('main', NULL);

-- Accounts placed with `accounts create --server URL` before this table existed: one server
-- each, named server-1, server-2, … and kept without the password (put it into
-- KATAVEN_SERVER_SECRETS_DIR/<id> unless it is the system database's).
-- The URL without its password: the userinfo's (up to the last `@` of the authority, so that an
-- unescaped `@` in a password goes too) and a `password=` parameter's; and without a database.
CREATE FUNCTION pg_temp.without_secrets(url text) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT regexp_replace(regexp_replace(regexp_replace(regexp_replace(url,
        '^([a-z]+://[^/:@]*):[^/]*@', '\1@'),
        '([?&])password=[^&]*&?', '\1', 'gi'),
        '[?&]$', ''),
        '^([a-z]+://[^/?]*)/[^?]*', '\1')
$$;
INSERT INTO servers (id, url)
SELECT 'server-' || row_number() OVER (ORDER BY url), url
FROM (SELECT DISTINCT pg_temp.without_secrets(database_server) AS url
      FROM accounts WHERE database_server IS NOT NULL) legacy;

ALTER TABLE accounts ADD COLUMN server text NOT NULL DEFAULT 'main' REFERENCES servers (id);
UPDATE accounts a SET server = s.id FROM servers s
WHERE a.database_server IS NOT NULL AND s.url = pg_temp.without_secrets(a.database_server);
CREATE INDEX accounts_server ON accounts (server);

-- Writes of the account wait (then answer 503 account_moving) until then: the cut-over of a
-- move. A time rather than a flag, so that a mover that died leaves no account paused.
ALTER TABLE accounts ADD COLUMN writes_paused_until timestamptz;

-- The trigger of 20261127000002 compared database_server; it compares server now.
CREATE OR REPLACE FUNCTION kataven_notify_catalog() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_TABLE_NAME = 'accounts' THEN
        IF TG_OP = 'DELETE' THEN
            PERFORM pg_notify('kataven_catalog', 'placement:' || OLD.slug);
        ELSIF TG_OP = 'UPDATE' AND (NEW.database_name IS DISTINCT FROM OLD.database_name
                OR NEW.server IS DISTINCT FROM OLD.server) THEN
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
ALTER TABLE accounts DROP COLUMN database_server;

-- A move of an account's database to another server (`accounts move`), from its start until
-- `accounts move --finish` (or the grace period) drops the source database, or `--abort`.
CREATE TABLE account_moves (
    account         text PRIMARY KEY REFERENCES accounts (slug) ON DELETE CASCADE,
    -- Names the publication, subscription and replication slot of the copy.
    id              uuid NOT NULL UNIQUE,
    source_server   text NOT NULL REFERENCES servers (id),
    source_database text NOT NULL,
    target_server   text NOT NULL REFERENCES servers (id),
    target_database text NOT NULL,
    method          text NOT NULL CHECK (method IN ('replication', 'dump')),
    -- copying: the target is being filled, the account runs on the source;
    -- switched: the account runs on the target, the source is kept (fenced: it refuses writes).
    phase           text NOT NULL CHECK (phase IN ('copying', 'switched')),
    -- How long the account's writes were paused at cut-over.
    pause_ms        integer,
    started_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    switched_at     timestamptz,
    CHECK (source_server <> target_server)
);
