//! A call's arguments: bounds, the declared `Args` type, and conversion to
//! a Cedar record.
//!
//! ## How arguments become `context.args`
//!
//! * Only top-level fields that the schema declares in the action's `Args`
//!   record are kept; the others are dropped. Strict validation already
//!   guarantees no policy can read an undeclared field, so dropping loses
//!   nothing and keeps evaluation consistent with what the validator proved.
//! * Values are converted without any JSON escape handling (`__entity`,
//!   `__extn` are ordinary keys here): integers that fit in 64 bits become
//!   `Long`; in a field declared `decimal`, a number with at most four
//!   fractional digits (Cedar's `decimal` precision) becomes a `decimal`;
//!   every other number (fractions, exponents, huge integers) becomes its
//!   decimal `String`; `null` is dropped (as if absent); arrays become
//!   `Set`s; objects become records.
//! * Each kept field is checked against its declared type ([`ArgType`], read
//!   from the schema at load). A field of the wrong type (`"amount":
//!   "20000"` where `Args` says `Long`) denies the call before evaluation,
//!   naming the field and its JSON type but not its value. Policies
//!   therefore never see an argument of an unexpected type, so a `forbid`
//!   cannot be dodged by type confusion (`==` between different types is
//!   `false` in Cedar, not an error). The check accepts exactly what
//!   Cedar's own request validation accepts for such a value (a
//!   differential test holds it to that); a type it cannot express
//!   (entities, extensions) accepts no value at all.
//! * Bounded work: arguments nested deeper than [`MAX_ARGS_DEPTH`] or larger
//!   than [`MAX_ARGS_BYTES`] serialised deny the call.
//!
//! [`MAX_ARGS_DEPTH`]: crate::limits::MAX_ARGS_DEPTH
//! [`MAX_ARGS_BYTES`]: crate::limits::MAX_ARGS_BYTES

use crate::limits;
use crate::names::NAMESPACE;
use cedar_policy::RestrictedExpression;
use serde_json::Value;
use std::collections::BTreeMap;

/// A declared argument type, as far as JSON can fill it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ArgType {
    Long,
    /// Cedar's `decimal` extension type, filled from JSON numbers.
    Decimal,
    String,
    Bool,
    Set(Box<ArgType>),
    Record {
        attrs: BTreeMap<String, Attr>,
        /// Whether attributes beyond `attrs` are allowed.
        open: bool,
    },
    /// Entity and extension types (and anything else JSON arguments cannot
    /// produce): no present value conforms.
    Unfillable,
}

/// One attribute of a record type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Attr {
    pub(crate) ty: ArgType,
    pub(crate) required: bool,
}

impl ArgType {
    /// Whether `v` (already known not to be `null`) converts to a value of
    /// this type. Depth is bounded by [`check_bounds`], which runs first.
    pub(crate) fn accepts(&self, v: &Value) -> bool {
        match (self, v) {
            (Self::Long, Value::Number(n)) => n.is_i64(),
            (Self::Decimal, Value::Number(n)) => cedar_decimal(n).is_some(),
            // Every number that is not a 64-bit integer becomes a string.
            (Self::String, Value::Number(n)) => !n.is_i64(),
            (Self::String, Value::String(_)) => true,
            (Self::Bool, Value::Bool(_)) => true,
            (Self::Set(element), Value::Array(items)) => items
                .iter()
                .filter(|i| !i.is_null())
                .all(|i| element.accepts(i)),
            (Self::Record { attrs, open }, Value::Object(map)) => {
                let present = |k: &str| map.get(k).is_some_and(|v| !v.is_null());
                attrs.iter().all(|(k, a)| !a.required || present(k))
                    && map
                        .iter()
                        .filter(|(_, v)| !v.is_null())
                        .all(|(k, v)| match attrs.get(k) {
                            Some(a) => a.ty.accepts(v),
                            None => *open,
                        })
            }
            _ => false,
        }
    }
}

