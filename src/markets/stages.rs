//! Each `markets.*` built-in: check its declared files, read, compute, write atomically.

use std::path::{Path, PathBuf};

use arrow_array::RecordBatch;
use rayon::prelude::*;

use super::backtest::{Backtest, Leg, simulate};
use super::features::{FEATURES, Series, compute_features, sign};
use super::model::{Metrics, Model, evaluate, split_cutoff, train};
use super::params::Params;
use super::synth::{Market, Ticks, generate_all_ticks, generate_markets};
use super::table::{self, batch, f64_col, f64s, i64_col, i64s, market_runs, str_col, strs};
use super::{StageError, ingest, report};
use crate::builtin::BuiltinContext;

/// Fails the stage when the build is being stopped; called between a stage's steps.
fn check_cancel(ctx: &BuiltinContext<'_>) -> Result<(), StageError> {
    if ctx.cancel.load(std::sync::atomic::Ordering::SeqCst) {
        return Err(StageError::msg("interrupted"));
    }
    Ok(())
}

/// The stage's declared inputs and outputs, checked against what this built-in needs.
fn files(
    ctx: &BuiltinContext<'_>,
    inputs: &[&str],
    outputs: &[&str],
) -> Result<(Vec<PathBuf>, Vec<PathBuf>), StageError> {
    let describe = |names: &[&str]| if names.is_empty() { "none".to_string() } else { names.join(", ") };
    if ctx.inputs.len() < inputs.len() || ctx.outputs.len() != outputs.len() {
        return Err(StageError::msg(format!(
            "stage `{}` needs inputs [{}] and outputs [{}] in this order; pipeline.toml declares {} input(s) and {} output(s)",
            ctx.stage,
            describe(inputs),
            describe(outputs),
            ctx.inputs.len(),
            ctx.outputs.len()
        )));
    }
    Ok((ctx.inputs.clone(), ctx.outputs.clone()))
}

/// The CSV named by param `source`, which must also be a declared input so that editing it
/// re-runs the stage.
fn source(ctx: &BuiltinContext<'_>, params: &Params<'_>) -> Result<Option<PathBuf>, StageError> {
    let Some(source) = params.str_opt("source")? else { return Ok(None) };
    let path = ctx.root.join(source);
    if !ctx.inputs.contains(&path) {
        return Err(StageError::msg(format!(
            "param `source = \"{source}\"` of stage `{}` is not among its inputs; add it to `inputs` so that changes to it re-run the stage",
            ctx.stage
        )));
    }
    Ok(Some(path))
}

fn log(ctx: &mut BuiltinContext<'_>, line: impl AsRef<str>) {
    let _ = writeln!(ctx.log, "{}", line.as_ref());
}

pub fn markets(ctx: &mut BuiltinContext<'_>) -> Result<(), StageError> {
    let params = Params::new(ctx.stage, ctx.params);
    let (_, outputs) = files(ctx, &[], &["markets table"])?;
    let markets = match source(ctx, &params)? {
        Some(export) => ingest::read_markets_export(&export)?,
        None => generate_markets(params.u64_or("seed", 42)?, params.u64_or("n_markets", 12)? as usize),
    };
    if markets.is_empty() {
        return Err(StageError::msg("no markets: set `n_markets` above 0 or give a `source` with rows"));
    }
    log(ctx, format!("{} markets", markets.len()));
    table::write_batch(&outputs[0], &markets_batch(&markets))
}

fn markets_batch(markets: &[Market]) -> RecordBatch {
    let text = |f: fn(&Market) -> &str| str_col(&markets.iter().map(f).collect::<Vec<_>>());
    batch(vec![
        ("market_id", text(|m| &m.id)),
        ("venue", text(|m| &m.venue)),
        ("instrument", text(|m| &m.instrument)),
        ("category", text(|m| &m.category)),
        ("listed_at", i64_col(markets.iter().map(|m| m.listed_at).collect())),
        ("tick_size", f64_col(markets.iter().map(|m| m.tick_size).collect())),
        ("fee_bps", f64_col(markets.iter().map(|m| m.fee_bps).collect())),
    ])
}

fn read_markets(path: &Path) -> Result<Vec<Market>, StageError> {
    let b = table::read_batch(path)?;
    let (ids, venues, instruments, categories) = (
        strs(&b, "market_id", path)?,
        strs(&b, "venue", path)?,
        strs(&b, "instrument", path)?,
        strs(&b, "category", path)?,
    );
    let (listed, tick, fee) = (i64s(&b, "listed_at", path)?, f64s(&b, "tick_size", path)?, f64s(&b, "fee_bps", path)?);
    Ok((0..b.num_rows())
        .map(|i| Market {
            id: ids.value(i).to_string(),
            venue: venues.value(i).to_string(),
            instrument: instruments.value(i).to_string(),
            category: categories.value(i).to_string(),
            listed_at: listed[i],
            tick_size: tick[i],
            fee_bps: fee[i],
        })
        .collect())
}

