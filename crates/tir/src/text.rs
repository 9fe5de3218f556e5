//! The text form of a [`PrimFunc`]: printed by `Display`, read back by [`parse_func`].
//!
//! ```text
//! func @scale(%x: f32[4,8] param, %y: f32[4,8] param) {
//!   local %t: f32[8]
//!   for.parallel i in 0..4 {
//!     for.vectorized j in 0..8 {
//!       %y[i, j] = %x[i, j] * 2.0_f32
//!     }
//!   }
//! }
//! ```
//!
//! Expressions are infix with the usual precedence (`||` < `&&` < comparisons < `+ -` <
//! `* / // %`); `/` is [`BinOp::Div`], `//` floor division, `%` floor modulo, and `rem`, `min`,
//! `max`, `select`, `cast.<dtype>` and the intrinsics are written as calls. Integer constants of
//! dtype `i64` are bare (`3`), others and all floats carry a dtype suffix (`3_i32`, `0.5_f32`,
//! `-inf_f32`). Variables are bare identifiers resolved lexically; buffers are `%name`.
//!
//! Invariant: `parse_func(&f.to_string()) == Ok(f.canonicalize())` for every function whose
//! variables are all bound and whose float constants are not NaN (NaN prints and parses, but is
//! not equal to itself).

use crate::expr::{BinOp, BufferId, CmpOp, Expr, Intrinsic, VarId};
use crate::stmt::{ForKind, Stmt};
use crate::tir::{BufferDecl, PrimFunc, Scope};
use kiln_ir::DType;
use std::fmt::{self, Write};

/// A syntax error with its 1-based position.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}, column {col}: {msg}")]
pub struct ParseError {
    pub line: usize,
    pub col: usize,
    pub msg: String,
}

impl fmt::Display for PrimFunc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = Printer { func: self };
        let mut out = String::new();
        p.func(&mut out)?;
        f.write_str(&out)
    }
}

struct Printer<'a> {
    func: &'a PrimFunc,
}

const PREC_OR: u8 = 1;
const PREC_AND: u8 = 2;
const PREC_CMP: u8 = 3;
const PREC_ADD: u8 = 4;
const PREC_MUL: u8 = 5;
const PREC_UNARY: u8 = 9;
const PREC_ATOM: u8 = 10;

fn binop_symbol(op: BinOp) -> Option<(&'static str, u8)> {
    Some(match op {
        BinOp::Add => ("+", PREC_ADD),
        BinOp::Sub => ("-", PREC_ADD),
        BinOp::Mul => ("*", PREC_MUL),
        BinOp::Div => ("/", PREC_MUL),
        BinOp::FloorDiv => ("//", PREC_MUL),
        BinOp::FloorMod => ("%", PREC_MUL),
        BinOp::Rem | BinOp::Min | BinOp::Max => return None,
    })
}

fn binop_fn_name(op: BinOp) -> &'static str {
    match op {
        BinOp::Rem => "rem",
        BinOp::Min => "min",
        _ => "max",
    }
}

fn prec(e: &Expr) -> u8 {
    match e {
        Expr::Binary { op, .. } => binop_symbol(*op).map_or(PREC_ATOM, |(_, p)| p),
        Expr::Cmp { .. } => PREC_CMP,
        Expr::And(..) => PREC_AND,
        Expr::Or(..) => PREC_OR,
        Expr::Not(_) => PREC_UNARY,
        Expr::Int { value, .. } if *value < 0 => PREC_UNARY,
        Expr::Float { value, .. } if value.is_sign_negative() && !value.is_nan() => PREC_UNARY,
        _ => PREC_ATOM,
    }
}

/// Formats a float so that `f64::from_str` (or `inf`/`nan`) reads back the same value.
fn float_text(v: f64) -> String {
    if v.is_nan() {
        "nan".into()
    } else if v.is_infinite() {
        if v > 0.0 {
            "inf".into()
        } else {
            "-inf".into()
        }
    } else {
        format!("{v:?}")
    }
}

