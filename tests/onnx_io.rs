//! ONNX model I/O and the cleanup pass against ONNX Runtime: a saved model, and a cleaned one, compute
//! what the original computes; a large external-data model is rewritten without holding its weights.

mod common;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use dfast::onnx::proto::onnx::tensor_proto::DataLocation;
use dfast::onnx::{
    GraphIndex, ModelProto, NodeBuilder, OnnxModel, OperatorSetIdProto, SaveOptions, StringStringEntryProto,
    TensorProto, dtype, make_tensor_value_info,
};
use dfast::passes::{Cleanup, PassContext, PassManager};
use dfast::runtime::{HostTensor, Runtime};
use dfast::settings::ExecutionProvider;
use ndarray::{ArrayD, IxDyn};
use ort::value::TensorElementType;
use protobuf::Message;

/// Counts heap bytes in use and their peak, so a test can show that weights were never all in memory.
struct CountingAlloc;

static HEAP_NOW: AtomicUsize = AtomicUsize::new(0);
static HEAP_PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = HEAP_NOW.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            HEAP_PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        HEAP_NOW.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

fn tiny(path: &str) -> std::path::PathBuf {
    common::root().join("models").join(path).join("model.onnx")
}

/// Random inputs for a model: dynamic batch 1, dynamic image sizes 16, other dynamic sizes 7.
fn random_feeds(model: &dfast::runtime::Model, seed: u64) -> Vec<(String, HostTensor)> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut feeds = Vec::new();
    for spec in model.inputs() {
        let rank = spec.dims.len();
        let dims: Vec<usize> = spec
            .dims
            .iter()
            .enumerate()
            .map(|(i, &d)| match (d, i) {
                (d, _) if d >= 0 => d as usize,
                (_, 0) => 1,
                _ if rank == 4 => 16,
                _ => 7,
            })
            .collect();
        let n: usize = dims.iter().product();
        let tensor = match spec.ty {
            TensorElementType::Int64 | TensorElementType::Int32 => HostTensor::I64(
                ArrayD::from_shape_vec(IxDyn(&dims), (0..n).map(|_| (rng.random::<f64>() * 1000.0) as i64).collect())
                    .unwrap(),
            ),
            _ if spec.name.contains("timestep") => HostTensor::F32(
                ArrayD::from_shape_vec(
                    IxDyn(&dims),
                    (0..n).map(|_| (rng.random::<f64>() * 1000.0).floor() as f32).collect(),
                )
                .unwrap(),
            ),
            _ => HostTensor::F32(
                ArrayD::from_shape_vec(
                    IxDyn(&dims),
                    (0..n).map(|_| (rng.random::<f64>() * 2.0 - 1.0) as f32).collect(),
                )
                .unwrap(),
            ),
        };
        feeds.push((spec.name.clone(), tensor));
    }
    feeds
}

fn run(runtime: &Runtime, path: &Path, feeds: &[(String, HostTensor)]) -> HashMap<String, ArrayD<f32>> {
    let mut model = runtime.load(path).unwrap();
    model.run(feeds.iter().map(|(n, t)| (n.as_str(), t.clone())).collect()).unwrap()
}

fn assert_close(a: &HashMap<String, ArrayD<f32>>, b: &HashMap<String, ArrayD<f32>>, tol: f64, what: &str) -> f64 {
    assert_eq!(a.len(), b.len(), "{what}: different outputs");
    assert!(!a.is_empty(), "{what}: no float outputs");
    let mut worst: f64 = 0.0;
    for (name, want) in b {
        let got = a.get(name).unwrap_or_else(|| panic!("{what}: output `{name}` missing"));
        let err = common::relative_l2(got, want);
        assert!(err <= tol, "{what}: output `{name}` relative L2 {err:.2e} > {tol:.0e}");
        worst = worst.max(err);
    }
    worst
}

const ALL_TINY: &[&str] = &[
    "tiny-sd/text_encoder",
    "tiny-sd/unet",
    "tiny-sd/vae_decoder",
    "tiny-sd/vae_encoder",
    "tiny-sdxl/text_encoder",
    "tiny-sdxl/text_encoder_2",
    "tiny-sdxl/unet",
    "tiny-sdxl/vae_decoder",
    "tiny-sdxl/vae_encoder",
    "tiny-sd-dynamo/text_encoder",
    "tiny-sd-dynamo/unet",
    "tiny-sd-dynamo/vae_decoder",
    "tiny-sd-dynamo/vae_encoder",
    "tiny-sdxl-dynamo/text_encoder",
    "tiny-sdxl-dynamo/text_encoder_2",
    "tiny-sdxl-dynamo/unet",
    "tiny-sdxl-dynamo/vae_decoder",
    "tiny-sdxl-dynamo/vae_encoder",
];

