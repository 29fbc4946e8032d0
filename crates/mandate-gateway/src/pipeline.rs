//! The policy enforcement point: one readable pipeline per `tools/call`.
//!
//! ```text
//! Principal ─► resolve tool ─► expiry, revocation, class, scope, argument schema
//!   ─► decide (PDP) ─► hold? ─► record decision (durable) ─► Permitted
//!   ─► forward ─► redact ─► record outcome
//! ```
//!
//! The order is kept by types, not only by the order of statements: the
//! forwarder (`upstream.rs`, private to this crate) takes only a
//! [`Permitted<ToolCall>`] (`permit.rs`), which this module builds from
//! the three proofs of the steps before it: the verified
//! `mandate_authn::Principal`, an `Allow` `mandate_policy::Decision` made
//! for exactly this caller and call, and the `mandate_audit::Appended`
//! receipt of its durable record (plus, when the decision asks for a
//! person, the consumed approval). What is forwarded is the permitted
//! call's own arguments: the ones that were hashed, shown to the approver
//! and recorded.

use crate::approvals::{Approved, HoldOutcome};
use crate::catalogue::Resolved;
use crate::error::{DenyCategory, denial_error, unknown_tool_error, upstream_error};
use crate::metrics::{Phase, ToolLabel};
use crate::permit::{Permitted, Relay};
use crate::upstream::META_CORRELATION;
use mandate_authn::Principal;
use mandate_core::{AuditRecord, CorrelationId, Obligation, ToolCall};
use mandate_policy::{Decision, DecisionRequest, SessionFacts};
use rmcp::model::{CallToolRequestParams, CallToolResponse, ProgressToken};
use rmcp::{ErrorData, Peer, RoleServer};
use std::sync::Arc;
use tracing::Instrument as _;

/// Result `_meta` key carrying the decision id.
pub const META_DECISION: &str = "io.mandate/decision_id";
/// Result `_meta` key carrying the provenance labels of the result.
pub const META_LABELS: &str = "io.mandate/labels";

/// The reason code of a call to a tool no upstream serves (as the agent's
/// error says it: the tool is unknown, not refused).
const UNKNOWN_TOOL_CODE: &str = "unknown_tool";

/// Everything the pipeline needs to know about one incoming call.
pub struct Incoming {
    /// The verified subject.
    pub principal: Arc<Principal>,
    /// The call as the client sent it.
    pub params: CallToolRequestParams,
    /// The calling client, for relaying the upstream's progress and
    /// elicitations of this call (absent in stateless requests).
    pub client: Option<Peer<RoleServer>>,
    /// The client's progress token, if it asked for progress.
    pub progress: Option<ProgressToken>,
    /// Cancelled when the client cancels the request or goes away (a held
    /// call is then withdrawn).
    pub cancel: tokio_util::sync::CancellationToken,
    /// Told the approval id once the call is durably held (the handler
    /// then answers with an MCP task instead of keeping the request open).
    pub on_hold: Option<tokio::sync::oneshot::Sender<String>>,
    /// Identifies the call end to end (audit records, `_meta`, traces).
    pub correlation: CorrelationId,
    /// The trace context the caller sent, if any.
    pub trace: crate::trace::CallerTrace,
    /// The call's `mandate.tool_call` span ([`crate::trace::tool_call_span`]).
    pub span: tracing::Span,
}

