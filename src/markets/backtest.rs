//! Turning positions into PnL, as a desk would account for it.
//!
//! - **Marking:** positions are marked at the mid; a market's return accrues in the bar of
//!   the tick that reveals it, so a market that does not tick in a bar earns nothing in it.
//! - **Fills:** a change of position trades at the bid or the ask, i.e. at the mid plus half
//!   the quoted spread, plus the market's fee and a slippage allowance.
//! - **Timing:** a position decided at tick `t` (from information up to `t`) is entered at
//!   the market's tick `t + delay`; with no delay it would earn a move its own price set.
//! - **Portfolio:** every market holds 1/N of the equity (rebalanced each bar), N being the
//!   number of markets live in that bar: from their first tick of the period to their last.
//!   Bars are as long as the median gap between ticks.
//! - **End:** every position still open is closed at the last tick, and pays for it.
//! - **Annualisation:** from the bars actually observed per year, so a market with trading
//!   sessions is not annualised as if it traded around the clock.

use std::collections::BTreeMap;

const YEAR_MS: f64 = 365.25 * 86_400_000.0;

/// One market over the evaluated period, in time order.
#[derive(Debug, Clone, Default)]
pub struct Leg {
    pub ts: Vec<i64>,
    pub mid: Vec<f64>,
    /// The position (−1, 0 or 1) decided at each tick.
    pub target: Vec<f64>,
    /// Half the quoted spread at each tick, in basis points of the mid.
    pub half_spread_bps: Vec<f64>,
    pub fee_bps: f64,
}

/// How positions are executed and charged.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Execution {
    /// Ticks between deciding a position and trading it.
    pub delay: usize,
    pub slippage_bps: f64,
    /// Multiplies every cost: 1 is the real cost, 2 the sensitivity table's doubled one.
    pub cost_scale: f64,
}

/// Costs as a share of equity, summed over bars.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Costs {
    pub fees: f64,
    pub slippage: f64,
    pub spread: f64,
}

impl Costs {
    pub fn total(&self) -> f64 {
        self.fees + self.slippage + self.spread
    }

    fn add(&mut self, other: &Costs, weight: f64) {
        self.fees += other.fees * weight;
        self.slippage += other.slippage * weight;
        self.spread += other.spread * weight;
    }
}

/// One market's own result (its sleeve alone, net of costs).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LegResult {
    pub pnl: f64,
    pub trades: usize,
}

/// What a backtest found.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Backtest {
    /// Final equity − 1, net of costs, starting from 1.0.
    pub pnl: f64,
    /// The same before any cost.
    pub gross_pnl: f64,
    pub costs: Costs,
    /// Mean over standard deviation of net bar returns, annualised by `bars_per_year`.
    pub sharpe: f64,
    /// A 95% interval for `sharpe` (Lo 2002, returns taken as independent).
    pub sharpe_ci95: [f64; 2],
    pub max_drawdown: f64,
    /// Of market intervals with a position and a mid that moved, the share that moved its way.
    pub hit_rate: f64,
    /// Mean absolute change of position per market tick.
    pub turnover: f64,
    /// Time-weighted mean of the gross position, as a share of equity.
    pub exposure: f64,
    /// Mean time a non-flat position is held, in hours.
    pub avg_holding_hours: f64,
    pub trades: usize,
    pub bars: usize,
    pub bar_ms: i64,
    /// Bars with at least one tick, per year of calendar time they span.
    pub bars_per_year: f64,
    /// (bar start, equity) after each bar.
    #[serde(skip)]
    pub equity: Vec<(i64, f64)>,
    #[serde(skip)]
    pub per_leg: Vec<LegResult>,
}

/// One market's effect on one bar.
#[derive(Debug, Clone, Copy)]
struct BarMove {
    net: f64,
    gross: f64,
    costs: Costs,
}

impl Default for BarMove {
    fn default() -> BarMove {
        BarMove { net: 1.0, gross: 1.0, costs: Costs::default() }
    }
}

/// What one leg contributes: its moves per bar, and its own statistics.
#[derive(Default)]
struct LegRun {
    bars: Vec<(i64, BarMove)>,
    result: LegResult,
    held_intervals: usize,
    hits: usize,
    turnover: f64,
    ticks: usize,
    exposure_ms: f64,
    holding_runs: usize,
    holding_ms: f64,
}

