//! The console's database: inventory (hosts, partitions as last seen),
//! history (migrations, audit) and the operators' tokens.
//!
//! One code path for SQLite (default, a file in the state directory) and
//! PostgreSQL (`postgres://...`, for two consoles on one inventory),
//! through sqlx's `any` driver. The SQL is the common subset: `$N`
//! parameters (SQLite takes them too), `ON CONFLICT ... DO UPDATE`, BIGINT
//! integers (booleans as 0/1), TEXT for JSON. Where the two differ (an
//! auto-numbered key, a float column) the schema has a word per dialect.
//!
//! Schema migrations are numbered ([`MIGRATIONS`]); each runs once, in a
//! transaction with the row that records it, when the console starts.

use serde::{Deserialize, Serialize};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

use super::{Capacity, HostView, PartitionView};

/// A failure of the database, naming what was being done.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database refused or failed.
    #[error("database: {op}")]
    Db {
        /// What was being done.
        op: String,
        /// The cause.
        #[source]
        source: sqlx::Error,
    },
    /// A value stored as JSON does not decode.
    #[error("database: {what} holds malformed JSON")]
    Json {
        /// The column and row.
        what: String,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// The database's schema is newer than this console knows.
    #[error("database schema version {found} is newer than this console's {known}: run the newer console")]
    TooNew {
        /// The version found.
        found: i64,
        /// The newest this console knows.
        known: i64,
    },
}

type Result<T> = std::result::Result<T, StoreError>;

fn db(op: impl Into<String>) -> impl FnOnce(sqlx::Error) -> StoreError {
    let op = op.into();
    move |source| StoreError::Db { op, source }
}

/// Which SQL dialect the database speaks, where the two differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// SQLite.
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

/// The schema, one step a version: (version, SQL statements). `{serial}`
/// is an auto-numbered primary key and `{float}` a double, per dialect.
/// Never change a step that shipped: add one.
// Kept in this layout (rustfmt would indent every step's SQL again
// when a step is added).
#[rustfmt::skip]
pub const MIGRATIONS: &[(i64, &[&str])] = &[(
    1,
    &[
        "CREATE TABLE hosts (
            name TEXT PRIMARY KEY,
            api TEXT NOT NULL,
            mover TEXT NOT NULL,
            maintenance BIGINT NOT NULL DEFAULT 0,
            status TEXT NOT NULL DEFAULT 'unknown',
            error TEXT,
            last_poll_ms BIGINT,
            last_seen_ms BIGINT,
            memory_bytes BIGINT,
            memory_free_bytes BIGINT,
            cpus {float},
            cpus_free {float},
            load1 {float},
            capacity TEXT,
            partitions BIGINT NOT NULL DEFAULT 0,
            added_ms BIGINT NOT NULL
        )",
        "CREATE TABLE partitions (
            host TEXT NOT NULL,
            name TEXT NOT NULL,
            state TEXT NOT NULL,
            memory_current BIGINT,
            pid BIGINT,
            spec TEXT NOT NULL,
            seen_ms BIGINT NOT NULL,
            PRIMARY KEY (host, name)
        )",
        "CREATE TABLE migrations (
            id TEXT PRIMARY KEY,
            partition TEXT NOT NULL,
            source TEXT NOT NULL,
            target TEXT NOT NULL,
            who TEXT NOT NULL,
            started_ms BIGINT NOT NULL,
            ended_ms BIGINT,
            state TEXT NOT NULL,
            options TEXT NOT NULL,
            progress TEXT,
            report TEXT,
            error TEXT
        )",
        "CREATE INDEX migrations_started ON migrations (started_ms)",
        "CREATE TABLE audit (
            id {serial},
            at_ms BIGINT NOT NULL,
            who TEXT NOT NULL,
            action TEXT NOT NULL,
            detail TEXT NOT NULL
        )",
        "CREATE TABLE tokens (
            name TEXT PRIMARY KEY,
            hash TEXT NOT NULL UNIQUE,
            created_ms BIGINT NOT NULL
        )",
    ],
), (
    2,
    // The runs of the policies' plans (policy.rs): each written whole as
    // JSON at every step of its run.
    &[
        "CREATE TABLE plans (
            id TEXT PRIMARY KEY,
            who TEXT NOT NULL,
            state TEXT NOT NULL,
            started_ms BIGINT NOT NULL,
            body TEXT NOT NULL
        )",
        "CREATE INDEX plans_started ON plans (started_ms)",
    ],
)];

