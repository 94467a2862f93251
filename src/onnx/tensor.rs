//! Tensor payloads: element types, decoding the typed fields of a `TensorProto` to little-endian bytes,
//! reading a tensor as an `ndarray`, and building tensors from arrays.
//!
//! ONNX stores a tensor's data in one of three places: `raw_data` (little-endian bytes, what exporters
//! write), one of the typed repeated fields (`float_data`, `int32_data`, `int64_data`, ...) or an external
//! file. Everything here works on the bytes, so that a pass never has to care where they came from:
//! [`crate::onnx::OnnxModel::tensor_bytes`] hands out the same little-endian layout for all three.

use bytes::Bytes;
use half::{bf16, f16};
use ndarray::{ArrayD, IxDyn};

use super::proto::onnx::TensorProto;
pub use super::proto::onnx::tensor_proto::DataType;
use crate::{Error, Result};

/// ONNX element type numbers (`TensorProto.data_type`), as plain `i32` for matching on the wire value.
pub mod dtype {
    use super::DataType;
    pub const FLOAT: i32 = DataType::FLOAT as i32;
    pub const UINT8: i32 = DataType::UINT8 as i32;
    pub const INT8: i32 = DataType::INT8 as i32;
    pub const UINT16: i32 = DataType::UINT16 as i32;
    pub const INT16: i32 = DataType::INT16 as i32;
    pub const INT32: i32 = DataType::INT32 as i32;
    pub const INT64: i32 = DataType::INT64 as i32;
    pub const STRING: i32 = DataType::STRING as i32;
    pub const BOOL: i32 = DataType::BOOL as i32;
    pub const FLOAT16: i32 = DataType::FLOAT16 as i32;
    pub const DOUBLE: i32 = DataType::DOUBLE as i32;
    pub const UINT32: i32 = DataType::UINT32 as i32;
    pub const UINT64: i32 = DataType::UINT64 as i32;
    pub const COMPLEX64: i32 = DataType::COMPLEX64 as i32;
    pub const COMPLEX128: i32 = DataType::COMPLEX128 as i32;
    pub const BFLOAT16: i32 = DataType::BFLOAT16 as i32;

    /// The element type of a float tensor in `precision`.
    pub fn of(precision: crate::settings::Precision) -> i32 {
        use crate::settings::Precision;
        match precision {
            Precision::Fp32 => FLOAT,
            Precision::Fp16 => FLOAT16,
            Precision::Bf16 => BFLOAT16,
        }
    }
}

/// A readable name for an element type number (`float32`, `int64`, ...), for error messages.
pub fn dtype_name(dtype: i32) -> String {
    use protobuf::Enum;
    match dtype {
        dtype::FLOAT => "float32".into(),
        dtype::FLOAT16 => "float16".into(),
        dtype::BFLOAT16 => "bfloat16".into(),
        dtype::DOUBLE => "float64".into(),
        dtype::INT64 => "int64".into(),
        dtype::INT32 => "int32".into(),
        dtype::BOOL => "bool".into(),
        other => match DataType::from_i32(other) {
            Some(t) => format!("{t:?}").to_ascii_lowercase(),
            None => format!("element type {other}"),
        },
    }
}

/// Size in bytes of one element, for the types that have a whole number of bytes per element.
///
/// `None` for strings (variable length) and the packed sub-byte types (int4, uint4, float4, int2, ...).
pub fn elem_size(dtype: i32) -> Option<usize> {
    Some(match dtype {
        dtype::UINT8 | dtype::INT8 | dtype::BOOL => 1,
        17..=20 | 24 => 1, // the float8 variants
        dtype::UINT16 | dtype::INT16 | dtype::FLOAT16 | dtype::BFLOAT16 => 2,
        dtype::FLOAT | dtype::INT32 | dtype::UINT32 => 4,
        dtype::INT64 | dtype::DOUBLE | dtype::UINT64 | dtype::COMPLEX64 => 8,
        dtype::COMPLEX128 => 16,
        _ => return None,
    })
}

/// Bytes that `numel` elements of `dtype` take in `raw_data` (packed types round up to whole bytes).
pub fn byte_len(dtype: i32, numel: usize) -> Option<usize> {
    match dtype {
        21..=23 => Some(numel.div_ceil(2)), // uint4, int4, float4e2m1: two per byte
        25..=26 => Some(numel.div_ceil(4)), // uint2, int2: four per byte
        _ => elem_size(dtype).and_then(|s| s.checked_mul(numel)),
    }
}

/// True for the floating-point types a pass may read as f32.
pub fn is_float(dtype: i32) -> bool {
    matches!(dtype, dtype::FLOAT | dtype::FLOAT16 | dtype::BFLOAT16 | dtype::DOUBLE)
}

