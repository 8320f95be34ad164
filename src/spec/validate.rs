//! Raw pipeline file → validated [`Spec`]: every check that needs no filesystem or state,
//! except that `state` is compared with the pipeline file with links resolved.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use super::command::{Quoting, scan_command};
use super::glob::GlobPattern;
use super::path::{is_glob, normalize_with};
use super::raw::{RawFile, RawStage};
use super::resolve::resolve;
use super::{Action, CommandRef, Diagnostic, Input, PathNames, RelPath, Resources, Spec, Stage, StageName, suggest};

/// More attempts than this is a loop, not a retry policy.
const MAX_RETRIES: u32 = 10;
/// A week: longer timeouts are almost certainly a typo (and would overflow a deadline).
const MAX_TIMEOUT_SEC: u64 = 7 * 24 * 3600;

/// Validates a parsed pipeline file, collecting every problem rather than stopping at the
/// first. Returns, with the spec, where each stage's inputs and outputs were written.
pub(super) fn validate(
    file: &Path,
    root: &Path,
    text: &str,
    raw: RawFile,
    builtins: &[&str],
) -> Result<(Spec, Vec<Spans>), Vec<Diagnostic>> {
    let mut diags = Vec::new();
    let (vars, vars_files) = super::vars::load(root, raw.vars.as_ref(), &mut diags);
    let expanded = super::template::expand(root, &raw.stages, &vars, &mut diags);
    let names: Vec<&str> = expanded.iter().map(|(k, _)| k.get_ref().as_str()).collect();
    let state_path = state_path(file, root, &raw, &mut diags);

    let params_files = std::cell::RefCell::new(super::params::ParamsFiles::default());
    let mut stages = Vec::with_capacity(expanded.len());
    let mut checked = Vec::with_capacity(expanded.len());
    for (key, stage) in &expanded {
        let Some(name) = StageName::parse(key.get_ref()) else {
            diags.push(
                Diagnostic::new(format!("invalid stage name `{}`", key.get_ref()), Some(key.span()))
                    .help("use letters, digits, `_`, `-` and `.`, starting with a letter, digit or `_`"),
            );
            continue;
        };
        let places = Places {
            root,
            text,
            allow_outside: raw.pipeline.allow_outside_paths,
            params_file: raw.pipeline.params_file.as_deref().unwrap_or(super::params::DEFAULT_FILE),
            params_files: &params_files,
        };
        let (stage, spans) = check_stage(&places, name, key.span(), stage, &names, builtins, &mut diags);
        stages.push(stage);
        checked.push(spans);
    }
    check_output_overlaps(&stages, &checked, &mut diags);
    check_own_inputs(&stages, &checked, &mut diags);
    check_state_not_an_output(root, &state_path, &stages, &checked, &mut diags);
    if let Some(dir) = &raw.pipeline.cache_dir {
        check_cache_not_in_an_output(root, dir, &stages, &mut diags);
    }

    let executor = raw.pipeline.executor.as_ref().and_then(|e| parse_executor(e, &mut diags)).unwrap_or_default();
    let latency_wait =
        Duration::from_secs(raw.pipeline.latency_wait_sec.as_ref().map_or(5, |s| u64::from(*s.get_ref())));
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
    if !diags.is_empty() {
        return Err(diags);
    }
    let name = raw
        .pipeline
        .name
        .unwrap_or_else(|| root.file_name().map_or_else(|| "pipeline".into(), |n| n.to_string_lossy().into_owned()));
    let own_dir = own_dir(file);
    let allow_outside_paths = raw.pipeline.allow_outside_paths;
    let cache_dir_setting = raw.pipeline.cache_dir.as_ref().map(|dir| dir.get_ref().clone());
    let mut read_files: Vec<String> = vars_files;
    read_files.extend(params_files.borrow().names().map(str::to_string));
    read_files.sort();
    read_files.dedup();
    let spec = Spec {
        read_files,
        listed: super::template::file_template_globs(root, &raw.stages),
        cache_dir_setting: cache_dir_setting.map(|dir| root.join(dir)),
        file: file.to_path_buf(),
        root: root.to_path_buf(),
        name,
        state_path,
        own_dir,
        jobs,
        allow_outside_paths,
        stages,
        executor,
        latency_wait,
    };
    Ok((spec, checked))
}

