//! Queries against the catalog in the system database: accounts and members.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgExecutor, PgPool};

use super::slug::AccountSlug;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, sqlx::Type, clap::ValueEnum)]
#[sqlx(type_name = "text", rename_all = "lowercase")]
#[serde(rename_all = "lowercase")]
pub enum AccountStatus {
    Active,
    Suspended,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, sqlx::Type, clap::ValueEnum)]
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
    pub database_server: Option<String>,
    pub oidc_org_id: Option<String>,
    pub schema_version: i64,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, sqlx::FromRow, Serialize)]
pub struct Member {
    pub subject: String,
    pub role: Role,
    pub created_at: DateTime<Utc>,
}

const ACCOUNT_COLUMNS: &str = "slug, display_name, status, database_name, database_server, \
                               oidc_org_id, schema_version, created_at";

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
