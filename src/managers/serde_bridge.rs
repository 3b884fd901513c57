//! Rust values to Python values and back, through serde: how typed
//! proxies put a `T` into a manager that Python clients read as plain
//! Python data (numbers, str, bytes, lists, tuples, dicts, None).
//!
//! ```
//! use multiproc::pickle::PyValue;
//! use multiproc::managers::{from_value, to_value};
//!
//! #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
//! struct Task { id: u32, name: String, weights: Vec<f64> }
//!
//! let t = Task { id: 7, name: "x".into(), weights: vec![0.5] };
//! let v = to_value(&t).unwrap();
//! assert_eq!(v.to_string(), "{'id': 7, 'name': 'x', 'weights': [0.5]}");
//! assert_eq!(from_value::<Task>(v).unwrap(), t);
//! assert_eq!(from_value::<(i64, Option<String>)>(PyValue::Tuple(vec![PyValue::Int(1), PyValue::None])).unwrap(), (1, None));
//! ```

use std::fmt;

use serde::de::{self, DeserializeOwned, IntoDeserializer, Visitor};
use serde::ser::{self, Serialize};

use crate::pickle::PyValue;

/// A value that has no Python form, or a Python value that is not the
/// Rust type asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueError(pub String);

impl fmt::Display for ValueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ValueError {}

impl ser::Error for ValueError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        ValueError(msg.to_string())
    }
}

impl de::Error for ValueError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        ValueError(msg.to_string())
    }
}

/// `value` as Python data: structs and maps become dicts, sequences
/// lists, tuples tuples, `None`/`()` None, enums their variant's name (or a
/// one-entry dict holding its data).
pub fn to_value<T: Serialize + ?Sized>(value: &T) -> Result<PyValue, ValueError> {
    value.serialize(ToValue)
}

/// The Rust value of type `T` that `value` describes (the inverse of
/// [`to_value`]); lists, tuples and sets all read as sequences.
pub fn from_value<T: DeserializeOwned>(value: PyValue) -> Result<T, ValueError> {
    T::deserialize(value)
}

struct ToValue;

struct Seq {
    items: Vec<PyValue>,
    tuple: bool,
    variant: Option<&'static str>,
}

struct Map {
    pairs: Vec<(PyValue, PyValue)>,
    key: Option<PyValue>,
    variant: Option<&'static str>,
}

fn tagged(variant: Option<&'static str>, v: PyValue) -> PyValue {
    match variant {
        Some(name) => PyValue::Dict(vec![(PyValue::Str(name.into()), v)]),
        None => v,
    }
}

impl ser::Serializer for ToValue {
    type Ok = PyValue;
    type Error = ValueError;
    type SerializeSeq = Seq;
    type SerializeTuple = Seq;
    type SerializeTupleStruct = Seq;
    type SerializeTupleVariant = Seq;
    type SerializeMap = Map;
    type SerializeStruct = Map;
    type SerializeStructVariant = Map;

