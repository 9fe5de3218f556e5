//! The closed set of graph operators, modelled on the TOSA v1.0 operator set.
//!
//! Layout convention: activations are NCHW and convolution weights OIHW (the ONNX layout), so that
//! import adds no transposes; layout changes are a later rewrite. Every op produces exactly one value.
//! Elementwise operands have equal rank and broadcast along dimensions of size 1 (TOSA rule).
//! Integer ops follow TOSA: zero points are explicit attributes, accumulation is in i32 and
//! requantisation is a separate RESCALE.

use crate::{ConstId, DType};
use serde::{Deserialize, Serialize};

/// Elementwise unary operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnaryOp {
    Abs,
    Negate,
    Exp,
    Log,
    Reciprocal,
    Rsqrt,
    Sqrt,
    Floor,
    Ceil,
    /// Round half to even.
    Round,
    Sin,
    Cos,
    Erf,
    Sigmoid,
    Tanh,
    Sign,
    LogicalNot,
    BitwiseNot,
    /// Bool result: true where the input is NaN.
    IsNan,
    /// Bool result: true where the input is +/- infinity.
    IsInf,
}

/// Elementwise binary operators (numpy broadcasting over equal ranks).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    /// Floats: IEEE division. Integers: TOSA INTDIV, truncation toward zero.
    Div,
    /// Floats: fmod (sign of the dividend). Integers: sign of the divisor (Python `%`).
    Mod,
    Pow,
    Maximum,
    Minimum,
    Equal,
    Greater,
    GreaterEqual,
    LogicalAnd,
    LogicalOr,
    LogicalXor,
    BitwiseAnd,
    BitwiseOr,
    BitwiseXor,
    LogicalLeftShift,
    LogicalRightShift,
    /// Sign-extending right shift; amounts outside `0..bits` give -1 for negative `a`, else 0.
    ArithmeticRightShift,
}

impl BinaryOp {
    /// Comparisons produce bool.
    pub fn is_comparison(self) -> bool {
        matches!(
            self,
            BinaryOp::Equal | BinaryOp::Greater | BinaryOp::GreaterEqual
        )
    }
}

/// Reductions along one axis (the axis is kept with size 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReduceOp {
    Sum,
    Max,
    Min,
    Product,
    All,
    Any,
}

/// Attributes of CONV2D and DEPTHWISE_CONV2D.
///
/// CONV2D: input `[N,C,H,W]`, weight `[O,C,KH,KW]`, bias `[O]` -> `[N,O,OH,OW]`.
/// DEPTHWISE_CONV2D: input `[N,C,H,W]`, weight `[C*M,1,KH,KW]`, bias `[C*M]`; output channel `o`
/// reads input channel `o / M`.
/// With [`DataLayout::Nhwc`] the input is `[N,H,W,C]` and the output `[N,OH,OW,O]` (the weights
/// stay OIHW); the values are the same, transposed.
/// Float inputs give the input dtype; integer inputs accumulate `(x - input_zp) * (w - weight_zp)`
/// in i32 and give i32 (the bias is i32).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ConvAttrs {
    /// `[top, bottom, left, right]`, zero padding (`input_zp` for integer inputs).
    pub pad: [usize; 4],
    pub stride: [usize; 2],
    pub dilation: [usize; 2],
    pub input_zp: i32,
    pub weight_zp: i32,
    /// The activation layout of input and output (omitted from the text form when NCHW).
    #[serde(skip_serializing_if = "DataLayout::is_nchw")]
    pub layout: DataLayout,
    /// An f32 CONV2D accumulates each output element as one fused-multiply-add chain from +0.0
    /// over `(c, ky, kx)` in that order (a tap in the padding reads 0.0), then adds the bias
    /// with one rounding: bit-exact with im2col + an SGEMM kernel that does so (onnxruntime's
    /// MLAS, one `k` block). Otherwise products and sums round separately, the bias may be
    /// added first, and compiled code may reorder and contract them.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub fma: bool,
}

