//! Raw pipeline file → validated [`Spec`]: every check that needs no filesystem or state.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use super::path::{is_glob, normalize};
use super::raw::{RawFile, RawStage};
use super::{Action, CommandRef, Diagnostic, Input, RelPath, Spec, Stage, StageName, command_references, suggest};

/// Validates a parsed pipeline file, collecting every problem rather than stopping at the first.
pub(super) fn validate(file: &Path, root: &Path, raw: RawFile, builtins: &[&str]) -> Result<Spec, Vec<Diagnostic>> {
    let mut diags = Vec::new();
    let names: Vec<&str> = raw.stages.keys().map(|k| k.get_ref().as_str()).collect();

    let mut stages = Vec::with_capacity(raw.stages.len());
    let mut output_owners: Vec<(RelPath, usize, Range<usize>)> = Vec::new();
    for (key, stage) in &raw.stages {
        let Some(name) = StageName::parse(key.get_ref()) else {
            diags.push(
                Diagnostic::new(format!("invalid stage name `{}`", key.get_ref()), Some(key.span()))
                    .help("use letters, digits, `_`, `-` and `.`, starting with a letter, digit or `_`"),
            );
            continue;
        };
        let idx = stages.len();
        let checked = check_stage(root, name, key.span(), stage, &names, builtins, &mut diags);
        for (out, span) in checked.output_spans {
            output_owners.push((out, idx, span));
        }
        stages.push(checked.stage);
    }
    check_output_overlaps(&stages, &mut output_owners, &mut diags);
    check_own_inputs(&raw, &stages, &mut diags);

    let jobs = match &raw.pipeline.jobs {
        Some(jobs) if *jobs.get_ref() == 0 => {
            diags.push(
                Diagnostic::new("`jobs` must be at least 1", Some(jobs.span()))
                    .help("leave `jobs` out to use every core"),
            );
            None
        }
        other => other.as_ref().map(|j| *j.get_ref() as usize),
    };
    let state_path = match &raw.pipeline.state {
        Some(state) if state.get_ref().trim().is_empty() => {
            diags.push(
                Diagnostic::new("`state` is empty", Some(state.span()))
                    .help("give a database path such as `.dagrun/state.db`"),
            );
            PathBuf::new()
        }
        Some(state) => root.join(state.get_ref()),
        None => root.join(".dagrun").join("state.db"),
    };
    if !diags.is_empty() {
        return Err(diags);
    }
    let name = raw
        .pipeline
        .name
        .unwrap_or_else(|| root.file_name().map_or_else(|| "pipeline".into(), |n| n.to_string_lossy().into_owned()));
    Ok(Spec { file: file.to_path_buf(), root: root.to_path_buf(), name, state_path, jobs, stages })
}

struct CheckedStage {
    stage: Stage,
    output_spans: Vec<(RelPath, Range<usize>)>,
}

fn check_stage(
    root: &Path,
    name: StageName,
    name_span: Range<usize>,
    raw: &RawStage,
    names: &[&str],
    builtins: &[&str],
    diags: &mut Vec<Diagnostic>,
) -> CheckedStage {
    let action = check_action(&name, name_span, raw, builtins, diags);

    let mut inputs = Vec::new();
    for input in &raw.inputs {
        if let Some(path) = check_path(root, input, "input", diags) {
            inputs.push(if is_glob(input.get_ref()) { Input::Glob(path) } else { Input::Path(path) });
        }
    }
    let mut outputs = Vec::new();
    let mut output_spans = Vec::new();
    for output in &raw.outputs {
        if is_glob(output.get_ref()) {
            diags.push(
                Diagnostic::new(format!("output `{}` is a glob", output.get_ref()), Some(output.span()))
                    .help("outputs must be named exactly; declare the directory that holds them instead"),
            );
        } else if let Some(path) = check_path(root, output, "output", diags) {
            output_spans.push((path.clone(), output.span()));
            outputs.push(path);
        }
    }

    let mut after = Vec::new();
    for dep in &raw.after {
        let dep_name = dep.get_ref().as_str();
        if dep_name == name.as_str() {
            diags.push(
                Diagnostic::new(format!("stage `{name}` lists itself in `after`"), Some(dep.span())).help("remove it"),
            );
        } else if names.binary_search(&dep_name).is_ok() {
            after.extend(StageName::parse(dep_name));
        } else {
            let diag = Diagnostic::new(format!("unknown stage `{dep_name}` in `after`"), Some(dep.span()));
            diags.push(match suggest(dep_name, names.iter().copied()) {
                Some(near) => diag.help(format!("did you mean `{near}`?")),
                None => diag.help(format!("known stages: {}", names.join(", "))),
            });
        }
    }

    for var in &raw.env {
        let valid = !var.get_ref().is_empty()
            && !var.get_ref().starts_with(|c: char| c.is_ascii_digit())
            && var.get_ref().chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            diags.push(Diagnostic::new(
                format!("invalid environment variable name `{}`", var.get_ref()),
                Some(var.span()),
            ));
        }
    }

    let timeout = match &raw.timeout_sec {
        Some(t) if *t.get_ref() == 0 => {
            diags.push(
                Diagnostic::new("`timeout_sec` must be at least 1", Some(t.span())).help("leave it out for no timeout"),
            );
            None
        }
        other => other.as_ref().map(|t| Duration::from_secs(*t.get_ref())),
    };

    let stage = Stage {
        name,
        action,
        inputs,
        outputs,
        after,
        params: raw.params.clone(),
        env: raw.env.iter().map(|v| v.get_ref().clone()).collect(),
        retries: raw.retries,
        timeout,
        resources: raw.resources.clone(),
    };
    CheckedStage { stage, output_spans }
}

