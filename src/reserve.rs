//! Room reserved for a sequence decoded from one of dagrun's own binary files (the spec
//! cache, the state snapshot): what its length says, up to 64 MiB, so that the length in a
//! damaged or foreign file cannot reserve gigabytes (a failed allocation aborts the process).
//! A real sequence longer than that still decodes, growing as it goes.

/// How many `T`s to reserve for a sequence whose decoder says it holds `hint`.
pub(crate) fn capacity_for<T>(hint: Option<usize>) -> usize {
    const MOST_BYTES: usize = 64 << 20;
    hint.unwrap_or(0).min(MOST_BYTES / std::mem::size_of::<T>().max(1))
}
