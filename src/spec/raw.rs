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
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStage {
    pub cmd: Option<Spanned<String>>,
    #[serde(rename = "fn")]
    pub builtin: Option<Spanned<String>>,
    #[serde(default)]
    pub inputs: Vec<Spanned<String>>,
    #[serde(default)]
    pub outputs: Vec<Spanned<String>>,
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
    /// Outputs that hold metrics (JSON, YAML or TOML), read after each success.
    #[serde(default)]
    pub metrics: Vec<Spanned<String>>,
    /// A template: one stage per item of a list or entry of a table (`spec/template.rs`).
    pub foreach: Option<Spanned<toml::Value>>,
    /// A template: one stage per combination of the axes' values.
    pub matrix: Option<Spanned<toml::Table>>,
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
