#![doc = include_str!("../README.md")]

mod decide;
mod error;
mod load;
mod model;
mod obligation;
mod request;
mod testing;

pub use decide::DEFAULT_DENY_REASON;
pub use error::{
    ContractError, Diagnostics, IoError, LayoutError, LimitError, PolicyError, SourceDiagnostic,
};
pub use load::{POLICY_EXTENSION, SCHEMA_EXTENSION};
pub use model::{CONTEXT_FIELDS, NAMESPACE};
pub use testing::{CaseResult, TEST_EXTENSION, TestReport, run_tests};

use arc_swap::ArcSwap;
use load::Snapshot;
use mandate_core::{Decision, Principal, ToolCall};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Bounds on the work the engine agrees to do.
pub mod limits {
    /// Most policies in one set; a larger set is refused at load.
    pub const MAX_POLICIES: usize = 10_000;
    /// Most bytes of policy and schema text in one set; refused at load.
    pub const MAX_SOURCE_BYTES: u64 = 1024 * 1024;
    /// Deepest nesting of a call's arguments (the arguments object itself
    /// is level 1); deeper arguments deny the call.
    pub const MAX_ARGS_DEPTH: usize = 16;
    /// Largest serialised (JSON) size of a call's arguments; larger
    /// arguments deny the call.
    pub const MAX_ARGS_BYTES: usize = 64 * 1024;
}

/// The policy decision point: a validated Cedar policy set, swapped
/// atomically on reload and never re-parsed per call.
pub struct PolicyEngine {
    dir: PathBuf,
    current: ArcSwap<Snapshot>,
    reload_failures: AtomicU64,
}

/// What the gateway knows about the session a call belongs to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionFacts {
    /// Taint labels of content that entered the session (e.g. `untrusted`).
    pub taint: BTreeSet<String>,
    /// Tool calls already made in the session.
    pub calls_in_session: u64,
}

/// Everything one decision depends on.
#[derive(Debug, Clone, Copy)]
pub struct DecisionRequest<'a> {
    /// The verified composite subject.
    pub principal: &'a Principal,
    /// The call, with its configured tool class.
    pub call: &'a ToolCall,
    /// Session facts (taint, counters).
    pub session: &'a SessionFacts,
    /// Current time, seconds since the Unix epoch.
    pub now_unix: i64,
}

impl PolicyEngine {
    /// Loads `*.cedar` policies and exactly one `*.cedarschema` from `dir`;
    /// validates in STRICT mode; refuses a broken set with a precise message.
    pub fn load_dir(dir: &Path) -> Result<PolicyEngine, PolicyError> {
        let snapshot = Snapshot::load(dir)?;
        log_loaded(dir, &snapshot);
        Ok(Self {
            dir: dir.to_path_buf(),
            current: ArcSwap::from_pointee(snapshot),
            reload_failures: AtomicU64::new(0),
        })
    }

    /// Re-reads the directory; on error returns `Err` and KEEPS the last
    /// good snapshot serving (see [`PolicyEngine::reload_failures`]).
    pub fn reload(&self) -> Result<(), PolicyError> {
        match Snapshot::load(&self.dir) {
            Ok(snapshot) => {
                let old_hash = self.current.load().hash.clone();
                if old_hash == snapshot.hash {
                    // Same files: keep the serving snapshot (and its caches).
                    tracing::debug!(hash = %old_hash, "policy set unchanged");
                    return Ok(());
                }
                log_loaded(&self.dir, &snapshot);
                tracing::info!(old = %old_hash, new = %snapshot.hash, "policy set replaced");
                self.current.store(Arc::new(snapshot));
                Ok(())
            }
            Err(e) => {
                self.reload_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    dir = %self.dir.display(),
                    error = %e,
                    keeping = %self.current.load().hash,
                    "policy reload refused; the last good policy set keeps serving"
                );
                Err(e)
            }
        }
    }

    /// How many reloads have been refused since the engine was built.
    pub fn reload_failures(&self) -> u64 {
        self.reload_failures.load(Ordering::Relaxed)
    }

    /// Validates a directory without building an engine (for
    /// `mandate policy check`).
    pub fn check_dir(dir: &Path) -> Result<String, PolicyError> {
        let s = Snapshot::load(dir)?;
        let mut summary = format!(
            "{} policies in {} files valid against schema {} (strict mode); policy hash {}",
            s.policy_count(),
            s.policy_files,
            s.schema_file,
            s.hash
        );
        for w in &s.warnings {
            summary.push('\n');
            summary.push_str(w);
        }
        Ok(summary)
    }

    /// Decides one call. TOTAL: never returns an error and never panics.
    /// Any error (building the request, evaluating ANY policy, a limit)
    /// yields [`mandate_core::Effect::Deny`] with the error in the reasons.
    pub fn decide(&self, req: &DecisionRequest<'_>) -> Decision {
        let snapshot = self.current.load();
        // Cedar does not panic by design; should it ever, deny rather than
        // unwind into the gateway.
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            decide::decide(&snapshot, req)
        }))
        .unwrap_or_else(|_| {
            Decision::deny(
                "internal error while evaluating policies (call denied, fail closed)",
                snapshot.hash.clone(),
            )
        })
    }

    /// SHA-256 (hex) of the active set, over the sorted file names and
    /// contents of its `*.cedar` and `*.cedarschema` files.
    pub fn policy_hash(&self) -> String {
        self.current.load().hash.clone()
    }

    /// The policy directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Number of policies in the active set.
    pub fn policy_count(&self) -> usize {
        self.current.load().policy_count()
    }
}

impl std::fmt::Debug for PolicyEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyEngine")
            .field("dir", &self.dir)
            .field("policy_hash", &self.policy_hash())
            .field("reload_failures", &self.reload_failures())
            .finish()
    }
}

fn log_loaded(dir: &Path, s: &Snapshot) {
    for w in &s.warnings {
        tracing::warn!(warning = %w, "policy set warning");
    }
    tracing::info!(
        dir = %dir.display(),
        policies = s.policy_count(),
        hash = %s.hash,
        "policy set loaded"
    );
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod engine_tests;