/// The newest schema version this console knows.
pub fn schema_version() -> i64 {
    MIGRATIONS.last().map_or(0, |m| m.0)
}

/// A registered host and what its last poll found: what the API shows
/// ([`HostView`]), read straight from its row.
pub type HostRow = HostView;

/// A partition as last seen on a host.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PartitionRow {
    /// Its host.
    pub host: String,
    /// Its name.
    pub name: String,
    /// Its state there.
    pub state: String,
    /// Memory in use, bytes.
    pub memory_current: Option<u64>,
    /// Its init's pid on the host.
    pub pid: Option<i32>,
    /// Its specification as JSON.
    pub spec: serde_json::Value,
    /// When seen, ms since the epoch.
    pub seen_ms: i64,
}

impl PartitionRow {
    /// As the API shows it.
    pub fn into_view(self, stale: bool) -> PartitionView {
        PartitionView {
            name: self.name,
            host: self.host,
            state: self.state,
            memory_current: self.memory_current,
            pid: self.pid,
            spec: self.spec,
            seen_ms: self.seen_ms,
            stale,
        }
    }
}

/// A migration the console started or found, with how it went.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MigrationRow {
    /// Its id (the source host's).
    pub id: String,
    /// The partition.
    pub partition: String,
    /// Source host.
    pub source: String,
    /// Target host.
    pub target: String,
    /// Who started it.
    pub who: String,
    /// Started, ms since the epoch.
    pub started_ms: i64,
    /// Ended, ms since the epoch.
    pub ended_ms: Option<i64>,
    /// "running" or "in_doubt" (not ended), then "completed",
    /// "stopped", "aborted", "failed".
    pub state: String,
    /// The options it was started with.
    pub options: serde_json::Value,
    /// The last progress the source reported.
    pub progress: Option<serde_json::Value>,
    /// The report (or a validation's checks), once it ended.
    pub report: Option<serde_json::Value>,
    /// Why it failed, when the console could not follow it to its end.
    pub error: Option<String>,
}

impl MigrationRow {
    /// It has ended (whatever the outcome).
    pub fn ended(&self) -> bool {
        !matches!(self.state.as_str(), "running" | "stopping" | "in_doubt")
    }
}

/// One audited change.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Its number.
    pub id: i64,
    /// When, ms since the epoch.
    pub at_ms: i64,
    /// Who: `operator:NAME` (certificate), `token:NAME`, `console` (its
    /// own doing).
    pub who: String,
    /// What ("host.add", "migration.start", ...).
    pub action: String,
    /// On what, and how.
    pub detail: String,
}

/// The database.
#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    dialect: Dialect,
}

fn json_of<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

fn parse_json<T: serde::de::DeserializeOwned>(text: Option<String>, what: impl FnOnce() -> String) -> Result<Option<T>> {
    match text {
        None => Ok(None),
        Some(t) => serde_json::from_str(&t).map(Some).map_err(|source| StoreError::Json { what: what(), source }),
    }
}

fn get<'r, T: sqlx::Decode<'r, sqlx::Any> + sqlx::Type<sqlx::Any>>(row: &'r AnyRow, col: &str) -> Result<T> {
    row.try_get(col).map_err(db(format!("read column {col}")))
}

