use crate::{Call, ConstraintKey, Intent, IntentError, Target};
use mandate_core::ToolClass;
use serde_json::{Map, Value, json};
use std::collections::BTreeSet;

fn intent(v: Value) -> Intent {
    match Intent::parse(&v) {
        Ok(i) => i,
        Err(e) => panic!("{v} was refused: {e}"),
    }
}

fn refused(v: Value) -> String {
    match Intent::parse(&v) {
        Ok(i) => panic!("{v} was accepted as {}", i.canonical()),
        Err(e) => {
            assert_eq!(e.error_code(), "invalid_authorization_details");
            let IntentError::Invalid(d) = &e;
            assert!(e.to_string().starts_with(d.at()));
            e.to_string()
        }
    }
}

fn grant(extra: Value) -> Value {
    let mut g = json!({"type": "mandate_tool_call", "tool": "bank.send_money"});
    if let (Some(g), Value::Object(extra)) = (g.as_object_mut(), extra) {
        g.extend(extra);
    }
    json!([g])
}

fn args(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        other => panic!("not an object: {other}"),
    }
}

fn none(_: &str, _: &Value) -> BTreeSet<String> {
    BTreeSet::new()
}

fn covers(i: &Intent, tool: &str, class: ToolClass, a: Value) -> Option<String> {
    let a = args(a);
    i.cover(&Call::new(tool, class, &a), &none)
        .covering()
        .first()
        .map(|c| c.identifier().to_owned())
}

const SEND: &str = "bank.send_money";
const FIN: ToolClass = ToolClass::Financial;

#[test]
fn the_wire_example_parses_covers_and_reads_aloud() {
    let i = intent(json!([{
        "type": "mandate_tool_call", "tool": "bank.send_money",
        "arguments": {"recipient": {"equals": "GB29NWBK60161331926819"}, "amount": {"max": 100}},
        "max_uses": 2
    }]));
    let g = &i.grants()[0];
    assert_eq!(g.identifier(), "g1");
    assert_eq!(g.target(), &Target::Tool(SEND.into()));
    assert_eq!(g.max_uses(), Some(2));
    assert_eq!(
        i.describe()[0].text,
        "bank.send_money, at most 2 times, amount ≤ 100, recipient = \"GB29NWBK60161331926819\", other arguments free"
    );
    let ok = json!({"recipient": "GB29NWBK60161331926819", "amount": 100});
    assert_eq!(covers(&i, SEND, FIN, ok).as_deref(), Some("g1"));
    // The attacker's IBAN: the recipient is constrained, so it is not covered.
    let evil = json!({"recipient": "US133000000121212121212", "amount": 1});
    assert_eq!(covers(&i, SEND, FIN, evil), None);
    // Over the bound, a number as text, a missing argument, another tool.
    assert_eq!(
        covers(
            &i,
            SEND,
            FIN,
            json!({"recipient": "GB29NWBK60161331926819", "amount": 100.5})
        ),
        None
    );
    assert_eq!(
        covers(
            &i,
            SEND,
            FIN,
            json!({"recipient": "GB29NWBK60161331926819", "amount": "50"})
        ),
        None
    );
    assert_eq!(
        covers(
            &i,
            SEND,
            FIN,
            json!({"recipient": "GB29NWBK60161331926819"})
        ),
        None
    );
    assert_eq!(
        covers(
            &i,
            "bank.schedule_transaction",
            FIN,
            json!({"recipient": "GB29NWBK60161331926819", "amount": 1})
        ),
        None
    );
}

#[test]
fn a_grant_without_a_constraint_covers_the_call_but_no_argument() {
    let i = intent(grant(json!({})));
    let a = args(json!({"recipient": "US133000000121212121212", "amount": 5}));
    let cov = i.cover(&Call::new(SEND, FIN, &a), &none);
    let c = &cov.covering()[0];
    assert!(c.constrained().is_empty());
    assert!(!c.constrains("recipient"));
    assert_eq!(c.unconstrained(&a), ["amount", "recipient"]);
    assert_eq!(
        i.describe()[0].text,
        "bank.send_money, any number of times while the task lasts, with any arguments"
    );
}

