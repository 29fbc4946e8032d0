//! SIGHUP: `mandate serve` re-reads its configuration file.
//!
//! A file that does not parse or validate changes nothing (logged at error
//! level; the running configuration keeps serving). Otherwise the policy
//! files are re-read (as the file watcher does) and, with the change gate
//! off, the policy directory's groups and registered builds
//! (`[policy.groups]`, `[policy.builds]`) take effect at once, after an
//! audit record of the reload (no record, no change). Every other key that
//! differs from what is serving is named in one warning: it needs a
//! restart, and the running value keeps serving until then.

use crate::config::{Config, Overrides};
use mandate_gateway::Gateway;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The keys SIGHUP applies while serving (with the change gate off).
const LIVE: [&str; 2] = ["policy.groups", "policy.builds"];

/// Dotted names of the keys whose values differ between `a` and `b`: top
/// level, and one level into tables (`policy.groups`, `upstreams.docs`).
pub(crate) fn changed_keys(a: &toml::Table, b: &toml::Table) -> Vec<String> {
    let mut out = Vec::new();
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    for key in keys {
        match (a.get(key), b.get(key)) {
            (Some(toml::Value::Table(x)), Some(toml::Value::Table(y))) => {
                let inner: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
                for k in inner {
                    if x.get(k) != y.get(k) {
                        out.push(format!("{key}.{k}"));
                    }
                }
            }
            (x, y) if x != y => out.push(key.clone()),
            _ => {}
        }
    }
    out
}

/// Reads and parses the file as a table.
fn read_table(path: &Path) -> anyhow::Result<toml::Table> {
    let text = std::fs::read_to_string(path)?;
    Ok(toml::from_str(&text)?)
}

/// Sets `key` (`section.name`) of `into` to its value in `from` (or
/// removes it).
fn copy_key(into: &mut toml::Table, from: &toml::Table, key: &str) {
    let Some((section, name)) = key.split_once('.') else {
        return;
    };
    let value = from
        .get(section)
        .and_then(toml::Value::as_table)
        .and_then(|t| t.get(name))
        .cloned();
    let table = into
        .entry(section.to_owned())
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    if let toml::Value::Table(t) = table {
        match value {
            Some(v) => {
                t.insert(name.to_owned(), v);
            }
            None => {
                t.remove(name);
            }
        }
    }
}

/// Waits for SIGHUP and reloads `path` on each, for as long as the
/// process serves. `serving` is the configuration `gw` was built from.
pub(crate) fn spawn(path: PathBuf, overrides: Overrides, gw: Arc<Gateway>, serving: &Config) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::warn!("SIGHUP cannot be watched: configuration reloads need a restart");
            return;
        };
        let mut running = match read_table(&path) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, "SIGHUP reloads disabled: cannot re-read the configuration file");
                return;
            }
        };
        let gated = serving.gateway.change_gate;
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                reload(&path, &overrides, &gw, &mut running, gated).await;
            }
        });
    }
    #[cfg(not(unix))]
    {
        let _ = (path, overrides, gw, serving);
    }
}

async fn reload(
    path: &Path,
    overrides: &Overrides,
    gw: &Gateway,
    running: &mut toml::Table,
    gated: bool,
) {
    let file = path.display().to_string();
    let (table, cfg) = match read_table(path).and_then(|t| Ok((t, Config::load(path, overrides)?)))
    {
        Ok(both) => both,
        Err(e) => {
            tracing::error!(config = %file, error = %format!("{e:#}"), "SIGHUP: configuration not reloaded; the running one keeps serving");
            return;
        }
    };
    let changed = changed_keys(running, &table);
    let (live, restart): (Vec<String>, Vec<String>) = changed
        .into_iter()
        .partition(|k| !gated && LIVE.contains(&k.as_str()));
    let detail = serde_json::json!({
        "config": file,
        "applied": live,
        "needs_restart": restart,
    });
    let mut decision = mandate_core::DecisionRecord::control(
        mandate_core::Effect::Allow,
        "config_reload",
        "configuration reloaded on SIGHUP".to_owned(),
    );
    decision.policy_hash = gw.policy().policy_hash();
    let operator = mandate_core::Subject {
        sub: "mandate".into(),
        session: "operator:mandate".into(),
        ..Default::default()
    };
    let record = mandate_core::AuditRecord::control(
        gw.clock().now_ms(),
        decision,
        operator,
        "control/config.reload",
        &detail,
    );
    if let Err(e) = gw.audit().append(record).await {
        tracing::error!(error = %e, "SIGHUP: configuration not reloaded: its audit record could not be written");
        return;
    }
    if !live.is_empty() {
        gw.policy().set_directory(crate::directory(&cfg));
        for key in &live {
            copy_key(running, &table, key);
        }
    }
    if !gated && let Err(e) = gw.policy().reload() {
        tracing::error!(error = %e, "SIGHUP: the policy files did not load; the last good set keeps serving");
    }
    if !restart.is_empty() {
        tracing::warn!(config = %file, keys = %restart.join(", "), "SIGHUP: these settings changed and need a restart; their running values keep serving");
    }
    tracing::info!(config = %file, applied = %live.join(", "), "SIGHUP: configuration reloaded");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_keys_name_sections_and_their_entries() -> anyhow::Result<()> {
        let a: toml::Table = toml::from_str(
            "[server]\nlisten = \"a\"\n[policy.groups]\nops = [\"ann\"]\n[upstreams.docs]\ncommand = \"x\"\n",
        )?;
        let b: toml::Table = toml::from_str(
            "[server]\nlisten = \"b\"\n[policy.groups]\nops = [\"ann\", \"ben\"]\n[upstreams.docs]\ncommand = \"x\"\n[approvals]\ntimeout_secs = 5\n",
        )?;
        assert_eq!(
            changed_keys(&a, &b),
            ["approvals", "policy.groups", "server.listen"]
        );
        assert!(changed_keys(&a, &a).is_empty());
        let mut running = a;
        copy_key(&mut running, &b, "policy.groups");
        assert_eq!(changed_keys(&running, &b), ["approvals", "server.listen"]);
        Ok(())
    }
}
