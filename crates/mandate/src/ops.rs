//! Operator commands: a small client of the control API (`/api`) of a
//! running `mandate serve`. The operator's bearer token comes from
//! `MANDATE_OPERATOR_TOKEN` (audience `<public_url>/api`, no `act`).

use crate::env;
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

/// `mandate tools …`: pinned upstream tools.
#[derive(clap::Subcommand, Debug)]
pub enum ToolsCommand {
    /// List pinned and quarantined tools.
    List,
    /// Approve a tool's current name, description and schema (lifts a quarantine).
    Approve {
        /// Exposed name, `upstream.tool`.
        name: String,
        /// Comment recorded with the approval.
        #[arg(long)]
        comment: Option<String>,
    },
}

/// `mandate decision …`: why a call was decided as it was.
#[derive(clap::Subcommand, Debug)]
pub enum DecisionCommand {
    /// One decision as the audit log holds it: the policies that decided
    /// and their reasons, the code the agent was told, obligations, where
    /// the arguments' values came from, the outcome.
    Show {
        /// Decision id (`dec_…`, as the agent was told it).
        id: String,
    },
}

/// `mandate approvals …`: decide held tool calls.
#[derive(clap::Subcommand, Debug)]
pub enum ApprovalsCommand {
    /// List approval requests (default: pending).
    List {
        /// pending, approved, denied, expired, withdrawn or all.
        #[arg(long, default_value = "pending")]
        status: String,
    },
    /// Show one request in full (who, what, why, arguments).
    Show {
        /// Approval id.
        id: String,
    },
    /// Approve a held call.
    Approve {
        /// Approval id.
        id: String,
        /// Comment recorded with the decision.
        #[arg(long)]
        comment: Option<String>,
        /// Bind the decision to the argument hash you reviewed (default:
        /// the request's, after printing the request).
        #[arg(long)]
        args_hash: Option<String>,
    },
    /// Deny a held call.
    Deny {
        /// Approval id.
        id: String,
        /// Comment recorded with the decision.
        #[arg(long)]
        comment: Option<String>,
        /// Bind the decision to the argument hash you reviewed.
        #[arg(long)]
        args_hash: Option<String>,
    },
    /// Print a password hash for `[[approvals.web.local_accounts]]`
    /// (reads the password from the first line of standard input; needs no
    /// running server).
    HashPassword {
        /// PBKDF2 iterations (at least 100000).
        #[arg(long, default_value_t = mandate_operator::DEFAULT_ITERATIONS)]
        iterations: u32,
    },
}

