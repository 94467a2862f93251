//! PixArt-α: resolution binning and resize/crop equal diffusers' (tests/references/pixart_binning.json, made by
//! experiment-scripts/make_pixart_binning_references.py).

mod common;

use dfast::pipeline::binning::{classify_height_width_bin, resize_and_crop, table_for};
use ndarray::{ArrayD, IxDyn};

fn binning_reference() -> serde_json::Value {
    common::read_json(&common::references().join("pixart_binning.json"))
}

fn usize_of(v: &serde_json::Value) -> usize {
    v.as_u64().unwrap() as usize
}

#[test]
fn aspect_ratio_tables_equal_diffusers() {
    let refs = binning_reference();
    for (sample_size, want) in refs["tables"].as_object().unwrap() {
        let table = table_for(sample_size.parse().unwrap()).unwrap();
        let want: Vec<(String, usize, usize)> = want
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r[0].as_str().unwrap().to_string(), usize_of(&r[1]), usize_of(&r[2])))
            .collect();
        let got: Vec<(String, usize, usize)> = table.iter().map(|&(k, h, w)| (k.to_string(), h, w)).collect();
        assert_eq!(got, want, "table for sample_size {sample_size}");
    }
    assert_eq!(refs["tables"].as_object().unwrap().len(), 3);
    assert!(table_for(48).is_err());
}

#[test]
fn bins_equal_diffusers() {
    let refs = binning_reference();
    let rows = refs["bins"].as_array().unwrap();
    let mut moved = 0;
    for row in rows {
        let [h, w, sample_size, bh, bw] = std::array::from_fn(|i| usize_of(&row[i]));
        let got = classify_height_width_bin(h, w, table_for(sample_size).unwrap());
        assert_eq!(got, (bh, bw), "{h}x{w} (height x width) at sample_size {sample_size}");
        moved += usize::from(got != (h, w));
    }
    assert!(rows.len() > 500 && moved > 400, "{} cases, {moved} moved", rows.len());
}

#[test]
fn resize_and_crop_equals_diffusers() {
    let refs = binning_reference();
    let cases = refs["resize_and_crop"].as_array().unwrap();
    for case in cases {
        let shape = |key: &str| -> Vec<usize> { case[key].as_array().unwrap().iter().map(usize_of).collect() };
        let values = |key: &str| -> Vec<f32> {
            case[key].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect()
        };
        let input = ArrayD::from_shape_vec(IxDyn(&shape("input_shape")), values("input")).unwrap();
        let want = ArrayD::from_shape_vec(IxDyn(&shape("output_shape")), values("output")).unwrap();
        let (nh, nw) = (usize_of(&case["new_height"]), usize_of(&case["new_width"]));
        let got = resize_and_crop(&input, nh, nw).unwrap();
        assert_eq!(got.shape(), want.shape(), "{:?} -> {nh}x{nw}", input.shape());
        let worst = got.iter().zip(want.iter()).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(worst <= 1e-6, "{:?} -> {nh}x{nw}: largest difference {worst:e}", input.shape());
    }
    assert_eq!(cases.len(), 5);
}
