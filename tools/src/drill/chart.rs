//! `drill.png`: the samples as five stacked panels on one time axis, the phases shaded and
//! named. Drawn with `plotters`' bitmap backend; text through its `ab_glyph` feature (pure
//! Rust, no fontconfig), from a TrueType file read at run time: `CASEFEED_FONT`, else
//! DejaVu Sans of Debian's `fonts-dejavu-core` (`make drill` installs it when missing).

use super::report::{Phase, Sample, Schedule};
use plotters::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Where the font is looked for when `CASEFEED_FONT` is not set.
pub const FONT_CANDIDATES: [&str; 3] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

#[derive(Debug, thiserror::Error)]
pub enum ChartError {
    #[error(
        "no font for the chart's labels: set CASEFEED_FONT to a .ttf file or install \
         fonts-dejavu-core (looked for {0})"
    )]
    NoFont(String),
    #[error("font {path}: {detail}")]
    Font { path: PathBuf, detail: String },
    #[error("drawing {path}: {detail}")]
    Draw { path: PathBuf, detail: String },
}

static FONT: OnceLock<Result<(), String>> = OnceLock::new();

/// Registers the font as plotters' `sans-serif` (once a process).
fn register_font() -> Result<(), ChartError> {
    let r = FONT.get_or_init(|| {
        let path = match std::env::var_os("CASEFEED_FONT") {
            Some(p) => PathBuf::from(p),
            None => match FONT_CANDIDATES
                .iter()
                .map(PathBuf::from)
                .find(|p| p.exists())
            {
                Some(p) => p,
                None => return Err(String::new()),
            },
        };
        let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        // plotters keeps fonts for the life of the process: the bytes must be 'static
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
            .map_err(|_| format!("{}: not a TrueType/OpenType font", path.display()))
    });
    match r {
        Ok(()) => Ok(()),
        Err(e) if e.is_empty() => Err(ChartError::NoFont(FONT_CANDIDATES.join(", "))),
        Err(e) => Err(ChartError::Font {
            path: PathBuf::from(e.split(": ").next().unwrap_or_default()),
            detail: e.clone(),
        }),
    }
}

fn phase_colour(p: Phase) -> RGBColor {
    match p {
        Phase::Normal => RGBColor(120, 200, 120),
        Phase::Slow => RGBColor(240, 200, 60),
        Phase::Down => RGBColor(230, 80, 70),
        Phase::Back => RGBColor(90, 150, 230),
        Phase::Drain => RGBColor(160, 160, 160),
    }
}

/// The phases as drawn: (phase, from s, to s), the drain cut at the last sample.
fn spans(schedule: &Schedule, t_max: f64) -> Vec<(Phase, f64, f64)> {
    let mut out = Vec::new();
    let mut t = 0.0;
    for (p, d) in &schedule.phases {
        let end = (t + d.as_secs_f64()).min(t_max);
        if end > t {
            out.push((*p, t, end));
        }
        t += d.as_secs_f64();
    }
    out
}

