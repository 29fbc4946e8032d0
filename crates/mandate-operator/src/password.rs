//! Local approver accounts: PBKDF2-HMAC-SHA256 password hashes (aws-lc-rs)
//! and a per-account limit on failed sign-ins.
//!
//! A hash is stored as `pbkdf2-sha256$i=<iterations>$<salt>$<hash>` (salt
//! and hash in unpadded standard base64, as in the PHC string format).

use aws_lc_rs::pbkdf2;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use mandate_control::ControlStore;
use mandate_control::ephemeral::Kind;
use mandate_core::Clock;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

/// Fewest iterations a configured hash may use.
pub const MIN_ITERATIONS: u32 = 100_000;
/// Iterations of newly made hashes (OWASP's 2023 figure for PBKDF2-HMAC-SHA256).
pub const DEFAULT_ITERATIONS: u32 = 600_000;
/// The algorithm tag of the string form.
const TAG: &str = "pbkdf2-sha256";
const SALT_BYTES: usize = 16;
const HASH_BYTES: usize = 32;
/// Longest password considered (longer ones are refused, never truncated).
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// Why a password hash string or a password was refused.
#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    /// Not `pbkdf2-sha256$i=N$salt$hash`.
    #[error("not a password hash of the form pbkdf2-sha256$i=<iterations>$<salt>$<hash>: {0}")]
    Format(&'static str),
    /// Too few iterations.
    #[error("the hash uses {0} iterations; at least {MIN_ITERATIONS} are required")]
    TooFewIterations(u32),
    /// Empty or too long.
    #[error("the password must be 1 to {MAX_PASSWORD_BYTES} bytes")]
    BadPassword,
    /// The system random generator failed.
    #[error("no randomness available for the salt")]
    Random,
}

/// A PBKDF2-HMAC-SHA256 password hash. Its `Debug` shows no hash bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct PasswordHash {
    iterations: NonZeroU32,
    salt: Vec<u8>,
    hash: Vec<u8>,
}

impl std::fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PasswordHash({TAG}, i={})", self.iterations)
    }
}

impl std::fmt::Display for PasswordHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{TAG}$i={}${}${}",
            self.iterations,
            STANDARD_NO_PAD.encode(&self.salt),
            STANDARD_NO_PAD.encode(&self.hash)
        )
    }
}

impl std::str::FromStr for PasswordHash {
    type Err = PasswordError;

    fn from_str(s: &str) -> Result<Self, PasswordError> {
        let mut parts = s.split('$');
        let (Some(tag), Some(params), Some(salt), Some(hash), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(PasswordError::Format("expected four `$`-separated parts"));
        };
        if tag != TAG {
            return Err(PasswordError::Format("the algorithm must be pbkdf2-sha256"));
        }
        let iterations: u32 = params
            .strip_prefix("i=")
            .and_then(|n| n.parse().ok())
            .ok_or(PasswordError::Format(
                "the parameters must be i=<iterations>",
            ))?;
        if iterations < MIN_ITERATIONS {
            return Err(PasswordError::TooFewIterations(iterations));
        }
        let iterations = NonZeroU32::new(iterations).ok_or(PasswordError::Format("i=0"))?;
        let salt = STANDARD_NO_PAD
            .decode(salt)
            .map_err(|_| PasswordError::Format("the salt is not base64"))?;
        let hash = STANDARD_NO_PAD
            .decode(hash)
            .map_err(|_| PasswordError::Format("the hash is not base64"))?;
        if salt.len() < SALT_BYTES {
            return Err(PasswordError::Format("the salt must be at least 16 bytes"));
        }
        if hash.len() != HASH_BYTES {
            return Err(PasswordError::Format("the hash must be 32 bytes"));
        }
        Ok(Self {
            iterations,
            salt,
            hash,
        })
    }
}

