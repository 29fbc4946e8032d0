//! The families of values the index remembers, and the small tables the
//! scanner classifies tokens with.

use serde::{Deserialize, Serialize};

/// What kind of value a remembered or looked-up value is.
///
/// The family is part of the value's identity: `evil.com` the domain and
/// `evil.com` the file name are different values. Every family has its own
/// normal form (see the crate's README); two spellings of a value match
/// exactly when their normal forms are equal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    /// An e-mail address, lower-cased.
    Email,
    /// An IBAN: country, check digits and account, upper-cased, no spaces.
    Iban,
    /// An account number or identifier: a digit run of 6 or more, or a token
    /// of at least 8 letters and digits with both; case kept.
    Id,
    /// A URL: host lower-cased without `www.`, default port, trailing slash
    /// and empty query dropped; `http`/`https` share one form.
    Url,
    /// A host name: lower-cased, without `www.`; from URLs, e-mail
    /// addresses and bare names with a known top-level domain.
    Domain,
    /// A file name with a known extension, lower-cased, without its folder.
    File,
    /// A currency-marked or decimal number (not an integer below 100 unless
    /// currency-marked), without sign, grouping or trailing zeros.
    Amount,
    /// A whole short string value (8 to 200 characters), lower-cased with
    /// white space collapsed. Reported only when some source has it.
    Text,
}

impl Family {
    /// Every family, in the order reports sort them.
    pub const ALL: [Family; 8] = [
        Family::Email,
        Family::Iban,
        Family::Id,
        Family::Url,
        Family::Domain,
        Family::File,
        Family::Amount,
        Family::Text,
    ];

    /// The stored spelling (snapshots, reports).
    pub fn as_str(self) -> &'static str {
        match self {
            Family::Email => "email",
            Family::Iban => "iban",
            Family::Id => "id",
            Family::Url => "url",
            Family::Domain => "domain",
            Family::File => "file",
            Family::Amount => "amount",
            Family::Text => "text",
        }
    }

    /// The one-character tag that prefixes a value in the index.
    pub(crate) fn tag(self) -> char {
        match self {
            Family::Email => 'e',
            Family::Iban => 'i',
            Family::Id => 'n',
            Family::Url => 'u',
            Family::Domain => 'd',
            Family::File => 'f',
            Family::Amount => 'a',
            Family::Text => 't',
        }
    }

    pub(crate) fn from_tag(tag: char) -> Option<Family> {
        Family::ALL.into_iter().find(|f| f.tag() == tag)
    }

    /// Whether a value of this family that no source accounts for is
    /// reported as unseen. A whole string (`Text`) is almost always new
    /// when the agent writes it (a subject line, a message), so only its
    /// matches are reported.
    pub(crate) fn reported_when_unseen(self) -> bool {
        self != Family::Text
    }
}

/// File extensions that make a dotted token a file name. Sorted. Those that
/// are also top-level domains (every two-letter one, `zip`, `mov`) make the
/// token both a file and a domain.
const FILE_EXTENSIONS: &[&str] = &[
    "7z", "apk", "avi", "bak", "bat", "bin", "bmp", "bz2", "c", "cer", "cpp", "crt", "css", "csv",
    "dat", "db", "dll", "dmg", "doc", "docx", "eml", "epub", "exe", "flac", "gif", "go", "gz", "h",
    "heic", "htm", "html", "ico", "ics", "ini", "ipynb", "iso", "jar", "java", "jpeg", "jpg", "js",
    "json", "key", "log", "m4a", "md", "mkv", "mov", "mp3", "mp4", "msg", "msi", "odp", "ods",
    "odt", "ogg", "pdf", "pem", "pfx", "php", "png", "ppt", "pptx", "ps1", "py", "rar", "rb", "rs",
    "rtf", "sh", "sql", "sqlite", "svg", "tar", "tgz", "tif", "tiff", "toml", "ts", "tsv", "txt",
    "vcf", "wav", "webm", "webp", "xls", "xlsx", "xml", "xz", "yaml", "yml", "zip",
];

