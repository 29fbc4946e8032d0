//! `mandate`: the Zero Trust control plane for AI agents, as one binary.

mod audit_cli;
#[cfg(feature = "dev")]
mod bench;
#[cfg(feature = "dev")]
mod bench_approvals;
#[cfg(feature = "dev")]
mod bench_proxy;
mod broker_cli;
mod demo;
mod demo_server;
mod devtoken;
mod evidence;
mod init;
mod ops;
mod policy_args;
mod reload;
mod signer;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use config::{Config, Overrides};
use mandate::{audit_config, broker_config, config, env, telemetry};
use mandate_audit::AuditLog;
use mandate_authn::Authenticator;
use mandate_gateway::Gateway;
use mandate_policy::PolicyEngine;
use std::path::PathBuf;
use std::sync::Arc;

/// mimalloc: the gateway's per-call work is allocation-heavy (JSON, HTTP,
/// Cedar requests); measured with `mandate bench` (docs/BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "mandate",
    version,
    about = "Zero Trust control plane for AI agents: an MCP gateway that authenticates, decides and audits every tool call."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the gateway (MCP over Streamable HTTP at /mcp).
    Serve {
        /// Config file.
        #[arg(long, env = env::CONFIG, default_value = "mandate.toml")]
        config: PathBuf,
        /// Listen address (overrides server.listen).
        #[arg(long)]
        listen: Option<String>,
        /// Data directory (overrides server.data_dir).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Validate config, policies and upstream reachability, then exit.
        #[arg(long)]
        check: bool,
    },
    /// Serve the gateway to one local agent over stdio (token from MANDATE_TOKEN).
    Gateway {
        /// Use stdio (the only mode of this subcommand).
        #[arg(long, required = true)]
        stdio: bool,
        /// Config file.
        #[arg(long, env = env::CONFIG, default_value = "mandate.toml")]
        config: PathBuf,
        /// Data directory.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Run the guided demo: gateway, demo upstreams and a scripted agent.
    Demo {
        /// Where embedded state goes.
        #[arg(long, default_value = "mandate-demo-data")]
        data_dir: PathBuf,
    },
    /// Policy tools.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Draft a config and starter policies for one upstream MCP server:
    /// each tool's class is proposed from its annotations, for review.
    Init(init::InitArgs),
    /// The upstreams in a config: `mandate upstream tools` lists every
    /// tool with its annotations and class.
    Upstream {
        #[command(subcommand)]
        command: UpstreamCommand,
    },
    /// Audit log tools: verify, replay, export, checkpoint.
    Audit {
        #[command(subcommand)]
        command: audit_cli::AuditCommand,
    },
    /// Development signing keys for a local token issuer.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Development tokens signed by a local key (for trying Mandate out).
    #[cfg(feature = "dev")]
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Kill switch: revoke a user, agent, build, task, session or token now.
    Revoke {
        /// user | agent | build | task | session | token
        kind: String,
        /// The user `sub`, agent, build hash, task id, session id or token `jti`.
        value: String,
        /// Why (recorded, and shown to the denied agent's operator).
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        api: ops::ApiArgs,
    },
    /// List or lift kill switches.
    Revocations {
        #[command(subcommand)]
        command: ops::RevocationsCommand,
        #[command(flatten)]
        api: ops::ApiArgs,
    },
    /// Human approval of held tool calls: list, show, approve, deny.
    Approvals {
        #[command(subcommand)]
        command: ops::ApprovalsCommand,
        #[command(flatten)]
        api: ops::ApiArgs,
    },
    /// Why a call was decided as it was: `mandate decision show ID` (the id
    /// an agent is given with a refusal).
    Decision {
        #[command(subcommand)]
        command: ops::DecisionCommand,
        #[command(flatten)]
        api: ops::ApiArgs,
    },
    /// Pinned upstream tools: list, approve (lift a quarantine).
    Tools {
        #[command(subcommand)]
        command: ops::ToolsCommand,
        #[command(flatten)]
        api: ops::ApiArgs,
    },
    /// The two-person change gate: propose, approve, activate.
    Change {
        #[command(subcommand)]
        command: ops::ChangeCommand,
        #[command(flatten)]
        api: ops::ApiArgs,
    },
    /// Print the canonical build hash of (model, system prompt, tool manifest).
    BuildHash(broker_cli::BuildHashArgs),
    /// Broker tasks: start, complete, cancel, list (completing revokes the task's tokens).
    Task {
        #[command(subcommand)]
        command: broker_cli::TaskCommand,
        #[command(flatten)]
        api: ops::ApiArgs,
    },
    /// End-to-end load benchmark: gateway vs direct upstream and vs a bare
    /// MCP proxy on the same SDK, as ratios.
    #[cfg(feature = "dev")]
    Bench(bench::BenchArgs),
    /// The bare MCP proxy `mandate bench` compares the gateway with (no
    /// authentication, policy or audit: a benchmark baseline only).
    #[cfg(feature = "dev")]
    #[command(hide = true)]
    BenchProxy {
        /// Serve Streamable HTTP on this (loopback) address.
        #[arg(long)]
        listen: std::net::SocketAddr,
        /// The upstream's Streamable HTTP URL.
        #[arg(long)]
        upstream: String,
    },
    /// The demo MCP server, as a process of its own (the quickstart config
    /// and the end-to-end tests launch it; `mandate demo` serves it in
    /// process).
    #[cfg(feature = "dev")]
    #[command(hide = true)]
    DemoServer {
        /// `workspace` or `bank`.
        #[arg(long)]
        profile: String,
        /// Append every received call to this JSON Lines file.
        #[arg(long)]
        record: Option<PathBuf>,
        /// Serve Streamable HTTP on this address instead of stdio.
        #[arg(long)]
        http: Option<String>,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Validate a policy directory against its schema.
    Check {
        /// Policy directory.
        #[arg(long, default_value = "examples/quickstart/policies")]
        dir: PathBuf,
    },
    /// Run policy test cases.
    Test {
        /// Policy directory.
        #[arg(long, default_value = "examples/quickstart/policies")]
        dir: PathBuf,
        /// Directory of test files (default: DIR/tests).
        #[arg(long)]
        tests: Option<PathBuf>,
    },
    /// Print the schema's `Args` record derived from the upstreams' tool
    /// input schemas (connects to every upstream in the config).
    Args {
        /// Config file.
        #[arg(long, env = env::CONFIG, default_value = "mandate.toml")]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum UpstreamCommand {
    /// Connect to every upstream in the config and list its tools: exposed
    /// name, the class the config gives it (or "unclassified": denied), the
    /// tool's own annotations and its description. Writes nothing.
    Tools {
        /// Config file.
        #[arg(long, env = env::CONFIG, default_value = "mandate.toml")]
        config: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Generate an Ed25519 issuer key: DIR/issuer.pem and DIR/jwks.json.
    Generate {
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
    },
    /// Rotate the broker's signing key (the old key stays published until its tokens expire).
    Rotate {
        /// Config file.
        #[arg(long, env = env::CONFIG, default_value = "mandate.toml")]
        config: PathBuf,
        /// Data directory (overrides server.data_dir).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
}

#[cfg(feature = "dev")]
#[derive(Subcommand)]
enum TokenCommand {
    /// Mint a composite token (sub + act + scope + task + build + sid).
    Mint(devtoken::MintArgs),
}

/// Logs to stderr (filtered by `MANDATE_LOG`) and, with `telemetry`,
/// exports the gateway's trace spans too (their own filter: telemetry
/// does not depend on the log level).
fn init_logging(default: &str, telemetry: Option<&telemetry::Telemetry>) {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::{EnvFilter, Layer as _};
    let filter = EnvFilter::try_from_env(env::LOG).unwrap_or_else(|_| EnvFilter::new(default));
    let json = std::env::var(env::LOG_FORMAT).is_ok_and(|v| v == "json");
    // Colour only for a person at a terminal: log files and journals get
    // plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let fmt = if json {
        fmt.json().boxed()
    } else {
        fmt.boxed()
    };
    let registry = tracing_subscriber::registry().with(fmt.with_filter(filter));
    match telemetry {
        // No OpenTelemetry layer at all when telemetry is off.
        None => registry.init(),
        Some(t) => registry.with(t.layer()).init(),
    }
}

/// Starts the trace exporter when `[telemetry]` turns it on, and logging.
fn init_logging_for(cfg: &Config) -> Result<Option<telemetry::Telemetry>> {
    let telemetry = cfg
        .telemetry
        .as_ref()
        .map(telemetry::Telemetry::start)
        .transpose()?;
    init_logging(DEFAULT_LOG, telemetry.as_ref());
    if let Some(t) = &cfg.telemetry {
        tracing::info!(
            endpoint = %t.traces_url,
            service = %t.service_name,
            sample_ratio = t.sample_ratio,
            "exporting traces over OTLP/HTTP"
        );
    }
    Ok(telemetry)
}

/// The log filter of the long-running commands.
const DEFAULT_LOG: &str = "info,rmcp=warn";

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {
        // The demo prints its own report; its demo servers only log problems.
        Command::Demo { .. } => {}
        #[cfg(feature = "dev")]
        Command::DemoServer { .. } => init_logging("warn", None),
        // These read their configuration first (it may turn traces on).
        Command::Serve { check: false, .. } | Command::Gateway { .. } => {}
        _ => init_logging(DEFAULT_LOG, None),
    }
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<std::process::ExitCode> {
    use std::process::ExitCode;
    match cli.command {
        Command::Serve {
            config,
            listen,
            data_dir,
            check,
        } => {
            let overrides = Overrides {
                listen,
                data_dir,
                public_url: None,
            };
            let cfg = Config::load(&config, &overrides)?;
            if check {
                check_config(&cfg).await?;
                println!("configuration OK");
                return Ok(ExitCode::SUCCESS);
            }
            let telemetry = init_logging_for(&cfg)?;
            let served = serve(cfg, config, overrides).await;
            if let Some(t) = telemetry {
                t.shutdown().await;
            }
            served?;
        }
        Command::Gateway {
            stdio: _,
            config,
            data_dir,
        } => {
            let cfg = Config::load(
                &config,
                &Overrides {
                    data_dir,
                    ..Default::default()
                },
            )?;
            let token = std::env::var(env::TOKEN)
                .with_context(|| format!("{} must hold the agent's bearer token", env::TOKEN))?;
            let telemetry = init_logging_for(&cfg)?;
            let gw = build_gateway(&cfg).await?;
            // Refuse to start with a token that does not verify now.
            gw.authn()
                .verify(&token)
                .await
                .map_err(|e| anyhow::anyhow!("{}: {}", env::TOKEN, e.description()))?;
            let handler = mandate_gateway::handler::GatewayHandler::new(
                gw,
                mandate_gateway::handler::PrincipalSource::Token(token.into()),
            );
            use rmcp::ServiceExt as _;
            let running = handler.serve(rmcp::transport::stdio()).await?;
            let waited = running.waiting().await;
            if let Some(t) = telemetry {
                t.shutdown().await;
            }
            waited?;
        }
        Command::Demo { data_dir } => return demo::run(data_dir).await,
        Command::Policy { command } => match command {
            PolicyCommand::Check { dir } => match PolicyEngine::check_dir(&dir) {
                Ok(summary) => println!("{}: {summary}", dir.display()),
                Err(e) => {
                    eprintln!("{}: {e}", dir.display());
                    return Ok(ExitCode::FAILURE);
                }
            },
            PolicyCommand::Args { config } => {
                let cfg = Config::load(&config, &Overrides::default())?;
                let (_dir, _scratch, gw) = scratch_gateway(&cfg).await?;
                let tools = gw.catalogue().await.map_err(|e| anyhow::anyhow!("{e}"))?;
                let schemas: Vec<(String, serde_json::Value)> = tools
                    .into_iter()
                    .filter(|(_, class, _)| class.is_some())
                    .map(|(name, _, tool)| {
                        (
                            name,
                            serde_json::Value::Object((*tool.input_schema).clone()),
                        )
                    })
                    .collect();
                print!(
                    "{}",
                    policy_args::render(schemas.iter().map(|(n, s)| (n.as_str(), s)))
                );
            }
            PolicyCommand::Test { dir, tests } => {
                let engine = PolicyEngine::load_dir(&dir)?;
                let tests = tests.unwrap_or_else(|| dir.join("tests"));
                let report = mandate_policy::run_tests(&engine, &tests)?;
                println!("{report}");
                if !report.all_passed() {
                    return Ok(ExitCode::FAILURE);
                }
            }
        },
        Command::Audit { command } => return audit_cli::run(command).await,
        Command::Keys {
            command: KeysCommand::Generate { out },
        } => {
            let key = devtoken::generate_issuer_key(&out)?;
            println!(
                "wrote {} and {} (kid {})",
                out.join("issuer.pem").display(),
                out.join("jwks.json").display(),
                key.kid
            );
        }
        Command::Keys {
            command: KeysCommand::Rotate { config, data_dir },
        } => {
            let cfg = Config::load(
                &config,
                &Overrides {
                    data_dir,
                    ..Default::default()
                },
            )?;
            broker_cli::rotate(&cfg)?;
        }
        Command::BuildHash(args) => broker_cli::build_hash(&args)?,
        Command::Task { command, api } => broker_cli::task(&api, command).await?,
        #[cfg(feature = "dev")]
        Command::Token {
            command: TokenCommand::Mint(args),
        } => println!("{}", devtoken::mint(&args)?),
        Command::Revoke {
            kind,
            value,
            reason,
            api,
        } => ops::revoke(&api, &kind, &value, reason).await?,
        Command::Revocations { command, api } => ops::revocations(&api, command).await?,
        Command::Change { command, api } => ops::change(&api, command).await?,
        Command::Approvals { command, api } => ops::approvals(&api, command).await?,
        Command::Tools { command, api } => ops::tools(&api, command).await?,
        Command::Decision { command, api } => ops::decision(&api, command).await?,
        Command::Upstream {
            command: UpstreamCommand::Tools { config, json },
        } => upstream_tools(&config, json).await?,
        Command::Init(args) => init::run(&args).await?,
        #[cfg(feature = "dev")]
        Command::Bench(args) => bench::run(args).await?,
        #[cfg(feature = "dev")]
        Command::BenchProxy { listen, upstream } => {
            // An unauthenticated proxy: a benchmark baseline on loopback only.
            anyhow::ensure!(
                listen.ip().is_loopback(),
                "the benchmark's bare proxy listens on loopback only"
            );
            let listener = tokio::net::TcpListener::bind(listen).await?;
            bench_proxy::serve(listener, upstream).await?;
        }
        #[cfg(feature = "dev")]
        Command::DemoServer {
            profile,
            record,
            http,
        } => demo_server::run(&profile, record, http).await?,
    }
    Ok(ExitCode::SUCCESS)
}

/// Builds the planes from config: authn, policy, audit, gateway.
async fn build_gateway(cfg: &Config) -> Result<Arc<Gateway>> {
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("cannot create data dir {}", cfg.data_dir.display()))?;
    broker_cli::prepare_keys(cfg)?;
    for issuer in &cfg.authn.issuers {
        if let mandate_authn::JwksSource::File(path) = &issuer.jwks
            && !path.exists()
        {
            let dir = path.parent().unwrap_or(std::path::Path::new("."));
            bail!(
                "issuer {:?}: JWKS file {} does not exist. For a local development issuer run:\n  mandate keys generate --out {}",
                issuer.issuer,
                path.display(),
                dir.display()
            );
        }
    }
    // Replicas sharing a control store take turns signing the shared
    // log's periodic checkpoints (`signer.rs`): the log's own timer is off.
    let shared = cfg.control.location.is_shared();
    let audit = if shared {
        let mut settings = cfg.audit.clone();
        settings.checkpoint_interval = None;
        settings.open_log()?
    } else {
        cfg.audit.open_log()?
    };
    let control = Arc::new(cfg.open_control().await?);
    if control.is_shared() {
        // Revocations and ceilings made on other replicas reach this one.
        let _refresh = control.spawn_refresh();
        tracing::info!(store = %cfg.control.location, "control store shared with other replicas");
    }
    // Agents' scope ceilings narrow every principal inside verification.
    let authn = Authenticator::new(cfg.authn.clone())
        .await
        .map_err(|e| anyhow::anyhow!("token issuers: {e}"))?
        .with_ceilings(control.clone());
    let operator_authn = Authenticator::new(cfg.operator_authn())
        .await
        .map_err(|e| anyhow::anyhow!("token issuers (operators): {e}"))?;
    let policy_dir = if cfg.gateway.change_gate {
        gated_policy_dir(cfg, &control, &audit).await?
    } else {
        cfg.policy_dir.clone()
    };
    let policy = PolicyEngine::load_dir(&policy_dir)
        .map_err(|e| anyhow::anyhow!("policies in {}: {e}", policy_dir.display()))?;
    policy.set_directory(directory(cfg));
    let gw = Gateway::new(
        cfg.gateway.clone(),
        mandate_gateway::Planes {
            authn: Arc::new(authn),
            operator_authn: Arc::new(operator_authn),
            policy: Arc::new(policy),
            audit,
            control,
            clock: mandate_core::Clock::system(),
        },
    );
    // Budgets survive restarts: replay the last day's decisions.
    let since = gw.clock().now_ms() - USAGE_WINDOW_MS;
    let records = mandate_audit::read_calls_since(cfg.audit_store(), since)
        .map_err(|e| anyhow::anyhow!("audit log {}: {e}", cfg.audit_store()))?;
    let restored = gw.restore_usage(&records);
    if restored > 0 {
        tracing::info!(
            calls = restored,
            "session and task usage restored from the audit log"
        );
    }
    Ok(gw)
}

/// How far back usage counters are restored from the audit log at start.
const USAGE_WINDOW_MS: i64 = 24 * 3600 * 1000;

/// The policy directory of users' groups and registered builds, from config.
fn directory(cfg: &Config) -> mandate_policy::Directory {
    let mut dir = mandate_policy::Directory::default();
    for (group, users) in &cfg.groups {
        for user in users {
            dir.groups
                .entry(user.clone())
                .or_default()
                .insert(group.clone());
        }
    }
    for (hash, name) in &cfg.builds {
        dir.builds.insert(
            hash.clone(),
            mandate_policy::BuildInfo { name: name.clone() },
        );
    }
    dir
}

/// With the change gate on, the policy set in force is the one the
/// control store says was activated; it is written out to
/// `DATA_DIR/policy-active` at every start (the store is the source of
/// truth; edits to that directory or to `policy.dir` have no effect). The
/// first start takes `policy.dir` as the initial set, recorded in audit.
async fn gated_policy_dir(
    cfg: &Config,
    control: &mandate_control::ControlStore,
    audit: &AuditLog,
) -> Result<PathBuf> {
    use mandate_control::ChangeKind;
    let active = control
        .active_changes(ChangeKind::PolicySet)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let change = match active.into_iter().next() {
        Some(c) => c,
        None => {
            let files = mandate_operator::control::read_policy_files(&cfg.policy_dir)
                .with_context(|| format!("reading {}", cfg.policy_dir.display()))?;
            let hash = PolicyEngine::load_dir(&cfg.policy_dir)
                .map_err(|e| anyhow::anyhow!("policies in {}: {e}", cfg.policy_dir.display()))?
                .policy_hash();
            let summary = format!("initial policy set from {}", cfg.policy_dir.display());
            let detail =
                serde_json::json!({"kind": "policy_set", "policy_hash": hash, "summary": summary});
            let mut decision = mandate_core::DecisionRecord::control(
                mandate_core::Effect::Allow,
                "bootstrap",
                summary.clone(),
            );
            decision.policy_hash.clone_from(&hash);
            let operator = mandate_core::Subject {
                sub: "mandate".into(),
                session: "operator:mandate".into(),
                ..Default::default()
            };
            audit
                .append(mandate_core::AuditRecord::control(
                    control.clock().now_ms(),
                    decision,
                    operator,
                    "control/change.bootstrap",
                    &detail,
                ))
                .await
                .map_err(|e| anyhow::anyhow!("audit log: {e}"))?;
            control
                .bootstrap(
                    ChangeKind::PolicySet,
                    "",
                    serde_json::json!({ "files": files }),
                    &hash,
                    &summary,
                    "mandate",
                )
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .context("the control store already holds a policy set")?
        }
    };
    let files = mandate_operator::control::policy_files_of(&change)
        .map_err(|_| anyhow::anyhow!("change {} holds no readable policy files", change.id))?;
    let dir = cfg.gated_policy_dir();
    mandate_operator::control::replace_policy_files(&dir, &files)
        .with_context(|| format!("writing {}", dir.display()))?;
    let loaded = PolicyEngine::load_dir(&dir)
        .map_err(|e| anyhow::anyhow!("the active policy set (change {}): {e}", change.id))?;
    if loaded.policy_hash() != change.payload_hash {
        bail!(
            "the active policy set (change {}) hashes to {}, not the approved {}",
            change.id,
            loaded.policy_hash(),
            change.payload_hash
        );
    }
    tracing::info!(change = %change.id, policy_hash = %change.payload_hash, "change gate on: serving the activated policy set");
    Ok(dir)
}

/// The gateway `serve` would build, on scratch stores in a private
/// temporary directory (removed when the returned guard drops): for
/// commands that only look (`policy args`, `upstream tools`).
pub(crate) async fn scratch_gateway(
    cfg: &Config,
) -> Result<(tempfile::TempDir, Config, Arc<Gateway>)> {
    let dir = tempfile::Builder::new()
        .prefix("mandate-scratch-")
        .tempdir()
        .context("cannot create a scratch directory")?;
    let scratch = cfg.scratch(dir.path())?;
    let gw = build_gateway(&scratch).await?;
    Ok((dir, scratch, gw))
}

/// `mandate upstream tools`: every upstream tool, its class and annotations.
async fn upstream_tools(config: &std::path::Path, json: bool) -> Result<()> {
    let cfg = Config::load(config, &Overrides::default())?;
    let (_dir, _scratch, gw) = scratch_gateway(&cfg).await?;
    let tools = gw.catalogue().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let rows: Vec<serde_json::Value> = tools
        .iter()
        .map(|(name, class, tool)| {
            let a = tool.annotations.as_ref();
            serde_json::json!({
                "tool": name,
                "class": class.map(mandate_core::ToolClass::as_str),
                "annotations": {
                    "title": a.and_then(|a| a.title.clone()),
                    "readOnlyHint": a.and_then(|a| a.read_only_hint),
                    "destructiveHint": a.and_then(|a| a.destructive_hint),
                    "idempotentHint": a.and_then(|a| a.idempotent_hint),
                    "openWorldHint": a.and_then(|a| a.open_world_hint),
                },
                "description": tool.description.as_deref().unwrap_or_default(),
            })
        })
        .collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    let width = tools
        .iter()
        .map(|(n, _, _)| n.chars().count())
        .max()
        .unwrap_or(4);
    for (name, class, tool) in &tools {
        let a = tool.annotations.as_ref();
        let mut hints = Vec::new();
        for (flag, on, off) in [
            (
                a.and_then(|a| a.read_only_hint),
                "read-only",
                "not read-only",
            ),
            (
                a.and_then(|a| a.destructive_hint),
                "destructive",
                "not destructive",
            ),
            (a.and_then(|a| a.idempotent_hint), "idempotent", ""),
            (
                a.and_then(|a| a.open_world_hint),
                "open-world",
                "closed-world",
            ),
        ] {
            match flag {
                Some(true) => hints.push(on),
                Some(false) if !off.is_empty() => hints.push(off),
                _ => {}
            }
        }
        let description = tool.description.as_deref().unwrap_or_default();
        let short: String = description
            .lines()
            .next()
            .unwrap_or_default()
            .chars()
            .take(72)
            .collect();
        println!(
            "{:<width$}  {:<14}  {:<34}  {}",
            mandate_core::text::marked_line(name),
            class.map_or("unclassified", mandate_core::ToolClass::as_str),
            if hints.is_empty() {
                "no annotations".into()
            } else {
                hints.join(", ")
            },
            mandate_core::text::marked_line(&short),
        );
    }
    let unclassified = tools.iter().filter(|(_, c, _)| c.is_none()).count();
    if unclassified > 0 {
        println!(
            "\n{unclassified} tool(s) unclassified: denied until classified under [upstreams.<name>.tools] (docs/CONFIG.md). Annotations are the server's own claims: a hint, not a class."
        );
    }
    Ok(())
}

/// `serve --check`: builds everything `serve` would, on scratch stores in
/// a private temporary directory (removed on return), so the check writes
/// nothing to the data directory, the audit store or the broker's keys;
/// the real audit store is only read.
async fn check_config(cfg: &Config) -> Result<()> {
    let (_dir, scratch, gw) = scratch_gateway(cfg).await?;
    if broker_cli::attach(&scratch, &gw).await?.is_some() {
        let keys = cfg
            .broker
            .as_ref()
            .is_some_and(|b| b.key_dir.join("keys.json").exists());
        println!(
            "broker: identity providers and agent keys loaded; signing keys {}",
            if keys {
                "loaded"
            } else {
                "not there yet (generated at first start)"
            }
        );
    }
    println!("audit store: {}", probe_audit_store(cfg)?);
    println!(
        "policies: {}",
        PolicyEngine::check_dir(&cfg.policy_dir).map_err(|e| anyhow::anyhow!("{e}"))?
    );
    for line in gw
        .probe_upstreams()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?
    {
        println!("{line}");
    }
    Ok(())
}

/// Whether the configured audit store can be read, without creating or
/// changing anything (a SQLite file that does not exist yet is created at
/// the first start). A store that exists but cannot be read fails the
/// check, as it would fail `serve`.
fn probe_audit_store(cfg: &Config) -> Result<String> {
    let store = cfg.audit_store();
    if let mandate_audit::Store::Sqlite(path) = &store {
        if !path.exists() {
            return Ok(format!("{store} (created at first start)"));
        }
        // Opening a SQLite log in WAL mode, even to read, creates its
        // `-shm` and `-wal` files: read the header instead.
        let mut head = [0u8; 16];
        std::fs::File::open(path)
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head))
            .with_context(|| format!("audit store {store} cannot be read"))?;
        anyhow::ensure!(
            &head == b"SQLite format 3\0",
            "audit store {store} is not a SQLite database"
        );
        return Ok(format!("{store} (readable)"));
    }
    let now = mandate_core::Clock::system().now_ms();
    mandate_audit::read_calls_since(store.clone(), now)
        .map_err(|e| anyhow::anyhow!("audit store {store} cannot be read: {e}"))?;
    Ok(format!("{store} (readable)"))
}

