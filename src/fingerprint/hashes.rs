//! Hash newtypes: what was hashed is part of the type.

use std::fmt;
use std::str::FromStr;

macro_rules! hash_newtype {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash)]
        pub struct $name(pub blake3::Hash);

        impl $name {
            pub fn to_hex(&self) -> String {
                self.0.to_hex().to_string()
            }

            /// The first 12 hex digits, for humans.
            pub fn short(&self) -> String {
                self.0.to_hex()[..12].to_string()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.0.to_hex().as_str())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.short())
            }
        }

        impl FromStr for $name {
            type Err = blake3::HexError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match decode_hex(s.as_bytes()) {
                    Some(bytes) => Ok($name(blake3::Hash::from_bytes(bytes))),
                    // blake3 says what is wrong with the text.
                    None => blake3::Hash::from_hex(s).map($name),
                }
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.0.to_hex().as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

/// 64 hex digits to 32 bytes by table, a few times faster than blake3's `from_hex`: a
/// no-op build parses four hashes a stage from the state.
fn decode_hex(text: &[u8]) -> Option<[u8; 32]> {
    const INVALID: u8 = 0xff;
    const VALUES: [u8; 256] = {
        let mut table = [INVALID; 256];
        let mut i = 0;
        while i < 10 {
            table[b'0' as usize + i] = i as u8;
            i += 1;
        }
        let mut i = 0;
        while i < 6 {
            table[b'a' as usize + i] = 10 + i as u8;
            table[b'A' as usize + i] = 10 + i as u8;
            i += 1;
        }
        table
    };
    let text: &[u8; 64] = text.try_into().ok()?;
    let mut bytes = [0u8; 32];
    let mut bad = 0u8;
    for (byte, pair) in bytes.iter_mut().zip(text.chunks_exact(2)) {
        let (high, low) = (VALUES[pair[0] as usize], VALUES[pair[1] as usize]);
        bad |= high | low;
        *byte = (high << 4) | (low & 0x0f);
    }
    // Every valid digit is below 16; INVALID sets the high bits.
    (bad & 0xf0 == 0).then_some(bytes)
}

hash_newtype!(
    /// Content hash of one input or output path (a file, or a directory's listing of files).
    FileHash
);
hash_newtype!(
    /// Hash of everything that decides whether a stage must run: see `FingerprintInputs`.
    Fingerprint
);
hash_newtype!(
    /// Hash of all of a stage's outputs; downstream fingerprints use it (early cutoff).
    OutputHash
);

#[cfg(test)]
mod tests {
    use super::FileHash;

    #[test]
    fn hex_parses_in_either_case_and_refuses_anything_else() {
        let hash = blake3::hash(b"x");
        let hex = hash.to_hex().to_string();
        assert_eq!(hex.parse::<FileHash>().unwrap().0, hash);
        assert_eq!(hex.to_uppercase().parse::<FileHash>().unwrap().0, hash);
        let zero = hex.find('0').expect("a zero digit in this hash");
        let mut spaced = hex.clone();
        spaced.replace_range(zero..=zero, " ");
        for bad in
            [hex[1..].to_string(), format!("{hex}0"), hex.replacen(char::is_alphabetic, "g", 1), spaced, String::new()]
        {
            assert!(bad.parse::<FileHash>().is_err(), "{bad:?}");
        }
    }
}
