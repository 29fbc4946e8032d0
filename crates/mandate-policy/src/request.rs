//! Builds the Cedar request and entities for one call.
//!
//! Entities and context come only from the [`Caller`] (a verified
//! principal's view), the
//! gateway's [`ToolCall`] (name and configured class), its
//! [`SessionFacts`] and the [`Directory`] from configuration, never from the
//! arguments. The arguments become `context.args` as described in
//! [`crate::args`].
//!
//! [`ToolCall`]: mandate_core::ToolCall

use crate::load::Snapshot;
use crate::model::{self, Names};
use crate::{DecisionRequest, Directory, SessionFacts, Versioned, args};
use cedar_policy::{
    Context, Entities, Entity, EntityUid, PolicySet, Request, RestrictedExpression,
};
use mandate_core::{Caller, ToolClass};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

/// A request ready for the authorizer, with the policies that can apply.
pub(crate) struct Prepared {
    pub(crate) request: Request,
    pub(crate) entities: Arc<Entities>,
    /// Disjoint slices of the policy set; together every policy whose
    /// scope can match this request (see [`crate::slice`]).
    pub(crate) policies: Arc<[Arc<PolicySet>]>,
}

/// Builds the request, or says (as a reason for the denial) why not.
pub(crate) fn prepare(
    snap: &Snapshot,
    directory: &Versioned,
    req: &DecisionRequest<'_>,
) -> Result<Prepared, String> {
    let call = req.call;
    args::check_bounds(&call.args)?;
    let declared = snap
        .declared_args
        .fields(call.class)
        .ok_or_else(|| format!("the schema declares no args for class {}", call.class))?;
    let args = args::convert_declared(&call.args, declared)?;
    prepare_with(snap, directory, req, Unknowns::None(args))
}

/// Builds the request for a listing: the arguments, and what depends on
/// them (the intent's coverage, the arguments' provenance), are unknown,
/// for partial evaluation (see [`crate::listing`]).
pub(crate) fn prepare_listing(
    snap: &Snapshot,
    directory: &Versioned,
    req: &DecisionRequest<'_>,
) -> Result<Prepared, String> {
    prepare_with(snap, directory, req, Unknowns::CallDependent)
}

/// Which parts of the context are known.
pub(crate) enum Unknowns {
    /// Everything, with these converted arguments.
    None(RestrictedExpression),
    /// `args`, `intent` and `provenance` are unknown.
    CallDependent,
}

fn prepare_with(
    snap: &Snapshot,
    directory: &Versioned,
    req: &DecisionRequest<'_>,
    unknowns: Unknowns,
) -> Result<Prepared, String> {
    let names = &snap.names;
    let principal = &req.caller;
    let call = req.call;

    let agent_id = principal.agent().ok_or_else(|| {
        "the token names no agent (no `act` claim): Mandate authorises agents acting for a user"
            .to_owned()
    })?;
    let action = names
        .action(call.class)
        .ok_or_else(|| format!("no action for tool class {}", call.class))?
        .clone();

    let tool_name = call.name.to_string();
    let input = ContextInput {
        principal,
        tool: &tool_name,
        session: req.session,
        now: req.now_unix,
    };
    let context = match unknowns {
        Unknowns::None(args) => context_pairs(names, &input, args),
        Unknowns::CallDependent => {
            let unknown = ["args", "intent", "provenance"];
            context_pairs(names, &input, RestrictedExpression::new_unknown("args"))
                .into_iter()
                .map(|(k, v)| {
                    if unknown.contains(&k.as_str()) {
                        let v = RestrictedExpression::new_unknown(&k);
                        (k, v)
                    } else {
                        (k, v)
                    }
                })
                .collect()
        }
    };
    let context =
        Context::from_pairs(context).map_err(|e| format!("cannot build the context: {e}"))?;
    let tool = Names::uid(&names.tool, &tool_name);
    // INVARIANT: the request fits the schema without a per-call validation
    // pass: principal, action and resource types are fixed here, the
    // context comes from `context_pairs`, whose output `check_contract`
    // validated against this very schema at load, and the one part the
    // agent chooses, `args`, was type-checked by `args::convert_declared`.
    let request = Request::new(
        Names::uid(&names.agent, agent_id),
        action,
        tool.clone(),
        context,
        None,
    )
    .map_err(|e| format!("cannot build the request: {e}"))?;

    let entry = snap.caches.tool(&tool_name, call.class, || {
        build_tool_entry(snap, tool, call)
    })?;
    let build = principal.build.unwrap_or_default();
    let key = store_key(
        directory.generation,
        call.class,
        &tool_name,
        principal.sub,
        build,
    );
    let entities = snap.caches.store(key, || {
        // Cloning a store clones a map of `Arc`s; adding the two principal
        // entities recomputes the (tiny) transitive closure.
        Entities::clone(&entry.entities)
            .add_entities(
                principal_entities(names, principal, &directory.directory)?,
                None,
            )
            .map_err(|e| format!("cannot build the entities: {e}"))
    })?;
    Ok(Prepared {
        request,
        entities,
        policies: Arc::clone(&entry.policies),
    })
}

