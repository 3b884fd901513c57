//! Length-framed messages with file descriptors attached, over a Unix stream
//! socket. This is the transport; what the bytes mean lives in `crate::wire`.
//!
//! A frame is a 12-byte header (payload length as u64 LE, descriptor count as
//! u32 LE) followed by the payload. The descriptors ride as `SCM_RIGHTS` on
//! the first byte of the header, so the kernel hands them over together with
//! the frame they belong to.

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
    if fds.len() > MAX_FDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} descriptors in one message (at most {MAX_FDS})", fds.len()),
        ));
    }
    let mut header = [0u8; HEADER];
    header[..8].copy_from_slice(&(bytes.len() as u64).to_le_bytes());
    header[8..].copy_from_slice(&(fds.len() as u32).to_le_bytes());

    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len().max(1)))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::other("ancillary buffer too small"));
    }
    let sent = loop {
        match rustix::net::sendmsg(
            sock,
            &[IoSlice::new(&header), IoSlice::new(bytes)],
            &mut control,
            SendFlags::NOSIGNAL,
        ) {
            Ok(n) => break n,
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    // The descriptors went with the first write; the rest is plain bytes.
    let mut done = sent;
    let total = HEADER + bytes.len();
    while done < total {
        let chunk: &[u8] = if done < HEADER { &header[done..] } else { &bytes[done - HEADER..] };
        match rustix::net::send(sock, chunk, SendFlags::NOSIGNAL) {
            Ok(n) => done += n,
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
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

/// Reassembles frames from a stream socket, blocking or not.
#[derive(Debug, Default)]
pub(crate) struct Reader {
    header: [u8; HEADER],
    have_header: usize,
    body: Vec<u8>,
    want: usize,
    nfds: usize,
    fds: Vec<OwnedFd>,
}

impl Reader {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Reads until a whole frame is in, or (when `block` is false) until no
    /// more data is available.
    pub(crate) fn read(&mut self, sock: BorrowedFd<'_>, block: bool) -> io::Result<Progress> {
        let flags = if block { RecvFlags::CMSG_CLOEXEC } else { RecvFlags::CMSG_CLOEXEC | RecvFlags::DONTWAIT };
        loop {
            let n = if self.have_header < HEADER {
                let at = self.have_header;
                match self.recv(sock, flags, Target::Header(at))? {
                    Some(n) => n,
                    None => return Ok(Progress::Pending),
                }
            } else {
                if self.body.len() == self.want {
                    return self.finish().map(Progress::Frame);
                }
                let at = self.body.len();
                let step = (self.want - at).min(READ_STEP);
                self.body.resize(at + step, 0);
                let got = self.recv(sock, flags, Target::Body(at));
                let n = match got {
                    Ok(Some(n)) => n,
                    Ok(None) => {
                        self.body.truncate(at);
                        return Ok(Progress::Pending);
                    }
                    Err(e) => {
                        self.body.truncate(at);
                        return Err(e);
                    }
                };
                self.body.truncate(at + n);
                n
            };
            if n == 0 {
                if self.have_header == 0 {
                    return Ok(Progress::Eof);
                }
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed in the middle of a message",
                ));
            }
            if self.have_header < HEADER {
                self.have_header += n;
                if self.have_header == HEADER {
                    let len = u64::from_le_bytes(self.header[..8].try_into().expect("8 bytes"));
                    let nfds = u32::from_le_bytes(self.header[8..].try_into().expect("4 bytes"));
                    self.want = usize::try_from(len)
                        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "message length overflows usize"))?;
                    self.nfds = nfds as usize;
                    if self.nfds > MAX_FDS {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("message claims {} descriptors", self.nfds),
                        ));
                    }
                    self.body = Vec::with_capacity(self.want.min(READ_STEP));
                }
            }
        }
    }

    fn recv(&mut self, sock: BorrowedFd<'_>, flags: RecvFlags, target: Target) -> io::Result<Option<usize>> {
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let buf: &mut [u8] = match target {
            Target::Header(at) => &mut self.header[at..],
            Target::Body(at) => &mut self.body[at..],
        };
        let result = loop {
            match rustix::net::recvmsg(sock, &mut [IoSliceMut::new(buf)], &mut control, flags) {
                Err(Errno::INTR) => continue,
                other => break other,
            }
        };
        for msg in control.drain() {
            if let RecvAncillaryMessage::ScmRights(fds) = msg {
                self.fds.extend(fds);
            }
        }
        match result {
            Ok(r) => Ok(Some(r.bytes)),
            Err(Errno::AGAIN) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn finish(&mut self) -> io::Result<Frame> {
        let bytes = std::mem::take(&mut self.body);
        let fds = std::mem::take(&mut self.fds);
        let nfds = self.nfds;
        self.have_header = 0;
        self.want = 0;
        self.nfds = 0;
        if fds.len() != nfds {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("message announced {nfds} descriptors but carried {}", fds.len()),
            ));
        }
        Ok(Frame { bytes, fds })
    }
}

enum Target {
    Header(usize),
    Body(usize),
}

/// Blocks for the next frame; `None` on a clean end of stream.
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
/// stream.
pub(crate) fn recv_packet(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    block: bool,
) -> io::Result<Option<(usize, Vec<OwnedFd>)>> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(8))];
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
