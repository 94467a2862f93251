//! `dfast report` end to end on hand-made result folders: the collated CSV, the speed-ups in report.md, the
//! chart, and one sentence with a non-zero exit for each kind of bad folder.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use dfast::bench::report::{CHART_HEIGHT, CHART_WIDTH, report};
use dfast::bench::{COLUMNS, Row};

fn dfast(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dfast")).args(args).output().expect("dfast runs")
}

/// Asserts a failed run with one sentence on stderr that contains every needle.
fn assert_clear_error(output: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "expected failure, got success; stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "panic instead of an error: {stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "expected one line, got: {stderr}");
    assert!(stderr.starts_with("error: "), "stderr: {stderr}");
    for needle in needles {
        assert!(stderr.contains(needle), "expected {needle:?} in: {stderr}");
    }
}

fn row(model: &str, runtime: &str, profile: &str, precision: &str, ep: &str, total_s: f64) -> Row {
    let gpu = ep.contains("cuda");
    Row {
        timestamp: "2026-01-02T03:04:05Z".into(),
        tag: format!("{model} run"),
        model: model.into(),
        model_card: "sd15".into(),
        pipeline: "StableDiffusionPipeline".into(),
        runtime: runtime.into(),
        profile: profile.into(),
        passes: String::new(),
        precision: precision.into(),
        ep: ep.into(),
        ep_options: String::new(),
        // As experiment-scripts/pytorch_reference.py writes it.
        onnxruntime_version: if runtime == "pytorch" { "torch 2.11.0" } else { "1.24.1" }.into(),
        dfast_version: "0.1.0".into(),
        device: if gpu { "NVIDIA H100 80GB HBM3" } else { "AMD EPYC 7B13" }.into(),
        scheduler: "EulerDiscreteScheduler".into(),
        steps: 30,
        batch_size: 1,
        width: 512,
        height: 512,
        warmup_runs: 1,
        timed_runs: 3,
        session_create_s: 1.5,
        first_run_s: total_s * 1.2,
        text_encode_ms: 12.0,
        unet_step_ms: total_s * 1000.0 / 30.0 * 0.9,
        unet_alone_ms: None,
        vae_decode_ms: 80.0,
        total_s,
        total_min_s: total_s * 0.98,
        total_max_s: total_s * 1.02,
        peak_host_mb: 2048.0,
        peak_device_mb: if gpu { Some(3500.0) } else { None },
        image: "images/x.png".into(),
        command: format!("dfast bench --profile {profile}"),
        host_scheduler_ms: None,
        host_copy_ms: None,
    }
}

fn write_rows(path: &Path, rows: &[Row]) {
    let mut w = csv::Writer::from_path(path).unwrap();
    for r in rows {
        w.serialize(r).unwrap();
    }
    w.flush().unwrap();
}

/// Two result folders: sd15 on cpu and cuda plus a PyTorch row (in its own CSV, with an extra column and
/// its columns in another order), and tiny-sdxl on cpu.
fn result_folders(root: &Path) -> (PathBuf, PathBuf, Vec<Row>) {
    let a = root.join("run-a");
    let b = root.join("run-b");
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    let a_rows = vec![
        row("sd15", "dfast", "baseline", "fp32", "cpu", 40.0),
        row("sd15", "dfast", "sdpa", "fp32", "cpu", 32.0),
        row("sd15", "dfast", "baseline", "fp32", "cuda", 4.0),
        row("sd15", "dfast", "sdpa", "fp16", "cuda", 1.6),
        row("sd15", "dfast", "fuse-qkv", "fp16", "cuda", 1.25),
    ];
    write_rows(&a.join("results.csv"), &a_rows);

    // The PyTorch reference's CSV: same columns plus one unknown, reordered, and peak_device_mb empty.
    let torch = row("sd15", "pytorch", "bf16+sdpa", "bf16", "torch-cuda", 2.0);
    let mut header: Vec<&str> = COLUMNS.iter().rev().copied().collect();
    header.push("notes");
    let mut w = csv::Writer::from_path(a.join("pytorch.csv")).unwrap();
    w.write_record(&header).unwrap();
    let mut tmp = csv::Writer::from_writer(vec![]);
    tmp.serialize(&torch).unwrap();
    let text = String::from_utf8(tmp.into_inner().unwrap()).unwrap();
    let record = csv::Reader::from_reader(text.as_bytes()).records().next().unwrap().unwrap();
    let mut fields = csv::StringRecord::new();
    for (i, column) in COLUMNS.iter().enumerate().rev() {
        fields.push_field(if *column == "peak_device_mb" { "" } else { &record[i] });
    }
    fields.push_field("compiled with torch.compile");
    w.write_record(&fields).unwrap();
    w.flush().unwrap();

    let b_rows = vec![
        row("tiny-sdxl", "dfast", "baseline", "fp32", "cpu", 0.08),
        row("tiny-sdxl", "dfast", "sdpa", "fp32", "cpu", 0.05),
    ];
    write_rows(&b.join("results.csv"), &b_rows);
    // Not a CSV, and a CSV in a subfolder: both skipped.
    std::fs::write(b.join("notes.txt"), "not a csv").unwrap();
    std::fs::create_dir_all(b.join("old")).unwrap();
    std::fs::write(b.join("old/broken.csv"), "nothing,useful\n").unwrap();

    let mut torch_read = torch;
    torch_read.peak_device_mb = None;
    // File-name order within a folder: pytorch.csv before results.csv.
    let mut all = vec![torch_read];
    all.extend(a_rows);
    all.extend(b_rows);
    (a, b, all)
}

