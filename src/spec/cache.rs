//! A validated spec kept between runs. Parsing and validating a large pipeline file costs
//! more than planning it (for 10,000 stages: 50 ms of TOML and 45 ms of checks, against
//! 10 ms to decode this), and most runs read a file that has not changed.
//!
//! An entry is used only when everything the spec was made from is unchanged: this dagrun
//! (its executable's identity), the pipeline file's text, its directory, the built-ins, the
//! params and vars files it read (by content), and what each file template lists. What
//! depends on the filesystem beyond that (symbolic links along declared paths) is checked
//! again at every load. A damaged or foreign entry is a miss. Only builds write entries.
//!
//! Postcard, not bincode (unmaintained, RUSTSEC-2025-0141): compact and fast. It cannot
//! decode self-describing values, so params travel as [`Value`], a mirror of `toml::Value`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::Spec;
use crate::hashing_io::{read_checked, write_checked};

/// Changes whenever an entry's layout does.
const FORMAT: &[u8] = b"dagrun spec cache v3\0";

/// An entry is its key (32 bytes), the BLAKE3 of its body (32 bytes), then its body: what
/// the spec was made from besides the pipeline file, and the spec. This is the body as
/// written, borrowing the spec; `Body` is the same read back.
#[derive(Serialize)]
struct BodyOf<'a> {
    /// Each file besides the pipeline file the spec was read from, and its content's hash
    /// (`None`: it did not exist).
    read_files: &'a [(String, Option<[u8; 32]>)],
    /// The hash of what each of `spec.listed` matched.
    listed: &'a [[u8; 32]],
    spec: &'a Spec,
}

/// Where a pipeline file's entry lives: in its own directory under `.dagrun`.
pub(super) fn path(root: &Path, own_dir: &str) -> PathBuf {
    root.join(own_dir).join("spec.cache")
}

/// Everything that decides a spec besides the files it names: this dagrun, the pipeline's
/// directory, the built-ins, the hash of the pipeline file's text, and (for a dvc.yaml)
/// whether params.yaml exists.
pub(super) fn key(root: &Path, dvc_params: bool, text: &blake3::Hash, builtins: &[&str]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(FORMAT);
    h.update(executable_identity().as_bytes());
    h.update(root.as_os_str().as_encoded_bytes());
    h.update(&[0]);
    for builtin in builtins {
        h.update(builtin.as_bytes());
        h.update(&[0]);
    }
    h.update(&[u8::from(dvc_params)]);
    h.update(text.as_bytes());
    *h.finalize().as_bytes()
}

/// This dagrun, as a file: a rebuilt binary may validate differently.
fn executable_identity() -> String {
    use std::os::unix::fs::MetadataExt;
    let meta = std::env::current_exe().and_then(std::fs::metadata);
    match meta {
        Ok(m) => format!("{}:{}:{}:{}.{}", m.dev(), m.ino(), m.len(), m.mtime(), m.mtime_nsec()),
        Err(_) => String::from("unknown"), // then never equal to a written key's
    }
}

fn content_hash(path: &Path) -> Option<[u8; 32]> {
    std::fs::read(path).ok().map(|bytes| *blake3::hash(&bytes).as_bytes())
}

fn listing_hash(spec: &Spec, glob: &super::GlobPattern) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    for path in glob.expand(&spec.root) {
        h.update(path.as_bytes());
        h.update(&[0]);
    }
    *h.finalize().as_bytes()
}

/// An entry's body, read back (see `BodyOf`).
#[derive(Deserialize)]
struct Body {
    read_files: Vec<(String, Option<[u8; 32]>)>,
    listed: Vec<[u8; 32]>,
    spec: Spec,
}

/// The spec of the entry at `entry_path`, if it was written under `key` (its first 32 bytes:
/// an entry for another key, another dagrun's, of another layout, is not decoded at all), is
/// whole, and nothing it was made from has changed. Read whole up to 4 MiB, decoded as it is
/// read above that (at 100,000 stages the entry is 13 MB), and believed only once every byte
/// of it matched the checksum: a torn or damaged entry can decode into another spec.
pub(super) fn read(entry_path: &Path, key: &[u8; 32], file: &Path) -> Option<Spec> {
    let body: Body = read_checked(entry_path, key)?;
    if body.listed.len() != body.spec.listed.len() {
        return None;
    }
    for (rel, hash) in &body.read_files {
        if content_hash(&body.spec.root.join(rel)) != *hash {
            return None;
        }
    }
    for (glob, hash) in body.spec.listed.iter().zip(&body.listed) {
        if listing_hash(&body.spec, glob) != *hash {
            return None;
        }
    }
    let mut spec = body.spec;
    spec.file = file.to_path_buf();
    Some(spec)
}

/// An entry for a spec just loaded in full, to be written by a build: what it was made
/// from is hashed now, right after the load; the spec is encoded when it is written.
#[derive(Debug)]
pub(super) struct Pending {
    path: PathBuf,
    key: [u8; 32],
    read_files: Vec<(String, Option<[u8; 32]>)>,
    listed: Vec<[u8; 32]>,
}

