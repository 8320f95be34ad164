//! Content hashes of files, cached by (size, mtime, ctime, inode, device) so an unchanged
//! file is read once.

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use rayon::prelude::*;

use super::hashes::FileHash;

/// A file modified this close to the moment it was hashed may change again within the
/// same timestamp tick without its timestamps moving (the "racy" case git also handles),
/// so such an entry is trusted only once this much time has passed, by the filesystem's own
/// clock. Filesystems that keep sub-second times (ext4, XFS, Btrfs, tmpfs, NFS on them)
/// take them from the kernel's coarse clock, which ticks every 1 to 10 ms (HZ 1000 to 100;
/// exFAT keeps 10 ms); 50 ms is more than two ticks of the slowest, so even the clock file's
/// own coarse time cannot hide a tick.
const RACY_WINDOW_NS: i64 = 50_000_000;

/// The window for a file whose times are whole seconds: a filesystem that keeps only
/// seconds (ext3, HFS+) or two (FAT). A file on a fine-grained filesystem lands here once
/// in a billion, and is only trusted later.
const COARSE_RACY_WINDOW_NS: i64 = 2_000_000_000;

/// The largest file `rehash_racy` reads a second time: once for the build, where a reader
/// would read it at every look until the next build; a large output's second read would
/// double its hashing.
const REHASH_MAX_BYTES: u64 = 64 * 1024;

/// The racy window for a file with these times.
fn racy_window_ns(mtime_ns: i64, ctime_ns: i64) -> i64 {
    let whole_seconds = |ns: i64| ns.rem_euclid(1_000_000_000) == 0;
    if whole_seconds(mtime_ns) && whole_seconds(ctime_ns) { COARSE_RACY_WINDOW_NS } else { RACY_WINDOW_NS }
}

/// What the stat cache knows about one file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheEntry {
    pub size: u64,
    pub mtime_ns: i64,
    pub inode: u64,
    pub hash: FileHash,
    /// The filesystem's time shortly before the hash was computed, in ns since the epoch.
    pub cached_at_ns: i64,
    /// ctime catches a same-size edit whose mtime was put back (`touch -r`, `cp -p`):
    /// no one can set the ctime.
    pub ctime_ns: i64,
    pub dev: u64,
}

impl CacheEntry {
    fn matches(&self, stat: &FileStat) -> bool {
        self.size == stat.size
            && self.mtime_ns == stat.mtime_ns
            && self.ctime_ns == stat.ctime_ns
            && self.inode == stat.inode
            && self.dev == stat.dev
    }

    /// Changed within the racy window before it was hashed: it may change again without
    /// its timestamps moving, so it is read again.
    fn is_racy(&self) -> bool {
        self.mtime_ns.max(self.ctime_ns) >= self.cached_at_ns - racy_window_ns(self.mtime_ns, self.ctime_ns)
    }
}

/// The identity of a file's current version, as far as `stat` can tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileStat {
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub inode: u64,
    pub dev: u64,
}

/// What `hash_path` needs of one `statx`: the kind of file and its key in the cache.
enum Found {
    File(FileStat),
    Dir,
    Other,
}

/// `statx` of `rel` (following links) relative to the pipeline directory's descriptor: the
/// kernel walks `out/x.txt`, not every component of an absolute path, for each of the
/// thousands of paths a no-op build checks. Fields as `std::fs::Metadata` gives them, so
/// cache entries recorded either way compare equal.
fn stat_at(dir: &rustix::fd::OwnedFd, rel: &str) -> io::Result<Found> {
    use rustix::fs::{AtFlags, FileType, StatxFlags, statx};
    let st = statx(dir, rel, AtFlags::empty(), StatxFlags::BASIC_STATS)?;
    let ns = |t: rustix::fs::StatxTimestamp| t.tv_sec * 1_000_000_000 + i64::from(t.tv_nsec);
    Ok(match FileType::from_raw_mode(st.stx_mode.into()) {
        FileType::Directory => Found::Dir,
        FileType::RegularFile => Found::File(FileStat {
            size: st.stx_size,
            mtime_ns: ns(st.stx_mtime),
            ctime_ns: ns(st.stx_ctime),
            inode: st.stx_ino,
            dev: rustix::fs::makedev(st.stx_dev_major, st.stx_dev_minor),
        }),
        _ => Found::Other,
    })
}