#[test]
fn collates_folders_into_csv_markdown_and_chart() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b, expected) = result_folders(tmp.path());
    let out = tmp.path().join("report");
    let run = dfast(&[
        "report",
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        "--title",
        "SD 1.5 and tiny SDXL",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(stdout.contains("8 rows") && stdout.contains("report.png"), "summary: {stdout}");

    // results.csv: the schema's header, every row in folder then file-name order.
    let text = std::fs::read_to_string(out.join("results.csv")).unwrap();
    assert_eq!(text.lines().next().unwrap(), COLUMNS.join(","));
    let got: Vec<Row> = csv::Reader::from_reader(text.as_bytes()).deserialize().map(|r| r.unwrap()).collect();
    assert_eq!(got, expected);

    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.starts_with("# SD 1.5 and tiny SDXL\n"), "{md}");
    assert!(md.contains("NVIDIA H100 80GB HBM3") && md.contains("AMD EPYC 7B13"), "devices: {md}");
    assert!(md.contains("Versions: dfast 0.1.0; ONNX Runtime 1.24.1; torch 2.11.0."), "{md}");
    assert!(md.contains("## sd15") && md.contains("## tiny-sdxl"), "{md}");
    // The PyTorch reference reads after the dfast rows it is compared with, though its CSV came first.
    assert!(md.find("| pytorch bf16+sdpa |").unwrap() > md.find("| dfast/fuse-qkv/fp16/cuda |").unwrap());
    // The table line of `setting` in `model`'s section.
    let line = |model: &str, setting: &str| -> String {
        let section = md.split(&format!("\n## {model}\n")).nth(1).unwrap_or_else(|| panic!("{model}: {md}"));
        let section = section.split("\n## ").next().unwrap();
        let prefix = format!("| {setting} |");
        section.lines().find(|l| l.starts_with(&prefix)).unwrap_or_else(|| panic!("{setting}: {md}")).into()
    };
    // Each row against its own EP's fp32 baseline: cpu 40 s, cuda 4 s.
    assert!(line("sd15", "dfast/baseline/fp32/cpu").contains("| 1.00x |"));
    assert!(line("sd15", "dfast/sdpa/fp32/cpu").contains("| 1.25x |"));
    assert!(line("sd15", "dfast/sdpa/fp16/cuda").contains("| 2.50x |"));
    assert!(line("sd15", "dfast/fuse-qkv/fp16/cuda").contains("| 3.20x |"));
    assert!(line("sd15", "dfast/fuse-qkv/fp16/cuda").contains("| sd15 run |"), "tag column");
    assert!(line("sd15", "dfast/sdpa/fp32/cpu").contains("| 32.0 | 960 | 80.0 | 2048 |"), "{md}");
    // PyTorch on torch-cuda has no baseline of its EP: dfast's cuda baseline on the same GPU, marked.
    assert!(line("sd15", "pytorch bf16+sdpa").contains("| 2.00x\\* |"), "{md}");
    assert!(md.contains("\\* compared with a baseline measured on another execution provider"), "{md}");
    assert!(line("tiny-sdxl", "dfast/sdpa/fp32/cpu").contains("| 0.050 |"), "tiny times keep their digits");
    assert!(line("tiny-sdxl", "dfast/sdpa/fp32/cpu").contains("| 1.60x |"));

    let png = image::open(out.join("report.png")).expect("report.png decodes");
    assert_eq!((png.width(), png.height()), (CHART_WIDTH, CHART_HEIGHT));
    // Not blank: the bars put colour on the white page.
    let rgb = png.to_rgb8();
    let coloured = rgb.pixels().filter(|p| p.0.iter().max().unwrap() - p.0.iter().min().unwrap() > 60).count();
    assert!(coloured > 10_000, "only {coloured} coloured pixels");
}

