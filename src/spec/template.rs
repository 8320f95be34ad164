//! Stage templates, as DVC writes them: `foreach` (a list or a table) and `matrix`
//! (several axes) expand one `[stages.NAME]` into a stage per item, named `NAME@item`
//! (`NAME@a-test` for a matrix), before anything is validated, so that every error still
//! points at the template's own lines.
//!
//! In `inputs`, `outputs`, `metrics` and string `params`, `${item}`, `${item.KEY}` and
//! (for a table) `${key}` are replaced by the item's text. In `cmd` they become
//! `${params.item...}` references: the item is a param of the stage, so it reaches the
//! shell as a value, never as code, like any param.

use std::collections::BTreeMap;
use std::ops::Range;

use toml::Spanned;

use super::diagnostic::Diagnostic;
use super::raw::RawStage;

/// One instance of a template: its name suffix, `item`, and `key` for a table's entries.
struct Instance {
    suffix: String,
    item: toml::Value,
    key: Option<String>,
}

/// Every stage of the file, templates expanded, in name order.
pub(super) fn expand(
    stages: &BTreeMap<Spanned<String>, RawStage>,
    diags: &mut Vec<Diagnostic>,
) -> Vec<(Spanned<String>, RawStage)> {
    let mut expanded = Vec::with_capacity(stages.len());
    for (name, stage) in stages {
        let instances = match (&stage.foreach, &stage.matrix) {
            (None, None) => {
                expanded.push((name.clone(), stage.clone()));
                continue;
            }
            (Some(_), Some(matrix)) => {
                diags.push(
                    Diagnostic::new(
                        format!("stage `{}` has both `foreach` and `matrix`", name.get_ref()),
                        Some(matrix.span()),
                    )
                    .help("keep one: `matrix` crosses several lists, `foreach` walks one"),
                );
                continue;
            }
            (Some(foreach), None) => foreach_instances(foreach, diags),
            (None, Some(matrix)) => matrix_instances(matrix, diags),
        };
        for instance in instances {
            let instance_name = Spanned::new(name.span(), format!("{}@{}", name.get_ref(), instance.suffix));
            if let Some(stage) = instantiate(stage, &instance, diags) {
                expanded.push((instance_name, stage));
            }
        }
    }
    expanded.sort_by(|a, b| a.0.get_ref().cmp(b.0.get_ref()));
    expanded
}

