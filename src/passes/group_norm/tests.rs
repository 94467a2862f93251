//! The matcher against ONNX Runtime's CPU run of the unrewritten graph (the fused ops have no CPU kernel),
//! and the rewrite's structure.

use ndarray::{ArrayD, IxDyn};

use super::*;
use crate::manifest::PassRecord;
use crate::onnx::{ModelProto, TensorProto, make_tensor_value_info};
use crate::passes::testing::count;
use crate::passes::testing::{noise, relative_l2, tiny};
use crate::passes::{Cleanup, PassManager};
use crate::runtime::{HostTensor, Runtime};
use crate::settings::{ExecutionProvider, Precision};

const N: usize = 2;
const H: usize = 4;
const W: usize = 3;

/// What feeds the normalization.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Input {
    /// x [N, C, H, W].
    Plain,
    /// x = a + s, s [N, C, H, W]; `also_out`: x is a graph output too.
    Residual { also_out: bool },
    /// x = a + s, s [N, C, 1, 1] (the time embedding).
    Broadcast,
}

fn f32_init(name: &str, dims: &[usize], values: Vec<f32>) -> TensorProto {
    tensor::tensor_from_f32(name, &ArrayD::from_shape_vec(IxDyn(dims), values).unwrap())
}

fn i64_init(name: &str, values: &[i64]) -> TensorProto {
    tensor::tensor_from_i64(name, &Array1::from(values.to_vec()).into_dyn())
}

fn node(op: &str, inputs: &[&str], outputs: &[&str]) -> NodeBuilder {
    NodeBuilder::new(op).inputs(inputs.iter().copied()).outputs(outputs.iter().copied())
}

/// A GroupNorm over C channels in G groups, in `form`, with optional SiLU, fed as `input`; output `y`.
fn graph(form: Form, c: usize, g: usize, silu: bool, input: Input) -> OnnxModel {
    let mut m = ModelProto::new();
    m.set_ir_version(if form == Form::Native { 10 } else { 8 });
    m.opset_import.push(crate::onnx::make_opset("", if form == Form::Native { 21 } else { 17 }));
    let gr = m.graph.mut_or_insert_default();
    let full = [Some(N as i64), Some(c as i64), Some(H as i64), Some(W as i64)];
    match input {
        Input::Plain => gr.input.push(make_tensor_value_info("x", dtype::FLOAT, Some(&full))),
        Input::Residual { also_out } => {
            gr.input.push(make_tensor_value_info("a", dtype::FLOAT, Some(&full)));
            gr.input.push(make_tensor_value_info("s", dtype::FLOAT, Some(&full)));
            gr.node.push(node("Add", &["a", "s"], &["x"]).build());
            if also_out {
                gr.output.push(make_tensor_value_info("x", dtype::FLOAT, None));
            }
        }
        Input::Broadcast => {
            let b = [Some(N as i64), Some(c as i64), Some(1), Some(1)];
            gr.input.push(make_tensor_value_info("a", dtype::FLOAT, Some(&full)));
            gr.input.push(make_tensor_value_info("s", dtype::FLOAT, Some(&b)));
            // The skip first: the matcher finds the full-shaped operand.
            gr.node.push(node("Add", &["s", "a"], &["x"]).build());
        }
    }
    gr.output.push(make_tensor_value_info("y", dtype::FLOAT, None));
    let gamma: Vec<f32> = noise(c, 7).iter().map(|v| 1.0 + 0.5 * v).collect();
    let beta = noise(c, 8);
    let y0 = if silu { "y0" } else { "y" };
    match form {
        Form::Native => {
            gr.initializer.push(f32_init("gamma", &[c], gamma));
            gr.initializer.push(f32_init("beta", &[c], beta));
            gr.node.push(
                node("GroupNormalization", &["x", "gamma", "beta"], &[y0])
                    .attr_int("num_groups", g as i64)
                    .attr_float("epsilon", 1e-5)
                    .build(),
            );
        }
        Form::InstanceNorm | Form::Decomposed => {
            gr.initializer.push(f32_init("gamma", &[c, 1, 1], gamma));
            gr.initializer.push(f32_init("beta", &[c, 1, 1], beta));
            gr.initializer.push(i64_init("grouped", &[0, g as i64, -1]));
            gr.node.push(node("Reshape", &["x", "grouped"], &["r"]).build());
            if form == Form::InstanceNorm {
                gr.initializer.push(f32_init("ones", &[g], vec![1.0; g]));
                gr.initializer.push(f32_init("zeros", &[g], vec![0.0; g]));
                gr.node.push(
                    node("InstanceNormalization", &["r", "ones", "zeros"], &["n"]).attr_float("epsilon", 1e-5).build(),
                );
                gr.node.push(node("Shape", &["x"], &["xs"]).build());
            } else {
                gr.initializer.push(f32_init("two", &[], vec![2.0]));
                gr.initializer.push(f32_init("eps", &[], vec![1e-6]));
                gr.initializer.push(i64_init("xs", &[N as i64, c as i64, H as i64, W as i64]));
                let mean = |i: &str, o: &str| node("ReduceMean", &[i], &[o]).attr_ints("axes", &[-1]).build();
                gr.node.extend([
                    mean("r", "m"),
                    node("Sub", &["r", "m"], &["d"]).build(),
                    node("Pow", &["d", "two"], &["p"]).build(),
                    mean("p", "v"),
                    node("Add", &["v", "eps"], &["ve"]).build(),
                    node("Sqrt", &["ve"], &["sd"]).build(),
                    node("Div", &["d", "sd"], &["n"]).build(),
                ]);
            }
            gr.node.extend([
                node("Reshape", &["n", "xs"], &["yb"]).build(),
                node("Mul", &["yb", "gamma"], &["ym"]).build(),
                node("Add", &["beta", "ym"], &[y0]).build(),
            ]);
        }
    }
    if silu {
        gr.node.push(node("Sigmoid", &["y0"], &["sg"]).build());
        gr.node.push(node("Mul", &["sg", "y0"], &["y"]).build());
    }
    OnnxModel::from_proto(m, None)
}

