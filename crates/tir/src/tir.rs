//! Functions of the loop IR: buffer declarations, the variable arena and the body.
//!
//! Invariant kept by every constructor in this crate: buffer and variable ids index the
//! function's arenas, every `Param` buffer appears exactly once in `params`, and a verified
//! function (see [`crate::verify`]) only touches declared buffers inside their shapes.
//!
//! Buffers are row-major and statically shaped. `Local` buffers are scratch memory owned by the
//! function (zero-initialised by the interpreter, uninitialised in compiled code, so programs
//! must write before they read). A `Local` buffer all of whose accesses lie inside one `parallel`
//! loop body is *private to each iteration* of that loop: codegen allocates one copy per worker
//! (this is how a producer computed at a parallel consumer loop gets its tile). Any other `Local`
//! buffer is shared, and parallel iterations write disjoint parts of it.

use crate::expr::{BufferId, Expr, VarId};
use crate::stmt::Stmt;
use kiln_ir::DType;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Where a buffer lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Scope {
    /// Passed in by the caller, in the order of [`PrimFunc::params`].
    Param,
    /// Function-owned scratch memory.
    Local,
}

/// A buffer declaration.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BufferDecl {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub scope: Scope,
}

impl BufferDecl {
    /// Number of elements (saturating; the verifier rejects oversized buffers).
    pub fn num_elements(&self) -> usize {
        self.shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .unwrap_or(usize::MAX)
    }
}

/// A loop-level function.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PrimFunc {
    pub name: String,
    pub buffers: Vec<BufferDecl>,
    /// The `Param` buffers in calling order.
    pub params: Vec<BufferId>,
    /// Variable arena: the name of each [`VarId`]. Names are for printing only.
    pub vars: Vec<String>,
    pub body: Stmt,
}

impl PrimFunc {
    /// An empty function.
    pub fn new(name: impl Into<String>) -> Self {
        PrimFunc {
            name: name.into(),
            buffers: vec![],
            params: vec![],
            vars: vec![],
            body: Stmt::Seq(vec![]),
        }
    }

    /// Declares a parameter buffer, appended to `params`.
    pub fn add_param(
        &mut self,
        name: impl Into<String>,
        dtype: DType,
        shape: Vec<usize>,
    ) -> BufferId {
        let id = self.add_buffer(name.into(), dtype, shape, Scope::Param);
        self.params.push(id);
        id
    }

    /// Declares a local buffer.
    pub fn add_local(
        &mut self,
        name: impl Into<String>,
        dtype: DType,
        shape: Vec<usize>,
    ) -> BufferId {
        self.add_buffer(name.into(), dtype, shape, Scope::Local)
    }

    fn add_buffer(
        &mut self,
        name: String,
        dtype: DType,
        shape: Vec<usize>,
        scope: Scope,
    ) -> BufferId {
        self.buffers.push(BufferDecl {
            name,
            dtype,
            shape,
            scope,
        });
        BufferId(self.buffers.len() as u32 - 1)
    }

    /// A fresh variable.
    pub fn new_var(&mut self, name: impl Into<String>) -> VarId {
        self.vars.push(name.into());
        VarId(self.vars.len() as u32 - 1)
    }

    /// The declaration of `id`.
    pub fn buffer(&self, id: BufferId) -> Option<&BufferDecl> {
        self.buffers.get(id.index())
    }

    /// The name of `v` (`?` when out of range).
    pub fn var_name(&self, v: VarId) -> &str {
        self.vars.get(v.index()).map_or("?", String::as_str)
    }

    /// The dtype of `e` in this function.
    pub fn expr_dtype(&self, e: &Expr) -> Result<DType, crate::expr::TypeError> {
        e.infer_dtype(&|b| self.buffer(b).map(|d| d.dtype))
    }

