//! `dfast bench` on the embedded tiny pipeline: the CSV has the documented columns, one row and one image
//! per measured combination, conversions are cached, and combinations that cannot run say why.

mod common;

use std::process::Command;

use dfast::bench::COLUMNS;

#[test]
fn bench_writes_rows_images_and_skips_with_a_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("results");
    let args = [
        "bench",
        "--profile",
        "baseline,sdpa",
        "--ep",
        "cpu",
        "--ep",
        "cuda",
        "--steps",
        "2",
        "--warmup",
        "0",
        "--runs",
        "2",
        "--tag",
        "test run",
        "--out",
        out.to_str().unwrap(),
    ];
    let run = Command::new(env!("CARGO_BIN_EXE_dfast")).args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{}{stdout}", String::from_utf8_lossy(&run.stderr));
    // cuda cannot run here: each of its combinations is a line saying why, not a silent CPU run.
    assert_eq!(stdout.matches("skipped ").count(), 2, "{stdout}");
    assert!(stdout.contains("skipped baseline-fp16-cuda: the cuda execution provider cannot be used: "), "{stdout}");

    let mut reader = csv::Reader::from_path(out.join("results.csv")).unwrap();
    let header: Vec<String> = reader.headers().unwrap().iter().map(str::to_string).collect();
    assert_eq!(header, COLUMNS);
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 2);
    let col = |row: &csv::StringRecord, name: &str| row[COLUMNS.iter().position(|c| *c == name).unwrap()].to_string();
    for (row, profile) in rows.iter().zip(["baseline", "sdpa"]) {
        assert_eq!(col(row, "profile"), profile);
        assert_eq!(col(row, "ep"), "cpu");
        assert_eq!(col(row, "model"), "tiny-sd");
        assert_eq!(col(row, "tag"), "test run");
        assert_eq!(col(row, "steps"), "2");
        assert_eq!(col(row, "timed_runs"), "2");
        assert_eq!(col(row, "onnxruntime_version"), dfast::runtime::ORT_VERSION);
        for number in [
            "session_create_s",
            "first_run_s",
            "unet_step_ms",
            "total_s",
            "total_min_s",
            "peak_host_mb",
            "host_copy_ms",
            "host_scheduler_ms",
        ] {
            let v: f64 = col(row, number).parse().unwrap_or_else(|_| panic!("{number} is not a number"));
            assert!(v > 0.0, "{number} = {v}");
        }
        let (min, median, max): (f64, f64, f64) = (
            col(row, "total_min_s").parse().unwrap(),
            col(row, "total_s").parse().unwrap(),
            col(row, "total_max_s").parse().unwrap(),
        );
        assert!(min <= median && median <= max);
        assert!(col(row, "command").starts_with("dfast bench "));
        let image = image::open(out.join(col(row, "image"))).unwrap();
        assert_eq!((image.width(), image.height()), (64, 64));
    }
    assert_eq!(col(&rows[1], "passes"), "cleanup+attention");
    let manifest = out.join("converted").join("sdpa-fp32-cpu").join("dfast-manifest.json");
    let first = std::fs::metadata(&manifest).unwrap().modified().unwrap();

    // The EP that cannot run here was found out before any conversion: nothing was converted for it.
    let converted: Vec<String> = std::fs::read_dir(out.join("converted"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(converted.iter().all(|c| !c.ends_with("-cuda")), "converted for an unusable EP: {converted:?}");

    // A second run reuses the conversion and replaces its rows.
    let run = Command::new(env!("CARGO_BIN_EXE_dfast")).args(args).output().unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert_eq!(std::fs::metadata(&manifest).unwrap().modified().unwrap(), first, "conversion was redone");
    assert_eq!(csv::Reader::from_path(out.join("results.csv")).unwrap().records().count(), 2);

    // And report turns the folder into a table and a chart.
    let report = tmp.path().join("report");
    let run = Command::new(env!("CARGO_BIN_EXE_dfast"))
        .args(["report", out.to_str().unwrap(), "--title", "tiny", "--out", report.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    for file in ["results.csv", "report.md", "report.png"] {
        assert!(report.join(file).is_file(), "{file}");
    }
}

#[test]
fn bench_bad_input_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("r");
    for (args, needle) in [
        (vec!["--profile", "turbo"], "unknown profile `turbo`"),
        (vec!["--ep", "tpu"], "unknown execution provider `tpu`"),
        (vec!["--precision", "fp8"], "unknown precision `fp8`"),
        (vec!["--runs", "0"], "invalid value `0` for --runs"),
        (vec!["--scheduler", "lms"], "lms"),
        // Checked before any work (batch 0 used to run as 1; a bad width was "skipped" per combination).
        (vec!["--batch-size", "0"], "invalid value `0` for --batch-size"),
        (vec!["--width", "100", "--height", "64"], "--width 100 is not a positive multiple of 8"),
    ] {
        let mut all = vec!["bench", "--steps", "1", "--out", out.to_str().unwrap()];
        all.extend(args);
        let run = Command::new(env!("CARGO_BIN_EXE_dfast")).args(&all).output().unwrap();
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(!run.status.success(), "{all:?} succeeded");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(stderr.contains(needle), "expected {needle:?} in {stderr}");
        assert!(!out.join("converted").exists(), "{all:?} converted before refusing");
    }
}

/// `dfast bench` on a pipeline whose UNet declares `timestep` as `[1]` with static shapes: it converts and runs.
#[test]
fn bench_runs_a_unet_with_a_one_value_timestep() {
    let tmp = tempfile::tempdir().unwrap();
    let (variant, pipeline) = common::UNET_VARIANTS[1];
    let model = common::variant_pipeline(variant, pipeline, tmp.path());
    let out = tmp.path().join("results");
    let args = ["bench", "--model", model.to_str().unwrap(), "--profile", "baseline,sdpa", "--ep", "cpu"];
    let args = [&args[..], &["--steps", "2", "--warmup", "0", "--runs", "1", "--out", out.to_str().unwrap()]].concat();
    let run = Command::new(env!("CARGO_BIN_EXE_dfast")).args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{}{stdout}", String::from_utf8_lossy(&run.stderr));
    assert!(stdout.contains(": 2 rows in results.csv, 0 skipped"), "{stdout}");
    let rows = csv::Reader::from_path(out.join("results.csv")).unwrap().records().count();
    assert_eq!(rows, 2, "{stdout}");
}

/// Running the same benchmark again replaces its rows (the README's main command twice used to double the
/// CSV and compare the baseline with itself); `--append` keeps both; another tag is another setting.
#[test]
fn a_rerun_replaces_its_rows_unless_appended() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("results");
    let bench = |extra: &[&str]| {
        let args = ["bench", "--profile", "baseline", "--steps", "1", "--warmup", "0", "--runs", "1"];
        let run = Command::new(env!("CARGO_BIN_EXE_dfast"))
            .args(args)
            .args(["--out", out.to_str().unwrap()])
            .args(extra)
            .output()
            .unwrap();
        assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
        csv::Reader::from_path(out.join("results.csv")).unwrap().records().count()
    };
    assert_eq!(bench(&[]), 1);
    assert_eq!(bench(&[]), 1, "the same setting again replaces its row");
    assert_eq!(bench(&["--append"]), 2, "--append keeps the earlier row");
    assert_eq!(bench(&["--tag", "other"]), 3, "another tag is another setting");
    assert_eq!(bench(&["--ep-option", "threads=1"]), 4, "other EP options are another setting");
    let mut reader = csv::Reader::from_path(out.join("results.csv")).unwrap();
    let col = reader.headers().unwrap().iter().position(|c| c == "ep_options").unwrap();
    let options: Vec<String> = reader.records().map(|r| r.unwrap()[col].to_string()).collect();
    assert_eq!(options.iter().filter(|o| *o == "threads=1").count(), 1, "{options:?}");
}

/// `bench --json`: stdout is one JSON object with the measured rows (the CSV's) and the skipped combinations.
#[test]
fn bench_json_prints_the_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("results");
    let args = ["bench", "--profile", "baseline", "--ep", "cpu,cuda", "--steps", "1", "--warmup", "0", "--runs", "1"];
    let run = Command::new(env!("CARGO_BIN_EXE_dfast"))
        .args(args)
        .args(["--json", "--out", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let report: serde_json::Value = serde_json::from_slice(&run.stdout).expect("stdout is one JSON object");
    let rows = report["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0]["profile"].as_str(), rows[0]["ep"].as_str()), (Some("baseline"), Some("cpu")));
    assert!(rows[0]["total_s"].as_f64().unwrap() > 0.0);
    assert_eq!(report["skipped"][0]["combination"], "baseline-fp16-cuda");
    assert!(String::from_utf8_lossy(&run.stderr).contains("skipped baseline-fp16-cuda"));
}
