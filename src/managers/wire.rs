//! The bytes on a manager connection, as Python's
//! `multiprocessing.connection` frames them, and the authentication
//! handshake both sides run first. Knows sockets as `Read`/`Write` only;
//! what the frames mean is `server.rs`'s and `client.rs`'s business.

use std::io::{self, Read, Write};

use hmac::{Hmac, Mac};

/// Handshake frames are small; Python refuses more than 256 bytes there.
const HANDSHAKE_MAX: usize = 256;

/// Writes one frame: a big-endian `i32` length (or `-1` and a `u64` for
/// more than `i32::MAX`), then the payload.
pub(crate) fn write_frame(w: &mut impl Write, payload: &[u8]) -> io::Result<()> {
    let mut buf = Vec::with_capacity(payload.len() + 12);
    if payload.len() > i32::MAX as usize {
        buf.extend((-1i32).to_be_bytes());
        buf.extend((payload.len() as u64).to_be_bytes());
    } else {
        buf.extend((payload.len() as i32).to_be_bytes());
    }
    buf.extend(payload);
    w.write_all(&buf)?;
    w.flush()
}

/// Reads one frame of at most `limit` bytes. A larger announced length is
/// refused before anything is allocated for it. `Ok(None)` at a clean end
/// of stream before the frame.
pub(crate) fn read_frame(r: &mut impl Read, limit: usize) -> io::Result<Option<Vec<u8>>> {
    let mut head = [0u8; 4];
    match r.read_exact(&mut head) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = i32::from_be_bytes(head);
    let len = match len {
        -1 => {
            let mut long = [0u8; 8];
            r.read_exact(&mut long)?;
            u64::from_be_bytes(long)
        }
        n if n < 0 => return Err(invalid(format!("a negative frame length ({n})"))),
        n => n as u64,
    };
    if len > limit as u64 {
        return Err(io::Error::new(io::ErrorKind::InvalidData, FrameTooLarge { size: len, limit }));
    }
    let mut payload = vec![0u8; len as usize];
    r.read_exact(&mut payload)?;
    Ok(Some(payload))
}

/// The error inside `read_frame`'s `InvalidData` for a frame above its
/// limit (the frame is not read).
#[derive(Debug)]
pub(crate) struct FrameTooLarge {
    pub(crate) size: u64,
    pub(crate) limit: usize,
}

impl std::fmt::Display for FrameTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "a frame of {} bytes, above the limit of {}", self.size, self.limit)
    }
}

impl std::error::Error for FrameTooLarge {}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

const CHALLENGE: &[u8] = b"#CHALLENGE#";
const WELCOME: &[u8] = b"#WELCOME#";
const FAILURE: &[u8] = b"#FAILURE#";

/// Why a handshake failed.
#[derive(Debug)]
pub(crate) enum AuthError {
    /// The peer does not know the key (or we do not).
    WrongKey,
    /// Not a handshake at all, or the connection broke.
    Io(io::Error),
}

impl From<io::Error> for AuthError {
    fn from(e: io::Error) -> AuthError {
        AuthError::Io(e)
    }
}

/// The accepting side: challenges first, then answers the peer's
/// challenge (Python's `deliver_challenge` then `answer_challenge`).
pub(crate) fn accept(s: &mut (impl Read + Write), key: &[u8]) -> Result<(), AuthError> {
    deliver_challenge(s, key)?;
    answer_challenge(s, key)
}

/// The connecting side: answers first, then challenges.
pub(crate) fn connect(s: &mut (impl Read + Write), key: &[u8]) -> Result<(), AuthError> {
    answer_challenge(s, key)?;
    deliver_challenge(s, key)
}

/// Sends a `{sha256}` challenge (every Python 3 can answer it) and checks
/// the response, which may be in either form.
fn deliver_challenge(s: &mut (impl Read + Write), key: &[u8]) -> Result<(), AuthError> {
    let mut nonce = [0u8; 40];
    crate::sys::random_bytes(&mut nonce)?;
    let mut message = b"{sha256}".to_vec();
    message.extend(nonce);
    let mut frame = CHALLENGE.to_vec();
    frame.extend(&message);
    write_frame(s, &frame)?;
    let response = read_frame(s, HANDSHAKE_MAX)?.ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
    if verify(key, &message, &response) {
        write_frame(s, WELCOME)?;
        Ok(())
    } else {
        write_frame(s, FAILURE)?;
        Err(AuthError::WrongKey)
    }
}

