//! The SQL of exports and imports: the catalog's part of an account, the tenant tables read
//! through a cursor inside a snapshot, and rows loaded back in batches.
//!
//! Rows travel as PostgreSQL writes them (`row_to_json`): every column, so that the format
//! follows the schema without a list of columns here, and numbers and text exactly as stored.
//! They are loaded back with `jsonb_populate_record` against the table's own row type.

use sqlx::{PgConnection, PgPool};

use super::archive::Section;
use crate::store::StoreResult;
use crate::tenancy::catalog::{self, Account};

/// Begins the snapshot an export reads from: every statement of the transaction sees the
/// database as it was at its first one.
pub const SNAPSHOT: &str = "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY";

/// A tenant table as exported: the section it becomes, the order of its rows, and its columns
/// that hold ids of the account's rows (given new ids on import).
#[derive(Debug, Clone, Copy)]
pub struct TenantTable {
    pub section: Section,
    pub table: &'static str,
    pub order_by: &'static str,
    pub ids: &'static [&'static str],
}

/// Every tenant table that is exported, parents before the tables that refer to them.
pub const TENANT_TABLES: [TenantTable; 8] = [
    TenantTable {
        section: Section::Tools,
        table: "tools",
        order_by: "id",
        ids: &["id"],
    },
    TenantTable {
        section: Section::Playbooks,
        table: "playbooks",
        order_by: "id",
        ids: &["id"],
    },
    TenantTable {
        section: Section::Faqs,
        table: "faqs",
        order_by: "id",
        ids: &["id"],
    },
    TenantTable {
        section: Section::Agents,
        table: "agents",
        order_by: "id",
        ids: &["id"],
    },
    TenantTable {
        section: Section::AgentTools,
        table: "agent_tools",
        order_by: "agent_id, tool_name",
        ids: &["agent_id"],
    },
    TenantTable {
        section: Section::AgentPlaybooks,
        table: "agent_playbooks",
        order_by: "agent_id, playbook_id",
        ids: &["agent_id", "playbook_id"],
    },
    TenantTable {
        section: Section::AgentFaqs,
        table: "agent_faqs",
        order_by: "agent_id, faq_id",
        ids: &["agent_id", "faq_id"],
    },
    TenantTable {
        section: Section::WidgetSettings,
        table: "widget_settings",
        order_by: "id",
        ids: &[],
    },
];

/// The tenant tables that are not exported: the audit log (the history of the exported
/// account, not part of its state; see docs/export.md), the stored answers of
/// `Idempotency-Key` writes (a replay cache of the old account's callers and ids), the markers
/// of account moves (`fleet::moves`) and sqlx's migration record.
pub const NOT_EXPORTED: [&str; 4] = [
    "audit_log",
    "idempotency_keys",
    "kataven_move_markers",
    "_sqlx_migrations",
];

/// The tenant table of `section` (`None` for the catalog's sections).
pub fn tenant_table(section: Section) -> Option<&'static TenantTable> {
    TENANT_TABLES.iter().find(|t| t.section == section)
}

/// The newest tenant migration applied to the database (0: none).
pub async fn schema_version(conn: &mut PgConnection) -> StoreResult<i64> {
    Ok(sqlx::query_scalar(
        "SELECT coalesce(max(version), 0)::bigint FROM _sqlx_migrations WHERE success",
    )
    .fetch_one(conn)
    .await?)
}

/// The catalog's rows of a section of `account`, as JSON objects. Key tables give their
/// metadata only: never `key_hash`.
fn catalog_query(section: Section) -> Option<&'static str> {
    Some(match section {
        Section::Members => {
            "SELECT row_to_json(t)::text FROM (
                 SELECT subject, role, created_at FROM account_members
                 WHERE account = $1 ORDER BY subject) t"
        }
        Section::Limits => {
            "SELECT row_to_json(t)::text FROM (
                 SELECT per_minute, per_hour, per_day, concurrent, daily_minutes, updated_at
                 FROM account_limits WHERE account = $1) t"
        }
        Section::ApiKeys => {
            "SELECT row_to_json(t)::text FROM (
                 SELECT id, name, last8, expires_at, disabled_at, first_used_at, last_used_at,
                        created_by, created_at
                 FROM api_keys WHERE account = $1 ORDER BY created_at, id) t"
        }
        Section::WidgetKeys => {
            "SELECT row_to_json(t)::text FROM (
                 SELECT id, name, last8, domain_allowlist, agent_id, disabled_at, first_used_at,
                        last_used_at, created_by, created_at
                 FROM widget_keys WHERE account = $1 ORDER BY created_at, id) t"
        }
        _ => return None,
    })
}

/// The catalog's part of an account, read in one snapshot of the catalog: its row and the rows
/// of the catalog's sections (members, limit overrides, key metadata: an account's handful,
/// held in memory). `None` when there is no such account.
pub async fn catalog_part(
    pool: &PgPool,
    slug: &str,
) -> StoreResult<Option<(Account, Vec<(Section, String)>)>> {
    let mut tx = pool.begin_with(SNAPSHOT).await?;
    let Some(account) = catalog::account(&mut *tx, slug).await? else {
        return Ok(None);
    };
    let mut rows = Vec::new();
    for section in Section::ALL {
        let Some(sql) = catalog_query(section) else {
            continue;
        };
        let found: Vec<String> = sqlx::query_scalar(sql)
            .bind(slug)
            .fetch_all(&mut *tx)
            .await?;
        rows.extend(found.into_iter().map(|row| (section, row)));
    }
    tx.rollback().await?;
    Ok(Some((account, rows)))
}

