//! The bytes of run-cache entries kept many to a file: a record per entry (or per
//! tombstone), appended one after another to a build's log, and the index a sealed pack ends
//! with. A torn, zeroed or edited record fails its checksum and reads as missing; a damaged
//! trailer costs a scan of the records, a damaged slot misses (of the keys whose search
//! reads it). Nothing here opens or names files.
//!
//! A record, readable with `less`:
//! `DR1 <payload length, 8 hex> <sum, 32 hex> <E|T> <written, ns, 16 hex> <key>\n<payload>\n`
//! (lowercase hexadecimal; the time is nanoseconds since 1970, and decides which of a key's
//! records is the newest).
//! The sum is BLAKE3 (its first 16 bytes) over everything after it: kind, time, key and
//! payload, so a record's bytes are bound to its key.
//!
//! A pack: its records, then one 32-byte slot a record (`slot`) sorted by key hash and
//! offset, a fanout of 256 cumulative counts by the key hash's first byte, and a 40-byte
//! trailer (`DRPK`, version, where the slots start, how many, a sum over these and the
//! fanout).

use std::fs::File;
use std::os::unix::fs::FileExt;

const RECORD_MAGIC: &[u8] = b"DR1 ";
/// `DR1 `, the payload's length, a space, the sum, a space.
const PREFIX_LEN: usize = 4 + 8 + 1 + 32 + 1;
/// Keys are run-cache keys (a fingerprint's 64 hex digits); anything this long is damage.
const MAX_KEY_LEN: usize = 256;
/// The largest payload a record holds: its whole length must fit a slot's `u32`.
pub(super) const MAX_PAYLOAD: usize = u32::MAX as usize - 4096;
/// The kind, its space, the time, its space, the key and the newline.
const MAX_TAIL_LEN: usize = 1 + 1 + 16 + 1 + MAX_KEY_LEN + 1;

const PACK_MAGIC: &[u8; 4] = b"DRPK";
const PACK_VERSION: u32 = 1;
const SLOT_LEN: u64 = 32;
const FANOUT_LEN: usize = 256 * 4;
const TRAILER_LEN: usize = 4 + 4 + 8 + 8 + 16;
/// A pack's slots up to this size are read into memory when it is opened (a lookup then
/// costs no read but its record's); a bigger one is searched in its file.
const SLOTS_IN_MEMORY: u64 = 8 << 20;

/// What a record says about its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// The key's entry: the payload is the manifest.
    Entry,
    /// The key is forgotten: it hides every older record of the key.
    Tombstone,
}

impl Kind {
    fn letter(self) -> u8 {
        match self {
            Kind::Entry => b'E',
            Kind::Tombstone => b'T',
        }
    }

    fn of_letter(letter: u8) -> Option<Kind> {
        match letter {
            b'E' => Some(Kind::Entry),
            b'T' => Some(Kind::Tombstone),
            _ => None,
        }
    }
}

/// What an index sorts and searches by: the first 16 bytes of the key's BLAKE3.
pub(super) type KeyHash = [u8; 16];

pub(super) fn key_hash(key: &str) -> KeyHash {
    truncated(blake3::hash(key.as_bytes()))
}

fn truncated(hash: blake3::Hash) -> [u8; 16] {
    hash.as_bytes()[..16].try_into().expect("a BLAKE3 hash has 32 bytes")
}

/// Whether a key can be written in a record's header: printable ASCII, no space.
pub(super) fn valid_key(key: &str) -> bool {
    !key.is_empty() && key.len() <= MAX_KEY_LEN && key.bytes().all(|b| b.is_ascii_graphic())
}

fn checksum(tail: &[u8], payload: &[u8]) -> [u8; 16] {
    let mut hasher = blake3::Hasher::new();
    hasher.update(tail);
    hasher.update(payload);
    truncated(hasher.finalize())
}