/// The operator API of a running `mandate serve`, as `MANDATE_OPERATOR_TOKEN`.
pub(crate) struct Api {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Api {
    pub(crate) fn new(args: &ApiArgs) -> Result<Self> {
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

    /// Sends one request; a non-2xx answer is an error with its OAuth-style code.
    pub(crate) async fn send(
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
            let files = mandate_operator::control::read_policy_files(&dir)
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

/// One approval request on one line, with every invisible or control
/// character shown as `⟨U+XXXX⟩` (as the approval page marks them): an
/// approver at a terminal sees what the agent really sent.
fn approval_line(a: &Value) -> String {
    let line = format!(
        "{}  {:<9} {:<22} {:<11} for {} via {}  args {}",
        s(a, "id"),
        s(a, "status"),
        s(a, "tool"),
        s(a, "class"),
        s(a, "sub"),
        a.get("act")
            .and_then(Value::as_array)
            .map(|v| v
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(" > "))
            .unwrap_or_default(),
        a.get("args").map(Value::to_string).unwrap_or_default(),
    );
    mandate_core::text::marked_line(&line).into_owned()
}

/// `mandate approvals …`.
pub async fn approvals(args: &ApiArgs, cmd: ApprovalsCommand) -> Result<()> {
    use reqwest::Method;
    if let ApprovalsCommand::HashPassword { iterations } = cmd {
        return hash_password(iterations);
    }
    let api = Api::new(args)?;
    match cmd {
        ApprovalsCommand::HashPassword { .. } => {}
        ApprovalsCommand::List { status } => {
            let v = api
                .send(
                    Method::GET,
                    &format!("/api/approvals?status={status}"),
                    None,
                )
                .await?;
            print(args, &v, |v| {
                let list = v
                    .get("approvals")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                if list.is_empty() {
                    format!("no {status} approval requests")
                } else {
                    list.iter()
                        .map(approval_line)
                        .collect::<Vec<_>>()
                        .join("\n")
                }
            });
        }
        ApprovalsCommand::Show { id } => {
            let v = api
                .send(Method::GET, &format!("/api/approvals/{id}"), None)
                .await?;
            let text = serde_json::to_string_pretty(&v).unwrap_or_default();
            println!("{}", mandate_core::text::marked_text(&text));
        }
        ApprovalsCommand::Approve {
            id,
            comment,
            args_hash,
        } => decide(args, &api, true, &id, comment, args_hash).await?,
        ApprovalsCommand::Deny {
            id,
            comment,
            args_hash,
        } => decide(args, &api, false, &id, comment, args_hash).await?,
    }
    Ok(())
}

/// Reads a password (first line of standard input) and prints its hash.
fn hash_password(iterations: u32) -> Result<()> {
    use std::io::{BufRead as _, IsTerminal as _};
    if std::io::stdin().is_terminal() {
        eprintln!("Password (it will be visible; pipe it in to avoid that), then Enter:");
    }
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading the password from standard input")?;
    let password = line.strip_suffix('\n').unwrap_or(&line);
    let password = password.strip_suffix('\r').unwrap_or(password);
    let hash = mandate_operator::PasswordHash::new(password, iterations)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    println!("{hash}");
    Ok(())
}

/// Approves or denies `id`, bound to the argument hash the operator
/// reviewed (or, without one, to the request's after printing it).
async fn decide(
    args: &ApiArgs,
    api: &Api,
    approve: bool,
    id: &str,
    comment: Option<String>,
    args_hash: Option<String>,
) -> Result<()> {
    use reqwest::Method;
    let args_hash = match args_hash {
        Some(h) => h,
        None => {
            let current = api
                .send(Method::GET, &format!("/api/approvals/{id}"), None)
                .await?;
            eprintln!("deciding: {}", approval_line(&current));
            s(&current, "args_hash").to_owned()
        }
    };
    let action = if approve { "approve" } else { "deny" };
    let v = api
        .send(
            Method::POST,
            &format!("/api/approvals/{id}/{action}"),
            Some(json!({"args_hash": args_hash, "comment": comment})),
        )
        .await?;
    print(args, &v, |v| {
        format!(
            "{}: {}",
            if approve { "approved" } else { "denied" },
            approval_line(v)
        )
    });
    Ok(())
}

/// `mandate tools …`.
pub async fn tools(args: &ApiArgs, cmd: ToolsCommand) -> Result<()> {
    let api = Api::new(args)?;
    let line = |p: &Value| {
        format!(
            "{:<32} {:<11} {}  (by {})",
            s(p, "tool"),
            s(p, "status"),
            s(p, "reason"),
            s(p, "decided_by")
        )
    };
    match cmd {
        ToolsCommand::List => {
            let v = api.send(reqwest::Method::GET, "/api/tools", None).await?;
            print(args, &v, |v| {
                let list = v
                    .get("tools")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                if list.is_empty() {
                    "no tools pinned yet (tools are pinned when first listed or called)".into()
                } else {
                    list.iter().map(line).collect::<Vec<_>>().join("\n")
                }
            });
        }
        ToolsCommand::Approve { name, comment } => {
            let v = api
                .send(
                    reqwest::Method::POST,
                    &format!("/api/tools/{name}/approve"),
                    Some(json!({"comment": comment})),
                )
                .await?;
            print(args, &v, |v| format!("approved: {}", line(v)));
        }
    }
    Ok(())
}

/// `mandate decision show ID`.
pub async fn decision(args: &ApiArgs, cmd: DecisionCommand) -> Result<()> {
    let DecisionCommand::Show { id } = cmd;
    let api = Api::new(args)?;
    let v = api
        .send(reqwest::Method::GET, &format!("/api/decisions/{id}"), None)
        .await?;
    print(args, &v, decision_text);
    Ok(())
}

/// A decision for a person to read; every string from the record is shown
/// with hidden and control characters marked.
fn decision_text(v: &Value) -> String {
    use mandate_core::text::marked_line;
    let d = v.get("decision").unwrap_or(&Value::Null);
    let inner = d.get("decision").unwrap_or(&Value::Null);
    let subject = d.get("subject").unwrap_or(&Value::Null);
    let list = |v: &Value, key: &str| -> Vec<String> {
        v.get(key)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let when = d
        .get("time_ms")
        .and_then(Value::as_i64)
        .and_then(chrono::DateTime::from_timestamp_millis)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default();
    let mut out = vec![format!(
        "decision {} (record {}, {when}): {} {}",
        marked_line(s(inner, "id")),
        d.get("seq").and_then(Value::as_i64).unwrap_or_default(),
        s(inner, "effect").to_uppercase(),
        marked_line(s(d, "tool")),
    )];
    out.push(format!(
        "  subject: {} via {} (session {}, task {})",
        marked_line(s(subject, "sub")),
        marked_line(&list(subject, "act").join(" ← ")),
        marked_line(s(subject, "session")),
        marked_line(
            subject
                .get("task_id")
                .and_then(Value::as_str)
                .unwrap_or("-")
        ),
    ));
    if let Some(code) = inner.get("code").and_then(Value::as_str) {
        out.push(format!(
            "  reason code given to the agent: {}",
            marked_line(code)
        ));
    }
    let policies = list(inner, "policies");
    let reasons = list(inner, "reasons");
    if policies.is_empty() {
        out.push("  decided by no policy (a check before policy evaluation):".into());
        out.extend(reasons.iter().map(|r| format!("    {}", marked_line(r))));
    } else {
        out.push("  policies that decided:".into());
        for (i, p) in policies.iter().enumerate() {
            let reason = reasons.get(i).map(String::as_str).unwrap_or("");
            out.push(format!("    {}: {}", marked_line(p), marked_line(reason)));
        }
    }
    let obligations = inner.get("obligations").and_then(Value::as_array);
    out.push(format!(
        "  obligations: {}",
        match obligations {
            Some(o) if !o.is_empty() =>
                marked_line(&Value::Array(o.clone()).to_string()).into_owned(),
            _ => "none".into(),
        }
    ));
    if let Some(args) = d.pointer("/sources/args").and_then(Value::as_array) {
        for a in args {
            let from: Vec<String> = a
                .get("values")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|val| {
                    let src = val.get("sources").unwrap_or(&Value::Null);
                    let mut kinds = Vec::new();
                    for k in ["intent", "trusted", "sensitive", "untrusted"] {
                        if src.get(k).and_then(Value::as_bool) == Some(true) {
                            kinds.push(k.to_owned());
                        }
                    }
                    let tools: Vec<String> = src
                        .get("origins")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .map(|o| s(o, "tool").to_owned())
                        .collect();
                    format!(
                        "{} from {}{}",
                        s(val, "family"),
                        if kinds.is_empty() {
                            "nowhere seen".into()
                        } else {
                            kinds.join("+")
                        },
                        if tools.is_empty() {
                            String::new()
                        } else {
                            format!(" ({})", tools.join(", "))
                        }
                    )
                })
                .collect();
            if !from.is_empty() {
                out.push(format!(
                    "  argument {}: {}",
                    marked_line(s(a, "name")),
                    marked_line(&from.join("; "))
                ));
            }
        }
    }
    for r in v
        .get("records")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if s(r, "kind") == "outcome" {
            out.push(format!(
                "  outcome: {}{}",
                marked_line(r.get("outcome").and_then(Value::as_str).unwrap_or("-")),
                r.get("detail")
                    .and_then(Value::as_str)
                    .map(|d| format!(" ({})", marked_line(d)))
                    .unwrap_or_default()
            ));
        }
    }
    let set = v.get("policy_set").unwrap_or(&Value::Null);
    out.push(
        if set.get("in_force").and_then(Value::as_bool) == Some(true) {
            "  policy set: the one in force now".into()
        } else {
            format!(
                "  policy set: {} (changed since; in force now: {})",
                marked_line(s(set, "recorded")),
                marked_line(s(set, "active"))
            )
        },
    );
    out.join("\n")
}
