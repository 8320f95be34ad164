//! Arrow IPC files in and out, written atomically (temp file, then rename).

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::Path;
use std::sync::Arc;

use arrow_array::{Array, ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow_buffer::{Buffer, OffsetBuffer, ScalarBuffer};
use arrow_ipc::reader::FileReader;
use arrow_ipc::writer::FileWriter;
use arrow_schema::{Field, Schema};

use super::StageError;

/// Writes `path` via a temporary file in the same directory, renamed into place only once
/// complete, so a crash never leaves a half-written output that looks whole.
pub fn write_atomic(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<File>) -> Result<(), StageError>,
) -> Result<(), StageError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| StageError::io(dir, e))?;
    let tmp =
        dir.join(format!(".{}.tmp-{}", path.file_name().and_then(|n| n.to_str()).unwrap_or("out"), std::process::id()));
    let result = (|| {
        let mut out = BufWriter::new(File::create(&tmp).map_err(|e| StageError::io(&tmp, e))?);
        write(&mut out)?;
        let file = out.into_inner().map_err(|e| StageError::io(&tmp, e.into_error()))?;
        // Durable before the rename: otherwise a power cut could leave the new name with
        // lost content but the size and mtime the stat cache trusts.
        file.sync_all().map_err(|e| StageError::io(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| StageError::io(path, e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

pub fn write_text(path: &Path, text: &str) -> Result<(), StageError> {
    write_atomic(path, |out| out.write_all(text.as_bytes()).map_err(|e| StageError::io(path, e)))
}

pub fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<(), StageError> {
    // JSON because people read these files; serde_json's float output is deterministic.
    let mut text = serde_json::to_string_pretty(value)
        .map_err(|e| StageError::msg(format!("cannot encode {}: {e}", path.display())))?;
    text.push('\n');
    write_text(path, &text)
}

pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, StageError> {
    let text = std::fs::read_to_string(path).map_err(|e| StageError::io(path, e))?;
    serde_json::from_str(&text)
        .map_err(|e| StageError::msg(format!("{} is not what this stage expects: {e}", path.display())))
}

/// Rows per record batch in the files written here. Readers stream a file batch by batch,
/// so this bounds what a reader holds beyond the columns it keeps, and what the writer
/// copies while encoding.
pub const BATCH_ROWS: usize = 1 << 18;

/// Writes a table as an Arrow IPC file, in batches of `BATCH_ROWS` rows.
pub fn write_batch(path: &Path, batch: &RecordBatch) -> Result<(), StageError> {
    write_atomic(path, |out| {
        let arrow = |e: arrow_schema::ArrowError| StageError::msg(format!("cannot write {}: {e}", path.display()));
        let mut writer = FileWriter::try_new(out, &batch.schema()).map_err(arrow)?;
        let rows = batch.num_rows();
        if rows == 0 {
            writer.write(batch).map_err(arrow)?;
        }
        for start in (0..rows).step_by(BATCH_ROWS) {
            writer.write(&batch.slice(start, BATCH_ROWS.min(rows - start))).map_err(arrow)?;
        }
        writer.finish().map_err(arrow)
    })
}

/// Reads an Arrow IPC file whole, as one batch.
pub fn read_batch(path: &Path) -> Result<RecordBatch, StageError> {
    read(path, None)
}

/// Reads only the named columns of an Arrow IPC file, as one batch. The file is streamed:
/// each batch's wanted columns are copied out and the rest dropped, so a stage that needs
/// one column of a wide table never holds the whole table.
pub fn read_columns(path: &Path, names: &[&str]) -> Result<RecordBatch, StageError> {
    read(path, Some(names))
}

fn read(path: &Path, names: Option<&[&str]>) -> Result<RecordBatch, StageError> {
    let mut sinks: Vec<(String, Sink)> = Vec::new();
    for_each_batch(path, names, |batch, _, batches| {
        if sinks.is_empty() {
            // Every batch but the last is full: reserving for all avoids regrowing (and
            // copying) columns of hundreds of megabytes.
            let rows = batch.num_rows() * batches;
            sinks = batch
                .schema()
                .fields()
                .iter()
                .map(|f| Ok((f.name().clone(), Sink::new(f.data_type(), rows, path)?)))
                .collect::<Result<_, StageError>>()?;
        }
        for ((name, sink), column) in sinks.iter_mut().zip(batch.columns()) {
            sink.append(column.as_ref(), name, path)?;
        }
        Ok(())
    })?;
    if sinks.is_empty() {
        let schema = FileReader::try_new(open(path)?, None).map_err(|e| arrow_error(path, e))?.schema();
        return Ok(RecordBatch::new_empty(schema));
    }
    Ok(batch(sinks.iter_mut().map(|(name, sink)| (name.as_str(), sink.finish())).collect()))
}

/// The key-value metadata of an Arrow IPC file's schema.
pub fn metadata(path: &Path) -> Result<std::collections::BTreeMap<String, String>, StageError> {
    let reader = FileReader::try_new(open(path)?, None).map_err(|e| arrow_error(path, e))?;
    Ok(reader.schema().metadata().iter().map(|(k, v)| (k.clone(), v.clone())).collect())
}

/// `batch` with `metadata` on its schema (kept in the file by `write_batch`).
pub fn with_metadata(batch: RecordBatch, metadata: &[(&str, String)]) -> RecordBatch {
    let map: std::collections::HashMap<String, String> =
        metadata.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
    let schema = Arc::new(batch.schema().as_ref().clone().with_metadata(map));
    batch.with_schema(schema).expect("the same fields")
}

fn open(path: &Path) -> Result<BufReader<File>, StageError> {
    File::open(path).map(BufReader::new).map_err(|e| StageError::io(path, e))
}

fn arrow_error(path: &Path, e: arrow_schema::ArrowError) -> StageError {
    StageError::msg(format!("cannot read {}: {e}", path.display()))
}

/// Calls `each(batch, first row, number of batches)` for each record batch of an Arrow IPC file, with only
/// the named columns (all of them for `None`), in the order named.
pub fn for_each_batch(
    path: &Path,
    names: Option<&[&str]>,
    mut each: impl FnMut(&RecordBatch, usize, usize) -> Result<(), StageError>,
) -> Result<(), StageError> {
    let projection = match names {
        None => None,
        Some(names) => {
            // The footer alone tells the schema; the file is then opened again, projected.
            let schema = FileReader::try_new(open(path)?, None).map_err(|e| arrow_error(path, e))?.schema();
            let indices = names
                .iter()
                .map(|name| {
                    schema
                        .index_of(name)
                        .map_err(|_| StageError::msg(format!("{} has no column `{name}`", path.display())))
                })
                .collect::<Result<Vec<usize>, _>>()?;
            Some(indices)
        }
    };
    let reader = FileReader::try_new(open(path)?, projection.clone()).map_err(|e| arrow_error(path, e))?;
    let batches = reader.num_batches();
    let mut first_row = 0;
    for batch in reader {
        let batch = batch.map_err(|e| arrow_error(path, e))?;
        // Projected columns come in file order; put them in the order asked for.
        let batch = match (names, &projection) {
            (Some(names), Some(_)) => {
                let columns: Vec<(&str, ArrayRef)> =
                    names.iter().map(|name| (*name, batch.column_by_name(name).expect("projected").clone())).collect();
                super::table::batch(columns)
            }
            _ => batch,
        };
        let rows = batch.num_rows();
        each(&batch, first_row, batches)?;
        first_row += rows;
    }
    Ok(())
}

/// A column being copied out of a file's batches.
enum Sink {
    F64(Vec<f64>),
    I64(Vec<i64>),
    /// A string column as its two buffers, appended to in bulk.
    Str {
        offsets: Vec<i32>,
        bytes: Vec<u8>,
    },
}

impl Sink {
    fn new(data_type: &arrow_schema::DataType, rows: usize, path: &Path) -> Result<Sink, StageError> {
        use arrow_schema::DataType;
        match data_type {
            DataType::Float64 => Ok(Sink::F64(Vec::with_capacity(rows))),
            DataType::Int64 => Ok(Sink::I64(Vec::with_capacity(rows))),
            DataType::Utf8 => Ok(Sink::Str { offsets: Vec::with_capacity(rows + 1), bytes: Vec::new() }),
            other => {
                Err(StageError::msg(format!("{} holds a {other} column, which no stage here writes", path.display())))
            }
        }
    }

    fn append(&mut self, column: &dyn Array, name: &str, path: &Path) -> Result<(), StageError> {
        if column.null_count() > 0 {
            return Err(StageError::msg(format!(
                "column `{name}` of {} has nulls, which no stage here writes",
                path.display()
            )));
        }
        let wrong = || StageError::msg(format!("column `{name}` of {} changes type between batches", path.display()));
        match self {
            Sink::F64(values) => {
                values.extend_from_slice(column.as_any().downcast_ref::<Float64Array>().ok_or_else(wrong)?.values())
            }
            Sink::I64(values) => {
                values.extend_from_slice(column.as_any().downcast_ref::<Int64Array>().ok_or_else(wrong)?.values())
            }
            Sink::Str { offsets, bytes } => {
                let strings = column.as_any().downcast_ref::<StringArray>().ok_or_else(wrong)?;
                let from = strings.value_offsets();
                let (first, last) = (from[0], from[from.len() - 1]);
                // Offsets are relative to this batch's bytes; shift them to follow ours.
                let shift =
                    i32::try_from(bytes.len()).ok().and_then(|len| len.checked_sub(first)).ok_or_else(|| {
                        StageError::msg(format!("column `{name}` of {} holds more than 2 GiB of text", path.display()))
                    })?;
                if offsets.is_empty() {
                    offsets.push(0);
                }
                offsets.extend(from[1..].iter().map(|o| o + shift));
                bytes.extend_from_slice(&strings.value_data()[first as usize..last as usize]);
            }
        }
        Ok(())
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Sink::F64(values) => f64_col(std::mem::take(values)),
            Sink::I64(values) => i64_col(std::mem::take(values)),
            Sink::Str { offsets, bytes } => {
                if offsets.is_empty() {
                    offsets.push(0);
                }
                let offsets = OffsetBuffer::new(ScalarBuffer::from(std::mem::take(offsets)));
                Arc::new(StringArray::new(offsets, Buffer::from_vec(std::mem::take(bytes)), None))
            }
        }
    }
}

/// Builds a batch from named columns.
pub fn batch(columns: Vec<(&str, ArrayRef)>) -> RecordBatch {
    let fields: Vec<Field> = columns
        .iter()
        .map(|(name, array)| Field::new(*name, array.data_type().clone(), array.null_count() > 0))
        .collect();
    let arrays = columns.into_iter().map(|(_, a)| a).collect();
    RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays).expect("columns of equal length and matching types")
}

pub fn f64_col(values: Vec<f64>) -> ArrayRef {
    Arc::new(Float64Array::from(values))
}

pub fn i64_col(values: Vec<i64>) -> ArrayRef {
    Arc::new(Int64Array::from(values))
}

pub fn str_col<S: AsRef<str>>(values: &[S]) -> ArrayRef {
    Arc::new(StringArray::from_iter_values(values.iter().map(|s| s.as_ref())))
}

/// A column of a batch, of the type this stage expects.
pub fn column<'a, T: Array + 'static>(batch: &'a RecordBatch, name: &str, file: &Path) -> Result<&'a T, StageError> {
    let col = batch
        .column_by_name(name)
        .ok_or_else(|| StageError::msg(format!("{} has no column `{name}`", file.display())))?;
    col.as_any().downcast_ref::<T>().ok_or_else(|| {
        let expected = std::any::type_name::<T>().rsplit("::").next().unwrap_or("?");
        StageError::msg(format!("column `{name}` of {} is {}, expected {expected}", file.display(), col.data_type()))
    })
}

pub fn f64s<'a>(batch: &'a RecordBatch, name: &str, file: &Path) -> Result<&'a [f64], StageError> {
    Ok(column::<Float64Array>(batch, name, file)?.values())
}

pub fn i64s<'a>(batch: &'a RecordBatch, name: &str, file: &Path) -> Result<&'a [i64], StageError> {
    Ok(column::<Int64Array>(batch, name, file)?.values())
}

pub fn strs<'a>(batch: &'a RecordBatch, name: &str, file: &Path) -> Result<&'a StringArray, StageError> {
    column::<StringArray>(batch, name, file)
}

/// Rows of a batch grouped into runs of equal `market_id` (the tables are sorted by it).
pub fn market_runs(ids: &StringArray) -> Vec<std::ops::Range<usize>> {
    let mut runs = Vec::new();
    let mut start = 0;
    for i in 1..=ids.len() {
        if i == ids.len() || ids.value(i) != ids.value(start) {
            if i > start {
                runs.push(start..i);
            }
            start = i;
        }
    }
    runs
}
