//! The broker in the binary: wiring it into `mandate serve`, and the
//! `mandate build-hash`, `mandate task …` and `mandate keys rotate`
//! commands.

use crate::config::Config;
use anyhow::{Context, Result, bail};
use mandate_gateway::Gateway;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::sync::Arc;

/// Creates the broker's signing keys (first start) and writes its JWKS,
/// so the gateway can trust the broker's tokens before it serves.
pub(crate) fn prepare_keys(cfg: &Config) -> Result<()> {
    if let Some(b) = &cfg.broker {
        let set = mandate_broker::key_dir(b)
            .open()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        tracing::info!(kid = %set.signing().kid, dir = %b.key_dir.display(), "broker signing key ready");
    }
    Ok(())
}

/// The broker as `mandate serve` serves it: its own routes, and its side
/// of the task API, which the operator plane serves (`/api/tasks`).
pub(crate) struct Attached {
    pub(crate) routes: axum::Router,
    pub(crate) tasks: mandate_broker::TaskApi,
}

/// Builds the broker (when configured) on the gateway's audit log and
/// control store, tells the gateway which builds to enforce and shares the
/// DPoP verifier.
pub(crate) async fn attach(cfg: &Config, gw: &Arc<Gateway>) -> Result<Option<Attached>> {
    let Some(b) = &cfg.broker else {
        return Ok(None);
    };
    let broker = mandate_broker::Broker::new(b.clone(), gw.audit().clone(), gw.control().clone())
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let builds = b
        .build_registry()
        .into_iter()
        .map(|(hash, (agents, build))| {
            (
                hash,
                mandate_gateway::builds::RegisteredManifest {
                    agents,
                    manifest: build.manifest,
                    tools: build.tools,
                },
            )
        })
        .collect();
    gw.enforce_builds(mandate_gateway::builds::BuildPolicy {
        issuer: b.issuer.clone(),
        builds,
        // MCP sign-in tokens name no build (their actor is `mcp-client-…`).
        signed_in_clients: b.sign_in.is_some(),
    });
    gw.use_dpop(broker.dpop());
    // The policy engine judges the grants of declared intents.
    broker.use_grant_judge(Arc::new(PolicyJudge(gw.clone())));
    tracing::info!(issuer = %b.issuer, agents = b.agents.len(), "delegation broker serving /oauth2/token");
    if let Some(s) = &b.sign_in {
        tracing::info!(provider = %s.provider_issuer, max_clients = s.max_clients, "MCP sign-in serving /oauth2/authorize");
    }
    let broker = Arc::new(broker);
    Ok(Some(Attached {
        routes: mandate_broker::router(broker.clone()),
        tasks: mandate_broker::TaskApi::new(broker),
    }))
}

/// The gateway's policy engine as the broker's judge of intent grants.
struct PolicyJudge(Arc<Gateway>);

impl mandate_broker::GrantJudge for PolicyJudge {
    fn judge(
        &self,
        grant: &mandate_intent::Grant,
        token: &mandate_core::Caller<'_>,
    ) -> mandate_control::GrantStatus {
        self.0.judge_grant(grant, token)
    }
}

/// `mandate build-hash`.
#[derive(clap::Args, Debug)]
pub struct BuildHashArgs {
    /// The model id (exactly as the agent names it).
    #[arg(long)]
    pub model: String,
    /// File holding the system prompt (read as UTF-8, byte for byte).
    #[arg(long)]
    pub system_prompt: PathBuf,
    /// JSON file with the tool manifest: an array of tools as the agent
    /// sees them (or a `tools/list` result).
    #[arg(long)]
    pub tools: PathBuf,
    /// Also print the manifest hash and the canonical manifest.
    #[arg(long)]
    pub verbose: bool,
}

/// Prints the canonical build hash.
pub(crate) fn build_hash(args: &BuildHashArgs) -> Result<()> {
    let (hash, build) =
        crate::broker_config::build_of(&args.model, &args.system_prompt, &args.tools)?;
    println!("{hash}");
    if args.verbose {
        eprintln!("manifest {}", build.manifest);
        eprintln!(
            "tools    {}",
            build.tools.into_iter().collect::<Vec<_>>().join(" ")
        );
    }
    Ok(())
}

