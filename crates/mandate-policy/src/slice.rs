//! Policy slicing: each call is evaluated against only the policies whose
//! scope can match it.
//!
//! Cedar evaluates a policy as `principal-scope && action-scope &&
//! resource-scope && conditions`, left to right, and a scope test never
//! errors. A policy whose action or resource scope is false for a request
//! therefore evaluates to `false` without touching its conditions: it can
//! neither determine the decision nor raise an error. Leaving it out changes
//! nothing but the time taken (Cedar's authorizer otherwise rebuilds and
//! evaluates every policy's expression on every call).
//!
//! Every Mandate request has the action of its tool class and a resource
//! `Mandate::Tool::"<upstream.tool>"` whose only ancestor is
//! `Mandate::Upstream::"<upstream>"`, so at load each policy is filed under
//! every class its action scope admits, and there either as applying to any
//! tool, or under the one tool or upstream its resource scope names.
//! Policies whose resource scope names another entity type can never apply
//! and are filed nowhere.
//!
//! A filed policy's action and resource scope hold for every request that
//! reaches its slice, so the copy filed there has them dropped (the
//! principal scope and the conditions are kept, and so are its id and
//! annotations). Cedar then does not rebuild and test, say, a set of four
//! actions on every call; the outcome is the same.

use crate::names::Names;
use cedar_policy::{
    ActionConstraint, Entity, EntityTypeName, EntityUid, Policy, PolicySet, ResourceConstraint,
};
use mandate_core::ToolClass;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// The policy set cut by class and resource.
#[derive(Default)]
pub(crate) struct Slices {
    classes: HashMap<ToolClass, ClassSlices>,
}

#[derive(Default)]
struct ClassSlices {
    /// Policies whose resource scope holds for every tool.
    any_tool: Option<Arc<PolicySet>>,
    /// Policies whose resource scope names one tool or upstream, by its uid.
    by_resource: HashMap<EntityUid, Arc<PolicySet>>,
}

/// Where a policy's resource scope lets it apply.
enum Reach {
    AnyTool,
    Only(EntityUid),
    Nowhere,
}

impl Slices {
    /// Files every policy of `set`. `action_entities` are, per class, its
    /// action entity and the action groups it is in.
    pub(crate) fn new(
        set: &PolicySet,
        names: &Names,
        action_entities: &HashMap<ToolClass, Vec<Entity>>,
    ) -> Result<Self, String> {
        // Per class: the action and the groups it is in.
        let mut classes_in = Vec::new();
        for class in ToolClass::ALL {
            let action = names
                .action(class)
                .ok_or_else(|| format!("no action for class {class}"))?;
            let in_groups: HashSet<EntityUid> = action_entities
                .get(&class)
                .into_iter()
                .flatten()
                .map(Entity::uid)
                .collect();
            classes_in.push((class, action, in_groups));
        }
        let mut building: HashMap<ToolClass, (PolicySet, HashMap<EntityUid, PolicySet>)> =
            HashMap::new();
        for policy in set.policies() {
            let uid = match reach(policy, names) {
                Reach::AnyTool => None,
                Reach::Only(uid) => Some(uid),
                Reach::Nowhere => continue,
            };
            let constraint = policy.action_constraint();
            // Rewritten once, filed under every class it admits.
            let mut filed: Option<Policy> = None;
            for (class, action, in_groups) in &classes_in {
                let admits = match &constraint {
                    ActionConstraint::Any => true,
                    ActionConstraint::Eq(a) => a == *action,
                    ActionConstraint::In(list) => list.iter().any(|a| in_groups.contains(a)),
                };
                if !admits {
                    continue;
                }
                let copy = match &filed {
                    Some(p) => p.clone(),
                    None => filed
                        .insert(without_action_and_resource_scope(policy)?)
                        .clone(),
                };
                let (any_tool, by_resource) = building.entry(*class).or_default();
                let target = match &uid {
                    None => any_tool,
                    Some(uid) => by_resource.entry(uid.clone()).or_default(),
                };
                target
                    .add(copy)
                    .map_err(|e| format!("cannot slice the policy set: {e}"))?;
            }
        }
        let classes = building
            .into_iter()
            .map(|(class, (any_tool, by_resource))| {
                let any_tool = (!any_tool.is_empty()).then(|| Arc::new(any_tool));
                let by_resource = by_resource
                    .into_iter()
                    .map(|(uid, set)| (uid, Arc::new(set)))
                    .collect();
                (
                    class,
                    ClassSlices {
                        any_tool,
                        by_resource,
                    },
                )
            })
            .collect();
        Ok(Self { classes })
    }

    /// The policy sets to evaluate for a call to `tool` (in `upstream`):
    /// together, every policy whose scope can match it, each exactly once.
    pub(crate) fn for_call(
        &self,
        class: ToolClass,
        tool: &EntityUid,
        upstream: &EntityUid,
    ) -> Vec<Arc<PolicySet>> {
        let Some(slices) = self.classes.get(&class) else {
            return Vec::new();
        };
        slices
            .any_tool
            .iter()
            .chain(slices.by_resource.get(tool))
            .chain(slices.by_resource.get(upstream))
            .cloned()
            .collect()
    }
}

