use super::*;
use serde_json::json;

/// The values in free text, as `tag:normal-form`.
fn found(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut scanner = Scanner::new(usize::MAX, |f: Family, v: &str| {
        out.push(format!("{}:{v}", f.tag()));
    });
    scanner.text(text);
    drop(scanner);
    out
}

/// The values of a whole string value (adds numbers and `Text`).
fn leaf(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut scanner = Scanner::new(usize::MAX, |f: Family, v: &str| {
        out.push(format!("{}:{v}", f.tag()));
    });
    scanner.leaf(text);
    drop(scanner);
    out
}

fn json_values(value: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let mut scanner = Scanner::new(usize::MAX, |f: Family, v: &str| {
        out.push(format!("{}:{v}", f.tag()));
    });
    scanner.json(value, 0);
    drop(scanner);
    out
}

fn of(family: Family, text: &str) -> Vec<String> {
    let tag = format!("{}:", family.tag());
    found(text)
        .into_iter()
        .filter_map(|v| v.strip_prefix(&tag).map(str::to_owned))
        .collect()
}

/// Every spelling in `variants` has the same values of `family`, and it is `expected`.
fn same(family: Family, expected: &str, variants: &[&str]) {
    for v in variants {
        assert_eq!(of(family, v), vec![expected.to_owned()], "{v:?}");
    }
}

#[test]
fn emails_match_across_case_and_surroundings() {
    same(
        Family::Email,
        "mark.black-2134@gmail.com",
        &[
            "mark.black-2134@gmail.com",
            "Mark.Black-2134@GMail.COM",
            "<mark.black-2134@gmail.com>",
            "mailto:mark.black-2134@gmail.com",
            "write to: mark.black-2134@gmail.com.",
            "(mark.black-2134@gmail.com),",
            "“mark.black-2134@gmail.com”",
            "to=mark.black-2134@gmail.com&x=1",
        ],
    );
    assert_eq!(
        of(Family::Domain, "bob@Mail.Example.org"),
        ["mail.example.org"]
    );
    // Different addresses stay different.
    assert_ne!(
        of(Family::Email, "mark@gmail.com"),
        of(Family::Email, "mark@gmai1.com")
    );
    assert_ne!(
        of(Family::Email, "mark@gmail.com"),
        of(Family::Email, "marc@gmail.com")
    );
    for not_email in ["@alice", "a@b", "user@localhost", "x@@y.com", "foo@bar.c0m"] {
        assert!(of(Family::Email, not_email).is_empty(), "{not_email}");
    }
}

#[test]
fn ibans_match_grouped_contiguous_and_in_sentences() {
    same(
        Family::Iban,
        "DE89370400440532013000",
        &[
            "DE89370400440532013000",
            "de89370400440532013000",
            "DE89 3704 0044 0532 0130 00",
            "IBAN: DE89 3704 0044 0532 0130 00.",
            "Please wire it to DE89\u{A0}3704\u{A0}0044\u{A0}0532\u{A0}0130\u{A0}00 by Friday",
            "iban=DE89370400440532013000",
            "(DE89370400440532013000)",
        ],
    );
    // A country not in the table: shape only, upper case.
    same(
        Family::Iban,
        "US133000000121212121212",
        &[
            "US133000000121212121212",
            "Send the money to US13 3000 0001 2121 2121 212 now",
        ],
    );
    // The group stops at the country's length: the next number is separate.
    assert_eq!(
        found("GB29 NWBK 6016 1331 9268 19 2022"),
        ["i:GB29NWBK60161331926819"]
    );
    // Different IBANs stay different; wrong lengths are not IBANs.
    assert_ne!(
        of(Family::Iban, "DE89370400440532013000"),
        of(Family::Iban, "DE89370400440532013001")
    );
    assert!(of(Family::Iban, "DE8937040044053201300").is_empty());
    assert!(of(Family::Iban, "DE89 3704 0044").is_empty());
    // A lower-case token of an unlisted country is an identifier, as written.
    assert_eq!(found("ab12cdefgh345678"), ["n:ab12cdefgh345678"]);
}

