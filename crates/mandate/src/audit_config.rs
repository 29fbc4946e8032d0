//! `[audit]` in `mandate.toml`: the audit plane's settings (store,
//! checkpoints, retention, redaction), parsed and resolved.

use crate::env;
use anyhow::{Result, bail};
use mandate_audit::{AuditLog, CheckpointSigner, Options, Store};
use mandate_gateway::redaction::Redaction;
use serde::Deserialize;
use std::path::{Path, PathBuf};
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
