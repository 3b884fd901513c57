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
use crate::wire::{ItemResult, Outcome};

/// The place in its chunk of the call running now, for a worker's last
/// words under `panic = "abort"` (kept only there).
pub(crate) static CALL: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

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
    let results: Vec<ItemResult<F::Output>> = calls
        .into_iter()
        .enumerate()
        .map(|(i, call)| {
            if cfg!(panic = "abort") {
                CALL.store(i as u32, std::sync::atomic::Ordering::Relaxed);
            }
            call
        })
        .map(|call| match catch_panic(|| f.call(call)) {
            Ok(v) => ItemResult::Ok(v),
            Err(outcome) => ItemResult::Err(outcome),
        })
        .collect();
    if let Ok((bytes, fds)) = reduction::encode(&results) {
        return Reply { outcome: Outcome::Returned(bytes), fds };
    }
    // Some value cannot be encoded: find it, keep the others.
    let results: Vec<ItemResult<F::Output>> = results
        .into_iter()
        .map(|r| match reduction::encode(&r) {
            Ok(_) => r,
            Err(message) => ItemResult::Err(Outcome::Codec { what: Payload::Result, decode: false, message }),
        })
        .collect();
    match reduction::encode(&results) {
        Ok((bytes, fds)) => Reply { outcome: Outcome::Returned(bytes), fds },
        Err(message) => Reply::codec(Payload::Result, false, message),
    }
}