impl Printer<'_> {
    fn func(&self, out: &mut String) -> fmt::Result {
        let f = self.func;
        write!(out, "func @{}(", f.name)?;
        for (i, &p) in f.params.iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            self.decl(out, p)?;
            out.push_str(" param");
        }
        out.push_str(") {\n");
        for (i, b) in f.buffers.iter().enumerate() {
            let id = BufferId(i as u32);
            if b.scope == Scope::Local || !f.params.contains(&id) {
                out.push_str("  local ");
                self.decl(out, id)?;
                out.push('\n');
            }
        }
        self.block_items(out, &f.body, 1)?;
        out.push_str("}\n");
        Ok(())
    }

    fn decl(&self, out: &mut String, id: BufferId) -> fmt::Result {
        let Some(b) = self.func.buffer(id) else {
            return write!(out, "%?{}", id.0);
        };
        write!(out, "%{}: {}[", b.name, b.dtype)?;
        for (i, d) in b.shape.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            write!(out, "{d}")?;
        }
        out.push(']');
        Ok(())
    }

    fn block_items(&self, out: &mut String, s: &Stmt, depth: usize) -> fmt::Result {
        match s {
            Stmt::Seq(v) => v.iter().try_for_each(|s| self.block_items(out, s, depth)),
            s => self.stmt(out, s, depth),
        }
    }

    fn block(&self, out: &mut String, s: &Stmt, depth: usize) -> fmt::Result {
        out.push_str("{\n");
        self.block_items(out, s, depth + 1)?;
        indent(out, depth);
        out.push('}');
        Ok(())
    }

    fn stmt(&self, out: &mut String, s: &Stmt, depth: usize) -> fmt::Result {
        indent(out, depth);
        match s {
            Stmt::For {
                var,
                extent,
                kind,
                body,
            } => {
                write!(
                    out,
                    "for{} {} in 0..{extent} ",
                    kind.suffix(),
                    self.func.var_name(*var)
                )?;
                self.block(out, body, depth)?;
            }
            Stmt::Seq(_) => {
                // Only reached for a sequence nested in a non-block position; print as a block.
                self.block(out, s, depth)?;
            }
            Stmt::Tensorized { intrinsic, body } => {
                write!(out, "tensorize.{} ", intrinsic.name())?;
                self.block(out, body, depth)?;
            }
            Stmt::Store {
                buf,
                indices,
                value,
            } => {
                self.buf_access(out, *buf, indices)?;
                out.push_str(" = ");
                self.expr(out, value)?;
            }
            Stmt::IfThenElse {
                cond,
                then,
                otherwise,
            } => {
                out.push_str("if ");
                self.expr(out, cond)?;
                out.push(' ');
                self.block(out, then, depth)?;
                if let Some(o) = otherwise {
                    out.push_str(" else ");
                    self.block(out, o, depth)?;
                }
            }
        }
        out.push('\n');
        Ok(())
    }

    fn buf_access(&self, out: &mut String, buf: BufferId, indices: &[Expr]) -> fmt::Result {
        match self.func.buffer(buf) {
            Some(b) => write!(out, "%{}[", b.name)?,
            None => write!(out, "%?{}[", buf.0)?,
        }
        self.list(out, indices)?;
        out.push(']');
        Ok(())
    }

    fn list(&self, out: &mut String, items: &[Expr]) -> fmt::Result {
        for (i, e) in items.iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            self.expr(out, e)?;
        }
        Ok(())
    }

    fn operand(&self, out: &mut String, e: &Expr, min_prec: u8) -> fmt::Result {
        if prec(e) < min_prec {
            out.push('(');
            self.expr(out, e)?;
            out.push(')');
            Ok(())
        } else {
            self.expr(out, e)
        }
    }

    fn call(&self, out: &mut String, name: &str, args: &[&Expr]) -> fmt::Result {
        write!(out, "{name}(")?;
        for (i, e) in args.iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            self.expr(out, e)?;
        }
        out.push(')');
        Ok(())
    }

    fn expr(&self, out: &mut String, e: &Expr) -> fmt::Result {
        match e {
            Expr::Var(v) => out.push_str(self.func.var_name(*v)),
            Expr::Int { value, dtype } => {
                write!(out, "{value}")?;
                if *dtype != DType::I64 {
                    write!(out, "_{dtype}")?;
                }
            }
            Expr::Float { value, dtype } => write!(out, "{}_{dtype}", float_text(*value))?,
            Expr::Bool(b) => write!(out, "{b}")?,
            Expr::Binary { op, a, b } => match binop_symbol(*op) {
                Some((sym, p)) => {
                    self.operand(out, a, p)?;
                    write!(out, " {sym} ")?;
                    self.operand(out, b, p + 1)?;
                }
                None => self.call(out, binop_fn_name(*op), &[a, b])?,
            },
            Expr::Cmp { op, a, b } => {
                self.operand(out, a, PREC_CMP + 1)?;
                write!(out, " {} ", op.symbol())?;
                self.operand(out, b, PREC_CMP + 1)?;
            }
            Expr::And(a, b) => {
                self.operand(out, a, PREC_AND)?;
                out.push_str(" && ");
                self.operand(out, b, PREC_AND + 1)?;
            }
            Expr::Or(a, b) => {
                self.operand(out, a, PREC_OR)?;
                out.push_str(" || ");
                self.operand(out, b, PREC_OR + 1)?;
            }
            Expr::Not(a) => {
                out.push('!');
                self.operand(out, a, PREC_UNARY)?;
            }
            Expr::Select {
                cond,
                then,
                otherwise,
            } => self.call(out, "select", &[cond, then, otherwise])?,
            Expr::Cast { dtype, value } => self.call(out, &format!("cast.{dtype}"), &[value])?,
            Expr::Load { buf, indices } => self.buf_access(out, *buf, indices)?,
            Expr::Call { intrinsic, args } => {
                let args: Vec<&Expr> = args.iter().collect();
                self.call(out, intrinsic.name(), &args)?
            }
        }
        Ok(())
    }
}

