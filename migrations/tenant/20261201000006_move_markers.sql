-- A move's cut-over (docs/fleet.md) writes one row here on the source while the account's
-- tables are locked; once the row has reached the target through logical replication, so has
-- every write before it. Not part of exports.
CREATE TABLE kataven_move_markers (
    move_id uuid PRIMARY KEY,
    at      timestamptz NOT NULL DEFAULT now()
);
