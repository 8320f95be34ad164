//! Each `markets.*` built-in: check its declared files, read, compute, write atomically.

use std::path::{Path, PathBuf};

use arrow_array::RecordBatch;
use rayon::prelude::*;

use super::backtest::{Backtest, Execution, Grid, Leg, simulate, simulate_on};
use super::chart::{Chart, Curve};
use super::features::{FEATURES, Series, compute_into, sign};
use super::ingest::{self, time};
use super::model::{Coefficient, Metrics, Model, Scores, Split, auc, calibration, confusion, train};
use super::params::Params;
use super::report::DataSource;
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
    files_with_optional_output(ctx, inputs, outputs, None)
}

/// `files`, for a built-in that writes one more output when it is declared.
fn files_with_optional_output(
    ctx: &BuiltinContext<'_>,
    inputs: &[&str],
    outputs: &[&str],
    optional: Option<&str>,
) -> Result<(Vec<PathBuf>, Vec<PathBuf>), StageError> {
    let describe = |names: &[&str]| if names.is_empty() { "none".to_string() } else { names.join(", ") };
    let outputs_ok =
        ctx.outputs.len() == outputs.len() || (optional.is_some() && ctx.outputs.len() == outputs.len() + 1);
    if ctx.inputs.len() < inputs.len() || !outputs_ok {
        let optional = optional.map(|o| format!(" (and optionally [{o}])")).unwrap_or_default();
        return Err(StageError::msg(format!(
            "stage `{}` needs inputs [{}] and outputs [{}]{optional} in this order; pipeline.toml declares {} input(s) and {} output(s)",
            ctx.stage,
            describe(inputs),
            describe(outputs),
            ctx.inputs.len(),
            ctx.outputs.len()
        )));
    }
    Ok((ctx.inputs.clone(), ctx.outputs.clone()))
}