/// The order of an activation tensor's axes: batch, channels, rows, columns (NCHW, the ONNX
/// layout every import produces) or channels last (NHWC, which the graph rewriter may choose for
/// convolution chains).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DataLayout {
    #[default]
    Nchw,
    Nhwc,
}

impl DataLayout {
    pub fn is_nchw(&self) -> bool {
        *self == DataLayout::Nchw
    }

    /// The permutation that takes an NCHW tensor to this layout (`transpose(x, perm)`).
    pub fn from_nchw(&self) -> [usize; 4] {
        match self {
            DataLayout::Nchw => [0, 1, 2, 3],
            DataLayout::Nhwc => [0, 2, 3, 1],
        }
    }

    /// The permutation that takes a tensor of this layout to NCHW.
    pub fn to_nchw(&self) -> [usize; 4] {
        match self {
            DataLayout::Nchw => [0, 1, 2, 3],
            DataLayout::Nhwc => [0, 3, 1, 2],
        }
    }

    /// The `[n, c, h, w]` dimensions of a shape in this layout (of rank 4).
    pub fn nchw_dims(&self, s: &[usize]) -> [usize; 4] {
        self.nchw_of(s)
    }

    /// The shape in this layout of NCHW dimensions `[n, c, h, w]`.
    pub fn shape(&self, nchw: [usize; 4]) -> Vec<usize> {
        self.shape_of(nchw)
    }

    /// Any per-axis items (dimensions, index expressions) given in NCHW order, in this layout's
    /// order.
    pub fn shape_of<T: Clone>(&self, nchw: [T; 4]) -> Vec<T> {
        self.from_nchw().iter().map(|&a| nchw[a].clone()).collect()
    }

    /// The items of this layout's axes (at least 4; the first 4 are used) in NCHW order.
    pub fn nchw_of<T: Clone>(&self, axes: &[T]) -> [T; 4] {
        let p = self.to_nchw();
        [0, 1, 2, 3].map(|i| axes[p[i]].clone())
    }
}

/// Attributes of TRANSPOSE_CONV2D: input `[N,C,H,W]`, weight `[C,O,KH,KW]`, bias `[O]`.
/// The full output is `stride*(H-1) + dilation*(KH-1) + 1 + out_pad` high, from which `pad`
/// rows/columns are removed (ONNX ConvTranspose semantics).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TransposeConvAttrs {
    /// `[top, bottom, left, right]` cropped from the full output.
    pub pad: [usize; 4],
    /// Extra rows/columns `[bottom, right]` added to the output.
    pub out_pad: [usize; 2],
    pub stride: [usize; 2],
    pub dilation: [usize; 2],
    pub input_zp: i32,
    pub weight_zp: i32,
}

/// Attributes of MATMUL: `[B,M,K] x [B,K,N] -> [B,M,N]`; integer inputs accumulate
/// `(a - a_zp) * (b - b_zp)` in i32.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct MatMulAttrs {
    pub a_zp: i32,
    pub b_zp: i32,
    /// Floats accumulate as one fused-multiply-add chain per output element, in `k` order from
    /// +0.0 (each product added with one rounding): bit-exact with BLAS kernels that do so, such
    /// as MLAS's SGEMM. Otherwise the product and the sum are rounded separately and compiled
    /// code may contract them.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub fma: bool,
}

/// Attributes of AVG_POOL2D and MAX_POOL2D over NCHW input.
///
/// With `ceil_mode` the output size rounds up, but a window must start inside the input or the
/// top/left padding. Windows never read padding in MAX_POOL2D. AVG_POOL2D divides by the number
/// of window positions inside the input, or inside the padded input when `count_include_pad`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct PoolAttrs {
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    /// `[top, bottom, left, right]`.
    pub pad: [usize; 4],
    pub dilation: [usize; 2],
    pub ceil_mode: bool,
    pub count_include_pad: bool,
    /// The activation layout of input and output (omitted from the text form when NCHW).
    #[serde(skip_serializing_if = "DataLayout::is_nchw")]
    pub layout: DataLayout,
}

/// Padding modes of PAD.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum PadMode {
    #[default]
    Constant,
    Reflect,
    Edge,
}

