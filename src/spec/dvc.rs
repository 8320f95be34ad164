//! DVC's pipeline format, run as it is: a `dvc.yaml` is translated into the pipeline.toml
//! that means the same, which then loads like any other (`dagrun import` prints it).
//!
//! What maps: `stages` with `cmd` (a string or a list, run in order, each in its own
//! subshell), `wdir`, `deps`, `outs`, `metrics` and `plots` (all outputs; metrics files are
//! also read as metrics), `params` (keys of `params.yaml` or of other files; a file with no
//! keys is tracked whole, as an input), `foreach` + `do`, `matrix`, top-level `vars` (with
//! `params.yaml` loaded first, as DVC does), `always_changed` and `frozen: false`.
//! Output flags about DVC's storage (`cache`, `remote`, `push`) and descriptions (`desc`,
//! `meta`, `type`, `labels`, plot options) change nothing a build does and are accepted.
//! Everything else is refused by name: `persist` (dagrun deletes outputs before a stage
//! runs, so that no leftover of an earlier run survives), `frozen: true`, stage-level
//! `vars`, and any key this translation does not know.

use std::path::Path;

use serde_json::Value;

use super::diagnostic::Diagnostic;

/// Whether a pipeline file is in DVC's format: named `dvc.yaml` (or `.yml`), or any YAML file.
pub fn is_dvc_file(file: &Path) -> bool {
    matches!(file.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
}

/// Keys of a top-level dvc.yaml that configure DVC's displays, not a build.
const DISPLAY_KEYS: [&str; 5] = ["plots", "metrics", "params", "artifacts", "datasets"];
/// Keys of an output entry that concern DVC's storage or descriptions only.
const OUTPUT_FLAGS_IGNORED: [&str; 13] =
    ["cache", "remote", "push", "desc", "type", "labels", "meta", "x", "y", "template", "title", "x_label", "y_label"];

/// The pipeline.toml text equivalent to `text` (a dvc.yaml in `root`), or every problem found.
pub fn translate(root: &Path, file_name: &str, text: &str) -> Result<String, Vec<Diagnostic>> {
    let document: Value = yaml_serde::from_str(text)
        .map_err(|e| vec![Diagnostic::new(format!("{file_name} is not valid YAML: {e}"), None)])?;
    let mut diags = Vec::new();
    let Some(top) = document.as_object() else {
        return Err(vec![Diagnostic::new(format!("{file_name} does not hold a table of `stages`"), None)]);
    };
    let mut pipeline = toml::Table::new();
    for key in top.keys() {
        match key.as_str() {
            "stages" | "vars" => {}
            known if DISPLAY_KEYS.contains(&known) => {}
            other => diags.push(refused(format!("top-level key `{other}`"), "dagrun reads `stages` and `vars`")),
        }
    }
    let mut vars: Vec<toml::Value> = Vec::new();
    // DVC loads the default params file first, if present.
    if root.join("params.yaml").is_file() {
        vars.push(toml::Value::String("params.yaml".into()));
    }
    if let Some(declared) = top.get("vars") {
        match declared {
            Value::Array(entries) => vars.extend(entries.iter().filter_map(super::vars::to_toml)),
            other => diags
                .push(Diagnostic::new(format!("`vars` must be a list of files and tables, not {}", kind(other)), None)),
        }
    }
    if !vars.is_empty() {
        pipeline.insert("vars".into(), toml::Value::Array(vars));
    }
    let mut stages = toml::Table::new();
    match top.get("stages") {
        Some(Value::Object(entries)) => {
            for (name, body) in entries {
                if let Some(stage) = stage(name, body, &mut diags) {
                    stages.insert(name.clone(), toml::Value::Table(stage));
                }
            }
        }
        Some(other) => diags.push(Diagnostic::new(format!("`stages` must be a table, not {}", kind(other)), None)),
        None => diags.push(Diagnostic::new(format!("{file_name} has no `stages`"), None)),
    }
    if !diags.is_empty() {
        return Err(diags);
    }
    pipeline.insert("stages".into(), toml::Value::Table(stages));
    let body = toml::to_string_pretty(&pipeline).map_err(|e| vec![Diagnostic::new(e.to_string(), None)])?;
    Ok(format!("# The pipeline of {file_name}, as dagrun reads it (`dagrun import {file_name}`).\n\n{body}"))
}

fn refused(what: String, help: &str) -> Diagnostic {
    Diagnostic::new(format!("{what} is not supported"), None).help(help.to_string())
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "empty",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a table",
    }
}

