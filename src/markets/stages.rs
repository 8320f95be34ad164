//! Each `markets.*` built-in: check its declared files, read, compute, write atomically.

use std::path::{Path, PathBuf};

use arrow_array::RecordBatch;
use rayon::prelude::*;

use super::backtest::{Backtest, Execution, Leg, simulate};
use super::features::{FEATURES, Series, compute_features, sign};
use super::ingest::{self, time};
use super::model::{Coefficient, Metrics, Model, Scores, Split, auc, calibration, confusion, train};
use super::params::Params;
use super::synth::{Market, Ticks, generate_all_ticks, generate_markets};
use super::table::{self, batch, f64_col, f64s, i64_col, i64s, market_runs, str_col, strs};
use super::{StageError, report};
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

/// How to read an export: the `timezone` of times written without an offset, and the CSV
/// `separator` when it is not to be detected.
fn read_options(params: &Params<'_>) -> Result<ingest::Options, StageError> {
    let zone = params
        .str_opt("timezone")?
        .map(time::parse_zone)
        .transpose()
        .map_err(|e| StageError::msg(format!("param `timezone`: {e}")))?;
    let separator = match params.str_opt("separator")? {
        None => None,
        Some("\\t" | "tab") => Some(b'\t'),
        Some(s) if s.len() == 1 => Some(s.as_bytes()[0]),
        Some(other) => {
            return Err(StageError::msg(format!("param `separator = \"{other}\"` must be one character (or \"tab\")")));
        }
    };
    Ok(ingest::Options { zone, separator })
}

fn log(ctx: &mut BuiltinContext<'_>, line: impl AsRef<str>) {
    let _ = writeln!(ctx.log, "{}", line.as_ref());
}

