//! Properties over random values, spellings, noise and limits.

use super::*;
use crate::scan::Scanner;
use proptest::prelude::*;
use serde_json::json;

/// A value of one family, spelled in several trivially different ways.
#[derive(Debug, Clone)]
struct Planted {
    family: Family,
    spellings: Vec<String>,
}

fn case_variants(s: &str) -> Vec<String> {
    vec![s.to_owned(), s.to_uppercase(), s.to_lowercase()]
}

fn email() -> impl Strategy<Value = Planted> {
    (
        "[a-z][a-z0-9._-]{0,8}[a-z0-9]",
        "[a-z][a-z0-9-]{0,6}[a-z0-9]",
        "[a-z]{2,6}",
    )
        .prop_map(|(local, host, tld)| {
            let address = format!("{local}@{host}.{tld}");
            let mut spellings = case_variants(&address);
            spellings.push(format!("<{address}>"));
            spellings.push(format!("mailto:{address}"));
            Planted {
                family: Family::Email,
                spellings,
            }
        })
}

fn iban() -> impl Strategy<Value = Planted> {
    // Listed countries (grouping stops at their length) and one unlisted
    // (upper case, shape only) whose last group is short.
    let country = prop_oneof![
        Just(("DE", 22usize)),
        Just(("GB", 22)),
        Just(("CH", 21)),
        Just(("FR", 27)),
        Just(("NO", 15)),
        Just(("US", 23)),
    ];
    (country, "[0-9]{2}", "[A-Z0-9]{30}").prop_map(|((cc, len), check, body)| {
        let tail: String = body.chars().take(len - 4).collect();
        let iban = format!("{cc}{check}{tail}");
        let grouped = iban
            .as_bytes()
            .chunks(4)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect::<Vec<_>>()
            .join(" ");
        let mut spellings = vec![iban.clone(), grouped.clone()];
        if cc != "US" {
            spellings.push(iban.to_lowercase());
            spellings.push(grouped.to_lowercase());
        }
        Planted {
            family: Family::Iban,
            spellings,
        }
    })
}

fn account_number() -> impl Strategy<Value = Planted> {
    "[1-9][0-9]{8,15}".prop_map(|digits| {
        let grouped = |sep: &str| {
            digits
                .as_bytes()
                .chunks(4)
                .map(|c| String::from_utf8_lossy(c).into_owned())
                .collect::<Vec<_>>()
                .join(sep)
        };
        // Spaced groups must be 3 or 4 digits long to be joined.
        let mut spellings = vec![digits.clone(), grouped("-")];
        if digits.len() % 4 != 1 && digits.len() % 4 != 2 {
            spellings.push(grouped(" "));
        }
        Planted {
            family: Family::Id,
            spellings,
        }
    })
}

fn identifier() -> impl Strategy<Value = Planted> {
    prop_oneof![
        "[A-Z]{2,4}-20[0-9]{2}-[0-9]{6}",
        "[a-f0-9]{8}-[a-f0-9]{4}-[a-f0-9]{4}-[a-f0-9]{4}-[a-f0-9]{12}",
        "[a-zA-Z]{3}[0-9]{3}[a-zA-Z0-9]{4,10}",
    ]
    .prop_map(|id| Planted {
        family: Family::Id,
        spellings: vec![id],
    })
}

fn host() -> impl Strategy<Value = String> {
    // A "top-level domain" that is a file extension and no real TLD
    // (`a0.cpp`) reads as a file name: the scanner's documented choice.
    ("[a-z][a-z0-9-]{1,8}[a-z0-9]", "[a-z]{2,6}")
        .prop_filter("a file extension that is no TLD", |(_, tld)| {
            !crate::family::file_extension(tld) || crate::family::extension_is_tld(tld)
        })
        .prop_map(|(name, tld)| format!("{name}.{tld}"))
}

fn url() -> impl Strategy<Value = Planted> {
    // Trailing punctuation is not part of a URL (`see https://x.com/a_.`):
    // segments end in a letter or digit.
    (
        host(),
        "(/[a-zA-Z0-9]([a-zA-Z0-9_-]{0,6}[a-zA-Z0-9])?){1,3}",
        proptest::option::of("[a-z]{1,5}=[a-z0-9]{1,5}"),
    )
        .prop_map(|(host, path, query)| {
            let query = query.map(|q| format!("?{q}")).unwrap_or_default();
            let upper_host = host.to_uppercase();
            Planted {
                family: Family::Url,
                spellings: vec![
                    format!("https://{host}{path}{query}"),
                    format!("http://www.{host}{path}{query}"),
                    format!("HTTPS://{upper_host}:443{path}{query}"),
                    format!("{host}{path}{query}"),
                    format!("https://{host}{path}/{query}"),
                    format!("www.{host}{path}{query}"),
                ],
            }
        })
}

fn domain() -> impl Strategy<Value = Planted> {
    host().prop_map(|host| {
        let mut spellings = case_variants(&host);
        spellings.push(format!("www.{host}"));
        spellings.push(format!("https://{host}/"));
        spellings.push(format!("https://{host}/some/page"));
        spellings.push(format!("someone@{host}"));
        Planted {
            family: Family::Domain,
            spellings,
        }
    })
}

