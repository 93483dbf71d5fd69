//! `kataven-hub servers add|list|drain|activate|retire`: the operator's side of the fleet.

use anyhow::{Context, bail};
use sqlx::{Connection, PgPool};

use super::{SERVER_COLUMNS, Server, ServerState, all_servers, check_url, server};
use crate::tenancy::provision::{Provisioner, maintenance};

/// What `servers add` is told.
#[derive(Debug, Clone)]
pub struct NewServer<'a> {
    pub id: &'a str,
    pub url: &'a str,
    pub weight: Option<i32>,
    pub connection_budget: Option<i32>,
}

/// What `servers add` found on the new server.
#[derive(Debug, Clone)]
pub struct Added {
    pub server: Server,
    pub version: String,
    pub wal_level: String,
}

/// Adds a server: checks that it can be reached with its credentials, prepares the tenant
/// template there, then records it (active: placement may send accounts to it at once).
pub async fn add(provisioner: &Provisioner, new: NewServer<'_>) -> anyhow::Result<Added> {
    check_url(new.url)?;
    let valid_id = new.id.len() <= 63
        && new
            .id
            .starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && new
            .id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !valid_id {
        bail!(
            "`{}` is not a server id: 1–63 of a-z, 0-9, `-`, `_`, starting with a letter or digit",
            new.id
        );
    }
    // Before touching the server (the template), as the catalog's checks will have it.
    if !(1..=10_000).contains(&new.weight.unwrap_or(100))
        || new.connection_budget.is_some_and(|b| b < 1)
    {
        bail!("weight is 1–10000, the connection budget at least 1");
    }
    let pool = provisioner.catalog().pool();
    if server(pool, new.id).await?.is_some() {
        bail!("server `{}` exists already", new.id);
    }
    let candidate = Server {
        id: new.id.to_owned(),
        url: Some(new.url.to_owned()),
        weight: new.weight.unwrap_or(100),
        state: ServerState::Active,
        connection_budget: new.connection_budget,
        created_at: chrono::Utc::now(),
    };
    let endpoint = provisioner.servers().endpoint(&candidate)?;
    let mut admin = maintenance(&endpoint.options)
        .await
        .with_context(|| format!("server `{}` cannot be reached", new.id))?;
    let (version, wal_level): (String, String) =
        sqlx::query_as("SELECT current_setting('server_version'), current_setting('wal_level')")
            .fetch_one(&mut admin)
            .await?;
    admin.close().await.ok();
    provisioner
        .prepare_template(&endpoint.options)
        .await
        .with_context(|| format!("preparing the tenant template on `{}`", new.id))?;
    let server: Server = sqlx::query_as(&format!(
        "INSERT INTO servers (id, url, weight, connection_budget) VALUES ($1, $2, $3, $4)
         RETURNING {SERVER_COLUMNS}"
    ))
    .bind(new.id)
    .bind(new.url)
    .bind(candidate.weight)
    .bind(new.connection_budget)
    .fetch_one(pool)
    .await
    .map_err(|e| match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            anyhow::anyhow!("a server with this id or URL exists already")
        }
        sqlx::Error::Database(db)
            if db.is_check_violation()
                && matches!(
                    db.constraint(),
                    Some("servers_weight_check" | "servers_connection_budget_check")
                ) =>
        {
            anyhow::anyhow!("weight is 1–10000, the connection budget at least 1")
        }
        _ => e.into(),
    })?;
    Ok(Added {
        server,
        version,
        wal_level,
    })
}

/// Sets a server's state. Retiring needs a server without accounts or moves.
pub async fn set_state(pool: &PgPool, id: &str, state: ServerState) -> anyhow::Result<Server> {
    let mut tx = pool.begin().await?;
    let current: Option<Server> = sqlx::query_as(&format!(
        "SELECT {SERVER_COLUMNS} FROM servers WHERE id = $1 FOR UPDATE"
    ))
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    current.with_context(|| format!("no server `{id}`"))?;
    if state == ServerState::Retired {
        let accounts: i64 = sqlx::query_scalar("SELECT count(*) FROM accounts WHERE server = $1")
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
        let moves: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM account_moves WHERE source_server = $1 OR target_server = $1",
        )
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
        if accounts > 0 || moves > 0 {
            bail!(
                "server `{id}` still holds {accounts} account(s) and {moves} move(s): drain it, \
                 move its accounts away (`accounts move <slug> --to <server>`) and finish the \
                 moves (`--finish`) first"
            );
        }
    }
    let server: Server = sqlx::query_as(&format!(
        "UPDATE servers SET state = $2 WHERE id = $1 RETURNING {SERVER_COLUMNS}"
    ))
    .bind(id)
    .bind(state)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(server)
}

/// A line of `servers list`.
#[derive(Debug, Clone)]
pub struct Usage {
    pub server: Server,
    pub accounts: i64,
    /// Distinct schema versions of its accounts, oldest first.
    pub schema_versions: Vec<i64>,
    /// What the server itself says; `Err` when it cannot be asked.
    pub live: Result<Live, String>,
}

#[derive(Debug, Clone)]
pub struct Live {
    /// `pg_database_size` of its accounts' databases, summed.
    pub bytes: i64,
    /// Connections to its accounts' databases now (every instance's).
    pub connections: i64,
    pub wal_level: String,
}

/// Every server with its accounts, size and connections.
pub async fn list(provisioner: &Provisioner) -> anyhow::Result<Vec<Usage>> {
    let pool = provisioner.catalog().pool();
    let mut usage = Vec::new();
    for server in all_servers(pool).await? {
        let (databases, versions): (Vec<String>, Vec<i64>) = {
            let rows: Vec<(String, i64)> = sqlx::query_as(
                "SELECT database_name, schema_version FROM accounts WHERE server = $1",
            )
            .bind(&server.id)
            .fetch_all(pool)
            .await?;
            rows.into_iter().unzip()
        };
        let mut schema_versions = versions.clone();
        schema_versions.sort_unstable();
        schema_versions.dedup();
        let live = async {
            let endpoint = provisioner.servers().endpoint(&server)?;
            let mut conn = maintenance(&endpoint.options).await?;
            let live: (i64, i64, String) = sqlx::query_as(
                "SELECT (SELECT coalesce(sum(pg_database_size(datname)), 0)::int8
                         FROM pg_database WHERE datname = ANY($1)),
                        (SELECT count(*) FROM pg_stat_activity WHERE datname = ANY($1)),
                        current_setting('wal_level')",
            )
            .bind(&databases)
            .fetch_one(&mut conn)
            .await?;
            conn.close().await.ok();
            anyhow::Ok(Live {
                bytes: live.0,
                connections: live.1,
                wal_level: live.2,
            })
        }
        .await
        .map_err(|e| format!("{e:#}"));
        usage.push(Usage {
            accounts: databases.len() as i64,
            server,
            schema_versions,
            live,
        });
    }
    Ok(usage)
}
