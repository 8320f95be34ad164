//! Where the run-cache keeps its bytes: the [`Store`] trait (objects by content hash, and
//! entries by key), and [`FsStore`], a directory that several builds, checkouts and machines
//! may share. Another store (an object store such as S3) implements the same trait; the
//! engine only ever sees the trait.

use std::collections::HashSet;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use super::entries::{EntryFiles, remove_if_present};
use super::pack::Kind;

/// An object's bytes did not hash to its id: the object is damaged (or gone).
#[derive(Debug, thiserror::Error)]
pub enum GetError {
    #[error("object {id} is damaged: its bytes no longer hash to its id")]
    Damaged { id: String },
    #[error("object {id}: {source}")]
    Io { id: String, source: io::Error },
}

/// One entry of the index, for listing and trimming.
#[derive(Debug, Clone)]
pub struct EntryInfo {
    pub key: String,
    pub modified: SystemTime,
    /// The entry's own bytes (small files kept inline count here).
    pub size: u64,
    /// Still being written by a build that runs: `gc` keeps it (and what it uses).
    pub live: bool,
}

/// Objects by content hash (BLAKE3, hex), entries (manifests) by key. A reader never sees
/// half an object, whoever writes at once. An entry torn by a power cut, or damaged, is a
/// miss (for `FsStore`, its checksum fails; a store without one must make it unparseable).
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Stores a copy of the file at `path` (never a link to it: editing the file later must
    /// not change the store); returns the id of the bytes stored and their size.
    fn put_file(&self, path: &Path) -> io::Result<(String, u64)>;
    /// Writes object `id` to `dest`, a new file, checking that its bytes hash to `id`; a
    /// damaged object is removed from the store and reported.
    fn get_file(&self, id: &str, dest: &Path) -> Result<(), GetError>;
    fn put_entry(&self, key: &str, bytes: &[u8]) -> io::Result<()>;
    /// An entry's bytes; `None` when missing or unreadable (a miss, never an error).
    fn get_entry(&self, key: &str) -> Option<Vec<u8>>;
    /// Forgets an entry: later lookups miss it.
    fn remove_entry(&self, key: &str) -> io::Result<()>;
    /// Removes the entries `gc` does not keep, and may reorganise the rest.
    fn remove_entries(&self, keys: &HashSet<String>) -> io::Result<()> {
        keys.iter().try_for_each(|key| self.remove_entry(key))
    }
    fn remove_object(&self, id: &str) -> io::Result<()>;
    fn entries(&self) -> io::Result<Vec<EntryInfo>>;
    /// Every object's id and size.
    fn objects(&self) -> io::Result<Vec<(String, u64)>>;
    /// What the store holds, in bytes (objects and entries).
    fn size(&self) -> io::Result<u64>;
    /// Removes what writes that never finished left behind (a build killed mid-write),
    /// older than `age`; returns the bytes freed.
    fn sweep_temporary(&self, age: std::time::Duration) -> io::Result<u64>;
    /// Where it is, for messages.
    fn describe(&self) -> String;
}

/// A run-cache in a directory: `objects/ab/cdef…` (read-only files named by the hash of
/// their bytes), `packs/` (the entries, many to a file: see `entries`; `index/<key>.json`,
/// one a file, as older versions wrote them, is still read) and `tmp/` for objects and
/// packs being written.
///
/// The entries one `FsStore` writes are seen by any store whose first lookup comes after they
/// are written, and are sealed into a pack when it is dropped: open one a build.
#[derive(Debug)]
pub struct FsStore {
    dir: PathBuf,
    pub(super) entries: EntryFiles,
}

