//! Who is calling (a view of a verified token) and the delegated scope.

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// Who is calling, as the planes that judge a call see it: the user (`sub`)
/// and the agent chain acting for them (`act`), the delegated scope, the
/// task, the agent build and the Mandate session.
///
/// A view, not a proof: `mandate_authn::Principal` (made only from a
/// verified token) lends one with `caller()`, and policy test cases write
/// one by hand. What authorises a call is the chain of types the gateway
/// builds from a `Principal`, not a `Caller`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller<'a> {
    /// Token issuer.
    pub iss: &'a str,
    /// The delegating user.
    pub sub: &'a str,
    /// The actor chain, outermost (the calling agent) first.
    pub act: &'a [String],
    /// Delegated scope.
    pub scope: &'a Scope,
    /// The task the token was minted for.
    pub task_id: Option<&'a str>,
    /// Hash of the agent build (model + system prompt + tool manifest).
    pub build: Option<&'a str>,
    /// Mandate session (token `sid`).
    pub sid: Option<&'a str>,
    /// Token id.
    pub jti: Option<&'a str>,
}

impl Caller<'_> {
    /// The agent making the call, if the token names one.
    pub fn agent(&self) -> Option<&str> {
        self.act.first().map(String::as_str)
    }

    /// The Mandate session key as records show it: the token's `sid`, or,
    /// when absent, a key derived from the subject pair and task so that
    /// two subjects can never share session state (F-04).
    pub fn session_key(&self) -> String {
        match self.sid {
            Some(sid) => format!("sid:{sid}"),
            // JSON encoding keeps the parts unambiguous (a `sub` may contain
            // any separator character).
            None => format!(
                "subj:{}",
                serde_json::json!([self.sub, self.act, self.task_id])
            ),
        }
    }

    /// The key of everything the gateway keeps per Mandate session (usage,
    /// budgets, taint): issuer, user, actor chain and `sid` (or, without a
    /// `sid`, the task). Two issuers, users or agents never share one even
    /// when their tokens carry the same `sid` (F-04).
    pub fn state_key(&self) -> String {
        state_key(self.iss, self.sub, self.act, self.sid, self.task_id)
    }

    /// The subject whose resources are bounded together (sessions,
    /// concurrent calls): issuer and user.
    pub fn subject_key(&self) -> String {
        serde_json::json!([self.iss, self.sub]).to_string()
    }

    /// The identity a transport session or an MCP task is bound to:
    /// issuer, subject pair and `sid`.
    pub fn binding(&self) -> (String, String, Vec<String>, Option<String>) {
        (
            self.iss.to_owned(),
            self.sub.to_owned(),
            self.act.to_vec(),
            self.sid.map(str::to_owned),
        )
    }

    /// The subject as an audit record keeps it (all five token fields and
    /// the session).
    pub fn subject(&self) -> crate::Subject {
        crate::Subject {
            iss: self.iss.to_owned(),
            sub: self.sub.to_owned(),
            act: self.act.to_vec(),
            scope: self.scope.to_oauth_string(),
            task_id: self.task_id.map(str::to_owned),
            build: self.build.map(str::to_owned),
            session: self.session_key(),
        }
    }
}

/// An owned [`Caller`], for callers that are not verified principals: policy
/// test cases, the contract check's sample, tests. Lending a `Caller`
/// grants nothing (see [`Caller`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallerData {
    /// Token issuer.
    pub iss: String,
    /// The delegating user.
    pub sub: String,
    /// The actor chain, outermost first.
    pub act: Vec<String>,
    /// Delegated scope.
    pub scope: Scope,
    /// The task.
    pub task_id: Option<String>,
    /// The agent build.
    pub build: Option<String>,
    /// The Mandate session.
    pub sid: Option<String>,
    /// Token id.
    pub jti: Option<String>,
}

impl CallerData {
    /// The borrowed view.
    pub fn caller(&self) -> Caller<'_> {
        Caller {
            iss: &self.iss,
            sub: &self.sub,
            act: &self.act,
            scope: &self.scope,
            task_id: self.task_id.as_deref(),
            build: self.build.as_deref(),
            sid: self.sid.as_deref(),
            jti: self.jti.as_deref(),
        }
    }
}

/// The per-session state key of [`Caller::state_key`], from its parts
/// (as an audit record keeps them), so state can be rebuilt from the log.
pub fn state_key(
    iss: &str,
    sub: &str,
    act: &[String],
    sid: Option<&str>,
    task_id: Option<&str>,
) -> String {
    // JSON keeps the parts unambiguous whatever characters they hold.
    match sid {
        Some(sid) => serde_json::json!([iss, sub, act, sid]).to_string(),
        None => serde_json::json!([iss, sub, act, null, task_id]).to_string(),
    }
}

/// Agents' scope ceilings (approved through the change gate): the token
/// verifier narrows every principal's scope to the ceiling of each agent
/// in its chain.
pub trait ScopeCeilings: Send + Sync {
    /// Whether any ceiling is in force (checked before per-agent lookups).
    fn any(&self) -> bool;
    /// The ceiling of `agent`, if one is in force.
    fn ceiling(&self, agent: &str) -> Option<Scope>;
}

/// A delegated scope: a set of tool patterns.
///
/// Each entry is `<upstream>.<tool>` (one tool) or `<upstream>.*` (every
/// tool of one upstream). Entries of other forms (e.g. `openid`) are kept
/// but never cover a tool call.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Scope(BTreeSet<String>);

