//! The RFC 9162 (Certificate Transparency v2) Merkle tree: leaf and node
//! hashes, the root of any prefix, and inclusion and consistency proofs,
//! both made and checked.

use sha2::{Digest, Sha256};

use super::Hash;

pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(data);
    h.finalize().into()
}

pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The root of the empty tree: SHA-256 of nothing.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// Largest power of two strictly below `n` (n >= 2): where RFC 9162
/// splits a tree of `n` leaves.
pub fn split(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1 << (u64::BITS - 1 - (n - 1).leading_zeros())
}

/// MTH over leaf hashes (RFC 9162 2.1.1).
pub fn root(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => empty_root(),
        1 => leaves[0],
        n => {
            let k = split(n as u64) as usize;
            node_hash(&root(&leaves[..k]), &root(&leaves[k..]))
        }
    }
}

/// The right edge of a growing tree: the roots of its perfect subtrees, left
/// to right. Appending is amortised O(1) hashing, the root O(log n). It is
/// what a replica keeps to know the root at every size without the leaves.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Frontier {
    pub size: u64,
    /// (height, hash) of each perfect subtree, tallest first.
    pub subtrees: Vec<(u8, Hash)>,
}

impl Frontier {
    pub fn push(&mut self, leaf: Hash) {
        let mut cur = (0u8, leaf);
        while let Some(&(h, left)) = self.subtrees.last() {
            if h != cur.0 {
                break;
            }
            self.subtrees.pop();
            cur = (h + 1, node_hash(&left, &cur.1));
        }
        self.subtrees.push(cur);
        self.size += 1;
    }

    pub fn root(&self) -> Hash {
        let mut it = self.subtrees.iter().rev();
        let Some(&(_, mut acc)) = it.next() else {
            return empty_root();
        };
        for (_, left) in it {
            acc = node_hash(left, &acc);
        }
        acc
    }
}

/// Audit path of leaf `index` in the tree of `leaves` (RFC 9162 2.1.3.1).
pub fn inclusion_proof(index: usize, leaves: &[Hash]) -> Vec<Hash> {
    assert!(
        index < leaves.len(),
        "leaf {index} outside a tree of {}",
        leaves.len()
    );
    let mth = |a: u64, b: u64| Ok::<_, ()>(root(&leaves[a as usize..b as usize]));
    inclusion_path(index as u64, leaves.len() as u64, mth).expect("slices do not fail")
}

/// Audit path of leaf `index` in the tree of `size` leaves (RFC 9162
/// 2.1.3.1), with `mth(a, b)` giving the hash of leaves `a..b`. The ranges
/// asked for are the RFC's: `a` is a multiple of the largest power of two
/// below or equal to `b - a`, so a store that keeps the hashes of perfect
/// subtrees answers each from O(log n) of them.
pub fn inclusion_path<E>(
    index: u64,
    size: u64,
    mth: impl FnMut(u64, u64) -> Result<Hash, E>,
) -> Result<Vec<Hash>, E> {
    assert!(index < size, "leaf {index} outside a tree of {size}");
    // PATH(m, D[lo:hi]), unrolled: the hashes are pushed deepest first.
    let mut stack = Vec::new();
    let (mut lo, mut hi, mut m) = (0u64, size, index);
    while hi - lo > 1 {
        let k = split(hi - lo);
        if m < k {
            stack.push((lo + k, hi));
            hi = lo + k;
        } else {
            stack.push((lo, lo + k));
            lo += k;
            m -= k;
        }
    }
    hashes_deepest_first(stack, mth)
}

/// The audit path of leaf `index` in the tree of `new_size` leaves, from its
/// path `old_path` in the tree of `old_size` (`index < old_size <=
/// new_size`): every range both paths ask for has the same hash (it depends
/// on its leaves alone), and `mth` gives the others, which all end past
/// `old_size`. A store that no longer holds the leaves below `old_size`
/// keeps its entries provable this way.
pub fn extend_inclusion<E>(
    index: u64,
    old_size: u64,
    old_path: &[Hash],
    new_size: u64,
    mut mth: impl FnMut(u64, u64) -> Result<Hash, E>,
) -> Result<Vec<Hash>, E> {
    let mut ranges = Vec::new();
    let _ = inclusion_path::<std::convert::Infallible>(index, old_size, |a, b| {
        ranges.push((a, b));
        Ok([0; 32])
    });
    let known: std::collections::HashMap<(u64, u64), Hash> =
        ranges.into_iter().zip(old_path.iter().copied()).collect();
    inclusion_path(index, new_size, |a, b| match known.get(&(a, b)) {
        Some(h) => Ok(*h),
        None => mth(a, b),
    })
}

/// The hashes of the ranges an unrolled proof recursion stacked on its way
/// down, in the order the recursion would have emitted them.
fn hashes_deepest_first<E>(
    mut stack: Vec<(u64, u64)>,
    mut mth: impl FnMut(u64, u64) -> Result<Hash, E>,
) -> Result<Vec<Hash>, E> {
    let mut out = Vec::with_capacity(stack.len());
    while let Some((a, b)) = stack.pop() {
        out.push(mth(a, b)?);
    }
    Ok(out)
}