/// Answers the peer's challenge and reads its verdict.
fn answer_challenge(s: &mut (impl Read + Write), key: &[u8]) -> Result<(), AuthError> {
    let frame = read_frame(s, HANDSHAKE_MAX)?.ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
    let Some(message) = frame.strip_prefix(CHALLENGE) else {
        return Err(AuthError::Io(invalid("expected a challenge".into())));
    };
    let response =
        respond(key, message).ok_or_else(|| AuthError::Io(invalid("a challenge we cannot answer".into())))?;
    write_frame(s, &response)?;
    let verdict = read_frame(s, HANDSHAKE_MAX)?.ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
    if verdict == WELCOME { Ok(()) } else { Err(AuthError::WrongKey) }
}

/// The digest named by a `{name}` prefix of `message`, and where the rest
/// starts. `None` for no prefix.
fn digest_name(message: &[u8]) -> Option<(&str, usize)> {
    if message.first() != Some(&b'{') {
        return None;
    }
    let close = message.iter().take(20).position(|b| *b == b'}')?;
    let name = std::str::from_utf8(&message[1..close]).ok()?;
    Some((name, close + 1))
}

fn mac(name: &str, key: &[u8], message: &[u8]) -> Option<Vec<u8>> {
    fn run<M: Mac + hmac::digest::KeyInit>(key: &[u8], message: &[u8]) -> Vec<u8> {
        let mut m = <M as Mac>::new_from_slice(key).expect("HMAC takes any key length");
        m.update(message);
        m.finalize().into_bytes().to_vec()
    }
    Some(match name {
        "md5" => run::<Hmac<md5::Md5>>(key, message),
        "sha256" => run::<Hmac<sha2::Sha256>>(key, message),
        "sha384" => run::<Hmac<sha2::Sha384>>(key, message),
        _ => return None,
    })
}

/// The response to challenge `message` (the bytes after `#CHALLENGE#`).
pub(crate) fn respond(key: &[u8], message: &[u8]) -> Option<Vec<u8>> {
    if message.len() < 20 {
        return None;
    }
    if message.len() == 20 || message.len() == 16 {
        return mac("md5", key, message);
    }
    let (name, _) = digest_name(message)?;
    let mut out = format!("{{{name}}}").into_bytes();
    out.extend(mac(name, key, message)?);
    Some(out)
}

/// Whether `response` proves knowledge of `key` for `message`, compared in
/// constant time.
pub(crate) fn verify(key: &[u8], message: &[u8], response: &[u8]) -> bool {
    let (name, digest) = match digest_name(response) {
        Some((name, start)) if response.len() != 16 && response.len() != 20 => (name, &response[start..]),
        _ => ("md5", response),
    };
    let Some(expected) = mac(name, key, message) else { return false };
    expected.len() == digest.len() && expected.iter().zip(digest).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_the_limit_holds_before_allocating() {
        let mut buf = Vec::new();
        write_frame(&mut buf, b"hello").unwrap();
        write_frame(&mut buf, b"").unwrap();
        let mut r = &buf[..];
        assert_eq!(read_frame(&mut r, 100).unwrap().unwrap(), b"hello");
        assert_eq!(read_frame(&mut r, 100).unwrap().unwrap(), b"");
        assert!(read_frame(&mut r, 100).unwrap().is_none());
        // A 2 GiB announcement with no body: refused on its header.
        let mut huge: &[u8] = &[0x7f, 0xff, 0xff, 0xff];
        assert_eq!(read_frame(&mut huge, 1 << 20).unwrap_err().kind(), io::ErrorKind::InvalidData);
        let mut long: &[u8] = &[0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0];
        assert!(read_frame(&mut long, 1 << 20).is_err());
        let mut negative: &[u8] = &[0xff, 0xff, 0xff, 0xfe];
        assert!(read_frame(&mut negative, 1 << 20).is_err());
    }

    #[test]
    fn both_response_forms() {
        let key = b"abc";
        let md5_challenge = [7u8; 20];
        let r = respond(key, &md5_challenge).unwrap();
        assert_eq!(r.len(), 16);
        assert!(verify(key, &md5_challenge, &r));
        assert!(!verify(b"abd", &md5_challenge, &r));
        let mut sha = b"{sha256}".to_vec();
        sha.extend([9u8; 40]);
        let r = respond(key, &sha).unwrap();
        assert!(r.starts_with(b"{sha256}") && r.len() == 8 + 32);
        assert!(verify(key, &sha, &r));
        assert!(!verify(key, &sha, &r[..r.len() - 1]));
        assert!(respond(key, b"short").is_none());
        assert!(respond(key, b"{nosuchdigest}0123456789abcdef").is_none());
    }
}

