//! The broker's HTTP surface:
//!
//! | method | path | what |
//! |---|---|---|
//! | POST | `/oauth2/token` | RFC 8693 token exchange |
//! | POST | `/oauth2/introspect` | RFC 7662 introspection |
//! | POST | `/oauth2/revoke` | RFC 7009 revocation |
//! | GET | `/.well-known/oauth-authorization-server` | RFC 8414 metadata |
//! | GET | `/.well-known/jwks.json` | the public signing keys |
//!
//! With `[broker.sign_in]`, also the MCP sign-in endpoints (`crate::signin`)
//! and `grant_type=authorization_code` at `/oauth2/token`. The task
//! lifecycle API (`/api/tasks`) is the operator plane's
//! (`mandate_operator`), which calls the broker through [`crate::TaskApi`].

use crate::error::{ErrorCode, Refusal};
use crate::exchange::{Exchange, MAX_FORM_BYTES};
use crate::{ASSERTION_TYP, Broker, GRANT_TOKEN_EXCHANGE};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use mandate_control::RevocationKind;
use mandate_core::{AuditRecord, DecisionRecord, Effect};
use serde_json::{Value, json};
use std::sync::Arc;

/// The broker's routes.
pub fn router(broker: Arc<Broker>) -> Router {
    let sign_in = if broker.signin.is_some() {
        crate::signin::routes()
    } else {
        Router::new()
    };
    Router::new()
        .merge(sign_in)
        .route("/oauth2/token", post(token))
        .route("/oauth2/introspect", post(introspect))
        .route("/oauth2/revoke", post(revoke))
        .route("/.well-known/oauth-authorization-server", get(metadata))
        .route("/.well-known/jwks.json", get(jwks))
        .layer(DefaultBodyLimit::max(MAX_FORM_BYTES))
        .with_state(broker)
}

fn no_store(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    resp
}

fn form_body(headers: &HeaderMap) -> Result<(), Refusal> {
    let ok = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct.split(';').next().is_some_and(|m| {
                m.trim()
                    .eq_ignore_ascii_case("application/x-www-form-urlencoded")
            })
        });
    if ok {
        Ok(())
    } else {
        Err(Refusal::request(
            "the request must be application/x-www-form-urlencoded",
        ))
    }
}

async fn token(State(b): State<Arc<Broker>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(r) = form_body(&headers) {
        return r.into_response();
    }
    let proofs: Vec<&str> = headers
        .get_all("dpop")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let req = match Exchange::parse(&body, &proofs) {
        Ok(r) => r,
        Err(r) => return r.into_response(),
    };
    if req.get("grant_type") == Some("authorization_code") {
        return match b.redeem_code(&req).await {
            Ok(body) => no_store((StatusCode::OK, Json(body)).into_response()),
            Err(r) => r.into_response(),
        };
    }
    match b.exchange(&req).await {
        Ok(issued) => no_store((StatusCode::OK, Json(issued.to_json())).into_response()),
        Err(r) => r.into_response(),
    }
}

async fn metadata(State(b): State<Arc<Broker>>) -> Response {
    let iss = b.cfg.issuer.trim_end_matches('/');
    let algs = ["EdDSA", "ES256", "ES384", "RS256", "PS256"];
    let mut doc = json!({
        "issuer": b.cfg.issuer,
        "token_endpoint": format!("{iss}/oauth2/token"),
        "jwks_uri": format!("{iss}/.well-known/jwks.json"),
        "introspection_endpoint": format!("{iss}/oauth2/introspect"),
        "revocation_endpoint": format!("{iss}/oauth2/revoke"),
        "grant_types_supported": [GRANT_TOKEN_EXCHANGE],
        "response_types_supported": [],
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": algs,
        "introspection_endpoint_auth_methods_supported": ["private_key_jwt"],
        "introspection_endpoint_auth_signing_alg_values_supported": algs,
        "revocation_endpoint_auth_methods_supported": ["private_key_jwt"],
        "revocation_endpoint_auth_signing_alg_values_supported": algs,
        "dpop_signing_alg_values_supported": algs,
        "scopes_supported": b.cfg.templates.values().flat_map(|t| t.scope.iter().map(str::to_owned)).collect::<std::collections::BTreeSet<_>>(),
        "client_assertion_types": [crate::ASSERTION_JWT_BEARER],
        "client_assertion_typ": ASSERTION_TYP,
    });
    if let Some(obj) = doc.as_object_mut() {
        crate::signin::metadata(&b, obj);
    }
    Json(doc).into_response()
}