/// RFC 9162 2.1.3.2.
pub fn verify_inclusion(index: u64, size: u64, leaf: &Hash, proof: &[Hash], root: &Hash) -> bool {
    if index >= size {
        return false;
    }
    let (mut fnn, mut snn) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if snn == 0 {
            return false;
        }
        if fnn & 1 == 1 || fnn == snn {
            r = node_hash(p, &r);
            if fnn & 1 == 0 {
                while fnn & 1 == 0 && fnn != 0 {
                    fnn >>= 1;
                    snn >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fnn >>= 1;
        snn >>= 1;
    }
    snn == 0 && r == *root
}

/// Proof that the tree of the first `first` leaves is a prefix of the tree
/// of `leaves` (RFC 9162 2.1.4.1).
pub fn consistency_proof(first: usize, leaves: &[Hash]) -> Vec<Hash> {
    assert!(first <= leaves.len());
    let mth = |a: u64, b: u64| Ok::<_, ()>(root(&leaves[a as usize..b as usize]));
    consistency_path(first as u64, leaves.len() as u64, mth).expect("slices do not fail")
}

/// Proof that the tree of the first `first` leaves is a prefix of the tree
/// of `size` leaves (RFC 9162 2.1.4.1), with `mth` as for
/// [`inclusion_path`].
pub fn consistency_path<E>(
    first: u64,
    size: u64,
    mth: impl FnMut(u64, u64) -> Result<Hash, E>,
) -> Result<Vec<Hash>, E> {
    assert!(first <= size);
    if first == 0 || first == size {
        return Ok(Vec::new());
    }
    // SUBPROOF(m, D[lo:hi], b), unrolled as for `inclusion_path`.
    let mut stack = Vec::new();
    let (mut lo, mut hi, mut m, mut b) = (0u64, size, first, true);
    loop {
        if m == hi - lo {
            if !b {
                stack.push((lo, hi));
            }
            break;
        }
        let k = split(hi - lo);
        if m <= k {
            stack.push((lo + k, hi));
            hi = lo + k;
        } else {
            stack.push((lo, lo + k));
            lo += k;
            m -= k;
            b = false;
        }
    }
    hashes_deepest_first(stack, mth)
}

/// RFC 9162 2.1.4.2.
pub fn verify_consistency(
    first: u64,
    second: u64,
    first_root: &Hash,
    second_root: &Hash,
    proof: &[Hash],
) -> bool {
    if first > second {
        return false;
    }
    if first == second {
        return proof.is_empty() && first_root == second_root;
    }
    if first == 0 {
        return proof.is_empty();
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if first.is_power_of_two() {
        path.push(*first_root);
    }
    path.extend_from_slice(proof);
    let Some((&start, rest)) = path.split_first() else {
        return false;
    };
    let (mut fnn, mut snn) = (first - 1, second - 1);
    while fnn & 1 == 1 {
        fnn >>= 1;
        snn >>= 1;
    }
    let (mut fr, mut sr) = (start, start);
    for c in rest {
        if snn == 0 {
            return false;
        }
        if fnn & 1 == 1 || fnn == snn {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if fnn & 1 == 0 {
                while fnn & 1 == 0 && fnn != 0 {
                    fnn >>= 1;
                    snn >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fnn >>= 1;
        snn >>= 1;
    }
    snn == 0 && fr == *first_root && sr == *second_root
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves(n: usize) -> Vec<Hash> {
        (0..n)
            .map(|i| leaf_hash(&(i as u64).to_be_bytes()))
            .collect()
    }

    #[test]
    fn frontier_root_matches_mth_at_every_size() {
        let l = leaves(70);
        let mut f = Frontier::default();
        assert_eq!(f.root(), root(&[]));
        for (i, h) in l.iter().enumerate() {
            f.push(*h);
            assert_eq!(f.root(), root(&l[..=i]), "size {}", i + 1);
        }
    }

    #[test]
    fn a_path_extended_to_a_larger_tree_is_that_trees_path_and_asks_only_past_the_old_size() {
        let l = leaves(100);
        for old in 1..=40u64 {
            for new in [old, old + 1, old + 7, 64, 65, 100] {
                if new < old {
                    continue;
                }
                for i in 0..old {
                    let old_path = inclusion_proof(i as usize, &l[..old as usize]);
                    let got = extend_inclusion(i, old, &old_path, new, |a, b| {
                        assert!(b > old, "asked for {a}..{b} inside the old tree of {old}");
                        Ok::<_, ()>(root(&l[a as usize..b as usize]))
                    })
                    .unwrap();
                    assert_eq!(
                        got,
                        inclusion_proof(i as usize, &l[..new as usize]),
                        "i={i} old={old} new={new}"
                    );
                }
            }
        }
    }

    #[test]
    fn inclusion_proofs_verify_and_reject_tampering() {
        let l = leaves(33);
        for n in 1..=33 {
            let r = root(&l[..n]);
            for i in 0..n {
                let p = inclusion_proof(i, &l[..n]);
                assert!(
                    verify_inclusion(i as u64, n as u64, &l[i], &p, &r),
                    "i={i} n={n}"
                );
                let wrong_leaf = if i + 1 < n { l[i + 1] } else { l[0] };
                if n > 1 {
                    assert!(!verify_inclusion(i as u64, n as u64, &wrong_leaf, &p, &r));
                }
            }
        }
    }

    #[test]
    fn consistency_proofs_verify_and_reject_forks() {
        let l = leaves(33);
        let mut forked = l.clone();
        forked[3] = leaf_hash(b"forged");
        for n in 1..=33 {
            for m in 1..=n {
                let p = consistency_proof(m, &l[..n]);
                assert!(
                    verify_consistency(m as u64, n as u64, &root(&l[..m]), &root(&l[..n]), &p),
                    "m={m} n={n}"
                );
                if m > 3 && m < n {
                    // A first tree that differs from the prefix does not verify.
                    assert!(!verify_consistency(
                        m as u64,
                        n as u64,
                        &root(&forked[..m]),
                        &root(&l[..n]),
                        &p
                    ));
                }
            }
        }
    }

    #[test]
    fn known_answer_rfc6962_empty_and_single() {
        assert_eq!(
            hex::encode(empty_root()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        // RFC 6962 test vector: leaf of the empty string.
        assert_eq!(
            hex::encode(leaf_hash(b"")),
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
        );
    }
}
