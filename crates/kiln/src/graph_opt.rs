//! The graph-level step of every compilation: e-graph rewriting ([`kiln_rewrite`]) and the
//! optional dump of the graph before and after it.
//!
//! Invariant: the graph handed to lowering is verified and computes what the imported graph
//! computes; with `rewrite` off it is the imported graph itself.

use kiln_ir::Graph;
pub use kiln_rewrite::RewriteReport;
use kiln_rewrite::{RewriteError, RewriteOptions};
use std::borrow::Cow;
use std::path::PathBuf;

/// What happens to a graph before it is lowered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GraphOptions {
    /// Optimise the graph by equality saturation (on by default).
    pub rewrite: bool,
    /// Limits of the saturation run.
    pub limits: RewriteOptions,
    /// Write `before.txt`, `before.dot`, `after.txt` and `after.dot` (the graph in the IR text
    /// form and as Graphviz) into this folder.
    pub dump_dir: Option<PathBuf>,
}

impl Default for GraphOptions {
    fn default() -> Self {
        GraphOptions {
            rewrite: true,
            limits: RewriteOptions::default(),
            dump_dir: None,
        }
    }
}

/// Why the graph step failed.
#[derive(Debug, thiserror::Error)]
pub enum GraphOptError {
    #[error(transparent)]
    Rewrite(#[from] RewriteError),
    #[error("cannot write the graph dump {path}: {source}")]
    Dump {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

fn dump(dir: &std::path::Path, stem: &str, g: &Graph) -> Result<(), GraphOptError> {
    let err = |path: PathBuf| {
        move |source| GraphOptError::Dump {
            path: path.display().to_string(),
            source,
        }
    };
    std::fs::create_dir_all(dir).map_err(err(dir.to_path_buf()))?;
    for (ext, text) in [
        ("txt", g.to_string()),
        ("dot", kiln_rewrite::dot::to_dot(g)),
    ] {
        let path = dir.join(format!("{stem}.{ext}"));
        std::fs::write(&path, text).map_err(err(path.clone()))?;
    }
    Ok(())
}

/// The graph to lower: `graph` rewritten (when asked), with the report of the rewriting.
pub fn prepare<'g>(
    graph: &'g Graph,
    options: &GraphOptions,
) -> Result<(Cow<'g, Graph>, Option<RewriteReport>), GraphOptError> {
    if let Some(dir) = &options.dump_dir {
        dump(dir, "before", graph)?;
    }
    let (out, report) = if options.rewrite {
        let (g, report) = kiln_rewrite::optimize(graph, &options.limits)?;
        (Cow::Owned(g), Some(report))
    } else {
        (Cow::Borrowed(graph), None)
    };
    if let Some(dir) = &options.dump_dir {
        dump(dir, "after", &out)?;
    }
    Ok((out, report))
}
