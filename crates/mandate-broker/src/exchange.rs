//! The token exchange (RFC 8693), as one pipeline of named steps.
//!
//! The order is deliberate: the client is authenticated before anything it
//! sent is looked at closely (RFC 8693 §5), the request's shape and target
//! are checked before any token is verified, and every refusal happens
//! before a key signs. Each step records what it learnt in a [`Trail`],
//! which becomes the audit record whether the exchange is allowed or not.

use crate::client::{Client, peek_claims};
use crate::error::{ErrorCode, Refusal};
use crate::scope::{Bounds, ScopeProblem, reduce_scope};
use crate::{Broker, GRANT_TOKEN_EXCHANGE, token_type};
use mandate_authn::Principal;
use mandate_authn::dpop::{DpopError, ProofRequest};
use mandate_control::{ControlError, Task};
use mandate_core::{AuditRecord, CallerData, DecisionRecord, Effect, Scope, Subject};

/// How long an exchange waits for the user's approval of a task's intent.
const INTENT_WAIT: std::time::Duration = std::time::Duration::from_secs(120);
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// Largest token request body accepted.
pub(crate) const MAX_FORM_BYTES: usize = 64 * 1024;

/// A parsed token request: form parameters (each at most once, RFC 6749
/// §3.2) and the `DPoP` header.
#[derive(Debug, Clone, Default)]
pub struct Exchange {
    params: BTreeMap<String, String>,
    dpop: Option<String>,
}

impl Exchange {
    /// Parses an `application/x-www-form-urlencoded` body. A repeated
    /// parameter or more than one DPoP header is `invalid_request`.
    pub fn parse(body: &[u8], dpop_headers: &[&str]) -> Result<Self, Refusal> {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(body)
            .map_err(|_| Refusal::request("the request body is not form-encoded"))?;
        let mut params = BTreeMap::new();
        for (k, v) in pairs {
            if params.insert(k, v).is_some() {
                return Err(Refusal::request("a request parameter is repeated"));
            }
        }
        let dpop = match dpop_headers {
            [] => None,
            [one] => Some((*one).to_owned()),
            _ => {
                return Err(Refusal::new(
                    ErrorCode::InvalidDpopProof,
                    "exactly one DPoP proof is allowed",
                    "several DPoP headers",
                ));
            }
        };
        Ok(Self { params, dpop })
    }

    /// A non-empty parameter.
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.params
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }
}

/// A successful exchange (RFC 8693 §2.2.1).
#[derive(Debug, Clone)]
pub struct Issued {
    /// The composite token.
    pub access_token: String,
    /// `Bearer`, or `DPoP` for a sender-constrained token.
    pub token_type: &'static str,
    /// Seconds until it expires.
    pub expires_in: u64,
    /// The scope it carries.
    pub scope: String,
    /// The task intent's grants in force (RFC 9396 §7), when the request
    /// declared one.
    pub authorization_details: Option<Value>,
}

impl Issued {
    /// The response body.
    pub fn to_json(&self) -> Value {
        let mut out = json!({
            "access_token": self.access_token,
            "issued_token_type": token_type::ACCESS_TOKEN,
            "token_type": self.token_type,
            "expires_in": self.expires_in,
            "scope": self.scope,
        });
        if let (Some(details), Some(obj)) = (&self.authorization_details, out.as_object_mut()) {
            obj.insert("authorization_details".into(), details.clone());
        }
        out
    }
}

/// What the exchange learnt, for the audit record.
#[derive(Debug, Default)]
pub(crate) struct Trail {
    client: Option<String>,
    sub: Option<String>,
    /// The issued chain, or what was known of it.
    act: Vec<String>,
    scope: Option<String>,
    requested_scope: Option<String>,
    task_id: Option<String>,
    build: Option<String>,
    sid: Option<String>,
    jti: Option<String>,
    resource: Option<String>,
    exp: Option<u64>,
    dpop: bool,
    subject_issuer: Option<String>,
    /// The hash of the task's declared intent, if the request declared one.
    intent: Option<String>,
}

