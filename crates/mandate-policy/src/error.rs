//! The crate's one error type, and source positions for Cedar's diagnostics.

use std::fmt;
use std::path::{Path, PathBuf};

/// Why a policy directory (or a policy test file) was refused.
///
/// Every variant wraps a small struct with private fields; the `Display`
/// form is the message meant for an operator (it names the file, and the
/// line and column where Cedar gives one).
#[derive(thiserror::Error, Debug)]
pub enum PolicyError {
    /// A file or directory could not be read.
    #[error(transparent)]
    Io(IoError),
    /// The directory does not hold what a policy set needs (exactly one
    /// schema, at least one policy file, UTF-8 names and text).
    #[error(transparent)]
    Layout(LayoutError),
    /// Policy or schema text does not parse, or policy annotations or ids
    /// are wrong.
    #[error("policy set is malformed:\n{0}")]
    Syntax(Diagnostics),
    /// Policies do not validate against the schema (strict mode).
    #[error("policy set does not validate against the schema (strict mode):\n{0}")]
    Invalid(Diagnostics),
    /// The schema does not describe the requests Mandate sends.
    #[error(transparent)]
    Contract(ContractError),
    /// The policy set exceeds a size limit (see [`crate::limits`]).
    #[error(transparent)]
    Limit(LimitError),
    /// A policy test file is malformed.
    #[error("policy test file is malformed:\n{0}")]
    TestFile(Diagnostics),
}

impl PolicyError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io(IoError {
            path: path.to_path_buf(),
            source,
        })
    }

    pub(crate) fn layout(dir: &Path, message: impl Into<String>) -> Self {
        Self::Layout(LayoutError {
            dir: dir.to_path_buf(),
            message: message.into(),
        })
    }

    pub(crate) fn contract(schema_file: &str, message: impl Into<String>) -> Self {
        Self::Contract(ContractError {
            file: schema_file.to_owned(),
            message: message.into(),
        })
    }

    pub(crate) fn limit(message: impl Into<String>) -> Self {
        Self::Limit(LimitError {
            message: message.into(),
        })
    }

    /// The located diagnostics, for the variants that have them.
    pub fn diagnostics(&self) -> &[SourceDiagnostic] {
        match self {
            Self::Syntax(d) | Self::Invalid(d) | Self::TestFile(d) => &d.0,
            Self::Io(_) | Self::Layout(_) | Self::Contract(_) | Self::Limit(_) => &[],
        }
    }
}

/// A file or directory could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read {}: {source}", path.display())]
pub struct IoError {
    path: PathBuf,
    source: std::io::Error,
}

impl IoError {
    /// The path that could not be read.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The directory's contents do not form a policy set.
#[derive(Debug, thiserror::Error)]
#[error("{}: {message}", dir.display())]
pub struct LayoutError {
    dir: PathBuf,
    message: String,
}

/// The schema does not fit the requests Mandate builds.
#[derive(Debug, thiserror::Error)]
#[error("{file}: the schema does not describe the requests Mandate sends: {message}")]
pub struct ContractError {
    file: String,
    message: String,
}

/// The policy set is larger than Mandate agrees to evaluate.
#[derive(Debug, thiserror::Error)]
#[error("policy set too large: {message}")]
pub struct LimitError {
    message: String,
}

/// One or more located problems, one per line when displayed.
#[derive(Debug)]
pub struct Diagnostics(pub(crate) Vec<SourceDiagnostic>);

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "  {d}")?;
        }
        Ok(())
    }
}

/// A message tied to a place in a file: `file:line:column: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceDiagnostic {
    file: String,
    position: Option<(usize, usize)>,
    message: String,
}

impl SourceDiagnostic {
    pub(crate) fn new(file: &str, position: Option<(usize, usize)>, message: String) -> Self {
        Self {
            file: file.to_owned(),
            position,
            message,
        }
    }

    /// Locates a Cedar diagnostic (parse, schema or validation error) in
    /// `text`, the contents of `file`, by its first labelled span.
    pub(crate) fn from_cedar(file: &str, text: &str, diag: &dyn miette::Diagnostic) -> Self {
        let position = diag
            .labels()
            .and_then(|mut labels| labels.next())
            .map(|label| line_col(text, label.offset()));
        let mut message = diag.to_string();
        if let Some(help) = diag.help() {
            message.push_str(" (help: ");
            message.push_str(&help.to_string());
            message.push(')');
        }
        Self::new(file, position, message)
    }

    pub(crate) fn with_suffix(mut self, suffix: &str) -> Self {
        self.message.push_str(suffix);
        self
    }

    /// The file name (relative to the policy directory).
    pub fn file(&self) -> &str {
        &self.file
    }

    /// 1-based line, if known.
    pub fn line(&self) -> Option<usize> {
        self.position.map(|(l, _)| l)
    }

    /// 1-based column (in characters), if known.
    pub fn column(&self) -> Option<usize> {
        self.position.map(|(_, c)| c)
    }

    /// The message without its location.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for SourceDiagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some((line, col)) => write!(f, "{}:{line}:{col}: {}", self.file, self.message),
            None => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut end = offset.min(text.len());
    while !text.is_char_boundary(end) {
        end = end.saturating_sub(1);
    }
    let before = text.get(..end).unwrap_or_default();
    let line = before.matches('\n').count().saturating_add(1);
    let line_start = before.rfind('\n').map_or(0, |i| i.saturating_add(1));
    let column = before
        .get(line_start..)
        .unwrap_or_default()
        .chars()
        .count()
        .saturating_add(1);
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_from_one_in_characters() {
        let text = "ab\ncdé\nf";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, 3), (2, 1));
        assert_eq!(line_col(text, 5), (2, 3));
        // 'é' is two bytes; the offset after it is column 4.
        assert_eq!(line_col(text, 7), (2, 4));
        assert_eq!(line_col(text, 8), (3, 1));
        assert_eq!(line_col(text, 999), (3, 2));
    }
}
