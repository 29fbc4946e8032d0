//! The broker's signing keys: generated on first start, rotated on demand,
//! published until every token they signed has expired.
//!
//! Layout of the key directory (private files are mode 0600):
//!
//! ```text
//! keys.json      {"keys": [{"kid", "alg", "created", "retired"}]}   (newest last)
//! <kid>.pem      PKCS#8 private key
//! jwks.json      the public keys in force (what /.well-known/jwks.json serves;
//!                the gateway reads it as the broker's trusted issuer keys)
//! ```
//!
//! The newest key that is not retired signs. Rotation retires the current
//! key and adds a new one; a retired key stays in `jwks.json` until
//! `retired + max token lifetime + leeway` has passed, so tokens it signed
//! keep verifying until they expire, and is then dropped (with its file).

use crate::error::BrokerError;
use mandate_authn::Algorithm;
use mandate_authn::dev::DevKey;
use mandate_core::Clock;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// One key's bookkeeping.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct KeyEntry {
    kid: String,
    alg: String,
    /// Unix seconds.
    created: u64,
    /// Unix seconds; `None` while it is the signing key.
    retired: Option<u64>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct KeyIndex {
    keys: Vec<KeyEntry>,
}

/// The loaded keys: the signing key and every published one.
pub struct KeySet {
    signing: DevKey,
    published: Vec<DevKey>,
    jwks: serde_json::Value,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySet")
            .field("signing", &self.signing.kid)
            .field("published", &self.published.len())
            .finish()
    }
}

impl KeySet {
    /// The key that signs new tokens.
    pub fn signing(&self) -> &DevKey {
        &self.signing
    }

    /// The public JWKS document.
    pub fn jwks(&self) -> &serde_json::Value {
        &self.jwks
    }

    /// The published key with this `kid`.
    pub fn published(&self, kid: &str) -> Option<&DevKey> {
        self.published.iter().find(|k| k.kid == kid)
    }
}

/// The key directory.
#[derive(Debug, Clone)]
pub struct KeyDir {
    dir: PathBuf,
    alg: Algorithm,
    /// How long a retired key stays published.
    keep_retired: Duration,
    /// Dates key creation and retirement.
    clock: Clock,
}

fn io(path: &Path, e: std::io::Error) -> BrokerError {
    BrokerError::Keys(format!("{}: {e}", path.display()))
}

impl KeyDir {
    /// A key directory whose new keys use `alg` (EdDSA or ES256), keeping
    /// retired keys published for `keep_retired`.
    pub fn new(dir: impl Into<PathBuf>, alg: Algorithm, keep_retired: Duration) -> Self {
        Self {
            dir: dir.into(),
            alg,
            keep_retired,
            clock: Clock::system(),
        }
    }

    /// Dates keys by `clock` instead of the system's.
    #[must_use]
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    fn now_secs(&self) -> u64 {
        self.clock.now_unsigned_secs().unwrap_or(0)
    }

    /// Where the public JWKS is written.
    pub fn jwks_path(&self) -> PathBuf {
        self.dir.join("jwks.json")
    }

    fn index_path(&self) -> PathBuf {
        self.dir.join("keys.json")
    }

    fn read_index(&self) -> Result<KeyIndex, BrokerError> {
        let path = self.index_path();
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| BrokerError::Keys(format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(KeyIndex::default()),
            Err(e) => Err(io(&path, e)),
        }
    }

    fn write_index(&self, index: &KeyIndex) -> Result<(), BrokerError> {
        let text = serde_json::to_vec_pretty(index)
            .map_err(|e| BrokerError::Keys(format!("cannot encode key index: {e}")))?;
        write_atomic(&self.index_path(), &text, false)
    }

    fn generate(&self, index: &mut KeyIndex) -> Result<(), BrokerError> {
        let key = DevKey::generate(self.alg).map_err(|e| BrokerError::Keys(e.to_string()))?;
        let pem_path = self.dir.join(format!("{}.pem", key.kid));
        write_atomic(&pem_path, key.pkcs8_pem.as_bytes(), true)?;
        index.keys.push(KeyEntry {
            kid: key.kid.clone(),
            alg: format!("{:?}", key.algorithm()),
            created: self.now_secs(),
            retired: None,
        });
        Ok(())
    }

