//! One checkpoint signer among replicas.
//!
//! With a control store shared by several replicas (PostgreSQL), the
//! shared audit log's periodic checkpoints are signed by one replica at a
//! time: the holder of the [`LEASE`] lease in the control store, renewed
//! every second for three. When the holder dies, another replica takes the
//! lease within those three seconds (plus a renewal) and signs from then
//! on; at a clean stop the holder gives it up at once. Each replica still
//! signs a final checkpoint of what it appended when it stops, and anyone
//! may ask for one (`POST /api/audit/checkpoint`, `mandate audit
//! checkpoint`): the lease orders the periodic ones, it does not forbid
//! others. A single process (SQLite) signs on the audit log's own timer.

use mandate_gateway::Gateway;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The lease's name in the control store.
pub(crate) const LEASE: &str = "audit-checkpoint-signer";
/// How long a lease lasts without renewal.
const TTL: Duration = Duration::from_secs(3);
/// How often the holder renews it (and the others try to take it).
const RENEW: Duration = Duration::from_secs(1);

/// This process's name as a lease holder: the host, the process and a
/// random part (so a restarted process is a new holder).
pub(crate) fn holder() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "mandate".into());
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!(
        "{host}/{}/{}",
        std::process::id(),
        random.get(..8).unwrap_or(&random)
    )
}

/// Signs a checkpoint every `interval` while this replica holds the lease.
pub(crate) fn spawn(gw: Arc<Gateway>, interval: Duration, holder: String) {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(RENEW);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut held = false;
        let mut last: Option<Instant> = None;
        loop {
            ticker.tick().await;
            let now_held = match gw.control().lease(LEASE, &holder, TTL).await {
                Ok(h) => h,
                Err(e) => {
                    if held {
                        tracing::warn!(error = %e, "audit checkpoint signer: cannot renew the lease; signing stops here");
                    }
                    false
                }
            };
            if now_held != held {
                if now_held {
                    tracing::info!(holder = %holder, "audit checkpoint signer: this replica signs the shared log's checkpoints");
                } else {
                    tracing::info!(holder = %holder, "audit checkpoint signer: another replica signs now");
                }
                held = now_held;
            }
            if held && last.is_none_or(|t| t.elapsed() >= interval) {
                match gw.audit().checkpoint().await {
                    Ok(Some(cp)) => tracing::debug!(size = cp.size, "audit checkpoint signed"),
                    Ok(None) => {}
                    Err(e) => tracing::warn!(error = %e, "audit checkpoint failed"),
                }
                last = Some(Instant::now());
            }
        }
    });
}
