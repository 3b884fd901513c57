//! What a ring's bytes mean: records, markers and lap padding, and the one
//! function that reads them back. Pure: it sees the bytes through a reader
//! and the indices as numbers, so it can be fuzzed alone.
//!
//! A record is an 8-byte little-endian word, then its payload:
//! - a length (below [`MARKER`]): that many payload bytes follow;
//! - [`MARKER`]: no payload; the message went around the ring (a socket);
//! - [`SKIP`]: padding to the end of the lap; the next record starts at the
//!   next multiple of the capacity. It is published together with the
//!   record after it, so it is never the last thing before `tail`.
//!
//! Records may straddle the end of the lap (bytes wrap to the start).

/// The word of a marker.
pub(crate) const MARKER: u64 = 1 << 63;
/// The word of lap padding.
pub(crate) const SKIP: u64 = 1 << 62;
/// Bytes of a record's word.
pub(crate) const WORD: u64 = 8;

/// What the bytes at the head hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `len` payload bytes at `payload`.
    Bytes {
        payload: u64,
        len: u64,
    },
    Marker,
}

/// One record read at the head: what it is, and where the head goes next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Parsed {
    pub kind: Kind,
    /// Absolute position of the record's word (after any padding).
    pub at: u64,
    /// The new head: just past the record.
    pub next: u64,
}

/// Bytes that no correct producer writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Corrupt;

/// Reads the record at `head`, given that `[head, tail)` is published and
/// the ring holds `cap` bytes; `word_at(pos)` reads the 8-byte word at an
/// absolute position. Whatever the bytes, the result is a record lying
/// wholly inside `[head, tail)` or [`Corrupt`]: never a panic, never a
/// position past `tail`.
pub(crate) fn parse(head: u64, tail: u64, cap: u64, word_at: impl Fn(u64) -> u64) -> Result<Parsed, Corrupt> {
    let avail = tail.checked_sub(head).filter(|a| *a <= cap && *a >= WORD).ok_or(Corrupt)?;
    let mut at = head;
    let mut word = word_at(at);
    if word == SKIP {
        let pad = cap - head % cap;
        // The padding reaches the lap's end, and a record follows it.
        if pad < WORD || pad + WORD > avail {
            return Err(Corrupt);
        }
        at = head + pad;
        word = word_at(at);
    }
    let left = tail - at;
    let kind = match word {
        MARKER => Kind::Marker,
        len if len < SKIP && len <= left - WORD => Kind::Bytes { payload: at + WORD, len },
        _ => return Err(Corrupt),
    };
    let next = match kind {
        Kind::Marker => at + WORD,
        Kind::Bytes { payload, len } => payload + len,
    };
    Ok(Parsed { kind, at, next })
}

#[cfg(all(test, not(multiproc_loom)))]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn reader(bytes: &[u8]) -> impl Fn(u64) -> u64 + '_ {
        let cap = bytes.len() as u64;
        move |pos| {
            let mut w = [0u8; 8];
            for (i, b) in w.iter_mut().enumerate() {
                *b = bytes[((pos + i as u64) % cap) as usize];
            }
            u64::from_le_bytes(w)
        }
    }

    #[test]
    fn reads_what_producers_write() {
        let mut ring = vec![0u8; 64];
        ring[8..16].copy_from_slice(&5u64.to_le_bytes());
        let p = parse(8, 29, 64, reader(&ring)).unwrap();
        assert_eq!(p, Parsed { kind: Kind::Bytes { payload: 16, len: 5 }, at: 8, next: 21 });
        // A marker straddling the lap's end.
        let mut ring = vec![0u8; 64];
        for (i, b) in MARKER.to_le_bytes().iter().enumerate() {
            ring[(60 + i) % 64] = *b;
        }
        assert_eq!(parse(124, 132, 64, reader(&ring)).unwrap().kind, Kind::Marker);
        // Padding to the lap's end, then a record at the next lap's start.
        let mut ring = vec![0u8; 64];
        ring[40..48].copy_from_slice(&SKIP.to_le_bytes());
        ring[0..8].copy_from_slice(&3u64.to_le_bytes());
        assert_eq!(
            parse(40, 75, 64, reader(&ring)).unwrap(),
            Parsed { kind: Kind::Bytes { payload: 72, len: 3 }, at: 64, next: 75 }
        );
    }

    #[test]
    fn refuses_records_beyond_the_published_bytes() {
        let mut ring = vec![0u8; 64];
        ring[0..8].copy_from_slice(&5u64.to_le_bytes());
        assert_eq!(parse(0, 12, 64, reader(&ring)), Err(Corrupt), "payload past tail");
        ring[0..8].copy_from_slice(&SKIP.to_le_bytes());
        assert_eq!(parse(0, 64, 64, reader(&ring)), Err(Corrupt), "padding with no record after it");
        assert_eq!(parse(0, 4, 64, reader(&ring)), Err(Corrupt), "less than a word");
        assert_eq!(parse(10, 5, 64, reader(&ring)), Err(Corrupt), "tail behind head");
        assert_eq!(parse(0, 65, 64, reader(&ring)), Err(Corrupt), "more than the capacity");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(
            std::env::var("MULTIPROC_PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(20_000)))]

        /// Arbitrary bytes and indices: a record inside [head, tail), or an
        /// error; never a panic.
        #[test]
        fn arbitrary_bytes_give_a_record_or_an_error(
            bytes in proptest::collection::vec(any::<u8>(), 8..300),
            words in proptest::collection::vec((0usize..300, prop_oneof![Just(MARKER), Just(SKIP), 0u64..400, any::<u64>()]), 0..6),
            head in any::<u64>(),
            span in 0u64..400,
        ) {
            let mut bytes = bytes;
            let cap = bytes.len() as u64;
            for (at, w) in words {
                for (i, b) in w.to_le_bytes().iter().enumerate() {
                    let n = bytes.len();
                    bytes[(at + i) % n] = *b;
                }
            }
            let head = head % (u64::MAX / 2);
            let tail = head + span;
            if let Ok(p) = parse(head, tail, cap, reader(&bytes)) {
                prop_assert!(head <= p.at && p.at < p.next && p.next <= tail);
                if let Kind::Bytes { payload, len } = p.kind {
                    prop_assert_eq!(payload + len, p.next);
                }
            }
        }
    }
}
