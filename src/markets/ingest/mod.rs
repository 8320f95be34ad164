//! Reading real exports of markets and ticks, CSV or Parquet: one set of row rules, and a
//! reader per format that gives those rules typed fields with errors naming the file, row
//! and column.
//!
//! The rules: every field must parse, and every tick must name a listed market. A tick whose
//! quote is crossed (bid above ask) or missing is dropped and counted, since one bad quote
//! should not fail a million-row file; a file where most quotes are bad still fails. Rows
//! repeating a market's time are merged in file order (last price and quote, summed volume),
//! as a bar would aggregate them, and counted.

mod csv;
mod parquet;
pub mod time;

use std::collections::HashMap;
use std::path::Path;

use self::time::TimeColumn;
use super::StageError;
use super::synth::{Market, Ticks};

pub const MARKET_COLUMNS: [&str; 7] =
    ["market_id", "venue", "instrument", "category", "listed_at", "tick_size", "fee_bps"];
pub const TICK_COLUMNS: [&str; 6] = ["market_id", "ts", "price", "volume", "bid", "ask"];

/// How to read an export, from the stage's params.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// The offset (seconds east of UTC) of times written without one; `None` refuses them.
    pub zone: Option<i64>,
    /// The CSV field separator; detected from the header when not given.
    pub separator: Option<u8>,
}

/// One tick as read.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TickRow {
    pub ts: i64,
    pub price: f64,
    pub volume: f64,
    pub bid: f64,
    pub ask: f64,
}

/// The ticks of an export, and what reading them took out.
#[derive(Debug, Default)]
pub struct TickIngest {
    /// Per market, in the order of the markets given; each sorted by time.
    pub ticks: Vec<Ticks>,
    /// Data rows in the file.
    pub rows: usize,
    /// Rows merged into an earlier row of the same market and time.
    pub merged: usize,
    /// Rows dropped for a crossed or missing quote.
    pub bad_quotes: usize,
    /// The unit of integer times, when the file has them.
    pub ts_unit: Option<time::Unit>,
}

/// One row of an export, whatever its format. Missing values (an empty CSV field, a
/// Parquet null) are `None`; a value of the wrong kind is an error naming the place.
pub(super) trait Row {
    /// Where this row is: `exports/ticks.csv line 6`.
    fn place(&self) -> String;
    fn text(&self, column: &str) -> Result<Option<&str>, StageError>;
    fn number(&self, column: &str) -> Result<Option<f64>, StageError>;
    fn time(&self, column: &str, times: &mut TimeColumn) -> Result<Option<i64>, StageError>;

    fn bad(&self, column: &str, what: &str) -> StageError {
        StageError::msg(format!("{}, column `{column}`: {what}; fix the file and build again", self.place()))
    }
}

fn required<T>(row: &impl Row, column: &str, value: Option<T>) -> Result<T, StageError> {
    value.ok_or_else(|| row.bad(column, "the value is missing"))
}

fn checked(
    row: &impl Row,
    column: &str,
    value: Option<f64>,
    ok: impl Fn(f64) -> bool,
    expected: &str,
) -> Result<f64, StageError> {
    let value = required(row, column, value)?;
    if ok(value) { Ok(value) } else { Err(row.bad(column, &format!("`{value}` is not {expected}"))) }
}

fn market_row(row: &impl Row, listed: &mut TimeColumn) -> Result<Market, StageError> {
    let text = |column: &str| -> Result<String, StageError> { Ok(required(row, column, row.text(column)?)?.into()) };
    Ok(Market {
        id: text("market_id")?,
        venue: text("venue")?,
        instrument: text("instrument")?,
        category: text("category")?,
        listed_at: required(row, "listed_at", row.time("listed_at", listed)?)?,
        tick_size: checked(row, "tick_size", row.number("tick_size")?, |v| v > 0.0, "a positive number")?,
        fee_bps: checked(row, "fee_bps", row.number("fee_bps")?, |v| v >= 0.0, "a non-negative number")?,
    })
}

/// Markets sorted by id; an id listed twice is an error.
fn sorted_unique_markets(path: &Path, mut markets: Vec<Market>) -> Result<Vec<Market>, StageError> {
    markets.sort_by(|a, b| a.id.cmp(&b.id));
    if let Some(dup) = markets.windows(2).find(|w| w[0].id == w[1].id) {
        return Err(StageError::msg(format!("{}: market `{}` is listed twice", path.display(), dup[0].id)));
    }
    Ok(markets)
}

/// Collects tick rows per market, applying the row rules.
struct TickSink<'a> {
    index: HashMap<&'a str, usize>,
    rows: Vec<Vec<TickRow>>,
    ts: TimeColumn,
    read: usize,
    bad_quotes: usize,
    first_bad_quote: Option<String>,
}