impl PasswordHash {
    /// Hashes `password` with a fresh random salt and `iterations`
    /// (at least [`MIN_ITERATIONS`]).
    pub fn new(password: &str, iterations: u32) -> Result<Self, PasswordError> {
        check_password(password)?;
        if iterations < MIN_ITERATIONS {
            return Err(PasswordError::TooFewIterations(iterations));
        }
        let iterations = NonZeroU32::new(iterations).ok_or(PasswordError::Format("i=0"))?;
        let mut salt = vec![0u8; SALT_BYTES];
        aws_lc_rs::rand::fill(&mut salt).map_err(|_| PasswordError::Random)?;
        let mut hash = vec![0u8; HASH_BYTES];
        pbkdf2::derive(
            pbkdf2::PBKDF2_HMAC_SHA256,
            iterations,
            &salt,
            password.as_bytes(),
            &mut hash,
        );
        Ok(Self {
            iterations,
            salt,
            hash,
        })
    }

    /// Whether `password` matches (constant-time comparison).
    pub fn verify(&self, password: &str) -> bool {
        check_password(password).is_ok()
            && pbkdf2::verify(
                pbkdf2::PBKDF2_HMAC_SHA256,
                self.iterations,
                &self.salt,
                password.as_bytes(),
                &self.hash,
            )
            .is_ok()
    }

    /// A hash no password matches, costing as much to check as a real one
    /// with `iterations`: checked for unknown accounts, so the time taken
    /// does not tell whether an account exists.
    pub(crate) fn decoy(iterations: NonZeroU32) -> Self {
        Self {
            iterations,
            salt: vec![0u8; SALT_BYTES],
            hash: vec![0u8; HASH_BYTES],
        }
    }

    /// The iteration count.
    pub fn iterations(&self) -> NonZeroU32 {
        self.iterations
    }
}

fn check_password(password: &str) -> Result<(), PasswordError> {
    if password.is_empty() || password.len() > MAX_PASSWORD_BYTES {
        Err(PasswordError::BadPassword)
    } else {
        Ok(())
    }
}

/// Failed sign-ins allowed per account within [`FAILURE_WINDOW`].
pub(crate) const MAX_FAILURES: u32 = 5;
/// How long failures are remembered.
pub(crate) const FAILURE_WINDOW: Duration = Duration::from_secs(15 * 60);
/// Accounts tracked at most (names that do not exist are tracked too, so
/// the limiter does not reveal which exist).
const MAX_TRACKED: usize = 10_000;

/// Counts failed sign-ins per submitted account name, in the control
/// store: every replica sees the same count, and a restart does not reset
/// it. A store that cannot answer refuses the attempt (fail closed).
pub(crate) struct LoginLimiter {
    control: Arc<ControlStore>,
    clock: Clock,
}

impl LoginLimiter {
    pub(crate) fn new(control: Arc<ControlStore>, clock: Clock) -> Self {
        Self { control, clock }
    }

    /// Whether `account` may try now. When [`MAX_TRACKED`] names are being
    /// counted, names not among them are refused until entries expire.
    pub(crate) async fn allows(&self, account: &str) -> bool {
        let kind = Kind::PageSignInFailures;
        match self.control.ephemeral(kind, account).await {
            Ok(Some(e)) => e
                .value
                .parse::<u32>()
                .is_ok_and(|count| count < MAX_FAILURES),
            Ok(None) => self
                .control
                .count_ephemeral(kind)
                .await
                .is_ok_and(|n| n < u64::try_from(MAX_TRACKED).unwrap_or(u64::MAX)),
            Err(e) => {
                tracing::error!(error = %e, "sign-in throttle unavailable: attempt refused");
                false
            }
        }
    }

    /// Counts a failure for `account` (remembered for [`FAILURE_WINDOW`]
    /// from the first).
    pub(crate) async fn failed(&self, account: &str) {
        let until = self
            .clock
            .now_ms()
            .saturating_add(i64::try_from(FAILURE_WINDOW.as_millis()).unwrap_or(i64::MAX));
        if let Err(e) = self
            .control
            .count_up_ephemeral(Kind::PageSignInFailures, account, until, MAX_TRACKED)
            .await
        {
            tracing::error!(error = %e, "sign-in throttle: a failure could not be counted");
        }
    }

    /// Forgets `account`'s failures (after a successful sign-in).
    pub(crate) async fn succeeded(&self, account: &str) {
        if let Err(e) = self
            .control
            .drop_ephemeral(Kind::PageSignInFailures, account)
            .await
        {
            tracing::warn!(error = %e, "sign-in throttle: failures not cleared");
        }
    }
}

#[cfg(test)]
#[path = "password_tests.rs"]
mod tests;
