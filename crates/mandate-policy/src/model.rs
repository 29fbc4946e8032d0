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
//!
//! with the entities `Mandate::User::"<sub>"` (parents: its
//! `Mandate::Group`s from the [`Directory`]), `Mandate::Build::"<build>"`
//! (`registered`, `name`) and `Mandate::Task::"<task_id>"`.
//!
//! [`Directory`]: crate::Directory

use crate::args::{self, ArgType};
use crate::context;
use crate::error::PolicyError;
use crate::names::{CONTEXT_FIELDS, Names, tool_entity};
use crate::{Directory, SessionFacts};
use cedar_policy::{
    Context, Entities, Entity, EntityUid, Request, RestrictedExpression, Schema, SchemaFragment,
};
use mandate_core::{CallerData, Scope, ToolClass};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

/// The top-level `args` fields the schema declares, with their types, per
/// class.
#[derive(Debug, Clone, Default)]
pub(crate) struct DeclaredArgs(HashMap<ToolClass, BTreeMap<String, ArgType>>);

impl DeclaredArgs {
    pub(crate) fn fields(&self, class: ToolClass) -> Option<&BTreeMap<String, ArgType>> {
        self.0.get(&class)
    }
}

/// Checks that `schema` fits the requests Mandate builds, and extracts the
/// declared argument fields of each action.
///
/// The check is by construction: it builds sample entities and, for every
/// class, a sample request with the very functions `decide` uses (see
/// [`crate::request`]), and asks Cedar to validate them against the schema.
/// A schema that renames an action, drops or retypes a context field,
/// changes an entity's attributes or makes an `Args` field required is
/// refused here rather than denying every call later. Because of this check
/// `decide` does not validate each request against the schema again; only
/// the arguments, the one part the agent chooses, are type-checked per call.
pub(crate) fn check_contract(
    schema_file: &str,
    schema_text: &str,
    schema: &Schema,
    names: &Names,
) -> Result<DeclaredArgs, PolicyError> {
    let contract = |msg: String| PolicyError::contract(schema_file, msg);

    let sample = Sample::new();
    let agent = Names::uid(&names.agent, "sample-agent");
    let upstream = Names::uid(&names.upstream, "sample");
    let tool = Names::uid(&names.tool, "sample.tool");
    let mut entities = vec![
        Entity::new_no_attrs(agent.clone(), HashSet::new()),
        Entity::new_no_attrs(upstream.clone(), HashSet::new()),
        Entity::new_no_attrs(Names::uid(&names.group, "sample-group"), HashSet::new()),
        Entity::new_no_attrs(Names::uid(&names.task, "sample-task"), HashSet::new()),
        tool_entity(tool.clone(), upstream, "read", "sample")
            .map_err(|e| contract(format!("cannot build a sample tool entity: {e}")))?,
    ];
    entities.extend(
        context::principal_entities(names, &sample.principal.caller(), &sample.directory)
            .map_err(|e| contract(format!("cannot build sample entities: {e}")))?,
    );
    Entities::from_entities(entities, Some(schema)).map_err(|e| {
        contract(format!(
            "entities `Agent`, `Group`, `User in [Group]`, `Build {{ registered: Bool, name: String }}`, `Task`, `Upstream` and `Tool in [Upstream] {{ class: String, upstream: String }}` are expected: {e}"
        ))
    })?;

    for class in ToolClass::ALL {
        let action = names
            .action(class)
            .ok_or_else(|| contract(format!("no action for class {class}")))?;
        let context = sample
            .context(names, None)
            .and_then(|pairs| Context::from_pairs(pairs).map_err(|e| e.to_string()))
            .map_err(|e| contract(format!("cannot build a sample context: {e}")))?;
        Request::new(
            agent.clone(),
            action.clone(),
            tool.clone(),
            context,
            Some(schema),
        )
        .map_err(|e| {
            let hint = missing_context_field(schema, names, &sample, &agent, action, &tool)
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
        let fields = args::declared(&json, class.as_str())
            .map_err(|e| contract(format!("action `{class}`: {e}")))?;
        declared.insert(class, fields);
    }
    Ok(DeclaredArgs(declared))
}

/// Sample facts for the contract check. Sets are not empty, so that their
/// element types are checked too.
pub(crate) struct Sample {
    pub(crate) principal: CallerData,
    pub(crate) session: SessionFacts,
    pub(crate) directory: Directory,
}

impl Sample {
    pub(crate) fn new() -> Self {
        let principal = CallerData {
            iss: "sample-issuer".into(),
            sub: "sample-user".into(),
            act: vec!["sample-agent".into()],
            scope: Scope::parse("sample.tool"),
            task_id: Some("sample-task".into()),
            build: Some("sample-build".into()),
            sid: Some("sample-session".into()),
            jti: None,
        };
        let directory = Directory {
            groups: BTreeMap::from([(
                "sample-user".to_owned(),
                BTreeSet::from(["sample-group".to_owned()]),
            )]),
            builds: BTreeMap::from([(
                "sample-build".to_owned(),
                crate::BuildInfo {
                    name: "sample".into(),
                },
            )]),
        };
        let session = SessionFacts {
            taint: BTreeSet::from(["untrusted".to_owned()]),
            intent: crate::IntentFacts {
                grant: "sample-grant".into(),
                ..crate::IntentFacts::default()
            },
            provenance: crate::ArgumentFacts {
                untrusted: BTreeSet::from(["to".to_owned()]),
                uncovered: BTreeSet::from(["to".to_owned()]),
                unseen: BTreeSet::from(["amount".to_owned()]),
                partial: false,
            },
            ..SessionFacts::default()
        };
        Self {
            principal,
            session,
            directory,
        }
    }

    /// The sample context, without the field `skip` if given.
    pub(crate) fn context(
        &self,
        names: &Names,
        skip: Option<&str>,
    ) -> Result<Vec<(String, RestrictedExpression)>, String> {
        let args = RestrictedExpression::new_record([]).map_err(|e| e.to_string())?;
        Ok(self
            .context_with(names, args)
            .into_iter()
            .filter(|(k, _)| Some(k.as_str()) != skip)
            .collect())
    }

    /// The sample context with the given `args`.
    pub(crate) fn context_with(
        &self,
        names: &Names,
        args: RestrictedExpression,
    ) -> Vec<(String, RestrictedExpression)> {
        context::context_pairs(
            names,
            &context::ContextInput {
                principal: &self.principal.caller(),
                tool: "sample.tool",
                session: &self.session,
                now: 0,
            },
            args,
        )
    }
}

/// The one context field whose removal makes the sample request valid, if
/// any: the field the schema forgot.
fn missing_context_field(
    schema: &Schema,
    names: &Names,
    sample: &Sample,
    agent: &EntityUid,
    action: &EntityUid,
    tool: &EntityUid,
) -> Option<&'static str> {
    CONTEXT_FIELDS.into_iter().find(|field| {
        sample
            .context(names, Some(field))
            .ok()
            .and_then(|pairs| Context::from_pairs(pairs).ok())
            .and_then(|c| {
                Request::new(agent.clone(), action.clone(), tool.clone(), c, Some(schema)).ok()
            })
            .is_some()
    })
}
