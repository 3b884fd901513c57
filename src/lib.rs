//! Python's `multiprocessing`, done properly in Rust.
//!
//! Run a Rust function in a child process and get its value back:
//!
//! ```
//! #[multiproc::main]
//! fn main() {
//!     fn square(x: u64) -> u64 { x * x }
//!
//!     let mut p = multiproc::Process::new(square, (12,));
//!     p.start().unwrap();
//!     assert_eq!(p.join().unwrap(), 144);
//! }
//! ```
//!
//! * [`Process`] brings Python's `Process`: start, join (with timeout), pid,
//!   name, daemon, is_alive, exitcode, terminate, kill; nested children;
//!   [`current_process`], [`parent_process`], [`active_children`].
//! * Three start methods ([`StartMethod`]): `forkserver` (the default),
//!   `spawn` and `fork`; chosen globally with [`set_start_method`] or per
//!   process.
//! * Failures are values: a child's panic, a killing signal, an early exit
//!   or a value that cannot be (de)serialized each comes back as an [`Error`].
//! * OS resources travel in arguments and results as [`Handle`]s, under every
//!   start method.
//! * No leaks: daemonic children die with their parent even when it is
//!   SIGKILLed; every child is reaped; non-daemonic children are joined when
//!   the program ends.
//!
//! * [`subprocess`] brings Python's `subprocess`: other programs with
//!   input, captured output and timeouts that kill the whole tree.
//!
//! Linux only; Rust 1.88 or newer.
//!
//! # Cargo features
//!
//! Without any (the default): processes, [`Pool`], pipes and queues, locks
//! and the other synchronization types, shared values and [`SharedMemory`],
//! [`subprocess`], [`pickle`]. Each feature adds what only some users need,
//! with its dependencies:
//!
//! | feature | what it adds | dependencies |
//! |---|---|---|
//! | `managers` | `managers` (servers of shared objects, wire-compatible with Python's), `connection::{Listener, Client}` | hmac, md-5, sha2, indexmap |
//! | `async` | `Async`: async fns as targets of processes and pool tasks | tokio (rt, time) |
//! | `progress` | `PoolBuilder::progress_bar`: an indicatif bar over maps and imaps | indicatif |
//! | `tracing` | spans for each process start and pool task (pid, worker id, task, item) and an event for each worker death; never a subscriber | tracing |
//! | `json` | `Json<T>`: serde types that need a self-describing format (`serde_json::Value`, flatten, untagged enums) | serde_json |
//! | `cluster` | `cluster`: the Pool with workers on many machines, through Redis | redis, sha2 |
//! | `cluster-tls` | `rediss://` URLs for `cluster` | redis's rustls backend, rustls with ring |
//!
//! # Byte payloads
//!
//! Arguments, results and messages travel as serde encodes them. serde
//! sees a `Vec<u8>` (and `&[u8]`, `[u8; N]`, `Box<[u8]>`, `VecDeque<u8>`)
//! as a sequence, encoded and decoded one element at a time;
//! `serde_bytes::ByteBuf`, `&serde_bytes::Bytes`, a field marked
//! `#[serde(with = "serde_bytes")]`, `String` and `&str` go as one block
//! (one copy in, one copy out). Both arrive unchanged; only the speed
//! differs: for 1 KiB queue messages the `queue_1k_vec_per_s` and
//! `queue_1k_per_s` rows of `multiproc-bench ipc` differ about 6×, and a
//! 64 MiB argument and result through [`Pool::apply`] takes about 3× as
//! long as a `Vec<u8>` as it does as a `ByteBuf` on the project's machine
//! (320 ms against 105). Every type takes the memory-file path below when
//! big; only the block types take it at the speed of a copy. Python's
//! `bytes` is `ByteBuf`.
//!
//! A value whose encoding passes 1 MiB does not go through the socket,
//! queue ring or frame at all: it is encoded straight into a memory file
//! (`memfd`), which is sealed against any change and handed over as a
//! descriptor; the receiver maps it and decodes straight out of it. Each
//! side makes one copy (its own encoding, its own decoded value), whatever
//! the path: process arguments and results, pool tasks and results,
//! queues and pipes. A process short of descriptors (fewer than half of its
//! limit free) sends big values inline instead, more slowly. A
//! [`Connection`]'s size limit applies to such a value's real size; a
//! Redis-backed pool brings it back into the message. On the receiving
//! side, each `ByteBuf` of 4 MiB or more inside such a value is decoded
//! into memory advised into transparent huge pages (where the system
//! allows the advice), which fills several times faster than fresh 4 KiB
//! pages; a map's result vector of 4 MiB or more is advised the same way.
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "async")]
mod aio;
mod bootstrap;
#[cfg(feature = "cluster")]
#[cfg_attr(docsrs, doc(cfg(feature = "cluster")))]
pub mod cluster;
pub mod connection;
mod context;
mod error;
#[cfg(feature = "json")]
mod json;
#[cfg(feature = "managers")]
#[cfg_attr(docsrs, doc(cfg(feature = "managers")))]
pub mod managers;
pub mod os;
pub mod pickle;
mod pool;
mod popen;
mod process;
mod queues;
mod reduction;
mod reprlib;
mod runtime;
pub mod shared_memory;
mod sharedctypes;
pub mod subprocess;
mod synchronize;
mod sys;
mod wire;

pub use bootstrap::init;
pub use connection::{Connection, Pipe, duplex_pipe};
pub use context::{Context, StartMethod, get_context, get_start_method, set_start_method};
pub use error::{Error, Payload, Result, Side};
#[cfg(feature = "json")]
#[cfg_attr(docsrs, doc(cfg(feature = "json")))]
pub use json::Json;
pub use pool::{
    AsCompleted, AsyncResult, CallState, Completion, IMap, Pool, PoolBuilder, PoolStats, Restart, RestartReason,
    ReturnWhen, SlowTask, Waited, WithState, WorkerStats, as_completed, wait, worker_id,
};
#[cfg(feature = "async")]
#[cfg_attr(docsrs, doc(cfg(feature = "async")))]
pub use process::Async;
pub use process::{ParentProcess, Process, ProcessInfo, Run, Target, active_children, current_process, parent_process};
pub use queues::{JoinableQueue, Queue, SimpleQueue};
pub use reduction::Handle;
pub use shared_memory::SharedMemory;
pub use sharedctypes::{Array, RawArray, RawValue, Shareable, Value};
pub use synchronize::{
    Acquired, Barrier, BoundedSemaphore, Condition, Event, Lock, LockGuard, RLock, Semaphore, SemaphoreGuard,
};

/// Marks a program's `main` as the parent's entry point: the Rust
/// counterpart of Python's `if __name__ == '__main__':`. It calls
/// [`init`] before the body; see there for what that does.
///
/// ```
/// #[multiproc::main]
/// fn main() {
///     println!("only the parent runs this");
/// }
/// ```
pub use multiproc_macros::main;

#[doc(hidden)]
pub mod __private {
    /// Open descriptors of this process, for leak tests.
    pub fn open_fd_count() -> std::io::Result<usize> {
        crate::sys::proc::open_fd_count()
    }
}

/// The README's examples, compiled and run as doctests.
#[cfg(all(doctest, feature = "managers", feature = "async", feature = "cluster"))]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
