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

    /// BLAKE3 over every field in a fixed order; maps are sorted, strings length-prefixed.
    pub fn fingerprint(&self) -> Fingerprint {
        let mut h = blake3::Hasher::new();
        h.update(ENCODING_VERSION);
        match &self.action {
            ActionId::Shell { cmd } => {
                put_tag(&mut h, b'S');
                put_str(&mut h, cmd);
            }
            ActionId::Builtin { name, version } => {
                put_tag(&mut h, b'B');
                put_str(&mut h, name);
                put_str(&mut h, version);
            }
        }
        put_tag(&mut h, b'P');
        put_table(&mut h, &self.params);
        put_tag(&mut h, b'E');
        put_len(&mut h, self.env.len());
        for (name, value) in &self.env {
            put_str(&mut h, name);
            match value {
                Some(value) => {
                    put_tag(&mut h, 1);
                    put_str(&mut h, value);
                }
                None => put_tag(&mut h, 0),
            }
        }
        put_tag(&mut h, b'I');
        put_len(&mut h, self.inputs.len());
        for (path, hash) in &self.inputs {
            put_str(&mut h, path);
            h.update(hash.0.as_bytes());
        }
        put_tag(&mut h, b'D');
        put_len(&mut h, self.declared_inputs.len());
        for path in &self.declared_inputs {
            put_str(&mut h, path);
        }
        put_tag(&mut h, b'O');
        put_len(&mut h, self.outputs.len());
        for path in &self.outputs {
            put_str(&mut h, path);
        }
        // Only when present, so that fingerprints recorded before names existed still match.
        if !self.names.is_empty() {
            put_tag(&mut h, b'N');
            put_len(&mut h, self.names.len());
            for (name, path) in &self.names {
                put_str(&mut h, name);
                put_str(&mut h, path);
            }
        }
        put_tag(&mut h, b'U');
        put_len(&mut h, self.upstream.len());
        for (stage, hash) in &self.upstream {
            put_str(&mut h, stage);
            h.update(hash.0.as_bytes());
        }
        Fingerprint(h.finalize())
    }
}

/// Hash of a stage's outputs: sorted (path, content hash) pairs.
pub fn output_hash(outputs: &BTreeMap<String, FileHash>) -> OutputHash {
    let mut h = blake3::Hasher::new();
    h.update(b"dagrun outputs v1\0");
    put_len(&mut h, outputs.len());
    for (path, hash) in outputs {
        put_str(&mut h, path);
        h.update(hash.0.as_bytes());
    }
    OutputHash(h.finalize())
}

fn put_tag(h: &mut blake3::Hasher, tag: u8) {
    h.update(&[tag]);
}

fn put_len(h: &mut blake3::Hasher, len: usize) {
    h.update(&(len as u64).to_le_bytes());
}

fn put_str(h: &mut blake3::Hasher, s: &str) {
    put_len(h, s.len());
    h.update(s.as_bytes());
}

fn put_table(h: &mut blake3::Hasher, table: &toml::Table) {
    // toml::Table is a BTreeMap here (no `preserve_order`), so iteration is sorted by key.
    put_len(h, table.len());
    for (key, value) in table {
        put_str(h, key);
        put_value(h, value);
    }
}

/// Values hash alike exactly when TOML calls them equal: `1` (integer) and `1.0` (float)
/// differ, `0.0` and `-0.0` agree, and every NaN is the same NaN.
fn put_value(h: &mut blake3::Hasher, value: &toml::Value) {
    match value {
        toml::Value::String(s) => {
            put_tag(h, b's');
            put_str(h, s);
        }
        toml::Value::Integer(i) => {
            put_tag(h, b'i');
            h.update(&i.to_le_bytes());
        }
        toml::Value::Float(f) => {
            put_tag(h, b'f');
            let canonical = if f.is_nan() {
                f64::NAN.to_bits()
            } else if *f == 0.0 {
                0.0f64.to_bits()
            } else {
                f.to_bits()
            };
            h.update(&canonical.to_le_bytes());
        }
        toml::Value::Boolean(b) => {
            put_tag(h, b'b');
            put_tag(h, u8::from(*b));
        }
        toml::Value::Datetime(d) => {
            put_tag(h, b'd');
            put_str(h, &d.to_string());
        }
        toml::Value::Array(items) => {
            put_tag(h, b'a');
            put_len(h, items.len());
            for item in items {
                put_value(h, item);
            }
        }
        toml::Value::Table(table) => {
            put_tag(h, b't');
            put_table(h, table);
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
