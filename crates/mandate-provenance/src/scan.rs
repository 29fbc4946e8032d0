//! Extraction: one left-to-right pass over text that finds candidate values
//! and hands each to a sink in its normal form.
//!
//! The text is cut into *chunks* at white space and at characters no value
//! contains (quotes, brackets, `|`, `<`, `>`, backslash, controls). A chunk
//! is a URL if it has `scheme://`, starts with `www.`, or is a domain name
//! followed by a path, port or query; otherwise it is cut again into
//! *pieces* at `,` (unless between digits), `;`, `:`, `=`, `&`, `?`, `!`,
//! and each piece is tried, in order, as an e-mail address, a domain with a
//! path, a number, a dotted name (file or domain), an IBAN and an
//! identifier. Chunks without a digit, `.`, `@` or `/` (most words) can hold
//! no value and are passed over. Two spaced forms are joined across chunks:
//! an IBAN printed in groups of four, and a number printed in groups of
//! three or four digits.
//!
//! Hand-written rather than regular expressions: the families need context
//! (IBAN groups, currency words before or after a number, a URL's parts each
//! normalised differently) that would take several passes and captures with
//! the `regex` crate. This scanner reads each character a bounded number of
//! times: a group look-ahead reads at most the next eight chunks (an IBAN
//! is at most 34 characters, a joined number 24 digits), a number looks at
//! one chunk on either side. Its work is linear in the input, with no
//! backtracking, and it allocates only the normal forms.

use crate::family::{self, Family};
use serde_json::{Number, Value};
use std::borrow::Cow;

/// Nesting depth of JSON walked; deeper parts are not scanned (and the scan
/// counts as truncated).
pub const MAX_DEPTH: usize = 64;
/// Longest normal form remembered or looked up (bytes); longer candidates
/// are not values (their domain, say, still is).
pub const MAX_VALUE_BYTES: usize = 512;
/// Whole string values shorter than this are too common to remember.
const TEXT_MIN_CHARS: usize = 8;
/// Whole string values longer than this are messages, not values.
const TEXT_MAX_CHARS: usize = 200;
/// A JSON text block this long is parsed (to compare it with the structured
/// content) even when the scan budget is spent.
const MAX_DUPLICATE_CHECK: usize = 4 << 20;
/// Longest digit run joined from spaced groups (`1234 5678 …`).
const GROUPED_DIGITS_MAX: usize = 24;

/// Invisible characters (the one list in `mandate_core::text`, which the
/// gateway's sanitiser also removes) are skipped, so that `evil\u{200B}.com`
/// is `evil.com`, in results and arguments alike.
pub(crate) use mandate_core::text::is_invisible;

/// `s` without invisible characters and terminal escape sequences (CSI
/// `ESC [ … final`, OSC `ESC ] … BEL` or `ESC \\`, and `ESC x`), which would
/// otherwise glue their parameters to the next value.
fn strip_invisible(s: &str) -> Cow<'_, str> {
    let clean = if s.is_ascii() {
        !s.contains('\u{1B}')
    } else {
        !s.chars().any(|c| is_invisible(c) || c == '\u{1B}')
    };
    if clean {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1B}' {
            match chars.next() {
                Some('[') => {
                    for n in chars.by_ref() {
                        if ('\u{40}'..='\u{7E}').contains(&n) {
                            break;
                        }
                    }
                }
                Some(']') => {
                    while let Some(n) = chars.next() {
                        if n == '\u{7}' || (n == '\u{1B}' && chars.next_if_eq(&'\\').is_some()) {
                            break;
                        }
                    }
                }
                _ => {}
            }
            // The escape separates what stood on either side of it.
            out.push(' ');
        } else if !is_invisible(c) {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// ASCII characters that end a chunk: white space and controls (NUL to
/// space, DEL), quotes, brackets, `|`, `` ` ``, `\\`, `^`.
#[expect(
    clippy::indexing_slicing,
    reason = "evaluated at compile time: an index out of range fails the build, it cannot panic"
)]
const ASCII_DELIMITERS: [bool; 128] = {
    let mut table = [false; 128];
    let mut i = 0;
    while i <= 32 {
        table[i] = true;
        i += 1;
    }
    table[127] = true;
    let others = b"\"<>()[]{}|`\\^";
    let mut j = 0;
    while j < others.len() {
        table[others[j] as usize] = true;
        j += 1;
    }
    table
};

/// Characters that end a chunk.
fn is_delimiter(c: char) -> bool {
    if c.is_ascii() {
        return ASCII_DELIMITERS.get(c as usize).copied().unwrap_or(true);
    }
    c.is_whitespace() || c.is_control()
}

/// Space inside one line: what separates the groups of a printed IBAN.
fn is_inline_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\u{A0}' | '\u{2009}' | '\u{202F}')
}

