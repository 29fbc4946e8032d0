//! Properties of intents, checked on generated ones.
//!
//! * parse ∘ serialise is the identity (and keeps the hash);
//! * a grant covers a call exactly when its target matches and every
//!   constraint holds, by a reference evaluator written here from the
//!   wire semantics (so a failing constraint never covers);
//! * narrowing is reflexive and transitive, every intent derived by
//!   narrowing steps is found narrower, and what a narrower intent covers
//!   the wider one covers.

#![expect(
    clippy::indexing_slicing,
    reason = "test helpers: serde_json's `value[key] = …` edits generated grants (objects by construction), and the matching indexes slots it sized itself"
)]

use mandate_core::ToolClass;
use mandate_intent::{Call, Intent};
use proptest::prelude::*;
use proptest::sample::select;
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, BTreeSet};

const TOOLS: [&str; 3] = ["bank.send_money", "bank.history", "mail.send"];
const SOURCES: [&str; 2] = ["bank.history", "web.get"];
const ARGS: [&str; 4] = ["a", "b", "c", "d"];
const STRINGS: [&str; 9] = [
    "",
    "GB",
    "GB29",
    "GB29X",
    "x",
    "ab",
    "abc",
    "a\u{202E}b",
    "b\u{200B}",
];
const PATTERNS: [&str; 5] = ["GB[0-9]+", "[a-z]+", "a|ab", ".*", "x"];
const PREFIXES: [&str; 4] = ["G", "GB", "a", "ab"];

fn class_of(tool: &str) -> Option<ToolClass> {
    match tool {
        "bank.send_money" => Some(ToolClass::Financial),
        "bank.history" => Some(ToolClass::Read),
        "mail.send" => Some(ToolClass::Outbound),
        _ => None,
    }
}

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        (-3_i64..12).prop_map(Value::from),
        select(vec![0.5, 10.0, -1.5, 2.0]).prop_map(Value::from),
        select(STRINGS.to_vec()).prop_map(Value::from),
    ]
}

fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        (-3_i64..12).prop_map(Value::from),
        select(vec![0.5, 10.0, 2.0]).prop_map(Value::from)
    ]
}

