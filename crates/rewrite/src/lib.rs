//! Kiln's graph optimiser: equality saturation with [egg] over the graph IR.
//!
//! A verified [`Graph`] becomes an e-graph ([`to_egraph`]): graph inputs, constants of a pool and
//! op applications, with an analysis ([`analysis`]) that types every class and folds constant
//! subgraphs. Every rule of [`rules::rules`] is applied at once until saturation or a limit of
//! [`RewriteOptions`]; then the cheapest equivalent graph under a [`CostModel`] is extracted
//! ([`from_expr`]) and verified.
//!
//! Invariant: [`optimize`] returns a verified graph with the same inputs (names, types, order)
//! and outputs (types, order, names) that computes what the input graph computes (up to float
//! rounding of folded constants); on any internal failure it returns an error, never a graph it
//! has not verified. The result is deterministic for the same input (egg's `deterministic`
//! feature, deterministic costs and tie-breaks).

pub mod analysis;
pub mod cost;
pub mod dot;
pub mod fusion;
pub mod lang;
pub mod movement;
pub mod padding;
pub mod rebuild;
pub mod rules;
pub mod signedness;

pub use analysis::{ClassData, GraphAnalysis, GraphEGraph};
pub use cost::{CostModel, Cycles, GraphCost, RooflineCost};
pub use lang::{Index, Node, OpLeaf};

use egg::{Extractor, Id, RecExpr, Runner};
use kiln_ir::{ConstId, Graph, Op, Tensor, ValueDef, ValueId};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Why a graph could not be optimised.
#[derive(Debug, thiserror::Error)]
pub enum RewriteError {
    #[error("the input graph does not verify: {0}")]
    Input(#[source] kiln_ir::IrError),
    #[error("the extracted graph is invalid (a bug in a rule): {0}")]
    Extracted(#[source] kiln_ir::IrError),
}

/// Limits of a saturation run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RewriteOptions {
    /// Stop when the e-graph has this many e-nodes.
    pub node_limit: usize,
    /// Stop after this many iterations.
    pub iter_limit: usize,
    /// Stop after this long.
    pub time_limit: Duration,
    /// Largest tensor (elements) constant folding computes.
    pub fold_limit: usize,
    /// How convolution layouts are chosen.
    pub layout: LayoutChoice,
    /// The target runs tensorized convolutions and matmuls as micro-kernels (the cost model
    /// counts their arithmetic accordingly, see [`RooflineCost`]).
    pub microkernels: bool,
}

/// How the activation layout of convolutions is chosen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum LayoutChoice {
    /// Both layouts are in the e-graph and extraction picks the cheaper under the cost model;
    /// on a target with micro-kernels ([`RewriteOptions::microkernels`]) as [`LayoutChoice::Nhwc`].
    #[default]
    Auto,
    /// Keep the imported layout (NCHW): the `conv-to-nhwc` rule is off.
    Nchw,
    /// Prefer channels-last wherever the rule applies (the cost of an NCHW convolution is
    /// taken as infinite), to compare against `Auto`.
    Nhwc,
}

impl RewriteOptions {
    /// A runner over `egraph` with these limits.
    pub fn runner(&self, egraph: GraphEGraph) -> Runner<Node, GraphAnalysis> {
        Runner::default()
            .with_egraph(egraph)
            .with_node_limit(self.node_limit)
            .with_iter_limit(self.iter_limit)
            .with_time_limit(self.time_limit)
    }
}

impl Default for RewriteOptions {
    fn default() -> Self {
        RewriteOptions {
            node_limit: 50_000,
            iter_limit: 30,
            time_limit: Duration::from_secs(10),
            fold_limit: 1 << 22,
            layout: LayoutChoice::Auto,
            microkernels: false,
        }
    }
}

/// What a run did.
#[derive(Clone, Debug, PartialEq)]
pub struct RewriteReport {
    /// Non-constant nodes before and after.
    pub nodes_before: usize,
    pub nodes_after: usize,
    /// Saturation iterations and why it stopped.
    pub iterations: usize,
    pub stop_reason: String,
    /// E-graph size at the end.
    pub egraph_nodes: usize,
    pub egraph_classes: usize,
    /// Wall time of saturation and of extraction, in milliseconds.
    pub saturation_ms: f64,
    pub extraction_ms: f64,
    /// Applications per rule.
    pub applied: BTreeMap<String, usize>,
    /// What fusion chose, when it ran ([`fusion::fusion_groups`]).
    pub fusion: Option<fusion::FusionReport>,
}

/// Nodes of `graph` that compute something (not `const`).
pub fn op_node_count(graph: &Graph) -> usize {
    graph
        .nodes()
        .iter()
        .filter(|n| !matches!(n.op, Op::Const(_)))
        .count()
}

/// The e-graph of `graph` and the id of its root `(outputs ...)` class.
pub fn to_egraph(graph: &Graph, fold_limit: usize) -> (GraphEGraph, Id) {
    build_egraph(graph, fold_limit, false)
}