/// Punctuation trimmed from both ends of a chunk or piece.
fn is_edge_punctuation(c: char) -> bool {
    matches!(
        c,
        '.' | ','
            | ';'
            | ':'
            | '!'
            | '?'
            | '\''
            | '*'
            | '_'
            | '~'
            | '='
            | '&'
            | '#'
            | '+'
            | '-'
            | '/'
            | '@'
            | '\u{201C}'
            | '\u{201D}'
            | '\u{2018}'
            | '\u{2019}'
            | '\u{AB}'
            | '\u{BB}'
            | '\u{A1}'
            | '\u{BF}'
            | '\u{2212}'
    )
}

fn trim_edges(s: &str) -> &str {
    s.trim_matches(is_edge_punctuation)
}

fn sub(s: &str, start: usize, end: usize) -> &str {
    s.get(start..end).unwrap_or_default()
}

/// Whether the character at byte `i` of `t` is a delimiter, and its length.
/// ASCII is decided from the byte alone.
fn delimiter_at(t: &str, i: usize) -> Option<(bool, usize)> {
    let b = *t.as_bytes().get(i)?;
    if b.is_ascii() {
        return Some((is_delimiter(char::from(b)), 1));
    }
    let c = t.get(i..)?.chars().next()?;
    Some((is_delimiter(c), c.len_utf8()))
}

/// The next chunk at or after byte `pos`, as byte offsets.
fn next_chunk(t: &str, mut pos: usize) -> Option<(usize, usize)> {
    loop {
        let (delimiter, len) = delimiter_at(t, pos)?;
        if !delimiter {
            return Some((pos, chunk_end(t, pos)));
        }
        pos = pos.saturating_add(len);
    }
}

fn chunk_end(t: &str, mut pos: usize) -> usize {
    while let Some((delimiter, len)) = delimiter_at(t, pos) {
        if delimiter {
            break;
        }
        pos = pos.saturating_add(len);
    }
    pos.min(t.len())
}

/// The chunk that follows byte `pos` on the same line, separated only by
/// inline space.
fn next_inline_chunk(t: &str, pos: usize) -> Option<(usize, usize)> {
    let rest = t.get(pos..)?;
    let mut spaced = false;
    for (i, c) in rest.char_indices() {
        if is_inline_space(c) {
            spaced = true;
            continue;
        }
        if !spaced || is_delimiter(c) {
            return None;
        }
        let start = pos.checked_add(i)?;
        return Some((start, chunk_end(t, start)));
    }
    None
}

/// What a number's surroundings say about it.
#[derive(Clone, Copy, Default)]
struct Context {
    /// A currency code or symbol stands right before or after it.
    currency: bool,
}

/// A parsed number, its normal form written to the scanner's buffer.
struct NumberShape {
    /// Written with a currency symbol or glued code (`$120`, `EUR100`).
    marked: bool,
    /// Written with a decimal or thousands separator.
    formatted: bool,
    /// An integer below 100 once normalised.
    small_integer: bool,
    /// Digits only, no sign, separator or currency.
    plain_digits: bool,
}

/// Finds values and passes their normal forms to `emit`.
pub(crate) struct Scanner<F> {
    emit: F,
    norm: String,
    budget: usize,
    truncated: bool,
    emitted: usize,
}

impl<F: FnMut(Family, &str)> Scanner<F> {
    /// A scanner that reads at most `budget` bytes of text in all.
    pub(crate) fn new(budget: usize, emit: F) -> Self {
        Scanner {
            emit,
            norm: String::with_capacity(64),
            budget,
            truncated: false,
            emitted: 0,
        }
    }

    /// Bytes of text the budget still allows.
    pub(crate) fn remaining(&self) -> usize {
        self.budget
    }

    /// Whether some input was left unread (size or depth cap).
    pub(crate) fn truncated(&self) -> bool {
        self.truncated
    }

    fn put(&mut self, family: Family) {
        if !self.norm.is_empty() && self.norm.len() <= MAX_VALUE_BYTES {
            (self.emit)(family, &self.norm);
            self.emitted = self.emitted.saturating_add(1);
        }
    }

    /// An MCP `CallToolResult` as JSON: its `content` blocks (text, text
    /// resources, resource links; images, audio and blobs are skipped) and
    /// its `structuredContent`. Any other value is walked whole.
    pub(crate) fn result(&mut self, result: &Value) {
        match result {
            Value::Object(map)
                if map.contains_key("content") || map.contains_key("structuredContent") =>
            {
                let structured = map.get("structuredContent");
                if let Some(structured) = structured {
                    self.json(structured, 1);
                }
                if let Some(Value::Array(blocks)) = map.get("content") {
                    for block in blocks {
                        self.content_block(block, structured);
                    }
                }
            }
            other => self.json(other, 0),
        }
    }

