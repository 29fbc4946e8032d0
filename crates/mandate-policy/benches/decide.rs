//! `PolicyEngine::decide` against raw Cedar on an equivalent request.
//!
//! Three measurements per scenario, over the shipped quickstart policies:
//!
//! * `mandate_decide`: the whole PDP call: build entities and context from
//!   the principal and the call, validate the request against the schema,
//!   authorise, fold diagnostics into a `Decision` (with a fresh id).
//! * `cedar_is_authorized`: `Authorizer::is_authorized` alone on a request
//!   and entities built once, before timing (the floor).
//! * `cedar_build_and_authorize`: building the same request (validated
//!   against the schema) and a full entity store (principal, user, tool,
//!   upstream, all action entities) with the Cedar API per call, then
//!   authorising: what a straightforward Cedar-based PDP pays. `decide`
//!   caches the tool and action entities per snapshot instead.
//!
//! The ratio `mandate_decide / cedar_is_authorized` is the PDP overhead.

use cedar_policy::{
    Authorizer, Context, Entities, Entity, EntityId, EntityTypeName, EntityUid, PolicySet, Request,
    RestrictedExpression, Schema,
};
use criterion::{Criterion, criterion_group, criterion_main};
use mandate_core::{Principal, Scope, ToolCall, ToolClass, ToolName};
use mandate_policy::{DecisionRequest, PolicyEngine, SessionFacts};
use std::collections::{HashMap, HashSet};
use std::error::Error;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::str::FromStr;

const NOW: i64 = 1_767_225_600;

/// The `Args` fields of the shipped `mandate.cedarschema`.
const DECLARED_ARGS: [&str; 4] = ["amount", "to", "recipient", "query"];

fn policies_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/quickstart/policies")
}

struct Scenario {
    name: &'static str,
    tool: &'static str,
    class: ToolClass,
    args: serde_json::Value,
}

fn principal() -> Principal {
    Principal {
        iss: "https://broker.bench".into(),
        sub: "alice".into(),
        act: vec!["assistant".into()],
        scope: Scope::parse("docs.* bank.*"),
        task_id: Some("task-1".into()),
        build: Some("b".repeat(64)),
        sid: Some("s1".into()),
        jti: None,
        exp: 0,
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

/// The shipped policy files parsed directly with Cedar (ids renamed apart).
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

/// The request and entities `decide` builds for this call, built by hand.
fn raw_request(
    schema: &Schema,
    p: &Principal,
    call: &ToolCall,
    session: &SessionFacts,
) -> Result<(Request, Entities), Box<dyn Error>> {
    let tool_name = call.name.to_string();
    let agent = uid("Agent", p.agent().ok_or("no agent")?)?;
    let user = uid("User", &p.sub)?;
    let upstream = uid("Upstream", &call.name.upstream)?;
    let tool = uid("Tool", &tool_name)?;
    let action = uid("Action", call.class.as_str())?;
    let strings = |it: Vec<&str>| {
        RestrictedExpression::new_set(
            it.into_iter()
                .map(|s| RestrictedExpression::new_string(s.into())),
        )
    };
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
        (
            "task_id".into(),
            RestrictedExpression::new_string(p.task_id.clone().unwrap_or_default()),
        ),
        (
            "build".into(),
            RestrictedExpression::new_string(p.build.clone().unwrap_or_default()),
        ),
        (
            "session".into(),
            RestrictedExpression::new_string(p.session_key()),
        ),
        (
            "tool".into(),
            RestrictedExpression::new_string(tool_name.clone()),
        ),
        (
            "taint".into(),
            strings(session.taint.iter().map(String::as_str).collect()),
        ),
        (
            "calls_in_session".into(),
            RestrictedExpression::new_long(i64::try_from(session.calls_in_session)?),
        ),
        ("now".into(), RestrictedExpression::new_long(NOW)),
        ("args".into(), args),
    ])?;
    let request = Request::new(agent.clone(), action, tool.clone(), context, Some(schema))?;
    let mut entities = vec![
        Entity::new_no_attrs(agent, HashSet::new()),
        Entity::new_no_attrs(user, HashSet::new()),
        Entity::new_no_attrs(upstream.clone(), HashSet::new()),
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

#[expect(clippy::expect_used, reason = "benchmark setup must fail loudly")]
fn bench(c: &mut Criterion) {
    let dir = policies_dir();
    let engine = PolicyEngine::load_dir(&dir).expect("shipped policies load");
    let (policies, schema) = raw_policies(&dir).expect("shipped policies parse");
    let authorizer = Authorizer::new();
    let principal = principal();
    let session = SessionFacts::default();

    let scenarios = [
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
            args: serde_json::json!({"amount": 250, "to": "bob", "memo": "invoice 42"}),
        },
    ];

    let mut group = c.benchmark_group("decide");
    for s in &scenarios {
        let call = tool_call(s).expect("scenario call");
        let req = DecisionRequest {
            principal: &principal,
            call: &call,
            session: &session,
            now_unix: NOW,
        };
        let (request, entities) =
            raw_request(&schema, &principal, &call, &session).expect("raw request");

        // Same answer both ways, or the comparison means nothing.
        let ours = engine.decide(&req);
        let theirs = authorizer.is_authorized(&request, &policies, &entities);
        assert_eq!(
            ours.is_allow(),
            theirs.decision() == cedar_policy::Decision::Allow,
            "{}: decide and raw Cedar disagree",
            s.name
        );

        group.bench_function(format!("mandate_decide/{}", s.name), |b| {
            b.iter(|| engine.decide(black_box(&req)));
        });
        group.bench_function(format!("cedar_is_authorized/{}", s.name), |b| {
            b.iter(|| authorizer.is_authorized(black_box(&request), &policies, &entities));
        });
        group.bench_function(format!("cedar_build_and_authorize/{}", s.name), |b| {
            b.iter(|| {
                let (request, entities) =
                    raw_request(&schema, &principal, black_box(&call), &session)
                        .expect("raw request");
                authorizer.is_authorized(&request, &policies, &entities)
            });
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
