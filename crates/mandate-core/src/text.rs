//! Characters a person cannot see, and how to show them.
//!
//! One list for every place that must not let text hide from a person:
//! the result sanitiser, the value scanner (`evil\u{200B}.com` is
//! `evil.com`), the approval page (which marks the same characters;
//! `approvals.js` mirrors this list) and the command line.

use std::borrow::Cow;
use std::fmt::Write as _;

/// Whether `c` is invisible or reorders text: Unicode tags, zero-width
/// characters, bidi marks, embeddings, overrides and isolates, invisible
/// operators, the soft hyphen and the interlinear annotation controls.
pub fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{E0000}'..='\u{E007F}'        // tag characters
        | '\u{200B}'..='\u{200F}'        // zero-width space/joiners, LRM/RLM
        | '\u{061C}'                     // Arabic letter mark
        | '\u{202A}'..='\u{202E}'        // bidi embeddings and overrides
        | '\u{2060}'..='\u{2064}'        // word joiner, invisible operators
        | '\u{2066}'..='\u{206F}'        // bidi isolates, deprecated format controls
        | '\u{FEFF}'                     // zero-width no-break space
        | '\u{180E}'                     // Mongolian vowel separator
        | '\u{00AD}'                     // soft hyphen
        | '\u{FFF9}'..='\u{FFFB}'        // interlinear annotation
    )
}

/// `s` for one line of a terminal: every invisible or control character
/// (escape sequences, line breaks and tabs included) shown as `⟨U+XXXX⟩`,
/// so that what a person reads is what is there.
pub fn marked_line(s: &str) -> Cow<'_, str> {
    marked(s, false)
}

/// As [`marked_line`], keeping line breaks and tabs (for multi-line text
/// such as pretty-printed JSON, whose strings have their controls escaped).
pub fn marked_text(s: &str) -> Cow<'_, str> {
    marked(s, true)
}

fn marked(s: &str, keep_layout: bool) -> Cow<'_, str> {
    let hidden =
        |c: char| is_invisible(c) || (c.is_control() && !(keep_layout && matches!(c, '\n' | '\t')));
    if !s.chars().any(hidden) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        if hidden(c) {
            let _ = write!(out, "⟨U+{:04X}⟩", u32::from(c));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Whether `name` is a plain lower-case SQL identifier (letters, digits,
/// `_`, not starting with a digit, at most 63 bytes: PostgreSQL's limit),
/// safe to splice into a statement unquoted, as the stores do with their
/// schema names.
pub fn is_plain_identifier(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_identifiers_only() {
        for ok in ["mandate_control", "a", "e2e_ctl_1f"] {
            assert!(is_plain_identifier(ok), "{ok}");
        }
        for bad in [
            "",
            "1abc",
            "Mandate",
            "a-b",
            "a;drop",
            "a b",
            "ä",
            &"a".repeat(64),
        ] {
            assert!(!is_plain_identifier(bad), "{bad}");
        }
    }

    #[test]
    fn plain_text_is_untouched() {
        assert!(matches!(marked_line("alice@example.com"), Cow::Borrowed(_)));
    }

    #[test]
    fn hidden_characters_and_escape_sequences_are_shown() {
        assert_eq!(marked_line("pay\u{200B}pal"), "pay⟨U+200B⟩pal");
        assert_eq!(marked_line("\u{1B}[2Jok"), "⟨U+001B⟩[2Jok");
        assert_eq!(marked_line("a\nb"), "a⟨U+000A⟩b");
        assert_eq!(marked_text("a\nb\u{202E}"), "a\nb⟨U+202E⟩");
        assert_eq!(marked_line("\u{E0041}"), "⟨U+E0041⟩");
    }
}