    /// One content block. A text block that is the structured content
    /// serialised (as servers are asked to send it for older clients) is
    /// not read twice.
    fn content_block(&mut self, block: &Value, structured: Option<&Value>) {
        let Value::Object(block) = block else {
            return;
        };
        let kind = block.get("type").and_then(Value::as_str).unwrap_or("text");
        match kind {
            "text" => {
                if let Some(Value::String(text)) = block.get("text") {
                    self.text_block(text, structured);
                }
            }
            "resource" => {
                if let Some(Value::Object(resource)) = block.get("resource") {
                    if let Some(Value::String(uri)) = resource.get("uri") {
                        self.leaf(uri);
                    }
                    if let Some(Value::String(text)) = resource.get("text") {
                        self.text_block(text, structured);
                    }
                }
            }
            "resource_link" => {
                for key in ["uri", "name", "title", "description"] {
                    if let Some(Value::String(s)) = block.get(key) {
                        self.leaf(s);
                    }
                }
            }
            // image, audio (base64 data) and anything unknown.
            _ => {}
        }
    }

    /// A text block: JSON is walked as JSON (many servers return their
    /// structured result as text), anything else is a string value.
    fn text_block(&mut self, text: &str, structured: Option<&Value>) {
        let trimmed = text.trim_start();
        if (trimmed.starts_with('{') || trimmed.starts_with('['))
            && text.len() <= self.budget.max(MAX_DUPLICATE_CHECK)
            && let Ok(parsed) = serde_json::from_str::<Value>(text)
        {
            if structured != Some(&parsed) {
                self.json(&parsed, 1);
            }
            return;
        }
        self.leaf(text);
    }

    /// Every string and number in `value`; object keys are scanned as text.
    pub(crate) fn json(&mut self, value: &Value, depth: usize) {
        if depth > MAX_DEPTH {
            self.truncated = true;
            return;
        }
        let deeper = depth.saturating_add(1);
        match value {
            Value::String(s) => self.leaf(s),
            Value::Number(n) => self.number(n),
            Value::Array(items) => {
                for item in items {
                    self.json(item, deeper);
                }
            }
            Value::Object(map) => {
                for (key, item) in map {
                    self.text(key);
                    self.json(item, deeper);
                }
            }
            Value::Bool(_) | Value::Null => {}
        }
    }

    /// A whole string value: the values in its text, then the string itself
    /// as a number (`"1200"` is the JSON number 1200) and as a `Text` value.
    pub(crate) fn leaf(&mut self, s: &str) {
        let before = self.emitted;
        if !self.text(s) {
            return;
        }
        let produced = self.emitted != before;
        let t = s.trim();
        if !t.is_empty() && t.len() <= 20 && t.bytes().all(|b| b.is_ascii_digit()) {
            self.integer(t, false);
        }
        self.whole_text(t, produced);
    }

    /// A JSON number: an amount unless it is an integer below 100; an
    /// integer of six digits or more is an identifier too.
    pub(crate) fn number(&mut self, n: &Number) {
        if let Some(u) = n.as_u64() {
            self.integer(&u.to_string(), true);
        } else if let Some(i) = n.as_i64() {
            self.integer(&i.unsigned_abs().to_string(), true);
        } else if let Some(f) = n.as_f64().filter(|f| f.is_finite()) {
            let written = format!("{}", f.abs());
            if let Some(shape) = self.parse_number(&written, false) {
                if !shape.small_integer {
                    self.put(Family::Amount);
                }
                if !written.contains('.') && written.len() >= 6 {
                    self.norm.clear();
                    self.norm.push_str(&written);
                    self.put(Family::Id);
                }
            }
        }
    }

    /// Digits of an integer: an amount from 100 up; with `id`, an
    /// identifier from six digits up (for strings the text scan did that).
    fn integer(&mut self, digits: &str, id: bool) {
        let significant = digits.trim_start_matches('0');
        if (3..=15).contains(&significant.len()) {
            self.norm.clear();
            self.norm.push_str(significant);
            self.put(Family::Amount);
        }
        if id && digits.len() >= 6 {
            self.norm.clear();
            self.norm.push_str(digits);
            self.put(Family::Id);
        }
    }

    fn whole_text(&mut self, t: &str, produced: bool) {
        // More than 4 bytes per allowed character cannot fit.
        if t.len() > TEXT_MAX_CHARS.saturating_mul(4) {
            return;
        }
        if produced && !t.chars().any(char::is_whitespace) {
            // A lone token that is already a value (an address, an IBAN).
            return;
        }
        self.norm.clear();
        let mut chars = 0usize;
        let mut space = false;
        for c in t.chars() {
            if is_invisible(c) {
                continue;
            }
            if c.is_whitespace() {
                space = !self.norm.is_empty();
                continue;
            }
            if space {
                self.norm.push(' ');
                chars = chars.saturating_add(1);
                space = false;
            }
            self.norm.extend(c.to_lowercase());
            chars = chars.saturating_add(1);
            if chars > TEXT_MAX_CHARS {
                return;
            }
        }
        if chars >= TEXT_MIN_CHARS {
            self.put(Family::Text);
        }
    }

