-- Per-account overrides of the configured limits. NULL: the configured default; 0 blocks.
CREATE TABLE account_limits (
    account       text PRIMARY KEY REFERENCES accounts (slug) ON DELETE CASCADE,
    per_minute    integer CHECK (per_minute >= 0),
    per_hour      integer CHECK (per_hour >= 0),
    per_day       integer CHECK (per_day >= 0),
    concurrent    integer CHECK (concurrent >= 0),
    daily_minutes integer CHECK (daily_minutes >= 0),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
