//! Arrow IPC files in and out, written atomically (temp file, then rename).

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::Path;
use std::sync::Arc;

use arrow_array::{Array, ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
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

/// Writes one record batch as an Arrow IPC file.
pub fn write_batch(path: &Path, batch: &RecordBatch) -> Result<(), StageError> {
    write_atomic(path, |out| {
        let arrow = |e: arrow_schema::ArrowError| StageError::msg(format!("cannot write {}: {e}", path.display()));
        let mut writer = FileWriter::try_new(out, &batch.schema()).map_err(arrow)?;
        writer.write(batch).map_err(arrow)?;
        writer.finish().map_err(arrow)
    })
}

/// Reads an Arrow IPC file (one record batch) whole.
pub fn read_batch(path: &Path) -> Result<RecordBatch, StageError> {
    read(path, None)
}

/// Reads only the named columns of an Arrow IPC file: a stage that needs one column of a
/// wide table does not hold the rest in memory.
pub fn read_columns(path: &Path, names: &[&str]) -> Result<RecordBatch, StageError> {
    read(path, Some(names))
}

fn read(path: &Path, names: Option<&[&str]>) -> Result<RecordBatch, StageError> {
    let arrow = |e: arrow_schema::ArrowError| StageError::msg(format!("cannot read {}: {e}", path.display()));
    let open = || File::open(path).map(BufReader::new).map_err(|e| StageError::io(path, e));
    let projection = match names {
        None => None,
        Some(names) => {
            // The footer alone tells the schema; the file is then opened again, projected.
            let schema = FileReader::try_new(open()?, None).map_err(arrow)?.schema();
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
    let reader = FileReader::try_new(open()?, projection).map_err(arrow)?;
    let schema = reader.schema();
    let batches: Vec<RecordBatch> = reader.collect::<Result<_, _>>().map_err(arrow)?;
    arrow_select_concat(&schema, &batches).map_err(arrow)
}

fn arrow_select_concat(schema: &Arc<Schema>, batches: &[RecordBatch]) -> Result<RecordBatch, arrow_schema::ArrowError> {
    match batches {
        [] => Ok(RecordBatch::new_empty(schema.clone())),
        [one] => Ok(one.clone()),
        _ => Err(arrow_schema::ArrowError::InvalidArgumentError("expected one record batch per file".into())),
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
