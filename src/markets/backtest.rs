//! Turning positions into PnL: per-market legs, costs on every change of position, an
//! equal-weight portfolio, and the usual metrics.

use std::collections::BTreeMap;

/// One market's trading: at bar `i` the strategy holds `positions[i]` (−1, 0 or 1) over the
/// simple return `returns[i]` to the next tick. Changing position by one unit at bar `i`
/// costs `costs_bps[i]` of notional (fees, slippage, half the bid/ask spread).
#[derive(Debug, Clone)]
pub struct Leg {
    pub ts: Vec<i64>,
    pub positions: Vec<f64>,
    pub returns: Vec<f64>,
    pub costs_bps: Vec<f64>,
}

/// What a backtest found.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Backtest {
    /// Final equity − 1, starting from 1.0 (compounded portfolio returns).
    pub pnl: f64,
    /// Mean over standard deviation of bar returns, annualised assuming trading around the
    /// clock (365 × 24 h) at the median bar length.
    pub sharpe: f64,
    pub max_drawdown: f64,
    /// Of market-bars with a position, the share whose return (before costs) had its sign.
    pub hit_rate: f64,
    /// Mean absolute change of position per market-bar.
    pub turnover: f64,
    pub bars: usize,
    pub trades: usize,
    /// (bar start, equity) after each bar.
    #[serde(skip)]
    pub equity: Vec<(i64, f64)>,
}

/// Runs every leg and combines them into an equal-weight portfolio on a common bar grid:
/// bars as long as the median gap between ticks; a market's returns within one bar are
/// compounded, and the bar's portfolio return is the mean over the markets trading in it.
/// (Markets whose ticks fall at different instants still share bars.)
pub fn simulate(legs: &[Leg]) -> Backtest {
    let bar_ms = median_gap(legs).max(1);
    let mut by_bar: BTreeMap<i64, (f64, usize)> = BTreeMap::new();
    let (mut held, mut hits, mut trades, mut turnover, mut market_bars) = (0usize, 0usize, 0usize, 0.0, 0usize);
    for leg in legs {
        let mut previous = 0.0;
        let mut bars: BTreeMap<i64, f64> = BTreeMap::new();
        for i in 0..leg.ts.len() {
            let position = leg.positions[i];
            let change = (position - previous).abs();
            let pnl = position * leg.returns[i] - change * leg.costs_bps[i] / 1e4;
            let growth = bars.entry(leg.ts[i].div_euclid(bar_ms)).or_insert(1.0);
            *growth *= 1.0 + pnl;
            turnover += change;
            market_bars += 1;
            if change > 0.0 {
                trades += 1;
            }
            if position != 0.0 {
                held += 1;
                if position * leg.returns[i] > 0.0 {
                    hits += 1;
                }
            }
            previous = position;
        }
        for (bar, growth) in bars {
            let slot = by_bar.entry(bar).or_insert((0.0, 0));
            slot.0 += growth - 1.0;
            slot.1 += 1;
        }
    }
    let returns: Vec<(i64, f64)> = by_bar.into_iter().map(|(bar, (sum, n))| (bar * bar_ms, sum / n as f64)).collect();
    let mut equity = Vec::with_capacity(returns.len());
    let (mut value, mut peak, mut max_drawdown) = (1.0f64, 1.0f64, 0.0f64);
    for &(ts, r) in &returns {
        value *= 1.0 + r;
        peak = peak.max(value);
        max_drawdown = max_drawdown.max((peak - value) / peak);
        equity.push((ts, value));
    }
    Backtest {
        pnl: value - 1.0,
        sharpe: sharpe(&returns, bar_ms),
        max_drawdown,
        hit_rate: if held > 0 { hits as f64 / held as f64 } else { 0.0 },
        turnover: if market_bars > 0 { turnover / market_bars as f64 } else { 0.0 },
        bars: returns.len(),
        trades,
        equity,
    }
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

fn sharpe(returns: &[(i64, f64)], bar_ms: i64) -> f64 {
    if returns.len() < 2 {
        return 0.0;
    }
    let n = returns.len() as f64;
    let mean = returns.iter().map(|r| r.1).sum::<f64>() / n;
    let sd = (returns.iter().map(|r| (r.1 - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
    let bars_per_year = 365.0 * 86_400_000.0 / bar_ms as f64;
    if sd > 0.0 { mean / sd * bars_per_year.sqrt() } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pnl_on_a_hand_computed_series_matches_exactly() {
        // Long, long, flat, short over returns +50%, −25%, +12.5%, −50%; 625 bps (1/16) per
        // change of position. Every number is a binary fraction, so equality is exact.
        let leg = Leg {
            ts: vec![0, 60_000, 120_000, 180_000],
            positions: vec![1.0, 1.0, 0.0, -1.0],
            returns: vec![0.5, -0.25, 0.125, -0.5],
            costs_bps: vec![625.0; 4],
        };
        let bt = simulate(&[leg]);
        // Bar returns: 0.5 − 1/16; −0.25; 0 − 1/16; +0.5 − 1/16.
        let equity: Vec<f64> = bt.equity.iter().map(|e| e.1).collect();
        assert_eq!(equity, [1.4375, 1.078125, 1.0107421875, 1.45294189453125]);
        assert_eq!(bt.pnl, 0.45294189453125);
        assert_eq!(bt.max_drawdown, 0.296875); // from 1.4375 down to 1.0107421875
        assert_eq!(bt.hit_rate, 2.0 / 3.0);
        assert_eq!(bt.trades, 3);
        assert_eq!(bt.turnover, 0.75);
        assert_eq!(bt.bars, 4);
    }

    #[test]
    fn markets_are_weighted_equally_per_bar() {
        let leg = |r: f64| Leg { ts: vec![0], positions: vec![1.0], returns: vec![r], costs_bps: vec![0.0] };
        let bt = simulate(&[leg(0.5), leg(-0.25)]);
        assert_eq!(bt.pnl, 0.125);
    }

    #[test]
    fn markets_ticking_at_different_instants_share_bars() {
        // A ticks on the minute, B on the half minute: two markets per bar, not one per tick.
        let leg = |offset: i64, r: f64| Leg {
            ts: vec![offset, 60_000 + offset, 120_000 + offset],
            positions: vec![1.0; 3],
            returns: vec![r; 3],
            costs_bps: vec![0.0; 3],
        };
        let bt = simulate(&[leg(0, 0.5), leg(30_000, -0.25)]);
        assert_eq!(bt.bars, 3);
        assert_eq!(bt.equity.iter().map(|e| e.1).collect::<Vec<_>>(), [1.125, 1.265625, 1.423828125]);
    }
}