/// ISO 4217 codes that mark an adjacent number as an amount (upper case
/// only: `try` and `all` are words). Sorted.
const CURRENCY_CODES: &[&str] = &[
    "AUD", "BRL", "CAD", "CHF", "CNY", "CZK", "DKK", "EUR", "GBP", "HKD", "HUF", "ILS", "INR",
    "JPY", "KRW", "MXN", "NOK", "NZD", "PLN", "RON", "RUB", "SEK", "SGD", "TRY", "USD", "ZAR",
];

/// Currency symbols, longest first so `US$` is stripped before `$`.
pub(crate) const CURRENCY_SYMBOLS: &[&str] = &[
    "US$", "R$", "C$", "A$", "$", "€", "£", "¥", "₹", "₩", "₽", "₺", "₪",
];

/// IBAN length per country (ISO 13616 registry). A grouped IBAN of a listed
/// country is joined to exactly this length, and a contiguous one must have
/// it; for other two-letter prefixes only the shape is checked (15 to 34
/// characters). Sorted by country.
const IBAN_LENGTHS: &[(&str, usize)] = &[
    ("AD", 24),
    ("AE", 23),
    ("AL", 28),
    ("AT", 20),
    ("AZ", 28),
    ("BA", 20),
    ("BE", 16),
    ("BG", 22),
    ("BH", 22),
    ("BR", 29),
    ("CH", 21),
    ("CR", 22),
    ("CY", 28),
    ("CZ", 24),
    ("DE", 22),
    ("DK", 18),
    ("DO", 28),
    ("EE", 20),
    ("EG", 29),
    ("ES", 24),
    ("FI", 18),
    ("FO", 18),
    ("FR", 27),
    ("GB", 22),
    ("GE", 22),
    ("GI", 23),
    ("GL", 18),
    ("GR", 27),
    ("GT", 28),
    ("HR", 21),
    ("HU", 28),
    ("IE", 22),
    ("IL", 23),
    ("IQ", 23),
    ("IS", 26),
    ("IT", 27),
    ("JO", 30),
    ("KW", 30),
    ("KZ", 20),
    ("LB", 28),
    ("LC", 32),
    ("LI", 21),
    ("LT", 20),
    ("LU", 20),
    ("LV", 21),
    ("MC", 27),
    ("MD", 24),
    ("ME", 22),
    ("MK", 19),
    ("MR", 27),
    ("MT", 31),
    ("MU", 30),
    ("NL", 18),
    ("NO", 15),
    ("PK", 24),
    ("PL", 28),
    ("PS", 29),
    ("PT", 25),
    ("QA", 29),
    ("RO", 24),
    ("RS", 22),
    ("SA", 24),
    ("SC", 31),
    ("SE", 24),
    ("SI", 19),
    ("SK", 24),
    ("SM", 27),
    ("ST", 25),
    ("SV", 28),
    ("TL", 23),
    ("TN", 24),
    ("TR", 26),
    ("UA", 29),
    ("VA", 22),
    ("VG", 24),
    ("XK", 20),
];

/// Shortest and longest IBAN of any country.
pub(crate) const IBAN_MIN: usize = 15;
pub(crate) const IBAN_MAX: usize = 34;

/// Whether `tld` (lower case) may end a bare domain name: 2 to 24 ASCII
/// letters. Not a list of delegated domains: whoever plants a value chooses
/// its top-level domain, so a closed list would be a way around the index.
pub(crate) fn tld_shape(tld: &str) -> bool {
    (2..=24).contains(&tld.len()) && tld.bytes().all(|b| b.is_ascii_lowercase())
}

/// Whether a token ending in file extension `ext` is a domain name too.
pub(crate) fn extension_is_tld(ext: &str) -> bool {
    ext.len() == 2 || matches!(ext, "zip" | "mov")
}

/// Whether `ext` (lower case) is a file extension.
pub(crate) fn file_extension(ext: &str) -> bool {
    FILE_EXTENSIONS.binary_search(&ext).is_ok()
}