/// One stage (a `foreach`'s `do` body merged in), or `None` with diagnostics.
fn stage(name: &str, body: &Value, diags: &mut Vec<Diagnostic>) -> Option<toml::Table> {
    let Some(body) = body.as_object() else {
        diags.push(Diagnostic::new(format!("stage `{name}` must be a table, not {}", kind(body)), None));
        return None;
    };
    let before = diags.len();
    let mut out = toml::Table::new();
    let mut fields = body.clone();
    if let Some(foreach) = fields.remove("foreach") {
        out.insert("foreach".into(), super::vars::to_toml(&foreach)?);
        match fields.remove("do") {
            Some(Value::Object(inner)) => {
                if let Some(extra) = fields.keys().next() {
                    diags.push(
                        Diagnostic::new(format!("stage `{name}`: `{extra}` beside `foreach` and `do`"), None)
                            .help("put the stage's keys inside `do`"),
                    );
                }
                fields = inner;
            }
            _ => {
                diags.push(
                    Diagnostic::new(format!("stage `{name}` has `foreach` without a `do` table"), None)
                        .help("write the stage's keys under `do:`"),
                );
                return None;
            }
        }
    }
    if let Some(matrix) = fields.remove("matrix") {
        out.insert("matrix".into(), super::vars::to_toml(&matrix)?);
    }
    let wdir = match fields.remove("wdir") {
        Some(Value::String(dir)) if !matches!(dir.as_str(), "" | ".") => Some(dir.trim_end_matches('/').to_string()),
        Some(Value::String(_)) | None => None,
        Some(other) => {
            diags.push(Diagnostic::new(format!("stage `{name}`: `wdir` must be a path, not {}", kind(&other)), None));
            None
        }
    };
    let at = |path: &str| in_wdir(wdir.as_deref(), path);
    let mut outputs: Vec<String> = Vec::new();
    let mut metrics: Vec<String> = Vec::new();
    let mut inputs: Vec<String> = Vec::new();
    for (key, value) in &fields {
        match key.as_str() {
            "cmd" => {
                if let Some(cmd) = command(name, value, wdir.as_deref(), diags) {
                    out.insert("cmd".into(), toml::Value::String(cmd));
                }
            }
            "deps" => inputs.extend(strings(name, key, value, diags).iter().map(|p| at(p))),
            "outs" | "metrics" | "plots" => {
                for path in output_entries(name, key, value, diags) {
                    if key == "metrics" {
                        metrics.push(at(&path));
                    }
                    outputs.push(at(&path));
                }
            }
            "params" => {
                if let Some((params, whole_files)) = params(name, value, wdir.as_deref(), diags) {
                    out.insert("params".into(), params);
                    inputs.extend(whole_files);
                }
            }
            "always_changed" => match value {
                Value::Bool(always) => {
                    out.insert("always_run".into(), toml::Value::Boolean(*always));
                }
                other => diags.push(Diagnostic::new(format!("stage `{name}`: `always_changed` must be true or false, not {}", kind(other)), None)),
            },
            "frozen" => {
                if value != &Value::Bool(false) {
                    diags.push(refused(
                        format!("stage `{name}`: `frozen`"),
                        "dagrun runs every stage that is out of date; remove `frozen`, and build the stages you want by name (`dagrun build STAGE`)",
                    ));
                }
            }
            "desc" | "meta" => {}
            "vars" => diags.push(refused(
                format!("stage `{name}`: stage-level `vars`"),
                "move the values to the top-level `vars`",
            )),
            other => diags.push(refused(
                format!("stage `{name}`: key `{other}`"),
                "a dvc.yaml stage may have cmd, wdir, deps, outs, metrics, plots, params, foreach/do, matrix, always_changed, desc and meta",
            )),
        }
    }
    if !out.contains_key("cmd") && !fields.contains_key("cmd") {
        diags.push(
            Diagnostic::new(format!("stage `{name}` has no `cmd`"), None).help("every dvc.yaml stage runs a `cmd`"),
        );
    }
    let list = |paths: Vec<String>| toml::Value::Array(paths.into_iter().map(toml::Value::String).collect());
    if !inputs.is_empty() {
        out.insert("inputs".into(), list(inputs));
    }
    if !outputs.is_empty() {
        out.insert("outputs".into(), list(outputs));
    }
    if !metrics.is_empty() {
        out.insert("metrics".into(), list(metrics));
    }
    (diags.len() == before).then_some(out)
}

