//! A directory store's entries, many to a file (the bytes are `pack`'s). A store that writes
//! appends every entry to its own log, `packs/<ns>-<host>-<pid>-<tag>.log`: one `write` an
//! entry and no new file, where a file an entry cost a 10,000-stage build seconds on ext4
//! without a journal (making an inode there reads past every inode freed in the last
//! minutes). When the store is dropped (a build's end) the log gets its index and is renamed
//! `….pack`.
//!
//! One writer a log, and every other file written whole and renamed into place: safe for
//! several builds, checkouts and machines sharing the directory (NFS included, where two
//! appenders to one file overwrite each other). A lookup reads its own log, every other log
//! and pack, and the loose `index/<key>.json` entries older versions wrote, and takes the
//! key's newest record by the time written into it: an entry, or a tombstone (`forget`) that
//! hides everything older. A damaged record is skipped as if absent, never taken for another
//! key's.
//!
//! `gc` rewrites everything but the logs of live builds into one pack, then removes what it
//! read; a seal that leaves more than [`MERGE_ABOVE`] packs merges the newest few (and the
//! logs of killed builds), so that a lookup searches a number of packs that grows with the
//! logarithm of the store. Merges take `merge.lock` (beside `packs/`) in turn.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::pack::{self, KeyHash, Kind, PackIndex, Slot, Stored};
use super::store::EntryInfo;

/// Above this many packs, sealing merges the newest (see `merge_range`).
const MERGE_ABOVE: usize = 8;
/// A log whose writer is gone is merged once it is this old: a log just created is not yet
/// locked by its writer.
const DEAD_LOG_AGE: Duration = Duration::from_secs(60);
/// A log of another machine, or where locks do not work, counts as dead only when untouched
/// this long: some NFS mounts keep locks on the machine that takes them.
const UNLOCKED_LOG_AGE: Duration = Duration::from_secs(24 * 3600);
/// How many times a listing is read again when a file in it was renamed (sealed) or merged
/// away before it was opened.
const LISTING_TRIES: usize = 4;

#[derive(Debug)]
pub(super) struct EntryFiles {
    packs: PathBuf,
    legacy: PathBuf,
    tmp: PathBuf,
    merge_lock: PathBuf,
    own: Mutex<Option<OwnLog>>,
    /// Every other log and pack, read at the first lookup: a store that only writes (a
    /// build of new stages) or is never asked (a no-op build) reads none.
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
    /// A failed write could not be cut off: nothing more is appended, and the log is left
    /// unsealed (readers scan past the damage).
    broken: bool,
}

#[derive(Debug)]
struct Others {
    sources: Vec<Source>,
    legacy: bool,
}

/// Another log or pack, as lookups read it.
#[derive(Debug)]
enum Source {
    /// A sealed pack: its fanout in memory, its slots and records read from the file.
    Pack { file: File, index: PackIndex },
    /// A log (or a pack whose trailer is damaged), read whole once (no file kept open):
    /// each key's last record.
    Log { bytes: Vec<u8>, newest: HashMap<KeyHash, Slot> },
}

impl Source {
    fn open(path: &Path) -> io::Result<Source> {
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        if !is_log(path)
            && let Some(index) = PackIndex::read(&file, len)
        {
            return Ok(Source::Pack { file, index });
        }
        // Read through the file opened: a log sealed meanwhile is renamed, not gone.
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let newest = pack::scan(&bytes)
            .iter()
            .map(|(offset, record)| (pack::key_hash(record.key), Slot::of(*offset, record)))
            .collect();
        Ok(Source::Log { bytes, newest })
    }

    /// The newest readable record of `key` here.
    fn newest(&self, key: &str, hash: &KeyHash) -> Option<Stored> {
        match self {
            Source::Pack { file, index } => index.find(file, hash).iter().find_map(|slot| slot.read(file, key)),
            Source::Log { bytes, newest } => newest.get(hash).and_then(|slot| slot.read_in(bytes, key)),
        }
    }
}

