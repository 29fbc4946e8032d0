//! From a directory of `*.cedar` files and one `*.cedarschema` to a
//! validated, immutable [`Snapshot`].
//!
//! Loading is the only place policy text is parsed: `decide` works on the
//! snapshot and never re-parses.

use crate::cache::Caches;
use crate::error::{Diagnostics, PolicyError, SourceDiagnostic, line_col};
use crate::limits;
use crate::model::{self, DeclaredArgs};
use crate::names::Names;
use crate::obligation::{self, PolicyMeta};
use crate::slice::Slices;
use cedar_policy::{
    Authorizer, Effect, Entity, Policy, PolicyId, PolicySet, Schema, ValidationMode,
    ValidationWarning, Validator,
};
use mandate_core::ToolClass;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::str::FromStr;

/// Extension of policy files.
pub const POLICY_EXTENSION: &str = "cedar";
/// Extension of the schema file.
pub const SCHEMA_EXTENSION: &str = "cedarschema";

/// Everything `decide` needs, parsed and validated once.
// INVARIANT: `policies` validated in strict mode against the set's schema,
// which passed `check_contract` (so `decide` needs no schema of its own),
// `declared_args` was read from that schema, `slices` holds every policy of
// `policies` whose scope can match some call, and every policy id has an
// entry in `meta`.
pub(crate) struct Snapshot {
    pub(crate) policies: PolicySet,
    pub(crate) hash: String,
    pub(crate) meta: HashMap<PolicyId, PolicyMeta>,
    pub(crate) names: Names,
    pub(crate) declared_args: DeclaredArgs,
    /// Per class, its action entity and the entities of all the action
    /// groups it is in: all a request needs for `action in ...`.
    pub(crate) action_entities: HashMap<ToolClass, Vec<Entity>>,
    /// `policies` cut by class and resource, for evaluation.
    pub(crate) slices: Slices,
    pub(crate) authorizer: Authorizer,
    pub(crate) caches: Caches,
    pub(crate) schema_file: String,
    pub(crate) policy_files: usize,
    pub(crate) warnings: Vec<String>,
}

impl Snapshot {
    /// Reads, parses and validates `dir`.
    pub(crate) fn load(dir: &Path) -> Result<Self, PolicyError> {
        Self::from_sources(dir, read_sources(dir)?)
    }

    /// Parses and validates in-memory files (name → text), exactly as if
    /// they were the files of a directory: the same filter on names, the
    /// same size budget, the same hash. `label` names the set in errors.
    pub(crate) fn from_memory(
        label: &Path,
        files: &std::collections::BTreeMap<String, String>,
    ) -> Result<Self, PolicyError> {
        let mut budget = limits::MAX_SOURCE_BYTES;
        let mut sources = Vec::new();
        for (name, text) in files {
            if name.contains(['/', '\\']) {
                return Err(PolicyError::layout(
                    label,
                    format!("{name:?} is not a plain file name"),
                ));
            }
            let kind = match Path::new(name).extension().and_then(|e| e.to_str()) {
                Some(POLICY_EXTENSION) => Kind::Policy,
                Some(SCHEMA_EXTENSION) => Kind::Schema,
                _ => continue,
            };
            if name.starts_with('.') {
                continue;
            }
            let len = u64::try_from(text.len()).unwrap_or(u64::MAX);
            if len > budget {
                return Err(PolicyError::limit(format!(
                    "the *.{POLICY_EXTENSION} and *.{SCHEMA_EXTENSION} files of {} exceed {} bytes in total (reached at {name})",
                    label.display(),
                    limits::MAX_SOURCE_BYTES
                )));
            }
            budget = budget.saturating_sub(len);
            sources.push(Source {
                name: name.clone(),
                text: text.clone(),
                kind,
            });
        }
        Self::from_sources(label, sources)
    }

