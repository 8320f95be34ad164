//! The run-cache: every success's outputs kept by content, indexed by the stage's
//! fingerprint, so that a stage whose fingerprint was seen before is restored instead of
//! run (switching a param back, a second checkout). What is restored is checked twice:
//! each file's bytes against its object id once copied, and the restored outputs'
//! hash against the one recorded when they were stored. A damaged entry is removed and
//! the stage runs; a missing or unparseable one is a miss. Never a failed build.
//!
//! The bytes live in a [`Store`]; this module decides what to store, restore and trim.

mod entries;
mod pack;
mod store;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::fingerprint::{Fingerprint, OutputHash};
use crate::spec::RelPath;
pub use store::{EntryInfo, FsStore, GetError, Store};

/// Bumped when the manifest's meaning changes; other formats are misses.
/// 2: each file's permission bits (format 1 kept only the executable bit).
/// 3: small files' bytes in the entry (`StoredFile::inline`). A format-2 entry is still
/// read (it has none); an older dagrun takes a format-3 entry for a miss.
const FORMAT: u32 = 3;
const READABLE_FORMATS: [u32; 2] = [2, FORMAT];

/// Files up to this size are kept in their entry rather than as objects of their own: a
/// stage with small outputs then costs the store one file, not one per output plus one.
/// Making files is what storing costs most on a filesystem such as ext4 (a 1,000-stage build
/// of one-line outputs spent about 1 s of system time storing them as objects).
const INLINE_MAX: u64 = 2048;

/// What one entry holds: a stage's outputs at one fingerprint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub stage: String,
    /// The outputs' hash as the build recorded it (`fingerprint::output_hash`).
    pub output_hash: String,
    pub outputs: Vec<StoredOutput>,
    /// The metrics the run reported, recorded again by a restore.
    #[serde(default)]
    pub metrics: BTreeMap<String, f64>,
}

/// One declared output: a file, or a directory and the files under it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredOutput {
    pub path: String,
    pub directory: bool,
    pub files: Vec<StoredFile>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredFile {
    /// Relative to the output's directory; empty for an output that is a file.
    pub path: String,
    pub object: String,
    pub size: u64,
    /// Permission bits (`0o7777`), restored as they were written.
    pub mode: u32,
    /// A small file's bytes, kept here instead of in the object store; `object` is still
    /// their hash, checked when they are restored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inline: Option<Inline>,
}

/// A small file's bytes in an entry: as text when they are UTF-8 (readable by eye), else as
/// hexadecimal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Inline {
    Text(String),
    Hex(String),
}

impl Inline {
    fn of(bytes: Vec<u8>) -> Inline {
        match String::from_utf8(bytes) {
            Ok(text) => Inline::Text(text),
            Err(e) => Inline::Hex(e.as_bytes().iter().map(|b| format!("{b:02x}")).collect()),
        }
    }

    /// The bytes; `None` when the hexadecimal is damaged.
    fn bytes(&self) -> Option<Vec<u8>> {
        match self {
            Inline::Text(text) => Some(text.as_bytes().to_vec()),
            Inline::Hex(hex) => (0..hex.len())
                .step_by(2)
                .map(|i| hex.get(i..i + 2).and_then(|pair| u8::from_str_radix(pair, 16).ok()))
                .collect(),
        }
    }
}

impl Manifest {
    /// The objects the entry uses from the store, each once.
    fn objects(&self) -> HashSet<&str> {
        self.outputs
            .iter()
            .flat_map(|o| o.files.iter().filter(|f| f.inline.is_none()).map(|f| f.object.as_str()))
            .collect()
    }
}

/// The entry key of a fingerprint.
pub fn key(fingerprint: &Fingerprint) -> String {
    fingerprint.to_hex()
}

