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
    let stored: Stored = postcard::from_bytes(payload).ok()?;
    stored.into_plan_state()
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

#[derive(Serialize, Deserialize)]
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

    /// `None` when a status is not one dagrun writes: the copy is then not believed.
    fn into_plan_state(self) -> Option<PlanState> {
        let mut records = HashMap::with_capacity(self.records.len());
        for r in self.records {
            let last_status = match r.last_status {
                Some(text) => Some(StageStatus::parse(&text)?),
                None => None,
            };
            let outputs =
                r.outputs.into_iter().map(|(path, h)| (path, FileHash(blake3::Hash::from_bytes(h)))).collect();
            let record = StageRecord {
                last_run_at: r.last_run_at,
                is_dirty: r.is_dirty,
                run_count: r.run_count,
                failure_count: r.failure_count,
                fingerprint: r.fingerprint.map(|h| Fingerprint(blake3::Hash::from_bytes(h))),
                output_hash: r.output_hash.map(|h| OutputHash(blake3::Hash::from_bytes(h))),
                last_status,
                last_duration_ms: r.last_duration_ms,
                last_error: r.last_error,
                outputs,
                invalidations: r.invalidations,
            };
            records.insert(r.component, record);
        }
        let entries = self
            .entries
            .into_iter()
            .map(|(path, e)| {
                let entry = CacheEntry {
                    size: e.size,
                    mtime_ns: e.mtime_ns,
                    inode: e.inode,
                    hash: FileHash(blake3::Hash::from_bytes(e.hash)),
                    cached_at_ns: e.cached_at_ns,
                    ctime_ns: e.ctime_ns,
                    dev: e.dev,
                };
                (path, entry)
            })
            .collect();
        Some((records, entries))
    }
}
