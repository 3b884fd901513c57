//! Shared memory: an anonymous memory file (`memfd`) mapped `MAP_SHARED`,
//! so that every process holding the descriptor sees the same bytes. The
//! descriptor is what travels; each process maps it on arrival.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;

use rustix::fs::{MemfdFlags, Mode};
use rustix::mm::{MapFlags, ProtFlags};

/// Maps the first `len` bytes of `fd` shared, where the kernel chooses,
/// and keeps them out of forked children when `private` (a payload's file:
/// a child has no use for it, and one mapped writable cannot be sealed).
///
/// # Safety
/// `fd` must be at least `len` bytes long while the mapping lives, and
/// whatever is stored there decides its own synchronisation.
unsafe fn map_shared(fd: BorrowedFd<'_>, len: usize, prot: ProtFlags, private: bool) -> io::Result<NonNull<u8>> {
    // SAFETY: a fresh mapping (null hint) that aliases nothing of ours; the
    // file's length is the caller's promise.
    let ptr = unsafe { rustix::mm::mmap(std::ptr::null_mut(), len, prot, MapFlags::SHARED, fd, 0)? };
    if private {
        // SAFETY: the mapping just made, whole; the advice only keeps it
        // out of children.
        let _ = unsafe { rustix::mm::madvise(ptr, len, rustix::mm::Advice::LinuxDontFork) };
    }
    NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned null"))
}

/// Unmaps what [`map_shared`] mapped.
///
/// # Safety
/// `ptr` and `len` are one such mapping, unmapped once, and nothing uses
/// it afterwards.
unsafe fn unmap(ptr: *mut u8, len: usize) {
    // SAFETY: the caller's promise.
    let _ = unsafe { rustix::mm::munmap(ptr.cast(), len) };
}

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
        // SAFETY: the file is at least `len` bytes long (its creator sized
        // it; shared files are never shrunk); what lives in it is plain
        // shared memory with its own synchronisation.
        let ptr = unsafe { map_shared(fd.as_fd(), len, ProtFlags::READ | ProtFlags::WRITE, false)? };
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
        unsafe { unmap(self.ptr.as_ptr(), self.len) }
    }
}

/// Writes at least this long go through the file (`pwrite`) rather than
/// through the mapping: the kernel then fills each new page as it adds it
/// to the file, where a write through the mapping first has it zero the
/// page, map it here (and unmap it at the end). For 64 MiB on the
/// project's machine: 24 ms against 41 ms, and 2 ms against 5 ms to unmap.
const WRITE_AT: usize = 256 << 10;

/// A memory file being filled with one message's bytes, to be handed over
/// sealed: growing it remaps, never copies (the bytes written so far stay
/// in the file), and pages past the end cost nothing until written.
#[derive(Debug)]
pub(crate) struct SealedWriter {
    fd: OwnedFd,
    ptr: NonNull<u8>,
    cap: usize,
    len: usize,
}

impl SealedWriter {
    /// An empty memory file with room for `cap` bytes before it grows.
    pub(crate) fn new(cap: usize) -> io::Result<SealedWriter> {
        let fd = rustix::fs::memfd_create("multiproc-payload", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
        let ptr = Self::map(&fd, cap)?;
        Ok(SealedWriter { fd, ptr, cap, len: 0 })
    }

    fn map(fd: &OwnedFd, cap: usize) -> io::Result<NonNull<u8>> {
        rustix::fs::ftruncate(fd, cap as u64)?;
        // Kept out of children: a process forked from another thread
        // meanwhile (a pool replacing a worker) would otherwise keep a
        // writable mapping of this file for its whole life, and no file
        // mapped writable can be sealed. A fork before the advice lands is
        // caught by `seal`.
        // SAFETY: the file is `cap` bytes long, and this process alone can
        // write to it until it is sealed (it is never shrunk before that).
        unsafe { map_shared(fd.as_fd(), cap, ProtFlags::READ | ProtFlags::WRITE, true) }
    }

    fn unmap(&mut self) {
        // SAFETY: our own mapping of `cap` bytes; the pointer is replaced or
        // never used again after this.
        unsafe { unmap(self.ptr.as_ptr(), self.cap) }
    }

    /// Appends `data`.
    pub(crate) fn extend(&mut self, data: &[u8]) -> io::Result<()> {
        let need = self.len.checked_add(data.len()).ok_or_else(|| io::Error::other("payload size overflows"))?;
        if need > self.cap {
            let cap = need.max(self.cap.saturating_mul(2));
            let ptr = Self::map(&self.fd, cap)?;
            self.unmap();
            (self.ptr, self.cap) = (ptr, cap);
        }
        if data.len() >= WRITE_AT {
            // The file is already `cap` long, so this only fills it: the
            // mapping, which sees the same pages, stays valid for the
            // small writes that may follow.
            let mut done = 0;
            while done < data.len() {
                match rustix::io::pwrite(&self.fd, &data[done..], (self.len + done) as u64) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => done += n,
                    Err(rustix::io::Errno::INTR) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        } else {
            // SAFETY: `len + data.len() <= cap` bytes are mapped writable at
            // `ptr`, and `data` (the caller's memory) cannot overlap our
            // mapping.
            unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.as_ptr().add(self.len), data.len()) };
        }
        self.len = need;
        Ok(())
    }

