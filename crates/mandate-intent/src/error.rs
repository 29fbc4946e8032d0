//! Errors of the intent crate.

use std::fmt::Write as _;

/// Why an intent was refused.
///
/// The message is fit for the client: it names the place in the request
/// and the rule broken, and it contains only the characters RFC 6749 §5.2
/// allows in an `error_description` (printable ASCII without `"` and `\`);
/// names taken from the request are shortened and their other characters
/// shown as `?`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IntentError {
    /// The `authorization_details` are malformed, unknown, or past a limit
    /// (RFC 9396 §5: `invalid_authorization_details`).
    #[error("{0}")]
    Invalid(InvalidDetails),
}

impl IntentError {
    /// The OAuth error code to answer with (RFC 9396 §5).
    pub fn error_code(&self) -> &'static str {
        match self {
            Self::Invalid(_) => "invalid_authorization_details",
        }
    }
}

/// Where in the `authorization_details` a rule was broken, and which.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidDetails {
    at: String,
    reason: String,
}

impl InvalidDetails {
    /// The place, e.g. `authorization_details[1].arguments.recipient.pattern`.
    pub fn at(&self) -> &str {
        &self.at
    }

    /// The rule broken.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl std::fmt::Display for InvalidDetails {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.at, self.reason)
    }
}

/// A place in the request, built up while parsing.
#[derive(Debug, Clone)]
pub(crate) struct At(String);

impl At {
    pub(crate) fn root() -> Self {
        Self("authorization_details".to_owned())
    }

    pub(crate) fn index(&self, i: usize) -> Self {
        Self(format!("{}[{i}]", self.0))
    }

    pub(crate) fn key(&self, name: &str) -> Self {
        let mut s = self.0.clone();
        if !name.is_empty()
            && name.len() <= 40
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            s.push('.');
            s.push_str(name);
        } else {
            let _ = write!(s, "['{}']", safe(name));
        }
        Self(s)
    }

    pub(crate) fn invalid(&self, reason: impl Into<String>) -> IntentError {
        IntentError::Invalid(InvalidDetails {
            at: self.0.clone(),
            reason: reason.into(),
        })
    }
}

/// `text` as RFC 6749 §5.2 allows it in an error description: at most 40
/// characters, printable ASCII except `"`, `\` and `'` (shown as `?`).
pub(crate) fn safe(text: &str) -> String {
    let mut out: String = text
        .chars()
        .take(40)
        .map(|c| {
            if c.is_ascii_graphic() && !matches!(c, '"' | '\\' | '\'') || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect();
    if text.chars().nth(40).is_some() {
        out.push_str("...");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_fit_for_an_error_description() {
        let e = At::root()
            .index(2)
            .key("recip\"ient\u{202e}")
            .invalid(format!("unknown key '{}'", safe("x\\y")));
        let text = e.to_string();
        assert_eq!(
            text,
            "authorization_details[2]['recip?ient?']: unknown key 'x?y'"
        );
        assert!(
            text.chars()
                .all(|c| c == ' ' || c.is_ascii_graphic() && c != '"' && c != '\\')
        );
        assert_eq!(e.error_code(), "invalid_authorization_details");
        assert_eq!(safe(&"a".repeat(50)), format!("{}...", "a".repeat(40)));
    }
}
