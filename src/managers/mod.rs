//! Python's `multiprocessing.managers`, wire-compatible: a server holding
//! shared objects that Python and Rust clients use by name over TCP or a
//! Unix socket, authenticated with an authkey.
//!
//! The server speaks Python's manager protocol (framing, both handshake
//! forms, pickled requests and replies), so Python's own client code works
//! against it unchanged — the seed's `QueueManager.register(...)`,
//! `connect()`, `put`, `get(timeout=...)` with `queue.Empty` on timeout.
//! Unlike Python's, it never executes anything from the wire: pickle
//! globals are names, kept as data.
//!
//! # A caller that dies
//!
//! A call parked in the server (a queue's `get`, `join`, an `Event`'s
//! `wait`, a lock's `acquire`, a `Condition`'s or `Barrier`'s `wait`) is
//! abandoned as soon as its connection closes, taking nothing; and when a
//! call's caller is found gone just before its answer is written, what the
//! call took goes back (a queue's item to the front, a lock released; see
//! [`Shared::undo`](objects::Shared::undo)). Python's own server loses the
//! item in both cases.
//!
//! Still at most once: an answer already written to the socket when its
//! reader dies is gone with it (no acknowledgement follows an answer in
//! Python's protocol). Work that must be done at least once, whatever
//! dies, needs redelivery, which is the job of a pool with leases (the
//! Redis-backed scale-out pool, not yet part of this crate), not of a
//! manager.
//!
//! ```
//! use multiproc::managers::ServerBuilder;
//! use multiproc::pickle::PyValue;
//!
//! // A server on a free port with one shared queue, as the seed's master.
//! let server = ServerBuilder::new("127.0.0.1:0".parse().unwrap())
//!     .authkey(b"abc")
//!     .register_queue("get_task_queue")
//!     .bind()
//!     .unwrap()
//!     .spawn()
//!     .unwrap();
//!
//! // A client (this one in Rust) connects and uses it.
//! let client = multiproc::managers::Client::connect(server.address(), b"abc").unwrap();
//! let tasks = client.create("get_task_queue", vec![]).unwrap();
//! tasks.call("put", vec![PyValue::Int(7)]).unwrap();
//! assert_eq!(tasks.call("get", vec![]).unwrap(), PyValue::Int(7));
//! server.stop().unwrap();
//! ```

mod client;
pub mod objects;
pub use crate::pickle;
mod proxies;
mod serde_bridge;
pub(crate) mod server;
pub(crate) mod wire;

pub use client::{Client, Proxy, Returned};
pub use proxies::{
    AcquirerProxy, ArrayProxy, BarrierProxy, ConditionProxy, DictProxy, EventProxy, ListProxy, Manager, NamespaceProxy,
    QueueProxy, ValueProxy,
};
pub use serde_bridge::{ValueError, from_value, to_value};
pub use server::{Address, ManagerProcess, RunningServer, Server, ServerBuilder, Stopper};

/// Python's class name for what `multiprocessing.Manager()` returns.
pub type SyncManager = Manager;