pub fn ticks(ctx: &mut BuiltinContext<'_>) -> Result<(), StageError> {
    let params = Params::new(ctx.stage, ctx.params);
    let (inputs, outputs) = files(ctx, &["markets table"], &["ticks table"])?;
    let markets = read_markets(&inputs[0])?;
    let series = match source(ctx, &params)? {
        Some(export) => {
            let (series, dropped) = ingest::read_ticks_export(&export, &markets)?;
            if dropped > 0 {
                log(ctx, format!("dropped {dropped} rows that repeated a market's time (kept the first of each)"));
            }
            series
        }
        None => generate_all_ticks(
            params.u64_or("seed", 42)?,
            &markets,
            params.u64_or("ticks_per_market", 20_000)? as usize,
        ),
    };
    check_cancel(ctx)?;
    let rows: usize = series.iter().map(|t| t.ts.len()).sum();
    let mut ids = Vec::with_capacity(rows);
    let mut all = Ticks::default();
    // `series[i]` belongs to `markets[i]`, however the markets are ordered.
    for (market, t) in markets.iter().zip(&series) {
        ids.extend(std::iter::repeat_n(market.id.as_str(), t.ts.len()));
        all.ts.extend(&t.ts);
        all.price.extend(&t.price);
        all.volume.extend(&t.volume);
        all.bid.extend(&t.bid);
        all.ask.extend(&t.ask);
    }
    log(ctx, format!("{rows} ticks over {} markets", markets.len()));
    let b = batch(vec![
        ("market_id", str_col(&ids)),
        ("ts", i64_col(all.ts)),
        ("price", f64_col(all.price)),
        ("volume", f64_col(all.volume)),
        ("bid", f64_col(all.bid)),
        ("ask", f64_col(all.ask)),
    ]);
    table::write_batch(&outputs[0], &b)
}

/// The ticks table, read and checked.
struct TickTable {
    batch: RecordBatch,
    path: PathBuf,
}

impl TickTable {
    fn read(path: &Path) -> Result<TickTable, StageError> {
        Ok(TickTable { batch: table::read_batch(path)?, path: path.to_path_buf() })
    }
    fn ids(&self) -> Result<&arrow_array::StringArray, StageError> {
        strs(&self.batch, "market_id", &self.path)
    }
    fn ts(&self) -> Result<&[i64], StageError> {
        i64s(&self.batch, "ts", &self.path)
    }
    fn f(&self, name: &str) -> Result<&[f64], StageError> {
        f64s(&self.batch, name, &self.path)
    }
}

pub fn features(ctx: &mut BuiltinContext<'_>) -> Result<(), StageError> {
    let (inputs, outputs) = files(ctx, &["ticks table"], &["features table"])?;
    let ticks = TickTable::read(&inputs[0])?;
    check_cancel(ctx)?;
    let (ids, ts, price, volume, bid, ask) =
        (ticks.ids()?, ticks.ts()?, ticks.f("price")?, ticks.f("volume")?, ticks.f("bid")?, ticks.f("ask")?);
    let runs = market_runs(ids);
    // Markets in parallel; each market's columns come back in order.
    let per_market: Vec<[Vec<f64>; FEATURES.len()]> = runs
        .par_iter()
        .map(|r| {
            let r = r.clone();
            compute_features(&Series {
                ts: &ts[r.clone()],
                price: &price[r.clone()],
                volume: &volume[r.clone()],
                bid: &bid[r.clone()],
                ask: &ask[r],
            })
        })
        .collect();
    let mut columns: Vec<(&str, arrow_array::ArrayRef)> =
        vec![("market_id", ticks.batch.column_by_name("market_id").unwrap().clone()), ("ts", i64_col(ts.to_vec()))];
    for (f, name) in FEATURES.iter().enumerate() {
        let values: Vec<f64> = per_market.iter().flat_map(|m| m[f].iter().copied()).collect();
        columns.push((name, f64_col(values)));
    }
    log(ctx, format!("{} rows x {} features over {} markets", ts.len(), FEATURES.len(), runs.len()));
    table::write_batch(&outputs[0], &batch(columns))
}

/// The feature rows as fixed-width arrays, with the simple return to each market's next tick.
struct Rows {
    ids: arrow_array::StringArray,
    ts: Vec<i64>,
    x: Vec<[f64; FEATURES.len()]>,
    next_return: Vec<f64>,
    /// Time of the same market's next tick (`i64::MAX` at its last).
    next_ts: Vec<i64>,
}

