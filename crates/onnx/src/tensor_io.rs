//! Conversion between ONNX `TensorProto`s and Kiln tensors.
//!
//! Invariant: a decoded tensor's element count always equals the product of its dims, the type is
//! checked against [`kiln_ir::MAX_TENSOR_BYTES`] before any element buffer is allocated, and
//! external data is only ever read from inside the model's folder.

use crate::proto::TensorProto;
use half::{bf16, f16};
use kiln_ir::{DType, Tensor, TensorData, TensorType};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Component, Path};

/// ONNX `TensorProto.DataType` codes.
pub(crate) mod code {
    pub const FLOAT: i32 = 1;
    pub const UINT8: i32 = 2;
    pub const INT8: i32 = 3;
    pub const UINT16: i32 = 4;
    pub const INT16: i32 = 5;
    pub const INT32: i32 = 6;
    pub const INT64: i32 = 7;
    pub const STRING: i32 = 8;
    pub const BOOL: i32 = 9;
    pub const FLOAT16: i32 = 10;
    pub const DOUBLE: i32 = 11;
    pub const UINT32: i32 = 12;
    pub const UINT64: i32 = 13;
    pub const BFLOAT16: i32 = 16;
    pub const UINT4: i32 = 21;
    pub const INT4: i32 = 22;
    pub const UINT2: i32 = 25;
    pub const INT2: i32 = 26;
}

/// The sub-byte integer types (packed weights of quantised models). Kiln tensors hold them
/// widened, one element per byte (`INT4`/`INT2` as `i8` sign-extended, `UINT4`/`UINT2` as `u8`);
/// only decoding (unpacking) and the ops whose result range is the narrow type's (Cast,
/// QuantizeLinear) know the difference.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Narrow {
    pub bits: u32,
    pub signed: bool,
}

impl Narrow {
    /// The narrow type of an ONNX type code, if it is one.
    pub fn from_onnx(c: i32) -> Option<Narrow> {
        match c {
            code::INT4 => Some(Narrow {
                bits: 4,
                signed: true,
            }),
            code::UINT4 => Some(Narrow {
                bits: 4,
                signed: false,
            }),
            code::INT2 => Some(Narrow {
                bits: 2,
                signed: true,
            }),
            code::UINT2 => Some(Narrow {
                bits: 2,
                signed: false,
            }),
            _ => None,
        }
    }

    /// The Kiln dtype holding it.
    pub fn widened(self) -> DType {
        if self.signed {
            DType::I8
        } else {
            DType::U8
        }
    }

    /// The smallest and largest value.
    pub fn range(self) -> (i64, i64) {
        if self.signed {
            (-(1 << (self.bits - 1)), (1 << (self.bits - 1)) - 1)
        } else {
            (0, (1 << self.bits) - 1)
        }
    }

    /// Element `i` of little-endian packed `bytes` (the low bits first), sign-extended.
    fn unpack(self, bytes: &[u8], i: usize) -> i64 {
        let per_byte = 8 / self.bits as usize;
        let shift = (i % per_byte) as u32 * self.bits;
        let raw = (bytes[i / per_byte] >> shift) as i64 & ((1 << self.bits) - 1);
        if self.signed && raw >= 1 << (self.bits - 1) {
            raw - (1 << self.bits)
        } else {
            raw
        }
    }
}

/// The name of an ONNX data type code, for messages.
pub(crate) fn onnx_type_name(c: i32) -> String {
    let name = match c {
        0 => "UNDEFINED",
        code::FLOAT => "FLOAT",
        code::UINT8 => "UINT8",
        code::INT8 => "INT8",
        code::UINT16 => "UINT16",
        code::INT16 => "INT16",
        code::INT32 => "INT32",
        code::INT64 => "INT64",
        code::STRING => "STRING",
        code::BOOL => "BOOL",
        code::FLOAT16 => "FLOAT16",
        code::DOUBLE => "DOUBLE",
        code::UINT32 => "UINT32",
        code::UINT64 => "UINT64",
        14 => "COMPLEX64",
        15 => "COMPLEX128",
        code::BFLOAT16 => "BFLOAT16",
        17 => "FLOAT8E4M3FN",
        18 => "FLOAT8E4M3FNUZ",
        19 => "FLOAT8E5M2",
        20 => "FLOAT8E5M2FNUZ",
        21 => "UINT4",
        22 => "INT4",
        23 => "FLOAT4E2M1",
        24 => "FLOAT8E8M0",
        25 => "UINT2",
        26 => "INT2",
        27 => "FLOAT6E2M3",
        28 => "FLOAT6E3M2",
        _ => return format!("data type {c}"),
    };
    name.to_string()
}