    fn serialize_bool(self, v: bool) -> Result<PyValue, ValueError> {
        Ok(PyValue::Bool(v))
    }
    fn serialize_i8(self, v: i8) -> Result<PyValue, ValueError> {
        Ok(PyValue::Int(v.into()))
    }
    fn serialize_i16(self, v: i16) -> Result<PyValue, ValueError> {
        Ok(PyValue::Int(v.into()))
    }
    fn serialize_i32(self, v: i32) -> Result<PyValue, ValueError> {
        Ok(PyValue::Int(v.into()))
    }
    fn serialize_i64(self, v: i64) -> Result<PyValue, ValueError> {
        Ok(PyValue::Int(v))
    }
    fn serialize_i128(self, v: i128) -> Result<PyValue, ValueError> {
        Ok(i64::try_from(v).map(PyValue::Int).unwrap_or_else(|_| PyValue::BigInt(v.to_le_bytes().to_vec())))
    }
    fn serialize_u8(self, v: u8) -> Result<PyValue, ValueError> {
        Ok(PyValue::Int(v.into()))
    }
    fn serialize_u16(self, v: u16) -> Result<PyValue, ValueError> {
        Ok(PyValue::Int(v.into()))
    }
    fn serialize_u32(self, v: u32) -> Result<PyValue, ValueError> {
        Ok(PyValue::Int(v.into()))
    }
    fn serialize_u64(self, v: u64) -> Result<PyValue, ValueError> {
        self.serialize_i128(v.into())
    }
    fn serialize_u128(self, v: u128) -> Result<PyValue, ValueError> {
        match i128::try_from(v) {
            Ok(v) => self.serialize_i128(v),
            Err(_) => {
                let mut b = v.to_le_bytes().to_vec();
                b.push(0); // keep it positive in two's complement
                Ok(PyValue::BigInt(b))
            }
        }
    }
    fn serialize_f32(self, v: f32) -> Result<PyValue, ValueError> {
        Ok(PyValue::Float(v.into()))
    }
    fn serialize_f64(self, v: f64) -> Result<PyValue, ValueError> {
        Ok(PyValue::Float(v))
    }
    fn serialize_char(self, v: char) -> Result<PyValue, ValueError> {
        Ok(PyValue::Str(v.to_string()))
    }
    fn serialize_str(self, v: &str) -> Result<PyValue, ValueError> {
        Ok(PyValue::Str(v.into()))
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<PyValue, ValueError> {
        Ok(PyValue::Bytes(v.to_vec()))
    }
    fn serialize_none(self) -> Result<PyValue, ValueError> {
        Ok(PyValue::None)
    }
    fn serialize_some<T: Serialize + ?Sized>(self, v: &T) -> Result<PyValue, ValueError> {
        v.serialize(self)
    }
    fn serialize_unit(self) -> Result<PyValue, ValueError> {
        Ok(PyValue::None)
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<PyValue, ValueError> {
        Ok(PyValue::None)
    }
    fn serialize_unit_variant(self, _: &'static str, _: u32, variant: &'static str) -> Result<PyValue, ValueError> {
        Ok(PyValue::Str(variant.into()))
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(self, _: &'static str, v: &T) -> Result<PyValue, ValueError> {
        v.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        v: &T,
    ) -> Result<PyValue, ValueError> {
        Ok(tagged(Some(variant), v.serialize(self)?))
    }
    fn serialize_seq(self, len: Option<usize>) -> Result<Seq, ValueError> {
        Ok(Seq { items: Vec::with_capacity(len.unwrap_or(0)), tuple: false, variant: None })
    }
    fn serialize_tuple(self, len: usize) -> Result<Seq, ValueError> {
        Ok(Seq { items: Vec::with_capacity(len), tuple: true, variant: None })
    }
    fn serialize_tuple_struct(self, _: &'static str, len: usize) -> Result<Seq, ValueError> {
        self.serialize_tuple(len)
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Seq, ValueError> {
        Ok(Seq { items: Vec::with_capacity(len), tuple: true, variant: Some(variant) })
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Map, ValueError> {
        Ok(Map { pairs: Vec::new(), key: None, variant: None })
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Map, ValueError> {
        self.serialize_map(None)
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> Result<Map, ValueError> {
        Ok(Map { pairs: Vec::new(), key: None, variant: Some(variant) })
    }
}

impl Seq {
    fn push<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), ValueError> {
        self.items.push(v.serialize(ToValue)?);
        Ok(())
    }
    fn done(self) -> PyValue {
        let v = if self.tuple { PyValue::Tuple(self.items) } else { PyValue::List(self.items) };
        tagged(self.variant, v)
    }
}

/// serde has four traits for sequences that differ only in name; one body
/// serves them all.
macro_rules! seq_impl {
    ($($trait:ident :: $method:ident),*) => {$(
        impl ser::$trait for Seq {
            type Ok = PyValue;
            type Error = ValueError;
            fn $method<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), ValueError> {
                self.push(v)
            }
            fn end(self) -> Result<PyValue, ValueError> {
                Ok(self.done())
            }
        }
    )*};
}

seq_impl!(
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field
);

impl ser::SerializeMap for Map {
    type Ok = PyValue;
    type Error = ValueError;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, k: &T) -> Result<(), ValueError> {
        self.key = Some(k.serialize(ToValue)?);
        Ok(())
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), ValueError> {
        let k = self.key.take().ok_or_else(|| ValueError("a map value without its key".into()))?;
        self.pairs.push((k, v.serialize(ToValue)?));
        Ok(())
    }
    fn end(self) -> Result<PyValue, ValueError> {
        Ok(tagged(self.variant, PyValue::Dict(self.pairs)))
    }
}

macro_rules! struct_impl {
    ($($trait:ident),*) => {$(
        impl ser::$trait for Map {
            type Ok = PyValue;
            type Error = ValueError;
            fn serialize_field<T: Serialize + ?Sized>(&mut self, key: &'static str, v: &T) -> Result<(), ValueError> {
                self.pairs.push((PyValue::Str(key.into()), v.serialize(ToValue)?));
                Ok(())
            }
            fn end(self) -> Result<PyValue, ValueError> {
                Ok(tagged(self.variant, PyValue::Dict(self.pairs)))
            }
        }
    )*};
}

struct_impl!(SerializeStruct, SerializeStructVariant);

fn unexpected(v: &PyValue) -> de::Unexpected<'_> {
    match v {
        PyValue::None => de::Unexpected::Unit,
        PyValue::Bool(b) => de::Unexpected::Bool(*b),
        PyValue::Int(i) => de::Unexpected::Signed(*i),
        PyValue::Float(f) => de::Unexpected::Float(*f),
        PyValue::Str(s) => de::Unexpected::Str(s),
        PyValue::Bytes(b) | PyValue::ByteArray(b) => de::Unexpected::Bytes(b),
        PyValue::Tuple(_) | PyValue::List(_) | PyValue::Set(_) | PyValue::FrozenSet(_) => de::Unexpected::Seq,
        PyValue::Dict(_) => de::Unexpected::Map,
        PyValue::BigInt(_) => de::Unexpected::Other("a large int"),
        PyValue::Global { .. } | PyValue::Object { .. } => de::Unexpected::Other("a Python object"),
        PyValue::Shared(s) => unexpected(s.value()),
        PyValue::Ref(_) => de::Unexpected::Other("a value inside itself"),
    }
}

/// The value as plain data where Python's pickle wrote a standard
/// container as a call that runs no user code: `list(...)` (how
/// `multiprocessing` pickles a dict's `items()`, `keys()` and `values()`
/// views), `tuple`, `set`, `frozenset`, `dict`, and the `collections`
/// types (`OrderedDict`, `defaultdict` and `Counter` as maps, `deque` as a
/// sequence). A Rust type reading it sees the items; anything else stays as
/// it is (and fails to read as a container, saying it is a Python object).
pub(crate) fn plain(v: PyValue) -> PyValue {
    let v = v.into_unshared();
    let PyValue::Object { class, args, list_items, dict_items, state, .. } = &v else { return v };
    let PyValue::Global { module, name } = class.unshared() else { return v };
    let args: &[PyValue] = match args.unshared() {
        PyValue::Tuple(a) => a,
        _ => return v,
    };
    let first = args.first().map(|a| plain(a.clone()));
    let seq = |x: Option<PyValue>| match x {
        None => Some(Vec::new()),
        Some(PyValue::List(i) | PyValue::Tuple(i) | PyValue::Set(i) | PyValue::FrozenSet(i)) => Some(i),
        Some(_) => None,
    };
    let plain_out = match (module.as_str(), name.as_str()) {
        ("builtins" | "__builtin__", "list") if list_items.is_empty() && state.is_none() => {
            seq(first).map(PyValue::List)
        }
        ("builtins" | "__builtin__", "tuple") => seq(first).map(PyValue::Tuple),
        ("builtins" | "__builtin__", "set") => seq(first).map(PyValue::Set),
        ("builtins" | "__builtin__", "frozenset") => seq(first).map(PyValue::FrozenSet),
        ("collections", "deque") => seq(first).map(|mut items| {
            items.extend(list_items.iter().cloned());
            PyValue::List(items)
        }),
        ("builtins" | "__builtin__", "dict") | ("collections", "OrderedDict" | "Counter" | "defaultdict") => {
            // defaultdict's first argument is its factory, not items.
            let from_args = if name == "defaultdict" { None } else { first };
            let mut pairs = match from_args {
                None => Vec::new(),
                Some(PyValue::Dict(p)) => p,
                Some(PyValue::List(items) | PyValue::Tuple(items)) => {
                    let pairs: Option<Vec<(PyValue, PyValue)>> = items
                        .into_iter()
                        .map(|kv| match kv.into_unshared() {
                            PyValue::Tuple(mut kv) | PyValue::List(mut kv) if kv.len() == 2 => {
                                let v = kv.pop().expect("two");
                                Some((kv.pop().expect("two"), v))
                            }
                            _ => None,
                        })
                        .collect();
                    match pairs {
                        Some(p) => p,
                        None => return v,
                    }
                }
                Some(_) => return v,
            };
            pairs.extend(dict_items.iter().cloned());
            Some(PyValue::Dict(pairs))
        }
        _ => None,
    };
    plain_out.unwrap_or(v)
}

impl<'de> de::Deserializer<'de> for PyValue {
    type Error = ValueError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ValueError> {
        match plain(self) {
            PyValue::None => visitor.visit_unit(),
            PyValue::Bool(b) => visitor.visit_bool(b),
            PyValue::Int(i) => visitor.visit_i64(i),
            PyValue::BigInt(b) if b.len() <= 16 => {
                let fill = if b.last().is_some_and(|x| x & 0x80 != 0) { 0xff } else { 0 };
                let mut bytes = [fill; 16];
                bytes[..b.len()].copy_from_slice(&b);
                let v = i128::from_le_bytes(bytes);
                match u64::try_from(v) {
                    Ok(u) => visitor.visit_u64(u),
                    Err(_) => visitor.visit_i128(v),
                }
            }
            PyValue::BigInt(b) if b.len() == 17 && b[16] == 0 => {
                visitor.visit_u128(u128::from_le_bytes(b[..16].try_into().expect("16 bytes")))
            }
            PyValue::Float(f) => visitor.visit_f64(f),
            PyValue::Str(s) => visitor.visit_string(s),
            PyValue::Bytes(b) | PyValue::ByteArray(b) => visitor.visit_byte_buf(b),
            PyValue::Tuple(items) | PyValue::List(items) | PyValue::Set(items) | PyValue::FrozenSet(items) => {
                visitor.visit_seq(de::value::SeqDeserializer::new(items.into_iter()))
            }
            PyValue::Dict(pairs) => visitor.visit_map(de::value::MapDeserializer::new(pairs.into_iter())),
            other => Err(de::Error::invalid_type(unexpected(&other), &visitor)),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ValueError> {
        match plain(self) {
            PyValue::None => visitor.visit_none(),
            other => visitor.visit_some(other),
        }
    }

    /// `()` is Python's `None`, or an empty tuple (a call with no
    /// arguments).
    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ValueError> {
        match plain(self) {
            PyValue::None => visitor.visit_unit(),
            PyValue::Tuple(t) | PyValue::List(t) if t.is_empty() => visitor.visit_unit(),
            other => Err(de::Error::invalid_type(unexpected(&other), &visitor)),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(self, _: &'static str, visitor: V) -> Result<V::Value, ValueError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, ValueError> {
        match plain(self) {
            PyValue::Str(s) => visitor.visit_enum(s.into_deserializer()),
            PyValue::Dict(mut pairs) if pairs.len() == 1 => {
                let (k, v) = pairs.pop().expect("one");
                visitor.visit_enum(Enum(k, v))
            }
            other => Err(de::Error::invalid_type(unexpected(&other), &"an enum: a name or a one-entry dict")),
        }
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit_struct seq tuple tuple_struct map struct identifier ignored_any
    }
}

impl<'de> IntoDeserializer<'de, ValueError> for PyValue {
    type Deserializer = PyValue;
    fn into_deserializer(self) -> PyValue {
        self
    }
}

struct Enum(PyValue, PyValue);

impl<'de> de::EnumAccess<'de> for Enum {
    type Error = ValueError;
    type Variant = PyValue;
    fn variant_seed<S: de::DeserializeSeed<'de>>(self, seed: S) -> Result<(S::Value, PyValue), ValueError> {
        Ok((seed.deserialize(self.0)?, self.1))
    }
}

impl<'de> de::VariantAccess<'de> for PyValue {
    type Error = ValueError;
    fn unit_variant(self) -> Result<(), ValueError> {
        Ok(())
    }
    fn newtype_variant_seed<S: de::DeserializeSeed<'de>>(self, seed: S) -> Result<S::Value, ValueError> {
        seed.deserialize(self)
    }
    fn tuple_variant<V: Visitor<'de>>(self, _: usize, visitor: V) -> Result<V::Value, ValueError> {
        de::Deserializer::deserialize_any(self, visitor)
    }
    fn struct_variant<V: Visitor<'de>>(self, _: &'static [&'static str], visitor: V) -> Result<V::Value, ValueError> {
        de::Deserializer::deserialize_any(self, visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    enum E {
        Unit,
        New(u8),
        Pair(i32, String),
        Named { x: f64 },
    }

    /// Standard containers pickled as calls (what Python's pickle and
    /// `multiprocessing` write for dict views, `OrderedDict`, `Counter`,
    /// `defaultdict`, `deque`), read from real pickles, come out as data.
    #[test]
    fn standard_containers_written_as_calls_read_as_data() {
        use crate::pickle::loads;
        // pickle.dumps(collections.OrderedDict([('z', 1), ('a', 2)]), 2)
        let od = b"\x80\x02ccollections\nOrderedDict\nq\x00)Rq\x01(X\x01\x00\x00\x00zq\x02K\x01X\x01\x00\x00\x00aq\x03K\x02u.";
        let v = loads(od).unwrap();
        assert_eq!(from_value::<Vec<(String, i64)>>(v.clone()).err().map(|_| ()), Some(()), "a map is not a list");
        assert_eq!(from_value::<BTreeMap<String, i64>>(v).unwrap(), [("a".into(), 2), ("z".into(), 1)].into());
        let list = PyValue::reduce("builtins", "list", vec![PyValue::List(vec![PyValue::Int(1), PyValue::Int(2)])]);
        assert_eq!(from_value::<Vec<i64>>(list).unwrap(), [1, 2]);
        let counter = PyValue::reduce(
            "collections",
            "Counter",
            vec![PyValue::Dict(vec![(PyValue::Str("x".into()), PyValue::Int(3))])],
        );
        assert_eq!(from_value::<BTreeMap<String, i64>>(counter).unwrap(), [("x".into(), 3)].into());
        let deque =
            PyValue::reduce("collections", "deque", vec![PyValue::List(vec![PyValue::Int(5)]), PyValue::Int(3)]);
        assert_eq!(from_value::<Vec<i64>>(deque).unwrap(), [5]);
        let mut dd = PyValue::reduce("collections", "defaultdict", vec![PyValue::global("builtins", "list")]);
        if let PyValue::Object { dict_items, .. } = &mut dd {
            dict_items.push((PyValue::Str("k".into()), PyValue::List(vec![])));
        }
        assert_eq!(from_value::<BTreeMap<String, Vec<i64>>>(dd).unwrap(), [("k".into(), vec![])].into());
        // Anything else stays an object, and says so.
        let other = PyValue::reduce("mymodule", "Thing", vec![PyValue::Int(1)]);
        assert!(from_value::<Vec<i64>>(other).unwrap_err().to_string().contains("a Python object"));
    }

    #[test]
    fn round_trips() {
        fn rt<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(v: T) {
            assert_eq!(from_value::<T>(to_value(&v).unwrap()).unwrap(), v);
        }
        rt(u64::MAX);
        rt(i64::MIN);
        rt(u128::MAX);
        rt(-5i128);
        rt(vec![E::Unit, E::New(3), E::Pair(-1, "p".into()), E::Named { x: 0.25 }]);
        rt(Some(vec![Some(1u8), None]));
        rt(BTreeMap::from([("a".to_string(), vec![1u32]), ("b".to_string(), vec![])]));
        rt(('c', true, (), "s".to_string()));
        rt(serde_bytes::ByteBuf::from(vec![0u8, 255]));
        assert!(from_value::<u8>(PyValue::Int(300)).is_err());
        assert!(from_value::<String>(PyValue::reduce("os", "system", vec![])).is_err());
    }
}
