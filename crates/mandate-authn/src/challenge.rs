//! The one builder of `WWW-Authenticate` challenges, for every surface
//! that answers 401 or 403 (the gateway's `/mcp`, its operator API, the
//! broker's token and task endpoints).
//!
//! A challenge is `Bearer` (RFC 6750 §3) or `DPoP` (RFC 9449 §7.1)
//! followed by `name="value"` parameters: `realm`, `error`,
//! `error_description`, `scope` (RFC 6750 §3), `resource_metadata`
//! (RFC 9728 §5.1) and `algs` (RFC 9449 §7.1). Every value is written as a
//! quoted-string (RFC 9110 §5.6.4) whatever it holds:
//!
//! - `error`, `error_description` and `scope` may only hold the characters
//!   RFC 6750 §3 allows (`%x20-21 / %x23-5B / %x5D-7E`): a `"` becomes `'`,
//!   a `\` becomes `/`, anything else outside the set (control characters,
//!   line breaks, non-ASCII) becomes `?`;
//! - other values (`realm`, URLs, `algs`) escape `"` and `\` as
//!   quoted-pairs, and replace control and non-ASCII characters with `?`.
//!
//! So no value can end its quoted-string early, add a parameter, or split
//! the header (no CR or LF survives), and the result is always a valid
//! header value.
//!
//! ```
//! use mandate_authn::Challenge;
//! let c = Challenge::bearer()
//!     .resource_metadata("https://gw.example/.well-known/oauth-protected-resource/mcp")
//!     .error("invalid_token", "token \"expired\"");
//! assert_eq!(
//!     c.to_string(),
//!     "Bearer resource_metadata=\"https://gw.example/.well-known/oauth-protected-resource/mcp\", \
//!      error=\"invalid_token\", error_description=\"token 'expired'\""
//! );
//! ```

use std::fmt;

/// Longest `error_description` written, in characters; longer text is cut.
pub const MAX_DESCRIPTION_CHARS: usize = 200;

/// The authentication scheme a challenge names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// RFC 6750.
    Bearer,
    /// RFC 9449.
    DPoP,
}

impl Scheme {
    fn as_str(self) -> &'static str {
        match self {
            Self::Bearer => "Bearer",
            Self::DPoP => "DPoP",
        }
    }
}

/// How a parameter's value is made safe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Charset {
    /// RFC 6750 §3's restricted set: no `"` or `\` at all.
    Restricted,
    /// Any quoted-string, `"` and `\` escaped.
    Quoted,
}

/// One `WWW-Authenticate` challenge, built parameter by parameter and
/// written (escaped) by its `Display`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    scheme: Scheme,
    params: Vec<(&'static str, String)>,
}

impl Challenge {
    /// A `Bearer` challenge with no parameters yet.
    pub fn bearer() -> Self {
        Self::new(Scheme::Bearer)
    }

    /// A `DPoP` challenge with no parameters yet.
    pub fn dpop() -> Self {
        Self::new(Scheme::DPoP)
    }

    fn new(scheme: Scheme) -> Self {
        Self {
            scheme,
            params: Vec::new(),
        }
    }

    /// Its scheme.
    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    fn with(mut self, name: &'static str, value: String) -> Self {
        self.params.push((name, value));
        self
    }

    /// `realm` (RFC 6750 §3, RFC 9110 §11.5).
    pub fn realm(self, realm: &str) -> Self {
        self.with("realm", quoted(realm, Charset::Quoted))
    }

    /// `resource_metadata`: where the resource's RFC 9728 metadata is.
    pub fn resource_metadata(self, url: &str) -> Self {
        self.with("resource_metadata", quoted(url, Charset::Quoted))
    }

    /// `algs`: the DPoP proof algorithms accepted (RFC 9449 §7.1),
    /// space-separated.
    pub fn algs(self, algs: &str) -> Self {
        self.with("algs", quoted(algs, Charset::Quoted))
    }

    /// `error` and `error_description` (RFC 6750 §3.1). The description
    /// is cut to [`MAX_DESCRIPTION_CHARS`].
    pub fn error(self, code: &str, description: &str) -> Self {
        let description: String = description.chars().take(MAX_DESCRIPTION_CHARS).collect();
        self.with("error", quoted(code, Charset::Restricted)).with(
            "error_description",
            quoted(&description, Charset::Restricted),
        )
    }

    /// `error` alone, without a description.
    pub fn error_code(self, code: &str) -> Self {
        self.with("error", quoted(code, Charset::Restricted))
    }

    /// `scope`: the scope the request needs (RFC 6750 §3).
    pub fn scope(self, scope: &str) -> Self {
        self.with("scope", quoted(scope, Charset::Restricted))
    }
}

impl fmt::Display for Challenge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.scheme.as_str())?;
        for (i, (name, value)) in self.params.iter().enumerate() {
            let sep = if i == 0 { " " } else { ", " };
            write!(f, "{sep}{name}={value}")?;
        }
        Ok(())
    }
}

