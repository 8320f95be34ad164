//! `FingerprintInputs`: every value that decides whether a stage runs, hashed canonically.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::hashes::{FileHash, Fingerprint, OutputHash};

/// Bumped when the encoding below changes, so old fingerprints never match new ones.
const ENCODING_VERSION: &[u8] = b"dagrun fingerprint v1\0";

/// What a stage does, as far as the fingerprint is concerned.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ActionId {
    Shell { cmd: String },
    Builtin { name: String, version: String },
}

/// Everything hashed into a stage's fingerprint. Recorded as JSON at each success so
/// that a later mismatch can be explained field by field (`dagrun why`, `status`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FingerprintInputs {
    pub action: ActionId,
    pub params: toml::Table,
    /// Declared environment variables; `None` when unset (distinct from empty).
    pub env: BTreeMap<String, Option<String>>,
    /// Content hash of each source input file or directory (inputs no stage writes).
    pub inputs: BTreeMap<String, FileHash>,
    /// The inputs as declared, in order: which upstream file a stage reads, and the order
    /// `${inputs}` lists them in, matter even when no content changed.
    #[serde(default)]
    pub declared_inputs: Vec<String>,
    /// The declared outputs: declaring a new one re-runs the stage.
    pub outputs: Vec<String>,
    /// What each `${inputs.NAME}` and `${outputs.NAME}` stands for (`inputs.model` ->
    /// `model.bin`): swapping two names changes what the command reads, though neither the
    /// command nor the paths changed. Empty (and hashed as absent) for unnamed paths.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub names: BTreeMap<String, String>,
    /// The recorded output hash of each upstream stage.
    pub upstream: BTreeMap<String, OutputHash>,
}

impl FingerprintInputs {
    /// A placeholder that covers nothing (and allocates nothing), for an evaluation whose
    /// inputs no one will read.
    pub fn covering_nothing() -> FingerprintInputs {
        FingerprintInputs {
            action: ActionId::Shell { cmd: String::new() },
            params: toml::Table::new(),
            env: BTreeMap::new(),
            inputs: BTreeMap::new(),
            declared_inputs: Vec::new(),
            outputs: Vec::new(),
            names: BTreeMap::new(),
            upstream: BTreeMap::new(),
        }
    }

    /// BLAKE3 over every field in a fixed order (`FingerprintFields::fingerprint`).
    pub fn fingerprint(&self) -> Fingerprint {
        let action = match &self.action {
            ActionId::Shell { cmd } => ActionRef::Shell { cmd },
            ActionId::Builtin { name, version } => ActionRef::Builtin { name, version },
        };
        let env: Vec<(&str, Option<&str>)> =
            self.env.iter().map(|(name, value)| (name.as_str(), value.as_deref())).collect();
        let inputs: Vec<(&str, FileHash)> = self.inputs.iter().map(|(path, hash)| (path.as_str(), *hash)).collect();
        let names: Vec<(NameKey<'_>, &str)> =
            self.names.iter().map(|(name, path)| (NameKey { prefix: "", name }, path.as_str())).collect();
        let upstream: Vec<(&str, OutputHash)> =
            self.upstream.iter().map(|(stage, hash)| (stage.as_str(), *hash)).collect();
        FingerprintFields {
            action,
            params: &self.params,
            env: &env,
            inputs: &inputs,
            declared_inputs: &self.declared_inputs,
            outputs: &self.outputs,
            names: &names,
            upstream: &upstream,
        }
        .fingerprint()
    }
}

/// A stage's command or built-in, borrowed.
#[derive(Clone, Copy, Debug)]
pub(crate) enum ActionRef<'a> {
    Shell { cmd: &'a str },
    Builtin { name: &'a str, version: &'a str },
}

/// The key of a name in `FingerprintInputs::names`, in two parts so that `inputs.model` need
/// not be made to be hashed: hashed (and ordered) as `prefix` followed by `name`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct NameKey<'a> {
    pub prefix: &'a str,
    pub name: &'a str,
}

