//! Decoding a big payload so that each byte buffer that becomes an owned
//! value (`serde_bytes::ByteBuf`, a `#[serde(with = "serde_bytes")]` field)
//! lands in memory that faults in as huge pages.
//!
//! A fresh 64 MiB buffer costs this machine 23 ms to fill, most of it
//! 16,384 page faults and the zeroing of each page; in 2 MiB pages the same
//! copy takes 6 ms. The buffer must come from the global allocator (its
//! owner frees it), so it is allocated as usual and only advised before it
//! is first touched. serde offers no hook at the point where a visitor asks
//! for owned bytes, so [`Owned`] wraps the whole deserializer, handing
//! itself to every nested value, and catches `deserialize_byte_buf`.
//!
//! Only payloads kept in shared memory (past `SPILL_AT`) are decoded
//! through it: small ones never hold a buffer worth advising.

use serde::de::{self, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess, VariantAccess, Visitor};

/// `bytes` copied into a new vector, advised into huge pages when long.
pub(crate) fn copy_out(bytes: &[u8]) -> Vec<u8> {
    let mut v = crate::sys::vec_with_capacity(bytes.len());
    v.extend_from_slice(bytes);
    v
}

/// A deserializer, or any of serde's accessors, wrapped so that what it
/// hands on is wrapped too.
pub(crate) struct Owned<T>(pub(crate) T);