#[test]
fn library_summary_names_rows_models_and_files() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b, _) = result_folders(tmp.path());
    let out = tmp.path().join("nested/out");
    let summary = report(&[a, b], "t", &out).unwrap();
    assert_eq!(summary.rows, 8);
    assert_eq!(summary.models, ["sd15", "tiny-sdxl"]);
    let names: Vec<_> = summary.files.iter().map(|f| f.file_name().unwrap().to_str().unwrap()).collect();
    assert_eq!(names, ["results.csv", "report.md", "report.png"]);
    assert!(summary.files.iter().all(|f| f.is_file()));
}

#[test]
fn many_bars_widen_the_chart() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("many");
    std::fs::create_dir_all(&dir).unwrap();
    let rows: Vec<Row> =
        (0..30).map(|i| row("sd15", "dfast", &format!("profile-{i}"), "fp16", "cuda", 1.0 + i as f64 / 10.0)).collect();
    write_rows(&dir.join("results.csv"), &rows);
    let out = tmp.path().join("out");
    report(&[dir], "thirty settings", &out).unwrap();
    let png = image::open(out.join("report.png")).unwrap();
    assert!(png.width() > CHART_WIDTH, "width {}", png.width());
    assert_eq!(png.height(), CHART_HEIGHT);
}

/// Writes `rows` under the schema's header less the columns in `drop` (a CSV from before those columns).
fn write_rows_without(path: &Path, rows: &[Row], drop: &[&str]) {
    let mut tmp = csv::Writer::from_writer(vec![]);
    for r in rows {
        tmp.serialize(r).unwrap();
    }
    let text = String::from_utf8(tmp.into_inner().unwrap()).unwrap();
    let keep: Vec<usize> = (0..COLUMNS.len()).filter(|&i| !drop.contains(&COLUMNS[i])).collect();
    let mut w = csv::Writer::from_path(path).unwrap();
    for record in csv::ReaderBuilder::new().has_headers(false).from_reader(text.as_bytes()).records() {
        let record = record.unwrap();
        w.write_record(keep.iter().map(|&i| &record[i])).unwrap();
    }
    w.flush().unwrap();
}

#[test]
fn unet_alone_ms_reads_with_and_without_the_column_and_shows_only_when_present() {
    let tmp = tempfile::tempdir().unwrap();
    // A PyTorch reference CSV with the column (and a dfast row, which leaves it empty) ...
    let with = tmp.path().join("with");
    std::fs::create_dir_all(&with).unwrap();
    let mut torch = row("sd15", "pytorch", "bf16+sdpa+compile", "bf16", "torch-cuda", 2.0);
    torch.unet_alone_ms = Some(34.45);
    let dfast_row = row("sd15", "dfast", "baseline", "fp32", "cuda", 4.0);
    write_rows(&with.join("pytorch.csv"), &[torch.clone(), dfast_row.clone()]);
    let header = std::fs::read_to_string(with.join("pytorch.csv")).unwrap();
    assert!(header.lines().next().unwrap().contains(",unet_step_ms,unet_alone_ms,vae_decode_ms,"), "{header}");
    // ... and an older one without it.
    let without = tmp.path().join("without");
    std::fs::create_dir_all(&without).unwrap();
    let mut old_torch = row("sd15", "pytorch", "bf16+sdpa", "bf16", "torch-cuda", 2.5);
    old_torch.unet_alone_ms = Some(99.0); // dropped with the column: reads back as empty
    write_rows_without(&without.join("pytorch.csv"), &[old_torch.clone()], &["unet_alone_ms"]);
    let text = std::fs::read_to_string(without.join("pytorch.csv")).unwrap();
    assert!(!text.contains("unet_alone_ms"), "{text}");

    let rows = dfast::bench::report::read_rows(&with).unwrap();
    assert_eq!(rows, [torch.clone(), dfast_row.clone()]);
    let rows = dfast::bench::report::read_rows(&without).unwrap();
    old_torch.unet_alone_ms = None;
    assert_eq!(rows, [old_torch.clone()]);

    // The markdown: the column where a row has it, a dash for rows without; no column otherwise.
    let out = tmp.path().join("out-with");
    report(std::slice::from_ref(&with), "t", &out).unwrap();
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("| setting | total_s | unet_step_ms | unet_alone_ms | vae_decode_ms |"), "{md}");
    let torch_line = md.lines().find(|l| l.starts_with("| pytorch bf16+sdpa+compile |")).unwrap();
    assert!(torch_line.contains(&format!("| {:.1} | 34.5 | 80.0 |", torch.unet_step_ms)), "{torch_line}");
    let dfast_line = md.lines().find(|l| l.starts_with("| dfast/baseline/fp32/cuda |")).unwrap();
    assert!(dfast_line.contains(" | – | 80.0 |"), "{dfast_line}");
    let out = tmp.path().join("out-without");
    report(std::slice::from_ref(&without), "t", &out).unwrap();
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(!md.contains("unet_alone_ms"), "{md}");
    assert!(md.contains("| setting | total_s | unet_step_ms | vae_decode_ms |"), "{md}");
    // Both together: the column, the old row's cell a dash; the collated CSV has the column.
    let out = tmp.path().join("out-both");
    report(&[with, without], "t", &out).unwrap();
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    let old_line = md.lines().find(|l| l.starts_with("| pytorch bf16+sdpa |")).unwrap();
    assert!(old_line.contains(" | – | 80.0 |"), "{old_line}");
    let csv_text = std::fs::read_to_string(out.join("results.csv")).unwrap();
    assert_eq!(csv_text.lines().next().unwrap(), COLUMNS.join(","));
}

