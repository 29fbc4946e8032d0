//! Property tests of the argument conversion (JSON arguments → the Cedar
//! `context.args` record), over generated declared types and generated
//! JSON within and beyond the documented limits:
//!
//! * the bounds check refuses exactly what is deeper than
//!   [`limits::MAX_ARGS_DEPTH`] or larger than [`limits::MAX_ARGS_BYTES`];
//! * within the bounds, conversion either succeeds or is refused with an
//!   error that names every mismatching field (never a value), and never
//!   panics;
//! * conversion is deterministic, whatever the order of object keys;
//! * what converts round-trips: evaluating `context.args` in Cedar gives
//!   back exactly what the documented mapping says (64-bit integers as
//!   `Long`, exact decimals in `decimal` fields as the same decimal value
//!   the client wrote, other numbers as their JSON text, `null` dropped,
//!   arrays as sets, objects as records).

use super::*;
use cedar_policy::{Context, Entities, EntityUid, EvalResult, Expression, Request};
use proptest::prelude::*;
use serde_json::{Map, Number};
use std::str::FromStr as _;

// ---- generators ----------------------------------------------------------

fn arg_type() -> impl Strategy<Value = ArgType> {
    let leaf = prop_oneof![
        Just(ArgType::Long),
        Just(ArgType::Decimal),
        Just(ArgType::String),
        Just(ArgType::Bool),
        Just(ArgType::Unfillable),
    ];
    leaf.prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            inner.clone().prop_map(|t| ArgType::Set(Box::new(t))),
            (
                proptest::collection::btree_map("[a-d]", (inner, any::<bool>()), 0..4),
                any::<bool>()
            )
                .prop_map(|(attrs, open)| ArgType::Record {
                    attrs: attrs
                        .into_iter()
                        .map(|(k, (ty, required))| (k, Attr { ty, required }))
                        .collect(),
                    open,
                }),
        ]
    })
}

/// Decimal text `[-]m / 10^scale` in plain notation, e.g. `922337203685476.9`:
/// small values, and values near the edge of Cedar's `decimal` range where
/// a double cannot hold every four-digit fraction.
fn decimal_text() -> impl Strategy<Value = String> {
    (
        any::<bool>(),
        prop_oneof![
            0u64..1_000_000,
            9_000_000_000_000_000u64..=9_300_000_000_000_000,
            90_000_000_000_000u64..=93_000_000_000_000_000,
        ],
        0u32..7,
        any::<bool>(),
    )
        .prop_map(|(neg, m, scale, dot_zero)| {
            let sign = if neg { "-" } else { "" };
            if scale == 0 {
                let tail = if dot_zero { ".0" } else { "" };
                return format!("{sign}{m}{tail}");
            }
            let p = 10u64.pow(scale);
            format!("{sign}{}.{:0width$}", m / p, m % p, width = scale as usize)
        })
}

fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        (-1000i64..1000).prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| Number::from_f64(f).map(Value::Number)),
        decimal_text().prop_filter_map("parses", |t| serde_json::from_str::<Value>(&t).ok()),
        // Integers beyond 64 bits arrive as doubles.
        "[1-9][0-9]{19,30}".prop_filter_map("parses", |t| serde_json::from_str::<Value>(&t).ok()),
    ]
}

fn string() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z]{0,4}",
        any::<String>(),
        Just("__entity".to_owned()),
        Just("decimal(\"1.0\")".to_owned()),
    ]
}

