//! `publish`: the report as JSON and Markdown, and the equity chart as SVG and PNG.

use std::fmt::Write as _;

use super::backtest::Backtest;
use super::ingest::time::format_utc;
use super::model::Metrics;

/// What the data is: generated (and from which seed) or read from exports, and what
/// reading them took out. Written by the ticks stage (`data/ingest.json`).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct DataSource {
    pub synthetic: bool,
    pub seed: Option<u64>,
    pub markets_file: Option<String>,
    pub ticks_file: Option<String>,
    pub markets: usize,
    pub ticks: usize,
    /// For exports: data rows read, merged into an earlier row of the same market and time,
    /// and dropped for a crossed or missing quote; the unit of integer times.
    pub rows_read: Option<usize>,
    pub rows_merged: Option<usize>,
    pub rows_bad_quote: Option<usize>,
    pub time_unit: Option<String>,
}

impl DataSource {
    fn describe(&self) -> String {
        if self.synthetic {
            return format!(
                "**Synthetic data**, generated from seed {}: not a market's history. Its numbers show the pipeline works, not that a strategy does.",
                self.seed.unwrap_or(42)
            );
        }
        let mut text = format!("Exported data: ticks from `{}`", self.ticks_file.as_deref().unwrap_or("?"));
        if let Some(markets) = &self.markets_file {
            let _ = write!(text, ", markets from `{markets}`");
        }
        if let (Some(read), Some(merged), Some(bad)) = (self.rows_read, self.rows_merged, self.rows_bad_quote) {
            let _ = write!(
                text,
                ". {read} rows read; {merged} merged into an earlier row of the same market and time (last price and quote, summed volume); {bad} dropped for a crossed or missing quote"
            );
        }
        if let Some(unit) = &self.time_unit {
            let _ = write!(text, "; integer times read as {unit} since 1970");
        }
        text.push('.');
        text
    }
}

#[derive(Debug, serde::Serialize)]
pub struct Report {
    /// `None` when the report was not given the ticks stage's ingest report.
    pub data: Option<DataSource>,
    pub model: Metrics,
    /// `backtest.json`: the model's strategy, its benchmark, sensitivity and markets.
    pub strategy: serde_json::Value,
    /// `baseline.json`.
    pub baseline: serde_json::Value,
}

fn backtest_of(json: &serde_json::Value, key: &str) -> Option<Backtest> {
    serde_json::from_value(json.get(key)?.clone()).ok()
}

fn pct(x: f64) -> String {
    format!("{:+.2}%", x * 100.0)
}

fn bar_length(ms: i64) -> String {
    match ms {
        ms if ms % 60_000 == 0 => format!("{} min", ms / 60_000),
        ms if ms % 1_000 == 0 => format!("{} s", ms / 1_000),
        ms => format!("{ms} ms"),
    }
}

fn duration(hours: f64) -> String {
    if hours < 1.0 { format!("{:.0} min", hours * 60.0) } else { format!("{hours:.1} h") }
}

fn strategy_row(md: &mut String, name: &str, b: Option<&Backtest>) {
    let Some(b) = b else {
        let _ = writeln!(md, "| {name} | (unreadable) |||||||||||");
        return;
    };
    let _ = writeln!(
        md,
        "| {name} | {} | {} | {:.2}% | {:.2}% | {:.2}% | {:.2} [{:.2}, {:.2}] | {:.2}% | {:.1}% | {:.1}% | {} | {} |",
        pct(b.pnl),
        pct(b.gross_pnl),
        b.costs.fees * 100.0,
        b.costs.slippage * 100.0,
        b.costs.spread * 100.0,
        b.sharpe,
        b.sharpe_ci95[0],
        b.sharpe_ci95[1],
        b.max_drawdown * 100.0,
        b.hit_rate * 100.0,
        b.exposure * 100.0,
        duration(b.avg_holding_hours),
        b.trades
    );
}