/// Serves the gateway on `listener` (within the connection limits) and
/// reloads policies when their files change (a broken set is refused; the
/// last good set keeps serving). Cancelling `shutdown` stops accepting and
/// drains; the returned handle finishes when every connection is closed.
pub(crate) async fn start_on(
    cfg: &Config,
    listener: tokio::net::TcpListener,
    shutdown: tokio_util::sync::CancellationToken,
) -> Result<(Arc<Gateway>, tokio::task::JoinHandle<()>)> {
    let gw = build_gateway(cfg).await?;
    let broker = broker_cli::attach(cfg, &gw).await?;
    let tasks = broker.as_ref().map(|b| b.tasks.clone());
    // The agents' side (`/mcp`, metadata, health) and the operator plane
    // (`/api`, `/approvals`) on one listener.
    let operator = mandate_operator::router(gw.clone(), &cfg.web, tasks);
    let mut app = mandate_gateway::http::router(gw.clone()).merge(operator);
    if let Some(broker) = broker {
        app = app.merge(broker.routes);
    }
    let limits = connection_limits(&cfg.gateway.limits.connections);
    let stats = gw.metrics().connections.clone();
    let handle = tokio::spawn(mandate_gateway::server::serve(
        listener, app, limits, stats, shutdown,
    ));
    // Approval requests whose holder died (a replica killed, or this
    // process before a restart) leave the approvers' queue.
    gw.spawn_orphan_sweep();
    if cfg.gateway.change_gate {
        // Policies change only through the gate (see `gated_policy_dir`);
        // a set activated on another replica is installed here too.
        if mandate_operator::control::spawn_policy_follower(gw.clone()).is_some() {
            tracing::info!("following policy sets activated on other replicas");
        }
        return Ok((gw, handle));
    }
    let reload_gw = gw.clone();
    let dir = cfg.policy_dir.clone();
    tokio::spawn(async move {
        let mut seen = dir_fingerprint(&dir);
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            tick.tick().await;
            let now = dir_fingerprint(&dir);
            if now == seen {
                continue;
            }
            seen = now;
            match reload_gw.policy().reload() {
                Ok(()) => {
                    tracing::info!(policy_hash = %reload_gw.policy().policy_hash(), "policies reloaded")
                }
                Err(e) => {
                    tracing::error!(error = %e, "policy reload refused; the last good set keeps serving")
                }
            }
        }
    });
    Ok((gw, handle))
}