pub fn markets(ctx: &mut BuiltinContext<'_>) -> Result<(), StageError> {
    let params = Params::new(ctx.stage, ctx.params);
    let (_, outputs) = files(ctx, &[], &["markets table"])?;
    let markets = match source(ctx, &params)? {
        Some(export) => ingest::read_markets(&export, read_options(&params)?)?,
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
            let read = ingest::read_ticks(&export, &markets, read_options(&params)?)?;
            log(
                ctx,
                format!(
                    "{} rows read; {} merged into an earlier row of the same market and time (last price and quote, summed volume); {} dropped for a crossed or missing quote",
                    read.rows, read.merged, read.bad_quotes
                ),
            );
            if let Some(unit) = read.ts_unit {
                log(ctx, format!("integer times read as {unit} since 1970"));
            }
            ctx.metrics.extend([
                ("rows_read".to_string(), read.rows as f64),
                ("rows_merged".to_string(), read.merged as f64),
                ("rows_bad_quote".to_string(), read.bad_quotes as f64),
            ]);
            read.ticks
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
    drop(series);
    log(ctx, format!("{rows} ticks over {} markets", markets.len()));
    ctx.metrics.insert("ticks".to_string(), rows as f64);
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

/// Columns of the ticks table, read and checked.
struct TickTable {
    batch: RecordBatch,
    path: PathBuf,
}

impl TickTable {
    fn read(path: &Path, columns: &[&str]) -> Result<TickTable, StageError> {
        Ok(TickTable { batch: table::read_columns(path, columns)?, path: path.to_path_buf() })
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
    let ticks = TickTable::read(&inputs[0], &["market_id", "ts", "price", "volume", "bid", "ask"])?;
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
    let mut columns: Vec<(&str, arrow_array::ArrayRef)> = vec![
        ("market_id", ticks.batch.column_by_name("market_id").expect("read above").clone()),
        ("ts", ticks.batch.column_by_name("ts").expect("read above").clone()),
    ];
    for (f, name) in FEATURES.iter().enumerate() {
        let values: Vec<f64> = per_market.iter().flat_map(|m| m[f].iter().copied()).collect();
        columns.push((name, f64_col(values)));
    }
    drop(per_market);
    log(ctx, format!("{} rows x {} features over {} markets", ts.len(), FEATURES.len(), runs.len()));
    table::write_batch(&outputs[0], &batch(columns))
}

/// Each tick's mid, and whether the same market's next mid is higher: the label. A mid that
/// does not move is "not up", and kept: dropping it would select rows on the future.
struct Labels {
    /// `None` at a market's last tick.
    up: Vec<Option<bool>>,
    /// Time of the same market's next tick (`i64::MAX` at its last).
    next_ts: Vec<i64>,
    flat: usize,
}

fn mids(bid: &[f64], ask: &[f64]) -> Vec<f64> {
    bid.iter().zip(ask).map(|(b, a)| (b + a) / 2.0).collect()
}

fn labels(ids: &arrow_array::StringArray, ts: &[i64], mid: &[f64]) -> Labels {
    let mut labels = Labels { up: vec![None; ts.len()], next_ts: vec![i64::MAX; ts.len()], flat: 0 };
    for run in market_runs(ids) {
        for i in run.start..run.end - 1 {
            labels.up[i] = Some(mid[i + 1] > mid[i]);
            labels.next_ts[i] = ts[i + 1];
            labels.flat += usize::from(mid[i + 1] == mid[i]);
        }
    }
    labels
}

/// The train / validation / test fractions of a stage's params.
fn split_params(params: &Params<'_>) -> Result<(f64, f64), StageError> {
    let train = params.fraction_or("train_fraction", 0.6)?;
    let validation = params.fraction_or("validation_fraction", 0.2)?;
    if train + validation >= 1.0 {
        return Err(StageError::msg(format!(
            "`train_fraction` ({train}) plus `validation_fraction` ({validation}) leave no test period; make their sum less than 1"
        )));
    }
    Ok((train, validation))
}

pub fn model(ctx: &mut BuiltinContext<'_>) -> Result<(), StageError> {
    let params = Params::new(ctx.stage, ctx.params);
    let (train_fraction, validation_fraction) = split_params(&params)?;
    let max_iterations = params.u64_or("max_iterations", 100)?;
    let max_train_rows = params.u64_or("max_train_rows", 1_000_000)?.max(1) as usize;
    let (inputs, outputs) = files(ctx, &["features table", "ticks table"], &["model (json)", "metrics (json)"])?;
    let features = table::read_batch(&inputs[0])?;
    let ticks = TickTable::read(&inputs[1], &["market_id", "ts", "bid", "ask"])?;
    let ts = ticks.ts()?;
    if i64s(&features, "ts", &inputs[0])? != ts {
        return Err(StageError::msg(format!(
            "{} and {} do not describe the same ticks; rebuild features (dagrun invalidate features)",
            inputs[0].display(),
            inputs[1].display()
        )));
    }
    let columns: Vec<&[f64]> = FEATURES.iter().map(|f| f64s(&features, f, &inputs[0])).collect::<Result<_, _>>()?;
    let row = |i: usize| -> [f64; FEATURES.len()] { std::array::from_fn(|f| columns[f][i]) };
    let ids = ticks.ids()?;
    let labels = labels(ids, ts, &mids(ticks.f("bid")?, ticks.f("ask")?));
    check_cancel(ctx)?;
    let split = Split::of(ts, train_fraction, validation_fraction);
    let usable = |i: usize| labels.up[i].is_some() && columns.iter().all(|c| c[i].is_finite());
    // A row's label is the move to its market's next tick: for a training row that tick
    // must be before the validation period too, or the label would carry its information.
    let rows_where =
        |keep: &dyn Fn(usize) -> bool| -> Vec<usize> { (0..ts.len()).filter(|&i| keep(i) && usable(i)).collect() };
    let train_idx = rows_where(&|i| labels.next_ts[i] < split.validation_start_ts);
    let validation_idx = rows_where(&|i| ts[i] >= split.validation_start_ts && labels.next_ts[i] < split.test_start_ts);
    let test_idx = rows_where(&|i| ts[i] >= split.test_start_ts);
    // A deterministic stride keeps training time bounded on large inputs.
    let stride = train_idx.len().div_ceil(max_train_rows).max(1);
    let sample: Vec<usize> = train_idx.iter().copied().step_by(stride).collect();
    let x: Vec<[f64; FEATURES.len()]> = sample.iter().map(|&i| row(i)).collect();
    let up_of = |idx: &[usize]| -> Vec<bool> { idx.iter().map(|&i| labels.up[i] == Some(true)).collect() };
    log(
        ctx,
        format!(
            "training on {} of {} rows, validating on {}, testing on {}",
            x.len(),
            train_idx.len(),
            validation_idx.len(),
            test_idx.len()
        ),
    );
    check_cancel(ctx)?;
    let model = train(&x, &up_of(&sample), max_iterations, split)?;
    check_cancel(ctx)?;
    let predict = |idx: &[usize]| -> Vec<f64> { idx.par_iter().map(|&i| model.probability(&row(i))).collect() };
    let test_p = predict(&test_idx);
    let test_up = up_of(&test_idx);
    let test = Scores::of(&test_p, &test_up);
    let labelled = labels.up.iter().filter(|u| u.is_some()).count();
    let metrics = Metrics {
        label: "the market's next mid is above this tick's mid (a mid that does not move is \"not up\")".into(),
        in_sample: Scores::of(&predict(&sample), &up_of(&sample)),
        validation: Scores::of(&predict(&validation_idx), &up_of(&validation_idx)),
        test,
        coefficients: FEATURES
            .iter()
            .zip(&model.coef)
            .map(|(f, c)| Coefficient { feature: f.to_string(), coef: *c })
            .collect(),
        intercept: model.intercept,
        calibration: calibration(&test_p, &test_up),
        confusion: confusion(&test_p, &test_up),
        split,
        markets: market_runs(ids).len(),
        ticks: ts.len(),
        train_rows_available: train_idx.len(),
        flat_next_move_share: labels.flat as f64 / labelled.max(1) as f64,
        max_iterations,
    };
    log(ctx, format!("test: accuracy {:.4}, log loss {:.4}, AUC {:.4}", test.accuracy, test.log_loss, test.auc));
    ctx.metrics.extend([
        ("accuracy".to_string(), test.accuracy),
        ("auc".to_string(), test.auc),
        ("log_loss".to_string(), test.log_loss),
        ("validation_auc".to_string(), metrics.validation.auc),
    ]);
    table::write_json(&outputs[0], &model)?;
    table::write_json(&outputs[1], &metrics)
}

pub fn inference(ctx: &mut BuiltinContext<'_>) -> Result<(), StageError> {
    let (inputs, outputs) = files(ctx, &["model (json)", "features table"], &["predictions table"])?;
    let model: Model = table::read_json(&inputs[0])?;
    let path = &inputs[1];
    let mut wanted = vec!["market_id", "ts"];
    wanted.extend(model.features.iter().map(String::as_str));
    let features = table::read_columns(path, &wanted)?;
    let (ids, ts) = (strs(&features, "market_id", path)?, i64s(&features, "ts", path)?);
    let columns: Vec<&[f64]> = model.features.iter().map(|f| f64s(&features, f, path)).collect::<Result<_, _>>()?;
    let start = model.split.validation_start_ts;
    let keep: Vec<usize> =
        (0..ts.len()).filter(|&i| ts[i] >= start && columns.iter().all(|c| c[i].is_finite())).collect();
    let probabilities: Vec<f64> = keep
        .par_iter()
        .map(|&i| {
            let x: Vec<f64> = columns.iter().map(|c| c[i]).collect();
            model.probability(&x)
        })
        .collect();
    let test_start = model.split.test_start_ts;
    let period: Vec<&str> = keep.iter().map(|&i| if ts[i] >= test_start { "test" } else { "validation" }).collect();
    log(ctx, format!("{} predictions over the validation and test periods, from {start}", keep.len()));
    let b = batch(vec![
        ("market_id", str_col(&keep.iter().map(|&i| ids.value(i)).collect::<Vec<_>>())),
        ("ts", i64_col(keep.iter().map(|&i| ts[i]).collect())),
        ("period", str_col(&period)),
        ("prob_up", f64_col(probabilities)),
    ]);
    table::write_batch(&outputs[0], &b)
}

/// Quotes by market: what legs are built from.
struct Quotes {
    table: TickTable,
    runs: Vec<(String, std::ops::Range<usize>)>,
    mid: Vec<f64>,
}

impl Quotes {
    fn read(path: &Path) -> Result<Quotes, StageError> {
        let table = TickTable::read(path, &["market_id", "ts", "bid", "ask"])?;
        let ids = table.ids()?;
        let runs = market_runs(ids).into_iter().map(|r| (ids.value(r.start).to_string(), r)).collect();
        let mid = mids(table.f("bid")?, table.f("ask")?);
        Ok(Quotes { table, runs, mid })
    }

    /// One leg per market in `markets` (empty where it has no tick in `period`), the
    /// target at each tick coming from `target(market index, tick row, tick time, held)`.
    fn legs(
        &self,
        markets: &[Market],
        period: std::ops::Range<i64>,
        mut target: impl FnMut(usize, usize, i64, f64) -> f64,
    ) -> Result<Vec<Leg>, StageError> {
        let (ts, bid, ask) = (self.table.ts()?, self.table.f("bid")?, self.table.f("ask")?);
        let legs = markets
            .iter()
            .enumerate()
            .map(|(m, market)| {
                let mut leg = Leg { fee_bps: market.fee_bps, ..Leg::default() };
                let Some((_, run)) = self.runs.iter().find(|(id, _)| *id == market.id) else { return leg };
                let mut held = 0.0;
                for i in run.clone().filter(|&i| period.contains(&ts[i])) {
                    held = target(m, i, ts[i], held);
                    leg.ts.push(ts[i]);
                    leg.mid.push(self.mid[i]);
                    leg.target.push(held);
                    leg.half_spread_bps.push((ask[i] - bid[i]) / self.mid[i] / 2.0 * 1e4);
                }
                leg
            })
            .collect();
        Ok(legs)
    }
}

/// The model's position given the probability of an up move: long above 0.5 + `enter`,
/// short below 0.5 − `enter`, flat within `exit` of 0.5, and in between the position held
/// (hysteresis: flat-long-flat churn would pay the spread on every wobble).
fn decide(held: f64, prob: Option<f64>, enter: f64, exit: f64) -> f64 {
    let Some(p) = prob else { return held };
    let edge = p - 0.5;
    if edge > enter {
        1.0
    } else if edge < -enter {
        -1.0
    } else if edge.abs() < exit {
        0.0
    } else {
        held
    }
}

/// One row of the sensitivity table: validation net PnL at 0×, 1× and 2× the costs.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Sensitivity {
    pub threshold: f64,
    pub pnl_no_costs: f64,
    pub pnl: f64,
    pub pnl_double_costs: f64,
    pub trades: usize,
}

/// One market's test results.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct MarketResult {
    pub market: String,
    pub auc: f64,
    pub pnl: f64,
    pub trades: usize,
}

/// The execution params every strategy stage shares.
fn execution(params: &Params<'_>) -> Result<Execution, StageError> {
    Ok(Execution {
        delay: params.u64_or("execution_delay", 1)? as usize,
        slippage_bps: params.f64_or("slippage_bps", 0.5)?,
        cost_scale: 1.0,
    })
}

fn conventions(exec: &Execution) -> serde_json::Value {
    serde_json::json!({
        "marking": "positions are marked at the mid; each market holds 1/N of the equity, rebalanced every bar",
        "fills": format!("a change of position trades at the bid or ask (the mid plus half the quoted spread), plus the market's fee and {} bp of slippage", exec.slippage_bps),
        "execution_delay": format!("a position decided at a tick is traded at the market's tick {} later", exec.delay),
        "close_out": "every open position is closed at the period's last tick, and pays for it",
        "annualisation": "Sharpe is annualised by the bars observed per year of the period (bars with at least one tick)",
    })
}

/// Writes a strategy's JSON and its equity table (ts, equity, drawdown[, benchmark]).
fn write_strategy(
    outputs: &[PathBuf],
    json: &serde_json::Value,
    result: &Backtest,
    benchmark: Option<&Backtest>,
) -> Result<(), StageError> {
    table::write_json(&outputs[0], json)?;
    let mut peak = f64::MIN;
    let drawdown: Vec<f64> = result
        .equity
        .iter()
        .map(|e| {
            peak = peak.max(e.1);
            e.1 / peak - 1.0
        })
        .collect();
    let mut columns = vec![
        ("ts", i64_col(result.equity.iter().map(|e| e.0).collect())),
        ("equity", f64_col(result.equity.iter().map(|e| e.1).collect())),
        ("drawdown", f64_col(drawdown)),
    ];
    if let Some(bench) = benchmark {
        let by_ts: std::collections::HashMap<i64, f64> = bench.equity.iter().copied().collect();
        let mut last = 1.0;
        let values = result
            .equity
            .iter()
            .map(|e| {
                last = by_ts.get(&e.0).copied().unwrap_or(last);
                last
            })
            .collect();
        columns.push(("benchmark", f64_col(values)));
    }
    table::write_batch(&outputs[1], &batch(columns))
}

fn record_strategy(ctx: &mut BuiltinContext<'_>, result: &Backtest) {
    ctx.metrics.extend([
        ("pnl".to_string(), result.pnl),
        ("gross_pnl".to_string(), result.gross_pnl),
        ("sharpe".to_string(), result.sharpe),
        ("max_drawdown".to_string(), result.max_drawdown),
    ]);
}

/// Thresholds tried on the validation period when `threshold = "tune"`: from trading every
/// signal to trading only the most confident ones.
const THRESHOLD_GRID: [f64; 9] = [0.0, 0.02, 0.04, 0.06, 0.08, 0.1, 0.13, 0.16, 0.2];

pub fn backtest(ctx: &mut BuiltinContext<'_>) -> Result<(), StageError> {
    let params = Params::new(ctx.stage, ctx.params);
    let fixed = params.f64_or_tune("threshold", None)?;
    let grid = params.f64_list_or("threshold_grid", &THRESHOLD_GRID)?;
    let exit_fraction = params.f64_or("exit_fraction", 0.5)?;
    let exec = execution(&params)?;
    let (inputs, outputs) =
        files(ctx, &["predictions table", "ticks table", "markets table"], &["backtest (json)", "equity table"])?;
    let predictions = table::read_batch(&inputs[0])?;
    let (pids, pts, period, prob) = (
        strs(&predictions, "market_id", &inputs[0])?,
        i64s(&predictions, "ts", &inputs[0])?,
        strs(&predictions, "period", &inputs[0])?,
        f64s(&predictions, "prob_up", &inputs[0])?,
    );
    let markets = read_markets(&inputs[2])?;
    let quotes = Quotes::read(&inputs[1])?;
    let test_start = (0..pts.len()).filter(|&i| period.value(i) == "test").map(|i| pts[i]).min().unwrap_or(i64::MAX);
    let validation_start = pts.iter().copied().min().unwrap_or(i64::MAX);
    // Each market's predictions by time, to look up at its ticks.
    let mut by_market: Vec<std::collections::HashMap<i64, f64>> = vec![Default::default(); markets.len()];
    for run in market_runs(pids) {
        if let Ok(m) = markets.binary_search_by(|mk| mk.id.as_str().cmp(pids.value(run.start))) {
            by_market[m] = run.map(|i| (pts[i], prob[i])).collect();
        }
    }
    let run = |threshold: f64, range: std::ops::Range<i64>, exec: &Execution| -> Result<Backtest, StageError> {
        let legs = quotes.legs(&markets, range, |m, _, t, held| {
            decide(held, by_market[m].get(&t).copied(), threshold, threshold * exit_fraction)
        })?;
        Ok(simulate(&legs, exec))
    };
    let validation = validation_start..test_start;
    let mut sensitivity = Vec::with_capacity(grid.len());
    for &threshold in &grid {
        check_cancel(ctx)?;
        let at = |scale: f64| run(threshold, validation.clone(), &Execution { cost_scale: scale, ..exec });
        let real = at(1.0)?;
        sensitivity.push(Sensitivity {
            threshold,
            pnl_no_costs: at(0.0)?.pnl,
            pnl: real.pnl,
            pnl_double_costs: at(2.0)?.pnl,
            trades: real.trades,
        });
    }
    // Tuned on validation only: the best net PnL, the larger threshold on a tie.
    let tuned = sensitivity.iter().fold(None::<&Sensitivity>, |best, s| match best {
        Some(b) if b.pnl > s.pnl => Some(b),
        _ => Some(s),
    });
    let threshold = fixed.unwrap_or_else(|| tuned.map_or(0.0, |s| s.threshold));
    let on_validation = run(threshold, validation.clone(), &exec)?;
    // The test period, once.
    let test = run(threshold, test_start..i64::MAX, &exec)?;
    let hold = quotes.legs(&markets, test_start..i64::MAX, |_, _, _, _| 1.0)?;
    let benchmark = simulate(&hold, &exec);
    let per_market = per_market_results(&markets, &quotes, &by_market, test_start, &test);
    log(
        ctx,
        format!(
            "threshold {threshold} ({}); test: pnl {:.4}, sharpe {:.2}, max drawdown {:.4}",
            if fixed.is_some() { "fixed" } else { "tuned on validation" },
            test.pnl,
            test.sharpe,
            test.max_drawdown
        ),
    );
    record_strategy(ctx, &test);
    let json = serde_json::json!({
        "strategy": "logistic model: long above 0.5 + threshold, short below 0.5 - threshold, flat within exit_fraction x threshold of 0.5",
        "threshold": threshold,
        "threshold_chosen": if fixed.is_some() { "fixed by the `threshold` param" } else { "tuned on the validation period by net PnL" },
        "exit_fraction": exit_fraction,
        "conventions": conventions(&exec),
        "execution_delay": exec.delay,
        "slippage_bps": exec.slippage_bps,
        "validation_start_ts": validation_start,
        "test_start_ts": test_start,
        "test": test,
        "validation": on_validation,
        "benchmark": benchmark,
        "sensitivity": sensitivity,
        "per_market": per_market,
    });
    write_strategy(&outputs, &json, &test, Some(&benchmark))
}

/// Each market's test AUC (its predictions against its next mid moves), PnL and trades.
fn per_market_results(
    markets: &[Market],
    quotes: &Quotes,
    predictions: &[std::collections::HashMap<i64, f64>],
    test_start: i64,
    test: &Backtest,
) -> Vec<MarketResult> {
    let ts = quotes.table.ts().unwrap_or(&[]);
    markets
        .iter()
        .enumerate()
        .map(|(m, market)| {
            let (mut p, mut up) = (Vec::new(), Vec::new());
            if let Some((_, run)) = quotes.runs.iter().find(|(id, _)| *id == market.id) {
                // Each tick with a test prediction and a next tick to score it against.
                let scored = (run.start..run.end.saturating_sub(1)).filter(|&i| ts[i] >= test_start);
                for (i, prob) in scored.filter_map(|i| Some((i, *predictions[m].get(&ts[i])?))) {
                    p.push(prob);
                    up.push(quotes.mid[i + 1] > quotes.mid[i]);
                }
            }
            let leg = test.per_leg.get(m).cloned().unwrap_or_default();
            MarketResult { market: market.id.clone(), auc: auc(&p, &up), pnl: leg.pnl, trades: leg.trades }
        })
        .collect()
}

/// A momentum baseline beside the model: hold the sign of the last 20-tick return, over the
/// same test period, executed and charged the same way.
pub fn baseline(ctx: &mut BuiltinContext<'_>) -> Result<(), StageError> {
    let params = Params::new(ctx.stage, ctx.params);
    let (train_fraction, validation_fraction) = split_params(&params)?;
    let exec = execution(&params)?;
    let (inputs, outputs) =
        files(ctx, &["features table", "ticks table", "markets table"], &["baseline (json)", "baseline equity table"])?;
    let features = table::read_columns(&inputs[0], &["ts", "ret_20"])?;
    let (ts, momentum) = (i64s(&features, "ts", &inputs[0])?, f64s(&features, "ret_20", &inputs[0])?);
    let split = Split::of(ts, train_fraction, validation_fraction);
    let quotes = Quotes::read(&inputs[1])?;
    if quotes.table.ts()? != ts {
        return Err(StageError::msg(format!(
            "{} and {} do not describe the same ticks; rebuild features (dagrun invalidate features)",
            inputs[0].display(),
            inputs[1].display()
        )));
    }
    let markets = read_markets(&inputs[2])?;
    let legs = quotes.legs(&markets, split.test_start_ts..i64::MAX, |_, i, _, held| {
        if momentum[i].is_finite() { sign(momentum[i]) } else { held }
    })?;
    let result = simulate(&legs, &exec);
    log(ctx, format!("momentum baseline: pnl {:.4}, sharpe {:.2}", result.pnl, result.sharpe));
    record_strategy(ctx, &result);
    let json = serde_json::json!({
        "strategy": "momentum: hold the sign of the last 20-tick return",
        "conventions": conventions(&exec),
        "execution_delay": exec.delay,
        "slippage_bps": exec.slippage_bps,
        "split": split,
        "test_start_ts": split.test_start_ts,
        "test": result,
    });
    write_strategy(&outputs, &json, &result, None)
}

pub fn publish(ctx: &mut BuiltinContext<'_>) -> Result<(), StageError> {
    let (inputs, outputs) = files(
        ctx,
        &["metrics (json)", "backtest (json)", "equity table", "baseline (json)", "baseline equity table"],
        &["report.json", "report.md", "equity.svg", "equity.png"],
    )?;
    let curve = |path: &Path| -> Result<report::Curve, StageError> {
        let b = table::read_batch(path)?;
        let column = |name: &str| -> Result<Vec<f64>, StageError> {
            Ok(if b.column_by_name(name).is_some() { f64s(&b, name, path)?.to_vec() } else { Vec::new() })
        };
        Ok(report::Curve {
            ts: i64s(&b, "ts", path)?.to_vec(),
            equity: column("equity")?,
            drawdown: column("drawdown")?,
            benchmark: column("benchmark")?,
        })
    };
    let report = report::Report::new(
        report::DataSource::from_upstream(ctx.upstream),
        table::read_json(&inputs[0])?,
        table::read_json(&inputs[1])?,
        table::read_json(&inputs[3])?,
        ctx.upstream,
    );
    let (model, baseline) = (curve(&inputs[2])?, curve(&inputs[4])?);
    table::write_json(&outputs[0], &report)?;
    table::write_text(&outputs[1], &report::markdown(&report))?;
    let chart = report::Chart { model: &model, baseline: &baseline, synthetic: report.data.synthetic };
    table::write_text(&outputs[2], &chart.svg()?)?;
    let png = chart.png()?;
    table::write_atomic(&outputs[3], |out| {
        std::io::Write::write_all(out, &png).map_err(|e| StageError::io(&outputs[3], e))
    })?;
    log(ctx, format!("wrote {}", outputs.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")));
    Ok(())
}
