//! `PolicyEngine::decide` against raw Cedar on the same request.
//!
//! Policy sets: the quickstart policies alone, and padded with filler
//! policies to 100 and 1,000 ("scoped": nine in ten about one other tool or
//! upstream, one in ten a guard on every call), plus 100 policies whose
//! filler all applies to every call ("unscoped": nothing can be skipped).
//!
//! Per set and scenario (a read, a transfer):
//!
//! * `mandate_decide`: the whole PDP call: arguments checked and converted,
//!   context and principal entities built (or taken from the per-snapshot
//!   cache), the applicable policy slices authorised, the outcome folded
//!   into a `Decision` (fresh id, reasons, obligations).
//! * `cedar_is_authorized`: `Authorizer::is_authorized` alone over the whole
//!   set, on an equivalent request and entity store built once before
//!   timing. `mandate_decide / cedar_is_authorized` is the ratio reported.
//! * `cedar_build_and_authorize`: building that request (validated against
//!   the schema) and a full entity store with the Cedar API per call, then
//!   authorising: what a straightforward Cedar-based PDP pays.
//!
//! After the criterion runs, a sampled loop times single calls at 100
//! policies (scoped and unscoped) and prints p50/p99 of `decide` next to raw
//! Cedar's in the same run (criterion reports means only). Set
//! `MANDATE_BENCH_NO_PERCENTILES` to skip it, e.g. when profiling.

use cedar_policy::{
    Authorizer, Context, Entities, Entity, EntityId, EntityTypeName, EntityUid, PolicySet, Request,
    RestrictedExpression, Schema,
};
use criterion::{Criterion, criterion_group, criterion_main};
use mandate_core::{CallerData as Principal, Scope, ToolCall, ToolClass, ToolName};
use mandate_policy::{BuildInfo, DecisionRequest, Directory, PolicyEngine, SessionFacts};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::error::Error;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

const NOW: i64 = 1_767_225_600;
const BUILD: &str = "4f2a9c0d5e6b7a8190c1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f60718293a4b5c6d";

/// The `Args` fields of the shipped `mandate.cedarschema`.
const DECLARED_ARGS: [&str; 4] = ["amount", "to", "recipient", "query"];

/// Policy sets to measure: total policy count (0: the shipped set as is)
/// and how the filler is scoped.
const SETS: [(usize, Filler); 4] = [
    (0, Filler::Scoped),
    (100, Filler::Scoped),
    (1000, Filler::Scoped),
    (100, Filler::Unscoped),
];

/// Calls timed one by one for the percentiles.
const SAMPLES: usize = 20_000;

fn shipped_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/quickstart/policies")
}

struct Scenario {
    name: &'static str,
    tool: &'static str,
    class: ToolClass,
    args: serde_json::Value,
}

fn scenarios() -> [Scenario; 2] {
    [
        Scenario {
            name: "read",
            tool: "docs.search",
            class: ToolClass::Read,
            args: serde_json::json!({"query": "refund policy"}),
        },
        Scenario {
            name: "transfer",
            tool: "bank.transfer",
            class: ToolClass::Financial,
            args: serde_json::json!({"amount": 250, "to": "acc-9", "memo": "invoice 42"}),
        },
    ]
}

fn principal() -> Principal {
    Principal {
        iss: "https://broker.bench".into(),
        sub: "alice".into(),
        act: vec!["assistant".into()],
        scope: Scope::parse("docs.* bank.*"),
        task_id: Some("task-1".into()),
        build: Some(BUILD.into()),
        sid: Some("s1".into()),
        jti: None,
    }
}

fn session() -> SessionFacts {
    SessionFacts {
        taint: BTreeSet::from(["internal".to_owned()]),
        calls_in_session: 12,
        calls_in_task: 40,
        tool_calls_in_session: 3,
        calls_last_minute: 5,
        amount_in_task: 1200,
        approved: false,
        ..SessionFacts::default()
    }
}

fn directory() -> Directory {
    Directory {
        groups: BTreeMap::from([(
            "alice".to_owned(),
            BTreeSet::from(["finance".to_owned(), "staff".to_owned()]),
        )]),
        builds: BTreeMap::from([(
            BUILD.to_owned(),
            BuildInfo {
                name: "assistant v3".into(),
            },
        )]),
    }
}