fn indent(out: &mut String, depth: usize) {
    for _ in 0..depth {
        out.push_str("  ");
    }
}

// ---------------------------------------------------------------------------------------------
// Parsing

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Ident(String),
    /// `%name`
    Buf(String),
    /// `@name`
    Func(String),
    /// A number with its optional `_dtype` suffix.
    Num(String, Option<String>),
    Punct(&'static str),
    Eof,
}

const PUNCTS: [&str; 25] = [
    "..", "//", "==", "!=", "<=", ">=", "&&", "||", "(", ")", "{", "}", "[", "]", ",", ":", "=",
    "+", "-", "*", "/", "%", "<", ">", "!",
];

struct Lexer<'a> {
    src: &'a [u8],
    pos: usize,
    line: usize,
    col: usize,
}

fn is_ident_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'.'
}

impl Lexer<'_> {
    fn err(&self, msg: impl Into<String>) -> ParseError {
        ParseError {
            line: self.line,
            col: self.col,
            msg: msg.into(),
        }
    }

    fn bump(&mut self) {
        if self.src[self.pos] == b'\n' {
            self.line += 1;
            self.col = 1;
        } else {
            self.col += 1;
        }
        self.pos += 1;
    }

    fn take_while(&mut self, f: impl Fn(u8) -> bool) -> String {
        let start = self.pos;
        while self.pos < self.src.len() && f(self.src[self.pos]) {
            self.bump();
        }
        String::from_utf8_lossy(&self.src[start..self.pos]).into_owned()
    }

    fn peek_at(&self, off: usize) -> Option<u8> {
        self.src.get(self.pos + off).copied()
    }

    fn tokens(mut self) -> Result<Vec<(Tok, usize, usize)>, ParseError> {
        let mut out = vec![];
        loop {
            while self.pos < self.src.len() && self.src[self.pos].is_ascii_whitespace() {
                self.bump();
            }
            let (line, col) = (self.line, self.col);
            let Some(c) = self.peek_at(0) else {
                out.push((Tok::Eof, line, col));
                return Ok(out);
            };
            let named = self.peek_at(1).is_some_and(is_ident_char);
            let tok = if c == b'@' || (c == b'%' && named) {
                self.bump();
                let name = self.take_while(is_ident_char);
                if name.is_empty() {
                    return Err(self.err(format!("expected a name after `{}`", c as char)));
                }
                if c == b'%' {
                    Tok::Buf(name)
                } else {
                    Tok::Func(name)
                }
            } else if c.is_ascii_alphabetic() || c == b'_' {
                Tok::Ident(self.take_while(is_ident_char))
            } else if c.is_ascii_digit() {
                let mut text = self.take_while(|c| c.is_ascii_digit());
                if self.peek_at(0) == Some(b'.')
                    && self.peek_at(1).is_some_and(|c| c.is_ascii_digit())
                {
                    self.bump();
                    text.push('.');
                    text.push_str(&self.take_while(|c| c.is_ascii_digit()));
                }
                if matches!(self.peek_at(0), Some(b'e' | b'E')) {
                    let sign = matches!(self.peek_at(1), Some(b'+' | b'-'));
                    let digit_at = if sign { 2 } else { 1 };
                    if self.peek_at(digit_at).is_some_and(|c| c.is_ascii_digit()) {
                        text.push('e');
                        self.bump();
                        if sign {
                            text.push(self.src[self.pos] as char);
                            self.bump();
                        }
                        text.push_str(&self.take_while(|c| c.is_ascii_digit()));
                    }
                }
                let suffix = if self.peek_at(0) == Some(b'_') {
                    self.bump();
                    Some(self.take_while(|c| c.is_ascii_alphanumeric()))
                } else {
                    None
                };
                Tok::Num(text, suffix)
            } else {
                let rest = &self.src[self.pos..];
                let Some(p) = PUNCTS.iter().find(|p| rest.starts_with(p.as_bytes())) else {
                    return Err(self.err(format!("unexpected character `{}`", c as char)));
                };
                for _ in 0..p.len() {
                    self.bump();
                }
                Tok::Punct(p)
            };
            out.push((tok, line, col));
        }
    }
}

