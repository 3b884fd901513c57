//! Where a ring lives, and the few primitives its protocol needs from
//! there: atomic words, a lock, sleeping on a word, fences, and copying
//! bytes. [`Mapped`] is the real thing (shared memory, robust pthread
//! mutexes, futexes, `membarrier`); under `--cfg multiproc_loom`,
//! `model::Modeled` provides the same on loom's checked primitives, so that
//! the protocol in `ring/mod.rs` is model-checked as it is, not a copy of it.

use std::io;
use std::sync::atomic::Ordering;
use std::time::Instant;

/// An atomic 64-bit word (std's or loom's).
pub(crate) trait Word64: Send + Sync {
    fn new(value: u64) -> Self;
    fn load(&self, order: Ordering) -> u64;
    fn store(&self, value: u64, order: Ordering);
    fn fetch_max(&self, value: u64, order: Ordering) -> u64;
    fn compare_exchange(&self, old: u64, new: u64, ok: Ordering, fail: Ordering) -> Result<u64, u64>;
}

/// An atomic 32-bit word (std's or loom's).
pub(crate) trait Word32: Send + Sync {
    fn load(&self, order: Ordering) -> u32;
    fn fetch_add(&self, value: u32, order: Ordering) -> u32;
    fn fetch_sub(&self, value: u32, order: Ordering) -> u32;
}

macro_rules! words {
    ($u64:ty, $u32:ty) => {
        impl Word64 for $u64 {
            fn new(value: u64) -> Self {
                <$u64>::new(value)
            }
            fn load(&self, order: Ordering) -> u64 {
                <$u64>::load(self, order)
            }
            fn store(&self, value: u64, order: Ordering) {
                <$u64>::store(self, value, order)
            }
            fn fetch_max(&self, value: u64, order: Ordering) -> u64 {
                <$u64>::fetch_max(self, value, order)
            }
            fn compare_exchange(&self, old: u64, new: u64, ok: Ordering, fail: Ordering) -> Result<u64, u64> {
                <$u64>::compare_exchange(self, old, new, ok, fail)
            }
        }
        impl Word32 for $u32 {
            fn load(&self, order: Ordering) -> u32 {
                <$u32>::load(self, order)
            }
            fn fetch_add(&self, value: u32, order: Ordering) -> u32 {
                <$u32>::fetch_add(self, value, order)
            }
            fn fetch_sub(&self, value: u32, order: Ordering) -> u32 {
                <$u32>::fetch_sub(self, value, order)
            }
        }
    };
}

words!(std::sync::atomic::AtomicU64, std::sync::atomic::AtomicU32);
#[cfg(multiproc_loom)]
words!(loom::sync::atomic::AtomicU64, loom::sync::atomic::AtomicU32);

/// The memory a ring lives in and the primitives that work there.
pub(crate) trait Medium: Send + Sync + Sized {
    type U64: Word64;
    type U32: Word32;
    type Lock: Send + Sync;
    /// A held lock; dropping it unlocks.
    type Guard<'a>
    where
        Self: 'a;

    fn header(&self) -> &super::Header<Self>;
    /// Takes `lock`; true alongside when its previous holder died holding it.
    fn lock<'a>(&'a self, lock: &'a Self::Lock) -> io::Result<(Self::Guard<'a>, bool)>;
    /// Copies `bytes` to ring offset `at` (wrapping at the capacity).
    fn write(&self, at: u64, bytes: &[u8]);
    /// Copies from ring offset `at` (wrapping) into `out`.
    fn read(&self, at: u64, out: &mut [u8]);
    /// The `len` bytes at ring offset `at` (wrapping), in a new vector.
    fn read_vec(&self, at: u64, len: usize) -> Vec<u8>;
    /// Gives back the memory of `len` bytes at ring offset `at` (within one
    /// lap): they read as zeros afterwards.
    fn release(&self, at: u64, len: u64) -> io::Result<()>;
    /// Sleeps while `word` holds `seen`, until woken or `deadline`; false
    /// only when the deadline passed.
    fn sleep(&self, word: &Self::U32, seen: u32, deadline: Option<Instant>) -> io::Result<bool>;
    /// Bumps `word` and wakes one sleeper on it, or all.
    fn wake(&self, word: &Self::U32, all: bool);
    /// The waker's fence (store, then look for sleepers); see `sys::barrier`.
    fn light_fence(&self);
    /// The sleeper's fence (count itself, then look for news); false if a
    /// waker may miss the sleeper, who must then look again now and then.
    fn heavy_fence(&self) -> bool;
    /// How many times a waiter looks before it sleeps.
    fn spins(&self) -> u32;
}

