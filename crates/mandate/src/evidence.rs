//! Where the evidence is (which audit store a command reads, the log's
//! public key), evidence bundles (`mandate audit export`, `mandate audit
//! verify --bundle`) and session timelines (`mandate audit replay`). The bundle
//! format is specified in docs/AUDIT-FORMAT.md.

use crate::audit_config::AuditSettings;
use crate::config::{Config, Overrides};
use crate::env;
use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use mandate_audit::bundle::{
    BundleRecord, BundleReport, ConsistencyProof, InclusionProof, Manifest, Proofs, Selection,
    sha256_hex,
};
use mandate_audit::replay::{TimelineEntry, format_ms, timeline};
use mandate_audit::{LogTree, NoteVerifier, Store, StoredRecord};
use mandate_core::Clock;
use mandate_core::html::escape;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

pub use mandate_audit::bundle::BUNDLE_FORMAT;

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
    pub(crate) fn settings(&self) -> Result<AuditSettings> {
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

/// `mandate audit export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub(crate) at: StoreArgs,
    /// First instant included: RFC 3339 (`2026-11-30T08:00:00Z`), a date
    /// (`2026-11-30`, midnight UTC) or Unix milliseconds. Default: the start.
    #[arg(long)]
    from: Option<String>,
    /// First instant excluded (same forms). Default: now.
    #[arg(long)]
    to: Option<String>,
    /// Only this session's records.
    #[arg(long)]
    session: Option<String>,
    /// Output directory (created; must be empty or absent).
    #[arg(long)]
    out: PathBuf,
}

/// Parses `--from`/`--to`: Unix ms, `YYYY-MM-DD` (midnight UTC) or an
/// RFC 3339 time (`2026-11-30T08:00:00Z`, `…08:00:00.5+01:00`).
fn parse_instant(s: &str) -> Result<i64> {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse().map_err(|_| anyhow!("{s:?}: not a time"));
    }
    let bad = || anyhow!("{s:?}: expected RFC 3339 (2026-11-30T08:00:00Z), a date or Unix ms");
    if let Ok(date) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Ok(date
            .and_time(chrono::NaiveTime::MIN)
            .and_utc()
            .timestamp_millis());
    }
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp_millis())
        .map_err(|_| bad())
}