pub fn markdown(report: &Report) -> String {
    let m = &report.model;
    let mut md = String::new();
    let _ = writeln!(md, "# Market pipeline report\n");
    let data = match &report.data {
        Some(data) => data.describe(),
        None => "Where the data came from is not known to this report: give `publish` the ticks stage's `data/ingest.json` as a sixth input.".to_string(),
    };
    let _ = writeln!(md, "{data}\n");
    let _ = writeln!(md, "{} markets, {} ticks.\n", m.markets, m.ticks);

    let _ = writeln!(md, "## Model\n");
    let _ = writeln!(
        md,
        "Two logistic regressions on {} standardised features, one for \"up\" and one for \"down\": {}. A mid that does not move is neither, so P(down) is not 1 - P(up); strategies trade the edge P(up) - P(down). The table scores the \"up\" regression; the \"down\" one has a test AUC of {:.4}.\n",
        m.coefficients.len(),
        m.label,
        m.test_down.auc
    );
    let _ = writeln!(
        md,
        "Periods, by time: training before {}, validation until {}, test from then on. The first {:.0}% of the distinct times train, the next {:.0}% validate. Every tuned choice is made on validation; the test period is scored once. Training used {} of {} rows. The mid did not move for {:.1}% of rows, which count as neither up nor down.\n",
        format_utc(m.split.validation_start_ts, true),
        format_utc(m.split.test_start_ts, true),
        m.split.train_fraction * 100.0,
        m.split.validation_fraction * 100.0,
        m.in_sample.rows,
        m.train_rows_available,
        m.flat_next_move_share * 100.0
    );
    let _ =
        writeln!(md, "| period | rows | accuracy | log loss | AUC | base rate (up) |\n|---|---:|---:|---:|---:|---:|");
    for (name, s) in [("in-sample", &m.in_sample), ("validation", &m.validation), ("test", &m.test)] {
        let _ = writeln!(
            md,
            "| {name} | {} | {:.4} | {:.4} | {:.4} | {:.4} |",
            s.rows, s.accuracy, s.log_loss, s.auc, s.base_rate
        );
    }
    let _ = writeln!(md, "\n### Coefficients (per standard deviation of each feature)\n");
    let _ = writeln!(md, "| feature | up | down |\n|---|---:|---:|");
    for c in &m.coefficients {
        let _ = writeln!(md, "| {} | {:+.4} | {:+.4} |", c.feature, c.coef, c.down_coef);
    }
    let _ = writeln!(md, "| (intercept) | {:+.4} | {:+.4} |", m.intercept, m.down_intercept);
    let _ = writeln!(md, "\n### Calibration (test, by decile of predicted probability)\n");
    let _ = writeln!(md, "| decile | rows | mean predicted | observed up |\n|---:|---:|---:|---:|");
    for (i, d) in m.calibration.iter().enumerate() {
        let _ = writeln!(md, "| {} | {} | {:.4} | {:.4} |", i + 1, d.rows, d.mean_predicted, d.observed_up);
    }
    let c = &m.confusion;
    let _ = writeln!(md, "\n### Confusion matrix (test, predicted up when P(up) > 0.5)\n");
    let _ = writeln!(md, "| | was up | was not up |\n|---|---:|---:|");
    let _ = writeln!(md, "| predicted up | {} | {} |", c.predicted_up_was_up, c.predicted_up_was_not);
    let _ = writeln!(md, "| predicted not up | {} | {} |", c.predicted_not_was_up, c.predicted_not_was_not);

    strategies(&mut md, report);
    per_market(&mut md, &report.strategy);

    md
}

