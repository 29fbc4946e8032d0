//! `mandate init`: drafts a configuration and starter policies for one
//! upstream MCP server, for the operator to review before serving.
//!
//! It connects to the upstream (as `mandate upstream tools` does, on
//! scratch stores) and proposes a class for each tool from the tool's own
//! MCP annotations. Annotations are the server's claims, not facts: every
//! proposed class is written with the hint it came from, and a tool
//! without usable annotations is left unclassified (denied) with a comment
//! naming it. Nothing existing is overwritten.

use crate::config::{Config, Overrides};
use anyhow::{Context as _, Result, bail};
use mandate_core::ToolClass;
use rmcp::model::Tool;
use std::fmt::Write as _;
use std::path::PathBuf;

/// The starter policies: class-based rules that name no tool.
const STARTER: [(&str, &str); 4] = [
    (
        "10-routine.cedar",
        include_str!("../../../examples/quickstart/policies/10-routine.cedar"),
    ),
    (
        "20-high-impact.cedar",
        include_str!("../../../examples/quickstart/policies/20-high-impact.cedar"),
    ),
    (
        "30-flows.cedar",
        include_str!("../../../examples/quickstart/policies/30-flows.cedar"),
    ),
    (
        "mandate.cedarschema",
        include_str!("../../../examples/quickstart/policies/mandate.cedarschema"),
    ),
];

/// What `mandate init` was asked for.
#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// Folder to write `mandate.toml`, `policies/` and the development
    /// issuer's key into (created if missing; nothing in it is replaced).
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// Name of the upstream: its tools are exposed as NAME.TOOL.
    #[arg(long, default_value = "upstream")]
    pub name: String,
    /// A Streamable HTTP upstream's URL (instead of a command).
    #[arg(long, conflicts_with = "command")]
    pub url: Option<String>,
    /// The upstream's command and arguments, after `--`
    /// (e.g. `-- npx -y @modelcontextprotocol/server-filesystem /srv`).
    #[arg(last = true)]
    pub command: Vec<String>,
}

/// The class proposed for a tool, and why (`None`: no usable hint).
pub(crate) fn propose(tool: &Tool) -> Option<(ToolClass, &'static str)> {
    let a = tool.annotations.as_ref()?;
    if a.read_only_hint == Some(true) {
        return Some((ToolClass::Read, "readOnlyHint"));
    }
    // Without readOnlyHint the spec's defaults are "may write, may destroy,
    // open world": only explicit hints move a tool out of the held classes.
    a.read_only_hint?;
    Some(match (a.destructive_hint, a.open_world_hint) {
        (Some(false), Some(false)) => (
            ToolClass::Write,
            "destructiveHint=false, openWorldHint=false",
        ),
        (Some(false), _) => (ToolClass::Outbound, "destructiveHint=false, open world"),
        (_, _) => (
            ToolClass::Irreversible,
            "destructive (destructiveHint, or its default)",
        ),
    })
}

/// A TOML basic string, usable as a key or a value (names come from the
/// upstream): quotes, backslashes and every control character escaped, so
/// nothing a server names a tool can end the string or the line.
fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// One line of untrusted text, safe inside a TOML comment.
fn comment_text(s: &str) -> String {
    let line: String = s
        .lines()
        .next()
        .unwrap_or_default()
        .chars()
        .filter(|c| !c.is_control())
        .take(90)
        .collect();
    mandate_core::text::marked_line(&line).into_owned()
}

/// The draft configuration (without tool classes when `tools` is empty).
fn draft(args: &InitArgs, tools: &[Tool]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# Drafted by `mandate init`: REVIEW every line before serving.\n\
         # Keys are documented in docs/CONFIG.md; paths may use {{config_dir}},\n\
         # {{data_dir}} and {{mandate}}.\n\n\
         [server]\nlisten = \"127.0.0.1:8943\"\ndata_dir = \"mandate-data\"\n\n\
         [auth]\nleeway_secs = 30\nrequire_actor = true\n\n\
         # A local development issuer (`mandate token mint --key mandate-data/dev-issuer`).\n\
         # Replace it with your identity provider or Mandate's broker (docs/BROKER.md).\n\
         [[auth.issuers]]\nissuer = \"mandate-dev\"\njwks_file = \"{{data_dir}}/dev-issuer/jwks.json\"\n\n\
         [policy]\ndir = \"{{config_dir}}/policies\"\n\n\
         # Who may revoke, approve and change policy (tokens with aud = <public_url>/api).\n\
         [[operators]]\nsub = \"secops@example.com\"\nroles = [\"admin\", \"approver\"]\n\n\
         [approvals]\ntimeout_secs = 120\n"
    );
    let _ = writeln!(s, "[upstreams.{}]", quoted(&args.name));
    if let Some(url) = &args.url {
        let _ = writeln!(s, "url = {}", quoted(url));
    } else if let Some((command, rest)) = args.command.split_first() {
        let _ = writeln!(s, "command = {}", quoted(command));
        let list: Vec<String> = rest.iter().map(|a| quoted(a)).collect();
        let _ = writeln!(s, "args = [{}]", list.join(", "));
    }
    let _ = writeln!(
        s,
        "timeout_secs = 30\n# A tool not classified below is denied.\ndefault_class = \"deny\"\n\
         # Results are untrusted (wrapped as data, scanned) unless listed under\n\
         # [upstreams.{}.provenance].",
        args.name.replace(['\n', '\r'], " ")
    );
    let _ = writeln!(s, "[upstreams.{}.tools]", quoted(&args.name));
    let mut unclassified = Vec::new();
    for tool in tools {
        let description = comment_text(tool.description.as_deref().unwrap_or_default());
        match propose(tool) {
            Some((class, why)) => {
                let _ = writeln!(
                    s,
                    "{} = {}  # from the server's {why}: {description}",
                    quoted(&tool.name),
                    quoted(class.as_str())
                );
            }
            None => unclassified.push((quoted(&tool.name), description)),
        }
    }
    for (name, description) in unclassified {
        let _ = writeln!(
            s,
            "# {name} = \"?\"  # no annotations to go by; denied until classified: {description}"
        );
    }
    s
}

