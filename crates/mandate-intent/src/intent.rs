//! An intent: the grants of a task, and which of them covers a call.

use crate::constraint::Provenance;
use crate::error::{At, IntentError};
use crate::grant::{GRANT_TYPE, Grant, Unmet};
use crate::limits;
use mandate_core::{ToolCall, ToolClass};
use serde_json::{Map, Value};
use std::collections::BTreeSet;

/// A task's intent: an ordered list of grants, parsed and checked.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Intent {
    grants: Vec<Grant>,
}

impl Intent {
    /// Parses `authorization_details` (RFC 9396 §2) as sent in a token
    /// exchange or a task request: a JSON array of `mandate_tool_call`
    /// objects, within the [`limits`]. Grants without an `identifier` get
    /// `g<N>`, the smallest N from 1 up that no other grant uses.
    pub fn parse(details: &Value) -> Result<Self, IntentError> {
        let at = At::root();
        let Value::Array(items) = details else {
            return Err(at.invalid(format!(
                "authorization_details is a JSON array of {GRANT_TYPE} objects"
            )));
        };
        if items.len() > limits::MAX_GRANTS {
            return Err(at.invalid(format!(
                "at most {} grants in one intent",
                limits::MAX_GRANTS
            )));
        }
        let mut grants = Vec::with_capacity(items.len());
        let mut named = BTreeSet::new();
        for (i, item) in items.iter().enumerate() {
            let at = at.index(i);
            let (id, grant) = Grant::parse(item, &at)?;
            if let Some(id) = id
                && !named.insert(id)
            {
                return Err(at
                    .key("identifier")
                    .invalid("this identifier is used by another grant of the intent"));
            }
            grants.push((grant, item.get("identifier").is_some()));
        }
        let patterns = grants
            .iter()
            .flat_map(|(g, _)| g.arguments().values())
            .filter(|c| c.pattern().is_some())
            .count();
        if patterns > limits::MAX_PATTERNS {
            return Err(at.invalid(format!(
                "at most {} patterns in one intent",
                limits::MAX_PATTERNS
            )));
        }
        let mut next = 1_usize;
        let grants = grants
            .into_iter()
            .map(|(mut g, has_id)| {
                if !has_id {
                    while named.contains(&format!("g{next}")) {
                        next += 1;
                    }
                    let id = format!("g{next}");
                    named.insert(id.clone());
                    g.set_identifier(id);
                }
                g
            })
            .collect();
        Ok(Self { grants })
    }

    /// Parses the text of an `authorization_details` parameter (at most
    /// [`limits::MAX_DETAILS_BYTES`]).
    pub fn parse_str(text: &str) -> Result<Self, IntentError> {
        let at = At::root();
        if text.len() > limits::MAX_DETAILS_BYTES {
            return Err(at.invalid(format!(
                "authorization_details is at most {} bytes",
                limits::MAX_DETAILS_BYTES
            )));
        }
        let v: Value = serde_json::from_str(text)
            .map_err(|_| at.invalid("authorization_details is not valid JSON"))?;
        Self::parse(&v)
    }

    /// The grants, in the order declared.
    pub fn grants(&self) -> &[Grant] {
        &self.grants
    }

    /// The grant with this identifier.
    pub fn grant(&self, identifier: &str) -> Option<&Grant> {
        self.grants.iter().find(|g| g.identifier() == identifier)
    }

    /// Whether it grants nothing.
    pub fn is_empty(&self) -> bool {
        self.grants.is_empty()
    }

    /// How many grants.
    pub fn len(&self) -> usize {
        self.grants.len()
    }

    /// The same intent with only the grants `keep` accepts (identifiers
    /// unchanged): for example, those granted.
    #[must_use]
    pub fn retain(&self, keep: impl Fn(&Grant) -> bool) -> Self {
        Self {
            grants: self.grants.iter().filter(|g| keep(g)).cloned().collect(),
        }
    }

    /// The canonical form: the array of grants in declared order, each
    /// with its identifier; `arguments` and `max_uses` left out when
    /// empty or absent; `one_of` sorted and without repeats; `returned_by`
    /// always an array, sorted. [`Intent::parse`] of it gives this intent
    /// back.
    pub fn to_json(&self) -> Value {
        Value::Array(self.grants.iter().map(Grant::to_json).collect())
    }

    /// The canonical JSON text: [`Intent::to_json`] with object keys
    /// sorted and no white space.
    pub fn canonical(&self) -> String {
        crate::value::canonical(&self.to_json())
    }

    /// The intent's hash: lowercase hex SHA-256 of the canonical JSON of
    /// `{"mandate_intent": 1, "grants": <canonical form>}`.
    pub fn hash(&self) -> String {
        mandate_core::canonical_hash(&serde_json::json!({
            "mandate_intent": 1,
            "grants": self.to_json(),
        }))
    }

    /// Which grants cover `call`, in declared order, and why the others
    /// for the same tool do not. A grant covers a call when its tool (or
    /// class) is the call's and every constraint holds: the argument is
    /// present and its value meets every key. Uses are not counted here:
    /// the store consumes them ([`Coverage::identifiers`] is the order to
    /// try).
    pub fn cover(&self, call: &Call<'_>, provenance: &Provenance<'_>) -> Coverage {
        let mut coverage = Coverage::default();
        for g in &self.grants {
            match g.check(call.tool, call.class, call.args, provenance) {
                None => {}
                Some(Ok(())) => coverage.covering.push(Covered {
                    identifier: g.identifier().to_owned(),
                    constrained: g.arguments().keys().cloned().collect(),
                    max_uses: g.max_uses(),
                }),
                Some(Err(unmet)) => coverage.misses.push(Miss {
                    identifier: g.identifier().to_owned(),
                    unmet,
                }),
            }
        }
        coverage
    }