/// Writes the bundle.
pub async fn export(settings: &AuditSettings, args: &ExportArgs) -> Result<ExitCode> {
    let store = &settings.store;
    if store.is_missing_file() {
        bail!("no audit log at {store}");
    }
    let from_ms = args
        .from
        .as_deref()
        .map(parse_instant)
        .transpose()?
        .unwrap_or(0);
    let to_ms = args
        .to
        .as_deref()
        .map(parse_instant)
        .transpose()?
        .unwrap_or_else(|| Clock::system().now_ms().saturating_add(1));
    if from_ms >= to_ms {
        bail!("--from must be before --to");
    }
    let out = &args.out;
    if out.exists() && std::fs::read_dir(out)?.next().is_some() {
        bail!("{} exists and is not empty", out.display());
    }
    let key = public_key(settings, None)?.ok_or_else(|| {
        anyhow!(
            "no public key at {}: the log's checkpoint key is needed",
            settings.public_key().display()
        )
    })?;
    let mut records = mandate_audit::read_time_range(store.clone(), from_ms, to_ms)?;
    if let Some(s) = &args.session {
        records.retain(|r| &r.record.subject.session == s);
    }
    if records.is_empty() {
        bail!("no records match");
    }
    let last_seq = records.last().map_or(0, |r| r.seq);
    // A checkpoint must cover the last record: sign one now if needed.
    let covering = |cps: &[mandate_audit::StoredCheckpoint]| {
        cps.iter()
            .any(|c| i64::try_from(c.size).is_ok_and(|s| s >= last_seq))
    };
    let mut checkpoints = mandate_audit::read_checkpoints(store.clone())?;
    if !covering(&checkpoints) {
        let log = settings.open_log()?;
        let signed = log.checkpoint().await?;
        drop(log);
        if signed.is_none() {
            bail!("the log is empty");
        }
        checkpoints = mandate_audit::read_checkpoints(store.clone())?;
    }
    let tree = LogTree::load(store.clone())?;
    // The checkpoints: every one within the selection, and the first one
    // covering its last record, with consistency proofs between them.
    let first_seq = records.first().map_or(1, |r| r.seq);
    let mut chosen: Vec<_> = checkpoints
        .iter()
        .filter(|c| i64::try_from(c.size).is_ok_and(|s| s >= first_seq && s < last_seq))
        .cloned()
        .collect();
    let anchor = checkpoints
        .iter()
        .find(|c| i64::try_from(c.size).is_ok_and(|s| s >= last_seq))
        .cloned()
        .ok_or_else(|| anyhow!("no checkpoint covers record {last_seq}"))?;
    chosen.push(anchor.clone());
    for cp in &chosen {
        // The signed note is what counts, not the stored root column.
        let signed = key.open_checkpoint(&cp.note).map_err(|e| {
            anyhow!(
                "checkpoint {} does not verify with the log's key: {e}",
                cp.size
            )
        })?;
        if signed.size != cp.size || tree.root(cp.size).ok() != Some(signed.root) {
            bail!(
                "checkpoint {} does not match the log: run `mandate audit verify`",
                cp.size
            );
        }
    }
    std::fs::create_dir_all(out.join("checkpoints"))
        .with_context(|| format!("creating {}", out.display()))?;
    let mut files = BTreeMap::new();
    let mut write = |name: &str, bytes: &[u8]| -> Result<()> {
        std::fs::write(out.join(name), bytes).with_context(|| format!("writing {name}"))?;
        files.insert(name.to_owned(), sha256_hex(bytes));
        Ok(())
    };
    let mut jsonl = String::new();
    let mut inclusion = Vec::new();
    for r in &records {
        jsonl.push_str(&serde_json::to_string(&BundleRecord {
            seq: r.seq,
            prev_hash: r.prev_hash.clone(),
            hash: r.hash.clone(),
            body: r.body.clone(),
        })?);
        jsonl.push('\n');
        inclusion.push(InclusionProof {
            seq: r.seq,
            leaf_index: u64::try_from(r.seq - 1)?,
            proof: tree.inclusion_proof(r.seq, anchor.size)?,
        });
    }
    write("records.jsonl", jsonl.as_bytes())?;
    let mut consistency = Vec::new();
    for pair in chosen.windows(2) {
        if let [a, b] = pair {
            consistency.push(ConsistencyProof {
                from_size: a.size,
                to_size: b.size,
                proof: tree.consistency_proof(a.size, b.size)?,
            });
        }
    }
    for cp in &chosen {
        write(&format!("checkpoints/{}.txt", cp.size), cp.note.as_bytes())?;
    }
    write(
        "proofs.json",
        serde_json::to_string_pretty(&Proofs {
            tree_size: anchor.size,
            inclusion,
            consistency,
        })?
        .as_bytes(),
    )?;
    write("log.pub", format!("{key}\n").as_bytes())?;
    let selection = Selection {
        from_ms,
        to_ms,
        session: args.session.clone(),
    };
    write(
        "report.html",
        report_html(&records, &selection, &key, &anchor.note, anchor.size).as_bytes(),
    )?;
    let manifest = Manifest {
        format: BUNDLE_FORMAT.to_owned(),
        created_ms: Clock::system().now_ms(),
        log_origin: key.name().to_owned(),
        log_key: key.to_string(),
        selection,
        records: records.len(),
        tree_size: anchor.size,
        files,
    };
    std::fs::write(
        out.join("manifest.json"),
        serde_json::to_string_pretty(&manifest)?,
    )?;
    println!(
        "wrote {} records, {} checkpoint(s) and their proofs to {}",
        records.len(),
        chosen.len(),
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Verifies a bundle with nothing but its files and the log's public key.
pub fn verify_bundle(dir: &Path, key: Option<&Path>, json: bool) -> Result<ExitCode> {
    let report = check_bundle(dir, key)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if report.problems.is_empty() {
        println!(
            "evidence bundle {} verified: {} records included in the log's tree of {} records, {} signed checkpoint(s), key {}",
            dir.display(),
            report.records,
            report.tree_size,
            report.checkpoints,
            report.key
        );
    } else {
        println!("evidence bundle {} FAILED verification:", dir.display());
        for p in &report.problems {
            println!("  {p}");
        }
    }
    Ok(if report.problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn check_bundle(dir: &Path, key_file: Option<&Path>) -> Result<BundleReport> {
    // The key given by the caller is the trust anchor (a bundle cannot
    // vouch for itself).
    let Some(key_file) = key_file else {
        bail!(
            "verifying a bundle needs --key: the log's public key, from a source you trust (the bundle's own log.pub proves nothing)"
        );
    };
    let key = NoteVerifier::read(key_file).map_err(|e| anyhow!("{e}"))?;
    Ok(mandate_audit::bundle::verify_bundle(dir, &key)?)
}

/// The human-readable report: what the bundle holds, how to check it, and
/// how the records meet EU AI Act Art. 12 and NIST SP 800-207 logging.
fn report_html(
    records: &[StoredRecord],
    selection: &Selection,
    key: &NoteVerifier,
    anchor_note: &str,
    tree_size: u64,
) -> String {
    let entries = timeline(records);
    let count = |f: &dyn Fn(&TimelineEntry) -> bool| entries.iter().filter(|e| f(e)).count();
    let denied = count(&|e| e.effect == "deny");
    let held = count(&|e| e.step == "held");
    let approvals = count(&|e| !e.approvals.is_empty());
    let outcomes = count(&|e| e.step == "outcome");
    let tainted = count(&|e| !e.taint.is_empty());
    let sessions: std::collections::BTreeSet<&str> =
        entries.iter().map(|e| e.subject.session.as_str()).collect();
    let mut h = String::new();
    let _ = write!(
        h,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Mandate evidence bundle</title>\
<style>body{{font:14px system-ui,sans-serif;margin:2em;color:#222}}table{{border-collapse:collapse;width:100%}}\
td,th{{border:1px solid #ccc;padding:4px 6px;vertical-align:top;text-align:left}}th{{background:#f3f3f3}}\
code,pre{{font:12px ui-monospace,monospace}}.deny{{color:#a00}}.allow{{color:#060}}</style></head><body>\
<h1>Mandate evidence bundle</h1>\
<p>Records from {} to {}{}: <b>{}</b> records in {} session(s); {} denied, {} held for a human, {} with an approver's decision, {} upstream outcomes, {} that tainted their session.</p>\
<p>Log: <code>{}</code>. Every record is a leaf of the log's RFC 9162 Merkle tree of {} records, whose hash is signed in the checkpoint below (C2SP signed note, Ed25519). Check the bundle offline with <code>mandate audit verify --bundle DIR --key log.pub</code> or any verifier written from <code>docs/AUDIT-FORMAT.md</code>; compare <code>log.pub</code> with the key the operator published.</p>\
<pre>{}</pre>",
        escape(&format_ms(selection.from_ms)),
        escape(&format_ms(selection.to_ms)),
        selection
            .session
            .as_ref()
            .map(|s| format!(", session <code>{}</code>", escape(s)))
            .unwrap_or_default(),
        entries.len(),
        sessions.len(),
        denied,
        held,
        approvals,
        outcomes,
        tainted,
        escape(&key.to_string()),
        tree_size,
        escape(anchor_note),
    );
    h.push_str(
        "<h2>Logging duties these records meet</h2><table><tr><th>Duty</th><th>How the records meet it</th></tr>\
<tr><td>EU AI Act Art. 12(1): automatic recording of events over the system's lifetime</td><td>Every tool call an agent makes through Mandate is recorded before it is forwarded (write-ahead): one record per decision (allow, deny, held, approved, rejected, timed out) and one per upstream outcome, appended by the gateway, not by the agent.</td></tr>\
<tr><td>Art. 12(2)(a): identifying situations that may present a risk or a substantial modification</td><td>Denials with their policy ids and reasons; calls held for human approval; taint labels when untrusted or sensitive data entered a session; detected prompt-injection patterns (outcome detail); build hashes that identify the agent's model, prompt and tools.</td></tr>\
<tr><td>Art. 12(2)(b), 12(2)(c) with Art. 26(5): post-market monitoring and monitoring of operation</td><td>Time, session, user (<code>sub</code>), agent chain (<code>act</code>), scope, task, tool, argument hash, effect and outcome per call, with a correlation id joining a call's decision and outcome; the session timeline below.</td></tr>\
<tr><td>Art. 12(3)(a), (d) analogues: period of use; natural persons involved in verifying results (Art. 14)</td><td>First and last record time per session; the approver named in each approved or rejected call's reasons.</td></tr>\
<tr><td>Art. 19 / 26(6): keep logs at least six months; integrity</td><td>Retention is configured (<code>audit.retention_days</code>, at least 183); the hash chain, Merkle tree and signed checkpoints make any edit, deletion, insertion or reordering detectable.</td></tr>\
<tr><td>NIST SP 800-207 §3 (policy engine and administrator decisions are logged)</td><td>The decision (effect, determining policies, reasons, obligations, policy-set hash) as the PDP returned it, and the enforcement: forwarded (outcome record) or refused.</td></tr>\
<tr><td>NIST SP 800-207 tenets 6 and 7 (dynamic, continuously verified access; collect information to improve posture)</td><td>Every call re-verified and recorded with the subject's current scope, task and build; revocations and approvals are themselves audited operator actions (<code>control/…</code> records).</td></tr>\
</table><h2>Timeline</h2><table><tr><th>seq</th><th>time (UTC)</th><th>step</th><th>subject</th><th>tool</th><th>effect</th><th>reasons / approvals</th><th>taint</th><th>outcome</th><th>correlation id</th></tr>",
    );
    for e in &entries {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{} via {}<br><small>session {}</small></td><td><code>{}</code><br><small>args {}</small></td><td class=\"{}\">{}</td><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td></tr>",
            e.seq,
            escape(&e.time),
            e.step,
            escape(&e.subject.sub),
            escape(&e.subject.act.join(" → ")),
            escape(&e.subject.session),
            escape(&e.tool),
            escape(e.args_hash.get(..16).unwrap_or(&e.args_hash)),
            e.effect,
            e.effect,
            escape(&e.reasons.join("; ")),
            escape(&e.taint.join(", ")),
            escape(e.outcome.as_deref().unwrap_or("")),
            escape(&e.correlation_id),
        );
    }
    h.push_str("</table></body></html>\n");
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_parse_and_format() -> Result<()> {
        assert_eq!(parse_instant("0")?, 0);
        assert_eq!(parse_instant("1970-01-02")?, 86_400_000);
        assert_eq!(parse_instant("2026-11-30T08:00:00Z")?, 1_796_025_600_000);
        assert_eq!(parse_instant("2026-11-30T08:00:00.5Z")?, 1_796_025_600_500);
        assert_eq!(
            parse_instant("2026-11-30T09:00:00+01:00")?,
            1_796_025_600_000
        );
        assert_eq!(format_ms(1_796_025_600_500), "2026-11-30T08:00:00.500Z");
        assert_eq!(format_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert!(parse_instant("2026-13-01").is_err());
        assert!(parse_instant("2026-02-30").is_err());
        assert!(parse_instant("2026-11-30T08:00:00").is_err());
        assert!(parse_instant("yesterday").is_err());
        Ok(())
    }
}
