//! `Value` and `Array`: numbers in shared memory (Python's
//! `multiprocessing.Value`, `Array`, `RawValue`, `RawArray`).
//!
//! Every element is read and written with atomic operations, so processes
//! that share it never race in the Rust sense; the synchronized forms add
//! an [`RLock`] for compound updates (`v += 1` is a read and a write).
//!
//! Python's typecodes map to Rust types: `'b'` i8, `'B'` u8, `'h'` i16,
//! `'H'` u16, `'i'` i32, `'I'` u32, `'l'`/`'q'` i64, `'L'`/`'Q'` u64,
//! `'f'` f32, `'d'` f64, and `bool`.

use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};

use crate::sys::shm::Mapping;
use crate::{Error, Handle, RLock, Result};

mod sealed {
    pub trait Sealed {}
}

/// A plain number type that can live in shared memory.
pub trait Shareable: Copy + Send + Sync + std::fmt::Debug + 'static + sealed::Sealed {
    /// Python's typecode for it.
    const TYPECODE: char;
    /// Reads the element at `p`.
    ///
    /// # Safety
    /// `p` is aligned for `Self` and points into a live shared mapping.
    #[doc(hidden)]
    unsafe fn load(p: *mut u8) -> Self;
    /// Writes the element at `p`.
    ///
    /// # Safety
    /// As for `load`.
    #[doc(hidden)]
    unsafe fn store(p: *mut u8, v: Self);
}

macro_rules! shareable {
    ($($t:ty => $atomic:ty, $code:expr, |$v:ident| $to:expr, |$b:ident| $from:expr;)*) => {$(
        impl sealed::Sealed for $t {}
        impl Shareable for $t {
            const TYPECODE: char = $code;
            unsafe fn load(p: *mut u8) -> Self {
                // SAFETY: aligned and live per the caller; only ever accessed
                // atomically.
                let $b = unsafe { <$atomic>::from_ptr(p.cast()) }.load(Ordering::SeqCst);
                $from
            }
            unsafe fn store(p: *mut u8, $v: Self) {
                // SAFETY: as in `load`.
                unsafe { <$atomic>::from_ptr(p.cast()) }.store($to, Ordering::SeqCst)
            }
        }
    )*};
}

use std::sync::atomic::{
    AtomicBool, AtomicI8, AtomicI16, AtomicI32, AtomicI64, AtomicU8, AtomicU16, AtomicU32, AtomicU64,
};
shareable! {
    i8 => AtomicI8, 'b', |v| v, |b| b;
    u8 => AtomicU8, 'B', |v| v, |b| b;
    i16 => AtomicI16, 'h', |v| v, |b| b;
    u16 => AtomicU16, 'H', |v| v, |b| b;
    i32 => AtomicI32, 'i', |v| v, |b| b;
    u32 => AtomicU32, 'I', |v| v, |b| b;
    i64 => AtomicI64, 'q', |v| v, |b| b;
    u64 => AtomicU64, 'Q', |v| v, |b| b;
    f32 => AtomicU32, 'f', |v| v.to_bits(), |b| f32::from_bits(b);
    f64 => AtomicU64, 'd', |v| v.to_bits(), |b| f64::from_bits(b);
    bool => AtomicBool, '?', |v| v, |b| b;
}

/// Elements in a shared mapping.
#[derive(Debug)]
struct Cells<T> {
    map: Arc<Mapping>,
    len: usize,
    _t: PhantomData<T>,
}

impl<T> Clone for Cells<T> {
    fn clone(&self) -> Self {
        Cells { map: self.map.clone(), len: self.len, _t: PhantomData }
    }
}

impl<T: Shareable> Cells<T> {
    fn new(values: &[T]) -> Result<Self> {
        let bytes = std::mem::size_of_val(values).max(1);
        let map = Mapping::new("multiproc-array", bytes)
            .map_err(|source| Error::Io { context: "shared memory for a value", source })?;
        let cells = Cells { map: Arc::new(map), len: values.len(), _t: PhantomData };
        for (i, v) in values.iter().enumerate() {
            cells.set(i, *v);
        }
        Ok(cells)
    }

    fn get(&self, i: usize) -> Option<T> {
        // SAFETY: i < len, so the element lies inside the page-aligned
        // mapping at a multiple of its size: aligned and live.
        (i < self.len).then(|| unsafe { T::load(self.map.as_ptr().add(i * size_of::<T>())) })
    }