/// Random feeds for the graph's inputs.
fn feeds(model: &OnnxModel, seed: u64) -> Vec<(String, ArrayD<f32>)> {
    let index = GraphIndex::new(model);
    model
        .graph()
        .input
        .iter()
        .enumerate()
        .map(|(k, v)| {
            let dims: Vec<usize> =
                index.declared_shape(v.name()).unwrap().into_iter().map(|d| d.unwrap() as usize).collect();
            // An offset and a spread per input, so that mean and variance matter.
            let values = noise(dims.iter().product(), seed + k as u64).iter().map(|v| 0.3 + 2.0 * v).collect();
            (v.name().to_string(), ArrayD::from_shape_vec(IxDyn(&dims), values).unwrap())
        })
        .collect()
}

/// `y` of the graph as ONNX Runtime (CPU) computes it.
fn run_ort(model: &OnnxModel, feeds: &[(String, ArrayD<f32>)]) -> ArrayD<f32> {
    let runtime = Runtime::new(ExecutionProvider::Cpu, None).expect("ONNX Runtime loads");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gn.onnx");
    model.save(&path).unwrap();
    let mut session = runtime.load(&path).unwrap();
    let mut out = session.run(feeds.iter().map(|(n, t)| (n.as_str(), HostTensor::F32(t.clone()))).collect()).unwrap();
    out.remove("y").unwrap()
}

/// GroupNorm (+SiLU) (+residual) of the feeds, from the parameters the matcher extracted (f64 inside).
fn reference(m: &Match, feeds: &[(String, ArrayD<f32>)]) -> ArrayD<f32> {
    let get = |name: &str| feeds.iter().find(|(n, _)| n == name).map(|(_, t)| t.clone()).unwrap();
    let x = match &m.skip {
        None => get(&m.x),
        Some(s) => {
            let (a, b) = (get(&s.input), get(&s.skip));
            assert_eq!(s.broadcast, b.shape()[2] == 1 && a.shape()[2] != 1);
            &a + &b
        }
    };
    let [n, c, h, w] = x.shape()[..] else { panic!("rank 4") };
    assert_eq!(c, m.channels);
    let per = c / m.groups;
    let mut y = ArrayD::<f32>::zeros(x.shape());
    for b in 0..n {
        for g in 0..m.groups {
            let vals: Vec<f64> = (g * per..(g + 1) * per)
                .flat_map(|ch| (0..h).flat_map(move |i| (0..w).map(move |j| (ch, i, j))))
                .map(|(ch, i, j)| x[[b, ch, i, j]] as f64)
                .collect();
            let mean = vals.iter().sum::<f64>() / vals.len() as f64;
            let var = vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / vals.len() as f64;
            let inv = 1.0 / (var + m.epsilon as f64).sqrt();
            for ch in g * per..(g + 1) * per {
                for i in 0..h {
                    for j in 0..w {
                        let mut v = (x[[b, ch, i, j]] as f64 - mean) * inv * m.gamma[ch] as f64 + m.beta[ch] as f64;
                        if m.silu {
                            v /= 1.0 + (-v).exp();
                        }
                        y[[b, ch, i, j]] = v as f32;
                    }
                }
            }
        }
    }
    y
}

