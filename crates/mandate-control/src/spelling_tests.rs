//! These spellings are stored in the control store's rows and shown by the
//! API and the CLI. They are derived (strum, serde) now; these tables
//! freeze them: a change here is a change of the stored format.

use crate::{ApprovalStatus, ChangeKind, ChangeStatus, GrantStatus, RevocationKind, TaskStatus};
use serde_json::json;
use std::fmt::Debug;
use std::str::FromStr;
use strum::VariantArray;

/// `table` names every variant once, with the spelling in use today, which
/// `as_str`, `FromStr` and serde all agree on.
fn frozen<T>(table: &[(T, &'static str)], as_str: fn(T) -> &'static str)
where
    T: VariantArray
        + Copy
        + PartialEq
        + Debug
        + FromStr<Err = String>
        + serde::Serialize
        + serde::de::DeserializeOwned,
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
        assert_eq!(as_str(*v), *spelled);
        assert_eq!(spelled.parse::<T>().as_ref(), Ok(v));
        assert_eq!(serde_json::to_value(v).ok(), Some(json!(spelled)));
        assert_eq!(
            serde_json::from_value::<T>(json!(spelled)).ok().as_ref(),
            Some(v)
        );
    }
    assert!("Unknown".parse::<T>().is_err());
}

#[test]
fn change_kind_spellings_are_unchanged() {
    frozen(
        &[
            (ChangeKind::PolicySet, "policy_set"),
            (ChangeKind::ScopeCeiling, "scope_ceiling"),
        ],
        ChangeKind::as_str,
    );
    assert_eq!(
        "policy".parse::<ChangeKind>(),
        Err("unknown change kind \"policy\" (policy_set, scope_ceiling)".to_owned())
    );
}

#[test]
fn change_status_spellings_are_unchanged() {
    frozen(
        &[
            (ChangeStatus::Proposed, "proposed"),
            (ChangeStatus::Approved, "approved"),
            (ChangeStatus::Activated, "activated"),
            (ChangeStatus::Rejected, "rejected"),
        ],
        ChangeStatus::as_str,
    );
}

#[test]
fn approval_status_spellings_are_unchanged() {
    frozen(
        &[
            (ApprovalStatus::Pending, "pending"),
            (ApprovalStatus::Approved, "approved"),
            (ApprovalStatus::Denied, "denied"),
            (ApprovalStatus::Expired, "expired"),
            (ApprovalStatus::Withdrawn, "withdrawn"),
        ],
        ApprovalStatus::as_str,
    );
}

#[test]
fn revocation_kind_spellings_are_unchanged() {
    let table = [
        (RevocationKind::User, "user"),
        (RevocationKind::Agent, "agent"),
        (RevocationKind::Build, "build"),
        (RevocationKind::Task, "task"),
        (RevocationKind::Session, "session"),
        (RevocationKind::Token, "token"),
    ];
    frozen(&table, RevocationKind::as_str);
    assert_eq!(RevocationKind::ALL.len(), table.len());
    for (kind, spelled) in table {
        assert_eq!(kind.to_string(), spelled);
    }
    assert_eq!(
        "jti".parse::<RevocationKind>(),
        Err(
            "unknown revocation kind \"jti\" (user, agent, build, task, session, token)".to_owned()
        )
    );
}

#[test]
fn task_status_spellings_are_unchanged() {
    frozen(
        &[
            (TaskStatus::Active, "active"),
            (TaskStatus::Completed, "completed"),
            (TaskStatus::Cancelled, "cancelled"),
        ],
        TaskStatus::as_str,
    );
}

#[test]
fn grant_status_spellings_are_unchanged() {
    frozen(
        &[
            (GrantStatus::Granted, "granted"),
            (GrantStatus::Pending, "pending"),
            (GrantStatus::Refused, "refused"),
        ],
        GrantStatus::as_str,
    );
}
