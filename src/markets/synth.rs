//! A deterministic synthetic market: a seeded universe of instruments and, for each, a
//! price series with structure a model can find (momentum and mean-reversion regimes,
//! volatility clustering, volume bursts).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use rayon::prelude::*;

/// 2026-01-05T00:00:00Z: where every synthetic series starts.
pub const START_MS: i64 = 1_767_571_200_000;
/// One bar a minute.
pub const BAR_MS: i64 = 60_000;

#[derive(Debug, Clone, PartialEq)]
pub struct Market {
    pub id: String,
    pub venue: String,
    pub instrument: String,
    pub category: String,
    pub listed_at: i64,
    pub tick_size: f64,
    pub fee_bps: f64,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Ticks {
    pub ts: Vec<i64>,
    pub price: Vec<f64>,
    pub volume: Vec<f64>,
    pub bid: Vec<f64>,
    pub ask: Vec<f64>,
}

const VENUES: [&str; 3] = ["XNYS", "XLON", "XTKS"];

/// What makes an asset class look like itself: annual volatility, price level, tick size,
/// typical quoted spread and trading fee. Rough figures for liquid instruments.
struct AssetClass {
    category: &'static str,
    code: &'static str,
    annual_vol: f64,
    price: std::ops::Range<f64>,
    tick_size: f64,
    spread_bps: f64,
    fee_bps: f64,
}

const CLASSES: [AssetClass; 4] = [
    AssetClass {
        category: "equity",
        code: "EQ",
        annual_vol: 0.25,
        price: 20.0..300.0,
        tick_size: 0.01,
        spread_bps: 2.0,
        fee_bps: 0.5,
    },
    AssetClass {
        category: "fx",
        code: "FX",
        annual_vol: 0.08,
        price: 0.8..1.6,
        tick_size: 0.00001,
        spread_bps: 0.5,
        fee_bps: 0.2,
    },
    AssetClass {
        category: "commodity",
        code: "CM",
        annual_vol: 0.30,
        price: 20.0..120.0,
        tick_size: 0.01,
        spread_bps: 3.0,
        fee_bps: 1.0,
    },
    AssetClass {
        category: "crypto",
        code: "CR",
        annual_vol: 0.70,
        price: 1_000.0..60_000.0,
        tick_size: 0.01,
        spread_bps: 2.0,
        fee_bps: 2.0,
    },
];

/// Minutes in a year: synthetic markets trade around the clock, one bar a minute.
const BARS_PER_YEAR: f64 = 365.0 * 24.0 * 60.0;

fn rng_for(seed: u64, stream: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream);
    rng
}

fn class_of(category: &str) -> &'static AssetClass {
    CLASSES.iter().find(|c| c.category == category).unwrap_or(&CLASSES[0])
}

/// `n` markets, sorted by id (as every table of the pipeline is).
pub fn generate_markets(seed: u64, n: usize) -> Vec<Market> {
    let mut rng = rng_for(seed, 0);
    let mut markets: Vec<Market> = (0..n)
        .map(|i| {
            let class = &CLASSES[i % CLASSES.len()];
            let venue = VENUES[rng.gen_range(0..VENUES.len())];
            Market {
                id: format!("{}-{i:04}", class.code),
                venue: venue.to_string(),
                instrument: format!("{}{:03}.{}", class.code, i, &venue[1..3]),
                category: class.category.to_string(),
                listed_at: START_MS - rng.gen_range(30..2000) * 86_400_000,
                tick_size: class.tick_size,
                fee_bps: class.fee_bps,
            }
        })
        .collect();
    markets.sort_by(|a, b| a.id.cmp(&b.id));
    markets
}

/// Ticks for every market, generated in parallel; each market has its own random stream,
/// so the result does not depend on the number of threads.
pub fn generate_all_ticks(seed: u64, markets: &[Market], n: usize) -> Vec<Ticks> {
    markets
        .par_iter()
        .enumerate()
        .map(|(i, m)| generate_ticks(seed, i as u64 + 1, class_of(&m.category), m.tick_size, n))
        .collect()
}