fn cuda() -> PassContext {
    PassContext::new(ExecutionProvider::Cuda)
}

fn run_pass(model: &mut OnnxModel, pass: GroupNorm, ctx: &PassContext) -> PassRecord {
    PassManager::new().with(pass).run(model, ctx).unwrap().remove(0)
}

/// Every form, at SD's channel counts (32 groups), with and without SiLU and residual: the matcher's
/// parameters reproduce ONNX Runtime's output of the unrewritten graph; the rewrite fires on cuda.
#[test]
fn the_matched_parameters_reproduce_the_graph() {
    let mut seed = 0;
    for form in [Form::InstanceNorm, Form::Decomposed, Form::Native] {
        for (c, silu, input) in [
            (320, false, Input::Plain),
            (640, true, Input::Plain),
            (1280, true, Input::Residual { also_out: false }),
            (960, false, Input::Residual { also_out: true }),
            (640, true, Input::Broadcast),
        ] {
            seed += 1;
            let model = graph(form, c, 32, silu, input);
            let found = find(&model);
            assert_eq!(found.len(), 1, "{form:?} {c} {input:?}: {found:?}");
            let m = &found[0];
            assert_eq!((m.form, m.channels, m.groups, m.silu), (form, c, 32, silu));
            assert_eq!(m.skip.is_some(), input != Input::Plain, "{form:?} {input:?}");
            assert_eq!(m.skip.as_ref().is_some_and(|s| s.broadcast), input == Input::Broadcast);
            assert_eq!(m.output, "y");
            // Checked here: at these variances a wrong epsilon would hide below the tolerance.
            assert_eq!(m.epsilon, if form == Form::Decomposed { 1e-6 } else { 1e-5 });
            assert!(m.kernel_accepts());
            let f = feeds(&model, 100 + seed);
            let err = relative_l2(&reference(m, &f), &run_ort(&model, &f));
            eprintln!("{form:?} C={c} silu={silu} {input:?}: relative L2 {err:.1e}");
            assert!(err <= 1e-5, "{form:?} {c} {input:?}: relative L2 {err:.2e}");

            // The rewrite: one fused op between Transposes, nothing of the chain left.
            let mut after = model.clone();
            let r = run_pass(&mut after, GroupNorm::new(true), &cuda());
            assert_eq!(r.rewrites, 1, "{form:?} {input:?}");
            let op = if input == Input::Plain { "GroupNorm" } else { "SkipGroupNorm" };
            let fused: Vec<&NodeProto> = after.graph().node.iter().filter(|n| n.op_type() == op).collect();
            assert_eq!(fused.len(), 1, "{:?}", after.graph().node);
            let f = fused[0];
            assert_eq!(f.domain(), "com.microsoft");
            assert_eq!(attr_int(f, "groups"), Some(32));
            assert_eq!(attr_int(f, "activation"), Some(i64::from(silu)));
            assert_eq!(attr_int(f, "channels_last"), Some(1));
            assert_eq!(attr_float(f, "epsilon"), Some(m.epsilon));
            let gamma = after.initializer(&f.input[1]).unwrap();
            assert_eq!((gamma.data_type(), &gamma.dims[..]), (dtype::FLOAT, &[c as i64][..]));
            let sum_out = input == Input::Residual { also_out: true };
            assert_eq!(f.output.len(), if sum_out { 2 } else { 1 });
            let transposes = match input {
                Input::Plain => 2,
                _ => 3 + usize::from(sum_out),
            };
            assert_eq!(count(&after, "Transpose"), transposes, "{:?}", after.graph().node);
            for gone in ["InstanceNormalization", "GroupNormalization", "Sigmoid", "Div", "Reshape", "ReduceMean"] {
                assert_eq!(count(&after, gone), 0, "{form:?} {input:?}: {gone} left");
            }
            assert_eq!(count(&after, "Add"), 0);
            assert!(after.opset("com.microsoft").is_some());
            assert!(run_pass(&mut after, GroupNorm::new(true), &cuda()).unchanged(), "idempotent");
        }
    }
}

