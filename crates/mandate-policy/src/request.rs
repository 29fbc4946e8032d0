//! Builds the Cedar request and entities for one call.
//!
//! Entities and context come only from the [`Caller`](mandate_core::Caller) (a verified
//! principal's view), the
//! gateway's [`ToolCall`] (name and configured class), its
//! [`SessionFacts`] and the [`Directory`] from configuration, never from the
//! arguments. The arguments become `context.args` as described in
//! [`crate::args`].
//!
//! [`ToolCall`]: mandate_core::ToolCall

use crate::cache::ToolEntry;
use crate::context::{ContextInput, context_pairs, principal_entities};
use crate::load::Snapshot;
use crate::names::{Names, tool_entity};
use crate::{DecisionRequest, Versioned, args};
use cedar_policy::{Context, Entities, EntityUid, PolicySet, Request, RestrictedExpression};
use mandate_core::ToolClass;
use std::sync::Arc;

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
    let tool = tool_entity(tool, upstream, call.class.as_str(), &call.name.upstream)
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