#[test]
fn saved_models_compute_what_the_originals_compute() {
    let runtime = Runtime::new(ExecutionProvider::Cpu, None).expect("ONNX Runtime loads");
    for (k, name) in
        ["tiny-sd/unet", "tiny-sdxl/unet", "tiny-sdxl/text_encoder_2", "tiny-sdxl-dynamo/unet"].iter().enumerate()
    {
        let original = OnnxModel::load(tiny(name)).unwrap();
        for options in [SaveOptions::external(), SaveOptions::embedded()] {
            let dir = tempfile::tempdir().unwrap();
            let out = dir.path().join("model.onnx");
            original.save_with(&out, &options).unwrap();
            let reference = runtime.load(&tiny(name)).unwrap();
            let feeds = random_feeds(&reference, k as u64 + 1);
            drop(reference);
            let want = run(&runtime, &tiny(name), &feeds);
            let got = run(&runtime, &out, &feeds);
            assert_close(&got, &want, 0.0, name);
        }
    }
}

#[test]
fn cleanup_shrinks_every_tiny_model_and_keeps_its_outputs() {
    let runtime = Runtime::new(ExecutionProvider::Cpu, None).expect("ONNX Runtime loads");
    let ctx = PassContext::new(ExecutionProvider::Cpu);
    for (k, name) in ALL_TINY.iter().enumerate() {
        let started = Instant::now();
        let mut model = OnnxModel::load(tiny(name)).unwrap();
        let records = PassManager::new().with(Cleanup).run(&mut model, &ctx).unwrap();
        let r = &records[0];
        // TorchScript exports always carry Constants, Identities and no-op Casts; a dynamo export may be
        // clean already.
        if name.contains("dynamo") {
            assert!(r.nodes_after <= r.nodes_before, "{name}: {r:?}");
        } else {
            assert!(r.nodes_after < r.nodes_before && r.rewrites > 0, "{name}: {r:?}");
        }
        let elapsed = started.elapsed();

        // Idempotent: a second run changes nothing at all.
        let cleaned = model.proto().clone();
        let again = PassManager::new().with(Cleanup).run(&mut model, &ctx).unwrap();
        assert!(again[0].unchanged(), "{name}: second run changed {:?}", again[0]);
        assert_eq!(model.proto(), &cleaned);

        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("model.onnx");
        model.save(&out).unwrap();
        let reference = runtime.load(&tiny(name)).unwrap();
        let feeds = random_feeds(&reference, 100 + k as u64);
        drop(reference);
        let want = run(&runtime, &tiny(name), &feeds);
        let got = run(&runtime, &out, &feeds);
        let err = assert_close(&got, &want, 1e-5, name);
        eprintln!(
            "{name}: {} -> {} nodes, {} rewrites in {} rounds, {:.0} ms; outputs relative L2 {err:.1e}",
            r.nodes_before,
            r.nodes_after,
            r.rewrites,
            r.rounds,
            elapsed.as_secs_f64() * 1e3
        );
    }
}

/// The attention-scale chains of the TorchScript UNet are gone after cleanup: no Sqrt is left.
#[test]
fn cleanup_folds_the_unet_attention_scale() {
    for name in ["tiny-sd/unet", "tiny-sdxl/unet"] {
        let mut model = OnnxModel::load(tiny(name)).unwrap();
        PassManager::new().with(Cleanup).run(&mut model, &PassContext::new(ExecutionProvider::Cpu)).unwrap();
        let index = GraphIndex::new(&model);
        let left: Vec<&str> = index
            .nodes()
            .iter()
            .filter(|n| ["Sqrt", "Constant", "Identity"].contains(&n.op_type()))
            .map(|n| n.op_type())
            .collect();
        assert!(left.is_empty(), "{name}: still has {left:?}");
    }
}

const BIG_TENSORS: usize = 6;
const BIG_ELEMENTS: usize = 12_500_000; // 50 MB of float32 each, 300 MB in all

/// Writes a model whose weights (300 MB) live in `model.onnx_data`, in 1 MiB chunks.
fn write_big_model(dir: &Path) {
    let data = std::fs::File::create(dir.join("model.onnx_data")).unwrap();
    let mut data = BufWriter::with_capacity(1 << 20, data);
    let mut rng = StdRng::seed_from_u64(7);
    let mut m = ModelProto::new();
    m.set_ir_version(8);
    m.set_producer_name("dfast-test".into());
    let mut opset = OperatorSetIdProto::new();
    opset.set_domain(String::new());
    opset.set_version(17);
    m.opset_import.push(opset);
    let g = m.graph.mut_or_insert_default();
    g.input.push(make_tensor_value_info("x", dtype::FLOAT, Some(&[Some(BIG_ELEMENTS as i64)])));
    // One random MiB, written over and over with the chunk number stamped in front: distinct data without
    // spending seconds of a debug build on random numbers.
    let block: Vec<u8> = (0..1 << 18).flat_map(|_| (rng.random::<f64>() as f32).to_le_bytes()).collect();
    let mut offset = 0u64;
    let mut prev = "x".to_string();
    let mut chunk_no = 0u64;
    for k in 0..BIG_TENSORS {
        let mut left = BIG_ELEMENTS * 4;
        while left > 0 {
            let n = left.min(block.len());
            chunk_no += 1;
            data.write_all(&chunk_no.to_le_bytes()[..n.min(8)]).unwrap();
            data.write_all(&block[n.min(8)..n]).unwrap();
            left -= n;
        }
        let len = (BIG_ELEMENTS * 4) as u64;
        let mut t = TensorProto::new();
        t.set_name(format!("w{k}"));
        t.set_data_type(dtype::FLOAT);
        t.dims = vec![BIG_ELEMENTS as i64];
        t.data_location = Some(protobuf::EnumOrUnknown::new(DataLocation::EXTERNAL));
        for (key, value) in
            [("location", "model.onnx_data".to_string()), ("offset", offset.to_string()), ("length", len.to_string())]
        {
            let mut e = StringStringEntryProto::new();
            e.set_key(key.into());
            e.set_value(value);
            t.external_data.push(e);
        }
        offset += len;
        g.initializer.push(t);
        let out = format!("a{k}");
        g.node.push(NodeBuilder::new("Add").inputs([prev.clone(), format!("w{k}")]).outputs([out.clone()]).build());
        prev = out;
    }
    g.output.push(make_tensor_value_info(&prev, dtype::FLOAT, Some(&[Some(BIG_ELEMENTS as i64)])));
    data.flush().unwrap();
    std::fs::write(dir.join("model.onnx"), m.write_to_bytes().unwrap()).unwrap();
}