/// A record's bytes. The caller checks the key with [`valid_key`] and the payload against
/// [`MAX_PAYLOAD`].
pub(super) fn encode(kind: Kind, written_ns: u64, key: &str, payload: &[u8]) -> Vec<u8> {
    debug_assert!(valid_key(key) && payload.len() <= MAX_PAYLOAD);
    let mut tail = Vec::with_capacity(MAX_TAIL_LEN);
    tail.push(kind.letter());
    tail.extend_from_slice(format!(" {written_ns:016x} {key}\n").as_bytes());
    let sum = checksum(&tail, payload);
    let mut record = Vec::with_capacity(PREFIX_LEN + tail.len() + payload.len() + 1);
    record.extend_from_slice(RECORD_MAGIC);
    record.extend_from_slice(format!("{:08x} ", payload.len()).as_bytes());
    record.extend_from_slice(hex(&sum).as_bytes());
    record.push(b' ');
    record.extend_from_slice(&tail);
    record.extend_from_slice(payload);
    record.push(b'\n');
    record
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_hex(digits: &[u8]) -> Option<u64> {
    let digits = std::str::from_utf8(digits).ok()?;
    if digits.is_empty() || !digits.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    u64::from_str_radix(digits, 16).ok()
}

/// One record, read back and checked.
#[derive(Debug, Clone, Copy)]
pub(super) struct Record<'a> {
    pub kind: Kind,
    pub written_ns: u64,
    pub key: &'a str,
    pub payload: &'a [u8],
    /// The record's whole length, header and final newline included.
    pub len: usize,
}

/// The record `bytes` start with, if it is whole and its sum matches.
pub(super) fn parse(bytes: &[u8]) -> Option<Record<'_>> {
    let prefix = bytes.get(..PREFIX_LEN)?;
    if !prefix.starts_with(RECORD_MAGIC) || prefix[12] != b' ' || prefix[45] != b' ' {
        return None;
    }
    let payload_len = usize::try_from(parse_hex(&prefix[4..12])?).ok().filter(|&len| len <= MAX_PAYLOAD)?;
    let rest = &bytes[PREFIX_LEN..];
    let tail_len = rest.iter().take(MAX_TAIL_LEN).position(|&b| b == b'\n')? + 1;
    let tail = &rest[..tail_len];
    let kind = Kind::of_letter(tail[0])?;
    if tail.get(1) != Some(&b' ') || tail.get(18) != Some(&b' ') {
        return None;
    }
    let written_ns = parse_hex(tail.get(2..18)?)?;
    let key = std::str::from_utf8(tail.get(19..tail_len - 1)?).ok()?;
    let start = PREFIX_LEN + tail_len;
    let payload = bytes.get(start..start.checked_add(payload_len)?)?;
    if bytes.get(start + payload_len) != Some(&b'\n') || !valid_key(key) {
        return None;
    }
    if hex(&checksum(tail, payload)).as_bytes() != &prefix[13..45] {
        return None;
    }
    Some(Record { kind, written_ns, key, payload, len: start + payload_len + 1 })
}

/// Every whole record in `bytes` with its offset, in order. Damage (a torn write, zeroes,
/// edited bytes) is skipped up to the next record's magic.
pub(super) fn scan(bytes: &[u8]) -> Vec<(u64, Record<'_>)> {
    let mut found = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        if let Some(record) = parse(&bytes[at..]) {
            found.push((at as u64, record));
            at += record.len;
            continue;
        }
        // The next magic: the same bytes inside a payload fail their record's sum.
        match bytes[at + 1..].windows(RECORD_MAGIC.len()).position(|w| w == RECORD_MAGIC) {
            Some(i) => at += 1 + i,
            None => break,
        }
    }
    found
}

/// A record read back for its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Stored {
    pub kind: Kind,
    pub written_ns: u64,
    pub payload: Vec<u8>,
}

/// Where a record is, in a log or a pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Slot {
    pub hash: KeyHash,
    pub offset: u64,
    pub len: u32,
    pub kind: Kind,
}

impl Slot {
    pub(super) fn of(offset: u64, record: &Record<'_>) -> Slot {
        let len = u32::try_from(record.len).expect("a record's payload is at most MAX_PAYLOAD");
        Slot { hash: key_hash(record.key), offset, len, kind: record.kind }
    }