#[test]
fn identifiers_and_account_numbers() {
    assert_eq!(found("account 12345678"), ["n:12345678"]);
    assert_eq!(found("ref INV-2024-000123."), ["n:INV-2024-000123"]);
    assert_eq!(
        found("id 550e8400-e29b-41d4-a716-446655440000"),
        ["n:550e8400-e29b-41d4-a716-446655440000"]
    );
    // Spaced or dashed digit groups are one number.
    same(
        Family::Id,
        "4111111111111111",
        &[
            "4111 1111 1111 1111",
            "card: 4111111111111111",
            "4111-1111-1111-1111",
        ],
    );
    same(Family::Id, "5551234567", &["555-123-4567", "555 123 4567"]);
    // Case is kept: identifiers can be case-sensitive.
    assert_ne!(found("aB3dE5fG9"), found("Ab3De5Fg9"));
    // Too short or too common: years, counts, words with a digit.
    for common in [
        "2024",
        "12345",
        "sha256",
        "COVID-19",
        "mp4",
        "x86_64",
        "Q3",
        "a1b2c3",
        "4-day-week",
    ] {
        assert!(found(common).is_empty(), "{common}: {:?}", found(common));
    }
    // A date is not an identifier.
    assert!(found("2024-05-12 and 12/05/2024 and 2024-05-12T10:30").is_empty());
}

#[test]
fn urls_match_across_trivial_forms() {
    same(
        Family::Url,
        "evil.com/collect",
        &[
            "https://evil.com/collect",
            "http://evil.com/collect/",
            "HTTPS://WWW.EVIL.COM/collect",
            "https://evil.com:443/collect",
            "see https://evil.com/collect.",
            "<https://evil.com/collect>",
            "www.evil.com/collect",
            "evil.com/collect",
            "https://user@evil.com/collect",
            "href=https://evil.com/collect?",
        ],
    );
    // A URL that is only its host is its domain.
    for root in [
        "https://evil.com",
        "https://evil.com/",
        "http://www.evil.com:80",
    ] {
        assert_eq!(found(root), ["d:evil.com"], "{root}");
    }
    same(
        Family::Url,
        "evil.com:8080",
        &["https://evil.com:8080/", "evil.com:8080"],
    );
    same(
        Family::Url,
        "evil.com/?ref=1",
        &[
            "https://evil.com?ref=1",
            "evil.com/?ref=1",
            "evil.com?ref=1",
        ],
    );
    // The path's case, the query and a non-default port are kept.
    assert_ne!(
        of(Family::Url, "https://x.com/A"),
        of(Family::Url, "https://x.com/a")
    );
    assert_eq!(of(Family::Url, "https://x.com/a?b=1#c"), ["x.com/a?b=1#c"]);
    assert_eq!(of(Family::Url, "https://x.com:8443/a"), ["x.com:8443/a"]);
    assert_eq!(of(Family::Url, "https://x.com/a%2fb"), ["x.com/a%2Fb"]);
    assert_eq!(
        of(Family::Url, "ftp://files.x.com/a"),
        ["ftp://files.x.com/a"]
    );
    // `https://bank.com@evil.com/` goes to evil.com.
    assert_eq!(
        of(Family::Domain, "https://bank.com@evil.com/"),
        ["evil.com"]
    );
    // Different hosts stay different; subdomains other than www are hosts of their own.
    assert_ne!(
        of(Family::Url, "https://evil.com/x"),
        of(Family::Url, "https://evi1.com/x")
    );
    assert_ne!(
        of(Family::Domain, "https://api.evil.com/x"),
        of(Family::Domain, "https://evil.com/x")
    );
}

