//! What the Markdown table and the chart both read off the rows: models, execution providers, a row's
//! setting and its baseline, numbers as printed.

use crate::bench::schema::Row;

/// Model names in order of first appearance.
pub fn models(rows: &[Row]) -> Vec<String> {
    let mut seen = Vec::<String>::new();
    for row in rows {
        if !seen.contains(&row.model) {
            seen.push(row.model.clone());
        }
    }
    seen
}

/// Execution providers in order of first appearance, PyTorch's after dfast's; the chart colours and groups
/// them in this order.
pub fn execution_providers(rows: &[Row]) -> Vec<String> {
    let mut seen = Vec::<String>::new();
    for row in by_runtime(rows) {
        if !seen.contains(&row.ep) {
            seen.push(row.ep.clone());
        }
    }
    seen
}

/// The rows in input order, PyTorch's after dfast's: the reference reads best after what it is compared with.
pub(super) fn by_runtime(rows: &[Row]) -> Vec<&Row> {
    let mut sorted: Vec<&Row> = rows.iter().collect();
    sorted.sort_by_key(|r| is_pytorch(r));
    sorted
}

/// The row's setting as the table and chart show it: `runtime/profile/precision/ep` for dfast rows;
/// PyTorch rows are named by their profile (the seed's step names), e.g. `pytorch bf16+sdpa`.
pub fn setting(row: &Row) -> String {
    if row.runtime.eq_ignore_ascii_case("pytorch") {
        format!("pytorch {}", row.profile)
    } else {
        let base = format!("{}/{}/{}/{}", row.runtime, row.profile, row.precision, row.ep);
        if row.ep_options.is_empty() { base } else { format!("{base} ({})", row.ep_options) }
    }
}

/// Steps, size and batch: rows that differ in them time different work, so they are never compared.
pub fn same_work(a: &Row, b: &Row) -> bool {
    (a.steps, a.width, a.height, a.batch_size) == (b.steps, b.width, b.height, b.batch_size)
}

/// `30 steps, 512x512, batch 1`.
pub fn work(row: &Row) -> String {
    format!("{} steps, {}x{}, batch {}", row.steps, row.width, row.height, row.batch_size)
}

/// The row's setting in a table of `rows`: [`setting`], plus the tag when another row of the same model and
/// work has the same setting and another tag (so that two runs of one setting read apart), plus the work
/// (`@ 30 steps, 512x512, batch 1`) when the model's rows do not all do the same work.
pub fn setting_in(rows: &[Row], row: &Row) -> String {
    let base = setting(row);
    let twin = rows.iter().any(|r| r.model == row.model && r.tag != row.tag && same_work(r, row) && setting(r) == base);
    let mut label = if twin && !row.tag.is_empty() { format!("{base} [{}]", row.tag) } else { base };
    if rows.iter().any(|r| r.model == row.model && !same_work(r, row)) {
        label.push_str(&format!(" @ {}", work(row)));
    }
    label
}

/// The index in `rows` of the baseline `row` is compared with: the same model's `profile = baseline`,
/// `precision = fp32` row doing the same work (steps, size, batch), preferring the same EP and device, then
/// the same EP, then the same device, else the model's first such row, else the model's first baseline row
/// of any precision that does the same work. `None` where no baseline did the same work.
pub fn baseline_of(rows: &[Row], row: &Row) -> Option<usize> {
    let is_baseline = |r: &Row| r.model == row.model && same_work(r, row) && r.profile.eq_ignore_ascii_case("baseline");
    let fp32 = |r: &Row| r.precision.eq_ignore_ascii_case("fp32");
    let candidates: Vec<usize> = (0..rows.len()).filter(|&i| is_baseline(&rows[i]) && fp32(&rows[i])).collect();
    let pick = |same: &dyn Fn(&Row) -> bool| candidates.iter().copied().find(|&i| same(&rows[i]));
    pick(&|r| r.ep == row.ep && r.device == row.device)
        .or_else(|| pick(&|r| r.ep == row.ep))
        // A PyTorch row (torch-cuda) is best compared with dfast's baseline on the same GPU.
        .or_else(|| pick(&|r| r.device == row.device))
        .or_else(|| candidates.first().copied())
        .or_else(|| rows.iter().position(is_baseline))
}

/// One sentence per setting measured more than once (same model, setting, tag, device and work): the
/// table lists each such row and the speed-ups use the first baseline among them.
pub fn duplicates(rows: &[Row]) -> Vec<String> {
    let same = |a: &Row, b: &Row| {
        a.model == b.model && setting(a) == setting(b) && a.tag == b.tag && a.device == b.device && same_work(a, b)
    };
    rows.iter()
        .enumerate()
        .filter(|&(i, row)| !rows[..i].iter().any(|earlier| same(earlier, row)))
        .filter_map(|(_, row)| {
            let n = rows.iter().filter(|other| same(other, row)).count();
            let tag = if row.tag.is_empty() { String::new() } else { format!(", tag {:?}", row.tag) };
            (n > 1).then(|| {
                format!(
                    "{}: {n} rows of {} ({}{tag}) measure the same setting; each is listed, and a baseline among \
                     them counts once (the first)",
                    row.model,
                    setting(row),
                    work(row)
                )
            })
        })
        .collect()
}

/// Seconds, milliseconds or megabytes with three or four significant digits, so that a tiny model's
/// 0.004 s does not print as 0.00.
pub fn format_number(x: f64) -> String {
    let a = x.abs();
    if !x.is_finite() {
        format!("{x}")
    } else if a >= 100.0 {
        format!("{x:.0}")
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else if a >= 1.0 || a == 0.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

pub(super) fn is_pytorch(row: &Row) -> bool {
    row.runtime.eq_ignore_ascii_case("pytorch")
}
