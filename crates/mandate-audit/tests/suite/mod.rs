//! The store-independent test suite: every store (SQLite, PostgreSQL) runs
//! these same cases through its own fixture. Tampering goes straight to the
//! store's tables, as an attacker with write access would.

#![allow(dead_code, reason = "each test binary uses the cases it instantiates")]

use mandate_audit::merkle::{verify_consistency, verify_inclusion};
use mandate_audit::{
    AuditLog, CheckpointSigner, LogTree, Options, Problem, ProblemKind, Store, VerifyReport,
    canonical_body, read_checkpoints, read_records, record_hash, verify,
};
use mandate_core::{
    AuditRecord, CorrelationId, DecisionId, DecisionRecord, Effect, RecordKind, Subject,
};
use std::collections::BTreeSet;
use std::time::Duration;

/// Calls `$m!(case, …)` with every case of the suite: the one list each
/// store's test file instantiates.
macro_rules! every_case {
    ($m:ident) => {
        $m!(
            intact_log_verifies_with_checkpoints,
            proofs_verify_against_signed_checkpoints,
            periodic_checkpoints_are_signed,
            concurrent_appends_share_commits,
            tamper_edit_is_named,
            tamper_delete_is_named,
            tamper_insert_is_named,
            tamper_reorder_is_named,
            tamper_truncated_tail_is_named,
            tamper_rewritten_tail_is_caught_by_checkpoints,
        );
    };
}

pub type TestResult = Result<(), Box<dyn std::error::Error>>;

/// A fresh, empty store of one kind, and raw write access to its tables.
pub trait Fixture {
    /// The store under test.
    fn store(&self) -> Store;
    /// Runs `sql` against the log's tables with the append-only guards
    /// (triggers) out of the way.
    fn tamper(&self, sql: &str) -> TestResult;
}

pub fn record(n: i64, session: &str) -> AuditRecord {
    AuditRecord {
        kind: if n % 2 == 0 {
            RecordKind::Outcome
        } else {
            RecordKind::Decision
        },
        time_ms: 1_700_000_000_000 + n,
        decision: DecisionRecord {
            id: DecisionId::new(),
            effect: if n % 3 == 0 {
                Effect::Deny
            } else {
                Effect::Allow
            },
            policies: vec![format!("p{n}")],
            reasons: vec![format!("reason {n}")],
            obligations: Vec::new(),
            policy_hash: "ph".to_owned(),
            code: None,
            agent_reason: None,
        },
        correlation_id: CorrelationId::new(),
        subject: Subject {
            sub: "alice".to_owned(),
            act: vec!["agent-a".to_owned()],
            scope: "docs.*".to_owned(),
            task_id: Some("t1".to_owned()),
            build: None,
            session: session.to_owned(),
            ..Subject::default()
        },
        tool: "docs.search".to_owned(),
        args_hash: format!("{n:064x}"),
        outcome: (n % 2 == 0).then(|| "ok".to_owned()),
        detail: Some("naïve \"quoted\" ✓".to_owned()),
        amount: None,
        taint: Vec::new(),
        args: None,
        grant: None,
        sources: None,
    }
}

/// Writes `n` records with a checkpoint after the first `n - 7` (on
/// demand) and one at close; returns the signing key.
pub async fn write_log(
    store: &Store,
    n: i64,
) -> Result<CheckpointSigner, Box<dyn std::error::Error>> {
    let signer = CheckpointSigner::generate(Some("test/audit"))?;
    let log = AuditLog::open(store, Options::default().checkpoints(signer.clone(), None))?;
    for i in 1..=n {
        log.append(record(i, "s1")).await?;
        if i == n - 7 {
            let cp = log.checkpoint().await?.ok_or("no checkpoint")?;
            assert_eq!(cp.size, u64::try_from(n - 7)?);
        }
    }
    drop(log);
    Ok(signer)
}

async fn report(
    store: &Store,
    signer: &CheckpointSigner,
) -> Result<VerifyReport, Box<dyn std::error::Error>> {
    Ok(verify(store.clone(), Some(&signer.verifier()))?)
}

fn record_problems(r: &VerifyReport) -> Vec<Problem> {
    r.record_problems().cloned().collect()
}

/// Checkpoint problems must all concern checkpoints covering `from` on.
fn only_checkpoints_from(r: &VerifyReport, from: i64) {
    for p in r.problems.iter().filter(|p| p.kind.is_checkpoint()) {
        assert!(p.seq >= from, "unexpected checkpoint problem {p}");
    }
}

fn at(seq: i64, kind: ProblemKind) -> Problem {
    Problem { seq, kind }
}

