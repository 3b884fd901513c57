//! `ShareableList`: a fixed-length list of plain values in one shared
//! memory block, laid out byte for byte as Python's
//! `multiprocessing.shared_memory.ShareableList` (Python 3.9 on), so that
//! Python and Rust processes attach to the same list by name.
//!
//! The block holds, in native byte order: the item count (`i64`); the
//! items' offsets into the data area (`count + 1` of them, `i64`); the
//! data area (8 bytes per number, `bool` or `None`; a multiple of 8 per
//! string or bytes, zero-padded); each item's `struct` format, 8 bytes
//! each (`q`, `d`, `xxxxxxx?`, `xxxxxx?x`, `16s`...); and one byte per
//! item saying how to read it back (0 plain, 1 `str`, 2 `bytes`, 3 `None`).

use super::SharedMemory;
use crate::{Error, Result};

/// One value of a [`ShareableList`]: what Python's can hold.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    /// `int` (64-bit, as Python's list stores it).
    Int(i64),
    /// `float`.
    Float(f64),
    /// `bool`.
    Bool(bool),
    /// `str`.
    Str(String),
    /// `bytes`.
    Bytes(Vec<u8>),
    /// `None`.
    None,
}

macro_rules! item_from {
    ($($t:ty => $v:ident),*) => {$(
        impl From<$t> for Item {
            fn from(x: $t) -> Item {
                Item::$v(x.into())
            }
        }
    )*};
}
item_from!(i64 => Int, i32 => Int, u32 => Int, f64 => Float, bool => Bool, String => Str, &str => Str, Vec<u8> => Bytes, &[u8] => Bytes);

impl<T: Into<Item>> From<Option<T>> for Item {
    fn from(x: Option<T>) -> Item {
        x.map_or(Item::None, Into::into)
    }
}

impl std::fmt::Display for Item {
    /// As Python's `repr` of the value.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use crate::pickle::PyValue;
        let v = match self {
            Item::Int(i) => PyValue::Int(*i),
            Item::Float(x) => PyValue::Float(*x),
            Item::Bool(b) => PyValue::Bool(*b),
            Item::Str(s) => PyValue::Str(s.clone()),
            Item::Bytes(b) => PyValue::Bytes(b.clone()),
            Item::None => PyValue::None,
        };
        f.write_str(&v.repr_string())
    }
}

const WORD: usize = 8;

/// How an item is stored: its format and read-back code.
fn layout(item: &Item) -> Result<(String, u8, usize)> {
    Ok(match item {
        Item::Int(_) => ("q".into(), 0, WORD),
        Item::Float(_) => ("d".into(), 0, WORD),
        Item::Bool(_) => ("xxxxxxx?".into(), 0, WORD),
        Item::None => ("xxxxxx?x".into(), 3, WORD),
        Item::Str(s) => {
            let n = WORD * (s.len() / WORD + 1);
            (format!("{n}s"), 1, n)
        }
        Item::Bytes(b) => {
            let n = WORD * (b.len() / WORD + 1);
            (format!("{n}s"), 2, n)
        }
    })
}

/// The stored bytes of a string or bytes item: Python strips trailing
/// NULs when reading, so a value ending in one would come back changed.
fn text_bytes(item: &Item) -> Result<Option<&[u8]>> {
    let bytes = match item {
        Item::Str(s) => s.as_bytes(),
        Item::Bytes(b) => b,
        _ => return Ok(None),
    };
    if bytes.last() == Some(&0) {
        return Err(Error::ShareableList(format!(
            "{item} ends in a NUL byte, which Python's ShareableList strips when reading: it would come back changed"
        )));
    }
    Ok(Some(bytes))
}

/// A fixed-length list of [`Item`]s in a named shared memory block
/// (Python's `multiprocessing.shared_memory.ShareableList`, in the same
/// layout: a Python process attaches to ours by name, and we to its).
///
/// Items are read and written by copy, without a lock (as in Python): a
/// reader racing a writer of the same item may see a mix; guard an item
/// with a [`Lock`](crate::Lock) if several processes write it. An item can
/// change type, as long as the new value fits the room the slot was made
/// with (8 bytes for a number; for a string, its length rounded up to the
/// next multiple of 8, at least 8 more).
///
/// ```
/// # #[multiproc::main] fn main() {
/// use multiproc::{Process, shared_memory::{Item, ShareableList}};
///
/// fn double(name: String) {
///     let l = ShareableList::attach(&name).unwrap();
///     let Item::Int(n) = l.get(0).unwrap() else { panic!() };
///     l.set(0, n * 2).unwrap();
///     l.set(1, "howdy").unwrap();
/// }
///
/// let l = ShareableList::new(None, [Item::from(21), "hi".into(), Item::None]).unwrap();
/// let mut p = Process::new(double, (l.name().to_string(),));
/// p.start().unwrap();
/// p.join().unwrap();
/// assert_eq!(l.to_vec().unwrap(), [Item::Int(42), Item::Str("howdy".into()), Item::None]);
/// assert!(l.set(1, "much too long for its slot").is_err());
/// assert_eq!(l.to_string(), format!("ShareableList([42, 'howdy', None], name='{}')", &l.name()[1..]));
/// # }
/// ```
#[derive(Debug)]
pub struct ShareableList {
    shm: SharedMemory,
    len: usize,
    /// The items' offsets into the data area, and its end.
    offsets: Vec<usize>,
}

