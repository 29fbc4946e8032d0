//! What argument provenance adds to a call.
//!
//! A session first observes 1 MB of varied results (prose mail and web
//! pages with addresses, links and amounts; CSV tables; JSON transaction
//! lists; structured content), labelled trusted or untrusted. Then:
//!
//! * `sources/*`: [`SessionValues::sources`] on typical sink arguments: a
//!   payment (recipient IBAN, amount, subject, date), a mail (recipients,
//!   subject, a body with a link and an address), a 1 KB chat message with
//!   several values in it. This is the per-call cost the gateway adds.
//! * `observe_result/16KB`: observing one 16 KB result (throughput in
//!   bytes, so criterion also prints MB/s), into a fresh session and into
//!   the 1 MB session.
//!
//! After the criterion runs, a sampled loop times single `sources` calls and
//! prints p50/p99 (criterion reports means), the time to observe the whole
//! megabyte (best of three), and the index's size. Set `MANDATE_BENCH_NO_PERCENTILES` to skip
//! it.

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use mandate_provenance::{Label, SessionValues};
use serde_json::{Map, Value, json};
use std::hint::black_box;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

/// A small deterministic generator (xorshift64*), so every run sees the
/// same megabyte.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % u64::try_from(n.max(1)).unwrap_or(1)).unwrap_or(0)
    }

    fn pick<'a>(&mut self, items: &'a [&'a str]) -> &'a str {
        items.get(self.below(items.len())).copied().unwrap_or("")
    }
}

const WORDS: &[&str] = &[
    "the",
    "invoice",
    "for",
    "march",
    "was",
    "paid",
    "and",
    "the",
    "team",
    "agreed",
    "to",
    "move",
    "meeting",
    "next",
    "week",
    "please",
    "review",
    "attached",
    "report",
    "before",
    "Friday",
    "budget",
    "numbers",
    "look",
    "good",
    "customer",
    "asked",
    "about",
    "delivery",
    "schedule",
    "we",
    "will",
    "follow",
    "up",
    "with",
    "supplier",
    "on",
    "Monday",
    "thanks",
    "regards",
    "hotel",
    "booking",
    "confirmed",
    "flight",
    "delayed",
    "by",
    "two",
    "hours",
    "project",
    "status",
    "is",
    "green",
    "1",
    "2",
    "3",
    "10",
    "42",
    "Q3",
    "2024",
    "update:",
    "note:",
    "-",
    "a",
    "of",
    "in",
];

/// The session's recurring values: people, accounts, sites.
fn pool(seed: u64, n: usize, make: impl Fn(&mut Rng) -> String) -> Vec<String> {
    let mut r = Rng(seed);
    (0..n).map(|_| make(&mut r)).collect()
}

static EMAILS: LazyLock<Vec<String>> = LazyLock::new(|| {
    pool(1, 300, |r| {
        let first = r.pick(&[
            "alice", "bob", "carol", "dave", "emma", "frank", "grace", "heidi",
        ]);
        let last = r.pick(&[
            "smith", "jones", "brown", "taylor", "wilson", "davies", "evans",
        ]);
        format!("{first}.{last}{}@company{}.com", r.below(40), r.below(8))
    })
});

static IBANS: LazyLock<Vec<String>> = LazyLock::new(|| {
    pool(2, 200, |r| {
        format!(
            "DE{:02}{:018}",
            r.below(100),
            r.next() % 1_000_000_000_000_000_000
        )
    })
});

static URLS: LazyLock<Vec<String>> = LazyLock::new(|| {
    pool(3, 300, |r| {
        let section = r.pick(&["news", "docs", "blog", "shop", "help"]);
        format!(
            "https://www.site{}.com/{section}/{}",
            r.below(60),
            r.below(500)
        )
    })
});

fn from(r: &mut Rng, pool: &[String]) -> String {
    pool.get(r.below(pool.len())).cloned().unwrap_or_default()
}

fn email(r: &mut Rng) -> String {
    from(r, &EMAILS)
}

fn iban(r: &mut Rng) -> String {
    from(r, &IBANS)
}

fn url(r: &mut Rng) -> String {
    from(r, &URLS)
}

fn amount(r: &mut Rng) -> String {
    format!("{}.{:02}", 100 + r.below(9_900), r.below(100))
}