impl FileStat {
    fn of(meta: &std::fs::Metadata) -> FileStat {
        FileStat {
            size: meta.size(),
            mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
            ctime_ns: meta.ctime() * 1_000_000_000 + meta.ctime_nsec(),
            inode: meta.ino(),
            dev: meta.dev(),
        }
    }
}

/// Where the cache reads "now" for the racy check. File times come from the clock of the
/// filesystem holding the files (an NFS server's, say), which may differ from this
/// machine's; comparing them with the local clock could trust a racy entry.
#[derive(Debug, Clone)]
pub enum CacheClock {
    /// Write this file and read back its mtime: the filesystem's own "now". Used by
    /// commands that save the cache.
    Filesystem(PathBuf),
    /// The local clock: for readers, which never save what they hash.
    Local,
}

impl CacheClock {
    fn now_ns(&self) -> i64 {
        match self {
            CacheClock::Filesystem(stamp) => {
                filesystem_now_ns(stamp).unwrap_or_else(|_| local_now_ns() - COARSE_RACY_WINDOW_NS)
            }
            CacheClock::Local => local_now_ns(),
        }
    }
}

/// The mtime the filesystem gives a file written now.
fn filesystem_now_ns(stamp: &Path) -> io::Result<i64> {
    use std::io::Write;
    if let Some(dir) = stamp.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut file = std::fs::File::create(stamp)?;
    file.write_all(b"dagrun clock\n")?;
    let meta = file.metadata()?;
    Ok(meta.mtime() * 1_000_000_000 + meta.mtime_nsec())
}

/// Why a path could not be hashed.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error("`{path}` does not exist")]
    Missing { path: String },
    #[error("cannot read `{path}`: {source}")]
    Io { path: String, source: io::Error },
    #[error("cannot walk directory `{path}`: {message}")]
    Walk { path: String, message: String },
    #[error(
        "`{path}` is not a regular file or directory (a FIFO, socket or device); dagrun hashes only files and directories"
    )]
    NotAFile { path: String },
}

impl HashError {
    fn io(path: &str, source: io::Error) -> HashError {
        if source.kind() == io::ErrorKind::NotFound {
            HashError::Missing { path: path.to_string() }
        } else {
            HashError::Io { path: path.to_string(), source }
        }
    }
}

/// The stat cache: loaded from the state database at the start of a command, consulted
/// and filled from many threads, and its new entries written back with each stage.
#[derive(Debug)]
pub struct HashCache {
    root: PathBuf,
    /// `root` opened as a directory (`O_PATH`), for `stat_at`; `None` if it could not be
    /// opened, and then every path is statted in full.
    root_dir: Option<rustix::fd::OwnedFd>,
    /// Where "now" is read, once, before the first file this cache hashes: every entry it
    /// hashes was hashed after that, so it is a safe `cached_at_ns`. Read lazily: a no-op
    /// build hashes nothing, and so need not write the clock's file.
    clock: CacheClock,
    clock_ns: std::sync::OnceLock<i64>,
    known: Mutex<Known>,
}

/// The entries, and those hashed since the last `take_fresh`, under one lock: of two
/// threads hashing one path, the entry the map keeps is the one written last, so the map
/// stays what the table holds.
#[derive(Debug)]
struct Known {
    entries: HashMap<String, CacheEntry>,
    fresh: Vec<(String, CacheEntry)>,
    /// Files this cache hashed whose entries were racy when made: what `rehash_racy` reads.
    racy: Vec<String>,
}

