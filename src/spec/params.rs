//! Params files, read as DVC reads them: a stage names the keys it uses
//! (`params = ["train.lr"]`, or `{ "other.yaml" = ["a.b"] }`), and its params are those
//! keys' values only, so an edit to another key of the same file runs nothing, and `why`
//! names the key that changed.

use std::collections::BTreeMap;
use std::path::Path;

use super::diagnostic::Diagnostic;
use super::raw::{ParamKeys, RawParams};

/// The file bare keys name, as in DVC.
pub const DEFAULT_FILE: &str = "params.yaml";

/// Params files read so far while loading a pipeline: each is read once.
#[derive(Default)]
pub struct ParamsFiles {
    read: BTreeMap<String, Result<serde_json::Value, String>>,
}

impl ParamsFiles {
    /// The files read, relative to the pipeline directory.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.read.keys().map(String::as_str)
    }

    fn get(&mut self, root: &Path, file: &str) -> &Result<serde_json::Value, String> {
        self.read.entry(file.to_string()).or_insert_with(|| read_file(&root.join(file)))
    }
}

pub(super) fn read_file(path: &Path) -> Result<serde_json::Value, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot be read: {e}"))?;
    match path.extension().and_then(|e| e.to_str()) {
        Some("yaml" | "yml") => yaml_serde::from_str(&text).map_err(|e| format!("is not valid YAML: {e}")),
        Some("json") => serde_json::from_str(&text).map_err(|e| format!("is not valid JSON: {e}")),
        Some("toml") => toml::from_str(&text).map_err(|e| format!("is not valid TOML: {e}")),
        _ => Err("is not .yaml, .yml, .json or .toml".into()),
    }
}

/// The params of a stage: its inline table, or the named keys' values, each under its
/// dotted name (`train.lr`).
pub(super) fn stage_params(
    root: &Path,
    default_file: &str,
    params: &RawParams,
    stage_span: std::ops::Range<usize>,
    files: &mut ParamsFiles,
    diags: &mut Vec<Diagnostic>,
) -> toml::Table {
    let keys = match params {
        RawParams::Inline(table) => return table.clone(),
        RawParams::Keys(keys) => keys,
    };
    let mut table = toml::Table::new();
    let wanted = keys.iter().flat_map(|entry| match entry {
        ParamKeys::Key(key) => vec![(default_file.to_string(), key.clone())],
        ParamKeys::File(by_file) => {
            by_file.iter().flat_map(|(file, keys)| keys.iter().map(move |k| (file.clone(), k.clone()))).collect()
        }
    });
    for (file, key) in wanted {
        let document = match files.get(root, &file) {
            Ok(document) => document,
            Err(problem) => {
                diags.push(
                    Diagnostic::new(format!("params file `{file}` {problem}"), Some(stage_span.clone())).help(
                        "create it, or name the file the keys are in: `params = [{ \"file.yaml\" = [\"key\"] }]`",
                    ),
                );
                continue;
            }
        };
        match lookup(document, &key).map(toml::Value::try_from) {
            Some(Ok(value)) => {
                table.insert(key, value);
            }
            Some(Err(_)) => diags.push(Diagnostic::new(
                format!("`{key}` in params file `{file}` is null, which a param cannot be"),
                Some(stage_span.clone()),
            )),
            None => diags.push(
                Diagnostic::new(format!("params file `{file}` has no key `{key}`"), Some(stage_span.clone()))
                    .help("keys are dotted paths into the file, such as `train.lr`"),
            ),
        }
    }
    table
}

fn lookup<'a>(document: &'a serde_json::Value, key: &str) -> Option<&'a serde_json::Value> {
    key.split('.').try_fold(document, |value, part| value.as_object()?.get(part))
}
