//! Shared memory: an anonymous memory file (`memfd`) mapped `MAP_SHARED`,
//! so that every process holding the descriptor sees the same bytes. The
//! descriptor is what travels; each process maps it on arrival.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;

use rustix::fs::MemfdFlags;
use rustix::mm::{MapFlags, ProtFlags};

/// A shared mapping of a memory file.
#[derive(Debug)]
pub(crate) struct Mapping {
    fd: OwnedFd,
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory; what is stored in it decides
// its own synchronisation (process-shared mutexes, atomics).
unsafe impl Send for Mapping {}
// SAFETY: as above; `Mapping` itself hands out only a raw pointer.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// A new zero-filled mapping of `len` bytes.
    pub(crate) fn new(name: &str, len: usize) -> io::Result<Mapping> {
        let fd = rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC)?;
        rustix::fs::ftruncate(&fd, len as u64)?;
        Mapping::map(fd, len)
    }

    /// Maps a memory file received from another process.
    pub(crate) fn open(fd: OwnedFd) -> io::Result<Mapping> {
        let len = rustix::fs::fstat(&fd)?.st_size as usize;
        Mapping::map(fd, len)
    }

    fn map(fd: OwnedFd, len: usize) -> io::Result<Mapping> {
        if len == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "an empty shared mapping"));
        }
        // SAFETY: a fresh mapping chosen by the kernel (null hint) over a
        // file of at least `len` bytes; nothing else aliases it in this
        // process yet.
        let ptr = unsafe {
            rustix::mm::mmap(std::ptr::null_mut(), len, ProtFlags::READ | ProtFlags::WRITE, MapFlags::SHARED, &fd, 0)?
        };
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(Mapping { fd, ptr, len })
    }

    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

impl AsFd for Mapping {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: we own this mapping of `len` bytes; nobody uses the pointer
        // after the owner is gone.
        unsafe {
            let _ = rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}
