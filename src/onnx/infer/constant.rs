//! Constant evaluation: the [`Const`] values inference carries, and folding them through casts,
//! elementwise arithmetic, comparisons, `Where`, `Range` and the structural ops.
//!
//! Float arithmetic is done in f64 and rounded to the value's type after every op, as ONNX Runtime
//! computes it; integers wrap as its C++ casts do.

use half::{bf16, f16};
use ndarray::{ArrayD, Axis, IxDyn, Zip};

use super::BROADCAST_BOOL;
use super::MAX_CONST_ELEMENTS;
use super::shapes::broadcast_static;
use crate::onnx::OnnxModel;
use crate::onnx::proto::onnx::TensorProto;
use crate::onnx::tensor::{self, dtype};

/// The elements of a constant: floats (any float type, held exactly in f64) or integers (any integer
/// type or bool, in i64).
#[derive(Debug, Clone, PartialEq)]
pub enum Values {
    Float(ArrayD<f64>),
    Int(ArrayD<i64>),
}

/// A constant value with its ONNX element type.
#[derive(Debug, Clone, PartialEq)]
pub struct Const {
    pub dtype: i32,
    pub values: Values,
}

impl Const {
    /// Reads a tensor as a constant (None for unsupported types or more than [`MAX_CONST_ELEMENTS`]).
    pub fn from_tensor(model: &OnnxModel, t: &TensorProto) -> Option<Const> {
        let dt = t.data_type();
        if tensor::numel(t).ok()? > MAX_CONST_ELEMENTS {
            return None;
        }
        let shape = tensor::dims(t).ok()?;
        let bytes = model.tensor_bytes(t).ok()?;
        let values = if dt == dtype::DOUBLE {
            let v = bytes.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().expect("chunks of 8"))).collect();
            Values::Float(ArrayD::from_shape_vec(IxDyn(&shape), v).ok()?)
        } else if tensor::is_float(dt) {
            let v = tensor::bytes_to_f32(t.name(), dt, &bytes).ok()?.into_iter().map(f64::from).collect();
            Values::Float(ArrayD::from_shape_vec(IxDyn(&shape), v).ok()?)
        } else if tensor::is_int(dt) {
            Values::Int(ArrayD::from_shape_vec(IxDyn(&shape), tensor::bytes_to_i64(t.name(), dt, &bytes).ok()?).ok()?)
        } else {
            return None;
        };
        Some(Const { dtype: dt, values })
    }

    /// An int64 constant.
    pub fn int64(values: ArrayD<i64>) -> Const {
        Const { dtype: dtype::INT64, values: Values::Int(values) }
    }

    pub fn shape(&self) -> &[usize] {
        match &self.values {
            Values::Float(a) => a.shape(),
            Values::Int(a) => a.shape(),
        }
    }

    pub fn len(&self) -> usize {
        self.shape().iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The elements in row-major order, when the constant is an integer tensor.
    pub fn ints(&self) -> Option<Vec<i64>> {
        match &self.values {
            Values::Int(a) => Some(a.iter().copied().collect()),
            Values::Float(_) => None,
        }
    }

    /// The elements in row-major order, as f64.
    pub fn floats(&self) -> Vec<f64> {
        match &self.values {
            Values::Float(a) => a.iter().copied().collect(),
            Values::Int(a) => a.iter().map(|&v| v as f64).collect(),
        }
    }

    /// True when every element equals `x` (and there is at least one).
    pub fn is_all(&self, x: f64) -> bool {
        !self.is_empty() && self.floats().iter().all(|&v| v == x)
    }

    /// The constant as an initializer called `name` (None for types it cannot encode).
    pub fn to_tensor(&self, name: &str) -> Option<TensorProto> {
        let mut raw = Vec::new();
        match (&self.values, self.dtype) {
            (Values::Float(a), dtype::FLOAT) => a.iter().for_each(|&v| raw.extend((v as f32).to_le_bytes())),
            (Values::Float(a), dtype::FLOAT16) => a.iter().for_each(|&v| raw.extend(f16::from_f64(v).to_le_bytes())),
            (Values::Float(a), dtype::BFLOAT16) => a.iter().for_each(|&v| raw.extend(bf16::from_f64(v).to_le_bytes())),
            (Values::Float(a), dtype::DOUBLE) => a.iter().for_each(|&v| raw.extend(v.to_le_bytes())),
            (Values::Int(a), dtype::INT64) => a.iter().for_each(|&v| raw.extend(v.to_le_bytes())),
            (Values::Int(a), dtype::UINT64) => a.iter().for_each(|&v| raw.extend((v as u64).to_le_bytes())),
            (Values::Int(a), dtype::INT32) => a.iter().for_each(|&v| raw.extend((v as i32).to_le_bytes())),
            (Values::Int(a), dtype::UINT32) => a.iter().for_each(|&v| raw.extend((v as u32).to_le_bytes())),
            (Values::Int(a), dtype::INT16) => a.iter().for_each(|&v| raw.extend((v as i16).to_le_bytes())),
            (Values::Int(a), dtype::UINT16) => a.iter().for_each(|&v| raw.extend((v as u16).to_le_bytes())),
            (Values::Int(a), dtype::INT8) => a.iter().for_each(|&v| raw.push(v as i8 as u8)),
            (Values::Int(a), dtype::UINT8) => a.iter().for_each(|&v| raw.push(v as u8)),
            (Values::Int(a), dtype::BOOL) => a.iter().for_each(|&v| raw.push((v != 0) as u8)),
            _ => return None,
        }
        Some(tensor::tensor_from_raw(name, self.dtype, self.shape(), bytes::Bytes::from(raw)))
    }

    /// The constant converted as ONNX `Cast` converts (None where the result would be undefined, e.g.
    /// a float out of an integer type's range).
    pub fn cast(&self, to: i32) -> Option<Const> {
        let values = match (&self.values, tensor::is_float(to), tensor::is_int(to)) {
            (Values::Float(a), true, _) => Values::Float(a.mapv(|v| round_float(to, v))),
            (Values::Int(a), true, _) => Values::Float(a.mapv(|v| round_float(to, v as f64))),
            (Values::Int(a), _, true) => Values::Int(a.mapv(|v| wrap_int(to, v))),
            (Values::Float(a), _, true) => {
                if to == dtype::BOOL {
                    Values::Int(a.mapv(|v| (v != 0.0) as i64))
                } else {
                    let (lo, hi) = int_range(to)?;
                    if a.iter().any(|v| !v.is_finite() || v.trunc() < lo || v.trunc() > hi) {
                        return None;
                    }
                    Values::Int(a.mapv(|v| v.trunc() as i64))
                }
            }
            _ => return None,
        };
        Some(Const { dtype: to, values })
    }
}