/// Where a pipeline file keeps its state and logs, relative to its directory. Each
/// pipeline file has its own, so that two files in one directory never mix their stages:
/// `pipeline.toml` keeps the documented `.dagrun/`, any other file
/// `.dagrun/pipelines/<file name>/`.
pub(super) fn own_dir(file: &Path) -> String {
    match file.file_name().and_then(|name| name.to_str()) {
        None | Some("pipeline.toml") => ".dagrun".to_string(),
        Some(name) => format!(".dagrun/pipelines/{name}"),
    }
}

fn state_path(file: &Path, root: &Path, raw: &RawFile, diags: &mut Vec<Diagnostic>) -> PathBuf {
    match &raw.pipeline.state {
        Some(state) if state.get_ref().trim().is_empty() => {
            diags.push(
                Diagnostic::new("`state` is empty", Some(state.span()))
                    .help("give a database path such as `.dagrun/state.db`"),
            );
            PathBuf::new()
        }
        Some(state) => {
            let path = root.join(state.get_ref());
            // `--reset-state` moves the state database aside: it must not be the pipeline file.
            let pipeline_file = root.join(file.file_name().unwrap_or_default());
            if resolve(&path) == resolve(&pipeline_file) {
                diags.push(
                    Diagnostic::new(format!("`state` is the pipeline file `{}`", file.display()), Some(state.span()))
                        .help("give the state database its own file, such as `.dagrun/state.db`"),
                );
            }
            path
        }
        None => root.join(own_dir(file)).join("state.db"),
    }
}

/// Where each validated input and output of a stage was written in the file, in the order
/// of `Stage::inputs` and `Stage::outputs`.
pub(super) struct Spans {
    pub inputs: Vec<Range<usize>>,
    pub outputs: Vec<Range<usize>>,
}

/// What checking a stage's paths and spans needs to know about the file.
struct Places<'a> {
    root: &'a Path,
    text: &'a str,
    allow_outside: bool,
    /// The params file bare keys name, and the params files read so far.
    params_file: &'a str,
    params_files: &'a std::cell::RefCell<super::params::ParamsFiles>,
}

