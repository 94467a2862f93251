//! `dfast report`: collates benchmark CSVs from any number of result folders into one CSV, a Markdown table
//! per model with the speed-up against that model's baseline, and a bar chart (the `chart` module), the way the
//! seed's `prepare_results.py` does for diffusion-fast.
//!
//! ```text
//! DIR_A/*.csv ┐                     ┌ OUT/results.csv  every row, schema column order
//! DIR_B/*.csv ┼─ read_rows ─ rows ──┼ OUT/report.md    devices, then per model: setting, times, speed-up, tag
//!    ...      ┘                     └ OUT/report.png   total_s per setting, one panel per model, colour = EP
//! ```

mod canvas;
mod chart;
mod rows;

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::fs::File;
use std::path::{Path, PathBuf};

pub use chart::{CHART_HEIGHT, CHART_WIDTH};
pub use rows::{
    baseline_of, duplicates, execution_providers, format_number, models, same_work, setting, setting_in, work,
};
use rows::{by_runtime, is_pytorch};

use super::schema::{COLUMNS, OPTIONAL_COLUMNS, RESULTS_CSV, Row};
use crate::{Error, Result};

/// The Markdown report's file name in the output folder.
pub const REPORT_MD: &str = "report.md";
/// The chart's file name in the output folder.
pub const REPORT_PNG: &str = "report.png";

/// What [`report`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportSummary {
    /// Rows read from every input folder together.
    pub rows: usize,
    /// Model names, in the order they first appear.
    pub models: Vec<String>,
    /// The files written: results.csv, report.md, report.png.
    pub files: Vec<PathBuf>,
    /// What the reader should know: settings measured more than once ([`duplicates`]).
    pub warnings: Vec<String>,
}

/// Collates the benchmark CSVs of `dirs` into `out` (created if missing): `results.csv`, `report.md` and
/// `report.png`, the chart titled `title`.
pub fn report(dirs: &[PathBuf], title: &str, out: &Path) -> Result<ReportSummary> {
    if dirs.is_empty() {
        return Err(Error::bad_input("no result folder given; pass one or more folders of benchmark CSVs"));
    }
    check_out_is_not_an_input(dirs, out)?;
    let mut rows = Vec::new();
    for dir in dirs {
        rows.extend(read_rows(dir)?);
    }
    if rows.is_empty() {
        return Err(Error::bad_input(format!(
            "the benchmark CSVs in {} hold a header but no rows; run `dfast bench` first",
            dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ")
        )));
    }

    std::fs::create_dir_all(out).map_err(|e| Error::io(out, "cannot create the output folder", e))?;
    let csv_path = out.join(RESULTS_CSV);
    write_csv(&rows, &csv_path)?;
    let md_path = out.join(REPORT_MD);
    crate::files::write_bytes(&md_path, "the report", render_markdown(&rows, title).as_bytes())?;
    let png_path = out.join(REPORT_PNG);
    chart::draw(&rows, title, &png_path)?;

    Ok(ReportSummary {
        rows: rows.len(),
        models: models(&rows),
        files: vec![csv_path, md_path, png_path],
        warnings: duplicates(&rows),
    })
}

/// Reads every `*.csv` directly inside `dir` (not its subfolders), in file-name order; `dir` may also be one
/// CSV file. Unknown extra columns are ignored, and an empty `peak_device_mb` reads as `None`.
pub fn read_rows(dir: &Path) -> Result<Vec<Row>> {
    if dir.is_file() && is_csv(dir) {
        return read_csv(dir);
    }
    if !dir.exists() {
        return Err(Error::bad_file(dir, "no such folder; expected a folder of benchmark CSVs (*.csv)"));
    }
    if !dir.is_dir() {
        return Err(Error::bad_file(dir, "not a folder; expected a folder of benchmark CSVs (*.csv)"));
    }
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, "cannot list the folder", e))?;
    let mut files: Vec<PathBuf> =
        entries.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_file() && is_csv(p)).collect();
    if files.is_empty() {
        return Err(Error::bad_file(dir, "no benchmark CSV (*.csv) in this folder"));
    }
    files.sort();
    let mut rows = Vec::new();
    for file in &files {
        rows.extend(read_csv(file)?);
    }
    Ok(rows)
}

