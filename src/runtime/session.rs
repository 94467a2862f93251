//! One ONNX model in an ONNX Runtime session, fed in the dtype and rank its inputs declare.
//!
//! Real exports differ: token ids as int32 or int64, the timestep as float or int64, scalar or `[batch]`,
//! fp16 or fp32 tensors. Callers hand over f32 or i64 host arrays and `Model::run` converts each to what
//! the model declares.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use ndarray::{ArrayD, IxDyn};
use ort::session::Session;
use ort::value::{DynValue, Tensor, TensorElementType, ValueType};

use super::ExecutionProvider;
use crate::{Error, Result};

/// A host-side tensor handed to a model.
#[derive(Debug, Clone)]
pub enum HostTensor {
    F32(ArrayD<f32>),
    I64(ArrayD<i64>),
}

impl HostTensor {
    fn shape(&self) -> &[usize] {
        match self {
            HostTensor::F32(a) => a.shape(),
            HostTensor::I64(a) => a.shape(),
        }
    }
}

/// What a model declares for one input.
#[derive(Debug, Clone)]
pub struct InputSpec {
    pub name: String,
    pub ty: TensorElementType,
    /// Declared dimensions; -1 where dynamic.
    pub dims: Vec<i64>,
}

/// A loaded model: the session plus what its inputs expect.
pub struct Model {
    path: PathBuf,
    session: Session,
    inputs: Vec<InputSpec>,
}

