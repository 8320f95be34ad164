//! The Parquet reader (pandas, pyarrow, Polars, Spark...): streams the file's batches and
//! gives each row to the rules. Snappy, zstd, lz4, gzip and brotli pages are all read.

use std::fs::File;
use std::path::Path;

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Date32Type, Float32Type, Float64Type, Int32Type, Int64Type, TimestampMicrosecondType, TimestampMillisecondType,
    TimestampNanosecondType, TimestampSecondType, UInt32Type, UInt64Type,
};
use arrow_array::{Array, RecordBatch};
use arrow_schema::{DataType, TimeUnit};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::Row;
use super::time::{TimeColumn, Unit};
use crate::markets::StageError;

/// Calls `row` for every row of the Parquet file at `path`, which must hold `columns`;
/// only those columns are read.
pub(super) fn for_each_row(
    path: &Path,
    columns: &[&str],
    mut row: impl FnMut(&ParquetRow<'_>) -> Result<(), StageError>,
) -> Result<(), StageError> {
    let shown = path.display().to_string();
    let file = File::open(path).map_err(|e| StageError::io(path, e))?;
    let bad =
        |e: parquet::errors::ParquetError| StageError::msg(format!("{shown} is not a readable Parquet file: {e}"));
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(bad)?;
    // The schema comes from the file's footer: checked even when it holds no rows.
    let have: Vec<&str> = builder.schema().fields().iter().map(|f| f.name().as_str()).collect();
    if let Some(missing) = columns.iter().find(|c| !have.contains(c)) {
        return Err(StageError::msg(format!(
            "{shown}: missing column `{missing}` (the file has: {}); expected columns: {}",
            have.join(", "),
            columns.join(", ")
        )));
    }
    let wanted: Vec<usize> = builder
        .schema()
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, f)| columns.contains(&f.name().as_str()))
        .map(|(i, _)| i)
        .collect();
    let mask = ProjectionMask::roots(builder.parquet_schema(), wanted);
    let reader = builder.with_projection(mask).build().map_err(bad)?;
    let mut number = 0;
    for batch in reader {
        let batch = batch.map_err(|e| StageError::msg(format!("cannot read {shown}: {e}")))?;
        for i in 0..batch.num_rows() {
            number += 1;
            row(&ParquetRow { path: &shown, batch: &batch, i, number })?;
        }
    }
    Ok(())
}

pub(super) struct ParquetRow<'a> {
    path: &'a str,
    batch: &'a RecordBatch,
    i: usize,
    /// Counted from 1, as a person counts rows.
    number: usize,
}

impl ParquetRow<'_> {
    /// The column's array, or `None` when this row's value is null.
    fn value(&self, name: &str) -> Result<Option<&dyn Array>, StageError> {
        let col = self.batch.column_by_name(name).ok_or_else(|| self.bad(name, "the column is missing"))?;
        Ok((!col.is_null(self.i)).then_some(col.as_ref()))
    }
}

impl Row for ParquetRow<'_> {
    fn place(&self) -> String {
        format!("{} row {}", self.path, self.number)
    }

    fn text(&self, name: &str) -> Result<Option<&str>, StageError> {
        let Some(col) = self.value(name)? else { return Ok(None) };
        let value = match col.data_type() {
            DataType::Utf8 => col.as_string::<i32>().value(self.i),
            DataType::LargeUtf8 => col.as_string::<i64>().value(self.i),
            DataType::Utf8View => col.as_string_view().value(self.i),
            other => return Err(self.bad(name, &format!("the column is {other}, expected text"))),
        };
        Ok((!value.is_empty()).then_some(value))
    }

    fn number(&self, name: &str) -> Result<Option<f64>, StageError> {
        let Some(col) = self.value(name)? else { return Ok(None) };
        let i = self.i;
        let value = match col.data_type() {
            DataType::Float64 => col.as_primitive::<Float64Type>().value(i),
            DataType::Float32 => f64::from(col.as_primitive::<Float32Type>().value(i)),
            DataType::Int64 => col.as_primitive::<Int64Type>().value(i) as f64,
            DataType::Int32 => f64::from(col.as_primitive::<Int32Type>().value(i)),
            DataType::UInt64 => col.as_primitive::<UInt64Type>().value(i) as f64,
            DataType::UInt32 => f64::from(col.as_primitive::<UInt32Type>().value(i)),
            other => return Err(self.bad(name, &format!("the column is {other}, expected a number"))),
        };
        if value.is_finite() { Ok(Some(value)) } else { Err(self.bad(name, &format!("`{value}` is not a number"))) }
    }

    /// From an integer column (its unit told by magnitude), a timestamp column (its own
    /// unit; a time zone, if any, only labels the UTC instant), a date, or text.
    fn time(&self, name: &str, times: &mut TimeColumn) -> Result<Option<i64>, StageError> {
        let Some(col) = self.value(name)? else { return Ok(None) };
        let i = self.i;
        // A timestamp column without a time zone holds wall-clock times: like naive text,
        // it needs the stage's `timezone` to become an instant.
        let zone = times.zone();
        let checked = |unit: Unit, value: i64, tz: &Option<std::sync::Arc<str>>| -> Result<i64, String> {
            let offset_ms = match (tz, zone) {
                (Some(_), _) => 0,
                (None, Some(offset)) => offset * 1_000,
                (None, None) => {
                    return Err(
                        "the column is a timestamp without a time zone, so it could be any zone's wall-clock time; write it with a zone (pandas: `tz_localize`), or set param `timezone = \"UTC\"` (or `\"+01:00\"`...) on this stage to say which".into()
                    );
                }
            };
            match Unit::of(value) {
                Some(found) if found == unit => Ok(unit.to_ms(value) - offset_ms),
                _ => Err(format!("`{value}` {unit} since 1970 is not a time between 1971 and 2100")),
            }
        };
        let ms = match col.data_type() {
            DataType::Int64 => times.integer(col.as_primitive::<Int64Type>().value(i)),
            DataType::Int32 => times.integer(i64::from(col.as_primitive::<Int32Type>().value(i))),
            DataType::Timestamp(TimeUnit::Second, tz) => {
                checked(Unit::Seconds, col.as_primitive::<TimestampSecondType>().value(i), tz)
            }
            DataType::Timestamp(TimeUnit::Millisecond, tz) => {
                checked(Unit::Milliseconds, col.as_primitive::<TimestampMillisecondType>().value(i), tz)
            }
            DataType::Timestamp(TimeUnit::Microsecond, tz) => {
                checked(Unit::Microseconds, col.as_primitive::<TimestampMicrosecondType>().value(i), tz)
            }
            DataType::Timestamp(TimeUnit::Nanosecond, tz) => {
                checked(Unit::Nanoseconds, col.as_primitive::<TimestampNanosecondType>().value(i), tz)
            }
            DataType::Date32 => Ok(i64::from(col.as_primitive::<Date32Type>().value(i)) * 86_400_000),
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
                return match self.text(name)? {
                    Some(text) => times.text(text).map(Some).map_err(|e| self.bad(name, &e)),
                    None => Ok(None),
                };
            }
            other => {
                return Err(self.bad(
                    name,
                    &format!("the column is {other}, expected a time (a timestamp, or a number since 1970)"),
                ));
            }
        };
        ms.map(Some).map_err(|e| self.bad(name, &e))
    }
}