impl HashCache {
    pub fn new(root: &Path, entries: HashMap<String, CacheEntry>, clock: &CacheClock) -> HashCache {
        use rustix::fs::{Mode, OFlags, open};
        HashCache {
            root: root.to_path_buf(),
            root_dir: open(root, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty()).ok(),
            clock: clock.clone(),
            clock_ns: std::sync::OnceLock::new(),
            known: Mutex::new(Known { entries, fresh: Vec::new(), racy: Vec::new() }),
        }
    }

    /// Every entry, those hashed by this cache included: what a later plan may start from.
    pub fn into_entries(self) -> HashMap<String, CacheEntry> {
        self.known.into_inner().expect("hash cache poisoned").entries
    }

    /// Entries hashed since the last call, to be written to the state database.
    pub fn take_fresh(&self) -> Vec<(String, CacheEntry)> {
        std::mem::take(&mut self.known.lock().expect("hash cache poisoned").fresh)
    }

    /// Hashes a file or a directory (the sorted list of its files' relative paths and hashes).
    pub fn hash_path(&self, rel: &str) -> Result<FileHash, HashError> {
        match self.stat(rel).map_err(|e| HashError::io(rel, e))? {
            Found::Dir => self.hash_dir(rel, &self.root.join(rel)),
            Found::File(stat) => self.hash_file(rel, stat),
            Found::Other => Err(HashError::NotAFile { path: rel.to_string() }),
        }
    }

