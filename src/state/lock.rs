//! One build at a time per pipeline: an exclusive lock on `.dagrun/lock`.
//!
//! The lock is an OS file lock (`flock`), so it dies with its holder: a lock left by a
//! killed build is never stale. The file's text names the holder for error messages.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Who holds the lock, as the holder wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockHolder {
    pub pid: Option<u32>,
    pub since: Option<String>,
}

impl std::fmt::Display for LockHolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.pid, &self.since) {
            (Some(pid), Some(since)) => write!(f, "pid {pid}, since {since}"),
            (Some(pid), None) => write!(f, "pid {pid}"),
            _ => f.write_str("holder unknown"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("another build holds {} ({holder}); wait for it to finish, or run without --no-wait to queue behind it", path.display())]
    Busy { path: PathBuf, holder: LockHolder },
    #[error("stopped while waiting for another build to release {}", path.display())]
    Stopped { path: PathBuf },
    #[error("cannot lock {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("cannot lock {}: too many open files{hint}", path.display())]
    TooManyOpenFiles { path: PathBuf, hint: String },
    #[error(
        "{} is a file, but dagrun keeps its lock, state and logs in a directory of that name: move the file away and try again",
        path.display()
    )]
    NotADirectory { path: PathBuf },
}

/// Held for the whole build; released on drop (or by the OS if the process dies).
#[derive(Debug)]
pub struct BuildLock {
    _file: File,
}

/// Takes the build lock. When another process holds it, calls `on_wait` with the holder
/// and then waits until it is free (giving up with [`LockError::Stopped`] as soon as
/// `stop()` says so), or fails with [`LockError::Busy`] when `wait` is false.
pub fn acquire(
    path: &Path,
    wait: bool,
    on_wait: impl FnOnce(&LockHolder),
    stop: impl Fn() -> bool,
) -> Result<BuildLock, LockError> {
    let io_err = |source: std::io::Error| {
        let path = path.to_path_buf();
        match source.raw_os_error() {
            Some(24) => LockError::TooManyOpenFiles { path, hint: super::open_file_limit_hint() },
            _ => LockError::Io { path, source },
        }
    };
    if let Some(dir) = path.parent()
        && let Err(err) = std::fs::create_dir_all(dir)
    {
        // Whether it is a file is asked only when it cannot be made: it is there at every
        // build but the first.
        if dir.exists() && !dir.is_dir() {
            return Err(LockError::NotADirectory { path: dir.to_path_buf() });
        }
        return Err(io_err(err));
    }
    let mut file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path).map_err(io_err)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let holder = read_holder(&mut file);
            if !wait {
                return Err(LockError::Busy { path: path.to_path_buf(), holder });
            }
            on_wait(&holder);
            // Polled rather than blocking, so that a stop request (Ctrl-C, an agent's
            // SIGTERM) is honoured while waiting.
            loop {
                if stop() {
                    return Err(LockError::Stopped { path: path.to_path_buf() });
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
                match file.try_lock() {
                    Ok(()) => break,
                    Err(TryLockError::WouldBlock) => {}
                    Err(TryLockError::Error(source)) => return Err(io_err(source)),
                }
            }
        }
        Err(TryLockError::Error(source)) => return Err(io_err(source)),
    }
    // Written over the last holder's words, then cut to length: truncating to nothing first
    // makes ext4 start writing the file back when it is closed (its guard for files
    // rewritten in place), at the end of every build.
    let since = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
    let holder = format!("{} {since}", std::process::id());
    file.write_all_at(holder.as_bytes(), 0).map_err(io_err)?;
    file.set_len(holder.len() as u64).map_err(io_err)?;
    Ok(BuildLock { _file: file })
}

fn read_holder(file: &mut File) -> LockHolder {
    let mut text = String::new();
    let _ = file.read_to_string(&mut text);
    let mut words = text.split_whitespace();
    let pid = words.next().and_then(|w| w.parse().ok());
    // A holder caught between writing its words and cutting the file to their length may
    // leave the tail of a longer one after its time: such a time is not shown. It must read
    // back as written, since `parse_rfc3339` alone takes trailing bytes.
    let as_written =
        |w: &&str| humantime::parse_rfc3339(w).is_ok_and(|t| humantime::format_rfc3339_seconds(t).to_string() == *w);
    let since = words.next().filter(as_written).map(str::to_string);
    LockHolder { pid, since }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_holder_written_replaces_a_longer_one_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        std::fs::write(&path, "4294967295 1970-01-01T00:00:00Z and words a holder never writes").unwrap();
        let _lock = acquire(&path, false, |_| {}, || false).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let holder = read_holder(&mut File::open(&path).unwrap());
        assert_eq!(holder.pid, Some(std::process::id()));
        let since = holder.since.expect("a time");
        assert_eq!(text, format!("{} {since}", std::process::id()), "nothing of the old holder is left");
    }

    #[test]
    fn a_holder_caught_before_its_cut_to_length_is_named_without_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        // The new words over a longer holder's, before the cut: its time's tail follows.
        std::fs::write(&path, "123 2026-12-01T04:23:00Z0Z").unwrap();
        let holder = read_holder(&mut File::open(&path).unwrap());
        assert_eq!(holder, LockHolder { pid: Some(123), since: None });
        assert_eq!(holder.to_string(), "pid 123");
    }
}
