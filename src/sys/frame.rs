//! Length-framed messages with file descriptors attached, over a Unix stream
//! socket. This is the transport; what the bytes mean lives in `crate::wire`.
//!
//! A frame is a 12-byte header (payload length as u64 LE, descriptor count as
//! u32 LE) followed by the payload. The descriptors ride as `SCM_RIGHTS` on
//! the first byte of the header, so the kernel hands them over together with
//! the frame they belong to.

use std::collections::VecDeque;
use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::io::Errno;
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer, SendAncillaryMessage, SendFlags,
};

/// The most descriptors one frame can carry (Linux's `SCM_MAX_FD`).
pub(crate) const MAX_FDS: usize = 253;
const HEADER: usize = 12;
/// Payload is read in steps of at most this much, so a corrupt or hostile
/// length never makes us allocate more than has actually arrived.
const READ_STEP: usize = 1 << 20;

/// One received message.
#[derive(Debug)]
pub(crate) struct Frame {
    pub bytes: Vec<u8>,
    pub fds: Vec<OwnedFd>,
}

/// Sends one frame, blocking until it is all written. `EPIPE` is returned as
/// an error, never as `SIGPIPE`.
pub(crate) fn send(sock: BorrowedFd<'_>, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    send_frames(sock, &[(bytes, fds)])
}

/// Sends several frames with as few system calls as possible: the receiver
/// reads them in one go. All their descriptors (at most [`MAX_FDS`]) ride
/// on the first byte; the receiver hands them out to the frames in order.
pub(crate) fn send_frames(sock: BorrowedFd<'_>, frames: &[(&[u8], &[BorrowedFd<'_>])]) -> io::Result<()> {
    let fds: Vec<BorrowedFd<'_>> = frames.iter().flat_map(|(_, f)| f.iter().copied()).collect();
    if fds.len() > MAX_FDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} descriptors in one message (at most {MAX_FDS})", fds.len()),
        ));
    }
    let headers: Vec<[u8; HEADER]> = frames.iter().map(|(bytes, fds)| header(bytes.len(), fds.len())).collect();
    let mut parts: Vec<&[u8]> = Vec::with_capacity(frames.len() * 2);
    for (h, (bytes, _)) in headers.iter().zip(frames) {
        parts.push(h);
        parts.push(bytes);
    }
    let total: usize = parts.iter().map(|p| p.len()).sum();

    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len().max(1)))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(io::Error::other("ancillary buffer too small"));
    }
    let iov: Vec<IoSlice<'_>> = parts.iter().map(|p| IoSlice::new(p)).collect();
    let mut done = loop {
        match rustix::net::sendmsg(sock, &iov, &mut control, SendFlags::NOSIGNAL) {
            Ok(n) => break n,
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    // The descriptors went with the first write; the rest is plain bytes.
    while done < total {
        let (part, offset) = locate(&parts, done);
        match rustix::net::send(sock, &parts[part][offset..], SendFlags::NOSIGNAL) {
            Ok(n) => done += n,
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Appends one frame to `out`, for [`send_some`], its payload written by
/// `payload` straight after the header (no payload buffer of its own).
pub(crate) fn encode_with(out: &mut Vec<u8>, nfds: usize, payload: impl FnOnce(&mut Vec<u8>)) {
    let at = out.len();
    out.extend_from_slice(&[0; HEADER]);
    payload(out);
    let len = out.len() - at - HEADER;
    out[at..at + HEADER].copy_from_slice(&header(len, nfds));
}

/// One non-blocking write of already-framed bytes, with `fds` attached to its
/// first byte. Returns how many bytes went out: 0 when the socket is full (and
/// then the descriptors did not go either).
pub(crate) fn send_some(sock: BorrowedFd<'_>, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<usize> {
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len().max(1)))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::other("ancillary buffer too small"));
    }
    loop {
        match rustix::net::sendmsg(
            sock,
            &[IoSlice::new(bytes)],
            &mut control,
            SendFlags::NOSIGNAL | SendFlags::DONTWAIT,
        ) {
            Ok(n) => return Ok(n),
            Err(Errno::INTR) => continue,
            Err(Errno::AGAIN) => return Ok(0),
            Err(e) => return Err(e.into()),
        }
    }
}

fn header(len: usize, nfds: usize) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[..8].copy_from_slice(&(len as u64).to_le_bytes());
    h[8..].copy_from_slice(&(nfds as u32).to_le_bytes());
    h
}

