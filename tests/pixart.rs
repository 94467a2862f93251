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

/// The DiT's FLOPs per step (batch 2: guidance) from `inspect` equal the count worked out from its
/// config.json (PixArtTransformer2DModel's layers), in both exporter styles.
#[test]
fn inspect_counts_the_dit_flops_per_step() {
    use dfast::inspect::{Size, inspect};
    for model in ["tiny-pixart", "tiny-pixart-dynamo"] {
        let dir = common::model(model);
        let size = Size::default_for(&dir);
        let config = common::read_json(&dir.join("transformer").join("config.json"));
        let get = |k: &str| config[k].as_u64().unwrap() as f64;
        let (p, c, c_out, dc) = (get("patch_size"), get("in_channels"), get("out_channels"), get("caption_channels"));
        let d = get("num_attention_heads") * get("attention_head_dim");
        let (b, l) = (2.0, 120.0);
        let n = (size.height as f64 / 8.0 / p) * (size.width as f64 / 8.0 / p);
        let per_layer = 2.0 * b * n * d * d * 4.0 // self-attention: Q, K, V, out
            + 4.0 * b * n * n * d // Q·K^T and P·V
            + 2.0 * b * n * d * d * 2.0 + 2.0 * 2.0 * b * l * d * d // cross-attention: Q, out; K, V of the caption
            + 4.0 * b * n * l * d
            + 2.0 * b * n * d * 4.0 * d * 2.0; // feed-forward, 4x wide
        let want = 2.0 * b * n * d * c * p * p // patch embedding
            + 2.0 * b * l * (dc * d + d * d) // caption projection
            + 2.0 * b * (256.0 * d + d * d + 6.0 * d * d) // timestep embedding and adaLN-single
            + get("num_layers") * per_layer
            + 2.0 * b * n * d * p * p * c_out; // final projection
        let reports = inspect(&dir, size).unwrap();
        let dit = reports.iter().find(|r| r.component == "transformer").unwrap();
        assert_eq!(dit.nodes_without_shapes, 0, "{model}");
        assert!((dit.gflops * 1e9 - want).abs() <= 1.0, "{model}: {} GFLOP, want {}", dit.gflops, want / 1e9);
    }
}