#[test]
fn misses_say_which_argument_failed_and_how() {
    let i = intent(json!([
        {"type": "mandate_tool_call", "tool": SEND, "arguments": {"recipient": {"prefix": "GB"}}},
        {"type": "mandate_tool_call", "tool": SEND, "arguments": {"amount": {"min": 1}}},
        {"type": "mandate_tool_call", "tool": "mail.send", "arguments": {"to": {"equals": "x"}}},
    ]));
    let a = args(json!({"recipient": "US13", "amount": 0}));
    let cov = i.cover(&Call::new(SEND, FIN, &a), &none);
    assert!(!cov.is_covered());
    let misses: Vec<String> = cov.misses().iter().map(ToString::to_string).collect();
    assert_eq!(
        misses,
        [
            "grant g1: argument recipient fails prefix",
            "grant g2: argument amount fails min"
        ]
    );
    let a = args(json!({"amount": 3}));
    let cov = i.cover(&Call::new(SEND, FIN, &a), &none);
    assert_eq!(cov.misses()[0].unmet().key(), None);
    assert_eq!(cov.misses()[0].unmet().argument(), "recipient");
    assert_eq!(cov.identifiers(), ["g2"]);
}

#[test]
fn coverage_lists_every_covering_grant_in_order() {
    let i = intent(json!([
        {"type": "mandate_tool_call", "tool": SEND, "identifier": "exact", "arguments": {"amount": {"equals": 10}}, "max_uses": 1},
        {"type": "mandate_tool_call", "class": "financial", "arguments": {"amount": {"max": 50}}},
        {"type": "mandate_tool_call", "class": "outbound"},
    ]));
    assert_eq!(i.grants()[1].identifier(), "g1");
    assert_eq!(i.grants()[2].identifier(), "g2");
    let a = args(json!({"amount": 10.0}));
    let cov = i.cover(&Call::new(SEND, FIN, &a), &none);
    assert_eq!(cov.identifiers(), ["exact", "g1"]);
    assert_eq!(
        cov.first_available(|id| id != "exact")
            .map(|c| c.identifier()),
        Some("g1")
    );
    assert_eq!(cov.get("exact").and_then(|c| c.max_uses()), Some(1));
    // The class is the call's configured class, whatever the tool's name.
    assert_eq!(
        covers(&i, "mail.send", ToolClass::Outbound, json!({})).as_deref(),
        Some("g2")
    );
    assert_eq!(covers(&i, "mail.send", ToolClass::Write, json!({})), None);
}

#[test]
fn every_key_of_a_constraint_must_hold() {
    let i = intent(grant(json!({"arguments": {"iban": {
        "prefix": "GB", "pattern": "[A-Z]{2}[0-9]{2}[A-Z0-9]{4,30}", "one_of": ["GB29NWBK6016", "GB00", "FR7630006000"]
    }}})));
    assert!(covers(&i, SEND, FIN, json!({"iban": "GB29NWBK6016"})).is_some());
    // In one_of but fails the pattern; matches the pattern but fails the prefix.
    assert!(covers(&i, SEND, FIN, json!({"iban": "GB00"})).is_none());
    assert!(covers(&i, SEND, FIN, json!({"iban": "FR7630006000"})).is_none());
}

#[test]
fn patterns_match_the_whole_value_and_cannot_escape_their_anchors() {
    let i = intent(grant(
        json!({"arguments": {"r": {"pattern": "GB[0-9]{2}"}}}),
    ));
    assert!(covers(&i, SEND, FIN, json!({"r": "GB29"})).is_some());
    assert!(covers(&i, SEND, FIN, json!({"r": "GB29X"})).is_none());
    assert!(covers(&i, SEND, FIN, json!({"r": "xGB29"})).is_none());
    assert!(covers(&i, SEND, FIN, json!({"r": "GB29\n"})).is_none());
    assert!(covers(&i, SEND, FIN, json!({"r": 29})).is_none());
    // Alternation binds inside the anchors.
    let i = intent(grant(json!({"arguments": {"r": {"pattern": "a|ab"}}})));
    assert!(covers(&i, SEND, FIN, json!({"r": "ab"})).is_some());
    assert!(covers(&i, SEND, FIN, json!({"r": "abc"})).is_none());
    // A pattern that would close the anchoring group is refused.
    let e = refused(grant(json!({"arguments": {"r": {"pattern": "a)|(b"}}})));
    assert!(
        e.contains("arguments.r.pattern: not a valid pattern"),
        "{e}"
    );
    assert!(
        refused(grant(json!({"arguments": {"r": {"pattern": "(?x)a#"}}})))
            .contains("not a valid pattern")
    );
}

