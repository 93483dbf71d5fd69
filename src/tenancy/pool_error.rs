//! Why no tenant connection could be had. The pool and its gates speak in these; the request
//! pipeline turns them into answers in one place (`From<PoolError> for ApiError`, in
//! `crate::error`): 503 `unavailable`, or 503 `account_unavailable` when the account's own
//! database is the problem, each with `Retry-After`.

/// Why the pool could not hand out a connection.
#[derive(Debug)]
pub enum PoolError {
    /// The account's database server cannot be reached or refuses connections.
    ServerDown,
    /// A connection attempt failed at the server.
    ServerRefused,
    /// The server is up, but the account's database cannot be used (missing, dropped, not
    /// accepting connections); the next attempt is due after this long.
    DatabaseDown {
        retry_after_secs: u64,
    },
    /// The database did not answer within the request's bound.
    NoAnswer,
    /// Every connection the account may have is in use until the request's deadline.
    AccountBusy,
    /// The connection budget of the account's database server stayed spent until the
    /// request's deadline.
    BudgetSpent,
    /// Migrating the account's database on first use failed.
    Upgrading,
    /// The request holds the account's row from before its database moved (the instance
    /// heard of the move meanwhile): answered 503 `account_moving`, the retry finds the new
    /// placement.
    Moved,
    ShuttingDown,
    /// A bug or a broken configuration (the cause is logged, not shown).
    Internal(anyhow::Error),
}

impl PoolError {
    /// A failed read of the catalog before a pool opens (where its server is, where the
    /// account is now): 503 when the catalog cannot be reached, otherwise internal.
    pub fn of_catalog(e: anyhow::Error) -> Self {
        match e.downcast_ref::<sqlx::Error>() {
            Some(db) if crate::error::is_unavailable(db) => Self::ServerRefused,
            _ => Self::Internal(e),
        }
    }

    /// The message a client sees (a fixed text per reason).
    pub fn message(&self) -> &'static str {
        match self {
            Self::ServerDown => "the account's database server is unavailable",
            Self::ServerRefused | Self::DatabaseDown { .. } => {
                "the account's database is unavailable"
            }
            Self::NoAnswer => "the account's database did not answer in time",
            Self::AccountBusy => {
                "all of this account's database connections are busy; retry shortly"
            }
            Self::BudgetSpent => "all database connections are busy; retry shortly",
            Self::Upgrading => "the account's database is being upgraded",
            Self::Moved => "the account's database moved to another server",
            Self::ShuttingDown => "the service is shutting down",
            Self::Internal(_) => "internal error",
        }
    }
}

impl std::fmt::Display for PoolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Internal(e) => write!(f, "{e:#}"),
            other => f.write_str(other.message()),
        }
    }
}

impl std::error::Error for PoolError {}
