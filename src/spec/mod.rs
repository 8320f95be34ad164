//! pipeline.toml → a validated [`Spec`]. Reads only the pipeline file; touches no state.

mod diagnostic;
mod path;
mod raw;
mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use diagnostic::{Diagnostic, SpecError, suggest};
pub use path::{GLOB_OPTIONS, RelPath, glob_reaches, is_glob, normalize, normalize_with};

/// A validated stage name: the component name shown everywhere.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct StageName(String);

impl StageName {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Stage names become file names (logs) and shell-friendly words: letters, digits,
    /// `_`, `-` and `.`, not starting with `.` or `-`.
    pub fn parse(raw: &str) -> Option<StageName> {
        let valid = !raw.is_empty()
            && raw.len() <= 100
            && !raw.starts_with(['.', '-'])
            && raw.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
        valid.then(|| StageName(raw.to_string()))
    }
}

impl fmt::Display for StageName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::borrow::Borrow<str> for StageName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// Index of a stage in [`Spec::stages`]; also its node index in the DAG.
pub type StageIdx = usize;

/// What a stage does when it runs.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// A shell command run with `sh -c` in the pipeline directory.
    Shell { cmd: String },
    /// A Rust function registered under this name.
    Builtin { name: String },
}

/// A declared input: a literal path or a glob expanded at fingerprint time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    Path(RelPath),
    Glob(RelPath),
}

impl Input {
    pub fn as_rel(&self) -> &RelPath {
        match self {
            Input::Path(p) | Input::Glob(p) => p,
        }
    }
}

/// Resources a stage asks for; used by cluster executors, recorded otherwise.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    pub cpus: Option<u32>,
    pub mem_mb: Option<u64>,
}

/// One validated stage.
#[derive(Clone, Debug)]
pub struct Stage {
    pub name: StageName,
    pub action: Action,
    pub inputs: Vec<Input>,
    pub outputs: Vec<RelPath>,
    pub after: Vec<StageName>,
    pub params: toml::Table,
    pub env: Vec<String>,
    pub retries: u32,
    pub timeout: Option<Duration>,
    pub resources: Resources,
}

/// A validated pipeline: every path normalised, every reference resolved.
#[derive(Clone, Debug)]
pub struct Spec {
    /// The pipeline file, as given.
    pub file: PathBuf,
    /// The absolute directory holding the pipeline file; all stage paths are relative to it.
    pub root: PathBuf,
    pub name: String,
    /// Where the state database lives (absolute).
    pub state_path: PathBuf,
    pub jobs: Option<usize>,
    /// Stages sorted by name.
    pub stages: Vec<Stage>,
}

impl Spec {
    pub fn stage_index(&self, name: &str) -> Option<StageIdx> {
        self.stages.binary_search_by(|s| s.name.as_str().cmp(name)).ok()
    }

    pub fn stage_names(&self) -> impl Iterator<Item = &str> {
        self.stages.iter().map(|s| s.name.as_str())
    }

    /// The directory dagrun keeps its own files in (logs, lock, default state).
    pub fn dagrun_dir(&self) -> PathBuf {
        self.root.join(".dagrun")
    }
}

/// Errors that stop a pipeline from loading.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read pipeline file {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Invalid(#[from] SpecError),
}

/// Reads, parses and validates a pipeline file.
pub fn load_spec(file: &Path, builtins: &[&str]) -> Result<Spec, LoadError> {
    let text = std::fs::read_to_string(file).map_err(|source| LoadError::Read { path: file.to_path_buf(), source })?;
    let root = absolute_dir_of(file).map_err(|source| LoadError::Read { path: file.to_path_buf(), source })?;
    Ok(parse_spec(file, &root, text, builtins)?)
}

/// Parses and validates pipeline text as if it were `file` inside `root`.
pub fn parse_spec(file: &Path, root: &Path, text: String, builtins: &[&str]) -> Result<Spec, SpecError> {
    let raw: raw::RawFile = match toml::from_str(&text) {
        Ok(raw) => raw,
        Err(err) => {
            let diag = toml_diagnostic(&err);
            return Err(SpecError::single(file.to_path_buf(), text, diag));
        }
    };
    validate::validate(file, root, &text, raw, builtins).map_err(|diagnostics| SpecError {
        file: file.to_path_buf(),
        source_text: text,
        diagnostics,
    })
}

fn absolute_dir_of(file: &Path) -> std::io::Result<PathBuf> {
    let dir = file.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::canonicalize(dir)
}

/// Turns a TOML or serde error into a diagnostic, rewording serde's unknown-field
/// message into one that suggests the nearest known key.
fn toml_diagnostic(err: &toml::de::Error) -> Diagnostic {
    let message = err.message().trim().to_string();
    let span = err.span();
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let unknown = rest.split('`').next().unwrap_or_default();
        let expected: Vec<&str> = rest
            .split('`')
            .skip(1)
            .filter(|w| w.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') && !w.is_empty())
            .collect();
        let diag = Diagnostic::new(format!("unknown key `{unknown}`"), span);
        return match suggest(unknown, expected.iter().copied()) {
            Some(near) => diag.help(format!("did you mean `{near}`?")),
            None => diag.help(format!("expected one of: {}", expected.join(", "))),
        };
    }
    Diagnostic::new(message, span)
}

/// Shared by the validator and the executor: `${params.KEY}`, `${inputs}` and `${outputs}`
/// references in a command, as (byte range, reference) pairs.
pub fn command_references(cmd: &str) -> Vec<(std::ops::Range<usize>, CommandRef<'_>)> {
    let mut refs = Vec::new();
    let mut from = 0;
    while let Some(start) = cmd[from..].find("${").map(|i| from + i) {
        let Some(len) = cmd[start..].find('}') else { break };
        let inner = &cmd[start + 2..start + len];
        let reference = if let Some(key) = inner.strip_prefix("params.") {
            Some(CommandRef::Param(key))
        } else {
            match inner {
                "inputs" => Some(CommandRef::Inputs),
                "outputs" => Some(CommandRef::Outputs),
                _ => None, // a shell variable such as ${HOME}: left for the shell
            }
        };
        if let Some(reference) = reference {
            refs.push((start..start + len + 1, reference));
        }
        from = start + len + 1;
    }
    refs
}

/// A reference dagrun substitutes in a shell command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandRef<'a> {
    Param(&'a str),
    Inputs,
    Outputs,
}

/// Parameters of a stage, by name.
pub type Params = BTreeMap<String, toml::Value>;
