//! `--seed N` draws the same initial noise as torch.randn with torch.Generator("cpu").manual_seed(N).

mod common;

#[test]
fn seeded_noise_matches_torch() {
    let cases = common::read_json(&common::references().join("noise.json"));
    for case in cases.as_array().unwrap() {
        let seed = case["seed"].as_u64().unwrap();
        let shape: Vec<usize> =
            case["shape"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
        let want = common::read_npy(&common::references().join(case["file"].as_str().unwrap()));
        let got = dfast::pipeline::latents::seeded(seed, &shape);
        assert_eq!(got.shape(), want.shape());
        let worst = got.iter().zip(want.iter()).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(worst < 1e-5, "seed {seed} shape {shape:?}: max abs difference {worst}");
    }
}
