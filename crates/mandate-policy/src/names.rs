//! The names of Mandate's Cedar model: its namespace, the context fields
//! every request carries, the entity types and actions (parsed once per
//! snapshot), and the `Tool` entity. Shared by the contract check
//! (`model.rs`), request building (`request.rs`, `context.rs`), argument
//! conversion (`args.rs`) and the policy slices (`slice.rs`).

use cedar_policy::{Entity, EntityId, EntityTypeName, EntityUid, RestrictedExpression};
use mandate_core::ToolClass;
use std::collections::{HashMap, HashSet};
use std::str::FromStr;

/// The Cedar namespace of Mandate's types.
pub const NAMESPACE: &str = "Mandate";

/// The context attributes Mandate supplies on every call, in order.
pub const CONTEXT_FIELDS: [&str; 19] = [
    "user",
    "scope",
    "in_scope",
    "task",
    "task_id",
    "build",
    "session",
    "tool",
    "taint",
    "calls_in_session",
    "calls_in_task",
    "tool_calls_in_session",
    "calls_last_minute",
    "amount_in_task",
    "approved",
    "intent",
    "provenance",
    "now",
    "args",
];

/// Parsed names of the model, built once per snapshot.
#[derive(Debug, Clone)]
pub(crate) struct Names {
    pub(crate) agent: EntityTypeName,
    pub(crate) user: EntityTypeName,
    pub(crate) group: EntityTypeName,
    pub(crate) build: EntityTypeName,
    pub(crate) task: EntityTypeName,
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
            group: ty("Group")?,
            build: ty("Build")?,
            task: ty("Task")?,
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
