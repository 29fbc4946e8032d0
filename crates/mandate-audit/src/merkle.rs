//! RFC 9162 (RFC 6962) Merkle tree hashing, proofs and their verification.
//!
//! Leaves are hashed `SHA-256(0x00 || data)`, interior nodes
//! `SHA-256(0x01 || left || right)`, and a tree of `n` leaves splits at the
//! largest power of two below `n` (RFC 9162 §2.1.1). The last node is
//! never duplicated. The empty tree's hash is `SHA-256("")`.
//!
//! The proof *generation* follows RFC 9162 §2.1.3.1 / §2.1.4.1 over the
//! stored leaf hashes; the *verification* is the iterative algorithm of
//! §2.1.3.2 / §2.1.4.2, which shares no code with generation, so one cannot
//! hide a mistake in the other. Both are checked against the
//! transparency-dev/merkle test vectors (`tests/vectors/`).

use sha2::{Digest, Sha256};
use std::fmt;

/// A SHA-256 node or leaf hash.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Hash(pub [u8; 32]);

impl Hash {
    /// Lower-case hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 hex characters.
    pub fn from_hex(s: &str) -> Option<Self> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(Self(out))
    }

    /// Standard base64 (as in checkpoints and proofs).
    pub fn to_base64(&self) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(self.0)
    }

    /// Parses standard base64 of exactly 32 bytes.
    pub fn from_base64(s: &str) -> Option<Self> {
        use base64::Engine as _;
        let bytes = base64::engine::general_purpose::STANDARD.decode(s).ok()?;
        Some(Self(bytes.try_into().ok()?))
    }

    /// From a slice of exactly 32 bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        Some(Self(bytes.try_into().ok()?))
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({})", self.to_hex())
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl serde::Serialize for Hash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_base64())
    }
}

impl<'de> serde::Deserialize<'de> for Hash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::from_base64(&s).ok_or_else(|| serde::de::Error::custom("not a base64 SHA-256 hash"))
    }
}

/// `SHA-256("")`: the hash of the empty tree.
pub fn empty_root() -> Hash {
    Hash(Sha256::digest([]).into())
}

/// `SHA-256(0x00 || data)`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(data);
    Hash(h.finalize().into())
}

/// `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left.0);
    h.update(right.0);
    Hash(h.finalize().into())
}

/// The largest power of two strictly below `n` (`n >= 2`).
fn split(n: u64) -> u64 {
    1u64 << (63 - (n - 1).leading_zeros())
}

/// The right edge of a tree being built leaf by leaf: the roots of its
/// perfect subtrees, largest first (a "compact range" from 0). Appending is
/// amortised one node hash per leaf; the root costs one hash per subtree.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    /// `nodes[i]` is a perfect subtree; sizes are the set bits of `size`,
    /// largest first.
    nodes: Vec<Hash>,
}

impl Frontier {
    /// Leaves appended so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends one leaf hash.
    pub fn push(&mut self, leaf: Hash) {
        let mut node = leaf;
        // Each trailing one bit of `size` is a perfect subtree of the same
        // height as `node` to merge with.
        let mut size = self.size;
        while size & 1 == 1 {
            if let Some(left) = self.nodes.pop() {
                node = node_hash(&left, &node);
            }
            size >>= 1;
        }
        self.nodes.push(node);
        self.size = self.size.saturating_add(1);
    }

    /// The tree hash of the leaves so far (RFC 9162 `MTH`).
    pub fn root(&self) -> Hash {
        let mut nodes = self.nodes.iter().rev();
        let Some(last) = nodes.next() else {
            return empty_root();
        };
        nodes.fold(*last, |right, left| node_hash(left, &right))
    }

    /// The subtree roots, for storing beside a checkpoint.
    pub fn nodes(&self) -> &[Hash] {
        &self.nodes
    }

    /// Rebuilds a frontier from a stored size and its subtree roots; `None`
    /// if their number does not match `size`.
    pub fn from_parts(size: u64, nodes: Vec<Hash>) -> Option<Self> {
        (u64::from(size.count_ones()) == nodes.len() as u64).then_some(Self { size, nodes })
    }
}

