//! A task's **intent**: what the user asked for, declared before the agent
//! reads anything, as RFC 9396 `authorization_details` of type
//! `mandate_tool_call` (see `docs/INTENT.md`).
//!
//! ```
//! use mandate_intent::{Call, Intent};
//! use mandate_core::ToolClass;
//! use serde_json::json;
//! use std::collections::BTreeSet;
//!
//! let intent = Intent::parse(&json!([{
//!     "type": "mandate_tool_call", "tool": "bank.send_money",
//!     "arguments": {"recipient": {"equals": "GB29NWBK60161331926819"}, "amount": {"max": 100}},
//!     "max_uses": 2
//! }]))?;
//! assert_eq!(
//!     intent.to_string(),
//!     r#"bank.send_money, at most 2 times, amount ≤ 100, recipient = "GB29NWBK60161331926819", other arguments free"#
//! );
//!
//! let no_provenance = |_: &str, _: &serde_json::Value| BTreeSet::new();
//! let args = json!({"recipient": "GB29NWBK60161331926819", "amount": 40, "subject": "rent"});
//! let args = args.as_object().ok_or("an object")?;
//! let coverage = intent.cover(&Call::new("bank.send_money", ToolClass::Financial, args), &no_provenance);
//! let grant = coverage.covering().first().ok_or("covered")?;
//! assert_eq!(grant.identifier(), "g1");
//! // The subject is in an allowed call, but no constraint covers it.
//! assert_eq!(grant.unconstrained(args), ["subject"]);
//!
//! // An attacker's IBAN is not covered: the grant constrains the recipient.
//! let evil = json!({"recipient": "US133000000121212121212", "amount": 1});
//! let evil = evil.as_object().ok_or("an object")?;
//! assert!(!intent.cover(&Call::new("bank.send_money", ToolClass::Financial, evil), &no_provenance).is_covered());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Pure logic, no I/O: the control store (`mandate-control`) keeps a
//! task's grants and their uses; the broker and the gateway decide what
//! to do with coverage.

mod constraint;
mod error;
mod grant;
mod intent;
mod narrow;
mod value;

pub use constraint::{Constraint, ConstraintKey, Pattern, Provenance};
pub use error::{IntentError, InvalidDetails};
pub use grant::{GRANT_TYPE, Grant, Target, Unmet};
pub use intent::{Call, Coverage, Covered, GrantLine, Intent, Miss};
pub use narrow::ClassOf;
pub use value::MAX_SAFE_INTEGER;

/// The bounds on what an intent may hold. A request past any of them is
/// refused (`invalid_authorization_details`), never trimmed.
pub mod limits {
    /// The `authorization_details` text, in bytes.
    pub const MAX_DETAILS_BYTES: usize = 64 * 1024;
    /// Grants in one intent.
    pub const MAX_GRANTS: usize = 32;
    /// Constrained arguments in one grant.
    pub const MAX_ARGUMENTS: usize = 16;
    /// An argument name, in bytes.
    pub const MAX_NAME_BYTES: usize = 128;
    /// A tool name, in bytes.
    pub const MAX_TOOL_NAME_BYTES: usize = 256;
    /// A grant identifier, in bytes.
    pub const MAX_IDENTIFIER_BYTES: usize = 64;
    /// Values in one `one_of`.
    pub const MAX_ONE_OF: usize = 64;
    /// One `equals` value or `one_of` element, as canonical JSON, in bytes.
    pub const MAX_VALUE_BYTES: usize = 1024;
    /// How deeply one `equals` value or `one_of` element nests.
    pub const MAX_VALUE_DEPTH: usize = 8;
    /// A `prefix`, in bytes.
    pub const MAX_PREFIX_BYTES: usize = 1024;
    /// A `pattern`'s source, in bytes.
    pub const MAX_PATTERN_BYTES: usize = 256;
    /// Nesting of groups and repetitions in a `pattern`.
    pub const MAX_PATTERN_NEST: u32 = 16;
    /// `pattern`s in one intent (each compiled one holds memory).
    pub const MAX_PATTERNS: usize = 8;
    /// A compiled `pattern` (the regex crate's size limits), in bytes.
    pub const MAX_PATTERN_COMPILED_BYTES: usize = 1024 * 1024;
    /// Tools in one `returned_by`.
    pub const MAX_RETURNED_BY: usize = 16;
    /// A grant's `max_uses`.
    pub const MAX_USES: u32 = 10_000;
}

#[cfg(test)]
#[path = "intent_tests.rs"]
mod intent_tests;
