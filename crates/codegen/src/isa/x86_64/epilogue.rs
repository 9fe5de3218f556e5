//! The epilogue of a contraction kernel: the expression compiled once into a program of vector
//! operations (common sub-expressions computed once), then emitted per accumulator register
//! with a linear-scan register allocation.
//!
//! Invariant: the emitted code computes [`kiln_tir::Epilogue::eval`] lane by lane, bit for bit:
//! one IEEE operation per node, `min`/`max` propagating NaN from either operand, comparisons
//! ordered (false on NaN, except `!=`), `select` choosing per lane. An integer contraction's
//! program ([`Program::typed`]) computes [`kiln_tir::Epilogue::eval_scalar`]:
//! wrapping `i32` arithmetic and the interpreter's conversions (float to integer truncating and
//! saturating, NaN to 0; integer to integer wrapping), narrow integers held in `i32` lanes.

use super::asm::{Addr, Arith, Asm, Pred};
use iced_x86::code_asm::AsmRegister64;
use iced_x86::code_asm::{qword_ptr, r10, r11, r8, r9, rax, rcx, rdi, rdx, rsi};
use kiln_ir::DType;
use kiln_tir::{BinOp, CmpOp, Epilogue, Intrinsic};
use std::collections::HashMap;

/// One operation; operands are earlier nodes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Node {
    Acc,
    /// An f32 constant, by bits.
    Const(u32),
    Input(usize),
    Bin(BinOp, usize, usize),
    Select(CmpOp, usize, usize, usize, usize),
    Call(Intrinsic, Vec<usize>),
    /// An `i32` constant, by bits.
    Int(u32),
    /// `i32` arithmetic (wrapping `+ - *`, signed `min`/`max`).
    IBin(BinOp, usize, usize),
    /// A conversion `(to, from)`.
    Cvt(DType, DType, usize),
    /// `x < c ? c : x` (`Lower`) or `x > c ? c : x` (`Upper`) for an f32 constant `c` (by
    /// bits): NaN and equal values give `x`, exactly what x86's `max`/`min` give with `x` as
    /// their second operand. The clamp selects of requantisation compile to these.
    Bound(Side, u32, usize),
}

/// Which bound a [`Node::Bound`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Side {
    Lower,
    Upper,
}

impl Node {
    /// The operands in order (as read by the operation).
    fn operands(&self) -> Vec<usize> {
        match self {
            Node::Acc | Node::Const(_) | Node::Input(_) | Node::Int(_) => vec![],
            Node::Bin(_, a, b) | Node::IBin(_, a, b) => vec![*a, *b],
            Node::Cvt(_, _, a) | Node::Bound(_, _, a) => vec![*a],
            Node::Select(_, a, b, t, o) => vec![*a, *b, *t, *o],
            Node::Call(_, args) => args.clone(),
        }
    }