/// True for the integer (and bool) types a pass may read as i64.
pub fn is_int(dtype: i32) -> bool {
    matches!(
        dtype,
        dtype::UINT8
            | dtype::INT8
            | dtype::UINT16
            | dtype::INT16
            | dtype::INT32
            | dtype::INT64
            | dtype::BOOL
            | dtype::UINT32
            | dtype::UINT64
    )
}

/// The tensor's dimensions as `usize`; an error for negative dimensions (a broken file).
pub fn dims(t: &TensorProto) -> Result<Vec<usize>> {
    t.dims
        .iter()
        .map(|&d| {
            usize::try_from(d)
                .map_err(|_| Error::bad_input(format!("tensor `{}` has a negative dimension {d}", t.name())))
        })
        .collect()
}

/// Number of elements (1 for a scalar).
pub fn numel(t: &TensorProto) -> Result<usize> {
    dims(t)?
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| Error::bad_input(format!("tensor `{}` has too many elements", t.name())))
}

/// True when the tensor's data lives in an external file.
pub fn is_external(t: &TensorProto) -> bool {
    use super::proto::onnx::tensor_proto::DataLocation;
    t.data_location.is_some_and(|l| l.value() == DataLocation::EXTERNAL as i32)
}

/// Size in bytes of the tensor's little-endian payload, from its type and dims (None for strings).
pub fn payload_len(t: &TensorProto) -> Result<Option<usize>> {
    Ok(byte_len(t.data_type(), numel(t)?))
}

/// Little-endian bytes of a tensor whose data is in `raw_data` or a typed field (not external data).
///
/// `raw_data` is shared, not copied; the typed fields are encoded as `raw_data` would hold them.
pub(crate) fn inline_bytes(t: &TensorProto) -> Result<Bytes> {
    if let Some(raw) = &t.raw_data {
        return Ok(raw.clone());
    }
    let name = t.name();
    let dt = t.data_type();
    let n = numel(t)?;
    let mut out = Vec::new();
    // Which typed field holds which type is fixed by onnx.proto's comments on each field.
    match dt {
        dtype::FLOAT | dtype::COMPLEX64 => {
            out.reserve(t.float_data.len() * 4);
            t.float_data.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
        }
        dtype::DOUBLE | dtype::COMPLEX128 => {
            t.double_data.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
        }
        dtype::INT64 => t.int64_data.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        dtype::UINT32 => t.uint64_data.iter().for_each(|&v| out.extend_from_slice(&(v as u32).to_le_bytes())),
        dtype::UINT64 => t.uint64_data.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        dtype::INT32 => t.int32_data.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        // 16-bit types keep their bit pattern in the low half of each int32.
        dtype::INT16 | dtype::UINT16 | dtype::FLOAT16 | dtype::BFLOAT16 => {
            t.int32_data.iter().for_each(|&v| out.extend_from_slice(&(v as u16).to_le_bytes()))
        }
        dtype::INT8 | dtype::UINT8 | dtype::BOOL | 17..=20 | 24 => t.int32_data.iter().for_each(|&v| out.push(v as u8)),
        dtype::STRING => {
            return Err(Error::bad_input(format!("tensor `{name}` holds strings, which have no byte layout")));
        }
        other => {
            return Err(Error::bad_input(format!(
                "tensor `{name}` of type {} keeps its data in a typed field dfast cannot decode",
                dtype_name(other)
            )));
        }
    }
    if let Some(expected) = byte_len(dt, n)
        && out.len() != expected
    {
        return Err(Error::bad_input(format!(
            "tensor `{name}` declares {n} elements of {} but holds {} bytes of data",
            dtype_name(dt),
            out.len()
        )));
    }
    Ok(Bytes::from(out))
}

/// Decodes little-endian bytes of `dtype` to f32 (float types only).
pub fn bytes_to_f32(name: &str, dtype: i32, bytes: &[u8]) -> Result<Vec<f32>> {
    let le2 = |c: &[u8]| u16::from_le_bytes([c[0], c[1]]);
    Ok(match dtype {
        dtype::FLOAT => bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        dtype::FLOAT16 => bytes.chunks_exact(2).map(|c| f16::from_bits(le2(c)).to_f32()).collect(),
        dtype::BFLOAT16 => bytes.chunks_exact(2).map(|c| bf16::from_bits(le2(c)).to_f32()).collect(),
        dtype::DOUBLE => {
            bytes.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().expect("chunks of 8")) as f32).collect()
        }
        other => {
            return Err(Error::bad_input(format!(
                "tensor `{name}` is {}, not a floating-point tensor",
                dtype_name(other)
            )));
        }
    })
}

