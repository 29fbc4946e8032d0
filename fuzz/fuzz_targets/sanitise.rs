//! The result sanitiser (`mandate_gateway::provenance`) on arbitrary text.
//!
//! Input: a mode byte, then
//! * mode even: the rest is text (UTF-8, lossily decoded);
//! * mode odd: each byte picks a character from a table of the ones that
//!   matter here (escape introducers and terminators, every Unicode
//!   bidi control, zero-width and tag characters, other format
//!   characters, controls, letters of the injection patterns), so the
//!   fuzzer composes escape sequences and hidden text quickly.
//!
//! Invariants:
//! * no invisible character (the model below: Unicode's Bidi_Control
//!   characters, zero-width characters, tags, soft hyphen, the other
//!   format characters the documentation lists) and no C0/C1 control
//!   other than tab, newline and carriage return survives: so no terminal
//!   escape sequence can either;
//! * cleaning is idempotent and removes only: the output is a subsequence
//!   of the input, identical to it exactly when nothing was removed, and
//!   clean text passes unchanged;
//! * `sanitise` cleans every text block and string of structured content
//!   alike, wraps untrusted text in an envelope whose end marker the
//!   content cannot forge, counts what it removed, and labels
//!   `hidden_content`/`suspicious` exactly when it should.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mandate_fuzz::finding;
use mandate_gateway::provenance::{Provenance, SUSPICIOUS, clean, detect, sanitise};
use rmcp::model::{CallToolResult, ContentBlock};
use serde_json::Value;

/// Characters no cleaned text may contain, written from Unicode's
/// Bidi_Control property (PropList.txt) and the characters
/// docs/PROVENANCE.md lists, independently of the implementation.
fn must_not_survive(c: char) -> bool {
    let bidi_control = matches!(
        c,
        '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'
    );
    let zero_width = matches!(c, '\u{200B}'..='\u{200D}' | '\u{2060}'..='\u{2064}' | '\u{FEFF}');
    let tag = ('\u{E0000}'..='\u{E007F}').contains(&c);
    let other_format = matches!(c, '\u{00AD}' | '\u{180E}');
    let control = c.is_control() && !matches!(c, '\t' | '\n' | '\r');
    bidi_control || zero_width || tag || other_format || control
}

const TABLE: &[char] = &[
    '\u{1B}',
    '\u{9B}',
    '\u{7}',
    '\u{9C}',
    '[',
    ']',
    '\\',
    '0',
    '1',
    ';',
    'm',
    'A',
    '@',
    '~',
    'P',
    '\u{0}',
    '\u{7F}',
    '\u{85}',
    '\t',
    '\n',
    '\r',
    ' ',
    '\u{061C}',
    '\u{200B}',
    '\u{200C}',
    '\u{200D}',
    '\u{200E}',
    '\u{200F}',
    '\u{202A}',
    '\u{202B}',
    '\u{202C}',
    '\u{202D}',
    '\u{202E}',
    '\u{2060}',
    '\u{2061}',
    '\u{2064}',
    '\u{2066}',
    '\u{2067}',
    '\u{2068}',
    '\u{2069}',
    '\u{206A}',
    '\u{206F}',
    '\u{FEFF}',
    '\u{FFF9}',
    '\u{FFFB}',
    '\u{00AD}',
    '\u{180E}',
    '\u{034F}',
    '\u{FE0F}',
    '\u{E0001}',
    '\u{E0041}',
    '\u{E007F}',
    '\u{E0100}',
    'i',
    'g',
    'n',
    'o',
    'r',
    'e',
    's',
    'y',
    't',
    ':',
    '<',
    '>',
    '|',
    '/',
    '"',
    '{',
    '}',
    'é',
    '中',
    '😀',
];

fn text_of(mode: u8, rest: &[u8]) -> String {
    if mode % 2 == 0 {
        return String::from_utf8_lossy(rest).into_owned();
    }
    rest.iter()
        .map(|b| {
            TABLE
                .get(usize::from(*b) % TABLE.len())
                .copied()
                .unwrap_or(' ')
        })
        .collect()
}

fn is_subsequence(small: &str, big: &str) -> bool {
    let mut big = big.chars();
    small.chars().all(|c| big.any(|b| b == c))
}

fn check_clean(input: &str) -> (String, usize) {
    let (out, removed) = clean(input);
    if let Some(c) = out.chars().find(|c| must_not_survive(*c)) {
        finding(format!(
            "U+{:04X} survived cleaning of {input:?}: {out:?}",
            u32::from(c)
        ));
    }
    if clean(&out) != (out.clone(), 0) {
        finding(format!("cleaning is not idempotent on {input:?}"));
    }
    if !is_subsequence(&out, input) {
        finding(format!("cleaning added text: {input:?} -> {out:?}"));
    }
    if (removed == 0) != (out == input) {
        finding(format!("removed {removed} but {input:?} -> {out:?}"));
    }
    if !input.chars().any(must_not_survive) && out != input {
        finding(format!("clean text changed: {input:?} -> {out:?}"));
    }
    (out, removed)
}

fuzz_target!(|data: &[u8]| {
    let Some((mode, rest)) = data.split_first() else {
        return;
    };
    let text = text_of(*mode, rest);
    let (cleaned, removed) = check_clean(&text);
    let _ = detect(&text);

    // The whole result: text twice (one block, one in structured content).
    let provenance = match mode % 6 {
        0 | 1 => Provenance::Untrusted,
        2 | 3 => Provenance::Sensitive,
        _ => Provenance::Trusted,
    };
    let mut result = CallToolResult::success(vec![ContentBlock::text(text.clone())]);
    result.structured_content =
        Some(serde_json::json!({"a": [text.clone(), {"b": text.clone()}], "n": 1}));
    let findings = sanitise(&mut result, "docs.search", provenance);
    let block = match result.content.first() {
        Some(ContentBlock::Text(t)) => t.text.clone(),
        _ => finding("the text block disappeared"),
    };
    let structured = result.structured_content.clone().unwrap_or(Value::Null);
    if provenance == Provenance::Trusted {
        if block != text || findings != Default::default() {
            finding("trusted result changed");
        }
        return;
    }
    let want_structured =
        serde_json::json!({"a": [cleaned.clone(), {"b": cleaned.clone()}], "n": 1});
    if structured != want_structured {
        finding(format!("structured content not cleaned: {structured}"));
    }
    match provenance {
        Provenance::Untrusted => {
            let Some(boundary) = block
                .strip_prefix("<<untrusted-content ")
                .and_then(|r| r.split_whitespace().next())
            else {
                finding(format!("no envelope: {block:?}"));
            };
            let end = format!("\n<<end-untrusted-content {boundary}>>");
            if boundary.len() != 32 || !block.ends_with(&end) {
                finding(format!("bad envelope: {block:?}"));
            }
            let inner = block.strip_suffix(&end).unwrap_or_default();
            if !inner.ends_with(&format!("\n{cleaned}")) || inner.matches(boundary).count() != 1 {
                finding(format!(
                    "envelope content is not the cleaned text, or forges the end: {block:?}"
                ));
            }
        }
        _ => {
            if block != cleaned {
                finding("sensitive text block not cleaned");
            }
        }
    }
    if findings.removed != 3 * removed {
        finding(format!(
            "removed {} reported, {} expected",
            findings.removed,
            3 * removed
        ));
    }
    if findings.patterns.contains(&"hidden_content") != (removed > 0) {
        finding("hidden_content label wrong");
    }
    if findings.labels.iter().any(|l| l == SUSPICIOUS) == findings.patterns.is_empty() {
        finding("suspicious label wrong");
    }
});