/// Channel / group counts the kernel refuses are matched but not rewritten.
#[test]
fn only_what_the_kernel_accepts_is_rewritten() {
    for (c, g, ok) in [
        (320, 32, true),
        (640, 32, true),
        (1280, 32, true),
        (960, 32, true),
        (1920, 32, true),
        (2560, 32, true),
        (128, 32, true),
        (32, 8, true),
        (48, 8, true),
        (16384, 32, true),
        (96, 32, false),
        (32, 32, false),
        (1040, 1, false),
        (30, 32, false),
        (0, 32, false),
    ] {
        assert_eq!(kernel_accepts(c, g), ok, "C={c} G={g}");
    }
    for (form, c, g) in [(Form::InstanceNorm, 96, 32), (Form::Native, 32, 32), (Form::Decomposed, 1040, 2)] {
        let model = graph(form, c, g, true, Input::Plain);
        let found = find(&model);
        assert_eq!(found.len(), 1, "{form:?} {c}/{g}");
        assert!(!found[0].kernel_accepts());
        let f = feeds(&model, 5);
        let err = relative_l2(&reference(&found[0], &f), &run_ort(&model, &f));
        assert!(err <= 1e-5, "{form:?} {c}/{g}: relative L2 {err:.2e}");
        assert!(run_pass(&mut model.clone(), GroupNorm::new(true), &cuda()).unchanged());
    }
}

/// Off unless the target is cuda and CUDA-only fusions are allowed.
#[test]
fn only_on_cuda_with_cuda_only_fusions() {
    let model = graph(Form::InstanceNorm, 320, 32, true, Input::Plain);
    for (target, allowed, fires) in [
        (ExecutionProvider::Cuda, true, true),
        (ExecutionProvider::Cuda, false, false),
        (ExecutionProvider::Cpu, true, false),
        (ExecutionProvider::TensorRt, true, false),
        (ExecutionProvider::OpenVino, true, false),
    ] {
        let mut ctx = BuildContext::new(target, Precision::Fp16);
        ctx.cuda_only_fusions = allowed;
        let pass = crate::passes::options::build_from_str::<GroupNorm>("", &ctx).unwrap();
        let r = run_pass(&mut model.clone(), pass, &PassContext::new(target));
        assert_eq!(r.rewrites, usize::from(fires), "{target:?} allowed={allowed}");
    }
    // Built enabled, still not on a cpu run.
    assert!(run_pass(&mut model.clone(), GroupNorm::new(true), &PassContext::new(ExecutionProvider::Cpu)).unchanged());
    let ctx = BuildContext::new(ExecutionProvider::Cuda, Precision::Fp16);
    assert!(crate::passes::options::build_from_str::<GroupNorm>("groups = 32", &ctx).is_err());
}

/// What is not a GroupNorm the kernel can take is left alone.
#[test]
fn skips_what_does_not_match() {
    // gamma that can be overridden at run time.
    let mut m = graph(Form::InstanceNorm, 320, 32, false, Input::Plain);
    m.graph_mut().input.push(make_tensor_value_info("gamma", dtype::FLOAT, None));
    assert!(find(&m)[0].gamma.iter().all(|&g| g == 1.0), "the Mul is not taken as the affine");
    // InstanceNormalization with a real scale.
    let mut m = graph(Form::InstanceNorm, 320, 32, false, Input::Plain);
    *m.graph_mut().initializer.iter_mut().find(|t| t.name() == "ones").unwrap() = f32_init("ones", &[32], noise(32, 3));
    assert!(find(&m).is_empty());
    // Decomposed with the mean over the wrong axis.
    let mut m = graph(Form::Decomposed, 320, 32, false, Input::Plain);
    for n in m.graph_mut().node.iter_mut().filter(|n| n.op_type() == "ReduceMean").take(1) {
        n.attribute.clear();
        n.attribute.push(crate::onnx::make_attr_ints("axes", &[1]));
    }
    assert!(find(&m).is_empty());
    // A normalized value read elsewhere too: the chain cannot go.
    let mut m = graph(Form::InstanceNorm, 320, 32, false, Input::Plain);
    m.graph_mut().output.push(make_tensor_value_info("n", dtype::FLOAT, None));
    assert!(find(&m).is_empty());
    // A Sigmoid whose output has another reader: no SiLU fused, the GroupNorm still is.
    let mut m = graph(Form::Native, 320, 32, true, Input::Plain);
    m.graph_mut().output.push(make_tensor_value_info("sg", dtype::FLOAT, None));
    let found = find(&m);
    assert_eq!(found.len(), 1);
    assert!(!found[0].silu);
    assert_eq!(run_pass(&mut m, GroupNorm::new(true), &cuda()).rewrites, 1);
}