    /// The distinct operands.
    fn distinct_operands(&self) -> Vec<usize> {
        let mut v = self.operands();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Whether the result may be written over an operand that dies here.
    fn may_overwrite_operand(&self) -> bool {
        !matches!(
            self,
            Node::Bound(..)
                | Node::Bin(BinOp::Min | BinOp::Max, _, _)
                | Node::Call(
                    Intrinsic::Fma
                        | Intrinsic::Abs
                        | Intrinsic::Exp
                        | Intrinsic::Sigmoid
                        | Intrinsic::Erf,
                    _
                )
        )
    }

    /// Scratch vector registers the operation needs besides its operands and result.
    fn scratch(&self, avx2: bool) -> usize {
        match self {
            Node::Call(Intrinsic::Exp, _) => 3,
            Node::Call(Intrinsic::Sigmoid, _) => 4,
            Node::Call(Intrinsic::Erf, _) => 5,
            Node::Bin(BinOp::Min | BinOp::Max, _, _) | Node::Select(..) if avx2 => 1,
            Node::Cvt(DType::I32 | DType::I8 | DType::U8, DType::F32, _) => 1 + usize::from(avx2),
            _ => 0,
        }
    }
}

/// An epilogue as a program in topological order.
#[derive(Clone, Debug)]
pub struct Program {
    nodes: Vec<Node>,
    /// Each node's type.
    types: Vec<DType>,
    /// Per node, the index of the last node reading it (itself for the root).
    last_use: Vec<usize>,
}

/// Registers for the epilogue inputs' pointers (the output's is `rsi`); the pointers of inputs
/// past these are loaded into `rax` from the argument array at each use.
pub const INPUT_PTRS: [AsmRegister64; 6] = [rdx, rcx, r8, r9, r10, r11];

/// Where an epilogue input's pointer is during the epilogue.
#[derive(Clone, Copy)]
pub struct InputPtr {
    /// The register holding it.
    pub reg: AsmRegister64,
    /// `(row, col)` byte strides.
    pub row: i64,
    pub col: i64,
    /// The offset in the argument array (`rdi`) to load it from before each use, for inputs
    /// without a register of their own.
    pub reload: Option<i32>,
}

/// A block of a register tile computed in one pass of the reduction: rows `m0..m0 + rows` by
/// column vectors `j0..j0 + vecs`, the accumulator of block row `i` and vector `x` in register
/// `i * vecs + x`.
pub struct Block {
    pub m0: usize,
    pub rows: usize,
    pub j0: usize,
    pub vecs: usize,
}

impl Block {
    /// A tile of `rows` rows and `vectors` column vectors in blocks of at most `rc` rows by
    /// `vc` vectors, column blocks outermost; the rows split into as few blocks as `rc` allows,
    /// of balanced sizes (14 rows at most 12 per block: 7 + 7, not 12 + 2, whose two-row block
    /// would run on too few independent accumulators to hide the latency of its updates).
    pub fn tiling(rows: usize, vectors: usize, rc: usize, vc: usize) -> Vec<Block> {
        let blocks = rows.div_ceil(rc.max(1));
        let mut out = vec![];
        for j0 in (0..vectors).step_by(vc.max(1)) {
            let mut m0 = 0;
            for b in 0..blocks {
                let n = rows / blocks + usize::from(b < rows % blocks);
                out.push(Block {
                    m0,
                    rows: n,
                    j0,
                    vecs: vc.min(vectors - j0),
                });
                m0 += n;
            }
        }
        out
    }
}

/// Where a tile's epilogue reads and writes: the `(row, col)` byte strides of its inputs (in
/// the ABI array after lhs, rhs and out), the output's type, row stride and bytes per column
/// vector, and which vectors are partial.
pub struct Outputs<'a> {
    /// The index of the output's pointer in the ABI array (2 in a contraction's, after lhs
    /// and rhs; 0 in a pointwise kernel's); the inputs' pointers follow it.
    pub out_slot: usize,
    pub inputs: &'a [(i64, i64)],
    pub dtype: DType,
    pub out_row: i64,
    pub vector_bytes: i64,
    pub masked: &'a dyn Fn(usize) -> bool,
}

/// Accumulators whose epilogues are emitted interleaved, at most.
const INTERLEAVED: usize = 4;

/// One accumulator's epilogue being emitted: where it reads and writes, its free registers,
/// and the register of each program node computed so far.
struct Lane<'a> {
    place: Place<'a>,
    free: Vec<u8>,
    reg: Vec<Option<u8>>,
}

/// Where the epilogue's inputs and output are, per accumulator.
pub struct Place<'a> {
    /// The accumulator's register.
    pub acc: u8,
    /// Tile row and vector column of the accumulator.
    pub m: usize,
    pub j: usize,
    /// Whether this vector is the partial last one of its row.
    pub masked: bool,
    /// Per input: where its pointer is and its strides.
    pub inputs: &'a [InputPtr],
}

