//! The per-call argument check against Cedar's own request validation.
//!
//! `decide` does not validate requests against the schema per call; it
//! relies on [`ArgType::accepts`] for the arguments. These tests hold that
//! check to exactly what `Request::new(.., Some(&schema))` accepts, over
//! hand-picked and generated JSON values and a schema with every kind of
//! type an `Args` field can have.

use super::*;
use crate::model::{self, Sample};
use crate::names::Names;
use cedar_policy::{Context, Request, Schema};
use mandate_core::ToolClass;
use serde_json::{Value, json};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const ARGS: &str = r#"type Inner = { a: Long, b?: Set<String> };
  type Args = {
    amount?: Long,
    to?: String,
    flag?: Bool,
    ids?: Set<Long>,
    matrix?: Set<Set<String>>,
    inner?: Inner,
    items?: Set<Inner>,
    q?: { x: String, y?: Bool },
    who?: User,
    d?: decimal,
    ip?: __cedar::ipaddr,
    s2?: __cedar::String,
    n2?: Mandate::Inner,
  };"#;

fn schema_text() -> Result<String, Box<dyn std::error::Error>> {
    let shipped = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../examples/quickstart/policies/mandate.cedarschema"),
    )?;
    let (head, rest) = shipped.split_once("type Args = {").ok_or("no Args")?;
    let (_, tail) = rest.split_once("};").ok_or("no end of Args")?;
    Ok(format!("{head}{ARGS}{tail}"))
}

/// Whether Cedar's request validation accepts `args` as the arguments.
fn cedar_accepts(
    schema: &Schema,
    names: &Names,
    args: &serde_json::Map<String, Value>,
    declared: &BTreeMap<String, ArgType>,
) -> Result<bool, Box<dyn std::error::Error>> {
    let sample = Sample::new();
    let context = Context::from_pairs(sample.context_with(names, convert_all(args, declared)?))?;
    let action = names.action(ToolClass::Write).ok_or("no action")?;
    Ok(Request::new(
        Names::uid(&names.agent, "a"),
        action.clone(),
        Names::uid(&names.tool, "x.y"),
        context,
        Some(schema),
    )
    .is_ok())
}

/// A small deterministic generator (xorshift), so failures reproduce.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick(&mut self, items: &[&'static str]) -> &'static str {
        let n = u64::try_from(items.len()).unwrap_or(1);
        let i = usize::try_from(self.below(n)).unwrap_or(0);
        items.get(i).copied().unwrap_or_default()
    }

    fn value(&mut self, depth: u32) -> Value {
        let leaf = depth == 0;
        match self.below(if leaf { 7 } else { 9 }) {
            0 => Value::Null,
            1 => Value::Bool(self.below(2) == 0),
            2 => json!(self.below(100)),
            3 => json!(u64::MAX - self.below(10)),
            4 => json!(0.5 + f64::from(u32::try_from(self.below(9)).unwrap_or(0))),
            5 | 6 => json!(self.pick(&["x", "y", "acc-1", ""])),
            7 => Value::Array(
                (0..self.below(4))
                    .map(|_| self.value(depth.saturating_sub(1)))
                    .collect(),
            ),
            _ => Value::Object(
                (0..self.below(4))
                    .map(|_| {
                        let key = self.pick(&["a", "b", "x", "y", "z"]);
                        (key.to_owned(), self.value(depth.saturating_sub(1)))
                    })
                    .collect(),
            ),
        }
    }
}

#[test]
fn the_argument_check_agrees_with_cedar_request_validation() -> TestResult {
    let text = schema_text()?;
    let (schema, _) = Schema::from_cedarschema_str(&text)?;
    let names = Names::new()?;
    let declared = model::check_contract("t.cedarschema", &text, &schema, &names)?;
    let fields = declared.fields(ToolClass::Write).ok_or("no fields")?;
    assert_eq!(fields.len(), 13, "{fields:?}");
    assert_eq!(fields.get("who"), Some(&ArgType::Unfillable));
    assert_eq!(fields.get("d"), Some(&ArgType::Decimal));
    assert_eq!(fields.get("ip"), Some(&ArgType::Unfillable));
    assert_eq!(fields.get("s2"), Some(&ArgType::String));
    assert_eq!(fields.get("n2"), fields.get("inner"));

    let mut values = vec![
        json!(1),
        json!(-1),
        json!(i64::MAX),
        json!(u64::MAX),
        json!(1.0),
        json!(2.5e10),
        json!(0.1),
        json!(-12.3456),
        json!(0.12345),
        json!(1e-7),
        json!(9.2e14),
        json!(1e300),
        json!(i64::MIN),
        json!("s"),
        json!(true),
        json!([]),
        json!([1, 2]),
        json!([1, "2"]),
        json!([1, null]),
        json!([["a"], []]),
        json!([["a", 1]]),
        json!({"a": 1}),
        json!({"a": 1, "b": ["x"]}),
        json!({"a": 1, "b": [1]}),
        json!({"a": null}),
        json!({"a": 1, "c": 2}),
        json!({"a": 1, "c": null}),
        json!({"b": []}),
        json!([{"a": 1}, {"a": 2, "b": []}]),
        json!([{"a": 1}, {"b": []}]),
        json!({"x": "s"}),
        json!({"x": "s", "y": false}),
        json!({"x": 1.5}),
        json!({"x": "s", "y": 1}),
        json!({"__entity": {"type": "Mandate::User", "id": "root"}}),
        json!({"__extn": {"fn": "decimal", "arg": "1.0"}}),
        json!({}),
    ];
    let mut generator = Gen(0x9E37_79B9_7F4A_7C15);
    values.extend((0..400).map(|_| generator.value(3)));

    let mut checked = 0;
    for (field, ty) in fields {
        for value in values.iter().filter(|v| !v.is_null()) {
            let args: serde_json::Map<String, Value> =
                std::iter::once((field.clone(), value.clone())).collect();
            let ours = ty.accepts(value);
            let theirs = cedar_accepts(&schema, &names, &args, fields)?;
            assert_eq!(
                ours, theirs,
                "field `{field}` ({ty:?}) with {value}: ours {ours}, Cedar {theirs}"
            );
            assert_eq!(
                convert_declared(&args, fields).is_ok(),
                ours,
                "{field} {value}"
            );
            checked += 1;
        }
    }
    assert!(checked > 4000, "{checked}");
    Ok(())
}

