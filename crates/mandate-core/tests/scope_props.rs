//! Property tests of [`Scope`]: `covers` agrees with a simple model of what
//! a scope entry means, and `intersect` covers exactly the calls both sides
//! cover (so it is never wider than either), is commutative, idempotent and
//! associative, over generated tool names and patterns, including upstream
//! names that share prefixes (`a`, `ab`, `abc`) and malformed entries.

use mandate_core::Scope;
use proptest::prelude::*;
use std::collections::BTreeSet;

/// The model: what one scope entry grants, written from the documented
/// syntax rather than from the implementation. An entry `w.*` whose `w`
/// is a non-empty name without a dot grants every tool of upstream `w`;
/// any entry grants the one tool whose exposed name it equals. A tool
/// call is `u.n`, split at the first dot, both parts non-empty; nothing
/// else is ever granted.
fn model_covers(entries: &BTreeSet<String>, tool: &str) -> bool {
    let Some((upstream, name)) = tool.split_once('.') else {
        return false;
    };
    if upstream.is_empty() || name.is_empty() {
        return false;
    }
    entries.iter().any(|e| {
        let wildcard_of = e
            .strip_suffix(".*")
            .filter(|w| !w.is_empty() && !w.contains('.'));
        e == tool || wildcard_of == Some(upstream)
    })
}

fn entries(s: &Scope) -> BTreeSet<String> {
    s.iter().map(str::to_owned).collect()
}

/// Upstream names that share prefixes, so a wildcard on one must not reach
/// another (`ab.*` never covers `abc.x`).
fn upstream() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("a".to_owned()),
        Just("ab".to_owned()),
        Just("abc".to_owned()),
        Just("b".to_owned()),
        Just(String::new()),
        "[ab]{0,3}",
    ]
}

fn tool_part() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("x".to_owned()),
        Just("xy".to_owned()),
        Just("*".to_owned()),
        Just("x.y".to_owned()),
        Just(String::new()),
        "[xy*.]{0,3}",
    ]
}

/// Tool names as a client may send them: well formed or not.
fn tool() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => (upstream(), tool_part()).prop_map(|(u, t)| format!("{u}.{t}")),
        1 => "[ab.*x]{0,6}",
    ]
}

/// Scope entries: exact tools, upstream wildcards, and other strings
/// (`openid`, `.*`, `a.`, `a.b.*`, `**`, …).
fn entry() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => (upstream(), tool_part()).prop_map(|(u, t)| format!("{u}.{t}")),
        3 => upstream().prop_map(|u| format!("{u}.*")),
        1 => Just("openid".to_owned()),
        1 => "[ab.*x]{0,5}",
        // Any string: a scope deserialised from JSON may hold white space
        // or control characters.
        1 => any::<String>(),
    ]
}

/// A scope from a JSON array, so entries need not survive `parse`.
fn scope() -> impl Strategy<Value = Scope> {
    proptest::collection::vec(entry(), 0..6).prop_map(|v| {
        serde_json::from_value::<Scope>(serde_json::Value::from(v)).unwrap_or_default()
    })
}

/// The tools worth asking about for some scopes: the generated ones, every
/// entry itself, and tools under every entry's upstream and its prefixes.
fn probes(scopes: &[&Scope], extra: &[String]) -> BTreeSet<String> {
    let mut out: BTreeSet<String> = extra.iter().cloned().collect();
    for s in scopes {
        for e in s.iter() {
            out.insert(e.to_owned());
            if let Some((u, _)) = e.split_once('.') {
                for end in 0..=u.len() {
                    if let Some(prefix) = u.get(..end) {
                        out.insert(format!("{prefix}.x"));
                        out.insert(format!("{prefix}.*"));
                        out.insert(format!("{prefix}z.x"));
                    }
                }
            }
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn covers_agrees_with_the_model(s in scope(), tools in proptest::collection::vec(tool(), 0..8)) {
        let set = entries(&s);
        for t in probes(&[&s], &tools) {
            prop_assert_eq!(s.covers(&t), model_covers(&set, &t), "tool {:?} scope {:?}", t, s);
        }
    }

    #[test]
    fn intersection_covers_exactly_what_both_cover(
        a in scope(),
        b in scope(),
        tools in proptest::collection::vec(tool(), 0..8),
    ) {
        let both = a.intersect(&b);
        for t in probes(&[&a, &b, &both], &tools) {
            // Never wider than either side, and no narrower than both.
            prop_assert_eq!(
                both.covers(&t),
                a.covers(&t) && b.covers(&t),
                "tool {:?}: {:?} ∩ {:?} = {:?}", t, a, b, both
            );
        }
        // Nothing is invented: every entry comes from one side, and a
        // wildcard survives only when both sides hold it.
        let (ea, eb) = (entries(&a), entries(&b));
        for e in both.iter() {
            prop_assert!(ea.contains(e) || eb.contains(e), "{:?} invented", e);
            let wildcard = e
                .strip_suffix(".*")
                .is_some_and(|w| !w.is_empty() && !w.contains('.'));
            if wildcard {
                prop_assert!(ea.contains(e) && eb.contains(e), "wildcard {:?} from one side only", e);
            }
        }
    }

    #[test]
    fn intersection_is_commutative(a in scope(), b in scope()) {
        prop_assert_eq!(a.intersect(&b), b.intersect(&a));
    }

    #[test]
    fn intersection_is_idempotent(a in scope(), b in scope()) {
        prop_assert_eq!(&a.intersect(&a), &a);
        let ab = a.intersect(&b);
        prop_assert_eq!(&ab.intersect(&b), &ab);
        prop_assert_eq!(ab.intersect(&a), ab);
    }

    #[test]
    fn intersection_is_associative_on_what_it_covers(
        a in scope(),
        b in scope(),
        c in scope(),
        tools in proptest::collection::vec(tool(), 0..8),
    ) {
        let left = a.intersect(&b).intersect(&c);
        let right = a.intersect(&b.intersect(&c));
        for t in probes(&[&a, &b, &c], &tools) {
            prop_assert_eq!(left.covers(&t), right.covers(&t), "tool {:?}", t);
        }
    }

    #[test]
    fn the_empty_scope_covers_nothing_and_absorbs(a in scope(), t in tool()) {
        prop_assert!(!Scope::default().covers(&t));
        prop_assert_eq!(a.intersect(&Scope::default()), Scope::default());
        prop_assert_eq!(Scope::default().intersect(&a), Scope::default());
    }

    #[test]
    fn the_oauth_string_round_trips(v in proptest::collection::vec("[ab.*x:/_-]{1,6}", 0..6)) {
        let s = Scope::parse(&v.join(" "));
        prop_assert_eq!(&Scope::parse(&s.to_oauth_string()), &s);
        prop_assert_eq!(entries(&s), v.into_iter().collect::<BTreeSet<_>>());
    }
}
