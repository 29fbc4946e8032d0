//! `mandate bench`: end-to-end load benchmark, gateway vs direct upstream.
//!
//! In one process and one run it starts the demo MCP server over Streamable
//! HTTP (or uses the server given with `--upstream-url`), a gateway in front
//! of it (durable audit on, the quickstart policies), a bare MCP proxy on
//! the same SDK as a second baseline ([`crate::bench_proxy`]), and drives
//! `tools/call` directly, through the proxy and through the gateway with
//! the official Rust SDK client:
//! sequentially (added latency) and with many concurrent clients
//! (throughput). Between the sequential calls it times this disk's fsync,
//! the floor of the gateway's added latency (the decision record is durable
//! before the call is forwarded). Everything is reported as ratios to the
//! direct baseline, and to the bare proxy (what Mandate's own work adds).

// `--provenance-history`: a child module, since it drives the same
// clients as the main benchmark (`Target`, `connect`, `one_call`).
#[path = "bench_provenance.rs"]
mod provenance;

use crate::devtoken::{MintArgs, generate_issuer_key, load_issuer_key, sign};
use anyhow::{Context, Result};
use rmcp::model::{CallToolRequestParams, ProtocolVersion};
use rmcp::service::{ClientLifecycleMode, ClientServiceExt as _};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Benchmark parameters.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Calls per sequential run.
    #[arg(long, default_value_t = 400)]
    pub sequential_calls: usize,
    /// Concurrent clients for the throughput run.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Seconds per throughput run.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Where the benchmark's audit log and keys go (wiped first).
    #[arg(long, default_value = "target/bench-data")]
    pub data_dir: PathBuf,
    /// Run the gateway as a separate `mandate serve` process pinned to CPU 1
    /// and the load generator plus upstream to CPU 0 (needs `taskset` and two
    /// CPUs), so the gateway's cost is not taken from the upstream's budget.
    #[arg(long)]
    pub split_cpus: bool,
    /// MCP protocol revision the benchmark clients speak (on both paths):
    /// `2025-11-25` (initialize, a transport session, SSE replies) or
    /// `2026-07-28` (stateless: `server/discover`, plain JSON replies).
    #[arg(long, default_value = "2025-11-25", value_parser = ["2025-11-25", "2026-07-28"])]
    pub protocol: String,
    /// Benchmark against this Streamable HTTP MCP server (`http://…/mcp`)
    /// instead of the built-in demo server, whose tool does no work.
    #[arg(long, value_name = "URL")]
    pub upstream_url: Option<String>,
    /// The upstream tool to call (classed `read` in the benchmark's config).
    #[arg(long, default_value = "search")]
    pub tool: String,
    /// The call's arguments, a JSON object.
    #[arg(long, default_value = r#"{"query":"benchmark"}"#, value_parser = parse_arguments)]
    pub arguments: serde_json::Map<String, serde_json::Value>,
    /// Instead: measure human approval (decision sent → agent's result)
    /// over N held transfers, against the same transfer without approval.
    #[arg(long, value_name = "N")]
    pub approvals: Option<usize>,
    /// Instead: measure what argument provenance adds to a call in a
    /// session that has read BYTES of results (e.g. 1048576), against a
    /// fresh session, over `--sequential-calls` alternating rounds.
    #[arg(long, value_name = "BYTES")]
    pub provenance_history: Option<usize>,
}

fn parse_arguments(s: &str) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    match serde_json::from_str(s) {
        Ok(serde_json::Value::Object(map)) => Ok(map),
        Ok(_) => Err("the arguments must be a JSON object".into()),
        Err(e) => Err(format!("the arguments are not JSON: {e}")),
    }
}

/// The gateway under test: in this process, or a pinned child process.
enum UnderTest {
    InProcess(std::sync::Arc<mandate_gateway::Gateway>),
    /// Held so the child process is killed when the run ends.
    Child {
        _process: tokio::process::Child,
    },
}

/// A free local address.
fn free_addr() -> Result<std::net::SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// Runs this executable with `args` and `env`, pinned to CPU 1.
fn spawn_on_cpu1(
    args: &[&std::ffi::OsStr],
    env: &[(&str, String)],
) -> Result<tokio::process::Child> {
    tokio::process::Command::new("taskset")
        .args(["-c", "1"])
        .arg(std::env::current_exe()?)
        .args(args)
        .env("MANDATE_LOG", "warn")
        .envs(env.iter().cloned())
        .kill_on_drop(true)
        .spawn()
        .context("cannot run taskset (util-linux) to pin to CPU 1")
}

