//! `dfast tune`: the int8 exclude list from measurement, on the machine at hand.
//!
//! ```text
//! 1. one denoising step of the pipeline (fp32, CPU EP of the loaded library) records the UNet's inputs
//! 2. the UNet as the base profile's passes before int8 leave it runs once on them with every candidate
//!    conv/linear input as an extra output: the real activation shapes (and, for int8-static, ranges)
//! 3. each distinct (op, shape) (ops::ShapeKey) is built as a small graph and timed on the EP, once in the
//!    alternative precision and once through the int8 pass (exclude list empty); shapes the pass leaves in
//!    float are dropped
//! 4. decide::decide: a pair [in, out] is excluded iff int8 was slower over its nodes
//! 5. the UNet step is timed whole, in the alternative precision and with the decided exclude list, and the
//!    predicted step (decide::predicted_step_ms) printed beside the measured one
//! 6. a profile (extends the EP's int8 profile, `exclude` set, timings as comments) and a timings file
//! ```
//!
//! | EP | int8 pass (profile it extends) | alternative precision (`--precision`) |
//! |---|---|---|
//! | openvino | int8-static (`int8-mixed` for auto, else `int8-static` + `[session.openvino] precision`) | the OpenVINO hint: auto (default), f32, bf16, f16 |
//! | cpu | int8-dynamic (`int8-dynamic`) | fp32 |
//! | cuda | int8-dynamic (`int8-dynamic`) | the graph in fp16 (default), bf16 or fp32, as `convert --precision` makes it (unverified: no GPU here) |
//!
//! The int8 graphs of the whole-step measurement take their activation scales from the one traced step: the
//! latency does not depend on them, the output does; convert the written profile with `dfast convert
//! --calibrate` for a pipeline to use.

pub mod decide;
pub mod ops;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::convert::Profile;
use crate::host::CpuFeatures;
use crate::manifest::Calibration;
use crate::onnx::{GraphIndex, OnnxModel, dtype, make_tensor_value_info};
use crate::passes::{BuildContext, Int8Static, PassContext, PassManager, PassSpec, registry};
use crate::pipeline::PipelineDir;
use crate::runtime::{HostTensor, Runtime, SessionRole};
use crate::settings::{EpOptions, ExecutionProvider, Precision, PrecisionHint};
use crate::{Error, Result};

pub use decide::{PairDecision, ShapeTiming};

/// What to tune.
#[derive(Debug, Clone)]
pub struct TuneOptions {
    /// The exported pipeline (ONNX layout).
    pub model: PathBuf,
    pub ep: ExecutionProvider,
    /// The alternative precision (see the module docs); `None`: the EP's default.
    pub precision: Option<PrecisionHint>,
    /// The profile to write.
    pub out: PathBuf,
    /// The timings file to write.
    pub timings: PathBuf,
    pub width: Option<usize>,
    pub height: Option<usize>,
    /// Untimed and timed calls per small graph.
    pub warmup: usize,
    pub runs: usize,
    /// Timed calls of the whole UNet step, in each precision; 0: no whole-step measurement.
    pub step_runs: usize,
    pub ort_lib: Option<PathBuf>,
    /// `--ep-option` pairs, over the profile's session options, for every session.
    pub ep_options: EpOptions,
}

/// The whole-step measurement.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepTimes {
    /// The UNet step in the alternative precision, ms (median).
    pub alt_ms: f64,
    /// The UNet step with the decided exclude list, ms (median).
    pub tuned_ms: f64,
    /// decide::predicted_step_ms.
    pub predicted_ms: f64,
}