    /// Scans `s` within the budget. Returns whether all of it was read.
    pub(crate) fn text(&mut self, s: &str) -> bool {
        if s.is_empty() {
            return true;
        }
        if s.len() <= self.budget {
            self.budget = self.budget.saturating_sub(s.len());
            self.scan(s);
            return true;
        }
        self.truncated = true;
        // Read what the budget allows, up to the last white space so that
        // no value is cut in two.
        let mut cut = self.budget;
        while cut > 0 && !s.is_char_boundary(cut) {
            cut = cut.saturating_sub(1);
        }
        let head = s.get(..cut).unwrap_or_default();
        let head = head
            .rfind(char::is_whitespace)
            .and_then(|i| head.get(..i))
            .unwrap_or_default();
        self.budget = 0;
        if !head.is_empty() {
            self.scan(head);
        }
        false
    }

    fn scan(&mut self, text: &str) {
        let cleaned = strip_invisible(text);
        let t = cleaned.as_ref();
        let mut pos = 0;
        // Whether the previous chunk, on this line, was a currency mark.
        let mut previous_currency: Option<usize> = None;
        while let Some((start, end)) = next_chunk(t, pos) {
            pos = end;
            let raw = sub(t, start, end);
            // Most chunks are words. A value needs a digit (IBAN, identifier,
            // amount), a dot (domain, file, URL), `@` (address) or `/` (URL):
            // without any, only note whether the word is a currency.
            if !raw
                .bytes()
                .any(|b| b.is_ascii_digit() || matches!(b, b'.' | b'@' | b'/'))
            {
                previous_currency =
                    (raw.len() <= 8 && family::currency_mark(trim_edges(raw))).then_some(end);
                continue;
            }
            if let Some(group_end) = self.group(t, raw, end) {
                pos = group_end;
                previous_currency = None;
                continue;
            }
            // Only a number needs to know whether a currency stands next to it.
            let number = trim_edges(raw).starts_with(|c: char| c.is_ascii_digit());
            let context = Context {
                currency: number
                    && (previous_currency
                        .is_some_and(|prev| sub(t, prev, start).chars().all(is_inline_space))
                        || next_inline_chunk(t, end)
                            .is_some_and(|(s, e)| family::currency_mark(trim_edges(sub(t, s, e))))),
            };
            self.chunk(raw, context);
            previous_currency =
                (raw.len() <= 8 && family::currency_mark(trim_edges(raw))).then_some(end);
        }
    }

    /// A spaced IBAN (`DE89 3704 0044 0532 0130 00`) or digit run
    /// (`4111 1111 1111 1111`) starting at chunk `raw`: emits it joined and
    /// returns where it ends.
    fn group(&mut self, t: &str, raw: &str, end: usize) -> Option<usize> {
        // A head with trailing punctuation (`DE89,`) ends where it stands.
        if raw.trim_end_matches(is_edge_punctuation).len() != raw.len() {
            return None;
        }
        let head = raw.trim_start_matches(is_edge_punctuation);
        let b = head.as_bytes();
        let iban_head = b.len() == 4
            && b.iter().take(2).all(u8::is_ascii_alphabetic)
            && b.iter().skip(2).all(u8::is_ascii_digit);
        if iban_head {
            return self.iban_group(t, head, end);
        }
        if (3..=4).contains(&b.len()) && b.iter().all(u8::is_ascii_digit) {
            return self.digit_group(t, head, end);
        }
        None
    }

    fn iban_group(&mut self, t: &str, head: &str, mut pos: usize) -> Option<usize> {
        self.norm.clear();
        self.norm.push_str(&head.to_ascii_uppercase());
        let expected = family::iban_length(self.norm.get(..2).unwrap_or_default());
        let max = expected.unwrap_or(family::IBAN_MAX);
        let mut end = None;
        while let Some((s, e)) = next_inline_chunk(t, pos) {
            let raw = sub(t, s, e);
            let core = raw.trim_end_matches(is_edge_punctuation);
            let last = core.len() != raw.len();
            if core.is_empty()
                || core.len() > 4
                || !core.bytes().all(|b| b.is_ascii_alphanumeric())
                || self.norm.len().saturating_add(core.len()) > max
            {
                break;
            }
            self.norm.push_str(&core.to_ascii_uppercase());
            pos = e;
            end = Some(e);
            if last || core.len() < 4 || self.norm.len() == max {
                break;
            }
        }
        let valid = match expected {
            Some(len) => self.norm.len() == len,
            None => (family::IBAN_MIN..=family::IBAN_MAX).contains(&self.norm.len()),
        };
        let end = end.filter(|_| valid)?;
        self.put(Family::Iban);
        Some(end)
    }

    fn digit_group(&mut self, t: &str, head: &str, mut pos: usize) -> Option<usize> {
        self.norm.clear();
        self.norm.push_str(head);
        let mut end = None;
        while let Some((s, e)) = next_inline_chunk(t, pos) {
            let raw = sub(t, s, e);
            let core = raw.trim_end_matches(is_edge_punctuation);
            let last = core.len() != raw.len();
            if !(3..=4).contains(&core.len())
                || !core.bytes().all(|b| b.is_ascii_digit())
                || self.norm.len().saturating_add(core.len()) > GROUPED_DIGITS_MAX
            {
                break;
            }
            self.norm.push_str(core);
            pos = e;
            end = Some(e);
            if last {
                break;
            }
        }
        let end = end.filter(|_| self.norm.len() >= 8)?;
        self.put(Family::Id);
        Some(end)
    }