macro_rules! forward_deserialize {
    ($($method:ident $(, $arg:ident: $ty:ty)*;)*) => {$(
        fn $method<V: Visitor<'de>>(self $(, $arg: $ty)*, visitor: V) -> Result<V::Value, D::Error> {
            self.0.$method($($arg,)* Owned(visitor))
        }
    )*};
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Owned<D> {
    type Error = D::Error;

    forward_deserialize! {
        deserialize_any; deserialize_bool; deserialize_i8; deserialize_i16; deserialize_i32;
        deserialize_i64; deserialize_i128; deserialize_u8; deserialize_u16; deserialize_u32;
        deserialize_u64; deserialize_u128; deserialize_f32; deserialize_f64; deserialize_char;
        deserialize_str; deserialize_string; deserialize_bytes; deserialize_option; deserialize_unit;
        deserialize_unit_struct, name: &'static str;
        deserialize_newtype_struct, name: &'static str;
        deserialize_seq;
        deserialize_tuple, len: usize;
        deserialize_tuple_struct, name: &'static str, len: usize;
        deserialize_map;
        deserialize_struct, name: &'static str, fields: &'static [&'static str];
        deserialize_enum, name: &'static str, variants: &'static [&'static str];
        deserialize_identifier; deserialize_ignored_any;
    }

    /// The one change: the visitor wants owned bytes, so it gets a vector
    /// made here rather than copying a borrowed slice itself.
    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.0.deserialize_byte_buf(OwnedBytes(visitor))
    }

    fn is_human_readable(&self) -> bool {
        self.0.is_human_readable()
    }
}

/// A visitor that asked for owned bytes.
struct OwnedBytes<V>(V);

macro_rules! forward_visit {
    ($($method:ident($ty:ty);)*) => {$(
        fn $method<E: de::Error>(self, v: $ty) -> Result<V::Value, E> {
            self.0.$method(v)
        }
    )*};
}

macro_rules! forward_nested {
    () => {
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<V::Value, D::Error> {
            self.0.visit_some(Owned(d))
        }
        fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<V::Value, D::Error> {
            self.0.visit_newtype_struct(Owned(d))
        }
        fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<V::Value, A::Error> {
            self.0.visit_seq(Owned(seq))
        }
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
            self.0.visit_map(Owned(map))
        }
        fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<V::Value, A::Error> {
            self.0.visit_enum(Owned(data))
        }
        fn visit_none<E: de::Error>(self) -> Result<V::Value, E> {
            self.0.visit_none()
        }
        fn visit_unit<E: de::Error>(self) -> Result<V::Value, E> {
            self.0.visit_unit()
        }
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            self.0.expecting(f)
        }
        forward_visit! {
            visit_bool(bool); visit_i8(i8); visit_i16(i16); visit_i32(i32); visit_i64(i64);
            visit_i128(i128); visit_u8(u8); visit_u16(u16); visit_u32(u32); visit_u64(u64);
            visit_u128(u128); visit_f32(f32); visit_f64(f64); visit_char(char);
            visit_str(&str); visit_borrowed_str(&'de str); visit_string(String);
            visit_byte_buf(Vec<u8>);
        }
    };
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Owned<V> {
    type Value = V::Value;
    forward_nested!();
    forward_visit! { visit_bytes(&[u8]); visit_borrowed_bytes(&'de [u8]); }
}

impl<'de, V: Visitor<'de>> Visitor<'de> for OwnedBytes<V> {
    type Value = V::Value;
    forward_nested!();

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<V::Value, E> {
        self.0.visit_byte_buf(copy_out(v))
    }

    fn visit_borrowed_bytes<E: de::Error>(self, v: &'de [u8]) -> Result<V::Value, E> {
        self.0.visit_byte_buf(copy_out(v))
    }
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for Owned<S> {
    type Value = S::Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<S::Value, D::Error> {
        self.0.deserialize(Owned(d))
    }
}

impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for Owned<A> {
    type Error = A::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, A::Error> {
        self.0.next_element_seed(Owned(seed))
    }

    fn size_hint(&self) -> Option<usize> {
        self.0.size_hint()
    }
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Owned<A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, A::Error> {
        self.0.next_key_seed(Owned(seed))
    }

    fn next_value_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<T::Value, A::Error> {
        self.0.next_value_seed(Owned(seed))
    }

    fn size_hint(&self) -> Option<usize> {
        self.0.size_hint()
    }
}

impl<'de, A: EnumAccess<'de>> EnumAccess<'de> for Owned<A> {
    type Error = A::Error;
    type Variant = Owned<A::Variant>;

    fn variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<(T::Value, Owned<A::Variant>), A::Error> {
        let (value, variant) = self.0.variant_seed(Owned(seed))?;
        Ok((value, Owned(variant)))
    }
}

impl<'de, A: VariantAccess<'de>> VariantAccess<'de> for Owned<A> {
    type Error = A::Error;

    fn unit_variant(self) -> Result<(), A::Error> {
        self.0.unit_variant()
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, A::Error> {
        self.0.newtype_variant_seed(Owned(seed))
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, A::Error> {
        self.0.tuple_variant(len, Owned(visitor))
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, A::Error> {
        self.0.struct_variant(fields, Owned(visitor))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Serialize};
    use serde_bytes::ByteBuf;

    use crate::reduction::{SPILL_AT, decode, encode};

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    enum Shape {
        Unit,
        Newtype(ByteBuf),
        Tuple(u8, ByteBuf, String),
        Struct {
            name: String,
            #[serde(with = "serde_bytes")]
            data: Vec<u8>,
            n: i64,
        },
    }

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct Everything {
        head: ByteBuf,
        maybe: Option<ByteBuf>,
        none: Option<ByteBuf>,
        shapes: Vec<Shape>,
        by_name: BTreeMap<String, ByteBuf>,
        plain: Vec<u8>,
        text: String,
        numbers: (u8, i16, u32, i64, u128, f32, f64, char, bool),
        unit: (),
        tail: ByteBuf,
    }

    fn bytes(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
    }

    /// Every kind of nested value reaches the other side whole when a
    /// payload is decoded out of shared memory, with buffers on both sides
    /// of the huge-page size among them.
    #[test]
    fn a_big_payload_of_every_shape_comes_back_whole() {
        let big = crate::sys::HUGE_AT + 3;
        let value = Everything {
            head: ByteBuf::from(bytes(big, 1)),
            maybe: Some(ByteBuf::from(bytes(17, 2))),
            none: None,
            shapes: vec![
                Shape::Unit,
                Shape::Newtype(ByteBuf::from(bytes(big, 3))),
                Shape::Tuple(9, ByteBuf::from(bytes(5, 4)), "tuple".into()),
                Shape::Struct { name: "s".into(), data: bytes(2 * big, 5), n: -5 },
            ],
            by_name: [("a".to_string(), ByteBuf::from(bytes(big, 6))), ("b".to_string(), ByteBuf::new())]
                .into_iter()
                .collect(),
            plain: bytes(1000, 7),
            text: "ünïcode".into(),
            numbers: (1, -2, 3, -4, u128::MAX, 1.5, -2.25, 'ß', true),
            unit: (),
            tail: ByteBuf::from(bytes(3, 8)),
        };
        let (payload, fds) = encode(&value).unwrap();
        assert!(payload.len() < SPILL_AT && fds.len() == 1, "the payload went to shared memory");
        let back: Everything = decode(&payload, fds).unwrap();
        assert!(back == value);
    }

    /// A long buffer decoded from shared memory lies in memory advised
    /// into huge pages (where the system takes such advice).
    #[test]
    fn long_buffers_are_advised_into_huge_pages() {
        let mode = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
        if !mode.contains("[madvise]") {
            // `always` backs everything that way, `never` nothing: no
            // advice to see.
            return;
        }
        let value = ByteBuf::from(bytes(4 * crate::sys::HUGE_AT, 9));
        let (payload, fds) = encode(&value).unwrap();
        let back: ByteBuf = decode(&payload, fds).unwrap();
        assert!(back == value);
        let inside = back.as_ptr() as usize + 2 * crate::sys::HUGE_AT;
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut lines = smaps.lines();
        let mut eligible = None;
        while let Some(line) = lines.next() {
            let Some((a, rest)) = line.split_once('-') else { continue };
            let Some(b) = rest.split(' ').next() else { continue };
            let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16)) else { continue };
            if a <= inside && inside < b {
                eligible = lines.by_ref().find_map(|l| l.strip_prefix("THPeligible:")).map(str::trim);
                break;
            }
        }
        assert_eq!(eligible, Some("1"), "the buffer's mapping is not eligible for huge pages");
    }
}