fn check_action(
    name: &StageName,
    name_span: Range<usize>,
    raw: &RawStage,
    builtins: &[&str],
    diags: &mut Vec<Diagnostic>,
) -> Action {
    match (&raw.cmd, &raw.builtin) {
        (Some(cmd), None) => {
            for (range, reference) in command_references(cmd.get_ref()) {
                if let CommandRef::Param(key) = reference
                    && !raw.params.contains_key(key)
                {
                    // The span of the reference inside the command string (+1 for the opening quote).
                    let at = cmd.span().start + 1 + range.start..cmd.span().start + 1 + range.end;
                    let diag =
                        Diagnostic::new(format!("`${{params.{key}}}` names no param of stage `{name}`"), Some(at));
                    diags.push(match suggest(key, raw.params.keys().map(String::as_str)) {
                        Some(near) => diag.help(format!("did you mean `${{params.{near}}}`?")),
                        None => diag.help(format!("add `params = {{ {key} = ... }}` to the stage")),
                    });
                }
            }
            Action::Shell { cmd: cmd.get_ref().clone() }
        }
        (None, Some(builtin)) => {
            let builtin_name = builtin.get_ref();
            if !builtins.contains(&builtin_name.as_str()) {
                let diag = Diagnostic::new(format!("unknown built-in stage `{builtin_name}`"), Some(builtin.span()));
                diags.push(match suggest(builtin_name, builtins.iter().copied()) {
                    Some(near) => diag.help(format!("did you mean `{near}`?")),
                    None if builtins.is_empty() => {
                        diag.help("this dagrun has no built-in stages; use `cmd` for a shell command")
                    }
                    None => diag.help(format!("known built-ins: {}", builtins.join(", "))),
                });
            }
            Action::Builtin { name: builtin_name.clone() }
        }
        (Some(_), Some(builtin)) => {
            diags.push(
                Diagnostic::new(format!("stage `{name}` has both `cmd` and `fn`"), Some(builtin.span()))
                    .help("a stage runs either a shell command (`cmd`) or a built-in (`fn`); keep one"),
            );
            Action::Builtin { name: builtin.get_ref().clone() }
        }
        (None, None) => {
            diags.push(
                Diagnostic::new(format!("stage `{name}` has neither `cmd` nor `fn`"), Some(name_span))
                    .help("add `cmd = \"...\"` (a shell command) or `fn = \"...\"` (a built-in stage)"),
            );
            Action::Shell { cmd: String::new() }
        }
    }
}

fn check_path(root: &Path, raw: &Spanned<String>, what: &str, diags: &mut Vec<Diagnostic>) -> Option<RelPath> {
    normalize(root, raw.get_ref())
        .map_err(|problem| {
            diags.push(
                Diagnostic::new(format!("{what} {}", problem.describe(raw.get_ref())), Some(raw.span()))
                    .help(problem.help()),
            );
        })
        .ok()
}

/// Two stages writing one path, or one writing inside another's output directory.
fn check_output_overlaps(stages: &[Stage], owners: &mut [(RelPath, usize, Range<usize>)], diags: &mut Vec<Diagnostic>) {
    owners.sort_by(|a, b| a.0.cmp(&b.0));
    // Sorted, a path inside a directory follows it, though not always directly (`a`, `a-b`, `a/c`),
    // so keep the stack of enclosing outputs.
    let mut enclosing: Vec<&(RelPath, usize, Range<usize>)> = Vec::new();
    for owner in owners.iter() {
        while enclosing.last().is_some_and(|outer| !owner.0.is_within(&outer.0)) {
            enclosing.pop();
        }
        if let Some(outer) = enclosing.last() {
            let (a, b) = (&stages[outer.1].name, &stages[owner.1].name);
            let message = if outer.0 == owner.0 {
                if a == b {
                    format!("stage `{b}` lists output `{}` twice", owner.0)
                } else {
                    format!("stages `{a}` and `{b}` both write `{}`", owner.0)
                }
            } else {
                format!("output `{}` of stage `{b}` is inside output `{}` of stage `{a}`", owner.0, outer.0)
            };
            diags.push(
                Diagnostic::new(message, Some(owner.2.clone()))
                    .help("each file may be written by one stage only; give each stage its own output path"),
            );
        }
        enclosing.push(owner);
    }
}

/// A stage may not read what it writes.
fn check_own_inputs(raw: &RawFile, stages: &[Stage], diags: &mut Vec<Diagnostic>) {
    let spans: BTreeMap<&str, &RawStage> = raw.stages.iter().map(|(k, v)| (k.get_ref().as_str(), v)).collect();
    for stage in stages {
        for (i, input) in stage.inputs.iter().enumerate() {
            let clash = stage.outputs.iter().find(|out| match input {
                Input::Path(p) => p.is_within(out) || out.is_within(p),
                Input::Glob(p) => glob::Pattern::new(p.as_str()).is_ok_and(|pat| pat.matches(out.as_str())),
            });
            if let Some(out) = clash {
                let span = spans.get(stage.name.as_str()).and_then(|r| r.inputs.get(i)).map(|s| s.span());
                diags.push(
                    Diagnostic::new(
                        format!("stage `{}` reads `{}`, which is its own output `{out}`", stage.name, input.as_rel()),
                        span,
                    )
                    .help("a stage cannot depend on what it writes; split it into two stages or rename the output"),
                );
            }
        }
        for (i, input) in stage.inputs.iter().enumerate() {
            if let Input::Glob(pattern) = input
                && let Err(err) = glob::Pattern::new(pattern.as_str())
            {
                let span = spans.get(stage.name.as_str()).and_then(|r| r.inputs.get(i)).map(|s| s.span());
                diags.push(Diagnostic::new(format!("invalid glob `{pattern}`: {}", err.msg), span));
            }
        }
    }
}
