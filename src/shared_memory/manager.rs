//! `SharedMemoryManager`: blocks made through it are freed when it ends,
//! and also when its program is killed.
//!
//! The names are kept by a tracker: a fresh copy of the executable
//! (`posix_spawn`ed like the forkserver, so it shares nothing with the
//! program's threads and is no child of ours to join or to kill at exit),
//! which reads one line per name from a socket and, when the socket's
//! other end is gone (the manager dropped, or its whole program ended or
//! was killed), unlinks every name it was given and exits. It ignores
//! SIGINT and SIGTERM, so that a Ctrl-C to the program's process group
//! does not stop it before it has cleaned up (Python's resource tracker
//! does the same).

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, OwnedFd};

use super::{ShareableList, SharedMemory};
use crate::sys::proc as sysproc;
use crate::{Error, Result};

/// argv[1] of a tracker; argv[2] is its socket.
pub(crate) const TRACKER_FLAG: &str = "--multiproc-shm-tracker";
const TRACKER_FD: i32 = 3;

/// Python's `multiprocessing.managers.SharedMemoryManager`: makes
/// [`SharedMemory`] blocks and [`ShareableList`]s and frees them all
/// (unlinks their names) when it is shut down or dropped — or when its
/// program ends in any way, SIGKILL included.
///
/// The handles it gives out never remove their names themselves: the
/// blocks live until the manager ends, whichever handles are dropped
/// first.
///
/// ```
/// # #[multiproc::main] fn main() {
/// use multiproc::shared_memory::{SharedMemoryManager, ShareableList, Item};
/// use multiproc::SharedMemory;
///
/// let smm = SharedMemoryManager::start().unwrap();
/// let block = smm.shared_memory(128).unwrap();
/// let list = smm.shareable_list([1, 2, 3]).unwrap();
/// let (block_name, list_name) = (block.name().to_string(), list.name().to_string());
/// drop((block, list));
/// // Still there: the manager holds them.
/// assert_eq!(ShareableList::attach(&list_name).unwrap().get(2).unwrap(), Item::Int(3));
/// smm.shutdown().unwrap();
/// assert!(SharedMemory::attach(&block_name).is_err());
/// assert!(ShareableList::attach(&list_name).is_err());
/// # }
/// ```
#[derive(Debug)]
pub struct SharedMemoryManager {
    /// The tracker's socket; `None` once shut down.
    tracker: Option<std::fs::File>,
    pidfd: Option<OwnedFd>,
}

impl SharedMemoryManager {
    /// Starts one (its tracker process).
    pub fn start() -> Result<SharedMemoryManager> {
        let (ours, theirs) =
            crate::sys::stream_pair().map_err(|source| Error::Io { context: "socketpair for a tracker", source })?;
        let pid = sysproc::spawn_self(&[TRACKER_FLAG, &TRACKER_FD.to_string()], &[(theirs.as_fd(), TRACKER_FD)])
            .map_err(|source| Error::Io { context: "posix_spawn of a shared memory tracker", source })?;
        let pidfd =
            sysproc::pidfd_open(pid).map_err(|source| Error::Io { context: "pidfd_open of a tracker", source })?;
        Ok(SharedMemoryManager { tracker: Some(ours.into()), pidfd: Some(pidfd) })
    }

    fn track(&self, name: &str) -> Result<()> {
        let mut socket = self.tracker.as_ref().ok_or(Error::Connection("the manager was shut down"))?;
        let mut line = name.as_bytes().to_vec();
        line.push(b'\n');
        socket.write_all(&line).map_err(|source| Error::Io { context: "tell the shared memory tracker", source })
    }

    /// A new block of `size` bytes (Python's `smm.SharedMemory(size)`),
    /// freed when the manager ends.
    pub fn shared_memory(&self, size: usize) -> Result<SharedMemory> {
        let mut shm = SharedMemory::create(None, size)?;
        self.adopt(&mut shm)?;
        Ok(shm)
    }

    /// A new [`ShareableList`] of `items` (Python's
    /// `smm.ShareableList(sequence)`), freed when the manager ends.
    pub fn shareable_list<I: Into<super::Item>>(&self, items: impl IntoIterator<Item = I>) -> Result<ShareableList> {
        ShareableList::create_with(items, |size| {
            let mut shm = SharedMemory::create(None, size)?;
            self.adopt(&mut shm)?;
            Ok(shm)
        })
    }

    /// The tracker takes the name before anyone can lose it: if telling
    /// it fails, the block goes at once (its handle still owns it).
    fn adopt(&self, shm: &mut SharedMemory) -> Result<()> {
        self.track(shm.name())?;
        shm.disown();
        Ok(())
    }

    /// Frees every block it made and waits for its tracker to finish.
    pub fn shutdown(mut self) -> Result<()> {
        self.stop()
    }

    fn stop(&mut self) -> Result<()> {
        drop(self.tracker.take());
        if let Some(pidfd) = self.pidfd.take() {
            crate::sys::poll_readable(&[pidfd.as_fd()], None)
                .map_err(|source| Error::Io { context: "wait for the tracker", source })?;
            sysproc::try_reap_pidfd(pidfd.as_fd())
                .map_err(|source| Error::Io { context: "reap the tracker", source })?;
        }
        Ok(())
    }
}

impl Drop for SharedMemoryManager {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// The tracker's life (called by the load hook): names in, names freed
/// when the socket ends, exit.
pub(crate) fn serve_tracker(socket: OwnedFd) -> ! {
    sysproc::ignore_stop_signals();
    let mut names: Vec<String> = Vec::new();
    for line in BufReader::new(std::fs::File::from(socket)).split(b'\n') {
        match line {
            Ok(name) => names.extend(String::from_utf8(name).ok()),
            Err(_) => break,
        }
    }
    for name in names {
        let _ = crate::sys::shm::Mapping::unlink_named(&name);
    }
    sysproc::exit_now(0)
}