    /// The record this slot names in `file`, read and checked: `None` when the bytes there
    /// are damaged or belong to another key.
    pub(super) fn read(&self, file: &File, key: &str) -> Option<Stored> {
        let mut bytes = vec![0; self.len as usize];
        file.read_exact_at(&mut bytes, self.offset).ok()?;
        self.check(&bytes, key)
    }

    /// The record this slot names in `bytes` (a whole log), checked as `read` does.
    pub(super) fn read_in(&self, bytes: &[u8], key: &str) -> Option<Stored> {
        let start = usize::try_from(self.offset).ok()?;
        self.check(bytes.get(start..start.checked_add(self.len as usize)?)?, key)
    }

    fn check(&self, bytes: &[u8], key: &str) -> Option<Stored> {
        let record = parse(bytes)?;
        let expected = record.key == key && record.kind == self.kind && record.len == bytes.len();
        expected.then(|| Stored { kind: record.kind, written_ns: record.written_ns, payload: record.payload.to_vec() })
    }

    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.hash);
        out.extend_from_slice(&self.offset.to_le_bytes());
        out.extend_from_slice(&self.len.to_le_bytes());
        out.extend_from_slice(&[self.kind.letter(), 0, 0, 0]);
    }

    fn decode(bytes: &[u8]) -> Option<Slot> {
        let kind = Kind::of_letter(bytes[28])?;
        Some(Slot {
            hash: bytes[..16].try_into().ok()?,
            offset: u64::from_le_bytes(bytes[16..24].try_into().ok()?),
            len: u32::from_le_bytes(bytes[24..28].try_into().ok()?),
            kind,
        })
    }
}

/// The index and trailer that seal a log whose records end at `records_end`: the slots
/// sorted by key hash, then offset.
pub(super) fn index_bytes(slots: &mut [Slot], records_end: u64) -> Vec<u8> {
    slots.sort_unstable_by_key(|slot| (slot.hash, slot.offset));
    let mut out = Vec::with_capacity(slots.len() * SLOT_LEN as usize + FANOUT_LEN + TRAILER_LEN);
    let mut counts = [0u32; 256];
    for slot in slots.iter() {
        slot.encode(&mut out);
        counts[slot.hash[0] as usize] += 1;
    }
    let mut fanout = Vec::with_capacity(FANOUT_LEN);
    let mut total = 0u32;
    for count in counts {
        total += count;
        fanout.extend_from_slice(&total.to_le_bytes());
    }
    let count = slots.len() as u64;
    out.extend_from_slice(&fanout);
    out.extend_from_slice(PACK_MAGIC);
    out.extend_from_slice(&PACK_VERSION.to_le_bytes());
    out.extend_from_slice(&records_end.to_le_bytes());
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&trailer_sum(&fanout, records_end, count));
    out
}

fn trailer_sum(fanout: &[u8], records_end: u64, count: u64) -> [u8; 16] {
    let mut hasher = blake3::Hasher::new();
    hasher.update(fanout);
    hasher.update(&records_end.to_le_bytes());
    hasher.update(&count.to_le_bytes());
    truncated(hasher.finalize())
}

/// A sealed pack's index: its fanout in memory, its slots too when they are small, else read
/// from the file as searched.
#[derive(Debug)]
pub(super) struct PackIndex {
    records_end: u64,
    fanout: Box<[u32; 256]>,
    slots: Option<Vec<u8>>,
}

impl PackIndex {
    /// The index at the end of a `len`-byte pack; `None` when the trailer or fanout is
    /// damaged (the pack is then read by scanning its records).
    pub(super) fn read(file: &File, len: u64) -> Option<PackIndex> {
        Self::read_keeping(file, len, SLOTS_IN_MEMORY)
    }