impl Program {
    /// Emits the epilogue of every accumulator of `block` and stores each result as the
    /// output's type ([`Asm::store_as`]): loads the output pointer into `rsi` and the inputs'
    /// into [`INPUT_PTRS`], and computes with registers from the accumulators' end up to `regs`
    /// (plus each accumulator once stored).
    pub fn emit_block(
        &self,
        asm: &mut Asm,
        block: &Block,
        outputs: &Outputs,
        regs: usize,
    ) -> Result<(), String> {
        let e = |x: iced_x86::IcedError| x.to_string();
        let slot_of =
            |i: usize| i32::try_from(8 * (outputs.out_slot + i)).map_err(|_| "too many inputs");
        asm.a.mov(rsi, qword_ptr(rdi + slot_of(0)?)).map_err(e)?;
        let mut inputs = vec![];
        for (i, &(row, col)) in outputs.inputs.iter().enumerate() {
            let slot = slot_of(1 + i)?;
            let (reg, reload) = match INPUT_PTRS.get(i) {
                Some(&reg) => {
                    asm.a.mov(reg, qword_ptr(rdi + slot)).map_err(e)?;
                    (reg, None)
                }
                None => (rax, Some(slot)),
            };
            inputs.push(InputPtr {
                reg,
                row,
                col,
                reload,
            });
        }
        let accs = (block.rows * block.vecs) as u8;
        let base_pool: Vec<u8> = (accs..regs as u8).collect();
        let mut done: Vec<u8> = vec![];
        let mut tiles = vec![];
        for i in 0..block.rows {
            for (x, j) in (block.j0..block.j0 + block.vecs).enumerate() {
                tiles.push(((i * block.vecs + x) as u8, block.m0 + i, j));
            }
        }
        let need = self.registers(asm.isa == super::asm::VecIsa::Avx2).max(1);
        let addr_of = |m: usize, j: usize| Addr {
            base: rsi,
            disp: m as i64 * outputs.out_row + j as i64 * outputs.vector_bytes,
        };
        // A long f32 program (an `exp` or `erf`: ~30 dependent operations) of which the
        // registers beside the accumulators hold only one copy runs after the tile: the
        // accumulators are stored as they are, then reloaded a few at a time with the whole
        // register file free (a store and a load of the same f32, exact; the tile is in L1).
        let spill = outputs.dtype == DType::F32
            && self.is_long()
            && base_pool.len() / need < 2
            && tiles.len() > 1;
        if spill {
            for &(acc, m, j) in &tiles {
                asm.store_as(DType::F32, addr_of(m, j), acc, (outputs.masked)(j))?;
            }
        }
        let mut k = 0;
        while k < tiles.len() {
            // As many accumulators at once as the free registers hold programs for, their
            // operations interleaved: one accumulator's chain of dependent operations (a
            // requantisation is ~25 deep, a division among them) no longer waits alone.
            let (pool, need) = if spill {
                ((0..regs as u8).collect::<Vec<u8>>(), need + 1)
            } else {
                let mut pool = base_pool.clone();
                pool.extend(&done);
                (pool, need)
            };
            let group = (pool.len() / need)
                .clamp(1, INTERLEAVED)
                .min(tiles.len() - k);
            let share = pool.len() / group;
            let mut lanes = vec![];
            for (g, &(acc, m, j)) in tiles[k..k + group].iter().enumerate() {
                let mut free: Vec<u8> = pool[g * share..(g + 1) * share]
                    .iter()
                    .rev()
                    .copied()
                    .collect();
                let masked = (outputs.masked)(j);
                let acc = if spill {
                    // The stored accumulator, into the lane's first register.
                    let r = free.pop().ok_or("epilogue out of registers")?;
                    asm.load(r, addr_of(m, j), masked)?;
                    r
                } else {
                    acc
                };
                lanes.push(Lane {
                    place: Place {
                        acc,
                        m,
                        j,
                        masked,
                        inputs: &inputs,
                    },
                    free,
                    reg: vec![None; self.nodes.len()],
                });
            }
            self.emit_lanes(asm, &mut lanes)?;
            for lane in &lanes {
                let r = lane.reg[self.root()].ok_or("epilogue without result")?;
                let Place {
                    acc, m, j, masked, ..
                } = lane.place;
                asm.store_as(outputs.dtype, addr_of(m, j), r, masked)?;
                if !spill {
                    done.push(acc);
                }
            }
            k += group;
        }
        Ok(())
    }

