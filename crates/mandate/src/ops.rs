//! Operator commands: a small client of the control API (`/api`) of a
//! running `mandate serve`. The operator's bearer token comes from
//! `MANDATE_OPERATOR_TOKEN` (audience `<public_url>/api`, no `act`).

use crate::config::env;
use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use std::path::PathBuf;

/// Where the control API is and who is calling.
#[derive(clap::Args, Debug, Clone)]
pub struct ApiArgs {
    /// Base URL of the running gateway.
    #[arg(long, global = true, env = env::SERVER, default_value = "http://127.0.0.1:8943")]
    pub server: String,
    /// Print the raw JSON response.
    #[arg(long, global = true)]
    pub json: bool,
}

/// `mandate revocations …`.
#[derive(clap::Subcommand, Debug)]
pub enum RevocationsCommand {
    /// List kill switches in force (with --all, lifted ones too).
    List {
        /// Include lifted revocations.
        #[arg(long)]
        all: bool,
    },
    /// Lift a revocation by id.
    Lift {
        /// Revocation id.
        id: i64,
    },
}

/// `mandate change …`: the two-person change gate.
#[derive(clap::Subcommand, Debug)]
pub enum ChangeCommand {
    /// List changes and their status.
    List,
    /// Show one change in full.
    Show {
        /// Change id.
        id: String,
    },
    /// Propose a new policy set (every *.cedar and *.cedarschema in DIR).
    ProposePolicy {
        /// Directory holding the proposed policy set.
        #[arg(long)]
        dir: PathBuf,
        /// One line for the reviewer.
        #[arg(long, default_value = "")]
        summary: String,
    },
    /// Propose a scope ceiling for an agent (its tokens are narrowed to it).
    ProposeCeiling {
        /// The agent (token `act`).
        #[arg(long)]
        agent: String,
        /// Space-separated scope patterns.
        #[arg(long)]
        scope: String,
        /// One line for the reviewer.
        #[arg(long, default_value = "")]
        summary: String,
    },
    /// Approve a change someone else proposed.
    Approve {
        /// Change id.
        id: String,
        /// Comment recorded with the review.
        #[arg(long)]
        comment: Option<String>,
    },
    /// Reject a change someone else proposed.
    Reject {
        /// Change id.
        id: String,
        /// Comment recorded with the review.
        #[arg(long)]
        comment: Option<String>,
    },
    /// Put an approved change in force.
    Activate {
        /// Change id.
        id: String,
    },
}

struct Api {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Api {
    fn new(args: &ApiArgs) -> Result<Self> {
        let token = std::env::var(env::OPERATOR_TOKEN).with_context(|| {
            format!(
                "{} must hold an operator token (audience <public_url>/api, no `act`)",
                env::OPERATOR_TOKEN
            )
        })?;
        Ok(Self {
            base: args.server.trim_end_matches('/').to_owned(),
            token: token.trim().to_owned(),
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(30))
                .build()?,
        })
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value> {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.request(method, &url).bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("cannot reach {url}"))?;
        let status = resp.status();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            let msg = v
                .get("error_description")
                .and_then(Value::as_str)
                .unwrap_or("(no description)");
            let code = v.get("error").and_then(Value::as_str).unwrap_or("error");
            bail!("{status}: {code}: {msg}");
        }
        Ok(v)
    }
}

fn print(args: &ApiArgs, v: &Value, human: impl FnOnce(&Value) -> String) {
    if args.json {
        println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
    } else {
        println!("{}", human(v));
    }
}

fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

fn revocation_line(r: &Value) -> String {
    let lifted = match r.get("lifted_by").and_then(Value::as_str) {
        Some(by) => format!("  (lifted by {by})"),
        None => String::new(),
    };
    format!(
        "#{:<4} {:<8} {:<36} by {:<16} {}{lifted}",
        r.get("id").and_then(Value::as_i64).unwrap_or_default(),
        s(r, "kind"),
        s(r, "value"),
        s(r, "revoked_by"),
        s(r, "reason"),
    )
}

