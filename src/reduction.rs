//! How values that stand for OS resources travel between processes
//! (Python's `multiprocessing.reduction`).
//!
//! Arguments and results are serialized with serde into a compact binary
//! form (postcard). A [`Handle`] cannot be turned into bytes, so while a value
//! is being encoded each handle's descriptor is duplicated into a side table
//! and only its index in that table is written; the table rides beside the
//! bytes as `SCM_RIGHTS`. Decoding in the other process swaps each index back
//! for the descriptor the kernel delivered. Under `fork` no encoding happens
//! at all: the child simply owns its copy of the descriptor.
//!
//! Any type built on handles (a pipe end, a shared-memory mapping, a lock)
//! travels the same way by containing a `Handle` and deriving `Serialize`.

use std::cell::RefCell;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};

use serde::de::{DeserializeOwned, Error as _};
use serde::ser::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::sys::frame::MAX_FDS;

thread_local! {
    static OUTGOING: RefCell<Option<Vec<OwnedFd>>> = const { RefCell::new(None) };
    static INCOMING: RefCell<Option<Vec<Option<OwnedFd>>>> = const { RefCell::new(None) };
    // postcard drops the text of custom serde errors; keep ours so the user
    // sees what was wrong with a handle.
    static HANDLE_ERROR: RefCell<Option<String>> = const { RefCell::new(None) };
}

fn handle_error<E, F: FnOnce(String) -> E>(message: String, make: F) -> E {
    HANDLE_ERROR.with(|h| *h.borrow_mut() = Some(message.clone()));
    make(message)
}

fn explain(codec_error: impl std::fmt::Display) -> String {
    HANDLE_ERROR.with(|h| h.borrow_mut().take()).unwrap_or_else(|| codec_error.to_string())
}

/// [`explain`] for a value of type `T`: a type that needs a self-describing
/// format gets the way out named.
fn explain_for<T: ?Sized>(codec_error: postcard::Error) -> String {
    match codec_error {
        postcard::Error::WontImplement | postcard::Error::SerializeSeqLengthUnknown => format!(
            "{}: {codec_error}: this type needs a self-describing format (serde's deserialize_any or maps of \
             unknown length: serde_json::Value, #[serde(flatten)], untagged or internally tagged enums), which \
             multiproc's binary codec is not; wrap it as multiproc::Json<T> (feature `json`)",
            std::any::type_name::<T>()
        ),
        other => explain(other),
    }
}

/// An owned OS resource (a file descriptor) that can be passed to another
/// process inside the arguments or result of a target, under every start
/// method.
///
/// ```
/// # #[multiproc::main] fn main() {
/// use std::io::{Read, Write};
/// use multiproc::{Handle, Process};
///
/// fn greet(out: Handle) {
///     let mut file = out.into_file();
///     write!(file, "hello from {}", multiproc::os::getpid()).unwrap();
/// }
///
/// let (mut reader, writer) = std::io::pipe().unwrap();
/// let mut p = Process::new(greet, (Handle::from(writer),));
/// p.start().unwrap();
/// p.join().unwrap();
/// let mut text = String::new();
/// reader.read_to_string(&mut text).unwrap();
/// assert_eq!(text, format!("hello from {}", p.pid().unwrap()));
/// # }
/// ```
#[derive(Debug)]
pub struct Handle {
    fd: OwnedFd,
}

impl Handle {
    /// Wraps an owned descriptor.
    ///
    /// ```
    /// use std::os::fd::OwnedFd;
    /// let fd: OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
    /// let h = multiproc::Handle::new(fd);
    /// ```
    pub fn new(fd: OwnedFd) -> Self {
        Self { fd }
    }

    /// Duplicates the descriptor (both refer to the same open file).
    ///
    /// ```
    /// use std::os::fd::AsRawFd;
    /// let h = multiproc::Handle::from(std::fs::File::open("/dev/null").unwrap());
    /// let copy = h.try_clone().unwrap();
    /// assert_ne!(h.as_raw_fd(), copy.as_raw_fd());
    /// ```
    pub fn try_clone(&self) -> io::Result<Self> {
        Ok(Self { fd: self.fd.try_clone()? })
    }

    /// Unwraps the descriptor.
    ///
    /// ```
    /// let h = multiproc::Handle::from(std::fs::File::open("/dev/null").unwrap());
    /// let fd: std::os::fd::OwnedFd = h.into_owned_fd();
    /// ```
    pub fn into_owned_fd(self) -> OwnedFd {
        self.fd
    }

    /// Unwraps the descriptor as a [`File`] (works for pipes and sockets too).
    ///
    /// ```
    /// use std::io::Read;
    /// let h = multiproc::Handle::from(std::fs::File::open("/dev/null").unwrap());
    /// let mut text = String::new();
    /// h.into_file().read_to_string(&mut text).unwrap();
    /// assert!(text.is_empty());
    /// ```
    pub fn into_file(self) -> File {
        File::from(self.fd)
    }
}

