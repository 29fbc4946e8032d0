//! Evidence bundles: the files `mandate audit export` writes, and their
//! offline verification (docs/AUDIT-FORMAT.md). Verification trusts nothing
//! but the bundle's files and the log's public key given by the caller: not
//! the bundle's own copy of the key, not a store, not the rest of Mandate.

use crate::merkle::{Hash, leaf_hash, verify_consistency, verify_inclusion};
use crate::{NoteVerifier, record_hash};
use mandate_core::AuditRecord;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The bundle format's name and version (in `manifest.json`).
pub const BUNDLE_FORMAT: &str = "mandate-evidence-bundle/1";

/// One line of `records.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BundleRecord {
    /// Position in the log.
    pub seq: i64,
    /// The previous record's hash.
    pub prev_hash: String,
    /// This record's hash.
    pub hash: String,
    /// The stored canonical JSON, exactly: what both hashes cover.
    pub body: String,
}

/// `proofs.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Proofs {
    /// The checkpoint every inclusion proof is against.
    pub tree_size: u64,
    /// One per record of the bundle.
    pub inclusion: Vec<InclusionProof>,
    /// Between consecutive checkpoints in `checkpoints/`, oldest first.
    pub consistency: Vec<ConsistencyProof>,
}

/// A record's inclusion in the tree of `Proofs::tree_size` records.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InclusionProof {
    /// The record.
    pub seq: i64,
    /// Its leaf (`seq - 1`).
    pub leaf_index: u64,
    /// The audit path.
    pub proof: Vec<Hash>,
}

/// The log was append-only between two checkpoints.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConsistencyProof {
    /// The older checkpoint's size.
    pub from_size: u64,
    /// The newer checkpoint's size.
    pub to_size: u64,
    /// The proof.
    pub proof: Vec<Hash>,
}

/// `manifest.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    /// [`BUNDLE_FORMAT`].
    pub format: String,
    /// When the bundle was written (Unix milliseconds).
    pub created_ms: i64,
    /// The log's origin line.
    pub log_origin: String,
    /// The log's public key (informative: the verifier brings its own).
    pub log_key: String,
    /// Which records were selected.
    pub selection: Selection,
    /// How many records `records.jsonl` holds.
    pub records: usize,
    /// The tree the proofs are against.
    pub tree_size: u64,
    /// SHA-256 (hex) of every other file, by name.
    pub files: BTreeMap<String, String>,
}

/// Which records a bundle holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Selection {
    /// First instant included (Unix milliseconds).
    pub from_ms: i64,
    /// First instant excluded.
    pub to_ms: i64,
    /// Only this session's records.
    pub session: Option<String>,
}

/// What a verification found: `problems` is empty when the bundle holds.
#[derive(Debug, Default, Clone, Serialize)]
pub struct BundleReport {
    /// Records read.
    pub records: usize,
    /// The tree they were proven against.
    pub tree_size: u64,
    /// Valid signed checkpoints.
    pub checkpoints: usize,
    /// The key the bundle was checked with.
    pub key: String,
    /// Every way the bundle differs from what it claims.
    pub problems: Vec<String>,
}

/// A bundle that cannot be read as one (its files are missing or not in
/// the format); a bundle that reads but does not hold is a
/// [`BundleReport`] with problems.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// A file could not be read.
    #[error("{}: {source}", file.display())]
    Io {
        /// The file.
        file: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file is not in the bundle format.
    #[error("{0}")]
    Format(String),
}

/// SHA-256, hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn read(dir: &Path, name: &str) -> Result<Vec<u8>, BundleError> {
    let file = dir.join(name);
    std::fs::read(&file).map_err(|source| BundleError::Io { file, source })
}

fn format(what: impl Into<String>) -> BundleError {
    BundleError::Format(what.into())
}