/// A path written relative to `wdir`, relative to the pipeline directory instead: joined
/// by name (`eval` + `../report.txt` is `report.txt`), as `wdir` may not exist yet. A path
/// that leaves the directory keeps its `..`, for the validator to refuse.
fn in_wdir(wdir: Option<&str>, path: &str) -> String {
    let Some(dir) = wdir.filter(|_| !path.starts_with('/')) else { return path.to_string() };
    let mut parts: Vec<&str> = Vec::new();
    for part in dir.split('/').chain(path.split('/')) {
        match part {
            "" | "." => {}
            ".." if parts.last().is_some_and(|p| *p != "..") => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    parts.join("/")
}

/// `cmd`: a string, or a list run in order (each in a subshell, as DVC runs each as its own
/// process), in `wdir` when given.
fn command(name: &str, value: &Value, wdir: Option<&str>, diags: &mut Vec<Diagnostic>) -> Option<String> {
    let cmd = match value {
        Value::String(cmd) => cmd.trim_end().to_string(),
        Value::Array(_) => match strings(name, "cmd", value, diags).as_slice() {
            [] => {
                diags.push(Diagnostic::new(format!("stage `{name}`: `cmd` is an empty list"), None));
                return None;
            }
            [one] => one.trim_end().to_string(),
            many => many.iter().map(|part| format!("({})", part.trim_end())).collect::<Vec<_>>().join(" && "),
        },
        other => {
            diags.push(Diagnostic::new(
                format!("stage `{name}`: `cmd` must be a string or a list, not {}", kind(other)),
                None,
            ));
            return None;
        }
    };
    Some(match wdir {
        Some(dir) => format!("cd {} && {cmd}", super::shell_quote(dir)),
        None => cmd,
    })
}

/// A list of strings (a single string is a list of one).
fn strings(name: &str, key: &str, value: &Value, diags: &mut Vec<Diagnostic>) -> Vec<String> {
    match value {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => items
            .iter()
            .filter_map(|item| match item {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                other => {
                    diags.push(Diagnostic::new(
                        format!("stage `{name}`: an entry of `{key}` is {}, not a path", kind(other)),
                        None,
                    ));
                    None
                }
            })
            .collect(),
        Value::Null => Vec::new(),
        other => {
            diags.push(Diagnostic::new(format!("stage `{name}`: `{key}` must be a list, not {}", kind(other)), None));
            Vec::new()
        }
    }
}

/// The paths of `outs`, `metrics` or `plots`: each a path, or a one-key table of a path and
/// its flags.
fn output_entries(name: &str, key: &str, value: &Value, diags: &mut Vec<Diagnostic>) -> Vec<String> {
    let Value::Array(items) = value else {
        return strings(name, key, value, diags);
    };
    let mut paths = Vec::new();
    for item in items {
        match item {
            Value::String(path) => paths.push(path.clone()),
            Value::Object(entry) if entry.len() == 1 => {
                let (path, flags) = entry.iter().next().expect("one entry");
                if let Value::Object(flags) = flags {
                    for (flag, setting) in flags {
                        match flag.as_str() {
                            "persist" if setting == &Value::Bool(true) => diags.push(refused(
                                format!("stage `{name}`: `persist: true` on `{path}`"),
                                "dagrun deletes a stage's outputs before it runs, so that nothing of an earlier run survives into a recorded success; remove `persist`",
                            )),
                            "persist" | "checkpoint" if setting == &Value::Bool(false) => {}
                            known if OUTPUT_FLAGS_IGNORED.contains(&known) => {}
                            other => diags.push(refused(
                                format!("stage `{name}`: output flag `{other}` on `{path}`"),
                                "dagrun accepts cache, remote, push, desc, type, labels and meta, which change nothing a build does",
                            )),
                        }
                    }
                }
                paths.push(path.clone());
            }
            other => diags.push(Diagnostic::new(
                format!("stage `{name}`: an entry of `{key}` is {}, not a path", kind(other)),
                None,
            )),
        }
    }
    paths
}

/// `params`: bare keys (of `params.yaml` in `wdir`), and `{file: [keys]}`; a file with no
/// keys is tracked whole, as an input. Returns the params entry and the whole files.
fn params(
    name: &str,
    value: &Value,
    wdir: Option<&str>,
    diags: &mut Vec<Diagnostic>,
) -> Option<(toml::Value, Vec<String>)> {
    let Value::Array(entries) = value else {
        diags.push(Diagnostic::new(format!("stage `{name}`: `params` must be a list, not {}", kind(value)), None));
        return None;
    };
    let at = |file: &str| in_wdir(wdir, file);
    let mut keys: Vec<toml::Value> = Vec::new();
    let mut by_file = toml::Table::new();
    let mut whole = Vec::new();
    for entry in entries {
        match entry {
            Value::String(key) if wdir.is_some() => {
                let file = by_file.entry(at("params.yaml")).or_insert_with(|| toml::Value::Array(Vec::new()));
                file.as_array_mut().expect("a list").push(toml::Value::String(key.clone()));
            }
            Value::String(key) => keys.push(toml::Value::String(key.clone())),
            Value::Object(files) => {
                for (file, file_keys) in files {
                    match file_keys {
                        Value::Null => whole.push(at(file)),
                        Value::Array(list) if list.is_empty() => whole.push(at(file)),
                        Value::Array(_) => {
                            let listed = strings(name, "params", file_keys, diags);
                            let slot = by_file.entry(at(file)).or_insert_with(|| toml::Value::Array(Vec::new()));
                            slot.as_array_mut().expect("a list").extend(listed.into_iter().map(toml::Value::String));
                        }
                        other => diags.push(Diagnostic::new(
                            format!(
                                "stage `{name}`: the keys of params file `{file}` must be a list, not {}",
                                kind(other)
                            ),
                            None,
                        )),
                    }
                }
            }
            other => diags.push(Diagnostic::new(
                format!("stage `{name}`: an entry of `params` is {}, not a key", kind(other)),
                None,
            )),
        }
    }
    if !by_file.is_empty() {
        keys.push(toml::Value::Table(by_file));
    }
    Some((toml::Value::Array(keys), whole))
}
