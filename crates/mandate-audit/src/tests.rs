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

#[tokio::test]
async fn stats_count_queued_appends_and_report_commits() {
    // A writer that never takes a job: appends stay queued.
    let (tx, rx) = mpsc::channel(8);
    let log = handle(tx, None);
    let stats = log.stats();
    assert_eq!(stats.queue_depth(), 0);
    let waiting: Vec<_> = (0..3)
        .map(|_| {
            let log = log.clone();
            tokio::spawn(async move { log.append(record()).await })
        })
        .collect();
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while stats.queue_depth() < 3 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert_eq!(stats.queue_depth(), 3);
    drop(rx);
    for w in waiting {
        let _ = w.await;
    }
    assert_eq!(stats.queue_depth(), 0, "a closed queue holds nothing");
}

#[tokio::test]
async fn stats_observe_every_commit_of_a_real_log() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let log = AuditLog::open_sqlite(&dir.path().join("audit.db")).unwrap_or_else(|e| panic!("{e}"));
    let stats = log.stats();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&seen);
    stats.on_commit(move |took| {
        sink.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(took)
    });
    assert!(stats.is_healthy());
    for _ in 0..2 {
        log.append(record()).await.unwrap_or_else(|e| panic!("{e}"));
    }
    let commits = seen.lock().unwrap_or_else(PoisonError::into_inner).len() as u64;
    assert_eq!(commits, stats.commits());
    assert_eq!(commits, 2, "two sequential appends are two commits");
    assert_eq!(stats.appended(), 2);
    assert_eq!(stats.queue_depth(), 0);
    drop(log);
    assert!(
        !stats.is_healthy(),
        "the stats handle kept the writer alive"
    );
}
