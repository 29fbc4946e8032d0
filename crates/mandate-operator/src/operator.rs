//! Who the operator is: the one place that makes an [`Operator`].
//!
//! A person acts on the operator plane in one of two ways, and both end
//! here:
//!
//! * with a **bearer token** on `/api` ([`Operator::authenticate`]): a JWT
//!   from a configured issuer whose `aud` is `<public_url>/api` and which
//!   carries no `act` claim (an agent token never operates Mandate), of a
//!   subject with at least one role in `[[operators]]`;
//! * **signed in to the approval page** ([`Operator::approver`]): a
//!   browser session (local account or OpenID Connect, `web/session.rs`,
//!   whose CSRF checks guard every state-changing request) of a person
//!   with the `approver` role. Bearer tokens are not read there at all.
//!
//! A verified subject that is refused (an agent token, no role, a missing
//! role) is recorded in the audit log before the refusal is returned, as
//! is every operator action before it takes effect ([`record`]).

use crate::error::ApiError;
use http::{HeaderMap, header};
use mandate_core::{AuditRecord, Subject};
use mandate_gateway::{Gateway, OperatorConfig, Role};
use serde_json::{Value, json};
use std::collections::BTreeSet;

/// A person, as an operator token (verified, with no `act`) or a sign-in
/// of the approval page identifies them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Identity {
    pub(crate) iss: String,
    pub(crate) sub: String,
}

impl Identity {
    /// The person as the subject of their audit records.
    pub(crate) fn subject(&self) -> Subject {
        Subject {
            iss: self.iss.clone(),
            sub: self.sub.clone(),
            act: Vec::new(),
            scope: String::new(),
            task_id: None,
            build: None,
            session: format!("operator:{}", self.sub),
        }
    }
}

/// An authenticated operator with their roles; made only in this module
/// (the fields are private).
#[derive(Debug, Clone)]
pub(crate) struct Operator {
    identity: Identity,
    roles: BTreeSet<Role>,
}

impl Operator {
    /// Authenticates the bearer token of an `/api` request (`action` names
    /// the request in the audit record of a refusal). A valid token that
    /// is not an operator's (an agent token, an unknown subject) is
    /// refused with 403 and recorded.
    pub(crate) async fn authenticate(
        gw: &Gateway,
        headers: &HeaderMap,
        action: &str,
    ) -> Result<Self, ApiError> {
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|h| mandate_authn::token_of(h, "Bearer"))
            .ok_or_else(|| ApiError::unauthorized("an operator bearer token is required"))?;
        let verified =
            gw.operator_authn().verify(token).await.map_err(|e| {
                ApiError::unauthorized(format!("invalid token: {}", e.description()))
            })?;
        let identity = Identity {
            iss: verified.iss().to_owned(),
            sub: verified.sub().to_owned(),
        };
        let refuse = |why: String| async {
            record(gw, &identity.subject(), action, None, &why, &json!({})).await?;
            Err::<Self, ApiError>(ApiError::forbidden(why))
        };
        if !verified.act().is_empty() {
            return refuse("agent tokens (with an `act` claim) cannot use the control API".into())
                .await;
        }
        let roles = roles(gw, &identity);
        if roles.is_empty() {
            return refuse(format!("{} is not a configured operator", identity.sub)).await;
        }
        Ok(Self { identity, roles })
    }

    /// Authenticates and requires `role`; a refusal is recorded.
    pub(crate) async fn require(
        gw: &Gateway,
        headers: &HeaderMap,
        role: Role,
        action: &str,
    ) -> Result<Self, ApiError> {
        let op = Self::authenticate(gw, headers, action).await?;
        if !op.roles.contains(&role) {
            let why = format!("{} lacks the {} role", op.name(), role.as_str());
            record(gw, &op.subject(), action, None, &why, &json!({})).await?;
            return Err(ApiError::forbidden(why));
        }
        Ok(op)
    }

    /// The operator a person signed in to the approval page is, if an
    /// `[[operators]]` entry makes them an approver.
    pub(crate) fn approver(gw: &Gateway, identity: Identity) -> Option<Self> {
        let roles = roles(gw, &identity);
        roles
            .contains(&Role::Approver)
            .then_some(Self { identity, roles })
    }

    pub(crate) fn name(&self) -> &str {
        &self.identity.sub
    }

    pub(crate) fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Some role of theirs, for the record of an action any operator may
    /// take.
    pub(crate) fn any_role(&self) -> Option<Role> {
        self.roles.iter().next().copied()
    }

    /// The operator as the subject of their audit records.
    pub(crate) fn subject(&self) -> Subject {
        self.identity.subject()
    }

    /// Whether some `[[operators]]` entry of theirs may decide held calls
    /// of `class`.
    pub(crate) fn may_approve(&self, gw: &Gateway, class: &str) -> bool {
        entries(gw, &self.identity).any(|o| o.may_approve(class))
    }
}

/// The roles `[[operators]]` gives this person (`sub`, and `iss` where an
/// entry names one).
fn roles(gw: &Gateway, identity: &Identity) -> BTreeSet<Role> {
    entries(gw, identity)
        .flat_map(|o| o.roles.iter().copied())
        .collect()
}

/// The `[[operators]]` entries a verified person matches (by `sub`, and
/// `iss` where the entry names one).
fn entries<'a>(
    gw: &'a Gateway,
    identity: &'a Identity,
) -> impl Iterator<Item = &'a OperatorConfig> {
    gw.config()
        .operators
        .iter()
        .filter(|o| o.sub == identity.sub && o.issuer.as_ref().is_none_or(|i| *i == identity.iss))
}

/// Appends a control record: allowed (with the role that allowed it) or
/// refused. Durable before it returns; if the log cannot write, the
/// request fails with 503 and the caller must change nothing.
pub(crate) async fn record(
    gw: &Gateway,
    operator: &Subject,
    action: &str,
    allowed_by: Option<Role>,
    reason: &str,
    detail: &Value,
) -> Result<AuditRecord, ApiError> {
    Ok(gw
        .record_control(operator, action, allowed_by, reason, detail)
        .await?)
}

/// Records what an allowed control action produced (after the fact).
pub(crate) async fn record_outcome(
    gw: &Gateway,
    rec: &AuditRecord,
    result: Result<&Value, &ApiError>,
) {
    gw.record_control_outcome(rec, result.map_err(|e| e.message.as_str()))
        .await;
}