impl crate::Gateway {
    /// Runs one `tools/call` through the pipeline.
    pub async fn call_tool(&self, incoming: Incoming) -> Result<CallToolResponse, ErrorData> {
        let Incoming {
            principal,
            params,
            client,
            progress,
            cancel,
            on_hold,
            correlation,
            trace,
            span,
        } = incoming;
        // The phases are spans of their own, children of the call's span
        // (each ends when dropped); they are exported only with telemetry on.
        let decide_span =
            tracing::debug_span!(target: crate::trace::TARGET, parent: &span, "decide");
        let exposed = params.name.to_string();
        let relay = Relay {
            input_responses: params.input_responses,
            request_state: params.request_state,
        };
        let args = params.arguments.unwrap_or_default();
        let subject = principal.subject();
        // What the record keeps of the arguments (the hash always stays).
        let kept_args = self.cfg.redaction.apply(&exposed, &args);
        let record = |decision: &Decision, args_hash: &str, facts: &crate::intent::CallFacts| {
            let mut r = AuditRecord::decision(
                self.clock.now_ms(),
                decision.record().clone(),
                correlation.clone(),
                subject.clone(),
                exposed.as_str(),
                args_hash,
            );
            r.args.clone_from(&kept_args);
            r.grant = (!facts.intent.grant.is_empty()).then(|| facts.intent.grant.clone());
            r.sources.clone_from(&facts.sources);
            r
        };
        let no_facts = crate::intent::CallFacts::default();

        // 0. Bound the calls one subject has in flight (held ones included),
        //    so one token cannot tie up the gateway.
        let Some(_slot) = self.usage.try_acquire(principal.subject_key()) else {
            self.metrics.concurrency_refusals.inc();
            let decision = Decision::deny(
                format!(
                    "more than {} calls of this subject in flight",
                    self.cfg.limits.max_concurrent_calls_per_subject
                ),
                self.policy.policy_hash(),
            );
            self.metrics.count_decision(
                &decision,
                DenyCategory::TooManyCalls.code(),
                &self.metrics.tool_seen(&exposed),
            );
            note_decision(&span, &decision, DenyCategory::TooManyCalls.code());
            let hash = mandate_core::canonical_args_hash(&args);
            if self
                .audit
                .append(record(&decision, &hash, &no_facts))
                .await
                .is_err()
            {
                self.metrics.audit_failures.inc();
                tracing::error!("audit append failed for a concurrency refusal");
            }
            return Err(denial_error(
                &exposed,
                &decision,
                &correlation,
                &DenyCategory::TooManyCalls,
            ));
        };

        // 1. Resolve the tool. An unknown tool is audited and answered as
        //    "unknown", which the agent can tell apart from a denial.
        let resolved = self.resolve(&exposed).await;
        let (name, upstream, class, tool_def) = match resolved {
            Resolved::Known {
                name,
                upstream,
                class,
                tool,
            } => (name, upstream, class, tool),
            Resolved::Unknown => {
                let decision = Decision::deny(
                    format!("unknown tool {exposed:?}"),
                    self.policy.policy_hash(),
                );
                let hash = mandate_core::canonical_args_hash(&args);
                self.metrics.count_decision(
                    &decision,
                    UNKNOWN_TOOL_CODE,
                    &self.metrics.unknown_tool(),
                );
                note_decision(&span, &decision, "unknown_tool");
                // Best effort: an unknown tool reaches nothing either way.
                if let Err(e) = self.audit.append(record(&decision, &hash, &no_facts)).await {
                    tracing::error!(error = %e, "audit append failed for unknown-tool deny");
                }
                return Err(unknown_tool_error(&exposed, &correlation));
            }
        };
        // An unclassified tool is denied below; its class here is only a
        // placeholder so the denial can be recorded with the argument hash.
        let call = ToolCall::new(name, class.unwrap_or(mandate_core::ToolClass::Read), args);
        // A served tool: its own label value while the bound allows.
        let tool = self.metrics.tool(&exposed);
        let decide_timer = self.metrics.time(Phase::Decide, &tool);

        // 2. Checks that need no policy: continuous verification (expiry is
        //    re-checked on every call, not once per session), configuration,
        //    scope, and the arguments against the tool's input schema.
        //    Validating before the policy engine means a malformed call is
        //    reported as such, and a human is never asked to approve a call
        //    the tool would reject. Without the upstream's catalogue there is
        //    nothing to validate against, so the call fails closed.
        let now = self.now_unix();
        let hash = || self.policy.policy_hash();
        let precheck = if principal.exp() <= now.cast_unsigned() {
            Some((
                Decision::deny("token expired", hash()),
                DenyCategory::TokenExpired,
            ))
        } else if let Some(r) = self.control.check(&principal.caller()) {
            Some((
                Decision::deny(
                    format!(
                        "{} {} was revoked by {} (revocation {}): {}",
                        r.kind, r.value, r.revoked_by, r.id, r.reason
                    ),
                    hash(),
                ),
                DenyCategory::Revoked,
            ))
        } else if let Some(age) = self.control.stale() {
            // Shared with other replicas and not re-read for a while: a
            // revocation made elsewhere since would be missed.
            Some((
                Decision::deny(
                    format!(
                        "the shared control store was last read {} s ago; revocations made since could be missed",
                        age.as_secs()
                    ),
                    hash(),
                ),
                DenyCategory::ControlUnavailable,
            ))
        } else if let Some(why) = self.policy_behind() {
            // Another replica put a policy set in force that this one does
            // not enforce (yet): deciding with the old one could permit
            // what the set in force forbids.
            Some((
                Decision::deny(
                    format!("this replica is not enforcing the policy set in force: {why}"),
                    hash(),
                ),
                DenyCategory::ControlUnavailable,
            ))
        } else if class.is_none() {
            Some((
                Decision::deny(
                    format!("tool {exposed} is not configured in any class (deny by default)"),
                    hash(),
                ),
                DenyCategory::NotConfigured,
            ))
        } else if !principal.scope().covers(&exposed) {
            Some((
                Decision::deny(format!("scope does not cover {exposed}"), hash()),
                DenyCategory::InsufficientScope,
            ))
        } else {
            match tool_def.as_ref() {
                None => Some((
                    Decision::deny("the upstream's tool catalogue is unavailable", hash()),
                    DenyCategory::UpstreamUnavailable,
                )),
                // Pinning is checked only for a call the cheap checks let
                // through (it may hash the tool and write a pin).
                Some(tool) => match self.check_tool(&principal, &exposed, tool).await {
                    Err((reason, category)) => Some((Decision::deny(reason, hash()), category)),
                    Ok(()) => match mandate_policy::check_args_bounds(&call.args)
                        .and_then(|()| self.validate_args(&exposed, tool, &call.args))
                    {
                        Ok(()) => None,
                        Err(msg) => Some((
                            Decision::deny(
                                format!("arguments do not match the input schema: {msg}"),
                                hash(),
                            ),
                            DenyCategory::InvalidArguments(msg),
                        )),
                    },
                },
            }
        };

        // 3. Decide (the policy engine), unless a check above already denied.
        //    Deciding and counting the call against its session's and task's
        //    budgets happen under the session's lock, so concurrent calls of
        //    one session cannot all see the last unit of a budget.
        //    The intent and provenance facts come first: which grant of the
        //    task's intent covers the call (taking one of its uses), and
        //    where each argument's values came from.
        // With replicas: what the session did elsewhere first (its calls
        //    count, what it read taints); unknown means deny.
        let precheck = match precheck {
            None => self.catch_up(&principal, &correlation).await.err().map(|e| {
                tracing::error!(error = %e, "cannot read the shared audit log; denying");
                (
                    Decision::deny(
                        "the shared audit log cannot be read: what this session did on other replicas is unknown",
                        hash(),
                    ),
                    DenyCategory::AuditUnavailable,
                )
            }),
            denied => denied,
        };
        let mut facts = match precheck {
            Some(_) => crate::intent::CallFacts::default(),
            None => self.call_facts(&principal, &call, &exposed).await,
        };
        let mut basis = None;
        let (mut decision, mut category) = match precheck {
            Some(denied) => denied,
            None => {
                let (d, b) = self.decide_and_count(&principal, &call, now, false, &facts);
                basis = b;
                let category = category_of(&d);
                (d, category)
            }
        };
        drop(decide_timer);

        drop(decide_span);

        // 4. Hold for a human: the call waits (durably recorded as held)
        //    until an approver decides, the deadline passes or the client
        //    goes away; only an approval releases it, re-verified now.
        let mut approval = None;
        if decision.requires_approval() {
            let held = Held {
                principal: &principal,
                call: &call,
                decision: &decision,
                correlation: &correlation,
                held_record: record(&decision, &call.args_hash, &facts),
                facts: &facts,
                tool: &tool,
            };
            let hold_span =
                tracing::debug_span!(target: crate::trace::TARGET, parent: &span, "hold");
            let held = {
                let _timer = self.metrics.time(Phase::Hold, &tool);
                self.hold_for_approval(held, cancel, on_hold, client.clone(), progress.clone())
                    .instrument(hold_span)
                    .await
            };
            (decision, category) = match held {
                Ok((released, approved, b)) => {
                    approval = Some(approved);
                    basis = b;
                    (released, DenyCategory::NotPermitted)
                }
                Err(denied) => *denied,
            };
        }

        // 5. Write ahead: the decision is durable before anything is forwarded.
        //    If the store cannot write, the call is denied.
        self.metrics
            .count_decision(&decision, category.code(), &tool);
        if !decision.is_allow() {
            // A use taken for a call that is not let through goes back.
            self.refund(facts.claimed.take()).await;
        }
        let mut decision_record = record(&decision, &call.args_hash, &facts);
        decision_record.amount = metered_amount(&call);
        note_decision(
            &span,
            &decision,
            if decision.is_allow() {
                ""
            } else {
                category.code()
            },
        );
        let record_span = tracing::debug_span!(
            target: crate::trace::TARGET,
            parent: &span,
            "record",
            decision_id = %decision.id(),
        );
        let appended = {
            let _timer = self.metrics.time(Phase::Record, &tool);
            self.audit
                .append(decision_record)
                .instrument(record_span)
                .await
        };
        let receipt = match appended {
            Ok(receipt) => receipt,
            Err(e) => {
                tracing::error!(error = %e, decision = %decision.id(), "audit store unavailable; denying");
                self.metrics.audit_failures.inc();
                self.refund(facts.claimed.take()).await;
                if matches!(e, mandate_audit::AuditError::Timeout(_)) {
                    // The record that missed its deadline may still land
                    // (a slow store catching up); an outcome behind it in
                    // the queue says the call never went through.
                    let late = record(&decision, &call.args_hash, &facts).outcome(
                        self.clock.now_ms(),
                        "not_forwarded",
                        Some("the decision record was not durable in time".into()),
                    );
                    let audit = self.audit.clone();
                    tokio::spawn(async move {
                        let _ = audit.append_deferrable(late).await;
                    });
                }
                let denied = Decision::deny("audit store unavailable", self.policy.policy_hash());
                return Err(denial_error(
                    &exposed,
                    &denied,
                    &correlation,
                    &DenyCategory::AuditUnavailable,
                ));
            }
        };
        tracing::info!(
            correlation_id = %correlation,
            decision_id = %decision.id(),
            tool = %exposed,
            effect = decision.effect().as_str(),
            reason = if decision.is_allow() { "" } else { category.code() },
            policies = ?decision.policies(),
            sub = %principal.sub(),
            act = ?principal.act(),
            "tools/call decided"
        );
        if !decision.is_allow() {
            return Err(denial_error(&exposed, &decision, &correlation, &category));
        }

        // 5b. With replicas: the log now orders this call among the session's
        //     calls on every replica. A call or a read another replica let
        //     through first, which this decision did not see, is counted and
        //     the call decided again; a call that would now be refused is
        //     not forwarded (two calls racing for a budget's last unit: the
        //     one the log puts first gets it).
        if let Some(basis) = basis.take()
            && let Some((refused, why)) = self
                .recheck(&principal, &call, basis, receipt.seq(), &correlation)
                .await
        {
            self.refund(facts.claimed.take()).await;
            let not_forwarded = record(&decision, &call.args_hash, &facts).outcome(
                self.clock.now_ms(),
                "not_forwarded",
                Some(refused.reasons().join("; ")),
            );
            if self.audit.append(not_forwarded).await.is_err() {
                self.metrics.audit_failures.inc();
            }
            return Err(denial_error(&exposed, &refused, &correlation, &why));
        }

        // 6. The permit: only from the three proofs (and the approval).
        let args_hash = call.args_hash.clone();
        let permitted = match Permitted::new(
            principal.clone(),
            call,
            decision.clone(),
            receipt,
            approval.as_ref(),
            correlation.clone(),
            relay,
        ) {
            Ok(p) => p,
            Err(why) => {
                // An invariant broke: the allow is on the record but the call
                // goes nowhere; the outcome record says why.
                tracing::error!(decision = %decision.id(), reason = %why, "permit refused; denying");
                self.refund(facts.claimed.take()).await;
                let refused = record(&decision, &args_hash, &facts).outcome(
                    self.clock.now_ms(),
                    "not_forwarded",
                    Some(why),
                );
                if self.audit.append(refused).await.is_err() {
                    self.metrics.audit_failures.inc();
                }
                return Err(denial_error(
                    &exposed,
                    &decision,
                    &correlation,
                    &DenyCategory::NotPermitted,
                ));
            }
        };

        // 7. Forward, then 8. label the result and 9. record the outcome
        //    (after the fact; the response is not held for it).
        let forward_span = tracing::debug_span!(
            target: crate::trace::TARGET,
            parent: &span,
            "forward",
            otel.kind = "client",
            upstream = %upstream.config().name,
            outcome = tracing::field::Empty,
        );
        let trace_fields = crate::trace::outgoing(&forward_span, &trace, &correlation);
        let mut result = {
            let _timer = self.metrics.time(Phase::Forward, &tool);
            upstream
                .call(&permitted, client, progress, trace_fields)
                .instrument(forward_span.clone())
                .await
        };
        forward_span.record(
            "outcome",
            match &result {
                Ok(_) => "ok",
                Err(e) => e.outcome(),
            },
        );
        drop(forward_span);
        let session = principal.state_key();
        let sanitise_timer = self.metrics.time(Phase::Sanitise, &tool);
        let sanitise_span = tracing::debug_span!(
            target: crate::trace::TARGET,
            parent: &span,
            "sanitise",
            labels = tracing::field::Empty,
        );

        // What came back is data: label it, clean it, look for injected
        // instructions, and taint the session (later decisions see it).
        if let Ok(CallToolResponse::Complete(r)) = &result {
            // The values it introduced, as received (before the envelope).
            self.observe_result(
                &principal,
                &exposed,
                upstream.config().provenance_of(&permitted.call().name.tool),
                correlation.as_str(),
                r,
            );
        }
        let findings = match &mut result {
            Ok(CallToolResponse::Complete(r)) => crate::provenance::sanitise(
                r,
                &exposed,
                upstream.config().provenance_of(&permitted.call().name.tool),
            ),
            _ => crate::provenance::Findings::default(),
        };
        if !findings.labels.is_empty() {
            sanitise_span.record("labels", findings.labels.join(",").as_str());
        }
        let mut newly_suspicious = false;
        // Whether this result adds a label the session did not carry yet.
        let mut newly_tainted = false;
        if !findings.labels.is_empty() {
            let mut s = self.usage.session(session.clone());
            newly_tainted = findings
                .labels
                .iter()
                .any(|l| !s.taint_recorded.contains(l));
            newly_suspicious = findings
                .labels
                .iter()
                .any(|l| l == crate::provenance::SUSPICIOUS)
                && !s.taint.contains(crate::provenance::SUSPICIOUS);
            s.taint.extend(findings.labels.iter().cloned());
            s.exp = s.exp.max(principal.exp());
            let source = format!("{exposed} ({})", findings.labels.join(", "));
            if s.sources.last() != Some(&source) && s.sources.len() < MAX_SOURCES {
                s.sources.push(source);
            }
        }
        if !findings.patterns.is_empty() {
            // Every finding is counted and on the call's outcome record; the
            // log warns once per session (when it turns suspicious), so a
            // session that keeps reading the same poisoned source does not
            // flood it.
            self.metrics.injection_findings.inc();
            if newly_suspicious {
                tracing::warn!(
                    correlation_id = %correlation,
                    tool = %exposed,
                    session = %session,
                    patterns = ?findings.patterns,
                    "possible prompt injection in a tool result; session marked suspicious"
                );
            } else {
                tracing::debug!(
                    correlation_id = %correlation,
                    tool = %exposed,
                    patterns = ?findings.patterns,
                    "possible prompt injection in a tool result (session already suspicious)"
                );
            }
        }
        drop(sanitise_timer);
        drop(sanitise_span);
        let (outcome, mut detail) = match &result {
            Ok(CallToolResponse::Complete(r)) if r.is_error == Some(true) => ("tool_error", None),
            Ok(CallToolResponse::Complete(_)) => ("ok", None),
            Ok(CallToolResponse::InputRequired(_)) => ("input_required", None),
            Ok(CallToolResponse::Task(_)) => ("task", None),
            Ok(_) => ("ok", None),
            Err(e) => (e.outcome(), Some(e.to_string())),
        };
        if !findings.patterns.is_empty() || findings.removed > 0 {
            detail = Some(
                serde_json::json!({
                    "injection_patterns": findings.patterns,
                    "hidden_characters_removed": findings.removed,
                })
                .to_string(),
            );
        }
        let mut outcome_record = record(
            permitted.decision(),
            &permitted.call().args_hash,
            &no_facts,
        )
        .outcome(self.clock.now_ms(), outcome, detail);
        outcome_record.taint = findings.labels.clone();
        if self.tail.is_some() && newly_tainted {
            // Replicas learn a session's taint from the first record that
            // carries each label: it is durable before the agent can act on
            // what it read, or the result is withheld. (A label the session
            // already carried is on an earlier durable record.)
            match self.audit.append(outcome_record).await {
                Ok(_) => {
                    let mut s = self.usage.session(session.clone());
                    s.taint_recorded.extend(findings.labels.iter().cloned());
                }
                Err(e) => {
                    self.metrics.audit_failures.inc();
                    tracing::error!(error = %e, "could not record a tainting outcome; result withheld");
                    let denied = Decision::deny(
                        "audit store unavailable: the result is withheld",
                        self.policy.policy_hash(),
                    );
                    return Err(denial_error(
                        &exposed,
                        &denied,
                        permitted.correlation(),
                        &DenyCategory::AuditUnavailable,
                    ));
                }
            }
        } else {
            let audit = self.audit.clone();
            let metrics = self.metrics.clone();
            tokio::spawn(async move {
                if let Err(e) = audit.append_deferrable(outcome_record).await {
                    metrics.audit_failures.inc();
                    tracing::error!(error = %e, "could not record call outcome");
                }
            });
        }

        match result {
            Ok(response) => Ok(self.finish(response, &permitted, &findings)),
            Err(e) => {
                self.metrics.upstream_error(e.outcome());
                tracing::warn!(error = %e, correlation_id = %permitted.correlation(), "upstream call failed");
                Err(upstream_error(&e, permitted.correlation()))
            }
        }
    }