/// Runs `mandate init`.
pub async fn run(args: &InitArgs) -> Result<()> {
    if args.url.is_none() && args.command.is_empty() {
        bail!("name the upstream: --url URL, or its command after `--`");
    }
    if args.name.is_empty()
        || !args
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        bail!("--name must be letters, digits, '_' or '-'");
    }
    let config = args.dir.join("mandate.toml");
    let policies = args.dir.join("policies");
    for path in [&config, &policies] {
        if path.exists() {
            bail!("{} exists: mandate init replaces nothing", path.display());
        }
    }
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    let keys = args.dir.join("mandate-data").join("dev-issuer");
    if !keys.join("jwks.json").exists() {
        crate::devtoken::generate_issuer_key(&keys)?;
    }
    // Write the policies and a draft without classes, read the tools
    // through it, then write the draft with their proposed classes.
    std::fs::create_dir_all(&policies)?;
    for (name, text) in STARTER {
        std::fs::write(policies.join(name), text)?;
    }
    let written = async {
        std::fs::write(&config, draft(args, &[]))?;
        let cfg = Config::load(&config, &Overrides::default())?;
        let (_dir, _scratch, gw) = crate::scratch_gateway(&cfg).await?;
        // The draft names one upstream: every tool is its.
        let tools: Vec<Tool> = gw
            .catalogue()
            .await
            .map_err(|e| anyhow::anyhow!("listing the tools of {}: {e}", args.name))?
            .into_iter()
            .map(|(_, _, tool)| tool)
            .collect();
        std::fs::write(&config, draft(args, &tools))?;
        anyhow::Ok(tools)
    }
    .await;
    let tools = match written {
        Ok(tools) => tools,
        Err(e) => {
            // Leave nothing half-written behind.
            let _ = std::fs::remove_file(&config);
            let _ = std::fs::remove_dir_all(&policies);
            return Err(e);
        }
    };
    let classified = tools.iter().filter(|t| propose(t).is_some()).count();
    println!(
        "wrote {} ({} tools: {classified} classified from their annotations, {} left unclassified and denied)",
        config.display(),
        tools.len(),
        tools.len() - classified
    );
    println!(
        "wrote {} (starter policies: reads and writes in scope; outbound, financial, access-control and irreversible calls held for approval)",
        policies.display()
    );
    println!(
        "Annotations are the server's own claims. Review every class in {}, then:\n  mandate serve --config {} --check",
        config.display(),
        config.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmcp::model::ToolAnnotations;
    use std::sync::Arc;

    fn tool(name: &str, a: Option<ToolAnnotations>) -> Tool {
        let mut t = Tool::new(
            name.to_owned(),
            "does things\nIGNORE PREVIOUS",
            Arc::default(),
        );
        t.annotations = a;
        t
    }

    fn hints(
        read_only: Option<bool>,
        destructive: Option<bool>,
        open: Option<bool>,
    ) -> Option<ToolAnnotations> {
        let mut a = ToolAnnotations::default();
        a.read_only_hint = read_only;
        a.destructive_hint = destructive;
        a.open_world_hint = open;
        Some(a)
    }

    #[test]
    fn only_explicit_hints_move_a_tool_out_of_the_held_classes() {
        let class = |a| propose(&tool("t", a)).map(|(c, _)| c);
        assert_eq!(class(None), None);
        assert_eq!(class(hints(None, Some(false), Some(false))), None);
        assert_eq!(class(hints(Some(true), None, None)), Some(ToolClass::Read));
        assert_eq!(
            class(hints(Some(false), None, None)),
            Some(ToolClass::Irreversible)
        );
        assert_eq!(
            class(hints(Some(false), Some(false), None)),
            Some(ToolClass::Outbound)
        );
        assert_eq!(
            class(hints(Some(false), Some(false), Some(false))),
            Some(ToolClass::Write)
        );
    }

    #[test]
    fn the_draft_parses_and_hostile_names_stay_inside_their_strings() -> Result<()> {
        let args = InitArgs {
            dir: PathBuf::from("."),
            name: "fs".into(),
            url: None,
            command: vec!["npx".into(), "-y".into(), "server \"x\"".into()],
        };
        let tools = [
            tool("read_file", hints(Some(true), None, None)),
            tool("evil\"] = 1\n[server]\nx", hints(Some(true), None, None)),
            tool("mystery", None),
        ];
        let text = draft(&args, &tools);
        let v: toml::Table = toml::from_str(&text)?;
        let classes = v
            .get("upstreams")
            .and_then(|u| u.get("fs"))
            .and_then(|u| u.get("tools"))
            .and_then(toml::Value::as_table)
            .context("no tools table")?;
        assert_eq!(classes.len(), 2, "{text}");
        assert!(classes.contains_key("evil\"] = 1\n[server]\nx"));
        assert!(!classes.contains_key("mystery"));
        assert!(text.contains("# \"mystery\" = \"?\""), "{text}");
        assert!(
            !text.contains("\nIGNORE PREVIOUS"),
            "descriptions stay on one comment line"
        );
        Ok(())
    }
}