impl Pending {
    pub(super) fn of(spec: &Spec, key: [u8; 32], path: PathBuf) -> Pending {
        let read_files = spec.read_files.iter().map(|rel| (rel.clone(), content_hash(&spec.root.join(rel)))).collect();
        let listed = spec.listed.iter().map(|glob| listing_hash(spec, glob)).collect();
        Pending { path, key, read_files, listed }
    }

    /// Writes the entry, best effort: a cache that cannot be written is a slower next load,
    /// nothing more.
    pub(super) fn write(&self, spec: &Spec) {
        let Some(dir) = self.path.parent() else { return };
        let body = BodyOf { read_files: &self.read_files, listed: &self.listed, spec };
        let _ = std::fs::create_dir_all(dir).and_then(|()| write_checked(&self.path, &self.key, &body));
    }
}

/// A `Vec` decoded into exactly the room it needs. serde grows a decoded `Vec` by doubling
/// from a cautious start, so 100,000 stages of about 500 bytes each took 67 MB, and 100 MB
/// while the last doubling copied them; postcard knows the length before the elements.
pub(super) fn exact_vec<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    struct ExactVec<T>(std::marker::PhantomData<T>);
    impl<'de, T: serde::Deserialize<'de>> serde::de::Visitor<'de> for ExactVec<T> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a sequence")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let mut items = Vec::with_capacity(crate::reserve::capacity_for::<T>(seq.size_hint()));
            while let Some(item) = seq.next_element()? {
                items.push(item);
            }
            Ok(items)
        }
    }
    deserializer.deserialize_seq(ExactVec(std::marker::PhantomData))
}

/// `toml::Table` through postcard, which cannot decode a self-describing `toml::Value`.
pub(super) mod table {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    enum Value {
        String(String),
        Integer(i64),
        Float(f64),
        Boolean(bool),
        Datetime(String),
        Array(Vec<Value>),
        Table(Vec<(String, Value)>),
    }

    fn to_mirror(value: &toml::Value) -> Value {
        match value {
            toml::Value::String(s) => Value::String(s.clone()),
            toml::Value::Integer(i) => Value::Integer(*i),
            toml::Value::Float(f) => Value::Float(*f),
            toml::Value::Boolean(b) => Value::Boolean(*b),
            toml::Value::Datetime(d) => Value::Datetime(d.to_string()),
            toml::Value::Array(items) => Value::Array(items.iter().map(to_mirror).collect()),
            toml::Value::Table(table) => Value::Table(table.iter().map(|(k, v)| (k.clone(), to_mirror(v))).collect()),
        }
    }

    fn from_mirror(value: Value) -> Result<toml::Value, String> {
        Ok(match value {
            Value::String(s) => toml::Value::String(s),
            Value::Integer(i) => toml::Value::Integer(i),
            Value::Float(f) => toml::Value::Float(f),
            Value::Boolean(b) => toml::Value::Boolean(b),
            Value::Datetime(d) => toml::Value::Datetime(d.parse().map_err(|_| format!("bad datetime {d}"))?),
            Value::Array(items) => toml::Value::Array(items.into_iter().map(from_mirror).collect::<Result<_, _>>()?),
            Value::Table(entries) => toml::Value::Table(
                entries.into_iter().map(|(k, v)| Ok((k, from_mirror(v)?))).collect::<Result<_, String>>()?,
            ),
        })
    }

    pub fn serialize<S: Serializer>(table: &toml::Table, serializer: S) -> Result<S::Ok, S::Error> {
        let mirror: Vec<(String, Value)> = table.iter().map(|(k, v)| (k.clone(), to_mirror(v))).collect();
        mirror.serialize(serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<toml::Table, D::Error> {
        let mirror = Vec::<(String, Value)>::deserialize(deserializer)?;
        mirror.into_iter().map(|(k, v)| Ok((k, from_mirror(v).map_err(serde::de::Error::custom)?))).collect()
    }
}

#[cfg(test)]
mod tests {
    use crate::spec::load_spec_cached;

    /// The entry a full load makes is what the next load reads, whole, instead of parsing;
    /// an edit of the pipeline file is a full load again.
    #[test]
    fn a_spec_written_to_the_cache_is_read_back_from_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pipeline.toml");
        std::fs::write(&file, "[stages.a]\ncmd = \"echo a > a.out\"\noutputs = [\"a.out\"]\n").unwrap();
        let first = load_spec_cached(&file, &[]).unwrap();
        first.cache_entry.as_ref().expect("a full load makes an entry").write(&first.spec);
        let second = load_spec_cached(&file, &[]).unwrap();
        assert!(second.cache_entry.is_none(), "read from the cache");
        assert_eq!(format!("{:?}", second.spec.stages), format!("{:?}", first.spec.stages));
        let streamed = crate::hashing_io::streaming(|| load_spec_cached(&file, &[])).unwrap();
        assert!(streamed.cache_entry.is_none(), "read from the cache, decoded as it was read");
        assert_eq!(format!("{:?}", streamed.spec.stages), format!("{:?}", first.spec.stages));
        std::fs::write(&file, "[stages.b]\ncmd = \"echo b > b.out\"\noutputs = [\"b.out\"]\n").unwrap();
        let third = load_spec_cached(&file, &[]).unwrap();
        assert!(third.cache_entry.is_some(), "the file changed: a full load");
        assert_eq!(third.spec.stages[0].name.as_str(), "b");
    }
}
