//! Reading real exports: CSV files of markets and ticks, checked row by row with errors that
//! name the file, line and column.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use super::StageError;
use super::synth::{Market, Ticks};

pub const MARKET_COLUMNS: [&str; 7] =
    ["market_id", "venue", "instrument", "category", "listed_at", "tick_size", "fee_bps"];
/// One tick as read: (ts, price, volume, bid, ask).
pub type TickRow = (i64, f64, f64, f64, f64);

pub const TICK_COLUMNS: [&str; 6] = ["market_id", "ts", "price", "volume", "bid", "ask"];

/// A CSV file whose header has been checked: the index of each expected column.
struct Csv {
    path: String,
    reader: csv::Reader<std::fs::File>,
    index: HashMap<&'static str, usize>,
}

impl Csv {
    fn open(path: &Path, columns: &[&'static str]) -> Result<Csv, StageError> {
        let reader = csv::ReaderBuilder::new()
            .trim(csv::Trim::All)
            .from_path(path)
            .map_err(|e| StageError::msg(format!("cannot read {}: {e}", path.display())))?;
        let mut csv = Csv { path: path.display().to_string(), reader, index: HashMap::new() };
        let header = csv
            .reader
            .headers()
            .map_err(|e| StageError::msg(format!("{}: cannot read the header: {e}", csv.path)))?
            .clone();
        for &column in columns {
            match header.iter().position(|h| h == column) {
                Some(i) => {
                    csv.index.insert(column, i);
                }
                None => {
                    return Err(StageError::msg(format!(
                        "{}: missing column `{column}` (the header has: {}); expected columns: {}",
                        csv.path,
                        header.iter().collect::<Vec<_>>().join(", "),
                        columns.join(", ")
                    )));
                }
            }
        }
        Ok(csv)
    }

    /// Calls `row` for each record with a getter for its fields.
    fn for_each(&mut self, mut row: impl FnMut(&Field<'_>) -> Result<(), StageError>) -> Result<(), StageError> {
        for record in self.reader.records() {
            let record = record.map_err(|e| StageError::msg(format!("{}: {e}", self.path)))?;
            let line = record.position().map_or(0, |p| p.line());
            row(&Field { path: &self.path, record: &record, index: &self.index, line })?;
        }
        Ok(())
    }
}

struct Field<'a> {
    path: &'a str,
    record: &'a csv::StringRecord,
    index: &'a HashMap<&'static str, usize>,
    line: u64,
}

impl Field<'_> {
    fn bad(&self, column: &str, value: &str, expected: &str) -> StageError {
        StageError::msg(format!(
            "{} line {}, column `{column}`: `{value}` is not {expected}; fix the file and build again",
            self.path, self.line
        ))
    }

    fn text(&self, column: &'static str) -> Result<String, StageError> {
        let value = self.record.get(self.index[column]).unwrap_or("");
        if value.is_empty() { Err(self.bad(column, value, "a non-empty value")) } else { Ok(value.to_string()) }
    }

    fn number(&self, column: &'static str, check: impl Fn(f64) -> bool, expected: &str) -> Result<f64, StageError> {
        let value = self.record.get(self.index[column]).unwrap_or("");
        value
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite() && check(*v))
            .ok_or_else(|| self.bad(column, value, expected))
    }

    /// Milliseconds since the epoch, or an RFC 3339 time.
    fn time_ms(&self, column: &'static str) -> Result<i64, StageError> {
        let value = self.record.get(self.index[column]).unwrap_or("");
        if let Ok(ms) = value.parse::<i64>() {
            return match implausible_time(ms) {
                Some(problem) => {
                    Err(StageError::msg(format!("{} line {}, column `{column}`: {problem}", self.path, self.line)))
                }
                None => Ok(ms),
            };
        }
        humantime::parse_rfc3339_weak(value)
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_millis() as i64)
            .ok_or_else(|| self.bad(column, value, "a time (milliseconds since 1970 or RFC 3339)"))
    }
}

pub fn read_markets(path: &Path) -> Result<Vec<Market>, StageError> {
    let mut csv = Csv::open(path, &MARKET_COLUMNS)?;
    let mut markets: Vec<Market> = Vec::new();
    csv.for_each(|f| {
        markets.push(Market {
            id: f.text("market_id")?,
            venue: f.text("venue")?,
            instrument: f.text("instrument")?,
            category: f.text("category")?,
            listed_at: f.time_ms("listed_at")?,
            tick_size: f.number("tick_size", |v| v > 0.0, "a positive number")?,
            fee_bps: f.number("fee_bps", |v| v >= 0.0, "a non-negative number")?,
        });
        Ok(())
    })?;
    sorted_unique_markets(path, markets)
}

