//! The `mandate audit …` commands: verify, replay, export, checkpoint,
//! prune (the `[audit]` settings are `audit_config.rs`).

use crate::evidence::{StoreArgs, public_key};
use anyhow::{Context, Result, bail};
use clap::Subcommand;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// `mandate audit …`.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Recompute the hash chain and Merkle tree, check every signed
    /// checkpoint, and name any record edited, deleted, inserted or reordered.
    Verify {
        #[command(flatten)]
        at: StoreArgs,
        /// The log's public key (default: the `.pub` file beside the
        /// checkpoint key; required with `--bundle`, which cannot vouch for
        /// itself).
        #[arg(long)]
        key: Option<PathBuf>,
        /// Verify an evidence bundle offline instead of a store.
        #[arg(long)]
        bundle: Option<PathBuf>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Rebuild a session's timeline: subject, calls, decisions, approvals,
    /// taint, outcomes, in order (JSON Lines).
    Replay {
        #[command(flatten)]
        at: StoreArgs,
        /// Session key (as recorded, e.g. `sid:…`).
        #[arg(long)]
        session: String,
    },
    /// Sign a checkpoint of the log now (the server also signs them
    /// periodically and at shutdown).
    Checkpoint {
        #[command(flatten)]
        at: StoreArgs,
    },
    /// Write an evidence bundle: records, checkpoints, proofs, public key
    /// and a report, verifiable offline with `verify --bundle`.
    Export(crate::evidence::ExportArgs),
    /// Report which records the retention period allows to remove. Pruning
    /// itself is refused in this version (docs/AUDIT-FORMAT.md §9).
    Prune {
        #[command(flatten)]
        at: StoreArgs,
    },
}

/// Runs one `mandate audit` command.
pub async fn run(command: AuditCommand) -> Result<ExitCode> {
    match command {
        AuditCommand::Verify {
            at,
            key,
            bundle,
            json,
        } => {
            if let Some(bundle) = bundle {
                return crate::evidence::verify_bundle(&bundle, key.as_deref(), json);
            }
            verify(&at, key.as_deref(), json)
        }
        AuditCommand::Replay { at, session } => replay(&at, &session),
        AuditCommand::Checkpoint { at } => {
            let settings = at.settings()?;
            let log = settings.open_log()?;
            match log.checkpoint().await? {
                Some(cp) => print!("{}", cp.note),
                None => println!("the audit log is empty: nothing to checkpoint"),
            }
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Prune { at } => prune(&at),
        AuditCommand::Export(args) => {
            let settings = args.at.settings()?;
            crate::evidence::export(&settings, &args).await
        }
    }
}

fn verify(at: &StoreArgs, key: Option<&Path>, json: bool) -> Result<ExitCode> {
    let settings = at.settings()?;
    let store = &settings.store;
    if store.is_missing_file() {
        bail!("no audit log at {store}");
    }
    let key = public_key(&settings, key)?;
    let report = mandate_audit::verify(store.clone(), key.as_ref())
        .with_context(|| format!("reading the audit log {store}"))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if report.is_ok() {
        println!(
            "audit log {store} verified: {} records, head {}, tree hash {}",
            report.records,
            report.head.as_deref().unwrap_or("(empty)"),
            report.root
        );
        println!(
            "  {} signed checkpoint(s) checked{}; {} record(s) after the last checkpoint",
            report.checkpoints,
            if report.signatures_checked {
                " with the log's public key"
            } else {
                " WITHOUT signatures (no public key; give --key)"
            },
            report.unanchored
        );
    } else {
        println!("audit log {store} FAILED verification:");
        for p in &report.problems {
            println!("  {p}");
        }
    }
    Ok(if report.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn replay(at: &StoreArgs, session: &str) -> Result<ExitCode> {
    let settings = at.settings()?;
    if settings.store.is_missing_file() {
        bail!("no audit log at {}", settings.store);
    }
    let records = mandate_audit::read_records(settings.store, Some(session))?;
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    for entry in mandate_audit::replay::timeline(&records) {
        let line = serde_json::to_string(&entry)?;
        // A closed pipe (`| head`) ends the listing quietly.
        if writeln!(out, "{line}").is_err() {
            break;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn prune(at: &StoreArgs) -> Result<ExitCode> {
    let settings = at.settings()?;
    let Some(days) = settings.retention_days else {
        println!("audit.retention_days is not set: every record is kept");
        return Ok(ExitCode::SUCCESS);
    };
    if settings.store.is_missing_file() {
        bail!("no audit log at {}", settings.store);
    }
    let cutoff = mandate_core::Clock::system()
        .now_ms()
        .saturating_sub(i64::from(days).saturating_mul(86_400_000));
    let old = mandate_audit::read_time_range(settings.store, 0, cutoff)?;
    println!(
        "{} record(s) are older than the retention period of {days} days.",
        old.len()
    );
    println!(
        "Pruning is refused: removing records would break the inclusion proofs of the \
         checkpoints that cover them. Archive them with `mandate audit export --to …` \
         (docs/AUDIT-FORMAT.md §9 describes the pruning design)."
    );
    Ok(ExitCode::FAILURE)
}
