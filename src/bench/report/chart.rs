//! The report's PNG: like the seed's `prepare_results.py` chart, one bar of `total_s` per setting with its
//! seconds written on top, here with one panel per model (each with its own scale, since an SDXL run and a
//! tiny model's differ a thousandfold) and the bars of a panel grouped and coloured by execution provider.
//!
//! ```text
//!                         title
//!                   devices (subtitle)
//!              ■ cpu  ■ cuda  ■ torch-cuda        legend
//!  ┌ model A ───────────────┐ ┌ model B ─────────┐
//!  │ 9.1 s                  │ │                  │
//!  │ ██  6.0 s         1.2 s│ │ ...              │
//!  │ ██   ██    gap    ██   │ │                  │
//!  └─dfast─dfast───────dfast┘ └──────────────────┘
//!    baseline sdpa      sdpa        labels: setting without the EP, wrapped
//!    fp32    fp32       fp16
//! ```
//!
//! Text is drawn with Ubuntu Light, embedded from `epaint_default_fonts`, by [`Canvas`]: no system font is
//! looked up, since CI machines have none.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::canvas::{self, Canvas};
use super::rows::{execution_providers, format_number, models, same_work, setting, setting_in, work};
use crate::bench::schema::Row;
use crate::{Error, Result};

/// The chart's width in pixels; it grows only when the bars would be narrower than `MIN_SLOT_PX`.
pub const CHART_WIDTH: u32 = 1200;
/// The chart's height in pixels.
pub const CHART_HEIGHT: u32 = 600;

/// The family styles name; [`Canvas`] draws every text in its one embedded font whatever the name.
const FONT: &str = "sans-serif";
/// Narrowest room for one bar and its label before the image is widened instead.
const MIN_SLOT_PX: f64 = 84.0;
/// Widest room for one bar: a panel with few bars is padded rather than drawn with slabs.
const MAX_SLOT_PX: f64 = 200.0;
/// Pixels of a panel that are not bars: the y-axis labels and description, and margins.
const PANEL_OVERHEAD_PX: f64 = 94.0;
/// Extra room between two execution providers' groups of bars, in bar slots.
const GROUP_GAP: f64 = 0.5;
const LABEL_PX: u32 = 14;
const LINE_PX: i32 = 16;
/// Most lines under one bar; the last one is cut with an ellipsis.
const MAX_LABEL_LINES: usize = 6;

/// Tableau 10: distinguishable, and readable with black text nearby.
const PALETTE: [RGBColor; 10] = [
    RGBColor(78, 121, 167),
    RGBColor(242, 142, 43),
    RGBColor(89, 161, 79),
    RGBColor(225, 87, 89),
    RGBColor(176, 122, 161),
    RGBColor(118, 183, 178),
    RGBColor(237, 201, 72),
    RGBColor(255, 157, 167),
    RGBColor(156, 117, 95),
    RGBColor(186, 176, 172),
];
const GREY: RGBColor = RGBColor(90, 90, 90);
const GRID: RGBColor = RGBColor(228, 228, 228);

type Area<'a> = DrawingArea<Canvas<'a>, Shift>;
type DrawResult<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

/// One model's bars, in drawing order.
struct Panel {
    model: String,
    bars: Vec<Bar>,
    /// The x extent in bar slots, gaps included.
    slots: f64,
}

struct Bar {
    /// Centre on the x axis, in bar slots.
    x: f64,
    seconds: f64,
    /// The fastest and slowest timed runs, where the row has them apart (older rows may lack them).
    range: Option<(f64, f64)>,
    /// Index into the execution providers, which is also the colour.
    ep: usize,
    /// The setting without its EP (the colour tells it), split where it may wrap.
    label: Vec<String>,
}

/// Draws the chart of `rows` to `path` as PNG.
pub fn draw(rows: &[Row], title: &str, path: &Path) -> Result<()> {
    let font = canvas::font().ok_or_else(|| Error::internal("the chart's embedded font could not be loaded"))?;
    let eps = execution_providers(rows);
    let panels: Vec<Panel> = models(rows).into_iter().map(|m| panel(rows, &m, &eps)).collect();
    let total_slots: f64 = panels.iter().map(|p| p.slots).sum();
    let overhead = PANEL_OVERHEAD_PX * panels.len() as f64;
    let slot_px = ((CHART_WIDTH as f64 - overhead) / total_slots).max(MIN_SLOT_PX);
    let width = (overhead + slot_px * total_slots).ceil().max(CHART_WIDTH as f64) as u32;

    let mut buffer = vec![0u8; width as usize * CHART_HEIGHT as usize * 3];
    {
        let root =
            Canvas::new(BitMapBackend::with_buffer(&mut buffer, (width, CHART_HEIGHT)), font).into_drawing_area();
        render(&root, rows, title, &eps, &panels, slot_px)
            .and_then(|()| Ok(root.present()?))
            .map_err(|e| Error::internal(format!("drawing the chart failed: {e}")))?;
    }
    let image = image::RgbImage::from_raw(width, CHART_HEIGHT, buffer)
        .ok_or_else(|| Error::internal("the chart's pixel buffer has the wrong size"))?;
    crate::pipeline::image::save(&image, path)
}

