//! Fusion by equality saturation: which ops share a kernel is chosen by extraction.
//!
//! The graph (already rewritten) becomes an e-graph in which every op reads the results of
//! other ops through `(kernel x)` nodes: every op is its own kernel. The rules add, for an
//! epilogue op (elementwise, clamp, cast, rescale, select, table) reading a kernel output whose
//! producer may head or continue a fused chain (an anchor: conv, depthwise, transposed conv,
//! matmul; or another epilogue), the same op reading that producer directly: the op fused into
//! the producer's kernel, when the producer's value has no other reader. Extraction under [`CostModel`] (a kernel costs a launch and the round
//! trip of its output through memory; a fused op only its arithmetic) picks the cheapest
//! combination, and the chosen `(kernel x)` nodes become the fusion groups the lowering
//! consumes.
//!
//! Invariant: every group [`fusion_groups`] returns is what the lowering can compile as one loop
//! nest: at most one anchor, first; then epilogues, each reading earlier nodes of the group
//! (a chain, or a value read twice as in `x * sigmoid(x)`, see
//! [`merge_multi_reader_epilogues`]) and otherwise only values computed outside the group; no
//! value inside a group is read outside it. A fused value that the extracted graph would need twice (two fusing consumers, or a
//! consumer and a kernel boundary) is materialised instead, so no work is duplicated. Should an
//! extraction ever violate the invariant, the groups of [`kiln_operators::fusion::partition`]
//! are returned instead and the report says so.

use crate::analysis::{GraphAnalysis, GraphEGraph};
use crate::cost::{CostModel, GraphCost};
use crate::lang::{op_of, Node, OpLeaf};
use crate::{build_egraph, from_expr_marked, RewriteError, RewriteOptions};
use egg::{Applier, Extractor, Id, Pattern, PatternAst, Rewrite, Subst, Symbol, Var};
use kiln_ir::{Graph, NodeId, Op};
use kiln_operators::fusion::{class_of, is_epilogue, partition, Group};
use kiln_operators::schedule::OpClass;
use std::time::Instant;

/// What fusion did.
#[derive(Clone, Debug, PartialEq)]
pub struct FusionReport {
    /// Kernels (groups) chosen.
    pub kernels: usize,
    /// Wall time of saturation and extraction, in milliseconds.
    pub ms: f64,
    /// The e-graph's groups broke the lowering's rules and the partition rule was used instead
    /// (a bug; never expected).
    pub fell_back: bool,
}

fn is_anchor(op: &Op) -> bool {
    matches!(
        class_of(op),
        OpClass::Conv | OpClass::Depthwise | OpClass::MatMul
    )
}

/// The op of the (op-application) nodes of class `id`: all nodes of a class of the fusion
/// e-graph apply the same op (they differ only in which operand is fused).
fn class_op(eg: &GraphEGraph, id: Id) -> Option<Op> {
    eg[id].nodes.iter().find_map(|n| match n {
        Node::Apply(ch) => op_of(eg, ch[0]).cloned(),
        _ => None,
    })
}

/// A class a consumer reads without fusing: a kernel output, a graph input or a constant.
fn materialized(eg: &GraphEGraph, id: Id) -> bool {
    eg[id]
        .nodes
        .iter()
        .any(|n| matches!(n, Node::Kernel(_) | Node::Input(_) | Node::Const(_)))
}

/// Fuses operand `k` (read through `(kernel y)`) of the matched epilogue into its producer.
struct FuseOperand {
    operand: usize,
    arity: usize,
}