/// The real medium: a memory file mapped in this process.
#[derive(Debug)]
pub(crate) struct Mapped {
    pub(super) map: super::super::shm::Mapping,
}

/// Where the ring's bytes start in the memory file: a page after its
/// start, so that the data's pages can be given back without the header's.
pub(crate) const DATA: usize = 4096;
const _: () = assert!(size_of::<super::Header<Mapped>>() <= DATA);

/// How many times a waiter looks at the indices before it sleeps.
const SPIN_WAITS: u32 = 2000;

impl Mapped {
    fn data(&self) -> *mut u8 {
        // SAFETY: the data follows the header inside the mapping.
        unsafe { self.map.as_ptr().add(DATA) }
    }

    fn cap(&self) -> usize {
        self.header().geometry.capacity as usize
    }
}

/// A robust mutex of the ring, held until dropped.
pub(crate) struct Held(*mut libc::pthread_mutex_t);

impl Drop for Held {
    fn drop(&mut self) {
        // SAFETY: this thread locked it in `Mapped::lock`.
        let _ = unsafe { super::super::mutex::unlock(self.0) };
    }
}

impl Medium for Mapped {
    type U64 = std::sync::atomic::AtomicU64;
    type U32 = std::sync::atomic::AtomicU32;
    type Lock = libc::pthread_mutex_t;
    type Guard<'a> = Held;

    fn header(&self) -> &super::Header<Self> {
        // SAFETY: the mapping holds an initialised header while `self`
        // lives (checked by `Ring::open`). Shared access goes through
        // atomics and pthread objects, which are meant to be used through
        // shared pointers; the geometry never changes.
        unsafe { &*self.map.as_ptr().cast::<super::Header<Self>>() }
    }

    fn lock<'a>(&'a self, lock: &'a Self::Lock) -> io::Result<(Held, bool)> {
        use super::super::mutex::{self, Got};
        let m = (&raw const *lock).cast_mut();
        // SAFETY: the mutex lives in the mapping, initialised by the creator.
        match unsafe { mutex::lock(m, None) }? {
            Some(got) => Ok((Held(m), got == Got::OwnerDied)),
            None => Err(io::Error::other("a queue lock without a deadline was not taken")),
        }
    }

    fn write(&self, at: u64, bytes: &[u8]) {
        let (cap, start) = (self.cap(), at as usize);
        let first = bytes.len().min(cap - start);
        // SAFETY: both ranges lie inside the data area of `cap` bytes
        // (`at < cap`, `bytes.len() <= cap`); the protocol gives this
        // writer the range alone (see `Ring`'s invariants).
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.data().add(start), first);
            std::ptr::copy_nonoverlapping(bytes.as_ptr().add(first), self.data(), bytes.len() - first);
        }
    }

    fn read(&self, at: u64, out: &mut [u8]) {
        let (cap, start) = (self.cap(), at as usize);
        let first = out.len().min(cap - start);
        // SAFETY: as in `write`; no writer touches published bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(self.data().add(start), out.as_mut_ptr(), first);
            std::ptr::copy_nonoverlapping(self.data(), out.as_mut_ptr().add(first), out.len() - first);
        }
    }

    fn read_vec(&self, at: u64, len: usize) -> Vec<u8> {
        let (cap, start) = (self.cap(), at as usize);
        let first = len.min(cap - start);
        let mut out = Vec::with_capacity(len);
        // SAFETY: as in `read`; gathered without zeroing the vector first.
        unsafe {
            out.extend_from_slice(std::slice::from_raw_parts(self.data().add(start), first));
            out.extend_from_slice(std::slice::from_raw_parts(self.data(), len - first));
        }
        out
    }

    fn release(&self, at: u64, len: u64) -> io::Result<()> {
        self.map.release(DATA + at as usize, len as usize)
    }

    fn sleep(&self, word: &Self::U32, seen: u32, deadline: Option<Instant>) -> io::Result<bool> {
        super::super::futex::wait(word, seen, deadline)
    }

    fn wake(&self, word: &Self::U32, all: bool) {
        super::super::futex::wake(word, all)
    }

    fn light_fence(&self) {
        super::super::barrier::light()
    }

    fn heavy_fence(&self) -> bool {
        super::super::barrier::heavy()
    }

    fn spins(&self) -> u32 {
        SPIN_WAITS
    }
}