/// Verifies the bundle in `dir` against `key`, the log's public key from a
/// source the caller trusts (the bundle's own `log.pub` must be the same
/// key, and proves nothing by itself).
pub fn verify_bundle(dir: &Path, key: &NoteVerifier) -> Result<BundleReport, BundleError> {
    let manifest: Manifest = serde_json::from_slice(&read(dir, "manifest.json")?)
        .map_err(|_| format("manifest.json is not a bundle manifest"))?;
    if manifest.format != BUNDLE_FORMAT {
        return Err(format(format!(
            "unknown bundle format {:?}",
            manifest.format
        )));
    }
    let mut problems = Vec::new();
    // The key given by the caller is the trust anchor (a bundle cannot
    // vouch for itself); the bundle's own copy must be the same key.
    let bundled: NoteVerifier = String::from_utf8(read(dir, "log.pub")?)
        .map_err(|_| format("log.pub is not text"))?
        .parse()
        .map_err(|e| format(format!("log.pub: {e}")))?;
    if *key != bundled {
        problems.push("log.pub is not the key given with --key".to_owned());
    }
    for (name, want) in &manifest.files {
        match read(dir, name) {
            Ok(bytes) if &sha256_hex(&bytes) == want => {}
            Ok(_) => problems.push(format!("{name}: content differs from the manifest")),
            Err(_) => problems.push(format!("{name}: missing")),
        }
    }
    // Checkpoints, by size.
    let mut checkpoints = BTreeMap::new();
    let cp_dir = dir.join("checkpoints");
    let io = |file: &Path| {
        let file = file.to_path_buf();
        move |source| BundleError::Io { file, source }
    };
    for entry in std::fs::read_dir(&cp_dir).map_err(io(&cp_dir))? {
        let entry = entry.map_err(io(&cp_dir))?;
        let note = std::fs::read_to_string(entry.path()).map_err(io(&entry.path()))?;
        match key.open_checkpoint(&note) {
            Ok(cp) => {
                // Two signed roots for one size are a fork of the log.
                if let Some(other) = checkpoints.insert(cp.size, cp.root)
                    && other != cp.root
                {
                    problems.push(format!(
                        "two signed checkpoints of size {} with different roots: the log forked",
                        cp.size
                    ));
                }
            }
            Err(e) => problems.push(format!("{}: {e}", entry.file_name().to_string_lossy())),
        }
    }
    let proofs: Proofs = serde_json::from_slice(&read(dir, "proofs.json")?)
        .map_err(|e| format(format!("proofs.json: {e}")))?;
    let Some(root) = checkpoints.get(&proofs.tree_size).copied() else {
        problems.push(format!(
            "no valid signed checkpoint of size {} (the proofs' tree)",
            proofs.tree_size
        ));
        return Ok(BundleReport {
            key: key.to_string(),
            problems,
            ..Default::default()
        });
    };
    for c in &proofs.consistency {
        match (checkpoints.get(&c.from_size), checkpoints.get(&c.to_size)) {
            (Some(a), Some(b)) => {
                if verify_consistency(c.from_size, c.to_size, a, b, &c.proof).is_err() {
                    problems.push(format!(
                        "checkpoints {} and {}: the log was not append-only between them",
                        c.from_size, c.to_size
                    ));
                }
            }
            _ => problems.push(format!(
                "consistency proof {}→{} refers to a missing checkpoint",
                c.from_size, c.to_size
            )),
        }
    }
    let proof_of: BTreeMap<i64, &InclusionProof> =
        proofs.inclusion.iter().map(|p| (p.seq, p)).collect();
    let text = String::from_utf8(read(dir, "records.jsonl")?)
        .map_err(|_| format("records.jsonl is not text"))?;
    let mut count = 0usize;
    let mut previous: Option<BundleRecord> = None;
    for line in text.lines().filter(|l| !l.is_empty()) {
        count += 1;
        let r: BundleRecord = match serde_json::from_str(line) {
            Ok(r) => r,
            Err(_) => {
                problems.push(format!("records.jsonl line {count}: not a record"));
                continue;
            }
        };
        let seq = r.seq;
        if record_hash(&r.prev_hash, &r.body) != r.hash {
            problems.push(format!(
                "record {seq}: edited (its content does not match its hash)"
            ));
        }
        if let Some(p) = &previous
            && p.seq.checked_add(1) == Some(seq)
            && p.hash != r.prev_hash
        {
            problems.push(format!("record {seq}: does not chain to record {}", p.seq));
        }
        match serde_json::from_str::<AuditRecord>(&r.body) {
            Ok(rec) => {
                let in_range = rec.time_ms >= manifest.selection.from_ms
                    && rec.time_ms < manifest.selection.to_ms;
                let in_session = manifest
                    .selection
                    .session
                    .as_ref()
                    .is_none_or(|s| &rec.subject.session == s);
                if !in_range || !in_session {
                    problems.push(format!("record {seq}: outside the bundle's selection"));
                }
            }
            Err(_) => problems.push(format!("record {seq}: body is not an audit record")),
        }
        let leaf = leaf_hash(r.body.as_bytes());
        match proof_of.get(&seq) {
            Some(p)
                if seq
                    .checked_sub(1)
                    .and_then(|s| u64::try_from(s).ok())
                    == Some(p.leaf_index)
                    && verify_inclusion(p.leaf_index, proofs.tree_size, &leaf, &p.proof, &root)
                        .is_ok() => {}
            Some(_) => problems.push(format!(
                "record {seq}: not included in the signed tree of {} records (edited, inserted or moved)",
                proofs.tree_size
            )),
            None => problems.push(format!("record {seq}: no inclusion proof")),
        }
        previous = Some(r);
    }
    if count != manifest.records {
        problems.push(format!(
            "records.jsonl holds {count} records, the manifest says {}",
            manifest.records
        ));
    }
    Ok(BundleReport {
        records: count,
        tree_size: proofs.tree_size,
        checkpoints: checkpoints.len(),
        key: key.to_string(),
        problems,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn key() -> Result<NoteVerifier, Box<dyn std::error::Error>> {
        Ok(crate::note::CheckpointSigner::generate(Some("test.example/log"))?.verifier())
    }

    #[test]
    fn a_missing_bundle_is_an_error_naming_the_file() -> TestResult {
        let dir = tempfile::tempdir()?;
        let err = verify_bundle(dir.path(), &key()?)
            .err()
            .ok_or("verified nothing")?;
        assert!(matches!(err, BundleError::Io { .. }), "{err}");
        assert!(err.to_string().contains("manifest.json"), "{err}");
        Ok(())
    }

    #[test]
    fn another_format_is_refused() -> TestResult {
        let dir = tempfile::tempdir()?;
        std::fs::write(
            dir.path().join("manifest.json"),
            serde_json::to_string(&Manifest {
                format: "mandate-evidence-bundle/0".into(),
                created_ms: 0,
                log_origin: String::new(),
                log_key: String::new(),
                selection: Selection {
                    from_ms: 0,
                    to_ms: 1,
                    session: None,
                },
                records: 0,
                tree_size: 0,
                files: BTreeMap::new(),
            })?,
        )?;
        let err = verify_bundle(dir.path(), &key()?)
            .err()
            .ok_or("verified nothing")?;
        assert!(err.to_string().contains("unknown bundle format"), "{err}");
        Ok(())
    }
}
