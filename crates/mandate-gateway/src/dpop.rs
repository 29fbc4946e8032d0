//! Sender-constrained tokens at the gateway (RFC 9449 §7): a token bound
//! to a key (`cnf.jkt`) is accepted only as `Authorization: DPoP <token>`
//! with a valid proof made with that key for this very request (`htm`,
//! `htu`, `ath`, fresh `iat`, unused `jti`, and the server nonce when
//! required). The same token as a plain `Bearer` is refused by
//! `mandate-authn` itself, so no path can forget the check.

use crate::Gateway;
use crate::error::GatewayError;
use axum::response::Response;
use http::{HeaderMap, HeaderValue, Method};
use mandate_authn::Principal;
use mandate_authn::dpop::{DpopError, DpopVerifier};
use serde_json::Value;
use std::sync::Arc;

impl Gateway {
    /// Shares a DPoP verifier (the broker's, so nonces and the replay
    /// cache are one). Without one, the gateway makes its own on first use.
    pub fn use_dpop(&self, verifier: Arc<DpopVerifier>) {
        let _ = self.dpop.set(verifier);
    }

    fn dpop_verifier(&self) -> Option<&Arc<DpopVerifier>> {
        if let Some(v) = self.dpop.get() {
            return Some(v);
        }
        let made = DpopVerifier::new(false, self.authn.leeway_secs()).ok()?;
        let _ = self.dpop.set(Arc::new(made));
        self.dpop.get()
    }
}

fn refuse(gw: &Gateway, code: &str, desc: &str, nonce: Option<String>) -> Response {
    gw.metrics().auth_failures.inc();
    tracing::info!(reason = %desc, "DPoP request refused");
    GatewayError::dpop_refused(gw, code, desc, nonce).into_http(Value::Null)
}

/// Authenticates `Authorization: DPoP <token>` with its `DPoP` proof: the
/// verified token is only a `Bound` until the proof checks out, so there
/// is no principal to use before it does.
pub(crate) async fn authenticate(
    gw: &Gateway,
    headers: &HeaderMap,
    method: &Method,
    token: &str,
) -> Result<Arc<Principal>, Response> {
    let bound = match gw.authn().verify_bound(token).await {
        Ok(b) => b,
        Err(e) => return Err(refuse(gw, "invalid_token", &e.description(), None)),
    };
    // Exactly one proof (counted before decoding, so a second header that
    // is not text cannot hide).
    let values: Vec<&HeaderValue> = headers.get_all("dpop").iter().collect();
    let proof = match values.as_slice() {
        [one] => one.to_str().map_err(|_| DpopError::Malformed),
        [] => Err(DpopError::Missing),
        _ => Err(DpopError::Multiple),
    };
    let Some(verifier) = gw.dpop_verifier() else {
        return Err(refuse(
            gw,
            "invalid_token",
            "authentication is temporarily unavailable",
            None,
        ));
    };
    // `htu`: the URL the client used, as the gateway publishes it.
    let url = format!("{}/mcp", gw.config().public_url.trim_end_matches('/'));
    let subject = bound.subject();
    let proven = proof.and_then(|proof| bound.prove(verifier, proof, method.as_str(), &url, token));
    match proven {
        Ok(principal) => Ok(Arc::new(principal)),
        Err(DpopError::UseNonce) => Err(refuse(
            gw,
            "use_dpop_nonce",
            "a current DPoP nonce is required",
            Some(verifier.nonce()),
        )),
        // A valid bound token without a valid proof is what a stolen token
        // looks like: the subject is known, so the refusal is audited.
        Err(e) => {
            gw.record_refusal(
                subject,
                "mcp/dpop",
                None,
                format!("DPoP proof refused: {e}"),
            )
            .await;
            Err(refuse(gw, "invalid_dpop_proof", &e.to_string(), None))
        }
    }
}