/// The verified user side of the exchange.
struct SubjectSide {
    principal: Principal,
    /// Groups from the IdP (empty for a composite subject token).
    groups: Vec<String>,
    /// `may_act` claim, when present.
    may_act: Option<Value>,
    /// Whether the subject token is one of the broker's own (sub-delegation).
    composite: bool,
}

/// `["a", "b"]` → `{"sub": "a", "act": {"sub": "b"}}`.
pub(crate) fn act_claim(chain: &[String]) -> Option<Value> {
    let mut out: Option<Value> = None;
    for actor in chain.iter().rev() {
        let mut obj = serde_json::Map::new();
        obj.insert("sub".into(), Value::String(actor.clone()));
        if let Some(inner) = out.take() {
            obj.insert("act".into(), inner);
        }
        out = Some(Value::Object(obj));
    }
    out
}

fn invalid(code: ErrorCode, description: &'static str, reason: impl Into<String>) -> Refusal {
    Refusal::new(code, description, reason)
}

impl Broker {
    /// Runs one exchange and records it (allowed or refused) in the audit
    /// log. An allowed exchange whose record cannot be written issues
    /// nothing.
    pub async fn exchange(&self, req: &Exchange) -> Result<Issued, Refusal> {
        // Keys rotated by `mandate keys rotate` are picked up here.
        if let Err(e) = self.reload_keys_if_changed() {
            tracing::error!(error = %e, "cannot reload broker keys; keeping the current ones");
        }
        let mut trail = Trail::default();
        let result = self.run(req, &mut trail).await;
        match result {
            Ok(issued) => {
                if let Err(e) = self.record(&trail, None).await {
                    tracing::error!(error = %e, "audit store unavailable; token not issued");
                    return Err(Refusal::audit_unavailable());
                }
                tracing::info!(client = ?trail.client, sub = ?trail.sub, task = ?trail.task_id, "token exchanged");
                Ok(issued)
            }
            Err(refusal) => {
                tracing::info!(client = ?trail.client, error = %refusal, "token exchange refused");
                if let Err(e) = self.record(&trail, Some(&refusal)).await {
                    tracing::error!(error = %e, "could not record a refused exchange");
                }
                Err(refusal)
            }
        }
    }