/// The newer of two records of a key by the time written in them; on a tie, the one found
/// first.
fn newer(found: Option<Stored>, other: Option<Stored>) -> Option<Stored> {
    match (found, other) {
        (Some(found), Some(other)) if other.written_ns > found.written_ns => Some(other),
        (found, other) => found.or(other),
    }
}

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// The time for a new record or log: the clock, but always later than the last this process
/// gave, even if the clock stepped back. So within one log (one process writes it) file order
/// is time order, and a log's records are all later than the time in its name.
fn next_time() -> u64 {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = now_ns();
    let last = LAST.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| Some(now.max(last + 1)));
    now.max(last.unwrap_or(0) + 1)
}

fn ns_of(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// This machine's name as file names carry it: letters, digits, `.` and `_` only.
fn host() -> &'static str {
    static HOST: OnceLock<String> = OnceLock::new();
    HOST.get_or_init(|| {
        let name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let name: String =
            name.trim().chars().take(40).map(|c| if c.is_ascii_alphanumeric() || c == '.' { c } else { '_' }).collect();
        if name.is_empty() { "host".to_string() } else { name }
    })
}

/// A tag unique to this machine, process and call, for files two writers must never share.
fn unique_tag() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = blake3::Hasher::new();
    hasher.update(&COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    hasher.update(&now_ns().to_le_bytes());
    hasher.update(format!("{:?}", std::thread::current().id()).as_bytes());
    format!("{}-{}-{}", host(), std::process::id(), &hasher.finalize().to_hex()[..8])
}

fn file_name(ns: u64, tag: &str, extension: &str) -> String {
    format!("{ns:020}-{tag}.{extension}")
}

/// The time a log or pack's name starts with (a log's: when it was made), and the machine.
fn name_parts(path: &Path) -> (u64, &str) {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let mut parts = name.split('-');
    let ns = parts.next().and_then(|ns| ns.parse().ok()).unwrap_or(0);
    (ns, parts.next().unwrap_or(""))
}

/// `packs/`'s logs and packs (regular files only), newest name first; `NotFound` is an
/// empty directory.
fn list(packs: &Path) -> io::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let listing = match std::fs::read_dir(packs) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(found),
        listing => listing?,
    };
    for entry in listing {
        let entry = entry?;
        let path = entry.path();
        let named = path.extension().is_some_and(|e| e == "log" || e == "pack");
        // Where the listing carries no type, asking may find the file sealed or merged away.
        let regular = match entry.file_type() {
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            kind => kind?.is_file(),
        };
        if named && regular {
            found.push(path);
        }
    }
    found.sort_unstable_by(|a, b| b.file_name().cmp(&a.file_name()));
    Ok(found)
}

/// Calls `visit` with `packs/`'s listing until it reads it all: `visit` returns `Ok(false)`
/// when a file listed was gone (renamed by its seal, or merged into a pack the listing did not
/// hold), and starts again from a new listing, at most [`LISTING_TRIES`] times; then fails
/// (what `visit` gathered last is partial).
fn with_listing(packs: &Path, mut visit: impl FnMut(&[PathBuf]) -> io::Result<bool>) -> io::Result<()> {
    for _ in 0..LISTING_TRIES {
        if visit(&list(packs)?)? {
            return Ok(());
        }
    }
    Err(io::Error::other(format!("the run-cache's files in {} kept changing while read", packs.display())))
}

fn is_log(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "log")
}

/// Whether a log's writer is gone: its lock is free (its writer holds it while it has the log
/// open) and the log is older than a writer takes to lock it. A log of another machine, or
/// one that cannot be locked, only once untouched for a day.
fn is_dead_log(path: &Path) -> bool {
    let age = std::fs::metadata(path).and_then(|m| m.modified()).ok().and_then(|m| m.elapsed().ok());
    let Some(age) = age.filter(|age| *age > DEAD_LOG_AGE) else { return false };
    if name_parts(path).1 != host() {
        return age > UNLOCKED_LOG_AGE;
    }
    // Shared: a lock a read-only file can take over NFS too; the writer's is exclusive.
    match File::open(path).map(|file| file.try_lock_shared()) {
        Ok(Ok(())) => true,
        Ok(Err(std::fs::TryLockError::WouldBlock)) | Err(_) => false,
        Ok(Err(std::fs::TryLockError::Error(_))) => age > UNLOCKED_LOG_AGE,
    }
}