fn strategies(md: &mut String, report: &Report) {
    let strategy = &report.strategy;
    let test = backtest_of(strategy, "test");
    let _ = writeln!(md, "\n## Strategies (test period, reported once)\n");
    if let Some(conventions) = strategy.get("conventions").and_then(|c| c.as_object()) {
        for (name, text) in conventions {
            let _ = writeln!(md, "- **{}:** {}.", name.replace('_', " "), text.as_str().unwrap_or(""));
        }
    }
    let threshold = strategy.get("threshold").and_then(|t| t.as_f64()).unwrap_or(f64::NAN);
    let chosen = strategy.get("threshold_chosen").and_then(|t| t.as_str()).unwrap_or("");
    let _ = writeln!(md, "\nModel threshold: {threshold} ({chosen}).\n");
    let _ = writeln!(
        md,
        "| strategy | net PnL | gross PnL | fees | slippage | spread | Sharpe [95% CI] | max drawdown | hit rate | exposure | avg holding | trades |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    strategy_row(md, "model", test.as_ref());
    strategy_row(md, "momentum baseline", backtest_of(&report.baseline, "test").as_ref());
    strategy_row(md, "long every market, equal weight", backtest_of(strategy, "benchmark").as_ref());
    if let Some(t) = &test {
        let _ = writeln!(
            md,
            "\nCosts are summed over bars as a share of equity. Sharpe is annualised with {:.0} observed bars a year (bars of {}); its interval is Lo's (2002) for independent returns. The benchmark holds every market long at 1/N, rebalanced each bar (rebalancing is not charged).",
            t.bars_per_year,
            bar_length(t.bar_ms)
        );
    }
    let delays = (
        strategy.get("execution_delay").and_then(|v| v.as_u64()),
        strategy.get("model_execution_delay").and_then(|v| v.as_u64()),
    );
    if let (Some(trading), Some(model)) = delays
        && trading != model
    {
        let _ = writeln!(
            md,
            "\n**Note:** the model was trained for an execution delay of {model} ticks but the backtest trades with {trading}; give `model` and `backtest` the same `execution_delay`."
        );
    }
    let model_start = strategy.get("test_start_ts").and_then(|v| v.as_i64());
    let baseline_start = report.baseline.get("test_start_ts").and_then(|v| v.as_i64());
    if model_start.is_some() && model_start != baseline_start {
        let _ = writeln!(
            md,
            "\n**Note:** the baseline's test period does not start where the model's does; give `baseline` the same `train_fraction` and `validation_fraction` as `model` to compare them."
        );
    }
    if let Some(rows) = strategy.get("sensitivity").and_then(|s| s.as_array()) {
        let _ = writeln!(md, "\n### Sensitivity (validation period): net PnL by threshold and cost\n");
        let _ = writeln!(md, "| threshold | no costs | costs x1 | costs x2 | trades |\n|---:|---:|---:|---:|---:|");
        for row in rows {
            let get = |k: &str| row.get(k).and_then(|v| v.as_f64()).unwrap_or(f64::NAN);
            let mark = if get("threshold") == threshold { " (chosen)" } else { "" };
            let _ = writeln!(
                md,
                "| {}{mark} | {} | {} | {} | {} |",
                get("threshold"),
                pct(get("pnl_no_costs")),
                pct(get("pnl")),
                pct(get("pnl_double_costs")),
                get("trades")
            );
        }
    }
    let _ = writeln!(
        md,
        "\n![equity, drawdown and benchmark](equity.png)\n\n(The same chart as SVG: [equity.svg](equity.svg).)"
    );
}

fn per_market(md: &mut String, strategy: &serde_json::Value) {
    let Some(rows) = strategy.get("per_market").and_then(|s| s.as_array()) else { return };
    let _ = writeln!(md, "\n## Per market (test)\n");
    let _ = writeln!(
        md,
        "Each market's PnL is its own sleeve's, net of costs (its share of the portfolio is 1/N of it).\n"
    );
    let _ = writeln!(md, "| market | AUC (up) | net PnL (sleeve) | trades |\n|---|---:|---:|---:|");
    for row in rows {
        let f = |k: &str| row.get(k).and_then(|v| v.as_f64());
        let auc = f("auc").map_or("n/a".to_string(), |a| format!("{a:.4}"));
        let _ = writeln!(
            md,
            "| {} | {auc} | {} | {} |",
            row.get("market").and_then(|v| v.as_str()).unwrap_or("?"),
            pct(f("pnl").unwrap_or(f64::NAN)),
            row.get("trades").and_then(|v| v.as_u64()).unwrap_or(0)
        );
    }
}
