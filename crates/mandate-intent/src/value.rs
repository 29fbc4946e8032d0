//! JSON values as constraints compare and show them.

use serde_json::{Number, Value};
use std::cmp::Ordering;

/// 2^53 − 1: the largest integer every JSON parser (JavaScript's, Python's
/// float) reads exactly. Numeric bounds must lie within ± this.
pub const MAX_SAFE_INTEGER: i64 = 9_007_199_254_740_991;

/// Equality of JSON values, with numbers compared by value (`10` equals
/// `10.0`). Strings compare code point by code point (no case folding, no
/// Unicode normalisation); arrays element by element; objects by their
/// key sets and the values under each key.
pub(crate) fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Null, Value::Null) => true,
        (Value::Bool(x), Value::Bool(y)) => x == y,
        (Value::String(x), Value::String(y)) => x == y,
        (Value::Number(x), Value::Number(y)) => num_eq(x, y),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| json_eq(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, p)| y.get(k).is_some_and(|q| json_eq(p, q)))
        }
        _ => false,
    }
}

/// An integer's exact value.
fn int_of(n: &Number) -> Option<i128> {
    n.as_i64()
        .map(i128::from)
        .or_else(|| n.as_u64().map(i128::from))
}

/// Whether `n` is read exactly as a double: a fraction or exponent form
/// (it was read as one), or an integer within ± 2^53 − 1.
fn exact_as_double(n: &Number) -> bool {
    int_of(n).is_none_or(|i| i.abs() <= i128::from(MAX_SAFE_INTEGER))
}

/// Numbers are equal when their values are. Two integers compare exactly;
/// otherwise both are compared as doubles, and an integer beyond
/// ± 2^53 − 1 (which a double cannot hold exactly) equals no fraction-form
/// number: the safe answer is "not equal".
pub(crate) fn num_eq(a: &Number, b: &Number) -> bool {
    match (int_of(a), int_of(b)) {
        (Some(x), Some(y)) => x == y,
        _ => exact_as_double(a) && exact_as_double(b) && num_cmp(a, b) == Some(Ordering::Equal),
    }
}

/// The order of two numbers. Exact for two integers; exact for any pair
/// where one side is within ± 2^53 − 1 as [`crate::Constraint`] bounds
/// are (a double rounds monotonically, so an integer beyond that range
/// still falls on the right side of a bound within it).
pub(crate) fn num_cmp(a: &Number, b: &Number) -> Option<Ordering> {
    match (int_of(a), int_of(b)) {
        (Some(x), Some(y)) => Some(x.cmp(&y)),
        _ => a.as_f64()?.partial_cmp(&b.as_f64()?),
    }
}

/// How deeply `v` nests (a scalar is 1).
pub(crate) fn depth(v: &Value) -> usize {
    match v {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        _ => 1,
    }
}

/// The canonical JSON text of `v` (object keys sorted, no white space).
pub(crate) fn canonical(v: &Value) -> String {
    let mut out = String::new();
    mandate_core::write_canonical(v, &mut out);
    out
}

/// Characters a person cannot see, or could mistake for others, in a
/// value shown for approval: controls, format characters (zero-width,
/// bidirectional overrides, tag characters), variation selectors, and
/// white space other than the plain space.
pub(crate) fn is_hidden(c: char) -> bool {
    c.is_control()
        || (c.is_whitespace() && c != ' ')
        || matches!(
            c,
            '\u{00AD}'
                | '\u{034F}'
                | '\u{061C}'
                | '\u{115F}'..='\u{1160}'
                | '\u{17B4}'..='\u{17B5}'
                | '\u{180B}'..='\u{180F}'
                | '\u{200B}'..='\u{200F}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2060}'..='\u{206F}'
                | '\u{3164}'
                | '\u{FE00}'..='\u{FE0F}'
                | '\u{FEFF}'
                | '\u{FFA0}'
                | '\u{FFF0}'..='\u{FFFB}'
                | '\u{1D173}'..='\u{1D17A}'
                | '\u{E0000}'..='\u{E0FFF}'
        )
}

/// A string for a person: in double quotes, with `"` and `\` escaped and
/// every hidden character written as `\u{…}`, so what is shown is exactly
/// what is granted.
pub(crate) fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if is_hidden(c) => {
                out.push_str(&format!("\\u{{{:04X}}}", u32::from(c)));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A JSON value for a person: strings quoted as [`quote`] does, the rest
/// as compact JSON.
pub(crate) fn show(v: &Value) -> String {
    match v {
        Value::String(s) => quote(s),
        Value::Array(items) => {
            let parts: Vec<String> = items.iter().map(show).collect();
            format!("[{}]", parts.join(", "))
        }
        Value::Object(map) => {
            let parts: Vec<String> = map
                .iter()
                .map(|(k, v)| format!("{}: {}", quote(k), show(v)))
                .collect();
            format!("{{{}}}", parts.join(", "))
        }
        scalar => scalar.to_string(),
    }
}

/// A name (argument, tool) for a person: bare when it is plain ASCII
/// (letters, digits, `_ - . : /`), quoted otherwise.
pub(crate) fn name(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':' | b'/'))
    {
        s.to_owned()
    } else {
        quote(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn n(v: Value) -> Number {
        match v {
            Value::Number(n) => n,
            other => panic!("not a number: {other}"),
        }
    }

    #[test]
    fn numbers_compare_by_value() {
        assert!(json_eq(&json!(10), &json!(10.0)));
        assert!(json_eq(&json!({"a": [1, 2.5]}), &json!({"a": [1.0, 2.5]})));
        assert!(!json_eq(&json!(10), &json!("10")));
        assert!(!json_eq(&json!(1), &json!(true)));
        assert!(json_eq(&json!(u64::MAX), &json!(u64::MAX)));
        assert!(!json_eq(&json!(u64::MAX), &json!(u64::MAX - 1)));
        // 2^53 + 1 is no double: it equals no fraction-form number.
        assert!(!json_eq(
            &json!(9_007_199_254_740_993_i64),
            &json!(9.007_199_254_740_992e15)
        ));
        assert!(json_eq(&json!(-3), &json!(-3.0)));
        assert_eq!(
            num_cmp(&n(json!(100)), &n(json!(100.5))),
            Some(Ordering::Less)
        );
        assert_eq!(
            num_cmp(&n(json!(u64::MAX)), &n(json!(100.5))),
            Some(Ordering::Greater)
        );
        assert_eq!(
            num_cmp(&n(json!(-1)), &n(json!(u64::MAX))),
            Some(Ordering::Less)
        );
    }

    #[test]
    fn hidden_characters_are_shown_escaped() {
        assert_eq!(quote("GB29\u{200B}X"), "\"GB29\\u{200B}X\"");
        assert_eq!(quote("a\"b\\c\n"), "\"a\\\"b\\\\c\\u{000A}\"");
        assert_eq!(quote("\u{E0041}"), "\"\\u{E0041}\"");
        assert_eq!(quote("Zürich €"), "\"Zürich €\"");
        assert_eq!(name("recipient"), "recipient");
        assert_eq!(name("to address"), "\"to address\"");
        assert_eq!(
            show(&json!({"k": ["a", 1, null]})),
            "{\"k\": [\"a\", 1, null]}"
        );
    }
}
