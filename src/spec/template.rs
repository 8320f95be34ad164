//! Stage templates and `${...}` references, as DVC and Snakemake write them, expanded before
//! anything is validated so that every error still points at the template's own lines:
//! - `foreach` (a list or a table) and `matrix` (several axes) make one stage per item,
//!   named `NAME@item` (`NAME@a-test` for a matrix);
//! - `foreach_file = "text/{name}.txt"` makes one stage per matching file (Snakemake's
//!   wildcards), named by the wildcards' texts (`NAME@a`);
//! - top-level `vars` give every stage values to refer to (`${model.name}`).
//!
//! In `inputs`, `outputs`, `metrics` and string `params`, `${item}`, `${item.KEY}`, `${key}`,
//! a wildcard (`${name}`) and a var (`${model.name}`) are replaced by the value's text. In
//! `cmd` they become `${params.…}` references: the value is a param of the stage, so it
//! reaches the shell as a value, never as code, and is part of the fingerprint.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;

use toml::Spanned;

use super::diagnostic::Diagnostic;
use super::raw::{RawParams, RawStage};
use super::wildcards::WildcardPattern;

/// The names one instance of a template gives (`item`, `key`, wildcards), and its suffix.
struct Instance {
    suffix: String,
    names: toml::Table,
}

impl Instance {
    fn plain() -> Instance {
        Instance { suffix: String::new(), names: toml::Table::new() }
    }
}

/// What a `${...}` can name: the instance's names first, then the pipeline's vars.
struct Context<'a> {
    instance: &'a Instance,
    vars: &'a toml::Table,
}

impl Context<'_> {
    fn knows(&self, head: &str) -> bool {
        self.instance.names.contains_key(head) || self.vars.contains_key(head)
    }

    fn is_var(&self, reference: &str) -> bool {
        let head = reference.split('.').next().unwrap_or_default();
        !self.instance.names.contains_key(head) && self.vars.contains_key(head)
    }

    /// The value a reference names (`item.lr`, `key`, `name`, `model.size`).
    fn lookup(&self, reference: &str) -> Option<toml::Value> {
        let mut parts = reference.split('.');
        let head = parts.next()?;
        let mut value = self.instance.names.get(head).or_else(|| self.vars.get(head))?;
        for part in parts {
            value = value.as_table()?.get(part)?;
        }
        Some(value.clone())
    }

    /// `${…}` references this context knows in `text`, each with its range and name;
    /// others (`${HOME}`, `${params.x}`) are left as written.
    fn references<'t>(&self, text: &'t str) -> Vec<(Range<usize>, &'t str)> {
        let mut found = Vec::new();
        let mut at = 0;
        while let Some(start) = text[at..].find("${").map(|i| at + i) {
            let Some(len) = text[start + 2..].find('}') else { break };
            let name = &text[start + 2..start + 2 + len];
            if self.knows(name.split('.').next().unwrap_or_default()) {
                found.push((start..start + len + 3, name));
            }
            at = start + 2;
        }
        found
    }

    /// `text` with each reference replaced by the value's text, or the first reference
    /// that names nothing (or a table, which has no text).
    fn substitute(&self, text: &str) -> Result<String, String> {
        let mut out = String::with_capacity(text.len());
        let mut last = 0;
        for (range, name) in self.references(text) {
            let value = self.lookup(name).and_then(|v| scalar_text(&v)).ok_or_else(|| name.to_string())?;
            out.push_str(&text[last..range.start]);
            out.push_str(&value);
            last = range.end;
        }
        out.push_str(&text[last..]);
        Ok(out)
    }

    /// A param written as exactly one reference takes the value with its type.
    fn whole_reference(&self, text: &str) -> Option<toml::Value> {
        match self.references(text).as_slice() {
            [(range, name)] if *range == (0..text.len()) => self.lookup(name),
            _ => None,
        }
    }
}

/// Every stage of the file, templates expanded and references filled in, in name order.
pub(super) fn expand(
    root: &Path,
    stages: &BTreeMap<Spanned<String>, RawStage>,
    vars: &toml::Table,
    diags: &mut Vec<Diagnostic>,
) -> Vec<(Spanned<String>, RawStage)> {
    let mut expanded = Vec::with_capacity(stages.len());
    for (name, stage) in stages {
        let kinds = [stage.foreach.is_some(), stage.matrix.is_some(), stage.foreach_file.is_some()];
        if kinds.iter().filter(|&&k| k).count() > 1 {
            diags.push(
                Diagnostic::new(format!("stage `{}` has more than one of `foreach`, `matrix` and `foreach_file`", name.get_ref()), Some(name.span()))
                    .help("keep one: `matrix` crosses several lists, `foreach` walks one, `foreach_file` walks matching files"),
            );
            continue;
        }
        let instances = if let Some(foreach) = &stage.foreach {
            foreach_instances(foreach, vars, diags)
        } else if let Some(matrix) = &stage.matrix {
            matrix_instances(matrix, vars, diags)
        } else if let Some(pattern) = &stage.foreach_file {
            file_instances(root, pattern, diags)
        } else {
            let ctx = Context { instance: &Instance::plain(), vars };
            if let Some(stage) = instantiate(stage, &ctx, name.span(), diags) {
                expanded.push((name.clone(), stage));
            }
            continue;
        };
        let file_span = stage.foreach_file.as_ref().map(Spanned::span);
        for instance in &instances {
            let instance_name = Spanned::new(name.span(), format!("{}@{}", name.get_ref(), instance.suffix));
            let ctx = Context { instance, vars };
            if let Some(mut stage) = instantiate(stage, &ctx, name.span(), diags) {
                if let Some(span) = &file_span {
                    add_matched_file(&mut stage, instance, span.clone());
                }
                expanded.push((instance_name, stage));
            }
        }
    }
    expanded.sort_by(|a, b| a.0.get_ref().cmp(b.0.get_ref()));
    expanded
}