/// Reads one benchmark CSV: its columns are found by name, so their order does not matter and extra ones
/// are skipped.
pub fn read_csv(path: &Path) -> Result<Vec<Row>> {
    let file = File::open(path).map_err(|e| Error::io(path, "cannot open", e))?;
    let mut reader = csv::ReaderBuilder::new().trim(csv::Trim::All).from_reader(file);
    let header = reader.headers().map_err(|e| csv_error(path, e))?.clone();
    // A spreadsheet's UTF-8 byte-order mark would otherwise hide the first column's name.
    let names: Vec<&str> = header.iter().map(|h| h.trim_start_matches('\u{feff}')).collect();
    if names.iter().all(|n| n.is_empty()) {
        return Err(Error::bad_file(
            path,
            "empty file; expected a CSV with the benchmark header that `dfast bench` writes",
        ));
    }
    let mut index = Vec::with_capacity(COLUMNS.len());
    let mut missing = Vec::new();
    for column in COLUMNS {
        match names.iter().position(|n| *n == column) {
            Some(i) => index.push(i),
            None if OPTIONAL_COLUMNS.contains(&column) => index.push(usize::MAX),
            None => missing.push(format!("`{column}`")),
        }
    }
    if !missing.is_empty() {
        let expected = "expected the benchmark header that `dfast bench` writes";
        let message = match missing.len() {
            1 => format!("missing column {}; {expected}", missing[0]),
            2..=4 => format!("missing columns {}; {expected}", missing.join(", ")),
            n if n == COLUMNS.len() => format!("none of the benchmark columns is in its header; {expected}"),
            n => format!(
                "{n} of the {} benchmark columns are missing ({}, ...); {expected}",
                COLUMNS.len(),
                missing[..3].join(", ")
            ),
        };
        return Err(Error::bad_file(path, message));
    }

    let schema_header = csv::StringRecord::from(COLUMNS.to_vec());
    let mut rows = Vec::new();
    for (i, record) in reader.records().enumerate() {
        let record = record.map_err(|e| csv_error(path, e))?;
        let at = RowAt(i + 1);
        let ordered: csv::StringRecord = index.iter().map(|&j| record.get(j).unwrap_or("")).collect();
        let row: Row = ordered.deserialize(Some(&schema_header)).map_err(|e| field_error(path, at, &ordered, e))?;
        // Speed-ups divide by total_s and the chart's bars are total_s: a zero, negative or NaN one is a
        // broken measurement, better named here than drawn.
        if !(row.total_s.is_finite() && row.total_s > 0.0) {
            return Err(Error::bad_file(
                path,
                format!("{at}, column `total_s`: expected a positive number of seconds, found {:?}", &ordered[TOTAL_S]),
            ));
        }
        rows.push(row);
    }
    Ok(rows)
}

/// `total_s`'s index in [`COLUMNS`].
const TOTAL_S: usize = 27;

/// A data row's number: 1 is the first row under the header. (Not its line: csv's line count is off by one
/// in files with CRLF line ends, and a quoted field may span lines.)
#[derive(Clone, Copy)]
struct RowAt(usize);

impl std::fmt::Display for RowAt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "row {}", self.0)
    }
}

fn is_csv(path: &Path) -> bool {
    path.extension().is_some_and(|e| e.eq_ignore_ascii_case("csv"))
}

fn csv_error(path: &Path, e: csv::Error) -> Error {
    // Record 0 is the header, so a record's index is its data row number.
    let record = e.position().map(|p| p.record());
    let message = match (e.kind(), record) {
        (csv::ErrorKind::UnequalLengths { expected_len, len, .. }, Some(row)) => {
            format!("row {row} has {len} fields but the header has {expected_len}; expected one field per column")
        }
        (csv::ErrorKind::Utf8 { .. }, Some(0)) => "the header is not UTF-8 text; expected a CSV file".to_string(),
        (csv::ErrorKind::Utf8 { .. }, Some(row)) => format!("row {row} is not UTF-8 text; expected a CSV file"),
        (csv::ErrorKind::Io(io), _) => format!("cannot read: {io}"),
        _ => format!("cannot read as CSV: {e}"),
    };
    Error::bad_file(path, message)
}