impl LegRun {
    /// The move of bar `bar`, the last one or a new one (a leg's ticks are in time order).
    fn at(&mut self, bar: i64) -> &mut BarMove {
        if self.bars.last().is_none_or(|(b, _)| *b != bar) {
            self.bars.push((bar, BarMove::default()));
        }
        &mut self.bars.last_mut().expect("just pushed").1
    }
}

/// Which markets are live in a bar: from the bar of a market's first tick to that of its last.
struct Live {
    starts: Vec<i64>,
    ends: Vec<i64>,
}

impl Live {
    fn of(legs: &[Leg], bar_ms: i64) -> Live {
        let bars = |pick: fn(&[i64]) -> Option<&i64>| -> Vec<i64> {
            let mut bars: Vec<i64> = legs.iter().filter_map(|l| pick(&l.ts)).map(|t| t.div_euclid(bar_ms)).collect();
            bars.sort_unstable();
            bars
        };
        Live { starts: bars(<[i64]>::first), ends: bars(<[i64]>::last) }
    }

    /// Each live market's share of the equity in `bar`.
    fn weight(&self, bar: i64) -> f64 {
        let live = self.starts.partition_point(|&s| s <= bar) - self.ends.partition_point(|&e| e < bar);
        1.0 / live.max(1) as f64
    }
}

fn run_leg(leg: &Leg, exec: &Execution, bar_ms: i64, live: &Live) -> LegRun {
    let n = leg.ts.len();
    let mut run = LegRun { ticks: n, ..LegRun::default() };
    let bar = |i: usize| leg.ts[i].div_euclid(bar_ms);
    // The position held from tick i to tick i + 1; flat from the last tick on.
    let held = |i: usize| if i + 1 < n && i >= exec.delay { leg.target[i - exec.delay] } else { 0.0 };
    let mut previous = 0.0;
    let mut open_since: Option<usize> = None;
    for i in 0..n {
        let position = held(i);
        let change = (position - previous).abs();
        if change > 0.0 {
            let charge = |bps: f64| change * bps * exec.cost_scale / 1e4;
            let costs = Costs {
                fees: charge(leg.fee_bps),
                slippage: charge(exec.slippage_bps),
                spread: charge(leg.half_spread_bps[i]),
            };
            let slot = run.at(bar(i));
            slot.net *= 1.0 - costs.total();
            slot.costs.add(&costs, 1.0);
            run.result.trades += 1;
            run.turnover += change;
            if let Some(start) = open_since.take() {
                run.holding_runs += 1;
                run.holding_ms += (leg.ts[i] - leg.ts[start]) as f64;
            }
            if position != 0.0 {
                open_since = Some(i);
            }
        } else {
            run.at(bar(i));
        }
        if i + 1 < n {
            let r = leg.mid[i + 1] / leg.mid[i] - 1.0;
            if position != 0.0 {
                // A mid that does not move is neither a hit nor a miss.
                run.held_intervals += usize::from(r != 0.0);
                run.hits += usize::from(position * r > 0.0);
                // As a share of the portfolio: the position times the market's weight.
                run.exposure_ms += position.abs() * live.weight(bar(i)) * (leg.ts[i + 1] - leg.ts[i]) as f64;
            }
            let slot = run.at(bar(i + 1));
            slot.net *= 1.0 + position * r;
            slot.gross *= 1.0 + position * r;
        }
        previous = position;
    }
    run.result.pnl = run.bars.iter().map(|(_, m)| m.net).product::<f64>() - 1.0;
    run
}

/// Runs every leg and combines them into the equal-weight portfolio.
pub fn simulate(legs: &[Leg], exec: &Execution) -> Backtest {
    simulate_on(&Grid::of(legs), legs, exec)
}

/// The bars of a set of legs and who is live in each: it depends only on their ticks, so
/// the many simulations of one period (thresholds, cost scales) share it.
pub struct Grid {
    bar_ms: i64,
    live: Live,
}

impl Grid {
    pub fn of(legs: &[Leg]) -> Grid {
        let bar_ms = median_gap(legs).max(1);
        Grid { bar_ms, live: Live::of(legs, bar_ms) }
    }
}

