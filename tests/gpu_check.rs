//! The dry run of `experiment-scripts/gpu_sdxl.sh check` (EP=cpu, the tiny SDXL pipeline): the one-call GPU
//! check must keep working between GPU runs, so this reads what it writes and checks the numbers in it: the
//! summary lists every step as done or skipped with a reason, the numerics file holds a finite relative L2
//! within the bound (recomputed here from the outputs it compared), the timing rows are positive, the bench
//! rows are there. PyTorch's rows and SD1.5's comparison run only where python3 has torch and ONNX Runtime's
//! Python package; elsewhere (CI) they must be skipped with that reason. A second run with no time left
//! checks the deadline's guard.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

const STEPS: [&str; 15] = [
    "export",
    "torch-warmup",
    "convert-fuse-qkv",
    "convert-fused",
    "numerics",
    "step-fuse-qkv-graph",
    "step-fused-graph",
    "step-fuse-qkv-nhwc",
    "step-torch",
    "kernels-fuse-qkv",
    "kernels-fused",
    "bench-fused-graph",
    "bench-vae-islands",
    "tensorrt",
    "sd15",
];

/// `gpu_sdxl.sh check` as a dry run in `work`, with `extra` environment; its combined output.
fn dry_run(work: &Path, extra: &[(&str, &str)]) -> String {
    let root = common::root();
    let mut cmd = Command::new("bash");
    cmd.arg(root.join("experiment-scripts").join("gpu_sdxl.sh")).arg("check").current_dir(work);
    // Only what this test sets: none of the script's other settings from the caller's environment.
    for var in [
        "OUT",
        "DEADLINE_AT",
        "DEADLINE_S",
        "STANDIN",
        "SD15",
        "SD15_STANDIN",
        "PRECISION",
        "WAIT_QUIET_S",
        "TORCH_WAIT_S",
        "VAE_ISLANDS",
    ] {
        cmd.env_remove(var);
    }
    cmd.envs([
        ("DFAST", env!("CARGO_BIN_EXE_dfast")),
        ("PYTHON", "python3"),
        ("EP", "cpu"),
        ("WORK", work.to_str().unwrap()),
        ("MODEL", common::model("tiny-sdxl").to_str().unwrap()),
        ("SD15_MODEL", common::model("tiny-sd").to_str().unwrap()),
        ("WIDTH", "64"),
        ("HEIGHT", "64"),
        ("SD15_WIDTH", "64"),
        ("SD15_HEIGHT", "64"),
        ("STEPS", "2"),
        ("WARMUP", "0"),
        ("RUNS", "1"),
        ("STEP_WARMUP", "1"),
        ("STEP_RUNS", "3"),
        // Where python3 has torch: the eager UNet, no compilation (minutes on a small CPU).
        ("PT_SETTING", "fp32+sdpa+fused-qkv"),
    ]);
    cmd.envs(extra.iter().copied());
    let run = cmd.output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&run.stdout), String::from_utf8_lossy(&run.stderr));
    assert!(run.status.success(), "gpu_sdxl.sh check failed:\n{text}");
    text
}

/// The summary's steps by id, checked for the planned ids in order and a status each (a reason unless done).
fn steps(out: &Path, log: &str) -> BTreeMap<String, (String, String)> {
    let summary = common::read_json(&out.join("summary.json"));
    let steps = summary["steps"].as_array().unwrap();
    let ids: Vec<&str> = steps.iter().map(|s| s["id"].as_str().unwrap()).collect();
    assert_eq!(ids, STEPS, "{log}");
    assert_eq!(summary["meta"]["ep"], "cpu");
    let md = std::fs::read_to_string(out.join("summary.md")).unwrap();
    steps
        .iter()
        .map(|s| {
            let id = s["id"].as_str().unwrap().to_string();
            let status = s["status"].as_str().unwrap().to_string();
            let reason = s["reason"].as_str().unwrap().to_string();
            assert!(["done", "skipped"].contains(&status.as_str()), "step {id}: {status} ({reason})\n{log}");
            assert!(status == "done" || !reason.trim().is_empty(), "step {id} skipped without a reason");
            assert!(md.contains(&format!("(`{id}`) | {status} |")), "summary.md lacks step {id}:\n{md}");
            (id, (status, reason))
        })
        .collect()
}

