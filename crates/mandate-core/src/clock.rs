//! The one wall clock.
//!
//! Every plane reads the time of day through a [`Clock`] handed to it at
//! construction: the system's by default, a [`ManualClock`] in tests that
//! need time to pass (or not) on demand. Nothing else in Mandate reads
//! `SystemTime::now` (clippy's `disallowed-methods`, `clippy.toml`).
//! Durations and timeouts use the monotonic `Instant`, which is not this
//! clock's business.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

/// Wall-clock time as Unix time. Cheap to clone; clones share the source.
#[derive(Debug, Clone, Default)]
pub struct Clock(Source);

#[derive(Debug, Clone, Default)]
enum Source {
    /// The operating system's clock.
    #[default]
    System,
    /// Milliseconds set by a [`ManualClock`].
    Manual(Arc<AtomicI64>),
}

impl Clock {
    /// The operating system's clock (also the [`Default`]).
    pub fn system() -> Self {
        Self(Source::System)
    }

    /// Unix time in milliseconds; negative before 1970 (only a manual
    /// clock or a badly set system clock gets there).
    pub fn now_ms(&self) -> i64 {
        match &self.0 {
            Source::System => system_ms(),
            Source::Manual(ms) => ms.load(Ordering::Acquire),
        }
    }

    /// Unix time in whole seconds (rounded down).
    pub fn now_secs(&self) -> i64 {
        self.now_ms().div_euclid(1000)
    }

    /// Unix time in whole seconds as a JWT `NumericDate` (RFC 7519 §2)
    /// compares it: unsigned, `None` before 1970.
    pub fn now_unsigned_secs(&self) -> Option<u64> {
        u64::try_from(self.now_secs()).ok()
    }
}

#[expect(
    clippy::disallowed_methods,
    reason = "the one place that reads the system's wall clock"
)]
fn system_ms() -> i64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(since) => i64::try_from(since.as_millis()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_millis()).map_or(i64::MIN, |ms| -ms),
    }
}

/// A clock that moves only when told to, for tests. [`ManualClock::clock`]
/// hands out [`Clock`]s that read it.
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<AtomicI64>);

impl ManualClock {
    /// A clock standing at `ms` (Unix milliseconds).
    pub fn at_ms(ms: i64) -> Self {
        Self(Arc::new(AtomicI64::new(ms)))
    }

    /// A clock standing at `secs` (Unix seconds).
    pub fn at_secs(secs: i64) -> Self {
        Self::at_ms(secs.saturating_mul(1000))
    }

    /// A [`Clock`] that reads this one.
    pub fn clock(&self) -> Clock {
        Clock(Source::Manual(Arc::clone(&self.0)))
    }

    /// Sets the time to `ms` (Unix milliseconds); it may go backwards.
    pub fn set_ms(&self, ms: i64) {
        self.0.store(ms, Ordering::Release);
    }

    /// Moves the time forward by `by`.
    pub fn advance(&self, by: Duration) {
        let by = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        // fetch_update never fails with a closure that always returns Some.
        let _ = self
            .0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |ms| {
                Some(ms.saturating_add(by))
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_system_clock_is_after_2020() {
        let clock = Clock::system();
        assert!(clock.now_ms() > 1_577_836_800_000);
        assert_eq!(
            clock.now_unsigned_secs().map(|s| s > 1_577_836_800),
            Some(true)
        );
    }

    #[test]
    fn a_manual_clock_moves_only_when_told_and_is_shared_by_its_clocks() {
        let manual = ManualClock::at_secs(1_000);
        let a = manual.clock();
        let b = a.clone();
        assert_eq!(a.now_ms(), 1_000_000);
        manual.advance(Duration::from_millis(1_500));
        assert_eq!((a.now_ms(), b.now_secs()), (1_001_500, 1_001));
        manual.set_ms(-1);
        assert_eq!((b.now_secs(), b.now_unsigned_secs()), (-1, None));
    }
}
