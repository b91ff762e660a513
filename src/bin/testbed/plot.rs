//! The testbed's run as a picture: live nodes, under-replicated items and
//! repair traffic per second, one panel each, in an SVG file.

use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::prelude::*;

/// One second of the run.
pub struct Row {
    pub second: u64,
    pub live: usize,
    /// Sampled every few seconds.
    pub under_replicated: Option<usize>,
    pub repair_bytes: u64,
}

/// Writes the plot of `rows` to `path`; `churn` is when the churn stopped.
pub fn write(path: &Path, rows: &[Row], churn: u64, title: &str) -> Result<()> {
    let root = SVGBackend::new(path, (900, 720)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let (top, rest) = root.split_vertically(40);
    top.draw(&Text::new(
        title.to_string(),
        (10, 12),
        ("sans-serif", 16).into_font(),
    ))
    .map_err(|e| anyhow!("{e}"))?;
    let panels = rest.split_evenly((3, 1));
    let end = rows.last().map_or(1, |r| r.second + 1);
    let live: Vec<(u64, f64)> = rows.iter().map(|r| (r.second, r.live as f64)).collect();
    let short: Vec<(u64, f64)> = rows
        .iter()
        .filter_map(|r| r.under_replicated.map(|u| (r.second, u as f64)))
        .collect();
    let mib: Vec<(u64, f64)> = rows
        .iter()
        .map(|r| (r.second, r.repair_bytes as f64 / (1u64 << 20) as f64))
        .collect();
    for (area, (name, points, color)) in panels.iter().zip([
        ("live nodes", live, BLUE),
        (
            "sampled items with a blob on fewer than r live nodes",
            short,
            RED,
        ),
        ("repair traffic (MiB, cumulative)", mib, GREEN),
    ]) {
        let max = points.iter().map(|p| p.1).fold(1.0, f64::max) * 1.1;
        let mut chart = ChartBuilder::on(area)
            .caption(name, ("sans-serif", 14))
            .margin(8)
            .x_label_area_size(28)
            .y_label_area_size(48)
            .build_cartesian_2d(0..end, 0.0..max)
            .map_err(|e| anyhow!("{e}"))?;
        chart
            .configure_mesh()
            .x_desc("second")
            .light_line_style(WHITE)
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(|e| anyhow!("{e}"))?;
        chart
            .draw_series(points.iter().map(|p| Circle::new(*p, 2, color.filled())))
            .map_err(|e| anyhow!("{e}"))?;
        // Where the churn ends and the settling begins.
        chart
            .draw_series(LineSeries::new(
                [(churn, 0.0), (churn, max)],
                BLACK.mix(0.4).stroke_width(1),
            ))
            .map_err(|e| anyhow!("{e}"))?;
    }
    root.present().map_err(|e| anyhow!("{e}"))?;
    Ok(())
}
