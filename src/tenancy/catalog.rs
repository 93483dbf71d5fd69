//! Queries against the catalog in the system database: accounts and members.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, PgExecutor, PgPool};

use super::slug::AccountSlug;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, sqlx::Type, clap::ValueEnum)]
#[sqlx(type_name = "text", rename_all = "lowercase")]
#[serde(rename_all = "lowercase")]
pub enum AccountStatus {
    Active,
    Suspended,
}

/// A member's role. `Admin > Member`, so the stronger of two grants is their `max`.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Serialize,
    serde::Deserialize,
    sqlx::Type,
    clap::ValueEnum,
    utoipa::ToSchema,
)]
#[sqlx(type_name = "text", rename_all = "lowercase")]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Member,
    Admin,
}

#[derive(Debug, Clone, sqlx::FromRow, Serialize)]
pub struct Account {
    pub slug: String,
    pub display_name: String,
    pub status: AccountStatus,
    pub database_name: String,
    /// The server its database lives on (`servers.id`; `main`: the system database's).
    pub server: String,
    pub oidc_org_id: Option<String>,
    pub schema_version: i64,
    pub created_at: DateTime<Utc>,
    /// Its writes wait until then (the cut-over of a move; see `fleet::moves`).
    pub writes_paused_until: Option<DateTime<Utc>>,
}

impl Account {
    /// Whether its writes are paused now (a move is cutting over).
    pub fn writes_paused(&self) -> bool {
        self.writes_paused_until
            .is_some_and(|until| until > Utc::now())
    }
}

#[derive(Debug, Clone, sqlx::FromRow, Serialize)]
pub struct Member {
    pub subject: String,
    pub role: Role,
    pub created_at: DateTime<Utc>,
}

/// An account's effective limits (`0` blocks that dimension).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub per_minute: u32,
    pub per_hour: u32,
    pub per_day: u32,
    pub concurrent: u32,
    pub daily_minutes: u32,
}

/// The outcome of [`Catalog::change_member`].
#[derive(Debug)]
pub enum MemberChange {
    Done(Member),
    NotAMember,
    /// Refused: it would leave the account without an admin.
    LastAdmin,
}

pub(crate) const ACCOUNT_COLUMNS: &str = "slug, display_name, status, database_name, server, \
                               oidc_org_id, schema_version, created_at, writes_paused_until";

/// The catalog, backed by the system database's pool.
#[derive(Clone, Debug)]
pub struct Catalog {
    pool: PgPool,
}

impl Catalog {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub async fn account(&self, slug: &AccountSlug) -> sqlx::Result<Option<Account>> {
        account(&self.pool, slug.as_str()).await
    }

    /// Active accounts, sorted by slug (the public directory).
    pub async fn active_accounts(&self) -> sqlx::Result<Vec<Account>> {
        sqlx::query_as(&format!(
            "SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE status = 'active' ORDER BY slug"
        ))
        .fetch_all(&self.pool)
        .await
    }

    pub async fn all_accounts(&self) -> sqlx::Result<Vec<Account>> {
        sqlx::query_as(&format!(
            "SELECT {ACCOUNT_COLUMNS} FROM accounts ORDER BY slug"
        ))
        .fetch_all(&self.pool)
        .await
    }

