//! A byte ring in shared memory for queue messages: a robust mutex, two
//! condition variables (not empty, not full), indices and counters, then
//! the bytes. A record is an 8-byte length followed by its bytes; it
//! becomes visible only when `tail` moves past it, after it is written, so
//! a writer killed in the middle leaves nothing behind. A reader killed in
//! the middle has not moved `head` yet, so the record stays for the next.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Instant;

use super::mutex;
use super::shm::Mapping;

#[repr(C)]
struct Header {
    mutex: libc::pthread_mutex_t,
    not_empty: libc::pthread_cond_t,
    not_full: libc::pthread_cond_t,
    /// Absolute byte positions; the ring index is `pos % capacity`.
    head: u64,
    tail: u64,
    capacity: u64,
    /// Counters kept under the same lock: items in the queue, unfinished
    /// tasks (JoinableQueue).
    items: u64,
    unfinished: u64,
}

/// What a record holds.
pub(crate) enum Record {
    Bytes(Vec<u8>),
    /// The message went the other way (a socket); only its place is here.
    Marker,
}

const MARKER: u64 = 1 << 63;

#[derive(Debug)]
pub(crate) struct Ring {
    map: Mapping,
}

impl Ring {
    pub(crate) fn new(capacity: usize) -> io::Result<Ring> {
        let map = Mapping::new("multiproc-queue", size_of::<Header>() + capacity)?;
        let r = Ring { map };
        let h = r.header();
        // SAFETY: a fresh, page-aligned mapping large enough for the header,
        // not yet shared with anyone.
        unsafe {
            mutex::init(&raw mut (*h).mutex, false)?;
            mutex::init_cond(&raw mut (*h).not_empty)?;
            mutex::init_cond(&raw mut (*h).not_full)?;
            (*h).head = 0;
            (*h).tail = 0;
            (*h).capacity = capacity as u64;
            (*h).items = 0;
            (*h).unfinished = 0;
        }
        Ok(r)
    }