fn change_line(c: &Value) -> String {
    format!(
        "{}  {:<13} {:<9} {:<14} by {:<14} {}",
        s(c, "id"),
        s(c, "kind"),
        s(c, "status"),
        if s(c, "target").is_empty() {
            "-"
        } else {
            s(c, "target")
        },
        s(c, "proposed_by"),
        s(c, "summary"),
    )
}

/// `mandate revoke KIND VALUE`.
pub async fn revoke(args: &ApiArgs, kind: &str, value: &str, reason: Option<String>) -> Result<()> {
    let api = Api::new(args)?;
    let v = api
        .send(
            reqwest::Method::POST,
            "/api/revocations",
            Some(json!({"kind": kind, "value": value, "reason": reason})),
        )
        .await?;
    print(args, &v, |v| format!("revoked: {}", revocation_line(v)));
    Ok(())
}

/// `mandate revocations …`.
pub async fn revocations(args: &ApiArgs, cmd: RevocationsCommand) -> Result<()> {
    let api = Api::new(args)?;
    match cmd {
        RevocationsCommand::List { all } => {
            let v = api
                .send(
                    reqwest::Method::GET,
                    &format!("/api/revocations?all={all}"),
                    None,
                )
                .await?;
            print(args, &v, |v| {
                let list = v
                    .get("revocations")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                if list.is_empty() {
                    "no revocations in force".into()
                } else {
                    list.iter()
                        .map(revocation_line)
                        .collect::<Vec<_>>()
                        .join("\n")
                }
            });
        }
        RevocationsCommand::Lift { id } => {
            let v = api
                .send(
                    reqwest::Method::POST,
                    &format!("/api/revocations/{id}/lift"),
                    None,
                )
                .await?;
            print(args, &v, |v| format!("lifted: {}", revocation_line(v)));
        }
    }
    Ok(())
}

/// `mandate change …`.
pub async fn change(args: &ApiArgs, cmd: ChangeCommand) -> Result<()> {
    use reqwest::Method;
    let api = Api::new(args)?;
    let (v, verb) = match cmd {
        ChangeCommand::List => {
            let v = api.send(Method::GET, "/api/changes", None).await?;
            print(args, &v, |v| {
                let list = v
                    .get("changes")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                if list.is_empty() {
                    "no changes".into()
                } else {
                    list.iter().map(change_line).collect::<Vec<_>>().join("\n")
                }
            });
            return Ok(());
        }
        ChangeCommand::Show { id } => {
            let v = api
                .send(Method::GET, &format!("/api/changes/{id}"), None)
                .await?;
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            return Ok(());
        }
        ChangeCommand::ProposePolicy { dir, summary } => {
            let files = mandate_gateway::control::read_policy_files(&dir)
                .with_context(|| format!("reading {}", dir.display()))?;
            if files.is_empty() {
                bail!("{} holds no *.cedar or *.cedarschema files", dir.display());
            }
            let body = json!({"kind": "policy_set", "files": files, "summary": summary});
            (
                api.send(Method::POST, "/api/changes", Some(body)).await?,
                "proposed",
            )
        }
        ChangeCommand::ProposeCeiling {
            agent,
            scope,
            summary,
        } => {
            let body = json!({"kind": "scope_ceiling", "agent": agent, "scope": scope, "summary": summary});
            (
                api.send(Method::POST, "/api/changes", Some(body)).await?,
                "proposed",
            )
        }
        ChangeCommand::Approve { id, comment } => (
            api.send(
                Method::POST,
                &format!("/api/changes/{id}/approve"),
                Some(json!({"comment": comment})),
            )
            .await?,
            "approved",
        ),
        ChangeCommand::Reject { id, comment } => (
            api.send(
                Method::POST,
                &format!("/api/changes/{id}/reject"),
                Some(json!({"comment": comment})),
            )
            .await?,
            "rejected",
        ),
        ChangeCommand::Activate { id } => (
            api.send(Method::POST, &format!("/api/changes/{id}/activate"), None)
                .await?,
            "activated",
        ),
    };
    print(args, &v, |v| format!("{verb}: {}", change_line(v)));
    Ok(())
}
