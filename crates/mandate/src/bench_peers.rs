//! `mandate bench --peer …`: other MCP gateways measured beside Mandate in
//! the same run, with the same client, tool, arguments and interleaving.
//!
//! A peer is a gateway already running on this machine's loopback (started
//! by `scripts/bench-peers`, which also configures its authentication). For
//! each target the report gives the sequential p50 and p99 and what they add
//! to the direct call, the throughput with the concurrent clients, and the
//! CPU time its process (and any children it forked) spent per call during
//! the throughput runs, read from `/proc/PID/stat`, as ratios to direct, to
//! Mandate and to each other.

use anyhow::{Context, Result};
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

/// A peer gateway: `NAME=URL[,tool=NAME][,token=FILE][,pid=PID]`.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The label in the report.
    pub(crate) name: String,
    /// Its Streamable HTTP MCP endpoint, on loopback.
    pub(crate) url: String,
    /// The tool's name as the peer exposes it (default: `--tool`).
    pub(crate) tool: Option<String>,
    /// A file holding the bearer token its clients send.
    pub(crate) token: Option<PathBuf>,
    /// Its process, for CPU per call.
    pub(crate) pid: Option<u32>,
}

const PEER_FORM: &str = "expected NAME=URL[,tool=NAME][,token=FILE][,pid=PID]";

/// Parses `--peer`. The URL must be on loopback: a benchmark sends its load
/// to this machine only.
pub(crate) fn parse_peer(s: &str) -> Result<Peer, String> {
    let (name, rest) = s.split_once('=').ok_or(PEER_FORM)?;
    let mut parts = rest.split(',');
    let url = parts.next().unwrap_or_default();
    if name.is_empty() || url.is_empty() {
        return Err(PEER_FORM.into());
    }
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("peer URL {url:?}: {e}"))?;
    let host = parsed.host_str().unwrap_or_default();
    let loopback = host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if parsed.scheme() != "http" || !loopback {
        return Err(format!(
            "peer URL {url:?}: only http:// on loopback (a benchmark loads this machine only)"
        ));
    }
    let mut peer = Peer {
        name: name.to_owned(),
        url: url.to_owned(),
        tool: None,
        token: None,
        pid: None,
    };
    for kv in parts {
        match kv.split_once('=') {
            Some(("tool", v)) if !v.is_empty() => peer.tool = Some(v.to_owned()),
            Some(("token", v)) if !v.is_empty() => peer.token = Some(v.into()),
            Some(("pid", v)) => {
                peer.pid = Some(
                    v.parse()
                        .map_err(|_| format!("peer pid {v:?}: not a number"))?,
                );
            }
            _ => return Err(format!("peer option {kv:?}: {PEER_FORM}")),
        }
    }
    Ok(peer)
}

/// Reads a process's CPU time (user + system, its threads and its living
/// descendants) from `/proc`.
pub(crate) struct CpuClock {
    /// Clock ticks per second of `/proc/*/stat` times (`getconf CLK_TCK`).
    ticks_per_sec: f64,
}

impl CpuClock {
    pub(crate) fn new() -> Result<Self> {
        let out = std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .context("cannot run getconf to read the clock tick")?;
        let ticks: f64 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .context("getconf CLK_TCK did not print a number")?;
        anyhow::ensure!(ticks > 0.0, "getconf CLK_TCK printed {ticks}");
        Ok(Self {
            ticks_per_sec: ticks,
        })
    }