/// Lays out one model's bars: grouped by EP in the order EPs first appear, rows in input order within.
fn panel(rows: &[Row], model: &str, eps: &[String]) -> Panel {
    let mut bars = Vec::new();
    let mut x = 0.0;
    for (ep_index, ep) in eps.iter().enumerate() {
        let group: Vec<&Row> = rows.iter().filter(|r| r.model == model && &r.ep == ep).collect();
        if group.is_empty() {
            continue;
        }
        if !bars.is_empty() {
            x += GROUP_GAP;
        }
        for row in group {
            let (low, high) = (row.total_min_s, row.total_max_s);
            let range = (low.is_finite() && high.is_finite() && 0.0 < low && low < high).then_some((low, high));
            bars.push(Bar { x, seconds: row.total_s, range, ep: ep_index, label: label_parts(rows, row) });
            x += 1.0;
        }
    }
    Panel { model: model.to_string(), bars, slots: x }
}

/// `dfast/sdpa/fp16/cuda` gives `dfast`, `sdpa`, `fp16`; `pytorch bf16+sdpa` gives `pytorch`, `bf16+sdpa`.
/// A tag that tells two runs of one setting apart follows, and the work (steps, size, batch) where the
/// model's rows do not all do the same.
fn label_parts(rows: &[Row], row: &Row) -> Vec<String> {
    let text = setting(row);
    let tagged = setting_in(rows, row).split(" @ ").next().unwrap_or_default().len() > text.len();
    let (text, options) = match text.split_once(" (") {
        Some((main, rest)) => (main.to_string(), Some(rest.trim_end_matches(')').to_string())),
        None => (text, None),
    };
    let ep_suffix = format!("/{}", row.ep);
    let text = text.strip_suffix(&ep_suffix).unwrap_or(&text);
    let mut parts: Vec<String> = text.split(['/', ' ']).filter(|p| !p.is_empty()).map(str::to_string).collect();
    parts.extend(options);
    if tagged {
        parts.push(format!("[{}]", row.tag));
    }
    if rows.iter().any(|r| r.model == row.model && !same_work(r, row)) {
        parts.extend(work(row).split(", ").map(str::to_string));
    }
    parts
}

impl Bar {
    /// The highest point drawn: the bar or its slowest run.
    fn top(&self) -> f64 {
        self.range.map_or(self.seconds, |(_, high)| high.max(self.seconds))
    }
}

fn font(size: u32) -> TextStyle<'static> {
    (FONT, size).into_font().color(&BLACK)
}

fn render(root: &Area, rows: &[Row], title: &str, eps: &[String], panels: &[Panel], slot_px: f64) -> DrawResult {
    root.fill(&WHITE)?;
    let (width, _) = root.dim_in_pixel();
    let max_text = width as i32 - 40;
    let title_style = font(26);
    let area = root.titled(&fit(root, title, &title_style, max_text)?, title_style)?;

    let (subtitle_area, area) = area.split_vertically(22);
    let mut devices: Vec<&str> = Vec::new();
    for row in rows {
        if !row.device.is_empty() && !devices.contains(&row.device.as_str()) {
            devices.push(&row.device);
        }
    }
    let subtitle_style = font(15).color(&GREY).pos(Pos::new(HPos::Center, VPos::Top));
    let subtitle = fit(root, &devices.join("  ·  "), &subtitle_style, max_text)?;
    subtitle_area.draw_text(&subtitle, &subtitle_style, (width as i32 / 2, 0))?;

    let (legend_area, area) = area.split_vertically(30);
    draw_legend(&legend_area, eps, width as i32)?;

    let mut breaks = Vec::new();
    let mut at = 0.0;
    for panel in &panels[..panels.len() - 1] {
        at += PANEL_OVERHEAD_PX + panel.slots * slot_px;
        breaks.push(at.round() as i32);
    }
    let label_style = font(LABEL_PX).pos(Pos::new(HPos::Center, VPos::Top));
    let max_label_px = (slot_px - 4.0) as i32;
    let mut labels = Vec::new();
    for panel in panels {
        let wrapped: Vec<Vec<String>> =
            panel.bars.iter().map(|b| wrap(root, &b.label, &label_style, max_label_px)).collect::<DrawResult<_>>()?;
        labels.push(wrapped);
    }
    // Every panel gets room for the most lines, so that their x axes line up.
    let lines = labels.iter().flatten().map(Vec::len).max().unwrap_or(1);
    let areas = area.split_by_breakpoints(breaks, [] as [i32; 0]);
    for ((panel, panel_area), labels) in panels.iter().zip(&areas).zip(&labels) {
        draw_panel(root, panel_area, panel, labels, lines, slot_px)?;
    }
    Ok(())
}