fn load_rows(features_path: &Path, ticks_path: &Path) -> Result<Rows, StageError> {
    let features = table::read_batch(features_path)?;
    let ticks = TickTable::read(ticks_path)?;
    let (ts, price) = (ticks.ts()?, ticks.f("price")?);
    let feature_ts = i64s(&features, "ts", features_path)?;
    if feature_ts != ts {
        return Err(StageError::msg(format!(
            "{} and {} do not describe the same ticks; rebuild features (dagrun invalidate features)",
            features_path.display(),
            ticks_path.display()
        )));
    }
    let columns: Vec<&[f64]> = FEATURES.iter().map(|f| f64s(&features, f, features_path)).collect::<Result<_, _>>()?;
    let x = (0..ts.len()).map(|i| std::array::from_fn(|f| columns[f][i])).collect();
    let ids = ticks.ids()?.clone();
    let mut next_return = vec![f64::NAN; ts.len()];
    let mut next_ts = vec![i64::MAX; ts.len()];
    for run in market_runs(&ids) {
        for i in run.start..run.end - 1 {
            next_return[i] = price[i + 1] / price[i] - 1.0;
            next_ts[i] = ts[i + 1];
        }
    }
    Ok(Rows { ids, ts: ts.to_vec(), x, next_return, next_ts })
}

pub fn model(ctx: &mut BuiltinContext<'_>) -> Result<(), StageError> {
    let params = Params::new(ctx.stage, ctx.params);
    let train_fraction = params.fraction_or("train_fraction", 0.7)?;
    let max_iterations = params.u64_or("max_iterations", 100)?;
    let max_train_rows = params.u64_or("max_train_rows", 1_000_000)?.max(1) as usize;
    let (inputs, outputs) = files(ctx, &["features table", "ticks table"], &["model (json)", "metrics (json)"])?;
    let rows = load_rows(&inputs[0], &inputs[1])?;
    check_cancel(ctx)?;
    let cutoff = split_cutoff(&rows.ts, train_fraction);
    let usable = |i: usize| {
        rows.next_return[i].is_finite() && rows.next_return[i] != 0.0 && rows.x[i].iter().all(|v| v.is_finite())
    };
    // A training row's label is the move to the next tick: that tick must be before the
    // cutoff too, or the label would carry test-period information.
    let train_idx: Vec<usize> = (0..rows.ts.len()).filter(|&i| rows.next_ts[i] < cutoff && usable(i)).collect();
    let test_idx: Vec<usize> = (0..rows.ts.len()).filter(|&i| rows.ts[i] >= cutoff && usable(i)).collect();
    // A deterministic stride keeps training time bounded on large inputs.
    let stride = train_idx.len().div_ceil(max_train_rows).max(1);
    let sample: Vec<usize> = train_idx.iter().copied().step_by(stride).collect();
    let x: Vec<[f64; FEATURES.len()]> = sample.iter().map(|&i| rows.x[i]).collect();
    let up: Vec<bool> = sample.iter().map(|&i| rows.next_return[i] > 0.0).collect();
    log(
        ctx,
        format!("training on {} of {} rows before the cutoff, testing on {}", x.len(), train_idx.len(), test_idx.len()),
    );
    check_cancel(ctx)?;
    let model = train(&x, &up, max_iterations, cutoff)?;
    check_cancel(ctx)?;
    let probabilities: Vec<f64> = test_idx.iter().map(|&i| model.probability(&rows.x[i])).collect();
    let test_up: Vec<bool> = test_idx.iter().map(|&i| rows.next_return[i] > 0.0).collect();
    let (accuracy, log_loss, auc) = evaluate(&probabilities, &test_up);
    let metrics = Metrics {
        accuracy,
        log_loss,
        auc,
        base_rate: test_up.iter().filter(|&&u| u).count() as f64 / test_up.len().max(1) as f64,
        train_rows: x.len(),
        test_rows: test_idx.len(),
        markets: market_runs(&rows.ids).len(),
        ticks: rows.ts.len(),
        cutoff_ts: cutoff,
        train_fraction,
        max_iterations,
    };
    log(ctx, format!("held out: accuracy {accuracy:.4}, log loss {log_loss:.4}, AUC {auc:.4}"));
    ctx.metrics.extend([
        ("accuracy".to_string(), accuracy),
        ("auc".to_string(), auc),
        ("log_loss".to_string(), log_loss),
    ]);
    table::write_json(&outputs[0], &model)?;
    table::write_json(&outputs[1], &metrics)
}