/// Reads the `Args` record of `action` from the schema's JSON form.
///
/// Returns the top-level fields with their types; a required field is an
/// error (every field applies to many tools, so none can be required).
pub(crate) fn declared(json: &Value, action: &str) -> Result<BTreeMap<String, ArgType>, String> {
    let ns = json
        .get(NAMESPACE)
        .ok_or_else(|| format!("no namespace `{NAMESPACE}`"))?;
    let reader = Reader { root: json, ns };
    let context = ns
        .get("actions")
        .and_then(|a| a.get(action))
        .and_then(|a| a.get("appliesTo"))
        .and_then(|a| a.get("context"))
        .ok_or_else(|| "no `appliesTo` context".to_owned())?;
    let ArgType::Record { attrs, .. } = reader.read(context, 0)? else {
        return Err("the context is not a record".to_owned());
    };
    let args = attrs
        .get("args")
        .ok_or_else(|| "the context has no `args` attribute".to_owned())?;
    let ArgType::Record { attrs, .. } = &args.ty else {
        return Err("`args` is not a record type".to_owned());
    };
    if let Some((name, _)) = attrs.iter().find(|(_, a)| a.required) {
        return Err(format!(
            "`Args` field `{name}` is required; declare it optional (`{name}?:`), since each field applies to many tools"
        ));
    }
    Ok(attrs
        .iter()
        .map(|(k, a)| (k.clone(), a.ty.clone()))
        .collect())
}

/// Resolves schema JSON types, following common-type references.
struct Reader<'a> {
    root: &'a Value,
    ns: &'a Value,
}

impl Reader<'_> {
    /// Common types may name other common types; Cedar forbids cycles, and
    /// this bound keeps resolution finite whatever the input.
    const MAX_DEPTH: usize = 32;

    fn read(&self, ty: &Value, depth: usize) -> Result<ArgType, String> {
        if depth > Self::MAX_DEPTH {
            return Err("types nest too deeply".to_owned());
        }
        let next = depth.saturating_add(1);
        let kind = ty
            .get("type")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("unexpected type form {ty}"))?;
        Ok(match kind {
            "Long" => ArgType::Long,
            "String" => ArgType::String,
            "Boolean" | "Bool" => ArgType::Bool,
            "Set" => {
                let element = ty
                    .get("element")
                    .ok_or_else(|| "set type without element".to_owned())?;
                ArgType::Set(Box::new(self.read(element, next)?))
            }
            "Record" => {
                let mut attrs = BTreeMap::new();
                let declared = ty
                    .get("attributes")
                    .and_then(Value::as_object)
                    .ok_or_else(|| "record type without attributes".to_owned())?;
                for (name, attr) in declared {
                    let required = attr.get("required").and_then(Value::as_bool) != Some(false);
                    attrs.insert(
                        name.clone(),
                        Attr {
                            ty: self.read(attr, next)?,
                            required,
                        },
                    );
                }
                let open = ty.get("additionalAttributes").and_then(Value::as_bool) == Some(true);
                ArgType::Record { attrs, open }
            }
            "EntityOrCommon" | "CommonType" => {
                let name = ty
                    .get("name")
                    .and_then(Value::as_str)
                    .ok_or_else(|| format!("unexpected type form {ty}"))?;
                self.named(name, next)?
            }
            "Extension" => match ty.get("name").and_then(Value::as_str) {
                Some("decimal") => ArgType::Decimal,
                _ => ArgType::Unfillable,
            },
            "Entity" => ArgType::Unfillable,
            // In the JSON form a common type may also be named directly
            // (`{"type": "CallContext"}`).
            other => self.named(other, next)?,
        })
    }

    /// Resolves a type name as Cedar does: a common type of the namespace,
    /// then an entity type of the namespace, then the empty namespace's
    /// declarations, then the built-in primitives. Entity and extension
    /// types are [`ArgType::Unfillable`].
    fn named(&self, name: &str, depth: usize) -> Result<ArgType, String> {
        let (ns, local) = match name.rsplit_once("::") {
            Some((ns, local)) => (Some(ns), local),
            None => (None, name),
        };
        fn declared_in<'v>(ns: &'v Value, section: &str, local: &str) -> Option<&'v Value> {
            ns.get(section).and_then(|s| s.get(local))
        }
        match ns {
            None | Some(NAMESPACE) => {
                if let Some(common) = declared_in(self.ns, "commonTypes", local) {
                    return self.read(common, depth);
                }
                if declared_in(self.ns, "entityTypes", local).is_some() {
                    return Ok(ArgType::Unfillable);
                }
                if ns.is_some() {
                    return Ok(ArgType::Unfillable);
                }
            }
            Some("__cedar") => return Ok(primitive(local)),
            Some(_) => return Ok(ArgType::Unfillable),
        }
        // An unqualified name not declared in `Mandate`.
        if let Some(empty) = self.root.get("") {
            if let Some(common) = declared_in(empty, "commonTypes", local) {
                return self.read(common, depth);
            }
            if declared_in(empty, "entityTypes", local).is_some() {
                return Ok(ArgType::Unfillable);
            }
        }
        Ok(primitive(local))
    }
}

