//! The CSV reader: finds the separator from the header, then gives each record to the rules.

use std::collections::HashMap;
use std::io::BufRead;
use std::path::Path;

use super::Row;
use super::time::TimeColumn;
use crate::markets::StageError;

/// Separators tried, in order, when the stage does not name one: comma, then the `;` of
/// locales with a decimal comma, tab, and pipe.
const SEPARATORS: [u8; 4] = [b',', b';', b'\t', b'|'];

/// Calls `row` for each record of the CSV file at `path`, whose header must hold `columns`.
pub(super) fn for_each_row(
    path: &Path,
    columns: &[&'static str],
    separator: Option<u8>,
    mut row: impl FnMut(&CsvRow<'_>) -> Result<(), StageError>,
) -> Result<(), StageError> {
    let shown = path.display().to_string();
    let header = first_line(path)?;
    let separator = separator.unwrap_or_else(|| detect_separator(&header, columns));
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(separator)
        .trim(csv::Trim::All)
        .from_path(path)
        .map_err(|e| StageError::msg(format!("cannot read {shown}: {e}")))?;
    let names = reader.headers().map_err(|e| StageError::msg(format!("{shown}: cannot read the header: {e}")))?.clone();
    let mut index = HashMap::new();
    for &column in columns {
        let Some(i) = names.iter().position(|h| h == column) else {
            return Err(StageError::msg(format!(
                "{shown}: missing column `{column}` (the header has: {}); expected columns: {}{}",
                names.iter().collect::<Vec<_>>().join(", "),
                columns.join(", "),
                if separator == b',' { "" } else { "; fields are read as separated by the stage's `separator`" }
            )));
        };
        index.insert(column, i);
    }
    let mut record = csv::StringRecord::new();
    loop {
        match reader.read_record(&mut record) {
            Ok(false) => return Ok(()),
            Ok(true) => {
                let line = record.position().map_or(0, |p| p.line());
                row(&CsvRow { path: &shown, record: &record, index: &index, line, separator })?;
            }
            Err(e) => return Err(StageError::msg(format!("{shown}: {e}"))),
        }
    }
}

fn first_line(path: &Path) -> Result<String, StageError> {
    let file = std::fs::File::open(path).map_err(|e| StageError::io(path, e))?;
    let mut line = String::new();
    std::io::BufReader::new(file).read_line(&mut line).map_err(|e| StageError::io(path, e))?;
    Ok(line)
}

/// The separator under which the header names every expected column; comma when none does
/// (the missing-column error then shows the header as one field).
fn detect_separator(header: &str, columns: &[&str]) -> u8 {
    SEPARATORS
        .into_iter()
        .find(|&sep| {
            // Excel's "CSV UTF-8" starts with a byte-order mark.
            let header = header.trim_start_matches('\u{feff}').trim_end();
            let names: Vec<&str> = header.split(sep as char).map(|n| n.trim().trim_matches('"')).collect();
            columns.iter().all(|c| names.contains(c))
        })
        .unwrap_or(b',')
}

pub(super) struct CsvRow<'a> {
    path: &'a str,
    record: &'a csv::StringRecord,
    index: &'a HashMap<&'static str, usize>,
    line: u64,
    separator: u8,
}

impl CsvRow<'_> {
    fn field(&self, column: &str) -> &str {
        self.index.get(column).and_then(|&i| self.record.get(i)).unwrap_or("")
    }
}

impl Row for CsvRow<'_> {
    fn place(&self) -> String {
        format!("{} line {}", self.path, self.line)
    }

    fn text(&self, column: &str) -> Result<Option<&str>, StageError> {
        let value = self.field(column);
        Ok((!value.is_empty()).then_some(value))
    }

    fn number(&self, column: &str) -> Result<Option<f64>, StageError> {
        let value = self.field(column);
        if value.is_empty() {
            return Ok(None);
        }
        match value.parse::<f64>() {
            Ok(v) if v.is_finite() => Ok(Some(v)),
            _ if self.separator != b',' && value.contains(',') => Err(self.bad(
                column,
                &format!("`{value}` is not a number (it has a decimal comma; export numbers with a decimal point)"),
            )),
            _ => Err(self.bad(column, &format!("`{value}` is not a number"))),
        }
    }

    fn time(&self, column: &str, times: &mut TimeColumn) -> Result<Option<i64>, StageError> {
        let value = self.field(column);
        if value.is_empty() {
            return Ok(None);
        }
        times.text(value).map(Some).map_err(|e| self.bad(column, &e))
    }
}