    fn chunk(&mut self, raw: &str, context: Context) {
        let c = trim_edges(raw);
        if c.is_empty() {
            return;
        }
        if let Some(at) = find_scheme_separator(c) {
            let before = c.get(..at).unwrap_or_default();
            let scheme_start = before
                .char_indices()
                .rev()
                .take_while(|(_, ch)| ch.is_ascii_alphanumeric() || matches!(ch, '+' | '-' | '.'))
                .last()
                .map_or(at, |(i, _)| i);
            let scheme = sub(c, scheme_start, at);
            let scheme = scheme.trim_start_matches(|ch: char| !ch.is_ascii_alphabetic());
            if !scheme.is_empty() {
                let prefix = c.get(..at.saturating_sub(scheme.len())).unwrap_or_default();
                self.plain(prefix, Context::default());
                let rest = c.get(at.saturating_add(3)..).unwrap_or_default();
                self.url(Some(scheme), rest);
                return;
            }
        }
        if c.get(..4).is_some_and(|p| p.eq_ignore_ascii_case("www.")) || schemeless_url(c) {
            self.url(None, c);
            return;
        }
        self.plain(c, context);
    }

    /// Cuts `c` into pieces at separators that no value contains.
    fn plain(&mut self, c: &str, context: Context) {
        let bytes = c.as_bytes();
        let mut start = 0;
        for (i, b) in bytes.iter().enumerate() {
            let cut = match b {
                b';' | b':' | b'=' | b'&' | b'?' | b'!' => true,
                b',' => !between_digits(bytes, i),
                _ => false,
            };
            if cut {
                self.piece(sub(c, start, i), context);
                start = i.saturating_add(1);
            }
        }
        self.piece(c.get(start..).unwrap_or_default(), context);
    }

    fn piece(&mut self, p: &str, context: Context) {
        let p = trim_edges(p);
        // Most pieces are words: no digit, dot, `@` or `/` means no value.
        if !p
            .bytes()
            .any(|b| b.is_ascii_digit() || matches!(b, b'.' | b'@' | b'/'))
        {
            return;
        }
        if p.contains('@') {
            self.email(p);
            return;
        }
        if p.contains('/') {
            let first = p.split('/').next().unwrap_or_default();
            if first.contains('.') && bare_domain(&first.to_lowercase()) {
                self.url(None, p);
            } else {
                for segment in p.split('/') {
                    self.simple(segment, context);
                }
            }
            return;
        }
        self.simple(p, context);
    }

    /// A piece with no `/` or `@`: number, dotted name, IBAN or identifier.
    fn simple(&mut self, p: &str, context: Context) {
        let p = trim_edges(p);
        if p.is_empty() {
            return;
        }
        let percent = p.ends_with('%');
        if !percent && let Some(shape) = self.parse_number(p, context.currency) {
            if (shape.marked || context.currency || shape.formatted) && !shape.small_integer {
                self.put(Family::Amount);
            }
            if shape.plain_digits && p.len() >= 6 {
                self.norm.clear();
                self.norm.push_str(p);
                self.put(Family::Id);
            }
            return;
        }
        if p.contains(',') {
            // Not a number: `1200.50,99.99` is two.
            for part in p.split(',') {
                self.simple(part, context);
            }
            return;
        }
        let p = p.trim_end_matches('%');
        if p.contains('.') {
            self.dotted(p);
            return;
        }
        if self.iban(p) {
            return;
        }
        self.identifier(p);
    }

    /// A dotted token: a file name, a domain, both (`notes.md`), or an IPv4
    /// address (a domain).
    fn dotted(&mut self, p: &str) {
        self.norm.clear();
        self.norm.extend(p.chars().flat_map(char::to_lowercase));
        let Some((name, ext)) = self.norm.rsplit_once('.') else {
            return;
        };
        if name.is_empty() || ext.is_empty() {
            return;
        }
        let file = family::file_extension(ext);
        let domain = (bare_domain(&self.norm) && (!file || family::extension_is_tld(ext)))
            || ipv4(&self.norm);
        if file {
            // The name without any folder part is all that is left here.
            self.put(Family::File);
        }
        if domain {
            strip_www(&mut self.norm);
            self.put(Family::Domain);
        }
    }