impl AsFd for Handle {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Handle {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl IntoRawFd for Handle {
    fn into_raw_fd(self) -> RawFd {
        self.fd.into_raw_fd()
    }
}

impl FromRawFd for Handle {
    unsafe fn from_raw_fd(fd: RawFd) -> Self {
        // SAFETY: the caller hands us ownership of an open descriptor.
        Self { fd: unsafe { OwnedFd::from_raw_fd(fd) } }
    }
}

impl From<Handle> for OwnedFd {
    fn from(h: Handle) -> Self {
        h.fd
    }
}

macro_rules! handle_from {
    ($($t:ty),*) => {$(
        impl From<$t> for Handle {
            fn from(v: $t) -> Self { Self { fd: OwnedFd::from(v) } }
        }
    )*};
}
handle_from!(
    OwnedFd,
    File,
    std::io::PipeReader,
    std::io::PipeWriter,
    std::os::unix::net::UnixStream,
    std::os::unix::net::UnixListener,
    std::net::TcpStream,
    std::net::TcpListener
);

impl Serialize for Handle {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let index = OUTGOING.with(|out| {
            let mut out = out.borrow_mut();
            let table = out.as_mut().ok_or_else(|| {
                handle_error(
                    "a multiproc::Handle can only be serialized by multiproc itself, when it passes it to another process".into(),
                    S::Error::custom,
                )
            })?;
            if table.len() >= MAX_FDS {
                return Err(handle_error(format!("more than {MAX_FDS} handles in one message"), S::Error::custom));
            }
            let dup = self
                .fd
                .try_clone()
                .map_err(|e| handle_error(format!("cannot duplicate handle: {e}"), S::Error::custom))?;
            table.push(dup);
            Ok(table.len() as u32 - 1)
        })?;
        serializer.serialize_u32(index)
    }
}

impl<'de> Deserialize<'de> for Handle {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let index = u32::deserialize(deserializer)? as usize;
        INCOMING.with(|inc| {
            let mut inc = inc.borrow_mut();
            let table = inc.as_mut().ok_or_else(|| {
                handle_error(
                    "a multiproc::Handle can only be deserialized by multiproc itself".into(),
                    D::Error::custom,
                )
            })?;
            let slot = table.get_mut(index).ok_or_else(|| {
                handle_error(format!("handle {index} was not sent with this message"), D::Error::custom)
            })?;
            let fd = slot.take().ok_or_else(|| {
                handle_error(format!("handle {index} appears twice in one message"), D::Error::custom)
            })?;
            Ok(Handle { fd })
        })
    }
}

/// A [`Handle`] on a duplicate of `fd`: how a type that keeps its own
/// descriptor (a socket, a shared mapping) puts it into a message.
pub(crate) fn share<E: serde::ser::Error>(fd: impl AsFd) -> Result<Handle, E> {
    fd.as_fd().try_clone_to_owned().map(Handle::new).map_err(E::custom)
}

/// Encodes `value`, collecting the descriptors of its handles.
pub(crate) fn encode<T: Serialize + ?Sized>(value: &T) -> Result<(Vec<u8>, Vec<OwnedFd>), String> {
    encode_into(value, Vec::new())
}

/// [`encode`], appending to `buf`: a caller that encodes many messages
/// reuses one buffer instead of growing a new one each time.
pub(crate) fn encode_into<T: Serialize + ?Sized>(value: &T, buf: Vec<u8>) -> Result<(Vec<u8>, Vec<OwnedFd>), String> {
    HANDLE_ERROR.with(|h| h.borrow_mut().take());
    let previous = OUTGOING.with(|o| o.borrow_mut().replace(Vec::new()));
    let bytes = postcard::to_extend(value, buf);
    let fds = OUTGOING.with(|o| std::mem::replace(&mut *o.borrow_mut(), previous)).unwrap_or_default();
    let bytes = bytes.map_err(explain_for::<T>)?;
    Ok((bytes, fds))
}

/// Decodes a value, handing it the descriptors that came with its bytes.
/// Descriptors the value did not claim are closed.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8], fds: Vec<OwnedFd>) -> Result<T, String> {
    HANDLE_ERROR.with(|h| h.borrow_mut().take());
    let table = fds.into_iter().map(Some).collect();
    let previous = INCOMING.with(|i| i.borrow_mut().replace(table));
    let value = postcard::from_bytes(bytes);
    INCOMING.with(|i| *i.borrow_mut() = previous);
    value.map_err(explain_for::<T>)
}

/// Plain encoding for our own protocol messages (they carry no handles).
pub(crate) fn encode_plain<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_stdvec(value).expect("protocol messages always serialize")
}

/// [`encode_plain`], appended to `out`.
pub(crate) fn encode_plain_onto<T: Serialize>(value: &T, out: &mut Vec<u8>) {
    *out = postcard::to_extend(value, std::mem::take(out)).expect("protocol messages always serialize");
}

/// Plain decoding for our own protocol messages.
pub(crate) fn decode_plain<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    postcard::from_bytes(bytes).map_err(|e| e.to_string())
}
