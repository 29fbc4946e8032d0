//! Policy annotations: ids, reasons and obligations.
//!
//! | annotation                     | on            | meaning                                  |
//! |--------------------------------|---------------|------------------------------------------|
//! | `@id("name")`                  | any policy    | the policy id recorded in decisions      |
//! | `@reason("text")`              | any policy    | recorded when the policy determines a decision |
//! | `@obligation("approval")`      | permit only   | hold the call until a human approves it  |
//! | `@obligation("redact:a,b")`    | permit only   | remove fields `a`, `b` from the result   |
//! | `@code("snake_case")`          | forbid only   | the reason code an agent sees when this forbid denies (e.g. `untrusted_argument`) |
//! | `@agent_reason("text")`        | forbid only   | a sentence the agent is told when this forbid denies, for its user (what to do); `@reason` stays for operators and approvers |
//! | `@x_anything("...")`           | any policy    | free for your own tooling; ignored       |
//!
//! Several obligations go in one annotation, separated by `;`
//! (`@obligation("approval; redact:ssn")`). Any other annotation is an
//! error: a misspelt `@obligations("approval")` must not silently drop the
//! approval step.

use cedar_policy::{Effect as CedarEffect, Policy};
use mandate_core::Obligation;
use std::collections::BTreeSet;

/// What Mandate reads from a policy's annotations.
#[derive(Debug, Clone)]
pub(crate) struct PolicyMeta {
    pub(crate) reason: Option<String>,
    pub(crate) obligations: Vec<Obligation>,
    /// The reason code a denying forbid gives the agent.
    pub(crate) code: Option<String>,
    /// The sentence a denying forbid gives the agent.
    pub(crate) agent_reason: Option<String>,
}

const KNOWN: [&str; 5] = ["id", "reason", "obligation", "code", "agent_reason"];

/// Longest `@agent_reason` (characters): one or two sentences.
const MAX_AGENT_REASON: usize = 300;

/// Whether `code` is a reason code: snake case, 1 to 48 characters.
fn is_code(code: &str) -> bool {
    (1..=48).contains(&code.len())
        && code.starts_with(|c: char| c.is_ascii_lowercase())
        && code
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// Reads and checks one policy's annotations.
pub(crate) fn read_meta(policy: &Policy) -> Result<PolicyMeta, Vec<String>> {
    let mut problems = Vec::new();
    for (key, _) in policy.annotations() {
        if !KNOWN.contains(&key) && !key.starts_with("x_") {
            problems.push(format!(
                "unknown annotation `@{key}` (expected @id, @reason, @obligation, @code, @agent_reason, or @x_... for your own use)"
            ));
        }
    }
    let effect = policy.effect();
    let obligations = match policy.annotation("obligation") {
        None => Vec::new(),
        Some(_) if effect == CedarEffect::Forbid => {
            problems.push(
                "`@obligation` only applies to `permit` policies (a forbid always denies)"
                    .to_owned(),
            );
            Vec::new()
        }
        Some(text) => parse_list(text).unwrap_or_else(|e| {
            problems.push(e);
            Vec::new()
        }),
    };
    let reason = policy.annotation("reason").map(str::to_owned);
    let code = match policy.annotation("code") {
        None => None,
        Some(_) if effect == CedarEffect::Permit => {
            problems.push(
                "`@code` only applies to `forbid` policies (it names why a call was denied)"
                    .to_owned(),
            );
            None
        }
        Some(c) if is_code(c) => Some(c.to_owned()),
        Some(c) => {
            problems.push(format!(
                "`@code({c:?})` must be snake case (a-z, 0-9, _), at most 48 characters"
            ));
            None
        }
    };
    let agent_reason = match policy.annotation("agent_reason") {
        None => None,
        Some(_) if effect == CedarEffect::Permit => {
            problems.push(
                "`@agent_reason` only applies to `forbid` policies (it tells the agent why it was refused)"
                    .to_owned(),
            );
            None
        }
        Some(text)
            if text.trim().is_empty()
                || text.chars().count() > MAX_AGENT_REASON
                || text
                    .chars()
                    .any(|c| c.is_control() || mandate_core::text::is_invisible(c)) =>
        {
            problems.push(format!(
                "`@agent_reason` must be 1 to {MAX_AGENT_REASON} characters of visible text on one line"
            ));
            None
        }
        Some(text) => Some(text.trim().to_owned()),
    };
    if problems.is_empty() {
        Ok(PolicyMeta {
            reason,
            obligations,
            code,
            agent_reason,
        })
    } else {
        Err(problems)
    }
}

/// Parses `approval; redact:a,b` into obligations.
pub(crate) fn parse_list(text: &str) -> Result<Vec<Obligation>, String> {
    let mut out = Vec::new();
    for item in text.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        out.push(parse_one(item)?);
    }
    if out.is_empty() {
        return Err(format!(
            "empty obligation {text:?} (expected \"approval\" or \"redact:field,...\")"
        ));
    }
    Ok(merge(out.iter().map(std::slice::from_ref)))
}

fn parse_one(item: &str) -> Result<Obligation, String> {
    if item == "approval" {
        return Ok(Obligation::Approval);
    }
    if let Some(list) = item.strip_prefix("redact:") {
        let fields: Vec<String> = list
            .split(',')
            .map(str::trim)
            .filter(|f| !f.is_empty())
            .map(str::to_owned)
            .collect();
        if fields.is_empty() {
            return Err(format!("obligation {item:?} names no field to redact"));
        }
        return Ok(Obligation::Redact { fields });
    }
    Err(format!(
        "unknown obligation {item:?} (expected \"approval\" or \"redact:field,...\")"
    ))
}

/// The union of several policies' obligations, normalised: at most one
/// `Approval` (first), then at most one `Redact` with the sorted union of
/// all fields. Combining can only add duties, so the strictest set wins.
pub(crate) fn merge<'a>(lists: impl IntoIterator<Item = &'a [Obligation]>) -> Vec<Obligation> {
    let mut approval = false;
    let mut redact: BTreeSet<String> = BTreeSet::new();
    for list in lists {
        for o in list {
            match o {
                Obligation::Approval => approval = true,
                Obligation::Redact { fields } => redact.extend(fields.iter().cloned()),
            }
        }
    }
    let mut out = Vec::new();
    if approval {
        out.push(Obligation::Approval);
    }
    if !redact.is_empty() {
        out.push(Obligation::Redact {
            fields: redact.into_iter().collect(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_normalises_obligations() {
        assert_eq!(parse_list("approval"), Ok(vec![Obligation::Approval]));
        assert_eq!(
            parse_list(" redact: b ,a; approval ;redact:a,c"),
            Ok(vec![
                Obligation::Approval,
                Obligation::Redact {
                    fields: vec!["a".into(), "b".into(), "c".into()]
                }
            ])
        );
        assert!(parse_list("").is_err());
        assert!(parse_list("redact:").is_err());
        assert!(parse_list("aproval").is_err());
    }

    #[test]
    fn merge_is_a_union_where_stricter_wins() {
        let a = vec![Obligation::Redact {
            fields: vec!["x".into()],
        }];
        let b = vec![Obligation::Approval];
        let merged = merge([a.as_slice(), b.as_slice(), &[]]);
        assert_eq!(
            merged,
            vec![
                Obligation::Approval,
                Obligation::Redact {
                    fields: vec!["x".into()]
                }
            ]
        );
    }
}
