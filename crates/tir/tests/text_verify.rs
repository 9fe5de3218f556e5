//! Text form round trips (examples and proptest) and verifier rejections.

use kiln_ir::{DType, Tensor};
use kiln_tir::{
    interp, parse_func, verify, BinOp, BufferId, CmpOp, Expr, ForKind, Intrinsic, PrimFunc, Stmt,
    VarId, VerifyError,
};
use proptest::prelude::*;

const EXAMPLE: &str = "func @conv(%in: f32[1,3,8,8] param, %w: f32[4,3,3,3] param, %out: f32[1,4,6,6] param) {
  for.parallel i0 in 0..4 {
    for i1 in 0..6 {
      for i2 in 0..6 {
        %out[0, i0, i1, i2] = 0.0_f32
        for rc in 0..3 {
          for ry in 0..3 {
            for.unrolled rx in 0..3 {
              %out[0, i0, i1, i2] = %out[0, i0, i1, i2] + %in[0, rc, i1 + ry, i2 + rx] * %w[i0, rc, ry, rx]
            }
          }
        }
      }
    }
  }
}
";

#[test]
fn example_parses_verifies_and_round_trips() {
    let f = parse_func(EXAMPLE).unwrap();
    verify(&f).unwrap();
    assert_eq!(f.to_string(), EXAMPLE);
    let x = Tensor::new(vec![1, 3, 8, 8], (0..192).map(|v| (v % 5) as f32).collect()).unwrap();
    let w = Tensor::new(
        vec![4, 3, 3, 3],
        (0..108).map(|v| (v % 3) as f32 - 1.0).collect(),
    )
    .unwrap();
    let o = Tensor::new(vec![1, 4, 6, 6], vec![0f32; 144]).unwrap();
    let mut args = [x.clone(), w.clone(), o];
    interp::run(&f, &mut args).unwrap();
    let (xs, ws) = (x.as_slice::<f32>().unwrap(), w.as_slice::<f32>().unwrap());
    let mut want = vec![0f32; 144];
    for o in 0..4 {
        for y in 0..6 {
            for xx in 0..6 {
                let mut acc = 0f32;
                for c in 0..3 {
                    for ky in 0..3 {
                        for kx in 0..3 {
                            acc += xs[(c * 8 + y + ky) * 8 + xx + kx]
                                * ws[((o * 3 + c) * 3 + ky) * 3 + kx];
                        }
                    }
                }
                want[(o * 6 + y) * 6 + xx] = acc;
            }
        }
    }
    assert_eq!(args[2].as_slice::<f32>().unwrap(), want.as_slice());
}

#[test]
fn expression_syntax_round_trips() {
    let text = "func @e(%a: i32[4] param, %b: f16[] param, %c: bool[2,2] param) {
  local %t: u8[3]
  for i in 0..4 {
    if i // 2 == 1 && !(i % 2 != 0) || i < -3 {
      %a[i] = rem(%a[i] - -3_i32, 2_i32) * (1_i32 + %a[3 - i]) / max(min(%a[i], 5_i32), 1_i32)
    } else {
      %b[] = fma(sqrt(%b[]), -inf_f16, exp(1.5e-7_f16)) - (1.0_f16 - cast.f16(i))
    }
    %c[i // 2, i % 2] = select(i >= 2, true, !false)
    for.vectorized j in 0..2 {
      %t[j] = abs(cast.u8(i * j))
    }
  }
}
";
    let f = parse_func(text).unwrap();
    assert_eq!(f.to_string(), text);
    verify(&f).unwrap();
}

#[test]
fn parse_errors_are_reported_not_panics() {
    for bad in [
        "",
        "func",
        "func @f(",
        "func @f() { %x[0] = 1 }",
        "func @f(%a: f32[2] param) { for i in 1..2 { } }",
        "func @f(%a: f32[2] param) { %a[j] = 1.0_f32 }",
        "func @f(%a: f32[2] param) { %a[0] = 1.0 }",
        "func @f(%a: f32[2] param) { %a[0] = 99999999999999999999 }",
        "func @f(%a: f32[2] param) { %a[0] = exp(1.0_f32, 2.0_f32) }",
        "func @f(%a: f32[2] param, %a: f32[2] param) { }",
        "func @f(%a: q32[2] param) { }",
        "func @f(%a: f32[2] param) { } trailing",
        "func @f(%a: f32[2] param) { %a[0] = ((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((1 }",
        "func @f(%a: f32[2] param) { $ }",
    ] {
        assert!(parse_func(bad).is_err(), "accepted: {bad}");
    }
}

