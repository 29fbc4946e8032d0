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

/// A store whose folder is moved away takes no appends (SQLite would write
/// them into the unreachable file), and takes them again, on the same
/// chain, once the folder is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_away_store_refuses_appends_until_it_is_back() -> TestResult {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    std::fs::create_dir(&data)?;
    let log = mandate_audit::AuditLog::open_sqlite(&data.join("audit.sqlite"))?;
    assert_eq!(log.append(suite::record(1, "s")).await?.seq(), 1);

    let away = dir.path().join("away");
    std::fs::rename(&data, &away)?;
    assert!(log.append(suite::record(2, "s")).await.is_err());
    assert!(log.health().is_err());

    std::fs::rename(&away, &data)?;
    assert_eq!(log.append(suite::record(3, "s")).await?.seq(), 2);
    assert!(log.health().is_ok());
    Ok(())
}