/// A row of coloured squares and EP names, centred.
fn draw_legend(area: &Area, eps: &[String], width: i32) -> DrawResult {
    let style = font(15).pos(Pos::new(HPos::Left, VPos::Center));
    let (square, gap, spacing) = (14, 6, 26);
    let intro = "execution provider:";
    let mut items = vec![(intro.to_string(), area.estimate_text_size(intro, &style)?.0 as i32)];
    for ep in eps {
        let name = if ep.is_empty() { "(none)" } else { ep.as_str() };
        items.push((name.to_string(), area.estimate_text_size(name, &style)?.0 as i32));
    }
    let total: i32 = items.iter().map(|(_, w)| w + spacing).sum::<i32>() + eps.len() as i32 * (square + gap) - spacing;
    let mut x = ((width - total) / 2).max(4);
    let y = 15;
    for (i, (name, w)) in items.iter().enumerate() {
        if i > 0 {
            let color = PALETTE[(i - 1) % PALETTE.len()];
            area.draw(&Rectangle::new([(x, y - square / 2), (x + square, y + square / 2)], color.filled()))?;
            x += square + gap;
        }
        let style = if i == 0 { style.color(&GREY) } else { style.clone() };
        area.draw_text(name, &style, (x, y))?;
        x += w + spacing;
    }
    Ok(())
}

/// One model's bars with their values on top and `labels` (at most `lines` each) below.
fn draw_panel(
    root: &Area,
    area: &Area,
    panel: &Panel,
    labels: &[Vec<String>],
    lines: usize,
    slot_px: f64,
) -> DrawResult {
    let label_style = font(LABEL_PX).pos(Pos::new(HPos::Center, VPos::Top));

    // Pad the x range so that a panel of few bars keeps bars of a sensible width.
    let min_slots = slot_px * panel.slots / MAX_SLOT_PX;
    let pad = ((min_slots - panel.slots) / 2.0).max(0.0);
    let x_range = (-0.5 - pad)..(panel.slots - 0.5 + pad);
    let y_max = panel.bars.iter().map(Bar::top).fold(0.0, f64::max) * 1.15;

    let mut chart = ChartBuilder::on(area)
        .caption(&panel.model, font(18))
        .margin(8)
        .x_label_area_size(lines as i32 * LINE_PX + 30)
        .y_label_area_size(PANEL_OVERHEAD_PX as i32 - 24)
        .build_cartesian_2d(x_range, 0.0..y_max)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_labels(8)
        .x_desc("setting")
        .y_desc("total time (s)")
        .label_style(font(LABEL_PX))
        .axis_desc_style(font(15))
        .bold_line_style(GRID)
        .light_line_style(WHITE)
        .y_label_formatter(&|v| tick_label(*v))
        .draw()?;

    chart.draw_series(
        panel.bars.iter().map(|b| {
            Rectangle::new([(b.x - 0.4, 0.0), (b.x + 0.4, b.seconds)], PALETTE[b.ep % PALETTE.len()].filled())
        }),
    )?;
    // The fastest and slowest timed runs: a whisker with caps over the median's bar.
    for (x, (low, high)) in panel.bars.iter().filter_map(|b| Some((b.x, b.range?))) {
        let style = BLACK.stroke_width(2);
        chart.draw_series([
            PathElement::new([(x, low), (x, high)], style),
            PathElement::new([(x - 0.12, low), (x + 0.12, low)], style),
            PathElement::new([(x - 0.12, high), (x + 0.12, high)], style),
        ])?;
    }
    let value_style = font(LABEL_PX).pos(Pos::new(HPos::Center, VPos::Bottom));
    chart.draw_series(panel.bars.iter().map(|b| {
        EmptyElement::at((b.x, b.top())) + Text::new(format!("{} s", format_number(b.seconds)), (0, -4), &value_style)
    }))?;

    // Drawn on the root in pixels: the labels sit below the plot, outside the chart's coordinates.
    for (bar, label) in panel.bars.iter().zip(labels) {
        let (x, y) = chart.backend_coord(&(bar.x, 0.0));
        for (i, line) in label.iter().enumerate() {
            root.draw_text(line, &label_style, (x, y + 6 + i as i32 * LINE_PX))?;
        }
    }
    Ok(())
}

