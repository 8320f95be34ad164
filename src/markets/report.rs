//! `publish`: the report as JSON, Markdown and an equity-curve chart (SVG, drawn with plotters).

use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;

use super::StageError;
use super::backtest::Backtest;
use super::model::Metrics;

#[derive(Debug, serde::Serialize)]
pub struct Report {
    pub model: Metrics,
    pub backtest: serde_json::Value,
    pub baseline: serde_json::Value,
}

/// A stage as recorded in the state database: its last duration and params.
pub struct StageSummary {
    pub stage: String,
    pub duration_ms: Option<i64>,
    pub params: String,
}

/// Every stage's last duration and params, from the state database, opened read-only.
/// This makes report.md the one output that is not a pure function of the stage's inputs:
/// its timings change from run to run.
pub fn stage_summaries(state_path: &Path) -> Vec<StageSummary> {
    let Ok(state) = crate::state::State::open_read_only(state_path) else { return Vec::new() };
    let Ok(records) = state.load_records() else { return Vec::new() };
    let mut names: Vec<&String> = records.keys().collect();
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let params = state
                .fingerprint_inputs(name)
                .ok()
                .flatten()
                .and_then(|json| serde_json::from_str::<serde_json::Value>(&json).ok())
                .and_then(|v| v.get("params").cloned())
                .map(|p| p.to_string())
                .unwrap_or_default();
            StageSummary { stage: name.clone(), duration_ms: records[name].last_duration_ms, params }
        })
        .collect()
}

fn backtest_row(name: &str, json: &serde_json::Value) -> String {
    let bt: Option<Backtest> = serde_json::from_value(json.clone()).ok();
    match bt {
        Some(b) => format!(
            "| {name} | {:+.2}% | {:.2} | {:.2}% | {:.1}% | {:.3} | {} |",
            b.pnl * 100.0,
            b.sharpe,
            b.max_drawdown * 100.0,
            b.hit_rate * 100.0,
            b.turnover,
            b.trades
        ),
        None => format!("| {name} | (unreadable) ||||||"),
    }
}

pub fn markdown(report: &Report, stages: &[StageSummary]) -> String {
    let m = &report.model;
    let mut md = String::new();
    let _ = writeln!(md, "# Market pipeline report\n");
    let _ = writeln!(md, "## Model (held-out period)\n");
    let _ = writeln!(md, "| metric | value |\n|---|---:|");
    let _ = writeln!(
        md,
        "| accuracy | {:.4} |\n| log loss | {:.4} |\n| AUC | {:.4} |\n| base rate (up) | {:.4} |",
        m.accuracy, m.log_loss, m.auc, m.base_rate
    );
    let _ = writeln!(md, "\n## Strategies (held-out period, after fees and slippage)\n");
    let _ = writeln!(
        md,
        "| strategy | PnL | Sharpe (annualised) | max drawdown | hit rate | turnover | trades |\n|---|---:|---:|---:|---:|---:|---:|"
    );
    let _ = writeln!(md, "{}", backtest_row("model threshold", &report.backtest));
    let _ = writeln!(md, "{}", backtest_row("momentum baseline", &report.baseline));
    let baseline_cutoff = report.baseline.pointer("/params/cutoff_ts").and_then(serde_json::Value::as_i64);
    if baseline_cutoff.is_some_and(|cutoff| cutoff != m.cutoff_ts) {
        let _ = writeln!(
            md,
            "\n**Note:** the baseline's held-out period does not start where the model's does; give `baseline` the same `train_fraction` as `model` to compare them."
        );
    }
    let _ = writeln!(md, "\n![equity curve](equity.svg)\n");
    let _ = writeln!(md, "## Data\n");
    let _ = writeln!(md, "| | count |\n|---|---:|");
    let _ = writeln!(
        md,
        "| markets | {} |\n| ticks | {} |\n| training rows | {} |\n| held-out rows | {} |",
        m.markets, m.ticks, m.train_rows, m.test_rows
    );
    let _ = writeln!(md, "\n## Stages\n");
    let _ = writeln!(md, "| stage | last duration | params |\n|---|---:|---|");
    for s in stages {
        let took = s.duration_ms.map(|ms| format!("{:.2}s", ms as f64 / 1000.0)).unwrap_or_else(|| "-".into());
        let _ = writeln!(md, "| {} | {took} | `{}` |", s.stage, s.params);
    }
    md
}

/// The model's and the baseline's equity over the held-out period, by hours since its start.
pub fn equity_svg(model: &[(i64, f64)], baseline: &[(i64, f64)]) -> Result<String, StageError> {
    let start = model.iter().chain(baseline).map(|p| p.0).min().unwrap_or(0);
    let hours = |series: &[(i64, f64)]| -> Vec<(f64, f64)> {
        series.iter().map(|&(t, e)| ((t - start) as f64 / 3_600_000.0, e)).collect()
    };
    let (m, b) = (hours(model), hours(baseline));
    let all = m.iter().chain(&b);
    let x_max = all.clone().map(|p| p.0).fold(1.0, f64::max);
    let (y_min, y_max) = all.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| (lo.min(p.1), hi.max(p.1)));
    let (y_min, y_max) = if y_min.is_finite() { (y_min, y_max) } else { (0.9, 1.1) };
    let pad = ((y_max - y_min) * 0.05).max(1e-3);
    let plot_err = |e: String| StageError::msg(format!("cannot draw the equity chart: {e}"));
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 420)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| plot_err(e.to_string()))?;
        let mut chart = ChartBuilder::on(&root)
            .margin(20)
            .x_label_area_size(35)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..x_max, (y_min - pad)..(y_max + pad))
            .map_err(|e| plot_err(e.to_string()))?;
        chart
            .configure_mesh()
            .x_desc("hours into the held-out period")
            .y_desc("equity")
            .draw()
            .map_err(|e| plot_err(e.to_string()))?;
        chart
            .draw_series(LineSeries::new(m, &BLUE))
            .map_err(|e| plot_err(e.to_string()))?
            .label("model")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLUE));
        chart
            .draw_series(LineSeries::new(b, &RED))
            .map_err(|e| plot_err(e.to_string()))?
            .label("momentum baseline")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], RED));
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| plot_err(e.to_string()))?;
        root.present().map_err(|e| plot_err(e.to_string()))?;
    }
    Ok(svg)
}