/// Draw the chart of `samples` into `path` (PNG).
pub fn draw(
    path: &Path,
    samples: &[Sample],
    schedule: &Schedule,
    rate_limit: u64,
    ceiling: u64,
    title: &str,
) -> Result<(), ChartError> {
    register_font()?;
    let err = |e: &dyn std::fmt::Display| ChartError::Draw {
        path: path.to_path_buf(),
        detail: e.to_string(),
    };
    let t_max = samples.last().map_or(1.0, |s| s.t_s.max(1.0));
    let spans = spans(schedule, t_max);
    let root = BitMapBackend::new(path, (1400, 1600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let (head, body) = root.split_vertically(44);
    head.draw(&Text::new(
        title.to_string(),
        (20, 12),
        ("sans-serif", 22).into_font(),
    ))
    .map_err(|e| err(&e))?;
    let panels = body.split_evenly((5, 1));

    let max_f =
        |f: &dyn Fn(&Sample) -> f64, floor: f64| samples.iter().map(f).fold(floor, f64::max) * 1.15;
    let series = |f: &dyn Fn(&Sample) -> f64| -> Vec<(f64, f64)> {
        samples.iter().map(|s| (s.t_s, f(s))).collect()
    };

    // 1. calls/s with the rate limit
    {
        let y_max = max_f(&|s| s.calls_per_s, rate_limit as f64);
        let mut c = ChartBuilder::on(&panels[0])
            .margin(10)
            .margin_right(80)
            .x_label_area_size(24)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..t_max, 0f64..y_max)
            .map_err(|e| err(&e))?;
        shade(&mut c, &spans, 0.0, y_max, true).map_err(|e| err(&e))?;
        c.configure_mesh()
            .disable_x_mesh()
            .light_line_style(TRANSPARENT)
            .x_label_formatter(&|v| format!("{v:.0}"))
            .y_desc("API calls/s")
            .y_label_formatter(&|v| format!("{v:.0}"))
            .label_style(("sans-serif", 14))
            .draw()
            .map_err(|e| err(&e))?;
        c.draw_series(LineSeries::new(
            series(&|s| s.calls_per_s),
            BLUE.stroke_width(2),
        ))
        .map_err(|e| err(&e))?
        .label("calls/s (delta of /stats requests)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE.stroke_width(2)));
        limit_line(&mut c, t_max, rate_limit as f64, "rate limit").map_err(|e| err(&e))?;
        legend(&mut c).map_err(|e| err(&e))?;
    }
    // 2. in flight with the ceiling
    {
        let y_max = max_f(&|s| s.in_flight as f64, ceiling as f64);
        let mut c = ChartBuilder::on(&panels[1])
            .margin(10)
            .margin_right(80)
            .x_label_area_size(24)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..t_max, 0f64..y_max)
            .map_err(|e| err(&e))?;
        shade(&mut c, &spans, 0.0, y_max, false).map_err(|e| err(&e))?;
        c.configure_mesh()
            .disable_x_mesh()
            .light_line_style(TRANSPARENT)
            .x_label_formatter(&|v| format!("{v:.0}"))
            .y_desc("calls in flight")
            .y_label_formatter(&|v| format!("{v:.0}"))
            .label_style(("sans-serif", 14))
            .draw()
            .map_err(|e| err(&e))?;
        c.draw_series(LineSeries::new(
            series(&|s| s.in_flight as f64),
            MAGENTA.stroke_width(2),
        ))
        .map_err(|e| err(&e))?
        .label("in flight (/stats in_flight)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], MAGENTA.stroke_width(2)));
        limit_line(
            &mut c,
            t_max,
            ceiling as f64,
            "ceiling (consumers × RECORD_CONCURRENCY)",
        )
        .map_err(|e| err(&e))?;
        legend(&mut c).map_err(|e| err(&e))?;
    }
    // 3. queue depth (left) and oldest backlog age (right)
    {
        let y_max = max_f(&|s| s.queue_depth as f64, 10.0);
        let age_max = max_f(&|s| s.oldest_age_s, 10.0);
        let mut c = ChartBuilder::on(&panels[2])
            .margin(10)
            .x_label_area_size(24)
            .y_label_area_size(70)
            .right_y_label_area_size(70)
            .build_cartesian_2d(0f64..t_max, 0f64..y_max)
            .map_err(|e| err(&e))?
            .set_secondary_coord(0f64..t_max, 0f64..age_max);
        shade(&mut *c, &spans, 0.0, y_max, false).map_err(|e| err(&e))?;
        c.configure_mesh()
            .disable_x_mesh()
            .light_line_style(TRANSPARENT)
            .x_label_formatter(&|v| format!("{v:.0}"))
            .y_desc("work queue messages")
            .y_label_formatter(&|v| format!("{v:.0}"))
            .label_style(("sans-serif", 14))
            .draw()
            .map_err(|e| err(&e))?;
        c.configure_secondary_axes()
            .y_desc("oldest backlog age (s)")
            .y_label_formatter(&|v| format!("{v:.0}"))
            .label_style(("sans-serif", 14))
            .draw()
            .map_err(|e| err(&e))?;
        let brown = RGBColor(150, 90, 20);
        c.draw_series(LineSeries::new(
            series(&|s| s.queue_depth as f64),
            BLACK.stroke_width(2),
        ))
        .map_err(|e| err(&e))?
        .label("queue depth (visible + not visible + delayed)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.stroke_width(2)));
        c.draw_secondary_series(LineSeries::new(
            series(&|s| s.oldest_age_s),
            brown.stroke_width(2),
        ))
        .map_err(|e| err(&e))?
        .label("oldest backlog age, right axis (now − upload of the oldest export not in effect)")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], brown.stroke_width(2)));
        // the dual-axis context's own labels include its secondary series
        c.configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .label_font(("sans-serif", 13))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|e| err(&e))?;
    }
    // 4. breaker state
    {
        let mut c = ChartBuilder::on(&panels[3])
            .margin(10)
            .margin_right(80)
            .x_label_area_size(24)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..t_max, -0.2f64..1.4)
            .map_err(|e| err(&e))?;
        shade(&mut c, &spans, -0.2, 1.4, false).map_err(|e| err(&e))?;
        c.configure_mesh()
            .disable_x_mesh()
            .light_line_style(TRANSPARENT)
            .x_label_formatter(&|v| format!("{v:.0}"))
            .y_desc("fleet breaker")
            .y_labels(3)
            .y_label_formatter(&|v| {
                if (*v - 1.0).abs() < 0.01 {
                    "open".into()
                } else if v.abs() < 0.01 {
                    "closed".into()
                } else {
                    String::new()
                }
            })
            .label_style(("sans-serif", 14))
            .draw()
            .map_err(|e| err(&e))?;
        let mut steps = Vec::new();
        for (i, s) in samples.iter().enumerate() {
            let v = if s.breaker_open() { 1.0 } else { 0.0 };
            if i > 0 {
                steps.push((s.t_s, steps.last().map_or(v, |p: &(f64, f64)| p.1)));
            }
            steps.push((s.t_s, v));
        }
        c.draw_series(LineSeries::new(steps, RED.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label("gate#api state (ledger table; no item = closed)")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED.stroke_width(2)));
        legend(&mut c).map_err(|e| err(&e))?;
    }
    // 5. cumulative: rows sent, applied, dead-lettered
    {
        let y_max = max_f(&|s| s.rows_sent.max(s.applied) as f64, 10.0);
        let mut c = ChartBuilder::on(&panels[4])
            .margin(10)
            .margin_right(80)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..t_max, 0f64..y_max)
            .map_err(|e| err(&e))?;
        shade(&mut c, &spans, 0.0, y_max, false).map_err(|e| err(&e))?;
        c.configure_mesh()
            .disable_x_mesh()
            .light_line_style(TRANSPARENT)
            .x_label_formatter(&|v| format!("{v:.0}"))
            .y_desc("rows (cumulative)")
            .y_label_formatter(&|v| format!("{v:.0}"))
            .x_desc("seconds since the drill started")
            .label_style(("sans-serif", 14))
            .draw()
            .map_err(|e| err(&e))?;
        let grey = RGBColor(110, 110, 110);
        let green = RGBColor(20, 140, 60);
        c.draw_series(DashedLineSeries::new(
            series(&|s| s.rows_sent as f64),
            6,
            4,
            grey.stroke_width(2),
        ))
        .map_err(|e| err(&e))?
        .label("rows sent by the splitter")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], grey.stroke_width(2)));
        c.draw_series(LineSeries::new(
            series(&|s| s.applied as f64),
            green.stroke_width(2),
        ))
        .map_err(|e| err(&e))?
        .label("applied at the API")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], green.stroke_width(2)));
        c.draw_series(LineSeries::new(
            series(&|s| s.dead_lettered as f64),
            RED.stroke_width(2),
        ))
        .map_err(|e| err(&e))?
        .label("dead-lettered")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED.stroke_width(2)));
        legend(&mut c).map_err(|e| err(&e))?;
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