    /// Appends one byte (serde writes small fields a byte at a time).
    #[inline]
    pub(crate) fn push(&mut self, byte: u8) -> io::Result<()> {
        if self.len < self.cap {
            // SAFETY: `len < cap` bytes are mapped writable at `ptr`.
            unsafe { self.ptr.as_ptr().add(self.len).write(byte) };
            self.len += 1;
            Ok(())
        } else {
            self.extend(&[byte])
        }
    }

    /// Cuts the file to what was written and seals it against any change:
    /// a receiver may then map it and read it as plain bytes.
    pub(crate) fn seal(mut self) -> io::Result<OwnedFd> {
        use rustix::fs::SealFlags;
        self.unmap();
        // The mapping is gone: `Drop` must not unmap it again.
        self.cap = 0;
        rustix::fs::ftruncate(&self.fd, self.len as u64)?;
        let seals = SealFlags::SHRINK | SealFlags::GROW | SealFlags::WRITE | SealFlags::SEAL;
        match rustix::fs::fcntl_add_seals(&self.fd, seals) {
            Ok(()) => Ok(self.fd.try_clone()?),
            // Someone still maps it writable: a child forked between our
            // `mmap` and its advice. A copy that was never mapped can be
            // sealed; the kernel copies it without mapping it here.
            Err(rustix::io::Errno::BUSY) => {
                let copy =
                    rustix::fs::memfd_create("multiproc-payload", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
                let mut from = std::fs::File::from(self.fd.try_clone()?);
                let mut to = std::fs::File::from(copy);
                let copied = io::copy(&mut from, &mut to)?;
                if copied != self.len as u64 {
                    return Err(io::Error::other(format!(
                        "copied {copied} of a payload's {} bytes into a fresh memory file",
                        self.len
                    )));
                }
                rustix::fs::fcntl_add_seals(&to, seals)?;
                Ok(to.into())
            }
            Err(e) => Err(e.into()),
        }
    }
}

impl AsFd for SealedWriter {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Drop for SealedWriter {
    fn drop(&mut self) {
        if self.cap > 0 {
            self.unmap();
        }
    }
}

/// A read-only view of a sealed memory file from another process: its
/// size and bytes can no longer change, so they may be read as a slice.
#[derive(Debug)]
pub(crate) struct Sealed {
    ptr: Option<NonNull<u8>>,
    len: usize,
}

impl Sealed {
    /// Maps `fd`, which must be sealed against writes and shrinking (a
    /// file that could still change would tear the bytes being decoded, or
    /// fault when cut short under the reader).
    pub(crate) fn open(fd: &OwnedFd) -> io::Result<Sealed> {
        use rustix::fs::SealFlags;
        let seals = rustix::fs::fcntl_get_seals(fd)?;
        if !seals.contains(SealFlags::WRITE | SealFlags::SHRINK) {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "a shared payload's memory file is not sealed"));
        }
        let len = usize::try_from(rustix::fs::fstat(fd)?.st_size)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "a shared payload's size is negative"))?;
        if len == 0 {
            return Ok(Sealed { ptr: None, len });
        }
        // Not populated: a decoder reads it once, in order, and the kernel
        // maps a run of pages per read fault; populating it first made the
        // 64 MiB round trip slower (87-95 ms against 83-85 ms).
        // Kept out of children: a child forked meanwhile has no use for it,
        // and no thread of ours there to unmap it (see `Drop`).
        // SAFETY: a read-only view of a file of exactly `len` bytes that can
        // neither shrink nor be written.
        let ptr = unsafe { map_shared(fd.as_fd(), len, ProtFlags::READ, true)? };
        Ok(Sealed { ptr: Some(ptr), len })
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        match self.ptr {
            // SAFETY: `len` readable bytes that nobody may change (sealed),
            // mapped for as long as `self` lives.
            Some(ptr) => unsafe { std::slice::from_raw_parts(ptr.as_ptr(), self.len) },
            None => &[],
        }
    }
}

/// Mappings at least this long are unmapped by a thread of their own.
const RELEASE_AT: usize = 4 << 20;

/// How many such threads may be at work at once; past that, the dropping
/// thread unmaps itself.
const RELEASERS: usize = 4;