impl Applier<Node, GraphAnalysis> for FuseOperand {
    fn apply_one(
        &self,
        eg: &mut GraphEGraph,
        eclass: Id,
        subst: &Subst,
        _ast: Option<&PatternAst<Node>>,
        _rule: Symbol,
    ) -> Vec<Id> {
        let v = |s: &str| -> Var { s.parse().expect("pattern variables parse") };
        let Some(op) = op_of(eg, subst[v("?f")]).cloned() else {
            return vec![];
        };
        let y = subst[v("?y")];
        let operands: Vec<Id> = (0..self.arity)
            .map(|i| {
                if i == self.operand {
                    y
                } else {
                    subst[v(&format!("?o{i}"))]
                }
            })
            .collect();
        // As the partition rule: only a value read by this op alone (and not a graph output)
        // moves into its reader's kernel; anything else is computed once, in its own kernel.
        let fusable_producer = class_op(eg, y).is_some_and(|p| is_anchor(&p) || is_epilogue(&p))
            && GraphAnalysis::readers_of(eg, y) == 1;
        let others_materialized = operands
            .iter()
            .enumerate()
            .all(|(i, &c)| i == self.operand || materialized(eg, c));
        // The fused value must not be broadcast: an epilogue computes one result per element
        // of its producer (a small value scaling a large one, as a squeeze-excitation gate
        // does, would otherwise be recomputed for every element).
        let (produced, result) = (eg[y].data.ty.as_ref(), eg[eclass].data.ty.as_ref());
        let same_shape = matches!((produced, result), (Some(p), Some(r)) if p.shape == r.shape);
        if !is_epilogue(&op) || !fusable_producer || !others_materialized || !same_shape {
            return vec![];
        }
        let leaf = eg.add(Node::Op(OpLeaf::new(op)));
        let mut children = vec![leaf];
        children.extend(operands);
        let new = eg.add(Node::Apply(children.into_boxed_slice()));
        if eg.union(eclass, new) {
            vec![eclass]
        } else {
            vec![]
        }
    }
}

/// One rule per operand position of the epilogue arities the IR has (1, 2 and 3).
fn rules() -> Vec<Rewrite<Node, GraphAnalysis>> {
    let mut rules = vec![];
    for arity in 1..=3 {
        for operand in 0..arity {
            let args: Vec<String> = (0..arity)
                .map(|i| {
                    if i == operand {
                        "(kernel ?y)".to_string()
                    } else {
                        format!("?o{i}")
                    }
                })
                .collect();
            let pattern: Pattern<Node> = format!("(op ?f {})", args.join(" "))
                .parse()
                .expect("fusion patterns parse");
            rules.push(
                Rewrite::new(
                    format!("fuse-operand-{operand}-of-{arity}"),
                    pattern,
                    FuseOperand { operand, arity },
                )
                .expect("fusion rules are well formed"),
            );
        }
    }
    rules
}

/// The fusion groups of `graph` chosen by extraction (see the module doc), in an executable
/// order. `graph` is returned rebuilt (the same ops, renumbered) with the groups that index it.
pub fn fusion_groups(
    graph: &Graph,
    options: &RewriteOptions,
    model: &impl CostModel,
) -> Result<(Graph, Vec<Group>, FusionReport), RewriteError> {
    let start = Instant::now();
    let (eg, root) = build_egraph(graph, options.fold_limit, true);
    let runner = options.runner(eg).run(&rules());
    let eg = &runner.egraph;
    let cost = GraphCost {
        egraph: eg,
        model,
        fusion: true,
    };
    let (_, expr) = Extractor::new(eg, cost).find_best(root);
    let (g, marks) = from_expr_marked(&expr, graph, &eg.analysis.pool)?;
    let outputs: Vec<_> = g.outputs().to_vec();
    // A value stays inside a group only when exactly one consumer fuses it and nothing else
    // reads it.
    let fused = |v: kiln_ir::ValueId| {
        marks.fused_uses.get(&v).copied() == Some(1)
            && !marks.materialized.contains(&v)
            && !outputs.contains(&v)
    };
    let producer: std::collections::HashMap<_, _> = g
        .nodes()
        .iter()
        .enumerate()
        .map(|(i, n)| (n.output, NodeId(i as u32)))
        .collect();
    let mut groups = vec![];
    for (i, n) in g.nodes().iter().enumerate() {
        if matches!(n.op, Op::Const(_)) || fused(n.output) {
            continue;
        }
        // Walk down the fused chain ending here.
        let mut nodes = vec![NodeId(i as u32)];
        let mut cur = n;
        loop {
            let inner: Vec<NodeId> = cur
                .inputs
                .iter()
                .filter(|&&v| fused(v))
                .filter_map(|v| producer.get(v).copied())
                .collect();
            match inner.as_slice() {
                [] => break,
                [m] => {
                    nodes.push(*m);
                    cur = g.node(*m);
                }
                _ => return Ok(fallback(g, start)),
            }
        }
        nodes.reverse();
        let head = g.node(nodes[0]);
        let anchor = is_anchor(&head.op).then_some(nodes[0]);
        let legal = nodes[1..].iter().all(|&m| is_epilogue(&g.node(m).op))
            && (anchor.is_some() || is_epilogue(&head.op) || nodes.len() == 1);
        if !legal {
            return Ok(fallback(g, start));
        }
        groups.push(Group {
            alias: nodes.len() == 1 && matches!(head.op, Op::Reshape { .. } | Op::Identity),
            class: class_of(&head.op),
            anchor,
            nodes,
        });
    }
    let covered: usize = groups.iter().map(|gr| gr.nodes.len()).sum();
    let ops = g
        .nodes()
        .iter()
        .filter(|n| !matches!(n.op, Op::Const(_)))
        .count();
    if covered != ops {
        return Ok(fallback(g, start));
    }
    let mut groups = merge_multi_reader_epilogues(&g, groups);
    groups.sort_by_key(|gr| gr.nodes.last().map_or(0, |n| n.index()));
    let report = FusionReport {
        kernels: groups.len(),
        ms: start.elapsed().as_secs_f64() * 1e3,
        fell_back: false,
    };
    Ok((g, groups, report))
}

