//! Builds the Cedar request and entities for one call.
//!
//! Entities come only from the verified [`Principal`] and the gateway's
//! [`ToolCall`] (name and configured class), never from the arguments.
//!
//! ## How arguments become `context.args`
//!
//! * Only top-level fields that the schema declares in the action's `Args`
//!   record are kept; the others are dropped. Strict validation already
//!   guarantees no policy can read an undeclared field, so dropping loses
//!   nothing and keeps evaluation consistent with what the validator proved.
//! * Values are converted without any JSON escape handling (`__entity`,
//!   `__extn` are ordinary keys here): integers that fit in 64 bits become
//!   `Long`; every other number (fractions, exponents, huge integers)
//!   becomes its decimal `String`; `null` is dropped (as if absent); arrays
//!   become `Set`s; objects become records.
//! * The request is then validated against the schema. A declared field of
//!   the wrong type (`"amount": "20000"` where `Args` says `Long`) denies
//!   the call before evaluation, naming the field and its JSON type but not
//!   its value. Policies therefore never see an argument of an unexpected
//!   type, so a `forbid` cannot be dodged by type confusion (`==` between
//!   different types is `false` in Cedar, not an error).
//! * Bounded work: arguments nested deeper than [`MAX_ARGS_DEPTH`] or larger
//!   than [`MAX_ARGS_BYTES`] serialised deny the call.
//!
//! [`Principal`]: mandate_core::Principal
//! [`ToolCall`]: mandate_core::ToolCall
//! [`MAX_ARGS_DEPTH`]: crate::limits::MAX_ARGS_DEPTH
//! [`MAX_ARGS_BYTES`]: crate::limits::MAX_ARGS_BYTES

use crate::DecisionRequest;
use crate::limits;
use crate::load::Snapshot;
use crate::model::{self, Names};
use cedar_policy::{
    Context, Entities, EntityUid, Request, RequestValidationError, RestrictedExpression,
};
use mandate_core::ToolClass;
use serde_json::Value;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, RwLock};

/// A request ready for the authorizer.
pub(crate) struct Prepared {
    pub(crate) request: Request,
    pub(crate) entities: Arc<Entities>,
}

/// Builds the request, or says (as a reason for the denial) why not.
pub(crate) fn prepare(snap: &Snapshot, req: &DecisionRequest<'_>) -> Result<Prepared, String> {
    let names = &snap.names;
    let principal = req.principal;
    let call = req.call;

    let agent_id = principal.agent().ok_or_else(|| {
        "the token names no agent (no `act` claim): Mandate authorises agents acting for a user"
            .to_owned()
    })?;
    let action = names
        .action(call.class)
        .ok_or_else(|| format!("no action for tool class {}", call.class))?
        .clone();

    check_args_bounds(&call.args)?;
    let declared = snap
        .declared_args
        .fields(call.class)
        .ok_or_else(|| format!("the schema declares no args for class {}", call.class))?;
    let args = convert_args(&call.args, Some(declared))?;

    let tool_name = call.name.to_string();
    let agent = Names::uid(&names.agent, agent_id);
    let user = Names::uid(&names.user, &principal.sub);
    let upstream = Names::uid(&names.upstream, &call.name.upstream);
    let tool = Names::uid(&names.tool, &tool_name);

    let context = context_pairs(req, user.clone(), &tool_name, args);
    let context =
        Context::from_pairs(context).map_err(|e| format!("cannot build the context: {e}"))?;
    let request = match Request::new(
        agent.clone(),
        action.clone(),
        tool.clone(),
        context,
        Some(&snap.schema),
    ) {
        Ok(r) => r,
        Err(RequestValidationError::InvalidContext(_)) => {
            return Err(explain_bad_args(snap, req, &agent, &action, &tool, &user));
        }
        Err(e) => return Err(format!("the request does not fit the schema: {e}")),
    };

    let entities = snap.entity_cache.get_or_build(&tool_name, call.class, || {
        build_entities(snap, tool, upstream, call)
    })?;
    Ok(Prepared { request, entities })
}

