//! Chunks of calls that travel as one value: one encoding and one decoding
//! per chunk instead of per call, which is what makes `map` fast. A panic
//! still fails only its own call; a value that cannot be encoded makes the
//! chunk fall back to one encoding per call, so it too fails alone.

use std::os::fd::OwnedFd;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::bootstrap::catch_panic;
use crate::error::Payload;
use crate::process::{EntryFn, Reply, Target, conjure};
use crate::reduction;
use crate::wire::{ItemResultRef, Outcome};

/// The place in its chunk of the call running now, for a worker's last
/// words under `panic = "abort"` (kept only there).
pub(crate) static CALL: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// A chunk's results, encoded as the `Vec<ItemResult<R>>` the pool decodes.
struct AsItemResults<'a, R>(&'a [std::result::Result<R, Box<Outcome>>]);

impl<R: Serialize> Serialize for AsItemResults<'_, R> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|r| match r {
            Ok(v) => ItemResultRef::Ok(v),
            Err(o) => ItemResultRef::Err(o),
        }))
    }
}

/// The entry function that runs a whole chunk of `F` calls.
pub(crate) fn chunk_entry_of<F, T>() -> EntryFn
where
    F: Target<T>,
    F::Output: Serialize,
    T: DeserializeOwned,
{
    const { assert!(size_of::<F>() == 0, "a task target must not capture anything: use a fn item") };
    chunk_entry::<F, T>
}

fn chunk_entry<F, T>(payload: &[u8], fds: Vec<OwnedFd>) -> Reply
where
    F: Target<T>,
    F::Output: Serialize,
    T: DeserializeOwned,
{
    let calls: Vec<T> = match reduction::decode(payload, fds) {
        Ok(calls) => calls,
        Err(message) => return Reply::codec(Payload::Arguments, true, message),
    };
    let f = conjure::<F>();
    // A failure boxed: for small values the vector stays small (an
    // `ItemResult` is as big as an `Outcome`), and is encoded as one.
    let results: Vec<std::result::Result<F::Output, Box<Outcome>>> = calls
        .into_iter()
        .enumerate()
        .map(|(i, call)| {
            if cfg!(panic = "abort") {
                CALL.store(i as u32, std::sync::atomic::Ordering::Relaxed);
            }
            catch_panic(|| f.call(call)).map_err(Box::new)
        })
        .collect();
    if let Ok((bytes, fds)) = reduction::encode(&AsItemResults(&results)) {
        return Reply { outcome: Outcome::Returned(bytes), fds };
    }
    // Some value cannot be encoded: find it, keep the others.
    let results: Vec<std::result::Result<F::Output, Box<Outcome>>> = results
        .into_iter()
        .map(|r| match r {
            Ok(v) => match reduction::encode(&v) {
                Ok(_) => Ok(v),
                Err(message) => Err(Box::new(Outcome::Codec { what: Payload::Result, decode: false, message })),
            },
            failed => failed,
        })
        .collect();
    match reduction::encode(&AsItemResults(&results)) {
        Ok((bytes, fds)) => Reply { outcome: Outcome::Returned(bytes), fds },
        Err(message) => Reply::codec(Payload::Result, false, message),
    }
}