    /// A contiguous IBAN: two letters, two digits, then letters and digits,
    /// the length of the country's IBANs (15 to 34 characters for a country
    /// not in the table, which must then be upper case).
    fn iban(&mut self, p: &str) -> bool {
        let b = p.as_bytes();
        let shaped = (family::IBAN_MIN..=family::IBAN_MAX).contains(&b.len())
            && b.iter().take(2).all(u8::is_ascii_alphabetic)
            && b.iter().skip(2).take(2).all(u8::is_ascii_digit)
            && b.iter().all(u8::is_ascii_alphanumeric);
        if !shaped {
            return false;
        }
        let upper = p.to_ascii_uppercase();
        let fits = match family::iban_length(upper.get(..2).unwrap_or_default()) {
            Some(len) => b.len() == len,
            None => !b.iter().any(u8::is_ascii_lowercase),
        };
        if fits {
            self.norm.clear();
            self.norm.push_str(&upper);
            self.put(Family::Iban);
        }
        fits
    }

    /// An account number or identifier: letters, digits, `-` and `_`, with
    /// a run of six digits or more (`INV-2024-000123`), or nine digits or
    /// more and no letters (`4111-1111-1111-1111`, kept as digits only, so
    /// that it matches its spaced and contiguous forms), or at least two
    /// letters and two digits, eight or more in all (`a1b2c3d4`). Kept as
    /// written otherwise: identifiers can be case-sensitive. Dates
    /// (`2024-05-12`) and slugs with one digit (`4-day-week`) are none of
    /// these.
    fn identifier(&mut self, p: &str) {
        let mut digits = 0usize;
        let mut letters = 0usize;
        let mut run = 0usize;
        let mut longest = 0usize;
        for b in p.bytes() {
            match b {
                b'0'..=b'9' => {
                    digits = digits.saturating_add(1);
                    run = run.saturating_add(1);
                    longest = longest.max(run);
                }
                b'a'..=b'z' | b'A'..=b'Z' => {
                    letters = letters.saturating_add(1);
                    run = 0;
                }
                b'-' | b'_' => run = 0,
                _ => return,
            }
        }
        self.norm.clear();
        if letters == 0 && (digits >= 9 || longest >= 6) {
            self.norm.extend(p.chars().filter(char::is_ascii_digit));
        } else if longest >= 6
            || (letters >= 2 && digits >= 2 && letters.saturating_add(digits) >= 8)
        {
            self.norm.push_str(p);
        } else {
            return;
        }
        self.put(Family::Id);
    }

    /// `local@domain`: the address lower-cased, and its domain.
    fn email(&mut self, p: &str) {
        let Some((local, domain)) = p.split_once('@') else {
            return;
        };
        let local_ok = !local.is_empty()
            && local.len() <= 64
            && !local.starts_with('.')
            && !local.ends_with('.')
            && local.bytes().all(|b| {
                b.is_ascii_alphanumeric()
                    || matches!(
                        b,
                        b'.' | b'!'
                            | b'#'
                            | b'$'
                            | b'%'
                            | b'*'
                            | b'+'
                            | b'/'
                            | b'\''
                            | b'_'
                            | b'{'
                            | b'}'
                            | b'~'
                            | b'-'
                    )
            });
        let domain = domain.to_lowercase();
        if !local_ok || !bare_domain(&domain) {
            return;
        }
        self.norm.clear();
        self.norm.push_str(&local.to_ascii_lowercase());
        self.norm.push('@');
        self.norm.push_str(&domain);
        self.put(Family::Email);
        self.norm.clear();
        self.norm.push_str(&domain);
        strip_www(&mut self.norm);
        self.put(Family::Domain);
    }

    /// A URL (`rest` follows `scheme://`, or is the whole URL without
    /// scheme): the URL, its host as a domain, and the values in its path,
    /// query and fragment.
    fn url(&mut self, scheme: Option<&str>, rest: &str) {
        let scheme = scheme.map(str::to_ascii_lowercase);
        let web = matches!(scheme.as_deref(), None | Some("http" | "https"));
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at_checked(authority_end).unwrap_or((rest, ""));
        // `https://bank.example@evil.com/` is evil.com.
        let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        let (host, port) = split_port(host_port);
        let mut host = host.to_lowercase();
        while host.ends_with('.') {
            host.pop();
        }
        strip_www(&mut host);
        if !valid_host(&host) {
            self.segments(rest);
            return;
        }
        let port = port
            .map(|p| p.trim_start_matches('0'))
            .filter(|p| !p.is_empty() && !default_port(scheme.as_deref(), p));
        let (before_fragment, fragment) = tail.split_once('#').unwrap_or((tail, ""));
        let (path, query) = before_fragment
            .split_once('?')
            .unwrap_or((before_fragment, ""));
        let path = path.trim_end_matches('/');

        // A web URL that is only its host is its domain: no URL value of
        // its own (so `https://evil.com` and `evil.com` are one value).
        let root =
            web && port.is_none() && path.is_empty() && query.is_empty() && fragment.is_empty();
        if !root {
            self.norm.clear();
            if let (Some(scheme), false) = (scheme.as_deref(), web) {
                self.norm.push_str(scheme);
                self.norm.push_str("://");
            }
            self.norm.push_str(&host);
            if let Some(port) = port {
                self.norm.push(':');
                self.norm.push_str(port);
            }
            if path.is_empty() && !(query.is_empty() && fragment.is_empty()) {
                self.norm.push('/');
            }
            push_percent_normalised(&mut self.norm, path);
            if !query.is_empty() {
                self.norm.push('?');
                push_percent_normalised(&mut self.norm, query);
            }
            if !fragment.is_empty() {
                self.norm.push('#');
                push_percent_normalised(&mut self.norm, fragment);
            }
            self.put(Family::Url);
        }
        if bare_domain(&host) || ipv4(&host) {
            self.norm.clear();
            self.norm.push_str(&host);
            self.put(Family::Domain);
        }
        self.segments(tail);
    }