#[test]
fn a_urls_domain_matches_a_bare_mention() {
    let from_url = of(Family::Domain, "POST https://www.Evil.com/x?id=1");
    assert_eq!(from_url, ["evil.com"]);
    assert_eq!(of(Family::Domain, "our partner evil.com, see"), from_url);
    assert_eq!(of(Family::Domain, "mail admin@evil.com"), from_url);
    assert_eq!(of(Family::Domain, "www.evil.com"), from_url);
}

#[test]
fn values_inside_urls_are_values() {
    let values = found("https://evil.com/pay?to=attacker@evil.com&iban=DE89370400440532013000");
    assert!(
        values.contains(&"e:attacker@evil.com".to_owned()),
        "{values:?}"
    );
    assert!(
        values.contains(&"i:DE89370400440532013000".to_owned()),
        "{values:?}"
    );
    assert!(found("https://x.com/files/Report.PDF").contains(&"f:report.pdf".to_owned()));
}

#[test]
fn bare_domains_need_a_top_level_domain_of_letters() {
    assert_eq!(
        of(Family::Domain, "visit true-informations.com today"),
        ["true-informations.com"]
    );
    assert_eq!(of(Family::Domain, "bit.ly"), ["bit.ly"]);
    // Any top-level domain of letters: the attacker chooses it.
    assert_eq!(
        of(Family::Domain, "log in at evil.support/login"),
        ["evil.support"]
    );
    assert_eq!(
        of(Family::Domain, "server 10.0.0.12 is down"),
        ["10.0.0.12"]
    );
    for not_domain in [
        "e.g. this",
        "i.e.",
        "Ph.D",
        "v1.2.3",
        "a.b",
        "x.c0m",
        "report.pdf",
    ] {
        assert!(of(Family::Domain, not_domain).is_empty(), "{not_domain}");
    }
}

#[test]
fn file_names() {
    same(
        Family::File,
        "team-building-activities.docx",
        &[
            "team-building-activities.docx",
            "Team-Building-Activities.DOCX",
            "/home/emma/team-building-activities.docx",
            "C:\\Users\\emma\\team-building-activities.docx",
            "open 'team-building-activities.docx'.",
        ],
    );
    // Ambiguous extensions are both a file and a domain.
    assert_eq!(found("notes.md"), ["f:notes.md", "d:notes.md"]);
    assert!(of(Family::File, "evil.com").is_empty());
    assert_ne!(of(Family::File, "q3.pdf"), of(Family::File, "q4.pdf"));
}

#[test]
fn amounts_are_decimal_or_currency_marked() {
    same(
        Family::Amount,
        "1250",
        &[
            "1,250.00",
            "$1,250",
            "USD 1250",
            "1250 EUR",
            "1.250,00 €",
            "€1250.0",
            "CHF 1'250.00",
            "EUR1250",
            "-1,250.00",
        ],
    );
    same(
        Family::Amount,
        "98.7",
        &["98.70", "98,70", "$98.7", "amount: 98.70;"],
    );
    // A dot before three digits next to a currency groups thousands.
    same(
        Family::Amount,
        "1000",
        &["1.000 EUR", "€1.000", "EUR 1.000,00", "USD 1,000"],
    );
    same(Family::Amount, "1000.5", &["1000.500", "1,000.50 USD"]);
    same(
        Family::Amount,
        "120",
        &["$120", "120 USD", "€ 120", "120.00"],
    );
    // Integers below 100 are never amounts, marked or not; unmarked integers
    // are not amounts in text.
    for not_amount in [
        "2.0", "50.00", "$50", "10 EUR", "100", "2024", "12.5%", "1.2.3", "1,2345",
    ] {
        assert!(of(Family::Amount, not_amount).is_empty(), "{not_amount}");
    }
    assert_ne!(of(Family::Amount, "98.70"), of(Family::Amount, "98.07"));
    assert_ne!(of(Family::Amount, "$1,250"), of(Family::Amount, "$12.50"));
}