pub fn inference(ctx: &mut BuiltinContext<'_>) -> Result<(), StageError> {
    let (inputs, outputs) = files(ctx, &["model (json)", "features table"], &["predictions table"])?;
    let model: Model = table::read_json(&inputs[0])?;
    let features = table::read_batch(&inputs[1])?;
    let path = &inputs[1];
    let (ids, ts) = (strs(&features, "market_id", path)?, i64s(&features, "ts", path)?);
    let columns: Vec<&[f64]> = model.features.iter().map(|f| f64s(&features, f, path)).collect::<Result<_, _>>()?;
    let keep: Vec<usize> =
        (0..ts.len()).filter(|&i| ts[i] >= model.cutoff_ts && columns.iter().all(|c| c[i].is_finite())).collect();
    let probabilities: Vec<f64> = keep
        .par_iter()
        .map(|&i| {
            let x: Vec<f64> = columns.iter().map(|c| c[i]).collect();
            model.probability(&x)
        })
        .collect();
    log(ctx, format!("{} predictions from {}", keep.len(), model.cutoff_ts));
    let b = batch(vec![
        ("market_id", str_col(&keep.iter().map(|&i| ids.value(i)).collect::<Vec<_>>())),
        ("ts", i64_col(keep.iter().map(|&i| ts[i]).collect())),
        ("prob_up", f64_col(probabilities)),
    ]);
    table::write_batch(&outputs[0], &b)
}

/// A market's positions: (ts, position) in time order.
type Positions<'a> = (&'a str, Vec<(i64, f64)>);

/// Groups per-row positions by market (every table here is sorted by market, then time).
fn positions_by_market<'a>(
    ids: &'a arrow_array::StringArray,
    position: impl Fn(usize) -> Option<(i64, f64)>,
) -> Vec<Positions<'a>> {
    market_runs(ids).into_iter().map(|run| (ids.value(run.start), run.filter_map(&position).collect())).collect()
}