fn constraint() -> impl Strategy<Value = Value> {
    (
        proptest::option::weighted(0.2, value()),
        proptest::option::weighted(0.2, proptest::collection::vec(value(), 1..4)),
        proptest::option::weighted(0.25, number()),
        proptest::option::weighted(0.25, number()),
        proptest::option::weighted(0.2, select(PREFIXES.to_vec())),
        proptest::option::weighted(0.15, select(PATTERNS.to_vec())),
        proptest::option::weighted(0.15, proptest::sample::subsequence(SOURCES.to_vec(), 1..=2)),
        select(PREFIXES.to_vec()),
    )
        .prop_map(
            |(equals, one_of, min, max, prefix, pattern, returned_by, fallback)| {
                let mut m = Map::new();
                if let Some(v) = equals {
                    m.insert("equals".into(), v);
                }
                if let Some(v) = one_of {
                    m.insert("one_of".into(), Value::from(v));
                }
                let (min, max) = match (min, max) {
                    (Some(a), Some(b)) if f(&a) > f(&b) => (Some(b), Some(a)),
                    other => other,
                };
                if let Some(v) = min {
                    m.insert("min".into(), v);
                }
                if let Some(v) = max {
                    m.insert("max".into(), v);
                }
                if let Some(v) = prefix {
                    m.insert("prefix".into(), Value::from(v));
                }
                if let Some(v) = pattern {
                    m.insert("pattern".into(), Value::from(v));
                }
                if let Some(v) = returned_by {
                    // A lone name sometimes, as the wire allows.
                    let v = if v.len() == 1 {
                        Value::from(v[0])
                    } else {
                        Value::from(v)
                    };
                    m.insert("returned_by".into(), v);
                }
                if m.is_empty() {
                    m.insert("prefix".into(), Value::from(fallback));
                }
                Value::Object(m)
            },
        )
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

fn grant() -> impl Strategy<Value = Value> {
    (
        prop_oneof![
            3 => select(TOOLS.to_vec()).prop_map(|t| ("tool", t.to_owned())),
            1 => select(ToolClass::ALL.to_vec()).prop_map(|c| ("class", c.as_str().to_owned())),
        ],
        proptest::collection::btree_map(select(ARGS[..3].to_vec()), constraint(), 0..3),
        proptest::option::weighted(0.7, 1_u32..4),
        proptest::option::weighted(0.1, select(vec!["pay", "g2", "g1"])),
    )
        .prop_map(|((key, target), args, uses, id)| {
            let mut g = json!({"type": "mandate_tool_call", key: target});
            if !args.is_empty() {
                g["arguments"] = json!(args);
            }
            if let Some(n) = uses {
                g["max_uses"] = json!(n);
            }
            if let Some(id) = id {
                g["identifier"] = json!(id);
            }
            g
        })
}

fn intent() -> impl Strategy<Value = (Value, Intent)> {
    proptest::collection::vec(grant(), 0..5)
        .prop_map(Value::from)
        .prop_filter_map("refused (repeated identifier, too many patterns)", |v| {
            Intent::parse(&v).ok().map(|i| (v, i))
        })
}

/// A call: its tool, arguments, and where each argument's value came from.
#[derive(Debug, Clone)]
struct TestCall {
    tool: &'static str,
    args: Map<String, Value>,
    sources: BTreeMap<String, BTreeSet<String>>,
}

impl TestCall {
    fn class(&self) -> ToolClass {
        class_of(self.tool).unwrap_or(ToolClass::Write)
    }

    fn covered_by(&self, i: &Intent) -> BTreeSet<String> {
        let prov = |arg: &str, _: &Value| self.sources.get(arg).cloned().unwrap_or_default();
        let cov = i.cover(&Call::new(self.tool, self.class(), &self.args), &prov);
        cov.identifiers().into_iter().map(str::to_owned).collect()
    }

    fn covered(&self, i: &Intent) -> bool {
        !self.covered_by(i).is_empty()
    }
}

/// Values likely to meet, or just miss, the constraints of `i`.
fn pool(i: &Intent) -> Vec<Value> {
    let mut out: Vec<Value> = STRINGS.iter().map(|s| json!(s)).collect();
    out.extend([
        json!(0),
        json!(1),
        json!(2.0),
        json!("GB1"),
        json!("Gx"),
        json!("a"),
    ]);
    for g in i.grants() {
        for c in g.arguments().values() {
            out.extend(c.equals().cloned());
            out.extend(c.one_of().unwrap_or_default().iter().cloned());
            for n in [c.min(), c.max()].into_iter().flatten() {
                let x = n.as_f64().unwrap_or_default();
                out.extend([json!(n), json!(x - 1.0), json!(x + 1.0), json!(x + 0.5)]);
            }
            if let Some(p) = c.prefix() {
                let shorter: String = p
                    .chars()
                    .take(p.chars().count().saturating_sub(1))
                    .collect();
                out.extend([
                    json!(p),
                    json!(format!("{p}9")),
                    json!(format!("{shorter}Z")),
                ]);
            }
        }
    }
    out
}

/// Calls of the tools of `i` (and others), with values from `pool`.
fn calls_for(i: &Intent) -> impl Strategy<Value = Vec<TestCall>> + use<> {
    let values = pool(i);
    proptest::collection::vec(
        (
            select(TOOLS.to_vec()),
            proptest::collection::btree_map(select(ARGS.to_vec()), select(values), 0..4),
            proptest::collection::btree_map(
                select(ARGS.to_vec()),
                proptest::sample::subsequence(SOURCES.to_vec(), 0..=2),
                0..4,
            ),
        )
            .prop_map(|(tool, args, sources)| TestCall {
                tool,
                args: args.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
                sources: sources
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v.into_iter().map(str::to_owned).collect()))
                    .collect(),
            }),
        8..24,
    )
}

fn intent_and_calls() -> impl Strategy<Value = ((Value, Intent), Vec<TestCall>)> {
    intent().prop_flat_map(|(v, i)| {
        let calls = calls_for(&i);
        (Just((v, i)), calls)
    })
}

/// The calls `i` admits in order, each taking a use of the first covering
/// grant with one left (as the store does).
fn admitted(i: &Intent, calls: &[TestCall]) -> Vec<TestCall> {
    let mut left: BTreeMap<String, Option<u32>> = i
        .grants()
        .iter()
        .map(|g| (g.identifier().to_owned(), g.max_uses()))
        .collect();
    let mut out = Vec::new();
    for c in calls {
        let ids = c.covered_by(i);
        let order: Vec<&str> = i
            .grants()
            .iter()
            .map(|g| g.identifier())
            .filter(|id| ids.contains(*id))
            .collect();
        if let Some(id) = order
            .into_iter()
            .find(|id| left.get(*id).is_some_and(|l| l.is_none_or(|n| n > 0)))
        {
            if let Some(Some(n)) = left.get_mut(id) {
                *n -= 1;
            }
            out.push(c.clone());
        }
    }
    out
}

