//! `mandate bench --approvals N`: what a human approval costs once the
//! person has decided.
//!
//! Two gateways in this process in front of the same demo bank (Streamable
//! HTTP): one with the quickstart policies (a transfer is held for
//! approval), one with the same policies minus the `approval` obligation.
//! For each held transfer the scripted approver posts its decision as soon
//! as the request appears; the time from sending that decision (the click)
//! to the agent receiving the upstream's result is compared with the whole
//! latency of the same transfer when no approval is needed. Reported as the
//! ratio of medians.

use crate::devtoken::{MintArgs, generate_issuer_key, load_issuer_key, sign};
use anyhow::{Context, Result};
use rmcp::ServiceExt as _;
use rmcp::model::CallToolRequestParams;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use serde_json::{Value, json};
use std::path::Path;
use std::time::{Duration, Instant};

/// Starts a gateway over `policies` in front of `upstream`; returns its base URL.
async fn gateway(
    dir: &Path,
    name: &str,
    policies: &Path,
    upstream: &str,
    jwks: &Path,
) -> Result<String> {
    let data = dir.join(name);
    std::fs::create_dir_all(&data)?;
    let text = format!(
        "[server]\ndata_dir = \"{}\"\n[auth]\n[[auth.issuers]]\nissuer = \"mandate-dev\"\njwks_file = \"{}\"\n[policy]\ndir = \"{}\"\n[[operators]]\nsub = \"approver@example.com\"\nroles = [\"approver\"]\n[upstreams.bank]\nurl = \"{upstream}\"\n[upstreams.bank.tools]\ntransfer = \"financial\"\n",
        data.display(),
        jwks.display(),
        policies.display(),
    );
    let cfg = data.join("mandate.toml");
    std::fs::write(&cfg, text)?;
    let (_cfg, _gw, addr) = crate::start_ephemeral(&cfg, &data).await?;
    Ok(format!("http://{addr}"))
}

/// The quickstart policies with every `approval` obligation removed.
fn without_approvals(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        if !entry.file_type()?.is_file() {
            continue;
        }
        let text = std::fs::read_to_string(entry.path())?;
        let text = text.replace("@obligation(\"approval\")", "");
        std::fs::write(to.join(entry.file_name()), text)?;
    }
    Ok(())
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

/// Runs `n` held and `n` unheld transfers; prints the report.
pub async fn run(dir: &Path, n: usize) -> Result<()> {
    let up = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let upstream = format!("http://{}/mcp", up.local_addr()?);
    tokio::spawn(async move {
        if let Err(e) = crate::demo_server::serve_http("bank", Default::default(), up).await {
            eprintln!("upstream stopped: {e}");
        }
    });
    let qs = crate::demo::materialise(dir)?;
    let held_policies = qs.parent().context("quickstart dir")?.join("policies");
    let free_policies = dir.join("policies-without-approval");
    without_approvals(&held_policies, &free_policies)?;
    let key_dir = dir.join("dev-issuer");
    if !key_dir.join("issuer.pem").exists() {
        generate_issuer_key(&key_dir)?;
    }
    let key = load_issuer_key(&key_dir)?;
    let jwks = key_dir.join("jwks.json");
    let held_url = gateway(dir, "held", &held_policies, &upstream, &jwks).await?;
    let free_url = gateway(dir, "free", &free_policies, &upstream, &jwks).await?;

    let mint = |aud: String, act: Option<&str>, sub: &str| -> Result<String> {
        let args = MintArgs {
            key: key_dir.clone(),
            iss: "mandate-dev".into(),
            aud,
            sub: sub.into(),
            act: act.map(str::to_owned),
            scope: "bank.*".into(),
            task: Some(format!("bench-{}", uuid::Uuid::new_v4())),
            build: None,
            sid: Some(uuid::Uuid::new_v4().to_string()),
            ttl: 3600,
        };
        sign(&key, &args)
    };
    let operator = mint(format!("{held_url}/api"), None, "approver@example.com")?;
    let http = reqwest::Client::new();

    let connect = |url: String, token: String| async move {
        let cfg =
            StreamableHttpClientTransportConfig::with_uri(format!("{url}/mcp")).auth_header(token);
        ().serve(StreamableHttpClientTransport::from_config(cfg))
            .await
    };
    let transfer = |i: usize| {
        let mut p = CallToolRequestParams::new("bank.transfer");
        p.arguments = json!({"to": "SUPPLIER-7", "amount": 1, "memo": format!("bench {i}")})
            .as_object()
            .cloned();
        p
    };

    // Without approval: the whole call.
    let free = connect(
        free_url.clone(),
        mint(
            format!("{free_url}/mcp"),
            Some("bench-agent"),
            "bench@example.com",
        )?,
    )
    .await?;
    let mut plain = Vec::with_capacity(n);
    for i in 0..n + 5 {
        let start = Instant::now();
        let r = free.call_tool(transfer(i)).await?;
        if r.is_error == Some(true) {
            anyhow::bail!("the unheld transfer failed");
        }
        if i >= 5 {
            plain.push(start.elapsed());
        }
    }
    let _ = free.cancel().await;

    // With approval: from the decision to the result.
    let mut after_click = Vec::with_capacity(n);
    for i in 0..n {
        let agent = connect(
            held_url.clone(),
            mint(
                format!("{held_url}/mcp"),
                Some("bench-agent"),
                "bench@example.com",
            )?,
        )
        .await?;
        let call = tokio::spawn(async move {
            let r = agent.call_tool(transfer(i)).await;
            let done = Instant::now();
            let _ = agent.cancel().await;
            r.map(|r| (r, done))
        });
        let pending = loop {
            let list: Value = http
                .get(format!("{held_url}/api/approvals?status=pending"))
                .bearer_auth(&operator)
                .send()
                .await?
                .json()
                .await?;
            if let Some(a) = field(&list, "approvals")
                .as_array()
                .and_then(|v| v.first())
                .cloned()
            {
                break a;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        let click = Instant::now();
        let resp = http
            .post(format!(
                "{held_url}/api/approvals/{}/approve",
                field(&pending, "id").as_str().unwrap_or_default()
            ))
            .bearer_auth(&operator)
            .json(&json!({"args_hash": field(&pending, "args_hash")}))
            .send()
            .await?;
        if !resp.status().is_success() {
            anyhow::bail!(
                "approval refused: {}",
                resp.text().await.unwrap_or_default()
            );
        }
        let (r, done) = call.await??;
        if r.is_error == Some(true) {
            anyhow::bail!("the approved transfer failed");
        }
        after_click.push(done.saturating_duration_since(click));
    }
    let (m_plain, m_click) = (median(&mut plain), median(&mut after_click));
    println!("## Human approval: from the approver's decision to the agent's result\n");
    println!("| measure ({n} runs, medians) | time | ratio |");
    println!("|---|---|---|");
    println!(
        "| transfer without approval (whole call) | {:.3} ms | 1.00× |",
        m_plain.as_secs_f64() * 1000.0
    );
    println!(
        "| approved transfer, decision sent → result | {:.3} ms | {:.2}× |",
        m_click.as_secs_f64() * 1000.0,
        m_click.as_secs_f64() / m_plain.as_secs_f64().max(1e-9)
    );
    println!(
        "\nThe decision path writes the approver's audit record, the decision, the released call's decision record (each fsync'd) and then forwards."
    );
    Ok(())
}

/// `v[key]`, or `null` (never panics).
fn field<'a>(v: &'a Value, key: &str) -> &'a Value {
    v.get(key).unwrap_or(&Value::Null)
}