/// A log's or pack's records, read whole; `None` when it is gone.
fn records_of(path: &Path) -> io::Result<Option<Vec<u8>>> {
    let mut file = match File::open(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        file => file?,
    };
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    if !is_log(path)
        && let Some(index) = PackIndex::read(&file, bytes.len() as u64)
    {
        bytes.truncate(index.records_end() as usize);
    }
    Ok(Some(bytes))
}

impl OwnLog {
    fn create(packs: &Path) -> io::Result<OwnLog> {
        let tag = unique_tag();
        let path = packs.join(file_name(next_time(), &tag, "log"));
        let open = || File::options().append(true).read(true).create_new(true).open(&path);
        let file = match open() {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                std::fs::create_dir_all(packs)?;
                open()?
            }
            opened => opened?,
        };
        // Tells `gc` and merges that the log is being written. Where locks do not work they go
        // by the log's age alone (see `is_dead_log`).
        let _ = file.try_lock();
        Ok(OwnLog { file, path, tag, len: 0, slots: Vec::new(), newest: HashMap::new(), broken: false })
    }

    fn append(&mut self, record: &[u8]) -> io::Result<()> {
        if self.broken {
            return Err(io::Error::other("an earlier write to this build's run-cache log could not be undone"));
        }
        if let Err(e) = self.file.write_all(record) {
            // Only this store writes here: cutting a partial record off is safe, and the
            // next one starts where a reader expects it.
            self.broken = self.file.set_len(self.len).is_err();
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

/// The newest record of a key among a merge's or listing's inputs, and where it is.
#[derive(Debug, Clone, Copy)]
struct Winner {
    written_ns: u64,
    kind: Kind,
    /// Which input, in the caller's order (loose entries after the logs and packs).
    input: usize,
    offset: u64,
    payload_len: u64,
}

impl Winner {
    /// Whether it beats `other`: written later, or at the same time later in one input.
    fn beats(&self, other: &Winner) -> bool {
        self.written_ns > other.written_ns
            || (self.written_ns == other.written_ns && self.input == other.input && self.offset > other.offset)
    }
}

/// Each key's newest record: keeps `candidate` if it beats what `winners` holds.
fn contend(winners: &mut HashMap<String, Winner>, key: &str, candidate: Winner) {
    match winners.get_mut(key) {
        Some(winner) if candidate.beats(winner) => *winner = candidate,
        Some(_) => {}
        None => {
            winners.insert(key.to_string(), candidate);
        }
    }
}

/// Adds the records in `bytes` (input number `input`) to the contest.
fn contend_all(winners: &mut HashMap<String, Winner>, input: usize, bytes: &[u8]) {
    for (offset, record) in pack::scan(bytes) {
        let payload_len = record.payload.len() as u64;
        let candidate = Winner { written_ns: record.written_ns, kind: record.kind, input, offset, payload_len };
        contend(winners, record.key, candidate);
    }
}

impl EntryFiles {
    pub(super) fn new(store: &Path) -> EntryFiles {
        EntryFiles {
            packs: store.join("packs"),
            legacy: store.join("index"),
            tmp: store.join("tmp"),
            merge_lock: store.join("merge.lock"),
            own: Mutex::new(None),
            others: OnceLock::new(),
        }
    }

    fn legacy_path(&self, key: &str) -> PathBuf {
        self.legacy.join(format!("{key}.json"))
    }

    fn own_path(&self) -> Option<PathBuf> {
        self.own.lock().expect("run-cache log poisoned").as_ref().map(|log| log.path.clone())
    }

    fn others(&self) -> &Others {
        self.others.get_or_init(|| {
            let own = self.own_path();
            let mut sources = Vec::new();
            let listed = with_listing(&self.packs, |paths| {
                sources.clear();
                for path in paths.iter().filter(|p| Some(*p) != own.as_ref()) {
                    match Source::open(path) {
                        Ok(source) => sources.push(source),
                        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
                        // Unreadable: its entries are misses, and the build goes on.
                        Err(_) => {}
                    }
                }
                Ok(true)
            });
            // Kept changing: what was read last is read (the rest are misses).
            let _ = listed;
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
        let record = pack::encode(kind, next_time(), key, payload);
        let mut own = self.own.lock().expect("run-cache log poisoned");
        let log = match &mut *own {
            Some(log) => log,
            none => none.insert(OwnLog::create(&self.packs)?),
        };
        log.append(&record)
    }

    pub(super) fn get(&self, key: &str) -> Option<Vec<u8>> {
        let hash = pack::key_hash(key);
        let mut found = {
            let own = self.own.lock().expect("run-cache log poisoned");
            own.as_ref().and_then(|log| log.newest.get(&hash).and_then(|&i| log.slots[i].read(&log.file, key)))
        };
        let others = self.others();
        for source in &others.sources {
            found = newer(found, source.newest(key, &hash));
        }
        if others.legacy {
            found = newer(found, self.loose(key));
        }
        found.filter(|record| record.kind == Kind::Entry).map(|record| record.payload)
    }

    /// A loose entry as a record: its time is the file's.
    fn loose(&self, key: &str) -> Option<Stored> {
        let mut file = File::open(self.legacy_path(key)).ok()?;
        let written_ns = ns_of(file.metadata().ok()?.modified().ok()?);
        let mut payload = Vec::new();
        file.read_to_end(&mut payload).ok()?;
        Some(Stored { kind: Kind::Entry, written_ns, payload })
    }

    /// Forgets `key`: a tombstone in this store's log, and the loose entry removed if any.
    pub(super) fn forget(&self, key: &str) -> io::Result<()> {
        remove_if_present(&self.legacy_path(key))?;
        self.put(key, Kind::Tombstone, b"")
    }

    /// Every key whose newest record, in any log or pack or loose, is an entry.
    pub(super) fn list(&self) -> io::Result<Vec<EntryInfo>> {
        let own = self.own_path();
        let mut winners = HashMap::new();
        let mut live = Vec::new();
        with_listing(&self.packs, |paths| {
            winners.clear();
            live.clear();
            // This store's own log first: it is in the listing too, unless it was just made.
            let inputs = own.iter().chain(paths.iter().filter(|p| Some(*p) != own.as_ref()));
            for (input, path) in inputs.enumerate() {
                let Some(bytes) = records_of(path)? else { return Ok(false) };
                contend_all(&mut winners, input, &bytes);
                // This store's own log is not: `rewrite_all` seals it first.
                live.push(Some(path) != own.as_ref() && is_log(path) && !is_dead_log(path));
            }
            Ok(true)
        })?;
        let loose = self.loose_entries()?;
        for (i, (key, path)) in loose.iter().enumerate() {
            let meta = std::fs::metadata(path)?;
            let written_ns = ns_of(meta.modified()?);
            let candidate =
                Winner { written_ns, kind: Kind::Entry, input: live.len() + i, offset: 0, payload_len: meta.len() };
            contend(&mut winners, key, candidate);
        }
        let entries =
            winners.into_iter().filter(|(_, winner)| winner.kind == Kind::Entry).map(|(key, winner)| EntryInfo {
                key,
                modified: UNIX_EPOCH + Duration::from_nanos(winner.written_ns),
                size: winner.payload_len,
                live: live.get(winner.input).copied().unwrap_or(false),
            });
        Ok(entries.collect())
    }

    /// The loose entries older versions wrote, by key.
    fn loose_entries(&self) -> io::Result<Vec<(String, PathBuf)>> {
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
        for (_, path) in self.loose_entries()? {
            total += std::fs::metadata(path).map_or(0, |m| m.len());
        }
        Ok(total)
    }

    /// Takes `merge.lock`, so that merges (and `gc`) run one at a time: waiting for it
    /// when `wait`, else `None` when another holds it. Where locks do not work, merges go on
    /// without: two at once only duplicate records.
    fn merge_lock(&self, wait: bool) -> Option<Option<File>> {
        let open = || File::options().read(true).write(true).create(true).truncate(false).open(&self.merge_lock);
        let Ok(file) = open() else { return Some(None) };
        let locked = if wait { file.lock().map_err(std::fs::TryLockError::Error) } else { file.try_lock() };
        match locked {
            Ok(()) => Some(Some(file)),
            Err(std::fs::TryLockError::WouldBlock) => None,
            Err(std::fs::TryLockError::Error(_)) => Some(None),
        }
    }

    /// Rewrites every pack, every dead log and every loose entry into one pack, without the
    /// keys in `remove`, then removes what it read. Live builds' logs are left as they are,
    /// and the tombstones that could hide something older in them are kept.
    pub(super) fn rewrite_all(&self, remove: &HashSet<String>) -> io::Result<()> {
        // This store's own entries are rewritten too.
        self.seal_own();
        let _lock = self.merge_lock(true);
        let mut inputs = Vec::new();
        // A live log holds only records written after it was made.
        let mut oldest_live = u64::MAX;
        for path in list(&self.packs)? {
            if !is_log(&path) || is_dead_log(&path) {
                inputs.push(path);
            } else {
                oldest_live = oldest_live.min(name_parts(&path).0);
            }
        }
        let loose = self.loose_entries()?;
        self.merge(&inputs, &loose, remove, oldest_live)?;
        // Gone unless an older dagrun wrote a loose entry again meanwhile.
        let _ = std::fs::remove_dir(&self.legacy);
        Ok(())
    }

    /// Writes the newest record of every key among `inputs` and `loose` into one new pack,
    /// leaving out the entries of `remove` and the tombstones written before
    /// `keep_tombstones_from` (nothing older than them is left to hide); then removes what it
    /// read. An entry of `remove` written since then becomes a tombstone of the same time: a
    /// live log may hold an older record of its key. The caller holds the merge lock.
    fn merge(
        &self,
        inputs: &[PathBuf],
        loose: &[(String, PathBuf)],
        remove: &HashSet<String>,
        keep_tombstones_from: u64,
    ) -> io::Result<()> {
        let mut winners = HashMap::new();
        let mut read = Vec::new();
        for (input, path) in inputs.iter().enumerate() {
            // Gone: sealed or merged meanwhile by a store that took no lock; left to it.
            if let Some(bytes) = records_of(path)? {
                contend_all(&mut winners, input, &bytes);
                read.push(input);
            }
        }
        for (i, (key, path)) in loose.iter().enumerate() {
            let written_ns = ns_of(std::fs::metadata(path)?.modified()?);
            let candidate =
                Winner { written_ns, kind: Kind::Entry, input: inputs.len() + i, offset: 0, payload_len: 0 };
            contend(&mut winners, key, candidate);
        }
        // What a winner is written as, if at all.
        let kept = |key: &str, winner: &Winner| match winner.kind {
            Kind::Entry if !remove.contains(key) => Some(Kind::Entry),
            _ if winner.written_ns >= keep_tombstones_from => Some(Kind::Tombstone),
            _ => None,
        };
        let name = file_name(now_ns(), &unique_tag(), "pack");
        let temp = self.tmp.join(&name);
        let written = (|| {
            let mut out = PackWriter::create(&temp)?;
            for &input in &read {
                let Some(bytes) = records_of(&inputs[input])? else { continue };
                for (offset, record) in pack::scan(&bytes) {
                    let Some(winner) = winners.get(record.key) else { continue };
                    if winner.input != input || winner.offset != offset {
                        continue;
                    }
                    match kept(record.key, winner) {
                        Some(kind) if kind == record.kind => {
                            let at = offset as usize;
                            out.add(&record, &bytes[at..at + record.len])?;
                        }
                        Some(kind) => out.encode(kind, record.written_ns, record.key, b"")?,
                        None => {}
                    }
                }
            }
            for (i, (key, path)) in loose.iter().enumerate() {
                let Some(winner) = winners.get(key.as_str()) else { continue };
                if winner.input != inputs.len() + i {
                    continue;
                }
                match kept(key, winner) {
                    Some(Kind::Entry) => {
                        let bytes = match std::fs::read(path) {
                            Ok(bytes) if bytes.len() <= pack::MAX_PAYLOAD => bytes,
                            _ => continue,
                        };
                        out.encode(Kind::Entry, winner.written_ns, key, &bytes)?;
                    }
                    Some(Kind::Tombstone) => out.encode(Kind::Tombstone, winner.written_ns, key, b"")?,
                    None => {}
                }
            }
            out.finish()
        })();
        let placed = written.and_then(|written| {
            if written {
                std::fs::create_dir_all(&self.packs)?;
                std::fs::rename(&temp, self.packs.join(&name))?;
                // The rename on disk before the inputs' removal.
                File::open(&self.packs)?.sync_all()?;
            }
            Ok(written)
        });
        if !placed.as_ref().is_ok_and(|written| *written) {
            let _ = std::fs::remove_file(&temp);
        }
        placed?;
        // Only now, with everything they held in place.
        let inputs_read = read.iter().map(|&input| inputs[input].as_path());
        let mut removed = Ok(());
        for path in inputs_read.chain(loose.iter().map(|(_, path)| path.as_path())) {
            let gone = remove_if_present(path);
            if removed.is_ok() {
                removed = gone;
            }
        }
        removed
    }

    /// Seals this store's log into a pack; then merges the newest packs, above
    /// [`MERGE_ABOVE`], and the logs of killed builds. Failures leave a log, which lookups
    /// read and a later merge folds in.
    pub(super) fn seal(&self) {
        if self.seal_own() {
            let _ = self.merge_newest();
        }
    }

    /// Seals this store's log, if it wrote one; whether it is now a pack.
    fn seal_own(&self) -> bool {
        let Some(mut log) = self.own.lock().expect("run-cache log poisoned").take() else { return false };
        if log.broken {
            return false;
        }
        let index = pack::index_bytes(&mut log.slots, log.len);
        if log.file.write_all(&index).is_err() {
            let _ = log.file.set_len(log.len);
            return false;
        }
        let sealed = self.packs.join(file_name(now_ns(), &log.tag, "pack"));
        std::fs::rename(&log.path, &sealed).is_ok()
    }

    fn merge_newest(&self) -> io::Result<()> {
        // Another merge is running: this one is left to the next seal.
        let Some(_lock) = self.merge_lock(false) else { return Ok(()) };
        let (logs, packs): (Vec<PathBuf>, Vec<PathBuf>) = list(&self.packs)?.into_iter().partition(|p| is_log(p));
        let mut inputs: Vec<PathBuf> = logs.into_iter().filter(|log| is_dead_log(log)).collect();
        if packs.len() > MERGE_ABOVE {
            let sizes: Vec<u64> = packs.iter().map(|p| std::fs::metadata(p).map_or(0, |m| m.len())).collect();
            let count = merge_range(&sizes);
            if count >= 2 {
                inputs.extend_from_slice(&packs[..count]);
            }
        }
        if inputs.is_empty() {
            return Ok(());
        }
        // Packs outside the merge may hold what its tombstones hide: they are all kept.
        self.merge(&inputs, &[], &HashSet::new(), 0)
    }

    /// Closes this store's log unsealed, as a killed build leaves it.
    #[cfg(test)]
    pub(super) fn abandon(&self) {
        self.own.lock().expect("run-cache log poisoned").take();
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

/// A new pack being written: records, then its index; synced, since a merge removes its
/// inputs once it is in place.
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

    /// Adds a new record.
    fn encode(&mut self, kind: Kind, written_ns: u64, key: &str, payload: &[u8]) -> io::Result<()> {
        let record = pack::encode(kind, written_ns, key, payload);
        self.add(&pack::parse(&record).expect("a record just encoded parses"), &record)
    }

    /// Adds a record (`bytes`, whole, as read).
    fn add(&mut self, record: &pack::Record<'_>, bytes: &[u8]) -> io::Result<()> {
        self.slots.push(Slot::of(self.written, record));
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Writes the index and syncs; whether the pack holds any record.
    fn finish(mut self) -> io::Result<bool> {
        let index = pack::index_bytes(&mut self.slots, self.written);
        self.out.write_all(&index)?;
        let file = self.out.into_inner().map_err(io::IntoInnerError::into_error)?;
        if !self.slots.is_empty() {
            file.sync_all()?;
        }
        Ok(!self.slots.is_empty())
    }
}

/// Removes a file; one already gone is no error.
pub(super) fn remove_if_present(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
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
        let live_log = live.entries.own_path().unwrap();
        assert!(live_log.exists(), "the log left is the live store's: {names:?}");
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
    fn the_newest_record_by_its_time_decides_whatever_the_files_order() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        let old = FsStore::open(&cache).unwrap();
        old.put_entry("k", b"v1").unwrap();
        drop(old);
        // A build that started first (its log made first) stores `k` again after another
        // forgot it and sealed: its entry is the newer, whichever file sorts first.
        let early = FsStore::open(&cache).unwrap();
        early.put_entry("early", b"e").unwrap();
        let forgetter = FsStore::open(&cache).unwrap();
        forgetter.remove_entry("k").unwrap();
        drop(forgetter);
        assert_eq!(FsStore::open(&cache).unwrap().get_entry("k"), None);
        early.put_entry("k", b"v2").unwrap();
        // Its log, named when it was made, sorts before the forgetter's pack.
        assert_eq!(FsStore::open(&cache).unwrap().get_entry("k").as_deref(), Some(&b"v2"[..]));
        drop(early);
        assert_eq!(FsStore::open(&cache).unwrap().get_entry("k").as_deref(), Some(&b"v2"[..]));

        // The other way round: an entry written before a tombstone stays hidden, even when
        // `gc` runs while its build is still writing (the tombstone is kept for it).
        let running = FsStore::open(&cache).unwrap();
        running.put_entry("j", b"old j").unwrap();
        let forgetter = FsStore::open(&cache).unwrap();
        forgetter.remove_entry("j").unwrap();
        drop(forgetter);
        FsStore::open(&cache).unwrap().remove_entries(&HashSet::new()).unwrap();
        drop(running);
        let reader = FsStore::open(&cache).unwrap();
        assert_eq!(reader.get_entry("j"), None);
        assert_eq!(reader.get_entry("k").as_deref(), Some(&b"v2"[..]));
    }

    #[test]
    fn gc_keeps_the_entries_of_a_build_still_writing() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        let done = FsStore::open(&cache).unwrap();
        done.put_entry("done", br#"{"format":3}"#).unwrap();
        drop(done);
        let running = FsStore::open(&cache).unwrap();
        running.put_entry("running", br#"{"format":3}"#).unwrap();
        let gc = FsStore::open(&cache).unwrap();
        let live: Vec<(String, bool)> = {
            let mut entries: Vec<_> = gc.entries().unwrap().into_iter().map(|e| (e.key, e.live)).collect();
            entries.sort();
            entries
        };
        assert_eq!(live, [("done".to_string(), false), ("running".to_string(), true)]);
        gc.remove_entries(&["done".to_string(), "running".to_string()].into()).unwrap();
        drop(gc);
        drop(running);
        let reader = FsStore::open(&cache).unwrap();
        assert_eq!(reader.get_entry("done"), None, "removed");
        assert!(reader.get_entry("running").is_some(), "a live build's log is not gc's to rewrite");
    }

    #[test]
    fn an_entry_gc_removes_does_not_come_back_from_an_older_record_in_a_live_log() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        let running = FsStore::open(&cache).unwrap();
        running.put_entry("k", b"old k").unwrap();
        let newer = FsStore::open(&cache).unwrap();
        newer.put_entry("k", b"new k").unwrap();
        drop(newer);
        FsStore::open(&cache).unwrap().remove_entries(&["k".to_string()].into()).unwrap();
        assert_eq!(FsStore::open(&cache).unwrap().get_entry("k"), None);
        drop(running);
        assert_eq!(FsStore::open(&cache).unwrap().get_entry("k"), None, "after the live log is sealed too");
        // With no live log left, gc needs no tombstone.
        let gc = FsStore::open(&cache).unwrap();
        gc.remove_entries(&HashSet::new()).unwrap();
        drop(gc);
        let names = files_in(&cache.join("packs"));
        assert!(names.is_empty(), "no entry and no tombstone left to keep: {names:?}");
    }

    #[test]
    fn record_times_only_grow_within_a_process_whatever_the_clock() {
        let times: Vec<Vec<u64>> = std::thread::scope(|scope| {
            let threads: Vec<_> = (0..4).map(|_| scope.spawn(|| (0..2000).map(|_| next_time()).collect())).collect();
            threads.into_iter().map(|t| t.join().unwrap()).collect()
        });
        for one in &times {
            assert!(one.windows(2).all(|w| w[0] < w[1]), "each thread sees them grow");
        }
        let mut all: Vec<u64> = times.concat();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 4 * 2000, "no two records of the process share a time");
    }

    #[test]
    fn merging_keeps_the_packs_growing_geometrically() {
        assert_eq!(merge_range(&[10, 10, 10, 100]), 3);
        assert_eq!(merge_range(&[10, 25, 1000]), 1);
        assert_eq!(merge_range(&[10, 20, 60, 1000]), 3);
        assert_eq!(merge_range(&[5]), 1);
    }
}
