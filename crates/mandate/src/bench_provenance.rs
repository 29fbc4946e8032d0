//! `mandate bench --provenance-history BYTES`: what argument provenance adds
//! to a call when the session already holds a large history of results.
//!
//! One gateway (the same configuration as the main benchmark, its tool's
//! results labelled untrusted) and two clients, each its own Mandate
//! session. The *history* session first reads `BYTES` of results rich in
//! values (addresses, IBANs, URLs, amounts, identifiers), which the
//! gateway's provenance index remembers; the *fresh* session reads nothing
//! first. Then both make the same call, whose arguments carry values to
//! look up, in alternating rounds (so both see the same CPU and disk), and
//! the report gives each session's p50 and p99 and the median of the
//! per-round differences: the cost the history adds to a call (the lookup
//! of every argument value, and observing one more result into a large
//! index), end to end, beside the whole call's latency.

use crate::bench::{Target, connect, one_call, pct};
use anyhow::Result;
use rmcp::model::CallToolRequestParams;
use std::fmt::Write as _;
use std::time::Duration;

/// Size of one history result (the tool echoes its query).
const CHUNK: usize = 32 << 10;

/// Deterministic text with a value every few words, `len` bytes or a little
/// more; `seed` varies the values between chunks (some repeat across
/// chunks, as real mail and pages repeat addresses).
fn history_text(seed: usize, len: usize) -> String {
    let mut s = String::with_capacity(len.saturating_add(200));
    let mut i = seed.wrapping_mul(7919);
    while s.len() < len {
        i = i.wrapping_add(1);
        let n = i % 1500;
        let _ = write!(
            s,
            "Invoice INV-2026-{n:06} from supplier{} was paid: EUR {}.{:02} to DE{:02}3704004405320{:05} \
             as agreed with accounts{}@vendor{}.example, see https://portal{}.example.com/orders/{n} \
             and the note in report-{}.pdf. ",
            n % 97,
            100 + n % 9000,
            n % 100,
            10 + n % 89,
            n,
            n % 31,
            n % 53,
            n % 61,
            n % 43,
        );
    }
    s
}

fn search(tool: &str, query: String) -> CallToolRequestParams {
    let mut p = CallToolRequestParams::new(tool.to_owned());
    let mut args = serde_json::Map::new();
    args.insert("query".into(), serde_json::Value::String(query));
    p.arguments = Some(args);
    p
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Runs the comparison against `via` (a gateway target whose tool echoes
/// its `query`) and prints the report.
pub(crate) async fn run(via: &Target, history_bytes: usize, rounds: usize) -> Result<()> {
    let tool = via.call.name.to_string();
    let (fresh, history) = (connect(via).await?, connect(via).await?);
    let chunks = history_bytes.div_ceil(CHUNK).max(1);
    eprintln!(
        "history session reads {chunks} results of {} KiB…",
        CHUNK >> 10
    );
    for i in 0..chunks {
        one_call(&history, &search(&tool, history_text(i, CHUNK))).await?;
    }
    // The measured call: a payment-like query whose values the index looks
    // up (one of them the history carries).
    let probe = search(
        &tool,
        "pay EUR 1,204.17 to DE1337040044053201234 for INV-2026-001234, \
         confirm to accounts7@vendor7.example and https://portal9.example.com/orders/1234"
            .into(),
    );
    for _ in 0..50 {
        one_call(&fresh, &probe).await?;
        one_call(&history, &probe).await?;
    }
    let (mut f, mut h, mut diff) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        // Alternate which goes first, so neither always follows the other.
        let (a, b) = if round % 2 == 0 {
            let a = one_call(&fresh, &probe).await?;
            (a, one_call(&history, &probe).await?)
        } else {
            let b = one_call(&history, &probe).await?;
            (one_call(&fresh, &probe).await?, b)
        };
        f.push(a);
        h.push(b);
        diff.push(us(b) - us(a));
    }
    for c in [fresh, history] {
        let _ = c.cancel().await;
    }
    diff.sort_by(f64::total_cmp);
    let median = diff.get(diff.len() / 2).copied().unwrap_or(0.0);
    let (fp50, hp50) = (pct(&mut f, 0.5), pct(&mut h, 0.5));
    let (fp99, hp99) = (pct(&mut f, 0.99), pct(&mut h, 0.99));
    println!("## Argument provenance with a large session history (one run, `mandate bench`)\n");
    println!("| session | p50 | p99 |");
    println!("|---|---|---|");
    println!(
        "| fresh (no history) | {:.1} µs | {:.1} µs |",
        us(fp50),
        us(fp99)
    );
    println!(
        "| after {} KiB of results | {:.1} µs | {:.1} µs |",
        chunks.saturating_mul(CHUNK) >> 10,
        us(hp50),
        us(hp99)
    );
    println!(
        "\nHistory vs fresh: p50 {:.3}×, p99 {:.3}×; median per-round difference {median:+.1} µs over {rounds} rounds (goal: ≤ 20 µs).",
        us(hp50) / us(fp50).max(1e-9),
        us(hp99) / us(fp99).max(1e-9),
    );
    println!(
        "The difference is what the history costs a call: looking up every value of the call's arguments in a large index, and observing the call's own result into it. Both sessions make the same call through the same gateway, in alternating order."
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{CHUNK, history_text};
    use mandate_provenance::{Label, SessionValues};

    /// The benchmark's megabyte fits the default per-session index whole:
    /// the history session holds all of it (nothing evicted), so the run
    /// measures lookups in a full 1 MB history, not in what was left of it.
    #[test]
    fn a_megabyte_of_history_fits_the_default_index_whole() {
        let mut session = SessionValues::default();
        let chunks = (1usize << 20).div_ceil(CHUNK);
        for i in 0..chunks {
            let result = serde_json::json!({
                "content": [{"type": "text", "text": history_text(i, CHUNK)}]
            });
            session.observe_result("docs.search", Label::Untrusted, &format!("c{i}"), &result);
        }
        let stats = session.stats();
        assert!(!session.overflowed(), "the history overflowed: {stats:?}");
        assert_eq!(stats.calls, chunks);
        assert!(
            stats.values > 5_000,
            "too few values to look up among: {stats:?}"
        );
    }
}