    /// Parses and validates `files` (sorted by name), read from `dir`.
    fn from_sources(dir: &Path, files: Vec<Source>) -> Result<Self, PolicyError> {
        let hash = hash_sources(&files);

        let mut schemas = files.iter().filter(|f| f.kind == Kind::Schema);
        let schema_src = match (schemas.next(), schemas.next()) {
            (Some(one), None) => one,
            (None, _) => {
                return Err(PolicyError::layout(
                    dir,
                    format!("no *.{SCHEMA_EXTENSION} file: a policy set needs exactly one schema"),
                ));
            }
            (Some(a), Some(b)) => {
                return Err(PolicyError::layout(
                    dir,
                    format!(
                        "more than one schema ({}, {}, ...): a policy set needs exactly one",
                        a.name, b.name
                    ),
                ));
            }
        };
        let policy_srcs: Vec<&Source> = files.iter().filter(|f| f.kind == Kind::Policy).collect();
        if policy_srcs.is_empty() {
            return Err(PolicyError::layout(
                dir,
                format!("no *.{POLICY_EXTENSION} policy files"),
            ));
        }

        let (schema, schema_warnings) = parse_schema(schema_src)?;
        let names = Names::new().map_err(|e| PolicyError::contract(&schema_src.name, e))?;
        let declared_args =
            model::check_contract(&schema_src.name, &schema_src.text, &schema, &names)?;

        let parsed = parse_policies(&policy_srcs)?;
        let validation_warnings = validate(&parsed, &schema)?;

        let action_entities = action_entities(&schema, &names)
            .map_err(|e| PolicyError::contract(&schema_src.name, e))?;

        let slices = Slices::new(&parsed.set, &names, &action_entities)
            .map_err(|e| PolicyError::contract(&schema_src.name, e))?;

        let mut warnings = schema_warnings;
        warnings.extend(validation_warnings);
        Ok(Self {
            policies: parsed.set,
            hash,
            meta: parsed.meta,
            names,
            declared_args,
            action_entities,
            slices,
            authorizer: Authorizer::new(),
            caches: Caches::default(),
            schema_file: schema_src.name.clone(),
            policy_files: policy_srcs.len(),
            warnings,
        })
    }

    pub(crate) fn policy_count(&self) -> usize {
        self.policies.num_of_policies()
    }
}

/// Each class's action entity with the entities of its ancestor groups.
fn action_entities(
    schema: &Schema,
    names: &Names,
) -> Result<HashMap<ToolClass, Vec<Entity>>, String> {
    let all = schema
        .action_entities()
        .map_err(|e| format!("action entities: {e}"))?;
    let mut out = HashMap::new();
    for class in ToolClass::ALL {
        let uid = names
            .action(class)
            .ok_or_else(|| format!("no action for class {class}"))?;
        let mut entities: Vec<Entity> = all.get(uid).cloned().into_iter().collect();
        if let Some(ancestors) = all.ancestors(uid) {
            entities.extend(ancestors.filter_map(|a| all.get(a).cloned()));
        }
        if entities.is_empty() {
            return Err(format!("the schema declares no action `{uid}`"));
        }
        out.insert(class, entities);
    }
    Ok(out)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Policy,
    Schema,
}

/// One source file, by its name inside the directory.
struct Source {
    name: String,
    text: String,
    kind: Kind,
}

/// Reads the `*.cedar` and `*.cedarschema` files directly in `dir`, sorted
/// by name. Names starting with `.` (editor lock and swap files) are
/// skipped; subdirectories (such as `tests/`) are not read.
fn read_sources(dir: &Path) -> Result<Vec<Source>, PolicyError> {
    let entries = std::fs::read_dir(dir).map_err(|e| PolicyError::io(dir, e))?;
    let mut candidates = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| PolicyError::io(dir, e))?;
        let path = entry.path();
        let raw_name = entry.file_name();
        let lossy = raw_name.to_string_lossy();
        let kind = match Path::new(&*lossy).extension().and_then(|e| e.to_str()) {
            Some(POLICY_EXTENSION) => Kind::Policy,
            Some(SCHEMA_EXTENSION) => Kind::Schema,
            _ => continue,
        };
        if lossy.starts_with('.') {
            continue;
        }
        let Some(name) = raw_name.to_str() else {
            return Err(PolicyError::layout(
                dir,
                format!("file name {lossy:?} is not UTF-8"),
            ));
        };
        let meta = std::fs::metadata(&path).map_err(|e| PolicyError::io(&path, e))?;
        if !meta.is_file() {
            continue;
        }
        candidates.push((name.to_owned(), path, kind));
    }
    candidates.sort_by(|a, b| a.0.cmp(&b.0));

    let mut budget = limits::MAX_SOURCE_BYTES;
    let mut sources = Vec::with_capacity(candidates.len());
    for (name, path, kind) in candidates {
        let file = std::fs::File::open(&path).map_err(|e| PolicyError::io(&path, e))?;
        let mut bytes = Vec::new();
        // Read at most one byte past the remaining budget: a file that grows
        // while we read it cannot make us read without bound.
        file.take(budget.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(|e| PolicyError::io(&path, e))?;
        let len = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
        if len > budget {
            return Err(PolicyError::limit(format!(
                "the *.{POLICY_EXTENSION} and *.{SCHEMA_EXTENSION} files in {} exceed {} bytes in total (reached at {name})",
                dir.display(),
                limits::MAX_SOURCE_BYTES
            )));
        }
        budget = budget.saturating_sub(len);
        let text = String::from_utf8(bytes)
            .map_err(|_| PolicyError::layout(dir, format!("{name} is not UTF-8 text")))?;
        sources.push(Source { name, text, kind });
    }
    Ok(sources)
}

