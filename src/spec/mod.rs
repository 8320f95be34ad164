//! pipeline.toml → a validated [`Spec`]. Reads the pipeline file and, to resolve symbolic
//! links, the directories along the paths it declares; touches no state.

mod cache;
mod command;
mod diagnostic;
mod dvc;
mod glob;
mod params;
mod path;
mod raw;
mod resolve;
mod template;
mod validate;
mod vars;
mod wildcards;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use command::{CommandRef, Placeholder, Quoting, command_references, float_text, param, scan_command, shell_quote};
pub use diagnostic::{Diagnostic, SpecError, suggest};
pub use glob::{GlobPattern, InvalidGlob};
pub use path::{RelPath, is_glob, normalize, normalize_with, relative_inside};
pub(crate) use resolve::ResolvedRoot;
pub(crate) use validate::output_holding;

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
            && !raw.starts_with(['.', '-', '@'])
            && raw.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '@'));
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
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Action {
    /// A shell command run with `sh -c` in the pipeline directory.
    Shell { cmd: String },
    /// A Rust function registered under this name.
    Builtin { name: String },
}

/// A declared input: a literal path or a glob (compiled once, expanded at fingerprint time).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Input {
    Path(RelPath),
    /// Boxed: a pattern is 48 bytes, a path 24, and most inputs are paths.
    Glob(Box<GlobPattern>),
}

impl Input {
    pub fn as_rel(&self) -> &RelPath {
        match self {
            Input::Path(p) => p,
            Input::Glob(g) => g.as_rel(),
        }
    }
}

/// The input as declared (a glob's pattern).
impl AsRef<str> for Input {
    fn as_ref(&self) -> &str {
        self.as_rel().as_str()
    }
}

/// Resources a stage asks for: sbatch flags on Slurm (`executor/slurm`), recorded otherwise.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    pub cpus: Option<u32>,
    pub mem_mb: Option<u64>,
    /// Slurm's time limit, in minutes (its own unit): a job past it ends as `TIMEOUT`.
    pub time_min: Option<u32>,
    pub partition: Option<String>,
    /// Generic resources, as sbatch's `--gres` takes them (`gpu:1`).
    pub gres: Option<String>,
}

impl Resources {
    /// Nothing asked for.
    pub const NONE: Resources = Resources { cpus: None, mem_mb: None, time_min: None, partition: None, gres: None };
}

/// Where a stage's attempts run. What a stage's fingerprint covers is the same whichever
/// runs it, and so are its recorded outputs: the executor is never part of a fingerprint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExecutorKind {
    /// On this machine, as dagrun's own child processes (built-ins in dagrun's process).
    #[default]
    Local,
    /// As Slurm batch jobs, submitted with `sbatch`, over a shared filesystem.
    Slurm,
}

impl ExecutorKind {
    pub fn parse(text: &str) -> Option<ExecutorKind> {
        match text {
            "local" => Some(ExecutorKind::Local),
            "slurm" => Some(ExecutorKind::Slurm),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ExecutorKind::Local => "local",
            ExecutorKind::Slurm => "slurm",
        }
    }
}