/// Packs label parts into lines of at most `max_px`, breaking long parts after `+`, `-`, `=`, `:`, `;` or
/// `,` (and a piece wider than a line anywhere), and cutting what does not fit in [`MAX_LABEL_LINES`] lines
/// with an ellipsis.
fn wrap(area: &Area, parts: &[String], style: &TextStyle, max_px: i32) -> DrawResult<Vec<String>> {
    let width = |s: &str| -> DrawResult<i32> { Ok(area.estimate_text_size(s, style)?.0 as i32) };
    let mut lines: Vec<String> = Vec::new();
    for part in parts {
        let mut line = String::new();
        for piece in part.split_inclusive(['+', '-', '=', ':', ';', ',']).flat_map(|p| split_wide(p, &width, max_px)) {
            let joined = format!("{line}{piece}");
            if !line.is_empty() && width(&joined)? > max_px {
                lines.push(std::mem::take(&mut line));
                line = piece.to_string();
            } else {
                line = joined;
            }
        }
        lines.push(line);
    }
    if lines.len() > MAX_LABEL_LINES {
        let rest = lines.split_off(MAX_LABEL_LINES - 1).concat();
        lines.push(rest);
    }
    lines.iter().map(|l| fit(area, l, style, max_px)).collect()
}

/// `piece` in runs of characters each at most `max_px` wide (one run where it fits).
fn split_wide(piece: &str, width: &dyn Fn(&str) -> DrawResult<i32>, max_px: i32) -> Vec<String> {
    let mut runs = vec![String::new()];
    for c in piece.chars() {
        let last = runs.last_mut().expect("runs is never empty");
        let longer = format!("{last}{c}");
        if !last.is_empty() && width(&longer).unwrap_or(i32::MAX) > max_px {
            runs.push(c.to_string());
        } else {
            *last = longer;
        }
    }
    runs
}

/// A y-axis tick: `2.5`, `10`, `0.05`, without the trailing zeros that the table's numbers keep.
fn tick_label(v: f64) -> String {
    let text = format!("{v:.3}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// `text`, cut with an ellipsis if it is wider than `max_px`.
fn fit(area: &Area, text: &str, style: &TextStyle, max_px: i32) -> DrawResult<String> {
    if area.estimate_text_size(text, style)?.0 as i32 <= max_px {
        return Ok(text.to_string());
    }
    let mut chars: Vec<char> = text.chars().collect();
    while !chars.is_empty() {
        chars.pop();
        let cut = format!("{}…", chars.iter().collect::<String>().trim_end());
        if area.estimate_text_size(&cut, style)?.0 as i32 <= max_px {
            return Ok(cut);
        }
    }
    Ok(String::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The wrapped lines of a label under a bar `max_px` wide.
    fn wrapped(parts: &[&str], max_px: i32) -> Vec<String> {
        let mut buffer = vec![0u8; 400 * 100 * 3];
        let root = Canvas::new(BitMapBackend::with_buffer(&mut buffer, (400, 100)), canvas::font().unwrap())
            .into_drawing_area();
        let parts: Vec<String> = parts.iter().map(|p| p.to_string()).collect();
        wrap(&root, &parts, &font(LABEL_PX), max_px).unwrap()
    }

    #[test]
    fn long_labels_wrap_instead_of_being_cut() {
        let parts = ["dfast", "sdpa", "fp32", "precision=auto:bf16;threads=8"];
        let lines = wrapped(&parts, 80);
        assert!(lines.iter().all(|l| !l.contains('…')), "{lines:?}");
        assert_eq!(lines.concat(), parts.concat(), "{lines:?}");
        // A part with nowhere to break is broken anyway.
        let lines = wrapped(&["averyveryverylongprofilename"], 60);
        assert!(lines.len() > 1 && lines.iter().all(|l| !l.contains('…')), "{lines:?}");
        assert_eq!(lines.concat(), "averyveryverylongprofilename");
    }
}