/// What the context is built from, besides the arguments.
pub(crate) struct ContextInput<'a> {
    pub(crate) principal: &'a Caller<'a>,
    pub(crate) tool: &'a str,
    pub(crate) session: &'a SessionFacts,
    pub(crate) now: i64,
}

/// The context attributes, in [`model::CONTEXT_FIELDS`] order. Used both
/// per call and, with sample input, by the load-time contract check.
pub(crate) fn context_pairs(
    names: &Names,
    input: &ContextInput<'_>,
    args: RestrictedExpression,
) -> Vec<(String, RestrictedExpression)> {
    let p = input.principal;
    let s = input.session;
    let long = |n: u64| RestrictedExpression::new_long(i64::try_from(n).unwrap_or(i64::MAX));
    let task_id = p.task_id.unwrap_or_default();
    vec![
        (
            "user".into(),
            RestrictedExpression::new_entity_uid(Names::uid(&names.user, p.sub)),
        ),
        ("scope".into(), string_set(p.scope.iter())),
        (
            "in_scope".into(),
            RestrictedExpression::new_bool(p.scope.covers(input.tool)),
        ),
        (
            "task".into(),
            RestrictedExpression::new_entity_uid(Names::uid(&names.task, task_id)),
        ),
        (
            "task_id".into(),
            RestrictedExpression::new_string(task_id.to_owned()),
        ),
        (
            "build".into(),
            RestrictedExpression::new_entity_uid(Names::uid(
                &names.build,
                p.build.unwrap_or_default(),
            )),
        ),
        (
            "session".into(),
            RestrictedExpression::new_string(p.session_key()),
        ),
        (
            "tool".into(),
            RestrictedExpression::new_string(input.tool.to_owned()),
        ),
        (
            "taint".into(),
            string_set(s.taint.iter().map(String::as_str)),
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
        ("intent".into(), intent_record(&s.intent)),
        ("provenance".into(), provenance_record(&s.provenance)),
        ("now".into(), RestrictedExpression::new_long(input.now)),
        ("args".into(), args),
    ]
}

/// `context.intent` (a record: Cedar checks its shape against the schema's
/// `Intent` type at load, see [`crate::model`]).
fn intent_record(i: &crate::IntentFacts) -> RestrictedExpression {
    record([
        ("declared", RestrictedExpression::new_bool(i.declared)),
        ("declaring", RestrictedExpression::new_bool(i.declaring)),
        ("covered", RestrictedExpression::new_bool(i.covered)),
        ("grant", RestrictedExpression::new_string(i.grant.clone())),
    ])
}

/// `context.provenance`.
fn provenance_record(p: &crate::ArgumentFacts) -> RestrictedExpression {
    record([
        (
            "untrusted",
            string_set(p.untrusted.iter().map(String::as_str)),
        ),
        (
            "uncovered",
            string_set(p.uncovered.iter().map(String::as_str)),
        ),
        ("unseen", string_set(p.unseen.iter().map(String::as_str))),
        ("partial", RestrictedExpression::new_bool(p.partial)),
    ])
}

/// A record of fixed, distinct field names (so it cannot fail; should it,
/// the empty record makes the request fail validation at load, never here).
fn record<const N: usize>(fields: [(&str, RestrictedExpression); N]) -> RestrictedExpression {
    RestrictedExpression::new_record(fields.map(|(k, v)| (k.to_owned(), v)))
        .unwrap_or_else(|_| RestrictedExpression::new_bool(false))
}

fn string_set<'a>(items: impl Iterator<Item = &'a str>) -> RestrictedExpression {
    RestrictedExpression::new_set(items.map(|s| RestrictedExpression::new_string(s.to_owned())))
}