/// `value` as a quoted-string, made safe for its parameter.
fn quoted(value: &str, charset: Charset) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match (c, charset) {
            ('"', Charset::Restricted) => out.push('\''),
            ('\\', Charset::Restricted) => out.push('/'),
            ('"' | '\\', Charset::Quoted) => {
                out.push('\\');
                out.push(c);
            }
            (' '..='~', _) => out.push(c),
            // Control characters (CR, LF, HTAB included), DEL, non-ASCII.
            _ => out.push('?'),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The characters RFC 6750 §3 allows in `error`,
    /// `error_description` and `scope` values.
    fn rfc6750_char(c: char) -> bool {
        matches!(c, '\x20'..='\x21' | '\x23'..='\x5B' | '\x5D'..='\x7E')
    }

    /// Splits a challenge's parameters back out, honouring quoted-pairs,
    /// so a test sees what a client's parser would see.
    fn parse(header: &str) -> Option<(String, Vec<(String, String)>)> {
        let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
        let mut params = Vec::new();
        let mut chars = rest.chars().peekable();
        loop {
            while chars.peek().is_some_and(|c| *c == ' ' || *c == ',') {
                chars.next();
            }
            if chars.peek().is_none() {
                break;
            }
            let name: String = chars.by_ref().take_while(|c| *c != '=').collect();
            if chars.next()? != '"' {
                return None;
            }
            let mut value = String::new();
            loop {
                match chars.next()? {
                    '\\' => value.push(chars.next()?),
                    '"' => break,
                    c => value.push(c),
                }
            }
            params.push((name, value));
        }
        Some((scheme.to_owned(), params))
    }

    #[test]
    fn a_full_bearer_challenge_reads_as_rfc_6750_and_9728_say() {
        let c = Challenge::bearer()
            .realm("mandate")
            .resource_metadata("https://gw.example/.well-known/oauth-protected-resource/mcp")
            .error(
                "insufficient_scope",
                "the token's scope does not cover this tool",
            )
            .scope("bank.transfer");
        assert_eq!(
            c.to_string(),
            "Bearer realm=\"mandate\", \
             resource_metadata=\"https://gw.example/.well-known/oauth-protected-resource/mcp\", \
             error=\"insufficient_scope\", \
             error_description=\"the token's scope does not cover this tool\", \
             scope=\"bank.transfer\""
        );
        assert_eq!(Challenge::bearer().to_string(), "Bearer");
        assert_eq!(
            Challenge::dpop()
                .algs("EdDSA ES256")
                .error_code("use_dpop_nonce")
                .to_string(),
            "DPoP algs=\"EdDSA ES256\", error=\"use_dpop_nonce\""
        );
    }

    #[test]
    fn restricted_values_lose_quotes_backslashes_and_line_breaks() {
        let hostile = "a \"quoted\" \\ path\r\nSet-Cookie: x=1\t\u{7f}é";
        let c = Challenge::bearer()
            .error("invalid_token", hostile)
            .scope("a\"b");
        let text = c.to_string();
        assert!(!text.contains(['\r', '\n', '\t', '\u{7f}', '\\']), "{text}");
        assert!(text.is_ascii(), "{text}");
        let (scheme, params) = parse(&text).unwrap_or_default();
        assert_eq!(scheme, "Bearer");
        assert_eq!(
            params,
            vec![
                ("error".to_owned(), "invalid_token".to_owned()),
                (
                    "error_description".to_owned(),
                    "a 'quoted' / path??Set-Cookie: x=1???".to_owned()
                ),
                ("scope".to_owned(), "a'b".to_owned()),
            ]
        );
        for (_, value) in &params {
            assert!(value.chars().all(rfc6750_char), "{value:?}");
        }
    }

    #[test]
    fn other_values_are_escaped_as_quoted_pairs_not_cut_short() {
        let realm = "mandate\", error=\"forged";
        let url = "https://gw.example/a\\b\nc";
        let text = Challenge::bearer()
            .realm(realm)
            .resource_metadata(url)
            .to_string();
        assert_eq!(
            text,
            "Bearer realm=\"mandate\\\", error=\\\"forged\", \
             resource_metadata=\"https://gw.example/a\\\\b?c\""
        );
        // A client parses exactly two parameters, the first with the
        // realm's text intact: the injected `error` is not a parameter.
        let (_, params) = parse(&text).unwrap_or_default();
        assert_eq!(
            params,
            vec![
                ("realm".to_owned(), realm.to_owned()),
                (
                    "resource_metadata".to_owned(),
                    "https://gw.example/a\\b?c".to_owned()
                ),
            ]
        );
    }

    #[test]
    fn long_descriptions_are_cut() {
        let long = "x".repeat(MAX_DESCRIPTION_CHARS * 3);
        let c = Challenge::bearer().error("invalid_token", &long);
        let (_, params) = parse(&c.to_string()).unwrap_or_default();
        let desc = params
            .iter()
            .find(|(n, _)| n == "error_description")
            .map(|(_, v)| v.len());
        assert_eq!(desc, Some(MAX_DESCRIPTION_CHARS));
    }
}
