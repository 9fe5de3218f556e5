//! The graph-level step of every compilation: e-graph rewriting and fusion ([`kiln_rewrite`])
//! and the optional dump of the graph before and after it.
//!
//! Invariant: the graph handed to lowering is verified and computes what the imported graph
//! computes, and its groups (when given) partition its ops as the lowering requires; with
//! `rewrite` off it is the imported graph itself, grouped by the lowering's partition rule.

use kiln_ir::Graph;
use kiln_operators::fusion::Group;
pub use kiln_rewrite::RewriteReport;
use kiln_rewrite::{RewriteError, RewriteOptions, RooflineCost};
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
    #[error(transparent)]
    Ir(#[from] kiln_ir::IrError),
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

/// The graph to lower.
#[derive(Debug)]
pub struct Prepared<'g> {
    /// The graph, rewritten when asked.
    pub graph: Cow<'g, Graph>,
    /// Its fusion groups chosen in the e-graph (`None`: the lowering's partition rule).
    pub groups: Option<Vec<Group>>,
    /// What rewriting and fusion did.
    pub report: Option<RewriteReport>,
}

/// `graph` rewritten and its fusion groups chosen by equality saturation (when asked), for
/// `target`.
pub fn prepare<'g>(
    graph: &'g Graph,
    options: &GraphOptions,
    target: &crate::Target,
) -> Result<Prepared<'g>, GraphOptError> {
    if let Some(dir) = &options.dump_dir {
        dump(dir, "before", graph)?;
    }
    let prepared = if options.rewrite {
        // The cost model knows whether the target runs micro-kernels.
        let limits = RewriteOptions {
            microkernels: target.microkernels().is_some(),
            ..options.limits.clone()
        };
        let cost = RooflineCost {
            microkernels: limits.microkernels,
        };
        let (g, mut report) = kiln_rewrite::optimize(graph, &limits)?;
        // Matmul widths no micro-kernel tile divides get zero columns (attention over 197
        // tokens); 16 columns are a multiple of every x86-64 and aarch64 tile width.
        let g = match limits.microkernels {
            true => kiln_rewrite::padding::pad_matmul_columns(&g, 16)?.unwrap_or(g),
            false => g,
        };
        // 8-bit activations are stored as the target's dot products take them.
        let g = match target.microkernels().and_then(|m| m.int8_activations()) {
            Some(t) => kiln_rewrite::signedness::prefer_activation_type(&g, t)?.unwrap_or(g),
            None => g,
        };
        let (g, groups, fusion) = kiln_rewrite::fusion::fusion_groups(&g, &limits, &cost)?;
        report.fusion = Some(fusion);
        // Padded convolutions read their input from its producer's padded output.
        let (g, groups) = match kiln_operators::placement::place_padding(&g, &groups) {
            Some(placed) => placed,
            None => (g, groups),
        };
        Prepared {
            graph: Cow::Owned(g),
            groups: Some(groups),
            report: Some(report),
        }
    } else {
        Prepared {
            graph: Cow::Borrowed(graph),
            groups: None,
            report: None,
        }
    };
    if let Some(dir) = &options.dump_dir {
        dump(dir, "after", &prepared.graph)?;
    }
    Ok(prepared)
}
