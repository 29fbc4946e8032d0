//! The audit log against a real SQLite file: chaining, group commit,
//! resume, write failure, and tampering through a separate connection.

use mandate_audit::{
    Appended, AuditError, AuditLog, GENESIS_HASH, Problem, ProblemKind, SqliteOptions,
    canonical_body, read_by_correlation, read_records, record_hash, verify,
};
use mandate_core::{
    AuditRecord, CorrelationId, DecisionId, DecisionRecord, Effect, Obligation, RecordKind, Subject,
};
use rusqlite::Connection;
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn record(n: i64, session: &str, correlation: &CorrelationId) -> AuditRecord {
    AuditRecord {
        kind: if n % 2 == 0 {
            RecordKind::Decision
        } else {
            RecordKind::Outcome
        },
        time_ms: 1_700_000_000_000 + n,
        decision: DecisionRecord {
            id: DecisionId::new(),
            effect: Effect::Allow,
            policies: vec!["p1".to_owned(), "p0".to_owned()],
            reasons: vec![format!("reason {n}")],
            obligations: vec![Obligation::Redact {
                fields: vec!["ssn".to_owned()],
            }],
            policy_hash: "ph".to_owned(),
            code: None,
            agent_reason: None,
        },
        correlation_id: correlation.clone(),
        subject: Subject {
            sub: "alice".to_owned(),
            act: vec!["agent-a".to_owned(), "agent-b".to_owned()],
            scope: "docs.* mail.send".to_owned(),
            task_id: Some("t1".to_owned()),
            build: None,
            session: session.to_owned(),
            ..Subject::default()
        },
        tool: "docs.search".to_owned(),
        args_hash: "ab".repeat(32),
        outcome: (n % 2 == 1).then(|| "ok".to_owned()),
        detail: Some("naïve \"quoted\" ✓".to_owned()),
        amount: None,
        taint: Vec::new(),
        args: None,
        grant: None,
        sources: None,
    }
}

fn db(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("audit.db")
}

/// Opens a log, appends `n` records one by one, and closes it.
async fn write_n(path: &Path, n: i64) -> Result<Vec<Appended>, AuditError> {
    let log = AuditLog::open_sqlite(path)?;
    let corr = CorrelationId::new();
    let mut out = Vec::new();
    for i in 1..=n {
        out.push(log.append(record(i, "s1", &corr)).await?);
    }
    Ok(out)
}

/// Edits the file the way an attacker with write access would: drop the
/// append-only triggers, then run `sql`.
fn tamper(path: &Path, sql: &str) -> rusqlite::Result<()> {
    let conn = Connection::open(path)?;
    conn.execute_batch(
        "DROP TRIGGER IF EXISTS audit_log_no_update;
         DROP TRIGGER IF EXISTS audit_log_no_delete;
         DROP TRIGGER IF EXISTS audit_log_extend_chain;",
    )?;
    conn.execute_batch(sql)
}

#[tokio::test]
async fn chain_verifies_and_reads_back() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = db(&dir);
    let log = AuditLog::open_sqlite(&path)?;
    assert_eq!(log.health(), Ok(()));
    let (c1, c2) = (CorrelationId::new(), CorrelationId::new());
    let mut appended = Vec::new();
    for i in 1..=6 {
        let (session, corr) = if i <= 4 { ("s1", &c1) } else { ("s2", &c2) };
        appended.push(log.append(record(i, session, corr)).await?);
    }
    assert_eq!(
        appended.iter().map(|a| a.seq()).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5, 6]
    );
    assert_eq!(log.appended_count(), 6);
    assert_eq!(log.health(), Ok(()));

    let report = verify(&path, None)?;
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!(report.records, 6);
    assert_eq!(report.head.as_deref(), appended.last().map(|a| a.hash()));

    let all = read_records(&path, None)?;
    assert_eq!(all.len(), 6);
    let first = all.first().ok_or("empty")?;
    assert_eq!(first.prev_hash, GENESIS_HASH);
    assert_eq!(first.record, record_with_ids(&first.record, 1, "s1", &c1));
    for (pair, a) in all.windows(2).zip(appended.iter().skip(1)) {
        if let [prev, this] = pair {
            assert_eq!(this.prev_hash, prev.hash);
            assert_eq!(this.seq, a.seq());
            assert_eq!(this.hash, a.hash());
        }
    }
    assert_eq!(read_records(&path, Some("s2"))?.len(), 2);
    assert_eq!(read_records(&path, Some("nope"))?.len(), 0);
    let call = read_by_correlation(&path, c1.as_str())?;
    assert_eq!(
        call.iter().map(|r| r.seq).collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );
    Ok(())
}

