//! What parent and child say to each other. The transport (frames with
//! descriptors) is in `sys::frame`; this is only the meaning of the bytes.
//!
//! Spawn and forkserver children receive one [`Bootstrap`] frame and answer
//! with one [`Outcome`] frame. Forked children skip the bootstrap (they
//! already hold everything in memory) but answer the same way.

use serde::{Deserialize, Serialize};

use crate::StartMethod;
use crate::error::Payload;

/// Where the child finds the code to run: the distance of a monomorphised
/// entry function from an anchor function in the same executable, plus the
/// distance of a second known function as a check that the executable is
/// the same one.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct EntryRef {
    pub offset: i64,
    pub check: i64,
}

/// Everything a spawn or forkserver child needs to become the process the
/// parent described. Descriptors travel beside it: the first is a pidfd of
/// the parent, the rest belong to the payload.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Bootstrap {
    pub entry: EntryRef,
    pub name: String,
    pub identity: Vec<u32>,
    pub daemon: bool,
    pub start_method: StartMethod,
    pub parent_pid: i32,
    pub parent_name: String,
    /// True when a parent-death signal is a faithful "parent died" signal
    /// (the child's OS parent is the real parent, created from its main thread).
    pub deathsig: bool,
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
}

/// The child's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Outcome {
    /// The target returned; this is its encoded value.
    Returned(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The target panicked.
    Panicked { message: String, location: Option<String>, backtrace: Option<String> },
    /// The value could not be decoded or encoded in the child.
    Codec { what: Payload, decode: bool, message: String },
    /// The bootstrap itself failed.
    Bootstrap(String),
}

impl Outcome {
    /// The exit status the child uses after sending this outcome (Python:
    /// 0 after a normal return, 1 after an exception).
    pub fn exit_status(&self) -> i32 {
        match self {
            Outcome::Returned(_) => 0,
            _ => 1,
        }
    }
}

/// One call's encoded arguments inside a pool task, and how many of the
/// frame's descriptors belong to it (they follow in order).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Packed {
    #[serde(with = "serde_bytes")]
    pub bytes: Vec<u8>,
    pub nfds: u32,
}

/// What the pool says to a worker.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ToWorker {
    /// Run `entry` once per item (a chunk of calls), in order. `direct`:
    /// its caller handed it over while this worker was idle, and likely
    /// waits for it (the worker then looks actively for the next one).
    Task { id: u64, entry: EntryRef, items: Vec<Packed>, direct: bool },
    /// Finish: no more tasks will come.
    Exit,
}

/// [`ToWorker::Task`] as the pool sends it: its items' bytes borrowed, not
/// copied; encoded exactly as that variant (a test holds it to that).
#[derive(Debug, Serialize)]
pub(crate) enum ToWorkerRef<'a> {
    Task { id: u64, entry: EntryRef, items: Vec<PackedRef<'a>>, direct: bool },
}

/// [`Packed`], borrowed.
#[derive(Debug, Serialize)]
pub(crate) struct PackedRef<'a> {
    #[serde(with = "serde_bytes")]
    pub bytes: &'a [u8],
    pub nfds: u32,
}

/// What a worker says to the pool.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum FromWorker {
    /// The initializer ran (or there was none): tasks may come.
    Ready,
    /// The initializer failed; the worker is leaving.
    InitFailed(Outcome),
    /// Task `id` ran: one outcome per item, with the number of the frame's
    /// descriptors that belong to it and how long the call ran, in
    /// nanoseconds (for `Pool::stats`).
    Done { id: u64, items: Vec<(Outcome, u32, u64)> },
    /// Under `panic = "abort"`: call `call` of item `item` (its place in a
    /// chunk encoded as one value, else 0) of task `id` panicked and the
    /// worker is about to abort.
    Aborting { id: u64, item: u32, call: u32, outcome: Outcome },
    /// The worker is leaving in order; this is what its exit hook
    /// (`PoolBuilder::worker_exit`) returned.
    Exited(Outcome),
    /// Answers wait in the worker's ring (`pool::answers`); sent only to
    /// wake a supervisor that is about to sleep.
    Bell,
}

/// One call's result inside the answer to a chunk of calls.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ItemResult<R> {
    Ok(R),
    Err(Outcome),
}

/// [`ItemResult`] as a worker sends it, borrowed; encoded exactly as that
/// (a test holds it to that).
#[derive(Debug, Serialize)]
pub(crate) enum ItemResultRef<'a, R> {
    Ok(&'a R),
    Err(&'a Outcome),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pool encodes tasks through the borrowed form; workers decode
    /// the owned one. Same bytes, or workers read garbage.
    #[test]
    fn a_borrowed_task_encodes_as_the_owned_one() {
        let entry = EntryRef { offset: -12345, check: 678 };
        let payloads = [vec![], vec![7u8], (0..70_000).map(|i| i as u8).collect::<Vec<u8>>()];
        let owned = ToWorker::Task {
            id: 1 << 40,
            entry,
            items: payloads.iter().enumerate().map(|(i, b)| Packed { bytes: b.clone(), nfds: i as u32 }).collect(),
            direct: true,
        };
        let borrowed = ToWorkerRef::Task {
            id: 1 << 40,
            entry,
            items: payloads.iter().enumerate().map(|(i, b)| PackedRef { bytes: b, nfds: i as u32 }).collect(),
            direct: true,
        };
        let bytes = crate::reduction::encode_plain(&borrowed);
        assert_eq!(bytes, crate::reduction::encode_plain(&owned));
        let Ok(ToWorker::Task { id, items, direct, .. }) = crate::reduction::decode_plain::<ToWorker>(&bytes) else {
            panic!("not a task")
        };
        assert_eq!((id, direct), (1 << 40, true));
        assert!(items.iter().zip(&payloads).all(|(p, b)| p.bytes == *b));
    }

    /// Workers encode a chunk's results through the borrowed form; the
    /// pool decodes the owned one.
    #[test]
    fn a_borrowed_item_result_encodes_as_the_owned_one() {
        let failed = Outcome::Panicked { message: "no".into(), location: Some("here".into()), backtrace: None };
        let owned: Vec<ItemResult<(u64, String)>> = vec![
            ItemResult::Ok((1 << 40, "x".into())),
            ItemResult::Err(failed.clone()),
            ItemResult::Ok((0, String::new())),
        ];
        let value = ((1u64 << 40, "x".to_string()), (0u64, String::new()));
        let borrowed = vec![ItemResultRef::Ok(&value.0), ItemResultRef::Err(&failed), ItemResultRef::Ok(&value.1)];
        assert_eq!(crate::reduction::encode_plain(&borrowed), crate::reduction::encode_plain(&owned));
    }
}