/// Maximum nesting of expressions and statements accepted by the parser, so that hostile text
/// cannot overflow the stack.
const MAX_DEPTH: usize = 256;

struct Parser {
    toks: Vec<(Tok, usize, usize)>,
    pos: usize,
    func: PrimFunc,
    scope: Vec<(String, VarId)>,
    depth: usize,
}

/// Parses the text form of a function (see the module doc).
pub fn parse_func(text: &str) -> Result<PrimFunc, ParseError> {
    let toks = Lexer {
        src: text.as_bytes(),
        pos: 0,
        line: 1,
        col: 1,
    }
    .tokens()?;
    let mut p = Parser {
        toks,
        pos: 0,
        func: PrimFunc::new(""),
        scope: vec![],
        depth: 0,
    };
    p.parse()?;
    Ok(p.func)
}

impl Parser {
    fn peek(&self) -> &Tok {
        &self.toks[self.pos.min(self.toks.len() - 1)].0
    }

    fn next(&mut self) -> Tok {
        let t = self.peek().clone();
        if self.pos < self.toks.len() - 1 {
            self.pos += 1;
        }
        t
    }

    fn err<T>(&self, msg: impl Into<String>) -> Result<T, ParseError> {
        let (_, line, col) = self.toks[self.pos.min(self.toks.len() - 1)];
        Err(ParseError {
            line,
            col,
            msg: msg.into(),
        })
    }