    /// Applies result obligations and stamps the correlation id.
    fn finish(
        &self,
        response: CallToolResponse,
        permitted: &Permitted<ToolCall>,
        findings: &crate::provenance::Findings,
    ) -> CallToolResponse {
        let CallToolResponse::Complete(mut result) = response else {
            return response;
        };
        for obligation in permitted.decision().obligations() {
            match obligation {
                Obligation::Redact { fields } => redact_result(&mut result, fields),
                // Fulfilled before forwarding (`Permitted::new`).
                Obligation::Approval => {}
            }
        }
        // Results from an upstream on an older protocol carry no
        // `resultType`; clients on 2026-07-28 require it (rmcp strips it
        // again for older clients).
        result.result_type = Some(rmcp::model::ResultType::COMPLETE);
        let meta = result.meta.get_or_insert_with(Default::default);
        meta.0.insert(
            META_CORRELATION.into(),
            permitted.correlation().as_str().into(),
        );
        meta.0.insert(
            META_DECISION.into(),
            permitted.decision().id().as_str().into(),
        );
        if !findings.labels.is_empty() {
            meta.0
                .insert(META_LABELS.into(), findings.labels.clone().into());
        }
        CallToolResponse::Complete(result)
    }

    /// Decides `call` and, if it may proceed without a human, counts it in
    /// its session's and task's usage (which later decisions see). Holding
    /// the session's entry while deciding serialises the calls of one
    /// session; the task entry is always taken after it (no lock cycles).
    fn decide_and_count(
        &self,
        principal: &Principal,
        call: &ToolCall,
        now: i64,
        approved: bool,
        facts: &crate::intent::CallFacts,
    ) -> (Decision, Option<crate::usage::Basis>) {
        let exp = principal.exp();
        let mut session = self.usage.session(principal.state_key());
        let task_key = task_key(principal);
        let mut task = task_key.map(|k| self.usage.task(k));
        let exposed = call.name.to_string();
        session.exp = session.exp.max(exp);
        if let Some(task) = task.as_mut() {
            task.exp = task.exp.max(exp);
        }

        let minute_ago = now.saturating_sub(60);
        while session.recent.front().is_some_and(|t| *t <= minute_ago) {
            session.recent.pop_front();
        }
        let facts = SessionFacts {
            taint: session.taint.clone(),
            calls_in_session: session.calls,
            calls_in_task: task.as_ref().map_or(0, |t| t.calls),
            tool_calls_in_session: session.per_tool.get(&exposed).copied().unwrap_or(0),
            calls_last_minute: session.recent.len() as u64,
            amount_in_task: task.as_ref().map_or(0, |t| t.amount),
            approved,
            intent: facts.intent.clone(),
            provenance: facts.provenance.clone(),
        };
        let decision = self.policy.decide(&DecisionRequest {
            caller: principal.caller(),
            call,
            session: &facts,
            now_unix: now,
        });
        // With replicas: what this decision saw, to check it again once its
        // record has its place in the shared log.
        let basis = self.tail.is_some().then(|| crate::usage::Basis {
            facts,
            cursor: session.cursor,
            now,
        });
        if decision.is_allow() && (approved || !decision.requires_approval()) {
            session.calls = session.calls.saturating_add(1);
            *session.per_tool.entry(exposed).or_default() += 1;
            if session.recent.len() >= RECENT_CAP {
                session.recent.pop_front();
            }
            session.recent.push_back(now);
            if let Some(task) = task.as_mut() {
                task.calls = task.calls.saturating_add(1);
                if call.class == mandate_core::ToolClass::Financial
                    && let Some(amount) =
                        call.args.get("amount").and_then(serde_json::Value::as_i64)
                {
                    task.amount = task.amount.saturating_add(amount.max(0));
                }
            }
        }
        drop(task);
        drop(session);
        self.usage.prune(self.now_unix());
        (decision, basis)
    }
}