/// Everything `dfast tune` measured and decided (the timings file).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TuneReport {
    pub model: String,
    pub ep: String,
    /// The int8 pass (`int8-static` or `int8-dynamic`).
    pub pass: String,
    /// The profile the written one extends.
    pub extends: String,
    /// The alternative precision as asked, and as it ran (`auto:bf16`).
    pub precision: String,
    pub session_options: std::collections::BTreeMap<String, String>,
    pub device: String,
    pub cpu_flags: Vec<String>,
    pub onnxruntime_version: String,
    /// The UNet call timed: its input shapes.
    pub unet_inputs: Vec<(String, Vec<usize>)>,
    pub warmup: usize,
    pub runs: usize,
    pub shapes: Vec<ShapeTiming>,
    pub decisions: Vec<PairDecision>,
    pub exclude: Vec<(usize, usize)>,
    /// Sums over the timed nodes, ms: all in the alternative precision, all in int8, as decided.
    pub sum_alt_ms: f64,
    pub sum_int8_ms: f64,
    pub sum_chosen_ms: f64,
    pub step: Option<StepTimes>,
    /// Shapes the int8 pass left in float (not timed in int8), with their node counts.
    pub not_quantized: Vec<(String, usize)>,
    pub seconds: f64,
}

/// Which pass, base profile and precision an EP tunes with.
struct Plan {
    pass: &'static str,
    /// The built-in profile whose passes (before the int8 pass) shape the graph.
    base: &'static str,
    /// The profile the written one extends.
    extends: String,
    /// Session options of every timed session (the written profile's, then `--ep-option`).
    session: EpOptions,
    /// Graph precision (cuda); Fp32 elsewhere.
    graph_precision: Precision,
    /// The precision as asked.
    precision: String,
}

fn plan(opts: &TuneOptions) -> Result<Plan> {
    let bad = |p: PrecisionHint, ep: ExecutionProvider, expected: &str| {
        Error::bad_input(format!("--precision `{p}` is not one dfast tune knows for --ep {ep}; expected {expected}"))
    };
    match opts.ep {
        ExecutionProvider::OpenVino => {
            let p = opts.precision.unwrap_or(PrecisionHint::Auto);
            let extends = if p == PrecisionHint::Auto { "int8-mixed" } else { "int8-static" };
            let mut session = Profile::load(extends)?.session_options(opts.ep);
            session.0.insert("precision".into(), p.name().into());
            Ok(Plan {
                pass: Int8Static::NAME,
                base: "int8-static",
                extends: extends.into(),
                session: session.merged(&opts.ep_options),
                graph_precision: Precision::Fp32,
                precision: p.name().into(),
            })
        }
        ExecutionProvider::Cpu | ExecutionProvider::Cuda => {
            let default = if opts.ep == ExecutionProvider::Cuda { Precision::Fp16 } else { Precision::Fp32 };
            let p = opts.precision.unwrap_or(PrecisionHint::of(default));
            let graph_precision = p.fixed().ok_or_else(|| bad(p, opts.ep, "fp32, fp16 or bf16"))?;
            if opts.ep == ExecutionProvider::Cpu && graph_precision != Precision::Fp32 {
                return Err(bad(p, opts.ep, "fp32 (the CPU EP has few half-precision kernels)"));
            }
            Ok(Plan {
                pass: crate::passes::Int8Dynamic::NAME,
                base: "int8-dynamic",
                extends: "int8-dynamic".into(),
                session: Profile::load("int8-dynamic")?.session_options(opts.ep).merged(&opts.ep_options),
                graph_precision,
                precision: graph_precision.name().into(),
            })
        }
        ExecutionProvider::TensorRt => Err(Error::bad_input(
            "dfast tune times shapes on openvino, cpu or cuda; TensorRT picks int8 kernels per layer itself (--ep)",
        )),
    }
}