/// Rounding of RESCALE.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum RoundingMode {
    /// Round half up, once (TOSA SINGLE_ROUND).
    #[default]
    Single,
    /// TOSA DOUBLE_ROUND (gemmlowp compatible).
    Double,
}

/// Attributes of RESCALE (TOSA v1.0): `out = clamp(apply_scale(x - input_zp, multiplier, shift)
/// + output_zp)` in the range of `to`. One multiplier/shift pair per channel along
/// `channel_axis`, or a single pair.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RescaleAttrs {
    pub to: DType,
    pub multiplier: Vec<i32>,
    pub shift: Vec<u8>,
    pub input_zp: i32,
    pub output_zp: i32,
    /// 32-bit multipliers when true, 16-bit otherwise.
    pub scale32: bool,
    pub rounding: RoundingMode,
    /// Axis that indexes the multiplier and shift vectors when there are more than one.
    pub channel_axis: Option<usize>,
}

/// Interpolation of RESIZE.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ResizeMode {
    #[default]
    Nearest,
    Linear,
    Cubic,
}

/// How RESIZE maps an output coordinate to an input coordinate (ONNX names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum CoordinateTransform {
    #[default]
    HalfPixel,
    HalfPixelSymmetric,
    PytorchHalfPixel,
    AlignCorners,
    Asymmetric,
    TfCropAndResize,
}

/// How nearest-neighbour RESIZE rounds a coordinate (ONNX names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum NearestRounding {
    #[default]
    RoundPreferFloor,
    RoundPreferCeil,
    Floor,
    Ceil,
}

/// Attributes of RESIZE: separable interpolation of every axis to `size`, with ONNX coordinate
/// semantics. `scales[i]` is the scale used by the coordinate transform of axis `i`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ResizeAttrs {
    pub size: Vec<usize>,
    pub scales: Vec<f32>,
    pub mode: ResizeMode,
    pub coordinate_transform: CoordinateTransform,
    pub nearest_rounding: NearestRounding,
    pub cubic_coeff_a: f32,
    pub exclude_outside: bool,
    pub extrapolation_value: f32,
    /// Region of interest `[starts..., ends...]` for `tf_crop_and_resize`, normalised.
    pub roi: Vec<f32>,
}

impl Eq for ResizeAttrs {}
impl std::hash::Hash for ResizeAttrs {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.size.hash(state);
        for s in self.scales.iter().chain(&self.roi) {
            s.to_bits().hash(state);
        }
        self.mode.hash(state);
        self.coordinate_transform.hash(state);
        self.nearest_rounding.hash(state);
        self.cubic_coeff_a.to_bits().hash(state);
        self.exclude_outside.hash(state);
        self.extrapolation_value.to_bits().hash(state);
    }
}

