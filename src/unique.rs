//! Identifiers no other call makes, in this process or another: what marks a run's and an
//! attempt's processes (`executor::group`), so that a later build can tell them apart.

use std::sync::atomic::{AtomicU64, Ordering};

/// `len` hex digits (at most 64): `seed`, this process, a count and the time, hashed.
pub(crate) fn hex(seed: &str, len: usize) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = blake3::Hasher::new();
    hasher.update(seed.as_bytes());
    hasher.update(&std::process::id().to_le_bytes());
    hasher.update(&COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    hasher.update(&now.as_nanos().to_le_bytes());
    hasher.finalize().to_hex()[..len].to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn no_two_calls_give_the_same_identifier() {
        assert_ne!(super::hex("s", 16), super::hex("s", 16));
        assert_eq!(super::hex("s", 24).len(), 24);
    }
}
