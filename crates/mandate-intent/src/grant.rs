//! One grant: a `mandate_tool_call` entry of `authorization_details`.

use crate::constraint::{Constraint, ConstraintKey, Provenance, check_tool_name};
use crate::error::{At, IntentError, safe};
use crate::limits;
use crate::value;
use mandate_core::ToolClass;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// The `type` of every entry this crate reads (RFC 9396 §2).
pub const GRANT_TYPE: &str = "mandate_tool_call";

/// What a grant is for: one exposed tool, or every tool of a class.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Target {
    /// One tool, by its exposed name (`upstream.tool`).
    Tool(String),
    /// Every tool the gateway's configuration puts in this class.
    Class(ToolClass),
}

impl Target {
    /// Whether a call of `tool` (exposed name) in `class` is for this target.
    pub fn matches(&self, tool: &str, class: ToolClass) -> bool {
        match self {
            Self::Tool(t) => t == tool,
            Self::Class(c) => *c == class,
        }
    }
}

/// One grant of an intent: a tool (or class), constraints on named
/// arguments, and at most how many calls it covers.
#[derive(Debug, Clone, PartialEq)]
pub struct Grant {
    identifier: String,
    target: Target,
    arguments: BTreeMap<String, Constraint>,
    max_uses: Option<u32>,
}

impl Grant {
    /// Its identifier, unique in its intent (given, or assigned `g<N>`).
    pub fn identifier(&self) -> &str {
        &self.identifier
    }

    /// The tool or class.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// The constraints, by top-level argument name.
    pub fn arguments(&self) -> &BTreeMap<String, Constraint> {
        &self.arguments
    }

    /// At most how many calls it covers; `None`: no count (the task's
    /// lifetime still bounds it).
    pub fn max_uses(&self) -> Option<u32> {
        self.max_uses
    }

    /// Whether it constrains argument `name` (and so can cover its value).
    pub fn constrains(&self, name: &str) -> bool {
        self.arguments.contains_key(name)
    }

    /// Parses one entry; `identifier` is `None` when the entry has none
    /// (the intent assigns one).
    pub(crate) fn parse(v: &Value, at: &At) -> Result<(Option<String>, Self), IntentError> {
        let Value::Object(map) = v else {
            return Err(at.invalid("an authorization_details entry is a JSON object"));
        };
        match map.get("type") {
            Some(Value::String(t)) if t == GRANT_TYPE => {}
            Some(Value::String(t)) => {
                return Err(at.key("type").invalid(format!(
                    "unknown authorization details type '{}' (this server knows mandate_tool_call)",
                    safe(t)
                )));
            }
            _ => {
                return Err(at
                    .key("type")
                    .invalid("type is required: mandate_tool_call"));
            }
        }
        for key in map.keys() {
            if !matches!(
                key.as_str(),
                "type" | "identifier" | "tool" | "class" | "arguments" | "max_uses"
            ) {
                return Err(at.key(key).invalid(format!(
                    "unknown member '{}' of a mandate_tool_call (identifier, tool, class, arguments, max_uses)",
                    safe(key)
                )));
            }
        }
        let identifier = match map.get("identifier") {
            None => None,
            Some(Value::String(id)) if valid_identifier(id) => Some(id.clone()),
            Some(_) => {
                return Err(at.key("identifier").invalid(format!(
                    "an identifier is 1 to {} characters: letters, digits, and . _ : -",
                    limits::MAX_IDENTIFIER_BYTES
                )));
            }
        };
        let target = match (map.get("tool"), map.get("class")) {
            (Some(Value::String(t)), None) => {
                check_tool_name(t, &at.key("tool"))?;
                Target::Tool(t.clone())
            }
            (None, Some(Value::String(c))) => match c.parse::<ToolClass>() {
                Ok(c) => Target::Class(c),
                Err(_) => {
                    return Err(at.key("class").invalid(format!(
                        "unknown tool class '{}' (read, write, outbound, financial, access_control, irreversible)",
                        safe(c)
                    )));
                }
            },
            (Some(_), Some(_)) => {
                return Err(at.invalid("a grant names a tool or a class, not both"));
            }
            (None, None) => return Err(at.invalid("a grant names a tool or a class")),
            (Some(_), None) => return Err(at.key("tool").invalid("tool is a string")),
            (None, Some(_)) => return Err(at.key("class").invalid("class is a string")),
        };
        let arguments = match map.get("arguments") {
            None => BTreeMap::new(),
            Some(Value::Object(args)) => parse_arguments(args, &at.key("arguments"))?,
            Some(_) => {
                return Err(at
                    .key("arguments")
                    .invalid("arguments is an object: argument name to constraint"));
            }
        };
        let max_uses = match map.get("max_uses") {
            None => None,
            Some(v) => match v.as_u64().and_then(|n| u32::try_from(n).ok()) {
                Some(n) if (1..=limits::MAX_USES).contains(&n) => Some(n),
                _ => {
                    return Err(at.key("max_uses").invalid(format!(
                        "max_uses is a whole number from 1 to {} (leave it out for no count)",
                        limits::MAX_USES
                    )));
                }
            },
        };
        Ok((
            identifier.clone(),
            Self {
                identifier: identifier.unwrap_or_default(),
                target,
                arguments,
                max_uses,
            },
        ))
    }