fn prose(r: &mut Rng, bytes: usize) -> String {
    let mut out = String::with_capacity(bytes + 200);
    while out.len() < bytes {
        let token = match r.below(40) {
            0 => email(r),
            1 => url(r),
            2 => format!("EUR {}", amount(r)),
            3 => iban(r),
            4 => format!("INV-2024-{:06}", r.below(1_000_000)),
            5 => format!("report-{}.pdf", r.below(300)),
            6 => "\n\n".to_owned(),
            _ => r.pick(WORDS).to_owned(),
        };
        out.push_str(&token);
        out.push(if r.below(12) == 0 { '.' } else { ' ' });
        out.push(' ');
    }
    out
}

fn csv(r: &mut Rng, bytes: usize) -> String {
    let mut out = String::from("name,email,iban,amount,date,reference\n");
    while out.len() < bytes {
        let row = format!(
            "{} {},{},{},{},2024-0{}-1{},REF{:08}\n",
            r.pick(&["Alice", "Bob", "Carol", "Dave"]),
            r.pick(&["Smith", "Jones", "Brown"]),
            email(r),
            iban(r),
            amount(r),
            1 + r.below(9),
            r.below(10),
            r.below(100_000_000)
        );
        out.push_str(&row);
    }
    out
}

fn transactions(r: &mut Rng, bytes: usize) -> Value {
    let mut items = Vec::new();
    let mut size = 0;
    while size < bytes {
        let item = json!({
            "id": r.below(1_000_000),
            "sender": iban(r),
            "recipient": iban(r),
            "amount": (100 + r.below(9_900)) as f64 + 0.5,
            "subject": prose(r, 40).trim(),
            "date": "2024-03-01",
            "recurring": r.below(2) == 0,
        });
        size += item.to_string().len();
        items.push(item);
    }
    json!(items)
}

/// About 1 MB of results: (tool, label, result).
fn megabyte() -> Vec<(String, Label, Value)> {
    let mut r = Rng(0x9E37_79B9_7F4A_7C15);
    let mut out = Vec::new();
    let mut total = 0;
    while total < 1 << 20 {
        let size = 4_096 + r.below(12_288);
        let (tool, label, result) = match r.below(5) {
            0 => (
                "mail.read_inbox",
                Label::Untrusted,
                json!({"content": [{"type": "text", "text": prose(&mut r, size)}]}),
            ),
            1 => (
                "web.get_webpage",
                Label::Untrusted,
                json!({"content": [{"type": "text", "text": format!("<html><body><p>{}</p></body></html>", prose(&mut r, size))}]}),
            ),
            2 => (
                "drive.read_file",
                Label::Untrusted,
                json!({"content": [{"type": "resource", "resource": {"uri": "file:///shared/contacts.csv", "text": csv(&mut r, size)}}]}),
            ),
            3 => (
                "bank.get_transactions",
                Label::Untrusted,
                json!({"content": [{"type": "text", "text": transactions(&mut r, size).to_string()}]}),
            ),
            _ => {
                let structured = transactions(&mut r, size);
                (
                    "crm.accounts",
                    Label::Trusted,
                    json!({"content": [{"type": "text", "text": structured.to_string()}], "structuredContent": {"items": structured}}),
                )
            }
        };
        total += result.to_string().len();
        out.push((tool.to_owned(), label, result));
    }
    out
}

fn session(results: &[(String, Label, Value)]) -> SessionValues {
    let mut s = SessionValues::default();
    s.observe_intent(["Pay the March rent to DE89370400440532013000, 1,250.00 EUR"]);
    for (i, (tool, label, result)) in results.iter().enumerate() {
        s.observe_result(tool, *label, &format!("corr-{i}"), result);
    }
    s
}

fn object(v: Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap_or_default()
}

/// Typical sink arguments, using values the session has seen.
fn sinks() -> Vec<(&'static str, Map<String, Value>)> {
    let mut r = Rng(11);
    let seen_email = EMAILS.first().cloned().unwrap_or_default();
    let seen_iban = IBANS.first().cloned().unwrap_or_default();
    let seen_url = URLS.first().cloned().unwrap_or_default();
    let message = format!(
        "Hi team, quick update on the Q3 numbers. {} the invoice INV-2024-004211 for EUR 1,250.00 \
         was paid from {seen_iban}. The supplier asked us to use the portal at {seen_url} from now \
         on; questions go to {seen_email} or to carol.brown7@company3.com. The signed contract is \
         contract-2024.pdf in the shared drive, and the delivery schedule moves by two weeks. {}",
        prose(&mut r, 300),
        prose(&mut r, 300)
    );
    vec![
        (
            "send_money",
            object(json!({
                "recipient": seen_iban,
                "amount": 1250.0,
                "subject": "Rent for March",
                "date": "2024-03-01",
            })),
        ),
        (
            "send_mail",
            object(json!({
                "recipients": [seen_email],
                "subject": "Follow-up on the supplier portal",
                "body": format!("Hello, the new portal is {seen_url} - see you Monday."),
            })),
        ),
        (
            "post_message_1kb",
            object(json!({"channel": "general", "body": message})),
        ),
    ]
}

