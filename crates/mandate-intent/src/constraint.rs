//! A constraint on one argument of a tool call.

use crate::error::{At, IntentError, safe};
use crate::limits;
use crate::value::{self, MAX_SAFE_INTEGER, json_eq, num_cmp};
use serde_json::{Map, Number, Value};
use std::cmp::Ordering;
use std::collections::BTreeSet;

/// The keys a constraint object may hold. Every key present must hold.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    serde::Serialize,
    serde::Deserialize,
    strum::IntoStaticStr,
    strum::EnumString,
    strum::VariantArray,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum ConstraintKey {
    /// The value equals this JSON value (numbers by value).
    Equals,
    /// The value equals one of these.
    OneOf,
    /// The value is a number at least this.
    Min,
    /// The value is a number at most this.
    Max,
    /// The value is a string starting with this.
    Prefix,
    /// The value is a string the whole of which this regex matches.
    Pattern,
    /// The value came from the results of one of these tools, in this
    /// session.
    ReturnedBy,
}

impl ConstraintKey {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// Where the values a call's arguments hold came from: for an argument
/// name and its value, the exposed names of the tools whose results (in
/// this session) contained that value. The gateway's provenance index
/// answers it; `returned_by` constraints ask it.
pub type Provenance<'a> = dyn Fn(&str, &Value) -> BTreeSet<String> + 'a;

/// A compiled `pattern`: the source as written, matched against the
/// whole value.
#[derive(Debug, Clone)]
pub struct Pattern {
    source: String,
    regex: regex::Regex,
}

impl Pattern {
    /// The pattern as written in the request.
    pub fn source(&self) -> &str {
        &self.source
    }

    fn compile(source: &str, at: &At) -> Result<Self, IntentError> {
        if source.is_empty() || source.len() > limits::MAX_PATTERN_BYTES {
            return Err(at.invalid(format!(
                "a pattern is 1 to {} bytes",
                limits::MAX_PATTERN_BYTES
            )));
        }
        let build = |text: &str| {
            regex::RegexBuilder::new(text)
                .size_limit(limits::MAX_PATTERN_COMPILED_BYTES)
                .dfa_size_limit(limits::MAX_PATTERN_COMPILED_BYTES)
                .nest_limit(limits::MAX_PATTERN_NEST)
                .build()
        };
        // The pattern must be a regular expression on its own before it is
        // anchored, so that it cannot close the anchoring group early
        // (`a)|(b` would otherwise match anything containing a `b`).
        let refused = |e: regex::Error| {
            at.invalid(match e {
                regex::Error::CompiledTooBig(_) => {
                    "the pattern compiles past the size limit".to_owned()
                }
                _ => "not a valid pattern (the Rust regex syntax: no look-around, no back-references; nesting at most 16 deep)".to_owned(),
            })
        };
        build(source).map_err(refused)?;
        let regex = build(&format!(r"\A(?:{source})\z")).map_err(refused)?;
        Ok(Self {
            source: source.to_owned(),
            regex,
        })
    }

    /// Whether the pattern matches the whole of `s`.
    pub fn matches(&self, s: &str) -> bool {
        self.regex.is_match(s)
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Eq for Pattern {}

/// A constraint on one argument: every key present must hold.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Constraint {
    equals: Option<Value>,
    one_of: Option<Vec<Value>>,
    min: Option<Number>,
    max: Option<Number>,
    prefix: Option<String>,
    pattern: Option<Pattern>,
    returned_by: Option<BTreeSet<String>>,
}

impl Constraint {
    /// `equals`.
    pub fn equals(&self) -> Option<&Value> {
        self.equals.as_ref()
    }

    /// `one_of`, in canonical order (sorted by canonical JSON, no repeats).
    pub fn one_of(&self) -> Option<&[Value]> {
        self.one_of.as_deref()
    }

    /// `min`.
    pub fn min(&self) -> Option<&Number> {
        self.min.as_ref()
    }

    /// `max`.
    pub fn max(&self) -> Option<&Number> {
        self.max.as_ref()
    }

    /// `prefix`.
    pub fn prefix(&self) -> Option<&str> {
        self.prefix.as_deref()
    }

    /// `pattern`.
    pub fn pattern(&self) -> Option<&Pattern> {
        self.pattern.as_ref()
    }

    /// `returned_by`.
    pub fn returned_by(&self) -> Option<&BTreeSet<String>> {
        self.returned_by.as_ref()
    }