fn store_loop(extent: usize, index: Expr, kind: ForKind) -> PrimFunc {
    let mut f = PrimFunc::new("f");
    let a = f.add_param("a", DType::F32, vec![8]);
    let i = f.new_var("i");
    let idx = index.substitute(&|_| Some(Expr::Var(i)));
    f.body = Stmt::for_(i, extent, kind, Stmt::store(a, vec![idx], Expr::f32(1.0)));
    f
}

#[test]
fn verifier_rejects_out_of_bounds() {
    verify(&store_loop(8, Expr::Var(VarId(0)), ForKind::Serial)).unwrap();
    let err = verify(&store_loop(9, Expr::Var(VarId(0)), ForKind::Serial)).unwrap_err();
    assert!(
        matches!(&err, VerifyError::OutOfBounds { buffer, dim: 0, extent: 8, .. } if buffer == "a"),
        "{err}"
    );
    assert!(err.to_string().contains("loop `i`"), "{err}");
    let err = verify(&store_loop(
        4,
        Expr::Var(VarId(0)) * Expr::int(2) + Expr::int(1),
        ForKind::Serial,
    ))
    .map(|_| ());
    assert!(err.is_ok());
    let err = verify(&store_loop(
        4,
        Expr::Var(VarId(0)) - Expr::int(1),
        ForKind::Serial,
    ))
    .unwrap_err();
    assert!(matches!(err, VerifyError::OutOfBounds { .. }), "{err}");
    // A guard makes it provable.
    let text = "func @f(%a: f32[8] param) { for i in 0..3 { for j in 0..4 { if i * 4 + j < 8 { %a[i * 4 + j] = 1.0_f32 } } } }";
    verify(&parse_func(text).unwrap()).unwrap();
    let text =
        "func @f(%a: f32[8] param) { for i in 0..3 { for j in 0..4 { %a[i * 4 + j] = 1.0_f32 } } }";
    assert!(matches!(
        verify(&parse_func(text).unwrap()),
        Err(VerifyError::OutOfBounds { .. })
    ));
    let text = "func @f(%a: f32[8] param) { for i in 0..10 { %a[0] = select(i - 1 >= 0 && i - 1 < 8, %a[i - 1], 0.0_f32) } }";
    verify(&parse_func(text).unwrap()).unwrap();
}

#[test]
fn verifier_rejects_unbound_and_rebound_vars_and_types() {
    let mut f = store_loop(8, Expr::Var(VarId(0)), ForKind::Serial);
    let j = f.new_var("j");
    f.body = Stmt::store(BufferId(0), vec![Expr::Var(j)], Expr::f32(1.0));
    assert!(matches!(verify(&f), Err(VerifyError::UnboundVar { ref name, .. }) if name == "j"));
    let mut f = store_loop(8, Expr::Var(VarId(0)), ForKind::Serial);
    f.body = Stmt::seq(vec![f.body.clone(), f.body.clone()]);
    assert!(matches!(verify(&f), Err(VerifyError::Rebound { .. })));
    let mut f = store_loop(8, Expr::Var(VarId(0)), ForKind::Serial);
    if let Stmt::For { body, .. } = &mut f.body {
        **body = Stmt::store(BufferId(0), vec![Expr::Var(VarId(0))], Expr::int(1));
    }
    assert!(matches!(verify(&f), Err(VerifyError::Type { .. })));
    let mut f = store_loop(8, Expr::Var(VarId(0)), ForKind::Serial);
    if let Stmt::For { body, .. } = &mut f.body {
        **body = Stmt::store(BufferId(0), vec![Expr::f32(0.0)], Expr::f32(1.0));
    }
    assert!(matches!(verify(&f), Err(VerifyError::Type { .. })));
    let mut f = store_loop(8, Expr::Var(VarId(0)), ForKind::Serial);
    f.params.clear();
    assert!(matches!(verify(&f), Err(VerifyError::BadParams(_))));
}

