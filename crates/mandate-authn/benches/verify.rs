//! Token verification cost: EdDSA vs ES256 without the cache, and a cache hit.
//!
//! `cargo bench -p mandate-authn --bench verify`

use criterion::{Criterion, criterion_group, criterion_main};
use mandate_authn::dev::DevKey;
use mandate_authn::{Algorithm, Authenticator, AuthnConfig, IssuerConfig, JwksSource};
use serde_json::json;
use std::hint::black_box;

const ISS: &str = "https://idp.bench";
const AUD: &str = "mandate-bench";

struct Fixture {
    authn: Authenticator,
    eddsa: String,
    es256: String,
    _dir: tempfile::TempDir,
}

fn fixture(rt: &tokio::runtime::Runtime) -> Result<Fixture, Box<dyn std::error::Error>> {
    let ed = DevKey::generate(Algorithm::EdDSA)?;
    let ec = DevKey::generate(Algorithm::ES256)?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("jwks.json");
    let jwks = json!({ "keys": [ed.jwk(), ec.jwk()] });
    std::fs::write(&path, jwks.to_string())?;
    let cfg = AuthnConfig::new(
        vec![IssuerConfig {
            issuer: ISS.into(),
            jwks: JwksSource::File(path),
        }],
        AUD,
    );
    let authn = rt.block_on(Authenticator::new(cfg))?;
    let exp = mandate_core::Clock::system().now_secs() + 3600;
    let claims = json!({
        "iss": ISS, "sub": "alice", "aud": AUD, "exp": exp,
        "act": {"sub": "agent", "act": {"sub": "orchestrator"}},
        "scope": "docs.search mail.send bank.*", "task_id": "t-1", "sid": "s-1",
    });
    Ok(Fixture {
        authn,
        eddsa: ed.sign(&claims)?,
        es256: ec.sign(&claims)?,
        _dir: dir,
    })
}

fn bench_verify(c: &mut Criterion) {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        eprintln!("cannot build a tokio runtime");
        return;
    };
    let f = match fixture(&rt) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("bench fixture failed: {e}");
            return;
        }
    };
    // Fail loudly (as a skipped bench) rather than measure an error path.
    for token in [&f.eddsa, &f.es256] {
        if let Err(e) = rt.block_on(f.authn.verify(token)) {
            eprintln!("fixture token does not verify: {e}");
            return;
        }
    }

    let mut group = c.benchmark_group("verify");
    group.bench_function("uncached_eddsa", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(f.authn.verify_uncached(black_box(&f.eddsa)).await) });
    });
    group.bench_function("uncached_es256", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(f.authn.verify_uncached(black_box(&f.es256)).await) });
    });
    group.bench_function("cached_eddsa", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(f.authn.verify(black_box(&f.eddsa)).await) });
    });
    group.finish();
}

criterion_group!(benches, bench_verify);
criterion_main!(benches);