/// The entities that depend on the principal: its `User` (parents: the
/// user's groups in the directory) and its `Build` (`registered`, `name`).
///
/// `Agent`, `Task`, `Group` and `Upstream` entities are not materialised:
/// the schema gives them no attributes, Mandate gives the first three no
/// parents, and Cedar treats an absent entity exactly like such an empty
/// one for `==`, `is` and `in` (an `in` only looks at the left operand's
/// ancestors; the Tool's parent link to its Upstream is kept).
pub(crate) fn principal_entities(
    names: &Names,
    principal: &Caller<'_>,
    directory: &Directory,
) -> Result<[Entity; 2], String> {
    let groups = directory
        .groups
        .get(principal.sub)
        .map(|g| {
            g.iter()
                .map(|name| Names::uid(&names.group, name))
                .collect::<HashSet<_>>()
        })
        .unwrap_or_default();
    let user = Entity::new_no_attrs(Names::uid(&names.user, principal.sub), groups);

    let hash = principal.build.unwrap_or_default();
    // The empty id stands for "no build" and is never registered, even if
    // a configuration lists it.
    let info = directory.builds.get(hash).filter(|_| !hash.is_empty());
    let build = Entity::new(
        Names::uid(&names.build, hash),
        HashMap::from([
            (
                "registered".to_owned(),
                RestrictedExpression::new_bool(info.is_some()),
            ),
            (
                "name".to_owned(),
                RestrictedExpression::new_string(info.map(|i| i.name.clone()).unwrap_or_default()),
            ),
        ]),
        HashSet::new(),
    )
    .map_err(|e| format!("cannot build the build entity: {e}"))?;
    Ok([user, build])
}

/// What a call to one tool needs whoever makes it.
pub(crate) struct ToolEntry {
    /// The `Tool` entity (attributes `class`, `upstream`; parent its
    /// `Upstream`) and the class's action entity with its action groups.
    entities: Entities,
    /// The policy slices that can apply to calls to this tool.
    policies: Arc<[Arc<PolicySet>]>,
}

fn build_tool_entry(
    snap: &Snapshot,
    tool: EntityUid,
    call: &mandate_core::ToolCall,
) -> Result<ToolEntry, String> {
    let actions = snap
        .action_entities
        .get(&call.class)
        .map_or(&[][..], Vec::as_slice);
    let upstream = Names::uid(&snap.names.upstream, &call.name.upstream);
    let policies = snap.slices.for_call(call.class, &tool, &upstream).into();
    let tool = model::tool_entity(tool, upstream, call.class.as_str(), &call.name.upstream)
        .map_err(|e| format!("cannot build the tool entity: {e}"))?;
    // Built by construction and checked against the schema at load
    // (`check_contract`), so no per-call schema pass.
    let entities =
        Entities::from_entities(std::iter::once(tool).chain(actions.iter().cloned()), None)
            .map_err(|e| format!("cannot build the entities: {e}"))?;
    Ok(ToolEntry { entities, policies })
}

/// The cache key of a complete entity store: everything it depends on,
/// length-prefixed so that no two different inputs share a key.
fn store_key(generation: u64, class: ToolClass, tool: &str, sub: &str, build: &str) -> String {
    format!(
        "{generation}/{class}/{}:{tool}/{}:{sub}/{build}",
        tool.len(),
        sub.len()
    )
}

/// Per-snapshot caches, so that a call repeats no work another call to the
/// same tool by the same principal already did.
///
/// Both maps are bounded. Past [`Caches::TOOLS`] tools, entries are built
/// per call instead (unknown tool names cannot grow memory). Past
/// [`Caches::STORES`] entity stores, the map is emptied and refills.
#[derive(Default)]
pub(crate) struct Caches {
    tools: RwLock<HashMap<(String, ToolClass), Arc<ToolEntry>>>,
    /// Complete stores (tool, actions, user, build), by [`store_key`]. The
    /// key includes the directory's generation, so a replaced directory is
    /// never served from here.
    stores: RwLock<HashMap<String, Arc<Entities>>>,
}

impl Caches {
    const TOOLS: usize = 4096;
    const STORES: usize = 4096;

    fn tool(
        &self,
        tool: &str,
        class: ToolClass,
        build: impl FnOnce() -> Result<ToolEntry, String>,
    ) -> Result<Arc<ToolEntry>, String> {
        // A poisoned lock only means another thread panicked mid-insert;
        // the map itself is still consistent, but bypass it to be safe.
        if let Ok(map) = self.tools.read()
            && let Some(hit) = map.get(&(tool.to_owned(), class))
        {
            return Ok(Arc::clone(hit));
        }
        let built = Arc::new(build()?);
        if let Ok(mut map) = self.tools.write()
            && map.len() < Self::TOOLS
        {
            map.insert((tool.to_owned(), class), Arc::clone(&built));
        }
        Ok(built)
    }

    fn store(
        &self,
        key: String,
        build: impl FnOnce() -> Result<Entities, String>,
    ) -> Result<Arc<Entities>, String> {
        if let Ok(map) = self.stores.read()
            && let Some(hit) = map.get(&key)
        {
            return Ok(Arc::clone(hit));
        }
        let built = Arc::new(build()?);
        if let Ok(mut map) = self.stores.write() {
            if map.len() >= Self::STORES {
                map.clear();
            }
            map.insert(key, Arc::clone(&built));
        }
        Ok(built)
    }
}
