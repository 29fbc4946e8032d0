//! Mandate's Cedar model: entity and action names, and the contract between
//! the schema and the requests the PDP builds.
//!
//! The request for a call is:
//!
//! | Cedar      | value                                                        |
//! |------------|--------------------------------------------------------------|
//! | principal  | `Mandate::Agent::"<act[0]>"`                                 |
//! | action     | `Mandate::Action::"<tool class>"`, a member of `"call"`     |
//! | resource   | `Mandate::Tool::"<upstream.tool>"` in `Mandate::Upstream::"<upstream>"`, attributes `class`, `upstream` |
//! | context    | [`CONTEXT_FIELDS`], with `args` the declared arguments       |

use crate::error::PolicyError;
use cedar_policy::{
    Context, Entities, Entity, EntityId, EntityTypeName, EntityUid, Request, RestrictedExpression,
    Schema, SchemaFragment,
};
use mandate_core::ToolClass;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::str::FromStr;

/// The Cedar namespace of Mandate's types.
pub const NAMESPACE: &str = "Mandate";

/// The context attributes Mandate supplies on every call, in order.
pub const CONTEXT_FIELDS: [&str; 11] = [
    "user",
    "scope",
    "in_scope",
    "task_id",
    "build",
    "session",
    "tool",
    "taint",
    "calls_in_session",
    "now",
    "args",
];

/// Parsed names of the model, built once per snapshot.
#[derive(Debug, Clone)]
pub(crate) struct Names {
    pub(crate) agent: EntityTypeName,
    pub(crate) user: EntityTypeName,
    pub(crate) tool: EntityTypeName,
    pub(crate) upstream: EntityTypeName,
    /// Action uids, indexed like [`ToolClass::ALL`].
    actions: Vec<EntityUid>,
}

impl Names {
    pub(crate) fn new() -> Result<Self, String> {
        let ty = |name: &str| {
            EntityTypeName::from_str(&format!("{NAMESPACE}::{name}"))
                .map_err(|e| format!("bad entity type name {name}: {e}"))
        };
        let action_ty = ty("Action")?;
        Ok(Self {
            agent: ty("Agent")?,
            user: ty("User")?,
            tool: ty("Tool")?,
            upstream: ty("Upstream")?,
            actions: ToolClass::ALL
                .iter()
                .map(|c| {
                    EntityUid::from_type_name_and_id(action_ty.clone(), EntityId::new(c.as_str()))
                })
                .collect(),
        })
    }

    pub(crate) fn action(&self, class: ToolClass) -> Option<&EntityUid> {
        let index = ToolClass::ALL.iter().position(|c| *c == class)?;
        self.actions.get(index)
    }

    pub(crate) fn uid(ty: &EntityTypeName, id: &str) -> EntityUid {
        EntityUid::from_type_name_and_id(ty.clone(), EntityId::new(id))
    }
}

/// The top-level `args` attribute names the schema declares, per class.
#[derive(Debug, Clone, Default)]
pub(crate) struct DeclaredArgs(HashMap<ToolClass, BTreeSet<String>>);

impl DeclaredArgs {
    pub(crate) fn fields(&self, class: ToolClass) -> Option<&BTreeSet<String>> {
        self.0.get(&class)
    }
}

/// Checks that `schema` fits the requests Mandate builds, and extracts the
/// declared argument fields of each action.
///
/// The check is by construction: for every class it builds a sample request
/// and sample entities exactly as [`crate::request`] does, and asks Cedar to
/// validate them against the schema. A schema that renames an action, drops
/// a context field or makes an `Args` field required is refused here rather
/// than denying every call later.
pub(crate) fn check_contract(
    schema_file: &str,
    schema_text: &str,
    schema: &Schema,
    names: &Names,
) -> Result<DeclaredArgs, PolicyError> {
    let contract = |msg: String| PolicyError::contract(schema_file, msg);

    let agent = Names::uid(&names.agent, "sample-agent");
    let user = Names::uid(&names.user, "sample-user");
    let upstream = Names::uid(&names.upstream, "sample");
    let tool = Names::uid(&names.tool, "sample.tool");
    let entities = [
        Entity::new_no_attrs(agent.clone(), HashSet::new()),
        Entity::new_no_attrs(user.clone(), HashSet::new()),
        Entity::new_no_attrs(upstream.clone(), HashSet::new()),
        tool_entity(tool.clone(), upstream, "read", "sample")
            .map_err(|e| contract(format!("cannot build a sample tool entity: {e}")))?,
    ];
    Entities::from_entities(entities, Some(schema)).map_err(|e| {
        contract(format!(
            "entities `Agent`, `User`, `Upstream` and `Tool in [Upstream] {{ class: String, upstream: String }}` are expected: {e}"
        ))
    })?;

    for class in ToolClass::ALL {
        let action = names
            .action(class)
            .ok_or_else(|| contract(format!("no action for class {class}")))?;
        let pairs = sample_context(user.clone())
            .map_err(|e| contract(format!("cannot build a sample context: {e}")))?;
        let context = Context::from_pairs(pairs)
            .map_err(|e| contract(format!("cannot build a sample context: {e}")))?;
        Request::new(
            agent.clone(),
            action.clone(),
            tool.clone(),
            context,
            Some(schema),
        )
        .map_err(|e| {
            let hint = missing_context_field(schema, &agent, action, &tool, &user)
                .map(|f| format!("the schema's context for `{action}` does not declare `{f}`; "))
                .unwrap_or_default();
            contract(format!(
                "{hint}a call to a `{class}` tool must be `{action}` on principal `Agent` and resource `Tool`, with a context of exactly the attributes {} (every `Args` field optional): {e}",
                CONTEXT_FIELDS.join(", ")
            ))
        })?;
    }

    let json = SchemaFragment::from_cedarschema_str(schema_text)
        .map_err(|e| contract(format!("cannot re-read the schema: {e}")))?
        .0
        .to_json_value()
        .map_err(|e| contract(format!("cannot re-read the schema: {e}")))?;
    let mut declared = HashMap::new();
    for class in ToolClass::ALL {
        let fields = args_fields(&json, class.as_str())
            .map_err(|e| contract(format!("action `{class}`: {e}")))?;
        declared.insert(class, fields);
    }
    Ok(DeclaredArgs(declared))
}