/// (model, GroupNorms found, with SiLU, with a residual Add, of which a broadcast [N, C, 1, 1] skip (the
/// time embedding), the kernel accepts), after cleanup. The tiny UNets have 8 groups over 16, 32, 48 and
/// 64 channels (2-8 per group, even), which the kernel's checks accept too, so the rewrite fires on all.
/// The TorchScript exports have form (a), the dynamo export form (c).
const TINY: [(&str, Form, [usize; 5]); 3] = [
    ("tiny-sd/unet", Form::InstanceNorm, [21, 17, 15, 8, 21]),
    ("tiny-sdxl/unet", Form::InstanceNorm, [21, 17, 15, 8, 21]),
    ("tiny-sdxl-dynamo/unet", Form::Native, [21, 17, 15, 8, 21]),
];

#[test]
fn finds_the_group_norms_of_the_tiny_unets() {
    for (name, form, want) in TINY {
        let mut model = OnnxModel::load(tiny(name)).unwrap();
        PassManager::new().with(Cleanup).run(&mut model, &PassContext::new(ExecutionProvider::Cuda)).unwrap();
        let found = find(&model);
        let summary = [
            found.len(),
            found.iter().filter(|m| m.silu).count(),
            found.iter().filter(|m| m.skip.is_some()).count(),
            found.iter().filter(|m| m.skip.as_ref().is_some_and(|s| s.broadcast)).count(),
            found.iter().filter(|m| m.kernel_accepts()).count(),
        ];
        eprintln!(
            "{name}: {summary:?} forms {:?} channels {:?}",
            found.iter().map(|m| m.form).collect::<HashSet<_>>(),
            found.iter().map(|m| (m.channels, m.groups)).collect::<std::collections::BTreeSet<_>>()
        );
        assert_eq!(summary, want, "{name}");
        assert!(found.iter().all(|m| m.form == form), "{name}");
        let accepted = want[4];
        let mut after = model.clone();
        let r = run_pass(&mut after, GroupNorm::new(true), &cuda());
        assert_eq!(r.rewrites, accepted, "{name}");
        assert_eq!(count(&after, "GroupNorm") + count(&after, "SkipGroupNorm"), accepted);
        assert_well_formed(&after, name);
        assert_eq!(count(&after, "InstanceNormalization") + count(&after, "GroupNormalization"), 0, "{name}");
        assert!(run_pass(&mut after, GroupNorm::new(true), &cuda()).unchanged(), "{name}: idempotent");
        assert!(run_pass(&mut model, GroupNorm::new(false), &cuda()).unchanged());
    }
}

/// Every value read is a graph input, an initializer or the output of an earlier node; every graph output
/// is produced (the rewritten graph cannot be run here: the fused ops have no CPU kernel).
fn assert_well_formed(model: &OnnxModel, name: &str) {
    let g = model.graph();
    let mut known: HashSet<&str> =
        g.input.iter().map(|v| v.name()).chain(g.initializer.iter().map(|t| t.name())).collect();
    known.insert("");
    for n in &g.node {
        for i in &n.input {
            assert!(known.contains(i.as_str()), "{name}: {} reads {i} before it is produced", n.op_type());
        }
        known.extend(n.output.iter().map(String::as_str));
    }
    for o in &g.output {
        assert!(known.contains(o.name()), "{name}: output {} not produced", o.name());
    }
}

/// The decomposed form as opset 18 writes it (ReduceMean axes as an input) and with Mul(d, d) for the square.
#[test]
fn matches_decomposed_variants() {
    let mut model = graph(Form::Decomposed, 640, 32, true, Input::Broadcast);
    let mut proto = model.proto().clone();
    proto.opset_import[0].set_version(18);
    let g = proto.graph.mut_or_insert_default();
    g.initializer.push(i64_init("axes_last", &[-1]));
    for n in g.node.iter_mut() {
        match n.op_type() {
            "ReduceMean" => {
                n.attribute.clear();
                n.input.push("axes_last".into());
            }
            "Pow" => {
                n.op_type = Some("Mul".into());
                n.input[1] = n.input[0].clone();
            }
            _ => {}
        }
    }
    model = OnnxModel::from_proto(proto, None);
    let found = find(&model);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!((found[0].form, found[0].silu, found[0].epsilon), (Form::Decomposed, true, 1e-6));
    let f = feeds(&model, 77);
    let err = relative_l2(&reference(&found[0], &f), &run_ort(&model, &f));
    assert!(err <= 1e-5, "relative L2 {err:.2e}");
    let mut after = model.clone();
    assert_eq!(run_pass(&mut after, GroupNorm::new(true), &cuda()).rewrites, 1);
    assert_eq!(count(&after, "SkipGroupNorm"), 1);
    assert_eq!(
        count(&after, "Mul") + count(&after, "ReduceMean") + count(&after, "Sub"),
        0,
        "{:?}",
        after.graph().node
    );
}