    /// The keys present.
    pub fn keys(&self) -> Vec<ConstraintKey> {
        let mut keys = Vec::new();
        let mut add = |present: bool, k| {
            if present {
                keys.push(k);
            }
        };
        add(self.equals.is_some(), ConstraintKey::Equals);
        add(self.one_of.is_some(), ConstraintKey::OneOf);
        add(self.min.is_some(), ConstraintKey::Min);
        add(self.max.is_some(), ConstraintKey::Max);
        add(self.prefix.is_some(), ConstraintKey::Prefix);
        add(self.pattern.is_some(), ConstraintKey::Pattern);
        add(self.returned_by.is_some(), ConstraintKey::ReturnedBy);
        keys
    }

    pub(crate) fn parse(v: &Value, at: &At) -> Result<Self, IntentError> {
        let Value::Object(map) = v else {
            return Err(at.invalid("a constraint is a JSON object"));
        };
        if map.is_empty() {
            return Err(at.invalid(
                "a constraint needs at least one of equals, one_of, min, max, prefix, pattern, returned_by (leave the argument out to leave it free)",
            ));
        }
        let mut c = Self::default();
        for (key, v) in map {
            let at = at.key(key);
            let Ok(k) = key.parse::<ConstraintKey>() else {
                return Err(at.invalid(format!(
                    "unknown constraint '{}' (equals, one_of, min, max, prefix, pattern, returned_by)",
                    safe(key)
                )));
            };
            match k {
                ConstraintKey::Equals => {
                    check_value(v, &at)?;
                    c.equals = Some(v.clone());
                }
                ConstraintKey::OneOf => {
                    let Value::Array(items) = v else {
                        return Err(at.invalid("one_of is an array of values"));
                    };
                    if items.is_empty() || items.len() > limits::MAX_ONE_OF {
                        return Err(
                            at.invalid(format!("one_of holds 1 to {} values", limits::MAX_ONE_OF))
                        );
                    }
                    let mut sorted: Vec<(String, Value)> = Vec::with_capacity(items.len());
                    for (i, item) in items.iter().enumerate() {
                        check_value(item, &at.index(i))?;
                        sorted.push((value::canonical(item), item.clone()));
                    }
                    sorted.sort_by(|a, b| a.0.cmp(&b.0));
                    sorted.dedup_by(|a, b| a.0 == b.0);
                    c.one_of = Some(sorted.into_iter().map(|(_, v)| v).collect());
                }
                ConstraintKey::Min => c.min = Some(bound(v, &at)?),
                ConstraintKey::Max => c.max = Some(bound(v, &at)?),
                ConstraintKey::Prefix => {
                    let Value::String(p) = v else {
                        return Err(at.invalid("prefix is a string"));
                    };
                    if p.is_empty() || p.len() > limits::MAX_PREFIX_BYTES {
                        return Err(at.invalid(format!(
                            "a prefix is 1 to {} bytes",
                            limits::MAX_PREFIX_BYTES
                        )));
                    }
                    c.prefix = Some(p.clone());
                }
                ConstraintKey::Pattern => {
                    let Value::String(p) = v else {
                        return Err(at.invalid("pattern is a string"));
                    };
                    c.pattern = Some(Pattern::compile(p, &at)?);
                }
                ConstraintKey::ReturnedBy => c.returned_by = Some(tools(v, &at)?),
            }
        }
        if let (Some(lo), Some(hi)) = (&c.min, &c.max)
            && num_cmp(lo, hi) == Some(Ordering::Greater)
        {
            return Err(at.invalid("min is greater than max: no value could satisfy it"));
        }
        Ok(c)
    }

    /// The canonical JSON form.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        if let Some(v) = &self.equals {
            m.insert("equals".into(), v.clone());
        }
        if let Some(vs) = &self.one_of {
            m.insert("one_of".into(), Value::Array(vs.clone()));
        }
        if let Some(n) = &self.min {
            m.insert("min".into(), Value::Number(n.clone()));
        }
        if let Some(n) = &self.max {
            m.insert("max".into(), Value::Number(n.clone()));
        }
        if let Some(p) = &self.prefix {
            m.insert("prefix".into(), Value::String(p.clone()));
        }
        if let Some(p) = &self.pattern {
            m.insert("pattern".into(), Value::String(p.source.clone()));
        }
        if let Some(t) = &self.returned_by {
            m.insert(
                "returned_by".into(),
                Value::Array(t.iter().cloned().map(Value::String).collect()),
            );
        }
        Value::Object(m)
    }