fn tool_call(s: &Scenario) -> Result<ToolCall, Box<dyn Error>> {
    let name = ToolName::parse(s.tool).ok_or("bad tool name")?;
    let args = s
        .args
        .as_object()
        .cloned()
        .ok_or("args must be an object")?;
    Ok(ToolCall::new(name, s.class, args))
}

/// How the filler policies are scoped.
#[derive(Clone, Copy)]
enum Filler {
    /// Like a real deployment: nine in ten policies are about one other
    /// tool or upstream (its arguments, its callers' groups, taint); one in
    /// ten is a cross-cutting guard that applies to every call.
    Scoped,
    /// The worst case for Mandate: every filler policy applies to every
    /// call and has no scope at all, so there is nothing to skip or
    /// simplify and both sides evaluate the same conditions.
    Unscoped,
}

impl Filler {
    fn label(self) -> &'static str {
        match self {
            Self::Scoped => "",
            Self::Unscoped => "-unscoped",
        }
    }
}

fn filler_policy(i: usize, filler: Filler) -> String {
    if matches!(filler, Filler::Unscoped) {
        // No scope at all: nothing for Mandate to file away or drop.
        return format!(
            "@id(\"fill-{i}\")\nforbid (principal, action, resource)\nwhen {{ context.taint.contains(\"label-{i}\") && context.build.name == \"legacy-{i}\" }};\n"
        );
    }
    if i % 10 == 9 {
        return format!(
            "@id(\"fill-{i}\")\nforbid (principal, action in Mandate::Action::\"call\", resource)\nwhen {{ context.taint.contains(\"label-{i}\") && context.build.name == \"legacy-{i}\" }};\n"
        );
    }
    match i % 5 {
        0 => format!(
            "@id(\"fill-{i}\")\npermit (principal, action == Mandate::Action::\"read\", resource == Mandate::Tool::\"svc{i}.search\")\nwhen {{ context.in_scope }};\n"
        ),
        1 => format!(
            "@id(\"fill-{i}\")\nforbid (principal, action == Mandate::Action::\"financial\", resource == Mandate::Tool::\"pay{i}.transfer\")\nwhen {{ context.args has amount && context.args.amount > {} }};\n",
            100 * i
        ),
        2 => format!(
            "@id(\"fill-{i}\")\npermit (principal, action == Mandate::Action::\"write\", resource == Mandate::Tool::\"svc{i}.update\")\nwhen {{ context.in_scope && context.user in Mandate::Group::\"team{i}\" }};\n"
        ),
        3 => format!(
            "@id(\"fill-{i}\")\nforbid (principal, action == Mandate::Action::\"outbound\", resource == Mandate::Tool::\"mail{i}.send\")\nwhen {{ context.args has to && context.args.to == \"blocked-{i}@example.net\" }};\n"
        ),
        _ => format!(
            "@id(\"fill-{i}\")\nforbid (principal, action, resource in Mandate::Upstream::\"svc{i}\")\nwhen {{ context.taint.contains(\"label-{i}\") }};\n"
        ),
    }
}

/// A policy directory with the shipped files plus filler up to `total`.
fn policy_dir(total: usize, filler: Filler) -> Result<tempfile::TempDir, Box<dyn Error>> {
    let dir = tempfile::tempdir()?;
    let mut shipped = 0;
    for entry in std::fs::read_dir(shipped_dir())? {
        let path = entry?.path();
        let ext = path.extension().and_then(|e| e.to_str());
        if let (Some("cedar" | "cedarschema"), Some(name)) = (ext, path.file_name()) {
            let text = std::fs::read_to_string(&path)?;
            if ext == Some("cedar") {
                shipped += PolicySet::from_str(&text)?.policies().count();
            }
            std::fs::write(dir.path().join(name), text)?;
        }
    }
    let filler: String = (0..total.saturating_sub(shipped))
        .map(|i| filler_policy(i, filler))
        .collect();
    if !filler.is_empty() {
        std::fs::write(dir.path().join("90-filler.cedar"), filler)?;
    }
    Ok(dir)
}