impl Model {
    pub fn load(env: &ort::environment::Environment, ep: ExecutionProvider, path: &Path) -> Result<Self> {
        if !path.is_file() {
            return Err(Error::bad_file(path, "missing ONNX model file"));
        }
        let fail =
            |e: &dyn std::fmt::Display| Error::bad_file(path, format!("ONNX Runtime could not load this model: {e}"));
        let mut builder = Session::builder(env).map_err(|e| fail(&e))?;
        builder = builder.with_execution_providers([ep.dispatch()?]).map_err(|e| fail(&e))?;
        let session = builder.commit_from_file(path).map_err(|e| fail(&e))?;
        let mut inputs = Vec::new();
        for outlet in session.inputs() {
            match outlet.dtype() {
                ValueType::Tensor { ty, shape, .. } => {
                    inputs.push(InputSpec { name: outlet.name().to_string(), ty: *ty, dims: shape.to_vec() })
                }
                other => {
                    return Err(Error::bad_file(
                        path,
                        format!("input `{}` is a {other:?}, expected a tensor", outlet.name()),
                    ));
                }
            }
        }
        Ok(Model { path: path.to_path_buf(), session, inputs })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn inputs(&self) -> &[InputSpec] {
        &self.inputs
    }

    pub fn input(&self, name: &str) -> Option<&InputSpec> {
        self.inputs.iter().find(|i| i.name == name)
    }

    /// Names of the model's outputs, in order.
    pub fn output_names(&self) -> Vec<String> {
        self.session.outputs().iter().map(|o| o.name().to_string()).collect()
    }

    /// Element type the model declares for input `name` (None if it has no such input).
    pub fn input_type(&self, name: &str) -> Option<TensorElementType> {
        self.input(name).map(|i| i.ty)
    }

    /// Runs the model and returns every floating-point output as f32, by name.
    pub fn run(&mut self, feeds: Vec<(&str, HostTensor)>) -> Result<HashMap<String, ArrayD<f32>>> {
        let mut values: Vec<(String, DynValue)> = Vec::with_capacity(feeds.len());
        for (name, tensor) in feeds {
            let spec = self
                .input(name)
                .ok_or_else(|| Error::bad_file(&self.path, format!("the model has no input named `{name}`")))?
                .clone();
            values.push((name.to_string(), self.to_value(&spec, tensor)?));
        }
        for spec in &self.inputs {
            if !values.iter().any(|(n, _)| n == &spec.name) {
                return Err(Error::bad_file(
                    &self.path,
                    format!("the model expects an input `{}` that dfast does not provide", spec.name),
                ));
            }
        }
        let path = self.path.clone();
        let outputs = self
            .session
            .run(values)
            .map_err(|e| Error::runtime(format!("{}: ONNX Runtime failed to run the model: {e}", path.display())))?;
        let mut result = HashMap::new();
        for (name, value) in outputs.iter() {
            let array = if let Ok(a) = value.try_extract_array::<f32>() {
                a.to_owned()
            } else if let Ok(a) = value.try_extract_array::<f16>() {
                a.mapv(f32::from)
            } else if let Ok(a) = value.try_extract_array::<bf16>() {
                a.mapv(f32::from)
            } else {
                continue;
            };
            result.insert(name.to_string(), array);
        }
        Ok(result)
    }

    /// Converts a host tensor to the element type and rank an input declares.
    fn to_value(&self, spec: &InputSpec, tensor: HostTensor) -> Result<DynValue> {
        let shape = tensor.shape().to_vec();
        let rank_error = || {
            Error::bad_file(
                &self.path,
                format!("input `{}` expects rank {} but dfast has shape {:?}", spec.name, spec.dims.len(), shape),
            )
        };
        // A scalar input (e.g. a timestep declared as a 0-d tensor) takes the one value a [batch] tensor repeats.
        let target: Vec<usize> = if spec.dims.is_empty() {
            let all_equal = match &tensor {
                HostTensor::F32(a) => a.iter().all(|v| Some(v) == a.iter().next()),
                HostTensor::I64(a) => a.iter().all(|v| Some(v) == a.iter().next()),
            };
            if shape.iter().product::<usize>() == 0 || !all_equal {
                return Err(rank_error());
            }
            vec![]
        } else if spec.dims.len() == shape.len() {
            shape.clone()
        } else {
            return Err(rank_error());
        };
        let as_f64: Vec<f64> = match &tensor {
            HostTensor::F32(a) => a.iter().map(|&v| v as f64).collect(),
            HostTensor::I64(a) => a.iter().map(|&v| v as f64).collect(),
        };
        let n = target.iter().product::<usize>();
        let vals = &as_f64[..n];
        let err =
            |e: ort::Error| Error::runtime(format!("{}: cannot build input `{}`: {e}", self.path.display(), spec.name));
        let value: DynValue = match (spec.ty, tensor) {
            (TensorElementType::Float32, HostTensor::F32(a)) if target == shape => {
                Tensor::from_array(a).map_err(err)?.into_dyn()
            }
            (TensorElementType::Int64, HostTensor::I64(a)) if target == shape => {
                Tensor::from_array(a).map_err(err)?.into_dyn()
            }
            (TensorElementType::Float32, _) => tensor_of(&target, vals.iter().map(|&v| v as f32)).map_err(err)?,
            (TensorElementType::Float16, _) => {
                tensor_of(&target, vals.iter().map(|&v| f16::from_f64(v))).map_err(err)?
            }
            (TensorElementType::Bfloat16, _) => {
                tensor_of(&target, vals.iter().map(|&v| bf16::from_f64(v))).map_err(err)?
            }
            (TensorElementType::Float64, _) => tensor_of(&target, vals.iter().copied()).map_err(err)?,
            (TensorElementType::Int64, _) => tensor_of(&target, vals.iter().map(|&v| v as i64)).map_err(err)?,
            (TensorElementType::Int32, _) => tensor_of(&target, vals.iter().map(|&v| v as i32)).map_err(err)?,
            (other, _) => {
                return Err(Error::bad_file(
                    &self.path,
                    format!("input `{}` has element type {other:?}, which dfast cannot feed", spec.name),
                ));
            }
        };
        Ok(value)
    }
}

fn tensor_of<T>(shape: &[usize], values: impl Iterator<Item = T>) -> ort::Result<DynValue>
where
    T: ort::value::PrimitiveTensorElementType + Clone + std::fmt::Debug + 'static,
{
    let array = ArrayD::from_shape_vec(IxDyn(shape), values.collect()).expect("shape matches the value count");
    Ok(Tensor::from_array(array)?.into_dyn())
}
