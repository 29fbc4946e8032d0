//! The store suite (`tests/suite`) on PostgreSQL, plus what only
//! PostgreSQL has: the serving role's missing UPDATE/DELETE privileges.
//!
//! The server is `MANDATE_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`, a superuser, as in CI). Each
//! test works in a schema of its own, dropped afterwards. Set
//! `MANDATE_TEST_POSTGRES_URL=skip` to skip these tests on a machine
//! without PostgreSQL.

#[macro_use]
mod suite;

use mandate_audit::{AuditLog, Options, Store};
use std::sync::atomic::{AtomicU32, Ordering};
use suite::{Fixture, TestResult};

fn url() -> String {
    std::env::var("MANDATE_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

fn skip() -> bool {
    url() == "skip"
}

/// Runs blocking client work off the async runtime's threads.
fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> Result<T, Box<dyn std::error::Error>> {
    std::thread::scope(|s| s.spawn(f).join()).map_err(|_| "client thread panicked".into())
}

struct Pg {
    schema: String,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

impl Pg {
    fn new() -> Result<Self, Box<dyn std::error::Error>> {
        let ms = mandate_core::Clock::system().now_ms();
        let schema = format!(
            "t_{}_{}_{}",
            std::process::id(),
            ms,
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        Ok(Self { schema })
    }

    fn sql(&self, sql: &str) -> TestResult {
        let url = url();
        let schema = self.schema.clone();
        let sql = sql.to_owned();
        off_runtime(move || -> Result<(), String> {
            let mut c =
                postgres::Client::connect(&url, postgres::NoTls).map_err(|e| e.to_string())?;
            c.batch_execute(&format!("SET search_path TO {schema}; {sql}"))
                .map_err(|e| {
                    e.as_db_error()
                        .map_or_else(|| e.to_string(), |d| d.message().to_owned())
                })
        })??;
        Ok(())
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        let url = url();
        let schema = self.schema.clone();
        let _ = off_runtime(move || {
            if let Ok(mut c) = postgres::Client::connect(&url, postgres::NoTls) {
                let _ = c.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"));
            }
        });
    }
}

impl Fixture for Pg {
    fn store(&self) -> Store {
        Store::postgres(url()).with_schema(&self.schema)
    }

    fn tamper(&self, sql: &str) -> TestResult {
        // A superuser can switch triggers off for its session.
        self.sql(&format!("SET session_replication_role = replica; {sql}"))
    }
}

macro_rules! cases {
    ($($name:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() -> TestResult {
            if skip() {
                return Ok(());
            }
            suite::$name(&Pg::new()?).await
        }
    )*};
}

every_case!(cases);

/// The trigger refuses UPDATE, DELETE and TRUNCATE for everyone (the
/// superuser too), and the serving role has no UPDATE or DELETE privilege.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_tables_are_append_only() -> TestResult {
    if skip() {
        return Ok(());
    }
    let pg = Pg::new()?;
    let log = AuditLog::open(&pg.store(), Options::default())?;
    log.append(suite::record(1, "s")).await?;
    drop(log);
    for sql in [
        "UPDATE audit_log SET tool = 'x'",
        "DELETE FROM audit_log",
        "TRUNCATE audit_log",
        "DELETE FROM audit_checkpoints",
    ] {
        let refused = pg.sql(sql).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(refused.contains("append-only"), "{sql}: {refused:?}");
    }
    // A serving role that owns nothing: INSERT and SELECT only.
    let role = format!("{}_writer", pg.schema);
    pg.sql(&format!(
        "CREATE ROLE {role} LOGIN;
         GRANT USAGE ON SCHEMA {schema} TO {role};
         GRANT SELECT, INSERT ON audit_log, audit_checkpoints TO {role};",
        schema = pg.schema
    ))?;
    let grants = off_runtime({
        let url = url();
        let schema = pg.schema.clone();
        move || -> Result<Vec<String>, String> {
            let mut c =
                postgres::Client::connect(&url, postgres::NoTls).map_err(|e| e.to_string())?;
            let rows = c
                .query(
                    "SELECT privilege_type FROM information_schema.role_table_grants
                     WHERE grantee = $1 AND table_schema = $2 AND table_name = 'audit_log'
                     ORDER BY 1",
                    &[&role, &schema],
                )
                .map_err(|e| e.to_string())?;
            let _ = c.batch_execute(&format!("DROP OWNED BY {role}; DROP ROLE {role}"));
            Ok(rows.iter().map(|r| r.get(0)).collect())
        }
    })??;
    assert_eq!(grants, vec!["INSERT".to_owned(), "SELECT".to_owned()]);
    Ok(())
}

/// An unreachable server: opening fails with a message naming the store's
/// failure, never the URL's password.
#[test]
fn unreachable_server_is_an_error_without_the_password() {
    let store = Store::postgres("postgres://mandate:s3cret@127.0.0.1:1/none");
    assert!(!store.to_string().contains("s3cret"), "{store}");
    let err = AuditLog::open(&store, Options::default())
        .err()
        .map(|e| e.to_string());
    let err = err.unwrap_or_default();
    assert!(!err.is_empty());
    assert!(!err.contains("s3cret"), "{err}");
}