/// Names the file, row, column and value of a field that does not parse as its column's type.
fn field_error(path: &Path, at: RowAt, ordered: &csv::StringRecord, e: csv::Error) -> Error {
    let csv::ErrorKind::Deserialize { err, .. } = e.kind() else {
        return csv_error(path, e);
    };
    let Some(field) = err.field().map(|f| f as usize).filter(|&f| f < COLUMNS.len()) else {
        return Error::bad_file(path, format!("{at}: {err}"));
    };
    let expected = match err.kind() {
        csv::DeserializeErrorKind::ParseInt(_) => "a whole number",
        csv::DeserializeErrorKind::ParseFloat(_) => "a number",
        _ => "a value of the column's type",
    };
    Error::bad_file(
        path,
        format!("{at}, column `{}`: expected {expected}, found {:?}", COLUMNS[field], &ordered[field]),
    )
}

/// Refuses an output folder that is one of the inputs: its results.csv would replace an input CSV.
fn check_out_is_not_an_input(dirs: &[PathBuf], out: &Path) -> Result<()> {
    let Ok(out_abs) = out.canonicalize() else {
        return Ok(()); // not there yet, so not an input either
    };
    for dir in dirs {
        if dir.canonicalize().is_ok_and(|d| d == out_abs) {
            return Err(Error::bad_file(
                out,
                format!(
                    "the output folder is also an input; its {RESULTS_CSV} would be replaced, choose another --out"
                ),
            ));
        }
    }
    Ok(())
}

/// Writes `rows` as a benchmark CSV (header first), through a temporary file renamed over `path`.
pub(crate) fn write_csv(rows: &[Row], path: &Path) -> Result<()> {
    let fail = |e: &dyn std::fmt::Display| Error::bad_file(path, format!("cannot write the CSV: {e}"));
    crate::files::write_atomically(path, "the CSV", |out| {
        let mut writer = csv::Writer::from_writer(out);
        for row in rows {
            writer.serialize(row).map_err(|e| fail(&e))?;
        }
        writer.flush().map_err(|e| fail(&e))
    })
}

