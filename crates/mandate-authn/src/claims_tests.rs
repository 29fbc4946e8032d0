use super::*;
use serde_json::json;

const NOW: u64 = 1_800_000_000;
const CLOCK: Clock = Clock {
    now: NOW,
    leeway: 30,
};

fn raw(v: Value) -> RawClaims {
    serde_json::from_value(v).unwrap_or_default()
}

fn base() -> Value {
    json!({"iss": "https://idp", "sub": "alice", "exp": NOW + 60})
}

fn with(extra: Value) -> Result<Principal, AuthnError> {
    let mut claims = base();
    if let (Some(c), Some(e)) = (claims.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            c.insert(k.clone(), v.clone());
        }
    }
    principal(raw(claims), "https://idp", CLOCK, false)
}

fn nested_act(depth: usize) -> Value {
    let mut act = Value::Null;
    for i in (0..depth).rev() {
        act = if act.is_null() {
            json!({"sub": format!("agent-{i}")})
        } else {
            json!({"sub": format!("agent-{i}"), "act": act})
        };
    }
    act
}

#[test]
fn act_chain_is_outermost_first() -> Result<(), AuthnError> {
    let p = with(json!({"act": {"sub": "agent", "act": {"sub": "orchestrator"}}}))?;
    assert_eq!(p.act(), vec!["agent".to_owned(), "orchestrator".to_owned()]);
    assert_eq!(p.agent(), Some("agent"));
    Ok(())
}

#[test]
fn act_chain_depth_is_bounded() -> Result<(), AuthnError> {
    assert_eq!(
        with(json!({"act": nested_act(MAX_ACTOR_DEPTH)}))?
            .act()
            .len(),
        8
    );
    assert!(matches!(
        with(json!({"act": nested_act(MAX_ACTOR_DEPTH + 1)})),
        Err(AuthnError::ActorChainTooDeep(8))
    ));
    Ok(())
}

#[test]
fn act_without_sub_or_with_bad_sub_is_refused() {
    for act in [
        json!({}),
        json!({"sub": ""}),
        json!({"sub": 7}),
        json!("agent"),
        json!({"sub": "a", "act": {"iss": "x"}}),
        json!({"sub": "a\nb"}),
    ] {
        assert!(
            matches!(
                with(json!({"act": act})),
                Err(AuthnError::InvalidClaim("act"))
            ),
            "{act}"
        );
    }
}

#[test]
fn actor_required_refuses_a_token_without_act() {
    assert!(matches!(
        principal(raw(base()), "https://idp", CLOCK, true),
        Err(AuthnError::ActorRequired)
    ));
}

#[test]
fn scope_string_or_scp_array() -> Result<(), AuthnError> {
    let p = with(json!({"scope": "docs.search bank.*"}))?;
    assert!(p.scope().covers("docs.search") && p.scope().covers("bank.pay"));
    let p = with(json!({"scp": ["docs.search", "mail.send"]}))?;
    assert!(p.scope().covers("mail.send"));
    // `scope` wins: `scp` never widens it.
    let p = with(json!({"scope": "docs.search", "scp": ["bank.*"]}))?;
    assert!(!p.scope().covers("bank.pay"));
    assert!(with(json!({"scp": ["a b"]})).is_err());
    assert!(with(json!({"scope": ["a"]})).is_err());
    assert_eq!(with(json!({}))?.scope(), &Scope::default());
    Ok(())
}

#[test]
fn optional_claims_are_mapped_and_typed() -> Result<(), AuthnError> {
    let p = with(json!({"task_id": "t1", "build": "b1", "sid": "s1", "jti": "j1", "other": [1]}))?;
    assert_eq!(p.task_id(), Some("t1"));
    assert_eq!(p.build(), Some("b1"));
    assert_eq!(p.sid(), Some("s1"));
    assert_eq!(p.jti(), Some("j1"));
    assert_eq!(p.exp(), NOW + 60);
    assert!(matches!(
        with(json!({"task_id": 5})),
        Err(AuthnError::InvalidClaim("task_id"))
    ));
    Ok(())
}

#[test]
fn sub_must_be_a_nonempty_string() {
    assert!(matches!(
        with(json!({"sub": ""})),
        Err(AuthnError::InvalidClaim("sub"))
    ));
    assert!(matches!(
        with(json!({"sub": 1})),
        Err(AuthnError::InvalidClaim("sub"))
    ));
}

#[test]
fn time_claims_respect_leeway() {
    assert!(with(json!({"exp": NOW - 30})).is_ok());
    assert!(matches!(
        with(json!({"exp": NOW - 31})),
        Err(AuthnError::Expired)
    ));
    assert!(with(json!({"nbf": NOW + 30})).is_ok());
    assert!(matches!(
        with(json!({"nbf": NOW + 31})),
        Err(AuthnError::NotYetValid)
    ));
    assert!(matches!(
        with(json!({"iat": NOW + 31})),
        Err(AuthnError::IssuedInFuture)
    ));
    // Fractional dates round against the token.
    assert!(matches!(
        with(json!({"nbf": (NOW + 30) as f64 + 0.5})),
        Err(AuthnError::NotYetValid)
    ));
    assert!(matches!(
        with(json!({"exp": -1})),
        Err(AuthnError::InvalidClaim("exp"))
    ));
    assert!(matches!(
        with(json!({"exp": "soon"})),
        Err(AuthnError::InvalidClaim("exp"))
    ));
}

#[test]
fn duplicate_claim_names_are_refused() {
    let dup = r#"{"iss":"https://idp","sub":"alice","sub":"root","exp":1}"#;
    assert!(serde_json::from_str::<RawClaims>(dup).is_err());
}