/// Which part, and where in it, the byte at `at` of the concatenation is.
fn locate(parts: &[&[u8]], mut at: usize) -> (usize, usize) {
    for (i, p) in parts.iter().enumerate() {
        if at < p.len() {
            return (i, at);
        }
        at -= p.len();
    }
    (parts.len() - 1, parts[parts.len() - 1].len())
}

/// What one read step produced.
#[derive(Debug)]
pub(crate) enum Progress {
    /// A whole frame arrived.
    Frame(Frame),
    /// More bytes are needed; nothing is available right now.
    Pending,
    /// The peer closed the connection between frames.
    Eof,
}

/// Reassembles frames from a stream socket, blocking or not. Reads in large
/// chunks, so many small frames cost one system call.
#[derive(Debug, Default)]
pub(crate) struct Reader {
    /// Bytes `start..end` are received and not yet parsed; the rest of the
    /// (initialised) buffer is room for the next read, reused, never
    /// cleared again.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    fds: VecDeque<OwnedFd>,
    eof: bool,
    /// Largest payload accepted; `None` for no limit.
    limit: Option<usize>,
    /// A frame over [`BIG`] being read straight into bytes of its own.
    big: Option<Big>,
}

/// A big frame's payload so far: read into its own buffer, which becomes
/// the frame's bytes as it is (no second copy, and the reader's buffer does
/// not keep its size afterwards).
#[derive(Debug)]
struct Big {
    /// Zeroed ahead of the reads, in steps; `filled` of it has arrived.
    bytes: Vec<u8>,
    filled: usize,
    len: usize,
    nfds: usize,
}

/// Payloads above this are read into their own buffer.
const BIG: usize = READ_STEP;

/// A frame larger than the reader accepts (it was not read).
#[derive(Debug)]
pub(crate) struct Oversize {
    pub size: usize,
    pub limit: usize,
}

impl std::fmt::Display for Oversize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "a message of {} bytes is over the limit of {} bytes", self.size, self.limit)
    }
}

impl std::error::Error for Oversize {}

/// How much a read asks for when no large frame is pending.
const READ_CHUNK: usize = 64 << 10;

impl Reader {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Refuses frames whose payload is larger than `limit`, before reading
    /// (or allocating for) them.
    pub(crate) fn set_limit(&mut self, limit: Option<usize>) {
        self.limit = limit;
    }

    /// Whether bytes are buffered that no frame has taken yet.
    pub(crate) fn has_buffered(&self) -> bool {
        self.end > self.start || !self.fds.is_empty() || self.big.is_some()
    }

    /// Whether a whole frame is buffered.
    pub(crate) fn has_frame(&self) -> bool {
        let avail = &self.buf[self.start..self.end];
        avail.len() >= HEADER
            && (avail.len() - HEADER) as u64 >= u64::from_le_bytes(avail[..8].try_into().expect("8 bytes"))
    }

    /// [`read`](Self::read), blocking, but looking without waiting until
    /// `until` first (`sys::spin_until`): for a reply that usually comes
    /// within microseconds.
    pub(crate) fn read_spinning(&mut self, sock: BorrowedFd<'_>, until: std::time::Instant) -> io::Result<Progress> {
        let looked = super::spin_until(until, || match self.read(sock, false) {
            Ok(Progress::Pending) => None,
            done => Some(done),
        });
        looked.unwrap_or_else(|| self.read(sock, true))
    }