    fn set(&self, i: usize, v: T) -> bool {
        if i >= self.len {
            return false;
        }
        // SAFETY: as in `get`.
        unsafe { T::store(self.map.as_ptr().add(i * size_of::<T>()), v) };
        true
    }

    fn out_of_range(&self, index: usize) -> Error {
        Error::IndexOutOfRange { index, len: self.len }
    }

    fn set_checked(&self, i: usize, v: T) -> Result<()> {
        if self.set(i, v) { Ok(()) } else { Err(self.out_of_range(i)) }
    }

    fn to_vec(&self) -> Vec<T> {
        (0..self.len).filter_map(|i| self.get(i)).collect()
    }
}

#[derive(Serialize, Deserialize)]
struct CellsWire {
    memory: Handle,
    len: usize,
    typecode: char,
}

impl<T: Shareable> Serialize for Cells<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        CellsWire { memory: crate::reduction::share(&*self.map)?, len: self.len, typecode: T::TYPECODE }.serialize(s)
    }
}

impl<'de, T: Shareable> Deserialize<'de> for Cells<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        use serde::de::Error as _;
        let w = CellsWire::deserialize(d)?;
        if w.typecode != T::TYPECODE {
            return Err(D::Error::custom(format!(
                "shared values of typecode {:?} arrived as {:?}",
                w.typecode,
                T::TYPECODE
            )));
        }
        let map = Mapping::open(w.memory.into_owned_fd()).map_err(D::Error::custom)?;
        if map.len() < w.len * size_of::<T>() {
            return Err(D::Error::custom("the shared memory is smaller than the array"));
        }
        Ok(Cells { map: Arc::new(map), len: w.len, _t: PhantomData })
    }
}

/// A number in shared memory with its own lock (Python's
/// `multiprocessing.Value`).
///
/// ```
/// # #[multiproc::main] fn main() {
/// use multiproc::{Process, Value};
///
/// fn add(v: Value<i32>, n: i32) {
///     for _ in 0..10 {
///         v.update(|x| x + n).unwrap();
///     }
/// }
///
/// let v = Value::new(0i32).unwrap();
/// let mut a = Process::new(add, (v.clone(), 1));
/// let mut b = Process::new(add, (v.clone(), 3));
/// a.start().unwrap();
/// b.start().unwrap();
/// a.join().unwrap();
/// b.join().unwrap();
/// assert_eq!(v.get(), 40);
/// # }
/// ```
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(bound = "")]
pub struct Value<T: Shareable> {
    #[serde(deserialize_with = "one_cell")]
    cells: Cells<T>,
    lock: RLock,
}

/// A value's memory must hold exactly one element.
fn one_cell<'de, D: serde::Deserializer<'de>, T: Shareable>(d: D) -> std::result::Result<Cells<T>, D::Error> {
    use serde::de::Error as _;
    let cells = Cells::<T>::deserialize(d)?;
    if cells.len != 1 {
        return Err(D::Error::custom(format!("a shared value arrived with {} elements", cells.len)));
    }
    Ok(cells)
}

impl<T: Shareable> Value<T> {
    /// A shared value starting at `v`.
    pub fn new(v: T) -> Result<Self> {
        Ok(Value { cells: Cells::new(&[v])?, lock: RLock::new()? })
    }

    /// Reads it (atomically; take the lock for a read-modify-write).
    pub fn get(&self) -> T {
        self.cells.get(0).expect("a value has one element")
    }

    /// Writes it.
    pub fn set(&self, v: T) {
        self.cells.set(0, v);
    }

    /// Its lock (Python's `get_lock()`), for updates that span several
    /// operations.
    pub fn get_lock(&self) -> &RLock {
        &self.lock
    }

    /// Replaces the value with `f(value)` under the lock; returns the new
    /// value.
    pub fn update(&self, f: impl FnOnce(T) -> T) -> Result<T> {
        let _held = self.lock.lock()?;
        let new = f(self.get());
        self.set(new);
        Ok(new)
    }

    /// Python's typecode for `T`.
    pub fn typecode(&self) -> char {
        T::TYPECODE
    }
}