/// Stores a success's outputs under its fingerprint. Outputs holding anything but regular
/// files and directories (a symbolic link, a socket) are not stored: `Ok(false)`.
pub fn save(
    store: &dyn Store,
    root: &Path,
    stage: &str,
    fingerprint: &Fingerprint,
    outputs: &[RelPath],
    output_hash: &OutputHash,
    metrics: &BTreeMap<String, f64>,
) -> io::Result<bool> {
    let mut stored = Vec::with_capacity(outputs.len());
    for output in outputs {
        let path = output.to_path(root);
        let meta = std::fs::symlink_metadata(&path)?;
        let (directory, files) = if meta.is_file() {
            (false, vec![(String::new(), path.clone(), meta)])
        } else if meta.is_dir() {
            match files_under(&path)? {
                Some(files) => (true, files),
                None => return Ok(false),
            }
        } else {
            return Ok(false);
        };
        let mut kept = Vec::with_capacity(files.len());
        for (inner, full, meta) in files {
            let mode = std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o7777;
            let small = if meta.len() <= INLINE_MAX { read_small(&full)? } else { None };
            let file = match small {
                Some(bytes) => StoredFile {
                    path: inner,
                    object: blake3::hash(&bytes).to_hex().to_string(),
                    size: bytes.len() as u64,
                    mode,
                    inline: Some(Inline::of(bytes)),
                },
                None => {
                    let (object, size) = store.put_file(&full)?;
                    StoredFile { path: inner, object, size, mode, inline: None }
                }
            };
            kept.push(file);
        }
        stored.push(StoredOutput { path: output.to_string(), directory, files: kept });
    }
    let manifest = Manifest {
        format: FORMAT,
        stage: stage.to_string(),
        output_hash: output_hash.to_hex(),
        outputs: stored,
        metrics: metrics.clone(),
    };
    // serde_json: an entry is small and worth reading by eye when something looks wrong.
    let bytes = serde_json::to_vec_pretty(&manifest).map_err(io::Error::other)?;
    store.put_entry(&key(fingerprint), &bytes)?;
    Ok(true)
}

/// A file's bytes if it is (still) at most `INLINE_MAX` long. They are read once, and the
/// id stored is their hash, so it always names what is kept.
fn read_small(path: &Path) -> io::Result<Option<Vec<u8>>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)?.take(INLINE_MAX + 1).read_to_end(&mut bytes)?;
    Ok((bytes.len() as u64 <= INLINE_MAX).then_some(bytes))
}

/// The regular files under a directory, sorted, with their paths inside it and their
/// metadata; `None` when it holds anything else: a link could point anywhere, and an empty
/// directory leaves no file to restore it by (its outputs' hash would not see it missing).
type DirFiles = Vec<(String, std::path::PathBuf, std::fs::Metadata)>;

fn files_under(dir: &Path) -> io::Result<Option<DirFiles>> {
    let mut files = Vec::new();
    for entry in walkdir::WalkDir::new(dir).sort_by_file_name() {
        let entry = entry.map_err(io::Error::other)?;
        let kind = entry.file_type();
        if kind.is_dir() {
            if entry.depth() > 0 && std::fs::read_dir(entry.path())?.next().is_none() {
                return Ok(None);
            }
            continue;
        }
        if !kind.is_file() {
            return Ok(None);
        }
        let inner = entry.path().strip_prefix(dir).expect("under the directory");
        let Some(inner) = inner.to_str() else { return Ok(None) };
        let meta = entry.metadata().map_err(io::Error::other)?;
        files.push((inner.to_string(), entry.path().to_path_buf(), meta));
    }
    Ok(Some(files))
}

/// The manifest stored for `fingerprint`, if it is usable for a stage declaring
/// `outputs`: none, unparseable, another format or other outputs are misses.
/// Touches nothing in the workspace.
pub fn lookup(store: &dyn Store, fingerprint: &Fingerprint, outputs: &[RelPath]) -> Option<Manifest> {
    let key = key(fingerprint);
    let bytes = store.get_entry(&key)?;
    // Unparseable (another format, or a loose entry an older version is writing): a miss,
    // left in place. The next success under this fingerprint stores a newer one, and `gc`
    // drops it.
    let manifest = serde_json::from_slice::<Manifest>(&bytes).ok()?;
    let declared: Vec<String> = outputs.iter().map(ToString::to_string).collect();
    let stored: Vec<&str> = manifest.outputs.iter().map(|o| o.path.as_str()).collect();
    (READABLE_FORMATS.contains(&manifest.format) && declared == stored).then_some(manifest)
}

/// Writes a looked-up manifest's outputs, which must not exist (the caller removes them
/// first). Each file is written beside its final name and renamed into place, its bytes
/// checked against its object id. On a damaged or missing object the entry is removed
/// and the outputs written so far are left for the caller to delete.
pub fn restore(store: &dyn Store, root: &Path, fingerprint: &Fingerprint, manifest: &Manifest) -> Result<(), String> {
    for output in &manifest.outputs {
        let base = root.join(&output.path);
        if output.directory {
            std::fs::create_dir_all(&base).map_err(|e| format!("cannot create `{}`: {e}", output.path))?;
        }
        for file in &output.files {
            let dest = if file.path.is_empty() { base.clone() } else { base.join(&file.path) };
            if let Err(problem) = restore_file(store, file, &dest) {
                if matches!(problem, GetError::Damaged { .. }) {
                    forget(store, fingerprint);
                }
                return Err(problem.to_string());
            }
        }
    }
    Ok(())
}

