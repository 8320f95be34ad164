//! Content fingerprints: BLAKE3 hashes of files, directories, outputs and stage inputs.

mod cache;
mod hashes;
mod inputs;

pub use cache::{CacheClock, CacheEntry, HashCache, HashError, RACY_WINDOW_NS};
pub use hashes::{FileHash, Fingerprint, OutputHash};
pub use inputs::{ActionId, FingerprintInputs, output_hash};