/// A graph operator with its attributes. Operands are listed per variant.
///
/// The serde form (externally tagged, snake_case) is what the text form's attribute objects are
/// made from; see [`crate::text`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// A weight from the graph's constant table. No operands.
    Const(ConstId),
    /// `(x)`: returns x.
    Identity,
    /// `(x)`: elementwise unary.
    Unary(UnaryOp),
    /// `(a, b)`: elementwise binary.
    Binary(BinaryOp),
    /// `(x)`: `min(max(x, min), max)`; bounds are stored as f64 and converted to the dtype.
    Clamp { min: OrderedF64, max: OrderedF64 },
    /// `(cond: bool, a, b)`: `cond ? a : b`, broadcast.
    Select,
    /// `(a, b, c)`: `a * b + c` rounded once (a fused multiply-add), broadcast; f32 or f64.
    MulAdd,
    /// `(input, weight, bias)`.
    Conv2d(ConvAttrs),
    /// `(input, weight, bias)`.
    DepthwiseConv2d(ConvAttrs),
    /// `(input, weight, bias)`.
    TransposeConv2d(TransposeConvAttrs),
    /// `(a, b)`.
    #[serde(rename = "matmul")]
    MatMul(MatMulAttrs),
    /// `(x)`.
    AvgPool2d(PoolAttrs),
    /// `(x)`.
    MaxPool2d(PoolAttrs),
    /// `(x)`: index of the first maximum along `axis`, which is removed; i32 result.
    #[serde(rename = "argmax")]
    ArgMax { axis: usize },
    /// `(x)`: reduction along `axis`, which is kept with size 1.
    Reduce { kind: ReduceOp, axis: usize },
    /// `(x)`: same elements, new shape of equal element count.
    Reshape { shape: Vec<usize> },
    /// `(x)`: output dim `i` is input dim `perm[i]`.
    Transpose { perm: Vec<usize> },
    /// `(x0, x1, ...)`: concatenation along `axis`.
    Concat { axis: usize },
    /// `(x)`: `out[i] = x[start + i * stride]` per axis, `size` elements per axis.
    Slice {
        start: Vec<usize>,
        size: Vec<usize>,
        stride: Vec<usize>,
    },
    /// `(x)`: pads `[before, after]` per axis.
    Pad {
        pads: Vec<[usize; 2]>,
        mode: PadMode,
        value: OrderedF64,
    },
    /// `(x)`: repeats the tensor `multiples[i]` times along each axis.
    Tile { multiples: Vec<usize> },
    /// `(x)`: reverses the order of elements along `axis`.
    Reverse { axis: usize },
    /// `(data, indices: i32|i64)`: ONNX Gather along `axis`; negative indices count from the end.
    Gather { axis: usize },
    /// `(data, indices: i32|i64)`: ONNX GatherElements along `axis`.
    GatherElements { axis: usize },
    /// `(x)`: conversion with ONNX Cast semantics (float to integer truncates toward zero).
    Cast { to: DType },
    /// `(x)`: integer requantisation.
    Rescale(RescaleAttrs),
    /// `(x: i8, table: i8[256])`: `out = table[x + 128]`.
    Table,
    /// `(x)`.
    Resize(ResizeAttrs),
}

/// An f64 attribute with bitwise equality and hashing, so ops can be compared and hashed.
/// Serialised as a JSON number, or as the string `"inf"`, `"-inf"` or `"nan"`.
#[derive(Clone, Copy, Debug, Default)]
pub struct OrderedF64(pub f64);

impl Serialize for OrderedF64 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0.is_finite() {
            s.serialize_f64(self.0)
        } else if self.0.is_nan() {
            s.serialize_str("nan")
        } else if self.0 > 0.0 {
            s.serialize_str("inf")
        } else {
            s.serialize_str("-inf")
        }
    }
}

impl<'de> Deserialize<'de> for OrderedF64 {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Num(f64),
            Text(String),
        }
        match Repr::deserialize(d)? {
            Repr::Num(v) => Ok(OrderedF64(v)),
            Repr::Text(t) => match t.as_str() {
                "inf" => Ok(OrderedF64(f64::INFINITY)),
                "-inf" => Ok(OrderedF64(f64::NEG_INFINITY)),
                "nan" => Ok(OrderedF64(f64::NAN)),
                other => Err(serde::de::Error::custom(format!("not a number: {other}"))),
            },
        }
    }
}

impl PartialEq for OrderedF64 {
    fn eq(&self, other: &Self) -> bool {
        self.0.to_bits() == other.0.to_bits()
    }
}
impl Eq for OrderedF64 {}
impl std::hash::Hash for OrderedF64 {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.to_bits().hash(state)
    }
}

impl Op {
    /// Arithmetic operations the op performs for operands of `inputs` types and a result of
    /// type `output`: a multiply-add counts two (convolutions, matmuls), other ops one per
    /// output element, movement ops none. What profiles report as FLOPs and the roofline cost
    /// charges.
    pub fn flops(&self, inputs: &[&crate::TensorType], output: &crate::TensorType) -> f64 {
        let out = output.num_elements() as f64;
        match self {
            Op::Conv2d(_) | Op::DepthwiseConv2d(_) | Op::TransposeConv2d(_) => {
                let w = inputs
                    .get(1)
                    .map_or(1.0, |w| w.shape.iter().skip(1).product::<usize>() as f64);
                2.0 * out * w
            }
            Op::MatMul(_) => {
                let k = inputs
                    .first()
                    .and_then(|a| a.shape.last())
                    .copied()
                    .unwrap_or(1);
                2.0 * out * k as f64
            }
            Op::Const(_)
            | Op::Identity
            | Op::Reshape { .. }
            | Op::Transpose { .. }
            | Op::Concat { .. }
            | Op::Slice { .. }
            | Op::Pad { .. }
            | Op::Tile { .. }
            | Op::Reverse { .. }
            | Op::Gather { .. }
            | Op::GatherElements { .. } => 0.0,
            _ => out,
        }
    }

