//! Named shared memory blocks (Python's
//! `multiprocessing.shared_memory.SharedMemory`), lists of plain values
//! laid out in one as Python's `ShareableList` lays them out, and
//! Python's `SharedMemoryManager`, which frees the blocks it made when it
//! ends, however its program ends.

mod list;
mod manager;

pub use list::{Item, ShareableList};
pub use manager::SharedMemoryManager;
pub(crate) use manager::{TRACKER_FLAG, serve_tracker};

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::sys::shm::Mapping;
use crate::{Error, Handle, Result};

/// A block of shared memory with a name that other processes can attach to.
///
/// The handle that created the block owns its *name*: dropping it (or
/// calling [`unlink`](Self::unlink)) removes the name, while the memory
/// itself lives on as long as some process still maps it. Handles made by
/// [`attach`](Self::attach), or received as an argument, never remove the
/// name. (Python's resource tracker removes it when any attaching process
/// exits, pulling it from under the others.)
///
/// The bytes can change under you at any time (other processes write
/// them), so they are read and written by copy, not borrowed as slices.
///
/// ```
/// # #[multiproc::main] fn main() {
/// use multiproc::{Process, SharedMemory};
///
/// fn write_greeting(name: String) {
///     let shm = SharedMemory::attach(&name).unwrap();
///     shm.write(0, b"hello").unwrap();
/// }
///
/// let shm = SharedMemory::create(None, 64).unwrap();
/// let mut p = Process::new(write_greeting, (shm.name().to_string(),));
/// p.start().unwrap();
/// p.join().unwrap();
/// let mut buf = [0u8; 5];
/// shm.read(0, &mut buf).unwrap();
/// assert_eq!(&buf, b"hello");
/// # }
/// ```
#[derive(Debug)]
pub struct SharedMemory {
    name: String,
    map: Mapping,
    owner: bool,
    unlinked: AtomicBool,
}

fn random_name() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    format!("/mp_{}_{}_{:x}", crate::os::getpid(), COUNTER.fetch_add(1, Ordering::Relaxed), nanos)
}

fn posix_name(name: &str) -> Result<String> {
    let bare = name.strip_prefix('/').unwrap_or(name);
    if bare.is_empty() || bare.contains('/') || bare.contains('\0') || bare.len() > 250 {
        return Err(Error::InvalidName(name.to_owned()));
    }
    Ok(format!("/{bare}"))
}

impl SharedMemory {
    /// Creates a zero-filled block of `size` bytes named `name` (a fresh
    /// random name with `None`); fails if the name is taken.
    pub fn create(name: Option<&str>, size: usize) -> Result<Self> {
        if size == 0 {
            return Err(Error::InvalidSize);
        }
        let name = match name {
            Some(n) => posix_name(n)?,
            None => random_name(),
        };
        let map =
            Mapping::create_named(&name, size).map_err(|source| Error::Io { context: "shm_open (create)", source })?;
        Ok(SharedMemory { name, map, owner: true, unlinked: AtomicBool::new(false) })
    }

    /// Hands the name to someone else (a [`SharedMemoryManager`]): this
    /// handle no longer removes it when dropped.
    pub(crate) fn disown(&mut self) {
        self.owner = false;
    }

    /// Attaches to the block another process created.
    ///
    /// ```
    /// let err = multiproc::SharedMemory::attach("no-such-block").unwrap_err();
    /// assert!(err.to_string().contains("shm_open"));
    /// ```
    pub fn attach(name: &str) -> Result<Self> {
        let name = posix_name(name)?;
        let map = Mapping::open_named(&name).map_err(|source| Error::Io { context: "shm_open (attach)", source })?;
        Ok(SharedMemory { name, map, owner: false, unlinked: AtomicBool::new(false) })
    }

    /// Its name, as `attach` takes it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its size in bytes.
    pub fn size(&self) -> usize {
        self.map.len()
    }

    /// Copies `buf.len()` bytes from `offset` into `buf`.
    pub fn read(&self, offset: usize, buf: &mut [u8]) -> Result<()> {
        let at = self.range(offset, buf.len())?;
        // SAFETY: the range lies inside the live mapping; volatile copies
        // because other processes may write these bytes at any time.
        unsafe {
            let src = self.map.as_ptr().add(at);
            for (i, b) in buf.iter_mut().enumerate() {
                *b = std::ptr::read_volatile(src.add(i));
            }
        }
        Ok(())
    }

    /// Copies `bytes` into the block at `offset`.
    pub fn write(&self, offset: usize, bytes: &[u8]) -> Result<()> {
        let at = self.range(offset, bytes.len())?;
        // SAFETY: as in `read`.
        unsafe {
            let dst = self.map.as_ptr().add(at);
            for (i, b) in bytes.iter().enumerate() {
                std::ptr::write_volatile(dst.add(i), *b);
            }
        }
        Ok(())
    }

    /// The start of the mapping, for code that synchronises access itself.
    pub fn as_ptr(&self) -> *mut u8 {
        self.map.as_ptr()
    }

    fn range(&self, offset: usize, len: usize) -> Result<usize> {
        match offset.checked_add(len) {
            Some(end) if end <= self.map.len() => Ok(offset),
            _ => Err(Error::IndexOutOfRange { index: offset.saturating_add(len), len: self.map.len() }),
        }
    }

    /// Removes the name now (Python's `unlink`); processes that mapped the
    /// block keep it. Calling it twice is harmless.
    ///
    /// ```
    /// let shm = multiproc::SharedMemory::create(None, 16).unwrap();
    /// shm.unlink().unwrap();
    /// assert!(multiproc::SharedMemory::attach(shm.name()).is_err());
    /// ```
    pub fn unlink(&self) -> Result<()> {
        if self.unlinked.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        match Mapping::unlink_named(&self.name) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(Error::Io { context: "shm_unlink", source }),
        }
    }
}

impl Drop for SharedMemory {
    fn drop(&mut self) {
        if self.owner {
            let _ = self.unlink();
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Wire {
    name: String,
    memory: Handle,
}

/// It travels as its memory (and name); the receiver is never the owner.
impl Serialize for SharedMemory {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        Wire { name: self.name.clone(), memory: crate::reduction::share(&self.map)? }.serialize(s)
    }
}

impl<'de> Deserialize<'de> for SharedMemory {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        use serde::de::Error as _;
        let w = Wire::deserialize(d)?;
        let map = Mapping::open(w.memory.into_owned_fd()).map_err(D::Error::custom)?;
        Ok(SharedMemory { name: w.name, map, owner: false, unlinked: AtomicBool::new(false) })
    }
}