/// Rounds an exact value to what an element of float type `dt` holds.
pub(super) fn round_float(dt: i32, v: f64) -> f64 {
    match dt {
        dtype::FLOAT => v as f32 as f64,
        dtype::FLOAT16 => f16::from_f64(v).to_f64(),
        dtype::BFLOAT16 => bf16::from_f64(v).to_f64(),
        _ => v,
    }
}

/// Wraps an integer to what an element of integer type `dt` holds (ONNX Runtime's C++ casts wrap).
pub(super) fn wrap_int(dt: i32, v: i64) -> i64 {
    match dt {
        dtype::INT32 => v as i32 as i64,
        dtype::UINT32 => v as u32 as i64,
        dtype::INT16 => v as i16 as i64,
        dtype::UINT16 => v as u16 as i64,
        dtype::INT8 => v as i8 as i64,
        dtype::UINT8 => v as u8 as i64,
        dtype::BOOL => (v != 0) as i64,
        _ => v,
    }
}

/// The range of values an element of integer type `dt` holds, as floats.
fn int_range(dt: i32) -> Option<(f64, f64)> {
    Some(match dt {
        dtype::INT64 => (-9.223372036854775e18, 9.223372036854775e18),
        dtype::UINT64 => (0.0, 9.223372036854775e18),
        dtype::INT32 => (i32::MIN as f64, i32::MAX as f64),
        dtype::UINT32 => (0.0, u32::MAX as f64),
        dtype::INT16 => (i16::MIN as f64, i16::MAX as f64),
        dtype::UINT16 => (0.0, u16::MAX as f64),
        dtype::INT8 => (i8::MIN as f64, i8::MAX as f64),
        dtype::UINT8 => (0.0, u8::MAX as f64),
        _ => return None,
    })
}

/// Applies one structural operation to either kind of constant.
pub(super) fn restructure(c: &Const, plan: &Plan) -> Option<Const> {
    let values = match &c.values {
        Values::Float(a) => Values::Float(plan.run(a)?),
        Values::Int(a) => Values::Int(plan.run(a)?),
    };
    Some(Const { dtype: c.dtype, values })
}