/// Moves a group whose output several epilogue ops read into the group of those readers when
/// they are all in one group of epilogue ops of the output's shape (`x * sigmoid(x)`,
/// `x * relu6(x + 3) / 6`): the readers cannot fuse one by one (each alone would leave the
/// value needed twice), but together they form one epilogue reading the value twice, which
/// the lowering computes in registers. Repeated until nothing moves; the merged group runs
/// where the readers' group ran, which is later, and only the readers read what it produced.
fn merge_multi_reader_epilogues(g: &Graph, mut groups: Vec<Group>) -> Vec<Group> {
    let group_of = |groups: &[Group], n: NodeId| groups.iter().position(|gr| gr.nodes.contains(&n));
    loop {
        let mut merged = false;
        for a in 0..groups.len() {
            let Some(&last) = groups[a].nodes.last() else {
                continue;
            };
            let x = g.node(last).output;
            if g.outputs().contains(&x) || groups[a].alias {
                continue;
            }
            let readers: Vec<NodeId> = (0..g.nodes().len())
                .map(|i| NodeId(i as u32))
                .filter(|&n| g.node(n).inputs.contains(&x))
                .collect();
            let Some(&first) = readers.first() else {
                continue;
            };
            let Some(b) = group_of(&groups, first) else {
                continue;
            };
            let same_group = readers.iter().all(|&r| group_of(&groups, r) == Some(b));
            let shape = &g.ty(x).shape;
            let epilogues = groups[b].anchor.is_none()
                && groups[b]
                    .nodes
                    .iter()
                    .all(|&n| is_epilogue(&g.node(n).op) && g.ty(g.node(n).output).shape == *shape);
            let tail_ok = groups[a].anchor.is_some()
                || groups[a].nodes.iter().all(|&n| is_epilogue(&g.node(n).op));
            if b == a || readers.len() < 2 || !same_group || !epilogues || !tail_ok {
                continue;
            }
            let mut nodes = groups[a].nodes.clone();
            nodes.extend(&groups[b].nodes);
            let head = groups[a].clone();
            groups[b] = Group {
                nodes,
                anchor: head.anchor,
                class: head.class,
                alias: false,
            };
            groups.remove(a);
            merged = true;
            break;
        }
        if !merged {
            return groups;
        }
    }
}

fn fallback(g: Graph, start: Instant) -> (Graph, Vec<Group>, FusionReport) {
    let groups = partition(&g);
    let report = FusionReport {
        kernels: groups.len(),
        ms: start.elapsed().as_secs_f64() * 1e3,
        fell_back: true,
    };
    (g, groups, report)
}
