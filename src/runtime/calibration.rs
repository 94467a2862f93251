//! Activation ranges of a model on recorded inputs (what int8-static calibration measures): the graph is run
//! with each activation of interest as an extra output. Ranges: `minmax` (percentile 100) takes the min and
//! max over all samples; a percentile (default 99.99) takes, per sample, the values at 0.01% and 99.99% of a
//! strided sample of up to a million values, and the widest of those over the samples: a few outliers no
//! longer stretch the int8 grid.

use std::collections::HashMap;
use std::path::Path;

use super::{HostTensor, Runtime};
use crate::onnx::{OnnxModel, dtype, make_tensor_value_info};
use crate::{Error, Result};

/// (min, max) by tensor name.
pub type Ranges = HashMap<String, (f32, f32)>;

/// One call's inputs, by name.
pub type Sample = Vec<(String, HostTensor)>;

/// The range of each of `tensors` in `model` over `samples`, at `percentile` (100: min and max).
pub fn activation_ranges(
    runtime: &Runtime,
    model: &OnnxModel,
    tensors: &[String],
    samples: &[Sample],
    percentile: f64,
) -> Result<Ranges> {
    if !(50.0..=100.0).contains(&percentile) {
        return Err(Error::bad_input(format!(
            "the calibration percentile must be within 50 and 100, not {percentile}"
        )));
    }
    let base_dir = model.path().and_then(Path::parent).map(Path::to_path_buf);
    let mut probe = OnnxModel::from_proto(model.proto().clone(), base_dir.as_deref());
    let graph = probe.graph_mut();
    let existing: std::collections::HashSet<String> = graph.output.iter().map(|o| o.name().to_string()).collect();
    for t in tensors.iter().filter(|t| !existing.contains(*t)) {
        graph.output.push(make_tensor_value_info(t, dtype::FLOAT, None));
    }
    // One folder per call: calls from several threads of one process must not share it.
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("dfast-calibration-{}-{call}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, "cannot create", e))?;
    let result = (|| -> Result<Ranges> {
        let path = dir.join("model.onnx");
        probe.save(&path)?;
        drop(probe);
        let mut session = runtime.load(&path)?;
        let mut ranges: Ranges = HashMap::new();
        for sample in samples {
            let feeds = sample.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
            let out = session.run(feeds)?;
            for t in tensors {
                let Some(values) = out.get(t) else { continue };
                // Borrowed as is: session outputs are already in standard layout.
                let values = values.as_standard_layout();
                let (lo, hi) = sample_range(values.as_slice().expect("standard layout"), percentile);
                let e = ranges.entry(t.clone()).or_insert((f32::INFINITY, f32::NEG_INFINITY));
                *e = (e.0.min(lo), e.1.max(hi));
            }
        }
        Ok(ranges)
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// (low, high) of `values` at `percentile`: min and max at 100, else the order statistics of a strided
/// sample of at most a million values.
fn sample_range(values: &[f32], percentile: f64) -> (f32, f32) {
    let finite = |v: &&f32| v.is_finite();
    if percentile >= 100.0 || values.len() < 100 {
        let lo = values.iter().filter(finite).copied().fold(f32::INFINITY, f32::min);
        let hi = values.iter().filter(finite).copied().fold(f32::NEG_INFINITY, f32::max);
        return (lo, hi);
    }
    let stride = values.len().div_ceil(1 << 20).max(1);
    let mut sample: Vec<f32> = values.iter().step_by(stride).filter(finite).copied().collect();
    if sample.is_empty() {
        return (f32::INFINITY, f32::NEG_INFINITY);
    }
    let n = sample.len();
    let tail = (((100.0 - percentile) / 100.0) * n as f64).floor() as usize;
    let (lo_i, hi_i) = (tail.min(n - 1), (n - 1).saturating_sub(tail));
    let lo = *sample.select_nth_unstable_by(lo_i, f32::total_cmp).1;
    let hi = *sample.select_nth_unstable_by(hi_i, f32::total_cmp).1;
    (lo, hi)
}

#[cfg(test)]
mod tests {
    use super::sample_range;

    #[test]
    fn percentile_ranges_drop_outliers_and_minmax_keeps_them() {
        let mut values: Vec<f32> = (0..100_000).map(|i| (i % 1000) as f32 / 1000.0).collect();
        values[17] = 50.0;
        values[99] = -40.0;
        assert_eq!(sample_range(&values, 100.0), (-40.0, 50.0));
        let (lo, hi) = sample_range(&values, 99.9);
        assert!((0.0..0.01).contains(&lo) && (0.99..1.0).contains(&hi), "{lo} {hi}");
        assert_eq!(sample_range(&[1.0, f32::NAN, -2.0], 99.0), (-2.0, 1.0));
    }
}