/// A planned structural operation.
pub(super) enum Plan {
    Reshape(Vec<usize>),
    Transpose(Vec<usize>),
    /// Select these indices along each axis in turn.
    Select(Vec<Vec<usize>>),
    /// Select along one axis, then reshape.
    Gather {
        axis: usize,
        indices: Vec<usize>,
        shape: Vec<usize>,
    },
    Expand(Vec<usize>),
}

impl Plan {
    fn run<T: Clone>(&self, a: &ArrayD<T>) -> Option<ArrayD<T>> {
        match self {
            Plan::Reshape(s) => a.as_standard_layout().into_owned().into_shape_with_order(IxDyn(s)).ok(),
            Plan::Transpose(p) => Some(a.clone().permuted_axes(IxDyn(p)).as_standard_layout().into_owned()),
            Plan::Select(per_axis) => {
                let mut out = a.clone();
                for (axis, idx) in per_axis.iter().enumerate() {
                    out = out.select(Axis(axis), idx);
                }
                Some(out)
            }
            Plan::Gather { axis, indices, shape } => a
                .select(Axis(*axis), indices)
                .as_standard_layout()
                .into_owned()
                .into_shape_with_order(IxDyn(shape))
                .ok(),
            Plan::Expand(s) => {
                let target = broadcast_static(a.shape(), s)?;
                a.broadcast(IxDyn(&target)).map(|v| v.to_owned())
            }
        }
    }
}

/// The value of an ONNX `Range` of scalar constants (None past [`MAX_CONST_ELEMENTS`] elements).
pub(super) fn range(start: &Const, limit: &Const, delta: &Const) -> Option<Const> {
    if start.len() != 1 || limit.len() != 1 || delta.len() != 1 {
        return None;
    }
    match (&start.values, &limit.values, &delta.values) {
        (Values::Int(s), Values::Int(l), Values::Int(d)) => {
            let (s, l, d) = (s.iter().next()?, l.iter().next()?, d.iter().next()?);
            if *d == 0 {
                return None;
            }
            let n = ((l - s) as f64 / *d as f64).ceil().max(0.0) as usize;
            if n > MAX_CONST_ELEMENTS {
                return None;
            }
            let v: Vec<i64> = (0..n as i64).map(|i| s + i * d).collect();
            Some(Const { dtype: start.dtype, values: Values::Int(ArrayD::from_shape_vec(IxDyn(&[n]), v).ok()?) })
        }
        (Values::Float(s), Values::Float(l), Values::Float(d)) => {
            let (s, l, d) = (*s.iter().next()?, *l.iter().next()?, *d.iter().next()?);
            if d == 0.0 || !((l - s) / d).is_finite() {
                return None;
            }
            let n = ((l - s) / d).ceil().max(0.0) as usize;
            if n > MAX_CONST_ELEMENTS {
                return None;
            }
            let v: Vec<f64> = (0..n).map(|i| round_float(start.dtype, s + i as f64 * d)).collect();
            Some(Const { dtype: start.dtype, values: Values::Float(ArrayD::from_shape_vec(IxDyn(&[n]), v).ok()?) })
        }
        _ => None,
    }
}

/// A unary elementwise op applied to a constant (None for ops it does not evaluate).
pub(super) fn unary(op: &str, c: &Const) -> Option<Const> {
    let dt = c.dtype;
    let values = match &c.values {
        Values::Float(a) => {
            let f: fn(f64) -> f64 = match op {
                "Identity" => |v| v,
                "Sqrt" => f64::sqrt,
                "Neg" => |v| -v,
                "Abs" => f64::abs,
                "Reciprocal" => |v| 1.0 / v,
                "Floor" => f64::floor,
                "Ceil" => f64::ceil,
                "Relu" => |v| v.max(0.0),
                _ => return None,
            };
            Values::Float(a.mapv(|v| round_float(dt, f(v))))
        }
        Values::Int(a) => {
            let f: fn(i64) -> i64 = match op {
                "Identity" => |v| v,
                "Neg" => i64::wrapping_neg,
                "Abs" => i64::wrapping_abs,
                "Relu" => |v| v.max(0),
                _ => return None,
            };
            Values::Int(a.mapv(|v| wrap_int(dt, f(v))))
        }
    };
    Some(Const { dtype: dt, values })
}

