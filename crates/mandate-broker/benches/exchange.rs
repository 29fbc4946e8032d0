//! Token exchanges per second (identity provider and agent keys cached)
//! and issued-token verification, each next to the raw signature operation
//! of the same key type in the same run, so the results read as ratios:
//!
//! * `exchange/<alg>` vs `raw_sign/<alg>`: a whole exchange (client
//!   assertion, subject and actor tokens verified, scope reduced, task
//!   looked up, token signed, audit record durable) against one signature;
//! * `verify_issued/<alg>` vs `raw_verify/<alg>`: the gateway's uncached
//!   verification of an issued token against one signature verification.
//!
//! `cargo bench -p mandate-broker --bench exchange`

#[path = "fixture.rs"]
mod fixture;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use fixture::{RESOURCE, fixture};
use mandate_authn::Algorithm;
use mandate_broker::Exchange;
use mandate_broker::token_type::ID_TOKEN;
use serde_json::json;
use std::hint::black_box;

fn bench(c: &mut Criterion) {
    let Ok(rt) = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    for (alg, name) in [(Algorithm::EdDSA, "EdDSA"), (Algorithm::ES256, "ES256")] {
        let Ok(f) = rt.block_on(fixture(alg)) else {
            return;
        };
        let Ok(user) = f.user_token("alice", json!({})) else {
            return;
        };
        let keys = f.broker.keys();
        let claims =
            json!({"iss": "x", "sub": "alice", "aud": RESOURCE, "exp": fixture::now() + 600});

        c.bench_function(&format!("raw_sign/{name}"), |b| {
            b.iter(|| black_box(keys.signing().sign(black_box(&claims))));
        });

        c.bench_function(&format!("exchange/{name}"), |b| {
            b.iter_batched(
                || {
                    f.form("assistant", &user, ID_TOKEN, &[])
                        .ok()
                        .and_then(|body| Exchange::parse(&body, &[]).ok())
                        .unwrap_or_default()
                },
                |req| rt.block_on(f.broker.exchange(&req)).is_ok(),
                BatchSize::SmallInput,
            );
        });

        // One issued token, verified as the gateway would (uncached).
        let issued = f
            .form("assistant", &user, ID_TOKEN, &[])
            .ok()
            .and_then(|body| Exchange::parse(&body, &[]).ok())
            .and_then(|req| rt.block_on(f.broker.exchange(&req)).ok());
        let Some(issued) = issued else {
            return;
        };
        let mut ac = mandate_authn::AuthnConfig::new(
            vec![mandate_authn::IssuerConfig {
                issuer: fixture::ISSUER.into(),
                jwks: mandate_authn::JwksSource::File(f.dir.path().join("keys/jwks.json")),
            }],
            RESOURCE,
        );
        ac.require_actor = true;
        let Ok(authn) = rt.block_on(mandate_authn::Authenticator::new(ac)) else {
            return;
        };
        let token = issued.access_token.clone();
        c.bench_function(&format!("verify_issued/{name}"), |b| {
            b.iter(|| {
                rt.block_on(authn.verify_uncached(black_box(&token)))
                    .is_ok()
            });
        });

        // The raw signature check of the same token: jsonwebtoken with the
        // key already decoded, no claim processing.
        let jwk = keys.signing().jwk();
        let Ok(decoding) = jsonwebtoken::DecodingKey::from_jwk(&jwk) else {
            return;
        };
        let mut v = jsonwebtoken::Validation::new(alg);
        v.validate_exp = false;
        v.validate_aud = false;
        v.required_spec_claims.clear();
        c.bench_function(&format!("raw_verify/{name}"), |b| {
            b.iter(|| {
                jsonwebtoken::decode::<serde_json::Value>(black_box(&token), &decoding, &v).is_ok()
            });
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