    /// CPU time so far of `pid` and every process descended from it.
    pub(crate) fn of(&self, pid: u32) -> Result<Duration> {
        let (_, own) = stat(pid).with_context(|| format!("process {pid} is not running"))?;
        let mut children: HashMap<u32, Vec<(u32, u64)>> = HashMap::new();
        for entry in std::fs::read_dir("/proc")?.flatten() {
            let Some(p) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
                continue;
            };
            // A process may end between the listing and the read: skip it.
            if let Ok((ppid, ticks)) = stat(p) {
                children.entry(ppid).or_default().push((p, ticks));
            }
        }
        let mut total = own;
        let mut stack = vec![pid];
        while let Some(p) = stack.pop() {
            for &(child, ticks) in children.get(&p).map(Vec::as_slice).unwrap_or_default() {
                total = total.saturating_add(ticks);
                stack.push(child);
            }
        }
        #[expect(clippy::cast_precision_loss, reason = "tick counts are small")]
        let secs = total as f64 / self.ticks_per_sec;
        Ok(Duration::from_secs_f64(secs))
    }
}

/// `(ppid, utime + stime)` of one process, in clock ticks.
fn stat(pid: u32) -> Result<(u32, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) is in parentheses and may hold spaces.
    let rest = text
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("unreadable /proc stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state (3), ppid (4), …, utime (14), stime (15).
    let field = |n: usize| -> Result<u64> {
        fields
            .get(n - 3)
            .and_then(|f| f.parse().ok())
            .context("unreadable /proc stat field")
    };
    let ppid = u32::try_from(field(4)?)?;
    Ok((ppid, field(14)?.saturating_add(field(15)?)))
}

/// The 1-minute load average, for the report.
pub(crate) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

