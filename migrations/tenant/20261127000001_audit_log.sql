-- Every write through the API records who did what to which resource.
CREATE TABLE audit_log (
    id             uuid PRIMARY KEY,
    at             timestamptz NOT NULL DEFAULT now(),
    principal_kind text NOT NULL,
    principal_id   text NOT NULL,
    action         text NOT NULL,
    resource       text NOT NULL,
    resource_id    text
);

CREATE INDEX audit_log_at ON audit_log (at DESC);
