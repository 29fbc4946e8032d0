#![doc = include_str!("../README.md")]

mod args;
mod cache;
mod context;
mod decide;
mod decision;
mod error;
mod listing;
mod load;
mod model;
mod names;
mod obligation;
mod request;
mod slice;
mod testing;

pub use args::check_bounds as check_args_bounds;
pub use decide::DEFAULT_DENY_REASON;
pub use decision::Decision;
pub use error::{
    ContractError, Diagnostics, IoError, LayoutError, LimitError, PolicyError, SourceDiagnostic,
};
pub use load::{POLICY_EXTENSION, SCHEMA_EXTENSION};
pub use names::{CONTEXT_FIELDS, NAMESPACE};
pub use testing::{CaseResult, TEST_EXTENSION, TestReport, run_tests};

use arc_swap::ArcSwap;
use load::Snapshot;
use mandate_core::{Caller, ToolCall};
use std::collections::{BTreeMap, BTreeSet};
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
    directory: ArcSwap<Versioned>,
    /// Source of [`Versioned::generation`]s.
    generations: AtomicU64,
    reload_failures: AtomicU64,
}

/// A directory and the generation that tells it apart in caches.
pub(crate) struct Versioned {
    pub(crate) directory: Arc<Directory>,
    pub(crate) generation: u64,
}

/// What the gateway knows about the session and task a call belongs to.
///
/// Every counter counts calls made BEFORE the one being decided; a value
/// above `i64::MAX` reaches policies as `i64::MAX`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionFacts {
    /// Taint labels of content that entered the session (e.g. `untrusted`).
    pub taint: BTreeSet<String>,
    /// Tool calls already made in the session.
    pub calls_in_session: u64,
    /// Tool calls already made for the token's task (0 without a task).
    pub calls_in_task: u64,
    /// Calls to this same tool already made in the session.
    pub tool_calls_in_session: u64,
    /// Calls made in the session during the last 60 seconds.
    pub calls_last_minute: u64,
    /// Sum of the `amount` arguments of the task's permitted calls.
    pub amount_in_task: i64,
    /// True only when the gateway re-decides a call a human approved.
    pub approved: bool,
    /// The task's declared intent and whether it covers this call
    /// (`context.intent`).
    pub intent: IntentFacts,
    /// Where the call's argument values came from (`context.provenance`).
    pub provenance: ArgumentFacts,
}

/// What the policies see of the task's intent (`context.intent`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IntentFacts {
    /// The task declared an intent (whatever its grants' status).
    pub declared: bool,
    /// The engine is judging a requested grant, not a call: the arguments
    /// are the values the grant pins (docs/INTENT.md).
    pub declaring: bool,
    /// A granted grant with uses left covers this call: its tool or class,
    /// and every constraint it places on the arguments.
    pub covered: bool,
    /// That grant's identifier ("" when none).
    pub grant: String,
}

/// Where the values of a call's top-level arguments came from
/// (`context.provenance`, docs/PROVENANCE.md).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ArgumentFacts {
    /// Arguments carrying a value that only untrusted results introduced
    /// (not the intent, not a trusted result).
    pub untrusted: BTreeSet<String>,
    /// Those of them no constraint of the covering grant covers.
    pub uncovered: BTreeSet<String>,
    /// Arguments carrying a value no result and no intent introduced.
    pub unseen: BTreeSet<String>,
    /// The session's memory of values is incomplete (it overflowed, or was
    /// lost in a restart): unseen values may have come from anywhere.
    pub partial: bool,
}

/// Facts about users and agent builds, from configuration.
///
/// Policies see them as `context.user in Mandate::Group::"<group>"` and
/// `context.build.registered` / `context.build.name`. Set with
/// [`PolicyEngine::set_directory`]; it survives policy reloads.
#[derive(Debug, Clone, Default)]
pub struct Directory {
    /// Each user's groups, by the user's token `sub`.
    pub groups: BTreeMap<String, BTreeSet<String>>,
    /// Registered agent builds, by build hash (the token's `build` claim).
    /// The empty hash is never registered.
    pub builds: BTreeMap<String, BuildInfo>,
}

/// A registered agent build.
#[derive(Debug, Clone, Default)]
pub struct BuildInfo {
    /// A human-readable name (`context.build.name`).
    pub name: String,
}

/// Everything one decision depends on.
#[derive(Debug, Clone, Copy)]
pub struct DecisionRequest<'a> {
    /// Who is calling (a verified principal's view, or a policy test's).
    pub caller: Caller<'a>,
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
            directory: ArcSwap::from_pointee(Versioned {
                directory: Arc::new(Directory::default()),
                generation: 0,
            }),
            generations: AtomicU64::new(1),
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

    /// Replaces the directory (users' groups, registered builds). Takes
    /// effect for the next decision; kept across policy reloads.
    pub fn set_directory(&self, dir: Directory) {
        tracing::info!(
            users = dir.groups.len(),
            builds = dir.builds.len(),
            "policy directory replaced"
        );
        self.directory
            .store(Arc::new(self.versioned(Arc::new(dir))));
    }

    /// The directory in use.
    pub fn directory(&self) -> Arc<Directory> {
        Arc::clone(&self.directory.load().directory)
    }

    /// `directory` with a generation no other directory of this engine had.
    pub(crate) fn versioned(&self, directory: Arc<Directory>) -> Versioned {
        Versioned {
            directory,
            generation: self.generations.fetch_add(1, Ordering::Relaxed),
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

    /// Validates a policy set held in memory (file name → text, as the
    /// files of a directory would be; other names are ignored) without
    /// touching the file system, and returns its policy hash: the hash
    /// [`PolicyEngine::load_dir`] gives the same files. For the change
    /// gate, which checks a proposed set before anything is written.
    pub fn check_sources(files: &BTreeMap<String, String>) -> Result<String, PolicyError> {
        let s = Snapshot::from_memory(Path::new("<proposed policy set>"), files)?;
        Ok(s.hash)
    }

    /// Decides one call. TOTAL: never returns an error and never panics.
    /// Any error (building the request, evaluating ANY policy, a limit)
    /// yields [`mandate_core::Effect::Deny`] with the error in the reasons.
    pub fn decide(&self, req: &DecisionRequest<'_>) -> Decision {
        self.decide_in(&self.directory.load(), req)
    }

    /// Whether some arguments could make a call of `req`'s tool allowed for
    /// this caller (for `tools/list`): `req.call`'s arguments, and the
    /// intent and provenance facts, are treated as unknown. A tool no
    /// arguments could make allowed is hidden; every call is decided on its
    /// own arguments by [`PolicyEngine::decide`] regardless.
    pub fn may_allow(&self, req: &DecisionRequest<'_>) -> bool {
        let snapshot = self.current.load();
        let directory = self.directory.load();
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            listing::may_allow(&snapshot, &directory, req)
        }))
        .unwrap_or(false)
    }

    /// [`PolicyEngine::decide`] against the given directory instead of the
    /// engine's (policy tests bring their own).
    pub(crate) fn decide_in(&self, directory: &Versioned, req: &DecisionRequest<'_>) -> Decision {
        let snapshot = self.current.load();
        // Cedar does not panic by design; should it ever, deny rather than
        // unwind into the gateway.
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            decide::decide(&snapshot, directory, req)
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