    /// Whether the program evaluates a polynomial approximation (`exp`, `sigmoid`, `erf`).
    fn is_long(&self) -> bool {
        self.nodes.iter().any(|n| {
            matches!(
                n,
                Node::Call(Intrinsic::Exp | Intrinsic::Sigmoid | Intrinsic::Erf, _)
            )
        })
    }

    /// Compiles an f32 contraction's epilogue `e` (an error for one with conversions or
    /// integers, which only [`Program::typed`] compiles).
    pub fn new(e: &Epilogue) -> Result<Program, String> {
        let mut plain = true;
        e.walk(&mut |x| plain &= !matches!(x, Epilogue::Int(_) | Epilogue::Cast(..)));
        if !plain {
            return Err("an f32 epilogue with conversions".into());
        }
        Self::typed(e, DType::F32, &[])
    }

    /// Compiles `e` over an accumulator of type `acc` and inputs of types `inputs`.
    pub fn typed(e: &Epilogue, acc: DType, inputs: &[DType]) -> Result<Program, String> {
        let mut p = Program {
            nodes: vec![],
            types: vec![],
            last_use: vec![],
        };
        let mut memo = HashMap::new();
        let root = p.add(e, acc, inputs, &mut memo)?;
        p.last_use = vec![0; p.nodes.len()];
        for (i, n) in p.nodes.iter().enumerate() {
            for o in n.operands() {
                p.last_use[o] = i;
            }
        }
        p.last_use[root] = root;
        Ok(p)
    }

    fn add(
        &mut self,
        e: &Epilogue,
        acc: DType,
        inputs: &[DType],
        memo: &mut HashMap<Node, usize>,
    ) -> Result<usize, String> {
        let mut add = |p: &mut Self, x: &Epilogue| p.add(x, acc, inputs, memo);
        let (node, ty) = match e {
            Epilogue::Acc => (Node::Acc, acc),
            Epilogue::Const(c) => (Node::Const(c.to_bits()), DType::F32),
            Epilogue::Int(i) => (Node::Int(*i as u32), DType::I32),
            Epilogue::Input(i) => (
                Node::Input(*i),
                inputs.get(*i).copied().unwrap_or(DType::F32),
            ),
            Epilogue::Binary(op, a, b) => {
                let (a, b) = (add(self, a)?, add(self, b)?);
                match (self.types[a], self.types[b]) {
                    (DType::F32, DType::F32) => (Node::Bin(*op, a, b), DType::F32),
                    (DType::I32, DType::I32) => (Node::IBin(*op, a, b), DType::I32),
                    (x, y) => return Err(format!("epilogue {op:?} of {x} and {y}")),
                }
            }
            Epilogue::Cast(to, x) => {
                let x = add(self, x)?;
                (Node::Cvt(*to, self.types[x], x), *to)
            }
            Epilogue::Select {
                op,
                a,
                b,
                then,
                otherwise,
            } => {
                let mut xs = [0; 4];
                for (slot, x) in xs.iter_mut().zip([a, b, then, otherwise]) {
                    *slot = add(self, x)?;
                }
                if xs.iter().any(|&x| self.types[x] != DType::F32) {
                    return Err("an epilogue select on integers".into());
                }
                let node = self
                    .bound(*op, xs)
                    .unwrap_or(Node::Select(*op, xs[0], xs[1], xs[2], xs[3]));
                (node, DType::F32)
            }
            Epilogue::Call(f, args) => {
                let mut xs = vec![];
                for a in args {
                    xs.push(add(self, a)?);
                }
                (Node::Call(*f, xs), DType::F32)
            }
        };
        if let Some(&i) = memo.get(&node) {
            return Ok(i);
        }
        self.nodes.push(node.clone());
        self.types.push(ty);
        memo.insert(node, self.nodes.len() - 1);
        Ok(self.nodes.len() - 1)
    }