    pub(crate) fn open(fd: OwnedFd) -> io::Result<Ring> {
        let map = Mapping::open(fd)?;
        if map.len() < size_of::<Header>() {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "shared memory too small for a queue"));
        }
        let r = Ring { map };
        // SAFETY: the header was initialised by the creator.
        let capacity = unsafe { (*r.header()).capacity } as usize;
        if r.map.len() < size_of::<Header>() + capacity {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "shared memory smaller than its queue"));
        }
        Ok(r)
    }

    fn header(&self) -> *mut Header {
        self.map.as_ptr().cast()
    }

    fn data(&self) -> *mut u8 {
        // SAFETY: the data follows the header inside the mapping.
        unsafe { self.map.as_ptr().add(size_of::<Header>()) }
    }

    /// The largest message the ring takes (anything larger goes around it).
    pub(crate) fn max_record(&self) -> usize {
        // SAFETY: the header is initialised and mapped.
        (unsafe { (*self.header()).capacity } as usize / 2).saturating_sub(8)
    }

    /// Runs `f` with the lock held.
    fn locked<T>(&self, f: impl FnOnce(*mut Header) -> io::Result<T>) -> io::Result<T> {
        let h = self.header();
        // SAFETY: the mutex is initialised and mapped while `self` lives.
        unsafe {
            mutex::lock(&raw mut (*h).mutex, None)?;
            let result = f(h);
            mutex::unlock(&raw mut (*h).mutex)?;
            result
        }
    }

    /// Appends a record (or a marker with `bytes` = None), waiting for room
    /// until `deadline`; false if there was none in time.
    pub(crate) fn push(&self, bytes: Option<&[u8]>, deadline: Option<Instant>) -> io::Result<bool> {
        let len = bytes.map_or(0, <[u8]>::len);
        let need = 8 + len as u64;
        let data = self.data();
        let pushed = self.locked(|h| {
            // SAFETY: the lock is held; positions stay within the mapping.
            unsafe {
                while (*h).capacity - ((*h).tail - (*h).head) < need {
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        return Ok(false);
                    }
                    mutex::wait(&raw mut (*h).not_full, &raw mut (*h).mutex, deadline)?;
                }
                let cap = (*h).capacity;
                let word = if bytes.is_some() { len as u64 } else { MARKER };
                copy_in(data, cap, (*h).tail, &word.to_le_bytes());
                if let Some(b) = bytes {
                    copy_in(data, cap, (*h).tail + 8, b);
                }
                // Visible only now, whole.
                (*h).tail += need;
                (*h).items += 1;
                (*h).unfinished += 1;
                Ok(true)
            }
        })?;
        if pushed {
            // SAFETY: the condvar is initialised and mapped.
            unsafe { mutex::notify(&raw mut (*self.header()).not_empty, false) };
        }
        Ok(pushed)
    }

    /// Takes the next record, waiting until `deadline`; `None` if none came.
    pub(crate) fn pop(&self, deadline: Option<Instant>) -> io::Result<Option<Record>> {
        let data = self.data();
        let record = self.locked(|h| {
            // SAFETY: as in `push`.
            unsafe {
                while (*h).tail == (*h).head {
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        return Ok(None);
                    }
                    mutex::wait(&raw mut (*h).not_empty, &raw mut (*h).mutex, deadline)?;
                }
                let cap = (*h).capacity;
                let mut word = [0u8; 8];
                copy_out(data, cap, (*h).head, &mut word);
                let word = u64::from_le_bytes(word);
                let record = if word == MARKER {
                    (*h).head += 8;
                    Record::Marker
                } else {
                    let len = word as usize;
                    if len as u64 > cap {
                        return Err(io::Error::new(io::ErrorKind::InvalidData, "a corrupt queue record"));
                    }
                    let mut bytes = vec![0u8; len];
                    copy_out(data, cap, (*h).head + 8, &mut bytes);
                    (*h).head += 8 + len as u64;
                    Record::Bytes(bytes)
                };
                (*h).items = (*h).items.saturating_sub(1);
                Ok(Some(record))
            }
        })?;
        if record.is_some() {
            // SAFETY: as in `push`.
            unsafe { mutex::notify(&raw mut (*self.header()).not_full, true) };
        }
        Ok(record)
    }

    /// Items in the queue.
    pub(crate) fn items(&self) -> io::Result<usize> {
        // SAFETY: read under the lock.
        self.locked(|h| Ok(unsafe { (*h).items } as usize))
    }

    /// Marks one task done; false if none was unfinished.
    pub(crate) fn task_done(&self) -> io::Result<bool> {
        let done = self.locked(|h| {
            // SAFETY: under the lock.
            unsafe {
                if (*h).unfinished == 0 {
                    return Ok(false);
                }
                (*h).unfinished -= 1;
                Ok(true)
            }
        })?;
        // Joiners wait on not_full's sibling: wake everyone on not_empty too.
        // SAFETY: the condvars are initialised and mapped.
        unsafe {
            mutex::notify(&raw mut (*self.header()).not_full, true);
        }
        Ok(done)
    }

    /// Waits until no task is unfinished.
    pub(crate) fn join(&self) -> io::Result<()> {
        self.locked(|h| {
            // SAFETY: under the lock; waiting releases it.
            unsafe {
                while (*h).unfinished != 0 {
                    mutex::wait(&raw mut (*h).not_full, &raw mut (*h).mutex, None)?;
                }
            }
            Ok(())
        })
    }
}

fn copy_in(data: *mut u8, cap: u64, pos: u64, bytes: &[u8]) {
    let start = (pos % cap) as usize;
    let first = bytes.len().min(cap as usize - start);
    // SAFETY: both ranges lie inside the data area of `cap` bytes.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), data.add(start), first);
        std::ptr::copy_nonoverlapping(bytes.as_ptr().add(first), data, bytes.len() - first);
    }
}

fn copy_out(data: *mut u8, cap: u64, pos: u64, out: &mut [u8]) {
    let start = (pos % cap) as usize;
    let first = out.len().min(cap as usize - start);
    // SAFETY: as in `copy_in`.
    unsafe {
        std::ptr::copy_nonoverlapping(data.add(start), out.as_mut_ptr(), first);
        std::ptr::copy_nonoverlapping(data, out.as_mut_ptr().add(first), out.len() - first);
    }
}

impl AsFd for Ring {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.map.as_fd()
    }
}
