//! OpenVINO's `static_shapes` and `streams` session options (runtime::session's lanes), in a process of
//! their own: a process loads one ONNX Runtime library, and these need the OpenVINO build.

mod common;

use std::path::Path;

use dfast::runtime::{HostTensor, Runtime, SessionRole};
use dfast::settings::{EpOptions, ExecutionProvider};
use ndarray::{ArrayD, Axis, IxDyn};

fn runtime(options: &[&str]) -> dfast::Result<Runtime> {
    let options = EpOptions::parse(&options.iter().map(|o| o.to_string()).collect::<Vec<_>>())?;
    Runtime::with_options(ExecutionProvider::OpenVino, options, None)
}

/// Inputs for `model` at `batch` rows (those of `inputs_for`, whose rows are batch 2, cycled).
fn at_batch(inputs: &[(String, HostTensor)], batch: usize) -> Vec<(String, HostTensor)> {
    inputs
        .iter()
        .map(|(name, t)| {
            let rows = |a: &ArrayD<f32>| {
                let picked: Vec<_> = (0..batch).map(|i| a.index_axis(Axis(0), i % a.shape()[0])).collect();
                ndarray::stack(Axis(0), &picked).unwrap()
            };
            let t = match t {
                HostTensor::F32(a) if a.ndim() > 0 => HostTensor::F32(rows(a)),
                HostTensor::I64(a) if a.ndim() > 0 => {
                    HostTensor::I64(ArrayD::from_elem(IxDyn(&[batch, a.shape()[1..].iter().product()]), 1))
                }
                other => other.clone(),
            };
            (name.clone(), t)
        })
        .collect()
}

fn run_with(model: &Path, options: &[&str], inputs: &[(String, HostTensor)]) -> dfast::Result<ArrayD<f32>> {
    let mut unet = runtime(options)?.load_with(model, &Default::default(), SessionRole::Unet)?;
    let feeds = inputs.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
    Ok(unet.run(feeds)?.remove("out_sample").unwrap())
}

/// OpenVINO's `static_shapes` and `streams`: the sessions made at the first run for its shapes, the batch
/// split over lanes (evenly, unevenly, or not at all when it has one row), made again when the shapes
/// change: every output equals the plain session's on the same inputs.
#[test]
fn openvino_lanes_give_the_plain_sessions_output() {
    let model = common::model("tiny-sdxl").join("unet").join("model.onnx");
    let base = common::inputs_for(&runtime(&[]).unwrap(), &model);
    let batches = [2, 3, 1, 4];
    let plain: Vec<ArrayD<f32>> =
        batches.iter().map(|&b| run_with(&model, &[], &at_batch(&base, b)).unwrap()).collect();
    for options in [&["static_shapes=true"][..], &["streams=2"], &["streams=2", "static_shapes=true"], &["streams=3"]] {
        let mut unet = runtime(options).unwrap().load_with(&model, &Default::default(), SessionRole::Unet).unwrap();
        for (&batch, want) in batches.iter().zip(&plain) {
            let inputs = at_batch(&base, batch);
            let feeds = inputs.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
            let got = unet.run(feeds).unwrap().remove("out_sample").unwrap();
            assert_eq!(got.shape(), want.shape(), "{options:?} batch {batch}");
            let err = common::relative_l2(&got, want);
            assert!(err < 1e-5, "{options:?} batch {batch}: relative L2 {err:e} against the plain session");
        }
    }
    // Rows of a batch differ, so a lane that ran the wrong rows (or one part twice) would not match.
    let rows = &plain[1];
    assert!(
        common::relative_l2(&rows.index_axis(Axis(0), 0).to_owned(), &rows.index_axis(Axis(0), 1).to_owned()) > 1e-2
    );
}

#[test]
fn openvino_lane_options_that_cannot_work_are_one_sentence() {
    let model = common::model("tiny-sdxl").join("unet").join("model.onnx");
    let inputs = common::inputs_for(&runtime(&[]).unwrap(), &model);
    let err = run_with(&model, &["streams=0"], &inputs).unwrap_err().to_string();
    assert!(err.contains("`streams` must be at least 1"), "{err}");
    let err = run_with(&model, &["streams=2", "io_binding=true"], &inputs).unwrap_err().to_string();
    assert!(err.contains("`io_binding` cannot follow"), "{err}");
}
