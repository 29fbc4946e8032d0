//! Session and task usage rebuilt from the audit log: at start, from the
//! last day's records ([`Gateway::restore_usage`]), and, when replicas
//! share the log, before each call from what the session did on other
//! replicas since this one last looked ([`Gateway::catch_up`]): calls
//! let through count against budgets and rate limits, and the taint of
//! what the session read is carried over, so a load balancer moving a
//! session between replicas never resets what its policies see.

use crate::Gateway;
use crate::error::DenyCategory;
use crate::pipeline::{HELD_DETAIL, MAX_SOURCES, RECENT_CAP, task_key_of};
use crate::usage::{Basis, SessionState};
use mandate_audit::StoredRecord;
use mandate_authn::Principal;
use mandate_core::{AuditRecord, CorrelationId, RecordKind, ToolCall};
use mandate_policy::{Decision, DecisionRequest};

/// Most calls per session this replica remembers as its own (a session
/// has far fewer calls in flight between two of its calls' catch-ups).
const MAX_OWN: usize = 1024;

/// What applying a record did.
enum Applied {
    /// A call let through, counted.
    Call,
    /// The taint of a result.
    Taint,
    /// Nothing the policies read.
    Nothing,
}

impl Gateway {
    /// Restores session and task usage from decision records written
    /// before a restart (calls that were let through count; held records
    /// do not, their release does) and session taint from outcome records.
    /// Returns how many calls were restored.
    pub fn restore_usage<'a>(&self, records: impl IntoIterator<Item = &'a StoredRecord>) -> usize {
        let now = self.now_unix();
        let mut restored = 0;
        for stored in records {
            let key = self.state_key_of(&stored.record);
            let mut s = self.usage.session(key);
            s.cursor = s.cursor.max(stored.seq);
            // What it read is known by label only now, not by value.
            s.values_lost = true;
            if let Applied::Call = self.apply(&mut s, &stored.record, now) {
                restored += 1;
            }
        }
        restored
    }

    /// With replicas sharing the audit log: applies what `principal`'s
    /// session did on other replicas since this one last looked (one
    /// indexed read of the session's records), then remembers call
    /// `correlation` as this replica's own, so its records, which this
    /// replica counts and taints as it goes, are never applied twice. An
    /// error means the session's state is unknown here: the caller denies.
    pub(crate) async fn catch_up(
        &self,
        principal: &Principal,
        correlation: &CorrelationId,
    ) -> Result<(), String> {
        let Some(tail) = self.tail.clone() else {
            return Ok(());
        };
        let key = principal.state_key();
        let cursor = self.usage.session_view(&key).map_or(0, |s| s.cursor);
        let session = principal.caller().session_key();
        let records = tokio::task::spawn_blocking(move || tail.after(&session, cursor))
            .await
            .map_err(|_| "the reading worker stopped".to_owned())?
            .map_err(|e| e.to_string())?;
        let now = self.now_unix();
        let mut s = self.usage.session(key.clone());
        for stored in &records {
            // Another call of the session may have caught up meanwhile.
            if stored.seq <= s.cursor {
                continue;
            }
            s.cursor = stored.seq;
            let r = &stored.record;
            if s.own.contains(&r.correlation_id) || self.state_key_of(r) != key {
                continue;
            }
            if let Applied::Taint = self.apply(&mut s, r, now) {
                // Read on another replica: its values never reached this
                // one's provenance index.
                s.values_lost = true;
            }
        }
        if s.own.len() >= MAX_OWN {
            // Forgetting the oldest could only count a call twice: stricter.
            s.own.pop_front();
        }
        s.own.push_back(correlation.clone());
        Ok(())
    }

    /// With replicas, after `call`'s decision record became durable at
    /// `own`: the session's records other replicas wrote that the log puts
    /// before it but that its decision had not seen (between `basis.cursor`
    /// and `own`). None: the call stands. Otherwise the call is decided
    /// again with them counted (calls, calls per tool and per minute, the
    /// task's calls and amount, taint); a refusal, or a log that cannot be
    /// read, is returned and the call is not forwarded. Reads only: the
    /// next catch-up applies these records as usual.
    pub(crate) async fn recheck(
        &self,
        principal: &Principal,
        call: &ToolCall,
        basis: Basis,
        own: i64,
        correlation: &CorrelationId,
    ) -> Option<(Decision, DenyCategory)> {
        let tail = self.tail.clone()?;
        let session = principal.caller().session_key();
        let since = basis.cursor;
        let read = tokio::task::spawn_blocking(move || tail.after(&session, since)).await;
        let records = match read {
            Ok(Ok(records)) => records,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot read the shared audit log to re-check; denying");
                return Some(self.unreadable());
            }
            Err(_) => return Some(self.unreadable()),
        };
        let key = principal.state_key();
        let mine = |c: &CorrelationId| {
            c == correlation
                || self
                    .usage
                    .session_view(&key)
                    .is_some_and(|s| s.own.contains(c))
        };
        let task = principal.task_id().map(str::to_owned);
        let mut facts = basis.facts;
        let mut changed = false;
        let exposed = call.name.to_string();
        for stored in records.iter().filter(|r| r.seq < own) {
            let r = &stored.record;
            if mine(&r.correlation_id) || self.state_key_of(r) != key {
                continue;
            }
            if r.kind == RecordKind::Outcome {
                let before = facts.taint.len();
                facts.taint.extend(r.taint.iter().cloned());
                changed |= facts.taint.len() != before;
                continue;
            }
            let held = r
                .detail
                .as_deref()
                .is_some_and(|d| d.starts_with(HELD_DETAIL));
            if r.kind != RecordKind::Decision || !r.decision.is_allow() || held {
                continue;
            }
            changed = true;
            facts.calls_in_session = facts.calls_in_session.saturating_add(1);
            if r.tool == exposed {
                facts.tool_calls_in_session = facts.tool_calls_in_session.saturating_add(1);
            }
            if r.time_ms / 1000 > basis.now.saturating_sub(60) {
                facts.calls_last_minute = facts.calls_last_minute.saturating_add(1);
            }
            if task.is_some() && r.subject.task_id == task {
                facts.calls_in_task = facts.calls_in_task.saturating_add(1);
                facts.amount_in_task = facts
                    .amount_in_task
                    .saturating_add(r.amount.unwrap_or(0).max(0));
            }
        }
        if !changed {
            return None;
        }
        let again = self.policy.decide(&DecisionRequest {
            caller: principal.caller(),
            call,
            session: &facts,
            now_unix: basis.now,
        });
        if again.is_allow() && (facts.approved || !again.requires_approval()) {
            return None;
        }
        let category = match &again.record().code {
            Some(code) if !again.is_allow() => DenyCategory::Coded(code.clone()),
            _ => DenyCategory::NotPermitted,
        };
        let refused = Decision::deny(
            format!(
                "a call or read of this session let through on another replica at the same time comes first in the audit log; decided again with it counted: {}",
                if again.is_allow() {
                    "it now needs a person's approval (call again to be held)".to_owned()
                } else {
                    again.reasons().join("; ")
                }
            ),
            self.policy.policy_hash(),
        );
        self.metrics.rechecks_refused.inc();
        Some((refused, category))
    }

    fn unreadable(&self) -> (Decision, DenyCategory) {
        (
            Decision::deny(
                "the shared audit log cannot be read: what this session did on other replicas is unknown",
                self.policy.policy_hash(),
            ),
            DenyCategory::AuditUnavailable,
        )
    }

    /// The issuer of a record's subject. Records written before the issuer
    /// was kept name none: with one trusted issuer it can only have been
    /// that one.
    fn issuer_of<'r>(&'r self, r: &'r AuditRecord) -> &'r str {
        match (
            r.subject.iss.as_str(),
            self.cfg.authorization_servers.as_slice(),
        ) {
            ("", [only]) => only.as_str(),
            (iss, _) => iss,
        }
    }

    /// The usage key of the session a record belongs to.
    fn state_key_of(&self, r: &AuditRecord) -> String {
        mandate_core::state_key(
            self.issuer_of(r),
            &r.subject.sub,
            &r.subject.act,
            r.subject.session.strip_prefix("sid:"),
            r.subject.task_id.as_deref(),
        )
    }

    /// Applies one record written elsewhere (another replica, or this
    /// process before a restart) to its session `s` and its task.
    fn apply(&self, s: &mut SessionState, r: &AuditRecord, now: i64) -> Applied {
        let at = r.time_ms / 1000;
        let exp = at.saturating_add(3600).max(now).cast_unsigned();
        // Taint is on outcome records: what the session read stays read.
        if r.kind == RecordKind::Outcome {
            if r.taint.is_empty() {
                return Applied::Nothing;
            }
            s.taint.extend(r.taint.iter().cloned());
            s.taint_recorded.extend(r.taint.iter().cloned());
            s.exp = s.exp.max(exp);
            let source = format!("{} ({})", r.tool, r.taint.join(", "));
            if s.sources.last() != Some(&source) && s.sources.len() < MAX_SOURCES {
                s.sources.push(source);
            }
            return Applied::Taint;
        }
        let held = r
            .detail
            .as_deref()
            .is_some_and(|d| d.starts_with(HELD_DETAIL));
        if r.kind != RecordKind::Decision || !r.decision.is_allow() || held {
            return Applied::Nothing;
        }
        s.calls = s.calls.saturating_add(1);
        s.exp = s.exp.max(exp);
        *s.per_tool.entry(r.tool.clone()).or_default() += 1;
        if at > now.saturating_sub(60) && s.recent.len() < RECENT_CAP {
            s.recent.push_back(at);
        }
        if let Some(task) = &r.subject.task_id {
            // Always taken after the session's entry (no lock cycles).
            let mut t = self
                .usage
                .task(task_key_of(self.issuer_of(r), &r.subject.sub, task));
            t.calls = t.calls.saturating_add(1);
            t.amount = t.amount.saturating_add(r.amount.unwrap_or(0).max(0));
            t.exp = t.exp.max(exp);
        }
        Applied::Call
    }
}