/// Waits until `url` answers: with a success status if `healthy`, with
/// any status otherwise.
async fn wait_until_up(url: &str, what: &str, healthy: bool) -> Result<()> {
    for _ in 0..100 {
        if reqwest::get(url)
            .await
            .is_ok_and(|r| !healthy || r.status().is_success())
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("the pinned {what} did not become healthy")
}

/// Starts `mandate serve` for `cfg_path` on a free port, pinned to CPU 1,
/// and pins this process to CPU 0.
async fn start_pinned(
    cfg_path: &Path,
    data_dir: &Path,
) -> Result<(tokio::process::Child, std::net::SocketAddr)> {
    let addr = free_addr()?;
    let listen = addr.to_string();
    let child = spawn_on_cpu1(
        &[
            "serve".as_ref(),
            "--config".as_ref(),
            cfg_path.as_os_str(),
            "--listen".as_ref(),
            listen.as_ref(),
            "--data-dir".as_ref(),
            data_dir.as_os_str(),
        ],
        &[("MANDATE_PUBLIC_URL", format!("http://{addr}"))],
    )?;
    let pinned = std::process::Command::new("taskset")
        .args(["-a", "-cp", "0", &std::process::id().to_string()])
        .output()?;
    if !pinned.status.success() {
        anyhow::bail!("taskset could not pin the load generator to CPU 0");
    }
    wait_until_up(&format!("http://{addr}/healthz"), "gateway", true).await?;
    Ok((child, addr))
}

/// Starts the bare MCP proxy in front of `upstream_url`: pinned to CPU 1 as
/// a child process with `split`, in this process otherwise.
async fn start_bare_proxy(
    upstream_url: &str,
    split: bool,
) -> Result<(Option<tokio::process::Child>, String)> {
    if split {
        let addr = free_addr()?.to_string();
        let child = spawn_on_cpu1(
            &[
                "bench-proxy".as_ref(),
                "--listen".as_ref(),
                addr.as_ref(),
                "--upstream".as_ref(),
                upstream_url.as_ref(),
            ],
            &[],
        )?;
        let url = format!("http://{addr}/mcp");
        wait_until_up(&url, "bare proxy", false).await?;
        return Ok((Some(child), url));
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/mcp", listener.local_addr()?);
    let upstream = upstream_url.to_owned();
    tokio::spawn(async move {
        if let Err(e) = crate::bench_proxy::serve(listener, upstream).await {
            eprintln!("bare proxy stopped: {e}");
        }
    });
    Ok((None, url))
}

/// Mints a token with a fresh `sid` for each client, so every benchmark
/// client is its own Mandate session (and its own call budget).
pub(crate) type TokenSource = std::sync::Arc<dyn Fn() -> Result<String> + Send + Sync>;

pub(crate) struct Target {
    pub(crate) url: String,
    pub(crate) token: Option<TokenSource>,
    /// The call every client makes (the same on both paths but the name).
    pub(crate) call: CallToolRequestParams,
    /// Speak the stateless 2026-07-28 revision instead of 2025-11-25.
    pub(crate) stateless: bool,
}

pub(crate) type Client = rmcp::service::RunningService<rmcp::RoleClient, ()>;

/// One benchmark client: the official SDK's client over its own HTTP
/// connection pool. Its HTTP client reads every SSE reply to the end (as
/// Mandate's upstream connections do), so the connection is kept alive
/// between calls, as a browser's or the Python SDK's would be.
pub(crate) async fn connect(t: &Target) -> Result<Client> {
    let mut cfg = StreamableHttpClientTransportConfig::with_uri(t.url.as_str());
    if let Some(mint) = &t.token {
        cfg = cfg.auth_header(mint()?);
    }
    let transport = StreamableHttpClientTransport::with_client(
        mandate_gateway::TraceHttpClient::new(reqwest::Client::new()),
        cfg,
    );
    let lifecycle = if t.stateless {
        ClientLifecycleMode::Discover {
            preferred_versions: vec![ProtocolVersion::V_2026_07_28],
        }
    } else {
        ClientLifecycleMode::Initialize
    };
    Ok(().serve_with_lifecycle(transport, lifecycle).await?)
}

pub(crate) async fn one_call(c: &Client, call: &CallToolRequestParams) -> Result<Duration> {
    let start = Instant::now();
    let r = c.call_tool(call.clone()).await?;
    let took = start.elapsed();
    if r.is_error == Some(true) {
        anyhow::bail!("tool returned an error");
    }
    Ok(took)
}

/// Sequential latencies, interleaved: each round makes one call directly,
/// one through the gateway and one fsync probe, each on its own client, so
/// all three see the same CPU and disk conditions (this kind of virtual
/// disk changes its fsync time from one minute to the next, and a floor
/// measured minutes apart from the calls would not be the calls' floor).
async fn sequential(
    direct: &Target,
    proxy: &Target,
    via: &Target,
    probe: &mut FsyncProbe,
    n: usize,
) -> Result<Samples> {
    let (d, p, g) = (
        connect(direct).await?,
        connect(proxy).await?,
        connect(via).await?,
    );
    for _ in 0..50 {
        one_call(&d, &direct.call).await?;
        one_call(&p, &proxy.call).await?;
        one_call(&g, &via.call).await?;
    }
    let mut out = Samples::default();
    for _ in 0..n {
        out.direct.push(one_call(&d, &direct.call).await?);
        out.proxy.push(one_call(&p, &proxy.call).await?);
        out.gateway.push(one_call(&g, &via.call).await?);
        out.fsync.push(probe.once()?);
    }
    for c in [d, p, g] {
        let _ = c.cancel().await;
    }
    Ok(out)
}

/// One sequential run's latencies.
#[derive(Default)]
struct Samples {
    direct: Vec<Duration>,
    proxy: Vec<Duration>,
    gateway: Vec<Duration>,
    fsync: Vec<Duration>,
}

/// Calls per second with `clients` concurrent clients for `secs` seconds.
async fn throughput(t: &Target, clients: usize, secs: u64) -> Result<(f64, Vec<Duration>)> {
    let mut conns = Vec::new();
    for _ in 0..clients {
        let c = connect(t).await?;
        one_call(&c, &t.call).await?;
        conns.push(c);
    }
    let deadline = Instant::now() + Duration::from_secs(secs);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in conns {
        let call = t.call.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while Instant::now() < deadline {
                match one_call(&c, &call).await {
                    Ok(d) => lat.push(d),
                    Err(e) => return Err(e),
                }
            }
            let _ = c.cancel().await;
            Ok(lat)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    let elapsed = start.elapsed().as_secs_f64();
    #[expect(clippy::cast_precision_loss, reason = "call counts are small")]
    let rate = all.len() as f64 / elapsed;
    Ok((rate, all))
}

pub(crate) fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    if v.is_empty() {
        return Duration::ZERO;
    }
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "index into a short vector"
    )]
    let idx = (((v.len() - 1) as f64) * p).round() as usize;
    v.get(idx).copied().unwrap_or(Duration::ZERO)
}

