-- The audit log, readable (GET /api/v1/audit-log): where each change came from, which fields an
-- update set, and an index for the newest-first keyset pages on (at, id).
ALTER TABLE audit_log
    ADD COLUMN request_id text,
    ADD COLUMN ip         text,
    ADD COLUMN user_agent text,
    ADD COLUMN fields     text[] NOT NULL DEFAULT '{}';

DROP INDEX audit_log_at;
CREATE INDEX audit_log_at_id ON audit_log (at DESC, id DESC);