/// One validated stage.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Stage {
    pub name: StageName,
    pub action: Action,
    pub inputs: Vec<Input>,
    pub outputs: Vec<RelPath>,
    pub after: Vec<StageName>,
    #[serde(with = "cache::table")]
    pub params: toml::Table,
    pub env: Vec<String>,
    pub retries: u32,
    pub timeout: Option<Duration>,
    /// `None` when it declares none, as most stages do: read it by `resources()`. (Inline,
    /// every stage paid 80 bytes for it: 8 MB at 100,000 stages.)
    pub resources: Option<Box<Resources>>,
    /// `executor = "local"` or `"slurm"`: where this stage runs whatever the build's or the
    /// pipeline's choice; `None`: the build's choice, else the pipeline's.
    pub executor: Option<ExecutorKind>,
    /// Further sbatch options, each one argument (`--qos=high`); never parsed by a shell.
    pub slurm_args: Vec<String>,
    /// Outputs holding metrics, read and recorded after each success.
    pub metrics: Vec<RelPath>,
    /// `${inputs.NAME}` and `${outputs.NAME}`, `None` when it names none: read them by
    /// `named_inputs()` and `named_outputs()`.
    pub names: Option<Box<PathNames>>,
    /// Its outputs are stored in and restored from the run-cache (`cache = false`: never).
    pub cache: bool,
    /// Runs at every build, whatever changed (DVC's `always_changed`); early cutoff still
    /// spares its downstream when its outputs come out the same.
    pub always_run: bool,
    /// Outputs written with a trailing `/`: directories, created empty before the stage runs.
    pub output_dirs: Vec<RelPath>,
}

/// The names a stage gives its inputs and outputs (`inputs = { model = "m.bin" }`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PathNames {
    /// The index in `inputs` of each named input.
    pub inputs: BTreeMap<String, usize>,
    /// The index in `outputs` of each named output.
    pub outputs: BTreeMap<String, usize>,
}

static NO_NAMES: BTreeMap<String, usize> = BTreeMap::new();

impl Stage {
    /// What the stage asks for; all `None` when it declares nothing.
    pub fn resources(&self) -> &Resources {
        self.resources.as_deref().unwrap_or(&Resources::NONE)
    }

    /// `${inputs.NAME}`: the index in `inputs` of each named input.
    pub fn named_inputs(&self) -> &BTreeMap<String, usize> {
        self.names.as_ref().map_or(&NO_NAMES, |names| &names.inputs)
    }

    /// `${outputs.NAME}`: the index in `outputs` of each named output.
    pub fn named_outputs(&self) -> &BTreeMap<String, usize> {
        self.names.as_ref().map_or(&NO_NAMES, |names| &names.outputs)
    }
}

/// A validated pipeline: every path normalised, every reference resolved.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Spec {
    /// The pipeline file, as given.
    pub file: PathBuf,
    /// The absolute directory holding the pipeline file; all stage paths are relative to it.
    pub root: PathBuf,
    pub name: String,
    /// Where the state database lives (absolute).
    pub state_path: PathBuf,
    /// This pipeline file's own directory for logs (relative to `root`): `.dagrun` for
    /// `pipeline.toml`, `.dagrun/pipelines/<file name>` for any other file.
    pub own_dir: String,
    pub jobs: Option<usize>,
    /// `[pipeline] allow_outside_paths`: inputs and outputs may name paths outside `root`.
    pub allow_outside_paths: bool,
    /// Stages sorted by name.
    #[serde(deserialize_with = "cache::exact_vec")]
    pub stages: Vec<Stage>,
    /// Files besides the pipeline file that its stages were read from (params files and
    /// vars files), relative to `root`: an edit of one can change the stages.
    pub read_files: Vec<String>,
    /// Where file templates list their files: a file appearing there adds a stage.
    pub listed: Vec<GlobPattern>,
    /// `[pipeline] cache_dir`, absolute; `None` for the default (see `Spec::cache_dir`).
    pub cache_dir_setting: Option<PathBuf>,
    /// `[pipeline] executor`: where stages run unless the build or the stage says otherwise.
    pub executor: ExecutorKind,
    /// `[pipeline] latency_wait_sec`: how long a cluster stage's missing outputs are waited
    /// for once its job has ended, for a shared filesystem to show them (Snakemake's
    /// `--latency-wait`).
    pub latency_wait: Duration,
}

impl Spec {
    /// Where stage `idx` runs: its own `executor`, else the build's choice, else the
    /// pipeline's.
    pub fn executor_of(&self, idx: StageIdx, build: Option<ExecutorKind>) -> ExecutorKind {
        self.stages[idx].executor.or(build).unwrap_or(self.executor)
    }

