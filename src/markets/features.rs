//! Per-market rolling features, strictly causal: the row for tick `t` uses ticks `..=t` only.

/// Feature columns, in the order the model uses them.
pub const FEATURES: [&str; 8] =
    ["ret_1", "ret_5", "ret_20", "vol_20", "zscore_20", "volume_imbalance", "spread_bps", "time_of_day"];

const WINDOW: usize = 20;
const DAY_MS: i64 = 86_400_000;

/// One market's ticks, in time order.
pub struct Series<'a> {
    pub ts: &'a [i64],
    pub price: &'a [f64],
    pub volume: &'a [f64],
    pub bid: &'a [f64],
    pub ask: &'a [f64],
}

/// Features of one market: `columns[f][t]` is feature `FEATURES[f]` at tick `t`; NaN where
/// the window is not yet full.
pub fn compute_features(s: &Series<'_>) -> [Vec<f64>; FEATURES.len()] {
    let mut cols: [Vec<f64>; FEATURES.len()] = std::array::from_fn(|_| vec![0.0; s.price.len()]);
    let mut out: Vec<&mut [f64]> = cols.iter_mut().map(Vec::as_mut_slice).collect();
    compute_into(s, &mut out);
    cols
}

/// `compute_features`, written into `out[f][t]` (each slice as long as the series), so that
/// a table's columns can be filled in place, market by market.
pub fn compute_into(s: &Series<'_>, out: &mut [&mut [f64]]) {
    let n = s.price.len();
    let log_ret = |t: usize, k: usize| if t >= k { (s.price[t] / s.price[t - k]).ln() } else { f64::NAN };
    // Per-tick terms computed once; each window below reads only ticks at or before its end.
    let ret_1: Vec<f64> = (0..n).map(|t| log_ret(t, 1)).collect();
    let signed_volume: Vec<f64> =
        (0..n).map(|t| if t == 0 { 0.0 } else { sign(s.price[t] - s.price[t - 1]) * s.volume[t] }).collect();
    for t in 0..n {
        let (vol, zscore, imbalance) = if t >= WINDOW {
            let (mean, sd) = mean_sd(window(s.price, t));
            let total = sum(window(s.volume, t));
            let signed = sum(window(&signed_volume, t));
            let z = if sd > 0.0 { (s.price[t] - mean) / sd } else { 0.0 };
            (mean_sd(window(&ret_1, t)).1, z, if total > 0.0 { signed / total } else { 0.0 })
        } else {
            (f64::NAN, f64::NAN, f64::NAN)
        };
        let mid = (s.bid[t] + s.ask[t]) / 2.0;
        out[0][t] = ret_1[t];
        out[1][t] = log_ret(t, 5);
        out[2][t] = log_ret(t, WINDOW);
        out[3][t] = vol;
        out[4][t] = zscore;
        out[5][t] = imbalance;
        out[6][t] = if mid > 0.0 { (s.ask[t] - s.bid[t]) / mid * 1e4 } else { f64::NAN };
        out[7][t] = s.ts[t].rem_euclid(DAY_MS) as f64 / DAY_MS as f64;
    }
}

/// −1, 0 or 1. Unlike `f64::signum`, zero is zero: in the tick rule no move is neither a
/// buy nor a sell, and in a strategy no signal is no position.
pub(super) fn sign(change: f64) -> f64 {
    if change > 0.0 {
        1.0
    } else if change < 0.0 {
        -1.0
    } else {
        0.0
    }
}

/// The `WINDOW` values ending at `t`, as a fixed-size array: the loops below then have a
/// known length, which the compiler unrolls and vectorises.
fn window(values: &[f64], t: usize) -> &[f64; WINDOW] {
    values[t + 1 - WINDOW..=t].try_into().expect("t >= WINDOW - 1")
}

/// A sum in four interleaved lanes (vectorisable, unlike one running total). The order is
/// fixed, so the result is the same on every run and machine.
fn sum(values: &[f64; WINDOW]) -> f64 {
    let mut lanes = [0.0; 4];
    for chunk in values.chunks_exact(4) {
        for (lane, v) in lanes.iter_mut().zip(chunk) {
            *lane += v;
        }
    }
    (lanes[0] + lanes[1]) + (lanes[2] + lanes[3])
}

/// Mean and sample standard deviation, two-pass (no cancellation on price levels).
fn mean_sd(values: &[f64; WINDOW]) -> (f64, f64) {
    let mean = sum(values) / WINDOW as f64;
    let deviations: [f64; WINDOW] = std::array::from_fn(|i| (values[i] - mean) * (values[i] - mean));
    (mean, (sum(&deviations) / (WINDOW - 1) as f64).sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::markets::synth::{generate_all_ticks, generate_markets};

    #[test]
    fn perturbing_ticks_after_t_changes_no_feature_at_or_before_t() {
        let markets = generate_markets(3, 1);
        let ticks = &generate_all_ticks(3, &markets, 300)[0];
        let series = |t: &crate::markets::synth::Ticks| -> [Vec<f64>; FEATURES.len()] {
            compute_features(&Series { ts: &t.ts, price: &t.price, volume: &t.volume, bid: &t.bid, ask: &t.ask })
        };
        let original = series(ticks);
        for cut in [0, 19, 20, 150, 298] {
            let mut changed = ticks.clone();
            for i in cut + 1..changed.price.len() {
                changed.price[i] *= 1.5;
                changed.volume[i] += 1000.0;
                changed.bid[i] -= 1.0;
                changed.ask[i] += 1.0;
            }
            let after = series(&changed);
            for (f, name) in FEATURES.iter().enumerate() {
                for t in 0..=cut {
                    let (a, b) = (original[f][t], after[f][t]);
                    assert!(
                        a.to_bits() == b.to_bits(),
                        "{name} at {t} changed when ticks after {cut} moved: {a} -> {b}"
                    );
                }
            }
        }
    }

    #[test]
    fn windows_fill_after_twenty_ticks() {
        let markets = generate_markets(1, 1);
        let t = &generate_all_ticks(1, &markets, 40)[0];
        let cols =
            compute_features(&Series { ts: &t.ts, price: &t.price, volume: &t.volume, bid: &t.bid, ask: &t.ask });
        assert!(cols[0][0].is_nan() && cols[0][1].is_finite());
        assert!(cols[3][19].is_nan() && cols[3][20].is_finite());
        assert!((cols[2][25] - (t.price[25] / t.price[5]).ln()).abs() < 1e-15);
    }
}
