//! The conformance skip manifest (the tract way): a plain text file, one case name per line
//! followed by `# reason`; blank lines and lines starting with `#` are comments.
//!
//! Invariant: every skipped case has a non-empty reason and is listed once; a line that breaks the
//! format is an error naming the line, never silently ignored.

use crate::error::CliError;
use std::collections::BTreeMap;
use std::path::Path;

/// Skipped case names and why.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Manifest {
    pub skips: BTreeMap<String, String>,
}

impl Manifest {
    /// Reads and parses a manifest file.
    pub fn load(path: &Path) -> Result<Self, CliError> {
        let text = std::fs::read_to_string(path).map_err(|e| CliError::io(path, e))?;
        Manifest::parse(&text).map_err(|(line, reason)| CliError::Manifest {
            path: path.to_path_buf(),
            line,
            reason,
        })
    }

    /// Parses manifest text; the error is `(line number, reason)`.
    pub fn parse(text: &str) -> Result<Self, (usize, String)> {
        let mut skips = BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            let lineno = i + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (name, reason) = match line.split_once('#') {
                Some((n, r)) => (n.trim(), r.trim()),
                None => (line, ""),
            };
            if reason.is_empty() {
                return Err((lineno, format!("`{name}` has no `# reason`")));
            }
            if name.split_whitespace().count() != 1 {
                return Err((lineno, format!("`{name}` is not a single case name")));
            }
            if skips.insert(name.to_string(), reason.to_string()).is_some() {
                return Err((lineno, format!("`{name}` is listed twice")));
            }
        }
        Ok(Manifest { skips })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_and_reasons() {
        let m = Manifest::parse("# header\n\ntest_a # float64 input\n  test_b   #  why # not\n")
            .unwrap();
        assert_eq!(m.skips.len(), 2);
        assert_eq!(m.skips["test_a"], "float64 input");
        assert_eq!(m.skips["test_b"], "why # not");
    }

    #[test]
    fn rejects_missing_reason_and_duplicates() {
        assert_eq!(Manifest::parse("ok # r\ntest_a\n").unwrap_err().0, 2);
        assert_eq!(Manifest::parse("test_a #   \n").unwrap_err().0, 1);
        assert_eq!(Manifest::parse("a # r\na # r\n").unwrap_err().0, 2);
        assert_eq!(Manifest::parse("a b # r\n").unwrap_err().0, 1);
    }
}
