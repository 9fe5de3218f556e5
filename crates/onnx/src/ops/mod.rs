//! Per-op-family mappings from ONNX nodes to IR ops; this module only dispatches on the op type.
//!
//! Invariant: a mapping returns one IR value per ONNX output it supports (in output order; later
//! optional outputs may be left out, which makes reading them an error), or a [`NodeError`]
//! explaining what is unsupported or invalid. Mappings never panic on any attribute or shape.

use crate::builder::{unsupported, Builder, NResult};
use crate::node::NodeCx;
use kiln_ir::ValueId;

mod activation;
mod attention;
mod cast;
mod conv;
mod crop;
mod cumulative;
mod einsum;
mod elementwise;
mod encode;
mod grid_sample;
mod linear_attention;
mod loss;
mod matmul;
mod mlas_conv;
mod nms;
mod norm;
mod pool;
mod qdq;
mod qdq_ort;
mod quant;
mod recurrent;
mod reduce;
mod resize;
mod scatter;
mod select;
mod shape;
mod signal;
mod topk;

pub(crate) use mlas_conv::conv as mlas_order_conv;
pub(crate) use qdq::{dequantized_magnitudes, fuse_quantize, QdqGraph};

/// The RESCALE multiplier and shift of a real scale (exposed for the unit tests).
#[cfg(test)]
pub(crate) fn quantize_multiplier_for_tests(scale: f64) -> Option<(i32, u8)> {
    quant::quantize_multiplier(scale)
}

