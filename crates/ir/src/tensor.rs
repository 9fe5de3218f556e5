//! Tensor types and tensor values.
//!
//! Invariant: a [`Tensor`]'s data always holds exactly `shape.iter().product()` elements of the
//! variant matching its dtype, and no tensor type describes more than [`MAX_TENSOR_BYTES`] bytes.

use crate::{DType, IrError, Result};
use half::{bf16, f16};
use std::fmt;

/// The largest tensor Kiln will describe or allocate (8 GiB). Anything larger is a malformed or
/// hostile model, reported as [`IrError::TooLarge`] instead of attempting the allocation.
pub const MAX_TENSOR_BYTES: usize = 8 << 30;

/// Dtype and static shape of a tensor. A rank-0 shape is a scalar.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TensorType {
    pub dtype: DType,
    pub shape: Vec<usize>,
}

impl TensorType {
    /// A tensor type, checked against [`MAX_TENSOR_BYTES`].
    pub fn new(dtype: DType, shape: impl Into<Vec<usize>>) -> Result<Self> {
        let ty = TensorType {
            dtype,
            shape: shape.into(),
        };
        ty.check_size()?;
        Ok(ty)
    }

    /// Number of elements.
    pub fn num_elements(&self) -> usize {
        self.shape.iter().product()
    }

    /// Size in bytes.
    pub fn byte_size(&self) -> usize {
        self.num_elements() * self.dtype.size_bytes()
    }

    /// Rank (number of dimensions).
    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    /// Checks that the element count neither overflows nor exceeds [`MAX_TENSOR_BYTES`].
    pub fn check_size(&self) -> Result<()> {
        let too_large = |reason: String| IrError::TooLarge {
            shape: self.shape.clone(),
            dtype: self.dtype,
            reason,
        };
        let mut bytes = self.dtype.size_bytes();
        for &d in &self.shape {
            bytes = bytes
                .checked_mul(d)
                .ok_or_else(|| too_large("size overflows".into()))?;
        }
        if bytes > MAX_TENSOR_BYTES {
            return Err(too_large(format!(
                "{bytes} bytes exceeds the limit of {MAX_TENSOR_BYTES}"
            )));
        }
        Ok(())
    }
}

impl fmt::Display for TensorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[", self.dtype)?;
        for (i, d) in self.shape.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{d}")?;
        }
        f.write_str("]")
    }
}

/// The elements of a tensor, one variant per [`DType`].
#[derive(Clone, Debug, PartialEq)]
pub enum TensorData {
    F32(Vec<f32>),
    F16(Vec<f16>),
    I8(Vec<i8>),
    U8(Vec<u8>),
    I16(Vec<i16>),
    I32(Vec<i32>),
    I64(Vec<i64>),
    Bool(Vec<bool>),
    F64(Vec<f64>),
    BF16(Vec<bf16>),
    U16(Vec<u16>),
    U32(Vec<u32>),
    U64(Vec<u64>),
}

/// Runs `$body` with `$v` bound to the element vector of `$data`, whatever its dtype.
#[macro_export]
macro_rules! dispatch_data {
    ($data:expr, $v:ident => $body:expr) => {
        match $data {
            $crate::TensorData::F32($v) => $body,
            $crate::TensorData::F16($v) => $body,
            $crate::TensorData::I8($v) => $body,
            $crate::TensorData::U8($v) => $body,
            $crate::TensorData::I16($v) => $body,
            $crate::TensorData::I32($v) => $body,
            $crate::TensorData::I64($v) => $body,
            $crate::TensorData::Bool($v) => $body,
            $crate::TensorData::F64($v) => $body,
            $crate::TensorData::BF16($v) => $body,
            $crate::TensorData::U16($v) => $body,
            $crate::TensorData::U32($v) => $body,
            $crate::TensorData::U64($v) => $body,
        }
    };
}