#[test]
fn pattern_limits() {
    let long = "a".repeat(257);
    assert!(
        refused(grant(json!({"arguments": {"r": {"pattern": long}}}))).contains("1 to 256 bytes")
    );
    assert!(
        refused(grant(json!({"arguments": {"r": {"pattern": ""}}}))).contains("1 to 256 bytes")
    );
    let deep = format!("{}a{}", "(".repeat(20), ")".repeat(20));
    assert!(refused(grant(json!({"arguments": {"r": {"pattern": deep}}}))).contains("nesting"));
    // Unicode \w compiles to about 50 KB: forty are past the limit.
    let big = r"\w{1,40}";
    assert!(refused(grant(json!({"arguments": {"r": {"pattern": big}}}))).contains("size limit"));
    assert!(
        refused(grant(json!({"arguments": {"r": {"pattern": r"(a)\1"}}})))
            .contains("back-references")
    );
    // An IBAN-like pattern is well within the limits.
    intent(grant(
        json!({"arguments": {"r": {"pattern": r"[A-Z]{2}\d{2}[A-Z0-9]{11,30}"}}}),
    ));
    intent(grant(
        json!({"arguments": {"r": {"pattern": r"[A-Za-z0-9._-]{1,64}@example\.com"}}}),
    ));
    intent(grant(json!({"arguments": {"r": {"pattern": r"\w{1,10}"}}})));
    let patterns: Map<String, Value> = (0..9)
        .map(|i| (format!("a{i}"), json!({"pattern": "x"})))
        .collect();
    let mut two = grant(
        json!({"arguments": patterns.iter().take(5).map(|(k, v)| (k.clone(), v.clone())).collect::<Map<_, _>>()}),
    );
    let more = grant(
        json!({"arguments": patterns.iter().skip(5).map(|(k, v)| (k.clone(), v.clone())).collect::<Map<_, _>>()}),
    );
    if let (Some(list), Some(g)) = (two.as_array_mut(), more.get(0)) {
        list.push(g.clone());
    }
    assert!(refused(two).contains("at most 8 patterns in one intent"));
}

#[test]
fn returned_by_asks_provenance_about_that_argument_and_value() {
    let i = intent(grant(
        json!({"arguments": {"recipient": {"returned_by": "bank.get_most_recent_transactions"}}}),
    ));
    let a = args(json!({"recipient": "GB00", "amount": 1}));
    let from_history = |arg: &str, v: &Value| -> BTreeSet<String> {
        if arg == "recipient" && v == &json!("GB00") {
            BTreeSet::from(["bank.get_most_recent_transactions".to_owned()])
        } else {
            BTreeSet::from(["web.get_webpage".to_owned()])
        }
    };
    assert!(
        i.cover(&Call::new(SEND, FIN, &a), &from_history)
            .is_covered()
    );
    let a = args(json!({"recipient": "EVIL", "amount": 1}));
    let cov = i.cover(&Call::new(SEND, FIN, &a), &from_history);
    assert_eq!(
        cov.misses()[0].unmet().key(),
        Some(ConstraintKey::ReturnedBy)
    );
    assert!(!i.cover(&Call::new(SEND, FIN, &a), &none).is_covered());
    assert_eq!(
        i.describe()[0].text,
        "bank.send_money, any number of times while the task lasts, recipient taken from what bank.get_most_recent_transactions returned, other arguments free"
    );
}