    fn expect(&mut self, p: &'static str) -> Result<(), ParseError> {
        if *self.peek() == Tok::Punct(p) {
            self.next();
            Ok(())
        } else {
            self.err(format!("expected `{p}`, found {}", describe(self.peek())))
        }
    }

    fn eat(&mut self, p: &'static str) -> bool {
        if *self.peek() == Tok::Punct(p) {
            self.next();
            true
        } else {
            false
        }
    }

    fn keyword(&mut self, k: &str) -> Result<(), ParseError> {
        match self.peek() {
            Tok::Ident(s) if s == k => {
                self.next();
                Ok(())
            }
            t => self.err(format!("expected `{k}`, found {}", describe(t))),
        }
    }

    fn usize(&mut self) -> Result<usize, ParseError> {
        match self.next() {
            Tok::Num(text, None) => match text.parse::<usize>() {
                Ok(v) => Ok(v),
                Err(_) => {
                    self.pos -= 1;
                    self.err(format!("`{text}` is not a size"))
                }
            },
            t => {
                self.pos = self.pos.saturating_sub(1);
                self.err(format!("expected a size, found {}", describe(&t)))
            }
        }
    }

    fn parse(&mut self) -> Result<(), ParseError> {
        self.keyword("func")?;
        match self.next() {
            Tok::Func(name) => self.func.name = name,
            t => return self.err(format!("expected `@name`, found {}", describe(&t))),
        }
        self.expect("(")?;
        if !self.eat(")") {
            loop {
                let decl = self.decl(Scope::Param)?;
                self.keyword("param")?;
                self.add_buffer(decl)?;
                if self.eat(")") {
                    break;
                }
                self.expect(",")?;
            }
        }
        self.expect("{")?;
        while matches!(self.peek(), Tok::Ident(s) if s == "local") {
            self.next();
            let decl = self.decl(Scope::Local)?;
            self.add_buffer(decl)?;
        }
        let body = self.block_items()?;
        self.expect("}")?;
        if *self.peek() != Tok::Eof {
            return self.err(format!(
                "unexpected {} after the function",
                describe(self.peek())
            ));
        }
        self.func.body = body;
        Ok(())
    }

    fn add_buffer(&mut self, decl: BufferDecl) -> Result<(), ParseError> {
        if self.func.buffers.iter().any(|b| b.name == decl.name) {
            return self.err(format!("buffer %{} declared twice", decl.name));
        }
        if decl.scope == Scope::Param {
            self.func.add_param(decl.name, decl.dtype, decl.shape);
        } else {
            self.func.add_local(decl.name, decl.dtype, decl.shape);
        }
        Ok(())
    }

    fn decl(&mut self, scope: Scope) -> Result<BufferDecl, ParseError> {
        let name = match self.next() {
            Tok::Buf(n) => n,
            t => return self.err(format!("expected `%name`, found {}", describe(&t))),
        };
        self.expect(":")?;
        let dtype = self.dtype()?;
        self.expect("[")?;
        let mut shape = vec![];
        if !self.eat("]") {
            loop {
                shape.push(self.usize()?);
                if self.eat("]") {
                    break;
                }
                self.expect(",")?;
            }
        }
        Ok(BufferDecl {
            name,
            dtype,
            shape,
            scope,
        })
    }

    fn dtype(&mut self) -> Result<DType, ParseError> {
        match self.next() {
            Tok::Ident(s) => match s.parse::<DType>() {
                Ok(d) => Ok(d),
                Err(e) => self.err(e),
            },
            t => self.err(format!("expected a dtype, found {}", describe(&t))),
        }
    }

    fn buffer_id(&self, name: &str) -> Result<BufferId, ParseError> {
        match self.func.buffers.iter().position(|b| b.name == name) {
            Some(i) => Ok(BufferId(i as u32)),
            None => self.err(format!("unknown buffer %{name}")),
        }
    }

