//! Content fingerprints: BLAKE3 hashes of files, directories, outputs and stage inputs.

mod cache;
mod file;
mod hashes;
mod inputs;

pub use cache::{CacheClock, CacheEntry, HashCache, HashError};
pub use file::hash_file;
pub use hashes::{FileHash, Fingerprint, OutputHash};
pub use inputs::{ActionId, FingerprintInputs, output_hash};
pub(crate) use inputs::{ActionRef, FingerprintFields, NameKey};