/// A scalar's text as it appears in names and paths; `None` for a table or a list.
fn scalar_text(value: &toml::Value) -> Option<String> {
    match value {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

fn foreach_instances(foreach: &Spanned<toml::Value>, diags: &mut Vec<Diagnostic>) -> Vec<Instance> {
    match foreach.get_ref() {
        // A list of scalars is named by its values; a list of tables by position, as DVC does.
        toml::Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| Instance {
                suffix: scalar_text(item).unwrap_or_else(|| i.to_string()),
                item: item.clone(),
                key: None,
            })
            .collect(),
        toml::Value::Table(entries) => entries
            .iter()
            .map(|(key, item)| Instance { suffix: key.clone(), item: item.clone(), key: Some(key.clone()) })
            .collect(),
        _ => {
            diags.push(
                Diagnostic::new("`foreach` must be a list or a table", Some(foreach.span()))
                    .help("for example `foreach = [\"a\", \"b\"]` or `foreach = { a = { lr = 0.1 } }`"),
            );
            Vec::new()
        }
    }
}

fn matrix_instances(matrix: &Spanned<toml::Table>, diags: &mut Vec<Diagnostic>) -> Vec<Instance> {
    let mut combos: Vec<(Vec<String>, toml::Table)> = vec![(Vec::new(), toml::Table::new())];
    for (axis, values) in matrix.get_ref() {
        let Some(values) = values.as_array().filter(|v| !v.is_empty()) else {
            diags.push(
                Diagnostic::new(format!("matrix axis `{axis}` must be a non-empty list"), Some(matrix.span()))
                    .help("for example `matrix = { model = [\"a\", \"b\"], split = [\"test\", \"val\"] }`"),
            );
            return Vec::new();
        };
        combos = combos
            .into_iter()
            .flat_map(|(names, table)| {
                values.iter().enumerate().map(move |(i, value)| {
                    let mut names = names.clone();
                    names.push(scalar_text(value).unwrap_or_else(|| i.to_string()));
                    let mut table = table.clone();
                    table.insert(axis.clone(), value.clone());
                    (names, table)
                })
            })
            .collect();
    }
    combos
        .into_iter()
        .map(|(names, table)| Instance { suffix: names.join("-"), item: toml::Value::Table(table), key: None })
        .collect()
}

/// The template's stage for one instance, or `None` (with a diagnostic) when a reference
/// names nothing the item has.
fn instantiate(template: &RawStage, instance: &Instance, diags: &mut Vec<Diagnostic>) -> Option<RawStage> {
    let mut stage = template.clone();
    stage.foreach = None;
    stage.matrix = None;
    let mut ok = true;
    let mut text = |s: &Spanned<String>| -> Spanned<String> {
        match substitute(s.get_ref(), instance) {
            Ok(value) => Spanned::new(s.span(), value),
            Err(reference) => {
                ok = false;
                diags.push(unknown_reference(&reference, instance, s.span()));
                s.clone()
            }
        }
    };
    stage.inputs = template.inputs.iter().map(&mut text).collect();
    stage.outputs = template.outputs.iter().map(&mut text).collect();
    stage.metrics = template.metrics.iter().map(&mut text).collect();
    if let Some(cmd) = &template.cmd {
        stage.cmd = Some(Spanned::new(cmd.span(), as_param_references(cmd.get_ref())));
    }
    let inline = match &mut stage.params {
        super::raw::RawParams::Inline(table) => Some(table),
        super::raw::RawParams::Keys(_) => None,
    };
    let mut params = inline.map(std::mem::take).unwrap_or_default();
    let keys: Vec<String> = params.keys().cloned().collect();
    for name in keys {
        let Some(toml::Value::String(text)) = params.get(&name).cloned() else { continue };
        let replaced = match whole_reference(&text, instance) {
            Some(typed) => typed,
            None => match substitute(&text, instance) {
                Ok(replaced) => toml::Value::String(replaced),
                Err(reference) => {
                    ok = false;
                    let span =
                        template.foreach.as_ref().map(|f| f.span()).or(template.matrix.as_ref().map(|m| m.span()));
                    diags.push(unknown_reference(&reference, instance, span.unwrap_or(0..0)));
                    continue;
                }
            },
        };
        params.insert(name, replaced);
    }
    if let super::raw::RawParams::Inline(table) = &mut stage.params {
        *table = params;
    }
    stage.template_params.insert("item".into(), instance.item.clone());
    if let Some(key) = &instance.key {
        stage.template_params.insert("key".into(), toml::Value::String(key.clone()));
    }
    ok.then_some(stage)
}

fn unknown_reference(reference: &str, instance: &Instance, span: Range<usize>) -> Diagnostic {
    Diagnostic::new(format!("`${{{reference}}}` names nothing in item `{}`", instance.suffix), Some(span))
        .help("use `${item}`, `${item.KEY}` for a table item, or `${key}` in a `foreach` over a table")
}

/// The value a reference names: `item`, `item.a.b`, or `key`.
fn lookup(reference: &str, instance: &Instance) -> Option<toml::Value> {
    if reference == "key" {
        return instance.key.clone().map(toml::Value::String);
    }
    let path = reference.strip_prefix("item")?;
    let mut value = &instance.item;
    for part in path.split('.').skip(1) {
        value = value.as_table()?.get(part)?;
    }
    (path.is_empty() || path.starts_with('.')).then(|| value.clone())
}

/// `${…}` references to the item in `text`, each with its range and name; others are left.
fn references(text: &str) -> Vec<(Range<usize>, &str)> {
    let mut found = Vec::new();
    let mut at = 0;
    while let Some(start) = text[at..].find("${").map(|i| at + i) {
        let Some(len) = text[start + 2..].find('}') else { break };
        let name = &text[start + 2..start + 2 + len];
        if name == "key" || name == "item" || name.starts_with("item.") {
            found.push((start..start + len + 3, name));
        }
        at = start + 2;
    }
    found
}

/// `text` with each item reference replaced by the value's text, or the first reference
/// that names nothing (or a table or list, which has no text).
fn substitute(text: &str, instance: &Instance) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for (range, name) in references(text) {
        let value = lookup(name, instance).and_then(|v| scalar_text(&v)).ok_or_else(|| name.to_string())?;
        out.push_str(&text[last..range.start]);
        out.push_str(&value);
        last = range.end;
    }
    out.push_str(&text[last..]);
    Ok(out)
}

/// A param written as exactly one reference takes the item's value with its type.
fn whole_reference(text: &str, instance: &Instance) -> Option<toml::Value> {
    match references(text).as_slice() {
        [(range, name)] if *range == (0..text.len()) => lookup(name, instance),
        _ => None,
    }
}

/// A command with each item reference made a param reference: `${item.lr}` becomes
/// `${params.item.lr}`, passed to the shell as a value like every param.
fn as_param_references(cmd: &str) -> String {
    let mut out = String::with_capacity(cmd.len() + 16);
    let mut last = 0;
    for (range, name) in references(cmd) {
        out.push_str(&cmd[last..range.start]);
        out.push_str(&format!("${{params.{name}}}"));
        last = range.end;
    }
    out.push_str(&cmd[last..]);
    out
}
