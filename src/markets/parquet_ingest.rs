//! Reading real exports written as Parquet (pandas, pyarrow, Spark...): the same columns as
//! the CSV exports, checked row by row with errors naming the file, row and column.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Float32Type, Float64Type, Int32Type, Int64Type, TimestampMicrosecondType, TimestampMillisecondType,
    TimestampNanosecondType, TimestampSecondType,
};
use arrow_array::{Array, RecordBatch};
use arrow_schema::{DataType, TimeUnit};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::StageError;
use super::ingest::{MARKET_COLUMNS, TICK_COLUMNS, TickRow, group_ticks, implausible_time};
use super::synth::{Market, Ticks};

/// A Parquet file's batches, with the header checked.
struct ParquetTable {
    path: String,
    batches: Vec<RecordBatch>,
}

impl ParquetTable {
    fn open(path: &Path, columns: &[&str]) -> Result<ParquetTable, StageError> {
        let shown = path.display().to_string();
        let file = File::open(path).map_err(|e| StageError::io(path, e))?;
        let bad =
            |e: parquet::errors::ParquetError| StageError::msg(format!("{shown} is not a readable Parquet file: {e}"));
        let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(bad)?;
        // The schema comes from the file's footer: checked even when it holds no rows.
        let have: Vec<String> = builder.schema().fields().iter().map(|f| f.name().clone()).collect();
        if let Some(missing) = columns.iter().find(|c| !have.iter().any(|h| h == *c)) {
            return Err(StageError::msg(format!(
                "{shown}: missing column `{missing}` (the file has: {}); expected columns: {}",
                have.join(", "),
                columns.join(", ")
            )));
        }
        let reader = builder.build().map_err(bad)?;
        let batches: Vec<RecordBatch> =
            reader.collect::<Result<_, _>>().map_err(|e| StageError::msg(format!("cannot read {shown}: {e}")))?;
        Ok(ParquetTable { path: shown, batches })
    }

    /// Calls `row` for every row, with a getter for its fields; rows count from 1.
    fn for_each(&self, mut row: impl FnMut(&Row<'_>) -> Result<(), StageError>) -> Result<(), StageError> {
        let mut number = 0;
        for batch in &self.batches {
            for i in 0..batch.num_rows() {
                number += 1;
                row(&Row { path: &self.path, batch, i, number })?;
            }
        }
        Ok(())
    }
}

struct Row<'a> {
    path: &'a str,
    batch: &'a RecordBatch,
    i: usize,
    number: usize,
}

impl Row<'_> {
    fn bad(&self, column: &str, what: &str) -> StageError {
        StageError::msg(format!(
            "{} row {}, column `{column}`: {what}; fix the file and build again",
            self.path, self.number
        ))
    }

    fn column(&self, name: &str) -> Result<&dyn Array, StageError> {
        let col = self.batch.column_by_name(name).ok_or_else(|| self.bad(name, "the column is missing"))?;
        if col.is_null(self.i) {
            return Err(self.bad(name, "the value is missing (null)"));
        }
        Ok(col.as_ref())
    }

    fn text(&self, name: &str) -> Result<String, StageError> {
        let col = self.column(name)?;
        let value = match col.data_type() {
            DataType::Utf8 => col.as_string::<i32>().value(self.i).to_string(),
            DataType::LargeUtf8 => col.as_string::<i64>().value(self.i).to_string(),
            DataType::Utf8View => col.as_string_view().value(self.i).to_string(),
            other => return Err(self.bad(name, &format!("the column is {other}, expected text"))),
        };
        if value.is_empty() { Err(self.bad(name, "the value is empty")) } else { Ok(value) }
    }

    fn number(&self, name: &str, check: impl Fn(f64) -> bool, expected: &str) -> Result<f64, StageError> {
        let col = self.column(name)?;
        let value = match col.data_type() {
            DataType::Float64 => col.as_primitive::<Float64Type>().value(self.i),
            DataType::Float32 => f64::from(col.as_primitive::<Float32Type>().value(self.i)),
            DataType::Int64 => col.as_primitive::<Int64Type>().value(self.i) as f64,
            DataType::Int32 => f64::from(col.as_primitive::<Int32Type>().value(self.i)),
            other => return Err(self.bad(name, &format!("the column is {other}, expected a number"))),
        };
        if value.is_finite() && check(value) {
            Ok(value)
        } else {
            Err(self.bad(name, &format!("`{value}` is not {expected}")))
        }
    }

    /// Milliseconds since the epoch: from an integer column (ms) or a timestamp column.
    fn time_ms(&self, name: &str) -> Result<i64, StageError> {
        let col = self.column(name)?;
        let ms = match col.data_type() {
            DataType::Int64 => col.as_primitive::<Int64Type>().value(self.i),
            DataType::Timestamp(TimeUnit::Second, _) => col.as_primitive::<TimestampSecondType>().value(self.i) * 1000,
            DataType::Timestamp(TimeUnit::Millisecond, _) => {
                col.as_primitive::<TimestampMillisecondType>().value(self.i)
            }
            DataType::Timestamp(TimeUnit::Microsecond, _) => {
                col.as_primitive::<TimestampMicrosecondType>().value(self.i) / 1000
            }
            DataType::Timestamp(TimeUnit::Nanosecond, _) => {
                col.as_primitive::<TimestampNanosecondType>().value(self.i) / 1_000_000
            }
            other => {
                return Err(
                    self.bad(name, &format!("the column is {other}, expected a time (ms since 1970, or a timestamp)"))
                );
            }
        };
        match implausible_time(ms) {
            Some(problem) => Err(self.bad(name, &problem)),
            None => Ok(ms),
        }
    }
}

pub fn read_markets(path: &Path) -> Result<Vec<Market>, StageError> {
    let table = ParquetTable::open(path, &MARKET_COLUMNS)?;
    let mut markets = Vec::new();
    table.for_each(|r| {
        markets.push(Market {
            id: r.text("market_id")?,
            venue: r.text("venue")?,
            instrument: r.text("instrument")?,
            category: r.text("category")?,
            listed_at: r.time_ms("listed_at")?,
            tick_size: r.number("tick_size", |v| v > 0.0, "a positive number")?,
            fee_bps: r.number("fee_bps", |v| v >= 0.0, "a non-negative number")?,
        });
        Ok(())
    })?;
    super::ingest::sorted_unique_markets(path, markets)
}

pub fn read_ticks(path: &Path, markets: &[Market]) -> Result<(Vec<Ticks>, usize), StageError> {
    let table = ParquetTable::open(path, &TICK_COLUMNS)?;
    let mut by_market: BTreeMap<String, Vec<TickRow>> = markets.iter().map(|m| (m.id.clone(), Vec::new())).collect();
    table.for_each(|r| {
        let id = r.text("market_id")?;
        let row = (
            r.time_ms("ts")?,
            r.number("price", |v| v > 0.0, "a positive number")?,
            r.number("volume", |v| v >= 0.0, "a non-negative number")?,
            r.number("bid", |v| v > 0.0, "a positive number")?,
            r.number("ask", |v| v > 0.0, "a positive number")?,
        );
        if row.3 > row.4 {
            return Err(r.bad("bid", &format!("`{}` is not at most the ask", row.3)));
        }
        match by_market.get_mut(&id) {
            Some(rows) => rows.push(row),
            None => return Err(r.bad("market_id", &format!("`{id}` is not a market listed by the markets stage"))),
        }
        Ok(())
    })?;
    Ok(group_ticks(markets, by_market))
}
