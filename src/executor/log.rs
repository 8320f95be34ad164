//! An attempt's log: the file its output goes to, made only once there is something to put
//! in it. Most stages of a big pipeline print nothing, and on a filesystem such as ext4
//! making a file is the costliest step of a trivial stage after starting its process: a
//! 1,000-stage build spent 0.6 s of system time making empty logs. A shell stage run locally
//! that printed nothing has no log file; its recorded log path says where one would be.
//! (A built-in's log is made before it runs; a Slurm job's is made by `sbatch`.)

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Writes to `path`, creating it (and its directory) at the first byte. Appends: dagrun may
/// already have put a note there (a run-cache entry that could not be restored).
pub struct AttemptLog {
    path: PathBuf,
    file: Option<File>,
}

impl AttemptLog {
    pub fn new(path: &Path) -> AttemptLog {
        AttemptLog { path: path.to_path_buf(), file: None }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The log as a file, made now if it is not yet (for a process that writes to it itself).
    pub fn file(&mut self) -> io::Result<&File> {
        if self.file.is_none() {
            self.file = Some(open_log(&self.path)?);
        }
        Ok(self.file.as_ref().expect("just opened"))
    }
}

impl Write for AttemptLog {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        if bytes.is_empty() {
            return Ok(0);
        }
        let mut file = self.file()?;
        file.write(bytes)
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.file {
            Some(file) => file.flush(),
            None => Ok(()),
        }
    }
}

/// Opens a log to append to, creating it and its directory.
pub fn open_log(path: &Path) -> io::Result<File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    File::options().create(true).append(true).open(path)
}

/// The last `lines` lines of a log file (at most 8 KiB of it); empty when there is none.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let Ok(mut file) = File::open(path) else { return String::new() };
    let len = file.metadata().map_or(0, |m| m.len());
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(8192)));
    let mut bytes = Vec::new();
    let _ = file.read_to_end(&mut bytes);
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_is_made_at_its_first_byte_and_appends_to_what_is_there() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logs/1/a.log");
        let mut log = AttemptLog::new(&path);
        log.write_all(b"").unwrap();
        log.flush().unwrap();
        assert!(!path.exists(), "nothing written, no file");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, "note\n").unwrap();
        log.write_all(b"out\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "note\nout\n");
        assert_eq!(log_tail(&path, 1), "out");
        assert_eq!(log_tail(&dir.path().join("none.log"), 5), "");
    }
}