fn check_stage(
    places: &Places<'_>,
    name: StageName,
    name_span: Range<usize>,
    raw: &RawStage,
    names: &[&str],
    builtins: &[&str],
    diags: &mut Vec<Diagnostic>,
) -> (Stage, Spans) {
    let mut params = super::params::stage_params(
        places.root,
        places.params_file,
        &raw.params,
        name_span.clone(),
        &mut places.params_files.borrow_mut(),
        diags,
    );
    for (key, value) in &raw.template_params {
        match params.get(key) {
            Some(own) if own != value => diags.push(
                Diagnostic::new(
                    format!("`${{{key}}}` in stage `{name}` is also a param of it, with another value"),
                    Some(name_span.clone()),
                )
                .help("rename the param or the var so that `${params.…}` means one thing"),
            ),
            _ => {
                params.insert(key.clone(), value.clone());
            }
        }
    }
    let action = check_action(places.text, &name, name_span, raw, &params, builtins, diags);
    let mut spans = Spans { inputs: Vec::new(), outputs: Vec::new() };

    let mut inputs = Vec::new();
    let mut named_inputs = BTreeMap::new();
    for (input, label) in raw.inputs.paths.iter().zip(&raw.inputs.names) {
        if let Some(path) = check_path(places, input, "input", diags) {
            let input_kind = if is_glob(input.get_ref()) {
                match GlobPattern::new(path) {
                    Ok(glob) => Input::Glob(Box::new(glob)),
                    Err(err) => {
                        diags.push(
                            Diagnostic::new(err.to_string(), Some(input.span()))
                                .help("`*` and `?` match within one path component, `**/` any directories"),
                        );
                        continue;
                    }
                }
            } else {
                Input::Path(path)
            };
            if let Some(label) = label {
                check_path_name(label, "input", input.span(), diags);
                named_inputs.insert(label.clone(), inputs.len());
            }
            inputs.push(input_kind);
            spans.inputs.push(input.span());
        }
    }
    let mut outputs = Vec::new();
    let mut named_outputs = BTreeMap::new();
    let mut output_dirs = Vec::new();
    for (output, label) in raw.outputs.paths.iter().zip(&raw.outputs.names) {
        if is_glob(output.get_ref()) {
            diags.push(
                Diagnostic::new(format!("output `{}` is a glob", output.get_ref()), Some(output.span()))
                    .help("outputs must be named exactly; declare the directory that holds them instead"),
            );
        } else if let Some(path) = check_path(places, output, "output", diags) {
            if let Some(label) = label {
                check_path_name(label, "output", output.span(), diags);
                named_outputs.insert(label.clone(), outputs.len());
            }
            if output.get_ref().ends_with('/') {
                output_dirs.push(path.clone());
            }
            outputs.push(path);
            spans.outputs.push(output.span());
        }
    }

    let mut metrics = Vec::new();
    for file in &raw.metrics {
        let Some(path) = check_path(places, file, "metrics file", diags) else { continue };
        let known_kind = matches!(
            std::path::Path::new(path.as_str()).extension().and_then(|e| e.to_str()),
            Some("json" | "yaml" | "yml" | "toml")
        );
        if !outputs.contains(&path) {
            diags.push(
                Diagnostic::new(
                    format!("metrics file `{}` is not among the stage's outputs", file.get_ref()),
                    Some(file.span()),
                )
                .help("add it to `outputs` too: the stage writes it, and dagrun reads it after each success"),
            );
        } else if !known_kind {
            diags.push(
                Diagnostic::new(
                    format!("metrics file `{}` is not .json, .yaml, .yml or .toml", file.get_ref()),
                    Some(file.span()),
                )
                .help("write the metrics as JSON, YAML or TOML"),
            );
        } else {
            metrics.push(path);
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
        } else if let instances @ [_, ..] = template_instances(names, dep_name) {
            // A template's name means every one of its instances.
            after.extend(instances.iter().filter(|i| **i != name.as_str()).filter_map(|i| StageName::parse(i)));
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

    let retries = match &raw.retries {
        Some(r) if *r.get_ref() > MAX_RETRIES => {
            diags.push(Diagnostic::new(format!("`retries` must be at most {MAX_RETRIES}"), Some(r.span())));
            0
        }
        other => other.as_ref().map_or(0, |r| *r.get_ref()),
    };
    let timeout = match &raw.timeout_sec {
        Some(t) if *t.get_ref() == 0 || *t.get_ref() > MAX_TIMEOUT_SEC => {
            diags.push(
                Diagnostic::new(
                    format!("`timeout_sec` must be between 1 and {MAX_TIMEOUT_SEC} (a week)"),
                    Some(t.span()),
                )
                .help("leave it out for no timeout"),
            );
            None
        }
        other => other.as_ref().map(|t| Duration::from_secs(*t.get_ref())),
    };

    let executor = raw.executor.as_ref().and_then(|e| parse_executor(e, diags));
    for arg in &raw.slurm_args {
        if let Err(problem) = check_slurm_arg(arg.get_ref()) {
            diags.push(Diagnostic::new(problem, Some(arg.span())).help(
                "each item is one sbatch option with its value, such as \"--qos=high\"; dagrun sets the job's name, directory and log itself",
            ));
        }
    }

    let stage = Stage {
        name,
        action,
        inputs,
        outputs,
        after,
        params,
        env: raw.env.iter().map(|v| v.get_ref().clone()).collect(),
        retries,
        timeout,
        resources: (raw.resources != Resources::NONE).then(|| Box::new(raw.resources.clone())),
        executor,
        slurm_args: raw.slurm_args.iter().map(|a| a.get_ref().clone()).collect(),
        metrics,
        names: (!named_inputs.is_empty() || !named_outputs.is_empty())
            .then(|| Box::new(PathNames { inputs: named_inputs, outputs: named_outputs })),
        always_run: raw.always_run,
        cache: raw.cache.unwrap_or(true),
        output_dirs,
    };
    (stage, spans)
}

fn check_action(
    text: &str,
    name: &StageName,
    name_span: Range<usize>,
    raw: &RawStage,
    params: &toml::Table,
    builtins: &[&str],
    diags: &mut Vec<Diagnostic>,
) -> Action {
    match (&raw.cmd, &raw.builtin) {
        (Some(cmd), None) => {
            for placeholder in scan_command(cmd.get_ref()) {
                if placeholder.quoting == Quoting::QuotedHeredoc {
                    let written = &cmd.get_ref()[placeholder.range.clone()];
                    diags.push(
                        Diagnostic::new(
                            format!("`{written}` is inside a quoted here-document (`<<'EOF'`), where the shell expands nothing"),
                            Some(cmd.span()),
                        )
                        .help("quote nothing in the delimiter (`<<EOF`) so that the value reaches the document"),
                    );
                }
                check_named_path(&placeholder.reference, raw, cmd.span(), diags);
                if let CommandRef::Param(key) = placeholder.reference
                    && super::command::param(params, key).is_none()
                {
                    let diag = Diagnostic::new(
                        format!("`${{params.{key}}}` names no param of stage `{name}`"),
                        Some(reference_span(text, cmd.span(), key)),
                    );
                    diags.push(match suggest(key, params.keys().map(String::as_str)) {
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

/// Where `${params.KEY}` is written inside a command string: found in the file's own text,
/// so that escapes and quoting styles before it cannot shift the position.
fn reference_span(text: &str, cmd_span: Range<usize>, key: &str) -> Range<usize> {
    let written = text.get(cmd_span.clone()).unwrap_or("");
    match written.find(&format!("${{params.{key}}}")) {
        Some(at) => cmd_span.start + at..cmd_span.start + at + key.len() + 10,
        None => cmd_span,
    }
}

/// The instances of template `name` (`name@…`) among the sorted stage names.
fn template_instances<'a>(names: &'a [&'a str], name: &str) -> &'a [&'a str] {
    let prefix = format!("{name}@");
    let start = names.partition_point(|n| *n < prefix.as_str());
    let len = names[start..].iter().take_while(|n| n.starts_with(&prefix)).count();
    &names[start..start + len]
}

/// A named input or output is used as `${inputs.NAME}`: its name is a plain word.
fn check_path_name(name: &str, what: &str, span: Range<usize>, diags: &mut Vec<Diagnostic>) {
    let valid = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !valid {
        diags.push(
            Diagnostic::new(format!("invalid {what} name `{name}`"), Some(span))
                .help("name inputs and outputs with letters, digits, `_` and `-`"),
        );
    }
}

/// `${inputs.NAME}` and `${outputs.NAME}` must name one of the stage's named paths.
fn check_named_path(reference: &CommandRef<'_>, raw: &RawStage, span: Range<usize>, diags: &mut Vec<Diagnostic>) {
    let (kind, name, paths) = match reference {
        CommandRef::Input(name) => ("inputs", *name, &raw.inputs),
        CommandRef::Output(name) => ("outputs", *name, &raw.outputs),
        _ => return,
    };
    let names: Vec<&str> = paths.names.iter().flatten().map(String::as_str).collect();
    if names.contains(&name) {
        return;
    }
    let diag =
        Diagnostic::new(format!("`${{{kind}.{name}}}` names no {} of the stage", &kind[..kind.len() - 1]), Some(span));
    diags.push(match suggest(name, names.iter().copied()) {
        Some(near) => diag.help(format!("did you mean `${{{kind}.{near}}}`?")),
        None if names.is_empty() => diag
            .help(format!("give the stage's {kind} as a table of names, such as `{kind} = {{ {name} = \"path\" }}`")),
        None => diag.help(format!("its named {kind}: {}", names.join(", "))),
    });
}

fn check_path(places: &Places<'_>, raw: &Spanned<String>, what: &str, diags: &mut Vec<Diagnostic>) -> Option<RelPath> {
    normalize_with(places.root, raw.get_ref(), places.allow_outside)
        .map_err(|problem| {
            diags.push(
                Diagnostic::new(format!("{what} {}", problem.describe(raw.get_ref())), Some(raw.span()))
                    .help(problem.help()),
            );
        })
        .ok()
}

/// Two stages writing one path, or one writing inside another's output directory.
fn check_output_overlaps(stages: &[Stage], spans: &[Spans], diags: &mut Vec<Diagnostic>) {
    let mut owners: BTreeMap<&str, usize> = BTreeMap::new();
    let help = "each file may be written by one stage only; give each stage its own output path";
    for (idx, stage) in stages.iter().enumerate() {
        for (out, span) in stage.outputs.iter().zip(&spans[idx].outputs) {
            let message = match owners.get(out.as_str()) {
                Some(&first) if first == idx => format!("stage `{}` lists output `{out}` twice", stage.name),
                Some(&first) => format!("stages `{}` and `{}` both write `{out}`", stages[first].name, stage.name),
                None => {
                    owners.insert(out.as_str(), idx);
                    continue;
                }
            };
            diags.push(Diagnostic::new(message, Some(span.clone())).help(help));
        }
    }
    // With every output known, a path with another output among its ancestors is nested.
    for (idx, stage) in stages.iter().enumerate() {
        for (out, span) in stage.outputs.iter().zip(&spans[idx].outputs) {
            if let Some((dir, &outer)) = out.ancestors().find_map(|dir| owners.get_key_value(dir)) {
                let message = format!(
                    "output `{out}` of stage `{}` is inside output `{dir}` of stage `{}`",
                    stage.name, stages[outer].name
                );
                diags.push(Diagnostic::new(message, Some(span.clone())).help(help));
            }
        }
    }
}

/// A stage may not read what it writes.
fn check_own_inputs(stages: &[Stage], spans: &[Spans], diags: &mut Vec<Diagnostic>) {
    for (idx, stage) in stages.iter().enumerate() {
        for (input, span) in stage.inputs.iter().zip(&spans[idx].inputs) {
            let clash = stage.outputs.iter().find(|out| match input {
                Input::Path(p) => p.is_within(out) || out.is_within(p),
                // The glob could read the output, or a directory holding it.
                Input::Glob(glob) => glob.reaches(out.as_str()) || out.ancestors().any(|dir| glob.matches(dir)),
            });
            if let Some(out) = clash {
                diags.push(
                    Diagnostic::new(
                        format!("stage `{}` reads `{}`, which is its own output `{out}`", stage.name, input.as_rel()),
                        Some(span.clone()),
                    )
                    .help("a stage cannot depend on what it writes; split it into two stages or rename the output"),
                );
            }
        }
    }
}

/// Outputs are deleted before their stage runs: none may hold the state database.
fn check_state_not_an_output(
    root: &Path,
    state: &Path,
    stages: &[Stage],
    spans: &[Spans],
    diags: &mut Vec<Diagnostic>,
) {
    // Compared as absolute paths: either may lie outside the root (`allow_outside_paths`).
    let state = lexical(state);
    let shown = state.strip_prefix(root).unwrap_or(&state).display();
    for (idx, stage) in stages.iter().enumerate() {
        for (out, span) in stage.outputs.iter().zip(&spans[idx].outputs) {
            if state.starts_with(lexical(&out.to_path(root))) {
                diags.push(
                    Diagnostic::new(
                        format!("output `{out}` of stage `{}` holds the state database `{shown}`", stage.name),
                        Some(span.clone()),
                    )
                    .help("outputs are deleted before their stage runs; keep `state` out of every output"),
                );
            }
        }
    }
}

/// Outputs are deleted before their stage runs: none may hold the run-cache.
fn check_cache_not_in_an_output(root: &Path, dir: &Spanned<String>, stages: &[Stage], diags: &mut Vec<Diagnostic>) {
    if let Some((stage, out)) = output_holding(root, stages, &root.join(dir.get_ref())) {
        diags.push(
            Diagnostic::new(
                format!("`cache_dir` is inside output `{out}` of stage `{}`", stage.name),
                Some(dir.span()),
            )
            .help("outputs are deleted before their stage runs; keep the run-cache out of every output"),
        );
    }
}

/// The stage and declared output that `path` lies in, if any, compared by name (`..`
/// resolved, links not followed).
pub(crate) fn output_holding<'a>(root: &Path, stages: &'a [Stage], path: &Path) -> Option<(&'a Stage, &'a RelPath)> {
    let path = lexical(path);
    stages.iter().find_map(|stage| {
        let out = stage.outputs.iter().find(|out| path.starts_with(lexical(&out.to_path(root))))?;
        Some((stage, out))
    })
}

/// An absolute path with `.` and `..` removed by name alone (no links are followed).
fn lexical(path: &Path) -> PathBuf {
    let mut clean = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                clean.pop();
            }
            other => clean.push(other),
        }
    }
    clean
}

/// `executor = "local"` or `"slurm"`.
fn parse_executor(text: &Spanned<String>, diags: &mut Vec<Diagnostic>) -> Option<super::ExecutorKind> {
    let kind = super::ExecutorKind::parse(text.get_ref());
    if kind.is_none() {
        diags.push(
            Diagnostic::new(format!("unknown executor `{}`", text.get_ref()), Some(text.span()))
                .help("use \"local\" (this machine) or \"slurm\" (sbatch jobs on a shared filesystem)"),
        );
    }
    kind
}

/// sbatch options that dagrun sets itself, and that a stage may not change: the job's name
/// and comment find it again after a killed build, its log and directory are where dagrun
/// reads them, a requeued or array job would run the stage more than once, a job on another
/// cluster would be one squeue and scancel cannot see, and a held one is dagrun's to release.
const SLURM_OPTIONS_OF_DAGRUN: &[&str] = &[
    "--job-name",
    "-J",
    "--output",
    "-o",
    "--error",
    "-e",
    "--chdir",
    "-D",
    "--wrap",
    "--array",
    "-a",
    "--parsable",
    "--requeue",
    "--open-mode",
    "--export",
    "--wait",
    "-W",
    "--comment",
    "--clusters",
    "-M",
    "--hold",
    "-H",
    "--test-only",
];

/// One `slurm_args` item: a single option with its value (`--qos=high`; `-q`, `high` as two
/// items is refused, since each item must start with `-`), not one of dagrun's own.
fn check_slurm_arg(arg: &str) -> Result<(), String> {
    if !arg.starts_with('-') {
        return Err(format!("`slurm_args` item `{arg}` is not an sbatch option"));
    }
    let option = arg.split('=').next().unwrap_or(arg);
    let short_with_value = SLURM_OPTIONS_OF_DAGRUN.iter().any(|o| o.len() == 2 && arg.starts_with(o));
    if SLURM_OPTIONS_OF_DAGRUN.contains(&option) || short_with_value {
        return Err(format!("`slurm_args` may not set `{option}`: dagrun sets it for every job"));
    }
    Ok(())
}