    /// Whether every key holds for `value` of argument `arg`; otherwise
    /// the first key (in [`ConstraintKey`] order) that does not.
    /// `provenance` is asked only for `returned_by`, last.
    pub fn check(
        &self,
        arg: &str,
        value: &Value,
        provenance: &Provenance<'_>,
    ) -> Result<(), ConstraintKey> {
        self.check_value(value)?;
        if let Some(tools) = &self.returned_by
            && provenance(arg, value).is_disjoint(tools)
        {
            return Err(ConstraintKey::ReturnedBy);
        }
        Ok(())
    }

    /// Every key except `returned_by` (which depends on the session).
    fn check_value(&self, value: &Value) -> Result<(), ConstraintKey> {
        if let Some(eq) = &self.equals
            && !json_eq(value, eq)
        {
            return Err(ConstraintKey::Equals);
        }
        if let Some(set) = &self.one_of
            && !set.iter().any(|v| json_eq(value, v))
        {
            return Err(ConstraintKey::OneOf);
        }
        let number = value.as_number();
        if let Some(lo) = &self.min
            && !number.is_some_and(|n| {
                matches!(num_cmp(n, lo), Some(Ordering::Greater | Ordering::Equal))
            })
        {
            return Err(ConstraintKey::Min);
        }
        if let Some(hi) = &self.max
            && !number
                .is_some_and(|n| matches!(num_cmp(n, hi), Some(Ordering::Less | Ordering::Equal)))
        {
            return Err(ConstraintKey::Max);
        }
        let text = value.as_str();
        if let Some(p) = &self.prefix
            && !text.is_some_and(|s| s.starts_with(p.as_str()))
        {
            return Err(ConstraintKey::Prefix);
        }
        if let Some(p) = &self.pattern
            && !text.is_some_and(|s| p.matches(s))
        {
            return Err(ConstraintKey::Pattern);
        }
        Ok(())
    }

    /// Whether every value (with every provenance) that satisfies `self`
    /// also satisfies `wider`: `self` is at least as strict. Sound, not
    /// complete: `false` may mean "cannot tell" (two different patterns,
    /// for instance), never "wider".
    pub fn implies(&self, wider: &Constraint) -> bool {
        // Provenance: coming from one of our tools must mean coming from
        // one of theirs.
        if let Some(theirs) = &wider.returned_by
            && !self
                .returned_by
                .as_ref()
                .is_some_and(|ours| ours.is_subset(theirs))
        {
            return false;
        }
        // A finite set of values (equals, one_of): check each that we let
        // through against every key of theirs.
        if let Some(values) = self.finite() {
            return values
                .into_iter()
                .filter(|v| self.check_value(v).is_ok())
                .all(|v| wider.check_value(v).is_ok());
        }
        // Otherwise key by key.
        if wider.equals.is_some() || wider.one_of.is_some() {
            return false;
        }
        let at_least = |ours: Option<&Number>, theirs: &Number, want: Ordering| {
            ours.is_some_and(|o| {
                matches!(num_cmp(o, theirs), Some(ord) if ord == want || ord == Ordering::Equal)
            })
        };
        if let Some(lo) = &wider.min
            && !at_least(self.min.as_ref(), lo, Ordering::Greater)
        {
            return false;
        }
        if let Some(hi) = &wider.max
            && !at_least(self.max.as_ref(), hi, Ordering::Less)
        {
            return false;
        }
        if let Some(p) = &wider.prefix
            && !self
                .prefix
                .as_ref()
                .is_some_and(|ours| ours.starts_with(p.as_str()))
        {
            return false;
        }
        if let Some(p) = &wider.pattern
            && self.pattern.as_ref() != Some(p)
        {
            return false;
        }
        true
    }

    /// The values `self` allows at most, when it names them.
    fn finite(&self) -> Option<Vec<&Value>> {
        match (&self.equals, &self.one_of) {
            (Some(v), _) => Some(vec![v]),
            (None, Some(vs)) => Some(vs.iter().collect()),
            (None, None) => None,
        }
    }