    /// The next frame: from what is buffered, else from the socket (blocking
    /// only when `block` is true).
    pub(crate) fn read(&mut self, sock: BorrowedFd<'_>, block: bool) -> io::Result<Progress> {
        let flags = if block { RecvFlags::CMSG_CLOEXEC } else { RecvFlags::CMSG_CLOEXEC | RecvFlags::DONTWAIT };
        loop {
            if self.big.is_some() {
                match self.read_big(sock, flags)? {
                    Some(progress) => return Ok(progress),
                    None => continue,
                }
            }
            let need = match self.parse()? {
                Parsed::Frame(f) => return Ok(Progress::Frame(f)),
                Parsed::Need(n) => n,
            };
            if need > HEADER + BIG && self.end - self.start >= HEADER {
                self.start_big(need - HEADER);
                continue;
            }
            if self.eof {
                if self.end == self.start {
                    return Ok(Progress::Eof);
                }
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed in the middle of a message",
                ));
            }
            self.make_room(need);
            match self.recv(sock, flags)? {
                Some(0) => self.eof = true,
                Some(n) => self.end += n,
                None => return Ok(Progress::Pending),
            }
        }
    }

    /// Moves what is buffered of a big frame (its header parsed and
    /// checked) into a buffer of its own.
    fn start_big(&mut self, len: usize) {
        let avail = &self.buf[self.start..self.end];
        let nfds = u32::from_le_bytes(avail[8..HEADER].try_into().expect("4 bytes")) as usize;
        let bytes = avail[HEADER..].to_vec();
        let filled = bytes.len();
        // Nothing of a later frame is buffered: this one is not complete.
        self.start = 0;
        self.end = 0;
        self.big = Some(Big { bytes, filled, len, nfds });
    }

    /// One step of a big frame: the frame when it is whole, `Pending` when
    /// nothing more is there now, `None` to go on.
    fn read_big(&mut self, sock: BorrowedFd<'_>, flags: RecvFlags) -> io::Result<Option<Progress>> {
        let big = self.big.as_mut().expect("a big frame is being read");
        if big.filled == big.len {
            let Big { bytes, nfds, .. } = self.big.take().expect("checked above");
            if self.fds.len() < nfds {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("message announced {nfds} descriptors but carried {}", self.fds.len()),
                ));
            }
            let fds = self.fds.drain(..nfds).collect();
            return Ok(Some(Progress::Frame(Frame { bytes, fds })));
        }
        if self.eof {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed in the middle of a message"));
        }
        if big.filled == big.bytes.len() {
            // Grown as bytes arrive (at most doubling what came): a hostile
            // length allocates nothing in advance. (A large block's growth
            // is a remap, not a copy.)
            let room = (big.len - big.filled).min(big.filled.max(READ_STEP));
            big.bytes.resize(big.filled + room, 0);
        }
        // With its ancillary buffer: a sender may attach the descriptors of
        // frames queued behind this one to a write that starts inside it.
        match recv_into(sock, &mut big.bytes[big.filled..], flags, &mut self.fds)? {
            None => return Ok(Some(Progress::Pending)),
            Some(0) => self.eof = true,
            Some(n) => big.filled += n,
        }
        Ok(None)
    }

    /// Makes room for a read: moves unparsed bytes to the front and grows
    /// the buffer only as far as a pending frame needs (at most a step at a
    /// time, so a hostile length allocates nothing in advance).
    fn make_room(&mut self, need: usize) {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let want = need.saturating_sub(self.end).clamp(READ_CHUNK, READ_STEP.max(READ_CHUNK));
        if self.buf.len() - self.end < want.min(READ_CHUNK)
            || (need > self.buf.len() && self.buf.len() - self.end < want)
        {
            self.buf.resize(self.end + want, 0);
        }
    }

    fn parse(&mut self) -> io::Result<Parsed> {
        let avail = &self.buf[self.start..self.end];
        if avail.len() < HEADER {
            return Ok(Parsed::Need(HEADER));
        }
        let len = u64::from_le_bytes(avail[..8].try_into().expect("8 bytes"));
        let nfds = u32::from_le_bytes(avail[8..HEADER].try_into().expect("4 bytes")) as usize;
        let len = usize::try_from(len)
            .ok()
            .filter(|l| l.checked_add(HEADER).is_some())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "message length overflows usize"))?;
        if nfds > MAX_FDS {
            return Err(io::Error::new(io::ErrorKind::InvalidData, format!("message claims {nfds} descriptors")));
        }
        if let Some(limit) = self.limit
            && len > limit
        {
            return Err(io::Error::new(io::ErrorKind::InvalidData, Oversize { size: len, limit }));
        }
        if avail.len() - HEADER < len {
            return Ok(Parsed::Need(HEADER + len));
        }
        if self.fds.len() < nfds {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("message announced {nfds} descriptors but carried {}", self.fds.len()),
            ));
        }
        let bytes = avail[HEADER..HEADER + len].to_vec();
        self.start += HEADER + len;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        let fds = self.fds.drain(..nfds).collect();
        Ok(Parsed::Frame(Frame { bytes, fds }))
    }

    fn recv(&mut self, sock: BorrowedFd<'_>, flags: RecvFlags) -> io::Result<Option<usize>> {
        recv_into(sock, &mut self.buf[self.end..], flags, &mut self.fds)
    }
}

