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
//! With `--peer` other gateways already running on loopback join the same
//! interleaved run, and every gateway's CPU per call is read from its
//! process ([`peers`]).

// `--provenance-history`: a child module, since it drives the same
// clients as the main benchmark (`Target`, `connect`, `one_call`).
#[path = "bench_provenance.rs"]
mod provenance;
// `--peer`: other gateways in the same run, and CPU per call.
#[path = "bench_peers.rs"]
mod peers;

pub use peers::Peer;

use crate::devtoken::{MintArgs, generate_issuer_key, load_issuer_key, sign};
use anyhow::{Context, Result};
use rmcp::model::{CallToolRequestParams, ClientConfig, ProtocolVersion};
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
    /// Also drive this gateway, already running on loopback, with the same
    /// client, tool and arguments, interleaved with the others:
    /// `NAME=URL[,tool=NAME][,token=FILE][,pid=PID]` (the tool's name there
    /// if it renames it, a file holding the bearer token its clients send,
    /// its process for CPU per call). Repeatable. Mandate and the bare proxy
    /// then run as processes of their own too, so their CPU is read alike.
    #[arg(long = "peer", value_name = "NAME=URL[,…]", value_parser = peers::parse_peer)]
    pub peers: Vec<Peer>,
    /// The upstream's process (with `--upstream-url`), to report its CPU
    /// per call during each target's throughput runs.
    #[arg(long, value_name = "PID")]
    pub upstream_pid: Option<u32>,
    /// Throughput runs per target, taken round-robin, `--seconds` each.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=100))]
    pub rounds: u16,
}

fn parse_arguments(s: &str) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    match serde_json::from_str(s) {
        Ok(serde_json::Value::Object(map)) => Ok(map),
        Ok(_) => Err("the arguments must be a JSON object".into()),
        Err(e) => Err(format!("the arguments are not JSON: {e}")),
    }
}

/// The gateway under test: in this process, or a child process.
enum UnderTest {
    InProcess(std::sync::Arc<mandate_gateway::Gateway>),
    /// Held so the child process is killed when the run ends.
    Child {
        process: tokio::process::Child,
    },
}

/// A free local address.
fn free_addr() -> Result<std::net::SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// Runs this executable with `args` and `env` as a child process, pinned
/// to CPU 1 if `pin`.
fn spawn_child(
    args: &[&std::ffi::OsStr],
    env: &[(&str, String)],
    pin: bool,
) -> Result<tokio::process::Child> {
    let exe = std::env::current_exe()?;
    let mut cmd = if pin {
        let mut c = tokio::process::Command::new("taskset");
        c.args(["-c", "1"]).arg(exe);
        c
    } else {
        tokio::process::Command::new(exe)
    };
    cmd.args(args)
        .env("MANDATE_LOG", "warn")
        .envs(env.iter().cloned())
        .kill_on_drop(true)
        .spawn()
        .context("cannot start the child process (pinning needs taskset, from util-linux)")
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
    anyhow::bail!("the {what} did not become healthy")
}

/// Starts `mandate serve` for `cfg_path` on a free port as a child process;
/// with `split`, pinned to CPU 1, and this process pinned to CPU 0.
async fn start_gateway_process(
    cfg_path: &Path,
    data_dir: &Path,
    split: bool,
) -> Result<(tokio::process::Child, std::net::SocketAddr)> {
    let addr = free_addr()?;
    let listen = addr.to_string();
    let child = spawn_child(
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
        split,
    )?;
    if split {
        let pinned = std::process::Command::new("taskset")
            .args(["-a", "-cp", "0", &std::process::id().to_string()])
            .output()?;
        if !pinned.status.success() {
            anyhow::bail!("taskset could not pin the load generator to CPU 0");
        }
    }
    wait_until_up(&format!("http://{addr}/healthz"), "gateway", true).await?;
    Ok((child, addr))
}

