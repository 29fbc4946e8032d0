//! Development issuer keys and composite tokens, so Mandate can be tried
//! without an identity provider. Production tokens come from the broker.

use anyhow::{Context, Result};
use mandate_authn::dev::DevKey;
use std::path::Path;

/// Arguments of `mandate token mint` (a `dev` build), and what the demo
/// mints its tokens from.
#[derive(clap::Args, Debug, Clone)]
pub struct MintArgs {
    /// Directory holding issuer.pem and jwks.json (from `mandate keys generate`).
    #[arg(long)]
    pub key: std::path::PathBuf,
    /// Issuer (`iss`); must match an `auth.issuers` entry.
    #[arg(long, default_value = "mandate-dev")]
    pub iss: String,
    /// Audience: the gateway's resource (`<public_url>/mcp`).
    #[arg(long)]
    pub aud: String,
    /// The delegating user.
    #[arg(long)]
    pub sub: String,
    /// The acting agent. Omit it for an operator token (control API,
    /// audience `<public_url>/api`).
    #[arg(long)]
    pub act: Option<String>,
    /// Space-separated scope (`upstream.tool` or `upstream.*`).
    #[arg(long, default_value = "")]
    pub scope: String,
    /// Task id.
    #[arg(long)]
    pub task: Option<String>,
    /// Build hash.
    #[arg(long)]
    pub build: Option<String>,
    /// Mandate session id (default: random).
    #[arg(long)]
    pub sid: Option<String>,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 900)]
    pub ttl: i64,
}

/// Writes a new Ed25519 issuer key and its public JWKS into `out`.
pub fn generate_issuer_key(out: &Path) -> Result<DevKey> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let key = mandate_authn::dev::generate_ed25519().map_err(|e| anyhow::anyhow!("{e}"))?;
    write_private(&out.join("issuer.pem"), key.pkcs8_pem.as_bytes())?;
    std::fs::write(out.join("kid"), key.kid.as_bytes())?;
    std::fs::write(out.join("jwks.json"), key.jwks_json())?;
    Ok(key)
}

/// Loads the key written by [`generate_issuer_key`].
pub fn load_issuer_key(dir: &Path) -> Result<DevKey> {
    let pem = std::fs::read_to_string(dir.join("issuer.pem"))
        .with_context(|| format!("cannot read {}", dir.join("issuer.pem").display()))?;
    let kid = std::fs::read_to_string(dir.join("kid"))?;
    DevKey::from_pem(&pem, kid.trim()).map_err(|e| anyhow::anyhow!("{e}"))
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(bytes)?;
    Ok(())
}

/// Claims of a composite token.
pub fn claims(args: &MintArgs, now: i64) -> serde_json::Value {
    let mut c = serde_json::json!({
        "iss": args.iss,
        "aud": args.aud,
        "sub": args.sub,
        "scope": args.scope,
        "sid": args.sid.clone().unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
        "jti": uuid::Uuid::new_v4().to_string(),
        "iat": now,
        "nbf": now,
        "exp": now + args.ttl,
    });
    if let Some(obj) = c.as_object_mut() {
        if let Some(a) = &args.act {
            obj.insert("act".into(), serde_json::json!({ "sub": a }));
        }
        if let Some(t) = &args.task {
            obj.insert("task_id".into(), t.clone().into());
        }
        if let Some(b) = &args.build {
            obj.insert("build".into(), b.clone().into());
        }
    }
    c
}

/// Mints a token with the key in `args.key`.
#[cfg(feature = "dev")]
pub fn mint(args: &MintArgs) -> Result<String> {
    sign(&load_issuer_key(&args.key)?, args)
}

/// Signs the claims of `args` with `key`, issued now (the system clock).
pub fn sign(key: &DevKey, args: &MintArgs) -> Result<String> {
    let now = mandate_core::Clock::system().now_secs();
    key.sign(&claims(args, now))
        .map_err(|e| anyhow::anyhow!("{e}"))
}
