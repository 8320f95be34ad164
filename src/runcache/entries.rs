//! A directory store's entries, many to a file (the bytes are `pack`'s). A store that writes
//! appends every entry to its own log, `packs/<ns>-<pid>-<tag>.log`: one `write` an entry
//! and no new file, where a file an entry cost a 10,000-stage build seconds on ext4 without a
//! journal (making an inode there reads past every inode freed in the last minutes). When
//! the store is dropped (a build's end) the log gets its index and is renamed
//! `packs/<ns>-<pid>-<tag>.pack` (`ns`: the time in nanoseconds, so that names sort by age).
//!
//! One writer a file, and files only ever renamed into place: safe for several builds,
//! checkouts and machines sharing the directory (NFS included, where two appenders to one
//! file overwrite each other). A lookup reads its own log, then the others newest first
//! (name order: the time they were sealed, or created for a log), then the loose
//! `index/<key>.json` entries older versions wrote. The newest record of a key decides: an
//! entry, or a tombstone (`forget`) that hides everything older. A damaged record is skipped
//! as if absent, never taken for another key's.
//!
//! `gc` rewrites everything but the logs of live builds into one pack, then removes what it
//! read; a seal that leaves more than [`MERGE_ABOVE`] packs merges the newest few, so that
//! a lookup searches a number of packs that grows with the logarithm of the store.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::pack::{self, KeyHash, Kind, PackIndex, Slot};
use super::store::EntryInfo;

/// Above this many packs, sealing merges the newest (see `merge_range`).
const MERGE_ABOVE: usize = 8;
/// A log whose writer is gone is merged by `gc` once it is this old: a log just created is
/// not yet locked by its writer.
const DEAD_LOG_AGE: Duration = Duration::from_secs(60);
/// Where a log cannot be locked, how long it must be left untouched to count as dead.
const UNLOCKABLE_LOG_AGE: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug)]
pub(super) struct EntryFiles {
    packs: PathBuf,
    legacy: PathBuf,
    tmp: PathBuf,
    own: Mutex<Option<OwnLog>>,
    /// Every other log and pack, opened at the first lookup: a store that only writes
    /// (a build of new stages) or is never asked (a no-op build) reads none.
    others: OnceLock<Others>,
}

/// This store's log: the only file it appends to.
#[derive(Debug)]
struct OwnLog {
    file: File,
    path: PathBuf,
    tag: String,
    len: u64,
    slots: Vec<Slot>,
    /// Each key's last record, by index in `slots`.
    newest: HashMap<KeyHash, usize>,
}

#[derive(Debug)]
struct Others {
    /// Newest first.
    sources: Vec<Source>,
    legacy: bool,
}

#[derive(Debug)]
struct Source {
    file: File,
    index: SourceIndex,
}

#[derive(Debug)]
enum SourceIndex {
    /// A sealed pack, searched in its file.
    Packed(PackIndex),
    /// A log (or a pack whose index is damaged), scanned once: each key's last record.
    Scanned(HashMap<KeyHash, Slot>),
}

impl Source {
    fn open(path: &Path) -> Option<Source> {
        let file = File::open(path).ok()?;
        let len = file.metadata().ok()?.len();
        let is_pack = path.extension().is_some_and(|e| e == "pack");
        if let Some(index) = is_pack.then(|| PackIndex::read(&file, len)).flatten() {
            return Some(Source { file, index: SourceIndex::Packed(index) });
        }
        // Read through the file opened: a log sealed meanwhile is renamed, not gone.
        let mut bytes = Vec::new();
        (&file).read_to_end(&mut bytes).ok()?;
        let newest = pack::scan(&bytes)
            .iter()
            .map(|(offset, record)| (pack::key_hash(record.key), Slot::of(*offset, record)))
            .collect();
        Some(Source { file, index: SourceIndex::Scanned(newest) })
    }

    /// The slots of `hash`, newest first.
    fn find(&self, hash: &KeyHash) -> Vec<Slot> {
        match &self.index {
            SourceIndex::Packed(index) => index.find(&self.file, hash),
            SourceIndex::Scanned(newest) => newest.get(hash).copied().into_iter().collect(),
        }
    }
}