    /// The canonical form of this function, the one the text parser produces: buffers renumbered
    /// params first (in `params` order) then the rest in declaration order; variables renumbered
    /// in binding order (pre-order walk) and renamed so that each name is a valid identifier and
    /// differs from the names of all enclosing loop variables; nested sequences flattened and
    /// one-statement sequences unwrapped. Buffer names are made valid and unique.
    pub fn canonicalize(&self) -> PrimFunc {
        let mut order: Vec<BufferId> = self.params.clone();
        for i in 0..self.buffers.len() {
            let id = BufferId(i as u32);
            if !order.contains(&id) {
                order.push(id);
            }
        }
        let mut buf_map = HashMap::new();
        let mut buffers = Vec::with_capacity(order.len());
        let mut used_names: Vec<String> = Vec::new();
        for (new, &old) in order.iter().enumerate() {
            buf_map.insert(old, BufferId(new as u32));
            if let Some(decl) = self.buffer(old) {
                let mut decl = decl.clone();
                let base = sanitize(&decl.name, "buf");
                let mut name = base.clone();
                let mut n = 1;
                while used_names.contains(&name) {
                    name = format!("{base}_{n}");
                    n += 1;
                }
                used_names.push(name.clone());
                decl.name = name;
                buffers.push(decl);
            }
        }
        let params = (0..self.params.len()).map(|i| BufferId(i as u32)).collect();
        let mut c = Canon {
            old_names: &self.vars,
            buf_map: &buf_map,
            vars: vec![],
            scope: vec![],
            free: HashMap::new(),
        };
        let body = c.stmt(&self.body);
        PrimFunc {
            name: sanitize(&self.name, "f"),
            buffers,
            params,
            vars: c.vars,
            body,
        }
    }
}

/// A valid identifier of the text form made from `name`.
pub(crate) fn sanitize(name: &str, empty: &str) -> String {
    let mut s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() {
        s = empty.to_string();
    }
    if !s.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') || is_reserved(&s) {
        s = format!("v_{s}");
    }
    s
}

/// Identifiers that the expression parser reads as something other than a variable.
pub(crate) fn is_reserved(s: &str) -> bool {
    s == "true" || s == "false" || s.starts_with("inf") || s.starts_with("nan")
}

struct Canon<'a> {
    old_names: &'a [String],
    buf_map: &'a HashMap<BufferId, BufferId>,
    vars: Vec<String>,
    /// Enclosing binders: (old id, new id).
    scope: Vec<(VarId, VarId)>,
    /// Unbound variables met in expressions.
    free: HashMap<VarId, VarId>,
}

impl Canon<'_> {
    fn bind(&mut self, old: VarId) -> VarId {
        let base = sanitize(
            self.old_names.get(old.index()).map_or("v", String::as_str),
            "v",
        );
        let mut name = base.clone();
        let mut n = 1;
        while self
            .scope
            .iter()
            .any(|(_, nv)| self.vars[nv.index()] == name)
        {
            name = format!("{base}_{n}");
            n += 1;
        }
        self.vars.push(name);
        let new = VarId(self.vars.len() as u32 - 1);
        self.scope.push((old, new));
        new
    }

    fn var(&mut self, old: VarId) -> VarId {
        if let Some((_, new)) = self.scope.iter().rev().find(|(o, _)| *o == old) {
            return *new;
        }
        if let Some(new) = self.free.get(&old) {
            return *new;
        }
        let name = sanitize(
            self.old_names.get(old.index()).map_or("v", String::as_str),
            "v",
        );
        self.vars.push(name);
        let new = VarId(self.vars.len() as u32 - 1);
        self.free.insert(old, new);
        new
    }

    fn buf(&self, b: BufferId) -> BufferId {
        self.buf_map.get(&b).copied().unwrap_or(b)
    }

    fn expr(&mut self, e: &Expr) -> Expr {
        match e {
            Expr::Var(v) => Expr::Var(self.var(*v)),
            Expr::Load { buf, indices } => Expr::Load {
                buf: self.buf(*buf),
                indices: indices.iter().map(|i| self.expr(i)).collect(),
            },
            _ => {
                let r: Result<Expr, std::convert::Infallible> =
                    e.try_map_children(&mut |c| Ok(self.expr(c)));
                match r {
                    Ok(e) => e,
                    Err(never) => match never {},
                }
            }
        }
    }

    fn stmt(&mut self, s: &Stmt) -> Stmt {
        match s {
            Stmt::For {
                var,
                extent,
                kind,
                body,
            } => {
                let new = self.bind(*var);
                let body = self.stmt(body);
                self.scope.pop();
                Stmt::for_(new, *extent, *kind, body)
            }
            Stmt::Seq(v) => Stmt::seq(v.iter().map(|s| self.stmt(s)).collect()),
            Stmt::Tensorized { intrinsic, body } => Stmt::Tensorized {
                intrinsic: *intrinsic,
                body: Box::new(self.stmt(body)),
            },
            Stmt::Store {
                buf,
                indices,
                value,
            } => Stmt::Store {
                buf: self.buf(*buf),
                indices: indices.iter().map(|i| self.expr(i)).collect(),
                value: self.expr(value),
            },
            Stmt::IfThenElse {
                cond,
                then,
                otherwise,
            } => Stmt::IfThenElse {
                cond: self.expr(cond),
                then: Box::new(self.stmt(then)),
                otherwise: otherwise.as_ref().map(|o| Box::new(self.stmt(o))),
            },
        }
    }
}
