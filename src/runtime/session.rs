//! One ONNX model in an ONNX Runtime session, fed in the dtype and rank its inputs declare.
//!
//! Real exports differ: token ids as int32 or int64, the timestep as float or int64, scalar or `[batch]`,
//! fp16 or fp32 tensors. Callers hand over f32 or i64 host arrays and `Model::run` converts each to what
//! the model declares.
//!
//! Usually the session is made when the model is loaded. OpenVINO's `static_shapes` and `streams` options
//! make sessions at the first run instead, when the shapes are known ([`Lanes`]):
//!
//! ```text
//! run(sample [2,4,64,64], timestep [2], encoder_hidden_states [2,77,768]), streams = 2:
//!
//!   part 0: sample [1,4,64,64], timestep [1], ehs [1,77,768] ──> lane 0 (session, 1 thread) ──┐
//!   part 1: sample [1,4,64,64], timestep [1], ehs [1,77,768] ──> lane 1 (session, 1 thread) ──┴─> concat ─> [2,...]
//! ```
//!
//! Each lane's session is compiled for its part's shapes (`reshape_input`) when `static_shapes` is on, and
//! made again when they change. The parts are the batch split along axis 0 (the inputs whose first axis is
//! dynamic and holds the batch); the others go whole to every lane. A batch smaller than `streams` uses as
//! many lanes as it has rows.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use half::{bf16, f16};
use ndarray::{ArrayD, Axis, IxDyn};
use ort::session::Session;
use ort::value::{DynTensor, DynValue, Tensor, TensorElementType, ValueType};

