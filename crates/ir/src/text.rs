//! The text form of a graph: printed by `Display for Graph`, read back by [`parse_graph`].
//!
//! ```text
//! graph {
//!   const @0: f32[2] = [1, 2.5]
//!   input %0 "x": f32[2]
//!   %1: f32[2] = const(@0)
//!   %2: f32[2] = add(%0, %1) name="Add_0"
//!   %3: f32[2] = clamp(%2) {"max":"inf","min":0.0}
//!   output %3 "y"
//! }
//! ```
//! Attributes are the op's serde form as a JSON object, keys sorted. Invariant: `parse_graph(&g.to_string())`
//! rebuilds a graph equal to `g` (ids renumbered densely in order of appearance), and parsing
//! re-infers every type, rejecting text whose recorded types disagree.

use crate::op::{parse_binary, parse_unary};
use crate::{
    dispatch_data, ConstId, DType, Graph, IrError, Op, Result, Tensor, TensorData, TensorType,
    ValueId,
};
use serde_json::Value as Json;
use std::collections::HashMap;
use std::fmt;

impl fmt::Display for Graph {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "graph {{")?;
        for (i, c) in self.consts().iter().enumerate() {
            write!(f, "  const {}: {} = [", ConstId(i as u32), c.ty())?;
            write_elements(f, c.data())?;
            writeln!(f, "]")?;
        }
        for &v in self.inputs() {
            write!(f, "  input {v}")?;
            if let Some(name) = &self.value(v).name {
                write!(f, " {}", json_string(name))?;
            }
            writeln!(f, ": {}", self.ty(v))?;
        }
        for node in self.nodes() {
            write!(
                f,
                "  {}: {} = {}(",
                node.output,
                self.ty(node.output),
                node.op.name()
            )?;
            if let Op::Const(c) = node.op {
                write!(f, "{c}")?;
            }
            for (i, v) in node.inputs.iter().enumerate() {
                write!(f, "{}{v}", if i > 0 { ", " } else { "" })?;
            }
            f.write_str(")")?;
            if let Some(attrs) = attributes(&node.op) {
                write!(f, " {attrs}")?;
            }
            if !node.name.is_empty() {
                write!(f, " name={}", json_string(&node.name))?;
            }
            if let Some(name) = &self.value(node.output).name {
                write!(f, " value={}", json_string(name))?;
            }
            writeln!(f)?;
        }
        for &v in self.outputs() {
            writeln!(f, "  output {v}")?;
        }
        writeln!(f, "}}")
    }
}

fn json_string(s: &str) -> String {
    Json::String(s.to_owned()).to_string()
}

fn write_elements(f: &mut impl fmt::Write, data: &TensorData) -> fmt::Result {
    fn list<T: fmt::Display>(f: &mut impl fmt::Write, v: &[T]) -> fmt::Result {
        for (i, x) in v.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{x}")?;
        }
        Ok(())
    }
    match data {
        TensorData::F16(v) => list(f, &v.iter().map(|x| x.to_f32()).collect::<Vec<_>>()),
        TensorData::BF16(v) => list(f, &v.iter().map(|x| x.to_f32()).collect::<Vec<_>>()),
        other => dispatch_data!(other, v => list(f, v)),
    }
}

/// The attribute object of an op, if it has attributes beyond its name.
fn attributes(op: &Op) -> Option<String> {
    let json = serde_json::to_value(op).ok()?;
    let Json::Object(map) = json else { return None };
    let (_, inner) = map.into_iter().next()?;
    let Json::Object(mut attrs) = inner else {
        return None;
    };
    if matches!(op, Op::Reduce { .. }) {
        attrs.remove("kind");
    }
    Some(Json::Object(attrs).to_string())
}

/// Parses the text form of a graph.
pub fn parse_graph(text: &str) -> Result<Graph> {
    let mut p = Parser {
        graph: Graph::new(),
        values: HashMap::new(),
        consts: HashMap::new(),
        outputs: Vec::new(),
    };
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with("//"));
    match lines.next() {
        Some((_, "graph {")) => {}
        Some((n, _)) => return Err(parse_err(n, "expected `graph {`")),
        None => return Err(parse_err(1, "empty text")),
    }
    let mut closed = false;
    for (n, line) in lines {
        if closed {
            return Err(parse_err(n, "text after the closing `}`"));
        }
        if line == "}" {
            closed = true;
            continue;
        }
        p.line(line).map_err(|m| parse_err(n, m))?;
    }
    if !closed {
        return Err(parse_err(text.lines().count(), "missing closing `}`"));
    }
    let outputs = p.outputs;
    p.graph
        .set_outputs(outputs)
        .map_err(|e| parse_err(0, e.to_string()))?;
    Ok(p.graph)
}

