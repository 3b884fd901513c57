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

mod owned;

use crate::sys::frame::MAX_FDS;
use crate::sys::shm::{Sealed, SealedWriter};

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
            // One place is kept for the memory file of a big payload.
            if table.len() >= MAX_FDS - 1 {
                return Err(handle_error(format!("more than {} handles in one message", MAX_FDS - 1), S::Error::custom));
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

/// Encoded payloads longer than this leave the message: they are written
/// into a sealed memory file that travels as the payload's first
/// descriptor, so that no socket, ring or frame buffer copies them on the
/// way, and the receiver decodes straight out of the shared pages.
pub(crate) const SPILL_AT: usize = 1 << 20;

/// The first byte of every encoded payload: the postcard bytes follow.
const INLINE: u8 = 0;
/// The first byte of a payload whose postcard bytes are in a sealed memory
/// file, the first of its descriptors; nothing follows.
const SPILLED: u8 = 1;

/// Encodes `value`, collecting the descriptors of its handles.
pub(crate) fn encode<T: Serialize + ?Sized>(value: &T) -> Result<(Vec<u8>, Vec<OwnedFd>), String> {
    encode_into(value, Vec::new())
}

/// [`encode`], appending to `buf`: a caller that encodes many messages
/// reuses one buffer instead of growing a new one each time.
pub(crate) fn encode_into<T: Serialize + ?Sized>(value: &T, buf: Vec<u8>) -> Result<(Vec<u8>, Vec<OwnedFd>), String> {
    HANDLE_ERROR.with(|h| h.borrow_mut().take());
    let previous = OUTGOING.with(|o| o.borrow_mut().replace(Vec::new()));
    let out = postcard::serialize_with_flavor(value, Spill::new(buf));
    let mut fds = OUTGOING.with(|o| std::mem::replace(&mut *o.borrow_mut(), previous)).unwrap_or_default();
    let (bytes, spilled) = out.map_err(explain_for::<T>)?;
    if let Some(fd) = spilled {
        fds.insert(0, fd);
    }
    Ok((bytes, fds))
}

/// Where an encoding goes: into `buf` after its tag, and, once longer than
/// [`SPILL_AT`], into a memory file (`buf` then keeps only the tag).
struct Spill {
    buf: Vec<u8>,
    /// Where this payload's tag is in `buf` (the caller's bytes come first).
    start: usize,
    file: Option<SealedWriter>,
    /// No memory file could be had: stay in `buf`.
    inline_only: bool,
}

impl Spill {
    fn new(mut buf: Vec<u8>) -> Spill {
        let start = buf.len();
        buf.push(INLINE);
        Spill { buf, start, file: None, inline_only: false }
    }

    fn fail(e: io::Error) -> postcard::Error {
        handle_error(format!("cannot write the encoded value into shared memory: {e}"), |_| {
            postcard::Error::SerializeBufferFull
        })
    }

    /// Moves the bytes so far into a memory file, if one can be had (and
    /// this process is not short of descriptors: a queue of many big
    /// payloads must not take the ones the rest of the program needs).
    fn start_file(&mut self) -> postcard::Result<()> {
        let so_far = &self.buf[self.start + 1..];
        let mut file = match SealedWriter::new(2 * SPILL_AT + so_far.len()) {
            Ok(file) if descriptors_to_spare(file.as_fd()) => file,
            _ => {
                self.inline_only = true;
                return Ok(());
            }
        };
        file.extend(so_far).map_err(Self::fail)?;
        self.buf.truncate(self.start);
        self.buf.push(SPILLED);
        self.file = Some(file);
        Ok(())
    }
}

impl postcard::ser_flavors::Flavor for Spill {
    type Output = (Vec<u8>, Option<OwnedFd>);

    #[inline]
    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        match &mut self.file {
            Some(file) => file.push(data).map_err(Self::fail),
            None if self.inline_only || self.buf.len() - self.start <= SPILL_AT => {
                self.buf.push(data);
                Ok(())
            }
            None => self.try_extend(&[data]),
        }
    }

    #[inline]
    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        if self.file.is_none() && !self.inline_only && self.buf.len() - self.start - 1 + data.len() > SPILL_AT {
            self.start_file()?;
        }
        match &mut self.file {
            Some(file) => file.extend(data).map_err(Self::fail),
            // Most writes are a varint or a tag, a few bytes: copied here
            // rather than through a call to memcpy each.
            None if data.len() <= 16 => {
                self.buf.reserve(data.len());
                for &b in data {
                    self.buf.push(b);
                }
                Ok(())
            }
            None => {
                self.buf.extend_from_slice(data);
                Ok(())
            }
        }
    }

    fn finalize(self) -> postcard::Result<Self::Output> {
        let fd = self.file.map(SealedWriter::seal).transpose().map_err(Self::fail)?;
        Ok((self.buf, fd))
    }
}