fn primitive(name: &str) -> ArgType {
    match name {
        "Long" => ArgType::Long,
        "String" => ArgType::String,
        "Bool" => ArgType::Bool,
        "decimal" => ArgType::Decimal,
        _ => ArgType::Unfillable,
    }
}

/// Checks and converts the declared top-level arguments into the `args`
/// record. `Err` names the mismatching fields (never their values).
pub(crate) fn convert_declared(
    args: &serde_json::Map<String, Value>,
    declared: &BTreeMap<String, ArgType>,
) -> Result<RestrictedExpression, String> {
    let mut bad = Vec::new();
    let mut fields = Vec::new();
    for (key, value) in args {
        let Some(ty) = declared.get(key) else {
            continue;
        };
        if value.is_null() {
            continue;
        }
        if !ty.accepts(value) {
            bad.push(format!("`{key}` (a JSON {})", json_type(value)));
            continue;
        }
        if let Some(e) = convert_typed(value, Some(ty)) {
            fields.push((key.clone(), e));
        }
    }
    match bad.as_slice() {
        [] => RestrictedExpression::new_record(fields)
            .map_err(|e| format!("cannot convert arguments: {e}")),
        [one] => Err(format!(
            "argument {one} does not match its type in the schema's `Args` (denied before evaluation, fail closed)"
        )),
        _ => Err(format!(
            "arguments {} do not match their types in the schema's `Args` (denied before evaluation, fail closed)",
            bad.join(", ")
        )),
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Refuses arguments larger than [`limits::MAX_ARGS_BYTES`] serialised or
/// nested deeper than [`limits::MAX_ARGS_DEPTH`]. The engine runs it on
/// every decision; the gateway runs it first to report such calls as
/// malformed rather than as policy denials.
pub fn check_bounds(args: &serde_json::Map<String, Value>) -> Result<(), String> {
    let mut counter = LimitedCounter {
        written: 0,
        limit: limits::MAX_ARGS_BYTES,
    };
    if serde_json::to_writer(&mut counter, args).is_err() {
        return Err(format!(
            "arguments exceed {} bytes serialised",
            limits::MAX_ARGS_BYTES
        ));
    }
    if args
        .values()
        .any(|v| deeper_than(v, limits::MAX_ARGS_DEPTH.saturating_sub(1)))
    {
        return Err(format!(
            "arguments are nested deeper than {} levels",
            limits::MAX_ARGS_DEPTH
        ));
    }
    Ok(())
}

/// Whether `v` nests more than `budget` further levels. Recursion stops at
/// `budget`, so it is bounded whatever the input.
fn deeper_than(v: &Value, budget: usize) -> bool {
    let children: Box<dyn Iterator<Item = &Value>> = match v {
        Value::Array(items) => Box::new(items.iter()),
        Value::Object(map) => Box::new(map.values()),
        _ => return false,
    };
    match budget.checked_sub(1) {
        None => true,
        Some(rest) => children.into_iter().any(|c| deeper_than(c, rest)),
    }
}

/// An `io::Write` that only counts, and fails once past its limit.
struct LimitedCounter {
    written: usize,
    limit: usize,
}

impl std::io::Write for LimitedCounter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.written = self.written.saturating_add(buf.len());
        if self.written > self.limit {
            return Err(std::io::Error::other("limit"));
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Converts every top-level argument (no filtering, no type check), guided
/// by the declared types where a field has one.
#[cfg(test)]
pub(crate) fn convert_all(
    args: &serde_json::Map<String, Value>,
    declared: &BTreeMap<String, ArgType>,
) -> Result<RestrictedExpression, String> {
    RestrictedExpression::new_record(
        args.iter()
            .filter_map(|(k, v)| convert_typed(v, declared.get(k)).map(|e| (k.clone(), e))),
    )
    .map_err(|e| format!("cannot convert arguments: {e}"))
}

/// One JSON value as a Cedar value, guided by its declared type where there
/// is one (only the type says whether a number is a `decimal`); `None` for
/// `null`. A value that does not fit its type converts as if undeclared
/// (and `accepts` has refused it already). Depth is bounded by
/// [`check_bounds`], which runs first.
fn convert_typed(v: &Value, ty: Option<&ArgType>) -> Option<RestrictedExpression> {
    Some(match v {
        Value::Null => return None,
        Value::Bool(b) => RestrictedExpression::new_bool(*b),
        Value::Number(n) => {
            let decimal = match ty {
                Some(ArgType::Decimal) => cedar_decimal(n),
                _ => None,
            };
            match (decimal, n.as_i64()) {
                (Some(d), _) => RestrictedExpression::new_decimal(d),
                (None, Some(i)) => RestrictedExpression::new_long(i),
                (None, None) => RestrictedExpression::new_string(n.to_string()),
            }
        }
        Value::String(s) => RestrictedExpression::new_string(s.clone()),
        Value::Array(items) => {
            let element = match ty {
                Some(ArgType::Set(element)) => Some(element.as_ref()),
                _ => None,
            };
            RestrictedExpression::new_set(items.iter().filter_map(|i| convert_typed(i, element)))
        }
        Value::Object(map) => {
            let attr = |k: &str| match ty {
                Some(ArgType::Record { attrs, .. }) => attrs.get(k).map(|a| &a.ty),
                _ => None,
            };
            // Keys of a JSON object are unique, so this cannot fail; if it
            // did, the whole value would be dropped, and a declared field
            // that policies test would then be absent, never forged.
            RestrictedExpression::new_record(
                map.iter()
                    .filter_map(|(k, v)| convert_typed(v, attr(k)).map(|e| (k.clone(), e))),
            )
            .ok()?
        }
    })
}

/// Cedar's `decimal` holds four fractional digits in a 64-bit integer:
/// its range is ±922 337 203 685 477.5807.
const DECIMAL_MAX: f64 = 922_337_203_685_477.0;

/// A JSON number as the text of a Cedar `decimal`, if it is one exactly:
/// at most four fractional digits and within range. `0.1` is `"0.1000"`;
/// `0.12345`, `1e-7` and `1e300` are not decimals (never rounded).
pub(crate) fn cedar_decimal(n: &serde_json::Number) -> Option<String> {
    if let Some(i) = n.as_i64() {
        return (i.unsigned_abs() <= 922_337_203_685_477).then(|| format!("{i}.0"));
    }
    let f = n.as_f64()?;
    if !f.is_finite() || f.abs() > DECIMAL_MAX {
        return None;
    }
    // The number's own text, exactly as the call forwards it (the shortest
    // text that reads back as the same double), not the double's binary
    // value: past about 9·10^11 a double cannot hold every four-digit
    // fraction, and `905095858349570.2` is the double …570.25, which
    // policies must not see while the upstream receives …570.2. Plain
    // notation only: a number this small or large written with an exponent
    // has more than four fractional digits (or is refused above).
    let text = n.to_string();
    let (int, frac) = text.split_once('.')?;
    let frac = frac.trim_end_matches('0');
    (frac.len() <= 4 && frac.bytes().all(|b| b.is_ascii_digit()))
        .then(|| format!("{int}.{frac:0<4}"))
}

#[cfg(test)]
#[path = "args_tests.rs"]
mod args_tests;