fn parse_err(line: usize, message: impl Into<String>) -> IrError {
    IrError::Parse {
        line,
        message: message.into(),
    }
}

struct Parser {
    graph: Graph,
    values: HashMap<u32, ValueId>,
    consts: HashMap<u32, ConstId>,
    outputs: Vec<ValueId>,
}

type LineResult<T> = std::result::Result<T, String>;

impl Parser {
    fn line(&mut self, line: &str) -> LineResult<()> {
        let mut c = Cursor { s: line };
        if c.eat("const ") {
            let id = c.id('@')?;
            c.expect(":")?;
            let ty = c.ty()?;
            c.expect("=")?;
            c.expect("[")?;
            let body = c.until(']')?;
            let tensor = parse_elements(&ty, body)?;
            c.end()?;
            let cid = self.graph.add_const(tensor);
            if self.consts.insert(id, cid).is_some() {
                return Err(format!("constant @{id} defined twice"));
            }
        } else if c.eat("input ") {
            let id = c.id('%')?;
            let name = c.opt_json_string()?.unwrap_or_default();
            c.expect(":")?;
            let ty = c.ty()?;
            c.end()?;
            let v = self.graph.add_input(name, ty);
            self.define(id, v)?;
        } else if c.eat("output ") {
            let v = self.value(c.id('%')?)?;
            c.end()?;
            self.outputs.push(v);
        } else {
            let id = c.id('%')?;
            c.expect(":")?;
            let ty = c.ty()?;
            c.expect("=")?;
            let name = c.ident()?;
            c.expect("(")?;
            let mut args = Vec::new();
            let mut const_ref = None;
            while !c.eat(")") {
                if !args.is_empty() || const_ref.is_some() {
                    c.expect(",")?;
                }
                if c.peek() == Some('@') {
                    const_ref = Some(c.id('@')?);
                } else {
                    args.push(self.value(c.id('%')?)?);
                }
            }
            let attrs = if c.peek() == Some('{') {
                Some(c.json()?)
            } else {
                None
            };
            let node_name = if c.eat("name=") {
                c.json_string()?
            } else {
                String::new()
            };
            let value_name = if c.eat("value=") {
                Some(c.json_string()?)
            } else {
                None
            };
            c.end()?;
            let op = match const_ref {
                Some(k) => {
                    let cid = *self
                        .consts
                        .get(&k)
                        .ok_or(format!("unknown constant @{k}"))?;
                    Op::Const(cid)
                }
                None => build_op(&name, attrs)?,
            };
            let v = self
                .graph
                .add_node(op, &args, node_name)
                .map_err(|e| e.to_string())?;
            if self.graph.ty(v) != &ty {
                return Err(format!(
                    "recorded type {ty} but {name} infers {}",
                    self.graph.ty(v)
                ));
            }
            if let Some(n) = value_name {
                self.graph.set_name(v, n);
            }
            self.define(id, v)?;
        }
        Ok(())
    }

    fn define(&mut self, id: u32, v: ValueId) -> LineResult<()> {
        if self.values.insert(id, v).is_some() {
            return Err(format!("value %{id} defined twice"));
        }
        Ok(())
    }

    fn value(&self, id: u32) -> LineResult<ValueId> {
        self.values
            .get(&id)
            .copied()
            .ok_or_else(|| format!("value %{id} used before its definition"))
    }
}

fn build_op(name: &str, attrs: Option<Json>) -> LineResult<Op> {
    if let Some(u) = parse_unary(name) {
        return Ok(Op::Unary(u));
    }
    if let Some(b) = parse_binary(name) {
        return Ok(Op::Binary(b));
    }
    let json = if let Some(kind) = name.strip_prefix("reduce_") {
        let mut attrs = match attrs {
            Some(Json::Object(m)) => m,
            _ => return Err(format!("{name} needs an attribute object")),
        };
        attrs.insert("kind".into(), Json::String(kind.into()));
        serde_json::json!({ "reduce": attrs })
    } else {
        match attrs {
            Some(a) => serde_json::json!({ name: a }),
            None => Json::String(name.into()),
        }
    };
    serde_json::from_value(json).map_err(|e| format!("op `{name}`: {e}"))
}