/// The fields of [`FingerprintInputs`], borrowed, each map as a slice sorted by its key with
/// no key twice (as a `BTreeMap` iterates; equal keys would hash twice). This is the one
/// encoder: `FingerprintInputs::fingerprint` goes through it, and the planner fills it
/// straight from the spec for every stage it evaluates; only a caller that keeps the manifest
/// copies its strings (`to_inputs`), so the many stages that turn out up to date copy none.
/// `names` keys sort as their text does only if no `prefix` is a proper prefix of another
/// (`inputs.` and `outputs.`, or `""` throughout).
pub(crate) struct FingerprintFields<'a, D: AsRef<str>, O: AsRef<str>> {
    pub action: ActionRef<'a>,
    pub params: &'a toml::Table,
    /// Declared environment variables; `None` when unset (distinct from empty).
    pub env: &'a [(&'a str, Option<&'a str>)],
    pub inputs: &'a [(&'a str, FileHash)],
    pub declared_inputs: &'a [D],
    pub outputs: &'a [O],
    pub names: &'a [(NameKey<'a>, &'a str)],
    pub upstream: &'a [(&'a str, OutputHash)],
}

impl<D: AsRef<str>, O: AsRef<str>> FingerprintFields<'_, D, O> {
    /// BLAKE3 over every field in a fixed order; maps are sorted, strings length-prefixed.
    /// The encoding is written whole, then hashed in one call: a stage's fields are a few
    /// hundred bytes, and thirty `update` calls of a few bytes cost more than the hashing.
    pub fn fingerprint(&self) -> Fingerprint {
        debug_assert!(self.env.is_sorted_by(|a, b| a.0 < b.0), "env sorted, each name once");
        debug_assert!(self.inputs.is_sorted_by(|a, b| a.0 < b.0), "inputs sorted, each path once");
        debug_assert!(self.names.is_sorted_by(|a, b| a.0 < b.0), "names sorted, each once");
        debug_assert!(self.upstream.is_sorted_by(|a, b| a.0 < b.0), "upstream sorted, each stage once");
        let mut e = Encoding(Vec::with_capacity(512));
        e.bytes(ENCODING_VERSION);
        match self.action {
            ActionRef::Shell { cmd } => {
                e.tag(b'S');
                e.str(cmd);
            }
            ActionRef::Builtin { name, version } => {
                e.tag(b'B');
                e.str(name);
                e.str(version);
            }
        }
        e.tag(b'P');
        e.table(self.params);
        e.tag(b'E');
        e.len(self.env.len());
        for &(name, value) in self.env {
            e.str(name);
            match value {
                Some(value) => {
                    e.tag(1);
                    e.str(value);
                }
                None => e.tag(0),
            }
        }
        e.tag(b'I');
        e.len(self.inputs.len());
        for (path, hash) in self.inputs {
            e.str(path);
            e.bytes(hash.0.as_bytes());
        }
        e.tag(b'D');
        e.len(self.declared_inputs.len());
        for path in self.declared_inputs {
            e.str(path.as_ref());
        }
        e.tag(b'O');
        e.len(self.outputs.len());
        for path in self.outputs {
            e.str(path.as_ref());
        }
        // Only when present, so that fingerprints recorded before names existed still match.
        if !self.names.is_empty() {
            e.tag(b'N');
            e.len(self.names.len());
            for (key, path) in self.names {
                e.len(key.prefix.len() + key.name.len());
                e.bytes(key.prefix.as_bytes());
                e.bytes(key.name.as_bytes());
                e.str(path);
            }
        }
        e.tag(b'U');
        e.len(self.upstream.len());
        for (stage, hash) in self.upstream {
            e.str(stage);
            e.bytes(hash.0.as_bytes());
        }
        Fingerprint(blake3::hash(&e.0))
    }

    /// The fields, owned: the manifest recorded at a success, to explain a later change.
    pub fn to_inputs(&self) -> FingerprintInputs {
        FingerprintInputs {
            action: match self.action {
                ActionRef::Shell { cmd } => ActionId::Shell { cmd: cmd.to_string() },
                ActionRef::Builtin { name, version } => {
                    ActionId::Builtin { name: name.to_string(), version: version.to_string() }
                }
            },
            params: self.params.clone(),
            env: self.env.iter().map(|&(name, value)| (name.to_string(), value.map(str::to_string))).collect(),
            inputs: self.inputs.iter().map(|&(path, hash)| (path.to_string(), hash)).collect(),
            declared_inputs: self.declared_inputs.iter().map(|path| path.as_ref().to_string()).collect(),
            outputs: self.outputs.iter().map(|path| path.as_ref().to_string()).collect(),
            names: self
                .names
                .iter()
                .map(|(key, path)| (format!("{}{}", key.prefix, key.name), path.to_string()))
                .collect(),
            upstream: self.upstream.iter().map(|&(stage, hash)| (stage.to_string(), hash)).collect(),
        }
    }
}