/// The Markdown report: title, chart, devices and versions, then one table per model.
pub fn render_markdown(rows: &[Row], title: &str) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# {}\n", one_line(title));
    let _ = writeln!(md, "![total seconds per setting]({REPORT_PNG})\n");

    md.push_str("Devices:\n\n");
    let ordered = by_runtime(rows);
    for device in distinct(ordered.iter().map(|r| r.device.as_str())) {
        let eps = distinct(ordered.iter().filter(|r| r.device == device).map(|r| r.ep.as_str()));
        let name = if device.is_empty() { "(not recorded)" } else { device };
        let _ = writeln!(md, "- {}: {}", escape(name), escape(&eps.join(", ")));
    }
    let versions = distinct(rows.iter().map(|r| r.dfast_version.as_str()).filter(|v| !v.is_empty()));
    let ort = distinct(rows.iter().filter(|r| !is_pytorch(r)).map(|r| r.onnxruntime_version.as_str()));
    let torch = distinct(rows.iter().filter(|r| is_pytorch(r)).map(|r| r.onnxruntime_version.as_str()));
    let mut parts = Vec::new();
    if !versions.is_empty() {
        parts.push(format!("dfast {}", versions.join(", ")));
    }
    if !ort.iter().all(|v| v.is_empty()) {
        parts.push(format!("ONNX Runtime {}", ort.join(", ")));
    }
    if !torch.iter().all(|v| v.is_empty()) {
        // The PyTorch reference writes `torch 2.11.0` in this column; a bare version gets the name added.
        let named: Vec<String> =
            torch.iter().map(|v| if v.starts_with("torch") { v.to_string() } else { format!("torch {v}") }).collect();
        parts.push(named.join(", "));
    }
    if !parts.is_empty() {
        let _ = writeln!(md, "\nVersions: {}.", escape(&parts.join("; ")));
    }

    let mut other_ep_baseline = false;
    for model in models(rows) {
        let model_rows: Vec<&Row> = by_runtime(rows).into_iter().filter(|r| r.model == model).collect();
        let _ = writeln!(md, "\n## {}\n", escape(&model));
        let _ = writeln!(md, "{}\n", escape(&run_conditions(&model_rows)));
        let several_devices = distinct(model_rows.iter().map(|r| r.device.as_str())).len() > 1;
        let device_head = if several_devices { " device |" } else { "" };
        let device_rule = if several_devices { "---|" } else { "" };
        // The UNet called alone (PyTorch reference rows) beside the in-pipeline step, where any row has it.
        let alone = rows.iter().any(|r| r.unet_alone_ms.is_some());
        let alone_head = if alone { " unet_alone_ms |" } else { "" };
        let alone_rule = if alone { "---:|" } else { "" };
        // The host's part of a step (dfast rows), where any row has it: ms and share of the step.
        let host = model_rows.iter().any(|r| r.host_scheduler_ms.is_some());
        let host_head = if host { " host_ms_per_step |" } else { "" };
        let host_rule = if host { "---:|" } else { "" };
        let _ = writeln!(
            md,
            "| setting |{device_head} total_s | unet_step_ms |{alone_head}{host_head} vae_decode_ms | peak_host_mb | speed-up | tag |"
        );
        let _ = writeln!(md, "|---|{device_rule}---:|---:|{alone_rule}{host_rule}---:|---:|---:|---|");
        for row in model_rows {
            let speedup = match baseline_of(rows, row) {
                Some(b) => {
                    let mark = if rows[b].ep != row.ep {
                        other_ep_baseline = true;
                        "\\*"
                    } else {
                        ""
                    };
                    format!("{:.2}x{mark}", rows[b].total_s / row.total_s)
                }
                None => "–".to_string(),
            };
            let device = if several_devices { format!(" {} |", escape(&row.device)) } else { String::new() };
            let alone_cell = match (alone, row.unet_alone_ms) {
                (false, _) => String::new(),
                (true, Some(ms)) => format!(" {} |", format_number(ms)),
                (true, None) => " – |".to_string(),
            };
            let host_cell = match (host, row.host_scheduler_ms, row.host_copy_ms) {
                (false, _, _) => String::new(),
                (true, Some(a), Some(b)) if row.unet_step_ms > 0.0 => {
                    format!(" {} ({:.1}%) |", format_number(a + b), 100.0 * (a + b) / row.unet_step_ms)
                }
                (true, _, _) => " – |".to_string(),
            };
            let _ = writeln!(
                md,
                "| {} |{device} {} | {} |{alone_cell}{host_cell} {} | {} | {speedup} | {} |",
                escape(&setting_in(rows, row)),
                format_number(row.total_s),
                format_number(row.unet_step_ms),
                format_number(row.vae_decode_ms),
                format_number(row.peak_host_mb),
                escape(&row.tag),
            );
        }
    }

    if rows.iter().any(|r| r.host_scheduler_ms.is_some()) {
        md.push_str(
            "\nhost_ms_per_step: the host's part of a UNet step (dfast rows), medians over steps of the scheduler's \
             arithmetic (`host_scheduler_ms`) plus the latent copies in and out of the UNet session \
             (`host_copy_ms`), and its share of `unet_step_ms`.\n",
        );
    }
    md.push_str(
        "\nSpeed-up: the model's baseline `total_s` (profile `baseline`, fp32, on the same execution provider \
         and device where measured, else on the same device; always with the same steps, size and batch) divided \
         by the row's `total_s`; `–` where the model has no baseline row doing the same work.",
    );
    if other_ep_baseline {
        md.push_str(" \\* compared with a baseline measured on another execution provider.");
    }
    md.push('\n');
    md
}

