//! Append throughput: one append at a time (one fsync each) against 32
//! concurrent appends (group commit shares fsyncs). Both report elements
//! per second, so their ratio is the group-commit gain.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use mandate_audit::AuditLog;
use mandate_core::{AuditRecord, CorrelationId, DecisionRecord, RecordKind, Subject};
use std::hint::black_box;
use std::time::Duration;

const CONCURRENT: u64 = 32;

fn record() -> AuditRecord {
    AuditRecord {
        kind: RecordKind::Decision,
        time_ms: mandate_core::Clock::system().now_ms(),
        decision: DecisionRecord::deny("bench", "policy-hash"),
        correlation_id: CorrelationId::new(),
        subject: Subject {
            sub: "alice".to_owned(),
            act: vec!["agent".to_owned()],
            scope: "docs.*".to_owned(),
            task_id: Some("task".to_owned()),
            build: None,
            session: "sid:bench".to_owned(),
            ..Subject::default()
        },
        tool: "docs.search".to_owned(),
        args_hash: "00".repeat(32),
        outcome: None,
        detail: None,
        amount: None,
        taint: Vec::new(),
        args: None,
        grant: None,
        sources: None,
    }
}

fn append(c: &mut Criterion) {
    let setup = || -> Result<_, Box<dyn std::error::Error>> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let dir = tempfile::tempdir()?;
        let log = AuditLog::open_sqlite(&dir.path().join("bench.db"))?;
        Ok((rt, dir, log))
    };
    let (rt, _dir, log) = match setup() {
        Ok(v) => v,
        Err(e) => {
            eprintln!("append bench setup failed: {e}");
            return;
        }
    };

    let mut group = c.benchmark_group("append");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(10));

    group.throughput(Throughput::Elements(1));
    group.bench_function("sequential", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(log.append(record()).await) });
    });

    group.throughput(Throughput::Elements(CONCURRENT));
    group.bench_function("concurrent_32", |b| {
        b.to_async(&rt).iter(|| async {
            let mut tasks = tokio::task::JoinSet::new();
            for _ in 0..CONCURRENT {
                let log = log.clone();
                tasks.spawn(async move { log.append(record()).await });
            }
            while let Some(done) = tasks.join_next().await {
                let _ = black_box(done);
            }
        });
    });
    group.finish();
}

criterion_group!(benches, append);
criterion_main!(benches);