static RESTORE_COUNTER: AtomicU64 = AtomicU64::new(0);

fn restore_file(store: &dyn Store, file: &StoredFile, dest: &Path) -> Result<(), GetError> {
    let io_error = |source| GetError::Io { id: file.object.clone(), source };
    let dir = dest.parent().expect("an output has a parent");
    std::fs::create_dir_all(dir).map_err(io_error)?;
    let name = dest.file_name().and_then(|n| n.to_str()).unwrap_or("output");
    // Named as built-ins name their temporary files: the watcher knows them as dagrun's own.
    let n = RESTORE_COUNTER.fetch_add(1, Ordering::Relaxed);
    let temp = dir.join(format!(".{name}.tmp-{}-{n}", std::process::id()));
    match &file.inline {
        Some(inline) => write_inline(inline, &file.object, &temp)?,
        None => store.get_file(&file.object, &temp)?,
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(file.mode)).map_err(io_error)?;
    std::fs::rename(&temp, dest).map_err(|e| {
        let _ = std::fs::remove_file(&temp);
        io_error(e)
    })
}

/// Writes a small file kept in its entry to `dest`, a new file, as `Store::get_file` writes
/// an object: its bytes checked against their id, and synced.
fn write_inline(inline: &Inline, id: &str, dest: &Path) -> Result<(), GetError> {
    let damaged = || GetError::Damaged { id: id.to_string() };
    let bytes = inline.bytes().ok_or_else(damaged)?;
    if blake3::hash(&bytes).to_hex().as_str() != id {
        return Err(damaged());
    }
    let written = (|| {
        use std::io::Write;
        let mut file = std::fs::File::options().write(true).create_new(true).open(dest)?;
        file.write_all(&bytes)?;
        file.sync_all()
    })();
    written.map_err(|source| {
        let _ = std::fs::remove_file(dest);
        GetError::Io { id: id.to_string(), source }
    })
}

/// Forgets an entry whose restored outputs did not hash as recorded.
pub fn forget(store: &dyn Store, fingerprint: &Fingerprint) {
    let _ = store.remove_entry(&key(fingerprint));
}

/// What `gc` keeps.
#[derive(Debug, Clone, Default)]
pub struct GcPolicy {
    /// Entries some stage's current record references: always kept.
    pub referenced: HashSet<String>,
    /// Also keep the newest N other entries of each stage (default: none, or all with
    /// `max_size`).
    pub keep_last: Option<usize>,
    /// Then drop the oldest other entries until the store is at most this size.
    pub max_size: Option<u64>,
    /// Say what would go; remove nothing.
    pub dry_run: bool,
}

/// What `gc` did (or, dry, would do).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct GcReport {
    pub entries_kept: usize,
    pub entries_removed: usize,
    pub objects_removed: usize,
    pub bytes_freed: u64,
    pub bytes_kept: u64,
}

/// How long an entry that does not parse is left by `gc`: it may be a loose one an older
/// version is writing.
const UNREADABLE_GRACE: std::time::Duration = std::time::Duration::from_secs(60);

