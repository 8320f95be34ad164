//! A binary copy of what a build's plan reads from the state (every stage's record and the
//! stat cache), beside the database, used instead of the SQL rows while it is current.
//!
//! Loading 10,000 records and 10,000 stat-cache rows through SQL took a third of a no-op
//! build. The copy is keyed by `state_token.token`, which triggers on the copied tables
//! set to a new random value on every change (migration 0005), whoever makes it. A copy
//! whose token is not the database's is never used: it is read in full, checked against a
//! checksum, and only then believed. A missing, stale, torn or foreign copy costs the SQL
//! load, never a wrong answer.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::hashing_io::{read_checked, write_checked};

use serde::{Deserialize, Serialize};

use super::records::{StageRecord, StageStatus};
use crate::fingerprint::{CacheEntry, FileHash, Fingerprint, OutputHash};

/// Version 2: hashes as byte strings, read in one piece (version 1 wrote each as 32 elements,
/// decoded one call each).
const MAGIC: &[u8] = b"dagrun state snapshot 2\n";

/// Every stage's record and the stat cache, as `load_records` and `load_hash_cache` give.
pub type PlanState = (HashMap<String, StageRecord>, HashMap<String, CacheEntry>);

/// Where the copy of the database at `state` lives.
pub fn path_for(state: &Path) -> PathBuf {
    let mut name = state.as_os_str().to_owned();
    name.push(".snapshot");
    PathBuf::from(name)
}

/// The copy at `path`, if it was made under `token` and is whole.
///
/// A large copy is decoded as it is read, not read whole first: at 100,000 stages the file
/// is 25 MB, which was the peak of a `build -n` (`hashing_io::read_checked`). Every byte
/// still goes through the checksum before the decoded state is believed.
pub fn read(path: &Path, token: i64) -> Option<PlanState> {
    let loaded: Loaded = read_checked(path, &prefix(token))?;
    Some((loaded.records, loaded.entries))
}

/// What a copy made under `token` starts with, before its checksum.
fn prefix(token: i64) -> Vec<u8> {
    [MAGIC, &token.to_le_bytes()].concat()
}

/// Writes the copy of `state`, made under `token`, over the old copy (see
/// `hashing_io::write_checked`). Not synced: a copy torn by a power cut fails its checksum.
pub fn write(path: &Path, token: i64, state: &PlanState) -> std::io::Result<()> {
    write_checked(path, &prefix(token), &Stored(state))
}

/// A hash as the copy lays it out: a byte string of 32, which postcard reads as one piece
/// (an array is 32 elements, decoded one call each: a fifth of reading the copy).
#[derive(Clone, Copy)]
struct Hash([u8; 32]);

impl From<blake3::Hash> for Hash {
    fn from(hash: blake3::Hash) -> Hash {
        Hash(*hash.as_bytes())
    }
}

impl From<Hash> for blake3::Hash {
    fn from(hash: Hash) -> blake3::Hash {
        blake3::Hash::from_bytes(hash.0)
    }
}

impl Serialize for Hash {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Hash {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Hash, D::Error> {
        struct Bytes;
        impl serde::de::Visitor<'_> for Bytes {
            type Value = Hash;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("32 bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, bytes: &[u8]) -> Result<Hash, E> {
                bytes.try_into().map(Hash).map_err(|_| E::invalid_length(bytes.len(), &self))
            }
        }
        // A byte buffer, not borrowed bytes: the streaming decoder lends nothing for longer
        // than the call.
        deserializer.deserialize_byte_buf(Bytes)
    }
}

/// A record's status as the copy lays it out: its text (`StageStatus::as_str`), read
/// without making a `String`; a status dagrun does not write fails the copy.
struct Status(StageStatus);

impl Serialize for Status {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.0.as_str())
    }
}

impl<'de> Deserialize<'de> for Status {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Status, D::Error> {
        struct Text;
        impl serde::de::Visitor<'_> for Text {
            type Value = Status;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a stage status dagrun writes")
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Status, E> {
                StageStatus::parse(text)
                    .map(Status)
                    .ok_or_else(|| E::invalid_value(serde::de::Unexpected::Str(text), &self))
            }
        }
        // A string read into a buffer (`visit_str`), not borrowed: see `Hash`.
        deserializer.deserialize_string(Text)
    }
}

