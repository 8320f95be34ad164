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

use serde::{Deserialize, Serialize};

use super::records::{StageRecord, StageStatus};
use crate::fingerprint::{CacheEntry, FileHash, Fingerprint, OutputHash};

const MAGIC: &[u8] = b"dagrun state snapshot 1\n";

/// Every stage's record and the stat cache, as `load_records` and `load_hash_cache` give.
pub type PlanState = (HashMap<String, StageRecord>, HashMap<String, CacheEntry>);

/// Where the copy of the database at `state` lives.
pub fn path_for(state: &Path) -> PathBuf {
    let mut name = state.as_os_str().to_owned();
    name.push(".snapshot");
    PathBuf::from(name)
}

/// The copy at `path`, if it was made under `token` and is whole.
pub fn read(path: &Path, token: i64) -> Option<PlanState> {
    let bytes = std::fs::read(path).ok()?;
    let rest = bytes.strip_prefix(MAGIC)?;
    let (stored_token, rest) = rest.split_first_chunk::<8>()?;
    if i64::from_le_bytes(*stored_token) != token {
        return None;
    }
    let (checksum, payload) = rest.split_first_chunk::<32>()?;
    if blake3::hash(payload) != blake3::Hash::from_bytes(*checksum) {
        return None;
    }
    let loaded: Loaded = postcard::from_bytes(payload).ok()?;
    Some((loaded.records, loaded.entries))
}

/// Writes the copy of `state`, made under `token`: to a temporary file, then renamed over
/// the old copy. Not synced: a copy torn by a power cut fails its checksum.
pub fn write(path: &Path, token: i64, state: &PlanState) -> std::io::Result<()> {
    // postcard: compact and fast, for a file only dagrun reads (bincode is unmaintained).
    let payload = postcard::to_stdvec(&Stored::of(state)).map_err(std::io::Error::other)?;
    let mut bytes = Vec::with_capacity(MAGIC.len() + 40 + payload.len());
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&token.to_le_bytes());
    bytes.extend_from_slice(blake3::hash(&payload).as_bytes());
    bytes.extend_from_slice(&payload);
    let temp = path.with_extension(format!("snapshot.{}.tmp", std::process::id()));
    std::fs::write(&temp, &bytes).and_then(|()| std::fs::rename(&temp, path)).inspect_err(|_| {
        let _ = std::fs::remove_file(&temp);
    })
}

type Hash = [u8; 32];

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
    d.deserialize_seq(MapOf(|(path, e): (String, StoredEntry)| Some((path, e.into_entry()))))
}

/// A sequence of `S` decoded into a map, each element converted by the function as it comes
/// (`None`: the copy is not believed).
struct MapOf<S, V>(fn(S) -> Option<(String, V)>);

impl<'de, S: Deserialize<'de>, V> serde::de::Visitor<'de> for MapOf<S, V> {
    type Value = HashMap<String, V>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a sequence")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut map = HashMap::with_capacity(crate::reserve::capacity_for::<(String, V)>(seq.size_hint()));
        while let Some(item) = seq.next_element::<S>()? {
            let (key, value) = (self.0)(item).ok_or_else(|| serde::de::Error::custom("not a state dagrun writes"))?;
            map.insert(key, value);
        }
        Ok(map)
    }
}

#[derive(Serialize)]
struct Stored {
    records: Vec<StoredRecord>,
    entries: Vec<(String, StoredEntry)>,
}

#[derive(Serialize, Deserialize)]
struct StoredRecord {
    component: String,
    last_run_at: Option<String>,
    is_dirty: bool,
    run_count: i64,
    failure_count: i64,
    fingerprint: Option<Hash>,
    output_hash: Option<Hash>,
    last_status: Option<String>,
    last_duration_ms: Option<i64>,
    last_error: Option<String>,
    outputs: Vec<(String, Hash)>,
    invalidations: i64,
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

impl Stored {
    fn of((records, entries): &PlanState) -> Stored {
        let records = records
            .iter()
            .map(|(component, r)| StoredRecord {
                component: component.clone(),
                last_run_at: r.last_run_at.clone(),
                is_dirty: r.is_dirty,
                run_count: r.run_count,
                failure_count: r.failure_count,
                fingerprint: r.fingerprint.map(|h| *h.0.as_bytes()),
                output_hash: r.output_hash.map(|h| *h.0.as_bytes()),
                last_status: r.last_status.map(|s| s.as_str().to_string()),
                last_duration_ms: r.last_duration_ms,
                last_error: r.last_error.clone(),
                outputs: r.outputs.iter().map(|(path, h)| (path.clone(), *h.0.as_bytes())).collect(),
                invalidations: r.invalidations,
            })
            .collect();
        let entries = entries
            .iter()
            .map(|(path, e)| {
                let stored = StoredEntry {
                    size: e.size,
                    mtime_ns: e.mtime_ns,
                    inode: e.inode,
                    hash: *e.hash.0.as_bytes(),
                    cached_at_ns: e.cached_at_ns,
                    ctime_ns: e.ctime_ns,
                    dev: e.dev,
                };
                (path.clone(), stored)
            })
            .collect();
        Stored { records, entries }
    }
}

impl StoredRecord {
    /// `None` when a status is not one dagrun writes: the copy is then not believed.
    fn into_record(self) -> Option<(String, StageRecord)> {
        let last_status = match self.last_status {
            Some(text) => Some(StageStatus::parse(&text)?),
            None => None,
        };
        let outputs = self.outputs.into_iter().map(|(path, h)| (path, FileHash(blake3::Hash::from_bytes(h)))).collect();
        let record = StageRecord {
            last_run_at: self.last_run_at,
            is_dirty: self.is_dirty,
            run_count: self.run_count,
            failure_count: self.failure_count,
            fingerprint: self.fingerprint.map(|h| Fingerprint(blake3::Hash::from_bytes(h))),
            output_hash: self.output_hash.map(|h| OutputHash(blake3::Hash::from_bytes(h))),
            last_status,
            last_duration_ms: self.last_duration_ms,
            last_error: self.last_error,
            outputs,
            invalidations: self.invalidations,
        };
        Some((self.component, record))
    }
}

impl StoredEntry {
    fn into_entry(self) -> CacheEntry {
        CacheEntry {
            size: self.size,
            mtime_ns: self.mtime_ns,
            inode: self.inode,
            hash: FileHash(blake3::Hash::from_bytes(self.hash)),
            cached_at_ns: self.cached_at_ns,
            ctime_ns: self.ctime_ns,
            dev: self.dev,
        }
    }
}