/// `simulate` on a grid already computed for legs with these ticks.
pub fn simulate_on(grid: &Grid, legs: &[Leg], exec: &Execution) -> Backtest {
    let (bar_ms, live) = (grid.bar_ms, &grid.live);
    let runs: Vec<LegRun> = legs.iter().map(|leg| run_leg(leg, exec, bar_ms, live)).collect();
    let mut by_bar: BTreeMap<i64, (f64, f64)> = BTreeMap::new();
    let mut costs = Costs::default();
    for run in &runs {
        for (bar, m) in &run.bars {
            let weight = live.weight(*bar);
            let slot = by_bar.entry(*bar).or_insert((0.0, 0.0));
            slot.0 += (m.net - 1.0) * weight;
            slot.1 += (m.gross - 1.0) * weight;
            costs.add(&m.costs, weight);
        }
    }
    let returns: Vec<f64> = by_bar.values().map(|r| r.0).collect();
    let gross_pnl = by_bar.values().map(|r| 1.0 + r.1).product::<f64>() - 1.0;
    let mut equity = Vec::with_capacity(by_bar.len());
    let (mut value, mut peak, mut max_drawdown) = (1.0f64, 1.0f64, 0.0f64);
    for (&bar, &(r, _)) in &by_bar {
        value *= 1.0 + r;
        peak = peak.max(value);
        max_drawdown = max_drawdown.max((peak - value) / peak);
        equity.push((bar * bar_ms, value));
    }
    let span_ms = match (by_bar.keys().next(), by_bar.keys().next_back()) {
        (Some(first), Some(last)) => ((last - first + 1) * bar_ms) as f64,
        _ => 0.0,
    };
    let bars_per_year = if span_ms > 0.0 { returns.len() as f64 / (span_ms / YEAR_MS) } else { 0.0 };
    let (sharpe, sharpe_ci95) = sharpe(&returns, bars_per_year);
    let sum = |f: fn(&LegRun) -> f64| runs.iter().map(f).sum::<f64>();
    let held: usize = runs.iter().map(|r| r.held_intervals).sum();
    let ticks: usize = runs.iter().map(|r| r.ticks).sum();
    let holding_runs: usize = runs.iter().map(|r| r.holding_runs).sum();
    let period_ms =
        match (legs.iter().filter_map(|l| l.ts.first()).min(), legs.iter().filter_map(|l| l.ts.last()).max()) {
            (Some(first), Some(last)) if last > first => (last - first) as f64,
            _ => 0.0,
        };
    Backtest {
        pnl: value - 1.0,
        gross_pnl,
        costs,
        sharpe,
        sharpe_ci95,
        max_drawdown,
        hit_rate: ratio(runs.iter().map(|r| r.hits).sum::<usize>() as f64, held as f64),
        turnover: ratio(sum(|r| r.turnover), ticks as f64),
        exposure: ratio(sum(|r| r.exposure_ms), period_ms),
        avg_holding_hours: ratio(sum(|r| r.holding_ms), holding_runs as f64) / 3_600_000.0,
        trades: runs.iter().map(|r| r.result.trades).sum(),
        bars: returns.len(),
        bar_ms,
        bars_per_year,
        equity,
        per_leg: runs.into_iter().map(|r| r.result).collect(),
    }
}

fn ratio(numerator: f64, denominator: f64) -> f64 {
    if denominator > 0.0 { numerator / denominator } else { 0.0 }
}

/// The median gap between consecutive ticks of a market, over all markets.
fn median_gap(legs: &[Leg]) -> i64 {
    let mut gaps: Vec<i64> =
        legs.iter().flat_map(|l| l.ts.windows(2).map(|w| w[1] - w[0])).filter(|g| *g > 0).collect();
    if gaps.is_empty() {
        return 60_000;
    }
    let middle = gaps.len() / 2;
    *gaps.select_nth_unstable(middle).1
}