/// A binary integer op on two elements (None for ops it does not evaluate, and division by zero).
pub(super) fn int_binary(op: &str, a: i64, b: i64) -> Option<i64> {
    Some(match op {
        "Add" | "Sum" => a.wrapping_add(b),
        "Sub" => a.wrapping_sub(b),
        "Mul" => a.wrapping_mul(b),
        // ONNX Runtime divides integers as C++ does: truncating toward zero.
        "Div" if b != 0 => a.wrapping_div(b),
        "Max" => a.max(b),
        "Min" => a.min(b),
        _ => return None,
    })
}

/// A broadcasting binary op (arithmetic or comparison) applied to two constants.
pub(super) fn binary(op: &str, a: &Const, b: &Const) -> Option<Const> {
    let target = broadcast_static(a.shape(), b.shape())?;
    let bool_out = BROADCAST_BOOL.contains(&op);
    let dt = if bool_out { dtype::BOOL } else { a.dtype };
    let values = match (&a.values, &b.values) {
        (Values::Float(x), Values::Float(y)) => {
            let (x, y) = (x.broadcast(IxDyn(&target))?, y.broadcast(IxDyn(&target))?);
            if bool_out {
                let f: fn(f64, f64) -> bool = match op {
                    "Equal" => |p, q| p == q,
                    "Less" => |p, q| p < q,
                    "Greater" => |p, q| p > q,
                    "LessOrEqual" => |p, q| p <= q,
                    "GreaterOrEqual" => |p, q| p >= q,
                    _ => return None,
                };
                Values::Int(Zip::from(&x).and(&y).map_collect(|&p, &q| f(p, q) as i64))
            } else {
                let f: fn(f64, f64) -> f64 = match op {
                    "Add" | "Sum" => |p, q| p + q,
                    "Sub" => |p, q| p - q,
                    "Mul" => |p, q| p * q,
                    "Div" => |p, q| p / q,
                    "Pow" => f64::powf,
                    "Max" => f64::max,
                    "Min" => f64::min,
                    _ => return None,
                };
                Values::Float(Zip::from(&x).and(&y).map_collect(|&p, &q| round_float(dt, f(p, q))))
            }
        }
        (Values::Int(x), Values::Int(y)) => {
            let (x, y) = (x.broadcast(IxDyn(&target))?, y.broadcast(IxDyn(&target))?);
            if bool_out {
                let f: fn(i64, i64) -> bool = match op {
                    "Equal" => |p, q| p == q,
                    "Less" => |p, q| p < q,
                    "Greater" => |p, q| p > q,
                    "LessOrEqual" => |p, q| p <= q,
                    "GreaterOrEqual" => |p, q| p >= q,
                    "And" => |p, q| p != 0 && q != 0,
                    "Or" => |p, q| p != 0 || q != 0,
                    "Xor" => |p, q| (p != 0) != (q != 0),
                    _ => return None,
                };
                Values::Int(Zip::from(&x).and(&y).map_collect(|&p, &q| f(p, q) as i64))
            } else {
                let r: Option<ArrayD<i64>> = {
                    let mut failed = false;
                    let arr = Zip::from(&x).and(&y).map_collect(|&p, &q| match int_binary(op, p, q) {
                        Some(v) => wrap_int(dt, v),
                        None => {
                            failed = true;
                            0
                        }
                    });
                    (!failed).then_some(arr)
                };
                Values::Int(r?)
            }
        }
        _ => return None,
    };
    Some(Const { dtype: dt, values })
}

/// ONNX `Where` of three constants.
pub(super) fn where_const(c: &Const, a: &Const, b: &Const) -> Option<Const> {
    let t1 = broadcast_static(c.shape(), a.shape())?;
    let target = broadcast_static(&t1, b.shape())?;
    let Values::Int(cond) = &c.values else { return None };
    let cond = cond.broadcast(IxDyn(&target))?;
    let values = match (&a.values, &b.values) {
        (Values::Float(x), Values::Float(y)) => {
            let (x, y) = (x.broadcast(IxDyn(&target))?, y.broadcast(IxDyn(&target))?);
            Values::Float(Zip::from(&cond).and(&x).and(&y).map_collect(|&k, &p, &q| if k != 0 { p } else { q }))
        }
        (Values::Int(x), Values::Int(y)) => {
            let (x, y) = (x.broadcast(IxDyn(&target))?, y.broadcast(IxDyn(&target))?);
            Values::Int(Zip::from(&cond).and(&x).and(&y).map_collect(|&k, &p, &q| if k != 0 { p } else { q }))
        }
        _ => return None,
    };
    Some(Const { dtype: a.dtype, values })
}