/// One read into `buf`, descriptors that came with it appended to `fds`:
/// how many bytes, `None` when a non-blocking read found nothing.
fn recv_into(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    flags: RecvFlags,
    fds: &mut VecDeque<OwnedFd>,
) -> io::Result<Option<usize>> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let result = loop {
        match rustix::net::recvmsg(sock, &mut [IoSliceMut::new(buf)], &mut control, flags) {
            Err(Errno::INTR) => continue,
            other => break other,
        }
    };
    for msg in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = msg {
            fds.extend(received);
        }
    }
    match result {
        Ok(r) => Ok(Some(r.bytes)),
        Err(Errno::AGAIN) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

enum Parsed {
    Frame(Frame),
    /// Bytes the buffer must hold before the next frame can be parsed.
    Need(usize),
}

/// Blocks for the next frame; `None` on a clean end of stream. It may read
/// past the frame and drop what follows: only for a connection that
/// carries this one frame in that direction (a child's bootstrap).
pub(crate) fn recv_blocking(sock: impl AsFd) -> io::Result<Option<Frame>> {
    match Reader::new().read(sock.as_fd(), true)? {
        Progress::Frame(f) => Ok(Some(f)),
        Progress::Eof => Ok(None),
        Progress::Pending => Err(io::Error::other("blocking read returned without data")),
    }
}

/// Sends one datagram on a sequenced-packet socket, descriptors attached.
pub(crate) fn send_packet(sock: BorrowedFd<'_>, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len().max(1)))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::other("ancillary buffer too small"));
    }
    loop {
        match rustix::net::sendmsg(sock, &[IoSlice::new(bytes)], &mut control, SendFlags::NOSIGNAL) {
            Ok(_) => return Ok(()),
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Receives one datagram from a sequenced-packet socket. `Ok(None)` when
/// `block` is false and nothing is waiting; a zero length means end of
/// stream (so no protocol of ours sends an empty packet).
///
/// Linux can report the end of a sequenced-packet stream while a packet
/// is there: a receive looks at the queue, then at whether the peer has
/// closed, and a packet sent just before the close can land in between
/// (seen on 6.18, blocking or not; a bare C program shows it about once in
/// 10⁴ send-then-close pairs, and the forkserver lost children's exit
/// codes to it). Once the close is seen, whatever was sent before it is
/// queued: one more look is exact.
pub(crate) fn recv_packet(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    block: bool,
) -> io::Result<Option<(usize, Vec<OwnedFd>)>> {
    match recv_packet_once(sock, buf, block)? {
        Some((0, fds)) if fds.is_empty() => Ok(Some(recv_packet_once(sock, buf, false)?.unwrap_or((0, fds)))),
        got => Ok(got),
    }
}

fn recv_packet_once(sock: BorrowedFd<'_>, buf: &mut [u8], block: bool) -> io::Result<Option<(usize, Vec<OwnedFd>)>> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut flags = RecvFlags::CMSG_CLOEXEC;
    if !block {
        flags |= RecvFlags::DONTWAIT;
    }
    let result = loop {
        match rustix::net::recvmsg(sock, &mut [IoSliceMut::new(buf)], &mut control, flags) {
            Err(Errno::INTR) => continue,
            other => break other,
        }
    };
    let mut fds = Vec::new();
    for msg in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = msg {
            fds.extend(received);
        }
    }
    match result {
        Ok(r) => Ok(Some((r.bytes, fds))),
        Err(Errno::AGAIN) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Copies the start of the next packet into `buf` without taking it, and
/// without waiting; `None` when none is waiting. Descriptors the packet
/// carries stay with it (no control buffer is offered for them).
pub(crate) fn peek_packet(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Option<usize>> {
    let flags = RecvFlags::PEEK | RecvFlags::DONTWAIT | RecvFlags::TRUNC;
    loop {
        match rustix::net::recv(sock, &mut *buf, flags) {
            Ok((_, n)) => return Ok(Some(n)),
            Err(Errno::INTR) => continue,
            Err(Errno::AGAIN) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
    }

    /// Reads frames without blocking (waiting on poll), until `n` came.
    fn read_n(reader: &mut Reader, sock: &UnixStream, n: usize) -> Vec<Frame> {
        let mut out = Vec::new();
        while out.len() < n {
            match reader.read(sock.as_fd(), false).unwrap() {
                Progress::Frame(f) => out.push(f),
                Progress::Pending => {
                    crate::sys::poll(&[(sock.as_fd(), crate::sys::Interest::Read)], None).unwrap();
                }
                Progress::Eof => panic!("end of stream after {} frames", out.len()),
            }
        }
        out
    }

    /// The kernel race `recv_packet` works around: a packet sent right
    /// before the sender closes must be received, not taken for the end.
    /// Each lap, a thread sends two packets and closes while we receive the
    /// second without waiting, as the forkserver's status is read. The race
    /// needs the receiver interrupted inside one system call, so laps are
    /// many and cheap; without the second look this failed in about one run
    /// of four here.
    #[test]
    fn a_packet_sent_just_before_the_close_is_received_not_an_end() {
        let (to_sender, sockets) = std::sync::mpsc::channel::<OwnedFd>();
        let sender = std::thread::spawn(move || {
            for theirs in sockets {
                send_packet(theirs.as_fd(), &1u32.to_le_bytes(), &[]).unwrap();
                send_packet(theirs.as_fd(), &2u32.to_le_bytes(), &[]).unwrap();
            }
        });
        const LAPS: u32 = 200_000;
        let mut buf = [0u8; 8];
        for lap in 0..LAPS {
            let (ours, theirs) = crate::sys::packet_pair().unwrap();
            to_sender.send(theirs).unwrap();
            assert_eq!(recv_packet(ours.as_fd(), &mut buf, true).unwrap().map(|(n, _)| n), Some(4), "lap {lap}");
            let second = loop {
                if let Some((n, _)) = recv_packet(ours.as_fd(), &mut buf, false).unwrap() {
                    break n;
                }
            };
            assert_eq!((second, &buf[..4]), (4, &2u32.to_le_bytes()[..]), "lap {lap}: the second packet was lost");
        }
        drop(to_sender);
        sender.join().unwrap();
    }

    /// Sizes around the big-frame threshold, one with descriptors on the
    /// write that starts inside the big frame before it (as the pool's
    /// outbox sends them): every byte and descriptor where it belongs.
    #[test]
    fn big_frames_arrive_whole_and_descriptors_reach_their_frame() {
        let (a, b) = UnixStream::pair().unwrap();
        let sizes = [BIG - 1, BIG, BIG + 1, 3 * BIG + 7, 5, 0, 2 * BIG];
        let frames: Vec<Vec<u8>> = sizes.iter().enumerate().map(|(i, &n)| pattern(n, i as u8)).collect();
        let sent = frames.clone();
        let writer = std::thread::spawn(move || {
            let (r, w) = rustix::pipe::pipe().unwrap();
            for f in &sent {
                send(a.as_fd(), f, &[]).unwrap();
            }
            // A big frame, then a small one with a descriptor that rides
            // on a write starting in the middle of the big one.
            let mut out = Vec::new();
            encode_with(&mut out, 0, |out| out.extend_from_slice(&pattern(2 * BIG + 3, 9)));
            encode_with(&mut out, 1, |out| out.extend_from_slice(b"tail"));
            let half = BIG;
            let mut at = 0;
            while at < half {
                let n = send_some(a.as_fd(), &out[at..half], &[]).unwrap();
                if n == 0 {
                    crate::sys::poll(&[(a.as_fd(), crate::sys::Interest::Write)], None).unwrap();
                }
                at += n;
            }
            let mut fds = vec![r.as_fd()];
            while at < out.len() {
                let n = send_some(a.as_fd(), &out[at..], &fds).unwrap();
                if n == 0 {
                    crate::sys::poll(&[(a.as_fd(), crate::sys::Interest::Write)], None).unwrap();
                } else {
                    fds.clear();
                }
                at += n;
            }
            drop(w);
        });
        let mut reader = Reader::new();
        let got = read_n(&mut reader, &b, frames.len() + 2);
        writer.join().unwrap();
        for (i, (f, want)) in got.iter().zip(&frames).enumerate() {
            assert!(f.bytes == *want, "frame {i} ({} bytes) came back changed", want.len());
            assert!(f.fds.is_empty());
        }
        let (big, tail) = (&got[frames.len()], &got[frames.len() + 1]);
        assert!(big.bytes == pattern(2 * BIG + 3, 9));
        assert!(big.fds.is_empty(), "the big frame took the next one's descriptor");
        assert_eq!((tail.bytes.as_slice(), tail.fds.len()), (&b"tail"[..], 1));
        assert!(reader.buf.len() <= 2 * READ_STEP, "the reader kept a big frame's size: {}", reader.buf.len());
    }

    /// A length no sender means (1 TiB): memory grows with what arrives,
    /// and the end of the stream inside it is an error.
    #[test]
    fn a_hostile_length_allocates_only_what_arrives() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut head = header(1 << 40, 0).to_vec();
        head.extend_from_slice(&[7; 1000]);
        send_some(a.as_fd(), &head, &[]).unwrap();
        let mut reader = Reader::new();
        assert!(matches!(reader.read(b.as_fd(), false).unwrap(), Progress::Pending));
        let held = reader.big.as_ref().map(|big| big.bytes.capacity()).unwrap();
        assert!(held <= 2 * READ_STEP, "{held} bytes held for 1000 received");
        drop(a);
        let err = reader.read(b.as_fd(), true).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }
}