/// One market: a latent mid price with structure a model can find (trending and
/// mean-reverting regimes, momentum, volatility clustering, volume bursts), quoted around
/// the mid on the tick grid, and a last trade at the bid or the ask (bid-ask bounce).
fn generate_ticks(seed: u64, stream: u64, class: &AssetClass, tick_size: f64, n: usize) -> Ticks {
    let mut rng = rng_for(seed, stream);
    let normal = |rng: &mut ChaCha8Rng| -> f64 { StandardNormal.sample(rng) };
    let sigma0 = class.annual_vol / BARS_PER_YEAR.sqrt();
    let (alpha, beta) = (0.08, 0.90);
    let omega = sigma0 * sigma0 * (1.0 - alpha - beta);
    let mut log_p = rng.gen_range(class.price.clone()).ln();
    let mut slow_mean = log_p;
    let mut trending = true;
    let mut drift = 0.0;
    let mut var = sigma0 * sigma0;
    let mut prev_r = 0.0;
    let mut burst = 1.0;
    let mut ticks = Ticks {
        ts: Vec::with_capacity(n),
        price: Vec::with_capacity(n),
        volume: Vec::with_capacity(n),
        bid: Vec::with_capacity(n),
        ask: Vec::with_capacity(n),
    };
    for i in 0..n {
        if rng.gen_bool(0.002) {
            trending = !trending;
            drift = if trending { rng.gen_range(-0.05..0.05) * sigma0 } else { 0.0 };
        }
        let sigma = var.sqrt();
        // Momentum, stronger in the trending regime, and a pull back towards a slow average:
        // structure a linear model on returns and z-scores can find, under much noise.
        let momentum = if trending { 0.30 } else { 0.10 };
        let predictable = drift + momentum * prev_r - 0.02 * (log_p - slow_mean);
        let r = predictable + sigma * normal(&mut rng);
        var = omega + alpha * r * r + beta * var;
        log_p += r;
        slow_mean = 0.99 * slow_mean + 0.01 * log_p;
        burst = if rng.gen_bool(0.003) { 4.0 + 4.0 * rng.gen_range(0.0..1.0) } else { 1.0 + (burst - 1.0) * 0.92 };
        let volume = (4.6 + 0.5 * normal(&mut rng)).exp() * burst * (1.0 + r.abs() / sigma0);
        // The quote widens when the market is volatile, and is at least one tick wide.
        let mid = log_p.exp();
        let half_spread = mid * class.spread_bps / 2e4 * (0.5 + 0.5 * sigma / sigma0);
        let bid = ((mid - half_spread) / tick_size).floor() * tick_size;
        let ask = (((mid + half_spread) / tick_size).ceil() * tick_size).max(bid + tick_size);
        // Buyers lift the ask a little more often after an up move.
        let buy = rng.gen_bool(if r > 0.0 { 0.6 } else { 0.4 });
        ticks.ts.push(START_MS + i as i64 * BAR_MS);
        ticks.price.push(if buy { ask } else { bid });
        ticks.volume.push(volume.round());
        ticks.bid.push(bid);
        ticks.ask.push(ask);
        prev_r = r;
    }
    ticks
}

/// The annualised volatility of a series of prices sampled once a minute.
#[cfg(test)]
fn annual_vol(prices: &[f64]) -> f64 {
    let r: Vec<f64> = prices.windows(2).map(|w| (w[1] / w[0]).ln()).collect();
    let mean = r.iter().sum::<f64>() / r.len() as f64;
    (r.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (r.len() - 1) as f64 * BARS_PER_YEAR).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_market_and_another_seed_does_not() {
        let a = generate_markets(7, 5);
        assert_eq!(a, generate_markets(7, 5));
        assert_ne!(a, generate_markets(8, 5));
        let ticks = generate_all_ticks(7, &a, 100);
        assert_eq!(ticks, generate_all_ticks(7, &a, 100));
        assert!(ticks.iter().all(|t| t.bid.iter().zip(&t.ask).all(|(b, a)| b < a)));
    }

    #[test]
    fn trades_fall_within_the_quote_and_each_class_has_its_own_volatility() {
        let markets = generate_markets(11, 4);
        let ticks = generate_all_ticks(11, &markets, 20_000);
        for (m, t) in markets.iter().zip(&ticks) {
            for i in 0..t.price.len() {
                assert!(t.bid[i] <= t.price[i] && t.price[i] <= t.ask[i], "{} tick {i}", m.id);
            }
            let mids: Vec<f64> = t.bid.iter().zip(&t.ask).map(|(b, a)| (b + a) / 2.0).collect();
            let vol = annual_vol(&mids);
            let target = class_of(&m.category).annual_vol;
            assert!(vol > target * 0.6 && vol < target * 1.8, "{}: {vol:.3} a year, the class's is {target}", m.id);
            let spread_bps = t.bid.iter().zip(&t.ask).map(|(b, a)| (a - b) / ((a + b) / 2.0) * 1e4).sum::<f64>()
                / t.bid.len() as f64;
            assert!(spread_bps < 6.0, "{}: mean spread {spread_bps:.2} bp", m.id);
        }
    }
}