    /// As `read`, keeping the slots in memory if they take at most `in_memory` bytes.
    fn read_keeping(file: &File, len: u64, in_memory: u64) -> Option<PackIndex> {
        let mut end = vec![0; FANOUT_LEN + TRAILER_LEN];
        let start = len.checked_sub(end.len() as u64)?;
        file.read_exact_at(&mut end, start).ok()?;
        let (fanout_bytes, trailer) = end.split_at(FANOUT_LEN);
        let word = |at: usize| u64::from_le_bytes(trailer[at..at + 8].try_into().expect("8 bytes"));
        let (records_end, count) = (word(8), word(16));
        let version = u32::from_le_bytes(trailer[4..8].try_into().expect("4 bytes"));
        if &trailer[..4] != PACK_MAGIC || version != PACK_VERSION {
            return None;
        }
        if trailer[24..] != trailer_sum(fanout_bytes, records_end, count) {
            return None;
        }
        let expected_len = count.checked_mul(SLOT_LEN)?.checked_add(records_end)?;
        if expected_len.checked_add(end.len() as u64)? != len {
            return None;
        }
        let mut fanout = Box::new([0u32; 256]);
        for (i, word) in fanout_bytes.chunks_exact(4).enumerate() {
            fanout[i] = u32::from_le_bytes(word.try_into().expect("4 bytes"));
        }
        let ordered = fanout.windows(2).all(|w| w[0] <= w[1]) && u64::from(fanout[255]) == count;
        if !ordered {
            return None;
        }
        let slots_len = count * SLOT_LEN;
        let slots = (slots_len <= in_memory).then(|| {
            let mut slots = vec![0; slots_len as usize];
            file.read_exact_at(&mut slots, records_end).map(|()| slots)
        });
        let slots = slots.transpose().ok()?;
        Some(PackIndex { records_end, fanout, slots })
    }

    /// Where the records end (and the index starts).
    pub(super) fn records_end(&self) -> u64 {
        self.records_end
    }