#[cfg(test)]
pub(crate) mod captures {
    //! Real Python traffic (tests/data/python-wire, key `abc`): every MAC
    //! reproduced, every pickle read.
    use super::*;

    pub(crate) struct Frame {
        pub(crate) conn: u32,
        pub(crate) server_to_client: bool,
        pub(crate) payload: Vec<u8>,
    }

    fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
        let start = line.find(&format!("\"{name}\": "))? + name.len() + 4;
        let rest = &line[start..];
        let rest = rest.strip_prefix('"').unwrap_or(rest);
        let end = rest.find(['"', ',', '}'])?;
        Some(&rest[..end])
    }

    pub(crate) fn frames() -> Vec<(String, Vec<Frame>)> {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/python-wire");
        let mut all = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "jsonl") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let frames = text
                .lines()
                .filter_map(|l| {
                    let payload = field(l, "payload")?;
                    let bytes =
                        (0..payload.len()).step_by(2).map(|i| u8::from_str_radix(&payload[i..i + 2], 16).unwrap());
                    Some(Frame {
                        conn: field(l, "conn")?.parse().unwrap(),
                        server_to_client: field(l, "dir")? == "S->C",
                        payload: bytes.collect(),
                    })
                })
                .collect();
            all.push((path.file_name().unwrap().to_string_lossy().into_owned(), frames));
        }
        assert!(all.len() >= 7, "capture files missing");
        all
    }

    #[test]
    fn every_mac_in_the_captures_is_reproduced() {
        let mut checked = 0;
        for (file, frames) in frames() {
            for (i, f) in frames.iter().enumerate() {
                let Some(message) = f.payload.strip_prefix(CHALLENGE) else { continue };
                // The answer is the next frame on the same connection the
                // other way.
                let answer = frames[i + 1..]
                    .iter()
                    .find(|g| g.conn == f.conn && g.server_to_client != f.server_to_client)
                    .unwrap();
                if file == "fail.jsonl" {
                    assert!(!verify(b"abc", message, &answer.payload), "{file}: the wrong key's MAC passed");
                    continue;
                }
                // We accept every real answer...
                assert!(verify(b"abc", message, &answer.payload), "{file} conn {}", f.conn);
                // ...and answer as Python >= 3.12 does. (Python <= 3.11
                // answers any challenge with a raw HMAC-MD5 of all of it,
                // which `verify` takes too.)
                if answer.payload.len() != 16 || message.len() == 20 {
                    assert_eq!(respond(b"abc", message).as_deref(), Some(&answer.payload[..]), "{file}");
                }
                checked += 1;
            }
        }
        assert!(checked > 50, "only {checked} handshakes");
    }

    #[test]
    fn every_pickle_in_the_captures_is_read() {
        let mut read = 0;
        for (file, frames) in frames() {
            for f in &frames {
                if f.payload.first() != Some(&0x80) {
                    continue; // handshake frames
                }
                let v = crate::pickle::loads(&f.payload).unwrap_or_else(|e| panic!("{file} conn {}: {e}", f.conn));
                // What we read, we write back and read again unchanged.
                let again = crate::pickle::loads(&crate::pickle::dumps(&v)).unwrap();
                assert_eq!(again, v, "{file}");
                read += 1;
            }
        }
        assert!(read > 100, "only {read} pickles");
    }
}