/// Trims the store: entries the policy does not keep, then every object no kept entry uses.
pub fn gc(store: &dyn Store, policy: &GcPolicy) -> io::Result<GcReport> {
    let mut entries: Vec<(EntryInfo, Option<Manifest>)> = store
        .entries()?
        .into_iter()
        .map(|info| {
            let manifest = store.get_entry(&info.key).and_then(|b| serde_json::from_slice::<Manifest>(&b).ok());
            (info, manifest)
        })
        .collect();
    // Newest first, so that "the newest N of a stage" is a prefix.
    entries.sort_by_key(|(info, _)| std::cmp::Reverse(info.modified));
    let keep_last = policy.keep_last.unwrap_or(if policy.max_size.is_some() { usize::MAX } else { 0 });
    let mut kept_of_stage: HashMap<String, usize> = HashMap::new();
    let mut keep: Vec<bool> = Vec::with_capacity(entries.len());
    for (info, manifest) in &entries {
        let Some(manifest) = manifest else {
            // Unreadable: useless to any build, unless it is a loose entry an older version
            // is writing right now.
            keep.push(!info.modified.elapsed().is_ok_and(|age| age >= UNREADABLE_GRACE));
            continue;
        };
        if info.live || policy.referenced.contains(&info.key) {
            keep.push(true);
            continue;
        }
        let count = kept_of_stage.entry(manifest.stage.clone()).or_default();
        keep.push(*count < keep_last);
        *count += 1;
    }
    // Objects by how many kept entries use them.
    let mut uses: HashMap<&str, usize> = HashMap::new();
    for ((_, manifest), kept) in entries.iter().zip(&keep) {
        if let (Some(manifest), true) = (manifest, kept) {
            for object in manifest.objects() {
                *uses.entry(object).or_default() += 1;
            }
        }
    }
    let sizes: HashMap<String, u64> = store.objects()?.into_iter().collect();
    // Entries count too: they hold small files' bytes themselves.
    let kept_entries: u64 = entries.iter().zip(&keep).filter(|(_, kept)| **kept).map(|((info, _), _)| info.size).sum();
    let mut kept_size: u64 = kept_entries + uses.keys().filter_map(|o| sizes.get(*o)).sum::<u64>();
    if let Some(max) = policy.max_size {
        // Oldest unreferenced entries go first.
        for i in (0..entries.len()).rev() {
            if kept_size <= max {
                break;
            }
            let (info, Some(manifest)) = &entries[i] else { continue };
            if !keep[i] || info.live || policy.referenced.contains(&info.key) {
                continue;
            }
            keep[i] = false;
            kept_size -= info.size;
            for object in manifest.objects() {
                let count = uses.get_mut(object).expect("counted above");
                *count -= 1;
                if *count == 0 {
                    kept_size -= sizes.get(object).copied().unwrap_or(0);
                }
            }
        }
    }
    let mut report = GcReport { bytes_kept: kept_size, ..GcReport::default() };
    if !policy.dry_run {
        // An hour: far longer than any write in progress takes.
        report.bytes_freed += store.sweep_temporary(std::time::Duration::from_secs(3600))?;
    }
    let mut removed = HashSet::new();
    for ((info, _), kept) in entries.iter().zip(&keep) {
        if *kept {
            report.entries_kept += 1;
        } else {
            report.entries_removed += 1;
            report.bytes_freed += info.size;
            removed.insert(info.key.clone());
        }
    }
    if !policy.dry_run {
        store.remove_entries(&removed)?;
    }
    for (object, size) in &sizes {
        if uses.get(object.as_str()).copied().unwrap_or(0) == 0 {
            report.objects_removed += 1;
            report.bytes_freed += size;
            if !policy.dry_run {
                store.remove_object(object)?;
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_file_is_kept_as_text_or_hex_and_written_back_only_if_it_hashes_to_its_id() {
        let dir = tempfile::tempdir().unwrap();
        for bytes in [b"lr=0.1\n".to_vec(), vec![0, 0x9f, 0xff, b'\n']] {
            let inline = Inline::of(bytes.clone());
            assert_eq!(matches!(inline, Inline::Text(_)), bytes.is_ascii(), "{inline:?}");
            let id = blake3::hash(&bytes).to_hex().to_string();
            let dest = dir.path().join(format!("{}.out", bytes.len()));
            write_inline(&inline, &id, &dest).unwrap();
            assert_eq!(std::fs::read(&dest).unwrap(), bytes);
        }
        let other = blake3::hash(b"other").to_hex().to_string();
        let dest = dir.path().join("damaged.out");
        let damaged = write_inline(&Inline::Text("lr=0.9\n".into()), &other, &dest);
        assert!(matches!(damaged, Err(GetError::Damaged { .. })));
        assert!(matches!(write_inline(&Inline::Hex("0g".into()), &other, &dest), Err(GetError::Damaged { .. })));
        assert!(!dest.exists(), "nothing damaged is written");
    }

    #[test]
    fn gc_counts_small_files_kept_in_entries_against_max_size() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(&dir.path().join("cache")).unwrap();
        let outputs = [RelPath::parse_normalized("out.txt").unwrap()];
        for n in 0..3u8 {
            std::fs::write(dir.path().join("out.txt"), vec![b'a' + n; 1500]).unwrap();
            let fingerprint = Fingerprint(blake3::hash(&[n]));
            let hash = OutputHash(blake3::hash(&[n, n]));
            assert!(save(&store, dir.path(), "s", &fingerprint, &outputs, &hash, &BTreeMap::new()).unwrap());
        }
        assert!(store.objects().unwrap().is_empty(), "every output was small enough to keep inline");
        let entry_size = store.entries().unwrap()[0].size;
        assert!(entry_size > 1500, "{entry_size}");
        let policy = GcPolicy { max_size: Some(entry_size * 2), ..GcPolicy::default() };
        let report = gc(&store, &policy).unwrap();
        assert_eq!((report.entries_removed, report.entries_kept), (1, 2), "{report:?}");
        assert!(report.bytes_freed >= entry_size && report.bytes_kept <= entry_size * 2, "{report:?}");
        assert_eq!(store.entries().unwrap().len(), 2);
    }
}
