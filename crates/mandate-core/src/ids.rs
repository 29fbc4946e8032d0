//! Identifiers as newtypes, so a correlation id can never be passed where a
//! decision id is expected.

use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// A fresh, time-ordered (UUIDv7) identifier.
            pub fn new() -> Self {
                Self(format!(concat!($prefix, "{}"), uuid::Uuid::now_v7().simple()))
            }
            /// Wraps an identifier read back from storage.
            pub fn from_stored(s: impl Into<String>) -> Self {
                Self(s.into())
            }
            /// The identifier as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

id_type!(
    /// Identifies one policy decision; returned to the agent on a denial.
    DecisionId,
    "dec_"
);
id_type!(
    /// Identifies one tool call end to end (F-05): sent upstream in
    /// `_meta` and `traceparent`, returned to the client, on every record.
    CorrelationId,
    "corr_"
);

impl CorrelationId {
    /// The 32-hex-digit trace id derived from this correlation id, for a
    /// W3C `traceparent` header.
    pub fn trace_id(&self) -> String {
        let tail = self.0.trim_start_matches("corr_");
        let mut hex: String = tail.chars().filter(char::is_ascii_hexdigit).collect();
        hex.truncate(32);
        while hex.len() < 32 {
            hex.push('0');
        }
        hex
    }

    /// The 16-hex-digit span id derived from this correlation id: the
    /// gateway's hop in a `traceparent` when it exports no span of its own.
    pub fn span_id(&self) -> String {
        self.trace_id().chars().rev().take(16).collect()
    }

    /// A W3C `traceparent` value (version 00, sampled) for this call.
    pub fn traceparent(&self) -> String {
        format!("00-{}-{}-01", self.trace_id(), self.span_id())
    }
}