/// The same record with the random decision id taken from `got`.
fn record_with_ids(got: &AuditRecord, n: i64, session: &str, c: &CorrelationId) -> AuditRecord {
    let mut r = record(n, session, c);
    r.decision.id = got.decision.id.clone();
    r
}

/// A third party recomputes every hash from the raw columns with nothing
/// but SHA-256, following the README.
#[tokio::test]
async fn hash_is_recomputable_from_the_documented_layout() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = db(&dir);
    write_n(&path, 3).await?;
    let conn = Connection::open(&path)?;
    let mut stmt = conn.prepare("SELECT seq, prev_hash, hash, body FROM audit_log ORDER BY seq")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
        ))
    })?;
    let mut prev = "0".repeat(64);
    for row in rows {
        let (_seq, prev_hash, hash, body) = row?;
        assert_eq!(prev_hash, prev);
        let mut bytes = prev_hash.into_bytes();
        bytes.push(b'\n');
        bytes.extend_from_slice(body.as_bytes());
        assert_eq!(hash, hex::encode(Sha256::digest(&bytes)));
        // The body is the canonical JSON of the record it parses to.
        let parsed: AuditRecord = serde_json::from_str(&body)?;
        assert_eq!(canonical_body(&parsed)?, body);
        prev = hash;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_are_group_committed() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = db(&dir);
    let log = AuditLog::open_sqlite(&path)?;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200 {
        let log = log.clone();
        tasks.spawn(async move { log.append(record(i, "s", &CorrelationId::new())).await });
    }
    let mut seqs = BTreeSet::new();
    while let Some(done) = tasks.join_next().await {
        seqs.insert(done??.seq());
    }
    assert_eq!(seqs, (1..=200).collect::<BTreeSet<i64>>());
    assert_eq!(log.appended_count(), 200);
    let commits = log.commits_count();
    assert!(
        commits < 200,
        "no batching: {commits} commits for 200 appends"
    );
    let report = verify(&path, None)?;
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!(report.records, 200);
    Ok(())
}

#[tokio::test]
async fn reopen_resumes_the_chain() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = db(&dir);
    let first = write_n(&path, 3).await?;
    let second = write_n(&path, 2).await?;
    assert_eq!(
        second.iter().map(|a| a.seq()).collect::<Vec<_>>(),
        vec![4, 5]
    );
    let stored = read_records(&path, None)?;
    let row4 = stored.iter().find(|r| r.seq == 4).ok_or("no row 4")?;
    assert_eq!(
        Some(row4.prev_hash.as_str()),
        first.last().map(|a| a.hash())
    );
    let report = verify(&path, None)?;
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!(report.head, second.last().map(|a| a.hash().to_owned()));
    Ok(())
}

#[tokio::test]
async fn triggers_refuse_update_delete_and_foreign_inserts() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = db(&dir);
    write_n(&path, 2).await?;
    let conn = Connection::open(&path)?;
    assert!(
        conn.execute("UPDATE audit_log SET tool = 'x' WHERE seq = 1", [])
            .is_err()
    );
    assert!(
        conn.execute("DELETE FROM audit_log WHERE seq = 2", [])
            .is_err()
    );
    // Out of sequence, and in sequence but not chained to the head.
    assert!(conn.execute("INSERT INTO audit_log SELECT 9, prev_hash, hash, body, time_ms, kind, decision_id, correlation_id, session, sub, act, scope, task_id, build, tool, args_hash, effect, policies, reasons, obligations, policy_hash, outcome, detail FROM audit_log WHERE seq = 2", []).is_err());
    assert!(conn.execute("INSERT INTO audit_log SELECT 3, prev_hash, hash, body, time_ms, kind, decision_id, correlation_id, session, sub, act, scope, task_id, build, tool, args_hash, effect, policies, reasons, obligations, policy_hash, outcome, detail FROM audit_log WHERE seq = 2", []).is_err());
    assert!(verify(&path, None)?.is_ok());
    Ok(())
}