/// What the newest readable record of a key says.
enum Found {
    Entry(Vec<u8>),
    Forgotten,
}

fn found(slot: &Slot, file: &File, key: &str) -> Option<Found> {
    let payload = slot.read(file, key)?;
    Some(match slot.kind {
        Kind::Entry => Found::Entry(payload),
        Kind::Tombstone => Found::Forgotten,
    })
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// A name unique to this process and call, for files two writers must never share.
fn unique_tag() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = blake3::Hasher::new();
    hasher.update(&COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    hasher.update(&SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos().to_le_bytes());
    hasher.update(format!("{:?}", std::thread::current().id()).as_bytes());
    format!("{}-{}", std::process::id(), &hasher.finalize().to_hex()[..8])
}

fn now_ns() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos())
}

fn file_name(ns: u128, tag: &str, extension: &str) -> String {
    format!("{ns:020}-{tag}.{extension}")
}

/// The time a log or pack's name starts with.
fn name_ns(path: &Path) -> u128 {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    name.split('-').next().and_then(|ns| ns.parse().ok()).unwrap_or(0)
}

/// `packs/`'s logs and packs, newest first; `NotFound` is an empty directory.
fn list(packs: &Path) -> io::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let listing = match std::fs::read_dir(packs) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(found),
        listing => listing?,
    };
    for entry in listing {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "log" || e == "pack") {
            found.push(path);
        }
    }
    found.sort_unstable_by(|a, b| b.file_name().cmp(&a.file_name()));
    Ok(found)
}

fn is_log(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "log")
}

/// Whether a log's writer is gone: its lock is free (a writer holds it while the log is
/// open) and the log is older than a writer takes to lock it. Where locks do not work (some
/// NFS mounts), a log untouched for a day.
fn is_dead_log(path: &Path) -> bool {
    let age = std::fs::metadata(path).and_then(|m| m.modified()).ok().and_then(|m| m.elapsed().ok());
    let Some(age) = age.filter(|age| *age > DEAD_LOG_AGE) else { return false };
    match File::open(path).map(|file| file.try_lock()) {
        Ok(Ok(())) => true,
        Ok(Err(std::fs::TryLockError::WouldBlock)) | Err(_) => false,
        Ok(Err(std::fs::TryLockError::Error(_))) => age > UNLOCKABLE_LOG_AGE,
    }
}

impl OwnLog {
    fn create(packs: &Path) -> io::Result<OwnLog> {
        let tag = unique_tag();
        let path = packs.join(file_name(now_ns(), &tag, "log"));
        let open = || File::options().append(true).read(true).create_new(true).open(&path);
        let file = match open() {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                std::fs::create_dir_all(packs)?;
                open()?
            }
            opened => opened?,
        };
        // Tells `gc` that the log is being written; where locks do not work (some NFS
        // mounts) `gc` goes by the log's age alone.
        let _ = file.try_lock();
        Ok(OwnLog { file, path, tag, len: 0, slots: Vec::new(), newest: HashMap::new() })
    }

    fn append(&mut self, record: &[u8]) -> io::Result<()> {
        if let Err(e) = self.file.write_all(record) {
            // Only this store writes here: cutting a partial record off is safe, and the
            // next one starts where a reader expects it.
            let _ = self.file.set_len(self.len);
            return Err(e);
        }
        let parsed = pack::parse(record).expect("a record just encoded parses");
        let slot = Slot::of(self.len, &parsed);
        self.newest.insert(slot.hash, self.slots.len());
        self.slots.push(slot);
        self.len += record.len() as u64;
        Ok(())
    }
}

impl EntryFiles {
    pub(super) fn new(store: &Path) -> EntryFiles {
        EntryFiles {
            packs: store.join("packs"),
            legacy: store.join("index"),
            tmp: store.join("tmp"),
            own: Mutex::new(None),
            others: OnceLock::new(),
        }
    }

    fn legacy_path(&self, key: &str) -> PathBuf {
        self.legacy.join(format!("{key}.json"))
    }