    pub(crate) fn set_identifier(&mut self, id: String) {
        self.identifier = id;
    }

    /// A copy with `uses` as its count (attenuation; tests).
    #[must_use]
    pub fn with_max_uses(&self, uses: Option<u32>) -> Self {
        Self {
            max_uses: uses,
            ..self.clone()
        }
    }

    /// The canonical JSON form (with its identifier).
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("type".into(), Value::String(GRANT_TYPE.into()));
        m.insert("identifier".into(), Value::String(self.identifier.clone()));
        match &self.target {
            Target::Tool(t) => m.insert("tool".into(), Value::String(t.clone())),
            Target::Class(c) => m.insert("class".into(), Value::String(c.as_str().into())),
        };
        if !self.arguments.is_empty() {
            m.insert(
                "arguments".into(),
                Value::Object(
                    self.arguments
                        .iter()
                        .map(|(k, c)| (k.clone(), c.to_json()))
                        .collect(),
                ),
            );
        }
        if let Some(n) = self.max_uses {
            m.insert("max_uses".into(), Value::from(n));
        }
        Value::Object(m)
    }

    /// Whether this grant covers a call: same tool (or class) and every
    /// constraint holds; otherwise the first argument that fails and how.
    pub(crate) fn check(
        &self,
        tool: &str,
        class: ToolClass,
        args: &Map<String, Value>,
        provenance: &Provenance<'_>,
    ) -> Option<Result<(), Unmet>> {
        if !self.target.matches(tool, class) {
            return None;
        }
        for (name, c) in &self.arguments {
            let Some(v) = args.get(name) else {
                return Some(Err(Unmet {
                    argument: name.clone(),
                    key: None,
                }));
            };
            if let Err(key) = c.check(name, v, provenance) {
                return Some(Err(Unmet {
                    argument: name.clone(),
                    key: Some(key),
                }));
            }
        }
        Some(Ok(()))
    }

    /// The grant in words, as the approval page shows it, e.g.
    /// `bank.send_money, at most 2 times, recipient = "GB29…", amount ≤ 100`.
    pub fn describe(&self) -> String {
        let mut parts = vec![match &self.target {
            Target::Tool(t) => value::name(t),
            Target::Class(c) => format!("any {} tool", c.as_str().replace('_', " ")),
        }];
        parts.push(match self.max_uses {
            None => "any number of times while the task lasts".to_owned(),
            Some(1) => "once".to_owned(),
            Some(n) => format!("at most {n} times"),
        });
        if self.arguments.is_empty() {
            parts.push("with any arguments".to_owned());
        } else {
            for (name, c) in &self.arguments {
                parts.extend(c.describe(name));
            }
            parts.push("other arguments free".to_owned());
        }
        parts.join(", ")
    }
}

fn parse_arguments(
    args: &Map<String, Value>,
    at: &At,
) -> Result<BTreeMap<String, Constraint>, IntentError> {
    if args.len() > limits::MAX_ARGUMENTS {
        return Err(at.invalid(format!(
            "at most {} constrained arguments per grant",
            limits::MAX_ARGUMENTS
        )));
    }
    let mut out = BTreeMap::new();
    for (name, c) in args {
        let at = at.key(name);
        if name.is_empty()
            || name.len() > limits::MAX_NAME_BYTES
            || name.chars().any(value::is_hidden)
        {
            return Err(at.invalid(format!(
                "an argument name is 1 to {} bytes without control or invisible characters",
                limits::MAX_NAME_BYTES
            )));
        }
        out.insert(name.clone(), Constraint::parse(c, &at)?);
    }
    Ok(out)
}

fn valid_identifier(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= limits::MAX_IDENTIFIER_BYTES
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// The first constraint of a grant that a call does not meet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unmet {
    pub(crate) argument: String,
    pub(crate) key: Option<ConstraintKey>,
}

impl Unmet {
    /// The argument.
    pub fn argument(&self) -> &str {
        &self.argument
    }

    /// The key that failed; `None` when the argument is absent.
    pub fn key(&self) -> Option<ConstraintKey> {
        self.key
    }
}