/// Whether `s` is an ISO currency code or a currency symbol on its own.
pub(crate) fn currency_mark(s: &str) -> bool {
    match s.len() {
        1 => s == "$",
        2..=3 if s.bytes().all(|b| b.is_ascii_uppercase()) => {
            CURRENCY_CODES.binary_search(&s).is_ok()
        }
        2..=3 => CURRENCY_SYMBOLS.contains(&s),
        _ => false,
    }
}

/// The currency code `s` starts with, if a digit follows it (`EUR100`).
pub(crate) fn glued_code_prefix(s: &str) -> Option<&str> {
    let (code, rest) = s.split_at_checked(3)?;
    if !code.bytes().all(|b| b.is_ascii_uppercase()) {
        return None;
    }
    (CURRENCY_CODES.binary_search(&code).is_ok() && rest.starts_with(|c: char| c.is_ascii_digit()))
        .then_some(rest)
}

/// `s` without a currency code it ends with, if a digit precedes it (`100EUR`).
pub(crate) fn glued_code_suffix(s: &str) -> Option<&str> {
    let (rest, code) = s.split_at_checked(s.len().checked_sub(3)?)?;
    if !code.bytes().all(|b| b.is_ascii_uppercase()) {
        return None;
    }
    (CURRENCY_CODES.binary_search(&code).is_ok() && rest.ends_with(|c: char| c.is_ascii_digit()))
        .then_some(rest)
}

/// The IBAN length of `country` (two upper-case letters), if listed.
pub(crate) fn iban_length(country: &str) -> Option<usize> {
    IBAN_LENGTHS
        .binary_search_by(|(c, _)| (*c).cmp(country))
        .ok()
        .and_then(|i| IBAN_LENGTHS.get(i))
        .map(|(_, len)| *len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_sorted_for_binary_search() {
        assert!(FILE_EXTENSIONS.is_sorted());
        assert!(CURRENCY_CODES.is_sorted());
        assert!(IBAN_LENGTHS.is_sorted_by(|a, b| a.0 < b.0));
        assert!(
            IBAN_LENGTHS
                .iter()
                .all(|(_, l)| (IBAN_MIN..=IBAN_MAX).contains(l))
        );
    }

    /// Stored spellings (snapshots, reports in audit records).
    #[test]
    fn family_spellings_and_tags_are_unchanged() {
        let table = [
            (Family::Email, "email", 'e'),
            (Family::Iban, "iban", 'i'),
            (Family::Id, "id", 'n'),
            (Family::Url, "url", 'u'),
            (Family::Domain, "domain", 'd'),
            (Family::File, "file", 'f'),
            (Family::Amount, "amount", 'a'),
            (Family::Text, "text", 't'),
        ];
        assert_eq!(table.len(), Family::ALL.len());
        for (family, spelled, tag) in table {
            assert_eq!(family.as_str(), spelled);
            assert_eq!(family.tag(), tag);
            assert_eq!(Family::from_tag(tag), Some(family));
            assert_eq!(
                serde_json::to_value(family).unwrap(),
                serde_json::json!(spelled)
            );
        }
    }

    #[test]
    fn lookups() {
        assert_eq!(iban_length("DE"), Some(22));
        assert_eq!(iban_length("US"), None);
        assert!(tld_shape("com") && tld_shape("ch") && tld_shape("support"));
        assert!(!tld_shape("g") && !tld_shape("c0m") && !tld_shape("Com"));
        assert!(extension_is_tld("md") && extension_is_tld("zip") && !extension_is_tld("pdf"));
        assert!(file_extension("pdf") && !file_extension("com"));
        assert!(currency_mark("EUR") && currency_mark("€") && !currency_mark("eur"));
        assert_eq!(glued_code_prefix("EUR100"), Some("100"));
        assert_eq!(glued_code_suffix("100USD"), Some("100"));
        assert_eq!(glued_code_prefix("EURO"), None);
    }
}