/// Legs with returns and costs from ticks and markets.
fn legs(
    positions: &[Positions<'_>],
    ticks: &TickTable,
    markets: &[Market],
    slippage_bps: f64,
) -> Result<Vec<Leg>, StageError> {
    let (ids, ts, price, bid, ask) = (ticks.ids()?, ticks.ts()?, ticks.f("price")?, ticks.f("bid")?, ticks.f("ask")?);
    let runs: std::collections::HashMap<&str, std::ops::Range<usize>> =
        market_runs(ids).into_iter().map(|r| (ids.value(r.start), r)).collect();
    let mut legs = Vec::with_capacity(positions.len());
    for (id, rows) in positions {
        let Some(run) = runs.get(id) else { continue };
        let fee = markets.iter().find(|m| m.id == *id).map_or(0.0, |m| m.fee_bps);
        let (mts, mprice, mbid, mask) = (&ts[run.clone()], &price[run.clone()], &bid[run.clone()], &ask[run.clone()]);
        let mut leg = Leg { ts: Vec::new(), positions: Vec::new(), returns: Vec::new(), costs_bps: Vec::new() };
        for &(t, position) in rows {
            let Ok(i) = mts.binary_search(&t) else { continue };
            if i + 1 < mts.len() {
                // Trading crosses half the quoted spread, on top of fees and slippage.
                let mid = (mbid[i] + mask[i]) / 2.0;
                let half_spread_bps = if mid > 0.0 { (mask[i] - mbid[i]) / mid / 2.0 * 1e4 } else { 0.0 };
                leg.ts.push(t);
                leg.positions.push(position);
                leg.returns.push(mprice[i + 1] / mprice[i] - 1.0);
                leg.costs_bps.push(fee + slippage_bps + half_spread_bps);
            }
        }
        legs.push(leg);
    }
    Ok(legs)
}

fn write_backtest(
    ctx: &mut BuiltinContext<'_>,
    outputs: &[PathBuf],
    result: &Backtest,
    params: serde_json::Value,
) -> Result<(), StageError> {
    ctx.metrics.extend([
        ("pnl".to_string(), result.pnl),
        ("sharpe".to_string(), result.sharpe),
        ("max_drawdown".to_string(), result.max_drawdown),
    ]);
    let mut json = serde_json::to_value(result).expect("backtest serialises");
    json["params"] = params;
    table::write_json(&outputs[0], &json)?;
    let b = batch(vec![
        ("ts", i64_col(result.equity.iter().map(|e| e.0).collect())),
        ("equity", f64_col(result.equity.iter().map(|e| e.1).collect())),
    ]);
    table::write_batch(&outputs[1], &b)
}

pub fn backtest(ctx: &mut BuiltinContext<'_>) -> Result<(), StageError> {
    let params = Params::new(ctx.stage, ctx.params);
    let threshold = params.f64_or("threshold", 0.01)?;
    let slippage_bps = params.f64_or("slippage_bps", 0.5)?;
    let (inputs, outputs) =
        files(ctx, &["predictions table", "ticks table", "markets table"], &["backtest (json)", "equity table"])?;
    let predictions = table::read_batch(&inputs[0])?;
    let (ids, ts, prob) = (
        strs(&predictions, "market_id", &inputs[0])?,
        i64s(&predictions, "ts", &inputs[0])?,
        f64s(&predictions, "prob_up", &inputs[0])?,
    );
    // Go long above 0.5 + threshold, short below 0.5 - threshold, and in between keep the
    // position held (hysteresis): flat-long-flat churn would pay the spread on every wobble.
    let rows: Vec<Positions<'_>> = market_runs(ids)
        .into_iter()
        .map(|run| {
            let id = ids.value(run.start);
            let mut held = 0.0;
            let positions = run
                .map(|i| {
                    if prob[i] > 0.5 + threshold {
                        held = 1.0;
                    } else if prob[i] < 0.5 - threshold {
                        held = -1.0;
                    }
                    (ts[i], held)
                })
                .collect();
            (id, positions)
        })
        .collect();
    let result = simulate(&legs(&rows, &TickTable::read(&inputs[1])?, &read_markets(&inputs[2])?, slippage_bps)?);
    log(ctx, format!("pnl {:.4}, sharpe {:.2}, max drawdown {:.4}", result.pnl, result.sharpe, result.max_drawdown));
    write_backtest(ctx, &outputs, &result, serde_json::json!({ "threshold": threshold, "slippage_bps": slippage_bps }))
}

/// A momentum baseline beside the model: hold the sign of the last 20-tick return, over the
/// same held-out period.
pub fn baseline(ctx: &mut BuiltinContext<'_>) -> Result<(), StageError> {
    let params = Params::new(ctx.stage, ctx.params);
    let train_fraction = params.fraction_or("train_fraction", 0.7)?;
    let slippage_bps = params.f64_or("slippage_bps", 0.5)?;
    let (inputs, outputs) =
        files(ctx, &["features table", "ticks table", "markets table"], &["baseline (json)", "baseline equity table"])?;
    let features = table::read_batch(&inputs[0])?;
    let (ids, ts, momentum) = (
        strs(&features, "market_id", &inputs[0])?,
        i64s(&features, "ts", &inputs[0])?,
        f64s(&features, "ret_20", &inputs[0])?,
    );
    let cutoff = split_cutoff(ts, train_fraction);
    let rows =
        positions_by_market(ids, |i| (ts[i] >= cutoff && momentum[i].is_finite()).then(|| (ts[i], sign(momentum[i]))));
    let result = simulate(&legs(&rows, &TickTable::read(&inputs[1])?, &read_markets(&inputs[2])?, slippage_bps)?);
    log(ctx, format!("momentum baseline: pnl {:.4}, sharpe {:.2}", result.pnl, result.sharpe));
    write_backtest(
        ctx,
        &outputs,
        &result,
        serde_json::json!({
            "strategy": "momentum (sign of 20-tick return)", "train_fraction": train_fraction,
            "slippage_bps": slippage_bps, "cutoff_ts": cutoff,
        }),
    )
}

pub fn publish(ctx: &mut BuiltinContext<'_>) -> Result<(), StageError> {
    let (inputs, outputs) = files(
        ctx,
        &["metrics (json)", "backtest (json)", "equity table", "baseline (json)", "baseline equity table"],
        &["report.json", "report.md", "equity.svg"],
    )?;
    let equity = |path: &Path| -> Result<Vec<(i64, f64)>, StageError> {
        let b = table::read_batch(path)?;
        Ok(i64s(&b, "ts", path)?.iter().copied().zip(f64s(&b, "equity", path)?.iter().copied()).collect())
    };
    let report = report::Report {
        model: table::read_json(&inputs[0])?,
        backtest: table::read_json(&inputs[1])?,
        baseline: table::read_json(&inputs[3])?,
    };
    let stages = report::stage_summaries(ctx.state_path);
    table::write_json(&outputs[0], &report)?;
    table::write_text(&outputs[1], &report::markdown(&report, &stages))?;
    table::write_text(&outputs[2], &report::equity_svg(&equity(&inputs[2])?, &equity(&inputs[4])?)?)?;
    log(ctx, format!("wrote {}", outputs.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")));
    Ok(())
}