    /// Hashes many paths, in parallel, in the order given.
    pub fn hash_paths<'a>(&self, rels: &[&'a str]) -> Vec<(&'a str, Result<FileHash, HashError>)> {
        if rels.len() < 2 {
            return rels.iter().map(|&rel| (rel, self.hash_path(rel))).collect();
        }
        rels.par_iter().map(|&rel| (rel, self.hash_path(rel))).collect()
    }

    /// `rel` as `hash_path` finds it (relative to the root's descriptor: no path is made).
    fn stat(&self, rel: &str) -> io::Result<Found> {
        match &self.root_dir {
            Some(dir) => stat_at(dir, rel),
            None => std::fs::metadata(self.root.join(rel)).map(|meta| match () {
                () if meta.is_dir() => Found::Dir,
                () if meta.is_file() => Found::File(FileStat::of(&meta)),
                () => Found::Other,
            }),
        }
    }

    fn hash_file(&self, rel: &str, stat: FileStat) -> Result<FileHash, HashError> {
        let cached = self.known.lock().expect("hash cache poisoned").entries.get(rel).copied();
        if let Some(entry) = cached
            && entry.matches(&stat)
            && !entry.is_racy()
        {
            return Ok(entry.hash);
        }
        let cached_at_ns = *self.clock_ns.get_or_init(|| self.clock.now_ns());
        let (file, opened) = open_with_stat(rel, &self.root.join(rel))?;
        let entry = hash_into_entry(rel, file, opened, cached_at_ns)?;
        if cached != Some(entry) {
            let mut known = self.known.lock().expect("hash cache poisoned");
            known.entries.insert(rel.to_string(), entry);
            known.fresh.push((rel.to_string(), entry));
            // Listed only by a cache on the filesystem's clock (a writer's): a reader never
            // reads them again, and its list would be 100,000 names after a full build.
            if entry.is_racy() && matches!(self.clock, CacheClock::Filesystem(_)) {
                known.racy.push(rel.to_string());
            }
        }
        Ok(entry.hash)
    }

    /// Reads again the small files this cache hashed while they were racy (a build's
    /// outputs, hashed just after their stage wrote them, all are; an input edited just
    /// before the build too) whose racy window has passed by the filesystem's clock, read
    /// now, so that their entries are trusted: a reader right after the build (`status`,
    /// `build -n`, the dashboard) then reads none of them, where it would read every output
    /// again and, a reader, save nothing. An entry whose file changed since keeps its place
    /// (the next look at it sees the change); one whose file changed without its times
    /// moving (the racy case itself) gets the new hash. Files over `REHASH_MAX_BYTES`, those
    /// written in the last racy window, and all of them when the clock's file cannot be
    /// written, are left to the next build. Returns how many entries it made trusted.
    pub fn rehash_racy(&self) -> usize {
        let mut racy = std::mem::take(&mut self.known.lock().expect("hash cache poisoned").racy);
        // Read before any file is read again: every entry below is hashed after it. Only the
        // filesystem's own clock will do: the local one may be ahead of an NFS server's.
        let CacheClock::Filesystem(stamp) = &self.clock else { return 0 };
        if racy.is_empty() {
            return 0;
        }
        let Ok(now_ns) = filesystem_now_ns(stamp) else { return 0 };
        racy.sort_unstable();
        racy.dedup();
        let due: Vec<(String, CacheEntry)> = {
            let known = self.known.lock().expect("hash cache poisoned");
            racy.into_iter()
                .filter_map(|rel| {
                    let entry = *known.entries.get(&rel)?;
                    let trusted_if_hashed_now = !CacheEntry { cached_at_ns: now_ns, ..entry }.is_racy();
                    (entry.is_racy() && trusted_if_hashed_now && entry.size <= REHASH_MAX_BYTES).then_some((rel, entry))
                })
                .collect()
        };
        let rehashed: Vec<(String, CacheEntry)> = due
            .into_par_iter()
            .filter_map(|(rel, entry)| {
                // Only the file that was hashed, unchanged: never one since grown past the
                // limit, or made a FIFO, whose open would wait for a writer.
                let Ok(Found::File(now)) = self.stat(&rel) else { return None };
                if !entry.matches(&now) {
                    return None;
                }
                let (file, opened) = open_with_stat(&rel, &self.root.join(&rel)).ok()?;
                if !entry.matches(&opened) {
                    return None;
                }
                Some((rel.clone(), hash_into_entry(&rel, file, opened, now_ns).ok()?))
            })
            .collect();
        let count = rehashed.len();
        let mut known = self.known.lock().expect("hash cache poisoned");
        for (rel, entry) in rehashed {
            known.entries.insert(rel.clone(), entry);
            known.fresh.push((rel, entry));
        }
        count
    }

    fn hash_dir(&self, rel: &str, full: &Path) -> Result<FileHash, HashError> {
        let mut files: Vec<String> = Vec::new();
        for entry in walkdir::WalkDir::new(full).follow_links(true).sort_by_file_name() {
            let entry = entry.map_err(|e| {
                let message = match e.loop_ancestor() {
                    Some(_) => format!(
                        "a symbolic link loop at {}; remove the link or point the input elsewhere",
                        e.path().map_or_else(String::new, |p| p.display().to_string())
                    ),
                    None => e.to_string(),
                };
                HashError::Walk { path: rel.to_string(), message }
            })?;
            if entry.file_type().is_dir() {
                continue;
            }
            let inner = entry.path().strip_prefix(full).expect("walkdir yields paths under its root");
            let Some(inner) = inner.to_str() else {
                return Err(HashError::Walk {
                    path: rel.to_string(),
                    message: format!(
                        "the name {} is not UTF-8; rename the file (dagrun records paths as text)",
                        inner.display()
                    ),
                });
            };
            files.push(format!("{rel}/{inner}"));
        }
        let hashed: Vec<Result<FileHash, HashError>> = files
            .par_iter()
            .map(|file| {
                let full = self.root.join(file);
                let meta = std::fs::metadata(&full).map_err(|e| HashError::io(file, e))?;
                if !meta.is_file() {
                    return Err(HashError::NotAFile { path: file.clone() });
                }
                self.hash_file(file, FileStat::of(&meta))
            })
            .collect();
        let mut h = blake3::Hasher::new();
        h.update(b"dagrun dir v1\0");
        h.update(&(files.len() as u64).to_le_bytes());
        for (file, hash) in files.iter().zip(hashed) {
            let inner = &file[rel.len() + 1..];
            h.update(&(inner.len() as u64).to_le_bytes());
            h.update(inner.as_bytes());
            h.update(hash?.0.as_bytes());
        }
        Ok(FileHash(h.finalize()))
    }
}

