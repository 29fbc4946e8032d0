//! The store suite (`tests/suite`) on SQLite.

#[macro_use]
mod suite;

use mandate_audit::Store;
use suite::{Fixture, TestResult};

struct Sqlite {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
}

impl Sqlite {
    fn new() -> Result<Self, Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("audit.sqlite");
        Ok(Self { _dir: dir, path })
    }
}

impl Fixture for Sqlite {
    fn store(&self) -> Store {
        Store::sqlite(&self.path)
    }

    fn tamper(&self, sql: &str) -> TestResult {
        let conn = rusqlite::Connection::open(&self.path)?;
        conn.execute_batch(
            "DROP TRIGGER IF EXISTS audit_log_no_update;
             DROP TRIGGER IF EXISTS audit_log_no_delete;
             DROP TRIGGER IF EXISTS audit_log_extend_chain;",
        )?;
        conn.execute_batch(sql)?;
        Ok(())
    }
}

macro_rules! cases {
    ($($name:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() -> TestResult {
            suite::$name(&Sqlite::new()?).await
        }
    )*};
}

every_case!(cases);