#[test]
fn json_numbers_and_numeric_strings_agree_with_text() {
    assert_eq!(json_values(&json!(98.7)), ["a:98.7"]);
    assert_eq!(json_values(&json!(1250)), ["a:1250"]);
    assert_eq!(json_values(&json!(1250.0)), ["a:1250"]);
    assert_eq!(json_values(&json!("1250")), ["a:1250"]);
    assert!(json_values(&json!(10)).is_empty());
    assert!(json_values(&json!(50.0)).is_empty());
    assert_eq!(json_values(&json!(12345678)), ["a:12345678", "n:12345678"]);
    assert_eq!(
        json_values(&json!("12345678")),
        ["n:12345678", "a:12345678"]
    );
    assert_eq!(json_values(&json!(-98.70)), ["a:98.7"]);
}

#[test]
fn whole_strings_are_text_values() {
    assert_eq!(leaf("Riverside View Hotel"), ["t:riverside view hotel"]);
    assert_eq!(
        leaf("  Riverside   VIEW\tHotel "),
        ["t:riverside view hotel"]
    );
    assert_eq!(leaf("Room 12B, east wing"), ["t:room 12b, east wing"]);
    assert_eq!(leaf("acct-77a"), ["t:acct-77a"]);
    assert_eq!(leaf("acct-7781"), ["n:acct-7781"]);
    // A lone token that is already a value is not repeated as text.
    assert_eq!(
        leaf("alice@example.com"),
        ["e:alice@example.com", "d:example.com"]
    );
    // Too short, too long.
    assert!(leaf("Paris").is_empty());
    assert!(leaf(&"word ".repeat(60)).is_empty());
}

#[test]
fn tables_and_csv() {
    let csv = "name,email,iban,amount\n\
               Alice,alice@example.com,CH9300762011623852957,1200.50\n\
               Bob,bob@example.org,GB29NWBK60161331926819,99.99\n";
    let values = found(csv);
    for v in [
        "e:alice@example.com",
        "e:bob@example.org",
        "i:CH9300762011623852957",
        "i:GB29NWBK60161331926819",
        "a:1200.5",
        "a:99.99",
    ] {
        assert!(values.contains(&v.to_owned()), "{v} not in {values:?}");
    }
    let markdown = "| Name | E-mail |\n|---|---|\n| Carol | carol@example.net |";
    assert!(found(markdown).contains(&"e:carol@example.net".to_owned()));
}

#[test]
fn invisible_characters_do_not_split_or_hide_values() {
    assert_eq!(of(Family::Domain, "evil\u{200B}.com"), ["evil.com"]);
    assert_eq!(
        of(Family::Iban, "DE89\u{2060}370400440532013000"),
        ["DE89370400440532013000"]
    );
    // Terminal escapes are delimiters.
    assert_eq!(of(Family::Domain, "\x1b[31mevil.com\x1b[0m"), ["evil.com"]);
}

#[test]
fn the_scan_stops_at_its_budget_without_cutting_a_value() {
    let mut out = Vec::new();
    let text = "first alice@example.com then bob@example.org";
    let mut scanner = Scanner::new(30, |f: Family, v: &str| {
        out.push(format!("{}:{v}", f.tag()))
    });
    assert!(!scanner.text(text));
    assert!(scanner.truncated());
    assert!(!scanner.text("more"));
    drop(scanner);
    assert_eq!(out, ["e:alice@example.com", "d:example.com"]);
}

#[test]
fn deep_json_is_cut_and_reported() {
    let mut deep = json!("alice@example.com");
    for _ in 0..100 {
        deep = json!([deep]);
    }
    let mut scanner = Scanner::new(usize::MAX, |_: Family, _: &str| {});
    scanner.json(&deep, 0);
    assert!(scanner.truncated());
}