/// The entity store for a call to `tool`: the `Tool` entity (attributes
/// `class`, `upstream`; parent its `Upstream`) and the class's action
/// entity with its action groups. It depends only on the tool's name and
/// class, so it is cached per snapshot.
///
/// `Agent`, `User` and `Upstream` entities are not materialised: the schema
/// gives them no attributes and Mandate gives them no parents, and Cedar
/// treats an absent entity exactly like such an empty one for `==`, `is`
/// and `in` (an `in` only looks at the left operand's ancestors; the Tool's
/// parent link to its Upstream is kept). Should they ever carry attributes
/// or groups, they must be added here (per principal, not cached per tool).
fn build_entities(
    snap: &Snapshot,
    tool: EntityUid,
    upstream: EntityUid,
    call: &mandate_core::ToolCall,
) -> Result<Entities, String> {
    let actions = snap
        .action_entities
        .get(&call.class)
        .map_or(&[][..], Vec::as_slice);
    let tool = model::tool_entity(tool, upstream, call.class.as_str(), &call.name.upstream)
        .map_err(|e| format!("cannot build the tool entity: {e}"))?;
    // Built by construction and checked against the schema at load
    // (`check_contract`), so no per-call schema pass.
    Entities::from_entities(std::iter::once(tool).chain(actions.iter().cloned()), None)
        .map_err(|e| format!("cannot build the entities: {e}"))
}

/// Per-snapshot cache of entity stores, keyed by exposed tool name and
/// class. Bounded: past [`EntityCache::CAPACITY`] entries, stores are built
/// per call instead of cached (so unknown tool names cannot grow memory).
#[derive(Default)]
pub(crate) struct EntityCache {
    map: RwLock<HashMap<(String, ToolClass), Arc<Entities>>>,
}

impl EntityCache {
    const CAPACITY: usize = 4096;

    fn get_or_build(
        &self,
        tool: &str,
        class: ToolClass,
        build: impl FnOnce() -> Result<Entities, String>,
    ) -> Result<Arc<Entities>, String> {
        // A poisoned lock only means another thread panicked mid-insert;
        // the map itself is still consistent, but bypass it to be safe.
        if let Ok(map) = self.map.read()
            && let Some(hit) = map.get(&(tool.to_owned(), class))
        {
            return Ok(Arc::clone(hit));
        }
        let built = Arc::new(build()?);
        if let Ok(mut map) = self.map.write()
            && map.len() < Self::CAPACITY
        {
            map.insert((tool.to_owned(), class), Arc::clone(&built));
        }
        Ok(built)
    }
}

fn context_pairs(
    req: &DecisionRequest<'_>,
    user: EntityUid,
    tool_name: &str,
    args: RestrictedExpression,
) -> Vec<(String, RestrictedExpression)> {
    let p = req.principal;
    let text =
        |s: Option<&String>| RestrictedExpression::new_string(s.cloned().unwrap_or_default());
    vec![
        ("user".into(), RestrictedExpression::new_entity_uid(user)),
        ("scope".into(), string_set(p.scope.iter())),
        (
            "in_scope".into(),
            RestrictedExpression::new_bool(p.scope.covers(tool_name)),
        ),
        ("task_id".into(), text(p.task_id.as_ref())),
        ("build".into(), text(p.build.as_ref())),
        (
            "session".into(),
            RestrictedExpression::new_string(p.session_key()),
        ),
        (
            "tool".into(),
            RestrictedExpression::new_string(tool_name.to_owned()),
        ),
        (
            "taint".into(),
            string_set(req.session.taint.iter().map(String::as_str)),
        ),
        (
            "calls_in_session".into(),
            RestrictedExpression::new_long(
                i64::try_from(req.session.calls_in_session).unwrap_or(i64::MAX),
            ),
        ),
        ("now".into(), RestrictedExpression::new_long(req.now_unix)),
        ("args".into(), args),
    ]
}

fn string_set<'a>(items: impl Iterator<Item = &'a str>) -> RestrictedExpression {
    RestrictedExpression::new_set(items.map(|s| RestrictedExpression::new_string(s.to_owned())))
}

