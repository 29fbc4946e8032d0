//! Kill switches: what can be revoked and how a principal is checked.

use mandate_core::Caller;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;

/// What a revocation names.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    strum::IntoStaticStr,
    strum::Display,
    strum::EnumString,
)]
#[cfg_attr(test, derive(strum::VariantArray))]
#[serde(rename_all = "snake_case")]
#[strum(
    serialize_all = "snake_case",
    parse_err_ty = String,
    parse_err_fn = unknown_kind
)]
pub enum RevocationKind {
    /// A delegating user (`sub`): every agent acting for them stops.
    User,
    /// An agent (anywhere in the `act` chain): it stops for every user,
    /// including when another agent delegates to it.
    Agent,
    /// An agent build (`build` hash): a tampered prompt or model stops.
    Build,
    /// A task (`task_id`).
    Task,
    /// A Mandate session: the token's `sid`, or the recorded session key.
    Session,
    /// One token (`jti`).
    Token,
}

impl RevocationKind {
    /// Every kind, in display order.
    pub const ALL: [Self; 6] = [
        Self::User,
        Self::Agent,
        Self::Build,
        Self::Task,
        Self::Session,
        Self::Token,
    ];

    /// Stored and displayed name.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

fn unknown_kind(s: &str) -> String {
    format!("unknown revocation kind {s:?} (user, agent, build, task, session, token)")
}

/// One kill switch, active until lifted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    /// Store id.
    pub id: i64,
    /// What is revoked.
    pub kind: RevocationKind,
    /// The user, agent, build hash, task id, session or token id.
    pub value: String,
    /// Why (shown to the agent in the denial and recorded in audit).
    pub reason: String,
    /// The operator who revoked.
    pub revoked_by: String,
    /// Unix milliseconds.
    pub revoked_ms: i64,
    /// The operator who lifted it, if lifted.
    pub lifted_by: Option<String>,
    /// When it was lifted (Unix milliseconds).
    pub lifted_ms: Option<i64>,
}

impl Revocation {
    /// Whether it is in force.
    pub fn is_active(&self) -> bool {
        self.lifted_ms.is_none()
    }
}

/// The active revocations, indexed for the per-call check.
#[derive(Debug, Default)]
pub(crate) struct Index {
    /// (kind, value) → the revocation.
    by_key: std::collections::HashMap<(RevocationKind, String), Revocation>,
    /// Which kinds have any entry (skips hashing for empty kinds).
    kinds: HashSet<RevocationKind>,
}

impl Index {
    pub(crate) fn build(active: impl IntoIterator<Item = Revocation>) -> Self {
        let mut index = Self::default();
        for r in active.into_iter().filter(Revocation::is_active) {
            index.kinds.insert(r.kind);
            index.by_key.insert((r.kind, r.value.clone()), r);
        }
        index
    }

    fn get(&self, kind: RevocationKind, value: &str) -> Option<&Revocation> {
        if !self.kinds.contains(&kind) {
            return None;
        }
        self.by_key.get(&(kind, value.to_owned()))
    }

    /// The first revocation that covers `p`, checking the narrowest first.
    pub(crate) fn check(&self, p: &Caller<'_>) -> Option<&Revocation> {
        if self.by_key.is_empty() {
            return None;
        }
        let jti = p.jti;
        let sid = p.sid;
        let task = p.task_id;
        let build = p.build;
        jti.and_then(|v| self.get(RevocationKind::Token, v))
            .or_else(|| sid.and_then(|v| self.get(RevocationKind::Session, v)))
            .or_else(|| self.get(RevocationKind::Session, &p.session_key()))
            .or_else(|| task.and_then(|v| self.get(RevocationKind::Task, v)))
            .or_else(|| build.and_then(|v| self.get(RevocationKind::Build, v)))
            .or_else(|| {
                p.act
                    .iter()
                    .find_map(|a| self.get(RevocationKind::Agent, a))
            })
            .or_else(|| self.get(RevocationKind::User, p.sub))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mandate_core::CallerData;
    use mandate_core::Scope;

    fn principal() -> CallerData {
        CallerData {
            iss: "i".into(),
            sub: "alice".into(),
            act: vec!["assistant".into(), "planner".into()],
            scope: Scope::parse("docs.*"),
            task_id: Some("t1".into()),
            build: Some("b1".into()),
            sid: Some("s1".into()),
            jti: Some("j1".into()),
        }
    }

    fn revoked(kind: RevocationKind, value: &str) -> Revocation {
        Revocation {
            id: 1,
            kind,
            value: value.into(),
            reason: "r".into(),
            revoked_by: "op".into(),
            revoked_ms: 0,
            lifted_by: None,
            lifted_ms: None,
        }
    }

    #[test]
    fn every_kind_matches_its_field() {
        let p = principal();
        for (kind, value) in [
            (RevocationKind::User, "alice"),
            (RevocationKind::Agent, "assistant"),
            (RevocationKind::Agent, "planner"),
            (RevocationKind::Build, "b1"),
            (RevocationKind::Task, "t1"),
            (RevocationKind::Session, "s1"),
            (RevocationKind::Session, "sid:s1"),
            (RevocationKind::Token, "j1"),
        ] {
            let index = Index::build([revoked(kind, value)]);
            assert!(index.check(&p.caller()).is_some(), "{kind} {value}");
        }
    }

    #[test]
    fn other_values_and_lifted_entries_do_not_match() {
        let p = principal();
        let mut lifted = revoked(RevocationKind::User, "alice");
        lifted.lifted_ms = Some(1);
        let index = Index::build([
            revoked(RevocationKind::User, "bob"),
            revoked(RevocationKind::Agent, "alice"),
            revoked(RevocationKind::Task, "t2"),
            lifted,
        ]);
        assert!(index.check(&p.caller()).is_none());
    }
}
