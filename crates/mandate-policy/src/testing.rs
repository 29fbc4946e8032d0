//! Policy test cases from JSON files, for `mandate policy test`.
//!
//! A test file is a JSON object; unknown keys are errors:
//!
//! ```json
//! {
//!   "description": "optional text",
//!   "principal": { "sub": "alice", "act": ["assistant"], "scope": "docs.* bank.*" },
//!   "directory": { "groups": { "alice": ["finance"] }, "builds": { "4f2a": { "name": "v3" } } },
//!   "cases": [
//!     {
//!       "name": "searching the docs is allowed",
//!       "tool": "docs.search",
//!       "class": "read",
//!       "args": { "query": "refund policy" },
//!       "session": { "taint": ["untrusted"], "calls_in_session": 3, "calls_last_minute": 2 },
//!       "now": 1767225600,
//!       "expect": {
//!         "effect": "allow",
//!         "obligations": [],
//!         "policies": ["read-in-scope"],
//!         "reason_contains": "scope"
//!       }
//!     }
//!   ]
//! }
//! ```
//!
//! * `principal` (file level) is the default for cases without their own;
//!   its fields are `sub`, `act` (actor chain, calling agent first), `scope`
//!   (space separated), and optional `task_id`, `build`, `sid`, `iss`.
//! * `directory` (optional) replaces the engine's [`Directory`] for the
//!   file's cases: `groups` by user `sub`, `builds` by build hash. Without
//!   it the cases see the engine's directory.
//! * `args`, `session` and `now` are optional (`{}`, no facts, and 0).
//!   `session` takes the fields of [`SessionFacts`]: `taint`,
//!   `calls_in_session`, `calls_in_task`, `tool_calls_in_session`,
//!   `calls_last_minute`, `amount_in_task`, `approved`.
//! * `expect.effect` is `"allow"` or `"deny"`. `expect.obligations` uses the
//!   `@obligation` syntax (`"approval"`, `"redact:a,b"`) and is always
//!   compared (absent means none). `expect.policies` (the determining
//!   policy ids, any order) and `expect.reason_contains` (a substring of one
//!   of the reasons) are compared only when present.

use crate::Decision;
use crate::error::{Diagnostics, PolicyError, SourceDiagnostic};
use crate::{BuildInfo, DecisionRequest, Directory, PolicyEngine, SessionFacts, obligation};
use mandate_core::{CallerData, Effect, Obligation, Scope, ToolCall, ToolClass, ToolName};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;

/// Extension of policy test files.
pub const TEST_EXTENSION: &str = "json";

/// The outcome of [`run_tests`].
#[derive(Debug, Clone)]
pub struct TestReport {
    /// Every case, in file-name then file order.
    pub cases: Vec<CaseResult>,
    /// The policy hash the cases ran against.
    pub policy_hash: String,
}

/// One case's outcome.
#[derive(Debug, Clone)]
pub struct CaseResult {
    /// Test file name.
    pub file: String,
    /// Case name.
    pub name: String,
    /// What differed from the expectation; `None` when the case passed.
    pub failure: Option<String>,
    /// The decision the engine made.
    pub decision: Decision,
}

impl CaseResult {
    /// Whether the decision met the expectation.
    pub fn passed(&self) -> bool {
        self.failure.is_none()
    }
}

impl TestReport {
    /// Number of passing cases.
    pub fn passed(&self) -> usize {
        self.cases.iter().filter(|c| c.passed()).count()
    }

    /// Number of failing cases.
    pub fn failed(&self) -> usize {
        self.cases.len().saturating_sub(self.passed())
    }

    /// Whether every case passed (and there was at least one).
    pub fn all_passed(&self) -> bool {
        !self.cases.is_empty() && self.failed() == 0
    }
}

impl fmt::Display for TestReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in &self.cases {
            match &c.failure {
                None => writeln!(f, "ok   {}: {}", c.file, c.name)?,
                Some(why) => writeln!(f, "FAIL {}: {}\n       {why}", c.file, c.name)?,
            }
        }
        write!(
            f,
            "{} passed, {} failed (policy set {})",
            self.passed(),
            self.failed(),
            self.policy_hash
        )
    }
}