    /// Sets the status; `false` when there is no such account.
    pub async fn set_status(
        &self,
        slug: &AccountSlug,
        status: AccountStatus,
    ) -> sqlx::Result<bool> {
        let done = sqlx::query("UPDATE accounts SET status = $2 WHERE slug = $1")
            .bind(slug.as_str())
            .bind(status)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn set_schema_version(&self, slug: &str, version: i64) -> sqlx::Result<()> {
        sqlx::query("UPDATE accounts SET schema_version = $2 WHERE slug = $1")
            .bind(slug)
            .bind(version)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn member_role(
        &self,
        slug: &AccountSlug,
        subject: &str,
    ) -> sqlx::Result<Option<Role>> {
        sqlx::query_scalar("SELECT role FROM account_members WHERE account = $1 AND subject = $2")
            .bind(slug.as_str())
            .bind(subject)
            .fetch_optional(&self.pool)
            .await
    }

    pub async fn members(&self, slug: &AccountSlug) -> sqlx::Result<Vec<Member>> {
        sqlx::query_as(
            "SELECT subject, role, created_at FROM account_members WHERE account = $1 ORDER BY subject",
        )
        .bind(slug.as_str())
        .fetch_all(&self.pool)
        .await
    }

    /// Sets a member's role (`Some`) or removes the member (`None`), unless that would take the
    /// account's last admin away. The account row is locked so that concurrent changes cannot
    /// remove the last two admins at once. Runs on `tx`, the caller's transaction, which the
    /// caller commits after `Done` and rolls back otherwise.
    pub async fn change_member(
        tx: &mut PgConnection,
        slug: &AccountSlug,
        subject: &str,
        role: Option<Role>,
    ) -> sqlx::Result<MemberChange> {
        sqlx::query("SELECT 1 FROM accounts WHERE slug = $1 FOR UPDATE")
            .bind(slug.as_str())
            .execute(&mut *tx)
            .await?;
        let count_admins =
            "SELECT count(*) FROM account_members WHERE account = $1 AND role = 'admin'";
        let admins_before: i64 = sqlx::query_scalar(count_admins)
            .bind(slug.as_str())
            .fetch_one(&mut *tx)
            .await?;
        let changed: Option<Member> = match role {
            Some(role) => {
                sqlx::query_as(
                    "INSERT INTO account_members (account, subject, role) VALUES ($1, $2, $3)
                 ON CONFLICT (account, subject) DO UPDATE SET role = EXCLUDED.role
                 RETURNING subject, role, created_at",
                )
                .bind(slug.as_str())
                .bind(subject)
                .bind(role)
                .fetch_optional(&mut *tx)
                .await?
            }
            None => {
                sqlx::query_as(
                    "DELETE FROM account_members WHERE account = $1 AND subject = $2
                 RETURNING subject, role, created_at",
                )
                .bind(slug.as_str())
                .bind(subject)
                .fetch_optional(&mut *tx)
                .await?
            }
        };
        let admins_after: i64 = sqlx::query_scalar(count_admins)
            .bind(slug.as_str())
            .fetch_one(&mut *tx)
            .await?;
        if admins_before > 0 && admins_after == 0 {
            return Ok(MemberChange::LastAdmin);
        }
        Ok(match changed {
            Some(member) => MemberChange::Done(member),
            None => MemberChange::NotAMember,
        })
    }

    /// The account's limits: its overrides in `account_limits`, else `defaults`.
    pub async fn limits(&self, slug: &AccountSlug, defaults: &Limits) -> sqlx::Result<Limits> {
        /// Overrides: per minute, hour, day, concurrent, daily minutes.
        type Overrides = (
            Option<i32>,
            Option<i32>,
            Option<i32>,
            Option<i32>,
            Option<i32>,
        );
        let row: Option<Overrides> = sqlx::query_as(
            "SELECT per_minute, per_hour, per_day, concurrent, daily_minutes FROM account_limits WHERE account = $1",
        )
        .bind(slug.as_str())
        .fetch_optional(&self.pool)
        .await?;
        let (m, h, d, c, dm) = row.unwrap_or_default();
        let pick = |v: Option<i32>, default: u32| v.map_or(default, |v| v.max(0) as u32);
        Ok(Limits {
            per_minute: pick(m, defaults.per_minute),
            per_hour: pick(h, defaults.per_hour),
            per_day: pick(d, defaults.per_day),
            concurrent: pick(c, defaults.concurrent),
            daily_minutes: pick(dm, defaults.daily_minutes),
        })
    }

    /// Sets one limit override (`None`: back to the default). `column` is one of the
    /// `account_limits` limit columns.
    pub async fn set_limit(
        &self,
        slug: &AccountSlug,
        column: &str,
        value: Option<i32>,
    ) -> sqlx::Result<()> {
        const COLUMNS: [&str; 5] = [
            "per_minute",
            "per_hour",
            "per_day",
            "concurrent",
            "daily_minutes",
        ];
        let column = COLUMNS
            .into_iter()
            .find(|c| *c == column)
            .ok_or_else(|| sqlx::Error::ColumnNotFound(column.to_owned()))?;
        sqlx::query(&format!(
            "INSERT INTO account_limits (account, {column}) VALUES ($1, $2)
             ON CONFLICT (account) DO UPDATE SET {column} = EXCLUDED.{column}, updated_at = now()"
        ))
        .bind(slug.as_str())
        .bind(value)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn clear_limits(&self, slug: &AccountSlug) -> sqlx::Result<()> {
        sqlx::query("DELETE FROM account_limits WHERE account = $1")
            .bind(slug.as_str())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Active accounts where `subject` has a member row: `(slug, name, role)`.
    pub async fn accounts_of_subject(
        &self,
        subject: &str,
    ) -> sqlx::Result<Vec<(String, String, Role)>> {
        sqlx::query_as(
            "SELECT a.slug, a.display_name, m.role FROM account_members m
             JOIN accounts a ON a.slug = m.account
             WHERE m.subject = $1 AND a.status = 'active' ORDER BY a.slug",
        )
        .bind(subject)
        .fetch_all(&self.pool)
        .await
    }

    /// Active accounts bound to one of `orgs`: `(slug, name, org id)`.
    pub async fn accounts_of_orgs(
        &self,
        orgs: &[String],
    ) -> sqlx::Result<Vec<(String, String, String)>> {
        if orgs.is_empty() {
            return Ok(Vec::new());
        }
        sqlx::query_as(
            "SELECT slug, display_name, oidc_org_id FROM accounts
             WHERE oidc_org_id = ANY($1) AND status = 'active' ORDER BY slug",
        )
        .bind(orgs)
        .fetch_all(&self.pool)
        .await
    }

    /// Adds a member or changes its role.
    pub async fn upsert_member(
        &self,
        slug: &AccountSlug,
        subject: &str,
        role: Role,
    ) -> sqlx::Result<()> {
        sqlx::query(
            "INSERT INTO account_members (account, subject, role) VALUES ($1, $2, $3)
             ON CONFLICT (account, subject) DO UPDATE SET role = EXCLUDED.role",
        )
        .bind(slug.as_str())
        .bind(subject)
        .bind(role)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Removes a member; `false` when it was not a member.
    pub async fn remove_member(&self, slug: &AccountSlug, subject: &str) -> sqlx::Result<bool> {
        let done = sqlx::query("DELETE FROM account_members WHERE account = $1 AND subject = $2")
            .bind(slug.as_str())
            .bind(subject)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }
}

pub(crate) async fn account<'e>(
    db: impl PgExecutor<'e>,
    slug: &str,
) -> sqlx::Result<Option<Account>> {
    sqlx::query_as(&format!(
        "SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE slug = $1"
    ))
    .bind(slug)
    .fetch_optional(db)
    .await
}