#[test]
fn equals_compares_numbers_by_value_and_strings_exactly() {
    let i = intent(grant(
        json!({"arguments": {"amount": {"equals": 10.0}, "subject": {"equals": "VAT"}}}),
    ));
    assert!(covers(&i, SEND, FIN, json!({"amount": 10, "subject": "VAT"})).is_some());
    assert!(covers(&i, SEND, FIN, json!({"amount": 10, "subject": "vat"})).is_none());
    assert!(
        covers(
            &i,
            SEND,
            FIN,
            json!({"amount": 10, "subject": "VAT\u{200B}"})
        )
        .is_none()
    );
    assert!(covers(&i, SEND, FIN, json!({"amount": "10", "subject": "VAT"})).is_none());
    let i = intent(grant(
        json!({"arguments": {"to": {"equals": {"name": "Bob", "ids": [1, 2]}}, "n": {"equals": null}}}),
    ));
    assert!(
        covers(
            &i,
            SEND,
            FIN,
            json!({"to": {"ids": [1.0, 2], "name": "Bob"}, "n": null})
        )
        .is_some()
    );
    assert!(
        covers(
            &i,
            SEND,
            FIN,
            json!({"to": {"ids": [2, 1], "name": "Bob"}, "n": null})
        )
        .is_none()
    );
    assert!(covers(&i, SEND, FIN, json!({"to": {"ids": [1, 2], "name": "Bob"}})).is_none());
}

#[test]
fn bounds() {
    let i = intent(grant(
        json!({"arguments": {"amount": {"min": 0.5, "max": 100}}}),
    ));
    for (amount, ok) in [
        (json!(0.5), true),
        (json!(100), true),
        (json!(100.0), true),
        (json!(0), false),
        (json!(100.01), false),
        (json!(u64::MAX), false),
        (json!(-1), false),
        (json!(null), false),
    ] {
        assert_eq!(
            covers(&i, SEND, FIN, json!({"amount": amount})).is_some(),
            ok,
            "{amount}"
        );
    }
    assert!(
        refused(grant(json!({"arguments": {"a": {"min": 5, "max": 4}}})))
            .contains("min is greater than max")
    );
    assert!(
        refused(grant(
            json!({"arguments": {"a": {"max": 9_007_199_254_740_992_u64}}})
        ))
        .contains("2^53")
    );
    assert!(refused(grant(json!({"arguments": {"a": {"min": -1e300}}}))).contains("2^53"));
    assert!(
        refused(grant(json!({"arguments": {"a": {"max": "100"}}}))).contains("a bound is a number")
    );
    intent(grant(
        json!({"arguments": {"a": {"max": 9_007_199_254_740_991_i64, "min": -9_007_199_254_740_991_i64}}}),
    ));
}