/// Times write(4 KiB) + fdatasync on the audit log's disk: one fsync, the
/// floor of the gateway's added latency.
struct FsyncProbe {
    path: PathBuf,
    file: std::fs::File,
}

impl FsyncProbe {
    fn new(dir: &Path) -> Result<Self> {
        let path = dir.join("fsync-probe");
        let file = std::fs::File::create(&path)?;
        Ok(Self { path, file })
    }

    fn once(&mut self) -> Result<Duration> {
        use std::io::Seek as _;
        let start = Instant::now();
        self.file.rewind()?;
        self.file.write_all(&[0u8; 4096])?;
        self.file.sync_data()?;
        Ok(start.elapsed())
    }
}

impl Drop for FsyncProbe {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Rows in the audit log (read after the run).
fn audit_rows(path: &Path) -> u64 {
    mandate_audit::verify(path, None)
        .map(|r| r.records)
        .unwrap_or(0)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Runs the benchmark and prints a Markdown report.
pub async fn run(args: BenchArgs) -> Result<()> {
    let _ = std::fs::remove_dir_all(&args.data_dir);
    std::fs::create_dir_all(&args.data_dir)?;
    let data_dir = args.data_dir.canonicalize()?;
    if let Some(n) = args.approvals {
        return crate::bench_approvals::run(&data_dir, n.max(1)).await;
    }

    // The upstream, over Streamable HTTP: the one given, or the demo
    // server in this process.
    let upstream_url = match &args.upstream_url {
        Some(url) => url.clone(),
        None => {
            let up_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let up_addr = up_listener.local_addr()?;
            tokio::spawn(async move {
                if let Err(e) =
                    crate::demo_server::serve_http("workspace", Default::default(), up_listener)
                        .await
                {
                    eprintln!("upstream stopped: {e}");
                }
            });
            format!("http://{up_addr}/mcp")
        }
    };

    // The gateway in front of it, with the quickstart policies.
    let qs_config = crate::demo::materialise(&data_dir)?;
    let qs_dir = qs_config.parent().context("quickstart dir")?;
    // One benchmark client makes thousands of calls in its session, past
    // the quickstart's session budget of 1000: raise that one number (the
    // rule is still evaluated on every call).
    let limits = qs_dir.join("policies/40-limits.cedar");
    let text = std::fs::read_to_string(&limits)?;
    let raised = text.replace(
        "context.calls_in_session >= 1000",
        "context.calls_in_session >= 1000000000",
    );
    anyhow::ensure!(
        raised != text,
        "the session budget rule was not found in {}",
        limits.display()
    );
    std::fs::write(&limits, raised)?;
    let key_dir = data_dir.join("dev-issuer");
    generate_issuer_key(&key_dir)?;
    let key = load_issuer_key(&key_dir)?;
    let path = |p: &Path| p.display().to_string();
    let config_text = toml::to_string(&serde_json::json!({
        "server": { "data_dir": path(&data_dir) },
        "auth": { "issuers": [{
            "issuer": "mandate-dev",
            "jwks_file": path(&key_dir.join("jwks.json")),
        }] },
        "policy": { "dir": path(&qs_dir.join("policies")) },
        "upstreams": { "docs": {
            "url": upstream_url,
            "timeout_secs": 30,
            "tools": { args.tool.as_str(): "read" },
            // The default, spelled out: the provenance benchmark's
            // history is remembered as untrusted.
            "provenance": { args.tool.as_str(): "untrusted" },
        } },
    }))?;
    let cfg_path = data_dir.join("bench.toml");
    std::fs::write(&cfg_path, config_text)?;
    let (gw, gw_addr) = if args.split_cpus {
        let (child, addr) = start_pinned(&cfg_path, &data_dir).await?;
        (UnderTest::Child { _process: child }, addr)
    } else {
        let (_cfg, gw, addr) = crate::start_ephemeral(&cfg_path, &data_dir).await?;
        (UnderTest::InProcess(gw), addr)
    };
    let resource = format!("http://{gw_addr}/mcp");
    let mint: TokenSource = std::sync::Arc::new(move || {
        let args = MintArgs {
            key: key_dir.clone(),
            iss: "mandate-dev".into(),
            aud: resource.clone(),
            sub: "bench@example.com".into(),
            act: Some("bench-agent".into()),
            scope: "docs.*".into(),
            task: Some("bench".into()),
            build: None,
            sid: Some(uuid::Uuid::new_v4().to_string()),
            ttl: 3600,
        };
        sign(&key, &args)
    });

    let stateless = args.protocol == "2026-07-28";
    let call = |name: String| {
        let mut p = CallToolRequestParams::new(name);
        p.arguments = Some(args.arguments.clone());
        p
    };
    let direct = Target {
        url: upstream_url.clone(),
        token: None,
        call: call(args.tool.clone()),
        stateless,
    };
    let via = Target {
        url: format!("http://{gw_addr}/mcp"),
        token: Some(mint),
        call: call(format!("docs.{}", args.tool)),
        stateless,
    };
    if let Some(bytes) = args.provenance_history {
        return provenance::run(&via, bytes, args.sequential_calls).await;
    }
    let (proxy_process, proxy_url) = start_bare_proxy(&upstream_url, args.split_cpus).await?;
    let proxy = Target {
        url: proxy_url,
        token: None,
        call: call(args.tool.clone()),
        stateless,
    };

    eprintln!(
        "sequential run ({} rounds of: a direct call, one through a bare MCP proxy, one through Mandate, one fsync)…",
        args.sequential_calls
    );
    let mut probe = FsyncProbe::new(&data_dir)?;
    let Samples {
        direct: mut d_seq,
        proxy: mut p_seq,
        gateway: mut g_seq,
        fsync: mut f_seq,
    } = sequential(&direct, &proxy, &via, &mut probe, args.sequential_calls).await?;
    drop(probe);
    let (fsync_p50, fsync_p99) = (pct(&mut f_seq, 0.5), pct(&mut f_seq, 0.99));
    eprintln!(
        "throughput runs ({} clients, {} s each)…",
        args.concurrency, args.seconds
    );
    let (d_rate, mut d_lat) = throughput(&direct, args.concurrency, args.seconds).await?;
    let (p_rate, mut p_lat) = throughput(&proxy, args.concurrency, args.seconds).await?;
    let (g_rate, mut g_lat) = throughput(&via, args.concurrency, args.seconds).await?;
    let (appended, commits) = match &gw {
        UnderTest::InProcess(gw) => (gw.audit().appended_count(), gw.audit().commits_count()),
        UnderTest::Child { .. } => (audit_rows(&data_dir.join("audit.sqlite")), 0),
    };

    let (dp50, dp99) = (pct(&mut d_seq, 0.5), pct(&mut d_seq, 0.99));
    let (pp50, pp99) = (pct(&mut p_seq, 0.5), pct(&mut p_seq, 0.99));
    let (gp50, gp99) = (pct(&mut g_seq, 0.5), pct(&mut g_seq, 0.99));
    let add50 = ms(gp50) - ms(dp50);
    let add99 = ms(gp99) - ms(dp99);
    let own50 = ms(gp50) - ms(pp50);
    let own99 = ms(gp99) - ms(pp99);
    println!("## Gateway vs direct upstream (one run, `mandate bench`)\n");
    println!(
        "| measure | direct | bare MCP proxy | through Mandate | Mandate vs direct | Mandate vs bare proxy |"
    );
    println!("|---|---|---|---|---|---|");
    println!(
        "| sequential p50 latency | {:.3} ms | {:.3} ms | {:.3} ms | {:+.3} ms = {:.2} fsync p50 | {:+.3} ms |",
        ms(dp50),
        ms(pp50),
        ms(gp50),
        add50,
        add50 / ms(fsync_p50).max(1e-9),
        own50
    );
    println!(
        "| sequential p99 latency | {:.3} ms | {:.3} ms | {:.3} ms | {:+.3} ms = {:.2} fsync p99 | {:+.3} ms |",
        ms(dp99),
        ms(pp99),
        ms(gp99),
        add99,
        add99 / ms(fsync_p99).max(1e-9),
        own99
    );
    println!(
        "| throughput, {} clients | {:.0} calls/s | {:.0} calls/s | {:.0} calls/s | {:.2}× | {:.2}× |",
        args.concurrency,
        d_rate,
        p_rate,
        g_rate,
        g_rate / d_rate.max(1e-9),
        g_rate / p_rate.max(1e-9)
    );
    println!(
        "| p50 / p99 under load | {:.3} / {:.3} ms | {:.3} / {:.3} ms | {:.3} / {:.3} ms | | |",
        ms(pct(&mut d_lat, 0.5)),
        ms(pct(&mut d_lat, 0.99)),
        ms(pct(&mut p_lat, 0.5)),
        ms(pct(&mut p_lat, 0.99)),
        ms(pct(&mut g_lat, 0.5)),
        ms(pct(&mut g_lat, 0.99))
    );
    println!(
        "\nThe bare MCP proxy is the same SDK (`rmcp`) in both roles, as in Mandate, with nothing else: no authentication, policy or audit. \"Mandate vs bare proxy\" is what Mandate's own checks and durable records add."
    );
    println!(
        "\nfsync (4 KiB write + fdatasync) on the audit disk, interleaved with the sequential calls: p50 {:.3} ms, p99 {:.3} ms.",
        ms(fsync_p50),
        ms(fsync_p99)
    );
    if commits > 0 {
        println!(
            "Audit: {appended} records in {commits} commits ({:.1} records per fsync'd transaction).",
            {
                #[expect(clippy::cast_precision_loss, reason = "counts")]
                let r = appended as f64 / (commits as f64);
                r
            }
        );
    } else {
        println!("Audit: {appended} records, every decision durable before forwarding.");
    }
    println!(
        "Clients speak MCP {}; each keeps its HTTP connection alive.",
        args.protocol
    );
    match &args.upstream_url {
        Some(url) => println!("Upstream: {url}, tool `{}`.", args.tool),
        None => println!(
            "Upstream: the built-in demo server (its `{}` does no work: the harshest case for the ratio).",
            args.tool
        ),
    }
    if args.split_cpus && args.upstream_url.is_some() {
        println!(
            "Gateway and bare proxy pinned to CPU 1; load generator pinned to CPU 0 (the upstream runs where it was started)."
        );
    } else if args.split_cpus {
        println!(
            "Gateway and bare proxy pinned to CPU 1; load generator and upstream pinned to CPU 0."
        );
    } else {
        println!("Gateway, bare proxy, load generator and upstream share every CPU.");
    }
    drop(gw);
    drop(proxy_process);
    println!(
        "Added latency vs goal: p50 {:+.3} ms beyond one fsync (goal ≤ 0.5), p99 {:+.3} ms beyond one fsync (goal ≤ 3).",
        add50 - ms(fsync_p50),
        add99 - ms(fsync_p99)
    );
    println!(
        "Of that, a bare MCP proxy on the same SDK already adds p50 {:+.3} ms, p99 {:+.3} ms; Mandate's own work adds p50 {:+.3} ms, p99 {:+.3} ms beyond one fsync.",
        ms(pp50) - ms(dp50),
        ms(pp99) - ms(dp99),
        own50 - ms(fsync_p50),
        own99 - ms(fsync_p99)
    );
    Ok(())
}
