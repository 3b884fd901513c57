//! Where a ring lives, and the few primitives its protocol needs from
//! there: atomic words, a lock, sleeping on a word, fences, and copying
//! bytes. [`Mapped`] is the real thing (shared memory, robust pthread
//! mutexes, futexes, `membarrier`); under `--cfg multiproc_loom`,
//! `model::Modeled` provides the same on loom's checked primitives, so that
//! the protocol in `ring/mod.rs` is model-checked as it is, not a copy of it.

use std::io;

use super::super::medium::{Real, Waits};

/// The memory a ring lives in and the primitives that work there.
pub(crate) trait Medium: Waits {
    fn header(&self) -> &super::Header<Self>;
    /// Copies `bytes` to ring offset `at` (wrapping at the capacity).
    fn write(&self, at: u64, bytes: &[u8]);
    /// Copies from ring offset `at` (wrapping) into `out`.
    fn read(&self, at: u64, out: &mut [u8]);
    /// The `len` bytes at ring offset `at` (wrapping), in a new vector.
    fn read_vec(&self, at: u64, len: usize) -> Vec<u8>;
    /// Gives back the memory of `len` bytes at ring offset `at` (within one
    /// lap): they read as zeros afterwards.
    fn release(&self, at: u64, len: u64) -> io::Result<()>;
    /// The waker's fence (store, then look for sleepers); see `sys::barrier`.
    fn light_fence(&self);
    /// A full fence on this side alone (std's or loom's): for a handshake
    /// whose sleeping side runs too often for [`heavy_fence`](Self::heavy_fence).
    fn full_fence(&self);
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

// SAFETY: the ring's locks live in its header, in the mapping that
// `Mapped` keeps, initialised by `Ring::new`.
unsafe impl Real for Mapped {}

impl Medium for Mapped {
    fn header(&self) -> &super::Header<Self> {
        // SAFETY: the mapping holds an initialised header while `self`
        // lives (checked by `Ring::open`). Shared access goes through
        // atomics and pthread objects, which are meant to be used through
        // shared pointers; the geometry never changes.
        unsafe { &*self.map.as_ptr().cast::<super::Header<Self>>() }
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

    fn light_fence(&self) {
        super::super::barrier::light()
    }

    fn heavy_fence(&self) -> bool {
        super::super::barrier::heavy()
    }

    fn full_fence(&self) {
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
    }

    fn spins(&self) -> u32 {
        SPIN_WAITS
    }
}