/// The policy files of `dir` parsed directly with Cedar (ids renamed apart).
fn raw_policies(dir: &Path) -> Result<(PolicySet, Schema), Box<dyn Error>> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    names.sort();
    let mut set = PolicySet::new();
    let mut schema = None;
    for path in names {
        match path.extension().and_then(|e| e.to_str()) {
            Some("cedar") => {
                set.merge(
                    &PolicySet::from_str(&std::fs::read_to_string(&path)?)?,
                    true,
                )?;
            }
            Some("cedarschema") => {
                schema = Some(Schema::from_cedarschema_str(&std::fs::read_to_string(&path)?)?.0);
            }
            _ => {}
        }
    }
    Ok((set, schema.ok_or("no schema")?))
}

fn uid(ty: &str, id: &str) -> Result<EntityUid, Box<dyn Error>> {
    Ok(EntityUid::from_type_name_and_id(
        EntityTypeName::from_str(&format!("Mandate::{ty}"))?,
        EntityId::new(id),
    ))
}

fn value(v: &serde_json::Value) -> Option<RestrictedExpression> {
    Some(match v {
        serde_json::Value::Null => return None,
        serde_json::Value::Bool(b) => RestrictedExpression::new_bool(*b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => RestrictedExpression::new_long(i),
            None => RestrictedExpression::new_string(n.to_string()),
        },
        serde_json::Value::String(s) => RestrictedExpression::new_string(s.clone()),
        serde_json::Value::Array(a) => RestrictedExpression::new_set(a.iter().filter_map(value)),
        serde_json::Value::Object(m) => RestrictedExpression::new_record(
            m.iter()
                .filter_map(|(k, v)| value(v).map(|e| (k.clone(), e))),
        )
        .ok()?,
    })
}

