//! chiron's storage: [`Store`] is one repository API over SQLite (the embedded default, WAL)
//! and PostgreSQL (scale-out). Both run the same portable schema from `migrations/`: ids are
//! UUID text and times are Unix milliseconds, so every query is written once and runs on
//! sqlx's `Any` driver against either backend.
//!
//! Modules group the repository methods by table family: [`principals`], [`groups`],
//! [`tokens`], [`grants`], [`audit`], [`tool_calls`]. Mutations that must be audited take the audit event and write it in
//! the same transaction, so an action and its audit row land together or not at all.
//!
//! Invariant: no token and no secret value is ever written by this crate; tokens arrive here
//! already hashed.

pub mod audit;
pub mod batch;
pub mod grants;
pub mod groups;
pub mod principals;
pub mod secrets;
pub mod tokens;
pub mod tool_calls;

mod rows;

#[cfg(feature = "testing")]
pub mod testing;

/// sqlx's error type, for callers that classify database failures.
pub use sqlx::Error as SqlxError;

use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Executor};
use std::str::FromStr;

/// The migrations both backends run.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Which database a [`Store`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// An SQLite file.
    Sqlite,
    /// A PostgreSQL server.
    Postgres,
}

impl Backend {
    /// Picks the backend from a database URL.
    pub fn from_url(url: &str) -> Result<Self, StoreError> {
        if url.starts_with("sqlite:") {
            Ok(Self::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Self::Postgres)
        } else {
            Err(StoreError::UnsupportedUrl)
        }
    }

    /// `sqlite` or `postgres`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
        }
    }
}

/// Errors from storage. Messages never contain query parameters.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The URL names neither SQLite nor PostgreSQL.
    #[error("database url must start with sqlite: or postgres://")]
    UnsupportedUrl,
    /// The database could not be reached or a query failed.
    #[error("database error")]
    Database(#[from] sqlx::Error),
    /// Applying migrations failed.
    #[error("migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A uniqueness rule would be broken, e.g. a group name already taken.
    #[error("{0} already exists")]
    Conflict(&'static str),
    /// The referenced row does not exist.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// A stored value could not be decoded; the schema and the code disagree.
    #[error("corrupt row in {table}: {reason}")]
    Corrupt {
        /// The table holding the bad row.
        table: &'static str,
        /// What could not be decoded.
        reason: String,
    },
}

/// Connection settings, a subset of the `[database]` config.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// `sqlite:…` or `postgres://…`.
    pub url: String,
    /// Upper bound on pooled connections.
    pub max_connections: u32,
    /// How long a query waits for a connection.
    pub acquire_timeout: Duration,
}

/// A handle on the database; cheap to clone (the pool is shared).
#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
}

impl Store {
    /// Opens a pool. For SQLite the file is created if missing and put in WAL mode. Does not
    /// migrate: call [`Store::migrate`].
    pub async fn connect(options: &ConnectOptions) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = Backend::from_url(&options.url)?;
        let mut url = options.url.clone();
        if backend == Backend::Sqlite && !url.contains("mode=") {
            url.push_str(if url.contains('?') {
                "&mode=rwc"
            } else {
                "?mode=rwc"
            });
        }
        let connect_options = AnyConnectOptions::from_str(&url)?;
        let pool = AnyPoolOptions::new()
            .max_connections(options.max_connections)
            .acquire_timeout(options.acquire_timeout)
            // A SQLite connection is a local file that cannot go away under us: skip the
            // extra worker round trip of a ping before every use. Network connections
            // (PostgreSQL) keep it.
            .test_before_acquire(backend != Backend::Sqlite)
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // WAL lets readers proceed during a write; the busy timeout makes
                        // concurrent writers wait instead of failing; foreign keys are off by
                        // default in SQLite.
                        conn.execute(
                            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                             PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000;",
                        )
                        .await?;
                    }
                    Ok(())
                })
            })
            .connect_with(connect_options)
            .await?;
        Ok(Self { pool, backend })
    }

    /// Applies pending migrations.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    /// Connects and migrates.
    pub async fn open(options: &ConnectOptions) -> Result<Self, StoreError> {
        let store = Self::connect(options).await?;
        store.migrate().await?;
        Ok(store)
    }

    /// Which backend this store uses.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// A round trip to the database, for readiness checks.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Closes every pooled connection.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Appends `rows` to one table in one transaction, [`INSERT_CHUNK`] rows per multi-row
    /// `INSERT` ([`multi_row_insert`]); `bind` binds one row's `columns` values in order.
    ///
    /// `bind` may borrow from the row: bind text as `&str` (`as_str`, `as_deref`), not as a
    /// `String`, which the `Any` driver copies once more (a batch has thousands of values).
    pub(crate) async fn insert_rows<T>(
        &self,
        head: &str,
        columns: usize,
        rows: &[T],
        bind: impl for<'q> Fn(AnyQuery<'q>, &'q T) -> AnyQuery<'q>,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool().begin().await?;
        for chunk in rows.chunks(INSERT_CHUNK) {
            let sql = multi_row_insert(self.backend(), head, columns, chunk.len());
            let query = chunk.iter().fold(sqlx::query(&sql), &bind);
            query.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

/// A query on the `Any` driver, as [`Store::insert_rows`] hands it to its binder.
pub(crate) type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>;

/// Rows per multi-row `INSERT`: well under both SQLite's (32766) and PostgreSQL's (65535)
/// bound on parameters per statement for the widest audit table.
pub(crate) const INSERT_CHUNK: usize = 128;

/// `{head} VALUES (…), (…)` with `columns` parameters for each of `rows` rows, so a batch of
/// audit rows costs one statement (one round trip to the database) instead of one per row.
/// SQLite gets anonymous `?` parameters: binding a numbered one makes SQLite search every
/// parameter name, which grows with the square of the row count.
pub(crate) fn multi_row_insert(
    backend: Backend,
    head: &str,
    columns: usize,
    rows: usize,
) -> String {
    use std::fmt::Write;
    let mut sql = String::with_capacity(head.len() + rows * columns * 5);
    sql.push_str(head);
    sql.push_str(" VALUES ");
    for row in 0..rows {
        sql.push_str(if row == 0 { "(" } else { ", (" });
        for column in 0..columns {
            if column > 0 {
                sql.push_str(", ");
            }
            match backend {
                Backend::Sqlite => sql.push('?'),
                Backend::Postgres => {
                    let _ = write!(sql, "${}", row * columns + column + 1);
                }
            }
        }
        sql.push(')');
    }
    sql
}

/// Maps a unique-constraint violation to [`StoreError::Conflict`].
pub(crate) fn conflict_or(err: sqlx::Error, what: &'static str) -> StoreError {
    match &err {
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict(what),
        _ => StoreError::Database(err),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn multi_row_inserts_number_every_parameter() {
        use super::{multi_row_insert, Backend};
        assert_eq!(
            multi_row_insert(Backend::Postgres, "INSERT INTO t (a, b)", 2, 3),
            "INSERT INTO t (a, b) VALUES ($1, $2), ($3, $4), ($5, $6)"
        );
        assert_eq!(
            multi_row_insert(Backend::Sqlite, "INSERT INTO t (a, b)", 2, 2),
            "INSERT INTO t (a, b) VALUES (?, ?), (?, ?)"
        );
    }
}