/// Distinguishes the temporary files of one process's threads.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl FsStore {
    /// Opens (creating) the store in `dir`.
    pub fn open(dir: &Path) -> io::Result<FsStore> {
        for sub in ["objects", "packs", "tmp"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        Ok(FsStore { dir: dir.to_path_buf(), entries: EntryFiles::new(dir) })
    }

    fn object_path(&self, id: &str) -> PathBuf {
        let (head, tail) = id.split_at(2.min(id.len()));
        self.dir.join("objects").join(head).join(tail)
    }

    /// A fresh temporary path in `tmp/`, on the store's filesystem, so that a rename into
    /// place is atomic.
    fn temp_path(&self) -> PathBuf {
        let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        self.dir.join("tmp").join(format!("{}-{n}", std::process::id()))
    }

    /// Moves a complete temporary file into place: a reader sees all of it or none.
    ///
    /// Nothing in the store is synced. After a power cut an object or entry may be empty or
    /// torn under its name, and that is found when it is read: an object must hash to its
    /// id and a restore's outputs to the entry's output hash, and an entry must parse. A
    /// torn write is a miss, never a wrong restore. Syncing a file and its directory for
    /// every object and entry cost a 1,000-stage build of one-line files 1.8 s.
    fn publish(temp: &Path, target: &Path) -> io::Result<()> {
        match std::fs::rename(temp, target) {
            // Its directory is made the first time (an object's `ab/`), or again if someone
            // removed it; most renames find it there.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                std::fs::create_dir_all(target.parent().expect("store paths have a parent"))?;
                std::fs::rename(temp, target)
            }
            renamed => renamed,
        }
    }
}

impl Drop for FsStore {
    /// Seals the entries this store wrote into a pack.
    fn drop(&mut self) {
        self.entries.seal();
    }
}

/// The BLAKE3 hex of a file's bytes, and their count.
fn hash_file(path: &Path) -> io::Result<(String, u64)> {
    let (hash, size) = crate::fingerprint::hash_file(path)?;
    Ok((hash.to_hex().to_string(), size))
}

/// Copies `from` to the new file `to`: a reflink where the filesystem has them (no bytes
/// copied, yet an independent file), else a copy made in the kernel (`copy_file_range`,
/// which `io::copy` uses between files). Returns the id and size of the bytes in `to`,
/// hashed from `to` itself, so an id always names what was written whatever `from` did
/// meanwhile. `to` is synced when `durable`.
///
/// Copying then hashing the copy reads the bytes twice, but both from the page cache, and
/// the hash runs on every core: cheaper than one pass of `read`, hash on one thread, `write`.
fn copy_hashing(from: &Path, to: &Path, durable: bool) -> io::Result<(String, u64)> {
    let mut source = File::open(from)?;
    let mut target = File::options().write(true).create_new(true).open(to)?;
    if rustix::fs::ioctl_ficlone(&target, &source).is_err() {
        io::copy(&mut source, &mut target)?;
    }
    if durable {
        target.sync_all()?;
    }
    drop(target);
    hash_file(to)
}

impl Store for FsStore {
    fn put_file(&self, path: &Path) -> io::Result<(String, u64)> {
        let temp = self.temp_path();
        // Not synced (see `publish`): syncing the 10M-tick pipeline's 1.5 GB of outputs
        // cost seconds for no gain in what is recorded.
        let stored = copy_hashing(path, &temp, false).and_then(|(id, size)| {
            let target = self.object_path(&id);
            if target.is_file() {
                // Content-addressed: the same bytes are already there.
                std::fs::remove_file(&temp)?;
            } else {
                let mut perms = std::fs::metadata(&temp)?.permissions();
                perms.set_readonly(true);
                std::fs::set_permissions(&temp, perms)?;
                Self::publish(&temp, &target)?;
            }
            Ok((id, size))
        });
        if stored.is_err() {
            let _ = std::fs::remove_file(&temp);
        }
        stored
    }

    fn get_file(&self, id: &str, dest: &Path) -> Result<(), GetError> {
        let io_error = |source| GetError::Io { id: id.to_string(), source };
        let source = self.object_path(id);
        if !source.is_file() {
            return Err(GetError::Damaged { id: id.to_string() });
        }
        // Synced: a restored output is recorded up to date, and the stat cache trusts it.
        let (got, _) = copy_hashing(&source, dest, true).map_err(|e| {
            let _ = std::fs::remove_file(dest);
            io_error(e)
        })?;
        if got != id {
            let _ = std::fs::remove_file(dest);
            let _ = self.remove_object(id);
            return Err(GetError::Damaged { id: id.to_string() });
        }
        // `dest` is a new file (a copy or a reflink does not carry the object's read-only
        // mode); the caller gives it the permissions recorded with the entry.
        Ok(())
    }

