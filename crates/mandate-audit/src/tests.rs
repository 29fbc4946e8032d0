//! Unit tests that need the handle's internals: a writer that is gone.

use super::*;
use mandate_core::{CorrelationId, DecisionRecord, RecordKind, Subject};

fn record() -> AuditRecord {
    AuditRecord {
        kind: RecordKind::Decision,
        time_ms: 1,
        decision: DecisionRecord::deny("test", "ph"),
        correlation_id: CorrelationId::new(),
        subject: Subject::default(),
        tool: "docs.search".to_owned(),
        args_hash: "ah".to_owned(),
        outcome: None,
        detail: None,
        amount: None,
        taint: Vec::new(),
        args: None,
        grant: None,
        sources: None,
    }
}

fn handle(tx: mpsc::Sender<Job>, thread: Option<JoinHandle<()>>) -> AuditLog {
    AuditLog {
        tx,
        shared: Arc::default(),
        store: Arc::new(Store::sqlite("unused")),
        write_deadline: Duration::from_millis(500),
        writer: Arc::new(WriterThread(Mutex::new(thread))),
    }
}

#[tokio::test]
async fn append_fails_when_the_writer_is_gone() {
    let (tx, rx) = mpsc::channel(1);
    drop(rx);
    let log = handle(tx, None);
    assert_eq!(log.append(record()).await, Err(AuditError::WriterStopped));
    assert!(log.health().is_err());
}

#[tokio::test]
async fn append_fails_when_the_writer_drops_the_job_unanswered() {
    let (tx, mut rx) = mpsc::channel::<Job>(1);
    // A writer that dies holding the job: the waiter must not hang.
    let thread = std::thread::spawn(move || drop(rx.blocking_recv()));
    let log = handle(tx, Some(thread));
    assert_eq!(log.append(record()).await, Err(AuditError::WriterStopped));
}

#[test]
fn trigger_genesis_matches_the_constant() {
    let ddl_genesis = format!("'{GENESIS_HASH}'");
    assert!(schema::DDL.contains(&ddl_genesis));
}

#[test]
fn error_display_names_the_operation_not_the_record() {
    let e = AuditError::storage(error::Op::Write, "database is locked");
    assert_eq!(e.to_string(), "audit log write failed: database is locked");
}

#[tokio::test]
async fn an_append_not_durable_within_the_deadline_fails() {
    // A writer that takes the job and never answers: a stuck disk.
    let (tx, mut rx) = mpsc::channel(1);
    let hold = tokio::spawn(async move {
        let job = rx.recv().await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        drop(job);
    });
    let log = handle(tx, None);
    assert_eq!(
        log.append(record()).await,
        Err(AuditError::Timeout(Duration::from_millis(500)))
    );
    assert!(log.health().is_err(), "a stuck store reported healthy");
    hold.abort();
}
