//! Shared fixtures of Mandate's fuzz targets: fixed development keys, a
//! runtime, signing of arbitrary JWS parts, and a real gateway driven in
//! process (no sockets).
//!
//! The keys are fixed (not generated per run) so that seeds holding signed
//! tokens and embedded public keys stay meaningful across runs. They sign
//! nothing outside this crate.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use mandate_authn::dev::DevKey;
use std::sync::LazyLock;
use std::time::{SystemTime, UNIX_EPOCH};

/// The issuer key of the tokens the targets verify (Ed25519).
pub const ISSUER_PEM: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEICgDcpDhERMFErPMf/7GQy3E4Z2PO3SH2dHm8zdIMaUF
-----END PRIVATE KEY-----
";
/// Its `kid`.
pub const ISSUER_KID: &str = "fuzz-issuer";
/// Its `iss`.
pub const ISSUER: &str = "mandate-fuzz";
/// The audience tokens are verified for (the gateway's resource).
pub const AUDIENCE: &str = "http://127.0.0.1:8943/mcp";
/// The public base URL of the fuzzed gateway.
pub const PUBLIC_URL: &str = "http://127.0.0.1:8943";

/// The DPoP proof key of the client (Ed25519).
pub const DPOP_PEM: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIAIDrk1TflCCIMG9cNCmSXHhi40Uyfa/rL2wCFH5qUCX
-----END PRIVATE KEY-----
";

/// Aborts the fuzz run with `what` (a finding). Fuzz targets are the one
/// place where a panic is the point.
#[track_caller]
pub fn finding(what: impl std::fmt::Display) -> ! {
    panic!("FINDING: {what}")
}

/// A loaded key; a broken fixture ends the run at once.
pub fn key(pem: &str, kid: &str) -> DevKey {
    DevKey::from_pem(pem, kid).unwrap_or_else(|e| finding(format!("fixture key: {e}")))
}

/// Unix seconds now.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A current-thread runtime for the async parts (one per process).
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| finding(format!("runtime: {e}")))
    });
    &RT
}

/// A compact JWS over exactly these header and payload bytes, signed by
/// `pem` with EdDSA (whatever the header claims).
pub fn sign_raw(pem: &str, header: &[u8], payload: &[u8]) -> String {
    let encoding = jsonwebtoken::EncodingKey::from_ed_pem(pem.as_bytes())
        .unwrap_or_else(|e| finding(format!("fixture key: {e}")));
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(payload)
    );
    let signature = jsonwebtoken::crypto::sign(
        signing_input.as_bytes(),
        &encoding,
        jsonwebtoken::Algorithm::EdDSA,
    )
    .unwrap_or_else(|e| finding(format!("signing: {e}")));
    format!("{signing_input}.{signature}")
}

/// Splits fuzz input at the first `0xFF` byte (never part of UTF-8 text).
pub fn split_ff(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|b| *b == 0xFF) {
        Some(i) => (
            data.get(..i).unwrap_or_default(),
            data.get(i + 1..).unwrap_or_default(),
        ),
        None => (data, &[]),
    }
}

/// Makes a time claim given as a small number relative to now (so seeds
/// written once stay fresh): integers below 10^8 in magnitude are offsets.
pub fn relative_times(claims: &mut serde_json::Value, names: &[&str]) {
    let now = i64::try_from(now()).unwrap_or(i64::MAX);
    let Some(map) = claims.as_object_mut() else {
        return;
    };
    for name in names {
        if let Some(v) = map.get_mut(*name)
            && let Some(offset) = v.as_i64()
            && offset.unsigned_abs() < 100_000_000
        {
            *v = serde_json::Value::from(now.saturating_add(offset));
        }
    }
}

/// The JWKS of the issuer key, written to `dir/jwks.json`.
pub fn write_jwks(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("jwks.json");
    std::fs::write(&path, key(ISSUER_PEM, ISSUER_KID).jwks_json())
        .unwrap_or_else(|e| finding(format!("jwks: {e}")));
    path
}

/// An authenticator trusting the fixture issuer for `audience`.
pub async fn authenticator(
    jwks: &std::path::Path,
    audience: &str,
    require_actor: bool,
) -> mandate_authn::Authenticator {
    let mut cfg = mandate_authn::AuthnConfig::new(
        vec![mandate_authn::IssuerConfig {
            issuer: ISSUER.to_owned(),
            jwks: mandate_authn::JwksSource::File(jwks.to_path_buf()),
        }],
        audience,
    );
    cfg.require_actor = require_actor;
    mandate_authn::Authenticator::new(cfg)
        .await
        .unwrap_or_else(|e| finding(format!("authenticator: {e}")))
}

/// A temporary directory, on tmpfs when there is one: the audit log and
/// control store fsync every write, which a fuzzer should not wait for.
pub fn scratch_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("mandate-fuzz")
        .tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .unwrap_or_else(|e| finding(format!("temp dir: {e}")))
}

#[cfg(feature = "gateway")]
pub mod gateway;

/// Shared handle type of the gateway harness.
#[cfg(feature = "gateway")]
pub type SharedGateway = std::sync::Arc<mandate_gateway::Gateway>;
