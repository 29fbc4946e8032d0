//! The hash chain: what is hashed, byte for byte.

use crate::AuditError;
use mandate_core::AuditRecord;
use sha2::{Digest, Sha256};

/// `prev_hash` of the first row (seq 1): 64 ASCII zeros.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The stored, hashed form of a record: the canonical JSON of
/// `serde_json::to_value(record)` as written by [`mandate_core::write_canonical`]
/// (object keys sorted at every depth, no white space, UTF-8).
pub fn canonical_body(record: &AuditRecord) -> Result<String, AuditError> {
    let value = serde_json::to_value(record).map_err(AuditError::encode)?;
    let mut body = String::new();
    mandate_core::write_canonical(&value, &mut body);
    Ok(body)
}

/// The hash of one row, as lower-case hex:
///
/// ```text
/// hash = hex( SHA-256( prev_hash || 0x0A || body ) )
/// ```
///
/// where `prev_hash` is the previous row's `hash` as its 64 lower-case hex
/// ASCII characters ([`GENESIS_HASH`] for seq 1), `0x0A` is one newline
/// byte, and `body` is the row's `body` column (UTF-8 canonical JSON, see
/// [`canonical_body`]). `seq` is not hashed: a row's place is fixed by the
/// chain, since row *n*'s `prev_hash` must equal row *n − 1*'s `hash`.
pub fn record_hash(prev_hash: &str, body: &str) -> String {
    let mut h = Sha256::new();
    h.update(prev_hash.as_bytes());
    h.update(b"\n");
    h.update(body.as_bytes());
    hex::encode(h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_matches_an_independent_vector() {
        // printf '%s\n%s' "$GENESIS" '{"a":1}' | sha256sum
        assert_eq!(
            record_hash(GENESIS_HASH, r#"{"a":1}"#),
            "f21735afd2cd6af4fc5804b0045cebfd545aef8396d29d030c39cb8880b45b7f"
        );
        assert_ne!(
            record_hash(GENESIS_HASH, r#"{"a":2}"#),
            record_hash(GENESIS_HASH, r#"{"a":1}"#)
        );
    }
}