    /// The select `op(a, b) ? then : otherwise` (node ids `xs`) as a [`Node::Bound`] where it is
    /// one: `b` and `then` the same constant `c`, and `otherwise` either `a` or (a clamp's
    /// other side) the opposite bound `d` of `a` with `c` on the right side of `d` (`a < c ? c
    /// : min(d, a)` is `max(c, min(d, a))` when `c <= d`, NaN and signed zeros included).
    fn bound(&self, op: CmpOp, [a, b, then, otherwise]: [usize; 4]) -> Option<Node> {
        let (Node::Const(c), Node::Const(t)) = (&self.nodes[b], &self.nodes[then]) else {
            return None;
        };
        let (side, opposite) = match op {
            CmpOp::Lt => (Side::Lower, Side::Upper),
            CmpOp::Gt => (Side::Upper, Side::Lower),
            _ => return None,
        };
        if c != t || f32::from_bits(*c).is_nan() {
            return None;
        }
        let ordered = match &self.nodes[otherwise] {
            _ if otherwise == a => true,
            Node::Bound(s, d, x) if *s == opposite && *x == a => {
                let (c, d) = (f32::from_bits(*c), f32::from_bits(*d));
                match side {
                    Side::Lower => c <= d,
                    Side::Upper => d <= c,
                }
            }
            _ => false,
        };
        ordered.then_some(Node::Bound(side, *c, otherwise))
    }

    /// The type of the result.
    pub fn result_type(&self) -> DType {
        self.types.last().copied().unwrap_or(DType::F32)
    }

    fn root(&self) -> usize {
        self.nodes.len() - 1
    }

    /// Vector registers the program needs at once besides the accumulator (an upper bound of
    /// what [`Program::emit_block`] allocates per accumulator).
    pub fn registers(&self, avx2: bool) -> usize {
        let mut live = 0usize;
        let mut most = 0usize;
        for (i, n) in self.nodes.iter().enumerate() {
            let dying = n
                .distinct_operands()
                .iter()
                .filter(|&&o| self.last_use[o] == i && self.nodes[o] != Node::Acc)
                .count();
            let fresh = usize::from(*n != Node::Acc);
            most = most.max(live + fresh + n.scratch(avx2));
            live = live + fresh - dying;
        }
        most
    }

    /// Emits the program for several accumulators at once, operation by operation, each with
    /// the registers of its own [`Lane`]; the results are in each lane's `reg[root]`.
    fn emit_lanes(&self, asm: &mut Asm, lanes: &mut [Lane]) -> Result<(), String> {
        for i in 0..self.nodes.len() {
            for lane in lanes.iter_mut() {
                self.emit_node(asm, i, lane)?;
            }
        }
        Ok(())
    }