    /// Values inside a URL's path, query and fragment.
    fn segments(&mut self, s: &str) {
        for segment in s.split(['/', '?', '&', '=', '#', ';', ',']) {
            self.piece(segment, Context::default());
        }
    }

    /// Parses a number (`1,250.00`, `12,50`, `$1'000`, `EUR100`, `-98.70`),
    /// writing its normal form: no sign, grouping or leading zeros, the
    /// fraction without trailing zeros, `.` as the decimal point.
    /// With a currency next to it (`currency`, or a symbol or code glued
    /// to it), a single `.` before exactly three digits groups thousands
    /// (`1.000 EUR` is a thousand; `1.000` alone is one).
    fn parse_number(&mut self, p: &str, currency: bool) -> Option<NumberShape> {
        let signs = |c: char| matches!(c, '+' | '-' | '\u{2212}');
        let mut s = p.trim_start_matches(signs);
        let mut marked = false;
        if let Some(rest) = strip_currency(s) {
            s = rest.trim_start_matches(signs);
            marked = true;
        }
        let first_digit = s.starts_with(|c: char| c.is_ascii_digit());
        let last_digit = s.ends_with(|c: char| c.is_ascii_digit());
        if !first_digit
            || !last_digit
            || !s
                .bytes()
                .all(|b| b.is_ascii_digit() || matches!(b, b',' | b'.' | b'\''))
        {
            return None;
        }
        let formatted = s.bytes().any(|b| matches!(b, b',' | b'.' | b'\''));
        let (int, fraction) = split_decimal(s, marked || currency)?;
        let int = int.trim_start_matches('0');
        let fraction = fraction.trim_end_matches('0');
        if int.len() > 15 || fraction.len() > 8 {
            return None;
        }
        self.norm.clear();
        self.norm.push_str(if int.is_empty() { "0" } else { int });
        if !fraction.is_empty() {
            self.norm.push('.');
            self.norm.push_str(fraction);
        }
        Some(NumberShape {
            marked,
            formatted,
            small_integer: fraction.is_empty() && int.len() <= 2,
            plain_digits: !formatted && !marked && s.len() == p.len(),
        })
    }
}

/// Whether the byte at `i` stands between two digits (`1,250`, `12,50`):
/// such a comma is cut only if the piece is not a number after all.
fn between_digits(bytes: &[u8], i: usize) -> bool {
    let digit_at = |j: Option<usize>| j.and_then(|j| bytes.get(j)).is_some_and(u8::is_ascii_digit);
    digit_at(i.checked_sub(1)) && digit_at(i.checked_add(1))
}

/// `s` without a currency symbol or glued code at either end.
fn strip_currency(s: &str) -> Option<&str> {
    let digit = |c: Option<char>| c.is_some_and(|c| c.is_ascii_digit());
    if digit(s.chars().next()) && digit(s.chars().next_back()) {
        return None;
    }
    for symbol in family::CURRENCY_SYMBOLS {
        if let Some(rest) = s.strip_prefix(symbol) {
            return Some(rest);
        }
        if let Some(rest) = s.strip_suffix(symbol) {
            return Some(rest);
        }
    }
    family::glued_code_prefix(s).or_else(|| family::glued_code_suffix(s))
}

/// Splits a number of digits and separators into integer digits (grouping
/// removed) and fraction. `None` when the separators make no number.
fn split_decimal(s: &str, dot_groups_thousands: bool) -> Option<(String, &str)> {
    let Some(last) = s.rfind([',', '.', '\'']) else {
        return Some((s.to_owned(), ""));
    };
    let head = s.get(..last)?;
    let tail = s.get(last.checked_add(1)?..)?;
    let separator = s.get(last..last.checked_add(1)?)?;
    let count = s.matches(separator).count();
    match separator {
        "'" => Some((ungroup(s, '\'')?, "")),
        "." if count == 1 && dot_groups_thousands && tail.len() == 3 && !head.contains(',') => {
            Some((ungroup(s, '.')?, ""))
        }
        "." if count == 1 => Some((ungroup_any(head, &[',', '\''])?, tail)),
        "." => Some((ungroup(s, '.')?, "")),
        "," if count == 1 && tail.len() == 3 && !head.contains('.') => Some((ungroup(s, ',')?, "")),
        "," if count == 1 && (1..=2).contains(&tail.len()) => {
            Some((ungroup_any(head, &['.', '\''])?, tail))
        }
        "," if !s.contains('.') => Some((ungroup(s, ',')?, "")),
        _ => None,
    }
}