/// The one context field whose removal makes the sample request valid, if
/// any: the field the schema forgot.
fn missing_context_field(
    schema: &Schema,
    agent: &EntityUid,
    action: &EntityUid,
    tool: &EntityUid,
    user: &EntityUid,
) -> Option<&'static str> {
    CONTEXT_FIELDS.into_iter().find(|field| {
        sample_context(user.clone())
            .ok()
            .and_then(|pairs| {
                Context::from_pairs(pairs.into_iter().filter(|(k, _)| k != field)).ok()
            })
            .and_then(|c| {
                Request::new(agent.clone(), action.clone(), tool.clone(), c, Some(schema)).ok()
            })
            .is_some()
    })
}

/// Builds a `Tool` entity.
pub(crate) fn tool_entity(
    uid: EntityUid,
    upstream: EntityUid,
    class: &str,
    upstream_name: &str,
) -> Result<Entity, String> {
    Entity::new(
        uid,
        HashMap::from([
            (
                "class".to_owned(),
                RestrictedExpression::new_string(class.to_owned()),
            ),
            (
                "upstream".to_owned(),
                RestrictedExpression::new_string(upstream_name.to_owned()),
            ),
        ]),
        HashSet::from([upstream]),
    )
    .map_err(|e| e.to_string())
}

fn sample_context(
    user: EntityUid,
) -> Result<Vec<(String, RestrictedExpression)>, cedar_policy::ExpressionConstructionError> {
    let string = |s: &str| RestrictedExpression::new_string(s.to_owned());
    Ok(vec![
        ("user".into(), RestrictedExpression::new_entity_uid(user)),
        (
            "scope".into(),
            RestrictedExpression::new_set([string("sample.tool")]),
        ),
        ("in_scope".into(), RestrictedExpression::new_bool(true)),
        ("task_id".into(), string("")),
        ("build".into(), string("")),
        ("session".into(), string("")),
        ("tool".into(), string("sample.tool")),
        (
            "taint".into(),
            RestrictedExpression::new_set([string("untrusted")]),
        ),
        ("calls_in_session".into(), RestrictedExpression::new_long(0)),
        ("now".into(), RestrictedExpression::new_long(0)),
        ("args".into(), RestrictedExpression::new_record([])?),
    ])
}

/// The top-level attribute names of `context.args` for `action`, read from
/// the schema's JSON form (resolving common-type references).
fn args_fields(json: &serde_json::Value, action: &str) -> Result<BTreeSet<String>, String> {
    let ns = json
        .get(NAMESPACE)
        .ok_or_else(|| format!("no namespace `{NAMESPACE}`"))?;
    let context = ns
        .get("actions")
        .and_then(|a| a.get(action))
        .and_then(|a| a.get("appliesTo"))
        .and_then(|a| a.get("context"))
        .ok_or_else(|| "no `appliesTo` context".to_owned())?;
    let context = resolve_record(ns, context)?;
    let args = context
        .get("args")
        .ok_or_else(|| "the context has no `args` attribute".to_owned())?;
    // An attribute is `{ "type": ..., "required": ... }`: the type itself.
    let args = resolve_record(ns, args)?;
    Ok(args.keys().cloned().collect())
}

/// Follows common-type references from `ty` to a record type's attributes.
fn resolve_record<'a>(
    ns: &'a serde_json::Value,
    ty: &'a serde_json::Value,
) -> Result<&'a serde_json::Map<String, serde_json::Value>, String> {
    let mut ty = ty;
    // Common types may name other common types; cedar forbids cycles, and a
    // fixed bound keeps this loop finite whatever the input.
    for _ in 0..16 {
        let kind = ty
            .get("type")
            .and_then(serde_json::Value::as_str)
            .ok_or_else(|| format!("unexpected type form {ty}"))?;
        let name = match kind {
            "Record" => {
                return ty
                    .get("attributes")
                    .and_then(serde_json::Value::as_object)
                    .ok_or_else(|| "record type without attributes".to_owned());
            }
            "EntityOrCommon" | "CommonType" => {
                ty.get("name")
                    .and_then(serde_json::Value::as_str)
                    .ok_or_else(|| format!("unexpected type form {ty}"))?
            }
            other => other,
        };
        let local = name
            .strip_prefix(NAMESPACE)
            .and_then(|rest| rest.strip_prefix("::"))
            .unwrap_or(name);
        ty = ns
            .get("commonTypes")
            .and_then(|c| c.get(local))
            .ok_or_else(|| format!("`{name}` is not a record type declared in `{NAMESPACE}`"))?;
    }
    Err("common type references nest too deeply".to_owned())
}
