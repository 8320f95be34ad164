//! The equity chart: the model's equity against the momentum baseline and the equal-weight
//! benchmark, with dates on the x axis and the model's drawdown below. Drawn once on any
//! plotters backend: SVG for the web, PNG (with an embedded font) for everything else.

use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;

use super::StageError;
use super::ingest::time::format_utc;

const SIZE: (u32, u32) = (1000, 560);
/// Points drawn per series at most: a curve of 150,000 bars is drawn from the lowest and
/// highest value of each of 1,000 buckets, which keeps every visible extreme.
const MAX_POINTS: usize = 2_000;

/// An equity table as read back: time, equity, drawdown and (for the model) the benchmark.
#[derive(Debug, Clone, Default)]
pub struct Curve {
    pub ts: Vec<i64>,
    pub equity: Vec<f64>,
    pub drawdown: Vec<f64>,
    pub benchmark: Vec<f64>,
}

pub struct Chart<'a> {
    pub model: &'a Curve,
    pub baseline: &'a Curve,
    pub synthetic: bool,
}

impl Chart<'_> {
    pub fn svg(&self) -> Result<String, StageError> {
        register_font()?;
        let mut svg = String::new();
        self.draw(SVGBackend::with_string(&mut svg, SIZE).into_drawing_area())?;
        Ok(svg)
    }

    pub fn png(&self) -> Result<Vec<u8>, StageError> {
        register_font()?;
        let (w, h) = SIZE;
        let mut pixels = vec![0u8; (w * h * 3) as usize];
        self.draw(BitMapBackend::with_buffer(&mut pixels, SIZE).into_drawing_area())?;
        let mut png = Vec::new();
        let failed = |e: png::EncodingError| StageError::msg(format!("cannot encode the equity chart as PNG: {e}"));
        let mut encoder = png::Encoder::new(&mut png, w, h);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().map_err(failed)?;
        writer.write_image_data(&pixels).map_err(failed)?;
        writer.finish().map_err(failed)?;
        Ok(png)
    }

    fn draw<DB: DrawingBackend>(&self, root: DrawingArea<DB, Shift>) -> Result<(), StageError> {
        let fail = |e: String| StageError::msg(format!("cannot draw the equity chart: {e}"));
        root.fill(&WHITE).map_err(|e| fail(e.to_string()))?;
        let (upper, lower) = root.split_vertically(SIZE.1 * 7 / 10);
        let series = |c: &Curve, values: &[f64]| downsample(&c.ts, values);
        let lines = [
            ("model", BLUE, series(self.model, &self.model.equity)),
            ("momentum baseline", RED, series(self.baseline, &self.baseline.equity)),
            ("long every market, equal weight", RGBColor(120, 120, 120), series(self.model, &self.model.benchmark)),
        ];
        let all = || lines.iter().flat_map(|l| l.2.iter());
        let (x0, x1) = all().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| (lo.min(p.0), hi.max(p.0)));
        // One bar, or none: an hour either side, so that a lone point is still drawn.
        let (x0, x1) = match (x0 < x1, x0.is_finite()) {
            (true, _) => (x0, x1),
            (false, true) => (x0 - 3_600_000.0, x0 + 3_600_000.0),
            (false, false) => (0.0, 1.0),
        };
        let (y0, y1) = all().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| (lo.min(p.1), hi.max(p.1)));
        let (y0, y1) = if y0.is_finite() { (y0, y1) } else { (0.9, 1.1) };
        let pad = ((y1 - y0) * 0.05).max(1e-3);
        let with_time = x1 - x0 < 5.0 * 86_400_000.0;
        let date = |x: &f64| format_utc(*x as i64, with_time);
        let title =
            if self.synthetic { "Equity over the test period (synthetic data)" } else { "Equity over the test period" };

        let mut chart = ChartBuilder::on(&upper)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(28)
            .y_label_area_size(64)
            .build_cartesian_2d(x0..x1, (y0 - pad)..(y1 + pad))
            .map_err(|e| fail(e.to_string()))?;
        chart
            .configure_mesh()
            .x_labels(6)
            .x_label_formatter(&date)
            .y_desc("equity (start = 1)")
            .draw()
            .map_err(|e| fail(e.to_string()))?;
        for (name, color, points) in lines {
            if points.is_empty() {
                continue;
            }
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))
                .map_err(|e| fail(e.to_string()))?
                .label(name)
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|e| fail(e.to_string()))?;

        let drawdown = series(self.model, &self.model.drawdown);
        let deepest = drawdown.iter().map(|p| p.1).fold(0.0f64, f64::min).min(-1e-4);
        let mut below = ChartBuilder::on(&lower)
            .margin(12)
            .x_label_area_size(28)
            .y_label_area_size(64)
            .build_cartesian_2d(x0..x1, deepest * 1.05..0.0)
            .map_err(|e| fail(e.to_string()))?;
        below
            .configure_mesh()
            .x_labels(6)
            .x_label_formatter(&date)
            .y_labels(4)
            .y_label_formatter(&|y| format!("{:.1}%", y * 100.0))
            .y_desc("model drawdown")
            .draw()
            .map_err(|e| fail(e.to_string()))?;
        below
            .draw_series(AreaSeries::new(drawdown, 0.0, BLUE.mix(0.25)).border_style(BLUE))
            .map_err(|e| fail(e.to_string()))?;
        root.present().map_err(|e| fail(e.to_string()))
    }
}

/// DejaVu Sans, registered once as plotters' "sans-serif": no system font is needed.
fn register_font() -> Result<(), StageError> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular()).is_ok()
    });
    if ok { Ok(()) } else { Err(StageError::msg("cannot load the chart font (DejaVu Sans)")) }
}

/// (time, value) points, at most `MAX_POINTS`: beyond that, each bucket of consecutive
/// points is drawn by its lowest and highest, in time order.
fn downsample(ts: &[i64], values: &[f64]) -> Vec<(f64, f64)> {
    let n = ts.len().min(values.len());
    if n <= MAX_POINTS {
        return (0..n).map(|i| (ts[i] as f64, values[i])).collect();
    }
    let buckets = MAX_POINTS / 2;
    let mut points = Vec::with_capacity(MAX_POINTS);
    for b in 0..buckets {
        let range = n * b / buckets..n * (b + 1) / buckets;
        let lowest = range.clone().min_by(|&i, &j| values[i].total_cmp(&values[j])).expect("buckets are not empty");
        let highest = range.max_by(|&i, &j| values[i].total_cmp(&values[j])).expect("buckets are not empty");
        for i in [lowest.min(highest), lowest.max(highest)] {
            points.push((ts[i] as f64, values[i]));
        }
    }
    points.dedup();
    points
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downsampling_keeps_the_extremes_and_bounds_the_points() {
        let ts: Vec<i64> = (0..150_000).collect();
        let mut values: Vec<f64> = (0..150_000).map(|i| (i as f64 / 1000.0).sin()).collect();
        values[77_777] = 9.0;
        values[12_345] = -9.0;
        let points = downsample(&ts, &values);
        assert!(points.len() <= MAX_POINTS);
        assert!(points.contains(&(77_777.0, 9.0)) && points.contains(&(12_345.0, -9.0)));
        assert!(points.windows(2).all(|w| w[0].0 < w[1].0), "in time order");
    }
}