fn problems(path: &Path) -> Result<Vec<Problem>, AuditError> {
    let report = verify(path, None)?;
    Ok(report.problems)
}

fn at(seq: i64, kind: ProblemKind) -> Problem {
    Problem { seq, kind }
}

#[tokio::test]
async fn edited_body_is_named_by_seq() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = db(&dir);
    write_n(&path, 5).await?;
    // A careful attacker edits the body and the matching column.
    tamper(
        &path,
        "UPDATE audit_log SET body = replace(body, '\"docs.search\"', '\"docs.delete\"'),
                              tool = 'docs.delete' WHERE seq = 3;",
    )?;
    assert_eq!(problems(&path)?, vec![at(3, ProblemKind::Edited)]);
    Ok(())
}

#[tokio::test]
async fn edited_column_is_named_by_seq_and_column() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = db(&dir);
    write_n(&path, 5).await?;
    tamper(
        &path,
        "UPDATE audit_log SET session = 'other' WHERE seq = 5;",
    )?;
    assert_eq!(
        problems(&path)?,
        vec![at(
            5,
            ProblemKind::ColumnMismatch {
                column: "session".to_owned()
            }
        )]
    );
    Ok(())
}

#[tokio::test]
async fn deleted_row_is_named_by_seq() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = db(&dir);
    write_n(&path, 5).await?;
    tamper(&path, "DELETE FROM audit_log WHERE seq = 3;")?;
    assert_eq!(
        problems(&path)?,
        vec![at(3, ProblemKind::Deleted { count: Some(1) })]
    );
    // A deleted first row is a gap from 1.
    tamper(&path, "DELETE FROM audit_log WHERE seq IN (1, 2);")?;
    assert_eq!(
        problems(&path)?,
        vec![at(1, ProblemKind::Deleted { count: Some(3) }),]
    );
    Ok(())
}

#[tokio::test]
async fn inserted_row_is_named_at_the_break() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = db(&dir);
    let appended = write_n(&path, 5).await?;
    let h2 = appended.get(1).ok_or("no row 2")?.hash().to_owned();
    let conn = Connection::open(&path)?;
    let body2: String =
        conn.query_row("SELECT body FROM audit_log WHERE seq = 2", [], |r| r.get(0))?;
    drop(conn);
    // Make room at seq 3, then insert a replay of row 2, correctly hashed
    // and chained to row 2: only the old row 3 (now 4) can expose it.
    let forged = record_hash(&h2, &body2);
    tamper(
        &path,
        &format!(
            "UPDATE audit_log SET seq = seq + 1000 WHERE seq >= 3;
             UPDATE audit_log SET seq = seq - 999 WHERE seq >= 1000;
             INSERT INTO audit_log SELECT 3, '{h2}', '{forged}', body, time_ms, kind, decision_id,
                correlation_id, session, sub, act, scope, task_id, build, tool, args_hash, effect,
                policies, reasons, obligations, policy_hash, outcome, detail
                FROM audit_log WHERE seq = 2;"
        ),
    )?;
    assert_eq!(problems(&path)?, vec![at(3, ProblemKind::Inserted)]);
    Ok(())
}

#[tokio::test]
async fn swapped_rows_are_named_by_seq() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = db(&dir);
    write_n(&path, 5).await?;
    tamper(
        &path,
        "UPDATE audit_log SET seq = 1000 WHERE seq = 2;
         UPDATE audit_log SET seq = 2 WHERE seq = 3;
         UPDATE audit_log SET seq = 3 WHERE seq = 1000;",
    )?;
    assert_eq!(
        problems(&path)?,
        // Stored at seq 3 is the original record 2, which the chain
        // places right after record 1: the one moved row is named.
        vec![at(3, ProblemKind::Reordered { after: 1 })]
    );
    Ok(())
}