/// Maps one node; returns its output values.
pub(crate) fn map_node(b: &mut Builder, cx: &NodeCx) -> NResult<Vec<ValueId>> {
    let one = |r: NResult<ValueId>| r.map(|v| vec![v]);
    match cx.op_type {
        "Add" | "Sub" | "Mul" | "Div" | "Pow" | "Mod" | "Equal" | "Greater" | "Less"
        | "GreaterOrEqual" | "LessOrEqual" | "And" | "Or" | "Xor" | "BitShift" | "BitwiseAnd"
        | "BitwiseOr" | "BitwiseXor" => one(elementwise::binary(b, cx)),
        "Max" | "Min" | "Sum" | "Mean" => one(elementwise::variadic(b, cx)),
        "Abs" | "Neg" | "Exp" | "Log" | "Reciprocal" | "Sqrt" | "Floor" | "Ceil" | "Round"
        | "Sin" | "Cos" | "Tan" | "Erf" | "Sigmoid" | "Tanh" | "Sign" | "IsNaN" | "IsInf"
        | "Not" | "BitwiseNot" | "Sinh" | "Cosh" | "Asinh" | "Acosh" | "Atanh" => {
            one(elementwise::unary(b, cx))
        }
        "Where" => one(elementwise::where_(b, cx)),
        "Clip" => one(activation::clip(b, cx)),
        "Relu" | "LeakyRelu" | "PRelu" | "Elu" | "Selu" | "Celu" | "Softplus" | "Softsign"
        | "HardSigmoid" | "HardSwish" | "Gelu" | "Mish" | "ThresholdedRelu" | "Shrink"
        | "Swish" => one(activation::activation(b, cx)),
        "SwiGLU" => one(activation::swiglu(b, cx)),
        "Conv" => one(conv::conv(b, cx)),
        "ConvTranspose" => one(conv::conv_transpose(b, cx)),
        "CausalConvWithState" => conv::causal_conv_with_state(b, cx),
        "MaxPool" | "AveragePool" | "LpPool" => one(pool::pool(b, cx)),
        "GlobalAveragePool" | "GlobalMaxPool" => one(pool::global_pool(b, cx)),
        "MatMul" => one(matmul::matmul(b, cx)),
        "Einsum" => one(einsum::einsum(b, cx)),
        "Gemm" => one(matmul::gemm(b, cx)),
        "BatchNormalization" => one(norm::batch_norm(b, cx)),
        "InstanceNormalization" => one(norm::instance_norm(b, cx)),
        "LayerNormalization" => norm::layer_norm(b, cx),
        "RMSNormalization" => one(norm::rms_norm(b, cx)),
        "LRN" => one(norm::lrn(b, cx)),
        "LpNormalization" => one(norm::lp_normalization(b, cx)),
        "MeanVarianceNormalization" => one(norm::mean_variance_normalization(b, cx)),
        "GroupNormalization" => one(norm::group_normalization(b, cx)),
        "Attention" => attention::attention(b, cx),
        "RotaryEmbedding" => one(attention::rotary_embedding(b, cx)),
        "LinearAttention" => linear_attention::linear_attention(b, cx),
        "NegativeLogLikelihoodLoss" => one(loss::negative_log_likelihood(b, cx)),
        "SoftmaxCrossEntropyLoss" => loss::softmax_cross_entropy(b, cx),
        "Softmax" | "LogSoftmax" => one(norm::softmax(b, cx)),
        "ReduceSum" | "ReduceMean" | "ReduceMax" | "ReduceMin" | "ReduceProd" | "ReduceL1"
        | "ReduceL2" | "ReduceLogSum" | "ReduceLogSumExp" | "ReduceSumSquare" => {
            one(reduce::reduce(b, cx))
        }
        "ArgMax" | "ArgMin" => one(reduce::arg(b, cx)),
        "TopK" => topk::top_k(b, cx),
        "NonMaxSuppression" => one(nms::non_max_suppression(b, cx)),
        "CumSum" | "CumProd" => one(cumulative::cumulative(b, cx)),
        "Hardmax" => one(encode::hardmax(b, cx)),
        "OneHot" => one(encode::one_hot(b, cx)),
        "Identity" => one(cx.input(0)),
        "Dropout" => shape::dropout(b, cx),
        "Cast" | "CastLike" => one(cast::cast(b, cx)),
        "Constant" => one(shape::constant(b, cx)),
        "ConstantOfShape" => one(shape::constant_of_shape(b, cx)),
        "Shape" => one(shape::shape(b, cx)),
        "Size" => one(shape::size(b, cx)),
        "Range" => one(shape::range(b, cx)),
        "Reshape" => one(shape::reshape(b, cx)),
        "Flatten" => one(shape::flatten(b, cx)),
        "Squeeze" => one(shape::squeeze(b, cx)),
        "Unsqueeze" => one(shape::unsqueeze(b, cx)),
        "Expand" => one(shape::expand(b, cx)),
        "Transpose" => one(shape::transpose(b, cx)),
        "Concat" => one(shape::concat(b, cx)),
        "Split" => shape::split(b, cx),
        "Slice" => one(shape::slice(b, cx)),
        "Pad" => one(shape::pad(b, cx)),
        "CenterCropPad" => one(crop::center_crop_pad(b, cx)),
        "HannWindow" | "HammingWindow" | "BlackmanWindow" => one(signal::window(b, cx)),
        "DFT" => one(signal::dft(b, cx)),
        "Tile" => one(shape::tile(b, cx)),
        "Gather" => one(shape::gather(b, cx)),
        "GatherElements" => one(shape::gather_elements(b, cx)),
        "GatherND" => one(select::gather_nd(b, cx)),
        "ScatterElements" | "Scatter" => one(scatter::scatter_elements(b, cx)),
        "ScatterND" => one(scatter::scatter_nd(b, cx)),
        "Compress" => one(select::compress(b, cx)),
        "ReverseSequence" => one(select::reverse_sequence(b, cx)),
        "DepthToSpace" | "SpaceToDepth" => one(shape::depth_space(b, cx)),
        "Trilu" => one(shape::trilu(b, cx)),
        "EyeLike" => one(shape::eye_like(b, cx)),
        "QuantizeLinear" => one(quant::quantize(b, cx)),
        "DynamicQuantizeLinear" => quant::dynamic_quantize(b, cx),
        "DequantizeLinear" => one(quant::dequantize(b, cx)),
        "QLinearMatMul" => one(quant::qlinear_matmul(b, cx)),
        "MatMulInteger" => one(quant::matmul_integer(b, cx)),
        "QLinearConv" => one(quant::qlinear_conv(b, cx)),
        "ConvInteger" => one(quant::conv_integer(b, cx)),
        "Resize" | "Upsample" => one(resize::resize(b, cx)),
        "GridSample" => one(grid_sample::grid_sample(b, cx)),
        "AffineGrid" => one(grid_sample::affine_grid(b, cx)),
        "LSTM" => recurrent::lstm(b, cx),
        "GRU" => recurrent::gru(b, cx),
        "RNN" => recurrent::rnn(b, cx),
        other => unsupported(format!("no mapping for ONNX op `{other}`")),
    }
}