use super::ep::{self, SessionRole};
use crate::onnx::{GraphIndex, OnnxModel};
use crate::settings::{EpOptions, ExecutionProvider, SessionOptions};
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

    /// Rows `lo..hi` of the first axis.
    fn rows(&self, lo: usize, hi: usize) -> HostTensor {
        match self {
            HostTensor::F32(a) => HostTensor::F32(a.slice_axis(Axis(0), (lo..hi).into()).to_owned()),
            HostTensor::I64(a) => HostTensor::I64(a.slice_axis(Axis(0), (lo..hi).into()).to_owned()),
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

/// What a model declares for one output.
#[derive(Debug, Clone)]
struct OutputSpec {
    name: String,
    ty: TensorElementType,
    dims: Vec<i64>,
}

/// A loaded model: its session(s) plus what its inputs expect.
pub struct Model {
    path: PathBuf,
    sessions: Sessions,
    inputs: Vec<InputSpec>,
    outputs: Vec<OutputSpec>,
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

/// The session a model runs on: one made at load, or lanes made at the first run.
enum Sessions {
    One(Session),
    Lanes(Lanes),
}

/// What makes a session: everything `Model::load` was given.
#[derive(Clone)]
struct Recipe {
    env: ort::environment::Environment,
    ep: ExecutionProvider,
    options: SessionOptions,
    role: SessionRole,
    path: PathBuf,
}

impl Recipe {
    fn make(&self, options: &SessionOptions) -> Result<Session> {
        let (path, ep) = (self.path.as_path(), self.ep);
        let fail = |e: ort::Error| Error::io(path, "ONNX Runtime could not load this model", e);
        let model_dir = path.parent().unwrap_or(Path::new("."));
        let providers = ep::dispatch(options, self.role, model_dir)?;
        let mut builder = Session::builder(&self.env).map_err(fail)?;
        if let Some(n) = options.common().threads {
            builder = builder.with_intra_threads(n).map_err(|e| fail(Error::ort_plain(e)))?;
        }
        let _ = super::library::take_logged_error();
        builder = builder
            .with_execution_providers(providers)
            .map_err(|e| ep::unusable(ep, Error::ort_plain(e), super::library::take_logged_error(), options))?;
        builder.commit_from_file(path).map_err(|e| {
            if ep != ExecutionProvider::Cpu {
                let what = format!("ONNX Runtime could not load this model with the {} EP", ep.name());
                Error::io(path, &what, e)
            } else {
                fail(e)
            }
        })
    }
}

/// Sessions made at the first run, one per part of the batch (see the module docs).
struct Lanes {
    recipe: Recipe,
    /// Parts of the batch (`streams`, 1 for the sessions of other roles).
    parts: usize,
    static_shapes: bool,
    /// Per lane: the input shapes its session was compiled for, and the session.
    lanes: Vec<(Vec<Vec<usize>>, Session)>,
}

impl Lanes {
    /// `Some` when the options ask for sessions made at the first run.
    fn planned(recipe: &Recipe) -> Result<Option<Lanes>> {
        let SessionOptions::OpenVino(o) = &recipe.options else { return Ok(None) };
        let static_shapes = o.static_shapes.unwrap_or(false);
        let parts = if recipe.role == SessionRole::Unet { o.streams.unwrap_or(1) } else { 1 };
        if parts == 0 {
            return Err(Error::bad_input("EP option `streams` must be at least 1"));
        }
        if parts == 1 && !static_shapes {
            return Ok(None);
        }
        if o.io_binding == Some(true) {
            return Err(Error::bad_input(
                "EP options `static_shapes` and `streams` make sessions per run shape, which `io_binding` cannot follow",
            ));
        }
        Ok(Some(Lanes { recipe: recipe.clone(), parts, static_shapes, lanes: Vec::new() }))
    }

    /// The options of lane `index` of `count`, compiled for `shapes` (names and shapes of its inputs) when
    /// static: its share of the threads and, with several lanes, no pinning.
    fn lane_options(&self, count: usize, shapes: &[(&str, &[usize])]) -> SessionOptions {
        let SessionOptions::OpenVino(mut o) = self.recipe.options.clone() else {
            unreachable!("lanes are planned for openvino only")
        };
        if count > 1 {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            o.threads = Some(o.threads.unwrap_or(cores).div_ceil(count).max(1));
            o.cpu_pinning = Some(false);
        }
        if self.static_shapes {
            let dims = |s: &[usize]| s.iter().map(usize::to_string).collect::<Vec<_>>().join(",");
            let spec: Vec<String> = shapes.iter().map(|(n, s)| format!("{n}[{}]", dims(s))).collect();
            o.ort.insert("reshape_input".into(), spec.join(","));
        }
        SessionOptions::OpenVino(o)
    }
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
        let typed = options
            .typed(ep)
            .map_err(|e| Error::bad_config(format!("session options of the {ep} execution provider: {e}"), e))?;
        // ONNX Runtime makes every thread asked for (1,130 threads and 16 GB for `threads=100000`).
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        if let Some(n) = typed.common().threads.filter(|&n| n > cores) {
            return Err(Error::bad_input(format!(
                "EP option `threads={n}` is more than the {cores} logical CPUs this machine has; expected 1 to {cores}"
            )));
        }
        let recipe = Recipe { env: env.clone(), ep, options: typed, role, path: path.to_path_buf() };
        let (sessions, inputs, outputs) = match Lanes::planned(&recipe)? {
            Some(lanes) => {
                let (inputs, outputs) = declared_io(path)?;
                (Sessions::Lanes(lanes), inputs, outputs)
            }
            None => {
                let session = recipe.make(&recipe.options)?;
                let (inputs, outputs) = session_io(&session, path)?;
                (Sessions::One(session), inputs, outputs)
            }
        };
        Ok(Model { path: path.to_path_buf(), sessions, inputs, outputs, ep, bound: None, transfer_s: 0.0 })
    }

    /// Whether inputs and outputs can be bound to device buffers (IoBinding): not where the session options
    /// make sessions per run shape (OpenVINO's `static_shapes`, the UNet's `streams`).
    pub fn can_bind(&self) -> bool {
        matches!(self.sessions, Sessions::One(_))
    }

    /// The one session of a model loaded the usual way (IoBinding needs it).
    fn session(&mut self) -> Result<&mut Session> {
        match &mut self.sessions {
            Sessions::One(session) => Ok(session),
            Sessions::Lanes(_) => Err(Error::internal("device buffers on a model whose sessions follow its runs")),
        }
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
        self.outputs.iter().map(|o| o.name.clone()).collect()
    }

    /// Dimensions the model declares for output `name`, -1 where dynamic (None if it has no such tensor output).
    pub fn output_dims(&self, name: &str) -> Option<Vec<i64>> {
        self.outputs.iter().find(|o| o.name == name).map(|o| o.dims.clone())
    }

    /// Element type the model declares for input `name` (None if it has no such input).
    pub fn input_type(&self, name: &str) -> Option<TensorElementType> {
        self.input(name).map(|i| i.ty)
    }

    /// Runs the model and returns every floating-point output as f32, by name.
    pub fn run(&mut self, feeds: Vec<(&str, HostTensor)>) -> Result<HashMap<String, ArrayD<f32>>> {
        let t_in = Instant::now();
        let mut fitted: Vec<(InputSpec, HostTensor)> = Vec::with_capacity(feeds.len());
        for (name, tensor) in feeds {
            let spec = self
                .input(name)
                .ok_or_else(|| Error::bad_file(&self.path, format!("the model has no input named `{name}`")))?
                .clone();
            let tensor = fit(&self.path, &spec, tensor)?;
            fitted.push((spec, tensor));
        }
        for spec in &self.inputs {
            if !fitted.iter().any(|(s, _)| s.name == spec.name) {
                return Err(Error::bad_file(
                    &self.path,
                    format!("the model expects an input `{}` that dfast does not provide", spec.name),
                ));
            }
        }
        let path = self.path.clone();
        let (result, transfer_s) = match &mut self.sessions {
            Sessions::One(session) => {
                let values = fitted
                    .into_iter()
                    .map(|(spec, t)| Ok((spec.name.clone(), to_value(&path, &spec, t)?.into_dyn())))
                    .collect::<Result<Vec<(String, DynValue)>>>()?;
                let transfer_in = t_in.elapsed().as_secs_f64();
                let (result, transfer_out) = run_session(session, values, &path)?;
                (result, transfer_in + transfer_out)
            }
            Sessions::Lanes(lanes) => lanes.run(fitted, &path)?,
        };
        self.transfer_s += transfer_s;
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
            let host = to_value(&self.path, &spec, tensor)?;
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
            .outputs
            .iter()
            .find(|o| o.name == name)
            .map(|o| o.ty)
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
        let Sessions::One(session) = &mut self.sessions else {
            return Err(Error::internal("run_bound on a model whose sessions follow its runs"));
        };
        session.run_binding(&bound.binding).map_err(fail)?;
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
            let path = self.path.clone();
            let err = |e: ort::Error| {
                Error::ort(format!("{}: cannot set up device buffers (IoBinding): {e}", path.display()), e)
            };
            let device_memory = self.ep.device_memory();
            let session = self.session()?;
            let allocator = if device_memory {
                let info = ort::memory::MemoryInfo::new(
                    ort::memory::AllocationDevice::CUDA,
                    0,
                    ort::memory::AllocatorType::Device,
                    ort::memory::MemoryType::Default,
                )
                .map_err(err)?;
                ort::memory::Allocator::new(session, info).map_err(err)?
            } else {
                ort::memory::Allocator::default()
            };
            let binding = session.create_binding().map_err(err)?;
            self.bound = Some(Bound { binding, allocator, inputs: HashMap::new(), outputs: HashMap::new() });
        }
        Ok(self.bound.as_mut().expect("set above"))
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

impl Lanes {
    /// Runs `fitted` (every input, in its declared shape) split over the lanes, making the sessions the
    /// parts need; the outputs joined along the batch axis, and the seconds spent moving tensors.
    fn run(&mut self, fitted: Vec<(InputSpec, HostTensor)>, path: &Path) -> Result<Outputs> {
        let t_in = Instant::now();
        // The batch: the first axis of the first input of rank 2 or more whose first axis is dynamic.
        let splits =
            |spec: &InputSpec, t: &HostTensor| spec.dims.first().is_some_and(|&d| d < 0) && !t.shape().is_empty();
        let batch =
            fitted.iter().find(|(spec, t)| splits(spec, t) && t.shape().len() >= 2).map_or(1, |(_, t)| t.shape()[0]);
        let count = self.parts.min(batch).max(1);
        let bounds: Vec<(usize, usize)> = (0..count).map(|i| (i * batch / count, (i + 1) * batch / count)).collect();
        let parts: Vec<Vec<(InputSpec, HostTensor)>> = bounds
            .iter()
            .map(|&(lo, hi)| {
                fitted
                    .iter()
                    .map(|(spec, t)| {
                        let part = if count > 1 && splits(spec, t) && t.shape()[0] == batch {
                            t.rows(lo, hi)
                        } else {
                            t.clone()
                        };
                        (spec.clone(), part)
                    })
                    .collect()
            })
            .collect();
        // Sessions for these shapes: kept while the lane count and (static) shapes stay, else made again,
        // the old ones dropped first (each holds the weights).
        let shapes: Vec<Vec<Vec<usize>>> =
            parts.iter().map(|p| p.iter().map(|(_, t)| t.shape().to_vec()).collect()).collect();
        let fits = self.lanes.len() == count
            && (!self.static_shapes || self.lanes.iter().zip(&shapes).all(|((made, _), want)| made == want));
        if !fits {
            self.lanes.clear();
            for (part, want) in parts.iter().zip(&shapes) {
                let named: Vec<(&str, &[usize])> =
                    part.iter().map(|(spec, t)| (spec.name.as_str(), t.shape())).collect();
                let options = self.lane_options(count, &named);
                self.lanes.push((want.clone(), self.recipe.make(&options)?));
            }
        }
        let mut transfer_s = t_in.elapsed().as_secs_f64();
        let runs: Vec<Result<Outputs>> = std::thread::scope(|scope| {
            let handles: Vec<_> = self
                .lanes
                .iter_mut()
                .zip(parts)
                .map(|((_, session), part)| {
                    scope.spawn(move || {
                        let t = Instant::now();
                        let values = part
                            .into_iter()
                            .map(|(spec, t)| Ok((spec.name.clone(), to_value(path, &spec, t)?.into_dyn())))
                            .collect::<Result<Vec<(String, DynValue)>>>()?;
                        let transfer_in = t.elapsed().as_secs_f64();
                        let (result, transfer_out) = run_session(session, values, path)?;
                        Ok((result, transfer_in + transfer_out))
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Err(Error::internal("a lane's thread panicked"))))
                .collect()
        });
        let t_out = Instant::now();
        let mut results = Vec::with_capacity(runs.len());
        for run in runs {
            let (result, seconds) = run?;
            transfer_s += seconds / count as f64;
            results.push(result);
        }
        let mut joined = HashMap::new();
        let names: Vec<String> = results.first().map(|r| r.keys().cloned().collect()).unwrap_or_default();
        for name in names {
            let views: Vec<_> = results.iter().filter_map(|r| r.get(&name)).map(|a| a.view()).collect();
            let array = if views.len() == 1 {
                views[0].to_owned()
            } else {
                ndarray::concatenate(Axis(0), &views)
                    .map_err(|e| Error::internal(format!("joining output `{name}` of the lanes: {e}")))?
            };
            joined.insert(name, array);
        }
        transfer_s += t_out.elapsed().as_secs_f64();
        Ok((joined, transfer_s))
    }
}

/// Floating-point outputs as f32 by name, and the seconds spent moving tensors for them.
type Outputs = (HashMap<String, ArrayD<f32>>, f64);

/// Runs `values` on `session`: every floating-point output as f32 by name, and the seconds spent reading
/// them back.
fn run_session(session: &mut Session, values: Vec<(String, DynValue)>, path: &Path) -> Result<Outputs> {
    let outputs = session.run(values).map_err(|e| run_error(path, e))?;
    let t_out = Instant::now();
    let mut result = HashMap::new();
    for (name, value) in outputs.iter() {
        if let Some(array) = to_f32(&value) {
            result.insert(name.to_string(), array);
        }
    }
    drop(outputs);
    Ok((result, t_out.elapsed().as_secs_f64()))
}

/// The inputs and outputs a session reports.
fn session_io(session: &Session, path: &Path) -> Result<(Vec<InputSpec>, Vec<OutputSpec>)> {
    let tensor = |outlet: &ort::value::Outlet, what: &str| match outlet.dtype() {
        ValueType::Tensor { ty, shape, .. } => Ok((*ty, shape.to_vec())),
        other => Err(Error::bad_file(path, format!("{what} `{}` is a {other:?}, expected a tensor", outlet.name()))),
    };
    let mut inputs = Vec::new();
    for outlet in session.inputs() {
        let (ty, dims) = tensor(outlet, "input")?;
        inputs.push(InputSpec { name: outlet.name().to_string(), ty, dims });
    }
    let mut outputs = Vec::new();
    for outlet in session.outputs() {
        // Outputs that are not tensors are not read (as before): they have no spec.
        if let Ok((ty, dims)) = tensor(outlet, "output") {
            outputs.push(OutputSpec { name: outlet.name().to_string(), ty, dims });
        }
    }
    Ok((inputs, outputs))
}

/// The inputs and outputs the ONNX file declares (for a model whose sessions are made at its first run);
/// initializers listed as graph inputs are not inputs.
fn declared_io(path: &Path) -> Result<(Vec<InputSpec>, Vec<OutputSpec>)> {
    let model = OnnxModel::load(path)?;
    let index = GraphIndex::new(&model);
    let graph = model.graph();
    let initializers: std::collections::HashSet<&str> = graph.initializer.iter().map(|t| t.name()).collect();
    let spec = |name: &str| -> Result<(TensorElementType, Vec<i64>)> {
        let ty = index
            .declared_elem_type(name)
            .and_then(element_type)
            .ok_or_else(|| Error::bad_file(path, format!("`{name}` is not declared a tensor of a type dfast knows")))?;
        let dims = index.declared_shape(name).unwrap_or_default().iter().map(|d| d.unwrap_or(-1)).collect();
        Ok((ty, dims))
    };
    let mut inputs = Vec::new();
    for v in graph.input.iter().filter(|v| !initializers.contains(v.name())) {
        let (ty, dims) = spec(v.name())?;
        inputs.push(InputSpec { name: v.name().to_string(), ty, dims });
    }
    let mut outputs = Vec::new();
    for v in &graph.output {
        let (ty, dims) = spec(v.name())?;
        outputs.push(OutputSpec { name: v.name().to_string(), ty, dims });
    }
    Ok((inputs, outputs))
}

/// ONNX Runtime's element type for an ONNX `TensorProto.DataType`.
fn element_type(onnx: i32) -> Option<TensorElementType> {
    use crate::onnx::dtype;
    Some(match onnx {
        dtype::FLOAT => TensorElementType::Float32,
        dtype::FLOAT16 => TensorElementType::Float16,
        dtype::BFLOAT16 => TensorElementType::Bfloat16,
        dtype::DOUBLE => TensorElementType::Float64,
        dtype::INT64 => TensorElementType::Int64,
        dtype::INT32 => TensorElementType::Int32,
        dtype::INT8 => TensorElementType::Int8,
        dtype::UINT8 => TensorElementType::Uint8,
        dtype::BOOL => TensorElementType::Bool,
        _ => return None,
    })
}

/// `tensor` in the shape input `spec` declares (see [`fit_shape`]), or the sentence why it does not fit.
fn fit(path: &Path, spec: &InputSpec, tensor: HostTensor) -> Result<HostTensor> {
    let fed = tensor.shape().to_vec();
    fit_shape(tensor, &spec.dims).map_err(|why| {
        Error::bad_file(
            path,
            format!(
                "input `{}` is declared {} but dfast has {}{why}",
                spec.name,
                format_dims(&spec.dims),
                format_dims(&fed.iter().map(|&d| d as i64).collect::<Vec<_>>())
            ),
        )
    })
}

/// Converts a host tensor to the element type and shape an input declares (see [`fit_shape`]).
fn to_value(path: &Path, spec: &InputSpec, tensor: HostTensor) -> Result<DynTensor> {
    let tensor = fit(path, spec, tensor)?;
    let shape = tensor.shape().to_vec();
    let err = |e: ort::Error| Error::ort(format!("{}: cannot build input `{}`: {e}", path.display(), spec.name), e);
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
        (TensorElementType::Float16, _) => tensor_of(&shape, vals.iter().map(|&v| f16::from_f64(v))).map_err(err)?,
        (TensorElementType::Bfloat16, _) => tensor_of(&shape, vals.iter().map(|&v| bf16::from_f64(v))).map_err(err)?,
        (TensorElementType::Float64, _) => tensor_of(&shape, vals.iter().copied()).map_err(err)?,
        (TensorElementType::Int64, _) => tensor_of(&shape, vals.iter().map(|&v| v as i64)).map_err(err)?,
        (TensorElementType::Int32, _) => tensor_of(&shape, vals.iter().map(|&v| v as i32)).map_err(err)?,
        (other, _) => {
            return Err(Error::bad_file(
                path,
                format!("input `{}` has element type {other:?}, which dfast cannot feed", spec.name),
            ));
        }
    };
    Ok(value)
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