fn csv_rows(path: &Path) -> Vec<BTreeMap<String, String>> {
    let mut reader = csv::Reader::from_path(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let header: Vec<String> = reader.headers().unwrap().iter().map(str::to_string).collect();
    reader.records().map(|r| header.iter().cloned().zip(r.unwrap().iter().map(str::to_string)).collect()).collect()
}

fn positive(row: &BTreeMap<String, String>, column: &str) -> f64 {
    let v: f64 = row[column].parse().unwrap_or_else(|_| panic!("{column} = {:?} in {row:?}", row[column]));
    assert!(v.is_finite() && v > 0.0, "{column} = {v} in {row:?}");
    v
}

#[test]
fn the_dry_run_writes_every_result_and_the_numbers_hold() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path();
    let bundle = work.join("bundle");
    let log = dry_run(work, &[("BUNDLE", bundle.to_str().unwrap())]);
    let out = work.join("out");
    let steps = steps(&out, &log);
    let status = |id: &str| steps[id].0.as_str();
    let reason = |id: &str| steps[id].1.as_str();

    for id in [
        "convert-fuse-qkv",
        "convert-fused",
        "numerics",
        "step-fuse-qkv-graph",
        "step-fused-graph",
        "step-fuse-qkv-nhwc",
        "bench-fused-graph",
        "bench-vae-islands",
        "tensorrt",
    ] {
        assert_eq!(status(id), "done", "step {id}: {}\n{log}", reason(id));
    }
    assert!(reason("export").contains("holds a pipeline already"), "{}", reason("export"));
    for id in ["kernels-fuse-qkv", "kernels-fused"] {
        assert!(reason(id).contains("need the CUDA EP"), "{id}: {}", reason(id));
    }
    let has = |modules: &str| {
        let code = format!(
            "import importlib.util as u; import sys; sys.exit(0 if all(u.find_spec(m) for m in {modules:?}.split()) else 1)"
        );
        Command::new("python3").args(["-c", &code]).status().unwrap().success()
    };
    let torch = has("torch diffusers numpy");
    for id in ["torch-warmup", "step-torch"] {
        if torch {
            assert_eq!(status(id), "done", "{id}: {}\n{log}", reason(id));
        } else {
            assert_eq!(status(id), "skipped");
            assert!(reason(id).contains("is not installed for python3"), "{id}: {}", reason(id));
        }
    }
    if has("onnx onnxruntime") {
        assert_eq!(status("sd15"), "done", "sd15: {}\n{log}", reason("sd15"));
    } else {
        assert!(reason("sd15").contains("is not installed for python3"), "sd15: {}", reason("sd15"));
    }

    // Numerics: fused against fuse-qkv, within the bound, and the figure is the outputs' relative L2.
    let numerics = common::read_json(&out.join("numerics.json"));
    assert_eq!(numerics["finite"], true);
    assert_eq!(numerics["within"], true, "{numerics}");
    assert_eq!(numerics["bound"].as_f64().unwrap(), 1e-2);
    assert_eq!(numerics["shape"], serde_json::json!([2, 4, 8, 8]));
    let rel = numerics["rel_l2"].as_f64().unwrap();
    // Two different graphs (fused's SkipLayerNormalization in fp16): close, not identical.
    assert!(rel.is_finite() && rel > 0.0 && rel <= 1e-2, "relative L2 {rel}");
    let fused = common::read_npy(&work.join("out-fused.npy"));
    let fuse_qkv = common::read_npy(&work.join("out-fuse-qkv.npy"));
    let recomputed = common::relative_l2(&fused, &fuse_qkv);
    assert!((recomputed - rel).abs() <= 1e-6 * rel.max(1e-12) + 1e-9, "numerics.json {rel} vs recomputed {recomputed}");
    // The IoBinding rows give the plain call's output.
    for row in ["step-fuse-qkv-graph", "step-fused-graph"] {
        let replay = common::read_json(&out.join(format!("numerics-{row}.json")));
        assert!(replay["rel_l2"].as_f64().unwrap() < 1e-6, "{row}: {replay}");
    }

    // Timing rows: positive numbers, the options each row names.
    let rows = csv_rows(&out.join("unet_steps.csv"));
    let by_name: BTreeMap<&str, &BTreeMap<String, String>> = rows.iter().map(|r| (r["row"].as_str(), r)).collect();
    for (name, binding) in
        [("step-fuse-qkv-graph", "true"), ("step-fused-graph", "true"), ("step-fuse-qkv-nhwc", "false")]
    {
        let row = by_name.get(name).unwrap_or_else(|| panic!("no row {name} in {rows:?}"));
        let median = positive(row, "median_ms");
        let min = positive(row, "min_ms");
        positive(row, "first_ms");
        positive(row, "session_s");
        assert!(min <= median, "{row:?}");
        assert_eq!(row["runs"], "3");
        assert_eq!(row["runtime"], "dfast");
        assert_eq!(row["io_binding"], binding, "{row:?}");
        assert!(row["ep_options"].contains(&format!("io_binding={binding}")), "{row:?}");
    }
    if torch {
        let row = by_name["torch-unet-alone"];
        positive(row, "median_ms");
        assert!(row["note"].contains("the same inputs as dfast's rows (same bytes)"), "{row:?}");
    }
    assert!(std::fs::read_to_string(out.join("unet_steps.md")).unwrap().contains("| step-fused-graph | dfast |"));

    // bench: the check's profile, then the VAE islands, end to end.
    let bench = csv_rows(&out.join("bench").join("results.csv"));
    let profiles: Vec<&str> = bench.iter().map(|r| r["profile"].as_str()).collect();
    assert_eq!(profiles, ["check-graph-cpu", "vae-islands"], "{bench:?}");
    for row in &bench {
        positive(row, "total_s");
        positive(row, "unet_step_ms");
        positive(row, "vae_decode_ms");
        assert_eq!(row["steps"], "2");
        assert!(row["passes"].contains("skip-layer-norm"), "{row:?}");
    }
    assert!(out.join("bench").join("report").join("report.md").is_file());

    let trt = common::read_json(&out.join("tensorrt.json"));
    assert!(trt["present"].is_boolean());
    if trt["present"] == false {
        assert!(reason("tensorrt").starts_with("absent"), "{}", reason("tensorrt"));
    }
    for id in ["numerics", "step-fused-graph", "bench-fused-graph"] {
        assert!(out.join("logs").join(format!("{id}.log")).is_file(), "no logs/{id}.log");
    }

    // What a device call brings back: at most 8 files, plain names, the whole of OUT in check.tar.gz.
    let mut names: Vec<String> =
        std::fs::read_dir(&bundle).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    assert_eq!(names, ["check.tar.gz", "numerics.json", "summary.json", "summary.md", "unet_steps.md"]);
    assert_eq!(std::fs::read(bundle.join("summary.json")).unwrap(), std::fs::read(out.join("summary.json")).unwrap());
    let listing = Command::new("tar").arg("-tzf").arg(bundle.join("check.tar.gz")).output().unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    for file in
        ["out/summary.json", "out/numerics.json", "out/unet_steps.csv", "out/bench/results.csv", "out/tensorrt.json"]
    {
        assert!(listing.lines().any(|l| l == file), "check.tar.gz lacks {file}:\n{listing}");
    }
}

#[test]
fn with_no_time_left_every_step_is_skipped_and_says_why() {
    let tmp = tempfile::tempdir().unwrap();
    let log = dry_run(tmp.path(), &[("DEADLINE_S", "0")]);
    let out = tmp.path().join("out");
    let steps = steps(&out, &log);
    for (id, (status, reason)) in &steps {
        assert_eq!(status, "skipped", "{id}: {reason}");
        if !["export", "torch-warmup", "step-torch"].contains(&id.as_str()) {
            assert!(reason.contains("not enough time left") || reason.contains("not reached"), "{id}: {reason}");
        }
    }
    assert!(!out.join("numerics.json").exists());
    assert!(!out.join("unet_steps.csv").exists());
}