#[test]
fn what_is_refused_and_how_it_is_said() {
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"type": "mandate_tool_call"}),
            "is a JSON array of mandate_tool_call objects",
        ),
        (
            json!([1]),
            "authorization_details[0]: an authorization_details entry is a JSON object",
        ),
        (
            json!([{"tool": SEND}]),
            "authorization_details[0].type: type is required",
        ),
        (
            json!([{"type": "payment_initiation", "tool": SEND}]),
            "unknown authorization details type 'payment_initiation'",
        ),
        (
            grant(json!({"locations": ["https://bank.example"]})),
            "authorization_details[0].locations: unknown member 'locations'",
        ),
        (
            grant(json!({"class": "financial"})),
            "a tool or a class, not both",
        ),
        (
            json!([{"type": "mandate_tool_call"}]),
            "a grant names a tool or a class",
        ),
        (
            json!([{"type": "mandate_tool_call", "tool": "bank.*"}]),
            "no wildcards",
        ),
        (
            json!([{"type": "mandate_tool_call", "tool": "send_money"}]),
            "upstream.tool",
        ),
        (
            json!([{"type": "mandate_tool_call", "tool": "bank.send money"}]),
            "upstream.tool",
        ),
        (
            json!([{"type": "mandate_tool_call", "tool": 3}]),
            "tool is a string",
        ),
        (
            json!([{"type": "mandate_tool_call", "class": "money"}]),
            "unknown tool class 'money'",
        ),
        (grant(json!({"arguments": []})), "arguments is an object"),
        (
            grant(json!({"arguments": {"r": "GB29"}})),
            "arguments.r: a constraint is a JSON object",
        ),
        (
            grant(json!({"arguments": {"r": {}}})),
            "needs at least one of",
        ),
        (
            grant(json!({"arguments": {"r": {"eq": "x"}}})),
            "arguments.r.eq: unknown constraint 'eq'",
        ),
        (
            grant(json!({"arguments": {"r": {"one_of": []}}})),
            "one_of holds 1 to 64 values",
        ),
        (
            grant(json!({"arguments": {"r": {"one_of": "x"}}})),
            "one_of is an array",
        ),
        (
            grant(json!({"arguments": {"r": {"prefix": ""}}})),
            "a prefix is 1 to 1024 bytes",
        ),
        (
            grant(json!({"arguments": {"r": {"returned_by": "history"}}})),
            "returned_by: a tool is named",
        ),
        (
            grant(json!({"arguments": {"r": {"returned_by": []}}})),
            "returned_by names 1 to 16 tools",
        ),
        (
            grant(json!({"arguments": {"r": {"returned_by": ["a.b", 1]}}})),
            "returned_by[1]: a tool name is a string",
        ),
        (
            grant(json!({"arguments": {"": {"equals": 1}}})),
            "an argument name is 1 to 128 bytes",
        ),
        (
            grant(json!({"arguments": {"r\u{202E}": {"equals": 1}}})),
            "['r?']: an argument name",
        ),
        (
            grant(json!({"max_uses": 0})),
            "max_uses is a whole number from 1 to 10000",
        ),
        (
            grant(json!({"max_uses": 10_001})),
            "max_uses is a whole number",
        ),
        (
            grant(json!({"max_uses": 1.5})),
            "max_uses is a whole number",
        ),
        (
            grant(json!({"max_uses": "2"})),
            "max_uses is a whole number",
        ),
        (
            grant(json!({"identifier": "has space"})),
            "an identifier is 1 to 64 characters",
        ),
        (
            json!([{"type": "mandate_tool_call", "tool": SEND, "identifier": "a"},
                {"type": "mandate_tool_call", "tool": SEND, "identifier": "a"}]),
            "[1].identifier: this identifier is used",
        ),
        (
            grant(json!({"arguments": {"r": {"equals": [[[[[[[[[1]]]]]]]]]}}})),
            "nests at most 8 deep",
        ),
        (
            grant(json!({"arguments": {"r": {"equals": "x".repeat(1100)}}})),
            "at most 1024 bytes of JSON",
        ),
    ];
    for (v, want) in cases {
        let got = refused(v.clone());
        assert!(got.contains(want), "{v}: {got:?} does not say {want:?}");
        assert!(
            got.chars()
                .all(|c| c == ' ' || c.is_ascii_graphic() && c != '"' && c != '\\'),
            "{got:?}"
        );
    }
    let many: Vec<Value> = (0..33)
        .map(|_| json!({"type": "mandate_tool_call", "tool": SEND}))
        .collect();
    assert!(refused(Value::Array(many)).contains("at most 32 grants"));
    let args: Map<String, Value> = (0..17)
        .map(|i| (format!("a{i}"), json!({"equals": i})))
        .collect();
    assert!(
        refused(grant(json!({"arguments": args}))).contains("at most 16 constrained arguments")
    );
    let one_of: Vec<Value> = (0..65).map(Value::from).collect();
    assert!(refused(grant(json!({"arguments": {"r": {"one_of": one_of}}}))).contains("1 to 64"));
    let Err(e) = Intent::parse_str("[{") else {
        panic!("accepted")
    };
    assert!(e.to_string().contains("not valid JSON"));
    let Err(e) = Intent::parse_str(&" ".repeat(70_000)) else {
        panic!("accepted")
    };
    assert!(e.to_string().contains("at most 65536 bytes"));
}

#[test]
fn identifiers_are_kept_or_assigned_without_clashing() {
    let i = intent(json!([
        {"type": "mandate_tool_call", "tool": SEND},
        {"type": "mandate_tool_call", "tool": SEND, "identifier": "g1"},
        {"type": "mandate_tool_call", "tool": SEND},
        {"type": "mandate_tool_call", "tool": SEND, "identifier": "pay-rent"},
    ]));
    let ids: Vec<&str> = i.grants().iter().map(|g| g.identifier()).collect();
    assert_eq!(ids, ["g2", "g1", "g3", "pay-rent"]);
    assert!(i.grant("pay-rent").is_some() && i.grant("g4").is_none());
    assert!(intent(json!([])).is_empty());
    assert_eq!(intent(json!([])).to_string(), "nothing");
}