impl<'a> TickSink<'a> {
    fn new(markets: &'a [Market], options: Options) -> TickSink<'a> {
        TickSink {
            index: markets.iter().enumerate().map(|(i, m)| (m.id.as_str(), i)).collect(),
            rows: vec![Vec::new(); markets.len()],
            ts: TimeColumn::new(options.zone),
            read: 0,
            bad_quotes: 0,
            first_bad_quote: None,
        }
    }

    fn push(&mut self, row: &impl Row) -> Result<(), StageError> {
        self.read += 1;
        let id = required(row, "market_id", row.text("market_id")?)?;
        let Some(&market) = self.index.get(id) else {
            return Err(row.bad("market_id", &format!("`{id}` is not a market listed by the markets stage")));
        };
        let ts = required(row, "ts", row.time("ts", &mut self.ts)?)?;
        let price = checked(row, "price", row.number("price")?, |v| v > 0.0, "a positive number")?;
        let volume = checked(row, "volume", row.number("volume")?, |v| v >= 0.0, "a non-negative number")?;
        let (bid, ask) = (row.number("bid")?, row.number("ask")?);
        match (bid, ask) {
            (Some(bid), Some(ask)) if bid > 0.0 && ask >= bid => {
                self.rows[market].push(TickRow { ts, price, volume, bid, ask });
            }
            _ => {
                self.bad_quotes += 1;
                if self.first_bad_quote.is_none() {
                    let shown = |v: Option<f64>| v.map_or("missing".to_string(), |v| v.to_string());
                    self.first_bad_quote = Some(format!("{}: bid {}, ask {}", row.place(), shown(bid), shown(ask)));
                }
            }
        }
        Ok(())
    }

    fn finish(self, path: &Path) -> Result<TickIngest, StageError> {
        if self.bad_quotes * 2 > self.read {
            return Err(StageError::msg(format!(
                "{}: {} of {} rows have a crossed or missing quote (the first, {}); a file this broken is refused rather than mostly dropped: check the bid and ask columns",
                path.display(),
                self.bad_quotes,
                self.read,
                self.first_bad_quote.unwrap_or_default()
            )));
        }
        let mut merged = 0;
        let ticks = self
            .rows
            .into_iter()
            .map(|mut rows| {
                // Stable: rows of one time stay in file order, so "last" is the file's last.
                rows.sort_by_key(|r| r.ts);
                let before = rows.len();
                let rows = merge_same_time(rows);
                merged += before - rows.len();
                Ticks {
                    ts: rows.iter().map(|r| r.ts).collect(),
                    price: rows.iter().map(|r| r.price).collect(),
                    volume: rows.iter().map(|r| r.volume).collect(),
                    bid: rows.iter().map(|r| r.bid).collect(),
                    ask: rows.iter().map(|r| r.ask).collect(),
                }
            })
            .collect();
        Ok(TickIngest { ticks, rows: self.read, merged, bad_quotes: self.bad_quotes, ts_unit: self.ts.unit() })
    }
}

/// Folds rows of one time into one: the last price and quote, the summed volume.
fn merge_same_time(rows: Vec<TickRow>) -> Vec<TickRow> {
    let mut out: Vec<TickRow> = Vec::with_capacity(rows.len());
    for row in rows {
        match out.last_mut() {
            Some(last) if last.ts == row.ts => *last = TickRow { volume: last.volume + row.volume, ..row },
            _ => out.push(row),
        }
    }
    out
}

enum Format {
    Csv,
    Parquet,
}

fn format(path: &Path) -> Result<Format, StageError> {
    match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
        Some("csv" | "tsv" | "txt") => Ok(Format::Csv),
        Some("parquet" | "pq") => Ok(Format::Parquet),
        _ => Err(StageError::msg(format!("{}: a `source` must be a .csv or .parquet file", path.display()))),
    }
}

/// Reads a markets export by its extension: `.csv`, or `.parquet` / `.pq`.
pub fn read_markets(path: &Path, options: Options) -> Result<Vec<Market>, StageError> {
    let mut markets = Vec::new();
    let mut listed = TimeColumn::new(options.zone);
    match format(path)? {
        Format::Csv => csv::for_each_row(path, &MARKET_COLUMNS, options.separator, |r| {
            markets.push(market_row(r, &mut listed)?);
            Ok(())
        })?,
        Format::Parquet => parquet::for_each_row(path, &MARKET_COLUMNS, |r| {
            markets.push(market_row(r, &mut listed)?);
            Ok(())
        })?,
    }
    sorted_unique_markets(path, markets)
}

/// Reads a ticks export by its extension; every market it names must be in `markets`.
pub fn read_ticks(path: &Path, markets: &[Market], options: Options) -> Result<TickIngest, StageError> {
    let mut sink = TickSink::new(markets, options);
    match format(path)? {
        Format::Csv => csv::for_each_row(path, &TICK_COLUMNS, options.separator, |r| sink.push(r))?,
        Format::Parquet => parquet::for_each_row(path, &TICK_COLUMNS, |r| sink.push(r))?,
    }
    sink.finish(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_of_one_time_merge_into_the_last_price_and_the_summed_volume() {
        let row = |ts, price, volume| TickRow { ts, price, volume, bid: price - 0.5, ask: price + 0.5 };
        let merged = merge_same_time(vec![row(1, 10.0, 1.0), row(1, 11.0, 2.0), row(1, 12.0, 3.0), row(2, 9.0, 4.0)]);
        assert_eq!(merged, [row(1, 12.0, 6.0), row(2, 9.0, 4.0)]);
    }
}
