//! A bounded cache of verified principals, keyed by SHA-256 of the token.
//!
//! A hit skips signature verification, never the expiry check: every hit
//! re-checks `exp` against the current time, and an entry made under a key
//! set that has since changed is ignored.

use crate::Principal;
use crate::claims::Clock;
use dashmap::DashMap;
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicU64, Ordering};

/// Default capacity.
pub(crate) const DEFAULT_CAPACITY: usize = 10_000;

/// SHA-256 of a token: the cache never holds the token itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct TokenHash([u8; 32]);

impl TokenHash {
    pub(crate) fn of(token: &str) -> Self {
        Self(Sha256::digest(token.as_bytes()).into())
    }
}

#[derive(Debug)]
struct Entry {
    principal: Principal,
    /// The token's DPoP binding (`cnf.jkt`), if any.
    jkt: Option<String>,
    /// Index of the issuer whose key verified the token.
    issuer: usize,
    /// That issuer's key-set generation at verification time.
    generation: u64,
    /// Insertion order, for evicting the oldest.
    seq: u64,
}

#[derive(Debug)]
pub(crate) struct PrincipalCache {
    entries: DashMap<TokenHash, Entry>,
    capacity: usize,
    seq: AtomicU64,
}

impl PrincipalCache {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            entries: DashMap::new(),
            capacity: capacity.max(1),
            seq: AtomicU64::new(0),
        }
    }

    /// A cached principal, if the entry exists, its token is still live at
    /// `clock`, and `generation_of(issuer)` still matches. A stale entry is
    /// removed.
    pub(crate) fn get(
        &self,
        key: &TokenHash,
        clock: Clock,
        generation_of: impl Fn(usize) -> Option<u64>,
    ) -> Option<(Principal, Option<String>)> {
        let usable = |e: &Entry| {
            // INVARIANT: an expired token is never answered from the cache;
            // this is the same rule (`exp + leeway >= now`) the uncached
            // path applies, so both paths agree on every token.
            clock.is_live(e.principal.exp()) && generation_of(e.issuer) == Some(e.generation)
        };
        {
            let entry = self.entries.get(key)?;
            if usable(&entry) {
                return Some((entry.principal.clone(), entry.jkt.clone()));
            }
        }
        self.entries.remove_if(key, |_, e| !usable(e));
        None
    }

    #[cfg(test)]
    pub(crate) fn insert(
        &self,
        key: TokenHash,
        principal: Principal,
        issuer: usize,
        generation: u64,
        clock: Clock,
    ) {
        self.insert_bound(key, principal, None, issuer, generation, clock);
    }

    /// [`PrincipalCache::insert`] for a token that may be sender-constrained.
    pub(crate) fn insert_bound(
        &self,
        key: TokenHash,
        principal: Principal,
        jkt: Option<String>,
        issuer: usize,
        generation: u64,
        clock: Clock,
    ) {
        if self.entries.len() >= self.capacity {
            self.evict(clock);
        }
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        self.entries.insert(
            key,
            Entry {
                principal,
                jkt,
                issuer,
                generation,
                seq,
            },
        );
    }

    /// Drops expired entries; if that frees too little, drops the oldest
    /// until the cache is at 90 % of capacity, so eviction runs rarely.
    fn evict(&self, clock: Clock) {
        self.entries.retain(|_, e| clock.is_live(e.principal.exp()));
        let target = self.capacity.saturating_mul(9) / 10;
        let len = self.entries.len();
        if len <= target {
            return;
        }
        let mut by_age: Vec<(u64, TokenHash)> =
            self.entries.iter().map(|e| (e.seq, *e.key())).collect();
        by_age.sort_unstable_by_key(|(seq, _)| *seq);
        for (_, key) in by_age.into_iter().take(len.saturating_sub(target)) {
            self.entries.remove(&key);
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mandate_core::Scope;

    fn principal(sub: &str, exp: u64) -> Principal {
        Principal::from_claims(crate::principal::Claims {
            iss: "i".into(),
            sub: sub.into(),
            act: vec![],
            scope: Scope::default(),
            task_id: None,
            build: None,
            sid: None,
            jti: None,
            exp,
        })
    }

    const T0: Clock = Clock {
        now: 1000,
        leeway: 0,
    };

    #[test]
    fn expired_entry_is_never_returned() {
        let cache = PrincipalCache::new(10);
        let key = TokenHash::of("t");
        cache.insert(key, principal("a", 1005), 0, 0, T0);
        assert!(cache.get(&key, T0, |_| Some(0)).is_some());
        let later = Clock {
            now: 1006,
            leeway: 0,
        };
        assert!(cache.get(&key, later, |_| Some(0)).is_none());
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn key_set_change_invalidates_entries() {
        let cache = PrincipalCache::new(10);
        let key = TokenHash::of("t");
        cache.insert(key, principal("a", 2000), 0, 3, T0);
        assert!(cache.get(&key, T0, |_| Some(4)).is_none());
    }

    #[test]
    fn capacity_is_bounded_and_oldest_go_first() {
        let cache = PrincipalCache::new(10);
        for i in 0..25 {
            cache.insert(
                TokenHash::of(&i.to_string()),
                principal("a", 2000),
                0,
                0,
                T0,
            );
            assert!(cache.len() <= 10);
        }
        assert!(cache.get(&TokenHash::of("24"), T0, |_| Some(0)).is_some());
        assert!(cache.get(&TokenHash::of("0"), T0, |_| Some(0)).is_none());
    }

    #[test]
    fn eviction_prefers_expired_entries() {
        let cache = PrincipalCache::new(4);
        cache.insert(
            TokenHash::of("old-but-live"),
            principal("a", 5000),
            0,
            0,
            T0,
        );
        for i in 0..3 {
            cache.insert(
                TokenHash::of(&i.to_string()),
                principal("a", 1001),
                0,
                0,
                T0,
            );
        }
        let later = Clock {
            now: 1002,
            leeway: 0,
        };
        cache.insert(TokenHash::of("new"), principal("a", 5000), 0, 0, later);
        assert!(
            cache
                .get(&TokenHash::of("old-but-live"), later, |_| Some(0))
                .is_some()
        );
        assert!(
            cache
                .get(&TokenHash::of("new"), later, |_| Some(0))
                .is_some()
        );
    }
}