    /// The constraint in words, one phrase per key, about argument `arg`.
    pub fn describe(&self, arg: &str) -> Vec<String> {
        let arg = value::name(arg);
        let mut out = Vec::new();
        if let Some(v) = &self.equals {
            out.push(format!("{arg} = {}", value::show(v)));
        }
        if let Some(vs) = &self.one_of {
            let shown: Vec<String> = vs.iter().map(value::show).collect();
            out.push(format!("{arg} one of {}", shown.join(", ")));
        }
        match (&self.min, &self.max) {
            (Some(lo), Some(hi)) => out.push(format!("{lo} ≤ {arg} ≤ {hi}")),
            (Some(lo), None) => out.push(format!("{arg} ≥ {lo}")),
            (None, Some(hi)) => out.push(format!("{arg} ≤ {hi}")),
            (None, None) => {}
        }
        if let Some(p) = &self.prefix {
            out.push(format!("{arg} starts with {}", value::quote(p)));
        }
        if let Some(p) = &self.pattern {
            out.push(format!(
                "{arg} matches the pattern {} in full",
                value::quote(&p.source)
            ));
        }
        if let Some(tools) = &self.returned_by {
            let names: Vec<String> = tools.iter().map(|t| value::name(t)).collect();
            out.push(format!(
                "{arg} taken from what {} returned",
                names.join(" or ")
            ));
        }
        out
    }
}

/// An `equals` or `one_of` value within the size and depth limits.
fn check_value(v: &Value, at: &At) -> Result<(), IntentError> {
    if value::depth(v) > limits::MAX_VALUE_DEPTH {
        return Err(at.invalid(format!(
            "a value nests at most {} deep",
            limits::MAX_VALUE_DEPTH
        )));
    }
    if value::canonical(v).len() > limits::MAX_VALUE_BYTES {
        return Err(at.invalid(format!(
            "a value is at most {} bytes of JSON",
            limits::MAX_VALUE_BYTES
        )));
    }
    Ok(())
}

/// A `min` or `max`: a number within ± 2^53 − 1.
fn bound(v: &Value, at: &At) -> Result<Number, IntentError> {
    let Value::Number(n) = v else {
        return Err(at.invalid("a bound is a number"));
    };
    let safe = n
        .as_f64()
        .is_some_and(|f| f.abs() <= 9_007_199_254_740_991.0)
        && n.as_u64()
            .is_none_or(|u| u <= MAX_SAFE_INTEGER.unsigned_abs())
        && n.as_i64()
            .is_none_or(|i| i.unsigned_abs() <= MAX_SAFE_INTEGER.unsigned_abs());
    if !safe {
        return Err(at.invalid("a bound lies within -(2^53 - 1) and 2^53 - 1"));
    }
    Ok(n.clone())
}

/// `returned_by`: one exposed tool name or an array of 1 to 16.
fn tools(v: &Value, at: &At) -> Result<BTreeSet<String>, IntentError> {
    let names: Vec<&Value> = match v {
        Value::String(_) => vec![v],
        Value::Array(items) => items.iter().collect(),
        _ => return Err(at.invalid("returned_by is a tool name or an array of tool names")),
    };
    if names.is_empty() || names.len() > limits::MAX_RETURNED_BY {
        return Err(at.invalid(format!(
            "returned_by names 1 to {} tools",
            limits::MAX_RETURNED_BY
        )));
    }
    let mut out = BTreeSet::new();
    for (i, n) in names.into_iter().enumerate() {
        let at = if v.is_array() {
            at.index(i)
        } else {
            at.clone()
        };
        let Value::String(name) = n else {
            return Err(at.invalid("a tool name is a string"));
        };
        check_tool_name(name, &at)?;
        out.insert(name.clone());
    }
    Ok(out)
}

/// An exposed tool name: `upstream.tool`, both parts non-empty, at most
/// 256 bytes, no white space, controls, invisible characters or `*` (a
/// grant names one tool; `class` names a group).
pub(crate) fn check_tool_name(name: &str, at: &At) -> Result<(), IntentError> {
    if name.contains('*') {
        return Err(
            at.invalid("a tool name names one tool (no wildcards); use class for a group of tools")
        );
    }
    if name.len() > limits::MAX_TOOL_NAME_BYTES
        || name
            .chars()
            .any(|c| c.is_whitespace() || value::is_hidden(c))
        || mandate_core::ToolName::parse(name).is_none()
    {
        return Err(at.invalid(format!(
            "a tool is named as exposed by the gateway, upstream.tool (at most {} bytes, no spaces)",
            limits::MAX_TOOL_NAME_BYTES
        )));
    }
    Ok(())
}