impl TensorData {
    /// The dtype of the elements.
    pub fn dtype(&self) -> DType {
        match self {
            TensorData::F32(_) => DType::F32,
            TensorData::F16(_) => DType::F16,
            TensorData::I8(_) => DType::I8,
            TensorData::U8(_) => DType::U8,
            TensorData::I16(_) => DType::I16,
            TensorData::I32(_) => DType::I32,
            TensorData::I64(_) => DType::I64,
            TensorData::Bool(_) => DType::Bool,
            TensorData::F64(_) => DType::F64,
            TensorData::BF16(_) => DType::BF16,
            TensorData::U16(_) => DType::U16,
            TensorData::U32(_) => DType::U32,
            TensorData::U64(_) => DType::U64,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        dispatch_data!(self, v => v.len())
    }

    /// True when there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `n` zero (false) elements of `dtype`.
    pub fn zeros(dtype: DType, n: usize) -> TensorData {
        match dtype {
            DType::F32 => TensorData::F32(vec![0.0; n]),
            DType::F16 => TensorData::F16(vec![f16::ZERO; n]),
            DType::I8 => TensorData::I8(vec![0; n]),
            DType::U8 => TensorData::U8(vec![0; n]),
            DType::I16 => TensorData::I16(vec![0; n]),
            DType::I32 => TensorData::I32(vec![0; n]),
            DType::I64 => TensorData::I64(vec![0; n]),
            DType::Bool => TensorData::Bool(vec![false; n]),
            DType::F64 => TensorData::F64(vec![0.0; n]),
            DType::BF16 => TensorData::BF16(vec![bf16::ZERO; n]),
            DType::U16 => TensorData::U16(vec![0; n]),
            DType::U32 => TensorData::U32(vec![0; n]),
            DType::U64 => TensorData::U64(vec![0; n]),
        }
    }

    /// The elements at `index` (in its order), zero (false) where it is `None`.
    pub fn gather(&self, index: &[Option<usize>]) -> TensorData {
        self.gather_iter(index.len(), index.iter().copied())
    }

    /// [`TensorData::gather`] of indices produced one by one (`len` of them expected): a large
    /// permutation (a weight table, a packed panel layout) without a vector of indices beside
    /// the data.
    pub fn gather_iter(
        &self,
        len: usize,
        index: impl IntoIterator<Item = Option<usize>>,
    ) -> TensorData {
        macro_rules! pick {
            ($variant:ident, $v:expr, $zero:expr) => {{
                let mut out = Vec::with_capacity(len);
                // Internal iteration: nested `flat_map`s fold as nested loops.
                index
                    .into_iter()
                    .for_each(|i| out.push(i.map_or($zero, |i| $v[i])));
                TensorData::$variant(out)
            }};
        }
        match self {
            TensorData::F32(v) => pick!(F32, v, 0.0),
            TensorData::F16(v) => pick!(F16, v, f16::ZERO),
            TensorData::I8(v) => pick!(I8, v, 0),
            TensorData::U8(v) => pick!(U8, v, 0),
            TensorData::I16(v) => pick!(I16, v, 0),
            TensorData::I32(v) => pick!(I32, v, 0),
            TensorData::I64(v) => pick!(I64, v, 0),
            TensorData::Bool(v) => pick!(Bool, v, false),
            TensorData::F64(v) => pick!(F64, v, 0.0),
            TensorData::BF16(v) => pick!(BF16, v, bf16::ZERO),
            TensorData::U16(v) => pick!(U16, v, 0),
            TensorData::U32(v) => pick!(U32, v, 0),
            TensorData::U64(v) => pick!(U64, v, 0),
        }
    }

    /// Every element converted to f64 (exact for all dtypes but i64 beyond 2^53).
    pub fn to_f64_vec(&self) -> Vec<f64> {
        dispatch_data!(self, v => v.iter().map(|x| x.to_f64()).collect())
    }

    /// Elements of `dtype` made from f64 values with [`Element::from_f64`] (cast semantics).
    pub fn from_f64(dtype: DType, values: impl IntoIterator<Item = f64>) -> TensorData {
        let it = values.into_iter();
        match dtype {
            DType::F32 => TensorData::F32(it.map(f32::from_f64).collect()),
            DType::F16 => TensorData::F16(it.map(f16::from_f64).collect()),
            DType::I8 => TensorData::I8(it.map(i8::from_f64).collect()),
            DType::U8 => TensorData::U8(it.map(u8::from_f64).collect()),
            DType::I16 => TensorData::I16(it.map(i16::from_f64).collect()),
            DType::I32 => TensorData::I32(it.map(i32::from_f64).collect()),
            DType::I64 => TensorData::I64(it.map(i64::from_f64).collect()),
            DType::Bool => TensorData::Bool(it.map(bool::from_f64).collect()),
            DType::F64 => TensorData::F64(it.collect()),
            DType::BF16 => TensorData::BF16(it.map(bf16::from_f64).collect()),
            DType::U16 => TensorData::U16(it.map(u16::from_f64).collect()),
            DType::U32 => TensorData::U32(it.map(u32::from_f64).collect()),
            DType::U64 => TensorData::U64(it.map(u64::from_f64).collect()),
        }
    }

    /// Every element as i64 (floats truncated toward zero); used for index and shape tensors.
    pub fn to_i64_vec(&self) -> Vec<i64> {
        match self {
            TensorData::I64(v) => v.clone(),
            other => dispatch_data!(other, v => v.iter().map(|x| x.to_i64()).collect()),
        }
    }
}

/// A Rust type that is the element type of one [`DType`].
pub trait Element: Copy + Default + PartialOrd + fmt::Debug + Send + Sync + 'static {
    /// The dtype this type stores.
    const DTYPE: DType;
    /// Wraps a vector of elements.
    fn wrap(v: Vec<Self>) -> TensorData;
    /// The elements, if `data` holds this type.
    fn slice(data: &TensorData) -> Option<&[Self]>;
    /// The elements, mutably, if `data` holds this type.
    fn slice_mut(data: &mut TensorData) -> Option<&mut [Self]>;
    /// The value as f64.
    fn to_f64(self) -> f64;
    /// The value as i64 (floats truncated toward zero, saturating).
    fn to_i64(self) -> i64;
    /// Conversion with ONNX cast semantics: floats to integers truncate toward zero and saturate,
    /// NaN becomes 0; integers to narrower integers saturate; anything non-zero becomes `true`.
    fn from_f64(v: f64) -> Self;
}