/// [`to_egraph`]; with `wrap`, every operand and output computed by an op is read through
/// `(kernel x)` (every op its own kernel: the start of fusion).
pub(crate) fn build_egraph(graph: &Graph, fold_limit: usize, wrap: bool) -> (GraphEGraph, Id) {
    let analysis = GraphAnalysis {
        inputs: graph
            .inputs()
            .iter()
            .map(|&v| graph.ty(v).clone())
            .collect(),
        pool: graph.consts().to_vec(),
        fold_limit,
        readers: vec![],
    };
    let mut eg = GraphEGraph::new(analysis);
    let mut ids: HashMap<ValueId, Id> = HashMap::new();
    // The class a consumer reads: through a kernel node for op results when wrapping.
    let mut read: HashMap<ValueId, Id> = HashMap::new();
    for (i, &v) in graph.inputs().iter().enumerate() {
        let k = eg.add(Node::Index(Index(i as u32)));
        let id = eg.add(Node::Input([k]));
        ids.insert(v, id);
        read.insert(v, id);
    }
    for node in graph.nodes() {
        let id = match &node.op {
            Op::Const(c) => {
                let k = eg.add(Node::Index(Index(c.index() as u32)));
                eg.add(Node::Const([k]))
            }
            op => {
                let leaf = eg.add(Node::Op(OpLeaf::new(op.clone())));
                let mut children = vec![leaf];
                children.extend(node.inputs.iter().map(|v| read[v]));
                eg.add(Node::Apply(children.into_boxed_slice()))
            }
        };
        ids.insert(node.output, id);
        let through = if wrap && !matches!(node.op, Op::Const(_)) {
            eg.add(Node::Kernel([id]))
        } else {
            id
        };
        read.insert(node.output, through);
    }
    {
        let uses = kiln_operators::fusion::consumers(graph);
        for (v, &id) in &ids {
            let (readers, is_output) = &uses[v.index()];
            eg.analysis
                .readers
                .push((id, readers.len() + usize::from(*is_output)));
        }
        eg.analysis.readers.sort();
    }
    let outputs: Vec<Id> = graph.outputs().iter().map(|v| read[v]).collect();
    let root = eg.add(Node::Outputs(outputs.into_boxed_slice()));
    eg.rebuild();
    (eg, root)
}

/// Builds the graph of an extracted expression: the inputs of `original` in order, the
/// expression's constants (from `pool`) and ops, and its root's outputs, named as `original`'s.
pub fn from_expr(
    expr: &RecExpr<Node>,
    original: &Graph,
    pool: &[Arc<Tensor>],
) -> Result<Graph, RewriteError> {
    from_expr_marked(expr, original, pool).map(|(g, _)| g)
}

/// Where an extracted expression materialises values: those read through `(kernel x)`, and how
/// many consumers read each value directly (fused).
#[derive(Debug, Default)]
pub(crate) struct Marks {
    pub materialized: std::collections::HashSet<ValueId>,
    pub fused_uses: HashMap<ValueId, usize>,
}