#[test]
fn the_canonical_form_and_hash() {
    let a = intent(
        json!([{"max_uses": 1, "tool": SEND, "type": "mandate_tool_call",
        "arguments": {"r": {"one_of": ["b", "a", "b", 2, 1.0]}, "s": {"returned_by": "bank.history"}}}]),
    );
    assert_eq!(
        a.canonical(),
        r#"[{"arguments":{"r":{"one_of":["a","b",1.0,2]},"s":{"returned_by":["bank.history"]}},"identifier":"g1","max_uses":1,"tool":"bank.send_money","type":"mandate_tool_call"}]"#
    );
    let again = intent(a.to_json());
    assert_eq!(again, a);
    assert_eq!(again.hash(), a.hash());
    assert_eq!(a.hash().len(), 64);
    // The same request written differently hashes the same; any change, not.
    let b = Intent::parse_str(
        r#"[ {"type":"mandate_tool_call","tool":"bank.send_money","max_uses":1,
        "arguments":{"s":{"returned_by":["bank.history"]},"r":{"one_of":[1.0,2,"a","b"]}}} ]"#,
    );
    assert_eq!(b.map(|b| b.hash()).ok(), Some(a.hash()));
    let c = intent(
        json!([{"max_uses": 2, "tool": SEND, "type": "mandate_tool_call",
        "arguments": {"r": {"one_of": ["b", "a", 2, 1.0]}, "s": {"returned_by": "bank.history"}}}]),
    );
    assert_ne!(c.hash(), a.hash());
    // Through serde.
    let text = serde_json::to_string(&a).unwrap_or_default();
    let back: Intent = serde_json::from_str(&text).unwrap_or_default();
    assert_eq!(back, a);
    assert!(serde_json::from_str::<Intent>("[{\"type\":\"x\"}]").is_err());
}

#[test]
fn the_words_leave_nothing_hidden() {
    let i = intent(json!([
        {"type": "mandate_tool_call", "class": "access_control", "max_uses": 1,
         "arguments": {"user": {"one_of": ["Dora", "Eve\u{202E}"]}, "note text": {"prefix": "Hi \"there\""}}},
        {"type": "mandate_tool_call", "tool": "slack.get_webpage",
         "arguments": {"url": {"pattern": "www\\.[a-z-]+\\.com", "min": 1}, "n": {"min": 2}}},
    ]));
    let lines = i.describe();
    assert_eq!(
        lines[0].text,
        r#"any access control tool, once, "note text" starts with "Hi \"there\"", user one of "Dora", "Eve\u{202E}", other arguments free"#
    );
    assert_eq!(
        lines[1].text,
        r#"slack.get_webpage, any number of times while the task lasts, n ≥ 2, url ≥ 1, url matches the pattern "www\\.[a-z-]+\\.com" in full, other arguments free"#
    );
    assert_eq!(lines[1].identifier, "g2");
}

fn class_of(tool: &str) -> Option<ToolClass> {
    match tool {
        "bank.send_money" => Some(ToolClass::Financial),
        "mail.send" => Some(ToolClass::Outbound),
        _ => None,
    }
}