/// The Kiln dtype of an ONNX data type code.
pub(crate) fn dtype_from_onnx(c: i32) -> Result<DType, String> {
    Ok(match c {
        code::FLOAT => DType::F32,
        code::FLOAT16 => DType::F16,
        code::INT8 => DType::I8,
        code::UINT8 => DType::U8,
        code::INT16 => DType::I16,
        code::INT32 => DType::I32,
        code::INT64 => DType::I64,
        code::BOOL => DType::Bool,
        code::DOUBLE => DType::F64,
        code::BFLOAT16 => DType::BF16,
        code::UINT16 => DType::U16,
        code::UINT32 => DType::U32,
        code::UINT64 => DType::U64,
        other if Narrow::from_onnx(other).is_some() => {
            Narrow::from_onnx(other).map_or(DType::I8, Narrow::widened)
        }
        other => {
            return Err(format!(
                "element type {} is not supported by Kiln (supported: float, double, float16, bfloat16, int8, uint8, int16, uint16, int32, uint32, int64, uint64, bool)",
                onnx_type_name(other)
            ))
        }
    })
}

/// The ONNX data type code of a Kiln dtype.
pub(crate) fn dtype_to_onnx(d: DType) -> i32 {
    match d {
        DType::F32 => code::FLOAT,
        DType::F16 => code::FLOAT16,
        DType::I8 => code::INT8,
        DType::U8 => code::UINT8,
        DType::I16 => code::INT16,
        DType::I32 => code::INT32,
        DType::I64 => code::INT64,
        DType::Bool => code::BOOL,
        DType::F64 => code::DOUBLE,
        DType::BF16 => code::BFLOAT16,
        DType::U16 => code::UINT16,
        DType::U32 => code::UINT32,
        DType::U64 => code::UINT64,
    }
}

/// Converts ONNX dims to a checked shape.
pub(crate) fn dims_to_shape(dims: &[i64]) -> Result<Vec<usize>, String> {
    dims.iter()
        .map(|&d| usize::try_from(d).map_err(|_| format!("negative dimension {d} in {dims:?}")))
        .collect()
}

/// Decodes a tensor; external data is read relative to `base_dir` (refused when `None`).
pub(crate) fn decode_tensor(t: &TensorProto, base_dir: Option<&Path>) -> Result<Tensor, String> {
    let dtype = dtype_from_onnx(t.data_type.unwrap_or(0))?;
    let shape = dims_to_shape(&t.dims)?;
    let ty = TensorType::new(dtype, shape).map_err(|e| e.to_string())?;
    let n = ty.num_elements();
    if t.segment.is_some() {
        return Err("segmented tensors are not supported".into());
    }
    if let Some(narrow) = Narrow::from_onnx(t.data_type.unwrap_or(0)) {
        let packed_len = n.div_ceil(8 / narrow.bits as usize);
        let packed: Vec<u8> = if t.data_location == Some(1) {
            read_external(t, base_dir, packed_len)?
        } else if let Some(raw) = &t.raw_data {
            raw.clone()
        } else {
            t.int32_data.iter().map(|&v| v as u8).collect()
        };
        if packed.len() != packed_len {
            return Err(format!(
                "packed data has {} bytes but the dims need {packed_len} ({n} elements of {} bits)",
                packed.len(),
                narrow.bits
            ));
        }
        let values = (0..n).map(|i| narrow.unpack(&packed, i) as f64);
        return Tensor::from_data(ty, TensorData::from_f64(dtype, values))
            .map_err(|e| e.to_string());
    }
    let data = if t.data_location == Some(1) {
        let bytes = read_external(t, base_dir, ty.byte_size())?;
        from_le_bytes(dtype, &bytes, n)?
    } else if let Some(raw) = &t.raw_data {
        from_le_bytes(dtype, raw, n)?
    } else {
        from_typed_fields(t, dtype, n)?
    };
    Tensor::from_data(ty, data).map_err(|e| e.to_string())
}