/// Opens `full` and reads its times from the file opened: an entry made from them describes
/// the very file read, even if `full` was replaced since the caller looked at it (a later
/// change to that file moves its times, or falls in the racy window, which has it read
/// again).
fn open_with_stat(rel: &str, full: &Path) -> Result<(std::fs::File, FileStat), HashError> {
    let io = |e| HashError::io(rel, e);
    let file = std::fs::File::open(full).map_err(io)?;
    let stat = FileStat::of(&file.metadata().map_err(io)?);
    Ok((file, stat))
}

/// Hashes `file`, just opened, whose own times are `stat`, into its entry.
fn hash_into_entry(rel: &str, file: std::fs::File, stat: FileStat, cached_at_ns: i64) -> Result<CacheEntry, HashError> {
    let (hash, _) = super::file::hash_open_file(file, stat.size).map_err(|e| HashError::io(rel, e))?;
    Ok(CacheEntry {
        size: stat.size,
        mtime_ns: stat.mtime_ns,
        inode: stat.inode,
        hash: FileHash(hash),
        cached_at_ns,
        ctime_ns: stat.ctime_ns,
        dev: stat.dev,
    })
}

fn local_now_ns() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_hash_covers_names_and_contents() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("d/sub")).unwrap();
        std::fs::write(dir.path().join("d/a"), "1").unwrap();
        std::fs::write(dir.path().join("d/sub/b"), "2").unwrap();
        let hash = |root: &Path| HashCache::new(root, HashMap::new(), &CacheClock::Local).hash_path("d").unwrap();
        let first = hash(dir.path());
        assert_eq!(first, hash(dir.path()));
        std::fs::write(dir.path().join("d/sub/b"), "3").unwrap();
        let edited = hash(dir.path());
        assert_ne!(first, edited);
        std::fs::rename(dir.path().join("d/sub/b"), dir.path().join("d/sub/c")).unwrap();
        assert_ne!(edited, hash(dir.path()));
    }

    #[test]
    fn whole_second_times_get_the_coarse_window() {
        let entry = |mtime_ns, ctime_ns, cached_at_ns| CacheEntry {
            size: 1,
            mtime_ns,
            inode: 1,
            hash: FileHash(blake3::hash(b"")),
            cached_at_ns,
            ctime_ns,
            dev: 1,
        };
        let t = 1_700_000_000_000_000_000;
        // Fine-grained times: trusted 50 ms on, not before.
        assert!(entry(t + 7, t + 7, t + 7 + RACY_WINDOW_NS - 1).is_racy());
        assert!(!entry(t + 7, t + 7, t + 8 + RACY_WINDOW_NS).is_racy());
        // Whole seconds (ext3, FAT): still racy a second later, trusted after two.
        assert!(entry(t, t, t + 1_000_000_000).is_racy());
        assert!(!entry(t, t, t + COARSE_RACY_WINDOW_NS + 1).is_racy());
        // A fine ctime (the file was touched since) counts as fine-grained.
        assert!(!entry(t, t + 3, t + 4 + RACY_WINDOW_NS).is_racy());
    }

    /// The clock's file is written before the first file is hashed, and not for a lookup
    /// that the cache answers.
    #[test]
    fn the_clock_is_read_only_before_a_file_is_hashed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("known"), "k").unwrap();
        std::fs::write(dir.path().join("new"), "n").unwrap();
        let stat = FileStat::of(&std::fs::metadata(dir.path().join("known")).unwrap());
        let known = CacheEntry {
            size: stat.size,
            mtime_ns: stat.mtime_ns,
            inode: stat.inode,
            hash: FileHash(blake3::hash(b"k")),
            cached_at_ns: stat.mtime_ns.max(stat.ctime_ns) + 10 * RACY_WINDOW_NS,
            ctime_ns: stat.ctime_ns,
            dev: stat.dev,
        };
        let clock = dir.path().join(".dagrun/clock");
        let cache = HashCache::new(
            dir.path(),
            HashMap::from([("known".to_string(), known)]),
            &CacheClock::Filesystem(clock.clone()),
        );
        assert_eq!(cache.hash_path("known").unwrap(), known.hash);
        assert!(!clock.exists(), "answered from the cache: no clock read");
        cache.hash_path("new").unwrap();
        assert!(clock.exists(), "read before hashing");
        let written = FileStat::of(&std::fs::metadata(&clock).unwrap());
        assert_eq!(cache.take_fresh()[0].1.cached_at_ns, written.mtime_ns);
    }

    #[test]
    fn stat_at_gives_the_key_metadata_gives() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        std::fs::write(dir.path().join("d/f"), "x").unwrap();
        let fd = rustix::fs::open(dir.path(), rustix::fs::OFlags::PATH, rustix::fs::Mode::empty()).unwrap();
        let Found::File(stat) = stat_at(&fd, "d/f").unwrap() else { panic!("a file") };
        assert_eq!(stat, FileStat::of(&std::fs::metadata(dir.path().join("d/f")).unwrap()));
        assert!(matches!(stat_at(&fd, "d").unwrap(), Found::Dir));
        assert_eq!(stat_at(&fd, "nope").err().map(|e| e.kind()), Some(io::ErrorKind::NotFound));
    }

    #[test]
    fn a_trusted_entry_is_used_without_reading_and_a_racy_one_is_rehashed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), "real").unwrap();
        let meta = std::fs::metadata(dir.path().join("f")).unwrap();
        let stat = FileStat::of(&meta);
        let bogus = FileHash(blake3::hash(b"not the content"));
        let entry = |cached_at_ns| CacheEntry {
            size: stat.size,
            mtime_ns: stat.mtime_ns,
            inode: stat.inode,
            hash: bogus,
            cached_at_ns,
            ctime_ns: stat.ctime_ns,
            dev: stat.dev,
        };

        let trusted = HashCache::new(
            dir.path(),
            HashMap::from([("f".into(), entry(stat.ctime_ns + 2 * RACY_WINDOW_NS))]),
            &CacheClock::Local,
        );
        assert_eq!(trusted.hash_path("f").unwrap(), bogus, "a trusted entry is not re-read");

        let racy =
            HashCache::new(dir.path(), HashMap::from([("f".into(), entry(stat.mtime_ns + 10))]), &CacheClock::Local);
        assert_eq!(racy.hash_path("f").unwrap(), FileHash(blake3::hash(b"real")));
        assert_eq!(racy.take_fresh().len(), 1);
    }

    /// Waits, by the filesystem's clock as `clock` reads it, until an entry for `path` as it
    /// is now would be trusted.
    fn wait_out_racy_window(path: &Path, clock: &Path) {
        let stat = FileStat::of(&std::fs::metadata(path).unwrap());
        let entry = |cached_at_ns| CacheEntry {
            size: stat.size,
            mtime_ns: stat.mtime_ns,
            inode: stat.inode,
            hash: FileHash(blake3::hash(b"")),
            cached_at_ns,
            ctime_ns: stat.ctime_ns,
            dev: stat.dev,
        };
        while entry(filesystem_now_ns(clock).unwrap()).is_racy() {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// Runs `make` until it gives a cache whose every entry is racy (hashed as soon as
    /// written, each is, unless this thread was held up for a whole racy window between a
    /// write and its hash).
    fn racy_cache(make: impl Fn() -> HashCache) -> HashCache {
        for _ in 0..100 {
            let cache = make();
            if cache.known.lock().unwrap().entries.values().all(CacheEntry::is_racy) {
                return cache;
            }
        }
        panic!("no racy entries in 100 tries: is this filesystem's clock far from the local one?");
    }

    #[test]
    fn racy_entries_are_trusted_once_read_again_after_their_window_but_not_changed_or_large_files() {
        let dir = tempfile::tempdir().unwrap();
        let clock = dir.path().join(".dagrun/clock");
        let cache = racy_cache(|| {
            std::fs::write(dir.path().join("small"), "s").unwrap();
            std::fs::write(dir.path().join("edited"), "e").unwrap();
            std::fs::write(dir.path().join("large"), vec![7u8; REHASH_MAX_BYTES as usize + 1]).unwrap();
            let cache = HashCache::new(dir.path(), HashMap::new(), &CacheClock::Filesystem(clock.clone()));
            for rel in ["small", "edited", "large"] {
                cache.hash_path(rel).unwrap();
            }
            cache
        });
        let entries = cache.known.lock().unwrap().entries.clone();
        cache.take_fresh();
        std::fs::write(dir.path().join("edited"), "edited since").unwrap();
        for rel in ["small", "edited", "large"] {
            wait_out_racy_window(&dir.path().join(rel), &clock);
        }

        assert_eq!(cache.rehash_racy(), 1);
        let known = cache.known.lock().unwrap();
        let small = known.entries["small"];
        assert!(!small.is_racy(), "{small:?}");
        assert_eq!(small.hash, FileHash(blake3::hash(b"s")));
        assert_eq!(known.fresh, [("small".to_string(), small)], "to be saved");
        assert_eq!(known.entries["edited"], entries["edited"], "left for the next look to see the edit");
        assert_eq!(known.entries["large"], entries["large"], "left to the next build");
        assert!(known.racy.is_empty());
    }

    /// The racy case itself: the file changed after it was hashed without its times
    /// moving. Read again, the entry gets what the file holds.
    #[test]
    fn a_racy_entry_read_again_gets_the_content_not_the_hash_it_had() {
        let dir = tempfile::tempdir().unwrap();
        let clock = dir.path().join(".dagrun/clock");
        let cache = racy_cache(|| {
            std::fs::write(dir.path().join("f"), "real").unwrap();
            let cache = HashCache::new(dir.path(), HashMap::new(), &CacheClock::Filesystem(clock.clone()));
            cache.hash_path("f").unwrap();
            cache
        });
        // As if "real" had been written over other bytes of its size within the same tick.
        let stale = FileHash(blake3::hash(b"fake"));
        cache.known.lock().unwrap().entries.get_mut("f").unwrap().hash = stale;
        wait_out_racy_window(&dir.path().join("f"), &clock);
        assert_eq!(cache.rehash_racy(), 1);
        assert_eq!(cache.hash_path("f").unwrap(), FileHash(blake3::hash(b"real")));
    }

    #[test]
    fn a_reader_keeps_no_list_of_racy_files() {
        let dir = tempfile::tempdir().unwrap();
        let reader = racy_cache(|| {
            std::fs::write(dir.path().join("f"), "f").unwrap();
            let reader = HashCache::new(dir.path(), HashMap::new(), &CacheClock::Local);
            reader.hash_path("f").unwrap();
            reader
        });
        assert!(reader.known.lock().unwrap().racy.is_empty());
        assert_eq!(reader.rehash_racy(), 0);
    }

    #[test]
    fn a_same_size_edit_with_its_mtime_put_back_is_hashed_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, "aaaa").unwrap();
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
        std::fs::File::options().write(true).open(&path).unwrap().set_modified(old).unwrap();
        let cache = HashCache::new(dir.path(), HashMap::new(), &CacheClock::Local);
        let first = cache.hash_path("f").unwrap();
        // Same size, same mtime (as `touch -r` or `cp -p` leave it); only the ctime moves,
        // once the kernel's coarse clock has ticked.
        let first_ctime = FileStat::of(&std::fs::metadata(&path).unwrap()).ctime_ns;
        loop {
            std::fs::write(&path, "bbbb").unwrap();
            std::fs::File::options().write(true).open(&path).unwrap().set_modified(old).unwrap();
            if FileStat::of(&std::fs::metadata(&path).unwrap()).ctime_ns != first_ctime {
                break;
            }
        }
        let entries = cache.known.lock().unwrap().entries.clone();
        let again = HashCache::new(dir.path(), entries, &CacheClock::Local);
        assert_ne!(again.hash_path("f").unwrap(), first);
        assert_eq!(again.hash_path("f").unwrap(), FileHash(blake3::hash(b"bbbb")));
    }
}