/// A file template's instance reads its file: the file is an input (first) unless the
/// template already lists it, so that editing it re-runs that instance.
fn add_matched_file(stage: &mut RawStage, instance: &Instance, span: Range<usize>) {
    let Some(toml::Value::String(path)) = instance.names.get("item") else { return };
    if !stage.inputs.paths.iter().any(|p| p.get_ref() == path) {
        stage.inputs.paths.insert(0, Spanned::new(span, path.clone()));
        stage.inputs.names.insert(0, None);
    }
}

/// A scalar's text as it appears in names and paths; `None` for a table or a list.
fn scalar_text(value: &toml::Value) -> Option<String> {
    match value {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(super::float_text(*f)),
        toml::Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

fn item_instance(suffix: String, item: toml::Value, key: Option<String>) -> Instance {
    let mut names = toml::Table::new();
    names.insert("item".into(), item);
    if let Some(key) = key {
        names.insert("key".into(), toml::Value::String(key));
    }
    Instance { suffix, names }
}

fn foreach_instances(foreach: &Spanned<toml::Value>, vars: &toml::Table, diags: &mut Vec<Diagnostic>) -> Vec<Instance> {
    // `foreach = "${models}"` walks a var, as DVC allows.
    let value = match foreach.get_ref() {
        toml::Value::String(text) => {
            let ctx = Context { instance: &Instance::plain(), vars };
            match ctx.whole_reference(text) {
                Some(value) => value,
                None => {
                    diags.push(
                        Diagnostic::new(format!("`foreach = \"{text}\"` names no var"), Some(foreach.span()))
                            .help("give a list or a table, or `\"${NAME}\"` for a list or table in `vars`"),
                    );
                    return Vec::new();
                }
            }
        }
        other => other.clone(),
    };
    match value {
        // A list of scalars is named by its values; a list of tables by position, as DVC does.
        toml::Value::Array(items) => items
            .into_iter()
            .enumerate()
            .map(|(i, item)| item_instance(scalar_text(&item).unwrap_or_else(|| i.to_string()), item, None))
            .collect(),
        toml::Value::Table(entries) => {
            entries.into_iter().map(|(key, item)| item_instance(key.clone(), item, Some(key))).collect()
        }
        _ => {
            diags.push(
                Diagnostic::new("`foreach` must be a list or a table", Some(foreach.span()))
                    .help("for example `foreach = [\"a\", \"b\"]` or `foreach = { a = { lr = 0.1 } }`"),
            );
            Vec::new()
        }
    }
}

fn matrix_instances(matrix: &Spanned<toml::Table>, vars: &toml::Table, diags: &mut Vec<Diagnostic>) -> Vec<Instance> {
    let mut combos: Vec<(Vec<String>, toml::Table)> = vec![(Vec::new(), toml::Table::new())];
    let plain = Instance::plain();
    let ctx = Context { instance: &plain, vars };
    for (axis, values) in matrix.get_ref() {
        // An axis may be a var's list, as DVC allows (`model = "${models}"`).
        let values = match values {
            toml::Value::String(text) => ctx.whole_reference(text).unwrap_or_else(|| values.clone()),
            other => other.clone(),
        };
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
    combos.into_iter().map(|(names, table)| item_instance(names.join("-"), toml::Value::Table(table), None)).collect()
}

/// The glob that lists a file template's candidates, if its pattern names a place inside
/// the pipeline directory.
fn file_glob(root: &Path, wildcards: &WildcardPattern) -> Option<super::glob::GlobPattern> {
    let rel = super::path::normalize_with(root, &wildcards.glob(), false).ok()?;
    super::glob::GlobPattern::new(rel).ok()
}

/// The globs of the stages' file templates: a file appearing or leaving there changes the
/// pipeline's stages.
pub(super) fn file_template_globs(
    root: &Path,
    stages: &BTreeMap<Spanned<String>, RawStage>,
) -> Vec<super::glob::GlobPattern> {
    stages
        .values()
        .filter_map(|stage| stage.foreach_file.as_ref())
        .filter_map(|pattern| file_glob(root, &WildcardPattern::parse(pattern.get_ref()).ok()?))
        .collect()
}

/// One instance per file matching the pattern: `item` is the file's path, and each
/// wildcard its text. Files are listed when the pipeline loads.
fn file_instances(root: &Path, pattern: &Spanned<String>, diags: &mut Vec<Diagnostic>) -> Vec<Instance> {
    let wildcards = match WildcardPattern::parse(pattern.get_ref()) {
        Ok(wildcards) => wildcards,
        Err(problem) => {
            diags.push(
                Diagnostic::new(
                    format!("`foreach_file` pattern `{}`: {problem}", pattern.get_ref()),
                    Some(pattern.span()),
                )
                .help("for example `foreach_file = \"text/{name}.txt\"`, then `${name}` in paths"),
            );
            return Vec::new();
        }
    };
    let Some(glob) = file_glob(root, &wildcards) else {
        diags.push(
            Diagnostic::new(
                format!("`foreach_file` pattern `{}` is not a path inside the pipeline directory", pattern.get_ref()),
                Some(pattern.span()),
            )
            .help("write it relative to the pipeline file, such as `text/{name}.txt`"),
        );
        return Vec::new();
    };
    let names = wildcards.names();
    let mut instances = Vec::new();
    for path in glob.expand(root) {
        let Some(values) = wildcards.capture(&path) else { continue };
        let mut instance = item_instance(values.join("-"), toml::Value::String(path), None);
        for (name, value) in names.iter().zip(values) {
            instance.names.insert(name.to_string(), toml::Value::String(value));
        }
        instances.push(instance);
    }
    instances
}

/// The stage for one instance (or a plain stage, with only vars to fill in), or `None`
/// (with a diagnostic) when a reference names nothing.
fn instantiate(
    template: &RawStage,
    ctx: &Context<'_>,
    name_span: Range<usize>,
    diags: &mut Vec<Diagnostic>,
) -> Option<RawStage> {
    let mut stage = template.clone();
    stage.foreach = None;
    stage.matrix = None;
    stage.foreach_file = None;
    let mut ok = true;
    let mut text = |s: &Spanned<String>| -> Spanned<String> {
        match ctx.substitute(s.get_ref()) {
            Ok(value) => Spanned::new(s.span(), value),
            Err(reference) => {
                ok = false;
                diags.push(unknown_reference(&reference, ctx, s.span()));
                s.clone()
            }
        }
    };
    stage.inputs = template.inputs.map(&mut text);
    stage.outputs = template.outputs.map(&mut text);
    stage.metrics = template.metrics.iter().map(&mut text).collect();
    if let Some(cmd) = &template.cmd {
        let (command, values) = as_param_references(cmd.get_ref(), ctx);
        for (reference, value) in values {
            match value {
                Some(value) if !value.is_table() => {
                    stage.template_params.insert(reference, value);
                }
                _ => {
                    ok = false;
                    diags.push(unknown_reference(&reference, ctx, cmd.span()));
                }
            }
        }
        stage.cmd = Some(Spanned::new(cmd.span(), command));
    }
    if let RawParams::Inline(params) = &mut stage.params {
        for (param, value) in params.iter_mut() {
            let toml::Value::String(text) = value else { continue };
            let replaced = match ctx.whole_reference(text) {
                Some(typed) => typed,
                None => match ctx.substitute(text) {
                    Ok(replaced) => toml::Value::String(replaced),
                    Err(reference) => {
                        ok = false;
                        let diag = unknown_reference(&reference, ctx, name_span.clone());
                        diags.push(Diagnostic { message: format!("param `{param}`: {}", diag.message), ..diag });
                        continue;
                    }
                },
            };
            *value = replaced;
        }
    }
    // The instance's own names are params whole (each instance differs by them).
    for (name, value) in &ctx.instance.names {
        stage.template_params.insert(name.clone(), value.clone());
    }
    ok.then_some(stage)
}

fn unknown_reference(reference: &str, ctx: &Context<'_>, span: Range<usize>) -> Diagnostic {
    if ctx.is_var(reference) {
        return Diagnostic::new(format!("`${{{reference}}}` names nothing in `vars` that has a text"), Some(span))
            .help("name a key of `vars` whose value is a string, number or boolean, not a table");
    }
    Diagnostic::new(format!("`${{{reference}}}` names nothing in item `{}`", ctx.instance.suffix), Some(span)).help(
        "use `${item}`, `${item.KEY}` for a table item, `${key}` in a `foreach` over a table, or a `foreach_file` wildcard",
    )
}

/// A command with each reference made a param reference: `${item.lr}` becomes
/// `${params.item.lr}`, passed to the shell as a value like every param. Also returns each
/// var the command refers to, with its value: the stage's param under the same name.
fn as_param_references(cmd: &str, ctx: &Context<'_>) -> (String, Vec<(String, Option<toml::Value>)>) {
    let mut out = String::with_capacity(cmd.len() + 16);
    let mut vars = Vec::new();
    let mut last = 0;
    for (range, name) in ctx.references(cmd) {
        out.push_str(&cmd[last..range.start]);
        out.push_str(&format!("${{params.{name}}}"));
        last = range.end;
        if ctx.is_var(name) {
            vars.push((name.to_string(), ctx.lookup(name)));
        } else if ctx.lookup(name).is_none() {
            vars.push((name.to_string(), None));
        }
    }
    out.push_str(&cmd[last..]);
    (out, vars)
}