    async fn run(&self, req: &Exchange, trail: &mut Trail) -> Result<Issued, Refusal> {
        // 1. The grant.
        match req.get("grant_type") {
            Some(GRANT_TOKEN_EXCHANGE) => {}
            Some(_) => {
                return Err(invalid(
                    ErrorCode::UnsupportedGrantType,
                    "only the token-exchange grant is supported",
                    "unsupported grant_type",
                ));
            }
            None => return Err(Refusal::request("grant_type is missing")),
        }

        // 2. Client authentication, always (RFC 8693 §5).
        let client = self
            .authenticate_client(
                req.get("client_assertion_type"),
                req.get("client_assertion"),
                req.get("client_id"),
            )
            .await?;
        trail.client = Some(client.id.clone());
        let agent = self
            .cfg
            .agents
            .get(&client.id)
            .ok_or_else(|| Refusal::client("client is not a registered agent"))?;

        // 3. What is asked for: token type and target.
        if let Some(t) = req.get("requested_token_type")
            && t != token_type::ACCESS_TOKEN
            && t != token_type::JWT
        {
            return Err(Refusal::request(
                "only access tokens (JWT) can be requested",
            ));
        }
        let resource = self.target(req.get("resource"), req.get("audience"))?;
        trail.resource = Some(resource.clone());
        trail.requested_scope = req.get("scope").map(str::to_owned);

        // 4. Sender constraint (RFC 9449): the proof's key becomes cnf.jkt.
        let jkt = self.proof_of_possession(req, agent.dpop)?;
        trail.dpop = jkt.is_some();

        // 5. The subject: the user (or a parent composite token).
        let subject = self
            .verify_subject(
                req.get("subject_token"),
                req.get("subject_token_type"),
                &resource,
                trail,
            )
            .await?;
        trail.sub = Some(subject.principal.sub().to_owned());
        // The chain this token would carry: the agent, then earlier actors
        // (on the audit record of a refusal below too).
        let mut chain = Vec::with_capacity(subject.principal.act().len().saturating_add(1));
        chain.push(client.id.clone());
        chain.extend(subject.principal.act().iter().cloned());
        trail.act = chain.clone();

        // 6. The actor: the agent's own workload identity, required.
        self.verify_actor(&client, req.get("actor_token"), req.get("actor_token_type"))
            .await?;

        // 7. May this agent act for this subject?
        self.authorise_delegation(&client, &subject)?;

        // 8. The build: registered for this agent, or refused.
        let build = req.get("build").ok_or_else(|| {
            Refusal::request("build is missing: the agent's build hash is required")
        })?;
        trail.build = Some(build.to_owned());
        if !agent.builds.contains_key(build) {
            return Err(invalid(
                ErrorCode::UnauthorizedClient,
                "this build of the agent is not registered",
                format!("unregistered build {build:.80}"),
            ));
        }

        // 9. The task: started here if new, and live.
        let task = self.task_for(req, &client, &subject, trail).await?;
        let template = self.cfg.templates.get(&task.template).ok_or_else(|| {
            invalid(
                ErrorCode::InvalidRequest,
                "the task's template is no longer configured",
                format!("task {} has unknown template {}", task.id, task.template),
            )
        })?;
        if !template.agents.contains(&client.id) {
            return Err(invalid(
                ErrorCode::UnauthorizedClient,
                "this agent may not work on this task",
                format!("template {} does not list {}", task.template, client.id),
            ));
        }

        // 10. Scope: requested ∩ user ∩ agent ceiling ∩ task template.
        let requested = req.get("scope").map(Scope::parse);
        let subject_bound = if subject.composite {
            subject.principal.scope().clone()
        } else {
            self.cfg.entitlements.of(
                subject.principal.sub(),
                subject.groups.iter().map(String::as_str),
            )
        };
        // The agent's configured ceiling, narrowed by one approved through
        // the change gate (as the gateway applies it on every call).
        let ceiling = match self.control.ceiling(&client.id) {
            Some(approved) => agent.scope_ceiling.intersect(&approved),
            None => agent.scope_ceiling.clone(),
        };
        let scope = reduce_scope(
            requested.as_ref(),
            Bounds {
                subject: &subject_bound,
                ceiling: &ceiling,
                template: &template.scope,
            },
            subject.composite,
        )
        .map_err(|p| match p {
            ScopeProblem::Empty => invalid(
                ErrorCode::InvalidScope,
                "no scope can be granted: the request, the user's entitlements, the agent's ceiling and the task do not overlap",
                "empty scope intersection",
            ),
            ScopeProblem::Widening(entry) => invalid(
                ErrorCode::InvalidScope,
                "a delegated token can only be narrowed",
                format!("sub-delegation asked for {entry:.80}, which the parent token does not carry"),
            ),
        })?;
        trail.scope = Some(scope.to_oauth_string());

        // 11. Lifetime: the task deadline, the subject token, the maximum.
        let now = self.now_secs();
        let deadline = u64::try_from(task.deadline_ms / 1000).unwrap_or(0);
        let exp = deadline
            .min(subject.principal.exp())
            .min(now.saturating_add(self.cfg.max_token_ttl.as_secs()));
        if exp <= now {
            return Err(Refusal::request(
                "the subject token or the task expires too soon to issue a token",
            ));
        }
        trail.exp = Some(exp);

        // 12. The token: one session per token (F-04), bound to the task.
        let sid = uuid::Uuid::new_v4().to_string();
        let jti = uuid::Uuid::new_v4().to_string();
        trail.sid = Some(sid.clone());
        trail.jti = Some(jti.clone());
        // The token about to be issued, as the kill switches see it.
        let issued = CallerData {
            iss: self.cfg.issuer.clone(),
            sub: subject.principal.sub().to_owned(),
            act: chain.clone(),
            scope: scope.clone(),
            task_id: Some(task.id.clone()),
            build: Some(build.to_owned()),
            sid: Some(sid.clone()),
            jti: Some(jti.clone()),
        };
        // Kill switches apply here too: no token for a revoked user, agent
        // (anywhere in the chain), build or task.
        if let Some(r) = self.control.check(&issued.caller()) {
            return Err(invalid(
                ErrorCode::InvalidRequest,
                "delegation is revoked for this user, agent, build or task",
                format!("revoked: {} {}", r.kind, r.value),
            ));
        }
        // A shared control store not re-read lately could miss a
        // revocation made on another replica: mint nothing.
        if let Some(age) = self.control.stale() {
            return Err(Refusal::server(format!(
                "the shared control store was last read {} s ago",
                age.as_secs()
            )));
        }
        // 13. The task's intent (RFC 9396 `authorization_details`),
        //     declared before the agent has read anything: judged grant by
        //     grant, what is not granted outright put to the user as one
        //     approval, which this request waits for.
        let intent = match req.get("authorization_details") {
            Some(text) => Some(
                self.declare_intent(text, &issued, &client.id, trail)
                    .await?,
            ),
            None => None,
        };
        let mut claims = json!({
            "iss": self.cfg.issuer,
            "aud": resource,
            "sub": issued.sub,
            "act": act_claim(&chain),
            "scope": scope.to_oauth_string(),
            "task_id": task.id,
            "build": build,
            "sid": sid,
            "jti": jti,
            "iat": now,
            "exp": exp,
            "client_id": client.id,
        });
        if let (Some(jkt), Some(obj)) = (&jkt, claims.as_object_mut()) {
            obj.insert("cnf".into(), json!({ "jkt": jkt }));
        }
        let keys = self.keys();
        let access_token = keys.signing().sign(&claims).map_err(|e| {
            invalid(
                ErrorCode::ServerError,
                "the token could not be signed",
                e.to_string(),
            )
        })?;
        Ok(Issued {
            access_token,
            token_type: if jkt.is_some() { "DPoP" } else { "Bearer" },
            expires_in: exp.saturating_sub(now),
            scope: scope.to_oauth_string(),
            authorization_details: intent.map(|i| i.granted().to_json()),
        })
    }

