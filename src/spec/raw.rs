//! The pipeline file exactly as serde reads it, spans kept for later checks.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFile {
    #[serde(default)]
    pub pipeline: RawPipeline,
    #[serde(default)]
    pub stages: BTreeMap<Spanned<String>, RawStage>,
    /// Values every stage may refer to as `${NAME}` (`spec/vars.rs`).
    pub vars: Option<Spanned<RawVars>>,
}

/// Top-level `vars`: a table of values, or, as DVC writes them, a list of params files
/// (`"config.yaml"`, `"config.yaml:a,b"` for some keys) and tables, merged in order.
#[derive(Deserialize, Clone, Debug)]
#[serde(untagged)]
pub(super) enum RawVars {
    Table(toml::Table),
    List(Vec<VarsEntry>),
}

#[derive(Deserialize, Clone, Debug)]
#[serde(untagged)]
pub(super) enum VarsEntry {
    File(String),
    Values(toml::Table),
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPipeline {
    pub name: Option<String>,
    pub state: Option<Spanned<String>>,
    pub jobs: Option<Spanned<u32>>,
    /// Let inputs and outputs name paths outside the pipeline directory.
    #[serde(default)]
    pub allow_outside_paths: bool,
    /// The params file that bare keys in a stage's `params` list name.
    pub params_file: Option<String>,
    /// Where the run-cache lives (default `.dagrun/cache`; `DAGRUN_CACHE_DIR` overrides it).
    pub cache_dir: Option<Spanned<String>>,
    /// `"local"` (the default) or `"slurm"`.
    pub executor: Option<Spanned<String>>,
    /// Seconds to wait for a cluster stage's outputs to appear on a shared filesystem.
    pub latency_wait_sec: Option<Spanned<u32>>,
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStage {
    pub cmd: Option<Spanned<String>>,
    #[serde(rename = "fn")]
    pub builtin: Option<Spanned<String>>,
    #[serde(default)]
    pub inputs: RawPaths,
    #[serde(default)]
    pub outputs: RawPaths,
    #[serde(default)]
    pub after: Vec<Spanned<String>>,
    #[serde(default)]
    pub params: RawParams,
    #[serde(default)]
    pub env: Vec<Spanned<String>>,
    pub retries: Option<Spanned<u32>>,
    pub timeout_sec: Option<Spanned<u64>>,
    #[serde(default)]
    pub resources: super::Resources,
    /// `"local"` or `"slurm"`: where this stage runs, whatever the build or pipeline says.
    pub executor: Option<Spanned<String>>,
    /// Further sbatch options, one argument each.
    #[serde(default)]
    pub slurm_args: Vec<Spanned<String>>,
    /// Outputs that hold metrics (JSON, YAML or TOML), read after each success.
    #[serde(default)]
    pub metrics: Vec<Spanned<String>>,
    /// A template: one stage per item of a list or entry of a table (`spec/template.rs`).
    pub foreach: Option<Spanned<toml::Value>>,
    /// A template: one stage per combination of the axes' values.
    pub matrix: Option<Spanned<toml::Table>>,
    /// `false`: never store this stage's outputs in the run-cache, nor restore them.
    pub cache: Option<bool>,
    /// Run at every build, whatever changed (DVC's `always_changed`).
    #[serde(default)]
    pub always_run: bool,
    /// A template: one stage per file matching a wildcard pattern (`text/{name}.txt`).
    pub foreach_file: Option<Spanned<String>>,
    /// Params a template gives each of its instances (`item`, `key`); never written.
    #[serde(skip)]
    pub template_params: toml::Table,
}

/// A stage's params: written inline, or named as keys of params files, read as DVC reads
/// them (`params = ["train.lr", { "other.yaml" = ["a.b"] }]`; a bare key is in the
/// pipeline's default params file).
#[derive(Deserialize, Clone, Debug)]
#[serde(untagged)]
pub(super) enum RawParams {
    Inline(toml::Table),
    /// Spans do not survive serde's untagged enums: errors point at the stage instead.
    Keys(Vec<ParamKeys>),
}

impl Default for RawParams {
    fn default() -> RawParams {
        RawParams::Inline(toml::Table::new())
    }
}

#[derive(Deserialize, Clone, Debug)]
#[serde(untagged)]
pub(super) enum ParamKeys {
    /// A key of the default params file.
    Key(String),
    /// A params file and the keys of it the stage uses.
    File(std::collections::BTreeMap<String, Vec<String>>),
}

/// A stage's inputs or outputs: a list of paths, or a table of named paths
/// (`inputs = { model = "model.bin" }`, used in `cmd` as `${inputs.model}`). Read with a
/// visitor of its own rather than an untagged enum, which would lose the spans.
#[derive(Clone, Default, Debug)]
pub(super) struct RawPaths {
    pub paths: Vec<Spanned<String>>,
    /// The name of each path, when given as a table (same order as `paths`).
    pub names: Vec<Option<String>>,
}

impl RawPaths {
    /// The same names, each path replaced by `f`'s.
    pub fn map(&self, f: impl FnMut(&Spanned<String>) -> Spanned<String>) -> RawPaths {
        RawPaths { paths: self.paths.iter().map(f).collect(), names: self.names.clone() }
    }
}

impl<'de> Deserialize<'de> for RawPaths {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<RawPaths, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = RawPaths;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a list of paths, or a table of named paths (`{ model = \"model.bin\" }`)")
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<RawPaths, A::Error> {
                let mut paths = RawPaths::default();
                while let Some(path) = seq.next_element::<Spanned<String>>()? {
                    paths.paths.push(path);
                    paths.names.push(None);
                }
                Ok(paths)
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<RawPaths, A::Error> {
                let mut paths = RawPaths::default();
                while let Some(name) = map.next_key::<String>()? {
                    paths.paths.push(map.next_value::<Spanned<String>>()?);
                    paths.names.push(Some(name));
                }
                Ok(paths)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}
