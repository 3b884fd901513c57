//! [`Json`]: values that need a self-describing format travel as JSON
//! inside our binary codec (feature `json`).
//!
//! Our codec (postcard) writes no field names or types, which is what makes
//! it small and fast; serde types that ask the format what comes next
//! (`deserialize_any`: `serde_json::Value`, `#[serde(flatten)]`, untagged
//! and internally tagged enums) cannot be read back from it. Wrapped in
//! `Json`, such a value is written as JSON bytes and read back with
//! `serde_json`, wherever values travel: arguments, results, queues, pipes.

use std::fmt;
use std::ops::{Deref, DerefMut};

use serde::de::{self, DeserializeOwned, Deserializer, SeqAccess, Visitor};
use serde::ser::{self, Serializer};
use serde::{Deserialize, Serialize};

/// A value that travels as JSON (feature `json`): for serde types that
/// need `deserialize_any`, which our binary codec cannot offer.
///
/// ```
/// # #[multiproc::main] fn main() {
/// use multiproc::{Json, Process};
/// use serde_json::{Value, json};
///
/// fn describe(v: Json<Value>) -> Json<Value> {
///     Json(json!({ "keys": v["a"].as_object().map_or(0, |o| o.len()), "was": v.0 }))
/// }
///
/// let mut p = Process::new(describe, (Json(json!({ "a": { "x": 1, "y": [true, null] } })),));
/// p.start().unwrap();
/// let out = p.join().unwrap().into_inner();
/// assert_eq!(out["keys"], 2);
/// assert_eq!(out["was"]["a"]["y"][1], Value::Null);
/// # }
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Json<T>(pub T);

impl<T> Json<T> {
    /// The value.
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> From<T> for Json<T> {
    fn from(value: T) -> Self {
        Json(value)
    }
}

impl<T> Deref for Json<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T> DerefMut for Json<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.0
    }
}

impl<T: Serialize> Serialize for Json<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let bytes = serde_json::to_vec(&self.0)
            .map_err(|e| ser::Error::custom(format!("{} as JSON: {e}", std::any::type_name::<T>())))?;
        serializer.serialize_bytes(&bytes)
    }
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for Json<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let bytes = deserializer.deserialize_bytes(BytesVisitor)?;
        serde_json::from_slice(&bytes)
            .map(Json)
            .map_err(|e| de::Error::custom(format!("{} from JSON: {e}", std::any::type_name::<T>())))
    }
}

/// Accepts the bytes however the format hands them over.
struct BytesVisitor;

impl<'de> Visitor<'de> for BytesVisitor {
    type Value = Vec<u8>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("JSON bytes")
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
        Ok(v.to_vec())
    }

    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
        Ok(v)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(b) = seq.next_element()? {
            out.push(b);
        }
        Ok(out)
    }
}
