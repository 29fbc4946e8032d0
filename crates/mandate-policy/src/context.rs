//! The Cedar context and the principal's entities of a request: built per
//! call by `request.rs` and, with sample input, by the load-time contract
//! check (`model.rs`), so the two cannot drift apart.

use crate::Directory;
use crate::SessionFacts;
use crate::names::Names;
use cedar_policy::{Entity, RestrictedExpression};
use mandate_core::Caller;
use std::collections::{HashMap, HashSet};

/// What the context is built from, besides the arguments.
pub(crate) struct ContextInput<'a> {
    pub(crate) principal: &'a Caller<'a>,
    pub(crate) tool: &'a str,
    pub(crate) session: &'a SessionFacts,
    pub(crate) now: i64,
}

/// The context attributes, in [`crate::names::CONTEXT_FIELDS`] order. Used both
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