impl crate::Gateway {
    /// The checks of a tool's catalogue entry that do not depend on the
    /// arguments: its pin (quarantine when poisoned or changed) and the
    /// caller's build attestation. Run for every call, and again when a
    /// held call is released.
    async fn check_tool(
        &self,
        principal: &Principal,
        exposed: &str,
        tool: &rmcp::model::Tool,
    ) -> Result<(), (String, DenyCategory)> {
        self.vet(exposed, tool).await.map_err(|u| match u {
            crate::pinning::Unvetted::Quarantined(r) => (r, DenyCategory::ToolQuarantined),
            crate::pinning::Unvetted::StoreUnavailable(r) => (r, DenyCategory::ControlUnavailable),
        })?;
        self.check_build(principal, exposed)
            .await
            .map_err(|r| (r, DenyCategory::UnknownBuild))
    }
}

/// A call whose decision asks for a human, about to be held.
struct Held<'a> {
    principal: &'a Principal,
    call: &'a ToolCall,
    decision: &'a Decision,
    correlation: &'a CorrelationId,
    held_record: AuditRecord,
    facts: &'a crate::intent::CallFacts,
    tool: &'a ToolLabel,
}

impl crate::Gateway {
    /// Makes the call an approval request, records it as held, waits, and
    /// returns the released decision (re-decided with `approved = true`
    /// and re-verified: expiry, revocation, budgets) or the denial.
    async fn hold_for_approval(
        &self,
        held: Held<'_>,
        cancel: tokio_util::sync::CancellationToken,
        on_hold: Option<tokio::sync::oneshot::Sender<String>>,
        client: Option<Peer<RoleServer>>,
        progress: Option<ProgressToken>,
    ) -> Result<(Decision, Approved, Option<crate::usage::Basis>), Box<(Decision, DenyCategory)>>
    {
        let hash = || self.policy.policy_hash();
        let deny = |reason: String, category: DenyCategory| {
            Err(Box::new((Decision::deny(reason, hash()), category)))
        };
        let Held {
            principal,
            call,
            decision,
            correlation,
            mut held_record,
            facts,
            tool,
        } = held;
        let class = call.class.as_str();
        if !self.cfg.operators.iter().any(|o| o.may_approve(class)) {
            return deny(
                format!("requires human approval and no approver is configured for {class} calls"),
                DenyCategory::ApprovalRequired,
            );
        }
        let (taint, untrusted_sources): (Vec<String>, Vec<String>) = self
            .usage
            .session_view(&principal.state_key())
            .map(|s| (s.taint.iter().cloned().collect(), s.sources.clone()))
            .unwrap_or_default();
        let deadline_ms = self.clock.now_ms().saturating_add(
            i64::try_from(self.cfg.approvals.timeout.as_millis()).unwrap_or(i64::MAX),
        );
        let new = mandate_control::NewApproval {
            sub: principal.sub().to_owned(),
            act: principal.act().to_vec(),
            build: principal.build().map(str::to_owned),
            task_id: principal.task_id().map(str::to_owned),
            session: principal.session_key(),
            tool: call.name.to_string(),
            class: class.to_owned(),
            args: serde_json::Value::Object(call.args.clone()),
            args_hash: call.args_hash.clone(),
            policies: decision.policies().to_vec(),
            reasons: decision
                .reasons()
                .iter()
                .cloned()
                .chain(provenance_reasons(facts))
                .collect(),
            taint,
            untrusted_sources,
            decision_id: decision.id().to_string(),
            correlation_id: correlation.to_string(),
            deadline_ms,
            holder: self.holds.instance().to_owned(),
        };
        let approval = match self.create_approval(new).await {
            Ok(a) => a,
            Err(e) => {
                tracing::error!(error = %e, "cannot create approval request; denying");
                return deny(
                    "requires human approval and the approval store is unavailable".into(),
                    DenyCategory::ApprovalRequired,
                );
            }
        };
        // The held decision is on the record before anyone can act on it.
        held_record.detail = Some(format!(
            "{HELD_DETAIL} {} ({})",
            approval.id,
            self.approval_url(&approval.id)
        ));
        self.metrics.count_hold(tool);
        if self.audit.append(held_record).await.is_err() {
            let _ = self
                .control
                .close_approval(&approval.id, mandate_control::ApprovalStatus::Withdrawn)
                .await;
            self.metrics.audit_failures.inc();
            return deny(
                "audit store unavailable".into(),
                DenyCategory::AuditUnavailable,
            );
        }
        tracing::info!(approval = %approval.id, tool = %call.name, correlation_id = %correlation, "call held for human approval");
        if let Some(tx) = on_hold {
            let _ = tx.send(approval.id.clone());
        }

        match self.hold(&approval, cancel, client, progress).await {
            HoldOutcome::Approved(approved) => {
                let by = approved.decided_by().to_owned();
                // Continuous verification at release: the world may have
                // changed while the call waited.
                let now = self.now_unix();
                if principal.exp() <= now.cast_unsigned() {
                    return deny(
                        format!("approved by {by}, but the token expired while held"),
                        DenyCategory::TokenExpired,
                    );
                }
                if let Some(r) = self.control.check(&principal.caller()) {
                    return deny(
                        format!(
                            "approved by {by}, but {} {} was revoked while held: {}",
                            r.kind, r.value, r.reason
                        ),
                        DenyCategory::Revoked,
                    );
                }
                // The tool must still be the one the person was shown: a
                // changed description or schema, or a build's manifest that
                // no longer matches, denies the release as it would a call.
                let exposed = call.name.to_string();
                let current = match self.resolve(&exposed).await {
                    Resolved::Known {
                        tool: Some(tool), ..
                    } => self.check_tool(principal, &exposed, &tool).await,
                    Resolved::Known { tool: None, .. } => Err((
                        "the upstream's tool catalogue is unavailable".to_owned(),
                        DenyCategory::UpstreamUnavailable,
                    )),
                    Resolved::Unknown => Err((
                        "the tool is no longer served".to_owned(),
                        DenyCategory::UpstreamUnavailable,
                    )),
                };
                if let Err((reason, category)) = current {
                    return deny(
                        format!("approved by {by}, but at release: {reason}"),
                        category,
                    );
                }
                let (released, basis) = self.decide_and_count(principal, call, now, true, facts);
                if !released.is_allow() {
                    let released = released.with_reason(format!(
                        "approved by {by} ({}), but denied at release",
                        approved.id()
                    ));
                    return Err(Box::new((released, DenyCategory::NotPermitted)));
                }
                let released = released.with_reason(format!(
                    "approved by {by} ({}){}",
                    approved.id(),
                    approved
                        .comment()
                        .map(|c| format!(": {c}"))
                        .unwrap_or_default()
                ));
                Ok((released, approved, basis))
            }
            HoldOutcome::Denied(a) => deny(
                format!(
                    "denied by {} ({}){}",
                    a.decided_by.unwrap_or_default(),
                    a.id,
                    a.comment.map(|c| format!(": {c}")).unwrap_or_default()
                ),
                DenyCategory::ApprovalDenied,
            ),
            HoldOutcome::Expired => deny(
                format!(
                    "no approver decided within {} s ({}): denied",
                    self.cfg.approvals.timeout.as_secs(),
                    approval.id
                ),
                DenyCategory::ApprovalExpired,
            ),
            HoldOutcome::Withdrawn => deny(
                format!(
                    "withdrawn: the client went away while the call was held ({})",
                    approval.id
                ),
                DenyCategory::Withdrawn,
            ),
            HoldOutcome::Stopping => deny(
                format!(
                    "the gateway stopped while the call was held ({}): its approval request was withdrawn",
                    approval.id
                ),
                DenyCategory::ShuttingDown,
            ),
            HoldOutcome::Unavailable(e) => {
                tracing::error!(error = %e, approval = %approval.id, "approval store failed while holding; denying");
                deny(
                    "the approval store failed while the call was held".into(),
                    DenyCategory::ApprovalRequired,
                )
            }
        }
    }
}