/// SHA-256 over the sorted files: for each, the length-prefixed (u64,
/// big-endian) name and then the length-prefixed contents, so that no two
/// different sets of files can encode to the same bytes.
fn hash_sources(files: &[Source]) -> String {
    let mut h = Sha256::new();
    for f in files {
        for part in [f.name.as_bytes(), f.text.as_bytes()] {
            let len = u64::try_from(part.len()).unwrap_or(u64::MAX);
            h.update(len.to_be_bytes());
            h.update(part);
        }
    }
    hex::encode(h.finalize())
}

fn parse_schema(src: &Source) -> Result<(Schema, Vec<String>), PolicyError> {
    match Schema::from_cedarschema_str(&src.text) {
        Ok((schema, warnings)) => {
            let warnings = warnings
                .map(|w| SourceDiagnostic::from_cedar(&src.name, &src.text, &w).to_string())
                .collect();
            Ok((schema, warnings))
        }
        Err(e) => Err(PolicyError::Syntax(Diagnostics(vec![
            SourceDiagnostic::from_cedar(&src.name, &src.text, &e),
        ]))),
    }
}

struct Parsed<'a> {
    set: PolicySet,
    meta: HashMap<PolicyId, PolicyMeta>,
    /// Source of each policy id, to locate validation errors.
    origin: HashMap<PolicyId, &'a Source>,
}

/// Parses every policy file, assigns ids (`@id`, or `<file>#policy<N>`),
/// reads annotations, and merges everything into one set. All problems in
/// all files are reported together.
fn parse_policies<'a>(srcs: &[&'a Source]) -> Result<Parsed<'a>, PolicyError> {
    let mut problems = Vec::new();
    let mut set = PolicySet::new();
    let mut meta = HashMap::new();
    let mut origin = HashMap::new();
    let mut first_seen: HashMap<String, SourceDiagnosticPlace> = HashMap::new();
    let mut count: usize = 0;

    for src in srcs {
        let file_set = match PolicySet::from_str(&src.text) {
            Ok(s) => s,
            Err(errs) => {
                problems.extend(
                    errs.iter()
                        .map(|e| SourceDiagnostic::from_cedar(&src.name, &src.text, e)),
                );
                continue;
            }
        };
        let mut search_from = 0;
        for template in file_set.templates() {
            let pos = locate(&src.text, &template.to_cedar(), 0);
            problems.push(SourceDiagnostic::new(
                &src.name,
                pos,
                "templates (policies with ?principal or ?resource slots) are not supported; write a static policy".to_owned(),
            ));
        }
        for (index, policy) in file_set.policies().enumerate() {
            count = count.saturating_add(1);
            if count > limits::MAX_POLICIES {
                return Err(PolicyError::limit(format!(
                    "more than {} policies (reached in {})",
                    limits::MAX_POLICIES,
                    src.name
                )));
            }
            // Locate the policy by its own text, searching forward so that
            // two identical policies get their own positions.
            let position = match policy.to_cedar() {
                Some(text) => match src.text.get(search_from..).and_then(|t| t.find(&text)) {
                    Some(rel) => {
                        let start = search_from.saturating_add(rel);
                        search_from = start.saturating_add(text.len());
                        Some(line_col(&src.text, start))
                    }
                    None => None,
                },
                None => None,
            };
            let place = SourceDiagnosticPlace {
                file: src.name.clone(),
                position,
            };
            let id = match policy.annotation("id") {
                Some(id) if id.trim().is_empty() => {
                    problems.push(place.diag("`@id` must not be empty".to_owned()));
                    continue;
                }
                Some(id) => id.to_owned(),
                None => format!("{}#policy{index}", src.name),
            };
            if let Some(previous) = first_seen.get(&id) {
                problems.push(place.diag(format!(
                    "policy id `{id}` is already used at {}",
                    previous.describe()
                )));
                continue;
            }
            first_seen.insert(id.clone(), place.clone());

            match obligation::read_meta(policy) {
                Ok(m) => {
                    let pid = PolicyId::new(&id);
                    match set.add(policy.new_id(pid.clone())) {
                        Ok(()) => {
                            meta.insert(pid.clone(), m);
                            origin.insert(pid, *src);
                        }
                        Err(e) => problems.push(place.diag(e.to_string())),
                    }
                }
                Err(msgs) => problems.extend(msgs.into_iter().map(|m| place.diag(m))),
            }
        }
    }

    if problems.is_empty() {
        Ok(Parsed { set, meta, origin })
    } else {
        Err(PolicyError::Syntax(Diagnostics(problems)))
    }
}