/// Whether a new descriptor still leaves this process half of its limit.
fn descriptors_to_spare(newest: BorrowedFd<'_>) -> bool {
    let limit = crate::sys::proc::open_files_limit();
    // Descriptors are numbered lowest free first: a high number means many
    // are open.
    (newest.as_raw_fd() as u64) < limit / 2
}

/// Decodes a value, handing it the descriptors that came with its bytes.
/// Descriptors the value did not claim are closed.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8], fds: Vec<OwnedFd>) -> Result<T, String> {
    decode_seed(bytes, fds, std::marker::PhantomData::<T>)
}

/// [`decode`] through a serde seed.
fn decode_seed<S, V>(bytes: &[u8], mut fds: Vec<OwnedFd>, seed: S) -> Result<V, String>
where
    S: for<'de> serde::de::DeserializeSeed<'de, Value = V>,
{
    HANDLE_ERROR.with(|h| h.borrow_mut().take());
    let file = match bytes.first() {
        Some(&INLINE) => None,
        Some(&SPILLED) => Some(take_file(&mut fds)?),
        Some(tag) => return Err(format!("not an encoded value (tag {tag})")),
        None => return Err("an empty payload".into()),
    };
    let table = fds.into_iter().map(Some).collect();
    let previous = INCOMING.with(|i| i.borrow_mut().replace(table));
    let value = match &file {
        None => seed.deserialize(&mut postcard::Deserializer::from_bytes(&bytes[1..])),
        Some(file) => seed.deserialize(owned::Owned(&mut postcard::Deserializer::from_bytes(file.bytes()))),
    };
    INCOMING.with(|i| *i.borrow_mut() = previous);
    value.map_err(explain_for::<V>)
}

/// Decodes a sequence of `T`, handing each element to `each` as it is
/// read instead of collecting them: a chunk's many results reach their
/// places without a vector of them all in between. Returns how many came.
pub(crate) fn decode_each<T: DeserializeOwned>(
    bytes: &[u8],
    fds: Vec<OwnedFd>,
    each: impl FnMut(T),
) -> Result<usize, String> {
    struct Each<T, F>(F, std::marker::PhantomData<T>);
    impl<'de, T: DeserializeOwned, F: FnMut(T)> serde::de::DeserializeSeed<'de> for Each<T, F> {
        type Value = usize;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<usize, D::Error> {
            d.deserialize_seq(self)
        }
    }
    impl<'de, T: DeserializeOwned, F: FnMut(T)> serde::de::Visitor<'de> for Each<T, F> {
        type Value = usize;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a sequence")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(mut self, mut seq: A) -> Result<usize, A::Error> {
            let mut n = 0;
            while let Some(item) = seq.next_element::<T>()? {
                (self.0)(item);
                n += 1;
            }
            Ok(n)
        }
    }
    decode_seed(bytes, fds, Each(each, std::marker::PhantomData))
}

