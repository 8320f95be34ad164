//! Top-level `vars`, read as DVC reads them: a table of values, or a list of params files
//! (`"config.yaml"`, or `"config.yaml:a,b"` for some of its keys) and tables, merged in
//! order. Tables merge key by key; the same leaf given two values is an error, as in DVC.

use std::ops::Range;
use std::path::Path;

use toml::Spanned;

use super::diagnostic::Diagnostic;
use super::raw::{RawVars, VarsEntry};

/// Names dagrun's own references use: a var or a wildcard may not take them.
pub(super) const RESERVED: [&str; 5] = ["params", "inputs", "outputs", "item", "key"];

/// The merged vars, and the files they were read from.
pub(super) fn load(
    root: &Path,
    declared: Option<&Spanned<RawVars>>,
    diags: &mut Vec<Diagnostic>,
) -> (toml::Table, Vec<String>) {
    let span = declared.map_or(0..0, Spanned::span);
    let mut vars = toml::Table::new();
    let mut files = Vec::new();
    match declared.map(Spanned::get_ref) {
        None => {}
        Some(RawVars::Table(table)) => merge(&mut vars, table, "", &span, diags),
        Some(RawVars::List(entries)) => {
            for entry in entries {
                match entry {
                    VarsEntry::File(file) => {
                        merge_file(root, file, &span, &mut vars, diags);
                        files.push(file.split_once(':').map_or(file.as_str(), |(f, _)| f).to_string());
                    }
                    VarsEntry::Values(table) => merge(&mut vars, table, "", &span, diags),
                }
            }
        }
    }
    for name in RESERVED.iter().filter(|name| vars.contains_key(**name)) {
        diags.push(
            Diagnostic::new(format!("a var may not be named `{name}`"), Some(span.clone()))
                .help(format!("`${{{name}...}}` is dagrun's own reference; rename the var")),
        );
    }
    (vars, files)
}

/// Merges a params file, or the keys after its `:` (`config.yaml:a,b`).
fn merge_file(root: &Path, entry: &str, span: &Range<usize>, vars: &mut toml::Table, diags: &mut Vec<Diagnostic>) {
    let (file, keys) = match entry.split_once(':') {
        Some((file, keys)) => (file, Some(keys.split(',').map(str::trim).collect::<Vec<_>>())),
        None => (entry, None),
    };
    let document = match super::params::read_file(&root.join(file)) {
        Ok(document) => document,
        Err(problem) => {
            diags.push(
                Diagnostic::new(format!("vars file `{file}` {problem}"), Some(span.clone()))
                    .help("create it, or remove it from `vars`"),
            );
            return;
        }
    };
    let Some(toml::Value::Table(mut table)) = to_toml(&document) else {
        diags.push(Diagnostic::new(format!("vars file `{file}` does not hold a table of values"), Some(span.clone())));
        return;
    };
    // A params file may well have a key named like dagrun's own references (`inputs`,
    // `item`); no `${...}` could reach it, so it is left out rather than refused.
    table.retain(|key, _| !RESERVED.contains(&key));
    let table = match keys {
        None => table,
        Some(keys) => {
            let mut picked = toml::Table::new();
            for key in keys {
                match table.get(key) {
                    Some(value) => {
                        picked.insert(key.to_string(), value.clone());
                    }
                    None => diags
                        .push(Diagnostic::new(format!("vars file `{file}` has no key `{key}`"), Some(span.clone()))),
                }
            }
            picked
        }
    };
    merge(vars, &table, "", span, diags);
}

/// Merges `new` into `vars`: tables key by key; a leaf given two different values is an error.
fn merge(vars: &mut toml::Table, new: &toml::Table, prefix: &str, span: &Range<usize>, diags: &mut Vec<Diagnostic>) {
    for (key, value) in new {
        let path = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
        match (vars.get_mut(key), value) {
            (None, _) => {
                vars.insert(key.clone(), value.clone());
            }
            (Some(toml::Value::Table(old)), toml::Value::Table(new)) => merge(old, new, &path, span, diags),
            (Some(old), new) if old == new => {}
            (Some(_), _) => diags.push(
                Diagnostic::new(format!("var `{path}` is given two different values"), Some(span.clone()))
                    .help("give each var one value: files and tables in `vars` may add keys, not change them"),
            ),
        }
    }
}

/// A JSON value (as params files are read) as TOML, nulls left out: TOML has none.
pub(super) fn to_toml(value: &serde_json::Value) -> Option<toml::Value> {
    Some(match value {
        serde_json::Value::Null => return None,
        serde_json::Value::Bool(b) => toml::Value::Boolean(*b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => toml::Value::Integer(i),
            None => toml::Value::Float(n.as_f64()?),
        },
        serde_json::Value::String(s) => toml::Value::String(s.clone()),
        serde_json::Value::Array(items) => toml::Value::Array(items.iter().filter_map(to_toml).collect()),
        serde_json::Value::Object(map) => {
            toml::Value::Table(map.iter().filter_map(|(k, v)| Some((k.clone(), to_toml(v)?))).collect())
        }
    })
}