/// The export (CSV or Parquet) named by param `source`, which must also be a declared input
/// so that editing it re-runs the stage.
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
    let zone =
        params.str_opt("timezone")?.map(time::parse_zone).transpose().map_err(|e| params.error("timezone", &e))?;
    let separator = match params.str_opt("separator")? {
        None => None,
        Some("\\t" | "tab") => Some(b'\t'),
        Some(s) if s.len() == 1 => Some(s.as_bytes()[0]),
        Some(other) => {
            return Err(params.error("separator", &format!("`{other}` is not one character (or \"tab\")")));
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
    // Where the markets came from travels with them, for the ticks stage's provenance.
    let origin = match params.str_opt("source")? {
        Some(file) => vec![("source", file.to_string())],
        None => vec![("source", SYNTHETIC.to_string()), ("seed", params.u64_or("seed", 42)?.to_string())],
    };
    table::write_batch(&outputs[0], &table::with_metadata(markets_batch(&markets), &origin))
}

/// The `source` recorded for generated data.
const SYNTHETIC: &str = "synthetic";

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
    let (inputs, outputs) =
        files_with_optional_output(ctx, &["markets table"], &["ticks table"], Some("ingest report (json)"))?;
    let markets = read_markets(&inputs[0])?;
    let markets_origin = table::metadata(&inputs[0])?;
    let mut origin = DataSource {
        synthetic: false,
        seed: None,
        markets_file: markets_origin.get("source").filter(|s| *s != SYNTHETIC).cloned(),
        ticks_file: params.str_opt("source")?.map(str::to_string),
        markets: markets.len(),
        ..DataSource::default()
    };
    let series = match source(ctx, &params)? {
        Some(export) => {
            let read = ingest::read_ticks(&export, &markets, read_options(&params)?)?;
            origin.rows_read = Some(read.rows);
            origin.rows_merged = Some(read.merged);
            origin.rows_bad_quote = Some(read.bad_quotes);
            origin.time_unit = read.ts_unit.map(|u| u.to_string());
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
        None => {
            origin.synthetic = true;
            origin.seed = Some(params.u64_or("seed", 42)?);
            generate_all_ticks(
                params.u64_or("seed", 42)?,
                &markets,
                params.u64_or("ticks_per_market", 20_000)? as usize,
            )
        }
    };
    check_cancel(ctx)?;
    let rows: usize = series.iter().map(|t| t.ts.len()).sum();
    origin.ticks = rows;
    let mut ids = Vec::with_capacity(rows);
    let mut all = Ticks {
        ts: Vec::with_capacity(rows),
        price: Vec::with_capacity(rows),
        volume: Vec::with_capacity(rows),
        bid: Vec::with_capacity(rows),
        ask: Vec::with_capacity(rows),
    };
    // `series[i]` belongs to `markets[i]`, however the markets are ordered. Each market's
    // vectors are dropped once copied, so the ticks are held about once, not twice.
    for (market, t) in markets.iter().zip(series) {
        ids.extend(std::iter::repeat_n(market.id.as_str(), t.ts.len()));
        all.ts.extend(&t.ts);
        all.price.extend(&t.price);
        all.volume.extend(&t.volume);
        all.bid.extend(&t.bid);
        all.ask.extend(&t.ask);
    }
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
    table::write_batch(&outputs[0], &b)?;
    // The report's account of the data: a file of its own, so that a count that changes
    // while the ticks do not re-runs the report but nothing between.
    match outputs.get(1) {
        Some(path) => table::write_json(path, &origin),
        None => Ok(()),
    }
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
    fn floats(&self, name: &str) -> Result<&[f64], StageError> {
        f64s(&self.batch, name, &self.path)
    }
}

pub fn features(ctx: &mut BuiltinContext<'_>) -> Result<(), StageError> {
    let (inputs, outputs) = files(ctx, &["ticks table"], &["features table"])?;
    let started = std::time::Instant::now();
    let ticks = TickTable::read(&inputs[0], &["market_id", "ts", "price", "volume", "bid", "ask"])?;
    let read = started.elapsed();
    check_cancel(ctx)?;
    let (ids, ts, price, volume, bid, ask) = (
        ticks.ids()?,
        ticks.ts()?,
        ticks.floats("price")?,
        ticks.floats("volume")?,
        ticks.floats("bid")?,
        ticks.floats("ask")?,
    );
    let runs = market_runs(ids);
    // The output columns, filled in place: each market writes its own rows, in parallel.
    let mut columns: Vec<Vec<f64>> = (0..FEATURES.len()).map(|_| vec![0.0; ts.len()]).collect();
    let mut per_market: Vec<Vec<&mut [f64]>> = runs.iter().map(|_| Vec::with_capacity(FEATURES.len())).collect();
    for column in &mut columns {
        let mut rest = column.as_mut_slice();
        for (out, run) in per_market.iter_mut().zip(&runs) {
            let (rows, tail) = std::mem::take(&mut rest).split_at_mut(run.len());
            out.push(rows);
            rest = tail;
        }
    }
    per_market.par_iter_mut().zip(&runs).for_each(|(out, r)| {
        let r = r.clone();
        let series = Series {
            ts: &ts[r.clone()],
            price: &price[r.clone()],
            volume: &volume[r.clone()],
            bid: &bid[r.clone()],
            ask: &ask[r],
        };
        compute_into(&series, out);
    });
    drop(per_market);
    let mut table: Vec<(&str, arrow_array::ArrayRef)> = vec![
        ("market_id", ticks.batch.column_by_name("market_id").expect("read above").clone()),
        ("ts", ticks.batch.column_by_name("ts").expect("read above").clone()),
    ];
    table.extend(FEATURES.iter().zip(columns).map(|(name, values)| (*name, f64_col(values))));
    let computed = started.elapsed();
    table::write_batch(&outputs[0], &batch(table))?;
    log(
        ctx,
        format!(
            "{} rows x {} features over {} markets (read {:.2} s, computed {:.2} s, written {:.2} s)",
            ts.len(),
            FEATURES.len(),
            runs.len(),
            read.as_secs_f64(),
            (computed - read).as_secs_f64(),
            (started.elapsed() - computed).as_secs_f64()
        ),
    );
    Ok(())
}

/// The labels: where each tick's mid goes over the move a trade decided at that tick can
/// catch, from the tick `delay` later to the one after. A mid that does not move is neither
/// up nor down, and kept: dropping it would select rows on the future.
struct Labels {
    /// −1, 0 or 1; `None` where the market has no tick that far ahead.
    moves: Vec<Option<i8>>,
    /// Time of the tick the move ends at (`i64::MAX` where there is none).
    end_ts: Vec<i64>,
    flat: usize,
}

impl Labels {
    fn up(&self, i: usize) -> bool {
        self.moves[i] == Some(1)
    }

    fn down(&self, i: usize) -> bool {
        self.moves[i] == Some(-1)
    }
}

fn mids(bid: &[f64], ask: &[f64]) -> Vec<f64> {
    bid.iter().zip(ask).map(|(b, a)| (b + a) / 2.0).collect()
}

fn labels(ids: &arrow_array::StringArray, ts: &[i64], mid: &[f64], delay: usize) -> Labels {
    let mut labels = Labels { moves: vec![None; ts.len()], end_ts: vec![i64::MAX; ts.len()], flat: 0 };
    for run in market_runs(ids) {
        for i in run.start..run.end.saturating_sub(delay + 1) {
            let (from, to) = (mid[i + delay], mid[i + delay + 1]);
            labels.moves[i] = Some(if to > from {
                1
            } else if to < from {
                -1
            } else {
                0
            });
            labels.end_ts[i] = ts[i + delay + 1];
            labels.flat += usize::from(to == from);
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

fn not_the_same_ticks(features: &Path, ticks: &Path) -> StageError {
    StageError::msg(format!(
        "{} and {} do not describe the same ticks; rebuild features (dagrun invalidate features)",
        features.display(),
        ticks.display()
    ))
}

/// Calls `each(k, row)` with the features of row `rows[k]`, for rows in ascending order,
/// streaming the features table batch by batch: the whole matrix is never held.
fn feature_rows(
    path: &Path,
    rows: &[usize],
    mut each: impl FnMut(usize, &[f64; FEATURES.len()]),
) -> Result<(), StageError> {
    let mut k = 0;
    table::for_each_batch(path, Some(&FEATURES), |batch, first, _| {
        let columns: Vec<&[f64]> = FEATURES.iter().map(|f| f64s(batch, f, path)).collect::<Result<_, _>>()?;
        let end = first + batch.num_rows();
        while k < rows.len() && rows[k] < end {
            let i = rows[k] - first;
            each(k, &std::array::from_fn(|f| columns[f][i]));
            k += 1;
        }
        Ok(())
    })
}

pub fn model(ctx: &mut BuiltinContext<'_>) -> Result<(), StageError> {
    let params = Params::new(ctx.stage, ctx.params);
    let (train_fraction, validation_fraction) = split_params(&params)?;
    let max_iterations = params.u64_or("max_iterations", 100)?;
    let max_train_rows = params.u64_or("max_train_rows", 500_000)?.max(1) as usize;
    let delay = params.u64_or("execution_delay", 1)?;
    let (inputs, outputs) = files(ctx, &["features table", "ticks table"], &["model (json)", "metrics (json)"])?;
    // Labels and periods come from the ticks; the features are then streamed, three times
    // (which rows are usable, the training sample, the predictions), never held whole.
    let (ts, labels, markets) = {
        let ticks = TickTable::read(&inputs[1], &["market_id", "ts", "bid", "ask"])?;
        let ids = ticks.ids()?;
        let ts = ticks.ts()?.to_vec();
        let labels = labels(ids, &ts, &mids(ticks.floats("bid")?, ticks.floats("ask")?), delay as usize);
        (ts, labels, market_runs(ids).len())
    };
    check_cancel(ctx)?;
    let split = Split::of(&ts, train_fraction, validation_fraction);
    // A row's label is the move to its market's next tick: for a training row that tick
    // must be before the validation period too, or the label would carry its information.
    let trains = |i: usize| labels.moves[i].is_some() && labels.end_ts[i] < split.validation_start_ts;
    let candidates = (0..ts.len()).filter(|&i| trains(i)).count();
    // A deterministic stride keeps training time bounded on large inputs.
    let stride = candidates.div_ceil(max_train_rows).max(1);
    // Pass 1: which rows have every feature, and the training sample's features.
    let mut usable = vec![false; ts.len()];
    let (mut sample, mut x) = (Vec::new(), Vec::new());
    let mut seen_train = 0;
    let mut names = vec!["ts"];
    names.extend(FEATURES);
    table::for_each_batch(&inputs[0], Some(&names), |batch, first, _| {
        if ts.get(first..first + batch.num_rows()) != Some(i64s(batch, "ts", &inputs[0])?) {
            return Err(not_the_same_ticks(&inputs[0], &inputs[1]));
        }
        let columns: Vec<&[f64]> = FEATURES.iter().map(|f| f64s(batch, f, &inputs[0])).collect::<Result<_, _>>()?;
        for j in 0..batch.num_rows() {
            let i = first + j;
            usable[i] = labels.moves[i].is_some() && columns.iter().all(|c| c[j].is_finite());
            if trains(i) {
                if usable[i] && seen_train % stride == 0 {
                    sample.push(i);
                    x.push(std::array::from_fn::<f64, { FEATURES.len() }, _>(|f| columns[f][j]));
                }
                seen_train += 1;
            }
        }
        Ok(())
    })?;
    let train_rows_available = (0..ts.len()).filter(|&i| usable[i] && trains(i)).count();
    let up_of = |idx: &[usize]| -> Vec<bool> { idx.iter().map(|&i| labels.up(i)).collect() };
    let down_of = |idx: &[usize]| -> Vec<bool> { idx.iter().map(|&i| labels.down(i)).collect() };
    check_cancel(ctx)?;
    let model =
        Model { execution_delay: delay, ..train(&x, &up_of(&sample), &down_of(&sample), max_iterations, split)? };
    check_cancel(ctx)?;
    let in_sample: Vec<f64> = x.par_iter().map(|row| model.probability(row)).collect();
    drop(x);
    // Pass 2: predictions from the validation period on.
    let scored: Vec<usize> = (0..ts.len()).filter(|&i| usable[i] && ts[i] >= split.validation_start_ts).collect();
    let mut p = vec![(0.0, 0.0); scored.len()];
    feature_rows(&inputs[0], &scored, |k, row| p[k] = (model.probability(row), model.probability_down(row)))?;
    let (mut validation_idx, mut validation_p, mut test_idx, mut test_p, mut test_down_p) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (&i, &(prob, down)) in scored.iter().zip(&p) {
        if ts[i] >= split.test_start_ts {
            test_idx.push(i);
            test_p.push(prob);
            test_down_p.push(down);
        } else if labels.end_ts[i] < split.test_start_ts {
            validation_idx.push(i);
            validation_p.push(prob);
        }
    }
    drop((scored, p));
    log(
        ctx,
        format!(
            "trained on {} of {} rows, validated on {}, tested on {}",
            sample.len(),
            train_rows_available,
            validation_idx.len(),
            test_idx.len()
        ),
    );
    let test_up = up_of(&test_idx);
    let test = Scores::of(&test_p, &test_up);
    let labelled = labels.moves.iter().filter(|u| u.is_some()).count();
    let metrics = Metrics {
        label: format!(
            "the mid moves up (and, in the second regression, down) from the market's tick {delay} after the decision, where a trade would fill, to the tick after it"
        ),
        in_sample: Scores::of(&in_sample, &up_of(&sample)),
        validation: Scores::of(&validation_p, &up_of(&validation_idx)),
        test,
        test_down: Scores::of(&test_down_p, &down_of(&test_idx)),
        coefficients: (0..FEATURES.len())
            .map(|f| Coefficient {
                feature: FEATURES[f].to_string(),
                coef: model.coef[f],
                down_coef: model.down_coef[f],
            })
            .collect(),
        intercept: model.intercept,
        down_intercept: model.down_intercept,
        execution_delay: delay,
        calibration: calibration(&test_p, &test_up),
        confusion: confusion(&test_p, &test_up),
        split,
        markets,
        ticks: ts.len(),
        train_rows_available,
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
    let (start, test_start) = (model.split.validation_start_ts, model.split.test_start_ts);
    let mut ids = arrow_array::builder::StringBuilder::new();
    let (mut times, mut period, mut probabilities) = (Vec::new(), Vec::new(), Vec::new());
    let mut down = Vec::new();
    // Streamed: only the predictions are kept, never the whole feature table.
    table::for_each_batch(path, Some(&wanted), |features, _, _| {
        let (id, ts) = (strs(features, "market_id", path)?, i64s(features, "ts", path)?);
        let columns: Vec<&[f64]> = model.features.iter().map(|f| f64s(features, f, path)).collect::<Result<_, _>>()?;
        let keep: Vec<usize> =
            (0..ts.len()).filter(|&i| ts[i] >= start && columns.iter().all(|c| c[i].is_finite())).collect();
        let (up_p, down_p): (Vec<f64>, Vec<f64>) = keep
            .par_iter()
            .map(|&i| {
                let x: Vec<f64> = columns.iter().map(|c| c[i]).collect();
                (model.probability(&x), model.probability_down(&x))
            })
            .unzip();
        probabilities.extend(up_p);
        down.extend(down_p);
        for &i in &keep {
            ids.append_value(id.value(i));
            times.push(ts[i]);
            period.push(if ts[i] >= test_start { "test" } else { "validation" });
        }
        Ok(())
    })?;
    log(ctx, format!("{} predictions over the validation and test periods, from {start}", times.len()));
    let b = batch(vec![
        ("market_id", std::sync::Arc::new(ids.finish()) as arrow_array::ArrayRef),
        ("ts", i64_col(times)),
        ("period", str_col(&period)),
        ("prob_up", f64_col(probabilities)),
        ("prob_down", f64_col(down)),
    ]);
    // Where the periods start travels with the predictions, so that every strategy stage
    // tests exactly the model's test period.
    let b = table::with_metadata(
        b,
        &[
            ("validation_start_ts", start.to_string()),
            ("test_start_ts", test_start.to_string()),
            ("execution_delay", model.execution_delay.to_string()),
        ],
    );
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
        let mid = mids(table.floats("bid")?, table.floats("ask")?);
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
        let (ts, bid, ask) = (self.table.ts()?, self.table.floats("bid")?, self.table.floats("ask")?);
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

/// The model's position given its edge, P(up) − P(down): long above `enter`, short below
/// −`enter`; a long is closed once the edge falls below `exit` and a short once it rises
/// above −`exit`; otherwise the position is held (hysteresis: flat-long-flat churn would pay
/// the spread on every wobble).
fn decide(held: f64, edge: Option<f64>, enter: f64, exit: f64) -> f64 {
    let Some(edge) = edge else { return held };
    if edge > enter {
        1.0
    } else if edge < -enter {
        -1.0
    } else if (held > 0.0 && edge < exit) || (held < 0.0 && edge > -exit) {
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
    pub auc: Option<f64>,
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
        "marking": "positions are marked at the mid; each market holds 1/N of the equity, N being the markets trading in that bar (from their first tick of the period to their last), rebalanced every bar",
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
    // From the starting equity of 1, as `simulate` measures the maximum drawdown.
    let mut peak = 1.0f64;
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

/// A period's legs with no position yet, and each market's edge at each of its ticks
/// (`None` where there is no prediction): a threshold only decides the positions.
struct Period {
    legs: Vec<Leg>,
    edges: Vec<Vec<Option<f64>>>,
}

/// Thresholds tried on the validation period when `threshold = "tune"`: from trading every
/// signal to trading only the most confident ones.
const THRESHOLD_GRID: [f64; 11] = [0.0, 0.02, 0.04, 0.06, 0.08, 0.1, 0.13, 0.16, 0.2, 0.25, 0.3];

pub fn backtest(ctx: &mut BuiltinContext<'_>) -> Result<(), StageError> {
    let params = Params::new(ctx.stage, ctx.params);
    let fixed = params.f64_or_tune("threshold", None)?;
    let grid = params.f64_list_or("threshold_grid", &THRESHOLD_GRID)?;
    let exit_fraction = params.f64_or("exit_fraction", 0.5)?;
    if !(0.0..=1.0).contains(&exit_fraction) {
        return Err(params.error(
            "exit_fraction",
            &format!("{exit_fraction} is not between 0 and 1 (a position is closed once the edge falls below this share of the threshold)"),
        ));
    }
    if let Some(bad) = fixed.iter().chain(&grid).find(|t| !(0.0..1.0).contains(*t)) {
        return Err(StageError::msg(format!(
            "thresholds of stage `{}` are edges P(up) - P(down) and must be at least 0 and below 1; {bad} is not",
            ctx.stage
        )));
    }
    let exec = execution(&params)?;
    let (inputs, outputs) =
        files(ctx, &["predictions table", "ticks table", "markets table"], &["backtest (json)", "equity table"])?;
    let predictions = table::read_batch(&inputs[0])?;
    let (pids, pts, up, down) = (
        strs(&predictions, "market_id", &inputs[0])?,
        i64s(&predictions, "ts", &inputs[0])?,
        f64s(&predictions, "prob_up", &inputs[0])?,
        f64s(&predictions, "prob_down", &inputs[0])?,
    );
    let periods = table::metadata(&inputs[0])?;
    let start = |key: &str| -> Result<i64, StageError> {
        periods.get(key).and_then(|v| v.parse().ok()).ok_or_else(|| {
            StageError::msg(format!(
                "{} does not say where the periods start (`{key}`); rebuild it (dagrun invalidate inference)",
                inputs[0].display()
            ))
        })
    };
    let (validation_start, test_start, model_delay) =
        (start("validation_start_ts")?, start("test_start_ts")?, start("execution_delay")?);
    let markets = read_markets(&inputs[2])?;
    let quotes = Quotes::read(&inputs[1])?;
    // Each market's edges, P(up) − P(down), by time, to look up at its ticks.
    let mut edges_by_market: Vec<std::collections::HashMap<i64, f64>> = vec![Default::default(); markets.len()];
    let mut up_by_market: Vec<std::collections::HashMap<i64, f64>> = vec![Default::default(); markets.len()];
    for run in market_runs(pids) {
        if let Ok(m) = markets.binary_search_by(|mk| mk.id.as_str().cmp(pids.value(run.start))) {
            edges_by_market[m] = run.clone().map(|i| (pts[i], up[i] - down[i])).collect();
            up_by_market[m] = run.filter(|&i| pts[i] >= test_start).map(|i| (pts[i], up[i])).collect();
        }
    }
    drop(predictions);
    // Each period's legs are built once, with every tick's edge beside them; a threshold
    // only decides the positions.
    let period = |range: std::ops::Range<i64>| -> Result<Period, StageError> {
        let mut edges = vec![Vec::new(); markets.len()];
        let legs = quotes.legs(&markets, range, |m, _, t, _| {
            edges[m].push(edges_by_market[m].get(&t).copied());
            0.0
        })?;
        Ok(Period { legs, edges })
    };
    let positioned = |period: &Period, threshold: f64| -> Vec<Leg> {
        period
            .legs
            .iter()
            .zip(&period.edges)
            .map(|(leg, edges)| {
                let mut held = 0.0;
                let target = edges
                    .iter()
                    .map(|edge| {
                        held = decide(held, *edge, threshold, threshold * exit_fraction);
                        held
                    })
                    .collect();
                Leg { target, ..leg.clone() }
            })
            .collect()
    };
    let validation = period(validation_start..test_start)?;
    let validation_grid = Grid::of(&validation.legs);
    let cancel = ctx.cancel;
    let sensitivity = grid
        .par_iter()
        .map(|&threshold| {
            if cancel.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(StageError::msg("interrupted"));
            }
            let legs = positioned(&validation, threshold);
            let at = |scale: f64| simulate_on(&validation_grid, &legs, &Execution { cost_scale: scale, ..exec });
            let real = at(1.0);
            Ok(Sensitivity {
                threshold,
                pnl_no_costs: at(0.0).pnl,
                pnl: real.pnl,
                pnl_double_costs: at(2.0).pnl,
                trades: real.trades,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    // Tuned on validation only: the best net PnL, the larger threshold on a tie.
    let tuned = sensitivity.iter().max_by(|a, b| a.pnl.total_cmp(&b.pnl).then(a.threshold.total_cmp(&b.threshold)));
    let threshold = fixed.unwrap_or_else(|| tuned.map_or(0.0, |s| s.threshold));
    let on_validation = simulate_on(&validation_grid, &positioned(&validation, threshold), &exec);
    drop(validation);
    // The test period, once.
    let test = simulate(&positioned(&period(test_start..i64::MAX)?, threshold), &exec);
    let hold = quotes.legs(&markets, test_start..i64::MAX, |_, _, _, _| 1.0)?;
    let benchmark = simulate(&hold, &exec);
    let per_market = per_market_results(&markets, &quotes, &up_by_market, model_delay as usize, &test)?;
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
        "strategy": "two logistic regressions: long when P(up) - P(down) is above the threshold, short below minus the threshold; a long is closed when the edge falls below exit_fraction x threshold (a short when it rises above minus that), and otherwise the position is held",
        "threshold": threshold,
        "threshold_chosen": if fixed.is_some() { "fixed by the `threshold` param" } else { "tuned on the validation period by net PnL" },
        "exit_fraction": exit_fraction,
        "conventions": conventions(&exec),
        "execution_delay": exec.delay,
        "model_execution_delay": model_delay,
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

/// Each market's test AUC (its P(up) against the moves the model was asked to predict),
/// and its own sleeve's net PnL and trades. AUC is `None` when the market has no test
/// predictions or only one outcome.
fn per_market_results(
    markets: &[Market],
    quotes: &Quotes,
    test_up: &[std::collections::HashMap<i64, f64>],
    delay: usize,
    test: &Backtest,
) -> Result<Vec<MarketResult>, StageError> {
    let ts = quotes.table.ts()?;
    let results = markets
        .iter()
        .enumerate()
        .map(|(m, market)| {
            let (mut p, mut up) = (Vec::new(), Vec::new());
            if let Some((_, run)) = quotes.runs.iter().find(|(id, _)| *id == market.id) {
                let rows = run.start..run.end.saturating_sub(delay + 1);
                for (i, prob) in rows.filter_map(|i| Some((i, *test_up[m].get(&ts[i])?))) {
                    p.push(prob);
                    up.push(quotes.mid[i + delay + 1] > quotes.mid[i + delay]);
                }
            }
            let both = up.iter().any(|&u| u) && up.iter().any(|&u| !u);
            let leg = test.per_leg.get(m).cloned().unwrap_or_default();
            MarketResult {
                market: market.id.clone(),
                auc: both.then(|| auc(&p, &up)),
                pnl: leg.pnl,
                trades: leg.trades,
            }
        })
        .collect();
    Ok(results)
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
        return Err(not_the_same_ticks(&inputs[0], &inputs[1]));
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
    let curve = |path: &Path| -> Result<Curve, StageError> {
        let b = table::read_batch(path)?;
        let column = |name: &str| -> Result<Vec<f64>, StageError> {
            Ok(if b.column_by_name(name).is_some() { f64s(&b, name, path)?.to_vec() } else { Vec::new() })
        };
        Ok(Curve {
            ts: i64s(&b, "ts", path)?.to_vec(),
            equity: column("equity")?,
            drawdown: column("drawdown")?,
            benchmark: column("benchmark")?,
        })
    };
    // A sixth input, the ticks stage's ingest report, says what the data is.
    let data: Option<DataSource> = inputs.get(5).map(|path| table::read_json(path)).transpose()?;
    let report = report::Report {
        data,
        model: table::read_json(&inputs[0])?,
        strategy: table::read_json(&inputs[1])?,
        baseline: table::read_json(&inputs[3])?,
    };
    let (model, baseline) = (curve(&inputs[2])?, curve(&inputs[4])?);
    table::write_json(&outputs[0], &report)?;
    table::write_text(&outputs[1], &report::markdown(&report))?;
    let synthetic = report.data.as_ref().is_some_and(|d| d.synthetic);
    let chart = Chart { model: &model, baseline: &baseline, synthetic };
    table::write_text(&outputs[2], &chart.svg()?)?;
    let png = chart.png()?;
    table::write_atomic(&outputs[3], |out| {
        std::io::Write::write_all(out, &png).map_err(|e| StageError::io(&outputs[3], e))
    })?;
    log(ctx, format!("wrote {}", outputs.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")));
    Ok(())
}
#[cfg(test)]
mod tests {
    use super::{decide, labels};

    #[test]
    fn labels_keep_flat_moves_and_start_where_the_delayed_trade_fills() {
        // Two markets; the mid of A moves up, stays flat, then down; B is flat throughout.
        let ids = arrow_array::StringArray::from(vec!["A", "A", "A", "A", "A", "B", "B", "B"]);
        let ts = [10, 20, 30, 40, 50, 10, 20, 30];
        let mid = [1.0, 2.0, 2.0, 1.0, 1.0, 5.0, 5.0, 5.0];

        let now = labels(&ids, &ts, &mid, 0);
        assert_eq!(
            now.moves,
            [Some(1), Some(0), Some(-1), Some(0), None, Some(0), Some(0), None],
            "a flat mid is a label of its own (neither up nor down), never a dropped row"
        );
        assert_eq!(now.flat, 4);
        assert_eq!(now.end_ts, [20, 30, 40, 50, i64::MAX, 20, 30, i64::MAX]);

        // With one tick of delay, the decision at t earns the move from t+1 to t+2, and a
        // label never reaches into the next market.
        let delayed = labels(&ids, &ts, &mid, 1);
        assert_eq!(delayed.moves, [Some(0), Some(-1), Some(0), None, None, Some(0), None, None]);
        assert_eq!(delayed.end_ts, [30, 40, 50, i64::MAX, i64::MAX, 30, i64::MAX, i64::MAX]);
        assert!(delayed.down(1) && !delayed.up(1) && !delayed.up(0) && !delayed.down(0));
    }

    #[test]
    fn positions_enter_beyond_the_threshold_and_leave_inside_the_exit_band() {
        let (enter, exit) = (0.10, 0.05);
        assert_eq!(decide(0.0, Some(0.11), enter, exit), 1.0);
        assert_eq!(decide(0.0, Some(-0.11), enter, exit), -1.0);
        assert_eq!(decide(0.0, Some(0.08), enter, exit), 0.0, "flat stays flat below the threshold");
        assert_eq!(decide(1.0, Some(0.08), enter, exit), 1.0, "a long is held above the exit");
        assert_eq!(decide(1.0, Some(0.04), enter, exit), 0.0, "and closed below it");
        assert_eq!(decide(1.0, Some(-0.07), enter, exit), 0.0, "a long is never held against the signal");
        assert_eq!(decide(-1.0, Some(-0.08), enter, exit), -1.0);
        assert_eq!(decide(-1.0, Some(0.07), enter, exit), 0.0);
        assert_eq!(decide(-1.0, None, enter, exit), -1.0, "no prediction: no change");
    }
}
