//! The audit records the gateway writes outside a call's pipeline:
//! refusals made before the pipeline (at the HTTP layer, of an
//! authenticated subject) and operator actions (tool pins here; the
//! operator plane's requests through [`Gateway::record_control`]).
//!
//! An operator action is recorded durably BEFORE it takes effect: if the
//! log cannot write, [`Gateway::record_control`] fails and the caller
//! must change nothing.

use crate::Gateway;
use crate::config::Role;
use mandate_core::{AuditRecord, CorrelationId, DecisionRecord, Effect, Subject};
use mandate_policy::Decision;
use serde_json::Value;

/// The audit store could not record an operator action: nothing may
/// change. Made only here.
#[derive(Debug, thiserror::Error)]
#[error("the audit store is unavailable")]
pub struct AuditUnavailable(());

impl Gateway {
    /// Appends the record of an operator action: allowed (with the role
    /// that allowed it) or refused (`allowed_by` is `None`). Durable
    /// before it returns; on failure the action must not happen.
    pub async fn record_control(
        &self,
        operator: &Subject,
        action: &str,
        allowed_by: Option<Role>,
        reason: &str,
        detail: &Value,
    ) -> Result<AuditRecord, AuditUnavailable> {
        let mut decision = match allowed_by {
            Some(role) => DecisionRecord::control(
                Effect::Allow,
                format!("operator-role:{}", role.as_str()),
                reason,
            ),
            None => DecisionRecord::deny(reason, String::new()),
        };
        decision.policy_hash = self.policy().policy_hash();
        let rec = AuditRecord::control(
            self.clock().now_ms(),
            decision,
            operator.clone(),
            action,
            detail,
        );
        match self.audit().append(rec.clone()).await {
            Ok(_) => Ok(rec),
            Err(e) => {
                tracing::error!(error = %e, action, "audit store unavailable; control action refused");
                self.metrics().audit_failures.inc();
                Err(AuditUnavailable(()))
            }
        }
    }

    /// Records what an allowed operator action produced (after the fact):
    /// its result, or the error's detail.
    pub async fn record_control_outcome(&self, rec: &AuditRecord, result: Result<&Value, &str>) {
        let (outcome, detail) = match result {
            Ok(v) => ("ok", v.to_string()),
            Err(e) => ("error", e.to_owned()),
        };
        if let Err(e) = self
            .audit()
            .append(rec.outcome(self.clock().now_ms(), outcome, Some(detail)))
            .await
        {
            self.metrics().audit_failures.inc();
            tracing::error!(error = %e, "could not record control outcome");
        }
    }

    /// Records a refusal made before the pipeline for a subject known
    /// only as recorded (at the HTTP layer; a DPoP-bound token whose
    /// proof failed). A refused tool call keeps its argument hash and,
    /// per the redaction rules, its arguments, exactly as a policy denial
    /// would.
    pub(crate) async fn record_refusal(
        &self,
        subject: Subject,
        tool: &str,
        args: Option<&serde_json::Map<String, Value>>,
        reason: String,
    ) -> Decision {
        let decision = Decision::deny(reason, self.policy().policy_hash());
        let args_hash = args
            .map(mandate_core::canonical_args_hash)
            .unwrap_or_default();
        let mut record = AuditRecord::decision(
            self.clock().now_ms(),
            decision.record().clone(),
            CorrelationId::new(),
            subject,
            tool,
            &args_hash,
        );
        record.args = args.and_then(|a| self.config().redaction.apply(tool, a));
        if let Err(e) = self.audit().append(record).await {
            self.metrics().audit_failures.inc();
            tracing::error!(error = %e, "could not record refusal");
        }
        decision
    }
}