/// [`from_expr`], also returning the [`Marks`] of its kernel nodes.
pub(crate) fn from_expr_marked(
    expr: &RecExpr<Node>,
    original: &Graph,
    pool: &[Arc<Tensor>],
) -> Result<(Graph, Marks), RewriteError> {
    let mut marks = Marks::default();
    let bad = |m: String| RewriteError::Extracted(kiln_ir::IrError::Invalid(m));
    let mut g = Graph::new();
    let inputs: Vec<ValueId> = original
        .inputs()
        .iter()
        .map(|&v| {
            let name = original.value(v).name.clone().unwrap_or_default();
            g.add_input(name, original.ty(v).clone())
        })
        .collect();
    let mut value: Vec<Option<ValueId>> = vec![None; expr.len()];
    let mut consts: HashMap<u32, ValueId> = HashMap::new();
    let index = |id: Id| -> Option<u32> {
        match expr[id] {
            Node::Index(Index(i)) => Some(i),
            _ => None,
        }
    };
    let mut outputs = None;
    for (i, node) in expr.as_ref().iter().enumerate() {
        match node {
            Node::Index(_) | Node::Op(_) => {}
            Node::Kernel([x]) => {
                let v = value[usize::from(*x)].ok_or_else(|| bad("kernel of nothing".into()))?;
                marks.materialized.insert(v);
                value[i] = Some(v);
            }
            Node::Input([k]) => {
                let k = index(*k).ok_or_else(|| bad("input without index".into()))?;
                value[i] = Some(
                    *inputs
                        .get(k as usize)
                        .ok_or_else(|| bad(format!("no input {k}")))?,
                );
            }
            Node::Const([k]) => {
                let k = index(*k).ok_or_else(|| bad("const without index".into()))?;
                let v = match consts.get(&k) {
                    Some(&v) => v,
                    None => {
                        let t = pool
                            .get(k as usize)
                            .ok_or_else(|| bad(format!("no constant {k}")))?;
                        let c: ConstId = g.add_shared_const(Arc::clone(t));
                        let v = g
                            .add_node(Op::Const(c), &[], format!("c{k}"))
                            .map_err(RewriteError::Extracted)?;
                        consts.insert(k, v);
                        v
                    }
                };
                value[i] = Some(v);
            }
            Node::Apply(children) => {
                let (&op_id, operands) = children
                    .split_first()
                    .ok_or_else(|| bad("op without children".into()))?;
                let Node::Op(leaf) = &expr[op_id] else {
                    return Err(bad("op without its leaf".into()));
                };
                let args: Option<Vec<ValueId>> =
                    operands.iter().map(|&c| value[usize::from(c)]).collect();
                let args = args.ok_or_else(|| bad("operand not computed".into()))?;
                for (&c, &v) in operands.iter().zip(&args) {
                    if matches!(expr[c], Node::Apply(_)) {
                        *marks.fused_uses.entry(v).or_insert(0) += 1;
                    }
                }
                let name = format!("{}_{i}", leaf.op().name());
                value[i] = Some(
                    g.add_node(leaf.op().clone(), &args, name)
                        .map_err(RewriteError::Extracted)?,
                );
            }
            Node::Outputs(children) => {
                let outs: Option<Vec<ValueId>> =
                    children.iter().map(|&c| value[usize::from(c)]).collect();
                outputs = Some(outs.ok_or_else(|| bad("output not computed".into()))?);
            }
        }
    }
    let mut outputs = outputs.ok_or_else(|| bad("no outputs".into()))?;
    for (slot, &old) in outputs.iter_mut().zip(original.outputs()) {
        let Some(name) = original.value(old).name.clone() else {
            continue;
        };
        let new = *slot;
        let is_input = matches!(g.value(new).def, ValueDef::Input(_));
        match g.value(new).name.as_deref() {
            Some(n) if n == name => {}
            None if !is_input => g.set_name(new, name),
            // Extraction merged this output with an input or another output of equal value
            // (two row counts, say): a named copy keeps every output's own name.
            _ => {
                let copy = g
                    .add_node(Op::Identity, &[new], name.clone())
                    .map_err(RewriteError::Extracted)?;
                g.set_name(copy, name);
                *slot = copy;
            }
        }
    }
    g.set_outputs(outputs).map_err(RewriteError::Extracted)?;
    g.verify().map_err(RewriteError::Extracted)?;
    Ok((g, marks))
}

/// Saturates `graph` with every rule and extracts the cheapest equivalent graph under `model`.
pub fn optimize_with(
    graph: &Graph,
    options: &RewriteOptions,
    model: &impl CostModel,
) -> Result<(Graph, RewriteReport), RewriteError> {
    graph.verify().map_err(RewriteError::Input)?;
    let start = Instant::now();
    let (eg, root) = to_egraph(graph, options.fold_limit);
    let runner = options.runner(eg).run(&rules::rules_for(options.layout));
    let saturation_ms = start.elapsed().as_secs_f64() * 1e3;
    let mut applied = BTreeMap::new();
    for it in &runner.iterations {
        for (rule, n) in &it.applied {
            *applied.entry(rule.to_string()).or_insert(0) += n;
        }
    }
    let start = Instant::now();
    let eg = &runner.egraph;
    // On a target with micro-kernels an NCHW convolution does not tensorize: `Auto` then
    // prefers channels-last wherever the e-graph has it (the tree cost of egg's extraction
    // counts values read twice, such as squeeze-excitation inputs, twice, which otherwise
    // leaves whole blocks NCHW around them).
    let channels_last = options.layout == LayoutChoice::Nhwc
        || (options.layout == LayoutChoice::Auto && options.microkernels);
    let (_, expr) = if channels_last {
        let model = cost::PreferChannelsLast(model);
        let cost = GraphCost {
            egraph: eg,
            model: &model,
            fusion: false,
        };
        Extractor::new(eg, cost).find_best(root)
    } else {
        let cost = GraphCost {
            egraph: eg,
            model,
            fusion: false,
        };
        Extractor::new(eg, cost).find_best(root)
    };
    let out = from_expr(&expr, graph, &eg.analysis.pool)?;
    let out = movement::sink_movement(&out).map_err(RewriteError::Extracted)?;
    let report = RewriteReport {
        nodes_before: op_node_count(graph),
        nodes_after: op_node_count(&out),
        iterations: runner.iterations.len(),
        stop_reason: format!("{:?}", runner.stop_reason),
        egraph_nodes: eg.total_size(),
        egraph_classes: eg.number_of_classes(),
        saturation_ms,
        extraction_ms: start.elapsed().as_secs_f64() * 1e3,
        applied,
        fusion: None,
    };
    Ok((out, report))
}

/// [`optimize_with`] under the [`RooflineCost`] of the target `options` describe.
pub fn optimize(
    graph: &Graph,
    options: &RewriteOptions,
) -> Result<(Graph, RewriteReport), RewriteError> {
    optimize_with(
        graph,
        options,
        &RooflineCost {
            microkernels: options.microkernels,
        },
    )
}
