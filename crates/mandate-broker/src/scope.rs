//! Scope reduction: what an issued token may carry.
//!
//! `issued = requested ∩ user entitlements ∩ agent ceiling ∩ task template`
//! (for a sub-delegation the parent token's scope takes the place of the
//! user's entitlements). Every step is [`Scope::intersect`], which is never
//! wider than either side, so nothing is ever widened; an empty result is
//! `invalid_scope`.

use mandate_core::Scope;

/// The bounds a request is reduced by.
#[derive(Debug, Clone, Copy)]
pub struct Bounds<'a> {
    /// What the user may delegate (or the parent token's scope).
    pub subject: &'a Scope,
    /// The agent's registered ceiling.
    pub ceiling: &'a Scope,
    /// The task template's scope.
    pub template: &'a Scope,
}

/// Why no scope can be issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScopeProblem {
    /// The intersection is empty.
    Empty,
    /// A sub-delegation asked for something its parent token does not carry.
    Widening(String),
}

/// Reduces `requested` (`None`: everything the bounds allow) by `bounds`.
/// With `strict`, every requested entry must be covered by the subject
/// scope (sub-delegation: a request to widen is refused, not trimmed).
pub fn reduce_scope(
    requested: Option<&Scope>,
    bounds: Bounds<'_>,
    strict: bool,
) -> Result<Scope, ScopeProblem> {
    if strict && let Some(req) = requested {
        for entry in req.iter() {
            let one = Scope::parse(entry);
            if one.intersect(bounds.subject) != one {
                return Err(ScopeProblem::Widening(entry.to_owned()));
            }
        }
    }
    let mut out = bounds
        .subject
        .intersect(bounds.ceiling)
        .intersect(bounds.template);
    if let Some(req) = requested {
        out = req.intersect(&out);
    }
    if out.iter().next().is_none() {
        return Err(ScopeProblem::Empty);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: &str) -> Scope {
        Scope::parse(x)
    }

    #[test]
    fn the_result_is_never_wider_than_any_party() -> Result<(), ScopeProblem> {
        let user = s("docs.* bank.get_balance mail.send");
        let ceiling = s("docs.search docs.list bank.*");
        let template = s("docs.* bank.get_balance");
        let b = Bounds {
            subject: &user,
            ceiling: &ceiling,
            template: &template,
        };
        let all = reduce_scope(None, b, false)?;
        assert_eq!(
            all.to_oauth_string(),
            "bank.get_balance docs.list docs.search"
        );
        let asked = reduce_scope(Some(&s("docs.search bank.transfer mail.send")), b, false)?;
        assert_eq!(asked.to_oauth_string(), "docs.search");
        for tool in [
            "docs.search",
            "docs.delete",
            "bank.transfer",
            "bank.get_balance",
            "mail.send",
        ] {
            assert!(
                !all.covers(tool)
                    || (user.covers(tool) && ceiling.covers(tool) && template.covers(tool)),
                "{tool}"
            );
        }
        Ok(())
    }

    #[test]
    fn escalation_is_invalid_scope() {
        let user = s("docs.search");
        let b = Bounds {
            subject: &user,
            ceiling: &user,
            template: &user,
        };
        assert_eq!(
            reduce_scope(Some(&s("bank.transfer")), b, false),
            Err(ScopeProblem::Empty)
        );
        assert_eq!(
            reduce_scope(Some(&s("docs.search bank.transfer")), b, true),
            Err(ScopeProblem::Widening("bank.transfer".into()))
        );
        let none = s("");
        let b = Bounds {
            subject: &user,
            ceiling: &none,
            template: &user,
        };
        assert_eq!(reduce_scope(None, b, false), Err(ScopeProblem::Empty));
    }

    #[test]
    fn a_wildcard_request_is_narrowed_to_what_is_granted() -> Result<(), ScopeProblem> {
        let user = s("docs.search");
        let wide = s("docs.*");
        let b = Bounds {
            subject: &user,
            ceiling: &wide,
            template: &wide,
        };
        assert_eq!(
            reduce_scope(Some(&wide), b, true)
                .map(|x| x.to_oauth_string())
                .err(),
            Some(ScopeProblem::Widening("docs.*".into()))
        );
        assert_eq!(
            reduce_scope(Some(&wide), b, false)?.to_oauth_string(),
            "docs.search"
        );
        Ok(())
    }
}