    /// Opens the directory: creates it and a first key when empty, drops
    /// retired keys whose tokens have all expired, writes `jwks.json`, and
    /// loads the keys.
    pub fn open(&self) -> Result<KeySet, BrokerError> {
        std::fs::create_dir_all(&self.dir).map_err(|e| io(&self.dir, e))?;
        restrict_dir(&self.dir)?;
        let mut index = self.read_index()?;
        let mut changed = false;
        if !index.keys.iter().any(|k| k.retired.is_none()) {
            self.generate(&mut index)?;
            changed = true;
        }
        let now = self.now_secs();
        let keep = self.keep_retired.as_secs();
        let (live, expired): (Vec<_>, Vec<_>) = index
            .keys
            .into_iter()
            .partition(|k| k.retired.is_none_or(|r| r.saturating_add(keep) > now));
        index.keys = live;
        for k in &expired {
            changed = true;
            let _ = std::fs::remove_file(self.dir.join(format!("{}.pem", k.kid)));
            tracing::info!(kid = %k.kid, "retired broker key unpublished");
        }
        if changed {
            self.write_index(&index)?;
        }
        let mut published = Vec::new();
        for entry in &index.keys {
            let path = self.dir.join(format!("{}.pem", entry.kid));
            let pem = std::fs::read_to_string(&path).map_err(|e| io(&path, e))?;
            let key = DevKey::from_pem(&pem, entry.kid.clone())
                .map_err(|e| BrokerError::Keys(format!("{}: {e}", path.display())))?;
            published.push((entry.retired.is_none(), key));
        }
        // INVARIANT: `generate` above guarantees one unretired key; the
        // newest unretired one signs.
        let signing_pos = published
            .iter()
            .rposition(|(active, _)| *active)
            .ok_or_else(|| BrokerError::Keys("no active signing key".into()))?;
        let mut keys: Vec<DevKey> = published.into_iter().map(|(_, k)| k).collect();
        let signing = keys.remove(signing_pos);
        let mut jwk_list: Vec<_> = keys.iter().map(DevKey::jwk).collect();
        jwk_list.push(signing.jwk());
        let jwks = serde_json::json!({ "keys": jwk_list });
        let text = serde_json::to_vec_pretty(&jwks)
            .map_err(|e| BrokerError::Keys(format!("cannot encode JWKS: {e}")))?;
        write_atomic(&self.jwks_path(), &text, false)?;
        // Re-load the signing key as a separate value so both lists own theirs.
        let signing_again = DevKey::from_pem(&signing.pkcs8_pem, signing.kid.clone())
            .map_err(|e| BrokerError::Keys(e.to_string()))?;
        keys.push(signing_again);
        Ok(KeySet {
            signing,
            published: keys,
            jwks,
        })
    }

    /// Retires the signing key and creates a new one; returns the new kid.
    /// A running broker picks the change up within seconds.
    pub fn rotate(&self) -> Result<String, BrokerError> {
        std::fs::create_dir_all(&self.dir).map_err(|e| io(&self.dir, e))?;
        let mut index = self.read_index()?;
        let now = self.now_secs();
        for k in &mut index.keys {
            if k.retired.is_none() {
                k.retired = Some(now);
            }
        }
        self.generate(&mut index)?;
        self.write_index(&index)?;
        let set = self.open()?;
        Ok(set.signing.kid)
    }

    /// Modification time of the index, to notice a rotation.
    pub fn stamp(&self) -> Option<std::time::SystemTime> {
        std::fs::metadata(self.index_path())
            .and_then(|m| m.modified())
            .ok()
    }
}

/// Writes `bytes` to `path` through a temporary file and a rename, so a
/// reader never sees half a file; `private` files are created 0600.
fn write_atomic(path: &Path, bytes: &[u8], private: bool) -> Result<(), BrokerError> {
    use std::io::Write as _;
    let tmp = path.with_extension(format!("tmp-{}", uuid::Uuid::new_v4().simple()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(if private { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut f = options.open(&tmp).map_err(|e| io(&tmp, e))?;
    f.write_all(bytes).map_err(|e| io(&tmp, e))?;
    f.sync_all().map_err(|e| io(&tmp, e))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| io(path, e))
}

fn restrict_dir(dir: &Path) -> Result<(), BrokerError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| io(dir, e))?;
    }
    let _ = dir;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_open_generates_and_rotation_keeps_the_old_key_published()
    -> Result<(), Box<dyn std::error::Error>> {
        let tmp = tempfile::tempdir()?;
        let dir = KeyDir::new(
            tmp.path().join("k"),
            Algorithm::EdDSA,
            Duration::from_secs(900),
        );
        let first = dir.open()?;
        let kid1 = first.signing().kid.clone();
        // Opening again keeps the same key.
        assert_eq!(dir.open()?.signing().kid, kid1);
        let kid2 = dir.rotate()?;
        assert_ne!(kid1, kid2);
        let after = dir.open()?;
        assert_eq!(after.signing().kid, kid2);
        assert!(after.published(&kid1).is_some());
        let jwks: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.jwks_path())?)?;
        let kids: Vec<&str> = jwks
            .get("keys")
            .and_then(|k| k.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|k| k.get("kid").and_then(|v| v.as_str()))
                    .collect()
            })
            .unwrap_or_default();
        assert!(kids.contains(&kid1.as_str()) && kids.contains(&kid2.as_str()));
        // With no grace period, the retired key disappears on the next open.
        let strict = KeyDir::new(tmp.path().join("k"), Algorithm::EdDSA, Duration::ZERO);
        let pruned = strict.open()?;
        assert!(pruned.published(&kid1).is_none());
        assert_eq!(pruned.signing().kid, kid2);
        Ok(())
    }

    #[test]
    fn p256_keys_sign_es256() -> Result<(), Box<dyn std::error::Error>> {
        let tmp = tempfile::tempdir()?;
        let dir = KeyDir::new(tmp.path(), Algorithm::ES256, Duration::from_secs(60));
        let set = dir.open()?;
        assert_eq!(set.signing().algorithm(), Algorithm::ES256);
        Ok(())
    }
}
