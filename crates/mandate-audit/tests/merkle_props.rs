//! Property tests of the RFC 9162 Merkle tree against a model written as
//! the RFC defines it (recursive `MTH`, `PATH` and `PROOF` over slices of
//! leaves): the incremental root equals the model's for every size, the
//! proofs the log produces are the RFC's and verify, and any single-bit
//! change in the leaf, the proof or a root makes verification fail.

use mandate_audit::merkle::{
    Frontier, Hash, Tree, empty_root, leaf_hash, node_hash, root, verify_consistency,
    verify_inclusion,
};
use proptest::prelude::*;

/// The largest power of two strictly below `n` (`n >= 2`), by counting.
fn k_of(n: usize) -> usize {
    let mut k = 1;
    while k * 2 < n {
        k *= 2;
    }
    k
}

/// RFC 9162 §2.1.1 `MTH(D[n])`.
fn mth(d: &[Hash]) -> Hash {
    match d {
        [] => empty_root(),
        [one] => *one,
        _ => {
            let (l, r) = d.split_at(k_of(d.len()));
            node_hash(&mth(l), &mth(r))
        }
    }
}

/// RFC 9162 §2.1.3.1 `PATH(m, D[n])`, leaf to root.
fn path(m: usize, d: &[Hash]) -> Vec<Hash> {
    if d.len() <= 1 {
        return Vec::new();
    }
    let k = k_of(d.len());
    let (l, r) = d.split_at(k);
    if m < k {
        let mut p = path(m, l);
        p.push(mth(r));
        p
    } else {
        let mut p = path(m - k, r);
        p.push(mth(l));
        p
    }
}

/// RFC 9162 §2.1.4.1 `SUBPROOF(m, D[n], b)`.
fn subproof(m: usize, d: &[Hash], complete: bool) -> Vec<Hash> {
    if m == d.len() {
        return if complete { Vec::new() } else { vec![mth(d)] };
    }
    let k = k_of(d.len());
    let (l, r) = d.split_at(k);
    if m <= k {
        let mut p = subproof(m, l, complete);
        p.push(mth(r));
        p
    } else {
        let mut p = subproof(m - k, r, false);
        p.push(mth(l));
        p
    }
}

/// `n` distinct leaves (random data, tagged with the index so no two are
/// equal: a proof for one leaf must never verify for another).
fn distinct_leaves(max: usize) -> impl Strategy<Value = Vec<Hash>> {
    proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..12), 1..=max).prop_map(
        |data| {
            data.iter()
                .enumerate()
                .map(|(i, d)| {
                    let mut bytes = i.to_be_bytes().to_vec();
                    bytes.extend_from_slice(d);
                    leaf_hash(&bytes)
                })
                .collect()
        },
    )
}

/// Leaves that may repeat (a log may well record two equal records).
fn any_leaves(max: usize) -> impl Strategy<Value = Vec<Hash>> {
    proptest::collection::vec(0u8..4, 0..=max)
        .prop_map(|v| v.iter().map(|b| leaf_hash(&[*b])).collect())
}

fn flip(h: &Hash, bit: usize) -> Hash {
    let mut out = *h;
    if let Some(byte) = out.0.get_mut((bit / 8) % 32) {
        *byte ^= 1 << (bit % 8);
    }
    out
}