impl ShareableList {
    /// A new list of `items` in a new block named `name` (a random name
    /// with `None`), which this list owns as [`SharedMemory::create`]'s
    /// handle does.
    pub fn new<I: Into<Item>>(name: Option<&str>, items: impl IntoIterator<Item = I>) -> Result<ShareableList> {
        Self::create_with(items, |size| SharedMemory::create(name, size))
    }

    /// As [`new`](Self::new), in a block `make` creates with the size asked.
    pub(crate) fn create_with<I: Into<Item>>(
        items: impl IntoIterator<Item = I>,
        make: impl FnOnce(usize) -> Result<SharedMemory>,
    ) -> Result<ShareableList> {
        let items: Vec<Item> = items.into_iter().map(Into::into).collect();
        let layouts: Vec<(String, u8, usize)> = items.iter().map(layout).collect::<Result<_>>()?;
        for item in &items {
            text_bytes(item)?;
        }
        let mut offsets = vec![0usize];
        for (_, _, room) in &layouts {
            offsets.push(offsets.last().expect("one") + room);
        }
        let n = items.len();
        let data = offsets[n];
        // Count, offsets, data, formats, codes; at least one byte, as a
        // block cannot be empty (Python asks for the same size).
        let size = (WORD + WORD * (n + 1) + data + WORD * n + n).max(1);
        let shm = make(size)?;
        let list = ShareableList { shm, len: n, offsets };
        let mut head = Vec::with_capacity(WORD * (n + 2));
        head.extend((n as i64).to_ne_bytes());
        for o in &list.offsets {
            head.extend((*o as i64).to_ne_bytes());
        }
        list.shm.write(0, &head)?;
        for (i, item) in items.iter().enumerate() {
            list.store(i, item, &layouts[i].0, layouts[i].1)?;
        }
        Ok(list)
    }

    /// Attaches to the list in the block named `name` (made by us or by
    /// Python), checking its layout; [`Error::ShareableList`] for a block
    /// that is not one.
    pub fn attach(name: &str) -> Result<ShareableList> {
        Self::from_shm(SharedMemory::attach(name)?)
    }

    fn from_shm(shm: SharedMemory) -> Result<ShareableList> {
        let bad = |why: String| Error::ShareableList(format!("block {}: {why}", shm.name()));
        let size = shm.size();
        let word = |at: usize| -> Result<i64> {
            let mut b = [0u8; WORD];
            shm.read(at, &mut b).map_err(|_| bad(format!("too small ({size} bytes)")))?;
            Ok(i64::from_ne_bytes(b))
        };
        let n = word(0)?;
        if n < 0 || (n as u64).saturating_mul(17) > size as u64 {
            return Err(bad(format!("an item count of {n} does not fit in {size} bytes")));
        }
        let n = n as usize;
        let raw: Vec<i64> = (0..=n).map(|i| word(WORD * (i + 1))).collect::<Result<_>>()?;
        // Every offset within the block, from 0, each slot at least a word.
        let fits = |o: i64| usize::try_from(o).ok().filter(|o| *o <= size);
        let offsets: Option<Vec<usize>> = raw.into_iter().map(fits).collect();
        let ordered = offsets.as_ref().is_some_and(|o| o[0] == 0 && o.windows(2).all(|w| w[1] >= w[0] + WORD));
        let end = offsets.as_ref().and_then(|o| (WORD * (n + 2)).checked_add(o[n])?.checked_add(WORD * n + n));
        let (true, Some(end), Some(offsets)) = (ordered, end, offsets) else {
            return Err(bad("its item offsets are not a list's".into()));
        };
        if end > size {
            return Err(bad(format!("its items reach past its {size} bytes")));
        }
        Ok(ShareableList { shm, len: n, offsets })
    }

    /// The block's name (to attach elsewhere).
    pub fn name(&self) -> &str {
        self.shm.name()
    }

    /// The block underneath.
    pub fn shm(&self) -> &SharedMemory {
        &self.shm
    }