async fn jwks(State(b): State<Arc<Broker>>) -> Response {
    if let Err(e) = b.reload_keys_if_changed() {
        tracing::error!(error = %e, "cannot reload broker keys");
    }
    let mut resp = Json(b.jwks()).into_response();
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=60"),
    );
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/jwk-set+json"),
    );
    resp
}

/// A client-authenticated form request (introspection, revocation).
async fn authenticated_form(
    b: &Broker,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(crate::client::Client, Exchange), Refusal> {
    form_body(headers)?;
    let req = Exchange::parse(body, &[])?;
    let client = b
        .authenticate_client(
            req.get("client_assertion_type"),
            req.get("client_assertion"),
            req.get("client_id"),
        )
        .await?;
    Ok((client, req))
}

/// RFC 7662. A registered agent may introspect the tokens issued to it
/// (`client_id`); anything else is `{"active": false}`.
async fn introspect(State(b): State<Arc<Broker>>, headers: HeaderMap, body: Bytes) -> Response {
    let (client, req) = match authenticated_form(&b, &headers, &body).await {
        Ok(x) => x,
        Err(r) => return r.into_response(),
    };
    let inactive = || no_store(Json(json!({"active": false})).into_response());
    let Some(token) = req.get("token") else {
        return Refusal::request("token is missing").into_response();
    };
    for authn in b.own.values() {
        let Ok((principal, claims)) = authn.verify_with_claims(token).await else {
            continue;
        };
        if claims.get("client_id").and_then(Value::as_str) != Some(client.id.as_str()) {
            return inactive();
        }
        if b.control.check(&principal.caller()).is_some() {
            return inactive();
        }
        let mut out = json!({
            "active": true,
            "token_type": if claims.get("cnf").is_some() { "DPoP" } else { "Bearer" },
        });
        if let Some(obj) = out.as_object_mut() {
            for name in [
                "iss",
                "sub",
                "aud",
                "act",
                "scope",
                "task_id",
                "build",
                "sid",
                "jti",
                "iat",
                "exp",
                "client_id",
                "cnf",
            ] {
                if let Some(v) = claims.get(name) {
                    obj.insert(name.into(), v.clone());
                }
            }
        }
        return no_store(Json(out).into_response());
    }
    inactive()
}

/// RFC 7009. A registered agent may revoke the tokens issued to it; the
/// token's `jti` becomes a kill switch, so the gateway refuses it on the
/// next call. Unknown or foreign tokens get the same 200 (§2.2).
async fn revoke(State(b): State<Arc<Broker>>, headers: HeaderMap, body: Bytes) -> Response {
    let (client, req) = match authenticated_form(&b, &headers, &body).await {
        Ok(x) => x,
        Err(r) => return r.into_response(),
    };
    let Some(token) = req.get("token") else {
        return Refusal::request("token is missing").into_response();
    };
    let ok = || no_store(StatusCode::OK.into_response());
    for authn in b.own.values() {
        let Ok((principal, claims)) = authn.verify_with_claims(token).await else {
            continue;
        };
        if claims.get("client_id").and_then(Value::as_str) != Some(client.id.as_str()) {
            return ok();
        }
        let Some(jti) = principal.jti().map(str::to_owned) else {
            return ok();
        };
        let decision = DecisionRecord::control(
            Effect::Allow,
            "broker",
            format!("token revoked by its client {}", client.id),
        );
        let subject = principal.subject();
        let record = AuditRecord::control(
            b.clock.now_ms(),
            decision,
            subject,
            "broker/token_revoke",
            &json!({"jti": jti, "client_id": client.id}),
        );
        if b.audit.append(record).await.is_err() {
            return Refusal::audit_unavailable().into_response();
        }
        let by = format!("client:{}", client.id);
        let done = b
            .control
            .revoke(
                RevocationKind::Token,
                &jti,
                "revoked by its client (RFC 7009)",
                &by,
            )
            .await;
        return match done {
            Ok(_) => ok(),
            _ => Refusal::new(
                ErrorCode::ServerError,
                "the token could not be revoked right now",
                "control store failure",
            )
            .into_response(),
        };
    }
    ok()
}