/// Any JSON value, shallow.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number(),
        string().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map("[a-d_]{1,3}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A value for `ty`: mostly one that conforms, sometimes anything.
fn value_for(ty: &ArgType) -> BoxedStrategy<Value> {
    let fitting: BoxedStrategy<Value> = match ty {
        ArgType::Long => prop_oneof![
            any::<i64>().prop_map(Value::from),
            (-1000i64..1000).prop_map(Value::from)
        ]
        .boxed(),
        ArgType::Decimal => number().boxed(),
        ArgType::String => prop_oneof![string().prop_map(Value::String), number()].boxed(),
        ArgType::Bool => any::<bool>().prop_map(Value::Bool).boxed(),
        ArgType::Set(element) => proptest::collection::vec(
            prop_oneof![9 => value_for(element), 1 => Just(Value::Null)],
            0..4,
        )
        .prop_map(Value::Array)
        .boxed(),
        ArgType::Record { attrs, open } => {
            let fields: Vec<BoxedStrategy<Option<(String, Value)>>> = attrs
                .iter()
                .map(|(k, a)| {
                    let k = k.clone();
                    let present = if a.required { 0.95 } else { 0.6 };
                    proptest::option::weighted(
                        present,
                        prop_oneof![9 => value_for(&a.ty), 1 => Just(Value::Null)],
                    )
                    .prop_map(move |v| v.map(|v| (k.clone(), v)))
                    .boxed()
                })
                .collect();
            let extra = if *open { 0.5 } else { 0.1 };
            (
                fields,
                proptest::option::weighted(extra, ("[e-f_]{1,2}", any_json())),
            )
                .prop_map(|(fields, extra)| {
                    Value::Object(fields.into_iter().flatten().chain(extra).collect())
                })
                .boxed()
        }
        ArgType::Unfillable => any_json().boxed(),
    };
    prop_oneof![7 => fitting, 1 => any_json()].boxed()
}

/// Declared fields and arguments for them (plus undeclared ones).
fn declared_and_args() -> impl Strategy<Value = (BTreeMap<String, ArgType>, Map<String, Value>)> {
    proptest::collection::btree_map("[a-e]", arg_type(), 1..4).prop_flat_map(|declared| {
        let fields: Vec<_> = declared
            .iter()
            .map(|(k, ty)| {
                let k = k.clone();
                proptest::option::weighted(0.9, value_for(ty))
                    .prop_map(move |v| v.map(|v| (k.clone(), v)))
            })
            .collect();
        let undeclared = proptest::option::of(("[x-z]|__entity|__extn", any_json()));
        (Just(declared), fields, undeclared).prop_map(|(declared, fields, undeclared)| {
            let args = fields.into_iter().flatten().chain(undeclared).collect();
            (declared, args)
        })
    })
}

/// A value nested `depth` containers deep around a scalar or a long string.
fn nested() -> impl Strategy<Value = Value> {
    (
        0usize..20,
        any::<bool>(),
        prop_oneof![
            3 => Just(0usize),
            1 => (limits::MAX_ARGS_BYTES - 64)..(limits::MAX_ARGS_BYTES + 64),
        ],
    )
        .prop_map(|(depth, objects, len)| {
            let mut v = if len == 0 {
                Value::from(1)
            } else {
                Value::String("x".repeat(len))
            };
            for _ in 0..depth {
                v = if objects {
                    Value::Object(std::iter::once(("k".to_owned(), v)).collect())
                } else {
                    Value::Array(vec![v])
                };
            }
            v
        })
}

// ---- the model -------------------------------------------------------------

/// Nesting levels of a value: a scalar is 0, a container one more than its
/// deepest child (an empty one is 1).
fn depth(v: &Value) -> usize {
    match v {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// The exact value of a JSON number as the text it is forwarded as (what
/// serde_json writes), scaled by 10^4, if that is a whole number: the
/// decimal a client means. `None` for more than four fractional digits.
fn scaled_by_10k(text: &str) -> Option<i128> {
    let (neg, rest) = match text.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, text),
    };
    let (mantissa, exp) = match rest.split_once(['e', 'E']) {
        Some((m, e)) => (m, e.parse::<i32>().ok()?),
        None => (rest, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits: String = format!("{int}{frac}");
    let frac_digits = i32::try_from(frac.len()).ok()?;
    // value = digits × 10^(exp - frac_digits); scaled = × 10^4.
    let shift = exp - frac_digits + 4;
    let mut n: i128 = digits.parse().ok()?;
    if shift >= 0 {
        for _ in 0..shift {
            n = n.checked_mul(10)?;
        }
    } else {
        for _ in 0..(-shift) {
            if n % 10 != 0 {
                return None;
            }
            n /= 10;
        }
    }
    Some(if neg { -n } else { n })
}

/// Cedar's `decimal` range, as Mandate documents it: at most
/// 922 337 203 685 477 in magnitude (the fractional sliver above is refused).
const DECIMAL_LIMIT_SCALED: i128 = 922_337_203_685_477 * 10_000;

/// A Cedar value in comparable form.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Cv {
    Bool(bool),
    Long(i64),
    Str(String),
    /// A decimal, scaled by 10^4.
    Decimal(i128),
    Set(Vec<Cv>),
    Record(BTreeMap<String, Cv>),
    Other(String),
}

/// The documented mapping of one JSON value under its declared type.
fn expected(v: &Value, ty: Option<&ArgType>) -> Option<Cv> {
    Some(match v {
        Value::Null => return None,
        Value::Bool(b) => Cv::Bool(*b),
        Value::Number(n) => {
            let text = n.to_string();
            let decimal = scaled_by_10k(&text).filter(|s| s.abs() <= DECIMAL_LIMIT_SCALED);
            match (ty, decimal, n.as_i64()) {
                (Some(ArgType::Decimal), Some(d), _) => Cv::Decimal(d),
                (_, _, Some(i)) => Cv::Long(i),
                _ => Cv::Str(text),
            }
        }
        Value::String(s) => Cv::Str(s.clone()),
        Value::Array(items) => {
            let element = match ty {
                Some(ArgType::Set(e)) => Some(e.as_ref()),
                _ => None,
            };
            let mut set: Vec<Cv> = items.iter().filter_map(|i| expected(i, element)).collect();
            set.sort();
            set.dedup();
            Cv::Set(set)
        }
        Value::Object(map) => Cv::Record(
            map.iter()
                .filter_map(|(k, v)| {
                    let attr = match ty {
                        Some(ArgType::Record { attrs, .. }) => attrs.get(k).map(|a| &a.ty),
                        _ => None,
                    };
                    expected(v, attr).map(|e| (k.clone(), e))
                })
                .collect(),
        ),
    })
}

/// The `args` record expected from `args` under `declared`.
fn expected_args(args: &Map<String, Value>, declared: &BTreeMap<String, ArgType>) -> Cv {
    Cv::Record(
        args.iter()
            .filter_map(|(k, v)| {
                let ty = declared.get(k)?;
                expected(v, Some(ty)).map(|e| (k.clone(), e))
            })
            .collect(),
    )
}

/// Cedar's value, in comparable form.
fn observed(r: &EvalResult) -> Cv {
    match r {
        EvalResult::Bool(b) => Cv::Bool(*b),
        EvalResult::Long(i) => Cv::Long(*i),
        EvalResult::String(s) => Cv::Str(s.clone()),
        EvalResult::Set(s) => {
            let mut v: Vec<Cv> = s.iter().map(observed).collect();
            v.sort();
            Cv::Set(v)
        }
        EvalResult::Record(r) => {
            Cv::Record(r.iter().map(|(k, v)| (k.clone(), observed(v))).collect())
        }
        EvalResult::ExtensionValue(s) => s
            .strip_prefix("decimal(\"")
            .and_then(|s| s.strip_suffix("\")"))
            .and_then(scaled_by_10k)
            .map_or_else(|| Cv::Other(s.clone()), Cv::Decimal),
        other @ EvalResult::EntityUid(_) => Cv::Other(other.to_string()),
    }
}

/// Puts `args` into a request's context, as `decide` does, and has Cedar
/// evaluate `context.args`.
fn evaluate(args: RestrictedExpression) -> Result<Cv, String> {
    let context = Context::from_pairs([("args".to_owned(), args)]).map_err(|e| e.to_string())?;
    let uid = |s: &str| EntityUid::from_str(s).map_err(|e| e.to_string());
    let request = Request::new(
        uid(r#"Mandate::Agent::"a""#)?,
        uid(r#"Mandate::Action::"call""#)?,
        uid(r#"Mandate::Tool::"x.y""#)?,
        context,
        None,
    )
    .map_err(|e| e.to_string())?;
    let expr = Expression::from_str("context.args").map_err(|e| e.to_string())?;
    cedar_policy::eval_expression(&request, &Entities::empty(), &expr)
        .map(|r| observed(&r))
        .map_err(|e| e.to_string())
}

fn reversed(args: &Map<String, Value>) -> Map<String, Value> {
    fn rev(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                Value::Object(m.iter().rev().map(|(k, v)| (k.clone(), rev(v))).collect())
            }
            Value::Array(items) => Value::Array(items.iter().map(rev).collect()),
            other => other.clone(),
        }
    }
    args.iter()
        .rev()
        .map(|(k, v)| (k.clone(), rev(v)))
        .collect()
}

// ---- properties ------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(384))]

    #[test]
    fn conversion_refuses_clearly_or_round_trips((declared, args) in declared_and_args()) {
        prop_assume!(check_bounds(&args).is_ok());
        let converted = convert_declared(&args, &declared);
        let bad: Vec<&String> = args
            .iter()
            .filter(|(k, v)| !v.is_null() && declared.get(*k).is_some_and(|t| !t.accepts(v)))
            .map(|(k, _)| k)
            .collect();
        match converted {
            Err(e) => {
                prop_assert!(!bad.is_empty(), "refused without a mismatch: {}", e);
                prop_assert!(e.contains("match") && e.contains("fail closed"), "{}", e);
                for k in &bad {
                    prop_assert!(e.contains(&format!("`{k}` (a JSON ")), "{} does not name {}", e, k);
                }
                for v in args.values() {
                    if let Value::String(s) = v && s.len() >= 6 {
                        prop_assert!(!e.contains(s.as_str()), "{} shows a value", e);
                    }
                }
            }
            Ok(expr) => {
                prop_assert!(bad.is_empty(), "accepted mismatching {:?}", bad);
                // Deterministic, whatever the order of object keys.
                prop_assert_eq!(convert_declared(&args, &declared).ok(), Some(expr.clone()));
                let again = convert_declared(&reversed(&args), &declared);
                prop_assert!(again.is_ok());
                let value = evaluate(expr);
                prop_assert_eq!(&value, &again.and_then(evaluate));
                // The documented mapping round-trips.
                prop_assert_eq!(value, Ok(expected_args(&args, &declared)));
            }
        }
    }

    #[test]
    fn the_bounds_are_exactly_the_documented_ones(
        values in proptest::collection::vec(prop_oneof![nested(), any_json()], 0..3),
    ) {
        let args: Map<String, Value> = values
            .into_iter()
            .enumerate()
            .map(|(i, v)| (format!("f{i}"), v))
            .collect();
        let level = 1 + args.values().map(depth).max().unwrap_or(0);
        let size = serde_json::to_vec(&args).map(|b| b.len()).unwrap_or(usize::MAX);
        let within = level <= limits::MAX_ARGS_DEPTH && size <= limits::MAX_ARGS_BYTES;
        let checked = check_bounds(&args);
        prop_assert_eq!(checked.is_ok(), within, "depth {} size {}: {:?}", level, size, checked);
        if within {
            // Whatever the declared types, conversion then completes.
            let declared: BTreeMap<String, ArgType> =
                args.keys().map(|k| (k.clone(), ArgType::String)).collect();
            let _ = convert_declared(&args, &declared);
        }
    }

    #[test]
    fn a_number_is_a_decimal_exactly_when_it_is_one(n in number()) {
        let Value::Number(n) = n else { return Ok(()) };
        let model = scaled_by_10k(&n.to_string()).filter(|s| s.abs() <= DECIMAL_LIMIT_SCALED);
        let ours = cedar_decimal(&n).and_then(|t| scaled_by_10k(&t));
        prop_assert_eq!(ours, model, "{}", n);
    }
}
