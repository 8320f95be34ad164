//! Reading and writing through BLAKE3, so that a checksum covers every byte that passed:
//! the state snapshot and the spec cache are encoded as they are written and, when large,
//! decoded as they are read, never held whole; either way believed only when their checksum
//! matches.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A reader that hashes every byte it gives, or a writer every byte it takes.
pub struct Hashing<T> {
    inner: T,
    hasher: blake3::Hasher,
}

impl<T> Hashing<T> {
    pub fn new(inner: T) -> Hashing<T> {
        Hashing { inner, hasher: blake3::Hasher::new() }
    }

    /// The hash of what passed so far.
    pub fn hash(&self) -> blake3::Hash {
        self.hasher.finalize()
    }

    pub fn into_inner(self) -> (T, blake3::Hash) {
        let hash = self.hash();
        (self.inner, hash)
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Writes `prefix`, the BLAKE3 of `value`'s postcard encoding (32 bytes), then that encoding,
/// to a temporary file beside `path`, and renames the file over `path`: a reader sees all of
/// it or none, and a copy torn by a power cut (nothing is synced) fails its checksum, which
/// is written last. Encoded as it is written: at 100,000 stages the snapshot is 25 MB and
/// the spec cache entry 13 MB. `read_checked` reads it back.
pub fn write_checked<T: Serialize>(path: &Path, prefix: &[u8], value: &T) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
    let temp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let written = write_to(&temp, prefix, value).and_then(|()| std::fs::rename(&temp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    written
}

fn write_to<T: Serialize>(temp: &Path, prefix: &[u8], value: &T) -> std::io::Result<()> {
    let mut file = File::create(temp)?;
    file.write_all(prefix)?;
    file.write_all(&[0; 32])?; // the checksum, once the encoding is written
    let encoded = BufWriter::with_capacity(64 * 1024, Hashing::new(file));
    // postcard: compact and fast, for files only dagrun reads (bincode is unmaintained).
    let encoded = postcard::to_io(value, encoded).map_err(std::io::Error::other)?;
    let (file, checksum) = encoded.into_inner().map_err(std::io::IntoInnerError::into_error)?.into_inner();
    file.write_all_at(checksum.as_bytes(), prefix.len() as u64)
}

/// The value `write_checked` wrote at `path` after `prefix`, if the file starts with exactly
/// that prefix (anything else is not decoded at all) and is whole.
pub fn read_checked<T: DeserializeOwned>(path: &Path, prefix: &[u8]) -> Option<T> {
    let mut file = File::open(path).ok()?;
    let mut header = vec![0; prefix.len() + 32];
    file.read_exact(&mut header).ok()?;
    let (stored, checksum) = header.split_at(prefix.len());
    if stored != prefix {
        return None;
    }
    let checksum: &[u8; 32] = checksum.try_into().ok()?;
    let rest = file.metadata().ok()?.len().checked_sub(header.len() as u64)?;
    match rest {
        rest if rest <= read_whole_up_to() => decode_whole(file, rest, checksum),
        _ => decode_checked(file, checksum),
    }
}

fn read_whole_up_to() -> u64 {
    #[cfg(test)]
    if tests::STREAM_ALL.get() {
        return 0;
    }
    READ_WHOLE_UP_TO
}

/// Runs `f` with every `read_checked` decoding as it reads: the real snapshot and spec
/// cache are small in the tests, and would otherwise never go that way.
#[cfg(test)]
pub(crate) fn streaming<T>(f: impl FnOnce() -> T) -> T {
    tests::STREAM_ALL.set(true);
    let result = f();
    tests::STREAM_ALL.set(false);
    result
}

/// Files up to this size are read whole, checked, then decoded from memory, which postcard
/// does faster than through any reader; larger ones (the snapshot of 100,000 stages is
/// 25 MB) are decoded as they are read, never held whole.
const READ_WHOLE_UP_TO: u64 = 4 << 20;

/// The postcard value that the rest of `file` (`len` bytes when it was opened) holds, if
/// every byte of that rest hashes to `checksum` and the value is all of it. A file grown
/// since is read no further than a byte past `len`, and not believed.
fn decode_whole<T: DeserializeOwned>(file: File, len: u64, checksum: &[u8; 32]) -> Option<T> {
    let mut rest = Vec::with_capacity(usize::try_from(len).ok()?);
    file.take(len + 1).read_to_end(&mut rest).ok()?;
    if rest.len() as u64 != len || blake3::hash(&rest).as_bytes() != checksum {
        return None;
    }
    let (value, unread) = postcard::take_from_bytes(&rest).ok()?;
    unread.is_empty().then_some(value)
}

/// The postcard value that the rest of `reader` holds, if every byte of that rest hashes to
/// `checksum` (bytes past the value included: nothing may be added).
///
/// Decoded as it is read, through a buffer of its own: postcard's own `from_io` reads a byte
/// at a time through `read_exact`, which made the 10,000-stage no-op 12 ms slower than
/// decoding a slice. A string that runs past the buffer is gathered, so no string is too
/// long; a damaged length ends the decode where the reader ends.
fn decode_checked<T: DeserializeOwned, R: Read>(reader: R, checksum: &[u8; 32]) -> Option<T> {
    let stream = Stream { reader: Hashing::new(reader), buf: vec![0; 64 * 1024], pos: 0, end: 0, long: Vec::new() };
    let mut deserializer = postcard::Deserializer::from_flavor(stream);
    let value = T::deserialize(&mut deserializer).ok()?;
    let mut stream = deserializer.finalize().ok()?;
    std::io::copy(&mut stream.reader, &mut std::io::sink()).ok()?;
    (stream.reader.hash().as_bytes() == checksum).then_some(value)
}

/// postcard's source of bytes for `decode_checked`.
struct Stream<R> {
    reader: Hashing<R>,
    buf: Vec<u8>,
    /// What of `buf` is read and not yet decoded.
    pos: usize,
    end: usize,
    /// A string that runs past the end of `buf`, gathered.
    long: Vec<u8>,
}

impl<R: Read> Stream<R> {
    /// Reads more into `buf`, once what it held is all decoded; false at the end.
    fn refill(&mut self) -> bool {
        debug_assert_eq!(self.pos, self.end);
        loop {
            match self.reader.read(&mut self.buf) {
                Ok(n) => {
                    (self.pos, self.end) = (0, n);
                    return n > 0;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
    }
}

impl<'de, R: Read + 'de> postcard::de_flavors::Flavor<'de> for Stream<R> {
    type Remainder = Self;
    type Source = ();

    fn pop(&mut self) -> postcard::Result<u8> {
        if self.pos == self.end && !self.refill() {
            return Err(postcard::Error::DeserializeUnexpectedEnd);
        }
        self.pos += 1;
        Ok(self.buf[self.pos - 1])
    }

    /// Borrowed bytes cannot outlive the buffer: nothing decoded here borrows.
    fn try_take_n(&mut self, _count: usize) -> postcard::Result<&'de [u8]> {
        Err(postcard::Error::DeserializeUnexpectedEnd)
    }

    fn try_take_n_temp<'a>(&'a mut self, count: usize) -> postcard::Result<&'a [u8]>
    where
        'de: 'a,
    {
        if self.end - self.pos >= count {
            self.pos += count;
            return Ok(&self.buf[self.pos - count..self.pos]);
        }
        self.long.clear();
        while self.long.len() < count {
            if self.pos == self.end && !self.refill() {
                return Err(postcard::Error::DeserializeUnexpectedEnd);
            }
            let take = (count - self.long.len()).min(self.end - self.pos);
            self.long.extend_from_slice(&self.buf[self.pos..self.pos + take]);
            self.pos += take;
        }
        Ok(&self.long)
    }

    fn finalize(self) -> postcard::Result<Self> {
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    thread_local! {
        pub(super) static STREAM_ALL: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }

    #[test]
    fn what_is_written_through_it_is_what_is_hashed() {
        let text = b"some bytes, written in pieces".repeat(1000);
        let mut writer = Hashing::new(Vec::new());
        writer.write_all(&text[..5]).unwrap();
        writer.write_all(&text[5..]).unwrap();
        let (written, hash) = writer.into_inner();
        assert_eq!((written.as_slice(), hash), (&text[..], blake3::hash(&text)));
    }

    /// Strings within a buffer, across buffers and longer than one; a checksum over all of
    /// it, trailing bytes included.
    #[test]
    fn a_value_is_decoded_as_read_and_believed_only_whole() {
        let value: Vec<(String, u64, [u8; 32])> =
            (0..5000u64).map(|i| ("x".repeat(i as usize % 97 + (i as usize % 1000) * 90), i, [i as u8; 32])).collect();
        let bytes = postcard::to_stdvec(&value).unwrap();
        assert!(bytes.len() > 3 * 64 * 1024 && value.iter().any(|(s, ..)| s.len() > 64 * 1024));
        let checksum = *blake3::hash(&bytes).as_bytes();
        type Value = Vec<(String, u64, [u8; 32])>;
        assert_eq!(decode_checked::<Value, _>(&bytes[..], &checksum).as_ref(), Some(&value));
        assert_eq!(
            decode_checked::<Value, _>(Trickle(&bytes[..], 0), &checksum).as_ref(),
            Some(&value),
            "a byte a read"
        );
        let grown = [&bytes[..], b"\0"].concat();
        assert!(decode_checked::<Value, _>(&grown[..], &checksum).is_none());
        let mut damaged = bytes.clone();
        damaged[bytes.len() / 2] ^= 1;
        assert!(decode_checked::<Value, _>(&damaged[..], &checksum).is_none());
        assert!(decode_checked::<Value, _>(&bytes[..bytes.len() - 1], &checksum).is_none(), "cut short");
    }

    /// A string that ends exactly at the end of the first buffer, and one of exactly the
    /// buffer's size that starts the second.
    #[test]
    fn strings_at_the_buffers_edges_are_whole() {
        const BUF: usize = 64 * 1024;
        // (bytes of a `Vec<u8>` before the string, the string's length, where the string's
        // bytes start and end): a length under 128 takes postcard 1 byte, from 16,384 3.
        for (before, len, start) in [(99, BUF - 103, 103), (BUF - 6, BUF, BUF)] {
            let value = (vec![7u8; before], "y".repeat(len));
            let bytes = postcard::to_stdvec(&value).unwrap();
            assert_eq!(bytes.len(), start + len, "the string starts at {start}");
            let checksum = *blake3::hash(&bytes).as_bytes();
            assert_eq!(decode_checked::<(Vec<u8>, String), _>(&bytes[..], &checksum), Some(value));
        }
    }

    /// Through a file, small (read whole) and large (decoded as read) alike: believed only
    /// under its own prefix, whole, unchanged and with nothing added.
    #[test]
    fn a_file_is_believed_only_under_its_prefix_whole_and_unchanged_at_either_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("value");
        for len in [1_000, READ_WHOLE_UP_TO as usize + 1] {
            let value = (7u64, "z".repeat(len));
            write_checked(&path, b"prefix 1\n", &value).unwrap();
            assert_eq!(read_checked::<(u64, String)>(&path, b"prefix 1\n"), Some(value.clone()), "{len}");
            assert_eq!(read_checked::<(u64, String)>(&path, b"prefix 2\n"), None, "another prefix");
            let bytes = std::fs::read(&path).unwrap();
            let mut damaged = bytes.clone();
            *damaged.last_mut().unwrap() ^= 1;
            std::fs::write(&path, &damaged).unwrap();
            assert_eq!(read_checked::<(u64, String)>(&path, b"prefix 1\n"), None, "damaged, {len}");
            std::fs::write(&path, [&bytes[..], b"\0"].concat()).unwrap();
            assert_eq!(read_checked::<(u64, String)>(&path, b"prefix 1\n"), None, "grown, {len}");
            std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
            assert_eq!(read_checked::<(u64, String)>(&path, b"prefix 1\n"), None, "cut short, {len}");
        }
    }

    /// Gives one byte a read, and is interrupted before every other one.
    struct Trickle<'a>(&'a [u8], usize);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.1 += 1;
            if self.1.is_multiple_of(2) {
                return Err(std::io::ErrorKind::Interrupted.into());
            }
            let Some((&first, rest)) = self.0.split_first() else { return Ok(0) };
            buf[0] = first;
            self.0 = rest;
            Ok(1)
        }
    }
}