/// Starts the bare MCP proxy in front of `upstream_url`: as a child process
/// if `process` (pinned to CPU 1 with `split`), in this process otherwise.
async fn start_bare_proxy(
    upstream_url: &str,
    process: bool,
    split: bool,
) -> Result<(Option<tokio::process::Child>, String)> {
    if process || split {
        let addr = free_addr()?.to_string();
        let child = spawn_child(
            &[
                "bench-proxy".as_ref(),
                "--listen".as_ref(),
                addr.as_ref(),
                "--upstream".as_ref(),
                upstream_url.as_ref(),
            ],
            &[],
            split,
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
    /// The target's name in the report and in errors.
    pub(crate) label: String,
    pub(crate) url: String,
    pub(crate) token: Option<TokenSource>,
    /// The call every client makes (the same on both paths but the name).
    pub(crate) call: CallToolRequestParams,
    /// Speak the stateless 2026-07-28 revision instead of 2025-11-25.
    pub(crate) stateless: bool,
    /// The gateway's process, for CPU per call (none for direct, or when it
    /// runs inside this process).
    pub(crate) pid: Option<u32>,
}

pub(crate) type Client = rmcp::service::RunningService<rmcp::RoleClient, ClientConfig>;

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
        mandate_gateway::TraceHttpClient(reqwest::Client::new()),
        cfg,
    );
    // A session-era client offers 2025-11-25 in `initialize` (the SDK's
    // default offer is its latest revision, which a strict server refuses
    // from a client that sends no matching protocol header).
    let (version, lifecycle) = if t.stateless {
        let v = ProtocolVersion::V_2026_07_28;
        let preferred_versions = vec![v.clone()];
        (v, ClientLifecycleMode::Discover { preferred_versions })
    } else {
        (
            ProtocolVersion::V_2025_11_25,
            ClientLifecycleMode::Initialize,
        )
    };
    let client = ClientConfig::default().with_protocol_version(version);
    Ok(client.serve_with_lifecycle(transport, lifecycle).await?)
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

/// Sequential latencies, interleaved: each round makes one call to every
/// target in turn (direct, the bare proxy, Mandate, any peers) and one
/// fsync probe, each target on its own client, so all see the same CPU and
/// disk conditions (this kind of virtual disk changes its fsync time from
/// one minute to the next, and a floor measured minutes apart from the
/// calls would not be the calls' floor).
async fn sequential(targets: &[&Target], probe: &mut FsyncProbe, n: usize) -> Result<Samples> {
    let mut clients = Vec::with_capacity(targets.len());
    for t in targets {
        clients.push(connect(t).await.with_context(|| t.label.clone())?);
    }
    for _ in 0..50 {
        for (c, t) in clients.iter().zip(targets) {
            one_call(c, &t.call)
                .await
                .with_context(|| t.label.clone())?;
        }
    }
    let mut out = Samples {
        calls: vec![Vec::with_capacity(n); targets.len()],
        fsync: Vec::with_capacity(n),
    };
    for _ in 0..n {
        for ((c, t), v) in clients.iter().zip(targets).zip(out.calls.iter_mut()) {
            v.push(
                one_call(c, &t.call)
                    .await
                    .with_context(|| t.label.clone())?,
            );
        }
        out.fsync.push(probe.once()?);
    }
    for c in clients {
        let _ = c.cancel().await;
    }
    Ok(out)
}

/// One sequential run's latencies: per target, in the targets' order.
struct Samples {
    calls: Vec<Vec<Duration>>,
    fsync: Vec<Duration>,
}

/// One throughput run's result.
struct Throughput {
    calls: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
    /// CPU time of the target's gateway process, and of the upstream,
    /// over the run (when their processes are known).
    cpu: Option<Duration>,
    upstream_cpu: Option<Duration>,
}

/// `clients` concurrent clients calling `t` for `secs` seconds. The CPU
/// clocks are read once every client is connected and warm, and again when
/// the last call has returned (before the clients close their sessions).
async fn throughput(
    t: &Target,
    clients: usize,
    secs: u64,
    clock: Option<&peers::CpuClock>,
    upstream_pid: Option<u32>,
) -> Result<Throughput> {
    let mut conns = Vec::new();
    for _ in 0..clients {
        let c = connect(t).await.with_context(|| t.label.clone())?;
        one_call(&c, &t.call)
            .await
            .with_context(|| t.label.clone())?;
        conns.push(c);
    }
    let read = |pid: Option<u32>| -> Result<Option<Duration>> {
        match (clock, pid) {
            (Some(clock), Some(pid)) => clock.of(pid).map(Some),
            _ => Ok(None),
        }
    };
    let (cpu0, up0) = (read(t.pid)?, read(upstream_pid)?);
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
            Ok((c, lat))
        }));
    }
    let mut latencies = Vec::new();
    let mut done = Vec::new();
    for task in tasks {
        let (c, lat) = task.await?.with_context(|| t.label.clone())?;
        latencies.extend(lat);
        done.push(c);
    }
    let elapsed = start.elapsed();
    let (cpu1, up1) = (read(t.pid)?, read(upstream_pid)?);
    for c in done {
        let _ = c.cancel().await;
    }
    let delta =
        |a: Option<Duration>, b: Option<Duration>| a.zip(b).map(|(a, b)| b.saturating_sub(a));
    Ok(Throughput {
        calls: latencies.len(),
        elapsed,
        latencies,
        cpu: delta(cpu0, cpu1),
        upstream_cpu: delta(up0, up1),
    })
}

