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

/// `dfast bench` of the baseline into `out`, one step and one run unless `extra` says otherwise.
fn tiny_bench(out: &std::path::Path, extra: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_dfast"));
    command.args(["bench", "--profile", "baseline", "--warmup", "0", "--out", out.to_str().unwrap()]).args(extra);
    for (flag, default) in [("--steps", "1"), ("--runs", "1")] {
        if !extra.contains(&flag) {
            command.args([flag, default]);
        }
    }
    command
}

/// Waits until `done` holds (polling every 20 ms), for at most two minutes.
fn wait_for(what: &str, done: &mut dyn FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !done() {
        assert!(start.elapsed().as_secs() < 120, "waited two minutes for {what}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Hidden files in `out` (job and answer files, partial images, the lock).
fn hidden(out: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect()
}

/// Three benches into one folder: the first runs and writes its rows; the others, started while it runs,
/// are refused in one sentence that names it (they used to read each other's job files and all fail).
#[test]
fn benches_into_one_folder_do_not_collide() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("cb");
    let mut first = tiny_bench(&out, &[]).stdout(std::process::Stdio::null()).spawn().unwrap();
    let lock = out.join(dfast::bench::lock::LOCK_FILE);
    wait_for("the first bench's lock", &mut || lock.exists() || first.try_wait().unwrap().is_some());
    let piped = std::process::Stdio::piped;
    let others: Vec<_> =
        (0..2).map(|_| tiny_bench(&out, &[]).stdout(piped()).stderr(piped()).spawn().unwrap()).collect();
    let others: Vec<_> = others.into_iter().map(|o| o.wait_with_output().unwrap()).collect();
    let status = first.wait().unwrap();
    assert!(status.success(), "the first bench failed");
    for other in others {
        let stderr = String::from_utf8_lossy(&other.stderr);
        assert!(!other.status.success(), "a second bench into the folder ran: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(stderr.contains(&format!("another dfast bench (pid {}: ", first.id())), "{stderr}");
        assert!(stderr.contains("choose another --out"), "{stderr}");
    }
    assert_eq!(csv::Reader::from_path(out.join("results.csv")).unwrap().records().count(), 1);
    assert_eq!(hidden(&out), Vec::<String>::new(), "left behind");

    // A lock left by a bench that no longer runs is taken over.
    let mut gone = Command::new("true").spawn().unwrap();
    gone.wait().unwrap();
    std::fs::write(&lock, format!("{}\ndfast bench --out cb\n", gone.id())).unwrap();
    let run = tiny_bench(&out, &[]).output().unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
}

/// Rows of one setting with different tags keep their own images.
#[test]
fn rows_with_other_tags_keep_their_images() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("tags");
    for tag in ["threads 1", "threads/1", "plain"] {
        let run = tiny_bench(&out, &["--tag", tag]).output().unwrap();
        assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    }
    let mut reader = csv::Reader::from_path(out.join("results.csv")).unwrap();
    let col = reader.headers().unwrap().iter().position(|c| c == "image").unwrap();
    let images: Vec<String> = reader.records().map(|r| r.unwrap()[col].to_string()).collect();
    assert_eq!(images.len(), 3, "{images:?}");
    let distinct: std::collections::BTreeSet<&String> = images.iter().collect();
    assert_eq!(distinct.len(), 3, "one image for rows of different tags: {images:?}");
    for image in &images {
        assert!(out.join(image).is_file(), "{image} missing");
    }
}

/// Ctrl-C while a combination is measured: the bench ends (130), and leaves neither its job files nor its
/// lock nor an image without a row.
#[test]
fn an_interrupted_bench_leaves_no_job_file_and_no_image_without_a_row() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("ctrl-c");
    // Enough runs that the worker is still measuring when the signal comes.
    let mut bench = tiny_bench(&out, &["--runs", "200", "--steps", "2"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let measuring = || hidden(&out).iter().any(|n| n.ends_with(".job.json") && !n.starts_with(".probe"));
    wait_for("a measuring job", &mut || out.is_dir() && measuring());
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(bench.try_wait().unwrap().is_none(), "the bench ended before it was interrupted");
    let status = Command::new("kill").args(["-INT", &bench.id().to_string()]).status().unwrap();
    assert!(status.success());
    let output = bench.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert_eq!(hidden(&out), Vec::<String>::new(), "left behind after Ctrl-C");
    let images: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".jpg"))
        .collect();
    assert_eq!(images, Vec::<String>::new(), "an image without a row");
    assert!(!out.join("results.csv").exists());
}