/// A number in shared memory without a lock (Python's `RawValue`): each
/// read and write is atomic, compound updates are not.
///
/// ```
/// let v = multiproc::RawValue::new(2.5f64).unwrap();
/// v.set(v.get() * 2.0);
/// assert_eq!(v.get(), 5.0);
/// ```
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(bound = "")]
pub struct RawValue<T: Shareable> {
    #[serde(deserialize_with = "one_cell")]
    cells: Cells<T>,
}

impl<T: Shareable> RawValue<T> {
    /// A shared value starting at `v`.
    pub fn new(v: T) -> Result<Self> {
        Ok(RawValue { cells: Cells::new(&[v])? })
    }

    /// Reads it.
    pub fn get(&self) -> T {
        self.cells.get(0).expect("a value has one element")
    }

    /// Writes it.
    pub fn set(&self, v: T) {
        self.cells.set(0, v);
    }
}

/// A fixed-length array of numbers in shared memory with its own lock
/// (Python's `multiprocessing.Array`).
///
/// ```
/// let a = multiproc::Array::new(&[1i32, 2, 3, 4]).unwrap();
/// assert_eq!(a.len(), 4);
/// a.set(0, 10).unwrap();
/// assert_eq!(a.get(0), Some(10));
/// assert_eq!(a.get(4), None);
/// assert!(a.set(4, 0).is_err());
/// assert_eq!(a.to_vec(), [10, 2, 3, 4]);
/// ```
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(bound = "")]
pub struct Array<T: Shareable> {
    cells: Cells<T>,
    lock: RLock,
}

impl<T: Shareable> Array<T> {
    /// A shared array holding `values`.
    pub fn new(values: &[T]) -> Result<Self> {
        Ok(Array { cells: Cells::new(values)?, lock: RLock::new()? })
    }

    /// Its length.
    pub fn len(&self) -> usize {
        self.cells.len
    }

    /// Whether it has no elements.
    pub fn is_empty(&self) -> bool {
        self.cells.len == 0
    }

    /// Element `i`, if there is one.
    pub fn get(&self, i: usize) -> Option<T> {
        self.cells.get(i)
    }

    /// Writes element `i`; [`Error::IndexOutOfRange`] past the end.
    pub fn set(&self, i: usize, v: T) -> Result<()> {
        self.cells.set_checked(i, v)
    }

    /// A copy of all elements (taken under the lock, so it is consistent
    /// with `update`s).
    pub fn to_vec(&self) -> Vec<T> {
        let _held = self.lock.lock();
        self.cells.to_vec()
    }

    /// Its lock (Python's `get_lock()`).
    pub fn get_lock(&self) -> &RLock {
        &self.lock
    }

    /// Replaces element `i` with `f(element)` under the lock.
    pub fn update(&self, i: usize, f: impl FnOnce(T) -> T) -> Result<T> {
        let _held = self.lock.lock()?;
        let old = self.get(i).ok_or_else(|| self.cells.out_of_range(i))?;
        let new = f(old);
        self.set(i, new)?;
        Ok(new)
    }
}

/// A fixed-length array in shared memory without a lock (Python's
/// `RawArray`).
///
/// ```
/// let a = multiproc::RawArray::new(&[0u8; 4]).unwrap();
/// a.set(3, 7).unwrap();
/// assert_eq!(a.to_vec(), [0, 0, 0, 7]);
/// ```
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(bound = "")]
pub struct RawArray<T: Shareable> {
    cells: Cells<T>,
}

impl<T: Shareable> RawArray<T> {
    /// A shared array holding `values`.
    pub fn new(values: &[T]) -> Result<Self> {
        Ok(RawArray { cells: Cells::new(values)? })
    }

    /// Its length.
    pub fn len(&self) -> usize {
        self.cells.len
    }

    /// Whether it has no elements.
    pub fn is_empty(&self) -> bool {
        self.cells.len == 0
    }

    /// Element `i`, if there is one.
    pub fn get(&self, i: usize) -> Option<T> {
        self.cells.get(i)
    }

    /// Writes element `i`; [`Error::IndexOutOfRange`] past the end.
    pub fn set(&self, i: usize, v: T) -> Result<()> {
        self.cells.set_checked(i, v)
    }

    /// A copy of all elements.
    pub fn to_vec(&self) -> Vec<T> {
        self.cells.to_vec()
    }
}