    fn put_entry(&self, key: &str, bytes: &[u8]) -> io::Result<()> {
        self.entries.put(key, Kind::Entry, bytes)
    }

    fn get_entry(&self, key: &str) -> Option<Vec<u8>> {
        self.entries.get(key)
    }

    fn remove_entry(&self, key: &str) -> io::Result<()> {
        self.entries.forget(key)
    }

    /// One rewrite of every entry into one pack, whatever is removed: it also folds in the
    /// logs of builds that were killed and the loose entries of older versions.
    fn remove_entries(&self, keys: &HashSet<String>) -> io::Result<()> {
        self.entries.rewrite_all(keys)
    }

    fn remove_object(&self, id: &str) -> io::Result<()> {
        remove_if_present(&self.object_path(id))
    }

    fn entries(&self) -> io::Result<Vec<EntryInfo>> {
        self.entries.list()
    }

    fn objects(&self) -> io::Result<Vec<(String, u64)>> {
        let mut objects = Vec::new();
        for head in std::fs::read_dir(self.dir.join("objects"))? {
            let head = head?;
            let head_name = head.file_name().to_string_lossy().into_owned();
            if !head.file_type()?.is_dir() {
                continue;
            }
            for object in std::fs::read_dir(head.path())? {
                let object = object?;
                let tail = object.file_name().to_string_lossy().into_owned();
                objects.push((format!("{head_name}{tail}"), object.metadata()?.len()));
            }
        }
        Ok(objects)
    }

    fn size(&self) -> io::Result<u64> {
        let objects: u64 = self.objects()?.iter().map(|(_, size)| size).sum();
        Ok(objects + self.entries.size()?)
    }

    fn sweep_temporary(&self, age: std::time::Duration) -> io::Result<u64> {
        let mut freed = 0;
        for entry in std::fs::read_dir(self.dir.join("tmp"))? {
            let entry = entry?;
            let meta = entry.metadata()?;
            let old = meta.modified()?.elapsed().is_ok_and(|elapsed| elapsed > age);
            if old && std::fs::remove_file(entry.path()).is_ok() {
                freed += meta.len();
            }
        }
        Ok(freed)
    }

    fn describe(&self) -> String {
        self.dir.display().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_stored_once_by_content_and_comes_back_verified() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(&dir.path().join("cache")).unwrap();
        let file = dir.path().join("a.txt");
        std::fs::write(&file, b"hello").unwrap();
        let (id, size) = store.put_file(&file).unwrap();
        assert_eq!(id, blake3::hash(b"hello").to_hex().to_string());
        assert_eq!(size, 5);
        assert_eq!(store.put_file(&file).unwrap().0, id);
        assert_eq!(store.objects().unwrap().len(), 1);
        // The workspace file may change: the stored copy does not.
        std::fs::write(&file, b"changed").unwrap();
        let back = dir.path().join("back.txt");
        store.get_file(&id, &back).unwrap();
        assert_eq!(std::fs::read(&back).unwrap(), b"hello");
        assert!(!std::fs::metadata(&back).unwrap().permissions().readonly());
    }

    #[test]
    fn a_damaged_object_is_refused_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(&dir.path().join("cache")).unwrap();
        let file = dir.path().join("a.txt");
        std::fs::write(&file, b"hello").unwrap();
        let (id, _) = store.put_file(&file).unwrap();
        let object = store.object_path(&id);
        let mut perms = std::fs::metadata(&object).unwrap().permissions();
        #[allow(clippy::permissions_set_readonly_false)]
        perms.set_readonly(false);
        std::fs::set_permissions(&object, perms).unwrap();
        std::fs::write(&object, b"hellO").unwrap();
        let back = dir.path().join("back.txt");
        assert!(matches!(store.get_file(&id, &back), Err(GetError::Damaged { .. })));
        assert!(!back.exists(), "nothing damaged is left in the workspace");
        assert!(!object.exists(), "the damaged object is gone from the store");
    }
}
