//! `mandate.toml` parsing (`mandate::config::Config::parse`) of arbitrary
//! text.
//!
//! Input: the file's text (bytes decoded lossily as UTF-8). The harness
//! parses it as if it were `<scratch>/mandate.toml`, beside a copy of the
//! quickstart policies (`policies/`) and a JWKS file (`jwks.json`), so a
//! text that names them by relative path gets past the file checks to the
//! validation behind them. The seeds are the shipped configurations
//! (examples/quickstart, deploy).
//!
//! Invariants, beyond "no panic" (every broken configuration must be an
//! error the operator can read, never a crash of `mandate serve --check`):
//! * parsing is deterministic: the same text gives the same configuration
//!   or the same error, twice;
//! * an error is a message, not empty.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mandate::config::{Config, Overrides};
use mandate_fuzz::finding;
use std::path::PathBuf;
use std::sync::LazyLock;

struct Fixture {
    config_path: PathBuf,
    _dir: tempfile::TempDir,
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let dir = mandate_fuzz::scratch_dir();
    mandate_fuzz::write_jwks(dir.path());
    let policies = dir.path().join("policies");
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/quickstart/policies");
    std::fs::create_dir_all(&policies).unwrap_or_else(|e| finding(format!("policies dir: {e}")));
    for entry in std::fs::read_dir(&shipped)
        .unwrap_or_else(|e| finding(format!("read {}: {e}", shipped.display())))
        .flatten()
    {
        if entry.file_type().is_ok_and(|t| t.is_file()) {
            let _ = std::fs::copy(entry.path(), policies.join(entry.file_name()));
        }
    }
    Fixture {
        config_path: dir.path().join("mandate.toml"),
        _dir: dir,
    }
});

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let fixture = &*FIXTURE;
    let overrides = Overrides::default();
    let first = Config::parse(&text, &fixture.config_path, &overrides);
    let second = Config::parse(&text, &fixture.config_path, &overrides);
    let shown = |r: &anyhow::Result<Config>| match r {
        Ok(c) => format!("ok {c:?}"),
        Err(e) => format!("err {e:#}"),
    };
    let (a, b) = (shown(&first), shown(&second));
    if a != b {
        finding(format!("parsing the same text twice differed:\n{a}\n---\n{b}"));
    }
    if let Err(e) = &first
        && format!("{e:#}").trim().is_empty()
    {
        finding("a configuration error with no message");
    }
});