impl Store {
    /// Connects to `url` (`sqlite://...` or `postgres://...`) and brings
    /// its schema up to date.
    pub async fn open(url: &str) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let dialect = if url.starts_with("postgres:") || url.starts_with("postgresql:") { Dialect::Postgres } else { Dialect::Sqlite };
        // SQLite takes one writer at a time: one connection queues the
        // console's writes instead of failing them with "locked".
        let max = if dialect == Dialect::Sqlite { 1 } else { 8 };
        let pool = AnyPoolOptions::new().max_connections(max).connect(url).await.map_err(db(format!("connect to {}", redact(url))))?;
        let store = Store { pool, dialect };
        store.migrate().await?;
        Ok(store)
    }

    /// The dialect.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    fn sql(&self, text: &str) -> String {
        let (serial, float) = match self.dialect {
            Dialect::Sqlite => ("INTEGER PRIMARY KEY AUTOINCREMENT", "REAL"),
            Dialect::Postgres => ("BIGSERIAL PRIMARY KEY", "DOUBLE PRECISION"),
        };
        text.replace("{serial}", serial).replace("{float}", float)
    }

    /// Runs the schema steps not run yet, each in a transaction with its
    /// record; two consoles starting at once on one PostgreSQL database
    /// race on the record's key and the loser's step rolls back.
    async fn migrate(&self) -> Result<()> {
        sqlx::query("CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_ms BIGINT NOT NULL)")
            .execute(&self.pool)
            .await
            .map_err(db("create schema_migrations"))?;
        let row = sqlx::query("SELECT COALESCE(MAX(version), 0) AS v FROM schema_migrations")
            .fetch_one(&self.pool)
            .await
            .map_err(db("read the schema version"))?;
        let current: i64 = get(&row, "v")?;
        if current > schema_version() {
            return Err(StoreError::TooNew { found: current, known: schema_version() });
        }
        for (version, steps) in MIGRATIONS.iter().filter(|m| m.0 > current) {
            let mut tx = self.pool.begin().await.map_err(db(format!("begin schema step {version}")))?;
            for step in *steps {
                sqlx::query(&self.sql(step)).execute(&mut *tx).await.map_err(db(format!("schema step {version}")))?;
            }
            sqlx::query("INSERT INTO schema_migrations (version, applied_ms) VALUES ($1, $2)")
                .bind(*version)
                .bind(super::now_ms())
                .execute(&mut *tx)
                .await
                .map_err(db(format!("record schema step {version}")))?;
            tx.commit().await.map_err(db(format!("commit schema step {version}")))?;
            tracing::info!(version, "console database: schema step applied");
        }
        Ok(())
    }

    // --- hosts

    /// Registers a host; false when one of that name is there already.
    pub async fn add_host(&self, name: &str, api: &str, mover: &str) -> Result<bool> {
        let r = sqlx::query("INSERT INTO hosts (name, api, mover, added_ms) VALUES ($1, $2, $3, $4) ON CONFLICT (name) DO NOTHING")
            .bind(name)
            .bind(api)
            .bind(mover)
            .bind(super::now_ms())
            .execute(&self.pool)
            .await
            .map_err(db(format!("add host {name}")))?;
        Ok(r.rows_affected() == 1)
    }

    /// Forgets a host and its partitions as last seen; false when there
    /// was none.
    pub async fn remove_host(&self, name: &str) -> Result<bool> {
        let mut tx = self.pool.begin().await.map_err(db(format!("remove host {name}")))?;
        sqlx::query("DELETE FROM partitions WHERE host = $1")
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(db(format!("remove host {name}'s partitions")))?;
        let r = sqlx::query("DELETE FROM hosts WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(db(format!("remove host {name}")))?;
        tx.commit().await.map_err(db(format!("remove host {name}")))?;
        Ok(r.rows_affected() == 1)
    }

    /// Sets a host's maintenance flag; false when there is no such host.
    pub async fn set_maintenance(&self, name: &str, on: bool) -> Result<bool> {
        let r = sqlx::query("UPDATE hosts SET maintenance = $1 WHERE name = $2")
            .bind(i64::from(on))
            .bind(name)
            .execute(&self.pool)
            .await
            .map_err(db(format!("set host {name}'s maintenance")))?;
        Ok(r.rows_affected() == 1)
    }

    fn host_row(row: &AnyRow) -> Result<HostRow> {
        let name: String = get(row, "name")?;
        Ok(HostRow {
            api: get(row, "api")?,
            mover: get(row, "mover")?,
            maintenance: get::<i64>(row, "maintenance")? != 0,
            status: get(row, "status")?,
            error: get(row, "error")?,
            last_poll_ms: get(row, "last_poll_ms")?,
            last_seen_ms: get(row, "last_seen_ms")?,
            capacity: parse_json(get(row, "capacity")?, || format!("hosts.capacity of {name}"))?,
            // Counted by the poll, never negative.
            partitions: get::<i64>(row, "partitions")?.max(0) as u32,
            name,
        })
    }

    /// Every registered host, by name.
    pub async fn hosts(&self) -> Result<Vec<HostRow>> {
        let rows = sqlx::query("SELECT * FROM hosts ORDER BY name").fetch_all(&self.pool).await.map_err(db("list hosts"))?;
        rows.iter().map(Self::host_row).collect()
    }

    /// One host.
    pub async fn host(&self, name: &str) -> Result<Option<HostRow>> {
        let row = sqlx::query("SELECT * FROM hosts WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(db(format!("read host {name}")))?;
        row.as_ref().map(Self::host_row).transpose()
    }

    /// Records a poll that `name` answered: its capacity (None from an
    /// lpmd too old to tell it) and its partitions (which replace those it
    /// had).
    pub async fn host_up(&self, name: &str, capacity: Option<&Capacity>, parts: &[PartitionRow]) -> Result<()> {
        let now = super::now_ms();
        let mut tx = self.pool.begin().await.map_err(db(format!("record host {name}'s poll")))?;
        sqlx::query(
            "UPDATE hosts SET status = 'up', error = NULL, last_poll_ms = $1, last_seen_ms = $1, memory_bytes = $2,
             memory_free_bytes = $3, cpus = $4, cpus_free = $5, load1 = $6, capacity = $7, partitions = $8 WHERE name = $9",
        )
        .bind(now)
        .bind(capacity.map(|c| c.memory_bytes as i64))
        .bind(capacity.map(|c| c.memory_available_bytes as i64))
        .bind(capacity.map(|c| c.cpus))
        .bind(capacity.map(|c| (c.cpus - c.cpus_reserved).max(0.0)))
        .bind(capacity.map(|c| c.load1))
        .bind(capacity.map(json_of))
        .bind(parts.len() as i64)
        .bind(name)
        .execute(&mut *tx)
        .await
        .map_err(db(format!("record host {name}'s poll")))?;
        sqlx::query("DELETE FROM partitions WHERE host = $1")
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(db(format!("replace host {name}'s partitions")))?;
        for p in parts {
            sqlx::query(
                "INSERT INTO partitions (host, name, state, memory_current, pid, spec, seen_ms) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(name)
            .bind(&p.name)
            .bind(&p.state)
            .bind(p.memory_current.map(|m| m as i64))
            .bind(p.pid.map(i64::from))
            .bind(json_of(&p.spec))
            .bind(p.seen_ms)
            .execute(&mut *tx)
            .await
            .map_err(db(format!("record partition {} of host {name}", p.name)))?;
        }
        tx.commit().await.map_err(db(format!("record host {name}'s poll")))
    }

    /// Records a poll that `name` did not answer, and why; its partitions
    /// stay as last seen.
    pub async fn host_unreachable(&self, name: &str, why: &str) -> Result<()> {
        sqlx::query("UPDATE hosts SET status = 'unreachable', error = $1, last_poll_ms = $2 WHERE name = $3")
            .bind(why)
            .bind(super::now_ms())
            .bind(name)
            .execute(&self.pool)
            .await
            .map_err(db(format!("record host {name}'s poll")))?;
        Ok(())
    }

    // --- partitions

    fn partition_row(row: &AnyRow) -> Result<PartitionRow> {
        let name: String = get(row, "name")?;
        Ok(PartitionRow {
            host: get(row, "host")?,
            state: get(row, "state")?,
            memory_current: get::<Option<i64>>(row, "memory_current")?.map(|m| m.max(0) as u64),
            pid: get::<Option<i64>>(row, "pid")?.map(|p| p as i32),
            spec: parse_json(Some(get(row, "spec")?), || format!("partitions.spec of {name}"))?.unwrap_or_default(),
            seen_ms: get(row, "seen_ms")?,
            name,
        })
    }

    /// Every partition as last seen, by name then host.
    pub async fn partitions(&self) -> Result<Vec<PartitionRow>> {
        let rows =
            sqlx::query("SELECT * FROM partitions ORDER BY name, host").fetch_all(&self.pool).await.map_err(db("list partitions"))?;
        rows.iter().map(Self::partition_row).collect()
    }

    /// The hosts a partition was last seen on (two while it moves).
    pub async fn partition(&self, name: &str) -> Result<Vec<PartitionRow>> {
        let rows = sqlx::query("SELECT * FROM partitions WHERE name = $1 ORDER BY host")
            .bind(name)
            .fetch_all(&self.pool)
            .await
            .map_err(db(format!("read partition {name}")))?;
        rows.iter().map(Self::partition_row).collect()
    }

    // --- migrations

    /// Records a migration, or its new state.
    pub async fn put_migration(&self, m: &MigrationRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO migrations (id, partition, source, target, who, started_ms, ended_ms, state, options, progress, report, error)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
             ON CONFLICT (id) DO UPDATE SET ended_ms = $7, state = $8, progress = $10, report = $11, error = $12",
        )
        .bind(&m.id)
        .bind(&m.partition)
        .bind(&m.source)
        .bind(&m.target)
        .bind(&m.who)
        .bind(m.started_ms)
        .bind(m.ended_ms)
        .bind(&m.state)
        .bind(json_of(&m.options))
        .bind(m.progress.as_ref().map(json_of))
        .bind(m.report.as_ref().map(json_of))
        .bind(m.error.as_deref())
        .execute(&self.pool)
        .await
        .map_err(db(format!("record migration {}", m.id)))?;
        Ok(())
    }

    fn migration_row(row: &AnyRow) -> Result<MigrationRow> {
        let id: String = get(row, "id")?;
        Ok(MigrationRow {
            partition: get(row, "partition")?,
            source: get(row, "source")?,
            target: get(row, "target")?,
            who: get(row, "who")?,
            started_ms: get(row, "started_ms")?,
            ended_ms: get(row, "ended_ms")?,
            state: get(row, "state")?,
            options: parse_json(Some(get(row, "options")?), || format!("migrations.options of {id}"))?.unwrap_or_default(),
            progress: parse_json(get(row, "progress")?, || format!("migrations.progress of {id}"))?,
            report: parse_json(get(row, "report")?, || format!("migrations.report of {id}"))?,
            error: get(row, "error")?,
            id,
        })
    }

    /// Migrations, newest first, at most `limit`.
    pub async fn migrations(&self, limit: i64) -> Result<Vec<MigrationRow>> {
        let rows = sqlx::query("SELECT * FROM migrations ORDER BY started_ms DESC, id DESC LIMIT $1")
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(db("list migrations"))?;
        rows.iter().map(Self::migration_row).collect()
    }

    /// The migrations not ended as recorded (a console that stopped
    /// while they ran picks them up).
    pub async fn unfinished_migrations(&self) -> Result<Vec<MigrationRow>> {
        let rows = sqlx::query("SELECT * FROM migrations WHERE ended_ms IS NULL ORDER BY started_ms")
            .fetch_all(&self.pool)
            .await
            .map_err(db("list unfinished migrations"))?;
        rows.iter().map(Self::migration_row).collect()
    }

    /// One migration.
    pub async fn migration(&self, id: &str) -> Result<Option<MigrationRow>> {
        let row = sqlx::query("SELECT * FROM migrations WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db(format!("read migration {id}")))?;
        row.as_ref().map(Self::migration_row).transpose()
    }

    // --- audit

    /// Records a change and who made it.
    pub async fn audit(&self, who: &str, action: &str, detail: &str) -> Result<()> {
        sqlx::query("INSERT INTO audit (at_ms, who, action, detail) VALUES ($1, $2, $3, $4)")
            .bind(super::now_ms())
            .bind(who)
            .bind(action)
            .bind(detail)
            .execute(&self.pool)
            .await
            .map_err(db(format!("audit {action} by {who}")))?;
        Ok(())
    }

    /// The audit trail, newest first, at most `limit`.
    pub async fn audit_entries(&self, limit: i64) -> Result<Vec<AuditEntry>> {
        let rows = sqlx::query("SELECT * FROM audit ORDER BY id DESC LIMIT $1")
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(db("read the audit trail"))?;
        rows.iter()
            .map(|r| {
                Ok(AuditEntry {
                    id: get(r, "id")?,
                    at_ms: get(r, "at_ms")?,
                    who: get(r, "who")?,
                    action: get(r, "action")?,
                    detail: get(r, "detail")?,
                })
            })
            .collect()
    }

    // --- tokens

    /// Stores a token's hash under `name`, replacing one of that name.
    pub async fn put_token(&self, name: &str, hash: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO tokens (name, hash, created_ms) VALUES ($1, $2, $3)
             ON CONFLICT (name) DO UPDATE SET hash = $2, created_ms = $3",
        )
        .bind(name)
        .bind(hash)
        .bind(super::now_ms())
        .execute(&self.pool)
        .await
        .map_err(db(format!("store token {name}")))?;
        Ok(())
    }

    /// The name of the token whose hash is `hash`.
    pub async fn token_name(&self, hash: &str) -> Result<Option<String>> {
        let row = sqlx::query("SELECT name FROM tokens WHERE hash = $1")
            .bind(hash)
            .fetch_optional(&self.pool)
            .await
            .map_err(db("look a token up"))?;
        row.as_ref().map(|r| get(r, "name")).transpose()
    }

    /// Forgets a token; false when there was none.
    pub async fn remove_token(&self, name: &str) -> Result<bool> {
        let r = sqlx::query("DELETE FROM tokens WHERE name = $1")
            .bind(name)
            .execute(&self.pool)
            .await
            .map_err(db(format!("remove token {name}")))?;
        Ok(r.rows_affected() == 1)
    }

    /// The tokens' names.
    pub async fn tokens(&self) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT name FROM tokens ORDER BY name").fetch_all(&self.pool).await.map_err(db("list tokens"))?;
        rows.iter().map(|r| get(r, "name")).collect()
    }

    // --- plans (policy.rs)

    /// Records a plan's run as it stands (written again at each step).
    pub async fn put_plan(&self, run: &crate::run::Run) -> Result<()> {
        let state = match run.state {
            crate::run::RunState::Running => "running",
            crate::run::RunState::Finished => "finished",
            crate::run::RunState::Interrupted => "interrupted",
        };
        sqlx::query(
            "INSERT INTO plans (id, who, state, started_ms, body) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (id) DO UPDATE SET state = excluded.state, body = excluded.body",
        )
        .bind(&run.id)
        .bind(&run.who)
        .bind(state)
        .bind(run.started_unix_ms as i64)
        .bind(json_of(run))
        .execute(&self.pool)
        .await
        .map_err(db(format!("record plan {}", run.id)))?;
        Ok(())
    }

    /// The latest `limit` runs of plans, newest first.
    pub async fn plans(&self, limit: i64) -> Result<Vec<crate::run::Run>> {
        let rows = sqlx::query("SELECT id, body FROM plans ORDER BY started_ms DESC, id DESC LIMIT $1")
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(db("list plans"))?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let id: String = get(row, "id")?;
            if let Some(run) = parse_json(Some(get::<String>(row, "body")?), || format!("plans.body of {id}"))? {
                out.push(run);
            }
        }
        Ok(out)
    }

    /// One run of a plan.
    pub async fn plan(&self, id: &str) -> Result<Option<crate::run::Run>> {
        let row = sqlx::query("SELECT body FROM plans WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db(format!("read plan {id}")))?;
        match row {
            Some(row) => parse_json(Some(get::<String>(&row, "body")?), || format!("plans.body of {id}")),
            None => Ok(None),
        }
    }

    /// Closes the connections.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// A database URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_hides_the_password_only() {
        assert_eq!(redact("postgres://lpm:secret@db:5432/lpm"), "postgres://lpm:***@db:5432/lpm");
        assert_eq!(redact("postgres://lpm@db/lpm"), "postgres://lpm@db/lpm");
        assert_eq!(redact("sqlite:///var/lib/x.db"), "sqlite:///var/lib/x.db");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_plan_s_run_is_kept_whole_and_read_back() {
        let dir = std::env::temp_dir().join(format!("lpm-console-plans-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.join("c.db").display());
        let s = Store::open(&url).await.unwrap();
        let mut inv = crate::Inventory::default();
        inv.hosts.push(crate::Host::new("h1", crate::Resources::new(1000, 1000)));
        inv.hosts.push(crate::Host::new("h2", crate::Resources::new(1000, 1000)));
        inv.partitions.push(crate::Partition::new("p", "h1", crate::Resources::new(100, 100)));
        let plan = crate::evacuate(&inv, &crate::Rules::default(), "h1").unwrap();
        let mut run = crate::run::Run::new("plan-1".into(), "token:ann".into(), plan, 5);
        s.put_plan(&run).await.unwrap();
        run.state = crate::run::RunState::Finished;
        s.put_plan(&run).await.unwrap();
        assert_eq!(s.plan("plan-1").await.unwrap(), Some(run.clone()));
        assert_eq!(s.plans(10).await.unwrap(), vec![run]);
        assert_eq!(s.plan("plan-2").await.unwrap(), None);
        s.close().await;
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test(flavor = "current_thread")]
    async fn schema_applies_once_and_keeps_what_it_holds() {
        let dir = std::env::temp_dir().join(format!("lpm-console-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.join("c.db").display());
        let s = Store::open(&url).await.unwrap();
        assert!(s.add_host("h1", "10.0.0.1:7412", "10.0.0.1:7411").await.unwrap());
        assert!(!s.add_host("h1", "x", "y").await.unwrap());
        s.audit("token:ann", "host.add", "h1").await.unwrap();
        let m = MigrationRow { id: "m1".into(), partition: "p".into(), state: "running".into(), ..Default::default() };
        s.put_migration(&m).await.unwrap();
        s.close().await;
        let s = Store::open(&url).await.unwrap();
        assert_eq!(s.hosts().await.unwrap().len(), 1);
        assert_eq!(s.audit_entries(10).await.unwrap()[0].who, "token:ann");
        assert_eq!(s.unfinished_migrations().await.unwrap()[0].id, "m1");
        s.close().await;
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