    pub fn stage_index(&self, name: &str) -> Option<StageIdx> {
        self.stages.binary_search_by(|s| s.name.as_str().cmp(name)).ok()
    }

    pub fn stage_names(&self) -> impl Iterator<Item = &str> {
        self.stages.iter().map(|s| s.name.as_str())
    }

    /// The directory dagrun keeps its own files in: the build lock (one per directory, so
    /// builds of two pipeline files there never overlap), and each file's own directory.
    pub fn dagrun_dir(&self) -> PathBuf {
        self.root.join(".dagrun")
    }

    /// Where the run-cache lives: `DAGRUN_CACHE_DIR` (a machine's setting, such as a shared
    /// filesystem), else `[pipeline] cache_dir`, else `.dagrun/cache`.
    pub fn cache_dir(&self) -> PathBuf {
        match std::env::var_os("DAGRUN_CACHE_DIR").filter(|d| !d.is_empty()) {
            Some(dir) => self.root.join(dir),
            None => self.cache_dir_setting.clone().unwrap_or_else(|| self.dagrun_dir().join("cache")),
        }
    }
}

/// Errors that stop a pipeline from loading.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read pipeline file {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("`--file {}` is not a regular file but {kind}; give the path of a pipeline file", path.display())]
    NotAFile { path: PathBuf, kind: &'static str },
    #[error(
        "`--file {}` is {size} bytes, more than the {} MiB a pipeline file may be; give the path of a pipeline file",
        path.display(),
        MAX_PIPELINE_BYTES >> 20
    )]
    TooLarge { path: PathBuf, size: u64 },
    #[error("{0}")]
    Invalid(#[from] SpecError),
}

/// The largest pipeline file dagrun reads: far beyond any real one, and a bound on memory.
pub const MAX_PIPELINE_BYTES: u64 = 16 * 1024 * 1024;

/// Whether a loaded spec's declared paths still pass the checks made at load with their
/// symbolic links resolved (a link along one may have changed since). Where a problem is,
/// only a full load says.
fn paths_still_resolve(spec: &Spec) -> bool {
    resolve::check_resolved(spec, None).is_empty()
}

/// Reads, parses and validates a pipeline file, then checks its declared paths with their
/// symbolic links resolved.
pub fn load_spec(file: &Path, builtins: &[&str]) -> Result<Spec, LoadError> {
    load_spec_cached(file, builtins).map(|loaded| loaded.spec)
}

/// A loaded spec, and the cache entry a build should write for it (`None` when it was
/// read from the cache).
pub struct LoadedSpec {
    pub spec: Spec,
    pub cache_entry: Option<SpecCacheEntry>,
}

/// What to keep of a spec just loaded in full, for the next load (`spec/cache.rs`): where,
/// under which key, and what it was made from besides the pipeline file, hashed when it was
/// read. The spec itself is encoded only when the entry is written.
#[derive(Debug)]
pub struct SpecCacheEntry(cache::Pending);

impl SpecCacheEntry {
    /// Writes the entry for `spec` (the spec it was made with), best effort.
    pub fn write(&self, spec: &Spec) {
        self.0.write(spec);
    }
}

/// [`load_spec`], from the spec cache when nothing the spec was made from has changed. The
/// symbolic links along declared paths are checked at every load, cached or not.
pub fn load_spec_cached(file: &Path, builtins: &[&str]) -> Result<LoadedSpec, LoadError> {
    if let Some(spec) = cached_spec(file, builtins) {
        return Ok(LoadedSpec { spec, cache_entry: None });
    }
    // A problem is reported by the full load, which knows where it was written.
    Keyed::read(file, builtins)?.load(file, builtins)
}