#[test]
fn the_host_share_of_a_step_shows_where_rows_have_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("host");
    std::fs::create_dir_all(&dir).unwrap();
    let mut measured = row("sd15", "dfast", "baseline", "fp32", "cpu", 3.0);
    measured.unet_step_ms = 100.0;
    measured.host_scheduler_ms = Some(0.5);
    measured.host_copy_ms = Some(1.5);
    let older = row("sd15", "dfast", "sdpa", "fp32", "cpu", 2.0);
    write_rows(&dir.join("results.csv"), &[measured.clone(), older.clone()]);
    assert_eq!(dfast::bench::report::read_rows(&dir).unwrap(), [measured.clone(), older.clone()]);
    // A CSV from before the columns reads them as empty.
    let old_dir = tmp.path().join("old");
    std::fs::create_dir_all(&old_dir).unwrap();
    write_rows_without(&old_dir.join("results.csv"), &[measured.clone()], &["host_scheduler_ms", "host_copy_ms"]);
    let back = dfast::bench::report::read_rows(&old_dir).unwrap();
    assert_eq!((back[0].host_scheduler_ms, back[0].host_copy_ms), (None, None));

    let out = tmp.path().join("out");
    report(std::slice::from_ref(&dir), "t", &out).unwrap();
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("| unet_step_ms | host_ms_per_step | vae_decode_ms |"), "{md}");
    let line = md.lines().find(|l| l.starts_with("| dfast/baseline/fp32/cpu |")).unwrap();
    // 0.5 + 1.5 ms of a 100 ms step.
    assert!(line.contains("| 100 | 2.00 (2.0%) | 80.0 |"), "{line}");
    let line = md.lines().find(|l| l.starts_with("| dfast/sdpa/fp32/cpu |")).unwrap();
    assert!(line.contains(" | – | 80.0 |"), "{line}");
    let out = tmp.path().join("out-old");
    report(std::slice::from_ref(&old_dir), "t", &out).unwrap();
    assert!(!std::fs::read_to_string(out.join("report.md")).unwrap().contains("host_ms_per_step"));
}

/// Runs `dfast report DIR --out OUT` and returns its output.
fn report_of(dir: &Path) -> Output {
    let out = dir.parent().unwrap().join("out");
    dfast(&["report", dir.to_str().unwrap(), "--out", out.to_str().unwrap()])
}

#[test]
fn missing_column_names_the_file_and_column() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("r");
    std::fs::create_dir_all(&dir).unwrap();
    let header: Vec<&str> = COLUMNS.iter().copied().filter(|c| *c != "unet_step_ms").collect();
    std::fs::write(dir.join("bench.csv"), format!("{}\n", header.join(","))).unwrap();
    assert_clear_error(&report_of(&dir), &["bench.csv", "missing column `unet_step_ms`"]);
}

#[test]
fn non_numeric_time_names_file_row_column_and_value() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("r");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("results.csv");
    write_rows(
        &path,
        &[row("sd15", "dfast", "baseline", "fp32", "cpu", 40.0), row("sd15", "dfast", "sdpa", "fp32", "cpu", 32.0)],
    );
    let text = std::fs::read_to_string(&path).unwrap();
    let text = text.replacen(",32.0,", ",fast,", 1);
    std::fs::write(&path, text).unwrap();
    assert_clear_error(&report_of(&dir), &["results.csv", "row 2", "column `total_s`", "\"fast\""]);
}