/// Finds which declared arguments do not fit the schema. Only runs on the
/// failure path, so it may rebuild the request once per field.
fn explain_bad_args(
    snap: &Snapshot,
    req: &DecisionRequest<'_>,
    agent: &EntityUid,
    action: &EntityUid,
    tool: &EntityUid,
    user: &EntityUid,
) -> String {
    let tool_name = req.call.name.to_string();
    let fits = |args: RestrictedExpression| {
        Context::from_pairs(context_pairs(req, user.clone(), &tool_name, args))
            .ok()
            .and_then(|c| {
                Request::new(
                    agent.clone(),
                    action.clone(),
                    tool.clone(),
                    c,
                    Some(&snap.schema),
                )
                .ok()
            })
            .is_some()
    };
    let declared = snap.declared_args.fields(req.call.class);
    let mut bad = Vec::new();
    for (key, value) in &req.call.args {
        if !declared.is_some_and(|d| d.contains(key)) {
            continue;
        }
        let one: serde_json::Map<String, Value> =
            std::iter::once((key.clone(), value.clone())).collect();
        let fits_alone = convert_args(&one, None).map(&fits).unwrap_or(false);
        if !fits_alone {
            bad.push(format!("`{key}` (a JSON {})", json_type(value)));
        }
    }
    if bad.is_empty() {
        "the arguments do not match the `Args` type declared in the schema (denied before evaluation)".to_owned()
    } else if let [one] = bad.as_slice() {
        format!(
            "argument {one} does not match its type in the schema's `Args` (denied before evaluation, fail closed)"
        )
    } else {
        format!(
            "arguments {} do not match their types in the schema's `Args` (denied before evaluation, fail closed)",
            bad.join(", ")
        )
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Denies arguments that are too large or too deep.
fn check_args_bounds(args: &serde_json::Map<String, Value>) -> Result<(), String> {
    let mut counter = LimitedCounter {
        written: 0,
        limit: limits::MAX_ARGS_BYTES,
    };
    if serde_json::to_writer(&mut counter, args).is_err() {
        return Err(format!(
            "arguments exceed {} bytes serialised",
            limits::MAX_ARGS_BYTES
        ));
    }
    if args
        .values()
        .any(|v| deeper_than(v, limits::MAX_ARGS_DEPTH.saturating_sub(1)))
    {
        return Err(format!(
            "arguments are nested deeper than {} levels",
            limits::MAX_ARGS_DEPTH
        ));
    }
    Ok(())
}

/// Whether `v` nests more than `budget` further levels. Recursion stops at
/// the budget, so the stack stays bounded whatever the input.
fn deeper_than(v: &Value, budget: usize) -> bool {
    let children: Box<dyn Iterator<Item = &Value>> = match v {
        Value::Array(items) => Box::new(items.iter()),
        Value::Object(map) => Box::new(map.values()),
        _ => return false,
    };
    match budget.checked_sub(1) {
        None => true,
        Some(rest) => children.into_iter().any(|c| deeper_than(c, rest)),
    }
}

/// An `io::Write` that only counts, and fails once past its limit.
struct LimitedCounter {
    written: usize,
    limit: usize,
}

impl std::io::Write for LimitedCounter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.written = self.written.saturating_add(buf.len());
        if self.written > self.limit {
            return Err(std::io::Error::other("limit"));
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Converts the (declared, when `keep` is given) top-level arguments.
pub(crate) fn convert_args(
    args: &serde_json::Map<String, Value>,
    keep: Option<&BTreeSet<String>>,
) -> Result<RestrictedExpression, String> {
    let fields = args
        .iter()
        .filter(|(k, _)| keep.is_none_or(|keep| keep.contains(*k)))
        .filter_map(|(k, v)| convert(v).map(|e| (k.clone(), e)));
    RestrictedExpression::new_record(fields).map_err(|e| format!("cannot convert arguments: {e}"))
}

/// One JSON value as a Cedar value; `None` for `null`. Depth is bounded by
/// `check_args_bounds`, which runs first.
fn convert(v: &Value) -> Option<RestrictedExpression> {
    Some(match v {
        Value::Null => return None,
        Value::Bool(b) => RestrictedExpression::new_bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => RestrictedExpression::new_long(i),
            None => RestrictedExpression::new_string(n.to_string()),
        },
        Value::String(s) => RestrictedExpression::new_string(s.clone()),
        Value::Array(items) => RestrictedExpression::new_set(items.iter().filter_map(convert)),
        Value::Object(map) => {
            // Keys of a JSON object are unique, so this cannot fail; if it
            // did, the whole value would be dropped, and a declared field
            // that policies test would then be absent, never forged.
            RestrictedExpression::new_record(
                map.iter()
                    .filter_map(|(k, v)| convert(v).map(|e| (k.clone(), e))),
            )
            .ok()?
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn depth_is_bounded() {
        let mut v = json!(1);
        for _ in 0..15 {
            v = json!([v]);
        }
        // 15 arrays around a scalar under the top-level object: 16 levels.
        let ok: serde_json::Map<String, Value> =
            [("a".to_owned(), v.clone())].into_iter().collect();
        assert!(check_args_bounds(&ok).is_ok());
        let deep: serde_json::Map<String, Value> =
            [("a".to_owned(), json!([v]))].into_iter().collect();
        assert!(check_args_bounds(&deep).is_err());
    }

    #[test]
    fn size_is_bounded() {
        let big: serde_json::Map<String, Value> =
            [("a".to_owned(), json!("x".repeat(limits::MAX_ARGS_BYTES)))]
                .into_iter()
                .collect();
        assert!(check_args_bounds(&big).is_err());
    }
}