/// Runs the whole tuning (see the module docs); `say` gets one line per stage and per shape.
pub fn tune(opts: &TuneOptions, say: &mut dyn FnMut(String)) -> Result<TuneReport> {
    let started = Instant::now();
    if opts.runs == 0 {
        return Err(Error::bad_input("--runs must be at least 1"));
    }
    let plan = plan(opts)?;
    let dir = PipelineDir::open(&opts.model)?;
    dir.check_size(opts.width, opts.height)?;
    let runtime = Runtime::with_options(opts.ep, opts.ep_options.clone(), opts.ort_lib.as_deref())?;
    let cpu = Runtime::new(ExecutionProvider::Cpu, Some(runtime.library()))?;
    let tmp = tempfile::Builder::new()
        .prefix("dfast-tune-")
        .tempdir()
        .map_err(|e| Error::io(std::env::temp_dir(), "cannot create a scratch folder", e))?;

    // 1-2: the UNet's inputs, the UNet before the int8 pass, its traced shapes; 3: each shape timed.
    let sample = record_unet_inputs(opts, &cpu, say)?;
    let prepared = prepare_unet(opts, &plan, &dir, say)?;
    let traced = trace_shapes(&cpu, &prepared, &sample, tmp.path(), say)?;
    let (timings, not_quantized) = time_shapes(opts, &plan, &runtime, &prepared, &traced, tmp.path(), say)?;
    // 4. The decision.
    let decisions = decide::decide(&timings);
    let exclude = decide::exclude_list(&decisions);
    let (sum_alt_ms, sum_int8_ms, sum_chosen_ms) = decide::sums(&decisions);
    // 5. The whole step, in the alternative precision and as decided.
    let step = if opts.step_runs > 0 {
        Some(time_step(opts, &plan, &runtime, prepared, traced.ranges, &exclude, &decisions, &sample, tmp.path(), say)?)
    } else {
        None
    };

    // 6. The report (the caller writes it and the profile).
    let resolved = crate::runtime::resolved(opts.ep, &plan.session)?;
    Ok(TuneReport {
        model: opts.model.display().to_string(),
        ep: opts.ep.name().into(),
        pass: plan.pass.into(),
        extends: plan.extends.clone(),
        precision: resolved.get("precision").map(str::to_string).unwrap_or(plan.precision.clone()),
        session_options: resolved.0.clone(),
        device: crate::host::cpu_name(),
        cpu_flags: CpuFeatures::host().names().into_iter().map(String::from).collect(),
        onnxruntime_version: runtime.version(),
        unet_inputs: sample.iter().map(|(n, t)| (n.clone(), host_shape(t))).collect(),
        warmup: opts.warmup,
        runs: opts.runs,
        shapes: timings,
        decisions,
        exclude,
        sum_alt_ms,
        sum_int8_ms,
        sum_chosen_ms,
        step,
        not_quantized,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// 1. The UNet's inputs of one denoising step (fp32, CPU EP).
fn record_unet_inputs(
    opts: &TuneOptions,
    cpu: &Runtime,
    say: &mut dyn FnMut(String),
) -> Result<Vec<(String, HostTensor)>> {
    say("recording the UNet's inputs of one step (fp32, CPU EP)".into());
    let settings =
        Calibration { prompts: 1, steps: 1, width: opts.width, height: opts.height, from: None, percentile: 100.0 };
    crate::convert::calibrate::record_inputs(cpu, &opts.model, &settings)?
        .unet
        .into_iter()
        .next()
        .ok_or_else(|| Error::runtime("the pipeline made no UNet call to record"))
}

/// The UNet as the base profile's passes before the int8 pass leave it, with what the int8 pass is built from.
struct Prepared {
    base: Profile,
    ctx: BuildContext,
    model: OnnxModel,
}

/// 2a. The graph as the base profile's passes before int8 leave it.
fn prepare_unet(opts: &TuneOptions, plan: &Plan, dir: &PipelineDir, say: &mut dyn FnMut(String)) -> Result<Prepared> {
    let base = Profile::load(plan.base)?;
    let card = dir.component_config("unet").ok().and_then(|c| crate::convert::ModelCard::detect("unet", &c));
    let mut ctx = BuildContext::new(opts.ep, plan.graph_precision);
    ctx.int8_exclude = crate::convert::ModelCard::exclude_or_seed(card.as_ref());
    ctx.cuda_only_fusions = base.cuda_only_fusions;
    say(format!("preparing the UNet as `{}` leaves it before {}", base.name, plan.pass));
    let mut model = OnnxModel::load(dir.component_model("unet"))?;
    let mut manager = PassManager::new();
    for name in base.passes.iter().filter(|p| *p != plan.pass) {
        if base.components(name).is_some_and(|scope| !scope.iter().any(|c| c == "unet")) {
            continue;
        }
        let info = registry::lookup(name).ok_or_else(|| Error::internal(format!("unknown pass {name}")))?;
        manager.push(info.name, info.build(&base.pass_options(name, opts.ep), &ctx)?);
    }
    manager.run(&mut model, &PassContext::new(opts.ep))?;
    Ok(Prepared { base, ctx, model })
}

/// What one traced UNet call told: the candidates grouped by distinct (op, shape), and the activation ranges.
struct TracedUnet {
    groups: Vec<(ops::ShapeKey, Vec<usize>)>,
    ranges: crate::passes::int8_static::Ranges,
    opset: i64,
}

/// 2b. One UNet call with every candidate conv/linear input as an extra output: shapes and ranges.
fn trace_shapes(
    cpu: &Runtime,
    prepared: &Prepared,
    sample: &[(String, HostTensor)],
    tmp: &Path,
    say: &mut dyn FnMut(String),
) -> Result<TracedUnet> {
    let index = GraphIndex::new(&prepared.model);
    let candidates = ops::candidates(&index);
    let mut xs: Vec<String> = candidates.iter().map(|c| c.x.clone()).collect();
    xs.sort();
    xs.dedup();
    say(format!("tracing one UNet call for the shapes of {} conv/linear inputs", xs.len()));
    let traced = trace(cpu, &prepared.model, &xs, sample, tmp)?;
    let shapes: HashMap<String, Vec<usize>> = traced.iter().map(|(k, (s, _))| (k.clone(), s.clone())).collect();
    let ranges = traced.iter().map(|(k, (_, r))| (k.clone(), *r)).collect();
    let groups = ops::group(&index, &candidates, &shapes).into_iter().collect::<Vec<_>>();
    say(format!("{} convs and linears in {} distinct shapes", candidates.len(), groups.len()));
    Ok(TracedUnet { groups, ranges, opset: prepared.model.opset("").unwrap_or(17) })
}

/// The timed shapes, and the shapes the int8 pass left in float with their node counts.
type ShapeTimes = (Vec<ShapeTiming>, Vec<(String, usize)>);

/// 3. Each distinct shape, timed once in each precision; the shapes the int8 pass leaves in float.
fn time_shapes(
    opts: &TuneOptions,
    plan: &Plan,
    runtime: &Runtime,
    prepared: &Prepared,
    traced: &TracedUnet,
    tmp: &Path,
    say: &mut dyn FnMut(String),
) -> Result<ShapeTimes> {
    let index = GraphIndex::new(&prepared.model);
    let mut timings = Vec::new();
    let mut not_quantized = Vec::new();
    let (total, mut done) = (traced.groups.len(), 0);
    for (key, nodes) in &traced.groups {
        done += 1;
        let template = index.node(nodes[0]).clone();
        let fp32 = ops::single_op_model(key, &template, traced.opset);
        let mut int8 = OnnxModel::from_proto(fp32.proto().clone(), None);
        let x_range = traced.ranges.get(&index.node(nodes[0]).input[0]).copied().unwrap_or((-1.0, 1.0));
        let ranges = HashMap::from([("x".to_string(), x_range)]);
        let int8_pass = build_int8(plan, &prepared.base, opts.ep, &prepared.ctx, &[], ranges)?;
        int8_pass.run(&mut int8, &PassContext::new(opts.ep))?;
        let label = format!("{} {}->{} {}", key.op, key.pair().0, key.pair().1, key.detail());
        if !int8.graph().node.iter().any(|n| {
            ["QuantizeLinear", "DynamicQuantizeLinear", "DequantizeLinear", "MatMulInteger"].contains(&n.op_type())
        }) {
            not_quantized.push((label, nodes.len()));
            continue;
        }
        let alt = with_precision(fp32, plan, &prepared.ctx, opts.ep)?;
        let int8 = with_precision(int8, plan, &prepared.ctx, opts.ep)?;
        let x = HostTensor::F32(ops::random_input(&key.input));
        let feeds = vec![("x".to_string(), x)];
        let alt_ms = time_model(runtime, &alt, &plan.session, &feeds, opts.warmup, opts.runs, tmp)? * 1e3;
        let int8_ms = time_model(runtime, &int8, &plan.session, &feeds, opts.warmup, opts.runs, tmp)? * 1e3;
        say(format!(
            "[{done}/{total}] {label} x{}: int8 {int8_ms:.3} ms, {} {alt_ms:.3} ms{}",
            nodes.len(),
            plan.precision,
            if int8_ms > alt_ms { "  (int8 slower)" } else { "" }
        ));
        timings.push(ShapeTiming {
            op: key.op.clone(),
            pair: key.pair(),
            detail: key.detail(),
            nodes: nodes.len(),
            int8_ms,
            alt_ms,
        });
    }
    Ok((timings, not_quantized))
}

/// 5. The whole UNet step, in the alternative precision and with the decided exclude list.
#[allow(clippy::too_many_arguments)]
fn time_step(
    opts: &TuneOptions,
    plan: &Plan,
    runtime: &Runtime,
    prepared: Prepared,
    ranges: crate::passes::int8_static::Ranges,
    exclude: &[(usize, usize)],
    decisions: &[PairDecision],
    sample: &[(String, HostTensor)],
    tmp: &Path,
    say: &mut dyn FnMut(String),
) -> Result<StepTimes> {
    let Prepared { base, ctx, model } = prepared;
    let alt_path = tmp.join("alt/model.onnx");
    let tuned_path = tmp.join("tuned/model.onnx");
    let mut tuned = OnnxModel::from_proto(model.proto().clone(), model.path().and_then(Path::parent));
    save(with_precision(model, plan, &ctx, opts.ep)?, &alt_path)?;
    build_int8(plan, &base, opts.ep, &ctx, exclude, ranges)?.run(&mut tuned, &PassContext::new(opts.ep))?;
    save(with_precision(tuned, plan, &ctx, opts.ep)?, &tuned_path)?;
    say(format!("timing the UNet step in {} ({} runs)", plan.precision, opts.step_runs));
    let alt_ms = time_file(runtime, &alt_path, SessionRole::Unet, &plan.session, sample, 1, opts.step_runs)? * 1e3;
    let _ = std::fs::remove_dir_all(alt_path.parent().expect("in a folder"));
    say(format!("timing the UNet step as tuned ({} runs)", opts.step_runs));
    let tuned_ms = time_file(runtime, &tuned_path, SessionRole::Unet, &plan.session, sample, 1, opts.step_runs)? * 1e3;
    Ok(StepTimes { alt_ms, tuned_ms, predicted_ms: decide::predicted_step_ms(alt_ms, decisions) })
}

/// The int8 pass with `exclude` and, for int8-static, the activation ranges.
fn build_int8(
    plan: &Plan,
    base: &Profile,
    ep: ExecutionProvider,
    ctx: &BuildContext,
    exclude: &[(usize, usize)],
    ranges: crate::passes::int8_static::Ranges,
) -> Result<PassManager> {
    let mut table = base.pass_options(plan.pass, ep);
    let list: Vec<toml::Value> =
        exclude.iter().map(|&(a, b)| toml::Value::Array(vec![(a as i64).into(), (b as i64).into()])).collect();
    table.insert("exclude".into(), toml::Value::Array(list));
    let mut manager = PassManager::new();
    if plan.pass == Int8Static::NAME {
        let parsed =
            registry::parse_options(&table).map_err(|e| Error::bad_config(format!("[{}] {e}", plan.pass), e))?;
        manager.push(Int8Static::NAME, Box::new(Int8Static::build(parsed, ctx)?.with_ranges(ranges)));
    } else {
        let info = registry::lookup(plan.pass).ok_or_else(|| Error::internal("int8 pass not registered"))?;
        manager.push(info.name, info.build(&table, ctx)?);
    }
    Ok(manager)
}

/// The graph in the plan's graph precision (the precision pass, as `convert --precision` runs it last).
fn with_precision(mut model: OnnxModel, plan: &Plan, ctx: &BuildContext, ep: ExecutionProvider) -> Result<OnnxModel> {
    if plan.graph_precision != Precision::Fp32 {
        let name = crate::passes::PrecisionPass::NAME;
        let info = registry::lookup(name).ok_or_else(|| Error::internal("precision pass not registered"))?;
        let mut manager = PassManager::new();
        manager.push(info.name, info.build(&toml::Table::new(), ctx)?);
        manager.run(&mut model, &PassContext::new(ep))?;
    }
    Ok(model)
}

/// A traced activation: its shape and (min, max).
type Traced = (Vec<usize>, (f32, f32));

/// Shapes and (min, max) of `tensors` in one call of `model` on `sample`.
fn trace(
    runtime: &Runtime,
    model: &OnnxModel,
    tensors: &[String],
    sample: &[(String, HostTensor)],
    tmp: &Path,
) -> Result<HashMap<String, Traced>> {
    let mut result = HashMap::new();
    // A graph input read by a conv (the UNet's first): its shape and range are the sample's. (Asking ONNX
    // Runtime for an input as an output hands back the caller's buffer, gone once the call returns.)
    let mut tensors: Vec<&String> = tensors.iter().collect();
    tensors.retain(|t| match sample.iter().find(|(n, _)| n == *t) {
        Some((_, HostTensor::F32(a))) => {
            result.insert((*t).clone(), (a.shape().to_vec(), range(a.iter().copied())));
            false
        }
        Some(_) => false,
        None => true,
    });
    let mut probe = OnnxModel::from_proto(model.proto().clone(), model.path().and_then(Path::parent));
    let graph = probe.graph_mut();
    let existing: std::collections::HashSet<String> = graph.output.iter().map(|o| o.name().to_string()).collect();
    for t in tensors.iter().filter(|t| !existing.contains(**t)) {
        graph.output.push(make_tensor_value_info(t, dtype::FLOAT, None));
    }
    let path = tmp.join("trace/model.onnx");
    save(probe, &path)?;
    let mut session = runtime.load(&path)?;
    let out = session.run(sample.iter().map(|(n, t)| (n.as_str(), t.clone())).collect())?;
    drop(session);
    let _ = std::fs::remove_dir_all(path.parent().expect("in a folder"));
    for t in tensors {
        if let Some(v) = out.get(t) {
            result.insert(t.clone(), (v.shape().to_vec(), range(v.iter().copied())));
        }
    }
    Ok(result)
}

/// (min, max) of the finite values, widened to hold 0.
fn range(values: impl Iterator<Item = f32>) -> (f32, f32) {
    let (lo, hi) = values.filter(|x| x.is_finite()).fold((0f32, 0f32), |(lo, hi), x| (lo.min(x), hi.max(x)));
    (lo, hi)
}

fn host_shape(t: &HostTensor) -> Vec<usize> {
    match t {
        HostTensor::F32(a) => a.shape().to_vec(),
        HostTensor::I64(a) => a.shape().to_vec(),
    }
}

fn save(model: OnnxModel, path: &Path) -> Result<()> {
    let dir = path.parent().expect("in a folder");
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, "cannot create", e))?;
    model.save(path)?;
    Ok(())
}

/// Median seconds of one call of `model` (saved to `tmp` first). One operator on its own: the session
/// options apply as to any other component (the UNet's `streams` do not split it).
fn time_model(
    runtime: &Runtime,
    model: &OnnxModel,
    session: &EpOptions,
    feeds: &[(String, HostTensor)],
    warmup: usize,
    runs: usize,
    tmp: &Path,
) -> Result<f64> {
    let path = tmp.join("op/model.onnx");
    let _ = std::fs::remove_dir_all(tmp.join("op"));
    save(OnnxModel::from_proto(model.proto().clone(), None), &path)?;
    time_file(runtime, &path, SessionRole::Other, session, feeds, warmup, runs)
}

/// Median seconds of one call of the model in `path`. The inputs and outputs are bound to the session once
/// (after a first, untimed call that tells the output shapes), so that a timed call is the session's run
/// alone, without converting or copying the inputs; where the session options make sessions per run shape
/// (OpenVINO's `static_shapes`, the UNet's `streams`), which nothing can be bound to, a timed call is a
/// plain run.
fn time_file(
    runtime: &Runtime,
    path: &Path,
    role: SessionRole,
    session: &EpOptions,
    feeds: &[(String, HostTensor)],
    warmup: usize,
    runs: usize,
) -> Result<f64> {
    let mut m = runtime.load_with(path, session, role)?;
    let owned = || feeds.iter().map(|(n, t)| (n.as_str(), t.clone())).collect::<Vec<_>>();
    let first = m.run(owned())?;
    let bound = m.can_bind();
    if bound {
        for (name, out) in &first {
            m.bind_output(name, out.shape())?;
        }
        m.bind_inputs(owned())?;
    }
    let mut call = || -> Result<f64> {
        let t = Instant::now();
        if bound {
            m.run_bound()?;
        } else {
            m.run(owned())?;
        }
        Ok(t.elapsed().as_secs_f64())
    };
    for _ in 1..warmup.max(1) {
        call()?;
    }
    let times = (0..runs.max(1)).map(|_| call()).collect::<Result<Vec<_>>>()?;
    Ok(crate::host::median(&times))
}

/// The profile `dfast tune` writes: it extends the EP's int8 profile and sets the exclude list; the
/// timings are comments.
pub fn profile_text(report: &TuneReport, name: &str, command: &str) -> String {
    let mut s = String::new();
    let alt = &report.precision;
    s.push_str(&format!("# Written by `{command}`\n"));
    s.push_str(&format!(
        "# on {} ({}), ONNX Runtime {}, {} EP; UNet call {}.\n",
        report.device,
        if report.cpu_flags.is_empty() {
            "no AVX-512/VNNI/bf16/AMX flags".to_string()
        } else {
            report.cpu_flags.join(" ")
        },
        report.onnxruntime_version,
        report.ep,
        report.unet_inputs.iter().map(|(n, s)| format!("{n} {s:?}")).collect::<Vec<_>>().join(", ")
    ));
    s.push_str(&format!(
        "# Each distinct conv/linear shape timed once as its own small graph ({} warm-up + {} timed calls, \
         median), in int8 ({}) and in {alt}.\n# A pair [in, out] is excluded when int8 was slower over its nodes \
         (time x nodes). Timings in ms per call:\n",
        report.warmup, report.runs, report.pass
    ));
    for d in &report.decisions {
        s.push_str(&format!(
            "#   [{}, {}] x{}: int8 {:.3}, {alt} {:.3} -> {}\n",
            d.pair.0,
            d.pair.1,
            d.nodes,
            d.int8_ms,
            d.alt_ms,
            if d.exclude { "excluded" } else { "int8" }
        ));
        for t in report.shapes.iter().filter(|t| t.pair == d.pair) {
            s.push_str(&format!(
                "#       {} {} x{}: int8 {:.3}, {alt} {:.3}\n",
                t.op, t.detail, t.nodes, t.int8_ms, t.alt_ms
            ));
        }
    }
    for (label, n) in &report.not_quantized {
        s.push_str(&format!("#   not quantized by {}: {label} x{n}\n", report.pass));
    }
    s.push_str(&format!(
        "# Sums over the timed nodes: {alt} {:.1} ms, int8 {:.1} ms, as decided {:.1} ms.\n",
        report.sum_alt_ms, report.sum_int8_ms, report.sum_chosen_ms
    ));
    if let Some(step) = &report.step {
        s.push_str(&format!(
            "# UNet step: {alt} {:.1} ms measured; as decided {:.1} ms predicted, {:.1} ms measured.\n",
            step.alt_ms, step.predicted_ms, step.tuned_ms
        ));
    }
    s.push_str(&format!("name = {}\n", toml::Value::from(name)));
    s.push_str(&format!("extends = {}\n", toml::Value::from(report.extends.as_str())));
    s.push_str(&format!(
        "description = {}\n",
        toml::Value::from(format!(
            "{} with the exclude list measured by dfast tune on {} ({} EP, int8 vs {alt})",
            report.extends, report.device, report.ep
        ))
    ));
    s.push_str(&format!("eps = [{}]\n", toml::Value::from(report.ep.as_str())));
    if report.extends == "int8-static" && report.ep == "openvino" {
        let asked = report.precision.trim_start_matches("auto:");
        s.push_str(&format!("\n[session.openvino]\nprecision = {}\n", toml::Value::from(asked)));
    }
    let list: Vec<String> = report.exclude.iter().map(|(a, b)| format!("[{a}, {b}]")).collect();
    s.push_str(&format!("\n[{}]\nexclude = [{}]\n", report.pass, list.join(", ")));
    s
}