/// The request and entities `decide` builds for this call, built by hand
/// with the Cedar API and validated against the schema.
fn raw_request(
    schema: &Schema,
    p: &Principal,
    call: &ToolCall,
    s: &SessionFacts,
    dir: &Directory,
) -> Result<(Request, Entities), Box<dyn Error>> {
    let tool_name = call.name.to_string();
    let agent = uid("Agent", p.caller().agent().ok_or("no agent")?)?;
    let user = uid("User", &p.sub)?;
    let upstream = uid("Upstream", &call.name.upstream)?;
    let tool = uid("Tool", &tool_name)?;
    let action = uid("Action", call.class.as_str())?;
    let hash = p.build.clone().unwrap_or_default();
    let build = uid("Build", &hash)?;
    let task_id = p.task_id.clone().unwrap_or_default();
    let task = uid("Task", &task_id)?;
    let strings = |it: Vec<&str>| {
        RestrictedExpression::new_set(
            it.into_iter()
                .map(|s| RestrictedExpression::new_string(s.into())),
        )
    };
    let long = |n: u64| RestrictedExpression::new_long(i64::try_from(n).unwrap_or(i64::MAX));
    // Like `decide`, pass only the fields the shipped schema's `Args` declares.
    let args = RestrictedExpression::new_record(
        call.args
            .iter()
            .filter(|(k, _)| DECLARED_ARGS.contains(&k.as_str()))
            .filter_map(|(k, v)| value(v).map(|e| (k.clone(), e))),
    )?;
    let context = Context::from_pairs([
        (
            "user".into(),
            RestrictedExpression::new_entity_uid(user.clone()),
        ),
        ("scope".into(), strings(p.scope.iter().collect())),
        (
            "in_scope".into(),
            RestrictedExpression::new_bool(p.scope.covers(&tool_name)),
        ),
        ("task".into(), RestrictedExpression::new_entity_uid(task)),
        ("task_id".into(), RestrictedExpression::new_string(task_id)),
        (
            "build".into(),
            RestrictedExpression::new_entity_uid(build.clone()),
        ),
        (
            "session".into(),
            RestrictedExpression::new_string(p.caller().session_key()),
        ),
        (
            "tool".into(),
            RestrictedExpression::new_string(tool_name.clone()),
        ),
        (
            "taint".into(),
            strings(s.taint.iter().map(String::as_str).collect()),
        ),
        ("calls_in_session".into(), long(s.calls_in_session)),
        ("calls_in_task".into(), long(s.calls_in_task)),
        (
            "tool_calls_in_session".into(),
            long(s.tool_calls_in_session),
        ),
        ("calls_last_minute".into(), long(s.calls_last_minute)),
        (
            "amount_in_task".into(),
            RestrictedExpression::new_long(s.amount_in_task),
        ),
        (
            "approved".into(),
            RestrictedExpression::new_bool(s.approved),
        ),
        (
            "intent".into(),
            RestrictedExpression::new_record([
                (
                    "declared".to_owned(),
                    RestrictedExpression::new_bool(s.intent.declared),
                ),
                (
                    "declaring".to_owned(),
                    RestrictedExpression::new_bool(s.intent.declaring),
                ),
                (
                    "covered".to_owned(),
                    RestrictedExpression::new_bool(s.intent.covered),
                ),
                (
                    "grant".to_owned(),
                    RestrictedExpression::new_string(s.intent.grant.clone()),
                ),
            ])?,
        ),
        (
            "provenance".into(),
            RestrictedExpression::new_record([
                (
                    "untrusted".to_owned(),
                    strings(s.provenance.untrusted.iter().map(String::as_str).collect()),
                ),
                (
                    "uncovered".to_owned(),
                    strings(s.provenance.uncovered.iter().map(String::as_str).collect()),
                ),
                (
                    "unseen".to_owned(),
                    strings(s.provenance.unseen.iter().map(String::as_str).collect()),
                ),
                (
                    "partial".to_owned(),
                    RestrictedExpression::new_bool(s.provenance.partial),
                ),
            ])?,
        ),
        ("now".into(), RestrictedExpression::new_long(NOW)),
        ("args".into(), args),
    ])?;
    let request = Request::new(agent.clone(), action, tool.clone(), context, Some(schema))?;
    let groups = dir
        .groups
        .get(&p.sub)
        .into_iter()
        .flatten()
        .map(|g| uid("Group", g))
        .collect::<Result<HashSet<_>, _>>()?;
    let info = dir.builds.get(&hash);
    let mut entities = vec![
        Entity::new_no_attrs(agent, HashSet::new()),
        Entity::new_no_attrs(user, groups),
        Entity::new_no_attrs(upstream.clone(), HashSet::new()),
        Entity::new(
            build,
            HashMap::from([
                (
                    "registered".to_owned(),
                    RestrictedExpression::new_bool(info.is_some()),
                ),
                (
                    "name".to_owned(),
                    RestrictedExpression::new_string(
                        info.map(|i| i.name.clone()).unwrap_or_default(),
                    ),
                ),
            ]),
            HashSet::new(),
        )?,
        Entity::new(
            tool,
            HashMap::from([
                (
                    "class".to_owned(),
                    RestrictedExpression::new_string(call.class.as_str().into()),
                ),
                (
                    "upstream".to_owned(),
                    RestrictedExpression::new_string(call.name.upstream.clone()),
                ),
            ]),
            HashSet::from([upstream]),
        )?,
    ];
    entities.extend(schema.action_entities()?.iter().cloned());
    Ok((request, Entities::from_entities(entities, None)?))
}

/// One policy set under test, with everything both sides need.
struct Setup {
    /// Kept so the directory outlives the engine.
    _dir: tempfile::TempDir,
    engine: PolicyEngine,
    policies: PolicySet,
    schema: Schema,
}

fn setup(total: usize, filler: Filler) -> Result<Setup, Box<dyn Error>> {
    let dir = policy_dir(total, filler)?;
    let engine = PolicyEngine::load_dir(dir.path())?;
    engine.set_directory(directory());
    let (policies, schema) = raw_policies(dir.path())?;
    if policies.policies().count() != engine.policy_count() {
        return Err("raw and engine policy counts differ".into());
    }
    Ok(Setup {
        _dir: dir,
        engine,
        policies,
        schema,
    })
}

