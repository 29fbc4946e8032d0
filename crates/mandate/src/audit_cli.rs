//! `[audit]` settings and the `mandate audit …` commands: verify, replay,
//! export, checkpoint.

use crate::config::{Config, Overrides, env};
use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use mandate_audit::{AuditLog, CheckpointSigner, NoteVerifier, Options, Store};
use mandate_gateway::redaction::Redaction;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// `[audit]` in `mandate.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSection {
    /// `postgres://…` or a SQLite path; default `{data_dir}/audit.sqlite`.
    store: Option<String>,
    /// PostgreSQL schema for the log's tables (default `mandate_audit`).
    schema: Option<String>,
    /// Seconds between signed checkpoints (default 60; 0 = only on demand
    /// and at shutdown).
    checkpoint_interval_secs: Option<u64>,
    /// The checkpoint signing key (default `{data_dir}/audit-checkpoint.key`,
    /// generated on first start; the public key is written beside it).
    checkpoint_key: Option<String>,
    /// The log's name in its checkpoints, used when the key is generated.
    origin: Option<String>,
    /// Days records are kept before `mandate audit prune` may remove them.
    retention_days: Option<u32>,
    /// What records keep of call arguments.
    #[serde(default)]
    redaction: RedactionSection,
}

/// `[audit.redaction]`: `default` for unlisted tools, and per exposed tool
/// either a mode or `{ default = …, fields = { name = … } }`. Modes:
/// `full`, `hash`, `redact` (the default: only `args_hash` is kept).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RedactionSection {
    default: Option<String>,
    #[serde(default)]
    tools: std::collections::BTreeMap<String, ToolRedaction>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ToolRedaction {
    Mode(String),
    Fields {
        default: Option<String>,
        #[serde(default)]
        fields: std::collections::BTreeMap<String, String>,
    },
}

impl RedactionSection {
    fn resolve(&self) -> Result<Redaction> {
        use mandate_gateway::redaction::{Keep, ToolRule};
        let keep = |what: &str, v: &str| -> Result<Keep> {
            v.parse()
                .map_err(|e| anyhow::anyhow!("audit.redaction.{what}: {e}"))
        };
        let mut out = Redaction::default();
        if let Some(d) = &self.default {
            out.default.default = keep("default", d)?;
        }
        for (tool, rule) in &self.tools {
            let rule = match rule {
                ToolRedaction::Mode(m) => ToolRule {
                    default: keep(&format!("tools.{tool:?}"), m)?,
                    fields: Default::default(),
                },
                ToolRedaction::Fields { default, fields } => ToolRule {
                    default: match default {
                        Some(d) => keep(&format!("tools.{tool:?}.default"), d)?,
                        None => out.default.default,
                    },
                    fields: fields
                        .iter()
                        .map(|(f, m)| {
                            Ok((f.clone(), keep(&format!("tools.{tool:?}.fields.{f}"), m)?))
                        })
                        .collect::<Result<_>>()?,
                },
            };
            out.tools.insert(tool.clone(), rule);
        }
        Ok(out)
    }
}

/// The audit plane's settings, resolved.
#[derive(Debug, Clone)]
pub struct AuditSettings {
    /// Where the log lives.
    pub store: Store,
    /// Checkpoint signing key file.
    pub checkpoint_key: PathBuf,
    /// Periodic checkpoints (`None`: on demand and at shutdown only).
    pub checkpoint_interval: Option<Duration>,
    /// Key name for a newly generated key.
    pub origin: Option<String>,
    /// Retention in days (`None`: keep everything).
    pub retention_days: Option<u32>,
    /// Argument storage rules.
    pub redaction: Redaction,
}

/// The EU AI Act (Art. 19, 26(6)) asks deployers to keep logs at least six
/// months.
pub const MIN_RETENTION_DAYS: u32 = 183;