/// Where a policy starts, for messages about the policy as a whole.
#[derive(Clone)]
struct SourceDiagnosticPlace {
    file: String,
    position: Option<(usize, usize)>,
}

impl SourceDiagnosticPlace {
    fn diag(&self, message: String) -> SourceDiagnostic {
        SourceDiagnostic::new(&self.file, self.position, message)
    }

    fn describe(&self) -> String {
        match self.position {
            Some((l, c)) => format!("{}:{l}:{c}", self.file),
            None => self.file.clone(),
        }
    }
}

fn locate(text: &str, needle: &str, from: usize) -> Option<(usize, usize)> {
    let rel = text.get(from..)?.find(needle)?;
    Some(line_col(text, from.saturating_add(rel)))
}

/// Strict validation. Errors refuse the set; warnings (located strings) are
/// returned for `check` and the logs.
///
/// One warning is an error here: a `forbid` that Cedar proves impossible
/// (it can never apply to a valid request). That is almost always a
/// misspelt or undeclared attribute hidden behind `has`
/// (`context.args has iban && ...` without `iban` in `Args`), and a guard
/// that silently never fires fails open.
fn validate(parsed: &Parsed<'_>, schema: &Schema) -> Result<Vec<String>, PolicyError> {
    let validator = Validator::new(schema.clone());
    let result = validator.validate(&parsed.set, ValidationMode::Strict);
    let place = |id: &PolicyId, d: &dyn miette::Diagnostic| match parsed.origin.get(id) {
        Some(src) => SourceDiagnostic::from_cedar(&src.name, &src.text, d),
        None => SourceDiagnostic::new(id.as_ref(), None, d.to_string()),
    };
    let is_forbid =
        |id: &PolicyId| parsed.set.policy(id).map(Policy::effect) == Some(Effect::Forbid);
    let impossible_forbids: Vec<SourceDiagnostic> = result
        .validation_warnings()
        .filter(|w| {
            matches!(w, ValidationWarning::ImpossiblePolicy(_)) && is_forbid(w.policy_id())
        })
        .map(|w| {
            place(w.policy_id(), w).with_suffix(
                " (refused for a `forbid`: a guard that can never apply protects nothing; check the attribute names, and declare arguments in the schema's `Args`)",
            )
        })
        .collect();
    if !result.validation_passed() || !impossible_forbids.is_empty() {
        let errors = result
            .validation_errors()
            .map(|e| place(e.policy_id(), e))
            .chain(impossible_forbids);
        return Err(PolicyError::Invalid(Diagnostics(collapse_per_action(
            errors,
        ))));
    }
    Ok(collapse_per_action(
        result
            .validation_warnings()
            .map(|w| place(w.policy_id(), w)),
    )
    .into_iter()
    .map(|w| format!("warning: {w}"))
    .collect())
}

/// Cedar typechecks a policy once per action it may apply to, so one
/// mistake in a policy covering all six classes yields six diagnostics that
/// differ only in the action. Keep the first of each such group and say how
/// many other actions it also concerns.
fn collapse_per_action(diags: impl Iterator<Item = SourceDiagnostic>) -> Vec<SourceDiagnostic> {
    const ACTION: &str = "Action::\"";
    let key = |d: &SourceDiagnostic| {
        let msg = d.message();
        let normalised = match msg.find(ACTION) {
            Some(start) => {
                let after = start.saturating_add(ACTION.len());
                let end = msg
                    .get(after..)
                    .and_then(|rest| rest.find('"'))
                    .map_or(msg.len(), |e| after.saturating_add(e).saturating_add(1));
                format!(
                    "{}{}",
                    msg.get(..start).unwrap_or_default(),
                    msg.get(end..).unwrap_or_default()
                )
            }
            None => msg.to_owned(),
        };
        (d.file().to_owned(), d.line(), d.column(), normalised)
    };
    let mut groups: Vec<(SourceDiagnostic, usize)> = Vec::new();
    let mut index: HashMap<(String, Option<usize>, Option<usize>, String), usize> = HashMap::new();
    for d in diags {
        let k = key(&d);
        match index.get(&k).and_then(|&i| groups.get_mut(i)) {
            Some(group) => group.1 = group.1.saturating_add(1),
            None => {
                index.insert(k, groups.len());
                groups.push((d, 0));
            }
        }
    }
    groups
        .into_iter()
        .map(|(d, others)| match others {
            0 => d,
            n => d.with_suffix(&format!(" (and the same for {n} other actions)")),
        })
        .collect()
}
