#![doc = include_str!("../README.md")]

mod family;
mod report;
mod scan;
mod session;

pub use family::Family;
pub use report::{ArgSources, ArgumentSources, Origin, Sources, ValueSources};
pub use scan::{MAX_DEPTH, MAX_VALUE_BYTES};
pub use session::{
    CALL_OVERHEAD, Limits, ORIGINS, Observed, REFERENCE_COST, RestoreError, SNAPSHOT_VERSION,
    SessionValues, Snapshot, SnapshotCall, Stats, VALUE_OVERHEAD,
};

use serde::{Deserialize, Serialize};

/// The provenance label of a tool's results, as configured for the tool
/// (the gateway's `Provenance`, same spellings).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Label {
    /// A system the operator trusts.
    Trusted,
    /// Outside content that may carry instructions.
    Untrusted,
    /// Customer data or secrets: not attacker-chosen, but not the user's
    /// word either. Counts as a source other than untrusted.
    Sensitive,
}

impl Label {
    /// The configured spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Label::Trusted => "trusted",
            Label::Untrusted => "untrusted",
            Label::Sensitive => "sensitive",
        }
    }

    fn index(self) -> usize {
        match self {
            Label::Trusted => 0,
            Label::Untrusted => 1,
            Label::Sensitive => 2,
        }
    }
}

impl std::str::FromStr for Label {
    type Err = UnknownLabel;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "trusted" => Ok(Label::Trusted),
            "untrusted" => Ok(Label::Untrusted),
            "sensitive" => Ok(Label::Sensitive),
            _ => Err(UnknownLabel(())),
        }
    }
}

/// A label spelled other than `trusted`, `untrusted`, `sensitive`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown provenance label (trusted, untrusted, sensitive)")]
pub struct UnknownLabel(());

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_spellings_are_unchanged() {
        for (label, spelled) in [
            (Label::Trusted, "trusted"),
            (Label::Untrusted, "untrusted"),
            (Label::Sensitive, "sensitive"),
        ] {
            assert_eq!(label.as_str(), spelled);
            assert_eq!(spelled.parse::<Label>(), Ok(label));
            assert_eq!(
                serde_json::to_value(label).unwrap(),
                serde_json::json!(spelled)
            );
        }
        assert!("Trusted".parse::<Label>().is_err());
    }
}