/// Pipeline class, steps, size, batch and scheduler of a model's rows, each listing every distinct value.
fn run_conditions(rows: &[&Row]) -> String {
    let join = |values: Vec<String>| distinct(values.iter().map(String::as_str)).join(" / ");
    let pipeline = join(rows.iter().map(|r| r.pipeline.clone()).collect());
    let steps = join(rows.iter().map(|r| r.steps.to_string()).collect());
    let size = join(rows.iter().map(|r| format!("{}x{}", r.width, r.height)).collect());
    let batch = join(rows.iter().map(|r| r.batch_size.to_string()).collect());
    let scheduler = join(rows.iter().map(|r| r.scheduler.clone()).collect());
    format!("{pipeline}, {steps} steps, {size}, batch {batch}, {scheduler}.")
}

/// Distinct values in order of first appearance.
fn distinct<'a>(values: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut seen = BTreeSet::new();
    values.filter(|v| seen.insert(*v)).collect()
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Makes free text (tags, device names) safe inside a Markdown table cell.
fn escape(text: &str) -> String {
    one_line(text).replace('|', "\\|")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(model: &str, profile: &str, precision: &str, ep: &str, total_s: f64) -> Row {
        Row {
            model: model.into(),
            runtime: "dfast".into(),
            profile: profile.into(),
            precision: precision.into(),
            ep: ep.into(),
            total_s,
            ..Row::default()
        }
    }

    #[test]
    fn baseline_prefers_the_same_ep_then_the_first() {
        let rows = vec![
            row("a", "baseline", "fp32", "cpu", 10.0),
            row("a", "baseline", "fp32", "cuda", 2.0),
            row("a", "sdpa", "fp16", "cuda", 1.0),
            row("a", "sdpa", "fp32", "openvino", 5.0),
            row("b", "baseline", "fp16", "cuda", 4.0),
            row("b", "sdpa", "fp16", "cuda", 2.0),
        ];
        assert_eq!(baseline_of(&rows, &rows[2]), Some(1));
        assert_eq!(baseline_of(&rows, &rows[3]), Some(0));
        // No fp32 baseline for b: its first baseline row of any precision.
        assert_eq!(baseline_of(&rows, &rows[5]), Some(4));
    }

    #[test]
    fn settings_name_pytorch_rows_by_profile() {
        let mut r = row("a", "bf16+sdpa", "bf16", "torch-cuda", 1.0);
        r.runtime = "pytorch".into();
        assert_eq!(setting(&r), "pytorch bf16+sdpa");
        assert_eq!(setting(&row("a", "sdpa", "fp16", "cuda", 1.0)), "dfast/sdpa/fp16/cuda");
        // Rows that differ only in EP options or tag read apart.
        let nhwc = Row { ep_options: "prefer_nhwc=true".into(), ..row("a", "sdpa", "fp16", "cuda", 1.0) };
        assert_eq!(setting(&nhwc), "dfast/sdpa/fp16/cuda (prefer_nhwc=true)");
        let rows = [
            row("a", "sdpa", "fp16", "cuda", 1.0),
            Row { tag: "run 2".into(), ..row("a", "sdpa", "fp16", "cuda", 1.0) },
        ];
        assert_eq!(setting_in(&rows, &rows[1]), "dfast/sdpa/fp16/cuda [run 2]");
        assert_eq!(setting_in(&rows[1..], &rows[1]), "dfast/sdpa/fp16/cuda");
    }

    #[test]
    fn numbers_keep_significant_digits() {
        assert_eq!(format_number(0.0041), "0.004");
        assert_eq!(format_number(4.567), "4.57");
        assert_eq!(format_number(42.26), "42.3");
        assert_eq!(format_number(1234.4), "1234");
    }

    #[test]
    fn total_s_index_matches_the_schema() {
        assert_eq!(COLUMNS[TOTAL_S], "total_s");
    }

    #[test]
    fn table_cells_escape_pipes() {
        assert_eq!(escape("a | b\nc"), "a \\| b c");
    }
}