    fn others(&self) -> &Others {
        self.others.get_or_init(|| {
            let own = self.own.lock().expect("run-cache log poisoned").as_ref().map(|log| log.path.clone());
            let paths = list(&self.packs).unwrap_or_default();
            // A file gone since the listing was merged into another: its records are there.
            let sources = paths.iter().filter(|p| Some(*p) != own.as_ref()).filter_map(|p| Source::open(p)).collect();
            Others { sources, legacy: self.legacy.is_dir() }
        })
    }

    pub(super) fn put(&self, key: &str, kind: Kind, payload: &[u8]) -> io::Result<()> {
        if !pack::valid_key(key) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("`{key}` is not a run-cache key")));
        }
        if payload.len() > pack::MAX_PAYLOAD {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("run-cache entry `{key}` is over 4 GiB")));
        }
        let record = pack::encode(kind, now_ms(), key, payload);
        let mut own = self.own.lock().expect("run-cache log poisoned");
        let log = match &mut *own {
            Some(log) => log,
            none => none.insert(OwnLog::create(&self.packs)?),
        };
        log.append(&record)
    }

    pub(super) fn get(&self, key: &str) -> Option<Vec<u8>> {
        let hash = pack::key_hash(key);
        let own = {
            let own = self.own.lock().expect("run-cache log poisoned");
            own.as_ref().and_then(|log| log.newest.get(&hash).and_then(|&i| found(&log.slots[i], &log.file, key)))
        };
        let others = self.others();
        let newest = own.or_else(|| {
            others
                .sources
                .iter()
                .find_map(|source| source.find(&hash).iter().find_map(|slot| found(slot, &source.file, key)))
        });
        match newest {
            Some(Found::Entry(payload)) => Some(payload),
            Some(Found::Forgotten) => None,
            None if others.legacy => std::fs::read(self.legacy_path(key)).ok(),
            None => None,
        }
    }

    /// Forgets `key`: a tombstone in this store's log, and the loose entry removed if any.
    pub(super) fn forget(&self, key: &str) -> io::Result<()> {
        match std::fs::remove_file(self.legacy_path(key)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        self.put(key, Kind::Tombstone, b"")
    }

    /// Every key's entry as the newest of its records says, in every log and pack and loose.
    pub(super) fn list(&self) -> io::Result<Vec<EntryInfo>> {
        let mut entries = Vec::new();
        let mut seen = HashSet::new();
        let own = self.own.lock().expect("run-cache log poisoned").as_ref().map(|log| log.path.clone());
        let mut paths = list(&self.packs)?;
        // This store's own log is the newest of all.
        if let Some(own) = own {
            paths.retain(|p| *p != own);
            paths.insert(0, own);
        }
        for path in &paths {
            newest_records(path, &mut seen, |record| {
                if record.kind == Kind::Entry {
                    let modified = UNIX_EPOCH + Duration::from_millis(record.written_ms);
                    entries.push(EntryInfo {
                        key: record.key.to_string(),
                        modified,
                        size: record.payload.len() as u64,
                    });
                }
                Ok(())
            })?;
        }
        for (key, path) in self.loose()? {
            if seen.insert(key.clone()) {
                let meta = std::fs::metadata(&path)?;
                entries.push(EntryInfo { key, modified: meta.modified()?, size: meta.len() });
            }
        }
        Ok(entries)
    }

    /// The loose entries older versions wrote, by key.
    fn loose(&self) -> io::Result<Vec<(String, PathBuf)>> {
        let listing = match std::fs::read_dir(&self.legacy) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            listing => listing?,
        };
        let mut loose = Vec::new();
        for entry in listing {
            let path = entry?.path();
            let key = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".json"));
            if let Some(key) = key.filter(|k| pack::valid_key(k)) {
                loose.push((key.to_string(), path));
            }
        }
        Ok(loose)
    }

    /// The bytes every log, pack and loose entry takes.
    pub(super) fn size(&self) -> io::Result<u64> {
        let mut total = 0;
        for path in list(&self.packs)? {
            total += std::fs::metadata(path).map_or(0, |m| m.len());
        }
        for (_, path) in self.loose()? {
            total += std::fs::metadata(path).map_or(0, |m| m.len());
        }
        Ok(total)
    }

    /// Rewrites every pack, every dead log and every loose entry into one pack, without the
    /// keys in `remove` and without tombstones (all they hide goes with them), then removes
    /// what it read. Live builds' logs are left as they are.
    pub(super) fn rewrite_all(&self, remove: &HashSet<String>) -> io::Result<()> {
        // This store's own entries are rewritten too.
        self.seal_own();
        let inputs: Vec<PathBuf> = list(&self.packs)?.into_iter().filter(|p| !is_log(p) || is_dead_log(p)).collect();
        let loose = self.loose()?;
        self.merge(&inputs, &loose, remove, false)?;
        // Gone unless an older dagrun wrote a loose entry again meanwhile.
        let _ = std::fs::remove_dir(&self.legacy);
        Ok(())
    }

    /// Writes the newest record of every key in `inputs` (newest first), then of the loose
    /// entries, into one new pack, skipping `remove` (and tombstones unless
    /// `keep_tombstones`); then removes what it read. The pack is named for its newest
    /// input, so that it stays older than anything sealed meanwhile.
    fn merge(
        &self,
        inputs: &[PathBuf],
        loose: &[(String, PathBuf)],
        remove: &HashSet<String>,
        keep_tombstones: bool,
    ) -> io::Result<()> {
        let newest = inputs.iter().map(|p| name_ns(p)).max().unwrap_or(0);
        let name = file_name(newest, &unique_tag(), "pack");
        let temp = self.tmp.join(&name);
        let mut out = PackWriter::create(&temp)?;
        let mut seen = HashSet::new();
        let mut read = Vec::new();
        let mut keep = |record: &pack::Record<'_>, bytes: &[u8]| match record.kind {
            Kind::Entry if remove.contains(record.key) => Ok(()),
            Kind::Tombstone if !keep_tombstones => Ok(()),
            _ => out.add(record, bytes),
        };
        let merged = (|| {
            for input in inputs {
                // Gone: merged meanwhile by another build or `gc`, into a pack that this
                // merge leaves alone.
                if newest_raw_records(input, &mut seen, &mut keep)? {
                    read.push(input.as_path());
                }
            }
            for (key, path) in loose {
                if !seen.insert(key.clone()) {
                    read.push(path);
                    continue;
                }
                let bytes = match std::fs::read(path) {
                    Ok(bytes) if bytes.len() <= pack::MAX_PAYLOAD => bytes,
                    _ => continue,
                };
                let modified = std::fs::metadata(path)?.modified()?;
                let ms = modified.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
                let record = pack::encode(Kind::Entry, ms, key, &bytes);
                keep(&pack::parse(&record).expect("a record just encoded parses"), &record)?;
                read.push(path);
            }
            Ok::<_, io::Error>(())
        })();
        let placed = merged.and_then(|()| out.finish()).and_then(|written| {
            if written {
                std::fs::create_dir_all(&self.packs)?;
                std::fs::rename(&temp, self.packs.join(&name))?;
            }
            Ok(written)
        });
        if !placed.as_ref().is_ok_and(|written| *written) {
            let _ = std::fs::remove_file(&temp);
        }
        placed?;
        // Only now, with everything they held in place.
        read.into_iter().try_for_each(remove_if_present)
    }

    /// Seals this store's log into a pack; then, above [`MERGE_ABOVE`] packs, merges the
    /// newest. Failures leave a log, which lookups scan and `gc` merges.
    pub(super) fn seal(&self) {
        if self.seal_own() {
            let _ = self.merge_newest();
        }
    }

    /// Seals this store's log, if it wrote one; whether it is now a pack.
    fn seal_own(&self) -> bool {
        let Some(mut log) = self.own.lock().expect("run-cache log poisoned").take() else { return false };
        let index = pack::index_bytes(&mut log.slots, log.len);
        if log.file.write_all(&index).is_err() {
            let _ = log.file.set_len(log.len);
            return false;
        }
        let sealed = self.packs.join(file_name(now_ns(), &log.tag, "pack"));
        std::fs::rename(&log.path, &sealed).is_ok()
    }

    /// Closes this store's log unsealed, as a killed build leaves it.
    #[cfg(test)]
    pub(super) fn abandon(&self) {
        self.own.lock().expect("run-cache log poisoned").take();
    }

    fn merge_newest(&self) -> io::Result<()> {
        let packs: Vec<PathBuf> = list(&self.packs)?.into_iter().filter(|p| !is_log(p)).collect();
        if packs.len() <= MERGE_ABOVE {
            return Ok(());
        }
        let sizes: Vec<u64> = packs.iter().map(|p| std::fs::metadata(p).map_or(0, |m| m.len())).collect();
        let count = merge_range(&sizes);
        if count < 2 {
            return Ok(());
        }
        // Older packs may hold what these tombstones hide: they stay.
        self.merge(&packs[..count], &[], &HashSet::new(), true)
    }
}