/// Every target's throughput runs, `rounds` of them taken round-robin,
/// summed per target.
async fn throughput_rounds(
    targets: &[&Target],
    args: &BenchArgs,
    clock: Option<&peers::CpuClock>,
) -> Result<Vec<Throughput>> {
    let mut total: Vec<Throughput> = targets
        .iter()
        .map(|_| Throughput {
            calls: 0,
            elapsed: Duration::ZERO,
            latencies: Vec::new(),
            cpu: None,
            upstream_cpu: None,
        })
        .collect();
    let add = |a: Option<Duration>, b: Option<Duration>| match (a, b) {
        (Some(a), Some(b)) => Some(a + b),
        (a, b) => a.or(b),
    };
    for _ in 0..args.rounds {
        for (t, sum) in targets.iter().zip(total.iter_mut()) {
            let r = throughput(t, args.concurrency, args.seconds, clock, args.upstream_pid).await?;
            sum.calls += r.calls;
            sum.elapsed += r.elapsed;
            sum.latencies.extend(r.latencies);
            sum.cpu = add(sum.cpu, r.cpu);
            sum.upstream_cpu = add(sum.upstream_cpu, r.upstream_cpu);
        }
    }
    Ok(total)
}

impl Throughput {
    fn rate(&self) -> f64 {
        #[expect(clippy::cast_precision_loss, reason = "call counts are small")]
        let calls = self.calls as f64;
        calls / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// CPU per call of `cpu`, over this target's calls.
    fn per_call(&self, cpu: Option<Duration>) -> Option<Duration> {
        let calls = u32::try_from(self.calls).ok().filter(|&n| n > 0)?;
        cpu.map(|c| c / calls)
    }
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
    // With peers, Mandate runs as a process of its own (pinned or not), so
    // its CPU is read as the peers' is.
    let separate = args.split_cpus || !args.peers.is_empty();
    let (gw, gw_addr) = if separate {
        let (child, addr) = start_gateway_process(&cfg_path, &data_dir, args.split_cpus).await?;
        (UnderTest::Child { process: child }, addr)
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
        label: "direct".into(),
        url: upstream_url.clone(),
        token: None,
        call: call(args.tool.clone()),
        stateless,
        pid: None,
    };
    let via = Target {
        label: "Mandate".into(),
        url: format!("http://{gw_addr}/mcp"),
        token: Some(mint),
        call: call(format!("docs.{}", args.tool)),
        stateless,
        pid: match &gw {
            UnderTest::Child { process } => process.id(),
            UnderTest::InProcess(_) => None,
        },
    };
    if let Some(bytes) = args.provenance_history {
        return provenance::run(&via, bytes, args.sequential_calls).await;
    }
    let (proxy_process, proxy_url) =
        start_bare_proxy(&upstream_url, separate, args.split_cpus).await?;
    let proxy = Target {
        label: "bare MCP proxy".into(),
        url: proxy_url,
        token: None,
        call: call(args.tool.clone()),
        stateless,
        pid: proxy_process.as_ref().and_then(tokio::process::Child::id),
    };
    let mut peer_targets = Vec::with_capacity(args.peers.len());
    for p in &args.peers {
        let token: Option<TokenSource> = match &p.token {
            Some(file) => {
                let text = std::fs::read_to_string(file)
                    .with_context(|| format!("peer {}: cannot read {}", p.name, file.display()))?;
                let text = text.trim().to_owned();
                anyhow::ensure!(!text.is_empty(), "peer {}: the token file is empty", p.name);
                Some(std::sync::Arc::new(move || Ok(text.clone())))
            }
            None => None,
        };
        peer_targets.push(Target {
            label: p.name.clone(),
            url: p.url.clone(),
            token,
            call: call(p.tool.clone().unwrap_or_else(|| args.tool.clone())),
            stateless,
            pid: p.pid,
        });
    }
    let mut targets = vec![&direct, &proxy, &via];
    targets.extend(peer_targets.iter());
    let clock = if separate || args.upstream_pid.is_some() {
        Some(peers::CpuClock::new()?)
    } else {
        None
    };
    let load_before = peers::load_average();

    eprintln!(
        "sequential run ({} rounds of: one call to each of {}, one fsync)…",
        args.sequential_calls,
        targets
            .iter()
            .map(|t| t.label.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut probe = FsyncProbe::new(&data_dir)?;
    let Samples {
        calls: mut seq,
        fsync: mut f_seq,
    } = sequential(&targets, &mut probe, args.sequential_calls).await?;
    drop(probe);
    let (fsync_p50, fsync_p99) = (pct(&mut f_seq, 0.5), pct(&mut f_seq, 0.99));
    eprintln!(
        "throughput runs ({} clients, {} round(s) of {} s per target)…",
        args.concurrency, args.rounds, args.seconds
    );
    let mut runs = throughput_rounds(&targets, &args, clock.as_ref()).await?;
    let load_after = peers::load_average();
    let (appended, commits) = match &gw {
        UnderTest::InProcess(gw) => (gw.audit().appended_count(), gw.audit().commits_count()),
        UnderTest::Child { .. } => (audit_rows(&data_dir.join("audit.sqlite")), 0),
    };

    let mut p50s = Vec::with_capacity(seq.len());
    let mut p99s = Vec::with_capacity(seq.len());
    for v in &mut seq {
        p50s.push(pct(v, 0.5));
        p99s.push(pct(v, 0.99));
    }
    let at = |v: &[Duration], i: usize| v.get(i).copied().unwrap_or_default();
    let (dp50, dp99) = (at(&p50s, 0), at(&p99s, 0));
    let (pp50, pp99) = (at(&p50s, 1), at(&p99s, 1));
    let (gp50, gp99) = (at(&p50s, 2), at(&p99s, 2));
    let rates: Vec<f64> = runs.iter().map(Throughput::rate).collect();
    let rate = |i: usize| rates.get(i).copied().unwrap_or_default();
    let (d_rate, p_rate, g_rate) = (rate(0), rate(1), rate(2));
    let under_load: Vec<(Duration, Duration)> = runs
        .iter_mut()
        .map(|r| (pct(&mut r.latencies, 0.5), pct(&mut r.latencies, 0.99)))
        .collect();
    let ul = |i: usize| under_load.get(i).copied().unwrap_or_default();
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
        ms(ul(0).0),
        ms(ul(0).1),
        ms(ul(1).0),
        ms(ul(1).1),
        ms(ul(2).0),
        ms(ul(2).1)
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
    let peers_note = if args.peers.is_empty() {
        ""
    } else {
        " Peers run where their starter put them."
    };
    if args.split_cpus && args.upstream_url.is_some() {
        println!(
            "Gateway and bare proxy pinned to CPU 1; load generator pinned to CPU 0 (the upstream runs where it was started).{peers_note}"
        );
    } else if args.split_cpus {
        println!(
            "Gateway and bare proxy pinned to CPU 1; load generator and upstream pinned to CPU 0.{peers_note}"
        );
    } else if separate {
        println!(
            "Gateway and bare proxy run as processes of their own; every process shares every CPU.{peers_note}"
        );
    } else {
        println!("Gateway, bare proxy, load generator and upstream share every CPU.");
    }
    println!("Load average (1 min) at the start / end of the run: {load_before} / {load_after}.");
    if !args.peers.is_empty() || clock.is_some() {
        let rows: Vec<peers::Row> = targets
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let run = runs.get(i);
                peers::Row {
                    name: t.label.clone(),
                    p50: at(&p50s, i),
                    p99: at(&p99s, i),
                    rate: rate(i),
                    load_p50: ul(i).0,
                    load_p99: ul(i).1,
                    cpu: run.and_then(|r| r.per_call(r.cpu)),
                    upstream_cpu: run.and_then(|r| r.per_call(r.upstream_cpu)),
                }
            })
            .collect();
        peers::report(&rows, args.concurrency, args.rounds, args.seconds);
    }
    drop(gw);
    drop(proxy_process);
    println!(
        "\nAdded latency vs goal: p50 {:+.3} ms beyond one fsync (goal ≤ 0.5), p99 {:+.3} ms beyond one fsync (goal ≤ 3).",
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