/// One target's figures.
pub(crate) struct Row {
    pub(crate) name: String,
    pub(crate) p50: Duration,
    pub(crate) p99: Duration,
    pub(crate) rate: f64,
    pub(crate) load_p50: Duration,
    pub(crate) load_p99: Duration,
    /// The gateway process's CPU per call under load (none for direct).
    pub(crate) cpu: Option<Duration>,
    /// The upstream's CPU per call during this target's throughput runs.
    pub(crate) upstream_cpu: Option<Duration>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// `a ÷ b` with two significant digits or more (ratios here span 0.01×
/// to 100×).
fn ratio(a: f64, b: f64) -> String {
    let r = a / b;
    if !(b > 0.0 && r.is_finite()) {
        "—".into()
    } else if r.abs() >= 10.0 {
        format!("{r:.1}×")
    } else if r.abs() >= 0.1 {
        format!("{r:.2}×")
    } else {
        format!("{r:.3}×")
    }
}

/// Prints the side-by-side section. `rows` starts with direct, the bare
/// proxy and Mandate, then the peers.
pub(crate) fn report(rows: &[Row], concurrency: usize, rounds: u16, secs: u64) {
    let (Some(direct), Some(mandate)) = (rows.first(), rows.get(2)) else {
        return;
    };
    let added = |r: &Row| (ms(r.p50) - ms(direct.p50), ms(r.p99) - ms(direct.p99));
    let (m_add50, _) = added(mandate);
    let m_cpu = mandate.cpu.map(ms);
    println!("\n## Side by side (one run, `mandate bench --peer …`)\n");
    println!(
        "| target | sequential p50 / p99 | added p50 / p99 vs direct | added p50 ÷ Mandate's | throughput, {concurrency} clients | ÷ direct | ÷ Mandate | p50 / p99 under load | CPU per call (gateway process) | CPU ÷ Mandate | upstream CPU per call |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for (i, r) in rows.iter().enumerate() {
        let (a50, a99) = added(r);
        let add = if i == 0 {
            "—".to_owned()
        } else {
            format!("{a50:+.3} / {a99:+.3} ms")
        };
        let add_ratio = if i == 0 {
            "—".to_owned()
        } else {
            ratio(a50, m_add50)
        };
        let cpu = r.cpu.map_or("—".to_owned(), |c| format!("{:.3} ms", ms(c)));
        let cpu_ratio = match (r.cpu, m_cpu) {
            (Some(c), Some(m)) => ratio(ms(c), m),
            _ => "—".into(),
        };
        let up = r
            .upstream_cpu
            .map_or("—".to_owned(), |c| format!("{:.3} ms", ms(c)));
        println!(
            "| {} | {:.3} / {:.3} ms | {add} | {add_ratio} | {:.0} calls/s | {} | {} | {:.3} / {:.3} ms | {cpu} | {cpu_ratio} | {up} |",
            r.name,
            ms(r.p50),
            ms(r.p99),
            r.rate,
            ratio(r.rate, direct.rate),
            ratio(r.rate, mandate.rate),
            ms(r.load_p50),
            ms(r.load_p99),
        );
    }
    println!("\nThroughput, row ÷ column:\n");
    matrix(rows, |r| Some(r.rate));
    if rows.iter().filter(|r| r.cpu.is_some()).count() > 1 {
        println!("\nCPU per call, row ÷ column (gateway processes):\n");
        matrix(rows, |r| r.cpu.map(ms));
    }
    println!(
        "\nEvery target is driven by the same client (rmcp, keep-alive), with the same tool and arguments: sequential calls interleaved round-robin, then {rounds} round(s) of {secs} s of throughput per target, taken in turn. CPU per call is the process's user + system time (with any children it forked) over its throughput runs ÷ the calls it served."
    );
}

fn matrix(rows: &[Row], value: impl Fn(&Row) -> Option<f64>) {
    let cols: Vec<(&str, f64)> = rows
        .iter()
        .filter_map(|r| value(r).map(|v| (r.name.as_str(), v)))
        .collect();
    let header: Vec<&str> = cols.iter().map(|(n, _)| *n).collect();
    println!("| | {} |", header.join(" | "));
    println!("|---|{}", "---|".repeat(cols.len()));
    for (name, v) in &cols {
        let cells: Vec<String> = cols.iter().map(|(_, c)| ratio(*v, *c)).collect();
        println!("| {name} | {} |", cells.join(" | "));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_is_parsed_with_its_options() {
        let p = parse_peer("agw=http://127.0.0.1:3000/mcp,tool=search,token=/tmp/t,pid=42")
            .expect("valid");
        assert_eq!(p.name, "agw");
        assert_eq!(p.url, "http://127.0.0.1:3000/mcp");
        assert_eq!(p.tool.as_deref(), Some("search"));
        assert_eq!(p.token, Some(PathBuf::from("/tmp/t")));
        assert_eq!(p.pid, Some(42));
    }

    #[test]
    fn small_and_large_ratios_keep_two_digits() {
        assert_eq!(ratio(1.0, 3.0), "0.33×");
        assert_eq!(ratio(7.0, 1621.0), "0.004×");
        assert_eq!(ratio(1621.0, 7.0), "231.6×");
        assert_eq!(ratio(1.0, 0.0), "—");
    }

    #[test]
    fn a_peer_off_loopback_is_refused() {
        assert!(parse_peer("x=http://10.0.0.1:3000/mcp").is_err());
        assert!(parse_peer("x=http://example.com/mcp").is_err());
        assert!(parse_peer("x=https://127.0.0.1/mcp").is_err());
        assert!(parse_peer("x=http://localhost:1/mcp").is_ok());
        assert!(parse_peer("x=http://[::1]:1/mcp").is_ok());
    }

    #[test]
    fn malformed_peers_are_refused() {
        assert!(parse_peer("http://127.0.0.1/mcp").is_err());
        assert!(parse_peer("=http://127.0.0.1/mcp").is_err());
        assert!(parse_peer("x=http://127.0.0.1/mcp,pid=abc").is_err());
        assert!(parse_peer("x=http://127.0.0.1/mcp,colour=blue").is_err());
    }

    #[test]
    fn this_process_has_cpu_time_and_it_grows() {
        let clock = CpuClock::new().expect("getconf");
        let before = clock.of(std::process::id()).expect("own stat");
        let mut x = 0u64;
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_millis(200) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let after = clock.of(std::process::id()).expect("own stat");
        assert!(after > before, "{before:?} → {after:?}");
    }

    #[test]
    fn a_process_that_does_not_exist_is_an_error() {
        let clock = CpuClock::new().expect("getconf");
        assert!(clock.of(u32::MAX).is_err());
    }
}