#[test]
fn result_blocks() {
    let result = json!({
        "content": [
            {"type": "text", "text": "{\"to\": \"alice@example.com\", \"amount\": 1250}"},
            {"type": "image", "data": "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVoxMjM0NTY3OA==", "mimeType": "image/png"},
            {"type": "resource", "resource": {"uri": "https://docs.example.com/a", "text": "see bob@example.org"}},
            {"type": "resource_link", "uri": "file:///srv/report.pdf", "name": "report.pdf"}
        ],
        "structuredContent": {"iban": "DE89370400440532013000"},
        "isError": false
    });
    let mut out = Vec::new();
    let mut scanner = Scanner::new(usize::MAX, |f: Family, v: &str| {
        out.push(format!("{}:{v}", f.tag()))
    });
    scanner.result(&result);
    drop(scanner);
    for v in [
        "e:alice@example.com",
        "a:1250",
        "u:docs.example.com/a",
        "e:bob@example.org",
        "f:report.pdf",
        "i:DE89370400440532013000",
    ] {
        assert!(out.contains(&v.to_owned()), "{v} not in {out:?}");
    }
    assert!(
        !out.iter().any(|v| v.contains("QUJD")),
        "image data scanned: {out:?}"
    );
}

#[test]
fn commas_between_digits_are_kept_only_in_numbers() {
    assert!(between_digits(b"1,250", 1));
    assert!(!between_digits(b"a,250", 1));
    assert_eq!(found("1200.50,99.99"), ["a:1200.5", "a:99.99"]);
    assert_eq!(found("1.250,00"), ["a:1250"]);
}

#[test]
fn structured_content_sent_twice_is_read_once() {
    let structured = json!({"to": "alice@example.com", "note": "x".repeat(600)});
    let result = json!({
        "content": [{"type": "text", "text": structured.to_string()}],
        "structuredContent": structured,
    });
    let mut out = Vec::new();
    // Enough budget for one copy, not two.
    let mut scanner = Scanner::new(700, |f: Family, v: &str| {
        out.push(format!("{}:{v}", f.tag()))
    });
    scanner.result(&result);
    assert!(!scanner.truncated());
    drop(scanner);
    assert!(out.contains(&"e:alice@example.com".to_owned()));
    // A text block that differs is read.
    let other = json!({
        "content": [{"type": "text", "text": "{\"to\": \"bob@example.org\"}"}],
        "structuredContent": structured,
    });
    let mut out = Vec::new();
    let mut scanner = Scanner::new(usize::MAX, |f: Family, v: &str| {
        out.push(format!("{}:{v}", f.tag()))
    });
    scanner.result(&other);
    drop(scanner);
    assert!(out.contains(&"e:bob@example.org".to_owned()));
}

/// Inputs built to make a scanner rescan: repeated group heads, a single
/// huge token, long space runs between number groups, many schemes in one
/// chunk. Linear work finishes these in milliseconds; quadratic work would
/// take minutes at this size.
#[test]
fn pathological_inputs_scan_in_linear_time() {
    let n = 256 * 1024;
    let inputs = [
        "DE89 ".repeat(n / 5),
        "1234 ".repeat(n / 5),
        "a.".repeat(n / 2),
        "x1".repeat(n / 2),
        format!("DE89{}1234", " ".repeat(n)),
        format!("100{}EUR", "\u{A0}".repeat(n / 2)),
        "https://".repeat(n / 8),
        "a@".repeat(n / 2),
        "/a.com".repeat(n / 6),
        "1,000".repeat(n / 5),
        "\u{1B}[".repeat(n / 2),
        "\u{200B}".repeat(n / 3),
    ];
    let start = std::time::Instant::now();
    for input in &inputs {
        let mut count = 0usize;
        let mut scanner = Scanner::new(usize::MAX, |_: Family, _: &str| count += 1);
        scanner.leaf(input);
        drop(scanner);
    }
    assert!(
        start.elapsed() < std::time::Duration::from_secs(20),
        "{:?}",
        start.elapsed()
    );
}