pub async fn intact_log_verifies_with_checkpoints(fx: &dyn Fixture) -> TestResult {
    let store = fx.store();
    let signer = write_log(&store, 27).await?;
    let r = report(&store, &signer).await?;
    assert!(r.is_ok(), "{:?}", r.problems);
    assert_eq!(r.records, 27);
    assert_eq!(r.checkpoints, 2);
    assert!(r.signatures_checked);
    assert_eq!(r.last_checkpoint, Some(27));
    assert_eq!(r.unanchored, 0);
    let cps = read_checkpoints(store.clone())?;
    assert_eq!(cps.iter().map(|c| c.size).collect::<Vec<_>>(), vec![20, 27]);
    assert_eq!(cps.last().map(|c| c.root), Some(r.root));
    // Reopening resumes the tree from the stored checkpoint.
    let log = AuditLog::open(&store, Options::default().checkpoints(signer.clone(), None))?;
    log.append(record(28, "s2")).await?;
    let cp = log.checkpoint().await?.ok_or("no checkpoint")?;
    assert_eq!(cp.size, 28);
    // Nothing new: the same checkpoint again.
    assert_eq!(log.checkpoint().await?, Some(cp.clone()));
    drop(log);
    let r = report(&store, &signer).await?;
    assert!(r.is_ok(), "{:?}", r.problems);
    assert_eq!(r.root, cp.root);
    // Another key does not vouch for this log.
    let other = CheckpointSigner::generate(Some("test/audit"))?;
    let r = verify(store, Some(&other.verifier()))?;
    assert_eq!(r.problems.len(), 3, "{:?}", r.problems);
    assert!(
        r.problems
            .iter()
            .all(|p| matches!(p.kind, ProblemKind::CheckpointSignature { .. }))
    );
    Ok(())
}

pub async fn proofs_verify_against_signed_checkpoints(fx: &dyn Fixture) -> TestResult {
    let store = fx.store();
    let signer = write_log(&store, 27).await?;
    let key = signer.verifier();
    let cps = read_checkpoints(store.clone())?;
    let (Some(first), Some(last)) = (cps.first(), cps.last()) else {
        return Err("no checkpoints".into());
    };
    let old = key.open_checkpoint(&first.note)?;
    let new = key.open_checkpoint(&last.note)?;
    let tree = LogTree::load(store.clone())?;
    assert_eq!(tree.size(), 27);
    for cp in [&old, &new] {
        for seq in 1..=i64::try_from(cp.size)? {
            let leaf = tree.leaf(seq).ok_or("no leaf")?;
            let proof = tree.inclusion_proof(seq, cp.size)?;
            verify_inclusion(u64::try_from(seq - 1)?, cp.size, &leaf, &proof, &cp.root)?;
        }
    }
    // A third party's leaf: SHA-256(0x00 || body) of the stored record.
    let records = read_records(store.clone(), None)?;
    let r5 = records.get(4).ok_or("no record 5")?;
    let leaf5 = mandate_audit::merkle::leaf_hash(canonical_body(&r5.record)?.as_bytes());
    assert_eq!(Some(leaf5), tree.leaf(5));
    let proof = tree.consistency_proof(old.size, new.size)?;
    verify_consistency(old.size, new.size, &old.root, &new.root, &proof)?;
    assert!(verify_consistency(old.size, new.size, &new.root, &old.root, &proof).is_err());
    Ok(())
}

pub async fn periodic_checkpoints_are_signed(fx: &dyn Fixture) -> TestResult {
    let store = fx.store();
    let signer = CheckpointSigner::generate(Some("test/audit"))?;
    let log = AuditLog::open(
        &store,
        Options::default().checkpoints(signer.clone(), Some(Duration::from_millis(50))),
    )?;
    log.append(record(1, "s")).await?;
    let mut sizes = Vec::new();
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        sizes = read_checkpoints(store.clone())?
            .iter()
            .map(|c| c.size)
            .collect();
        if !sizes.is_empty() {
            break;
        }
    }
    assert_eq!(sizes, vec![1], "no periodic checkpoint");
    // Idle ticks sign nothing new.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(read_checkpoints(store.clone())?.len(), 1);
    drop(log);
    assert!(report(&store, &signer).await?.is_ok());
    Ok(())
}

pub async fn concurrent_appends_share_commits(fx: &dyn Fixture) -> TestResult {
    let store = fx.store();
    let log = AuditLog::open(&store, Options::default())?;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200 {
        let log = log.clone();
        tasks.spawn(async move { log.append(record(i, "s")).await });
    }
    let mut seqs = BTreeSet::new();
    while let Some(done) = tasks.join_next().await {
        seqs.insert(done??.seq());
    }
    assert_eq!(seqs, (1..=200).collect::<BTreeSet<i64>>());
    assert!(log.commits_count() < 200, "no batching");
    drop(log);
    let r = verify(store, None)?;
    assert!(r.is_ok(), "{:?}", r.problems);
    Ok(())
}