/// Digits of `s` grouped by `separator` in threes (`1,234,567`).
fn ungroup(s: &str, separator: char) -> Option<String> {
    let mut out = String::with_capacity(s.len());
    for (i, group) in s.split(separator).enumerate() {
        let ok = group.bytes().all(|b| b.is_ascii_digit())
            && if i == 0 {
                (1..=3).contains(&group.len())
            } else {
                group.len() == 3
            };
        if !ok {
            return None;
        }
        out.push_str(group);
    }
    Some(out)
}

/// Like [`ungroup`] with whichever one of `separators` `s` uses, if any.
fn ungroup_any(s: &str, separators: &[char]) -> Option<String> {
    let used: Vec<char> = separators
        .iter()
        .copied()
        .filter(|c| s.contains(*c))
        .collect();
    match used.as_slice() {
        [] => s.bytes().all(|b| b.is_ascii_digit()).then(|| s.to_owned()),
        [one] => ungroup(s, *one),
        _ => None,
    }
}

/// Where `://` is in `c` (a byte search for `:`, then a look at what follows).
fn find_scheme_separator(c: &str) -> Option<usize> {
    let bytes = c.as_bytes();
    bytes
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b':')
        .map(|(i, _)| i)
        .find(|i| bytes.get(i.saturating_add(1)..i.saturating_add(3)) == Some(b"//"))
}

/// A URL written without scheme: a domain name or IPv4 address followed by
/// a path, a query, a fragment or a port (`evil.com/login`,
/// `evil.com:8080`, `evil.com?ref=1`).
fn schemeless_url(c: &str) -> bool {
    if !c.contains('.') {
        return false;
    }
    let Some(at) = c.find(['/', ':', '?', '#']) else {
        return false;
    };
    let host = c.get(..at).unwrap_or_default().to_lowercase();
    let rest = c.get(at..).unwrap_or_default();
    let follows = match rest.strip_prefix(':') {
        Some(port) => port
            .split(['/', '?', '#'])
            .next()
            .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())),
        None => true,
    };
    follows && (bare_domain(&host) || ipv4(&host))
}

/// Splits `host:port` (IPv6 literals in brackets).
fn split_port(host_port: &str) -> (&str, Option<&str>) {
    if host_port.starts_with('[') {
        let Some(close) = host_port.find(']') else {
            return (host_port, None);
        };
        let (host, rest) = host_port
            .split_at_checked(close.saturating_add(1))
            .unwrap_or((host_port, ""));
        return (host, rest.strip_prefix(':'));
    }
    match host_port.rsplit_once(':') {
        Some((host, "")) => (host, None),
        Some((host, port)) if port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit()) => {
            (host, Some(port))
        }
        _ => (host_port, None),
    }
}

fn default_port(scheme: Option<&str>, port: &str) -> bool {
    match scheme {
        None | Some("http" | "https" | "ws" | "wss") => matches!(port, "80" | "443"),
        Some("ftp") => port == "21",
        Some(_) => false,
    }
}

/// A host: labels of letters, digits and `-`, or an IPv6 literal.
fn valid_host(host: &str) -> bool {
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return !inner.is_empty()
            && inner
                .chars()
                .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.');
    }
    !host.is_empty() && host.len() <= 253 && host.split('.').all(valid_label)
}

fn valid_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= 63
        && !label.starts_with('-')
        && !label.ends_with('-')
        && label.chars().all(|c| c.is_alphanumeric() || c == '-')
}

/// A domain name (lower case) of two labels or more whose last label is
/// 2 to 24 ASCII letters.
fn bare_domain(s: &str) -> bool {
    let tld = s.rsplit('.').next().unwrap_or_default();
    s.contains('.') && valid_host(s) && family::tld_shape(tld)
}

fn ipv4(s: &str) -> bool {
    let mut parts = 0;
    for part in s.split('.') {
        parts += 1;
        if part.is_empty() || part.len() > 3 || !part.bytes().all(|b| b.is_ascii_digit()) {
            return false;
        }
        if part.parse::<u16>().map_or(true, |n| n > 255) {
            return false;
        }
    }
    parts == 4
}

/// `www.example.com` is `example.com`: whoever holds a name holds its
/// `www`, so the two cannot belong to different parties.
fn strip_www(host: &mut String) {
    if host.starts_with("www.") && host.matches('.').count() >= 2 {
        host.drain(..4);
    }
}

/// Appends `s` with percent-escapes in upper case (`%2f` is `%2F`).
fn push_percent_normalised(out: &mut String, s: &str) {
    let mut upper = 0u8;
    for c in s.chars() {
        if c == '%' {
            upper = 2;
            out.push(c);
        } else if upper > 0 {
            upper -= 1;
            out.push(c.to_ascii_uppercase());
        } else {
            out.push(c);
        }
    }
}

#[cfg(test)]
#[path = "scan_tests.rs"]
mod tests;