/// Puts a decision on the call's span (ids and codes only, no subject).
fn note_decision(span: &tracing::Span, decision: &Decision, reason: &str) {
    span.record("decision_id", decision.id().as_str());
    span.record("effect", decision.effect().as_str());
    if !reason.is_empty() {
        span.record("reason", reason);
    }
}

/// The usage key of a principal's task: user and task id (two users'
/// tasks with the same id never share a budget). `None` without a task.
fn task_key(p: &Principal) -> Option<String> {
    p.task_id().map(|t| task_key_of(p.iss(), p.sub(), t))
}

pub(crate) fn task_key_of(iss: &str, sub: &str, task: &str) -> String {
    serde_json::json!([iss, sub, task]).to_string()
}

/// The money a call moves: the integer `amount` argument of a `financial` call.
fn metered_amount(call: &ToolCall) -> Option<i64> {
    (call.class == mandate_core::ToolClass::Financial)
        .then(|| call.args.get("amount").and_then(serde_json::Value::as_i64))
        .flatten()
}

/// How a decision is explained to the agent: a forbid's own reason code
/// (`@code`), or "not permitted".
fn category_of(decision: &Decision) -> DenyCategory {
    match &decision.record().code {
        Some(code) if !decision.is_allow() => DenyCategory::Coded(code.clone()),
        _ => DenyCategory::NotPermitted,
    }
}