type Chart<'a, 'b> = ChartContext<
    'a,
    BitMapBackend<'b>,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;
/// A helper's failure, as text (plotters' error types carry the backend's lifetime).
type DrawResult = Result<(), String>;

/// Shade each phase; with `labels`, name it at the top of its span.
fn shade<'a, 'b, C>(
    c: &mut ChartContext<'a, BitMapBackend<'b>, C>,
    spans: &[(Phase, f64, f64)],
    y_min: f64,
    y_max: f64,
    labels: bool,
) -> DrawResult
where
    C: plotters::coord::CoordTranslate<From = (f64, f64)>,
{
    c.draw_series(spans.iter().map(|(p, a, b)| {
        Rectangle::new(
            [(*a, y_min), (*b, y_max)],
            phase_colour(*p).mix(0.18).filled(),
        )
    }))
    .map_err(|e| e.to_string())?;
    if labels {
        let t_max = spans.last().map_or(1.0, |(_, _, b)| *b);
        let wide = spans.iter().filter(|(_, a, b)| b - a >= t_max * 0.04);
        c.draw_series(wide.map(|(p, a, _)| {
            Text::new(
                p.as_str().to_string(),
                (*a + 1.0, y_max * 0.97),
                ("sans-serif", 16).into_font().color(&BLACK),
            )
        }))
        .map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn limit_line(c: &mut Chart<'_, '_>, t_max: f64, y: f64, label: &str) -> DrawResult {
    c.draw_series(DashedLineSeries::new(
        vec![(0.0, y), (t_max, y)],
        8,
        5,
        RED.stroke_width(2),
    ))
    .map_err(|e| e.to_string())?
    .label(format!("{label} = {y:.0}"))
    .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED.stroke_width(2)));
    Ok(())
}

fn legend<'a, 'b: 'a, C>(c: &mut ChartContext<'a, BitMapBackend<'b>, C>) -> DrawResult
where
    C: plotters::coord::CoordTranslate,
{
    c.configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font(("sans-serif", 13))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())?;
    Ok(())
}
