use super::*;

/// The leaf inputs and roots of the transparency-dev/merkle reference
/// tests (`testonly/constants.go`, Apache-2.0): roots of the trees of
/// 1..=8 of these leaves.
const LEAF_INPUTS: [&str; 8] = [
    "",
    "00",
    "10",
    "2021",
    "3031",
    "40414243",
    "5051525354555657",
    "606162636465666768696a6b6c6d6e6f",
];
const ROOTS: [&str; 8] = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
];

fn leaves() -> Vec<Hash> {
    LEAF_INPUTS
        .iter()
        .map(|h| leaf_hash(&hex::decode(h).unwrap_or_default()))
        .collect()
}

/// RFC 9162 §2.1.1 written as the definition reads, for comparison.
fn mth(d: &[Hash]) -> Hash {
    match d.len() {
        0 => empty_root(),
        1 => d.first().copied().unwrap_or_else(empty_root),
        n => {
            let k = usize::try_from(split(n as u64)).unwrap_or(0);
            let (l, r) = d.split_at(k);
            node_hash(&mth(l), &mth(r))
        }
    }
}

fn synthetic(n: usize) -> Vec<Hash> {
    (0..n)
        .map(|i| leaf_hash(format!("leaf {i}").as_bytes()))
        .collect()
}

#[test]
fn empty_tree_hash_is_sha256_of_nothing() {
    assert_eq!(
        empty_root().to_hex(),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    assert_eq!(Frontier::default().root(), empty_root());
}

#[test]
fn roots_match_the_reference_vectors() {
    let leaves = leaves();
    let mut f = Frontier::default();
    for (i, want) in ROOTS.iter().enumerate() {
        let leaf = leaves.get(i).copied().unwrap_or_else(empty_root);
        f.push(leaf);
        assert_eq!(f.root().to_hex(), *want, "size {}", i + 1);
        let prefix = leaves.get(..=i).unwrap_or_default();
        assert_eq!(root(prefix).to_hex(), *want);
        assert_eq!(
            Tree::new(leaves.clone())
                .root_at(i as u64 + 1)
                .map(|h| h.to_hex()),
            Ok((*want).to_owned())
        );
    }
}

#[test]
fn the_last_node_is_not_duplicated() {
    // A look-alike that pairs the odd last node with itself gives a
    // different root for 3 leaves.
    let l = leaves();
    let (a, b, c) = (l.first().copied(), l.get(1).copied(), l.get(2).copied());
    let (Some(a), Some(b), Some(c)) = (a, b, c) else {
        return;
    };
    let duplicated = node_hash(&node_hash(&a, &b), &node_hash(&c, &c));
    let rfc = node_hash(&node_hash(&a, &b), &c);
    assert_eq!(root(&[a, b, c]), rfc);
    assert_ne!(root(&[a, b, c]), duplicated);
}

#[test]
fn frontier_and_tree_agree_with_the_definition() {
    for n in 0..70 {
        let leaves = synthetic(n);
        assert_eq!(root(&leaves), mth(&leaves), "size {n}");
        let tree = Tree::new(leaves.clone());
        assert_eq!(tree.root_at(n as u64), Ok(mth(&leaves)));
    }
}

#[test]
fn frontier_survives_a_round_trip_through_its_parts() {
    let mut f = Frontier::default();
    for leaf in synthetic(13) {
        f.push(leaf);
    }
    let again = Frontier::from_parts(f.size(), f.nodes().to_vec());
    assert_eq!(again.as_ref(), Some(&f));
    assert_eq!(Frontier::from_parts(12, f.nodes().to_vec()), None);
}

#[test]
fn every_inclusion_proof_verifies_and_a_wrong_one_does_not() {
    let leaves = synthetic(37);
    let tree = Tree::new(leaves);
    for size in 1..=37u64 {
        let root = tree.root_at(size).unwrap_or_else(|_| empty_root());
        for index in 0..size {
            let leaf = tree.leaf(index).unwrap_or_else(empty_root);
            let proof = tree.inclusion_proof(index, size).unwrap_or_default();
            assert_eq!(
                verify_inclusion(index, size, &leaf, &proof, &root),
                Ok(()),
                "{index}/{size}"
            );
            let other = leaf_hash(b"forged");
            assert!(verify_inclusion(index, size, &other, &proof, &root).is_err());
            if size > 1 {
                assert!(verify_inclusion((index + 1) % size, size, &leaf, &proof, &root).is_err());
            }
        }
    }
    assert!(tree.inclusion_proof(5, 5).is_err());
    assert!(tree.inclusion_proof(0, 38).is_err());
}

#[test]
fn every_consistency_proof_verifies_and_a_wrong_one_does_not() {
    let leaves = synthetic(33);
    let tree = Tree::new(leaves);
    for new in 1..=33u64 {
        let new_root = tree.root_at(new).unwrap_or_else(|_| empty_root());
        for old in 1..=new {
            let old_root = tree.root_at(old).unwrap_or_else(|_| empty_root());
            let proof = tree.consistency_proof(old, new).unwrap_or_default();
            assert_eq!(
                verify_consistency(old, new, &old_root, &new_root, &proof),
                Ok(()),
                "{old}->{new}"
            );
            let forged = leaf_hash(b"forged");
            assert!(verify_consistency(old, new, &forged, &new_root, &proof).is_err());
            if old < new {
                assert!(verify_consistency(old, new, &old_root, &forged, &proof).is_err());
            }
        }
    }
    assert!(tree.consistency_proof(0, 3).is_err());
    assert!(tree.consistency_proof(4, 3).is_err());
}