macro_rules! impl_element {
    ($t:ty, $variant:ident, $to:expr, $toi:expr, $from:expr) => {
        impl Element for $t {
            const DTYPE: DType = DType::$variant;
            fn wrap(v: Vec<Self>) -> TensorData {
                TensorData::$variant(v)
            }
            fn slice(data: &TensorData) -> Option<&[Self]> {
                match data {
                    TensorData::$variant(v) => Some(v),
                    _ => None,
                }
            }
            fn slice_mut(data: &mut TensorData) -> Option<&mut [Self]> {
                match data {
                    TensorData::$variant(v) => Some(v),
                    _ => None,
                }
            }
            fn to_f64(self) -> f64 {
                let f: fn($t) -> f64 = $to;
                f(self)
            }
            fn to_i64(self) -> i64 {
                let f: fn($t) -> i64 = $toi;
                f(self)
            }
            fn from_f64(v: f64) -> Self {
                let f: fn(f64) -> $t = $from;
                f(v)
            }
        }
    };
}

impl_element!(f32, F32, |x| x as f64, |x| x as i64, |v| v as f32);
impl_element!(
    f16,
    F16,
    |x| x.to_f64(),
    |x| x.to_f64() as i64,
    f16::from_f64
);
impl_element!(i8, I8, |x| x as f64, |x| x as i64, |v| v as i8);
impl_element!(u8, U8, |x| x as f64, |x| x as i64, |v| v as u8);
impl_element!(i16, I16, |x| x as f64, |x| x as i64, |v| v as i16);
impl_element!(i32, I32, |x| x as f64, |x| x as i64, |v| v as i32);
impl_element!(i64, I64, |x| x as f64, |x| x, |v| v as i64);
impl_element!(f64, F64, |x| x, |x| x as i64, |v| v);
impl_element!(
    bf16,
    BF16,
    |x| x.to_f64(),
    |x| x.to_f64() as i64,
    bf16::from_f64
);
impl_element!(u16, U16, |x| x as f64, |x| x as i64, |v| v as u16);
impl_element!(u32, U32, |x| x as f64, |x| x as i64, |v| v as u32);
impl_element!(u64, U64, |x| x as f64, |x| x as i64, |v| v as u64);
impl_element!(
    bool,
    Bool,
    |x| if x { 1.0 } else { 0.0 },
    |x| x as i64,
    |v| v != 0.0
);

/// A tensor value: a type and its elements (row-major).
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    ty: TensorType,
    data: TensorData,
}

impl Tensor {
    /// A tensor from a type and matching data.
    pub fn from_data(ty: TensorType, data: TensorData) -> Result<Self> {
        if data.dtype() != ty.dtype {
            return Err(IrError::Invalid(format!(
                "tensor of type {ty} given {} data",
                data.dtype()
            )));
        }
        if data.len() != ty.num_elements() {
            return Err(IrError::Invalid(format!(
                "tensor of type {ty} needs {} elements but has {}",
                ty.num_elements(),
                data.len()
            )));
        }
        Ok(Tensor { ty, data })
    }

    /// A tensor of `shape` holding `values`.
    pub fn new<T: Element>(shape: impl Into<Vec<usize>>, values: Vec<T>) -> Result<Self> {
        Tensor::from_data(TensorType::new(T::DTYPE, shape)?, T::wrap(values))
    }

    /// A rank-0 tensor.
    pub fn scalar<T: Element>(value: T) -> Self {
        Tensor {
            ty: TensorType {
                dtype: T::DTYPE,
                shape: vec![],
            },
            data: T::wrap(vec![value]),
        }
    }

    /// A tensor of zeros.
    pub fn zeros(ty: TensorType) -> Self {
        let data = TensorData::zeros(ty.dtype, ty.num_elements());
        Tensor { ty, data }
    }

    /// The type.
    pub fn ty(&self) -> &TensorType {
        &self.ty
    }

    /// The dtype.
    pub fn dtype(&self) -> DType {
        self.ty.dtype
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.ty.shape
    }

    /// The elements.
    pub fn data(&self) -> &TensorData {
        &self.data
    }

    /// Consumes the tensor, returning its elements.
    pub fn into_data(self) -> TensorData {
        self.data
    }

    /// The elements as a slice of `T`, if the dtype matches.
    pub fn as_slice<T: Element>(&self) -> Option<&[T]> {
        T::slice(&self.data)
    }

    /// The same elements with another shape of equal element count.
    pub fn reshaped(self, shape: impl Into<Vec<usize>>) -> Result<Self> {
        Tensor::from_data(TensorType::new(self.ty.dtype, shape)?, self.data)
    }
}