fn size_error(what: &str, got: usize, n: usize) -> String {
    format!("{what} holds {got} elements but the dims need {n}")
}

fn from_le_bytes(dtype: DType, raw: &[u8], n: usize) -> Result<TensorData, String> {
    let size = dtype.size_bytes();
    if raw.len() != n.saturating_mul(size) {
        return Err(format!(
            "raw data has {} bytes but the dims need {} ({n} elements of {dtype})",
            raw.len(),
            n.saturating_mul(size)
        ));
    }
    macro_rules! parse {
        ($t:ty, $w:literal) => {
            raw.chunks_exact($w)
                .map(|c| {
                    let mut b = [0u8; $w];
                    b.copy_from_slice(c);
                    <$t>::from_le_bytes(b)
                })
                .collect()
        };
    }
    Ok(match dtype {
        DType::F32 => TensorData::F32(parse!(f32, 4)),
        DType::F16 => TensorData::F16(
            raw.chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]))
                .collect(),
        ),
        DType::I8 => TensorData::I8(raw.iter().map(|&b| b as i8).collect()),
        DType::U8 => TensorData::U8(raw.to_vec()),
        DType::I16 => TensorData::I16(parse!(i16, 2)),
        DType::I32 => TensorData::I32(parse!(i32, 4)),
        DType::I64 => TensorData::I64(parse!(i64, 8)),
        DType::Bool => TensorData::Bool(raw.iter().map(|&b| b != 0).collect()),
        DType::F64 => TensorData::F64(parse!(f64, 8)),
        DType::BF16 => TensorData::BF16(
            raw.chunks_exact(2)
                .map(|c| bf16::from_le_bytes([c[0], c[1]]))
                .collect(),
        ),
        DType::U16 => TensorData::U16(parse!(u16, 2)),
        DType::U32 => TensorData::U32(parse!(u32, 4)),
        DType::U64 => TensorData::U64(parse!(u64, 8)),
    })
}

fn from_typed_fields(t: &TensorProto, dtype: DType, n: usize) -> Result<TensorData, String> {
    let ints = &t.int32_data;
    let check = |what: &str, len: usize| {
        if len == n {
            Ok(())
        } else {
            Err(size_error(what, len, n))
        }
    };
    Ok(match dtype {
        DType::F32 => {
            check("float_data", t.float_data.len())?;
            TensorData::F32(t.float_data.clone())
        }
        DType::I64 => {
            check("int64_data", t.int64_data.len())?;
            TensorData::I64(t.int64_data.clone())
        }
        // int32_data carries the narrower types one element per entry (f16 as its bit pattern).
        DType::I32 => {
            check("int32_data", ints.len())?;
            TensorData::I32(ints.clone())
        }
        DType::I16 => {
            check("int32_data", ints.len())?;
            TensorData::I16(ints.iter().map(|&v| v as i16).collect())
        }
        DType::I8 => {
            check("int32_data", ints.len())?;
            TensorData::I8(ints.iter().map(|&v| v as i8).collect())
        }
        DType::U8 => {
            check("int32_data", ints.len())?;
            TensorData::U8(ints.iter().map(|&v| v as u8).collect())
        }
        DType::Bool => {
            check("int32_data", ints.len())?;
            TensorData::Bool(ints.iter().map(|&v| v != 0).collect())
        }
        DType::F16 => {
            check("int32_data", ints.len())?;
            TensorData::F16(ints.iter().map(|&v| f16::from_bits(v as u16)).collect())
        }
        DType::BF16 => {
            check("int32_data", ints.len())?;
            TensorData::BF16(ints.iter().map(|&v| bf16::from_bits(v as u16)).collect())
        }
        DType::U16 => {
            check("int32_data", ints.len())?;
            TensorData::U16(ints.iter().map(|&v| v as u16).collect())
        }
        DType::F64 => {
            check("double_data", t.double_data.len())?;
            TensorData::F64(t.double_data.clone())
        }
        // uint64_data carries uint32 and uint64.
        DType::U32 => {
            check("uint64_data", t.uint64_data.len())?;
            TensorData::U32(t.uint64_data.iter().map(|&v| v as u32).collect())
        }
        DType::U64 => {
            check("uint64_data", t.uint64_data.len())?;
            TensorData::U64(t.uint64_data.clone())
        }
    })
}