/// Opens the cursor over `table`'s rows (inside the snapshot's transaction).
pub async fn open_cursor(conn: &mut PgConnection, table: &TenantTable) -> StoreResult<()> {
    let sql = format!(
        "DECLARE kataven_export NO SCROLL CURSOR FOR
         SELECT row_to_json(t)::text FROM {} t ORDER BY {}",
        table.table, table.order_by
    );
    sqlx::query(&sql).execute(conn).await?;
    Ok(())
}

/// The cursor's next `n` rows (fewer at the end).
pub async fn fetch(conn: &mut PgConnection, n: usize) -> StoreResult<Vec<String>> {
    Ok(
        sqlx::query_scalar(&format!("FETCH FORWARD {n} FROM kataven_export"))
            .fetch_all(conn)
            .await?,
    )
}

pub async fn close_cursor(conn: &mut PgConnection) -> StoreResult<()> {
    sqlx::query("CLOSE kataven_export").execute(conn).await?;
    Ok(())
}

/// Makes a database ready for an import's rows (in the import's transaction): the id mapping
/// function, and the exported tables emptied of what the migrations put there (the default
/// widget settings row).
///
/// An imported row's id keeps the original's first 48 bits (a UUIDv7's time) and takes the
/// other 80 from sha256(salt ‖ original id), then the version and variant bits of a UUIDv7 (74
/// bits left from the hash): every reference to a row maps the same way, without a table of
/// old and new ids, and a fresh salt per import gives fresh ids.
pub async fn prepare_load(conn: &mut PgConnection) -> StoreResult<()> {
    sqlx::query(
        "CREATE FUNCTION pg_temp.kataven_import_id(id uuid, salt bytea) RETURNS uuid
         LANGUAGE sql IMMUTABLE STRICT AS $$
             SELECT encode(set_byte(set_byte(b, 6, (get_byte(b, 6) & 15) | 112),
                                    8, (get_byte(b, 8) & 63) | 128), 'hex')::uuid
             FROM (SELECT overlay(uuid_send(id)
                                  PLACING substring(sha256(salt || uuid_send(id)) FROM 1 FOR 10)
                                  FROM 7 FOR 10) AS b) AS mapped
         $$",
    )
    .execute(&mut *conn)
    .await?;
    let mut present = Vec::new();
    for table in TENANT_TABLES {
        let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(table.table)
            .fetch_one(&mut *conn)
            .await?;
        if exists {
            present.push(table.table);
        }
    }
    if !present.is_empty() {
        sqlx::query(&format!("TRUNCATE {}", present.join(", ")))
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Inserts `rows` (a JSON array of `table`'s rows) with their ids mapped by `salt`.
pub async fn load_tenant_rows(
    conn: &mut PgConnection,
    table: &TenantTable,
    rows: &str,
    salt: &[u8],
) -> StoreResult<()> {
    let record = if table.ids.is_empty() {
        "x".to_owned()
    } else {
        let mapped: Vec<String> = table
            .ids
            .iter()
            .map(|c| format!("'{c}', pg_temp.kataven_import_id((x->>'{c}')::uuid, $2)"))
            .collect();
        format!("x || jsonb_build_object({})", mapped.join(", "))
    };
    let sql = format!(
        "INSERT INTO {t}
         SELECT r.* FROM jsonb_array_elements($1::text::jsonb) AS x,
              LATERAL jsonb_populate_record(NULL::{t}, {record}) AS r",
        t = table.table
    );
    let query = sqlx::query(&sql).bind(rows);
    if table.ids.is_empty() {
        query.execute(conn).await?;
    } else {
        query.bind(salt).execute(conn).await?;
    }
    Ok(())
}

/// Inserts member rows (a JSON array) of the new account `slug`, in the catalog's transaction.
pub async fn load_members(conn: &mut PgConnection, slug: &str, rows: &str) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO account_members (account, subject, role, created_at)
         SELECT $2, r.subject, r.role, r.created_at
         FROM jsonb_to_recordset($1::text::jsonb) AS r(subject text, role text, created_at timestamptz)",
    )
    .bind(rows)
    .bind(slug)
    .execute(conn)
    .await?;
    Ok(())
}

/// Inserts the limit overrides (a JSON array of at most one row) of the new account `slug`.
pub async fn load_limits(conn: &mut PgConnection, slug: &str, rows: &str) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO account_limits
             (account, per_minute, per_hour, per_day, concurrent, daily_minutes, updated_at)
         SELECT $2, r.per_minute, r.per_hour, r.per_day, r.concurrent, r.daily_minutes, r.updated_at
         FROM jsonb_to_recordset($1::text::jsonb)
              AS r(per_minute integer, per_hour integer, per_day integer, concurrent integer,
                   daily_minutes integer, updated_at timestamptz)",
    )
    .bind(rows)
    .bind(slug)
    .execute(conn)
    .await?;
    Ok(())
}