#[test]
fn narrowing() {
    let wide = intent(json!([
        {"type": "mandate_tool_call", "tool": SEND, "arguments": {"amount": {"max": 100}, "recipient": {"prefix": "GB"}}, "max_uses": 3},
        {"type": "mandate_tool_call", "class": "outbound"},
    ]));
    let narrower = |v: Value| intent(v).is_narrower_than_with(&wide, &class_of);
    assert!(wide.is_narrower_than(&wide));
    assert!(intent(json!([])).is_narrower_than(&wide));
    // Tighter bound, longer prefix, an extra constraint, fewer uses, a value within.
    assert!(narrower(
        json!([{"type": "mandate_tool_call", "tool": SEND, "max_uses": 2,
        "arguments": {"amount": {"max": 50, "min": 1}, "recipient": {"equals": "GB29NWBK"}, "subject": {"equals": "rent"}}}])
    ));
    assert!(narrower(
        json!([{"type": "mandate_tool_call", "tool": SEND, "max_uses": 1,
        "arguments": {"amount": {"one_of": [5, 100.0]}, "recipient": {"prefix": "GB29", "pattern": "GB.*"}}}])
    ));
    // A tool of the class within the class grant (the class as configured).
    assert!(narrower(
        json!([{"type": "mandate_tool_call", "tool": "mail.send", "max_uses": 9}])
    ));
    assert!(
        !intent(json!([{"type": "mandate_tool_call", "tool": "mail.send"}]))
            .is_narrower_than(&wide)
    );
    // Wider: a missing constraint, a higher bound, a shorter prefix, a value outside, more uses, no count.
    for v in [
        json!({"arguments": {"amount": {"max": 100}}, "max_uses": 1}),
        json!({"arguments": {"amount": {"max": 101}, "recipient": {"prefix": "GB"}}, "max_uses": 1}),
        json!({"arguments": {"amount": {"max": 100}, "recipient": {"prefix": "G"}}, "max_uses": 1}),
        json!({"arguments": {"amount": {"one_of": [5, 101]}, "recipient": {"prefix": "GB"}}, "max_uses": 1}),
        json!({"arguments": {"amount": {"max": 100}, "recipient": {"pattern": "GB.*"}}, "max_uses": 1}),
        json!({"arguments": {"amount": {"max": 100}, "recipient": {"prefix": "GB"}}, "max_uses": 4}),
        json!({"arguments": {"amount": {"max": 100}, "recipient": {"prefix": "GB"}}}),
    ] {
        assert!(!narrower(grant(v.clone())), "{v}");
    }
    // Uses add up: two grants of 2 do not fit in one of 3, 2 + 1 do.
    let g = json!({"type": "mandate_tool_call", "tool": SEND, "arguments": {"amount": {"max": 10}, "recipient": {"prefix": "GB"}}, "max_uses": 2});
    assert!(!narrower(json!([g, g])));
    let mut one = g.clone();
    one["max_uses"] = json!(1);
    assert!(narrower(json!([g, one])));
    // A class grant is never within a tool grant.
    let financial =
        intent(json!([{"type": "mandate_tool_call", "class": "financial", "max_uses": 1}]));
    assert!(!financial.is_narrower_than_with(&intent(grant(json!({}))), &class_of));
}

#[test]
fn uses_may_be_split_across_the_grants_above() {
    // Two wide grants of 1 use each, both above a narrow grant of 2.
    let wide = intent(json!([
        {"type": "mandate_tool_call", "tool": SEND, "max_uses": 1},
        {"type": "mandate_tool_call", "tool": SEND, "arguments": {"amount": {"max": 10}}, "max_uses": 1},
    ]));
    let two = intent(grant(
        json!({"arguments": {"amount": {"max": 5}}, "max_uses": 2}),
    ));
    assert!(two.is_narrower_than(&wide));
    let three = intent(grant(
        json!({"arguments": {"amount": {"max": 5}}, "max_uses": 3}),
    ));
    assert!(!three.is_narrower_than(&wide));
    // Only the first wide grant is above an unconstrained one: 1 use.
    assert!(!intent(grant(json!({"max_uses": 2}))).is_narrower_than(&wide));
    assert!(intent(grant(json!({"max_uses": 1}))).is_narrower_than(&wide));
    // Equivalent forms are narrower than each other.
    let merged = intent(json!([{"type": "mandate_tool_call", "tool": SEND, "max_uses": 2}]));
    let split = intent(
        json!([{"type": "mandate_tool_call", "tool": SEND, "max_uses": 1},
                              {"type": "mandate_tool_call", "tool": SEND, "max_uses": 1, "identifier": "x"}]),
    );
    assert!(merged.is_narrower_than(&split) && split.is_narrower_than(&merged));
}

#[test]
fn provenance_only_narrows_to_fewer_sources() {
    let wide = intent(grant(
        json!({"arguments": {"r": {"returned_by": ["bank.a", "bank.b"]}}}),
    ));
    assert!(
        intent(grant(
            json!({"arguments": {"r": {"returned_by": "bank.a", "prefix": "GB"}}})
        ))
        .is_narrower_than(&wide)
    );
    assert!(
        !intent(grant(
            json!({"arguments": {"r": {"returned_by": ["bank.a", "bank.c"]}}})
        ))
        .is_narrower_than(&wide)
    );
    // A fixed value is no narrower than "whatever bank.a returned": it may come from elsewhere.
    assert!(
        !intent(grant(json!({"arguments": {"r": {"equals": "GB00"}}}))).is_narrower_than(&wide)
    );
}
