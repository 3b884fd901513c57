//! Shared memory: an anonymous memory file (`memfd`) mapped `MAP_SHARED`,
//! so that every process holding the descriptor sees the same bytes. The
//! descriptor is what travels; each process maps it on arrival.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;

use rustix::fs::{MemfdFlags, Mode};
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

    /// A new zero-filled mapping of `len` bytes with a name others can open
    /// (`shm_open`); fails if the name exists.
    pub(crate) fn create_named(name: &str, len: usize) -> io::Result<Mapping> {
        use rustix::shm::OFlags;
        let fd = rustix::shm::open(name, OFlags::CREATE | OFlags::EXCL | OFlags::RDWR, Mode::from_raw_mode(0o600))?;
        if let Err(e) = rustix::fs::ftruncate(&fd, len as u64) {
            let _ = rustix::shm::unlink(name);
            return Err(e.into());
        }
        Mapping::map(fd, len).inspect_err(|_| {
            let _ = rustix::shm::unlink(name);
        })
    }

    /// Maps the named memory another process created.
    pub(crate) fn open_named(name: &str) -> io::Result<Mapping> {
        let fd = rustix::shm::open(name, rustix::shm::OFlags::RDWR, Mode::empty())?;
        Mapping::open(fd)
    }

    /// Removes a name made by [`create_named`](Self::create_named); the
    /// memory lives on while anyone maps it.
    pub(crate) fn unlink_named(name: &str) -> io::Result<()> {
        Ok(rustix::shm::unlink(name)?)
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

    /// Gives the memory of `len` bytes at `offset` back to the system: they
    /// read as zeros afterwards, and cost nothing until written again.
    pub(crate) fn release(&self, offset: usize, len: usize) -> io::Result<()> {
        use rustix::fs::FallocateFlags;
        let flags = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
        Ok(rustix::fs::fallocate(&self.fd, flags, offset as u64, len as u64)?)
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