impl AuditSettings {
    /// Resolves `[audit]` against the data directory (and `MANDATE_AUDIT_STORE`).
    pub fn from_section(
        s: &AuditSection,
        data_dir: &Path,
        subst: &dyn Fn(&str) -> String,
    ) -> Result<Self> {
        let store = std::env::var(env::AUDIT_STORE)
            .ok()
            .filter(|v| !v.is_empty())
            .or_else(|| s.store.clone())
            .map_or_else(
                || Store::sqlite(data_dir.join("audit.sqlite")),
                |v| Store::parse(&subst(&v)),
            );
        let store = match &s.schema {
            Some(schema) => {
                if schema.is_empty()
                    || !schema
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                {
                    bail!("audit.schema must be a lower-case identifier (a-z, 0-9, _)");
                }
                store.with_schema(schema.clone())
            }
            None => store,
        };
        if let Some(days) = s.retention_days
            && days < MIN_RETENTION_DAYS
        {
            bail!(
                "audit.retention_days must be at least {MIN_RETENTION_DAYS} (six months, EU AI Act Art. 19/26(6)); omit it to keep everything"
            );
        }
        let interval = s.checkpoint_interval_secs.unwrap_or(60);
        Ok(Self {
            store,
            checkpoint_key: s.checkpoint_key.as_deref().map_or_else(
                || data_dir.join("audit-checkpoint.key"),
                |k| PathBuf::from(subst(k)),
            ),
            checkpoint_interval: (interval > 0).then(|| Duration::from_secs(interval)),
            origin: s.origin.clone(),
            retention_days: s.retention_days,
            redaction: s.redaction.resolve()?,
        })
    }

    /// Defaults for a data directory (no config file).
    pub fn defaults(data_dir: &Path) -> Result<Self> {
        Self::from_section(&AuditSection::default(), data_dir, &|s: &str| s.to_owned())
    }

    /// The log's public key file.
    pub fn public_key(&self) -> PathBuf {
        mandate_audit::note::public_key_path(&self.checkpoint_key)
    }

    /// Opens the log for writing, with its checkpoint key (generated on
    /// first use) and periodic checkpoints.
    pub fn open_log(&self) -> Result<AuditLog> {
        let signer =
            CheckpointSigner::load_or_generate(&self.checkpoint_key, self.origin.as_deref())
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        AuditLog::open(
            &self.store,
            Options::default().checkpoints(signer, self.checkpoint_interval),
        )
        .map_err(|e| anyhow::anyhow!("audit log {}: {e}", self.store))
    }
}

/// Which audit store a command reads: `--store`, else `--data-dir`, else
/// what `mandate serve` would use with the same config file.
#[derive(Debug, Args)]
pub struct StoreArgs {
    /// Data directory of `mandate serve` (its `audit.sqlite` and keys).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Audit store: a `postgres://…` URL or a SQLite file path.
    #[arg(long, env = env::AUDIT_STORE)]
    store: Option<String>,
    /// Config file to take the defaults from, when it exists.
    #[arg(long, env = env::CONFIG, default_value = "mandate.toml")]
    config: PathBuf,
}

impl StoreArgs {
    fn settings(&self) -> Result<AuditSettings> {
        let mut settings = if self.data_dir.is_none() && self.config.exists() {
            Config::load(&self.config, &Overrides::default())?.audit
        } else {
            let dir = self
                .data_dir
                .clone()
                .unwrap_or_else(|| "mandate-data".into());
            AuditSettings::defaults(&dir)?
        };
        if let Some(store) = &self.store {
            settings.store = Store::parse(store);
        }
        Ok(settings)
    }
}

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

/// The log's public key: `--key`, else the one beside the signing key.
pub fn public_key(settings: &AuditSettings, key: Option<&Path>) -> Result<Option<NoteVerifier>> {
    let path = match key {
        Some(k) => k.to_path_buf(),
        None => {
            let p = settings.public_key();
            if !p.exists() {
                return Ok(None);
            }
            p
        }
    };
    NoteVerifier::read(&path)
        .map(Some)
        .map_err(|e| anyhow::anyhow!("{e}"))
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