/// What `read` decodes: `Stored`'s layout, each record and entry turned into what a plan
/// uses as it is read, into maps sized once. Decoding a `Stored` first held every record
/// twice: at 100,000 stages that was 50 MB more at the build's peak.
#[derive(Deserialize)]
struct Loaded {
    #[serde(deserialize_with = "records_map")]
    records: HashMap<String, StageRecord>,
    #[serde(deserialize_with = "entries_map")]
    entries: HashMap<String, CacheEntry>,
}

fn records_map<'de, D: serde::Deserializer<'de>>(d: D) -> Result<HashMap<String, StageRecord>, D::Error> {
    d.deserialize_seq(MapOf(StoredRecord::into_record))
}

fn entries_map<'de, D: serde::Deserializer<'de>>(d: D) -> Result<HashMap<String, CacheEntry>, D::Error> {
    d.deserialize_seq(MapOf(|(path, e): (String, StoredEntry)| (path, e.into_entry())))
}

/// A sequence of `S` decoded into a map, each element converted by the function as it comes.
/// (What is not a state dagrun writes, such as an unknown status, fails as it is decoded.)
struct MapOf<S, V>(fn(S) -> (String, V));

impl<'de, S: Deserialize<'de>, V> serde::de::Visitor<'de> for MapOf<S, V> {
    type Value = HashMap<String, V>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a sequence")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut map = HashMap::with_capacity(crate::reserve::capacity_for::<(String, V)>(seq.size_hint()));
        while let Some(item) = seq.next_element::<S>()? {
            let (key, value) = (self.0)(item);
            map.insert(key, value);
        }
        Ok(map)
    }
}

/// A plan state as the copy lays it out: `StoredRecord`s, then `(path, StoredEntry)`s,
/// each made as it is written.
struct Stored<'a>(&'a PlanState);

impl Serialize for Stored<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        let (records, entries) = self.0;
        let mut stored = serializer.serialize_tuple(2)?;
        stored.serialize_element(&Seq(records.iter().map(|(component, r)| StoredRecord::of(component, r))))?;
        stored.serialize_element(&Seq(entries.iter().map(|(path, e)| (path, StoredEntry::of(e)))))?;
        stored.end()
    }
}

/// A sequence serialised from an iterator of known length, nothing collected first.
struct Seq<I>(I);

impl<I: ExactSizeIterator<Item = T> + Clone, T: Serialize> Serialize for Seq<I> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.clone())
    }
}

/// A record as the copy lays it out: owned when read, borrowed from the plan state when
/// written (the layout is the same).
#[derive(Serialize, Deserialize)]
struct StoredRecord<S = String, O = Vec<(String, Hash)>> {
    component: S,
    last_run_at: Option<S>,
    is_dirty: bool,
    run_count: i64,
    failure_count: i64,
    fingerprint: Option<Hash>,
    output_hash: Option<Hash>,
    last_status: Option<Status>,
    last_duration_ms: Option<i64>,
    last_error: Option<S>,
    outputs: O,
    invalidations: i64,
}

/// A record's outputs, written as `Vec<(String, Hash)>` is.
struct OutputsOf<'a>(&'a [(String, FileHash)]);

impl Serialize for OutputsOf<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(|(path, hash)| (path, Hash::from(hash.0))))
    }
}

#[derive(Serialize, Deserialize)]
struct StoredEntry {
    size: u64,
    mtime_ns: i64,
    inode: u64,
    hash: Hash,
    cached_at_ns: i64,
    ctime_ns: i64,
    dev: u64,
}

impl<'a> StoredRecord<&'a str, OutputsOf<'a>> {
    fn of(component: &'a str, r: &'a StageRecord) -> Self {
        StoredRecord {
            component,
            last_run_at: r.last_run_at.as_deref(),
            is_dirty: r.is_dirty,
            run_count: r.run_count,
            failure_count: r.failure_count,
            fingerprint: r.fingerprint.map(|h| Hash::from(h.0)),
            output_hash: r.output_hash.map(|h| Hash::from(h.0)),
            last_status: r.last_status.map(Status),
            last_duration_ms: r.last_duration_ms,
            last_error: r.last_error.as_deref(),
            outputs: OutputsOf(&r.outputs),
            invalidations: r.invalidations,
        }
    }
}