    /// How many items it holds (fixed when it was made).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn data_start(&self) -> usize {
        WORD * (self.len + 2)
    }

    fn formats_start(&self) -> usize {
        self.data_start() + self.offsets[self.len]
    }

    fn codes_start(&self) -> usize {
        self.formats_start() + WORD * self.len
    }

    fn check(&self, index: usize) -> Result<()> {
        if index >= self.len {
            return Err(Error::IndexOutOfRange { index, len: self.len });
        }
        Ok(())
    }

    fn format(&self, index: usize) -> Result<String> {
        let mut f = [0u8; WORD];
        self.shm.read(self.formats_start() + WORD * index, &mut f)?;
        let end = f.iter().position(|b| *b == 0).unwrap_or(WORD);
        String::from_utf8(f[..end].to_vec())
            .map_err(|_| Error::ShareableList(format!("item {index}: a format that is not text")))
    }

    /// Item `index`; [`Error::IndexOutOfRange`] past the end.
    pub fn get(&self, index: usize) -> Result<Item> {
        self.check(index)?;
        let format = self.format(index)?;
        let mut code = [0u8; 1];
        self.shm.read(self.codes_start() + index, &mut code)?;
        let at = self.data_start() + self.offsets[index];
        let room = self.offsets[index + 1] - self.offsets[index];
        let corrupt = || Error::ShareableList(format!("item {index}: format {format:?} with code {}", code[0]));
        let mut word = [0u8; WORD];
        Ok(match (format.as_str(), code[0]) {
            ("q", 0) => {
                self.shm.read(at, &mut word)?;
                Item::Int(i64::from_ne_bytes(word))
            }
            ("d", 0) => {
                self.shm.read(at, &mut word)?;
                Item::Float(f64::from_ne_bytes(word))
            }
            ("xxxxxxx?", 0) => {
                self.shm.read(at, &mut word)?;
                Item::Bool(word[7] != 0)
            }
            (_, 3) => Item::None,
            (f, code @ (1 | 2)) if f.ends_with('s') => {
                let n: usize = f[..f.len() - 1].parse().map_err(|_| corrupt())?;
                if n > room {
                    return Err(corrupt());
                }
                let mut b = vec![0u8; n];
                self.shm.read(at, &mut b)?;
                while b.last() == Some(&0) {
                    b.pop();
                }
                if code == 1 { Item::Str(String::from_utf8(b).map_err(|_| corrupt())?) } else { Item::Bytes(b) }
            }
            _ => return Err(corrupt()),
        })
    }

    /// Sets item `index` (Python's `l[index] = value`), which may change
    /// its type; [`Error::ShareableList`] for a string or bytes longer
    /// than the slot's room, or one ending in a NUL byte (which Python
    /// would strip).
    pub fn set(&self, index: usize, value: impl Into<Item>) -> Result<()> {
        self.check(index)?;
        let value = value.into();
        let room = self.offsets[index + 1] - self.offsets[index];
        let (format, code) = match text_bytes(&value)? {
            Some(bytes) => {
                if bytes.len() > room {
                    return Err(Error::ShareableList(format!(
                        "{value} ({} bytes) does not fit item {index}'s {room} bytes",
                        bytes.len()
                    )));
                }
                // A string slot keeps its format; another gets one of its
                // whole room, as Python does.
                let current = self.format(index)?;
                (
                    if current.ends_with('s') { current } else { format!("{room}s") },
                    if matches!(value, Item::Str(_)) { 1 } else { 2 },
                )
            }
            None => {
                let (f, c, _) = layout(&value)?;
                (f, c)
            }
        };
        self.store(index, &value, &format, code)
    }

    /// Writes `value` with `format` and read-back `code` at `index`.
    fn store(&self, index: usize, value: &Item, format: &str, code: u8) -> Result<()> {
        let at = self.data_start() + self.offsets[index];
        let mut f = [0u8; WORD];
        f[..format.len()].copy_from_slice(format.as_bytes());
        self.shm.write(self.formats_start() + WORD * index, &f)?;
        self.shm.write(self.codes_start() + index, &[code])?;
        match value {
            Item::Int(i) => self.shm.write(at, &i.to_ne_bytes()),
            Item::Float(x) => self.shm.write(at, &x.to_ne_bytes()),
            Item::Bool(b) => self.shm.write(at, &[0, 0, 0, 0, 0, 0, 0, u8::from(*b)]),
            Item::None => self.shm.write(at, &[0; WORD]),
            Item::Str(_) | Item::Bytes(_) => {
                let bytes = text_bytes(value)?.expect("text");
                let n: usize = format[..format.len() - 1].parse().expect("our own format");
                let mut padded = bytes.to_vec();
                padded.resize(n, 0);
                self.shm.write(at, &padded)
            }
        }
    }

    /// Every item, in order.
    pub fn to_vec(&self) -> Result<Vec<Item>> {
        (0..self.len).map(|i| self.get(i)).collect()
    }

    /// How many items equal `value`.
    pub fn count(&self, value: &Item) -> Result<usize> {
        Ok(self.to_vec()?.iter().filter(|v| *v == value).count())
    }

    /// Where the first item equal to `value` is, if any.
    pub fn index(&self, value: &Item) -> Result<Option<usize>> {
        Ok(self.to_vec()?.iter().position(|v| v == value))
    }
}

impl std::fmt::Display for ShareableList {
    /// As Python's `repr`: `ShareableList([1, 'a'], name='psm_...')`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let items = match self.to_vec() {
            Ok(items) => items.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
            Err(e) => format!("<{e}>"),
        };
        write!(f, "ShareableList([{items}], name='{}')", self.name().trim_start_matches('/'))
    }
}