/// The RFC 9162 `MTH` of a list of leaf hashes.
pub fn root(leaves: &[Hash]) -> Hash {
    let mut f = Frontier::default();
    for leaf in leaves {
        f.push(*leaf);
    }
    f.root()
}

/// A tree over known leaf hashes with every perfect subtree kept, for
/// producing proofs (memory: about two hashes per leaf).
#[derive(Debug, Clone)]
pub struct Tree {
    /// `levels[0]` are the leaves; `levels[h][i]` covers leaves
    /// `i·2^h .. (i+1)·2^h`.
    levels: Vec<Vec<Hash>>,
}

/// Why a proof could not be produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProofError {
    /// The leaf index is not below the tree size.
    #[error("leaf {index} is not in a tree of {size} leaves")]
    IndexOutOfRange {
        /// Requested leaf.
        index: u64,
        /// Tree size.
        size: u64,
    },
    /// A requested tree size exceeds the leaves known.
    #[error("tree size {size} exceeds the {known} leaves known")]
    SizeOutOfRange {
        /// Requested size.
        size: u64,
        /// Leaves known.
        known: u64,
    },
    /// A consistency proof needs `0 < old <= new`.
    #[error("no consistency proof from size {old} to size {new}")]
    BadSizes {
        /// The older size.
        old: u64,
        /// The newer size.
        new: u64,
    },
}

impl Tree {
    /// Builds every level above `leaves`.
    pub fn new(leaves: Vec<Hash>) -> Self {
        let mut levels = vec![leaves];
        while let Some(below) = levels.last() {
            if below.len() < 2 {
                break;
            }
            let above: Vec<Hash> = below
                .chunks_exact(2)
                .map(|pair| match pair {
                    [l, r] => node_hash(l, r),
                    _ => unreachable_pair(),
                })
                .collect();
            levels.push(above);
        }
        Self { levels }
    }

    /// Leaves in the tree.
    pub fn size(&self) -> u64 {
        self.levels.first().map_or(0, |l| l.len() as u64)
    }

    /// The leaf hash at `index`.
    pub fn leaf(&self, index: u64) -> Option<Hash> {
        let i = usize::try_from(index).ok()?;
        self.levels.first()?.get(i).copied()
    }

    /// The root of the first `size` leaves.
    pub fn root_at(&self, size: u64) -> Result<Hash, ProofError> {
        self.check_size(size)?;
        Ok(self.range_hash(0, size))
    }

    /// RFC 9162 §2.1.3.1 `PATH(index, D[0:size])`, leaf to root.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>, ProofError> {
        self.check_size(size)?;
        if index >= size {
            return Err(ProofError::IndexOutOfRange { index, size });
        }
        let mut out = Vec::new();
        self.path(index, 0, size, &mut out);
        Ok(out)
    }

    /// RFC 9162 §2.1.4.1 `PROOF(old, D[0:new])`.
    pub fn consistency_proof(&self, old: u64, new: u64) -> Result<Vec<Hash>, ProofError> {
        self.check_size(new)?;
        if old == 0 || old > new {
            return Err(ProofError::BadSizes { old, new });
        }
        let mut out = Vec::new();
        self.subproof(old, 0, new, true, &mut out);
        Ok(out)
    }

    fn check_size(&self, size: u64) -> Result<(), ProofError> {
        let known = self.size();
        if size > known {
            return Err(ProofError::SizeOutOfRange { size, known });
        }
        Ok(())
    }

    /// `PATH(m, D[start:end])`, appending to `out` from the leaf up.
    fn path(&self, m: u64, start: u64, end: u64, out: &mut Vec<Hash>) {
        let n = end - start;
        if n <= 1 {
            return;
        }
        let k = split(n);
        if m < k {
            self.path(m, start, start + k, out);
            out.push(self.range_hash(start + k, end));
        } else {
            self.path(m - k, start + k, end, out);
            out.push(self.range_hash(start, start + k));
        }
    }

    /// `SUBPROOF(m, D[start:end], complete)`.
    fn subproof(&self, m: u64, start: u64, end: u64, complete: bool, out: &mut Vec<Hash>) {
        let n = end - start;
        if m == n {
            if !complete {
                out.push(self.range_hash(start, end));
            }
            return;
        }
        let k = split(n);
        if m <= k {
            self.subproof(m, start, start + k, complete, out);
            out.push(self.range_hash(start + k, end));
        } else {
            self.subproof(m - k, start + k, end, false, out);
            out.push(self.range_hash(start, start + k));
        }
    }

    /// `MTH(D[start:end])`: a stored node when the range is a perfect,
    /// aligned subtree, else split as RFC 9162 does.
    fn range_hash(&self, start: u64, end: u64) -> Hash {
        let n = end - start;
        if n == 0 {
            return empty_root();
        }
        if n.is_power_of_two() && start.is_multiple_of(n) {
            let height = n.trailing_zeros() as usize;
            let stored = usize::try_from(start >> height)
                .ok()
                .and_then(|i| self.levels.get(height)?.get(i));
            if let Some(h) = stored {
                return *h;
            }
        }
        if n == 1 {
            // Unreachable for in-range leaves; a stable value otherwise.
            return empty_root();
        }
        let k = split(n);
        node_hash(
            &self.range_hash(start, start + k),
            &self.range_hash(start + k, end),
        )
    }
}