/// Markets sorted by id; an id listed twice is an error.
pub fn sorted_unique_markets(path: &Path, mut markets: Vec<Market>) -> Result<Vec<Market>, StageError> {
    markets.sort_by(|a, b| a.id.cmp(&b.id));
    if let Some(dup) = markets.windows(2).find(|w| w[0].id == w[1].id) {
        return Err(StageError::msg(format!("{}: market `{}` is listed twice", path.display(), dup[0].id)));
    }
    Ok(markets)
}

/// Reads a `source` export by its extension: `.csv`, or `.parquet` / `.pq`.
pub fn read_markets_export(path: &Path) -> Result<Vec<Market>, StageError> {
    match export_kind(path)? {
        Export::Csv => read_markets(path),
        Export::Parquet => super::parquet_ingest::read_markets(path),
    }
}

/// Ticks per market in the order of `markets`, and the number of duplicate rows dropped.
pub fn read_ticks_export(path: &Path, markets: &[Market]) -> Result<(Vec<Ticks>, usize), StageError> {
    match export_kind(path)? {
        Export::Csv => read_ticks(path, markets),
        Export::Parquet => super::parquet_ingest::read_ticks(path, markets),
    }
}

enum Export {
    Csv,
    Parquet,
}

fn export_kind(path: &Path) -> Result<Export, StageError> {
    match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
        Some("csv") => Ok(Export::Csv),
        Some("parquet" | "pq") => Ok(Export::Parquet),
        _ => Err(StageError::msg(format!("{}: a `source` must be a .csv or .parquet file", path.display()))),
    }
}

/// Ticks per market (sorted by id), each sorted by time; every market must be known.
pub fn read_ticks(path: &Path, markets: &[Market]) -> Result<(Vec<Ticks>, usize), StageError> {
    let mut csv = Csv::open(path, &TICK_COLUMNS)?;
    let mut by_market: BTreeMap<String, Vec<TickRow>> = markets.iter().map(|m| (m.id.clone(), Vec::new())).collect();
    csv.for_each(|f| {
        let id = f.text("market_id")?;
        let row = (
            f.time_ms("ts")?,
            f.number("price", |v| v > 0.0, "a positive number")?,
            f.number("volume", |v| v >= 0.0, "a non-negative number")?,
            f.number("bid", |v| v > 0.0, "a positive number")?,
            f.number("ask", |v| v > 0.0, "a positive number")?,
        );
        if row.3 > row.4 {
            return Err(f.bad("bid", &row.3.to_string(), "at most the ask"));
        }
        match by_market.get_mut(&id) {
            Some(rows) => rows.push(row),
            None => return Err(f.bad("market_id", &id, "a market listed by the markets stage")),
        }
        Ok(())
    })?;
    Ok(group_ticks(markets, by_market))
}

/// Each market's ticks sorted by time, in the order of `markets`, and how many rows were
/// dropped for repeating a market's time (the first row of a time is kept).
pub fn group_ticks(markets: &[Market], mut by_market: BTreeMap<String, Vec<TickRow>>) -> (Vec<Ticks>, usize) {
    let mut dropped = 0;
    let ticks = markets
        .iter()
        .map(|m| {
            let mut rows = by_market.remove(&m.id).unwrap_or_default();
            rows.sort_by_key(|r| r.0);
            let before = rows.len();
            rows.dedup_by_key(|r| r.0);
            dropped += before - rows.len();
            Ticks {
                ts: rows.iter().map(|r| r.0).collect(),
                price: rows.iter().map(|r| r.1).collect(),
                volume: rows.iter().map(|r| r.2).collect(),
                bid: rows.iter().map(|r| r.3).collect(),
                ask: rows.iter().map(|r| r.4).collect(),
            }
        })
        .collect();
    (ticks, dropped)
}

/// Times before 1973 in milliseconds are far more likely seconds (or microseconds gone
/// wrong): refuse them rather than silently misreading the timeline.
pub const EARLIEST_PLAUSIBLE_MS: i64 = 100_000_000_000;

pub fn implausible_time(ms: i64) -> Option<String> {
    (ms < EARLIEST_PLAUSIBLE_MS)
        .then(|| format!("`{ms}` is before 1973 as milliseconds since 1970; if it counts seconds, multiply by 1000"))
}
