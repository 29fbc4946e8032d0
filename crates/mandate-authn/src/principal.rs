//! The authenticated composite subject of a call.

use mandate_core::{Caller, Scope, Subject};

/// The composite subject proven by a verified token: the user (`sub`) and
/// the agent acting for them (`act`), with the delegated scope, the task,
/// the agent build and the Mandate session.
///
/// Only this crate makes one, from a token whose signature, issuer,
/// audience, time window and actor chain it checked (and, for a
/// DPoP-bound token, only once the proof is verified: [`crate::Bound`]).
/// The fields are private, so holding a `Principal` means a token was
/// checked. Its scope is already narrowed to every scope ceiling in force
/// for the agents of its chain.
///
/// ```compile_fail,E0451
/// // Outside mandate-authn a Principal cannot be written by hand.
/// let p = mandate_authn::Principal {
///     iss: String::new(), sub: String::new(), act: Vec::new(),
///     scope: Default::default(), task_id: None, build: None, sid: None,
///     jti: None, exp: 0,
/// };
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    iss: String,
    sub: String,
    act: Vec<String>,
    scope: Scope,
    task_id: Option<String>,
    build: Option<String>,
    sid: Option<String>,
    jti: Option<String>,
    exp: u64,
}

/// The verified claims a [`Principal`] is made of (inside this crate).
pub(crate) struct Claims {
    pub(crate) iss: String,
    pub(crate) sub: String,
    pub(crate) act: Vec<String>,
    pub(crate) scope: Scope,
    pub(crate) task_id: Option<String>,
    pub(crate) build: Option<String>,
    pub(crate) sid: Option<String>,
    pub(crate) jti: Option<String>,
    pub(crate) exp: u64,
}

impl Principal {
    pub(crate) fn from_claims(c: Claims) -> Self {
        Self {
            iss: c.iss,
            sub: c.sub,
            act: c.act,
            scope: c.scope,
            task_id: c.task_id,
            build: c.build,
            sid: c.sid,
            jti: c.jti,
            exp: c.exp,
        }
    }

    /// Narrows the scope to `ceiling` (never widens it).
    pub(crate) fn narrow(&mut self, ceiling: &Scope) {
        self.scope = self.scope.intersect(ceiling);
    }

    /// The view the policy engine, kill switches and records read.
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

    /// Token issuer.
    pub fn iss(&self) -> &str {
        &self.iss
    }

    /// The delegating user.
    pub fn sub(&self) -> &str {
        &self.sub
    }

    /// The actor chain, outermost (the calling agent) first; empty when the
    /// token names no actor (operators).
    pub fn act(&self) -> &[String] {
        &self.act
    }

    /// The agent making the call, if the token names one.
    pub fn agent(&self) -> Option<&str> {
        self.act.first().map(String::as_str)
    }

    /// Delegated scope (narrowed to the ceilings in force).
    pub fn scope(&self) -> &Scope {
        &self.scope
    }

    /// The task the token was minted for.
    pub fn task_id(&self) -> Option<&str> {
        self.task_id.as_deref()
    }

    /// Hash of the agent build (model + system prompt + tool manifest).
    pub fn build(&self) -> Option<&str> {
        self.build.as_deref()
    }

    /// Mandate session (token `sid`).
    pub fn sid(&self) -> Option<&str> {
        self.sid.as_deref()
    }

    /// Token id.
    pub fn jti(&self) -> Option<&str> {
        self.jti.as_deref()
    }

    /// Expiry, seconds since the Unix epoch.
    pub fn exp(&self) -> u64 {
        self.exp
    }

    /// See [`Caller::session_key`].
    pub fn session_key(&self) -> String {
        self.caller().session_key()
    }

    /// See [`Caller::state_key`].
    pub fn state_key(&self) -> String {
        self.caller().state_key()
    }

    /// See [`Caller::subject_key`].
    pub fn subject_key(&self) -> String {
        self.caller().subject_key()
    }

    /// See [`Caller::binding`].
    pub fn binding(&self) -> (String, String, Vec<String>, Option<String>) {
        self.caller().binding()
    }

    /// The subject as an audit record keeps it.
    pub fn subject(&self) -> Subject {
        self.caller().subject()
    }
}