fn unreachable_pair() -> Hash {
    // chunks_exact(2) only yields pairs.
    empty_root()
}

/// Why a proof does not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// Index not below size, or sizes out of order / zero.
    #[error("the proof's sizes or index are invalid")]
    BadInput,
    /// The proof has the wrong number of hashes.
    #[error("the proof has the wrong length")]
    BadLength,
    /// The recomputed root differs.
    #[error("the proof does not lead to the expected root")]
    RootMismatch,
}

/// RFC 9162 §2.1.3.2: checks that `leaf` is leaf `index` of the tree of
/// `size` leaves whose hash is `root`.
pub fn verify_inclusion(
    index: u64,
    size: u64,
    leaf: &Hash,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), VerifyError> {
    if index >= size {
        return Err(VerifyError::BadInput);
    }
    let (mut fnode, mut snode) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if snode == 0 {
            return Err(VerifyError::BadLength);
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(p, &r);
            while fnode & 1 == 0 && fnode != 0 {
                fnode >>= 1;
                snode >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 {
        return Err(VerifyError::BadLength);
    }
    if r != *root {
        return Err(VerifyError::RootMismatch);
    }
    Ok(())
}

/// RFC 9162 §2.1.4.2: checks that the tree of `new_size` leaves with hash
/// `new_root` extends the tree of `old_size` leaves with hash `old_root`.
/// A proof from the empty tree is refused as meaningless (as the
/// transparency-dev verifiers do).
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), VerifyError> {
    if old_size == 0 || old_size > new_size {
        return Err(VerifyError::BadInput);
    }
    if old_size == new_size {
        if !proof.is_empty() {
            return Err(VerifyError::BadLength);
        }
        return if old_root == new_root {
            Ok(())
        } else {
            Err(VerifyError::RootMismatch)
        };
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if old_size.is_power_of_two() {
        path.push(*old_root);
    }
    path.extend_from_slice(proof);
    let mut items = path.iter();
    let Some(first) = items.next() else {
        return Err(VerifyError::BadLength);
    };
    let (mut fnode, mut snode) = (old_size - 1, new_size - 1);
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    let (mut fr, mut sr) = (*first, *first);
    for c in items {
        if snode == 0 {
            return Err(VerifyError::BadLength);
        }
        if fnode & 1 == 1 || fnode == snode {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while fnode & 1 == 0 && fnode != 0 {
                fnode >>= 1;
                snode >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 {
        return Err(VerifyError::BadLength);
    }
    if fr != *old_root || sr != *new_root {
        return Err(VerifyError::RootMismatch);
    }
    Ok(())
}

#[cfg(test)]
#[path = "merkle_tests.rs"]
mod tests;