impl Scope {
    /// Parses a space-separated OAuth `scope` string.
    pub fn parse(s: &str) -> Self {
        Self(s.split_ascii_whitespace().map(str::to_owned).collect())
    }

    /// Whether this scope covers a call to `tool` (`upstream.tool`).
    pub fn covers(&self, tool: &str) -> bool {
        // Only `upstream.tool` names can be covered.
        let Some((upstream, name)) = tool.split_once('.') else {
            return false;
        };
        if upstream.is_empty() || name.is_empty() {
            return false;
        }
        self.0.contains(tool) || self.0.contains(&format!("{upstream}.*"))
    }

    /// Whether this scope covers every call `pattern` (an entry of another
    /// scope) could cover: `a.*` covers `a.*` and `a.x`; `a.x` covers `a.x`.
    fn covers_pattern(&self, pattern: &str) -> bool {
        if self.0.contains(pattern) {
            return true;
        }
        match pattern.split_once('.') {
            Some((upstream, name)) if !upstream.is_empty() && !name.is_empty() => {
                self.0.contains(&format!("{upstream}.*"))
            }
            _ => false,
        }
    }

    /// The scope covering exactly the calls both scopes cover (used to
    /// narrow a token's scope to an agent's ceiling: never wider than
    /// either side).
    pub fn intersect(&self, other: &Scope) -> Scope {
        let mut out = BTreeSet::new();
        for entry in &self.0 {
            if other.covers_pattern(entry) {
                out.insert(entry.clone());
            }
        }
        for entry in &other.0 {
            if self.covers_pattern(entry) {
                out.insert(entry.clone());
            }
        }
        Scope(out)
    }

    /// The entries, sorted.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }

    /// The space-separated form.
    pub fn to_oauth_string(&self) -> String {
        self.0.iter().cloned().collect::<Vec<_>>().join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Owned {
        iss: String,
        sub: String,
        act: Vec<String>,
        scope: Scope,
        task_id: Option<String>,
        sid: Option<String>,
    }

    impl Owned {
        fn caller(&self) -> Caller<'_> {
            Caller {
                iss: &self.iss,
                sub: &self.sub,
                act: &self.act,
                scope: &self.scope,
                task_id: self.task_id.as_deref(),
                build: None,
                sid: self.sid.as_deref(),
                jti: None,
            }
        }
        fn session_key(&self) -> String {
            self.caller().session_key()
        }
        fn state_key(&self) -> String {
            self.caller().state_key()
        }
        fn subject_key(&self) -> String {
            self.caller().subject_key()
        }
        fn binding(&self) -> (String, String, Vec<String>, Option<String>) {
            self.caller().binding()
        }
    }

    fn principal(sub: &str, act: &[&str], task: Option<&str>) -> Owned {
        Owned {
            iss: "i".into(),
            sub: sub.into(),
            act: act.iter().map(|a| (*a).to_owned()).collect(),
            scope: Scope::default(),
            task_id: task.map(str::to_owned),
            sid: None,
        }
    }

    #[test]
    fn session_keys_of_different_subjects_never_collide() {
        let a = principal("u", &["a|t"], None);
        let b = principal("u", &["a"], Some("t|"));
        assert_ne!(a.session_key(), b.session_key());
        let c = principal("auth0|x", &["a"], None);
        let d = principal("auth0", &["x|a"], None);
        assert_ne!(c.session_key(), d.session_key());
    }

    #[test]
    fn state_keys_differ_by_issuer_and_user_for_the_same_sid() {
        let mut a = principal("u", &["agent"], None);
        a.sid = Some("s1".into());
        let mut b = principal("u", &["agent"], None);
        b.sid = Some("s1".into());
        b.iss = "other-issuer".into();
        let mut c = principal("v", &["agent"], None);
        c.sid = Some("s1".into());
        assert_ne!(a.state_key(), b.state_key());
        assert_ne!(a.state_key(), c.state_key());
        assert_ne!(a.binding(), b.binding());
        assert_ne!(a.subject_key(), b.subject_key());
    }

    #[test]
    fn intersection_is_never_wider_than_either_side() {
        let token = Scope::parse("docs.* bank.get_balance bank.transfer openid");
        let ceiling = Scope::parse("docs.search bank.* mail.send");
        let both = token.intersect(&ceiling);
        assert_eq!(
            both.to_oauth_string(),
            "bank.get_balance bank.transfer docs.search"
        );
        for tool in [
            "docs.search",
            "docs.send",
            "bank.transfer",
            "bank.close",
            "mail.send",
        ] {
            assert_eq!(
                both.covers(tool),
                token.covers(tool) && ceiling.covers(tool),
                "{tool}"
            );
        }
        assert_eq!(token.intersect(&Scope::default()), Scope::default());
    }

    #[test]
    fn scope_covers_exact_and_upstream_wildcard_only() {
        let s = Scope::parse("docs.search bank.* openid");
        assert!(s.covers("docs.search"));
        assert!(!s.covers("docs.delete"));
        assert!(s.covers("bank.transfer"));
        assert!(!s.covers("mail.send"));
        assert!(!s.covers("openid"));
        assert!(!Scope::parse("").covers("docs.search"));
        // A wildcard never reaches across upstream names that share a prefix.
        assert!(!Scope::parse("ban.*").covers("bank.transfer"));
    }
}
