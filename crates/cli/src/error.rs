//! The CLI's error type and its one-line rendering.
//!
//! Invariant: every failure of a command is a [`CliError`] whose [`one_line`] rendering names what
//! was being done and, through the source chain, why; nothing reaches the user as a panic.

use crate::backend::BackendError;
use kiln_onnx::ImportError;
use std::error::Error;
use std::path::PathBuf;

/// Why a command could not do its job (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("cannot import model {}", path.display())]
    Import {
        path: PathBuf,
        #[source]
        source: ImportError,
    },
    #[error("cannot read tensor {}", path.display())]
    ReadTensor {
        path: PathBuf,
        #[source]
        source: ImportError,
    },
    #[error("cannot write tensor {}", path.display())]
    WriteTensor {
        path: PathBuf,
        #[source]
        source: ImportError,
    },
    #[error("{} backend failed", backend)]
    Backend {
        backend: &'static str,
        #[source]
        source: Box<BackendError>,
    },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {reason}", path.display())]
    BadData { path: PathBuf, reason: String },
    #[error("manifest {}:{line}: {reason}", path.display())]
    Manifest {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("cannot compile the library")]
    Compile(#[source] Box<kiln::AotError>),
    #[error("tuning failed")]
    Tune(#[source] Box<kiln_tune::TuneError>),
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Remote(String),
}

impl CliError {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        CliError::Io {
            path: path.into(),
            source,
        }
    }
}

/// `e` and its sources joined by `: ` on one line; a source whose text the message already
/// contains (errors that print their source themselves) is not repeated.
pub fn one_line(e: &dyn Error) -> String {
    let mut line = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = s.source();
    }
    line.replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_appends_sources_once() {
        let e = CliError::Import {
            path: "m.onnx".into(),
            source: ImportError::InvalidModel("no graph".into()),
        };
        assert_eq!(
            one_line(&e),
            "cannot import model m.onnx: invalid model: no graph"
        );
        let e = CliError::io(
            "x",
            std::io::Error::new(std::io::ErrorKind::NotFound, "gone"),
        );
        assert_eq!(one_line(&e), "x: gone");
    }
}