fn read_external(
    t: &TensorProto,
    base_dir: Option<&Path>,
    expected: usize,
) -> Result<Vec<u8>, String> {
    let base =
        base_dir.ok_or("external data needs the model's folder; load the model from a file")?;
    let mut location = None;
    let mut offset = 0u64;
    let mut length = None;
    for e in &t.external_data {
        let value = e.value.clone().unwrap_or_default();
        match e.key.as_deref().unwrap_or("") {
            "location" => location = Some(value),
            "offset" => {
                offset = value
                    .parse()
                    .map_err(|_| format!("bad external offset `{value}`"))?
            }
            "length" => {
                length = Some(
                    value
                        .parse::<u64>()
                        .map_err(|_| format!("bad external length `{value}`"))?,
                )
            }
            _ => {}
        }
    }
    let location = location.ok_or("external data without a location")?;
    let rel = Path::new(&location);
    if rel
        .components()
        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(format!(
            "external data location `{location}` escapes the model folder"
        ));
    }
    let path = base.join(rel);
    let canon_base = base
        .canonicalize()
        .map_err(|e| format!("{}: {e}", base.display()))?;
    let canon = path
        .canonicalize()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if !canon.starts_with(&canon_base) {
        return Err(format!(
            "external data location `{location}` escapes the model folder"
        ));
    }
    if let Some(len) = length {
        if len != expected as u64 {
            return Err(format!(
                "external data length {len} does not match the {expected} bytes the dims need"
            ));
        }
    }
    let mut file = std::fs::File::open(&canon).map_err(|e| format!("{}: {e}", canon.display()))?;
    let file_len = file.metadata().map_err(|e| e.to_string())?.len();
    if offset
        .checked_add(expected as u64)
        .is_none_or(|end| end > file_len)
    {
        return Err(format!(
            "external data `{location}` is {file_len} bytes, too short for {expected} bytes at offset {offset}"
        ));
    }
    file.seek(SeekFrom::Start(offset))
        .map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; expected];
    file.read_exact(&mut buf).map_err(|e| e.to_string())?;
    Ok(buf)
}

/// Encodes a tensor as a `TensorProto` with little-endian `raw_data`.
pub(crate) fn encode_tensor(name: &str, t: &Tensor) -> TensorProto {
    let mut raw = Vec::with_capacity(t.ty().byte_size());
    macro_rules! le {
        ($v:expr) => {
            $v.iter()
                .for_each(|x| raw.extend_from_slice(&x.to_le_bytes()))
        };
    }
    match t.data() {
        TensorData::F32(v) => le!(v),
        TensorData::F16(v) => le!(v),
        TensorData::BF16(v) => le!(v),
        TensorData::F64(v) => le!(v),
        TensorData::I8(v) => le!(v),
        TensorData::U8(v) => raw.extend_from_slice(v),
        TensorData::I16(v) => le!(v),
        TensorData::U16(v) => le!(v),
        TensorData::I32(v) => le!(v),
        TensorData::U32(v) => le!(v),
        TensorData::I64(v) => le!(v),
        TensorData::U64(v) => le!(v),
        TensorData::Bool(v) => raw.extend(v.iter().map(|&b| b as u8)),
    }
    TensorProto {
        dims: t.shape().iter().map(|&d| d as i64).collect(),
        data_type: Some(dtype_to_onnx(t.dtype())),
        name: Some(name.to_string()),
        raw_data: Some(raw),
        ..Default::default()
    }
}