impl StoredEntry {
    fn of(e: &CacheEntry) -> StoredEntry {
        StoredEntry {
            size: e.size,
            mtime_ns: e.mtime_ns,
            inode: e.inode,
            hash: Hash::from(e.hash.0),
            cached_at_ns: e.cached_at_ns,
            ctime_ns: e.ctime_ns,
            dev: e.dev,
        }
    }
}

impl StoredRecord {
    /// The record as a plan uses it, with its stage's name.
    fn into_record(self) -> (String, StageRecord) {
        let outputs = self.outputs.into_iter().map(|(path, h)| (path, FileHash(h.into()))).collect();
        let record = StageRecord {
            last_run_at: self.last_run_at,
            is_dirty: self.is_dirty,
            run_count: self.run_count,
            failure_count: self.failure_count,
            fingerprint: self.fingerprint.map(|h| Fingerprint(h.into())),
            output_hash: self.output_hash.map(|h| OutputHash(h.into())),
            last_status: self.last_status.map(|s| s.0),
            last_duration_ms: self.last_duration_ms,
            last_error: self.last_error,
            outputs,
            invalidations: self.invalidations,
        };
        (self.component, record)
    }
}

impl StoredEntry {
    fn into_entry(self) -> CacheEntry {
        CacheEntry {
            size: self.size,
            mtime_ns: self.mtime_ns,
            inode: self.inode,
            hash: FileHash(self.hash.into()),
            cached_at_ns: self.cached_at_ns,
            ctime_ns: self.ctime_ns,
            dev: self.dev,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan_state() -> PlanState {
        let hash = |byte: u8| blake3::Hash::from_bytes([byte; 32]);
        let record = StageRecord {
            last_run_at: Some("2026-11-30 15:00:00".into()),
            run_count: 3,
            fingerprint: Some(Fingerprint(hash(1))),
            output_hash: Some(OutputHash(hash(2))),
            last_status: Some(StageStatus::parse("success").unwrap()),
            last_error: Some("x".repeat(70_000)),
            outputs: vec![("out/a.txt".into(), FileHash(hash(3)))],
            ..StageRecord::default()
        };
        let entry = CacheEntry {
            size: 5,
            mtime_ns: 7,
            inode: 9,
            hash: FileHash(hash(4)),
            cached_at_ns: 11,
            ctime_ns: 13,
            dev: 15,
        };
        (HashMap::from([("a".to_string(), record)]), HashMap::from([("src/a.txt".to_string(), entry)]))
    }

    /// Every byte after the header counts: a copy damaged anywhere, cut short, grown, or made
    /// under another token is not believed, though it may still decode.
    #[test]
    fn a_copy_is_read_back_only_whole_and_under_its_token() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db.snapshot");
        write(&path, 42, &plan_state()).unwrap();
        let (records, entries) = read(&path, 42).expect("the copy just written");
        let record = &records["a"];
        assert_eq!(record.run_count, 3);
        assert_eq!(record.last_error.as_deref().map(str::len), Some(70_000));
        assert_eq!(record.outputs, plan_state().0["a"].outputs);
        assert_eq!(entries["src/a.txt"], plan_state().1["src/a.txt"]);
        assert!(read(&path, 43).is_none(), "another token");
        let (streamed_records, streamed_entries) =
            crate::hashing_io::streaming(|| read(&path, 42)).expect("decoded as it is read");
        assert_eq!(format!("{:?}", streamed_records["a"]), format!("{record:?}"));
        assert_eq!(streamed_entries, entries);

        let whole = std::fs::read(&path).unwrap();
        let header = MAGIC.len() + 40;
        // In the checksum, then in the payload.
        for at in [MAGIC.len() + 8, header - 1, header, header + 10, whole.len() / 2, whole.len() - 1] {
            let mut damaged = whole.clone();
            damaged[at] ^= 0x01;
            std::fs::write(&path, &damaged).unwrap();
            assert!(read(&path, 42).is_none(), "a byte flipped at {at} of {}", whole.len());
        }
        std::fs::write(&path, &whole[..whole.len() - 1]).unwrap();
        assert!(read(&path, 42).is_none(), "cut short");
        std::fs::write(&path, [&whole[..], b"\0"].concat()).unwrap();
        assert!(read(&path, 42).is_none(), "a byte more");
        std::fs::write(&path, &whole).unwrap();
        assert!(read(&path, 42).is_some(), "put back whole");
    }
}