/// Runs every `*.json` test file in `dir` (not recursive) against `engine`.
///
/// Returns `Err` only when a file cannot be read or is malformed (the
/// message gives file, line and column); failing cases are reported in the
/// [`TestReport`].
pub fn run_tests(engine: &PolicyEngine, dir: &Path) -> Result<TestReport, PolicyError> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| PolicyError::io(dir, e))? {
        let entry = entry.map_err(|e| PolicyError::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_test = Path::new(&name)
            .extension()
            .is_some_and(|e| e == TEST_EXTENSION)
            && !name.starts_with('.');
        if is_test && entry.path().is_file() {
            files.push((name, entry.path()));
        }
    }
    if files.is_empty() {
        return Err(PolicyError::layout(
            dir,
            format!("no *.{TEST_EXTENSION} policy test files"),
        ));
    }
    files.sort();

    let mut cases = Vec::new();
    for (name, path) in files {
        let text = std::fs::read_to_string(&path).map_err(|e| PolicyError::io(&path, e))?;
        let file: TestFile = serde_json::from_str(&text).map_err(|e| {
            PolicyError::TestFile(Diagnostics(vec![SourceDiagnostic::new(
                &name,
                Some((e.line(), e.column())),
                e.to_string(),
            )]))
        })?;
        // A file's own directory, else the engine's (a fresh generation
        // either way, so cached entities of another directory never apply).
        let directory = engine.versioned(match &file.directory {
            Some(d) => std::sync::Arc::new(d.to_directory()),
            None => engine.directory(),
        });
        for case in &file.cases {
            let principal = case
                .principal
                .as_ref()
                .or(file.principal.as_ref())
                .ok_or_else(|| malformed(&name, case, "no `principal` in the case or the file"))?
                .to_principal();
            let tool = ToolName::parse(&case.tool)
                .ok_or_else(|| malformed(&name, case, "`tool` must be `upstream.tool`"))?;
            let expected_obligations = obligation::merge(
                case.expect
                    .obligations
                    .iter()
                    .map(|o| obligation::parse_list(o))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| malformed(&name, case, &e))?
                    .iter()
                    .map(Vec::as_slice),
            );
            let call = ToolCall::new(tool, case.class, case.args.clone());
            let session = case.session.to_facts();
            let decision = engine.decide_in(
                &directory,
                &DecisionRequest {
                    caller: principal.caller(),
                    call: &call,
                    session: &session,
                    now_unix: case.now,
                },
            );
            let failure = compare(&case.expect, &expected_obligations, &decision);
            cases.push(CaseResult {
                file: name.clone(),
                name: case.name.clone(),
                failure,
                decision,
            });
        }
    }
    Ok(TestReport {
        cases,
        policy_hash: engine.policy_hash(),
    })
}

fn malformed(file: &str, case: &TestCase, message: &str) -> PolicyError {
    PolicyError::TestFile(Diagnostics(vec![SourceDiagnostic::new(
        file,
        None,
        format!("case {:?}: {message}", case.name),
    )]))
}

