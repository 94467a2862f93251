//! One ONNX model in an ONNX Runtime session, fed in the dtype and rank its inputs declare.
//!
//! Real exports differ: token ids as int32 or int64, the timestep as float or int64, scalar or `[batch]`,
//! fp16 or fp32 tensors. Callers hand over f32 or i64 host arrays and `Model::run` converts each to what
//! the model declares.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use half::{bf16, f16};
use ndarray::{ArrayD, Axis, IxDyn};
use ort::session::Session;
use ort::value::{DynTensor, DynValue, Tensor, TensorElementType, ValueType};

use super::ep::{self, SessionRole};
use crate::settings::{EpOptions, ExecutionProvider};
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
    ep: ExecutionProvider,
    /// Inputs and outputs in device memory that stays put between runs (`bind_*`, `run_bound`).
    bound: Option<Bound>,
    /// Seconds spent moving tensors between dfast's arrays and the session since the last
    /// [`Model::take_transfer_seconds`]: building the input values (and copying them into bound device
    /// tensors), and reading the outputs back (device to host, to f32). The session's own run is not in it.
    transfer_s: f64,
}

/// Device-resident tensors bound to the session once; their contents are refreshed by copies.
struct Bound {
    binding: ort::session::IoBinding,
    allocator: ort::memory::Allocator,
    /// Input name -> (shape, device tensor).
    inputs: HashMap<String, (Vec<usize>, ort::value::DynTensor)>,
    /// Output name -> (shape, device tensor).
    outputs: HashMap<String, (Vec<usize>, ort::value::DynTensor)>,
}

