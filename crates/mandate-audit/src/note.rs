//! Signed checkpoints: the C2SP `tlog-checkpoint` body in a C2SP
//! `signed-note`, signed with Ed25519.
//!
//! ```text
//! <origin>\n                       the log's name (= the key name)
//! <size>\n                         leaves covered, decimal
//! <base64 root>\n                  RFC 9162 tree hash of those leaves
//! \n
//! — <key name> <base64(key id[4] || Ed25519 signature[64])>\n
//! ```
//!
//! The signature covers the text above the blank line, final newline
//! included. The key id is the first four bytes of
//! `SHA-256(key name || 0x0A || 0x01 || public key)`. Public keys are
//! exchanged as verifier keys `<name>+<key id hex>+<base64(0x01 || key)>`.

use crate::merkle::Hash;
use aws_lc_rs::signature::{ED25519, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use sha2::{Digest, Sha256};
use std::fmt;
use std::path::Path;
use std::sync::Arc;

/// Signature type byte of Ed25519 in signed notes.
const ALG_ED25519: u8 = 0x01;
/// The em dash and space that open a signature line.
const SIG_PREFIX: &str = "\u{2014} ";
/// Most signature lines a note may carry.
const MAX_SIGNATURES: usize = 100;

/// Why a note, key or checkpoint was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NoteError {
    /// Not a well-formed note, key or checkpoint.
    #[error("malformed {0}")]
    Malformed(&'static str),
    /// No signature by the expected key.
    #[error("the note is not signed by {0}")]
    NotSigned(String),
    /// A signature by the expected key that does not verify.
    #[error("the signature by {0} does not verify")]
    BadSignature(String),
    /// The checkpoint names another log.
    #[error("the checkpoint's origin {found:?} is not the key's log {expected:?}")]
    WrongOrigin {
        /// The key's name.
        expected: String,
        /// The checkpoint's first line.
        found: String,
    },
    /// A key file could not be read or written.
    #[error("checkpoint key {path}: {message}")]
    KeyFile {
        /// The file.
        path: String,
        /// What went wrong (never key material).
        message: String,
    },
}

fn key_id(name: &str, public: &[u8]) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update(b"\n");
    h.update([ALG_ED25519]);
    h.update(public);
    let d = h.finalize();
    let mut id = [0u8; 4];
    id.copy_from_slice(d.get(..4).unwrap_or(&[0u8; 4]));
    id
}

/// A key name: non-empty, no white space, no `+`.
fn valid_name(name: &str) -> bool {
    !name.is_empty() && !name.chars().any(|c| c.is_whitespace() || c == '+')
}

/// The log's Ed25519 checkpoint signing key.
#[derive(Clone)]
pub struct CheckpointSigner {
    name: String,
    id: [u8; 4],
    seed: Arc<[u8; 32]>,
    pair: Arc<Ed25519KeyPair>,
}

impl fmt::Debug for CheckpointSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CheckpointSigner")
            .field("name", &self.name)
            .field("id", &hex::encode(self.id))
            .finish_non_exhaustive()
    }
}

impl CheckpointSigner {
    /// A new random key. `name` is the log's origin line; `None` names it
    /// `mandate/audit/<first 16 hex digits of SHA-256(public key)>`.
    pub fn generate(name: Option<&str>) -> Result<Self, NoteError> {
        let mut seed = [0u8; 32];
        aws_lc_rs::rand::fill(&mut seed).map_err(|_| NoteError::Malformed("random seed"))?;
        let pair = Ed25519KeyPair::from_seed_unchecked(&seed)
            .map_err(|_| NoteError::Malformed("Ed25519 seed"))?;
        let name = match name {
            Some(n) => n.to_owned(),
            None => {
                let digest = hex::encode(Sha256::digest(pair.public_key().as_ref()));
                format!("mandate/audit/{}", digest.get(..16).unwrap_or(&digest))
            }
        };
        Self::from_parts(name, seed)
    }

    fn from_parts(name: String, seed: [u8; 32]) -> Result<Self, NoteError> {
        if !valid_name(&name) {
            return Err(NoteError::Malformed("key name"));
        }
        let pair = Ed25519KeyPair::from_seed_unchecked(&seed)
            .map_err(|_| NoteError::Malformed("Ed25519 seed"))?;
        let id = key_id(&name, pair.public_key().as_ref());
        Ok(Self {
            name,
            id,
            seed: Arc::new(seed),
            pair: Arc::new(pair),
        })
    }

