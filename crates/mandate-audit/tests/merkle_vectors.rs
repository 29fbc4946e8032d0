//! The RFC 6962/9162 proof verifiers against the transparency-dev/merkle
//! test vectors (see `tests/vectors/README.md` for their source and licence).
//! Every vector must give exactly its expected outcome: the happy paths
//! verify, every corrupted variant fails.

use mandate_audit::merkle::{Hash, verify_consistency, verify_inclusion};
use serde::Deserialize;

type TestResult = Result<(), Box<dyn std::error::Error>>;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Inclusion {
    file: String,
    leaf_idx: i128,
    tree_size: i128,
    root: Option<String>,
    leaf_hash: Option<String>,
    proof: Option<Vec<String>>,
    want_err: bool,
}

#[derive(Deserialize)]
struct Consistency {
    file: String,
    size1: i128,
    size2: i128,
    root1: Option<String>,
    root2: Option<String>,
    proof: Option<Vec<String>>,
    #[serde(rename = "wantErr")]
    want_err: bool,
}

/// A base64 leaf hash: it must be 32 bytes (the reference rejects any
/// other length).
fn hash(v: Option<&String>) -> Option<Hash> {
    Hash::from_base64(v.map_or("", String::as_str))
}

/// A base64 root or proof node. Some vectors use placeholder bytes ("don't
/// care") of another length where only equality matters: those stand in
/// as the SHA-256 of their bytes, which keeps equal values equal and
/// never matches a real node.
fn node(v: Option<&String>) -> Option<Hash> {
    use base64::Engine as _;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(v.map_or("", String::as_str))
        .ok()?;
    Some(Hash::from_slice(&raw).unwrap_or_else(|| {
        use sha2::Digest as _;
        Hash(sha2::Sha256::digest(&raw).into())
    }))
}

fn proof(v: Option<&Vec<String>>) -> Option<Vec<Hash>> {
    v.map_or(Some(Vec::new()), |p| {
        p.iter().map(|h| node(Some(h))).collect()
    })
}

#[test]
fn inclusion_vectors() -> TestResult {
    let cases: Vec<Inclusion> = serde_json::from_str(include_str!("vectors/inclusion.json"))?;
    assert!(cases.len() > 90, "vectors missing");
    let mut happy = 0;
    for c in &cases {
        let outcome = (|| {
            let index = u64::try_from(c.leaf_idx).ok()?;
            let size = u64::try_from(c.tree_size).ok()?;
            let leaf = hash(c.leaf_hash.as_ref())?;
            let root = node(c.root.as_ref())?;
            let proof = proof(c.proof.as_ref())?;
            verify_inclusion(index, size, &leaf, &proof, &root).ok()
        })();
        assert_eq!(outcome.is_none(), c.want_err, "{}", c.file);
        happy += usize::from(!c.want_err);
    }
    assert!(happy >= 5, "too few happy paths: {happy}");
    Ok(())
}

#[test]
fn consistency_vectors() -> TestResult {
    let cases: Vec<Consistency> = serde_json::from_str(include_str!("vectors/consistency.json"))?;
    assert!(cases.len() > 90, "vectors missing");
    let mut happy = 0;
    for c in &cases {
        let outcome = (|| {
            let size1 = u64::try_from(c.size1).ok()?;
            let size2 = u64::try_from(c.size2).ok()?;
            let root1 = node(c.root1.as_ref())?;
            let root2 = node(c.root2.as_ref())?;
            let proof = proof(c.proof.as_ref())?;
            verify_consistency(size1, size2, &root1, &root2, &proof).ok()
        })();
        assert_eq!(outcome.is_none(), c.want_err, "{}", c.file);
        happy += usize::from(!c.want_err);
    }
    assert!(happy >= 5, "too few happy paths: {happy}");
    Ok(())
}