#[expect(clippy::expect_used, reason = "benchmark setup must fail loudly")]
fn bench(c: &mut Criterion) {
    let authorizer = Authorizer::new();
    let principal = principal();
    let session = session();
    let dir = directory();

    for (total, filler) in SETS {
        let s = setup(total, filler).expect("policy set loads");
        let count = s.engine.policy_count();
        let mut group = c.benchmark_group(format!("decide/{count}-policies{}", filler.label()));
        for sc in &scenarios() {
            let call = tool_call(sc).expect("scenario call");
            let req = DecisionRequest {
                caller: principal.caller(),
                call: &call,
                session: &session,
                now_unix: NOW,
            };
            let (request, entities) =
                raw_request(&s.schema, &principal, &call, &session, &dir).expect("raw request");

            // Same answer both ways, or the comparison means nothing.
            let ours = s.engine.decide(&req);
            let theirs = authorizer.is_authorized(&request, &s.policies, &entities);
            assert_eq!(
                ours.is_allow(),
                theirs.decision() == cedar_policy::Decision::Allow,
                "{}: decide and raw Cedar disagree: {ours:?}",
                sc.name
            );
            assert!(theirs.diagnostics().errors().next().is_none());
            assert_eq!(
                ours.policies().len(),
                theirs.diagnostics().reason().count(),
                "{}",
                sc.name
            );

            group.bench_function(format!("mandate_decide/{}", sc.name), |b| {
                b.iter(|| s.engine.decide(black_box(&req)));
            });
            group.bench_function(format!("cedar_is_authorized/{}", sc.name), |b| {
                b.iter(|| authorizer.is_authorized(black_box(&request), &s.policies, &entities));
            });
            group.bench_function(format!("cedar_build_and_authorize/{}", sc.name), |b| {
                b.iter(|| {
                    let (request, entities) =
                        raw_request(&s.schema, &principal, black_box(&call), &session, &dir)
                            .expect("raw request");
                    authorizer.is_authorized(&request, &s.policies, &entities)
                });
            });
        }
        group.finish();
    }

    // Set MANDATE_BENCH_NO_PERCENTILES when profiling one benchmark.
    if std::env::var_os("MANDATE_BENCH_NO_PERCENTILES").is_none() {
        for filler in [Filler::Scoped, Filler::Unscoped] {
            percentiles(filler, &authorizer, &principal, &session, &dir);
        }
    }
}

/// p50 and p99 of single `decide` calls and single raw `is_authorized`
/// calls at 100 policies, interleaved so both see the same machine.
#[expect(clippy::expect_used, reason = "benchmark setup must fail loudly")]
fn percentiles(
    filler: Filler,
    authorizer: &Authorizer,
    principal: &Principal,
    session: &SessionFacts,
    dir: &Directory,
) {
    let s = setup(100, filler).expect("policy set loads");
    println!();
    println!(
        "latency of single calls, {} policies{}, {SAMPLES} samples each (interleaved):",
        s.engine.policy_count(),
        filler.label()
    );
    for sc in &scenarios() {
        let call = tool_call(sc).expect("scenario call");
        let req = DecisionRequest {
            caller: principal.caller(),
            call: &call,
            session,
            now_unix: NOW,
        };
        let (request, entities) =
            raw_request(&s.schema, principal, &call, session, dir).expect("raw request");
        let mut ours = Vec::with_capacity(SAMPLES);
        let mut raw = Vec::with_capacity(SAMPLES);
        for _ in 0..1000 {
            black_box(s.engine.decide(&req));
            black_box(authorizer.is_authorized(&request, &s.policies, &entities));
        }
        for _ in 0..SAMPLES {
            let start = Instant::now();
            black_box(s.engine.decide(black_box(&req)));
            ours.push(start.elapsed());
            let start = Instant::now();
            black_box(authorizer.is_authorized(black_box(&request), &s.policies, &entities));
            raw.push(start.elapsed());
        }
        let (o50, o99) = (pct(&mut ours, 0.50), pct(&mut ours, 0.99));
        let (r50, r99) = (pct(&mut raw, 0.50), pct(&mut raw, 0.99));
        println!(
            "  {:<8} mandate_decide p50 {:>6.1} µs p99 {:>6.1} µs | cedar_is_authorized p50 {:>6.1} µs p99 {:>6.1} µs | ratio p50 {:.2}x p99 {:.2}x",
            sc.name,
            micros(o50),
            micros(o99),
            micros(r50),
            micros(r99),
            micros(o50) / micros(r50),
            micros(o99) / micros(r99),
        );
    }
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort_unstable();
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "an index into a short vector"
    )]
    let idx = ((v.len().saturating_sub(1)) as f64 * p).round() as usize;
    v.get(idx).copied().unwrap_or_default()
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

criterion_group!(benches, bench);
criterion_main!(benches);