/// The memory file of a payload kept in shared memory (its first
/// descriptor, taken from `fds`), mapped.
fn take_file(fds: &mut Vec<OwnedFd>) -> Result<Sealed, String> {
    if fds.is_empty() {
        return Err("a payload kept in shared memory arrived without its memory file".into());
    }
    Sealed::open(&fds.remove(0)).map_err(|e| format!("cannot read a payload from shared memory: {e}"))
}

/// How many bytes a payload holds, wherever they are: in its bytes, or in
/// the memory file among its descriptors.
pub(crate) fn payload_len(bytes: &[u8], fds: &[OwnedFd]) -> usize {
    spilled_len(bytes, fds).unwrap_or(bytes.len())
}

/// The size of a payload kept in shared memory (`None` for one in its
/// bytes), for a receiver that limits what it takes.
pub(crate) fn spilled_len(bytes: &[u8], fds: &[OwnedFd]) -> Option<usize> {
    match (bytes.first(), fds.first()) {
        (Some(&SPILLED), Some(fd)) => Some(rustix::fs::fstat(fd).map_or(usize::MAX, |st| st.st_size as usize)),
        _ => None,
    }
}

/// Brings a payload kept in shared memory back into its bytes, for a
/// transport that carries no descriptors (Redis): afterwards `fds` holds
/// only the value's own handles.
#[cfg(any(feature = "cluster", test))]
pub(crate) fn inline(bytes: &mut Vec<u8>, fds: &mut Vec<OwnedFd>) -> Result<(), String> {
    if bytes.first() != Some(&SPILLED) {
        return Ok(());
    }
    let file = take_file(fds)?;
    bytes.clear();
    bytes.reserve_exact(1 + file.bytes().len());
    bytes.push(INLINE);
    bytes.extend_from_slice(file.bytes());
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_bytes::ByteBuf;

    fn pattern(len: usize, seed: u64) -> ByteBuf {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        ByteBuf::from(
            (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect::<Vec<u8>>(),
        )
    }

    /// Every size around the threshold comes back as it went, in its bytes
    /// below it and in one sealed memory file above it; so does a value
    /// that grows the file many times in small writes.
    #[test]
    fn payloads_on_both_sides_of_the_threshold_come_back_whole() {
        // A ByteBuf's encoding adds its length's varint.
        for (k, len) in
            [SPILL_AT - 4, SPILL_AT - 3, SPILL_AT - 2, SPILL_AT, 3 * SPILL_AT + 1, 17].into_iter().enumerate()
        {
            let value = pattern(len, k as u64);
            let (bytes, fds) = encode(&value).unwrap();
            let varint = [1 << 7, 1 << 14, 1 << 21].iter().filter(|&&b| len >= b).count() + 1;
            let spilled = len + varint > SPILL_AT;
            assert_eq!(fds.len(), spilled as usize, "{len}");
            assert_eq!(bytes.len() == 1, spilled, "{len}");
            if spilled {
                assert_eq!(spilled_len(&bytes, &fds), Some(len + varint));
            }
            let back: ByteBuf = decode(&bytes, fds).unwrap();
            assert!(back == value, "{len}");
        }
        let many: Vec<u64> = (0..600_000u64).map(|i| i * 0x1_0001).collect();
        let (bytes, fds) = encode(&many).unwrap();
        assert_eq!((bytes.len(), fds.len()), (1, 1));
        assert_eq!(decode::<Vec<u64>>(&bytes, fds).unwrap(), many);
    }

    /// A big value's own handles travel beside its memory file and come
    /// back in their places.
    #[test]
    fn handles_inside_a_big_value_keep_their_places() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let value = (Handle::from(a), pattern(2 * SPILL_AT, 5), Handle::from(b));
        let (bytes, fds) = encode(&value).unwrap();
        assert_eq!(fds.len(), 3);
        let (a, data, b): (Handle, ByteBuf, Handle) = decode(&bytes, fds).unwrap();
        assert!(data == value.1);
        use std::io::{Read, Write};
        let (mut a, mut b) = (a.into_file(), b.into_file());
        a.write_all(b"x").unwrap();
        let mut got = [0u8];
        b.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"x");
    }

    /// What a receiver must refuse: a big payload without its file, a file
    /// its sender could still change, and bytes that are no payload.
    #[test]
    fn broken_big_payloads_are_refused_with_a_reason() {
        let (bytes, mut fds) = encode(&pattern(2 * SPILL_AT, 1)).unwrap();
        let file = fds.remove(0);
        let e = decode::<ByteBuf>(&bytes, Vec::new()).unwrap_err();
        assert!(e.contains("without its memory file"), "{e}");
        drop(file);

        let unsealed = rustix::fs::memfd_create("x", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&unsealed, 16).unwrap();
        let e = decode::<ByteBuf>(&[SPILLED], vec![unsealed]).unwrap_err();
        assert!(e.contains("not sealed"), "{e}");

        assert!(decode::<u8>(&[], Vec::new()).unwrap_err().contains("empty"));
        assert!(decode::<u8>(&[7, 1], Vec::new()).unwrap_err().contains("tag 7"));
    }

    /// A process forked while a big value is being written (a pool
    /// replacing a worker, say) must not keep the half-written file's
    /// mapping: sealing a file that anyone still maps writable fails.
    #[test]
    fn a_fork_during_encoding_does_not_keep_the_file_from_being_sealed() {
        let mut pipe = [0; 2];
        // SAFETY: `pipe` has room for the two descriptors.
        assert_eq!(unsafe { libc::pipe(pipe.as_mut_ptr()) }, 0);
        let stop = std::sync::atomic::AtomicBool::new(false);
        let children = std::thread::scope(|s| {
            let forker = s.spawn(|| {
                let mut pids = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && pids.len() < 200 {
                    // SAFETY: the child only reads and exits, both
                    // async-signal-safe; it keeps its copy of this
                    // process's mappings until the pipe is closed.
                    match unsafe { libc::fork() } {
                        0 => unsafe {
                            libc::close(pipe[1]);
                            let mut b = 0u8;
                            libc::read(pipe[0], (&raw mut b).cast(), 1);
                            libc::_exit(0)
                        },
                        pid => {
                            assert!(pid > 0, "fork failed");
                            pids.push(pid)
                        }
                    }
                }
                pids
            });
            let value = pattern(2 * SPILL_AT, 3);
            let mut result = Ok(());
            // Encodes for as long as children are being forked.
            while !forker.is_finished() {
                match encode(&value) {
                    Ok((bytes, fds)) => assert!(decode::<ByteBuf>(&bytes, fds).unwrap() == value),
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                }
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            let pids = forker.join().unwrap();
            (result, pids)
        });
        let (result, pids) = children;
        // SAFETY: our own pipe's descriptors, closed once; the children
        // then see its end and exit.
        unsafe {
            libc::close(pipe[1]);
            libc::close(pipe[0]);
        }
        for pid in pids {
            // SAFETY: our own child, reaped once.
            unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
        }
        result.unwrap();
    }

    /// For Redis: a big payload comes back into its bytes, which then
    /// decode alone, while the value's handles stay behind in order.
    #[test]
    fn a_big_payload_can_be_brought_back_inline() {
        let value = pattern(3 * SPILL_AT, 9);
        let (mut bytes, mut fds) = encode(&value).unwrap();
        inline(&mut bytes, &mut fds).unwrap();
        assert!(fds.is_empty());
        assert_eq!(bytes.len(), 3 * SPILL_AT + 1 + 4);
        assert!(decode::<ByteBuf>(&bytes, Vec::new()).unwrap() == value);
        // A small one is left as it is.
        let (mut small, mut none) = encode(&7u32).unwrap();
        let before = small.clone();
        inline(&mut small, &mut none).unwrap();
        assert_eq!(small, before);
    }
}