/// Runs in its own process (spawned by the test below) so that the heap peak it measures is its own.
#[test]
#[ignore = "run by big_external_model_round_trips_in_bounded_memory in a child process"]
fn big_external_model_child() {
    let root = tempfile::tempdir().unwrap();
    let (src, dst) = (root.path().join("src"), root.path().join("dst"));
    std::fs::create_dir(&src).unwrap();
    std::fs::create_dir(&dst).unwrap();
    write_big_model(&src);
    let total = (BIG_TENSORS * BIG_ELEMENTS * 4) as u64;

    let started = Instant::now();
    let baseline = HEAP_NOW.load(Ordering::Relaxed);
    HEAP_PEAK.store(baseline, Ordering::Relaxed);
    let model = OnnxModel::load(src.join("model.onnx")).unwrap();
    let mut cleaned = model.clone();
    PassManager::new().with(Cleanup).run(&mut cleaned, &PassContext::new(ExecutionProvider::Cpu)).unwrap();
    let report = cleaned.save(dst.join("model.onnx")).unwrap();
    drop(cleaned);
    drop(model);
    let peak = HEAP_PEAK.load(Ordering::Relaxed) - baseline;
    let elapsed = started.elapsed();

    assert_eq!(report.external_tensors, BIG_TENSORS);
    assert_eq!(report.external_bytes, total);
    assert!(peak < 64 << 20, "heap peak {} MB while rewriting a {} MB model", peak >> 20, total >> 20);

    // Same bytes, compared through the memory maps.
    let a = OnnxModel::load(src.join("model.onnx")).unwrap();
    let b = OnnxModel::load(dst.join("model.onnx")).unwrap();
    for k in 0..BIG_TENSORS {
        let name = format!("w{k}");
        assert!(a.initializer_bytes(&name).unwrap() == b.initializer_bytes(&name).unwrap(), "{name} differs");
    }
    println!(
        "BIG: {} MB load + cleanup + save in {:.2} s, heap peak {:.1} MB",
        total >> 20,
        elapsed.as_secs_f64(),
        peak as f64 / (1 << 20) as f64
    );
}

#[test]
fn big_external_model_round_trips_in_bounded_memory() {
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new(exe)
        .args(["--exact", "big_external_model_child", "--ignored", "--nocapture", "--test-threads=1"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "child failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("1 passed"), "the child ran no test:\n{stdout}");
    if let Some(line) = stdout.lines().find_map(|l| l.split_once("BIG:")) {
        eprintln!("{}", line.1.trim());
    }
}

/// Truncated, bit-flipped and empty copies of a real export: `OnnxModel::load` answers each with a result,
/// never a panic, and a copy cut short anywhere is an error that names the file (it used to load a cut
/// UNet as "opset 0" and let a pass fail on a missing input).
#[test]
fn damaged_files_are_errors_never_panics() {
    let source = std::fs::read(common::model("tiny-sd").join("unet/model.onnx")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("model.onnx");
    let load = |bytes: &[u8]| -> Result<(), String> {
        std::fs::write(&path, bytes).unwrap();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| OnnxModel::load(&path).map(|_| ())));
        let result = result.unwrap_or_else(|_| panic!("OnnxModel::load panicked on {} bytes", bytes.len()));
        result.map_err(|e| e.to_string())
    };
    assert!(load(&[]).unwrap_err().contains("empty"));
    for k in 1..=97 {
        let cut = source.len() * k / 98;
        let err = load(&source[..cut]).expect_err("a truncated model must not load");
        assert!(err.starts_with(&path.display().to_string()), "cut at {cut}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
    // Bit flips at pseudo-random places: any answer but a panic.
    let mut rng = StdRng::seed_from_u64(0x9e3779b97f4a7c15);
    for _ in 0..300 {
        let mut bytes = source.clone();
        let at = rng.random_range(0..bytes.len());
        bytes[at] ^= 1 << rng.random_range(0..8);
        let _ = load(&bytes);
    }
    assert!(load(&source).is_ok(), "the intact model loads");
}
