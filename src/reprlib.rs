//! Python's `reprlib`: a value shown in a bounded length, for error
//! messages (which argument of a `map` failed).
//!
//! Arguments travel as serde values, not as `Debug` ones, so the value is
//! shown through its `Serialize` impl in `Debug`'s notation: `"text"`,
//! `[1, 2]`, `(1, "a")`, `Point { x: 1, y: 2 }`, `Some(3)`, `Variant(..)`.
//! Writing stops at the limit, so a huge argument costs no more than the
//! part that is shown.

use std::fmt::{self, Write};

use serde::ser::{self, Serialize};

/// `value` as `Debug` would show it, cut to about `limit` characters
/// (ending in `…` when cut); `None` if it cannot be shown.
#[cfg(test)]
pub(crate) fn repr<T: Serialize + ?Sized>(value: &T, limit: usize) -> Option<String> {
    shown(value, limit, false)
}

/// A call's arguments (a tuple) as [`repr`] shows them, a single argument
/// without its tuple: `5` for `(5,)`.
pub(crate) fn repr_args<T: Serialize + ?Sized>(args: &T, limit: usize) -> Option<String> {
    shown(args, limit, true)
}

fn shown<T: Serialize + ?Sized>(value: &T, limit: usize, bare: bool) -> Option<String> {
    let mut out = Repr { text: String::new(), limit, bare };
    match value.serialize(&mut out) {
        Ok(()) => Some(out.text),
        Err(Stop::Full) => {
            let mut text: String = out.text.chars().take(limit).collect();
            text.push('…');
            Some(text)
        }
        Err(Stop::Other) => None,
    }
}

struct Repr {
    text: String,
    limit: usize,
    /// A one-element tuple at the very start is shown without its parens.
    bare: bool,
}

#[derive(Debug)]
enum Stop {
    /// The limit was reached.
    Full,
    /// The value refused to be shown.
    Other,
}

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stop::Full => "long enough",
            Stop::Other => "cannot be shown",
        })
    }
}

impl std::error::Error for Stop {}

impl ser::Error for Stop {
    fn custom<M: fmt::Display>(_: M) -> Stop {
        Stop::Other
    }
}

type Done = Result<(), Stop>;

impl Repr {
    fn put(&mut self, s: impl fmt::Display) -> Done {
        self.bare = false;
        let _ = write!(self.text, "{s}");
        if self.text.len() > self.limit { Err(Stop::Full) } else { Ok(()) }
    }
}

/// A compound value being written: its closing text, and whether an item
/// was written (for the separators).
struct Compound<'a> {
    repr: &'a mut Repr,
    close: &'static str,
    first: bool,
}

impl Compound<'_> {
    fn item<T: Serialize + ?Sized>(&mut self, key: Option<&str>, value: &T) -> Done {
        if !std::mem::replace(&mut self.first, false) {
            self.repr.put(", ")?;
        }
        if let Some(key) = key {
            self.repr.put(format_args!("{key}: "))?;
        }
        value.serialize(&mut *self.repr)
    }

    fn end(self) -> Done {
        self.repr.put(self.close)
    }
}

impl<'a> ser::Serializer for &'a mut Repr {
    type Ok = ();
    type Error = Stop;
    type SerializeSeq = Compound<'a>;
    type SerializeTuple = Compound<'a>;
    type SerializeTupleStruct = Compound<'a>;
    type SerializeTupleVariant = Compound<'a>;
    type SerializeMap = Compound<'a>;
    type SerializeStruct = Compound<'a>;
    type SerializeStructVariant = Compound<'a>;