/// Loads `config` and serves it on an ephemeral loopback port (the demo and
/// the benchmark): the public URL, and so the token audience, follow the port.
pub(crate) async fn start_ephemeral(
    config: &std::path::Path,
    data_dir: &std::path::Path,
) -> Result<(Config, Arc<Gateway>, std::net::SocketAddr)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let cfg = Config::load(
        config,
        &Overrides {
            listen: Some(addr.to_string()),
            data_dir: Some(data_dir.to_path_buf()),
            public_url: Some(format!("http://{addr}")),
        },
    )?;
    // Runs until the process exits (the demo and the benchmark).
    let (gw, _handle) =
        start_on(&cfg, listener, tokio_util::sync::CancellationToken::new()).await?;
    Ok((cfg, gw, addr))
}

/// Names, sizes and modification times of a directory's files.
fn dir_fingerprint(
    dir: &std::path::Path,
) -> Vec<(std::ffi::OsString, u64, Option<std::time::SystemTime>)> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let m = e.metadata().ok()?;
            Some((e.file_name(), m.len(), m.modified().ok()))
        })
        .collect();
    out.sort();
    out
}

async fn serve(cfg: Config, path: PathBuf, overrides: Overrides) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cfg.listen))?;
    let addr = listener.local_addr()?;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let (gw, mut handle) = start_on(&cfg, listener, shutdown.clone()).await?;
    reload::spawn(path, overrides, gw.clone(), &cfg);
    let holder = signer::holder();
    let signs_by_lease = gw.control().is_shared() && cfg.audit.checkpoint_interval.is_some();
    if let Some(interval) = cfg.audit.checkpoint_interval.filter(|_| signs_by_lease) {
        signer::spawn(gw.clone(), interval, holder.clone());
    }
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        listen = %addr,
        resource = %cfg.gateway.resource,
        audit = %cfg.audit_store(),
        "mandate serving MCP at /mcp"
    );
    let mut stop = stop_signals();
    tokio::select! {
        _ = &mut handle => return Ok(()),
        _ = stop.recv() => {}
    }
    // Not ready from now on (and held calls are answered): a load balancer
    // that polls /readyz stops sending new requests here within its check
    // interval. Until then the listener keeps accepting, so no request
    // meets a closed port; a second signal cuts the wait short.
    gw.begin_drain();
    let limits = &cfg.gateway.limits.connections;
    if gw.readiness_watched() && !limits.drain_delay.is_zero() {
        tracing::info!(
            delay_ms = u64::try_from(limits.drain_delay.as_millis()).unwrap_or(u64::MAX),
            "stopping: /readyz says not ready; still accepting while the load balancer notices"
        );
        tokio::select! {
            () = tokio::time::sleep(limits.drain_delay) => {}
            _ = stop.recv() => {}
        }
    }
    tracing::info!(
        drain_secs = limits.drain_timeout.as_secs(),
        "stopping: no new connections; finishing calls in flight"
    );
    shutdown.cancel();
    let _ = handle.await;
    if signs_by_lease {
        // Another replica need not wait for the lease to expire.
        let _ = gw.control().release_lease(signer::LEASE, &holder).await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// SIGTERM (what process managers send) and SIGINT (Ctrl-C), each one
/// delivered as a message (the first starts the stop, a second cuts its
/// waits short).
fn stop_signals() -> tokio::sync::mpsc::Receiver<()> {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            let tx = tx.clone();
            tokio::spawn(async move {
                while term.recv().await.is_some() {
                    if tx.send(()).await.is_err() {
                        break;
                    }
                }
            });
        }
    }
    tokio::spawn(async move {
        while tokio::signal::ctrl_c().await.is_ok() {
            if tx.send(()).await.is_err() {
                break;
            }
        }
    });
    rx
}

/// Raises the open-file soft limit to the hard limit and keeps the
/// connection cap below it, with room for upstream connections, child
/// processes and the stores: at the cap Mandate closes idle connections
/// instead of running out of descriptors (which would stop `accept`).
fn connection_limits(
    configured: &mandate_gateway::ConnectionLimits,
) -> mandate_gateway::ConnectionLimits {
    const RESERVED_FDS: u64 = 256;
    let mut limits = configured.clone();
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(soft) => {
            let room =
                usize::try_from(soft.saturating_sub(RESERVED_FDS).max(16)).unwrap_or(usize::MAX);
            if room < limits.max_connections {
                tracing::warn!(
                    configured = limits.max_connections,
                    open_file_limit = soft,
                    cap = room,
                    "connection cap lowered to fit the open-file limit"
                );
                limits.max_connections = room;
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot read or raise the open-file limit"),
    }
    limits
}