    fn enter(&mut self) -> Result<(), ParseError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return self.err("nesting too deep");
        }
        Ok(())
    }

    fn block_items(&mut self) -> Result<Stmt, ParseError> {
        let mut items = vec![];
        while *self.peek() != Tok::Punct("}") && *self.peek() != Tok::Eof {
            items.push(self.stmt()?);
        }
        Ok(Stmt::seq(items))
    }

    fn block(&mut self) -> Result<Stmt, ParseError> {
        self.expect("{")?;
        let s = self.block_items()?;
        self.expect("}")?;
        Ok(s)
    }

    fn stmt(&mut self) -> Result<Stmt, ParseError> {
        self.enter()?;
        let s = self.stmt_inner();
        self.depth -= 1;
        s
    }

    fn stmt_inner(&mut self) -> Result<Stmt, ParseError> {
        match self.peek().clone() {
            Tok::Ident(kw) if kw == "for" || kw.starts_with("for.") => {
                self.next();
                let kind = match kw.as_str() {
                    "for" => ForKind::Serial,
                    "for.parallel" => ForKind::Parallel,
                    "for.vectorized" => ForKind::Vectorized,
                    "for.unrolled" => ForKind::Unrolled,
                    _ => return self.err(format!("unknown loop kind `{kw}`")),
                };
                let name = match self.next() {
                    Tok::Ident(n) if !crate::tir::is_reserved(&n) => n,
                    t => {
                        return self
                            .err(format!("expected a loop variable, found {}", describe(&t)))
                    }
                };
                self.keyword("in")?;
                match self.next() {
                    Tok::Num(z, None) if z == "0" => {}
                    _ => return self.err("loops start at 0"),
                }
                self.expect("..")?;
                let extent = self.usize()?;
                let var = self.func.new_var(name.clone());
                self.scope.push((name, var));
                let body = self.block();
                self.scope.pop();
                Ok(Stmt::for_(var, extent, kind, body?))
            }
            Tok::Ident(kw) if kw.starts_with("tensorize.") => {
                self.next();
                let name = &kw["tensorize.".len()..];
                let Some(intrinsic) = crate::stmt::TensorIntrinsic::from_name(name) else {
                    return self.err(format!("unknown tensor intrinsic `{name}`"));
                };
                let body = self.block()?;
                Ok(Stmt::Tensorized {
                    intrinsic,
                    body: Box::new(body),
                })
            }
            Tok::Ident(kw) if kw == "if" => {
                self.next();
                let cond = self.expr()?;
                let then = self.block()?;
                let otherwise = if matches!(self.peek(), Tok::Ident(s) if s == "else") {
                    self.next();
                    Some(Box::new(self.block()?))
                } else {
                    None
                };
                Ok(Stmt::IfThenElse {
                    cond,
                    then: Box::new(then),
                    otherwise,
                })
            }
            Tok::Buf(name) => {
                self.next();
                let buf = self.buffer_id(&name)?;
                let indices = self.index_list()?;
                self.expect("=")?;
                let value = self.expr()?;
                Ok(Stmt::Store {
                    buf,
                    indices,
                    value,
                })
            }
            t => self.err(format!("expected a statement, found {}", describe(&t))),
        }
    }

    fn index_list(&mut self) -> Result<Vec<Expr>, ParseError> {
        self.expect("[")?;
        let mut v = vec![];
        if self.eat("]") {
            return Ok(v);
        }
        loop {
            v.push(self.expr()?);
            if self.eat("]") {
                return Ok(v);
            }
            self.expect(",")?;
        }
    }

    fn args(&mut self) -> Result<Vec<Expr>, ParseError> {
        self.expect("(")?;
        let mut v = vec![];
        if self.eat(")") {
            return Ok(v);
        }
        loop {
            v.push(self.expr()?);
            if self.eat(")") {
                return Ok(v);
            }
            self.expect(",")?;
        }
    }

    fn expr(&mut self) -> Result<Expr, ParseError> {
        self.binary(PREC_OR)
    }

    fn peek_binary(&self) -> Option<(u8, &'static str)> {
        match self.peek() {
            Tok::Punct(p) => {
                let pr = match *p {
                    "||" => PREC_OR,
                    "&&" => PREC_AND,
                    "==" | "!=" | "<" | "<=" | ">" | ">=" => PREC_CMP,
                    "+" | "-" => PREC_ADD,
                    "*" | "/" | "//" | "%" => PREC_MUL,
                    _ => return None,
                };
                Some((pr, p))
            }
            _ => None,
        }
    }

    fn binary(&mut self, min_prec: u8) -> Result<Expr, ParseError> {
        self.enter()?;
        let r = self.binary_inner(min_prec);
        self.depth -= 1;
        r
    }

    fn binary_inner(&mut self, min_prec: u8) -> Result<Expr, ParseError> {
        let mut lhs = self.unary()?;
        while let Some((p, sym)) = self.peek_binary() {
            if p < min_prec {
                break;
            }
            self.next();
            let rhs = self.binary(p + 1)?;
            lhs = match sym {
                "||" => Expr::or(lhs, rhs),
                "&&" => Expr::and(lhs, rhs),
                "==" => Expr::cmp(CmpOp::Eq, lhs, rhs),
                "!=" => Expr::cmp(CmpOp::Ne, lhs, rhs),
                "<" => Expr::cmp(CmpOp::Lt, lhs, rhs),
                "<=" => Expr::cmp(CmpOp::Le, lhs, rhs),
                ">" => Expr::cmp(CmpOp::Gt, lhs, rhs),
                ">=" => Expr::cmp(CmpOp::Ge, lhs, rhs),
                "+" => Expr::binary(BinOp::Add, lhs, rhs),
                "-" => Expr::binary(BinOp::Sub, lhs, rhs),
                "*" => Expr::binary(BinOp::Mul, lhs, rhs),
                "/" => Expr::binary(BinOp::Div, lhs, rhs),
                "//" => Expr::binary(BinOp::FloorDiv, lhs, rhs),
                _ => Expr::binary(BinOp::FloorMod, lhs, rhs),
            };
        }
        Ok(lhs)
    }

    fn unary(&mut self) -> Result<Expr, ParseError> {
        if self.eat("!") {
            self.enter()?;
            let a = self.unary();
            self.depth -= 1;
            return Ok(Expr::not(a?));
        }
        if *self.peek() == Tok::Punct("-") {
            // Only negative literals: `-3`, `-1.5_f32`, `-inf_f32`.
            self.next();
            return match self.peek().clone() {
                Tok::Num(text, suffix) => {
                    self.next();
                    self.number(&text, suffix.as_deref(), true)
                }
                Tok::Ident(s) if s.starts_with("inf_") => {
                    self.next();
                    self.special_float(&s, true)
                }
                t => self.err(format!(
                    "`-` must be followed by a number, found {}",
                    describe(&t)
                )),
            };
        }
        self.primary()
    }

    fn number(&self, text: &str, suffix: Option<&str>, neg: bool) -> Result<Expr, ParseError> {
        let dtype = match suffix {
            None if text.contains(['.', 'e']) => {
                return self.err(format!("float `{text}` needs a dtype suffix"))
            }
            None => DType::I64,
            Some(s) => match s.parse::<DType>() {
                Ok(d) => d,
                Err(e) => return self.err(e),
            },
        };
        if dtype.is_float() {
            let Ok(v) = text.parse::<f64>() else {
                return self.err(format!("bad number `{text}`"));
            };
            return Ok(Expr::Float {
                value: if neg { -v } else { v },
                dtype,
            });
        }
        if !dtype.is_int() {
            return self.err(format!("number of dtype {dtype}"));
        }
        let Ok(v) = text.parse::<i128>() else {
            return self.err(format!("bad integer `{text}`"));
        };
        let v = if neg { -v } else { v };
        match i64::try_from(v) {
            Ok(value) => Ok(Expr::Int { value, dtype }),
            Err(_) => self.err(format!("integer `{text}` out of range")),
        }
    }

    fn special_float(&self, s: &str, neg: bool) -> Result<Expr, ParseError> {
        let Some((word, ty)) = s.split_once('_') else {
            return self.err(format!("`{s}` needs a dtype suffix"));
        };
        let dtype = match ty.parse::<DType>() {
            Ok(d) if d.is_float() => d,
            _ => return self.err(format!("`{s}`: bad float dtype")),
        };
        let value = match (word, neg) {
            ("inf", false) => f64::INFINITY,
            ("inf", true) => f64::NEG_INFINITY,
            ("nan", false) => f64::NAN,
            _ => return self.err(format!("bad float `{s}`")),
        };
        Ok(Expr::Float { value, dtype })
    }

    fn primary(&mut self) -> Result<Expr, ParseError> {
        match self.next() {
            Tok::Num(text, suffix) => self.number(&text, suffix.as_deref(), false),
            Tok::Punct("(") => {
                let e = self.expr()?;
                self.expect(")")?;
                Ok(e)
            }
            Tok::Buf(name) => {
                let buf = self.buffer_id(&name)?;
                let indices = self.index_list()?;
                Ok(Expr::Load { buf, indices })
            }
            Tok::Ident(s) => {
                if s == "true" || s == "false" {
                    return Ok(Expr::Bool(s == "true"));
                }
                if s.starts_with("inf_") || s.starts_with("nan_") {
                    return self.special_float(&s, false);
                }
                if *self.peek() == Tok::Punct("(") {
                    return self.call(&s);
                }
                match self.scope.iter().rev().find(|(n, _)| *n == s) {
                    Some((_, v)) => Ok(Expr::Var(*v)),
                    None => {
                        self.pos = self.pos.saturating_sub(1);
                        self.err(format!("unbound variable `{s}`"))
                    }
                }
            }
            t => {
                self.pos = self.pos.saturating_sub(1);
                self.err(format!("expected an expression, found {}", describe(&t)))
            }
        }
    }

    fn call(&mut self, name: &str) -> Result<Expr, ParseError> {
        let args = self.args()?;
        let arity = |n: usize| -> Result<(), ParseError> {
            if args.len() == n {
                Ok(())
            } else {
                self.err(format!(
                    "`{name}` takes {n} arguments, given {}",
                    args.len()
                ))
            }
        };
        let mut it = args.clone().into_iter();
        let mut next = || it.next().unwrap_or(Expr::Bool(false));
        match name {
            "min" | "max" | "rem" => {
                arity(2)?;
                let op = match name {
                    "min" => BinOp::Min,
                    "max" => BinOp::Max,
                    _ => BinOp::Rem,
                };
                Ok(Expr::binary(op, next(), next()))
            }
            "select" => {
                arity(3)?;
                Ok(Expr::select(next(), next(), next()))
            }
            _ => {
                if let Some(ty) = name.strip_prefix("cast.") {
                    arity(1)?;
                    return match ty.parse::<DType>() {
                        Ok(d) => Ok(Expr::cast(d, next())),
                        Err(e) => self.err(e),
                    };
                }
                match Intrinsic::from_name(name) {
                    Some(intrinsic) => {
                        arity(intrinsic.arity())?;
                        Ok(Expr::Call { intrinsic, args })
                    }
                    None => self.err(format!("unknown function `{name}`")),
                }
            }
        }
    }
}

fn describe(t: &Tok) -> String {
    match t {
        Tok::Ident(s) => format!("`{s}`"),
        Tok::Buf(s) => format!("`%{s}`"),
        Tok::Func(s) => format!("`@{s}`"),
        Tok::Num(s, _) => format!("number `{s}`"),
        Tok::Punct(p) => format!("`{p}`"),
        Tok::Eof => "end of input".into(),
    }
}
