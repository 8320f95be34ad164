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
const CATEGORIES: [(&str, &str); 4] = [("equity", "EQ"), ("fx", "FX"), ("commodity", "CM"), ("crypto", "CR")];

fn rng_for(seed: u64, stream: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream);
    rng
}

/// `n` markets, sorted by id (as every table of the pipeline is).
pub fn generate_markets(seed: u64, n: usize) -> Vec<Market> {
    let mut rng = rng_for(seed, 0);
    let mut markets: Vec<Market> = (0..n)
        .map(|i| {
            let (category, code) = CATEGORIES[i % CATEGORIES.len()];
            let venue = VENUES[rng.gen_range(0..VENUES.len())];
            Market {
                id: format!("{code}-{i:04}"),
                venue: venue.to_string(),
                instrument: format!("{code}{:03}.{}", i, &venue[1..3]),
                category: category.to_string(),
                listed_at: START_MS - rng.gen_range(30..2000) * 86_400_000,
                tick_size: [0.01, 0.005, 0.0001, 0.1][i % 4],
                fee_bps: [0.5, 1.0, 2.0][rng.gen_range(0..3)],
            }
        })
        .collect();
    markets.sort_by(|a, b| a.id.cmp(&b.id));
    markets
}

/// Ticks for every market, generated in parallel; each market has its own random stream,
/// so the result does not depend on the number of threads.
pub fn generate_all_ticks(seed: u64, markets: &[Market], n: usize) -> Vec<Ticks> {
    markets.par_iter().enumerate().map(|(i, m)| generate_ticks(seed, i as u64 + 1, m.tick_size, n)).collect()
}

fn generate_ticks(seed: u64, stream: u64, tick_size: f64, n: usize) -> Ticks {
    let mut rng = rng_for(seed, stream);
    let normal = |rng: &mut ChaCha8Rng| -> f64 { StandardNormal.sample(rng) };
    let sigma0: f64 = 0.0008;
    let (alpha, beta) = (0.08, 0.90);
    let omega = sigma0 * sigma0 * (1.0 - alpha - beta);
    let start_price = 20.0 + rng.gen_range(0.0..180.0) * if tick_size < 0.001 { 0.01 } else { 1.0 };
    let mut log_p = f64::ln(start_price);
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
            drift = if trending { rng.gen_range(-0.00004..0.00004) } else { 0.0 };
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
        let volume = (4.6 + 0.5 * normal(&mut rng)).exp() * burst * (1.0 + 200.0 * r.abs());
        let price = log_p.exp();
        // A liquid market's quote: about 1 bp plus a little more when volatile.
        let ticks_wide = (price * (0.00008 + 0.08 * sigma) / tick_size).ceil().max(1.0);
        let bid = ((price / tick_size) - ticks_wide / 2.0).floor() * tick_size;
        let ask = bid + ticks_wide * tick_size;
        ticks.ts.push(START_MS + i as i64 * BAR_MS);
        ticks.price.push(price);
        ticks.volume.push(volume.round());
        ticks.bid.push(bid);
        ticks.ask.push(ask);
        prev_r = r;
    }
    ticks
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
}