pub async fn tamper_edit_is_named(fx: &dyn Fixture) -> TestResult {
    let store = fx.store();
    let signer = write_log(&store, 27).await?;
    fx.tamper(
        "UPDATE audit_log SET body = replace(body, '\"reason 5\"', '\"reason five\"'),
                              reasons = replace(reasons, 'reason 5', 'reason five') WHERE seq = 5",
    )?;
    let r = report(&store, &signer).await?;
    assert_eq!(record_problems(&r), vec![at(5, ProblemKind::Edited)]);
    assert_eq!(
        r.problems.first().map(ToString::to_string).as_deref(),
        Some("record 5 was edited: its content does not match its hash")
    );
    only_checkpoints_from(&r, 5);
    Ok(())
}

pub async fn tamper_delete_is_named(fx: &dyn Fixture) -> TestResult {
    let store = fx.store();
    let signer = write_log(&store, 27).await?;
    fx.tamper("DELETE FROM audit_log WHERE seq = 5")?;
    let r = report(&store, &signer).await?;
    assert_eq!(
        record_problems(&r),
        vec![at(5, ProblemKind::Deleted { count: Some(1) })]
    );
    assert_eq!(
        r.problems.first().map(ToString::to_string).as_deref(),
        Some("record 5 was deleted")
    );
    only_checkpoints_from(&r, 5);
    Ok(())
}

pub async fn tamper_insert_is_named(fx: &dyn Fixture) -> TestResult {
    let store = fx.store();
    let signer = write_log(&store, 27).await?;
    // Make room at seq 5, then insert a replay of record 4, hashed and
    // chained to record 4 exactly as the writer would have.
    let records = read_records(store.clone(), None)?;
    let r4 = records.get(3).ok_or("no record 4")?;
    let forged = record_hash(&r4.hash, &canonical_body(&r4.record)?);
    fx.tamper(&format!(
        "UPDATE audit_log SET seq = seq + 1000 WHERE seq >= 5;
         UPDATE audit_log SET seq = seq - 999 WHERE seq >= 1000;
         INSERT INTO audit_log SELECT 5, '{}', '{forged}', body, time_ms, kind, decision_id,
            correlation_id, session, sub, act, scope, task_id, build, tool, args_hash, effect,
            policies, reasons, obligations, policy_hash, outcome, detail
            FROM audit_log WHERE seq = 4",
        r4.hash
    ))?;
    let r = report(&store, &signer).await?;
    assert_eq!(record_problems(&r), vec![at(5, ProblemKind::Inserted)]);
    assert_eq!(
        r.problems.first().map(ToString::to_string).as_deref(),
        Some("record 5 was inserted: it is not part of the chain")
    );
    only_checkpoints_from(&r, 5);
    Ok(())
}

pub async fn tamper_reorder_is_named(fx: &dyn Fixture) -> TestResult {
    let store = fx.store();
    let signer = write_log(&store, 27).await?;
    fx.tamper(
        "UPDATE audit_log SET seq = 1000 WHERE seq = 5;
         UPDATE audit_log SET seq = 5 WHERE seq = 6;
         UPDATE audit_log SET seq = 6 WHERE seq = 1000",
    )?;
    let r = report(&store, &signer).await?;
    // Stored at seq 6 is the original record 5, which the chain places
    // right after record 4.
    assert_eq!(
        record_problems(&r),
        vec![at(6, ProblemKind::Reordered { after: 4 })]
    );
    assert_eq!(
        r.problems.first().map(ToString::to_string).as_deref(),
        Some("record 6 was reordered: the chain places it right after record 4")
    );
    only_checkpoints_from(&r, 5);
    Ok(())
}

pub async fn tamper_truncated_tail_is_named(fx: &dyn Fixture) -> TestResult {
    let store = fx.store();
    let signer = write_log(&store, 27).await?;
    fx.tamper("DELETE FROM audit_log WHERE seq >= 26")?;
    let r = report(&store, &signer).await?;
    assert_eq!(
        record_problems(&r),
        vec![at(26, ProblemKind::Truncated { count: 2 })]
    );
    Ok(())
}

pub async fn tamper_rewritten_tail_is_caught_by_checkpoints(fx: &dyn Fixture) -> TestResult {
    let store = fx.store();
    let signer = write_log(&store, 27).await?;
    // Rewrite record 27 and re-hash it: the chain alone is consistent.
    let records = read_records(store.clone(), None)?;
    let r27 = records.last().ok_or("empty")?;
    let mut edited = r27.record.clone();
    edited.decision.reasons = vec!["nothing to see".to_owned()];
    let body = canonical_body(&edited)?;
    let hash = record_hash(&r27.prev_hash, &body);
    let reasons = serde_json::to_string(&edited.decision.reasons)?;
    fx.tamper(&format!(
        "UPDATE audit_log SET body = '{}', hash = '{hash}', reasons = '{}' WHERE seq = 27",
        body.replace('\'', "''"),
        reasons.replace('\'', "''")
    ))?;
    let r = report(&store, &signer).await?;
    assert_eq!(record_problems(&r), vec![]);
    assert_eq!(r.problems, vec![at(27, ProblemKind::CheckpointMismatch)]);
    Ok(())
}