/// Whether some assignment of `calls` to covering grants of `i` stays
/// within their uses (bipartite matching, Kuhn's augmenting paths).
fn fits(i: &Intent, calls: &[TestCall]) -> bool {
    // One slot per use (a grant without a count: one per call).
    let mut slots: Vec<String> = Vec::new();
    for g in i.grants() {
        let n = g.max_uses().map_or(calls.len(), |n| n as usize);
        slots.extend(std::iter::repeat_n(g.identifier().to_owned(), n));
    }
    let covering: Vec<BTreeSet<String>> = calls.iter().map(|c| c.covered_by(i)).collect();
    let mut owner: Vec<Option<usize>> = vec![None; slots.len()];
    fn augment(
        c: usize,
        covering: &[BTreeSet<String>],
        slots: &[String],
        owner: &mut [Option<usize>],
        seen: &mut [bool],
    ) -> bool {
        for s in 0..slots.len() {
            if seen[s] || !covering[c].contains(&slots[s]) {
                continue;
            }
            seen[s] = true;
            if owner[s].is_none_or(|o| augment(o, covering, slots, owner, seen)) {
                owner[s] = Some(c);
                return true;
            }
        }
        false
    }
    (0..calls.len()).all(|c| {
        augment(
            c,
            &covering,
            &slots,
            &mut owner,
            &mut vec![false; slots.len()],
        )
    })
}

// ----- the reference evaluator, from the wire semantics ------------------

fn ref_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

fn ref_holds(c: &Map<String, Value>, v: &Value, sources: &BTreeSet<String>) -> bool {
    c.iter().all(|(key, bound)| match key.as_str() {
        "equals" => ref_eq(v, bound),
        "one_of" => bound
            .as_array()
            .is_some_and(|s| s.iter().any(|b| ref_eq(v, b))),
        "min" => v.as_f64().is_some_and(|x| x >= f(bound)),
        "max" => v.as_f64().is_some_and(|x| x <= f(bound)),
        "prefix" => v
            .as_str()
            .is_some_and(|s| s.starts_with(bound.as_str().unwrap_or("\0"))),
        "pattern" => v.as_str().is_some_and(|s| {
            regex::Regex::new(&format!("^(?:{})$", bound.as_str().unwrap_or("")))
                .is_ok_and(|r| r.is_match(s))
        }),
        "returned_by" => {
            let names: Vec<&str> = match bound {
                Value::String(s) => vec![s.as_str()],
                Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
                _ => Vec::new(),
            };
            names.iter().any(|n| sources.contains(*n))
        }
        _ => false,
    })
}

fn ref_covers(g: &Value, call: &TestCall) -> bool {
    let target = match (g.get("tool"), g.get("class")) {
        (Some(t), _) => t.as_str() == Some(call.tool),
        (_, Some(c)) => c.as_str() == Some(call.class().as_str()),
        _ => false,
    };
    let empty = Map::new();
    let no_sources = BTreeSet::new();
    target
        && g.get("arguments")
            .and_then(Value::as_object)
            .unwrap_or(&empty)
            .iter()
            .all(|(name, c)| {
                call.args.get(name).is_some_and(|v| {
                    ref_holds(
                        c.as_object().unwrap_or(&empty),
                        v,
                        call.sources.get(name).unwrap_or(&no_sources),
                    )
                })
            })
}

// ----- narrowing steps ---------------------------------------------------