#[test]
fn empty_folder_says_there_is_no_csv() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("empty");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("readme.txt"), "no csv here").unwrap();
    let expected = format!("{}: no benchmark CSV (*.csv) in this folder", dir.display());
    assert_clear_error(&report_of(&dir), &[&expected]);
}

#[test]
fn missing_folder_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("nowhere");
    assert_clear_error(&report_of(&dir), &["nowhere", "no such folder"]);
}

#[test]
fn output_folder_that_is_an_input_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, _, _) = result_folders(tmp.path());
    let run = dfast(&["report", a.to_str().unwrap(), "--out", a.to_str().unwrap()]);
    assert_clear_error(&run, &["also an input"]);
}

/// A 30-step and a 3-step run of one model are not one setting: they read apart, no speed-up is computed
/// across them (it used to say 43.01x), and a setting measured twice is warned about.
#[test]
fn rows_of_other_steps_size_or_batch_are_never_compared() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("r");
    std::fs::create_dir_all(&dir).unwrap();
    let baseline = row("sd15", "dfast", "baseline", "fp32", "cpu", 43.01);
    let short = Row { steps: 3, ..row("sd15", "dfast", "sdpa", "fp32", "cpu", 1.0) };
    let wide = Row { width: 768, ..row("sd15", "dfast", "sdpa", "fp32", "cpu", 2.0) };
    let batch = Row { batch_size: 2, ..row("sd15", "dfast", "sdpa", "fp32", "cpu", 4.0) };
    let same = row("sd15", "dfast", "sdpa", "fp32", "cpu", 21.5);
    write_rows(&dir.join("results.csv"), &[baseline.clone(), short, wide, batch, same.clone(), same]);
    let out = tmp.path().join("out");
    let run = dfast(&["report", dir.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    let line = |setting: &str| -> String {
        let prefix = format!("| {setting} |");
        md.lines().find(|l| l.starts_with(&prefix)).unwrap_or_else(|| panic!("{setting}: {md}")).into()
    };
    assert!(!md.contains("43.01x"), "{md}");
    for label in ["3 steps, 512x512, batch 1", "30 steps, 768x512, batch 1", "30 steps, 512x512, batch 2"] {
        assert!(line(&format!("dfast/sdpa/fp32/cpu @ {label}")).contains("| – |"), "{label}: {md}");
    }
    assert!(line("dfast/sdpa/fp32/cpu @ 30 steps, 512x512, batch 1").contains("| 2.00x |"), "{md}");
    assert!(line("dfast/baseline/fp32/cpu @ 30 steps, 512x512, batch 1").contains("| 1.00x |"), "{md}");
    // The twice-measured setting: one warning on stderr, naming it.
    let warnings: Vec<&str> = stderr.lines().filter(|l| l.starts_with("warning: ")).collect();
    assert_eq!(warnings.len(), 1, "{stderr}");
    assert!(warnings[0].contains("sd15: 2 rows of dfast/sdpa/fp32/cpu (30 steps, 512x512, batch 1"), "{stderr}");
}

/// The chart marks each bar's fastest and slowest timed run (`total_min_s`, `total_max_s`): the same rows
/// with their runs spread draw another picture than with every run equal.
#[test]
fn the_chart_marks_the_fastest_and_slowest_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let chart = |spread: f64| {
        let dir = tmp.path().join(format!("spread-{spread}"));
        std::fs::create_dir_all(&dir).unwrap();
        let rows: Vec<Row> = [("baseline", 10.0), ("sdpa", 8.0)]
            .iter()
            .map(|&(profile, total)| Row {
                total_min_s: total * (1.0 - spread),
                total_max_s: total * (1.0 + spread),
                ..row("sd15", "dfast", profile, "fp32", "cpu", total)
            })
            .collect();
        write_rows(&dir.join("results.csv"), &rows);
        let out = tmp.path().join(format!("out-{spread}"));
        report(&[dir], "t", &out).unwrap();
        image::open(out.join("report.png")).unwrap().to_rgb8()
    };
    let (flat, spread) = (chart(0.0), chart(0.1));
    // Dark pixels (whisker lines) where the flat chart has none.
    let dark = |p: &image::Rgb<u8>| p.0.iter().all(|&c| c < 40);
    let added = flat.pixels().zip(spread.pixels()).filter(|(a, b)| !dark(a) && dark(b)).count();
    assert!(added > 100, "only {added} new dark pixels: no min/max marks");
}