fn parse_elements(ty: &TensorType, body: &str) -> LineResult<Tensor> {
    let items: Vec<&str> = if body.trim().is_empty() {
        vec![]
    } else {
        body.split(',').map(str::trim).collect()
    };
    fn parse_all<T: std::str::FromStr>(items: &[&str]) -> LineResult<Vec<T>> {
        items
            .iter()
            .map(|s| s.parse().map_err(|_| format!("bad element `{s}`")))
            .collect()
    }
    let data = match ty.dtype {
        DType::F32 => TensorData::F32(parse_all(&items)?),
        DType::F16 => TensorData::F16(
            parse_all::<f32>(&items)?
                .into_iter()
                .map(half::f16::from_f32)
                .collect(),
        ),
        DType::I8 => TensorData::I8(parse_all(&items)?),
        DType::U8 => TensorData::U8(parse_all(&items)?),
        DType::I16 => TensorData::I16(parse_all(&items)?),
        DType::I32 => TensorData::I32(parse_all(&items)?),
        DType::I64 => TensorData::I64(parse_all(&items)?),
        DType::Bool => TensorData::Bool(parse_all(&items)?),
        DType::F64 => TensorData::F64(parse_all(&items)?),
        DType::BF16 => TensorData::BF16(
            parse_all::<f32>(&items)?
                .into_iter()
                .map(half::bf16::from_f32)
                .collect(),
        ),
        DType::U16 => TensorData::U16(parse_all(&items)?),
        DType::U32 => TensorData::U32(parse_all(&items)?),
        DType::U64 => TensorData::U64(parse_all(&items)?),
    };
    Tensor::from_data(ty.clone(), data).map_err(|e| e.to_string())
}

/// A cursor over one line of text.
struct Cursor<'a> {
    s: &'a str,
}

impl<'a> Cursor<'a> {
    fn skip_ws(&mut self) {
        self.s = self.s.trim_start();
    }

    fn peek(&mut self) -> Option<char> {
        self.skip_ws();
        self.s.chars().next()
    }

    fn eat(&mut self, tok: &str) -> bool {
        self.skip_ws();
        match self.s.strip_prefix(tok) {
            Some(rest) => {
                self.s = rest;
                true
            }
            None => false,
        }
    }

    fn expect(&mut self, tok: &str) -> LineResult<()> {
        if self.eat(tok) {
            Ok(())
        } else {
            Err(format!("expected `{tok}` at `{}`", self.s))
        }
    }

    fn end(&mut self) -> LineResult<()> {
        self.skip_ws();
        if self.s.is_empty() {
            Ok(())
        } else {
            Err(format!("unexpected `{}`", self.s))
        }
    }

    fn until(&mut self, stop: char) -> LineResult<&'a str> {
        let i = self.s.find(stop).ok_or(format!("missing `{stop}`"))?;
        let (body, rest) = self.s.split_at(i);
        self.s = &rest[1..];
        Ok(body)
    }

    fn take_while(&mut self, f: impl Fn(char) -> bool) -> &'a str {
        self.skip_ws();
        let end = self.s.find(|c| !f(c)).unwrap_or(self.s.len());
        let (tok, rest) = self.s.split_at(end);
        self.s = rest;
        tok
    }

    fn ident(&mut self) -> LineResult<String> {
        let t = self.take_while(|c| c.is_ascii_alphanumeric() || c == '_');
        if t.is_empty() {
            Err(format!("expected a name at `{}`", self.s))
        } else {
            Ok(t.to_owned())
        }
    }

    fn id(&mut self, sigil: char) -> LineResult<u32> {
        self.expect(&sigil.to_string())?;
        let digits = self.take_while(|c| c.is_ascii_digit());
        digits
            .parse()
            .map_err(|_| format!("expected a number after `{sigil}`"))
    }

    fn ty(&mut self) -> LineResult<TensorType> {
        let dtype: DType = self.ident()?.parse()?;
        self.expect("[")?;
        let dims = self.until(']')?;
        let shape = if dims.trim().is_empty() {
            vec![]
        } else {
            dims.split(',')
                .map(|d| d.trim().parse().map_err(|_| format!("bad dimension `{d}`")))
                .collect::<LineResult<Vec<usize>>>()?
        };
        TensorType::new(dtype, shape).map_err(|e| e.to_string())
    }

    fn json(&mut self) -> LineResult<Json> {
        self.skip_ws();
        let mut stream = serde_json::Deserializer::from_str(self.s).into_iter::<Json>();
        let v = stream
            .next()
            .ok_or("expected JSON")?
            .map_err(|e| e.to_string())?;
        self.s = &self.s[stream.byte_offset()..];
        Ok(v)
    }

    fn json_string(&mut self) -> LineResult<String> {
        match self.json()? {
            Json::String(s) => Ok(s),
            other => Err(format!("expected a string, got {other}")),
        }
    }

    fn opt_json_string(&mut self) -> LineResult<Option<String>> {
        if self.peek() == Some('"') {
            self.json_string().map(Some)
        } else {
            Ok(None)
        }
    }
}

/// Renders a tensor's elements as the text form writes them (for messages and tests).
pub fn format_elements(data: &TensorData) -> String {
    let mut s = String::new();
    write_elements(&mut s, data).expect("writing to a String cannot fail");
    s
}