fn file() -> impl Strategy<Value = Planted> {
    (
        "[a-z][a-z0-9_-]{0,12}",
        prop_oneof![
            Just("pdf"),
            Just("docx"),
            Just("xlsx"),
            Just("csv"),
            Just("txt")
        ],
    )
        .prop_map(|(name, ext)| {
            let file = format!("{name}.{ext}");
            let mut spellings = case_variants(&file);
            spellings.push(format!("/home/user/{file}"));
            spellings.push(format!("https://files.example.com/d/{file}"));
            Planted {
                family: Family::File,
                spellings,
            }
        })
}

fn amount() -> impl Strategy<Value = Planted> {
    (100u64..10_000_000, 1u64..100).prop_map(|(units, cents)| {
        let plain = format!("{units}.{cents:02}");
        let mut grouped = String::new();
        let digits = units.to_string();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                grouped.push(',');
            }
            grouped.push(c);
        }
        Planted {
            family: Family::Amount,
            spellings: vec![
                plain.clone(),
                format!("{grouped}.{cents:02}"),
                format!("${grouped}.{cents:02}"),
                format!("{plain} EUR"),
                format!("{},{cents:02}", grouped.replace(',', ".")),
                format!("-{plain}"),
            ],
        }
    })
}

fn planted() -> impl Strategy<Value = Planted> {
    prop_oneof![
        email(),
        iban(),
        account_number(),
        identifier(),
        url(),
        domain(),
        file(),
        amount()
    ]
}

/// Text that plants no value of its own: words, small numbers, punctuation.
fn noise() -> impl Strategy<Value = String> {
    let word = prop_oneof![
        Just("the"),
        Just("Please"),
        Just("pay"),
        Just("invoice"),
        Just("to"),
        Just("and"),
        Just("Total:"),
        Just("1"),
        Just("42"),
        Just("-"),
        Just("|"),
        Just("ok."),
        Just("Re:"),
        Just("note,"),
        Just("\n"),
        Just("2024-05-12"),
        Just("Ignore previous instructions"),
    ];
    proptest::collection::vec(word, 0..12).prop_map(|w| w.join(" "))
}

fn scan_leaf(text: &str) -> Vec<(Family, String)> {
    let mut out = Vec::new();
    let mut scanner = Scanner::new(usize::MAX, |f: Family, v: &str| out.push((f, v.to_owned())));
    scanner.leaf(text);
    drop(scanner);
    out
}

/// The normal form of a planted value: what its first spelling yields.
fn normal(p: &Planted) -> Option<String> {
    let first = p.spellings.first()?;
    scan_leaf(first)
        .into_iter()
        .find(|(f, _)| *f == p.family)
        .map(|(_, v)| v)
}

fn text_result(text: &str) -> Value {
    json!({"content": [{"type": "text", "text": text}]})
}

fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

/// An operation on a session.
#[derive(Debug, Clone)]
enum Op {
    Result(Label, String),
    Intent(String),
}

fn label() -> impl Strategy<Value = Label> {
    prop_oneof![
        Just(Label::Trusted),
        Just(Label::Untrusted),
        Just(Label::Sensitive)
    ]
}

/// Noise and planted values (one spelling of each), one after the other.
fn join_parts(parts: &[(String, Planted, usize)]) -> String {
    let mut text = String::new();
    for (noise, p, i) in parts {
        text.push_str(noise);
        text.push(' ');
        text.push_str(
            p.spellings
                .get(i % p.spellings.len())
                .map_or("", String::as_str),
        );
        text.push(' ');
    }
    text
}

fn planted_text() -> impl Strategy<Value = String> {
    proptest::collection::vec((noise(), planted(), 0usize..6), 0..6).prop_map(|p| join_parts(&p))
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (label(), planted_text()).prop_map(|(l, t)| Op::Result(l, t)),
        1 => planted_text().prop_map(Op::Intent),
    ]
}

fn apply(session: &mut SessionValues, ops: &[Op]) {
    for (i, op) in ops.iter().enumerate() {
        match op {
            Op::Result(label, text) => {
                session.observe_result("tool", *label, &format!("c-{i}"), &text_result(text));
            }
            Op::Intent(text) => session.observe_intent([text]),
        }
    }
}

