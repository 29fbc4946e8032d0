//! The spellings of these enums are stored (audit records, policies,
//! configuration). They are derived (strum, serde) now; these tables freeze
//! them: a change here is a change of the stored format.

use crate::{Effect, RecordKind, ToolClass};
use serde_json::json;
use std::fmt::Debug;
use strum::VariantArray;

/// `table` names every variant once, with the spelling in use today.
fn frozen<T>(table: &[(T, &'static str)])
where
    T: VariantArray + Copy + PartialEq + Debug + Into<&'static str>,
{
    assert_eq!(
        table.len(),
        T::VARIANTS.len(),
        "a variant has no frozen spelling"
    );
    for v in T::VARIANTS {
        assert!(
            table.iter().any(|(t, _)| t == v),
            "{v:?} is not in the table"
        );
    }
    for (v, spelled) in table {
        let got: &'static str = (*v).into();
        assert_eq!(got, *spelled, "{v:?}");
    }
}

/// serde writes and reads the same spelling.
fn serde_agrees<T>(table: &[(T, &'static str)]) -> Result<(), serde_json::Error>
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + Debug,
{
    for (v, spelled) in table {
        assert_eq!(serde_json::to_value(v)?, json!(spelled));
        assert_eq!(&serde_json::from_value::<T>(json!(spelled))?, v);
    }
    Ok(())
}

#[test]
fn tool_class_spellings_are_unchanged() -> Result<(), serde_json::Error> {
    let table = [
        (ToolClass::Read, "read"),
        (ToolClass::Write, "write"),
        (ToolClass::Outbound, "outbound"),
        (ToolClass::Financial, "financial"),
        (ToolClass::AccessControl, "access_control"),
        (ToolClass::Irreversible, "irreversible"),
    ];
    frozen(&table);
    serde_agrees(&table)?;
    assert_eq!(ToolClass::ALL.len(), table.len());
    for (class, spelled) in table {
        assert_eq!(class.as_str(), spelled);
        assert_eq!(class.to_string(), spelled);
        assert_eq!(spelled.parse::<ToolClass>(), Ok(class));
    }
    assert_eq!(
        "Read".parse::<ToolClass>(),
        Err("unknown tool class \"Read\" (expected one of: read, write, outbound, financial, access_control, irreversible)".to_owned())
    );
    Ok(())
}

#[test]
fn effect_spellings_are_unchanged() -> Result<(), serde_json::Error> {
    let table = [(Effect::Allow, "allow"), (Effect::Deny, "deny")];
    frozen(&table);
    serde_agrees(&table)?;
    for (effect, spelled) in table {
        assert_eq!(effect.as_str(), spelled);
    }
    Ok(())
}

#[test]
fn record_kind_spellings_are_unchanged() -> Result<(), serde_json::Error> {
    let table = [
        (RecordKind::Decision, "decision"),
        (RecordKind::Outcome, "outcome"),
        (RecordKind::Control, "control"),
    ];
    frozen(&table);
    serde_agrees(&table)?;
    for (kind, spelled) in table {
        assert_eq!(kind.as_str(), spelled);
    }
    Ok(())
}