/// What an approver should know about where the arguments came from.
fn provenance_reasons(facts: &crate::intent::CallFacts) -> Vec<String> {
    let mut out = Vec::new();
    for arg in &facts.provenance.untrusted {
        let covered = !facts.provenance.uncovered.contains(arg);
        out.push(if covered {
            format!("argument `{arg}` carries a value only untrusted content introduced; the task's intent pins it")
        } else {
            format!("argument `{arg}` carries a value only untrusted content introduced, and the task's intent does not cover it")
        });
    }
    if facts.intent.covered {
        out.push(format!(
            "covered by grant `{}` of the task's intent",
            facts.intent.grant
        ));
    }
    out
}

/// Removes `fields` from a result (a `redact` obligation): from its
/// structured content, and from every text item that is the same data as
/// JSON (MCP servers mirror structured results as text). A text item that
/// is not JSON but names a redacted field cannot be redacted reliably and
/// is withheld: an obligation the PEP cannot fulfil must not leak.
fn redact_result(result: &mut rmcp::model::CallToolResult, fields: &[String]) {
    fn strip(value: &mut serde_json::Value, fields: &[String]) {
        match value {
            serde_json::Value::Object(map) => {
                for f in fields {
                    map.remove(f);
                }
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(|v| strip(v, fields)),
            _ => {}
        }
    }
    if let Some(structured) = result.structured_content.as_mut() {
        strip(structured, fields);
    }
    for item in &mut result.content {
        let rmcp::model::ContentBlock::Text(text) = item else {
            continue;
        };
        match serde_json::from_str::<serde_json::Value>(&text.text) {
            Ok(mut value @ (serde_json::Value::Object(_) | serde_json::Value::Array(_))) => {
                strip(&mut value, fields);
                text.text = value.to_string();
            }
            _ => {
                if fields.iter().any(|f| text.text.contains(f.as_str())) {
                    text.text = "[withheld: this result carries fields a policy redacts]".into();
                }
            }
        }
    }
}

/// Detail of the decision record of a call put on hold (not yet counted).
pub(crate) const HELD_DETAIL: &str = "held for human approval";

/// Most result sources remembered per session for approvers.
pub(crate) const MAX_SOURCES: usize = 32;

/// Most call times kept per session for `calls_last_minute`.
pub(crate) const RECENT_CAP: usize = 10_000;

impl crate::Gateway {
    /// Current Unix time in seconds, by the gateway's clock.
    pub(crate) fn now_unix(&self) -> i64 {
        self.clock.now_secs()
    }
}