/// `mandate task …`.
#[derive(clap::Subcommand, Debug)]
pub enum TaskCommand {
    /// Start a task for a user from a template.
    Start {
        /// Task template (`[broker.tasks.<name>]`).
        #[arg(long)]
        template: String,
        /// The user the task is for (their `sub`).
        #[arg(long)]
        user: String,
        /// Task id (default: a fresh one).
        #[arg(long)]
        id: Option<String>,
        /// The task's intent: a JSON file of RFC 9396 `authorization_details`
        /// (docs/INTENT.md), declared before any agent of the task reads
        /// anything. What policy does not grant outright waits for the
        /// user's one approval on the approval page.
        #[arg(long, value_name = "FILE")]
        intent: Option<PathBuf>,
    },
    /// Complete a task: every token minted for it is refused from the next call.
    Complete {
        /// Task id.
        id: String,
    },
    /// Cancel a task: every token minted for it is refused from the next call.
    Cancel {
        /// Task id.
        id: String,
    },
    /// List active tasks (with --all, ended ones too).
    List {
        /// Include completed and cancelled tasks.
        #[arg(long)]
        all: bool,
    },
}

fn task_line(t: &Value) -> String {
    let s = |k: &str| t.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    format!(
        "{:<40} {:<10} {:<16} for {:<24} deadline {}",
        s("id"),
        s("status"),
        s("template"),
        s("sub"),
        t.get("deadline_ms")
            .and_then(Value::as_i64)
            .unwrap_or_default()
    )
}

/// Runs a `mandate task` command against a running `mandate serve`.
pub(crate) async fn task(args: &crate::ops::ApiArgs, cmd: TaskCommand) -> Result<()> {
    use reqwest::Method;
    let api = crate::ops::Api::new(args)?;
    let v = match &cmd {
        TaskCommand::Start {
            template,
            user,
            id,
            intent,
        } => {
            let details = match intent {
                Some(path) => {
                    let text = std::fs::read_to_string(path)
                        .with_context(|| format!("reading the intent {}", path.display()))?;
                    Some(
                        serde_json::from_str::<Value>(&text)
                            .with_context(|| format!("{} is not JSON", path.display()))?,
                    )
                }
                None => None,
            };
            let body = json!({"template": template, "sub": user, "id": id,
                              "authorization_details": details});
            api.send(Method::POST, "/api/tasks", Some(body)).await?
        }
        TaskCommand::Complete { id } => {
            api.send(Method::POST, &format!("/api/tasks/{id}/complete"), None)
                .await?
        }
        TaskCommand::Cancel { id } => {
            api.send(Method::POST, &format!("/api/tasks/{id}/cancel"), None)
                .await?
        }
        TaskCommand::List { all } => {
            api.send(Method::GET, &format!("/api/tasks?all={all}"), None)
                .await?
        }
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return Ok(());
    }
    match cmd {
        TaskCommand::List { .. } => {
            for t in v
                .get("tasks")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                println!("{}", task_line(t));
            }
        }
        TaskCommand::Start { .. } => {
            println!("started: {}", task_line(&v));
            if let Some(i) = v.get("intent") {
                println!(
                    "intent {}",
                    i.get("intent_hash").and_then(Value::as_str).unwrap_or("")
                );
                for g in i
                    .get("grants")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let s = |k: &str| g.get(k).and_then(Value::as_str).unwrap_or("");
                    println!("  grant {:<24} {}", s("identifier"), s("status"));
                }
                if let Some(a) = i.get("approval_id").and_then(Value::as_str) {
                    println!("approval {a} waits for the user on the approval page");
                }
            }
        }
        TaskCommand::Complete { .. } => {
            println!("completed (its tokens are revoked): {}", task_line(&v));
        }
        TaskCommand::Cancel { .. } => {
            println!("cancelled (its tokens are revoked): {}", task_line(&v));
        }
    }
    Ok(())
}

/// `mandate keys rotate`: a new broker signing key; the old one stays
/// published until its tokens have expired. A running broker picks it up.
pub(crate) fn rotate(cfg: &Config) -> Result<()> {
    let Some(b) = &cfg.broker else {
        bail!("the configuration has no [broker]");
    };
    let kid = mandate_broker::key_dir(b)
        .rotate()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    println!(
        "new broker signing key {kid} (the previous key stays published until its tokens expire)"
    );
    Ok(())
}