impl Model {
    pub fn load(
        env: &ort::environment::Environment,
        ep: ExecutionProvider,
        options: &EpOptions,
        role: SessionRole,
        path: &Path,
    ) -> Result<Self> {
        if !path.is_file() {
            return Err(Error::bad_file(path, "missing ONNX model file"));
        }
        let fail = |e: ort::Error| Error::io(path, "ONNX Runtime could not load this model", e);
        let model_dir = path.parent().unwrap_or(Path::new("."));
        let typed = options
            .typed(ep)
            .map_err(|e| Error::bad_config(format!("session options of the {ep} execution provider: {e}"), e))?;
        let providers = ep::dispatch(&typed, role, model_dir)?;
        let mut builder = Session::builder(env).map_err(fail)?;
        if let Some(n) = typed.common().threads {
            builder = builder.with_intra_threads(n).map_err(|e| fail(Error::ort_plain(e)))?;
        }
        builder = builder.with_execution_providers(providers).map_err(|e| ep::unusable(ep, Error::ort_plain(e)))?;
        let session = builder.commit_from_file(path).map_err(|e| {
            if ep != ExecutionProvider::Cpu {
                let what = format!("ONNX Runtime could not load this model with the {} EP", ep.name());
                Error::io(path, &what, e)
            } else {
                fail(e)
            }
        })?;
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
        Ok(Model { path: path.to_path_buf(), session, inputs, ep, bound: None, transfer_s: 0.0 })
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

    /// Dimensions the model declares for output `name`, -1 where dynamic (None if it has no such tensor output).
    pub fn output_dims(&self, name: &str) -> Option<Vec<i64>> {
        self.session.outputs().iter().find(|o| o.name() == name).and_then(|o| match o.dtype() {
            ValueType::Tensor { shape, .. } => Some(shape.to_vec()),
            _ => None,
        })
    }

    /// Element type the model declares for input `name` (None if it has no such input).
    pub fn input_type(&self, name: &str) -> Option<TensorElementType> {
        self.input(name).map(|i| i.ty)
    }

    /// Runs the model and returns every floating-point output as f32, by name.
    pub fn run(&mut self, feeds: Vec<(&str, HostTensor)>) -> Result<HashMap<String, ArrayD<f32>>> {
        let t_in = Instant::now();
        let mut values: Vec<(String, DynValue)> = Vec::with_capacity(feeds.len());
        for (name, tensor) in feeds {
            let spec = self
                .input(name)
                .ok_or_else(|| Error::bad_file(&self.path, format!("the model has no input named `{name}`")))?
                .clone();
            values.push((name.to_string(), self.to_value(&spec, tensor)?.into_dyn()));
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
        self.transfer_s += t_in.elapsed().as_secs_f64();
        let outputs = self.session.run(values).map_err(|e| run_error(&path, e))?;
        let t_out = Instant::now();
        let mut result = HashMap::new();
        for (name, value) in outputs.iter() {
            if let Some(array) = to_f32(&value) {
                result.insert(name.to_string(), array);
            }
        }
        drop(outputs);
        self.transfer_s += t_out.elapsed().as_secs_f64();
        Ok(result)
    }

    /// The seconds spent moving tensors in and out since the last call (see `transfer_s`), and a reset.
    pub fn take_transfer_seconds(&mut self) -> f64 {
        std::mem::take(&mut self.transfer_s)
    }

    /// Copies `feeds` into device tensors bound to the session, allocating and binding one the first time an
    /// input is fed and when its shape changes; `run_bound` then runs on what is bound. Inputs that do not
    /// change between runs (text embeddings) are fed once; the device tensors keep their addresses, which CUDA
    /// graphs need. On the CPU EP the "device" is host memory (same code path, used by the tests).
    pub fn bind_inputs(&mut self, feeds: Vec<(&str, HostTensor)>) -> Result<()> {
        let t_in = Instant::now();
        let result = self.bind_inputs_untimed(feeds);
        self.transfer_s += t_in.elapsed().as_secs_f64();
        result
    }

    fn bind_inputs_untimed(&mut self, feeds: Vec<(&str, HostTensor)>) -> Result<()> {
        for (name, tensor) in feeds {
            let spec = self
                .input(name)
                .ok_or_else(|| Error::bad_file(&self.path, format!("the model has no input named `{name}`")))?
                .clone();
            let host = self.to_value(&spec, tensor)?;
            let shape: Vec<usize> = host.shape().iter().map(|&d| d as usize).collect();
            let path = self.path.clone();
            let err = move |what: &str, e: ort::Error| {
                Error::ort(format!("{}: cannot {what} input `{name}` on the device: {e}", path.display()), e)
            };
            let bound = self.bound_mut()?;
            let fresh = !matches!(bound.inputs.get(name), Some((s, _)) if *s == shape);
            if fresh {
                let device = ort::value::DynTensor::new(&bound.allocator, spec.ty, shape.clone())
                    .map_err(|e| err("allocate", e))?;
                bound.inputs.insert(name.to_string(), (shape, device));
            }
            let (_, device) = bound.inputs.get_mut(name).expect("inserted above");
            host.copy_into(&mut *device).map_err(|e| err("copy", e))?;
            if fresh {
                bound.binding.bind_input(name, &*device).map_err(|e| err("bind", e))?;
            }
        }
        Ok(())
    }

    /// Binds output `name` to a device tensor of `shape` (kept while the shape stays the same).
    pub fn bind_output(&mut self, name: &str, shape: &[usize]) -> Result<()> {
        let ty = self
            .session
            .outputs()
            .iter()
            .find(|o| o.name() == name)
            .and_then(|o| match o.dtype() {
                ValueType::Tensor { ty, .. } => Some(*ty),
                _ => None,
            })
            .ok_or_else(|| Error::bad_file(&self.path, format!("the model has no tensor output named `{name}`")))?;
        let path = self.path.clone();
        let bound = self.bound_mut()?;
        if matches!(bound.outputs.get(name), Some((s, _)) if s == shape) {
            return Ok(());
        }
        let err = |e: ort::Error| Error::ort(format!("{}: cannot bind output `{name}`: {e}", path.display()), e);
        let mut device = ort::value::DynTensor::new(&bound.allocator, ty, shape.to_vec()).map_err(err)?;
        bound.binding.bind_output(name, &mut device).map_err(err)?;
        bound.outputs.insert(name.to_string(), (shape.to_vec(), device));
        Ok(())
    }

    /// Runs on the bound inputs and outputs; returns the bound outputs as f32 host arrays.
    pub fn run_bound(&mut self) -> Result<HashMap<String, ArrayD<f32>>> {
        let path = self.path.clone();
        let bound = self.bound.as_mut().ok_or_else(|| Error::internal("run_bound before anything was bound"))?;
        let fail = |e: ort::Error| run_error(&path, e);
        self.session.run_binding(&bound.binding).map_err(fail)?;
        // ONNX Runtime synchronizes the device at the end of a run: from here on it is the copy back.
        let t_out = Instant::now();
        let mut result = HashMap::new();
        for (name, (_, device)) in &bound.outputs {
            let host = if device.memory_info().is_cpu_accessible() {
                None
            } else {
                Some(device.to(ort::memory::AllocationDevice::CPU, 0).map_err(fail)?)
            };
            let value = host.as_ref().unwrap_or(device);
            result.insert(
                name.clone(),
                to_f32(value)
                    .ok_or_else(|| Error::bad_file(&path, format!("output `{name}` is not a floating-point tensor")))?,
            );
        }
        self.transfer_s += t_out.elapsed().as_secs_f64();
        Ok(result)
    }

    fn bound_mut(&mut self) -> Result<&mut Bound> {
        if self.bound.is_none() {
            let err = |e: ort::Error| {
                Error::ort(format!("{}: cannot set up device buffers (IoBinding): {e}", self.path.display()), e)
            };
            let allocator = if self.ep.device_memory() {
                let info = ort::memory::MemoryInfo::new(
                    ort::memory::AllocationDevice::CUDA,
                    0,
                    ort::memory::AllocatorType::Device,
                    ort::memory::MemoryType::Default,
                )
                .map_err(err)?;
                ort::memory::Allocator::new(&self.session, info).map_err(err)?
            } else {
                ort::memory::Allocator::default()
            };
            let binding = self.session.create_binding().map_err(err)?;
            self.bound = Some(Bound { binding, allocator, inputs: HashMap::new(), outputs: HashMap::new() });
        }
        Ok(self.bound.as_mut().expect("set above"))
    }

    /// Converts a host tensor to the element type and shape an input declares (see [`fit_shape`]).
    fn to_value(&self, spec: &InputSpec, tensor: HostTensor) -> Result<DynTensor> {
        let fed = tensor.shape().to_vec();
        let tensor = fit_shape(tensor, &spec.dims).map_err(|why| {
            Error::bad_file(
                &self.path,
                format!(
                    "input `{}` is declared {} but dfast has {}{why}",
                    spec.name,
                    format_dims(&spec.dims),
                    format_dims(&fed.iter().map(|&d| d as i64).collect::<Vec<_>>())
                ),
            )
        })?;
        let shape = tensor.shape().to_vec();
        let err =
            |e: ort::Error| Error::ort(format!("{}: cannot build input `{}`: {e}", self.path.display(), spec.name), e);
        // The tensor as it is where the types agree (the latents and embeddings of every step); a detour
        // through f64 only to convert.
        let tensor = match (spec.ty, tensor) {
            (TensorElementType::Float32, HostTensor::F32(a)) => {
                return Ok(Tensor::from_array(a).map_err(err)?.upcast());
            }
            (TensorElementType::Int64, HostTensor::I64(a)) => return Ok(Tensor::from_array(a).map_err(err)?.upcast()),
            (_, t) => t,
        };
        let as_f64: Vec<f64> = match &tensor {
            HostTensor::F32(a) => a.iter().map(|&v| v as f64).collect(),
            HostTensor::I64(a) => a.iter().map(|&v| v as f64).collect(),
        };
        let vals = &as_f64[..];
        let value: DynTensor = match (spec.ty, tensor) {
            (TensorElementType::Float32, _) => tensor_of(&shape, vals.iter().map(|&v| v as f32)).map_err(err)?,
            (TensorElementType::Float16, _) => {
                tensor_of(&shape, vals.iter().map(|&v| f16::from_f64(v))).map_err(err)?
            }
            (TensorElementType::Bfloat16, _) => {
                tensor_of(&shape, vals.iter().map(|&v| bf16::from_f64(v))).map_err(err)?
            }
            (TensorElementType::Float64, _) => tensor_of(&shape, vals.iter().copied()).map_err(err)?,
            (TensorElementType::Int64, _) => tensor_of(&shape, vals.iter().map(|&v| v as i64)).map_err(err)?,
            (TensorElementType::Int32, _) => tensor_of(&shape, vals.iter().map(|&v| v as i32)).map_err(err)?,
            (other, _) => {
                return Err(Error::bad_file(
                    &self.path,
                    format!("input `{}` has element type {other:?}, which dfast cannot feed", spec.name),
                ));
            }
        };
        Ok(value)
    }

    /// The declared dimensions of input `name` when they cannot take a tensor of `shape` (`None` entries of
    /// `shape` are not checked); `None` when they can, or when the model has no such input. Callers that know
    /// why a shape was asked for (an image size) use this to say so before anything runs.
    pub fn shape_conflict(&self, name: &str, shape: &[Option<usize>]) -> Option<Vec<i64>> {
        let spec = self.input(name)?;
        let conflict = spec.dims.len() != shape.len()
            || spec.dims.iter().zip(shape).any(|(&d, s)| matches!(s, Some(n) if d >= 0 && d as usize != *n));
        conflict.then(|| spec.dims.clone())
    }
}

/// Fits a host tensor to the shape an input declares, as exports declare it:
/// - a scalar (`[]`) takes the one value that every element repeats (a timestep fed per row);
/// - a static 1 where dfast has n > 1 rows takes the first row when all rows are equal (`timestep` declared
///   `[1]` and broadcast inside the graph);
/// - a dynamic dimension, or a static one of the same size, takes the tensor as it is.
///
/// Anything else is refused with the reason, which follows "declared X but dfast has Y".
pub fn fit_shape(tensor: HostTensor, dims: &[i64]) -> std::result::Result<HostTensor, String> {
    match tensor {
        HostTensor::F32(a) => fit_array(a, dims).map(HostTensor::F32),
        HostTensor::I64(a) => fit_array(a, dims).map(HostTensor::I64),
    }
}

fn fit_array<T: Clone + PartialEq>(a: ArrayD<T>, dims: &[i64]) -> std::result::Result<ArrayD<T>, String> {
    if dims.is_empty() {
        let first = a.iter().next().cloned().ok_or_else(|| ", which is empty".to_string())?;
        if a.iter().any(|v| *v != first) {
            return Err(", whose values differ, so they cannot be one scalar".into());
        }
        return Ok(ArrayD::from_elem(IxDyn(&[]), first));
    }
    if dims.len() != a.ndim() {
        return Err(format!(" (rank {} where the model declares rank {})", a.ndim(), dims.len()));
    }
    let mut a = a;
    for (axis, &d) in dims.iter().enumerate() {
        let n = a.shape()[axis];
        if d < 0 || d as usize == n {
            continue;
        }
        let first = a.index_axis(Axis(axis), 0);
        if d == 1 && a.axis_iter(Axis(axis)).all(|row| row == first) {
            a = a.slice_axis(Axis(axis), (0..1).into()).to_owned();
            continue;
        }
        let why = if d == 1 { format!(", whose {n} entries on axis {axis} differ") } else { String::new() };
        return Err(why);
    }
    Ok(a)
}

/// `[2, 4, ?, ?]`: a shape as a model declares it, `?` where dynamic.
pub fn format_dims(dims: &[i64]) -> String {
    let parts: Vec<String> = dims.iter().map(|&d| if d < 0 { "?".into() } else { d.to_string() }).collect();
    format!("[{}]", parts.join(", "))
}

/// The marker of an error that is running out of memory (see [`is_out_of_memory`]).
const OUT_OF_MEMORY: &str = "ran out of memory";

/// ONNX Runtime's failure to run a model, as one sentence; running out of memory (`bad_alloc`, a failed
/// arena allocation, CUDA out of memory) is said so, for the caller to add which size ran out.
fn run_error(path: &Path, e: ort::Error) -> Error {
    let text = e.to_string();
    let oom = ["bad_alloc", "Failed to allocate memory", "out of memory", "CUDNN_STATUS_ALLOC_FAILED"];
    if oom.iter().any(|m| text.contains(m)) {
        let node = text.split("Name:'").nth(1).and_then(|r| r.split('\'').next()).unwrap_or("a node");
        return Error::ort(format!("{}: {OUT_OF_MEMORY} in {node}", path.display()), e);
    }
    Error::ort(format!("{}: ONNX Runtime failed to run the model: {text}", path.display()), e)
}

/// True when `e` is ONNX Runtime running out of memory.
pub fn is_out_of_memory(e: &Error) -> bool {
    matches!(e.root(), Error::Runtime { message, .. } if message.contains(OUT_OF_MEMORY))
}

/// A floating-point tensor in host memory as f32; None for other element types.
fn to_f32<T: ort::value::TensorValueTypeMarker + ?Sized>(value: &ort::value::Value<T>) -> Option<ArrayD<f32>> {
    if let Ok(a) = value.try_extract_array::<f32>() {
        Some(a.to_owned())
    } else if let Ok(a) = value.try_extract_array::<f16>() {
        Some(a.mapv(f32::from))
    } else if let Ok(a) = value.try_extract_array::<bf16>() {
        Some(a.mapv(f32::from))
    } else {
        None
    }
}

fn tensor_of<T>(shape: &[usize], values: impl Iterator<Item = T>) -> ort::Result<DynTensor>
where
    T: ort::value::PrimitiveTensorElementType + Clone + std::fmt::Debug + 'static,
{
    let array = ArrayD::from_shape_vec(IxDyn(shape), values.collect()).expect("shape matches the value count");
    Ok(Tensor::from_array(array)?.upcast())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f32s(shape: &[usize], values: &[f32]) -> HostTensor {
        HostTensor::F32(ArrayD::from_shape_vec(IxDyn(shape), values.to_vec()).unwrap())
    }

    fn shape_of(t: &HostTensor) -> Vec<usize> {
        t.shape().to_vec()
    }

    #[test]
    fn a_timestep_per_row_fits_every_declared_timestep_shape() {
        let t = || f32s(&[2], &[981.0, 981.0]);
        assert_eq!(shape_of(&fit_shape(t(), &[]).unwrap()), Vec::<usize>::new());
        let one = fit_shape(t(), &[1]).unwrap();
        assert_eq!(shape_of(&one), vec![1]);
        assert!(matches!(one, HostTensor::F32(a) if a[[0]] == 981.0));
        assert_eq!(shape_of(&fit_shape(t(), &[-1]).unwrap()), vec![2]);
        assert_eq!(shape_of(&fit_shape(t(), &[2]).unwrap()), vec![2]);
        let ids = HostTensor::I64(ArrayD::from_elem(IxDyn(&[4]), 7));
        assert!(matches!(fit_shape(ids, &[1]).unwrap(), HostTensor::I64(a) if a.shape() == [1] && a[[0]] == 7));
    }

    #[test]
    fn rows_that_differ_are_not_collapsed() {
        let err = fit_shape(f32s(&[2], &[1.0, 2.0]), &[1]).unwrap_err();
        assert!(err.contains("differ"), "{err}");
        assert!(fit_shape(f32s(&[2], &[1.0, 2.0]), &[]).is_err());
        // SDXL's pooled embeddings differ between the negative and the positive row; time_ids do not.
        let text_embeds = f32s(&[2, 2], &[0.0, 0.0, 0.5, -0.5]);
        assert!(fit_shape(text_embeds, &[1, 2]).is_err());
        let time_ids = f32s(&[2, 3], &[64.0, 96.0, 0.0, 64.0, 96.0, 0.0]);
        assert_eq!(shape_of(&fit_shape(time_ids, &[1, 3]).unwrap()), vec![1, 3]);
    }

    #[test]
    fn a_static_size_other_than_the_fed_one_is_refused() {
        let sample = f32s(&[1, 1, 2, 3], &[0.0; 6]);
        assert!(fit_shape(sample.clone(), &[1, 1, 2, 2]).is_err());
        assert!(fit_shape(sample.clone(), &[1, 1, 2]).unwrap_err().contains("rank"));
        assert_eq!(shape_of(&fit_shape(sample, &[-1, 1, -1, 3]).unwrap()), vec![1, 1, 2, 3]);
        assert_eq!(format_dims(&[2, 4, -1, -1]), "[2, 4, ?, ?]");
    }
}