fn prefix(leaves: &[Hash], n: u64) -> &[Hash] {
    leaves
        .get(..usize::try_from(n).unwrap_or(usize::MAX))
        .unwrap_or(leaves)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn the_incremental_root_is_the_rfc_root_at_every_size(leaves in any_leaves(160)) {
        let tree = Tree::new(leaves.clone());
        let mut f = Frontier::default();
        prop_assert_eq!(f.root(), mth(&[]));
        for (i, leaf) in leaves.iter().enumerate() {
            f.push(*leaf);
            let size = i as u64 + 1;
            let want = mth(prefix(&leaves, size));
            prop_assert_eq!(f.size(), size);
            prop_assert_eq!(f.root(), want, "frontier at size {}", size);
            prop_assert_eq!(tree.root_at(size), Ok(want), "tree at size {}", size);
            prop_assert_eq!(root(prefix(&leaves, size)), want);
            // A frontier stored beside a checkpoint rebuilds to the same one.
            let again = Frontier::from_parts(f.size(), f.nodes().to_vec());
            prop_assert_eq!(again.as_ref(), Some(&f));
        }
        prop_assert!(tree.root_at(leaves.len() as u64 + 1).is_err());
    }

    #[test]
    fn inclusion_proofs_are_the_rfc_paths_and_verify(
        leaves in distinct_leaves(200),
        picks in (any::<prop::sample::Index>(), any::<prop::sample::Index>()),
    ) {
        let tree = Tree::new(leaves.clone());
        let n = leaves.len();
        let size = picks.0.index(n) + 1;
        let index = picks.1.index(size);
        let (size64, index64) = (size as u64, index as u64);
        let d = prefix(&leaves, size64);
        let proof = tree.inclusion_proof(index64, size64);
        prop_assert_eq!(proof.as_ref(), Ok(&path(index, d)));
        let proof = proof.unwrap_or_default();
        let leaf = tree.leaf(index64).unwrap_or_else(empty_root);
        let r = mth(d);
        prop_assert_eq!(verify_inclusion(index64, size64, &leaf, &proof, &r), Ok(()));
        // Another leaf position of the same tree: refused (leaves differ).
        for other in [index64.wrapping_sub(1), index64 + 1, index64 ^ 2] {
            if other < size64 && other != index64 {
                prop_assert!(verify_inclusion(other, size64, &leaf, &proof, &r).is_err(), "index {}", other);
            }
        }
        prop_assert!(verify_inclusion(size64, size64, &leaf, &proof, &r).is_err());
    }

    #[test]
    fn any_bit_flip_breaks_an_inclusion_proof(
        leaves in distinct_leaves(120),
        picks in (any::<prop::sample::Index>(), any::<prop::sample::Index>()),
        bit in 0usize..256,
        which in any::<prop::sample::Index>(),
        extra in any::<[u8; 32]>(),
    ) {
        let tree = Tree::new(leaves.clone());
        let size = picks.0.index(leaves.len()) as u64 + 1;
        let index = picks.1.index(usize::try_from(size).unwrap_or(1)) as u64;
        let proof = tree.inclusion_proof(index, size).unwrap_or_default();
        let leaf = tree.leaf(index).unwrap_or_else(empty_root);
        let r = tree.root_at(size).unwrap_or_else(|_| empty_root());
        prop_assert_eq!(verify_inclusion(index, size, &leaf, &proof, &r), Ok(()));

        prop_assert!(verify_inclusion(index, size, &flip(&leaf, bit), &proof, &r).is_err());
        prop_assert!(verify_inclusion(index, size, &leaf, &proof, &flip(&r, bit)).is_err());
        if !proof.is_empty() {
            let i = which.index(proof.len());
            let mut bad = proof.clone();
            if let Some(h) = bad.get_mut(i) {
                *h = flip(h, bit);
            }
            prop_assert!(verify_inclusion(index, size, &leaf, &bad, &r).is_err(), "element {}", i);
            let mut short = proof.clone();
            short.pop();
            prop_assert!(verify_inclusion(index, size, &leaf, &short, &r).is_err());
        }
        let mut long = proof;
        long.push(Hash(extra));
        prop_assert!(verify_inclusion(index, size, &leaf, &long, &r).is_err());
    }

    #[test]
    fn consistency_proofs_are_the_rfc_proofs_and_verify(
        leaves in any_leaves(200),
        picks in (any::<prop::sample::Index>(), any::<prop::sample::Index>()),
    ) {
        prop_assume!(!leaves.is_empty());
        let tree = Tree::new(leaves.clone());
        let new = picks.0.index(leaves.len()) + 1;
        let old = picks.1.index(new) + 1;
        let (old64, new64) = (old as u64, new as u64);
        let proof = tree.consistency_proof(old64, new64);
        prop_assert_eq!(proof.as_ref(), Ok(&subproof(old, prefix(&leaves, new64), true)));
        let proof = proof.unwrap_or_default();
        let (old_root, new_root) = (mth(prefix(&leaves, old64)), mth(prefix(&leaves, new64)));
        prop_assert_eq!(verify_consistency(old64, new64, &old_root, &new_root, &proof), Ok(()));
        prop_assert!(tree.consistency_proof(0, new64).is_err());
        prop_assert!(tree.consistency_proof(new64 + 1, new64).is_err());
        prop_assert!(verify_consistency(0, new64, &old_root, &new_root, &proof).is_err());
    }

    #[test]
    fn any_bit_flip_breaks_a_consistency_proof(
        leaves in distinct_leaves(120),
        picks in (any::<prop::sample::Index>(), any::<prop::sample::Index>()),
        bit in 0usize..256,
        which in any::<prop::sample::Index>(),
        extra in any::<[u8; 32]>(),
    ) {
        let tree = Tree::new(leaves.clone());
        let new = picks.0.index(leaves.len()) as u64 + 1;
        let old = picks.1.index(usize::try_from(new).unwrap_or(1)) as u64 + 1;
        let proof = tree.consistency_proof(old, new).unwrap_or_default();
        let old_root = tree.root_at(old).unwrap_or_else(|_| empty_root());
        let new_root = tree.root_at(new).unwrap_or_else(|_| empty_root());
        prop_assert_eq!(verify_consistency(old, new, &old_root, &new_root, &proof), Ok(()));

        prop_assert!(verify_consistency(old, new, &flip(&old_root, bit), &new_root, &proof).is_err());
        prop_assert!(verify_consistency(old, new, &old_root, &flip(&new_root, bit), &proof).is_err());
        if !proof.is_empty() {
            let i = which.index(proof.len());
            let mut bad = proof.clone();
            if let Some(h) = bad.get_mut(i) {
                *h = flip(h, bit);
            }
            prop_assert!(verify_consistency(old, new, &old_root, &new_root, &bad).is_err(), "element {}", i);
            let mut short = proof.clone();
            short.pop();
            prop_assert!(verify_consistency(old, new, &old_root, &new_root, &short).is_err());
        }
        let mut long = proof;
        long.push(Hash(extra));
        prop_assert!(verify_consistency(old, new, &old_root, &new_root, &long).is_err());
    }
}