fn bench(c: &mut Criterion) {
    let results = megabyte();
    let s = session(&results);
    let calls = sinks();

    let mut group = c.benchmark_group("sources");
    for (name, args) in &calls {
        group.bench_function(*name, |b| b.iter(|| black_box(s.sources(black_box(args)))));
    }
    group.finish();

    let mut r = Rng(7);
    let one = json!({"content": [{"type": "text", "text": prose(&mut r, 16 * 1024)}]});
    let bytes = u64::try_from(one.to_string().len()).unwrap_or(0);
    let mut group = c.benchmark_group("observe_result");
    group.throughput(Throughput::Bytes(bytes));
    group.bench_function("16KB_fresh_session", |b| {
        b.iter_batched(
            SessionValues::default,
            |mut fresh| {
                fresh.observe_result(
                    "web.get_webpage",
                    Label::Untrusted,
                    "corr-x",
                    black_box(&one),
                );
                fresh
            },
            BatchSize::SmallInput,
        );
    });
    group.bench_function("16KB_into_1MB_session", |b| {
        b.iter_batched(
            || s.clone(),
            |mut full| {
                full.observe_result(
                    "web.get_webpage",
                    Label::Untrusted,
                    "corr-x",
                    black_box(&one),
                );
                full
            },
            BatchSize::LargeInput,
        );
    });
    group.finish();
}

fn percentiles(samples: &mut [Duration]) -> (Duration, Duration) {
    samples.sort_unstable();
    let at = |percent: usize| {
        let i = (samples.len() * percent / 100).min(samples.len().saturating_sub(1));
        samples.get(i).copied().unwrap_or_default()
    };
    (at(50), at(99))
}

/// Resident set size from `/proc/self/statm` (Linux; 0 elsewhere).
fn resident_bytes() -> usize {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<usize>().ok())
        })
        .map_or(0, |pages| pages * 4096)
}

fn report() {
    if std::env::var_os("MANDATE_BENCH_NO_PERCENTILES").is_some() {
        return;
    }
    let results = megabyte();
    let bytes: usize = results.iter().map(|(_, _, r)| r.to_string().len()).sum();
    let resident_before = resident_bytes();
    let start = Instant::now();
    let s = session(&results);
    let mut observe = start.elapsed();
    let resident_growth = resident_bytes().saturating_sub(resident_before);
    // The best of three: the machine is shared.
    for _ in 0..2 {
        let start = Instant::now();
        black_box(session(&results));
        observe = observe.min(start.elapsed());
    }
    let stats = s.stats();
    println!(
        "\nobserved {} results, {:.2} MB, in {:.1} ms ({:.2} µs/KB); index: {} values, {} calls, {:.2} MB accounted, overflowed: {}",
        results.len(),
        bytes as f64 / 1e6,
        observe.as_secs_f64() * 1e3,
        observe.as_secs_f64() * 1e6 / (bytes as f64 / 1024.0),
        stats.values,
        stats.calls,
        stats.index_bytes as f64 / 1e6,
        s.overflowed()
    );
    println!(
        "resident memory grew by {:.2} MB while observing (the accounted figure is meant to be of that order)",
        resident_growth as f64 / 1e6
    );
    for (name, args) in sinks() {
        let report = s.sources(&args);
        let mut samples = Vec::with_capacity(20_000);
        for _ in 0..20_000 {
            let t = Instant::now();
            black_box(s.sources(black_box(&args)));
            samples.push(t.elapsed());
        }
        let (p50, p99) = percentiles(&mut samples);
        println!(
            "sources/{name}: p50 {:.2} µs, p99 {:.2} µs ({} values; untrusted-only args {:?})",
            p50.as_secs_f64() * 1e6,
            p99.as_secs_f64() * 1e6,
            report
                .arguments()
                .iter()
                .map(|a| a.values.len())
                .sum::<usize>(),
            report.untrusted_only()
        );
    }
}

fn all(c: &mut Criterion) {
    bench(c);
    report();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = all
}
criterion_main!(benches);
