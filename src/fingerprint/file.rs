//! Hashing one file's bytes: the one place that reads a file to hash it, for inputs,
//! outputs and the run-cache alike.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

/// Bytes mapped and hashed per window: big enough for BLAKE3 to spread one window over
/// every core (`update_rayon`) and for the map calls to cost nothing, small enough that
/// hashing a file of any size adds little to the process's resident memory.
const WINDOW: usize = 64 << 20;

/// Files up to this size are read: mapping costs more than copying.
const MAP_FROM: u64 = 1 << 20;

/// Below this, threads cost more than they save.
const PARALLEL_FROM: usize = 256 << 10;

/// The BLAKE3 hash and size of the file at `path`.
///
/// A large file is hashed one mapped window at a time, each unmapped before the next: as
/// fast as `b3sum`'s whole-file map (no copy into a buffer; see BENCHMARKS.md), but a
/// mapped page counts as resident while mapped, and a whole 830 MB features table mapped
/// at once beside the stages running meanwhile was the market pipeline's peak memory.
pub fn hash_file(path: &Path) -> io::Result<(blake3::Hash, u64)> {
    let file = File::open(path)?;
    let len = file.metadata()?.len();
    hash_open_file(file, len)
}

/// `hash_file` of a file just opened (so at its start) that was `len` bytes long then.
pub(crate) fn hash_open_file(mut file: File, len: u64) -> io::Result<(blake3::Hash, u64)> {
    let mut hasher = blake3::Hasher::new();
    let mut offset = 0u64;
    if len >= MAP_FROM {
        while offset < len {
            let size = (len - offset).min(WINDOW as u64) as usize;
            hash_window(&file, offset, size, &mut hasher)?;
            offset += size as u64;
        }
    }
    // Small files, and whatever a file grew by after its size was read.
    let mut buffer = vec![0u8; (len.saturating_sub(offset) as usize).clamp(1 << 12, 1 << 20)];
    // A file just opened is at its start; one mapped in windows is not moved by the maps.
    if offset > 0 {
        std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(offset))?;
    }
    loop {
        let filled = fill(&mut file, &mut buffer)?;
        update(&mut hasher, &buffer[..filled]);
        if filled < buffer.len() {
            break;
        }
    }
    Ok((hasher.finalize(), hasher.count()))
}

/// Hashes `size` bytes of `file` from `offset` through a private read-only map. One of the
/// two `unsafe` places in dagrun (the other starts stages: `executor/spawn.rs`): mapping is
/// the only way to hash without copying every byte, and a copy cost a third of `b3sum`'s
/// throughput on two cores.
#[allow(unsafe_code)]
fn hash_window(file: &File, offset: u64, size: usize, hasher: &mut blake3::Hasher) -> io::Result<()> {
    use rustix::mm::{MapFlags, ProtFlags, mmap, munmap};
    // SAFETY: a fresh mapping chosen by the kernel (null hint), read as bytes only while
    // mapped and unmapped before returning. Like every mapped read (b3sum's too), a file
    // truncated by another process meanwhile ends this one with SIGBUS; dagrun hashes
    // outputs only after every process of the stage has ended.
    unsafe {
        let at = mmap(std::ptr::null_mut(), size, ProtFlags::READ, MapFlags::PRIVATE, file, offset)?;
        let _ = rustix::mm::madvise(at, size, rustix::mm::Advice::Sequential);
        update(hasher, std::slice::from_raw_parts(at.cast::<u8>(), size));
        munmap(at, size)?;
    }
    Ok(())
}

fn update(hasher: &mut blake3::Hasher, bytes: &[u8]) {
    if bytes.len() >= PARALLEL_FROM {
        hasher.update_rayon(bytes);
    } else {
        hasher.update(bytes);
    }
}

/// Reads until `buffer` is full or the file ends; returns how much was read.
fn fill(file: &mut File, buffer: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match file.read(&mut buffer[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_is_blake3_of_the_bytes_whatever_the_size() {
        let dir = tempfile::tempdir().unwrap();
        for size in
            [0, 1, 4095, 4097, PARALLEL_FROM, MAP_FROM as usize - 1, MAP_FROM as usize, WINDOW + 1, 2 * WINDOW + 12345]
        {
            let bytes: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
            let path = dir.path().join("f");
            std::fs::write(&path, &bytes).unwrap();
            assert_eq!(hash_file(&path).unwrap(), (blake3::hash(&bytes), size as u64), "size {size}");
        }
    }
}