#[test]
fn verifier_rejects_bad_vectorize_and_parallel() {
    verify(&store_loop(8, Expr::Var(VarId(0)), ForKind::Vectorized)).unwrap();
    // Any extent of 2 or more (4-lane chunks and a scalar tail), not 1.
    verify(&store_loop(6, Expr::Var(VarId(0)), ForKind::Vectorized)).unwrap();
    let err = verify(&store_loop(1, Expr::Var(VarId(0)), ForKind::Vectorized)).unwrap_err();
    assert!(
        matches!(&err, VerifyError::BadLoop { name, .. } if name == "i"),
        "{err}"
    );
    let text = "func @f(%a: f32[4,4] param) { for.vectorized i in 0..4 { for j in 0..4 { %a[i, j] = 1.0_f32 } } }";
    let err = verify(&parse_func(text).unwrap()).unwrap_err();
    assert!(err.to_string().contains("nested loop"), "{err}");
    let text =
        "func @f(%a: f32[4] param) { for.vectorized i in 0..4 { if i < 2 { %a[i] = 1.0_f32 } } }";
    assert!(verify(&parse_func(text).unwrap()).is_err());
    let text = "func @f(%a: f32[4,4] param) { for.parallel i in 0..4 { for.parallel j in 0..4 { %a[i, j] = 1.0_f32 } } }";
    assert!(verify(&parse_func(text).unwrap()).is_err());
}

#[test]
fn interpreter_int_semantics() {
    let text = "func @f(%a: i8[6] param, %b: i64[4] param) {
  %a[0] = 127_i8 + 1_i8
  %a[1] = -7_i8 / 2_i8
  %a[2] = rem(-7_i8, 2_i8)
  %a[3] = cast.i8(300.5_f32)
  %a[4] = cast.i8(300)
  %a[5] = abs(-128_i8)
  %b[0] = -7 // 2
  %b[1] = -7 % 2
  %b[2] = 7 % -2
  %b[3] = cast.i64(max(nan_f32, 1.0_f32) != max(nan_f32, 1.0_f32))
}
";
    let f = parse_func(text).unwrap();
    let mut args = [
        Tensor::new(vec![6], vec![0i8; 6]).unwrap(),
        Tensor::new(vec![4], vec![0i64; 4]).unwrap(),
    ];
    interp::run(&f, &mut args).unwrap();
    assert_eq!(
        args[0].as_slice::<i8>().unwrap(),
        &[-128, -3, -1, 127, 44, -128]
    );
    assert_eq!(args[1].as_slice::<i64>().unwrap(), &[-4, 1, -1, 1]);
    let f = parse_func("func @f(%a: i32[1] param) { %a[0] = 1_i32 / (%a[0] - %a[0]) }").unwrap();
    let mut args = [Tensor::new(vec![1], vec![3i32]).unwrap()];
    assert!(matches!(
        interp::run(&f, &mut args),
        Err(interp::InterpError::DivisionByZero)
    ));
}

// ---- proptest: random functions print and parse back to their canonical form ----

#[derive(Clone, Debug)]
enum E {
    Var(usize),
    Int(i64),
    Float(f32),
    Bool(bool),
    Bin(u8, Box<E>, Box<E>),
    Cmp(u8, Box<E>, Box<E>),
    And(Box<E>, Box<E>),
    Not(Box<E>),
    Select(Box<E>, Box<E>, Box<E>),
    Cast(Box<E>),
    Load(Vec<E>),
    Call(u8, Vec<E>),
}

fn arb_e() -> impl Strategy<Value = E> {
    let leaf = prop_oneof![
        (0usize..4).prop_map(E::Var),
        any::<i64>().prop_map(E::Int),
        any::<f32>()
            .prop_filter("no NaN", |x| !x.is_nan())
            .prop_map(E::Float),
        any::<bool>().prop_map(E::Bool),
    ];
    leaf.prop_recursive(4, 32, 3, |inner| {
        prop_oneof![
            (0u8..9, inner.clone(), inner.clone()).prop_map(|(o, a, b)| E::Bin(
                o,
                Box::new(a),
                Box::new(b)
            )),
            (0u8..6, inner.clone(), inner.clone()).prop_map(|(o, a, b)| E::Cmp(
                o,
                Box::new(a),
                Box::new(b)
            )),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| E::And(Box::new(a), Box::new(b))),
            inner.clone().prop_map(|a| E::Not(Box::new(a))),
            (inner.clone(), inner.clone(), inner.clone()).prop_map(|(a, b, c)| E::Select(
                Box::new(a),
                Box::new(b),
                Box::new(c)
            )),
            inner.clone().prop_map(|a| E::Cast(Box::new(a))),
            proptest::collection::vec(inner.clone(), 2).prop_map(E::Load),
            (0u8..15, proptest::collection::vec(inner, 3)).prop_map(|(i, a)| E::Call(i, a)),
        ]
    })
}