    /// Judges each grant of `intent` for `token`'s task (the policies'
    /// answer while declaring: granted, pending the user, refused) and
    /// records the intent with one intent approval for whatever is
    /// pending, decidable until `deadline_ms`. Recording the same intent
    /// again returns the record unchanged.
    /// With several `tokens` (a task started for any of its template's
    /// agents), each grant gets the strictest of their answers.
    pub(crate) async fn record_intent(
        &self,
        intent: &mandate_intent::Intent,
        tokens: &[CallerData],
        by: &str,
        deadline_ms: i64,
    ) -> Result<mandate_control::TaskIntent, ControlError> {
        use mandate_control::{GrantStatus, IntentKey};
        let Some(token) = tokens.first() else {
            return Err(ControlError::Invalid(
                "no caller to judge the intent for".into(),
            ));
        };
        let strictness = |s: GrantStatus| match s {
            GrantStatus::Granted => 0,
            GrantStatus::Pending => 1,
            GrantStatus::Refused => 2,
        };
        let statuses: Vec<GrantStatus> = intent
            .grants()
            .iter()
            .map(|g| match self.judge.get() {
                Some(judge) => tokens
                    .iter()
                    .map(|t| judge.judge(g, &t.caller()))
                    .max_by_key(|s| strictness(*s))
                    .unwrap_or(GrantStatus::Refused),
                None => GrantStatus::Pending,
            })
            .collect();
        let key = IntentKey::new(
            &self.cfg.issuer,
            &token.sub,
            token.task_id.clone().unwrap_or_default(),
        );
        self.control
            .record_intent(&key, intent, &statuses, by, deadline_ms)
            .await
    }