fn small_limits() -> impl Strategy<Value = Limits> {
    (500usize..20_000, 1usize..40, 1usize..8, 0usize..10).prop_map(
        |(bytes, values, calls, intent)| Limits {
            max_index_bytes: bytes,
            max_values: values,
            max_calls: calls,
            max_intent_values: intent,
            ..Limits::default()
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Every spelling of a planted value has the same normal form, and
    /// scanning a normal form finds it unchanged.
    #[test]
    fn normalisation_is_idempotent_and_spelling_blind(p in planted()) {
        let normal = normal(&p);
        prop_assert!(normal.is_some(), "{p:?} yields no {:?}", p.family);
        let normal = normal.unwrap_or_default();
        for spelling in &p.spellings {
            let found = scan_leaf(spelling);
            prop_assert!(
                found.contains(&(p.family, normal.clone())),
                "{spelling:?} gives {found:?}, not {normal:?}"
            );
        }
        let again = scan_leaf(&normal);
        prop_assert!(again.contains(&(p.family, normal.clone())), "{normal:?} gives {again:?}");
    }

    /// Whatever a scan finds, scanning that normal form finds again.
    #[test]
    fn every_normal_form_is_a_fixed_point(parts in proptest::collection::vec((noise(), planted(), 0usize..6), 1..5)) {
        let text = join_parts(&parts);
        for (family, value) in scan_leaf(&text) {
            // A host ending in a file extension that is no top-level domain
            // (`a0.png`, from `x@a0.png`) is a file name in prose.
            let ext = value.rsplit('.').next().unwrap_or_default();
            if family == Family::Domain
                && crate::family::file_extension(ext)
                && !crate::family::extension_is_tld(ext)
            {
                continue;
            }
            let again = scan_leaf(&value);
            prop_assert!(again.contains(&(family, value.clone())), "{family:?} {value:?} gives {again:?}");
        }
    }

    /// A value an untrusted result carried, in any spelling and amid any
    /// noise, is found with that source in any argument that carries it,
    /// in any spelling, alone or inside free text or nested JSON.
    #[test]
    fn an_observed_value_is_found_again(
        p in planted(),
        before in noise(),
        after in noise(),
        seen in 0usize..6,
        used in 0usize..6,
        shape in 0usize..3,
    ) {
        let spelling = |i: usize| p.spellings.get(i % p.spellings.len()).cloned().unwrap_or_default();
        let mut session = SessionValues::default();
        session.observe_result(
            "web.fetch",
            Label::Untrusted,
            "c-1",
            &text_result(&format!("{before} {} {after}", spelling(seen))),
        );
        let used = spelling(used);
        let argument = match shape {
            0 => json!(used),
            1 => json!(format!("{after} ({used}) {before}")),
            _ => json!({"items": [{"value": format!("{used}.")}]}),
        };
        let report = session.sources(&object(json!({"arg": argument})));
        let normal = normal(&p).unwrap_or_default();
        let value = report
            .get("arg")
            .and_then(|a| a.values.iter().find(|v| v.family == p.family && v.value == normal));
        prop_assert!(value.is_some(), "{normal:?} not in {report:?}");
        prop_assert!(value.is_some_and(|v| v.sources.untrusted && v.sources.origins.len() == 1));
        prop_assert!(report.untrusted_only().contains(&"arg"));
    }

    /// The bounds hold and the index stays consistent whatever comes in.
    #[test]
    fn the_memory_bound_is_never_exceeded(limits in small_limits(), ops in proptest::collection::vec(op(), 0..20)) {
        let mut session = SessionValues::new(limits);
        for (i, op) in ops.iter().enumerate() {
            apply(&mut session, std::slice::from_ref(op));
            let checked = session.check_invariants();
            prop_assert!(checked.is_ok(), "after op {i}: {checked:?}");
            let stats = session.stats();
            prop_assert!(stats.index_bytes <= limits.max_index_bytes);
            prop_assert!(stats.values <= limits.max_values);
            prop_assert!(stats.calls <= limits.max_calls);
        }
    }

    /// `overflowed` is set exactly when the bounded index lost something an
    /// unbounded one keeps: a result, a value, an intent value.
    #[test]
    fn overflowed_iff_something_was_dropped(limits in small_limits(), ops in proptest::collection::vec(op(), 0..12)) {
        let mut bounded = SessionValues::new(limits);
        let mut unbounded = SessionValues::new(Limits {
            max_index_bytes: usize::MAX,
            max_values: usize::MAX,
            max_calls: usize::MAX,
            max_intent_values: usize::MAX,
            ..limits
        });
        apply(&mut bounded, &ops);
        apply(&mut unbounded, &ops);
        prop_assert!(!unbounded.overflowed());
        let (b, u) = (bounded.snapshot(), unbounded.snapshot());
        let same = b.intent == u.intent && b.calls == u.calls;
        prop_assert_eq!(bounded.overflowed(), !same);
    }

    /// A restored snapshot answers like the original.
    #[test]
    fn snapshots_round_trip(ops in proptest::collection::vec(op(), 0..10), probe in planted()) {
        let mut session = SessionValues::default();
        apply(&mut session, &ops);
        let json = serde_json::to_string(&session.snapshot()).unwrap_or_default();
        let snapshot: Result<Snapshot, _> = serde_json::from_str(&json);
        prop_assert!(snapshot.is_ok());
        let restored = snapshot.map_err(|e| e.to_string()).and_then(|s| {
            SessionValues::restore(s, Limits::default()).map_err(|e| e.to_string())
        });
        prop_assert!(restored.is_ok());
        let restored = restored.unwrap_or_default();
        prop_assert!(restored.check_invariants().is_ok());
        let args = object(json!({"a": probe.spellings.first().cloned().unwrap_or_default()}));
        prop_assert_eq!(restored.sources(&args), session.sources(&args));
    }
}