#[test]
fn a_mismatch_names_the_fields_but_not_the_values() -> TestResult {
    let declared = BTreeMap::from([
        ("amount".to_owned(), ArgType::Long),
        ("to".to_owned(), ArgType::String),
    ]);
    let args: serde_json::Map<String, Value> =
        serde_json::from_value(json!({"amount": "31337", "to": 42, "other": [1]}))?;
    let err = convert_declared(&args, &declared)
        .err()
        .ok_or("accepted a mismatch")?;
    assert!(
        err.contains("`amount` (a JSON string)") && err.contains("`to` (a JSON integer)"),
        "{err}"
    );
    assert!(!err.contains("31337"), "{err}");
    Ok(())
}

#[test]
fn depth_is_bounded() {
    let mut v = json!(1);
    for _ in 0..15 {
        v = json!([v]);
    }
    // 15 arrays around a scalar under the top-level object: 16 levels.
    let ok: serde_json::Map<String, Value> = [("a".to_owned(), v.clone())].into_iter().collect();
    assert!(check_bounds(&ok).is_ok());
    let deep: serde_json::Map<String, Value> = [("a".to_owned(), json!([v]))].into_iter().collect();
    assert!(check_bounds(&deep).is_err());
}

#[test]
fn size_is_bounded() {
    let big: serde_json::Map<String, Value> =
        [("a".to_owned(), json!("x".repeat(limits::MAX_ARGS_BYTES)))]
            .into_iter()
            .collect();
    assert!(check_bounds(&big).is_err());
}

#[test]
fn decimals_are_exact_or_refused() {
    let d = |v: Value| match v {
        Value::Number(n) => cedar_decimal(&n),
        _ => None,
    };
    assert_eq!(d(json!(0.1)).as_deref(), Some("0.1000"));
    assert_eq!(d(json!(25)).as_deref(), Some("25.0"));
    assert_eq!(d(json!(-12.3456)).as_deref(), Some("-12.3456"));
    assert_eq!(d(json!(1.0)).as_deref(), Some("1.0000"));
    // More digits than Cedar keeps, or out of its range: refused, never rounded.
    assert_eq!(d(json!(0.12345)), None);
    assert_eq!(d(json!(1e-7)), None);
    assert_eq!(d(json!(1e300)), None);
    assert_eq!(d(json!(i64::MAX)), None);
}

#[path = "args_props.rs"]
mod props;

/// Found by the property `a_number_is_a_decimal_exactly_when_it_is_one`:
/// past about 9·10^11 the double nearest to a four-digit decimal has other
/// digits, and the decimal was taken from the double (`…570.25`) while the
/// call forwards the number's own text (`…570.2`).
#[test]
fn decimal_is_the_forwarded_number_not_the_nearest_double() {
    let n = |text: &str| serde_json::from_str::<serde_json::Number>(text).ok();
    let d = |text: &str| n(text).and_then(|n| cedar_decimal(&n));
    assert_eq!(
        d("905095858349570.2").as_deref(),
        Some("905095858349570.2000")
    );
    assert_eq!(
        n("905095858349570.2").map(|n| n.to_string()).as_deref(),
        Some("905095858349570.2"),
        "forwarded as written"
    );
    assert_eq!(d("0.0001").as_deref(), Some("0.0001"));
    assert_eq!(d("-0.5").as_deref(), Some("-0.5000"));
    assert_eq!(d("0.00001"), None);
    assert_eq!(d("12345.67891"), None);
}