/// The spec cache's spec for `file`, if it has one. The file is hashed as it is read, not
/// held: at 100,000 stages its text is 16 MB, and freeing it left glibc's heap 15 MB larger
/// for the rest of the run (a freed mapping that large raises its threshold for the next).
fn cached_spec(file: &Path, builtins: &[&str]) -> Option<Spec> {
    let root = absolute_dir_of(file).ok()?;
    let entry_path = cache::path(&root, &validate::own_dir(file));
    if !entry_path.is_file() {
        return None; // the first build: the file is read once, by the full load
    }
    let mut text_hash = blake3::Hasher::new();
    let size = text_hash.update_reader(open_pipeline_file(file).ok()?).ok()?.count();
    if size > MAX_PIPELINE_BYTES {
        return None;
    }
    let key = cache::key(&root, dvc_params(file, &root), &text_hash.finalize(), builtins);
    let spec = cache::read(&entry_path, &key, file)?;
    paths_still_resolve(&spec).then_some(spec)
}

/// A dvc.yaml's translation also depends on whether params.yaml exists (DVC loads it into
/// the vars when it does).
fn dvc_params(file: &Path, root: &Path) -> bool {
    dvc::is_dvc_file(file) && root.join("params.yaml").is_file()
}

/// A pipeline file's text, and the key of the spec cache entry it would have.
struct Keyed {
    text: String,
    root: PathBuf,
    key: [u8; 32],
    entry_path: PathBuf,
}

impl Keyed {
    fn read(file: &Path, builtins: &[&str]) -> Result<Keyed, LoadError> {
        let text = read_pipeline_file(file)?;
        let root = absolute_dir_of(file).map_err(|source| LoadError::Read { path: file.to_path_buf(), source })?;
        let key = cache::key(&root, dvc_params(file, &root), &blake3::hash(text.as_bytes()), builtins);
        let entry_path = cache::path(&root, &validate::own_dir(file));
        Ok(Keyed { text, root, key, entry_path })
    }

    /// The spec of the text, validated in full, with the cache entry to write for it.
    fn load(self, file: &Path, builtins: &[&str]) -> Result<LoadedSpec, LoadError> {
        let spec = load_uncached(file, &self.root, self.text, builtins)?;
        let cache_entry = Some(SpecCacheEntry(cache::Pending::of(&spec, self.key, self.entry_path)));
        Ok(LoadedSpec { spec, cache_entry })
    }
}

fn load_uncached(file: &Path, root: &Path, text: String, builtins: &[&str]) -> Result<Spec, LoadError> {
    let root = root.to_path_buf();
    if dvc::is_dvc_file(file) {
        let translated = translate_dvc(file, &root, &text)?;
        return check_loaded(file, &root, translated, builtins).map_err(|err| match err {
            LoadError::Invalid(err) => LoadError::Invalid(in_translation(err, text)),
            other => other,
        });
    }
    check_loaded(file, &root, text, builtins)
}

/// The pipeline.toml a DVC pipeline file means (what `dagrun import` prints).
pub fn import_dvc(file: &Path) -> Result<String, LoadError> {
    let text = read_pipeline_file(file)?;
    let root = absolute_dir_of(file).map_err(|source| LoadError::Read { path: file.to_path_buf(), source })?;
    translate_dvc(file, &root, &text)
}

fn translate_dvc(file: &Path, root: &Path, text: &str) -> Result<String, LoadError> {
    let name = file.file_name().map_or_else(|| "dvc.yaml".into(), |n| n.to_string_lossy().into_owned());
    dvc::translate(root, &name, text).map_err(|diagnostics| {
        LoadError::Invalid(SpecError { file: file.to_path_buf(), source_text: text.to_string(), diagnostics })
    })
}

/// A problem found in the translation of a DVC file has no place in the file itself: it is
/// reported by message, with the way to see the translation.
fn in_translation(mut err: SpecError, original: String) -> SpecError {
    let file = err.file.display().to_string();
    for diag in &mut err.diagnostics {
        diag.span = None;
        diag.message = format!("{} (in the translation of {file}: `dagrun import {file}` prints it)", diag.message);
    }
    err.source_text = original;
    err
}