    /// Parses `PRIVATE+KEY+<name>+<key id hex>+<base64(0x01 || seed)>`.
    pub fn from_private_key(text: &str) -> Result<Self, NoteError> {
        let bad = NoteError::Malformed("private key");
        let rest = text
            .trim()
            .strip_prefix("PRIVATE+KEY+")
            .ok_or(bad.clone())?;
        // The name has no `+`; base64 may.
        let mut parts = rest.splitn(3, '+');
        let (Some(name), Some(id), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad);
        };
        let raw = B64.decode(key).map_err(|_| bad.clone())?;
        let (Some(&ALG_ED25519), Some(seed)) = (raw.first(), raw.get(1..)) else {
            return Err(bad);
        };
        let seed: [u8; 32] = seed.try_into().map_err(|_| bad.clone())?;
        let signer = Self::from_parts(name.to_owned(), seed)?;
        if hex::encode(signer.id) != id {
            return Err(bad);
        }
        Ok(signer)
    }

    /// The private key in the format [`Self::from_private_key`] reads.
    pub fn to_private_key(&self) -> String {
        let mut raw = Vec::with_capacity(33);
        raw.push(ALG_ED25519);
        raw.extend_from_slice(self.seed.as_ref());
        format!(
            "PRIVATE+KEY+{}+{}+{}",
            self.name,
            hex::encode(self.id),
            B64.encode(raw)
        )
    }

    /// Reads the key at `path`, or creates it (mode 0600) with a fresh
    /// key, writing the public verifier key beside it as `<path>.pub`.
    pub fn load_or_generate(path: &Path, name: Option<&str>) -> Result<Self, NoteError> {
        let file_err = |e: std::io::Error| NoteError::KeyFile {
            path: path.display().to_string(),
            message: e.kind().to_string(),
        };
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let signer = Self::from_private_key(&text).map_err(|_| NoteError::KeyFile {
                    path: path.display().to_string(),
                    message: "not a signed-note private key".to_owned(),
                })?;
                Ok(signer)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let signer = Self::generate(name)?;
                let mut options = std::fs::OpenOptions::new();
                options.write(true).create_new(true);
                #[cfg(unix)]
                std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
                let mut file = options.open(path).map_err(file_err)?;
                std::io::Write::write_all(
                    &mut file,
                    format!("{}\n", signer.to_private_key()).as_bytes(),
                )
                .map_err(file_err)?;
                file.sync_all().map_err(file_err)?;
                let public = public_key_path(path);
                std::fs::write(&public, format!("{}\n", signer.verifier())).map_err(file_err)?;
                tracing::info!(path = %path.display(), key = %signer.verifier(), "audit checkpoint key generated");
                Ok(signer)
            }
            Err(e) => Err(file_err(e)),
        }
    }

    /// The key's (and log's) name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The public half.
    pub fn verifier(&self) -> NoteVerifier {
        let mut public = [0u8; 32];
        public.copy_from_slice(self.pair.public_key().as_ref());
        NoteVerifier {
            name: self.name.clone(),
            id: self.id,
            public,
        }
    }

    /// Signs `text` (which must end with a newline) as a note.
    pub fn sign(&self, text: &str) -> String {
        let sig = self.pair.sign(text.as_bytes());
        let mut raw = Vec::with_capacity(68);
        raw.extend_from_slice(&self.id);
        raw.extend_from_slice(sig.as_ref());
        format!("{text}\n{SIG_PREFIX}{} {}\n", self.name, B64.encode(raw))
    }

    /// A signed checkpoint for a tree of `size` leaves with hash `root`.
    pub fn sign_checkpoint(&self, size: u64, root: &Hash) -> String {
        self.sign(
            &Checkpoint {
                origin: self.name.clone(),
                size,
                root: *root,
            }
            .body(),
        )
    }
}

/// Where [`CheckpointSigner::load_or_generate`] writes the public key.
pub fn public_key_path(private: &Path) -> std::path::PathBuf {
    let mut name = private.as_os_str().to_owned();
    name.push(".pub");
    name.into()
}

/// A public verifier key: `<name>+<key id hex>+<base64(0x01 || key)>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteVerifier {
    name: String,
    id: [u8; 4],
    public: [u8; 32],
}

impl fmt::Display for NoteVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut raw = Vec::with_capacity(33);
        raw.push(ALG_ED25519);
        raw.extend_from_slice(&self.public);
        write!(
            f,
            "{}+{}+{}",
            self.name,
            hex::encode(self.id),
            B64.encode(raw)
        )
    }
}

impl std::str::FromStr for NoteVerifier {
    type Err = NoteError;