    fn serialize_bool(self, v: bool) -> Done {
        self.put(v)
    }
    fn serialize_i8(self, v: i8) -> Done {
        self.put(v)
    }
    fn serialize_i16(self, v: i16) -> Done {
        self.put(v)
    }
    fn serialize_i32(self, v: i32) -> Done {
        self.put(v)
    }
    fn serialize_i64(self, v: i64) -> Done {
        self.put(v)
    }
    fn serialize_i128(self, v: i128) -> Done {
        self.put(v)
    }
    fn serialize_u8(self, v: u8) -> Done {
        self.put(v)
    }
    fn serialize_u16(self, v: u16) -> Done {
        self.put(v)
    }
    fn serialize_u32(self, v: u32) -> Done {
        self.put(v)
    }
    fn serialize_u64(self, v: u64) -> Done {
        self.put(v)
    }
    fn serialize_u128(self, v: u128) -> Done {
        self.put(v)
    }
    fn serialize_f32(self, v: f32) -> Done {
        self.put(format_args!("{v:?}"))
    }
    fn serialize_f64(self, v: f64) -> Done {
        self.put(format_args!("{v:?}"))
    }
    fn serialize_char(self, v: char) -> Done {
        self.put(format_args!("{v:?}"))
    }
    fn serialize_str(self, v: &str) -> Done {
        // Only as much of a long string as can be shown.
        let cut: String = v.chars().take(self.limit + 1).collect();
        self.put(format_args!("{cut:?}"))
    }
    fn serialize_bytes(self, v: &[u8]) -> Done {
        let mut c = Compound { repr: self, close: "]", first: true };
        c.repr.put("[")?;
        for b in v {
            c.item(None, b)?;
        }
        c.end()
    }
    fn serialize_none(self) -> Done {
        self.put("None")
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Done {
        self.put("Some(")?;
        value.serialize(&mut *self)?;
        self.put(")")
    }
    fn serialize_unit(self) -> Done {
        self.put("()")
    }
    fn serialize_unit_struct(self, name: &'static str) -> Done {
        self.put(name)
    }
    fn serialize_unit_variant(self, _: &'static str, _: u32, variant: &'static str) -> Done {
        self.put(variant)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(self, name: &'static str, value: &T) -> Done {
        self.put(format_args!("{name}("))?;
        value.serialize(&mut *self)?;
        self.put(")")
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        value: &T,
    ) -> Done {
        self.put(format_args!("{variant}("))?;
        value.serialize(&mut *self)?;
        self.put(")")
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Compound<'a>, Stop> {
        self.put("[")?;
        Ok(Compound { repr: self, close: "]", first: true })
    }
    fn serialize_tuple(self, len: usize) -> Result<Compound<'a>, Stop> {
        if std::mem::take(&mut self.bare) && len == 1 {
            return Ok(Compound { repr: self, close: "", first: true });
        }
        self.put("(")?;
        Ok(Compound { repr: self, close: if len == 1 { ",)" } else { ")" }, first: true })
    }
    fn serialize_tuple_struct(self, name: &'static str, _: usize) -> Result<Compound<'a>, Stop> {
        self.put(format_args!("{name}("))?;
        Ok(Compound { repr: self, close: ")", first: true })
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> Result<Compound<'a>, Stop> {
        self.put(format_args!("{variant}("))?;
        Ok(Compound { repr: self, close: ")", first: true })
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Compound<'a>, Stop> {
        self.put("{")?;
        Ok(Compound { repr: self, close: "}", first: true })
    }
    fn serialize_struct(self, name: &'static str, _: usize) -> Result<Compound<'a>, Stop> {
        self.put(format_args!("{name} {{ "))?;
        Ok(Compound { repr: self, close: " }", first: true })
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> Result<Compound<'a>, Stop> {
        self.put(format_args!("{variant} {{ "))?;
        Ok(Compound { repr: self, close: " }", first: true })
    }
}

/// serde's compound traits, each the same two calls here.
macro_rules! compound {
    ($($trait:ident :: $method:ident),*) => {$(
        impl ser::$trait for Compound<'_> {
            type Ok = ();
            type Error = Stop;
            fn $method<T: Serialize + ?Sized>(&mut self, value: &T) -> Done {
                self.item(None, value)
            }
            fn end(self) -> Done {
                Compound::end(self)
            }
        }
    )*};
    ($($trait:ident :: $method:ident with key),*) => {$(
        impl ser::$trait for Compound<'_> {
            type Ok = ();
            type Error = Stop;
            fn $method<T: Serialize + ?Sized>(&mut self, key: &'static str, value: &T) -> Done {
                self.item(Some(key), value)
            }
            fn end(self) -> Done {
                Compound::end(self)
            }
        }
    )*};
}

compound!(
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field
);
compound!(SerializeStruct::serialize_field with key, SerializeStructVariant::serialize_field with key);

impl ser::SerializeMap for Compound<'_> {
    type Ok = ();
    type Error = Stop;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Done {
        self.item(None, key)?;
        self.repr.put(": ")
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Done {
        value.serialize(&mut *self.repr)
    }
    fn end(self) -> Done {
        Compound::end(self)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::Serialize;

    use super::repr;

    #[derive(Serialize)]
    struct Point {
        x: i32,
        y: Option<f64>,
    }

    #[derive(Serialize)]
    enum Shape {
        Dot,
        Circle(f32),
        Line(i8, i8),
        Named { name: String },
    }

    #[derive(Serialize)]
    struct Meters(u32);

    #[test]
    fn shows_values_as_debug_does() {
        let cases: Vec<(Option<String>, String)> = vec![
            (repr(&5u8, 100), format!("{:?}", 5u8)),
            (repr(&"a \"b\"\n", 100), format!("{:?}", "a \"b\"\n")),
            (repr(&('x', 1.5f64, true), 100), format!("{:?}", ('x', 1.5f64, true))),
            (repr(&(7i64,), 100), format!("{:?}", (7i64,))),
            (repr(&vec![1, 2, 3], 100), format!("{:?}", vec![1, 2, 3])),
            (repr(&Point { x: -1, y: None }, 100), "Point { x: -1, y: None }".to_owned()),
            (repr(&Point { x: 2, y: Some(0.5) }, 100), "Point { x: 2, y: Some(0.5) }".to_owned()),
            (repr(&Shape::Dot, 100), "Dot".to_owned()),
            (repr(&Shape::Circle(2.0), 100), "Circle(2.0)".to_owned()),
            (repr(&Shape::Line(1, -1), 100), "Line(1, -1)".to_owned()),
            (repr(&Shape::Named { name: "n".into() }, 100), "Named { name: \"n\" }".to_owned()),
            (repr(&Meters(3), 100), "Meters(3)".to_owned()),
            (repr(&BTreeMap::from([(1, "a"), (2, "b")]), 100), format!("{:?}", BTreeMap::from([(1, "a"), (2, "b")]))),
            (repr(&(), 100), "()".to_owned()),
        ];
        for (got, want) in cases {
            assert_eq!(got.as_deref(), Some(want.as_str()));
        }
    }

    #[test]
    fn a_single_argument_is_shown_bare() {
        assert_eq!(super::repr_args(&(5u8,), 100).as_deref(), Some("5"));
        assert_eq!(super::repr_args(&((5u8,),), 100).as_deref(), Some("(5,)"));
        assert_eq!(super::repr_args(&(1u8, "a"), 100).as_deref(), Some("(1, \"a\")"));
    }

    #[test]
    fn cuts_long_values_without_writing_them_whole() {
        let long: Vec<u64> = (0..1_000_000).collect();
        let shown = repr(&long, 40).unwrap();
        assert!(shown.starts_with("[0, 1, 2, 3"), "{shown}");
        assert!(shown.ends_with('…') && shown.chars().count() == 41, "{shown}");
        let text = "x".repeat(1 << 20);
        let shown = repr(&text, 10).unwrap();
        assert_eq!(shown, format!("\"{}…", "x".repeat(9)));
    }
}
