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
                blake3::Hash::from_hex(s).map($name)
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