/// Hash of a stage's outputs: sorted (path, content hash) pairs.
pub fn output_hash(outputs: &BTreeMap<String, FileHash>) -> OutputHash {
    let mut e = Encoding(Vec::with_capacity(64 + outputs.len() * 64));
    e.bytes(b"dagrun outputs v1\0");
    e.len(outputs.len());
    for (path, hash) in outputs {
        e.str(path);
        e.bytes(hash.0.as_bytes());
    }
    OutputHash(blake3::hash(&e.0))
}

/// The canonical encoding being written: tags, little-endian `u64` lengths, length-prefixed
/// strings.
struct Encoding(Vec<u8>);

impl Encoding {
    fn bytes(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(bytes);
    }

    fn tag(&mut self, tag: u8) {
        self.0.push(tag);
    }

    fn len(&mut self, len: usize) {
        self.bytes(&(len as u64).to_le_bytes());
    }

    fn str(&mut self, s: &str) {
        self.len(s.len());
        self.bytes(s.as_bytes());
    }

    fn table(&mut self, table: &toml::Table) {
        // toml::Table is a BTreeMap here (no `preserve_order`), so iteration is sorted by key.
        self.len(table.len());
        for (key, value) in table {
            self.str(key);
            self.value(value);
        }
    }

    /// Values hash alike exactly when TOML calls them equal: `1` (integer) and `1.0` (float)
    /// differ, `0.0` and `-0.0` agree, and every NaN is the same NaN.
    fn value(&mut self, value: &toml::Value) {
        match value {
            toml::Value::String(s) => {
                self.tag(b's');
                self.str(s);
            }
            toml::Value::Integer(i) => {
                self.tag(b'i');
                self.bytes(&i.to_le_bytes());
            }
            toml::Value::Float(f) => {
                self.tag(b'f');
                let canonical = if f.is_nan() {
                    f64::NAN.to_bits()
                } else if *f == 0.0 {
                    0.0f64.to_bits()
                } else {
                    f.to_bits()
                };
                self.bytes(&canonical.to_le_bytes());
            }
            toml::Value::Boolean(b) => {
                self.tag(b'b');
                self.tag(u8::from(*b));
            }
            toml::Value::Datetime(d) => {
                self.tag(b'd');
                self.str(&d.to_string());
            }
            toml::Value::Array(items) => {
                self.tag(b'a');
                self.len(items.len());
                for item in items {
                    self.value(item);
                }
            }
            toml::Value::Table(table) => {
                self.tag(b't');
                self.table(table);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> FingerprintInputs {
        FingerprintInputs {
            action: ActionId::Shell { cmd: "cat in > out".into() },
            params: toml::toml! { window = 20 },
            env: BTreeMap::from([("SEED".into(), Some("1".into()))]),
            inputs: BTreeMap::from([("in".into(), FileHash(blake3::hash(b"x")))]),
            declared_inputs: vec!["in".into(), "up/a.csv".into()],
            outputs: vec!["out".into()],
            names: BTreeMap::new(),
            upstream: BTreeMap::from([("up".into(), OutputHash(blake3::hash(b"y")))]),
        }
    }

    #[test]
    fn names_change_the_fingerprint_and_none_keep_the_old_encoding() {
        let named = |pairs: &[(&str, &str)]| {
            let mut f = base();
            f.names = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            f.fingerprint()
        };
        assert_ne!(
            named(&[("inputs.a", "in"), ("inputs.b", "up/a.csv")]),
            named(&[("inputs.a", "up/a.csv"), ("inputs.b", "in")])
        );
        assert_ne!(named(&[("inputs.a", "in")]), base().fingerprint());
        // Pinned: a stage without names must keep the fingerprint recorded before names existed.
        assert_eq!(base().fingerprint().to_hex(), "c6bb68beef28b5ef411630680d4b78dae603da3e2fbbaf362448d206df3041f4");
    }

    /// Pinned, as the one above, from the encoding written out by hand (a Python
    /// transcription with `b3sum`), so that a fingerprint recorded with names, and every
    /// recorded output hash, still match after the encoder is rewritten.
    #[test]
    fn a_fingerprint_with_names_and_an_output_hash_keep_their_encoding() {
        let mut named = base();
        named.names = [("inputs.b", "up/a.csv"), ("inputs.a", "in"), ("outputs.o", "out")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(named.fingerprint().to_hex(), "b4e6aa7f27c48d5fabaae6fd94e24d5ecea7e757f40bf889c3ab6c85d8d2ae81");
        let outputs = BTreeMap::from([
            ("a/x.txt".to_string(), FileHash(blake3::hash(b"1"))),
            ("b.txt".to_string(), FileHash(blake3::hash(b"2"))),
        ]);
        assert_eq!(output_hash(&outputs).to_hex(), "bdd7f39e28067748f0df5ccb5bd0ac6b39bd6708587444c46308798b7b19a045");
    }

    fn differs(change: impl FnOnce(&mut FingerprintInputs)) -> bool {
        let mut changed = base();
        change(&mut changed);
        changed.fingerprint() != base().fingerprint()
    }

    #[test]
    fn equal_inputs_give_equal_fingerprints() {
        assert_eq!(base().fingerprint(), base().fingerprint());
    }

    #[test]
    fn changing_the_command_changes_the_fingerprint() {
        assert!(differs(|f| f.action = ActionId::Shell { cmd: "cat in >out".into() }));
        assert!(differs(|f| f.action = ActionId::Builtin { name: "cat in > out".into(), version: String::new() }));
    }

    #[test]
    fn changing_a_builtin_version_changes_the_fingerprint() {
        let v = |version: &str| {
            let mut f = base();
            f.action = ActionId::Builtin { name: "m.x".into(), version: version.into() };
            f.fingerprint()
        };
        assert_ne!(v("1"), v("2"));
    }

    #[test]
    fn changing_a_param_changes_the_fingerprint() {
        assert!(differs(|f| f.params = toml::toml! { window = 30 }));
        assert!(differs(|f| f.params = toml::toml! { window = 20.0 }));
        assert!(differs(|f| f.params = toml::toml! { window = "20" }));
        assert!(differs(|f| f.params = toml::toml! { windows = 20 }));
    }

    #[test]
    fn params_equal_in_toml_hash_alike() {
        let with = |params: toml::Table| {
            let mut f = base();
            f.params = params;
            f.fingerprint()
        };
        assert_eq!(with(toml::toml! { x = 0.0 }), with(toml::toml! { x = -0.0 }));
        assert_eq!(
            with(toml::toml! { b = 1
            a = 2 }),
            with(toml::toml! { a = 2
            b = 1 })
        );
    }

    #[test]
    fn changing_an_env_value_or_unsetting_it_changes_the_fingerprint() {
        assert!(differs(|f| f.env = BTreeMap::from([("SEED".into(), Some("2".into()))])));
        assert!(differs(|f| f.env = BTreeMap::from([("SEED".into(), Some(String::new()))])));
        assert!(differs(|f| f.env = BTreeMap::from([("SEED".into(), None)])));
    }

    #[test]
    fn changing_an_input_hash_or_path_changes_the_fingerprint() {
        assert!(differs(|f| f.inputs = BTreeMap::from([("in".into(), FileHash(blake3::hash(b"z")))])));
        assert!(differs(|f| f.inputs = BTreeMap::from([("in2".into(), FileHash(blake3::hash(b"x")))])));
    }

    #[test]
    fn changing_or_reordering_the_declared_inputs_changes_the_fingerprint() {
        assert!(differs(|f| f.declared_inputs = vec!["in".into(), "up/b.csv".into()]));
        assert!(differs(|f| f.declared_inputs = vec!["up/a.csv".into(), "in".into()]));
    }

    #[test]
    fn changing_the_declared_outputs_changes_the_fingerprint() {
        assert!(differs(|f| f.outputs.push("more".into())));
    }

    #[test]
    fn changing_an_upstream_output_hash_changes_the_fingerprint() {
        assert!(differs(|f| f.upstream = BTreeMap::from([("up".into(), OutputHash(blake3::hash(b"w")))])));
    }

    #[test]
    fn field_boundaries_cannot_be_shifted() {
        let mut a = base();
        a.env = BTreeMap::from([("AB".into(), Some("C".into()))]);
        let mut b = base();
        b.env = BTreeMap::from([("A".into(), Some("BC".into()))]);
        assert_ne!(a.fingerprint(), b.fingerprint());
    }

    #[test]
    fn the_manifest_round_trips_through_json() {
        let json = serde_json::to_string(&base()).unwrap();
        let back: FingerprintInputs = serde_json::from_str(&json).unwrap();
        assert_eq!(back.fingerprint(), base().fingerprint());
    }
}