    /// The slots of `hash`, newest (last written) first: a binary search of the fanout's
    /// bucket (in memory, or one 32-byte read a probe). A slot pointing past the records is
    /// damage, left out.
    pub(super) fn find(&self, file: &File, hash: &KeyHash) -> Vec<Slot> {
        let bucket = hash[0] as usize;
        let mut low = if bucket == 0 { 0 } else { u64::from(self.fanout[bucket - 1]) };
        let mut high = u64::from(self.fanout[bucket]);
        let slot_at = |i: u64| -> Option<Slot> {
            let at = i * SLOT_LEN;
            if let Some(slots) = &self.slots {
                return Slot::decode(&slots[at as usize..(at + SLOT_LEN) as usize]);
            }
            let mut bytes = [0u8; SLOT_LEN as usize];
            file.read_exact_at(&mut bytes, self.records_end + at).ok()?;
            Slot::decode(&bytes)
        };
        // The first slot whose hash is not below `hash`.
        while low < high {
            let mid = low + (high - low) / 2;
            match slot_at(mid) {
                Some(slot) if slot.hash < *hash => low = mid + 1,
                Some(_) => high = mid,
                None => return Vec::new(),
            }
        }
        let mut found = Vec::new();
        let end = u64::from(self.fanout[bucket]);
        while low < end {
            match slot_at(low) {
                Some(slot) if slot.hash == *hash => {
                    if slot.offset.checked_add(u64::from(slot.len)).is_some_and(|end| end <= self.records_end) {
                        found.push(slot);
                    }
                }
                _ => break,
            }
            low += 1;
        }
        found.reverse();
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_reads_back_and_any_cut_or_changed_byte_makes_it_unreadable() {
        let record = encode(Kind::Entry, 1_700_000_000_123, "ab12", b"{\"x\": 1}");
        let text = String::from_utf8(record.clone()).unwrap();
        assert!(
            text.starts_with("DR1 00000008 ") && text.ends_with(" E 0000018bcfe5687b ab12\n{\"x\": 1}\n"),
            "{text}"
        );
        let read = parse(&record).unwrap();
        assert_eq!(
            (read.kind, read.written_ns, read.key, read.payload),
            (Kind::Entry, 1_700_000_000_123, "ab12", &b"{\"x\": 1}"[..])
        );
        assert_eq!(read.len, record.len());
        for cut in 0..record.len() {
            assert!(parse(&record[..cut]).is_none(), "cut at {cut}");
        }
        for at in 0..record.len() {
            let mut changed = record.clone();
            changed[at] ^= 0x20;
            assert!(parse(&changed).is_none(), "byte {at} changed");
        }
    }

    #[test]
    fn a_scan_skips_damage_and_finds_every_whole_record_after_it() {
        let records: Vec<Vec<u8>> =
            (0..4).map(|i| encode(Kind::Entry, i, &format!("k{i}"), &[b'a' + i as u8; 40])).collect();
        let mut bytes = Vec::new();
        for record in &records {
            bytes.extend_from_slice(record);
        }
        let keys = |bytes: &[u8]| scan(bytes).iter().map(|(_, r)| r.key.to_string()).collect::<Vec<_>>();
        assert_eq!(keys(&bytes), ["k0", "k1", "k2", "k3"]);
        // The second record zeroed in its middle, the last one torn.
        let second = records[0].len();
        bytes[second + 20..second + 60].fill(0);
        bytes.truncate(bytes.len() - 3);
        assert_eq!(keys(&bytes), ["k0", "k2"]);
    }

    #[test]
    fn a_sealed_index_finds_every_record_newest_first_and_nothing_else() {
        // Slots searched in memory, and in the file.
        for in_memory in [SLOTS_IN_MEMORY, 0] {
            sealed_index_finds_every_record(in_memory);
        }
    }

    fn sealed_index_finds_every_record(in_memory: u64) {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = Vec::new();
        let mut slots = Vec::new();
        let keys: Vec<String> = (0..600).map(|i| format!("key-{i}")).collect();
        for (i, key) in keys.iter().chain(&keys[..3]).enumerate() {
            let record = encode(Kind::Entry, i as u64, key, format!("payload {i}").as_bytes());
            slots.push(Slot::of(bytes.len() as u64, &parse(&record).unwrap()));
            bytes.extend_from_slice(&record);
        }
        let records_end = bytes.len() as u64;
        bytes.extend_from_slice(&index_bytes(&mut slots, records_end));
        let path = dir.path().join("p");
        std::fs::write(&path, &bytes).unwrap();
        let file = File::open(&path).unwrap();
        let index = PackIndex::read_keeping(&file, bytes.len() as u64, in_memory).unwrap();
        assert_eq!(index.records_end(), records_end);
        assert_eq!(index.slots.is_some(), in_memory > 0);
        for (i, key) in keys.iter().enumerate() {
            let found = index.find(&file, &key_hash(key));
            let payloads: Vec<_> =
                found.iter().map(|s| String::from_utf8(s.read(&file, key).unwrap().payload).unwrap()).collect();
            let expected: Vec<String> = if i < 3 {
                vec![format!("payload {}", 600 + i), format!("payload {i}")]
            } else {
                vec![format!("payload {i}")]
            };
            assert_eq!(payloads, expected);
            // A slot read for another key is refused: the record's bytes are bound to theirs.
            assert!(found[0].read(&file, "other").is_none());
        }
        assert!(index.find(&file, &key_hash("absent")).is_empty());
        // A slot whose offset was damaged to point past the records is left out, never read.
        let slot_of = |i: usize| {
            let at = records_end as usize + i * SLOT_LEN as usize;
            Slot::decode(&bytes[at..at + SLOT_LEN as usize]).unwrap()
        };
        let first = slot_of(0);
        let before = index.find(&file, &first.hash).len();
        let mut damaged = bytes.clone();
        let at = records_end as usize + 16;
        damaged[at..at + 8].copy_from_slice(&(records_end - 4).to_le_bytes());
        std::fs::write(&path, &damaged).unwrap();
        let file = File::open(&path).unwrap();
        let index = PackIndex::read_keeping(&file, damaged.len() as u64, in_memory).unwrap();
        assert_eq!(index.find(&file, &first.hash).len(), before - 1);
        // A damaged trailer is no index (the pack is then scanned).
        let mut damaged = bytes.clone();
        let last = damaged.len() - 1;
        damaged[last] ^= 1;
        std::fs::write(&path, &damaged).unwrap();
        assert!(PackIndex::read(&File::open(&path).unwrap(), damaged.len() as u64).is_none());
    }
}