    /// The op's name in the text form.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Const(_) => "const",
            Op::Identity => "identity",
            Op::Unary(u) => unary_name(*u),
            Op::Binary(b) => binary_name(*b),
            Op::Clamp { .. } => "clamp",
            Op::Select => "select",
            Op::MulAdd => "mul_add",
            Op::Conv2d(_) => "conv2d",
            Op::DepthwiseConv2d(_) => "depthwise_conv2d",
            Op::TransposeConv2d(_) => "transpose_conv2d",
            Op::MatMul(_) => "matmul",
            Op::AvgPool2d(_) => "avg_pool2d",
            Op::MaxPool2d(_) => "max_pool2d",
            Op::ArgMax { .. } => "argmax",
            Op::Reduce { kind, .. } => match kind {
                ReduceOp::Sum => "reduce_sum",
                ReduceOp::Max => "reduce_max",
                ReduceOp::Min => "reduce_min",
                ReduceOp::Product => "reduce_product",
                ReduceOp::All => "reduce_all",
                ReduceOp::Any => "reduce_any",
            },
            Op::Reshape { .. } => "reshape",
            Op::Transpose { .. } => "transpose",
            Op::Concat { .. } => "concat",
            Op::Slice { .. } => "slice",
            Op::Pad { .. } => "pad",
            Op::Tile { .. } => "tile",
            Op::Reverse { .. } => "reverse",
            Op::Gather { .. } => "gather",
            Op::GatherElements { .. } => "gather_elements",
            Op::Cast { .. } => "cast",
            Op::Rescale(_) => "rescale",
            Op::Table => "table",
            Op::Resize(_) => "resize",
        }
    }
}

macro_rules! name_table {
    ($fn_name:ident, $parse:ident, $ty:ident { $($v:ident => $s:literal),* $(,)? }) => {
        /// The text-form name of the operator.
        pub fn $fn_name(op: $ty) -> &'static str {
            match op { $($ty::$v => $s),* }
        }
        /// The operator with a text-form name.
        pub fn $parse(name: &str) -> Option<$ty> {
            match name { $($s => Some($ty::$v),)* _ => None }
        }
    };
}

name_table!(unary_name, parse_unary, UnaryOp {
    Abs => "abs", Negate => "negate", Exp => "exp", Log => "log", Reciprocal => "reciprocal",
    Rsqrt => "rsqrt", Sqrt => "sqrt", Floor => "floor", Ceil => "ceil", Round => "round",
    Sin => "sin", Cos => "cos", Erf => "erf", Sigmoid => "sigmoid", Tanh => "tanh",
    Sign => "sign", LogicalNot => "logical_not", BitwiseNot => "bitwise_not",
    IsNan => "is_nan", IsInf => "is_inf",
});

name_table!(binary_name, parse_binary, BinaryOp {
    Add => "add", Sub => "sub", Mul => "mul", Div => "div", Mod => "mod", Pow => "pow",
    Maximum => "maximum", Minimum => "minimum", Equal => "equal", Greater => "greater",
    GreaterEqual => "greater_equal", LogicalAnd => "logical_and", LogicalOr => "logical_or",
    LogicalXor => "logical_xor", BitwiseAnd => "bitwise_and", BitwiseOr => "bitwise_or",
    BitwiseXor => "bitwise_xor", LogicalLeftShift => "logical_left_shift",
    LogicalRightShift => "logical_right_shift",
    ArithmeticRightShift => "arithmetic_right_shift",
});