#[derive(Debug, Clone)]
enum Step {
    Drop(usize),
    FewerUses(usize),
    Constrain(usize, &'static str, Value),
    AddKey(usize, &'static str, &'static str, Value),
    RaiseMin(usize),
    LowerMax(usize),
    LongerPrefix(usize),
    FewerValues(usize),
    FewerSources(usize),
    ToolOfClass(usize, &'static str),
    Split(usize),
    Swap(usize, usize),
    // Steps that may widen (for the perturbation property).
    Widen(usize, Widening),
}

#[derive(Debug, Clone, Copy)]
enum Widening {
    ShorterPrefix,
    LowerMin,
    RaiseMax,
    MoreValues,
    MoreSources,
    Unconstrain,
    RemoveKey(usize),
    OtherEquals(u8),
    MoreUses,
    NoCount,
    ClassOfTool,
    OtherPattern,
}

fn step() -> impl Strategy<Value = Step> {
    let i = 0_usize..6;
    prop_oneof![
        i.clone().prop_map(Step::Drop),
        i.clone().prop_map(Step::FewerUses),
        (i.clone(), select(ARGS.to_vec()), constraint())
            .prop_map(|(i, a, c)| Step::Constrain(i, a, c)),
        (
            i.clone(),
            select(ARGS[..3].to_vec()),
            select(vec![
                "equals",
                "one_of",
                "min",
                "max",
                "prefix",
                "pattern",
                "returned_by"
            ]),
            constraint()
        )
            .prop_map(|(i, a, k, c)| {
                let v = c.get(k).cloned().unwrap_or_else(|| match k {
                    "equals" => json!("GB29"),
                    "one_of" => json!(["ab", 3]),
                    "min" => json!(1),
                    "max" => json!(5),
                    "pattern" => json!("[a-z]+"),
                    "returned_by" => json!("web.get"),
                    _ => json!("GB"),
                });
                Step::AddKey(i, a, k, v)
            }),
        i.clone().prop_map(Step::RaiseMin),
        i.clone().prop_map(Step::LowerMax),
        i.clone().prop_map(Step::LongerPrefix),
        i.clone().prop_map(Step::FewerValues),
        i.clone().prop_map(Step::FewerSources),
        (i.clone(), select(TOOLS.to_vec())).prop_map(|(i, t)| Step::ToolOfClass(i, t)),
        i.clone().prop_map(Step::Split),
        (i.clone(), i).prop_map(|(a, b)| Step::Swap(a, b)),
    ]
}

/// Narrowing steps and steps that may widen, mixed.
fn perturbation() -> impl Strategy<Value = Step> {
    prop_oneof![
        1 => step(),
        3 => (
            0_usize..6,
            select(vec![
                Widening::ShorterPrefix,
                Widening::LowerMin,
                Widening::RaiseMax,
                Widening::MoreValues,
                Widening::MoreSources,
                Widening::Unconstrain,
                Widening::RemoveKey(0),
                Widening::RemoveKey(1),
                Widening::RemoveKey(2),
                Widening::OtherEquals(0),
                Widening::OtherEquals(1),
                Widening::MoreUses,
                Widening::NoCount,
                Widening::ClassOfTool,
                Widening::OtherPattern,
            ])
        )
            .prop_map(|(i, w)| Step::Widen(i, w)),
    ]
}

/// Applies `step` to the canonical grants; `None` when it does not apply.
fn apply(grants: &[Value], step: &Step) -> Option<Vec<Value>> {
    let mut out = grants.to_vec();
    // Grant indexes wrap around, so that most steps apply.
    let n = out.len().max(1);
    let step = &match step.clone() {
        Step::Drop(i) => Step::Drop(i % n),
        Step::FewerUses(i) => Step::FewerUses(i % n),
        Step::Constrain(i, a, c) => Step::Constrain(i % n, a, c),
        Step::AddKey(i, a, k, v) => Step::AddKey(i % n, a, k, v),
        Step::RaiseMin(i) => Step::RaiseMin(i % n),
        Step::LowerMax(i) => Step::LowerMax(i % n),
        Step::LongerPrefix(i) => Step::LongerPrefix(i % n),
        Step::FewerValues(i) => Step::FewerValues(i % n),
        Step::FewerSources(i) => Step::FewerSources(i % n),
        Step::ToolOfClass(i, t) => Step::ToolOfClass(i % n, t),
        Step::Split(i) => Step::Split(i % n),
        Step::Swap(a, b) => Step::Swap(a % n, b % n),
        Step::Widen(i, w) => Step::Widen(i % n, w),
    };
    let constraints = |g: &mut Value| -> Vec<(String, Value)> {
        g.get("arguments")
            .and_then(Value::as_object)
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default()
    };
    match step {
        Step::Drop(i) => {
            (*i < out.len()).then(|| out.remove(*i))?;
        }
        Step::FewerUses(i) => {
            let g = out.get_mut(*i)?;
            let n = g.get("max_uses").and_then(Value::as_u64);
            g["max_uses"] = json!(n.map_or(2, |n| n.saturating_sub(1).max(1)));
        }
        Step::Constrain(i, a, c) => {
            let g = out.get_mut(*i)?;
            if g.pointer(&format!("/arguments/{a}")).is_some() {
                return None;
            }
            if g.get("arguments").is_none() {
                g["arguments"] = json!({});
            }
            g["arguments"][*a] = c.clone();
        }
        Step::AddKey(i, a, k, v) => {
            let c = out.get_mut(*i)?.pointer_mut(&format!("/arguments/{a}"))?;
            if c.get(*k).is_some() {
                return None;
            }
            c[*k] = v.clone();
        }
        Step::RaiseMin(i) | Step::LowerMax(i) => {
            let g = out.get_mut(*i)?;
            let (key, delta) = if matches!(step, Step::RaiseMin(_)) {
                ("min", 1.0)
            } else {
                ("max", -1.0)
            };
            let (name, _) = constraints(g)
                .into_iter()
                .find(|(_, c)| c.get(key).is_some())?;
            let c = &mut g["arguments"][&name];
            c[key] = json!(f(&c[key]) + delta);
        }
        Step::LongerPrefix(i) => {
            let g = out.get_mut(*i)?;
            let (name, c) = constraints(g)
                .into_iter()
                .find(|(_, c)| c.get("prefix").is_some())?;
            g["arguments"][&name]["prefix"] = json!(format!("{}X", c["prefix"].as_str()?));
        }
        Step::FewerValues(i) => {
            let g = out.get_mut(*i)?;
            let (name, c) = constraints(g).into_iter().find(|(_, c)| {
                c.get("one_of")
                    .and_then(Value::as_array)
                    .is_some_and(|a| a.len() > 1)
            })?;
            let mut values = c["one_of"].as_array()?.clone();
            values.pop();
            g["arguments"][&name]["one_of"] = json!(values);
        }
        Step::FewerSources(i) => {
            let g = out.get_mut(*i)?;
            let (name, c) = constraints(g).into_iter().find(|(_, c)| {
                c.get("returned_by")
                    .and_then(Value::as_array)
                    .is_some_and(|a| a.len() > 1)
            })?;
            let mut sources = c["returned_by"].as_array()?.clone();
            sources.remove(0);
            g["arguments"][&name]["returned_by"] = json!(sources);
        }
        Step::ToolOfClass(i, tool) => {
            let g = out.get_mut(*i)?.as_object_mut()?;
            let class = g.get("class")?.as_str()?;
            if class_of(tool).map(ToolClass::as_str) != Some(class) {
                return None;
            }
            g.remove("class");
            g.insert("tool".into(), json!(tool));
        }
        Step::Split(i) => {
            let g = out.get_mut(*i)?;
            let n = g.get("max_uses")?.as_u64()?;
            if n < 2 {
                return None;
            }
            g["max_uses"] = json!(n / 2);
            let mut other = g.clone();
            other.as_object_mut()?.remove("identifier");
            other["max_uses"] = json!(n - n / 2);
            out.push(other);
        }
        Step::Swap(a, b) => {
            if *a >= out.len() || *b >= out.len() {
                return None;
            }
            out.swap(*a, *b);
        }
        Step::Widen(i, w) => widen(out.get_mut(*i)?, *w)?,
    }
    Some(out)
}

fn widen(g: &mut Value, w: Widening) -> Option<()> {
    let first_with = |g: &Value, key: &str| -> Option<String> {
        g.get("arguments")?
            .as_object()?
            .iter()
            .find(|(_, c)| c.get(key).is_some())
            .map(|(k, _)| k.clone())
    };
    match w {
        Widening::ShorterPrefix => {
            let a = first_with(g, "prefix")?;
            let p = g["arguments"][&a]["prefix"].as_str()?.to_owned();
            let shorter: String = p.chars().take(p.chars().count().checked_sub(1)?).collect();
            if shorter.is_empty() {
                return None;
            }
            g["arguments"][&a]["prefix"] = json!(shorter);
        }
        Widening::LowerMin | Widening::RaiseMax => {
            let (key, delta) = if matches!(w, Widening::LowerMin) {
                ("min", -1.0)
            } else {
                ("max", 1.0)
            };
            let a = first_with(g, key)?;
            let v = f(&g["arguments"][&a][key]);
            g["arguments"][&a][key] = json!(v + delta);
        }
        Widening::MoreValues => {
            let a = first_with(g, "one_of")?;
            g["arguments"][&a]["one_of"]
                .as_array_mut()?
                .push(json!("GB29"));
        }
        Widening::MoreSources => {
            let a = first_with(g, "returned_by")?;
            g["arguments"][&a]["returned_by"] = json!(SOURCES);
        }
        Widening::Unconstrain => {
            let args = g.get_mut("arguments")?.as_object_mut()?;
            let k = args.keys().next()?.clone();
            args.remove(&k);
        }
        Widening::RemoveKey(n) => {
            let args = g.get_mut("arguments")?.as_object_mut()?;
            let c = args
                .values_mut()
                .find(|c| c.as_object().is_some_and(|m| m.len() > 1))?;
            let m = c.as_object_mut()?;
            let k = m.keys().nth(n % m.len())?.clone();
            m.remove(&k);
        }
        Widening::OtherEquals(n) => {
            let a = first_with(g, "equals")?;
            g["arguments"][&a]["equals"] = if n == 0 { json!("GB29") } else { json!(3) };
        }
        Widening::MoreUses => {
            let n = g.get("max_uses")?.as_u64()?;
            g["max_uses"] = json!(n + 1);
        }
        Widening::NoCount => {
            g.as_object_mut()?.remove("max_uses")?;
        }
        Widening::ClassOfTool => {
            let class = class_of(g.get("tool")?.as_str()?)?;
            let m = g.as_object_mut()?;
            m.remove("tool");
            m.insert("class".into(), json!(class.as_str()));
        }
        Widening::OtherPattern => {
            let a = first_with(g, "pattern")?;
            g["arguments"][&a]["pattern"] = json!("[a-zG-Z0-9]+");
        }
    }
    Some(())
}

/// `wide` narrowed by those of `steps` that apply and keep it valid.
fn narrowed(wide: &Intent, steps: &[Step]) -> Intent {
    let mut current = wide.clone();
    for s in steps {
        let grants = current.to_json().as_array().cloned().unwrap_or_default();
        if let Some(next) = apply(&grants, s).and_then(|g| Intent::parse(&Value::from(g)).ok()) {
            current = next;
        }
    }
    current
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn parse_and_serialise_round_trip((_, i) in intent()) {
        let again = Intent::parse(&i.to_json());
        prop_assert_eq!(again.as_ref().ok(), Some(&i));
        let from_text = Intent::parse_str(&i.canonical());
        prop_assert_eq!(from_text.as_ref().ok(), Some(&i));
        let again = again.unwrap_or_default();
        prop_assert_eq!(again.hash(), i.hash());
        prop_assert_eq!(again.canonical(), i.canonical());
    }

    #[test]
    fn a_grant_covers_exactly_when_every_constraint_holds(((wire, i), calls) in intent_and_calls()) {
        let wire = wire.as_array().cloned().unwrap_or_default();
        for c in &calls {
            let covered = c.covered_by(&i);
            for (g, w) in i.grants().iter().zip(&wire) {
                prop_assert_eq!(covered.contains(g.identifier()), ref_covers(w, c),
                    "grant {} of {} on {:?}", g.identifier(), i.canonical(), c);
            }
            // Every miss names an argument that is absent or fails.
            let prov = |arg: &str, _: &Value| c.sources.get(arg).cloned().unwrap_or_default();
            for m in i.cover(&Call::new(c.tool, c.class(), &c.args), &prov).misses() {
                let g = i.grant(m.identifier()).map(|g| g.to_json()).unwrap_or_default();
                let constraint = g["arguments"][m.unmet().argument()].as_object().cloned().unwrap_or_default();
                let fails = c.args.get(m.unmet().argument()).is_none_or(|v| {
                    !ref_holds(&constraint, v, c.sources.get(m.unmet().argument()).unwrap_or(&BTreeSet::new()))
                });
                prop_assert!(fails, "{} on {:?}", m, c);
            }
        }
    }

    #[test]
    fn narrowing_is_reflexive((_, i) in intent()) {
        prop_assert!(i.is_narrower_than(&i));
        prop_assert!(i.is_narrower_than_with(&i, &class_of));
        prop_assert!(Intent::default().is_narrower_than(&i));
    }

    #[test]
    fn narrowing_steps_narrow_and_cover_no_more(
        ((_, wide), calls) in intent_and_calls(),
        steps in proptest::collection::vec(step(), 0..8),
        more in proptest::collection::vec(step(), 0..8),
    ) {
        let narrow = narrowed(&wide, &steps);
        prop_assert!(narrow.is_narrower_than_with(&wide, &class_of),
            "{} is not found narrower than {}", narrow.canonical(), wide.canonical());
        // Transitive along a chain of steps.
        let narrower = narrowed(&narrow, &more);
        prop_assert!(narrower.is_narrower_than_with(&narrow, &class_of));
        prop_assert!(narrower.is_narrower_than_with(&wide, &class_of));
        for c in &calls {
            prop_assert!(!c.covered(&narrow) || c.covered(&wide), "{:?}", c);
            prop_assert!(!c.covered(&narrower) || c.covered(&wide), "{:?}", c);
        }
    }

    #[test]
    fn whatever_is_found_narrower_covers_no_more(
        (_, a) in intent(),
        ((_, b), calls) in intent_and_calls(),
        (_, c) in intent(),
        steps in proptest::collection::vec(step(), 0..6),
    ) {
        // b's narrowing mixed with an unrelated intent: when the relation
        // holds, coverage is included, and the relation composes.
        let b_narrow = narrowed(&b, &steps);
        for (x, y) in [(&a, &b), (&a, &b_narrow), (&b_narrow, &b), (&a, &c), (&c, &b)] {
            if x.is_narrower_than_with(y, &class_of) {
                for call in &calls {
                    prop_assert!(!call.covered(x) || call.covered(y),
                        "{} ⊑ {} but covers {:?}", x.canonical(), y.canonical(), call);
                }
            }
        }
        if a.is_narrower_than_with(&b_narrow, &class_of) {
            prop_assert!(a.is_narrower_than_with(&b, &class_of));
        }
        if a.is_narrower_than_with(&c, &class_of) && c.is_narrower_than_with(&b, &class_of) {
            prop_assert!(a.is_narrower_than_with(&b, &class_of));
        }
    }

    #[test]
    fn a_perturbed_intent_found_narrower_covers_no_more(
        ((_, wide), calls) in intent_and_calls(),
        steps in proptest::collection::vec(perturbation(), 1..4),
    ) {
        let other = narrowed(&wide, &steps);
        if other.is_narrower_than_with(&wide, &class_of) {
            for c in &calls {
                prop_assert!(!c.covered(&other) || c.covered(&wide),
                    "{} ⊑ {} but covers {:?}", other.canonical(), wide.canonical(), c);
            }
        }
    }

    #[test]
    fn the_calls_a_narrower_intent_admits_fit_in_the_wider_uses(
        ((_, wide), calls) in intent_and_calls(),
        steps in proptest::collection::vec(perturbation(), 0..4),
    ) {
        let narrow = narrowed(&wide, &steps);
        if narrow.is_narrower_than_with(&wide, &class_of) {
            let admitted = admitted(&narrow, &calls);
            prop_assert!(fits(&wide, &admitted),
                "{} ⊑ {} but {} admitted calls do not fit", narrow.canonical(), wide.canonical(), admitted.len());
        }
    }

    #[test]
    fn the_words_show_no_hidden_character((_, i) in intent()) {
        for line in i.describe() {
            prop_assert!(!line.text.chars().any(|c| c.is_control()
                || ('\u{200B}'..='\u{200F}').contains(&c)
                || ('\u{202A}'..='\u{202E}').contains(&c)), "{}", line.text);
        }
    }

    #[test]
    fn any_json_is_parsed_or_refused_without_panicking(v in json_value()) {
        let _ = Intent::parse(&v);
        let _ = Intent::parse(&json!([v]));
        let _ = Intent::parse(&json!([{"type": "mandate_tool_call", "tool": "bank.x", "arguments": {"a": v}}]));
    }
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |x| x.is_finite())
            .prop_map(Value::from),
        select(vec![
            "mandate_tool_call",
            "tool",
            "class",
            "equals",
            "pattern",
            "(",
            "a.b",
            "financial"
        ])
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            proptest::collection::btree_map(
                select(vec![
                    "type",
                    "tool",
                    "class",
                    "arguments",
                    "max_uses",
                    "identifier",
                    "equals",
                    "one_of",
                    "min",
                    "max",
                    "prefix",
                    "pattern",
                    "returned_by",
                    "x"
                ]),
                inner,
                0..6,
            )
            .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())),
        ]
    })
}