fn build(e: &E, vars: &[VarId]) -> Expr {
    let ops = [
        BinOp::Add,
        BinOp::Sub,
        BinOp::Mul,
        BinOp::Div,
        BinOp::FloorDiv,
        BinOp::FloorMod,
        BinOp::Rem,
        BinOp::Min,
        BinOp::Max,
    ];
    let cmps = [
        CmpOp::Eq,
        CmpOp::Ne,
        CmpOp::Lt,
        CmpOp::Le,
        CmpOp::Gt,
        CmpOp::Ge,
    ];
    let b = |x: &E| build(x, vars);
    match e {
        E::Var(i) => vars.get(*i).map_or(Expr::int(*i as i64), |v| Expr::Var(*v)),
        E::Int(v) => Expr::int_of(*v, if v % 2 == 0 { DType::I64 } else { DType::I32 }),
        E::Float(x) => Expr::f32(*x),
        E::Bool(v) => Expr::Bool(*v),
        E::Bin(o, x, y) => Expr::binary(ops[*o as usize], b(x), b(y)),
        E::Cmp(o, x, y) => Expr::cmp(cmps[*o as usize], b(x), b(y)),
        E::And(x, y) => Expr::and(b(x), b(y)),
        E::Not(x) => Expr::not(b(x)),
        E::Select(c, x, y) => Expr::select(b(c), b(x), b(y)),
        E::Cast(x) => Expr::cast(DType::F16, b(x)),
        E::Load(i) => Expr::load(BufferId(1), i.iter().map(b).collect()),
        E::Call(i, a) => {
            let f = Intrinsic::ALL[*i as usize];
            Expr::call(f, a[..f.arity()].iter().map(b).collect())
        }
    }
}

#[derive(Clone, Debug)]
enum S {
    For(u8, usize, Box<S>),
    Seq(Vec<S>),
    Store(E, E),
    If(E, Box<S>, Option<Box<S>>),
}

fn arb_s() -> impl Strategy<Value = S> {
    let leaf = (arb_e(), arb_e()).prop_map(|(a, b)| S::Store(a, b));
    leaf.prop_recursive(4, 16, 3, |inner| {
        prop_oneof![
            (0u8..4, 1usize..20, inner.clone()).prop_map(|(k, e, b)| S::For(k, e, Box::new(b))),
            proptest::collection::vec(inner.clone(), 0..3).prop_map(S::Seq),
            (arb_e(), inner.clone(), proptest::option::of(inner)).prop_map(|(c, t, o)| S::If(
                c,
                Box::new(t),
                o.map(Box::new)
            )),
        ]
    })
}

fn build_s(s: &S, f: &mut PrimFunc, vars: &mut Vec<VarId>) -> Stmt {
    match s {
        S::For(k, e, body) => {
            let v = f.new_var(format!("i{}", vars.len() % 3));
            vars.push(v);
            let body = build_s(body, f, vars);
            vars.pop();
            let kind = [
                ForKind::Serial,
                ForKind::Parallel,
                ForKind::Vectorized,
                ForKind::Unrolled,
            ][*k as usize];
            Stmt::for_(v, *e, kind, body)
        }
        S::Seq(v) => Stmt::Seq(v.iter().map(|s| build_s(s, f, vars)).collect()),
        S::Store(i, v) => Stmt::store(BufferId(0), vec![build(i, vars)], build(v, vars)),
        S::If(c, t, o) => Stmt::IfThenElse {
            cond: build(c, vars),
            then: Box::new(build_s(t, f, vars)),
            otherwise: o.as_ref().map(|o| Box::new(build_s(o, f, vars))),
        },
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_functions_round_trip(s in arb_s()) {
        let mut f = PrimFunc::new("rt");
        f.add_param("out", DType::F32, vec![4]);
        f.add_param("inp", DType::I32, vec![3, 5]);
        f.add_local("scratch", DType::Bool, vec![]);
        let body = build_s(&s, &mut f, &mut vec![]);
        f.body = body;
        let text = f.to_string();
        let back = parse_func(&text).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        prop_assert_eq!(&back, &f.canonicalize(), "{}", text);
        prop_assert_eq!(back.to_string(), text);
        // The verifier and interpreter never panic on arbitrary (mostly ill-typed) functions.
        let _ = verify(&back);
        let mut args = [Tensor::new(vec![4], vec![0f32; 4]).unwrap(), Tensor::new(vec![3, 5], vec![1i32; 15]).unwrap()];
        let _ = interp::run(&back, &mut args);
    }

    #[test]
    fn arbitrary_text_never_panics(s in "\\PC{0,200}") {
        let _ = parse_func(&s);
        let _ = parse_func(&format!("func @f(%a: f32[4] param) {{ {s} }}"));
    }
}
