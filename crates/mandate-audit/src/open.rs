//! Opening a store: which backend serves it (SQLite or PostgreSQL). The
//! one module that knows both implementations; everything else speaks to
//! the `Backend` and `Reader` traits of `backend.rs`.

use crate::backend::{Backend, Reader, Store};
use crate::error::AuditError;

/// Opens `store` for reading.
pub(crate) fn open_reader(store: &Store) -> Result<Box<dyn Reader + Send>, AuditError> {
    match store {
        Store::Sqlite(path) => Ok(Box::new(crate::sqlite::SqliteReader::open(path)?)),
        Store::Postgres { url, schema } => {
            Ok(Box::new(crate::postgres::PgReader::open(url, schema)?))
        }
    }
}

/// Opens `store` for writing (creating its tables if needed).
pub(crate) fn open_backend(
    store: &Store,
    options: &crate::SqliteOptions,
) -> Result<Box<dyn Backend>, AuditError> {
    match store {
        Store::Sqlite(path) => Ok(Box::new(crate::sqlite::SqliteBackend::open(
            path,
            options.busy_timeout,
        )?)),
        Store::Postgres { url, schema } => {
            Ok(Box::new(crate::postgres::PgBackend::open(url, schema)?))
        }
    }
}
