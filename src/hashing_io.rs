//! Reading and writing through BLAKE3, so that a checksum covers every byte that passed:
//! the state snapshot and the spec cache are decoded as they are read and encoded as they
//! are written, never held whole, and still believed only when their checksum matches.

use std::io::{Read, Write};

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

/// The hash of everything `reader` gives from here to its end, after what it gave already.
pub fn hash_to_end<R: Read>(reader: &mut std::io::BufReader<Hashing<R>>) -> std::io::Result<blake3::Hash> {
    std::io::copy(reader, &mut std::io::sink())?;
    Ok(reader.get_ref().hash())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_passes_is_what_is_hashed() {
        let text = b"some bytes, read in pieces".repeat(1000);
        let mut reader = std::io::BufReader::with_capacity(7, Hashing::new(&text[..]));
        let mut first = [0; 10];
        reader.read_exact(&mut first).unwrap();
        assert_eq!(hash_to_end(&mut reader).unwrap(), blake3::hash(&text));

        let mut writer = Hashing::new(Vec::new());
        writer.write_all(&text[..5]).unwrap();
        writer.write_all(&text[5..]).unwrap();
        let (written, hash) = writer.into_inner();
        assert_eq!((written.as_slice(), hash), (&text[..], blake3::hash(&text)));
    }
}