/// How many of the newest packs (sizes newest first) to merge: while the next older one is
/// at most twice what is taken so far. What stays then grows at least geometrically from the
/// newest to the oldest, so the packs number about the logarithm of the store's size.
fn merge_range(sizes: &[u64]) -> usize {
    let mut taken = 0;
    let mut total = 0u64;
    for &size in sizes {
        if taken >= 1 && size > total.saturating_mul(2) {
            break;
        }
        taken += 1;
        total += size;
    }
    taken
}

/// A new pack being written: records, then its index.
struct PackWriter {
    out: io::BufWriter<File>,
    written: u64,
    slots: Vec<Slot>,
}

impl PackWriter {
    fn create(path: &Path) -> io::Result<PackWriter> {
        let file = File::options().write(true).create_new(true).open(path)?;
        Ok(PackWriter { out: io::BufWriter::new(file), written: 0, slots: Vec::new() })
    }

    /// Adds a record (`bytes`, whole, as read or encoded).
    fn add(&mut self, record: &pack::Record<'_>, bytes: &[u8]) -> io::Result<()> {
        self.slots.push(Slot::of(self.written, record));
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Writes the index; whether the pack holds any record.
    fn finish(mut self) -> io::Result<bool> {
        let index = pack::index_bytes(&mut self.slots, self.written);
        self.out.write_all(&index)?;
        self.out.into_inner().map_err(io::IntoInnerError::into_error)?;
        Ok(!self.slots.is_empty())
    }
}

fn remove_if_present(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Calls `each` with the newest record of every key in the log or pack at `path` that
/// `seen` does not hold yet, adding it. `Ok(false)`: the file is gone.
fn newest_records(
    path: &Path,
    seen: &mut HashSet<String>,
    mut each: impl FnMut(&pack::Record<'_>) -> io::Result<()>,
) -> io::Result<bool> {
    newest_raw_records(path, seen, |record, _| each(record))
}

fn newest_raw_records(
    path: &Path,
    seen: &mut HashSet<String>,
    mut each: impl FnMut(&pack::Record<'_>, &[u8]) -> io::Result<()>,
) -> io::Result<bool> {
    let bytes = match std::fs::read(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        read => read?,
    };
    let records_end = File::open(path)
        .ok()
        .filter(|_| !is_log(path))
        .and_then(|file| PackIndex::read(&file, bytes.len() as u64))
        .map_or(bytes.len(), |index| index.records_end() as usize);
    let records = pack::scan(&bytes[..records_end]);
    // Last written first: the newest record of a key is the one that counts.
    for (offset, record) in records.iter().rev() {
        if seen.insert(record.key.to_string()) {
            let start = *offset as usize;
            each(record, &bytes[start..start + record.len])?;
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::super::{FsStore, Store};
    use super::*;

    fn files_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = match std::fs::read_dir(dir) {
            Ok(listing) => listing.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect(),
            Err(_) => Vec::new(),
        };
        names.sort();
        names
    }

    fn ends_with(names: &[String], extension: &str) -> usize {
        names.iter().filter(|n| n.ends_with(extension)).count()
    }

    /// A store whose log is left as a killed build leaves it: never sealed.
    fn killed(store: FsStore) {
        store.entries.abandon();
    }

    #[test]
    fn entries_are_one_file_a_store_seen_while_written_and_sealed_into_one_pack() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        let writer = FsStore::open(&cache).unwrap();
        for i in 0..1000 {
            writer.put_entry(&format!("key{i}"), format!("entry {i}").as_bytes()).unwrap();
        }
        writer.put_entry("key7", b"entry 7, again").unwrap();
        let names = files_in(&cache.join("packs"));
        assert_eq!((names.len(), ends_with(&names, ".log")), (1, 1), "one log, no file an entry: {names:?}");
        assert!(!cache.join("index").exists(), "no loose entries are written");
        // Another store sees the entries as they are written...
        let reader = FsStore::open(&cache).unwrap();
        assert_eq!(reader.get_entry("key999").as_deref(), Some(&b"entry 999"[..]));
        assert_eq!(reader.get_entry("key7").as_deref(), Some(&b"entry 7, again"[..]));
        drop(writer);
        let names = files_in(&cache.join("packs"));
        assert_eq!((names.len(), ends_with(&names, ".pack")), (1, 1), "sealed: {names:?}");
        // ...and after they are sealed.
        let reader = FsStore::open(&cache).unwrap();
        for i in 0..1000 {
            let expected = if i == 7 { "entry 7, again".to_string() } else { format!("entry {i}") };
            assert_eq!(reader.get_entry(&format!("key{i}")), Some(expected.into_bytes()), "key{i}");
        }
        assert_eq!(reader.get_entry("key1000"), None);
        assert_eq!(reader.entries().unwrap().len(), 1000);
        drop(reader);
        assert_eq!(files_in(&cache.join("packs")).len(), 1, "a store that wrote nothing seals nothing");
    }

    #[test]
    fn a_forgotten_entry_stays_forgotten_until_stored_again() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        let first = FsStore::open(&cache).unwrap();
        first.put_entry("k", b"v1").unwrap();
        first.put_entry("other", b"o").unwrap();
        drop(first);
        let second = FsStore::open(&cache).unwrap();
        assert_eq!(second.get_entry("k").as_deref(), Some(&b"v1"[..]));
        second.remove_entry("k").unwrap();
        assert_eq!(second.get_entry("k"), None, "at once, in the store that forgot it");
        drop(second);
        let third = FsStore::open(&cache).unwrap();
        assert_eq!(third.get_entry("k"), None, "after sealing, in another store");
        assert_eq!(third.get_entry("other").as_deref(), Some(&b"o"[..]));
        assert_eq!(third.entries().unwrap().iter().map(|e| e.key.as_str()).collect::<Vec<_>>(), ["other"]);
        third.put_entry("k", b"v1").unwrap();
        assert_eq!(third.get_entry("k").as_deref(), Some(&b"v1"[..]), "the same bytes stored again are found");
        drop(third);
        let fourth = FsStore::open(&cache).unwrap();
        assert_eq!(fourth.get_entry("k").as_deref(), Some(&b"v1"[..]));
        fourth.remove_entry("k").unwrap();
        fourth.remove_entries(&HashSet::new()).unwrap();
        drop(fourth);
        let names = files_in(&cache.join("packs"));
        assert_eq!(names.len(), 1, "gc rewrote every pack, its own store's log too: {names:?}");
        let fifth = FsStore::open(&cache).unwrap();
        assert_eq!(fifth.get_entry("k"), None, "gc dropped the tombstone with what it hid");
        assert_eq!(fifth.get_entry("other").as_deref(), Some(&b"o"[..]));
        assert_eq!(fifth.entries().unwrap().len(), 1);
        let pack = std::fs::read(cache.join("packs").join(&names[0])).unwrap();
        assert_eq!(pack::scan(&pack).len(), 1, "only `other`'s entry is left");
    }

    #[test]
    fn a_killed_store_s_log_is_read_whole_records_only_whatever_its_length() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        let store = FsStore::open(&cache).unwrap();
        for i in 0..4 {
            store.put_entry(&format!("k{i}"), format!("{{\"entry\": {i}}}").as_bytes()).unwrap();
        }
        killed(store);
        let names = files_in(&cache.join("packs"));
        assert_eq!(ends_with(&names, ".log"), 1, "{names:?}");
        let log = cache.join("packs").join(&names[0]);
        let bytes = std::fs::read(&log).unwrap();
        let last = pack::scan(&bytes).last().unwrap().0 as usize;
        for cut in last..=bytes.len() {
            std::fs::write(&log, &bytes[..cut]).unwrap();
            let reader = FsStore::open(&cache).unwrap();
            for i in 0..3 {
                assert_eq!(
                    reader.get_entry(&format!("k{i}")),
                    Some(format!("{{\"entry\": {i}}}").into_bytes()),
                    "cut at {cut}"
                );
            }
            let whole = cut == bytes.len();
            assert_eq!(reader.get_entry("k3").is_some(), whole, "cut at {cut}");
        }
        // Zeroes over the second record (a power cut's hole): only it is lost.
        let mut holed = bytes.clone();
        let records = pack::scan(&bytes);
        let (second, next) = (records[1].0 as usize, records[2].0 as usize);
        holed[second..next].fill(0);
        std::fs::write(&log, &holed).unwrap();
        let reader = FsStore::open(&cache).unwrap();
        let found: Vec<bool> = (0..4).map(|i| reader.get_entry(&format!("k{i}")).is_some()).collect();
        assert_eq!(found, [true, false, true, true]);
    }

    #[test]
    fn damaged_pack_bytes_are_misses_and_a_damaged_index_costs_only_a_scan() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        let store = FsStore::open(&cache).unwrap();
        for i in 0..50 {
            store.put_entry(&format!("k{i}"), format!("entry {i}").as_bytes()).unwrap();
        }
        drop(store);
        let names = files_in(&cache.join("packs"));
        let path = cache.join("packs").join(&names[0]);
        let bytes = std::fs::read(&path).unwrap();
        // One payload byte changed: that entry is a miss, never another's bytes.
        let at = bytes.windows(9).position(|w| w == b"entry 17\n").unwrap();
        let mut damaged = bytes.clone();
        damaged[at + 6] = b'8';
        std::fs::write(&path, &damaged).unwrap();
        let reader = FsStore::open(&cache).unwrap();
        assert_eq!(reader.get_entry("k17"), None);
        assert_eq!(reader.get_entry("k18").as_deref(), Some(&b"entry 18"[..]));
        // The trailer damaged: every entry is still found, by scanning.
        let mut damaged = bytes.clone();
        let last = damaged.len() - 20;
        damaged[last] ^= 0xff;
        std::fs::write(&path, &damaged).unwrap();
        let reader = FsStore::open(&cache).unwrap();
        for i in 0..50 {
            assert_eq!(reader.get_entry(&format!("k{i}")), Some(format!("entry {i}").into_bytes()));
        }
    }

    #[test]
    fn loose_entries_of_older_versions_are_found_forgotten_and_folded_in_by_gc() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        std::fs::create_dir_all(cache.join("index")).unwrap();
        for key in ["a", "b", "c"] {
            std::fs::write(cache.join("index").join(format!("{key}.json")), format!("loose {key}")).unwrap();
        }
        let store = FsStore::open(&cache).unwrap();
        assert_eq!(store.get_entry("a").as_deref(), Some(&b"loose a"[..]));
        store.put_entry("b", b"packed b").unwrap();
        assert_eq!(store.get_entry("b").as_deref(), Some(&b"packed b"[..]), "a record is newer than any loose entry");
        store.remove_entry("c").unwrap();
        assert!(!cache.join("index/c.json").exists());
        assert_eq!(store.entries().unwrap().len(), 2);
        drop(store);
        let gc = FsStore::open(&cache).unwrap();
        gc.remove_entries(&HashSet::new()).unwrap();
        assert!(!cache.join("index").exists(), "gc folded the loose entries into its pack");
        assert_eq!(gc.get_entry("a").as_deref(), Some(&b"loose a"[..]));
        drop(gc);
        let reader = FsStore::open(&cache).unwrap();
        assert_eq!(reader.get_entry("a").as_deref(), Some(&b"loose a"[..]));
        assert_eq!(reader.get_entry("b").as_deref(), Some(&b"packed b"[..]));
        assert_eq!(reader.get_entry("c"), None);
    }