fn compare(expect: &Expect, obligations: &[Obligation], got: &Decision) -> Option<String> {
    let mut diffs = Vec::new();
    if got.effect() != expect.effect {
        diffs.push(format!(
            "expected {}, got {}",
            expect.effect.as_str(),
            got.effect().as_str()
        ));
    }
    if got.obligations() != obligations {
        diffs.push(format!(
            "expected obligations {obligations:?}, got {:?}",
            got.obligations()
        ));
    }
    if let Some(policies) = &expect.policies {
        let want: BTreeSet<&String> = policies.iter().collect();
        let have: BTreeSet<&String> = got.policies().iter().collect();
        if want != have {
            diffs.push(format!("expected policies {want:?}, got {have:?}"));
        }
    }
    if let Some(needle) = &expect.reason_contains
        && !got.reasons().iter().any(|r| r.contains(needle.as_str()))
    {
        diffs.push(format!(
            "expected a reason containing {needle:?}, got {:?}",
            got.reasons()
        ));
    }
    if diffs.is_empty() {
        None
    } else {
        Some(format!(
            "{} (reasons: {:?})",
            diffs.join("; "),
            got.reasons()
        ))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TestFile {
    /// Free text for humans reading the file.
    #[serde(default, rename = "description")]
    _description: Option<String>,
    #[serde(default)]
    principal: Option<TestPrincipal>,
    #[serde(default)]
    directory: Option<TestDirectory>,
    cases: Vec<TestCase>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TestDirectory {
    #[serde(default)]
    groups: BTreeMap<String, BTreeSet<String>>,
    #[serde(default)]
    builds: BTreeMap<String, TestBuild>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TestBuild {
    #[serde(default)]
    name: String,
}

impl TestDirectory {
    fn to_directory(&self) -> Directory {
        Directory {
            groups: self.groups.clone(),
            builds: self
                .builds
                .iter()
                .map(|(hash, b)| {
                    (
                        hash.clone(),
                        BuildInfo {
                            name: b.name.clone(),
                        },
                    )
                })
                .collect(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TestPrincipal {
    sub: String,
    act: Vec<String>,
    #[serde(default)]
    scope: String,
    #[serde(default)]
    task_id: Option<String>,
    #[serde(default)]
    build: Option<String>,
    #[serde(default)]
    sid: Option<String>,
    #[serde(default)]
    iss: Option<String>,
}

impl TestPrincipal {
    fn to_principal(&self) -> CallerData {
        CallerData {
            iss: self
                .iss
                .clone()
                .unwrap_or_else(|| "mandate-policy-test".to_owned()),
            sub: self.sub.clone(),
            act: self.act.clone(),
            scope: Scope::parse(&self.scope),
            task_id: self.task_id.clone(),
            build: self.build.clone(),
            sid: self.sid.clone(),
            jti: None,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TestCase {
    name: String,
    #[serde(default)]
    principal: Option<TestPrincipal>,
    tool: String,
    class: ToolClass,
    #[serde(default)]
    args: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    session: TestSession,
    #[serde(default)]
    now: i64,
    expect: Expect,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TestSession {
    #[serde(default)]
    taint: BTreeSet<String>,
    #[serde(default)]
    calls_in_session: u64,
    #[serde(default)]
    calls_in_task: u64,
    #[serde(default)]
    tool_calls_in_session: u64,
    #[serde(default)]
    calls_last_minute: u64,
    #[serde(default)]
    amount_in_task: i64,
    #[serde(default)]
    approved: bool,
    #[serde(default)]
    intent: TestIntent,
    #[serde(default)]
    provenance: TestProvenance,
}

/// `context.intent` in a test case.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TestIntent {
    #[serde(default)]
    declared: bool,
    #[serde(default)]
    declaring: bool,
    #[serde(default)]
    covered: bool,
    #[serde(default)]
    grant: String,
}

/// `context.provenance` in a test case (argument names).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TestProvenance {
    #[serde(default)]
    untrusted: BTreeSet<String>,
    #[serde(default)]
    uncovered: BTreeSet<String>,
    #[serde(default)]
    unseen: BTreeSet<String>,
    #[serde(default)]
    partial: bool,
}

impl TestSession {
    fn to_facts(&self) -> SessionFacts {
        SessionFacts {
            taint: self.taint.clone(),
            calls_in_session: self.calls_in_session,
            calls_in_task: self.calls_in_task,
            tool_calls_in_session: self.tool_calls_in_session,
            calls_last_minute: self.calls_last_minute,
            amount_in_task: self.amount_in_task,
            approved: self.approved,
            intent: crate::IntentFacts {
                declared: self.intent.declared,
                declaring: self.intent.declaring,
                covered: self.intent.covered,
                grant: self.intent.grant.clone(),
            },
            provenance: crate::ArgumentFacts {
                untrusted: self.provenance.untrusted.clone(),
                uncovered: self.provenance.uncovered.clone(),
                unseen: self.provenance.unseen.clone(),
                partial: self.provenance.partial,
            },
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    effect: Effect,
    #[serde(default)]
    obligations: Vec<String>,
    #[serde(default)]
    policies: Option<Vec<String>>,
    #[serde(default)]
    reason_contains: Option<String>,
}