/// `policy` with `action` and `resource` unconstrained, same id.
fn without_action_and_resource_scope(policy: &Policy) -> Result<Policy, String> {
    let mut json = policy
        .to_json()
        .map_err(|e| format!("cannot slice policy `{}`: {e}", policy.id()))?;
    let all = || serde_json::json!({ "op": "All" });
    let fields = json.as_object_mut().ok_or_else(|| {
        format!(
            "cannot slice policy `{}`: unexpected JSON form",
            policy.id()
        )
    })?;
    fields.insert("action".to_owned(), all());
    fields.insert("resource".to_owned(), all());
    Policy::from_json(Some(policy.id().clone()), json)
        .map_err(|e| format!("cannot slice policy `{}`: {e}", policy.id()))
}

fn reach(policy: &Policy, names: &Names) -> Reach {
    let is_tool = |ty: &EntityTypeName| ty == &names.tool;
    // `resource in X` holds when X is the tool itself or its upstream.
    let container = |uid: EntityUid| {
        if is_tool(uid.type_name()) || uid.type_name() == &names.upstream {
            Reach::Only(uid)
        } else {
            Reach::Nowhere
        }
    };
    match policy.resource_constraint() {
        ResourceConstraint::Any => Reach::AnyTool,
        ResourceConstraint::Is(ty) if is_tool(&ty) => Reach::AnyTool,
        // `resource == X` holds only for the tool X itself.
        ResourceConstraint::Eq(uid) if is_tool(uid.type_name()) => Reach::Only(uid),
        ResourceConstraint::In(uid) => container(uid),
        ResourceConstraint::IsIn(ty, uid) if is_tool(&ty) => container(uid),
        ResourceConstraint::Is(_) | ResourceConstraint::Eq(_) | ResourceConstraint::IsIn(..) => {
            Reach::Nowhere
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    #[test]
    fn policies_are_filed_by_class_and_resource() -> Result<(), Box<dyn std::error::Error>> {
        let names = Names::new()?;
        let set = PolicySet::from_str(
            r#"
@id("any") permit (principal, action, resource);
@id("read") permit (principal, action == Mandate::Action::"read", resource);
@id("call") forbid (principal, action in Mandate::Action::"call", resource);
@id("pay") forbid (principal, action in [Mandate::Action::"financial", Mandate::Action::"write"], resource);
@id("group-eq") forbid (principal, action == Mandate::Action::"call", resource);
@id("tool") permit (principal, action, resource == Mandate::Tool::"bank.transfer");
@id("upstream") permit (principal, action, resource in Mandate::Upstream::"bank");
@id("tool-in") permit (principal, action, resource in Mandate::Tool::"bank.transfer");
@id("is-tool") permit (principal, action, resource is Mandate::Tool);
@id("is-tool-in") permit (principal, action, resource is Mandate::Tool in Mandate::Upstream::"bank");
@id("is-upstream") permit (principal, action, resource is Mandate::Upstream);
@id("is-user-in") permit (principal, action, resource is Mandate::User in Mandate::Upstream::"bank");
@id("other") permit (principal, action, resource == Mandate::Tool::"docs.search");
@id("user") permit (principal, action, resource == Mandate::User::"bank.transfer");
"#,
        )?;
        let call = Names::uid(&EntityTypeName::from_str("Mandate::Action")?, "call");
        let mut action_entities = HashMap::new();
        for class in ToolClass::ALL {
            let uid = names.action(class).ok_or("no action")?.clone();
            action_entities.insert(
                class,
                vec![
                    Entity::new_no_attrs(uid, HashSet::from([call.clone()])),
                    Entity::new_no_attrs(call.clone(), HashSet::new()),
                ],
            );
        }
        let slices = Slices::new(&set, &names, &action_entities)?;
        let ids = |class, tool: &str, upstream: &str| {
            let mut ids: Vec<String> = slices
                .for_call(
                    class,
                    &Names::uid(&names.tool, tool),
                    &Names::uid(&names.upstream, upstream),
                )
                .iter()
                .flat_map(|s| {
                    s.policies()
                        .filter_map(|p| p.annotation("id").map(str::to_owned))
                        .collect::<Vec<_>>()
                })
                .collect();
            ids.sort();
            ids
        };
        assert_eq!(
            ids(ToolClass::Financial, "bank.transfer", "bank"),
            [
                "any",
                "call",
                "is-tool",
                "is-tool-in",
                "pay",
                "tool",
                "tool-in",
                "upstream"
            ]
        );
        assert_eq!(
            ids(ToolClass::Read, "docs.search", "docs"),
            ["any", "call", "is-tool", "other", "read"]
        );
        assert_eq!(
            ids(ToolClass::Read, "bank.get_balance", "bank"),
            ["any", "call", "is-tool", "is-tool-in", "read", "upstream"]
        );
        Ok(())
    }
}