static RELEASING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl Drop for Sealed {
    fn drop(&mut self) {
        let Some(ptr) = self.ptr else { return };
        // The address as a number, to cross into the releasing thread.
        let (addr, len) = (ptr.as_ptr() as usize, self.len);
        // SAFETY: our own mapping of `len` bytes at `addr`; `bytes()`
        // borrows `self`, so no slice outlives it, and it is unmapped once
        // (here, or by the thread it was handed to).
        let release = move || unsafe { unmap(addr as *mut u8, len) };
        // Unmapping the last view of a big payload frees its pages, 10 ms
        // for 64 MiB: a thread of its own does that while the decoded
        // value goes on its way. Nothing else refers to the mapping, so
        // when it goes does not matter (a process that exits first has the
        // kernel unmap it). A thread costs tens of µs, noise at this size.
        if len < RELEASE_AT || !in_a_thread_of_its_own(release) {
            release();
        }
    }
}

/// Runs `release` on a thread of its own, if fewer than [`RELEASERS`] are
/// at work and a thread can be had; false (and `release` not run) if not.
fn in_a_thread_of_its_own(release: impl FnOnce() + Send + 'static) -> bool {
    use std::sync::atomic::Ordering::Relaxed;
    if RELEASING.fetch_add(1, Relaxed) < RELEASERS {
        let spawned = std::thread::Builder::new().name("multiproc-unmap".into()).spawn(move || {
            release();
            RELEASING.fetch_sub(1, Relaxed);
        });
        if spawned.is_ok() {
            return true;
        }
    }
    RELEASING.fetch_sub(1, Relaxed);
    false
}

// SAFETY: both own a private mapping reached only through `&mut self`
// (writer) or as immutable bytes (sealed).
unsafe impl Send for SealedWriter {}
// SAFETY: as above.
unsafe impl Send for Sealed {}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: usize = 4096;

    /// Small writes (through the mapping) and big ones (through the file)
    /// in any order land where they belong, across growths of the file.
    #[test]
    fn writes_through_the_mapping_and_the_file_interleave() {
        let data: Vec<u8> = (0..3 * WRITE_AT + 3 * PAGE + 11).map(|i| (i * 13 % 251) as u8).collect();
        let cuts = [0, 1, 7, 7 + WRITE_AT, 7 + WRITE_AT + 1, 9 + WRITE_AT, 2 * PAGE + 3 * WRITE_AT, data.len()];
        let mut writer = SealedWriter::new(PAGE).unwrap();
        for pair in cuts.windows(2) {
            let piece = &data[pair[0]..pair[1]];
            if piece.len() == 1 {
                writer.push(piece[0]).unwrap();
            } else {
                writer.extend(piece).unwrap();
            }
        }
        let fd = writer.seal().unwrap();
        let sealed = Sealed::open(&fd).unwrap();
        assert_eq!(sealed.len, data.len());
        assert!(sealed.bytes() == &data[..]);
    }

    /// A big view dropped is unmapped (by a thread of its own), a small
    /// one at once; neither stays mapped.
    #[test]
    fn dropped_views_are_unmapped() {
        for len in [PAGE + 1, RELEASE_AT, RELEASE_AT + 5] {
            let mut writer = SealedWriter::new(PAGE).unwrap();
            writer.extend(&vec![7u8; len]).unwrap();
            let fd = writer.seal().unwrap();
            let sealed = Sealed::open(&fd).unwrap();
            let start = sealed.ptr.unwrap().as_ptr() as usize;
            let mapped = || {
                let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
                maps.lines().any(|l| {
                    let range = l.split(' ').next().unwrap();
                    let (a, b) = range.split_once('-').unwrap();
                    let (a, b) = (usize::from_str_radix(a, 16).unwrap(), usize::from_str_radix(b, 16).unwrap());
                    // The same address may be handed out again: only a
                    // read-only shared mapping of a payload counts.
                    a <= start && start < b && l.contains("r--s") && l.contains("multiproc-payload")
                })
            };
            assert!(mapped());
            drop(sealed);
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            while mapped() {
                assert!(std::time::Instant::now() < deadline, "a view of {len} bytes is still mapped");
                std::thread::yield_now();
            }
        }
    }

    /// A file someone else still maps writable (a child forked before the
    /// writer's mapping was kept out of children) is handed over as a
    /// sealed copy holding the same bytes.
    #[test]
    fn a_file_still_mapped_elsewhere_is_sealed_as_a_copy() {
        let data: Vec<u8> = (0..3 * PAGE + 5).map(|i| (i * 7 % 251) as u8).collect();
        let mut writer = SealedWriter::new(PAGE).unwrap();
        writer.extend(&data[..10]).unwrap();
        writer.extend(&data[10..]).unwrap();
        // SAFETY: a fresh writable mapping of the writer's file, standing
        // for a forked child's copy; unmapped below, never dereferenced.
        let stale = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                PAGE,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                writer.as_fd(),
                0,
            )
            .unwrap()
        };
        let fd = writer.seal().unwrap();
        let sealed = Sealed::open(&fd).unwrap();
        assert_eq!(sealed.bytes(), &data[..]);
        // SAFETY: the mapping made above, unmapped once.
        unsafe { rustix::mm::munmap(stale, PAGE).unwrap() };
    }
}