/// Decodes little-endian bytes of `dtype` to i64 (integer and bool types only).
pub fn bytes_to_i64(name: &str, dtype: i32, bytes: &[u8]) -> Result<Vec<i64>> {
    Ok(match dtype {
        dtype::INT64 => bytes.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().expect("chunks of 8"))).collect(),
        dtype::UINT64 => bytes
            .chunks_exact(8)
            .map(|c| {
                let v = u64::from_le_bytes(c.try_into().expect("chunks of 8"));
                i64::try_from(v).map_err(|_| Error::bad_input(format!("tensor `{name}` holds {v}, beyond int64")))
            })
            .collect::<Result<_>>()?,
        dtype::INT32 => bytes.chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64).collect(),
        dtype::UINT32 => bytes.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64).collect(),
        dtype::INT16 => bytes.chunks_exact(2).map(|c| i16::from_le_bytes([c[0], c[1]]) as i64).collect(),
        dtype::UINT16 => bytes.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]]) as i64).collect(),
        dtype::INT8 => bytes.iter().map(|&b| b as i8 as i64).collect(),
        dtype::UINT8 => bytes.iter().map(|&b| b as i64).collect(),
        dtype::BOOL => bytes.iter().map(|&b| (b != 0) as i64).collect(),
        other => {
            return Err(Error::bad_input(format!("tensor `{name}` is {}, not an integer tensor", dtype_name(other))));
        }
    })
}

/// Shapes `values` as the tensor's dims, checking the element count.
pub(crate) fn shaped<T>(t: &TensorProto, values: Vec<T>) -> Result<ArrayD<T>> {
    let d = dims(t)?;
    let n = values.len();
    ArrayD::from_shape_vec(IxDyn(&d), values)
        .map_err(|_| Error::bad_input(format!("tensor `{}` has shape {d:?} but holds {n} elements", t.name())))
}

/// A tensor proto with `raw_data`, from parts. `bytes` must be little-endian and match `dims`.
pub fn tensor_from_raw(name: &str, dtype: i32, dims: &[usize], bytes: Bytes) -> TensorProto {
    let mut t = TensorProto::new();
    t.set_name(name.to_string());
    t.set_data_type(dtype);
    t.dims = dims.iter().map(|&d| d as i64).collect();
    t.raw_data = Some(bytes);
    t
}

/// A float32 tensor proto holding `array`.
pub fn tensor_from_f32(name: &str, array: &ArrayD<f32>) -> TensorProto {
    let mut raw = Vec::with_capacity(array.len() * 4);
    array.iter().for_each(|v| raw.extend_from_slice(&v.to_le_bytes()));
    tensor_from_raw(name, dtype::FLOAT, array.shape(), Bytes::from(raw))
}

/// A float16 tensor proto holding `array` rounded to half precision.
pub fn tensor_from_f16(name: &str, array: &ArrayD<f32>) -> TensorProto {
    let mut raw = Vec::with_capacity(array.len() * 2);
    array.iter().for_each(|v| raw.extend_from_slice(&f16::from_f32(*v).to_bits().to_le_bytes()));
    tensor_from_raw(name, dtype::FLOAT16, array.shape(), Bytes::from(raw))
}

/// An int64 tensor proto holding `array`.
pub fn tensor_from_i64(name: &str, array: &ArrayD<i64>) -> TensorProto {
    let mut raw = Vec::with_capacity(array.len() * 8);
    array.iter().for_each(|v| raw.extend_from_slice(&v.to_le_bytes()));
    tensor_from_raw(name, dtype::INT64, array.shape(), Bytes::from(raw))
}

/// An int32 tensor proto holding `array` (values must fit; they are truncated otherwise).
pub fn tensor_from_i32(name: &str, array: &ArrayD<i64>) -> TensorProto {
    let mut raw = Vec::with_capacity(array.len() * 4);
    array.iter().for_each(|&v| raw.extend_from_slice(&(v as i32).to_le_bytes()));
    tensor_from_raw(name, dtype::INT32, array.shape(), Bytes::from(raw))
}

/// An int8 tensor proto holding `array` (quantized weights; values must fit in -128..=127).
pub fn tensor_from_i8(name: &str, array: &ArrayD<i8>) -> TensorProto {
    let raw: Vec<u8> = array.iter().map(|&v| v as u8).collect();
    tensor_from_raw(name, dtype::INT8, array.shape(), Bytes::from(raw))
}

/// A uint8 tensor proto holding `array`.
pub fn tensor_from_u8(name: &str, array: &ArrayD<u8>) -> TensorProto {
    tensor_from_raw(name, dtype::UINT8, array.shape(), Bytes::from(array.iter().copied().collect::<Vec<u8>>()))
}