    /// The intent in words, one line per grant, for the approval page
    /// (HTML escaping is the page's business).
    pub fn describe(&self) -> Vec<GrantLine> {
        self.grants
            .iter()
            .map(|g| GrantLine {
                identifier: g.identifier().to_owned(),
                text: g.describe(),
            })
            .collect()
    }
}

impl std::fmt::Display for Intent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.grants.is_empty() {
            return f.write_str("nothing");
        }
        for (i, g) in self.grants.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            f.write_str(&g.describe())?;
        }
        Ok(())
    }
}

impl serde::Serialize for Intent {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_json().serialize(s)
    }
}

impl<'de> serde::Deserialize<'de> for Intent {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        Self::parse(&v).map_err(serde::de::Error::custom)
    }
}

/// One grant in words.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GrantLine {
    /// The grant's identifier.
    pub identifier: String,
    /// E.g. `bank.send_money, at most 2 times, recipient = "GB29…", amount ≤ 100, other arguments free`.
    pub text: String,
}

/// A tool call as coverage sees it.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    /// Exposed tool name (`upstream.tool`).
    pub tool: &'a str,
    /// The tool's configured class.
    pub class: ToolClass,
    /// The arguments.
    pub args: &'a Map<String, Value>,
}

impl<'a> Call<'a> {
    /// A call of `tool` in `class` with `args`.
    pub fn new(tool: &'a str, class: ToolClass, args: &'a Map<String, Value>) -> Self {
        Self { tool, class, args }
    }

    /// `call` with `exposed` its name (`call.name.to_string()`, which the
    /// caller keeps alive).
    pub fn of(call: &'a ToolCall, exposed: &'a str) -> Self {
        Self::new(exposed, call.class, &call.args)
    }
}

/// The outcome of [`Intent::cover`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Coverage {
    covering: Vec<Covered>,
    misses: Vec<Miss>,
}

impl Coverage {
    /// Whether any grant covers the call (uses aside).
    pub fn is_covered(&self) -> bool {
        !self.covering.is_empty()
    }

    /// Every grant that covers the call, in declared order.
    pub fn covering(&self) -> &[Covered] {
        &self.covering
    }

    /// Their identifiers, in declared order: the order in which to try
    /// to consume a use.
    pub fn identifiers(&self) -> Vec<&str> {
        self.covering
            .iter()
            .map(|c| c.identifier.as_str())
            .collect()
    }

    /// The first covering grant that `has_use_left` accepts.
    pub fn first_available(&self, has_use_left: impl Fn(&str) -> bool) -> Option<&Covered> {
        self.covering.iter().find(|c| has_use_left(&c.identifier))
    }

    /// The covering grant with this identifier.
    pub fn get(&self, identifier: &str) -> Option<&Covered> {
        self.covering.iter().find(|c| c.identifier == identifier)
    }

    /// Grants for the call's tool (or class) that do not cover it, with
    /// the first argument that failed: for the audit record and the
    /// approval page.
    pub fn misses(&self) -> &[Miss] {
        &self.misses
    }
}

/// A grant that covers a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Covered {
    identifier: String,
    constrained: BTreeSet<String>,
    max_uses: Option<u32>,
}

impl Covered {
    /// The grant's identifier (for the audit record).
    pub fn identifier(&self) -> &str {
        &self.identifier
    }

    /// The top-level arguments the grant constrains. Only these are
    /// covered *by a constraint*; the others merely belong to a call of
    /// an allowed tool, and a grant without a constraint on an argument
    /// makes no value of it acceptable.
    pub fn constrained(&self) -> &BTreeSet<String> {
        &self.constrained
    }

    /// Whether argument `name` is covered by a constraint.
    pub fn constrains(&self, name: &str) -> bool {
        self.constrained.contains(name)
    }

    /// The call's arguments this grant leaves unconstrained.
    pub fn unconstrained<'c>(&self, args: &'c Map<String, Value>) -> Vec<&'c str> {
        // Sorted: the map's own order depends on serde_json's features.
        let mut out: Vec<&str> = args
            .keys()
            .filter(|k| !self.constrained.contains(k.as_str()))
            .map(String::as_str)
            .collect();
        out.sort_unstable();
        out
    }

    /// The grant's count (`None`: no count).
    pub fn max_uses(&self) -> Option<u32> {
        self.max_uses
    }
}

/// A grant for the call's tool that does not cover it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Miss {
    identifier: String,
    unmet: Unmet,
}

impl Miss {
    /// The grant's identifier.
    pub fn identifier(&self) -> &str {
        &self.identifier
    }

    /// What failed.
    pub fn unmet(&self) -> &Unmet {
        &self.unmet
    }
}

impl std::fmt::Display for Miss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let arg = crate::value::name(&self.unmet.argument);
        match self.unmet.key {
            None => write!(f, "grant {}: argument {arg} is missing", self.identifier),
            Some(k) => write!(
                f,
                "grant {}: argument {arg} fails {}",
                self.identifier,
                k.as_str()
            ),
        }
    }
}
