//! Tensors as the dense little-endian bytes compiled code reads and writes.
//!
//! Invariant: `tensor_from_bytes(ty, &tensor_bytes(t)) == t` for every tensor `t` of type `ty`;
//! bool is one byte, 0 or 1. [`tensor_byte_view`] and [`data_bytes_mut`] give the same bytes
//! without copying where the host is little-endian (every host Kiln's JIT runs on).

use kiln_ir::{Tensor, TensorData, TensorType};
use std::borrow::Cow;

/// The bytes of `t` ([`tensor_bytes`]), borrowed when the layout in memory is already that.
pub fn tensor_byte_view(t: &Tensor) -> Cow<'_, [u8]> {
    if cfg!(target_endian = "little") {
        let view: Option<&[u8]> = match t.data() {
            TensorData::F32(v) => Some(bytemuck::cast_slice(v)),
            TensorData::F16(v) => Some(bytemuck::cast_slice(v)),
            TensorData::I8(v) => Some(bytemuck::cast_slice(v)),
            TensorData::U8(v) => Some(v),
            TensorData::I16(v) => Some(bytemuck::cast_slice(v)),
            TensorData::I32(v) => Some(bytemuck::cast_slice(v)),
            TensorData::I64(v) => Some(bytemuck::cast_slice(v)),
            TensorData::F64(v) => Some(bytemuck::cast_slice(v)),
            TensorData::BF16(v) => Some(bytemuck::cast_slice(v)),
            TensorData::U16(v) => Some(bytemuck::cast_slice(v)),
            TensorData::U32(v) => Some(bytemuck::cast_slice(v)),
            TensorData::U64(v) => Some(bytemuck::cast_slice(v)),
            TensorData::Bool(_) => None,
        };
        if let Some(b) = view {
            return Cow::Borrowed(b);
        }
    }
    Cow::Owned(tensor_bytes(t))
}

/// The bytes of `d` to write in place, when its layout in memory is the byte layout (not for
/// bool, nor on a big-endian host).
pub fn data_bytes_mut(d: &mut TensorData) -> Option<&mut [u8]> {
    if !cfg!(target_endian = "little") {
        return None;
    }
    match d {
        TensorData::F32(v) => Some(bytemuck::cast_slice_mut(v)),
        TensorData::F16(v) => Some(bytemuck::cast_slice_mut(v)),
        TensorData::I8(v) => Some(bytemuck::cast_slice_mut(v)),
        TensorData::U8(v) => Some(v),
        TensorData::I16(v) => Some(bytemuck::cast_slice_mut(v)),
        TensorData::I32(v) => Some(bytemuck::cast_slice_mut(v)),
        TensorData::I64(v) => Some(bytemuck::cast_slice_mut(v)),
        TensorData::F64(v) => Some(bytemuck::cast_slice_mut(v)),
        TensorData::BF16(v) => Some(bytemuck::cast_slice_mut(v)),
        TensorData::U16(v) => Some(bytemuck::cast_slice_mut(v)),
        TensorData::U32(v) => Some(bytemuck::cast_slice_mut(v)),
        TensorData::U64(v) => Some(bytemuck::cast_slice_mut(v)),
        TensorData::Bool(_) => None,
    }
}

/// The elements of `t`, little-endian, row-major.
pub fn tensor_bytes(t: &Tensor) -> Vec<u8> {
    match t.data() {
        TensorData::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        TensorData::F16(v) => v.iter().flat_map(|x| x.to_bits().to_le_bytes()).collect(),
        TensorData::I8(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        TensorData::U8(v) => v.clone(),
        TensorData::I16(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        TensorData::I32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        TensorData::I64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        TensorData::F64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        TensorData::BF16(v) => v.iter().flat_map(|x| x.to_bits().to_le_bytes()).collect(),
        TensorData::U16(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        TensorData::U32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        TensorData::U64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        TensorData::Bool(v) => v.iter().map(|&b| b as u8).collect(),
    }
}

/// A tensor of type `ty` from its bytes (`bytes.len()` must be `ty.byte_size()`).
pub fn tensor_from_bytes(ty: &TensorType, bytes: &[u8]) -> Option<Tensor> {
    if bytes.len() != ty.byte_size() {
        return None;
    }
    fn chunks<const N: usize, T>(b: &[u8], f: impl Fn([u8; N]) -> T) -> Vec<T> {
        b.chunks_exact(N)
            .map(|c| f(c.try_into().expect("exact chunks")))
            .collect()
    }
    let data = match ty.dtype {
        kiln_ir::DType::F32 => TensorData::F32(chunks(bytes, f32::from_le_bytes)),
        kiln_ir::DType::F16 => TensorData::F16(chunks(bytes, |c| {
            half::f16::from_bits(u16::from_le_bytes(c))
        })),
        kiln_ir::DType::I8 => TensorData::I8(chunks(bytes, i8::from_le_bytes)),
        kiln_ir::DType::U8 => TensorData::U8(bytes.to_vec()),
        kiln_ir::DType::I16 => TensorData::I16(chunks(bytes, i16::from_le_bytes)),
        kiln_ir::DType::I32 => TensorData::I32(chunks(bytes, i32::from_le_bytes)),
        kiln_ir::DType::I64 => TensorData::I64(chunks(bytes, i64::from_le_bytes)),
        kiln_ir::DType::Bool => TensorData::Bool(bytes.iter().map(|&b| b != 0).collect()),
        kiln_ir::DType::F64 => TensorData::F64(chunks(bytes, f64::from_le_bytes)),
        kiln_ir::DType::BF16 => TensorData::BF16(chunks(bytes, |c| {
            half::bf16::from_bits(u16::from_le_bytes(c))
        })),
        kiln_ir::DType::U16 => TensorData::U16(chunks(bytes, u16::from_le_bytes)),
        kiln_ir::DType::U32 => TensorData::U32(chunks(bytes, u32::from_le_bytes)),
        kiln_ir::DType::U64 => TensorData::U64(chunks(bytes, u64::from_le_bytes)),
    };
    Tensor::from_data(ty.clone(), data).ok()
}