/// The annualised Sharpe ratio and its 95% interval. Lo (2002): for independent returns
/// the per-bar ratio's standard error is √((1 + SR²/2) / T).
fn sharpe(returns: &[f64], bars_per_year: f64) -> (f64, [f64; 2]) {
    if returns.len() < 2 {
        return (0.0, [0.0, 0.0]);
    }
    let n = returns.len() as f64;
    let mean = returns.iter().sum::<f64>() / n;
    let sd = (returns.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
    if sd <= 0.0 {
        return (0.0, [0.0, 0.0]);
    }
    let per_bar = mean / sd;
    let scale = bars_per_year.sqrt();
    let half_width = 1.96 * ((1.0 + per_bar * per_bar / 2.0) / n).sqrt() * scale;
    let annual = per_bar * scale;
    (annual, [annual - half_width, annual + half_width])
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: i64 = 60_000;

    fn exec(delay: usize) -> Execution {
        Execution { delay, slippage_bps: 0.0, cost_scale: 1.0 }
    }

    fn leg(ts: Vec<i64>, mid: Vec<f64>, target: Vec<f64>, half_spread_bps: f64) -> Leg {
        let n = ts.len();
        Leg { ts, mid, target, half_spread_bps: vec![half_spread_bps; n], fee_bps: 0.0 }
    }

    #[test]
    fn pnl_on_a_hand_computed_series_matches_exactly() {
        // Mid moves +50%, −25%, +12.5%, −50%; targets long, long, flat, short; half a spread
        // costs 625 bp (1/16). Every number is a binary fraction, so equality is exact.
        let l = leg(
            (0..5).map(|i| i * MINUTE).collect(),
            vec![1.0, 1.5, 1.125, 1.265625, 0.6328125],
            vec![1.0, 1.0, 0.0, -1.0, 0.0],
            625.0,
        );
        let bt = simulate(&[l], &exec(0));
        // Bar 0 buys (−1/16); bar 1 earns +50%; bar 2 earns −25% and sells (−1/16); bar 3
        // goes short (−1/16); bar 4 earns +50% on the short and closes it out (−1/16).
        let k = 15.0 / 16.0;
        let equity: Vec<f64> = bt.equity.iter().map(|e| e.1).collect();
        assert_eq!(
            equity,
            [k, k * 1.5, k * 1.5 * (0.75 * k), k * 1.5 * (0.75 * k) * k, k * 1.5 * (0.75 * k) * k * (1.5 * k)]
        );
        assert_eq!(bt.pnl, equity[4] - 1.0);
        assert_eq!(bt.gross_pnl, 1.5 * 0.75 * 1.5 - 1.0);
        assert_eq!(bt.costs, Costs { fees: 0.0, slippage: 0.0, spread: 4.0 / 16.0 });
        assert_eq!(bt.max_drawdown, 1.0 - (0.75 * k) * k);
        assert_eq!(bt.hit_rate, 2.0 / 3.0);
        assert_eq!(bt.trades, 4, "in, out, short, and the final close-out");
        assert_eq!(bt.bars, 5);
        assert_eq!(bt.exposure, 0.75, "held three of four minutes");
        assert_eq!(bt.avg_holding_hours, 1.5 / 60.0, "runs of two minutes and one");
    }

    #[test]
    fn a_market_that_does_not_tick_still_holds_its_share() {
        // A ticks every minute and gains 50% each time; B ticks every two minutes, flat.
        // Both long, no costs. A true 50/50 portfolio gains 25% a minute.
        let a = leg((0..5).map(|i| i * MINUTE).collect(), vec![1.0, 1.5, 2.25, 3.375, 5.0625], vec![1.0; 5], 0.0);
        let b = leg(vec![0, 2 * MINUTE, 4 * MINUTE], vec![1.0; 3], vec![1.0; 3], 0.0);
        let bt = simulate(&[a, b], &exec(0));
        assert_eq!(bt.bars, 5);
        assert_eq!(bt.pnl, 1.25f64.powi(4) - 1.0);
    }

    #[test]
    fn irregular_unaligned_ticks_share_bars_at_equal_weight() {
        // A ticks at 0, 1, 2, 5 and 5.5 minutes, gaining 50% each time; B at 0.5, 2.5 and
        // 4.5 minutes, flat. The median gap is two minutes, so bars are two minutes long:
        // A's gains land in bars 0, 1 and twice in 2; each counts at half weight.
        let a = leg(
            vec![0, MINUTE, 2 * MINUTE, 5 * MINUTE, 11 * MINUTE / 2],
            vec![1.0, 1.5, 2.25, 3.375, 5.0625],
            vec![1.0; 5],
            0.0,
        );
        let b = leg(vec![MINUTE / 2, 5 * MINUTE / 2, 9 * MINUTE / 2], vec![1.0; 3], vec![1.0; 3], 0.0);
        let bt = simulate(&[a, b], &exec(0));
        assert_eq!(bt.bar_ms, 2 * MINUTE);
        assert_eq!(bt.equity.iter().map(|e| e.1).collect::<Vec<_>>(), [1.25, 1.5625, 1.5625 * 1.625]);
        assert_eq!(bt.pnl, 1.5625 * 1.625 - 1.0);
    }

    #[test]
    fn a_market_counts_only_while_it_trades() {
        // A gains 50% a minute throughout; B, flat, trades only from minute 2 on. Until B
        // starts A holds the whole equity, then half of it.
        let a = leg((0..5).map(|i| i * MINUTE).collect(), vec![1.0, 1.5, 2.25, 3.375, 5.0625], vec![1.0; 5], 0.0);
        let b = leg(vec![2 * MINUTE, 3 * MINUTE, 4 * MINUTE], vec![1.0; 3], vec![1.0; 3], 0.0);
        let bt = simulate(&[a, b], &exec(0));
        assert_eq!(bt.equity.iter().map(|e| e.1).collect::<Vec<_>>(), [1.0, 1.5, 1.875, 2.34375, 2.9296875]);
        assert_eq!(bt.exposure, 1.0, "fully invested throughout");
    }

    #[test]
    fn a_market_that_stops_trading_hands_back_its_share() {
        // B, flat, trades only until minute 2; from then on A holds the whole equity.
        let a = leg((0..5).map(|i| i * MINUTE).collect(), vec![1.0, 1.5, 2.25, 3.375, 5.0625], vec![1.0; 5], 0.0);
        let b = leg(vec![0, MINUTE, 2 * MINUTE], vec![1.0; 3], vec![1.0; 3], 0.0);
        let bt = simulate(&[a, b], &exec(0));
        assert_eq!(bt.equity.iter().map(|e| e.1).collect::<Vec<_>>(), [1.0, 1.25, 1.5625, 2.34375, 3.515625]);
    }

    #[test]
    fn a_delay_trades_the_decision_at_the_next_tick() {
        // The signal calls the first move; acting one tick late it catches the second.
        let mids = vec![1.0, 2.0, 1.0, 1.0];
        let target = vec![1.0, 0.0, 0.0, 0.0];
        let ts: Vec<i64> = (0..4).map(|i| i * MINUTE).collect();
        let now = simulate(&[leg(ts.clone(), mids.clone(), target.clone(), 0.0)], &exec(0));
        let late = simulate(&[leg(ts, mids, target, 0.0)], &exec(1));
        assert_eq!(now.pnl, 1.0);
        assert_eq!(late.pnl, -0.5);
    }

    #[test]
    fn a_position_open_at_the_end_pays_to_close() {
        let l = leg(vec![0, MINUTE], vec![1.0, 1.0], vec![1.0, 1.0], 50.0);
        let bt = simulate(&[l], &exec(0));
        assert_eq!(bt.trades, 2);
        assert!((bt.costs.spread - 0.01).abs() < 1e-15, "{:?}", bt.costs);
    }

    #[test]
    fn annualisation_counts_the_bars_that_trade() {
        // Eight hours of minute bars a day, for twenty days: a third of the clock.
        let ts: Vec<i64> = (0..20).flat_map(|d| (0..480).map(move |m| d * 86_400_000 + m * MINUTE)).collect();
        let n = ts.len();
        let mid: Vec<f64> = (0..n).map(|i| 100.0 + (i % 7) as f64).collect();
        let bt = simulate(&[leg(ts, mid, vec![1.0; n], 0.0)], &exec(0));
        let around_the_clock = 365.25 * 24.0 * 60.0;
        let ratio = bt.bars_per_year / around_the_clock;
        assert!((ratio - 1.0 / 3.0).abs() < 0.02, "{ratio}");
        assert!(bt.sharpe_ci95[0] < bt.sharpe && bt.sharpe < bt.sharpe_ci95[1]);
    }
}