/// Works as root: a second connection holds the write lock, so the
/// writer's transaction fails with SQLITE_BUSY after its busy timeout.
#[tokio::test]
async fn failed_write_is_an_error_and_nothing_is_acknowledged() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = db(&dir);
    let options = SqliteOptions::default().busy_timeout(Duration::from_millis(50));
    let log = AuditLog::open_sqlite_with(&path, options)?;
    let corr = CorrelationId::new();
    log.append(record(1, "s", &corr)).await?;

    let locker = Connection::open(&path)?;
    locker.execute_batch("BEGIN IMMEDIATE;")?;
    let failed = log.append(record(2, "s", &corr)).await;
    assert!(matches!(failed, Err(AuditError::Storage(_))), "{failed:?}");
    let health = log.health();
    assert!(health.is_err());
    assert!(
        health.err().unwrap_or_default().contains("locked"),
        "health names the cause"
    );
    assert_eq!(log.appended_count(), 1);
    locker.execute_batch("ROLLBACK;")?;

    // The chain head did not move: the next record is seq 2.
    let ok = log.append(record(3, "s", &corr)).await?;
    assert_eq!(ok.seq(), 2);
    assert_eq!(log.health(), Ok(()));
    assert_eq!(log.appended_count(), 2);
    let report = verify(&path, None)?;
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!(report.records, 2);
    Ok(())
}

#[test]
fn readers_refuse_a_missing_or_foreign_file() -> TestResult {
    let dir = tempfile::tempdir()?;
    assert!(read_records(dir.path().join("missing.db"), None).is_err());
    let foreign = dir.path().join("foreign.db");
    Connection::open(&foreign)?.execute_batch("CREATE TABLE t (x);")?;
    assert!(matches!(verify(&foreign, None), Err(AuditError::Schema(_))));
    // Nothing was created by the failed read.
    assert!(!dir.path().join("missing.db").exists());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outcome_shares_the_next_decisions_commit_and_never_waits_long() -> TestResult {
    let dir = tempfile::tempdir()?;
    let log = AuditLog::open_sqlite(&db(&dir))?;
    let c = CorrelationId::new();
    // Alone, a deferrable record is still committed, within its short wait.
    let started = std::time::Instant::now();
    log.append_deferrable(record(1, "s", &c)).await?;
    assert!(started.elapsed() < Duration::from_millis(500));
    assert_eq!(log.commits_count(), 1);
    // Followed at once by an urgent record, both share one commit. The
    // window is 5 ms, so a loaded machine may miss it now and then: the
    // pair is tried a few times and must share a commit at least once.
    let mut shared = false;
    let mut n = 1;
    for _ in 0..5 {
        let before = log.commits_count();
        let deferred = {
            let log = log.clone();
            let c = c.clone();
            let seq = n + 1;
            tokio::spawn(async move { log.append_deferrable(record(seq, "s", &c)).await })
        };
        tokio::time::sleep(Duration::from_millis(1)).await;
        let urgent = log.append(record(n + 2, "s", &c)).await?;
        let outcome = deferred.await??;
        let mut seqs = [outcome.seq(), urgent.seq()];
        seqs.sort_unstable();
        assert_eq!(seqs, [n + 1, n + 2]);
        n += 2;
        if log.commits_count() == before + 1 {
            shared = true;
            break;
        }
    }
    assert!(shared, "an outcome never shared the next decision's commit");
    assert!(verify(db(&dir), None)?.problems.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_append_is_committed_before_its_answer() -> TestResult {
    // One caller at a time, as the gateway appends a call's decision before
    // forwarding it: each acknowledged record must already be committed
    // (readable by a separate connection at once), each in its own commit,
    // and the chain must verify.
    let dir = tempfile::tempdir()?;
    let path = db(&dir);
    let log = AuditLog::open_sqlite(&path)?;
    let corr = CorrelationId::new();
    let reader = Connection::open(&path)?;
    for i in 1..=50 {
        let appended = log.append(record(i, "s", &corr)).await?;
        assert_eq!(appended.seq(), i);
        let stored: String =
            reader.query_row("SELECT hash FROM audit_log WHERE seq = ?1", [i], |r| {
                r.get(0)
            })?;
        assert_eq!(stored, appended.hash());
    }
    assert_eq!(log.commits_count(), 50);
    drop(log);
    let report = verify(&path, None)?;
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!(report.records, 50);
    Ok(())
}