fn check_loaded(file: &Path, root: &Path, text: String, builtins: &[&str]) -> Result<Spec, LoadError> {
    let (spec, spans, text) = parse_with_spans(file, root, text, builtins)?;
    let diagnostics = resolve::check_resolved(&spec, Some(&spans));
    if !diagnostics.is_empty() {
        return Err(SpecError { file: file.to_path_buf(), source_text: text, diagnostics }.into());
    }
    Ok(spec)
}

/// Reads the pipeline file after checking, by its metadata alone, that it is a regular file
/// of sane size: opening a FIFO would block, and `/dev/zero` never ends.
fn read_pipeline_file(file: &Path) -> Result<String, LoadError> {
    use std::io::Read;

    let mut text = String::new();
    open_pipeline_file(file)?
        .read_to_string(&mut text)
        .map_err(|source| LoadError::Read { path: file.to_path_buf(), source })?;
    if text.len() as u64 > MAX_PIPELINE_BYTES {
        return Err(LoadError::TooLarge { path: file.to_path_buf(), size: text.len() as u64 });
    }
    Ok(text)
}

/// The pipeline file opened for reading, if it is a regular file of sane size. What it gives
/// stops one byte past the largest size allowed, as the file may grow after the check.
fn open_pipeline_file(file: &Path) -> Result<std::io::Take<std::fs::File>, LoadError> {
    use std::io::Read;
    use std::os::unix::fs::FileTypeExt;

    let read_error = |source| LoadError::Read { path: file.to_path_buf(), source };
    let meta = std::fs::metadata(file).map_err(read_error)?;
    let file_type = meta.file_type();
    let kind = if file_type.is_file() {
        None
    } else if file_type.is_dir() {
        Some("a directory")
    } else if file_type.is_fifo() {
        Some("a FIFO")
    } else if file_type.is_socket() {
        Some("a socket")
    } else if file_type.is_char_device() || file_type.is_block_device() {
        Some("a device")
    } else {
        Some("something else")
    };
    if let Some(kind) = kind {
        return Err(LoadError::NotAFile { path: file.to_path_buf(), kind });
    }
    if meta.len() > MAX_PIPELINE_BYTES {
        return Err(LoadError::TooLarge { path: file.to_path_buf(), size: meta.len() });
    }
    Ok(std::fs::File::open(file).map_err(read_error)?.take(MAX_PIPELINE_BYTES + 1))
}

/// Parses and validates pipeline text as if it were `file` inside `root`.
pub fn parse_spec(file: &Path, root: &Path, text: String, builtins: &[&str]) -> Result<Spec, SpecError> {
    parse_with_spans(file, root, text, builtins).map(|(spec, _, _)| spec)
}

/// [`parse_spec`], also returning where each stage's paths were written, and the text.
fn parse_with_spans(
    file: &Path,
    root: &Path,
    text: String,
    builtins: &[&str],
) -> Result<(Spec, Vec<validate::Spans>, String), SpecError> {
    let raw: raw::RawFile = match toml::from_str(&text) {
        Ok(raw) => raw,
        Err(err) => {
            let diag = toml_diagnostic(&err);
            return Err(SpecError::single(file.to_path_buf(), text, diag));
        }
    };
    match validate::validate(file, root, &text, raw, builtins) {
        Ok((spec, spans)) => Ok((spec, spans, text)),
        Err(diagnostics) => Err(SpecError { file: file.to_path_buf(), source_text: text, diagnostics }),
    }
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
    if message.contains("untagged enum RawParams") {
        return Diagnostic::new("`params` must be a table or a list of params-file keys", span).help(
            "`params = { lr = 0.1 }`, or `params = [\"train.lr\", { \"other.yaml\" = [\"a.b\"] }]` for keys of params files",
        );
    }
    Diagnostic::new(message, span)
}

/// Parameters of a stage, by name.
pub type Params = BTreeMap<String, toml::Value>;