    /// Records the task's intent: each grant judged (granted outright,
    /// pending the user's approval, refused); if any is pending, one intent
    /// approval, which this exchange waits for (until it is decided or its
    /// deadline passes: undecided grants are then refused). A task's intent
    /// is declared once; a later exchange for the task must send the same.
    async fn declare_intent(
        &self,
        text: &str,
        token: &CallerData,
        client: &str,
        trail: &mut Trail,
    ) -> Result<mandate_control::TaskIntent, Refusal> {
        let bad = |reason: String| {
            invalid(
                ErrorCode::InvalidAuthorizationDetails,
                "authorization_details are not a valid intent (docs/INTENT.md)",
                reason,
            )
        };
        let intent = mandate_intent::Intent::parse_str(text).map_err(|e| bad(e.to_string()))?;
        let key = mandate_control::IntentKey::new(
            &self.cfg.issuer,
            &token.sub,
            token.task_id.clone().unwrap_or_default(),
        );
        // The exchange waits this long for the user; an intent recorded
        // earlier (`mandate task start --intent`) keeps its own deadline.
        let wait_until = self
            .clock
            .now_ms()
            .saturating_add(i64::try_from(INTENT_WAIT.as_millis()).unwrap_or(i64::MAX));
        let mut current = match self
            .record_intent(&intent, std::slice::from_ref(token), client, wait_until)
            .await
        {
            Ok(t) => t,
            Err(ControlError::Conflict(m)) => {
                return Err(bad(format!("the task's intent is already declared: {m}")));
            }
            Err(e) => return Err(Refusal::server(e.to_string())),
        };
        trail.intent = Some(current.intent_hash.clone());
        // Wait for the user's one decision on what was not granted outright.
        while current.approval == Some(mandate_control::ApprovalStatus::Pending) {
            let now = self.clock.now_ms();
            if now >= wait_until && now < current.deadline_ms {
                return Err(invalid(
                    ErrorCode::InvalidAuthorizationDetails,
                    "the task's intent is waiting for the user's approval: retry once it is decided",
                    "intent approval still pending",
                ));
            }
            if now >= current.deadline_ms {
                if let Some(id) = &current.approval_id {
                    let _ = self
                        .control
                        .close_intent_approval(id, mandate_control::ApprovalStatus::Expired)
                        .await;
                }
            } else {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            current = match self.control.intent(&key).await {
                Ok(Some(t)) => t,
                _ => return Err(Refusal::server("the task's intent could not be read back")),
            };
        }
        Ok(current)
    }

    /// RFC 8707 `resource` / RFC 8693 `audience` → the one resource the
    /// token is for.
    fn target(&self, resource: Option<&str>, audience: Option<&str>) -> Result<String, Refusal> {
        let wanted = match (resource, audience) {
            (Some(r), Some(a)) if r != a => {
                return Err(invalid(
                    ErrorCode::InvalidTarget,
                    "resource and audience name different targets",
                    "resource != audience",
                ));
            }
            (Some(r), _) => r,
            (None, Some(a)) => a,
            (None, None) => {
                return self.cfg.resources.first().cloned().ok_or_else(|| {
                    invalid(
                        ErrorCode::InvalidTarget,
                        "no resource is served",
                        "no resources",
                    )
                });
            }
        };
        if self.cfg.resources.iter().any(|r| r == wanted) {
            Ok(wanted.to_owned())
        } else {
            Err(invalid(
                ErrorCode::InvalidTarget,
                "the broker does not issue tokens for this resource",
                format!("unserved target {wanted:.120}"),
            ))
        }
    }

    fn proof_of_possession(
        &self,
        req: &Exchange,
        required: bool,
    ) -> Result<Option<String>, Refusal> {
        let Some(proof) = req.dpop.as_deref() else {
            if required {
                return Err(invalid(
                    ErrorCode::InvalidDpopProof,
                    "this agent's tokens are sender-constrained: send a DPoP proof",
                    "DPoP required for this agent",
                ));
            }
            return Ok(None);
        };
        let endpoint = self.cfg.token_endpoint();
        match self.dpop.verify(
            proof,
            ProofRequest {
                method: "POST",
                url: &endpoint,
                access_token: None,
                jkt: None,
            },
        ) {
            Ok(jkt) => Ok(Some(jkt)),
            Err(DpopError::UseNonce) => {
                let mut r = invalid(
                    ErrorCode::UseDpopNonce,
                    "a DPoP nonce is required",
                    "DPoP proof without a current nonce",
                );
                r.dpop_nonce = Some(self.dpop.nonce());
                Err(r)
            }
            Err(e) => Err(invalid(
                ErrorCode::InvalidDpopProof,
                "the DPoP proof is invalid",
                e.to_string(),
            )),
        }
    }

    async fn verify_subject(
        &self,
        token: Option<&str>,
        token_type: Option<&str>,
        resource: &str,
        trail: &mut Trail,
    ) -> Result<SubjectSide, Refusal> {
        let unacceptable = |reason: String| {
            invalid(
                ErrorCode::InvalidRequest,
                "the subject token is missing or unacceptable",
                reason,
            )
        };
        let token = token.ok_or_else(|| unacceptable("no subject_token".into()))?;
        match token_type {
            Some(token_type::ID_TOKEN | token_type::ACCESS_TOKEN | token_type::JWT) => {}
            _ => {
                return Err(unacceptable(
                    "subject_token_type must name an ID token, an access token or a JWT".into(),
                ));
            }
        }
        let peek = peek_claims(token).ok_or_else(|| unacceptable("not a JWT".into()))?;
        let iss = peek
            .get("iss")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        trail.subject_issuer = Some(iss.chars().take(200).collect());
        if iss == self.cfg.issuer {
            // A composite token of ours: sub-delegation.
            let own = self
                .own
                .get(resource)
                .ok_or_else(|| unacceptable("no verifier for this resource".into()))?;
            let principal = own
                .verify(token)
                .await
                .map_err(|e| unacceptable(format!("composite subject token refused: {e}")))?;
            if let Some(r) = self.control.check(&principal.caller()) {
                return Err(unacceptable(format!(
                    "the subject token is revoked ({} {})",
                    r.kind, r.value
                )));
            }
            return Ok(SubjectSide {
                principal,
                groups: Vec::new(),
                may_act: None,
                composite: true,
            });
        }
        let (cfg, authn) = self
            .subjects
            .get(&iss)
            .ok_or_else(|| unacceptable("the subject token's issuer is not trusted".into()))?;
        let (principal, claims) = authn
            .verify_with_claims(token)
            .await
            .map_err(|e| unacceptable(format!("subject token refused: {e}")))?;
        // A sender-constrained user token proves nothing in the hands of
        // the agent, which does not hold the user's key.
        if claims.contains_key("cnf") {
            return Err(unacceptable(
                "the subject token is sender-constrained (cnf)".into(),
            ));
        }
        // A user's token names no actors: a chain in it was never checked
        // against any agent's delegation rights, so it is not copied on.
        if !principal.act().is_empty() {
            return Err(unacceptable(
                "the subject token already names an actor (act); only the broker's own tokens delegate further".into(),
            ));
        }
        let groups = match claims.get(&cfg.groups_claim) {
            None => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
            Some(Value::String(s)) => s.split_whitespace().map(str::to_owned).collect(),
            Some(_) => return Err(unacceptable("the groups claim is malformed".into())),
        };
        Ok(SubjectSide {
            principal,
            groups,
            may_act: claims.get("may_act").cloned(),
            composite: false,
        })
    }

    fn authorise_delegation(&self, client: &Client, subject: &SubjectSide) -> Result<(), Refusal> {
        let prior = &subject.principal.act();
        if prior.iter().any(|a| a == &client.id) {
            return Err(invalid(
                ErrorCode::InvalidRequest,
                "an agent cannot appear twice in a delegation chain",
                format!("{} is already in the chain", client.id),
            ));
        }
        if prior.len().saturating_add(1) > self.cfg.max_delegation_depth {
            return Err(invalid(
                ErrorCode::InvalidRequest,
                "the delegation chain would be too deep",
                format!(
                    "chain of {} actors exceeds max_delegation_depth {}",
                    prior.len().saturating_add(1),
                    self.cfg.max_delegation_depth
                ),
            ));
        }
        if subject.composite {
            // Sub-delegation: the current actor of the parent token must
            // have been registered as allowed to hand work to this agent.
            let parent = prior
                .first()
                .ok_or_else(|| Refusal::request("the subject token has no actor"))?;
            let allowed = self
                .cfg
                .agents
                .get(parent)
                .is_some_and(|p| p.delegate_to.contains(&client.id));
            if !allowed {
                return Err(invalid(
                    ErrorCode::UnauthorizedClient,
                    "this agent may not receive work delegated by the subject token's agent",
                    format!("{parent} may not delegate to {}", client.id),
                ));
            }
            return Ok(());
        }
        // may_act (RFC 8693 §4.4): when the user's token names who may act,
        // nobody else may.
        if let Some(may_act) = &subject.may_act {
            let named = may_act.get("sub").and_then(Value::as_str);
            if named != Some(client.id.as_str()) {
                return Err(invalid(
                    ErrorCode::InvalidRequest,
                    "the subject token does not allow this agent to act",
                    format!("may_act does not name {}", client.id),
                ));
            }
        }
        let agent = self
            .cfg
            .agents
            .get(&client.id)
            .ok_or_else(|| Refusal::client("unknown agent"))?;
        let sub = subject.principal.sub();
        let allowed = agent.users.contains("*")
            || agent.users.contains(sub)
            || subject.groups.iter().any(|g| agent.groups.contains(g));
        if !allowed {
            return Err(invalid(
                ErrorCode::UnauthorizedClient,
                "this user may not delegate to this agent",
                format!("{sub:.80} may not delegate to {}", client.id),
            ));
        }
        Ok(())
    }

    async fn task_for(
        &self,
        req: &Exchange,
        client: &Client,
        subject: &SubjectSide,
        trail: &mut Trail,
    ) -> Result<Task, Refusal> {
        let id = match (
            req.get("task_id"),
            subject.principal.task_id(),
            subject.composite,
        ) {
            (Some(asked), Some(parent), true) if asked != parent => {
                return Err(Refusal::request(
                    "a delegated token stays on its parent's task",
                ));
            }
            (_, Some(parent), true) => parent.to_owned(),
            (Some(asked), _, _) => asked.to_owned(),
            (None, _, _) => return Err(Refusal::request("task_id is missing")),
        };
        trail.task_id = Some(id.chars().take(128).collect());
        let existing = self
            .control
            .task(&id)
            .await
            .map_err(|e| store_failure(&e.to_string()))?;
        let now_ms = self.clock.now_ms();
        let task = match existing {
            Some(task) => task,
            None if subject.composite => {
                return Err(Refusal::request("the parent token's task does not exist"));
            }
            None => {
                // Implicit start on first exchange.
                let template = match req.get("task_template") {
                    Some(t) => t.to_owned(),
                    None => {
                        let mut fitting = self
                            .cfg
                            .templates
                            .iter()
                            .filter(|(_, t)| t.agents.contains(&client.id));
                        match (fitting.next(), fitting.next()) {
                            (Some((name, _)), None) => name.clone(),
                            _ => {
                                return Err(Refusal::request(
                                    "task_template is required to start this task",
                                ));
                            }
                        }
                    }
                };
                let t = self.cfg.templates.get(&template).ok_or_else(|| {
                    Refusal::request("task_template names no configured template")
                })?;
                // Nothing is started for an agent the template does not list.
                if !t.agents.contains(&client.id) {
                    return Err(invalid(
                        ErrorCode::UnauthorizedClient,
                        "this agent may not work on this task",
                        format!("template {template} does not list {}", client.id),
                    ));
                }
                let duration_ms = i64::try_from(t.max_duration.as_millis()).unwrap_or(i64::MAX);
                let deadline = now_ms.saturating_add(duration_ms);
                let by = format!("broker:{}", client.id);
                let started = self
                    .control
                    .start_task(&id, &template, subject.principal.sub(), deadline, &by)
                    .await;
                match started {
                    Ok(task) => task,
                    // Started concurrently by another exchange: use it.
                    Err(ControlError::Conflict(_)) => self
                        .control
                        .task(&id)
                        .await
                        .map_err(|e| store_failure(&e.to_string()))?
                        .ok_or_else(|| store_failure("task vanished"))?,
                    Err(ControlError::Invalid(_)) => {
                        return Err(Refusal::request(
                            "task_id must be 1-128 printable characters without spaces",
                        ));
                    }
                    Err(e) => return Err(store_failure(&e.to_string())),
                }
            }
        };
        if task.sub != subject.principal.sub() {
            return Err(invalid(
                ErrorCode::InvalidRequest,
                "the task belongs to another user",
                format!("task {} is for {}", task.id, task.sub),
            ));
        }
        if let Some(t) = req.get("task_template")
            && t != task.template
        {
            return Err(Refusal::request(
                "the task was started from another template",
            ));
        }
        if !task.is_live(now_ms) {
            return Err(invalid(
                ErrorCode::InvalidRequest,
                "the task is no longer active",
                format!(
                    "task {} is {} (deadline {})",
                    task.id,
                    task.status.as_str(),
                    task.deadline_ms
                ),
            ));
        }
        Ok(task)
    }

    /// Appends the exchange's audit record (durable before it returns).
    async fn record(&self, trail: &Trail, refusal: Option<&Refusal>) -> Result<(), String> {
        let (effect, reason) = match refusal {
            None => (Effect::Allow, "token issued".to_owned()),
            Some(r) => (Effect::Deny, format!("{}: {}", r.code.as_str(), r.reason)),
        };
        let decision = DecisionRecord::control(effect, "broker", reason);
        let subject = Subject {
            iss: trail.subject_issuer.clone().unwrap_or_default(),
            sub: trail.sub.clone().unwrap_or_default(),
            act: trail.act.clone(),
            scope: trail.scope.clone().unwrap_or_default(),
            task_id: trail.task_id.clone(),
            build: trail.build.clone(),
            session: trail
                .sid
                .as_ref()
                .map(|s| format!("sid:{s}"))
                .unwrap_or_else(|| "broker".into()),
        };
        let detail = json!({
            "client_id": trail.client,
            "subject_issuer": trail.subject_issuer,
            "resource": trail.resource,
            "requested_scope": trail.requested_scope,
            "prior_actors": trail.act.get(1..).unwrap_or_default(),
            "jti": trail.jti,
            "exp": trail.exp,
            "dpop": trail.dpop,
            "intent": trail.intent,
            "error": refusal.map(|r| r.code.as_str()),
        });
        let record = AuditRecord::control(
            self.clock.now_ms(),
            decision,
            subject,
            "broker/token_exchange",
            &detail,
        );
        self.audit
            .append(record)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

fn store_failure(reason: &str) -> Refusal {
    tracing::error!(reason, "control store failure during token exchange");
    invalid(
        ErrorCode::ServerError,
        "the broker cannot process the request right now",
        reason.to_owned(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn act_chains_nest_outermost_first() {
        let v = act_claim(&["b".into(), "a".into()]);
        assert_eq!(v, Some(json!({"sub": "b", "act": {"sub": "a"}})));
        assert_eq!(act_claim(&[]), None);
    }

    #[test]
    fn repeated_parameters_and_several_proofs_are_refused() {
        let r = Exchange::parse(b"scope=a&scope=b", &[]);
        assert!(matches!(r, Err(ref e) if e.code == ErrorCode::InvalidRequest));
        let r = Exchange::parse(b"scope=a", &["x", "y"]);
        assert!(matches!(r, Err(ref e) if e.code == ErrorCode::InvalidDpopProof));
        let ok = Exchange::parse(b"scope=a+b&empty=", &["p"]);
        assert!(ok.is_ok());
        if let Ok(ok) = ok {
            assert_eq!(ok.get("scope"), Some("a b"));
            assert_eq!(ok.get("empty"), None);
        }
    }
}