    /// Emits node `i` of the program for one accumulator.
    fn emit_node(&self, asm: &mut Asm, i: usize, lane: &mut Lane) -> Result<(), String> {
        let avx2 = asm.isa == super::asm::VecIsa::Avx2;
        let n = &self.nodes[i];
        let Lane { place, free, reg } = lane;
        let take = |free: &mut Vec<u8>| {
            free.pop()
                .ok_or_else(|| "epilogue out of registers".to_string())
        };
        let ops = n.operands();
        let dying: Vec<usize> = n
            .distinct_operands()
            .into_iter()
            .filter(|&o| self.last_use[o] == i)
            .collect();
        let release = |free: &mut Vec<u8>, reg: &[Option<u8>]| {
            for &o in &dying {
                if let Some(r) = reg[o] {
                    if !free.contains(&r) && (self.nodes[o] != Node::Acc) {
                        free.push(r);
                    }
                }
            }
        };
        if *n == Node::Acc {
            reg[i] = Some(place.acc);
            return Ok(());
        }
        // Scratch first: it must not alias an operand, even one that dies here.
        let mut scratch = vec![];
        for _ in 0..n.scratch(avx2) {
            scratch.push(take(free)?);
        }
        let tmp = scratch.first().copied();
        if n.may_overwrite_operand() {
            release(free, reg);
        }
        let d = take(free)?;
        let r = |k: usize| reg[ops[k]].ok_or_else(|| "operand without register".to_string());
        match n {
            Node::Acc => unreachable!("handled above"),
            Node::Const(bits) => asm.constant(d, f32::from_bits(*bits))?,
            Node::Input(k) => {
                let InputPtr {
                    reg: base,
                    row,
                    col,
                    reload,
                } = place.inputs[*k];
                if let Some(slot) = reload {
                    asm.a
                        .mov(base, qword_ptr(rdi + slot))
                        .map_err(|x| x.to_string())?;
                }
                let disp = row * place.m as i64 + col / 4 * asm.isa.bytes() * place.j as i64;
                let addr = Addr { base, disp };
                if col == 0 {
                    asm.bcast(d, addr)?;
                } else {
                    asm.load(d, addr, place.masked)?;
                }
            }
            Node::Bin(op, _, _) => {
                let (a, b) = (r(0)?, r(1)?);
                let arith = match op {
                    BinOp::Add => Arith::Add,
                    BinOp::Sub => Arith::Sub,
                    BinOp::Mul => Arith::Mul,
                    BinOp::Div => Arith::Div,
                    BinOp::Min => Arith::Min,
                    BinOp::Max => Arith::Max,
                    other => return Err(format!("epilogue operation {other:?}")),
                };
                asm.arith(arith, d, a, b)?;
                if matches!(op, BinOp::Min | BinOp::Max) {
                    asm.nan_from(d, a, tmp.unwrap_or(d))?;
                }
            }
            Node::Select(op, ..) => {
                let (a, b, t, o) = (r(0)?, r(1)?, r(2)?, r(3)?);
                // `!=` is true on NaN (unordered); the others are ordered.
                let pred = match op {
                    CmpOp::Eq => Pred::Eq,
                    CmpOp::Ne => Pred::Neq,
                    CmpOp::Lt => Pred::Lt,
                    CmpOp::Le => Pred::Le,
                    CmpOp::Gt => Pred::Gt,
                    CmpOp::Ge => Pred::Ge,
                };
                asm.select(pred, a, b, t, o, d, tmp.unwrap_or(d))?;
            }
            Node::Int(bits) => asm.constant(d, f32::from_bits(*bits))?,
            Node::Bound(side, bits, _) => {
                // `d` is fresh: the constant first, the operand second (kept on NaN).
                asm.constant(d, f32::from_bits(*bits))?;
                let op = match side {
                    Side::Lower => Arith::Max,
                    Side::Upper => Arith::Min,
                };
                asm.arith(op, d, d, r(0)?)?;
            }
            Node::IBin(op, _, _) => asm.int_arith(*op, d, r(0)?, r(1)?)?,
            Node::Cvt(to, from, _) => {
                let tmp = [scratch.first().copied(), scratch.get(1).copied()];
                asm.convert(*to, *from, d, r(0)?, tmp)?
            }
            Node::Call(f, _) => match f {
                Intrinsic::Abs => asm.abs(d, r(0)?)?,
                Intrinsic::Sqrt => asm.sqrt(d, r(0)?)?,
                Intrinsic::Round => asm.round(d, r(0)?, 0)?,
                Intrinsic::Floor => asm.round(d, r(0)?, 1)?,
                Intrinsic::Ceil => asm.round(d, r(0)?, 2)?,
                Intrinsic::Exp => asm.exp(d, r(0)?, [scratch[0], scratch[1], scratch[2]])?,
                Intrinsic::Sigmoid => {
                    asm.sigmoid(d, r(0)?, [scratch[0], scratch[1], scratch[2], scratch[3]])?
                }
                Intrinsic::Erf => asm.erf(
                    d,
                    r(0)?,
                    [scratch[0], scratch[1], scratch[2], scratch[3], scratch[4]],
                )?,
                Intrinsic::Fma => {
                    // `d` is fresh (fma never overwrites an operand): `d = x * y + c`.
                    let (x, y, c) = (r(0)?, r(1)?, r(2)?);
                    asm.mov(d, c)?;
                    asm.fma(d, x, super::asm::Src::Reg(y), false)?;
                }
                other => return Err(format!("epilogue call {other:?}")),
            },
        }
        reg[i] = Some(d);
        free.extend(scratch.iter().rev());
        if !n.may_overwrite_operand() {
            release(free, reg);
        }
        Ok(())
    }
}