    #[test]
    fn gc_merges_the_logs_of_killed_stores_but_not_of_live_ones() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        let dead = FsStore::open(&cache).unwrap();
        dead.put_entry("dead", b"d").unwrap();
        killed(dead);
        let live = FsStore::open(&cache).unwrap();
        live.put_entry("live", b"l").unwrap();
        // Both logs old enough to be merged, if their writer is gone.
        let an_hour_ago = SystemTime::now() - Duration::from_secs(3600);
        for name in files_in(&cache.join("packs")) {
            File::options()
                .write(true)
                .open(cache.join("packs").join(name))
                .unwrap()
                .set_modified(an_hour_ago)
                .unwrap();
        }
        let gc = FsStore::open(&cache).unwrap();
        let removed: HashSet<String> = ["nothing".to_string()].into();
        gc.remove_entries(&removed).unwrap();
        let names = files_in(&cache.join("packs"));
        assert_eq!((ends_with(&names, ".pack"), ends_with(&names, ".log")), (1, 1), "{names:?}");
        live.put_entry("live2", b"l2").unwrap();
        drop(live);
        let reader = FsStore::open(&cache).unwrap();
        for (key, value) in [("dead", "d"), ("live", "l"), ("live2", "l2")] {
            assert_eq!(reader.get_entry(key).as_deref(), Some(value.as_bytes()), "{key}");
        }
    }

    #[test]
    fn sealing_merges_the_newest_packs_and_every_entry_stays_found() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        for i in 0..40 {
            let store = FsStore::open(&cache).unwrap();
            store.put_entry(&format!("k{i}"), format!("v{i}").as_bytes()).unwrap();
            store.put_entry("shared", format!("v{i}").as_bytes()).unwrap();
            if i == 20 {
                store.remove_entry("k3").unwrap();
            }
        }
        let names = files_in(&cache.join("packs"));
        assert!(names.len() <= MERGE_ABOVE, "{names:?}");
        let reader = FsStore::open(&cache).unwrap();
        for i in 0..40 {
            assert_eq!(reader.get_entry(&format!("k{i}")).is_some(), i != 3, "k{i}");
        }
        assert_eq!(reader.get_entry("shared").as_deref(), Some(&b"v39"[..]), "the newest record of a key wins");
    }

    #[test]
    fn stores_writing_at_once_beside_a_looping_gc_lose_and_mix_up_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        let done = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                while !done.load(Ordering::Relaxed) {
                    FsStore::open(&cache).unwrap().remove_entries(&HashSet::new()).unwrap();
                }
            });
            let writers: Vec<_> = (0..4)
                .map(|w| {
                    let cache = &cache;
                    scope.spawn(move || {
                        for round in 0..10 {
                            let store = FsStore::open(cache).unwrap();
                            for i in 0..50 {
                                store
                                    .put_entry(&format!("w{w}-r{round}-{i}"), format!("{w} {round} {i}").as_bytes())
                                    .unwrap();
                                store
                                    .put_entry(&format!("shared{i}"), format!("shared {i} from {w}").as_bytes())
                                    .unwrap();
                            }
                        }
                    })
                })
                .collect();
            for writer in writers {
                writer.join().unwrap();
            }
            done.store(true, Ordering::Relaxed);
        });
        let reader = FsStore::open(&cache).unwrap();
        for w in 0..4 {
            for round in 0..10 {
                for i in 0..50 {
                    let key = format!("w{w}-r{round}-{i}");
                    assert_eq!(reader.get_entry(&key), Some(format!("{w} {round} {i}").into_bytes()), "{key}");
                }
            }
        }
        for i in 0..50 {
            let shared = String::from_utf8(reader.get_entry(&format!("shared{i}")).unwrap()).unwrap();
            assert!(shared.starts_with(&format!("shared {i} from ")), "{shared}");
        }
        assert_eq!(reader.entries().unwrap().len(), 4 * 10 * 50 + 50);
    }

    #[test]
    fn merging_keeps_the_packs_growing_geometrically() {
        assert_eq!(merge_range(&[10, 10, 10, 100]), 3);
        assert_eq!(merge_range(&[10, 25, 1000]), 1);
        assert_eq!(merge_range(&[10, 20, 60, 1000]), 3);
        assert_eq!(merge_range(&[5]), 1);
    }
}