    fn from_str(text: &str) -> Result<Self, NoteError> {
        let bad = NoteError::Malformed("verifier key");
        // The name has no `+`; base64 may.
        let mut parts = text.trim().splitn(3, '+');
        let (Some(name), Some(id), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad);
        };
        let raw = B64.decode(key).map_err(|_| bad.clone())?;
        let (Some(&ALG_ED25519), Some(public)) = (raw.first(), raw.get(1..)) else {
            return Err(bad);
        };
        let public: [u8; 32] = public.try_into().map_err(|_| bad.clone())?;
        if !valid_name(name) || hex::encode(key_id(name, &public)) != id {
            return Err(bad);
        }
        Ok(Self {
            name: name.to_owned(),
            id: key_id(name, &public),
            public,
        })
    }
}

impl NoteVerifier {
    /// The key's (and log's) name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Reads a verifier key from a file.
    pub fn read(path: &Path) -> Result<Self, NoteError> {
        let text = std::fs::read_to_string(path).map_err(|e| NoteError::KeyFile {
            path: path.display().to_string(),
            message: e.kind().to_string(),
        })?;
        text.parse()
    }

    /// Checks `note`'s signature by this key; returns the signed text.
    /// Signatures by other keys are ignored (as the spec says).
    pub fn open<'n>(&self, note: &'n str) -> Result<&'n str, NoteError> {
        let bad = NoteError::Malformed("note");
        // The text ends at the last blank line; signatures follow.
        let split = note.rfind("\n\n").ok_or(bad.clone())?;
        let (text, sigs) = note.split_at(split + 1);
        let sigs = sigs.strip_prefix('\n').ok_or(bad.clone())?;
        if text.chars().any(|c| c.is_control() && c != '\n') {
            return Err(bad);
        }
        let sigs = sigs.strip_suffix('\n').ok_or(bad.clone())?;
        let mut count = 0usize;
        let mut found = false;
        for line in sigs.split('\n') {
            count += 1;
            if count > MAX_SIGNATURES {
                return Err(bad);
            }
            let rest = line.strip_prefix(SIG_PREFIX).ok_or(bad.clone())?;
            let (name, sig) = rest.split_once(' ').ok_or(bad.clone())?;
            let raw = B64.decode(sig).map_err(|_| bad.clone())?;
            let (Some(id), Some(sig)) = (raw.get(..4), raw.get(4..)) else {
                return Err(bad);
            };
            if name != self.name || id != self.id {
                continue;
            }
            found = true;
            UnparsedPublicKey::new(&ED25519, &self.public)
                .verify(text.as_bytes(), sig)
                .map_err(|_| NoteError::BadSignature(self.name.clone()))?;
        }
        if !found {
            return Err(NoteError::NotSigned(self.name.clone()));
        }
        Ok(text)
    }

    /// Checks a signed checkpoint and returns what it commits to. Its
    /// origin must be this key's name.
    pub fn open_checkpoint(&self, note: &str) -> Result<Checkpoint, NoteError> {
        let text = self.open(note)?;
        let cp = Checkpoint::parse(text)?;
        if cp.origin != self.name {
            return Err(NoteError::WrongOrigin {
                expected: self.name.clone(),
                found: cp.origin,
            });
        }
        Ok(cp)
    }
}

/// What a checkpoint commits to.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Checkpoint {
    /// The log's name.
    pub origin: String,
    /// Leaves covered.
    pub size: u64,
    /// Their RFC 9162 tree hash.
    pub root: Hash,
}

impl Checkpoint {
    /// The note text: origin, size and base64 root, one per line.
    pub fn body(&self) -> String {
        format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            self.root.to_base64()
        )
    }

    /// Parses a checkpoint body (extension lines are allowed and ignored).
    pub fn parse(text: &str) -> Result<Self, NoteError> {
        let bad = NoteError::Malformed("checkpoint");
        let mut lines = text.split('\n');
        let (Some(origin), Some(size), Some(root)) = (lines.next(), lines.next(), lines.next())
        else {
            return Err(bad);
        };
        if origin.is_empty()
            || size.is_empty()
            || (size.len() > 1 && size.starts_with('0'))
            || !size.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(bad);
        }
        let size = size.parse().map_err(|_| bad.clone())?;
        let root = Hash::from_base64(root).ok_or(bad)?;
        Ok(Self {
            origin: origin.to_owned(),
            size,
            root,
        })
    }
}

#[cfg(test)]
#[path = "note_tests.rs"]
mod tests;
