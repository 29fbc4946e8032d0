//! What [`SessionValues::sources`](crate::SessionValues::sources) answers.

use crate::Label;
use crate::family::Family;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// A result that carried a value: the tool, its label, the call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    /// The exposed tool name (`bank.get_transactions`).
    pub tool: Arc<str>,
    /// The tool's provenance label.
    pub label: Label,
    /// The call's correlation id.
    pub call: Arc<str>,
}

/// Where one value came from. Every flag is exact for what the index holds;
/// `origins` cites up to four of the calls (one per label at least).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sources {
    /// The user's declared intent (or request, or delegation) named it.
    pub intent: bool,
    /// A `trusted` result carried it.
    pub trusted: bool,
    /// A `sensitive` result carried it.
    pub sensitive: bool,
    /// An `untrusted` result carried it.
    pub untrusted: bool,
    /// Calls that carried it.
    pub origins: Vec<Origin>,
}

impl Sources {
    /// No source the index knows of.
    pub fn is_unseen(&self) -> bool {
        !(self.intent || self.trusted || self.sensitive || self.untrusted)
    }

    /// Only untrusted results carried it: not the intent, not a trusted or
    /// sensitive result.
    pub fn is_untrusted_only(&self) -> bool {
        self.untrusted && !(self.intent || self.trusted || self.sensitive)
    }

    /// The untrusted tools among the cited origins.
    pub fn untrusted_tools(&self) -> impl Iterator<Item = &str> {
        self.origins
            .iter()
            .filter(|o| o.label == Label::Untrusted)
            .map(|o| &*o.tool)
    }
}

/// One value found in an argument, in its normal form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValueSources {
    /// Its family.
    pub family: Family,
    /// Its normal form (`DE89370400440532013000`, `evil.com/x`).
    pub value: String,
    /// Where it came from.
    pub sources: Sources,
}

/// The values in one top-level argument, sorted by family and value.
/// A `Text` value (the argument's whole string) appears only when some
/// source has it; values of other families appear whether seen or not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArgumentSources {
    /// The argument's name.
    pub name: String,
    /// The values found in it.
    pub values: Vec<ValueSources>,
}

impl ArgumentSources {
    /// Values of this argument that only untrusted results carried.
    pub fn untrusted_only(&self) -> impl Iterator<Item = &ValueSources> {
        self.values.iter().filter(|v| v.sources.is_untrusted_only())
    }

    /// Values of this argument with no known source.
    pub fn unseen(&self) -> impl Iterator<Item = &ValueSources> {
        self.values.iter().filter(|v| v.sources.is_unseen())
    }
}

/// Where the values of a call's arguments came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArgSources {
    args: Vec<ArgumentSources>,
    partial: bool,
    truncated: bool,
}

impl ArgSources {
    pub(crate) fn new(args: Vec<ArgumentSources>, partial: bool, truncated: bool) -> Self {
        ArgSources {
            args,
            partial,
            truncated,
        }
    }

    /// Every top-level argument, sorted by name.
    pub fn arguments(&self) -> &[ArgumentSources] {
        &self.args
    }

    /// One argument by name.
    pub fn get(&self, name: &str) -> Option<&ArgumentSources> {
        self.args.iter().find(|a| a.name == name)
    }

    /// Names of the arguments carrying a value that only untrusted results
    /// introduced (not the intent, not a trusted or sensitive result).
    pub fn untrusted_only(&self) -> Vec<&str> {
        self.names(|a| a.untrusted_only().next().is_some())
    }

    /// Names of the arguments carrying a value no known source accounts for.
    pub fn unseen(&self) -> Vec<&str> {
        self.names(|a| a.unseen().next().is_some())
    }

    /// Whether this answer may be missing sources: the session overflowed
    /// or lost its history, or the arguments were larger than the scan cap.
    /// A caller failing closed treats [`unseen`](ArgSources::unseen) values
    /// as untrusted when this is set.
    pub fn is_partial(&self) -> bool {
        self.partial
    }

    /// Whether part of the arguments was not scanned (size or depth cap).
    pub fn truncated(&self) -> bool {
        self.truncated
    }

    /// The same report with every value's normal form blanked (family,
    /// sources and verdicts kept): for records whose arguments are redacted.
    #[must_use]
    pub fn without_values(mut self) -> Self {
        for value in self.args.iter_mut().flat_map(|a| a.values.iter_mut()) {
            value.value.clear();
        }
        self
    }

    fn names(&self, pick: impl Fn(&ArgumentSources) -> bool) -> Vec<&str> {
        self.args
            .iter()
            .filter(|a| pick(a))
            .map(|a| a.name.as_str())
            .collect()
    }
}
