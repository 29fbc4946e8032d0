//! Audit load benchmark: durable appends per second with 1, 16 and 64
//! concurrent writers, group commit against one row per transaction (the
//! same durability: each acknowledged only after its commit's fsync), on
//! SQLite and PostgreSQL in the same run; then `verify` of a log of N
//! records (default 1,000,000).
//!
//! ```sh
//! cargo run --release -p mandate-audit --example load -- \
//!     [--seconds 3] [--verify-records 1000000] [--postgres URL|skip] [--dir DIR]
//! ```
//!
//! Prints a Markdown table (docs/BENCHMARKS.md).

use mandate_audit::{AuditLog, CheckpointSigner, Options, Store};
use mandate_core::{AuditRecord, CorrelationId, DecisionRecord, RecordKind, Subject};
use std::time::{Duration, Instant};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// A store kind: its label and how to name a fresh store of it.
type StoreKind<'a> = (&'static str, Box<dyn Fn(&str) -> Store + 'a>);

fn record(i: u64) -> AuditRecord {
    AuditRecord {
        kind: RecordKind::Decision,
        time_ms: mandate_core::Clock::system().now_ms(),
        decision: DecisionRecord::deny(format!("bench {i}"), "policy-hash"),
        correlation_id: CorrelationId::new(),
        subject: Subject {
            sub: "alice@example.com".to_owned(),
            act: vec!["agent-7".to_owned()],
            scope: "docs.search docs.read".to_owned(),
            task_id: Some("task-42".to_owned()),
            build: Some("b".repeat(64)),
            session: format!("sid:bench-{}", i % 97),
            ..Subject::default()
        },
        tool: "docs.search".to_owned(),
        args_hash: "a".repeat(64),
        outcome: None,
        detail: None,
        amount: None,
        taint: Vec::new(),
        args: None,
        grant: None,
        sources: None,
    }
}

/// Appends from `writers` tasks for `seconds`; returns records/s.
async fn run(log: &AuditLog, writers: usize, seconds: f64) -> Result<f64> {
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..writers {
        let log = log.clone();
        tasks.spawn(async move {
            let mut n = 0u64;
            while Instant::now() < deadline {
                log.append(record(n * 1000 + w as u64)).await?;
                n += 1;
            }
            Ok::<u64, mandate_audit::AuditError>(n)
        });
    }
    let mut total = 0u64;
    while let Some(done) = tasks.join_next().await {
        total += done??;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let seconds: f64 = arg(&args, "--seconds").map_or(Ok(3.0), |s| s.parse())?;
    let verify_n: u64 = arg(&args, "--verify-records").map_or(Ok(1_000_000), |s| s.parse())?;
    let pg = arg(&args, "--postgres")
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let tmp = tempfile::tempdir()?;
    let dir: std::path::PathBuf =
        arg(&args, "--dir").map_or_else(|| tmp.path().to_path_buf(), Into::into);
    std::fs::create_dir_all(&dir)?;

    let mut stores: Vec<StoreKind<'_>> = vec![(
        "SQLite",
        Box::new(|name: &str| Store::sqlite(dir.join(format!("{name}.sqlite")))),
    )];
    if pg != "skip" {
        let pg = pg.clone();
        stores.push((
            "PostgreSQL",
            Box::new(move |name: &str| {
                Store::postgres(pg.clone()).with_schema(format!("bench_{name}"))
            }),
        ));
    }
    println!(
        "| store | writers | one row per transaction (rec/s) | group commit (rec/s) | ratio | records per commit |"
    );
    println!("|---|---|---|---|---|---|");
    for (label, make) in &stores {
        for writers in [1usize, 16, 64] {
            let single_store = make(&format!("single_{writers}_{}", std::process::id()));
            let single = AuditLog::open(&single_store, Options::default().max_batch(1))?;
            let single_rate = run(&single, writers, seconds).await?;
            drop(single);
            let group_store = make(&format!("group_{writers}_{}", std::process::id()));
            let group = AuditLog::open(&group_store, Options::default())?;
            let group_rate = run(&group, writers, seconds).await?;
            let per_commit = group.appended_count() as f64 / group.commits_count().max(1) as f64;
            drop(group);
            println!(
                "| {label} | {writers} | {single_rate:.0} | {group_rate:.0} | {:.1}× | {per_commit:.1} |",
                group_rate / single_rate
            );
            cleanup(&single_store);
            cleanup(&group_store);
        }
    }

    // verify of a large log (SQLite), with signed checkpoints in it.
    let path = dir.join(format!("verify-{}.sqlite", std::process::id()));
    let signer = CheckpointSigner::generate(Some("bench/audit"))?;
    let store = Store::sqlite(&path);
    let log = AuditLog::open(
        &store,
        Options::default()
            .max_batch(8192)
            .checkpoints(signer.clone(), None),
    )?;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let per_task = verify_n / 256;
    for t in 0..256u64 {
        let log = log.clone();
        let n = if t == 255 {
            verify_n - per_task * 255
        } else {
            per_task
        };
        tasks.spawn(async move {
            for i in 0..n {
                log.append(record(t * 1_000_000 + i)).await?;
                if i == n / 2 && t == 0 {
                    log.checkpoint().await?;
                }
            }
            Ok::<(), mandate_audit::AuditError>(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    drop(log);
    let filled = started.elapsed();
    let started = Instant::now();
    let report = mandate_audit::verify(store.clone(), Some(&signer.verifier()))?;
    let took = started.elapsed();
    println!();
    println!(
        "verify: {} records, {} checkpoints, ok={} in {:.2} s ({:.0} records/s); filling took {:.1} s ({:.0} records/s, 256 writers)",
        report.records,
        report.checkpoints,
        report.is_ok(),
        took.as_secs_f64(),
        report.records as f64 / took.as_secs_f64(),
        filled.as_secs_f64(),
        verify_n as f64 / filled.as_secs_f64()
    );
    cleanup(&store);
    Ok(())
}

fn cleanup(store: &Store) {
    match store {
        Store::Sqlite(path) => {
            for suffix in ["", "-wal", "-shm"] {
                let mut p = path.as_os_str().to_owned();
                p.push(suffix);
                let _ = std::fs::remove_file(std::path::PathBuf::from(p));
            }
        }
        Store::Postgres { url, schema } => {
            let (url, schema) = (url.clone(), schema.clone());
            let _ = std::thread::spawn(move || {
                if let Ok(mut c) = postgres::Client::connect(&url, postgres::NoTls) {
                    let _ = c.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"));
                }
            })
            .join();
        }
    }
}
