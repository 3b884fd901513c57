//! What the scale-out pool keeps in Redis and how its messages look: the
//! wire format, apart from the submitter's and the worker's loops.
//!
//! Every key of a pool shares the hash tag `{mp:<pool>}`, so a Redis
//! Cluster keeps them on one shard (multi-key commands and MULTI need it).
//!
//! - `{mp:P}:tasks`: the task stream, read by the consumer group `workers`
//!   (created at `0` with MKSTREAM, never `$`, so nothing added while it
//!   was missing is skipped). An entry is deleted only after its result
//!   was written (XACK + XDEL in one MULTI); nothing is trimmed blindly.
//! - `{mp:P}:results:<submitter>`: one result stream per submitting pool,
//!   read and deleted by it alone; it expires if the submitter goes away.
//! - `{mp:P}:epoch:<submitter>`: a key the submitter sets, with a TTL it
//!   renews. When it is missing, Redis lost data (a restart without
//!   persistence, a failover): the submitter re-creates the group and sends
//!   again every task it has no result for.
//! - `{mp:P}:cancel:<task>`: set (with a TTL) when a task's caller cancels
//!   it; a worker running the task kills its process.
//! - `{mp:P}:dead`: the dead letters (poison tasks, tasks no worker of
//!   their build took), with their reasons; capped in length.

use std::collections::HashMap;

use redis::Value;
use serde::{Deserialize, Serialize};

use crate::wire::{EntryRef, Outcome};

/// The consumer group of the task stream.
pub(crate) const GROUP: &str = "workers";

/// How many dead letters are kept (the oldest go first).
pub(crate) const DEAD_LETTERS_KEPT: usize = 10_000;

/// A pool's key names.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    prefix: String,
}

impl Keys {
    pub(crate) fn new(pool: &str) -> Keys {
        Keys { prefix: format!("{{mp:{pool}}}") }
    }

    pub(crate) fn tasks(&self) -> String {
        format!("{}:tasks", self.prefix)
    }

    pub(crate) fn dead(&self) -> String {
        format!("{}:dead", self.prefix)
    }

    pub(crate) fn results(&self, submitter: &str) -> String {
        format!("{}:results:{submitter}", self.prefix)
    }

    pub(crate) fn epoch(&self, submitter: &str) -> String {
        format!("{}:epoch:{submitter}", self.prefix)
    }

    /// Set when task `id`'s caller cancelled it.
    pub(crate) fn cancel(&self, id: &str) -> String {
        format!("{}:cancel:{id}", self.prefix)
    }

    pub(crate) fn worker(&self, name: &str) -> String {
        format!("{}:worker:{name}", self.prefix)
    }

    pub(crate) fn worker_pattern(&self) -> String {
        format!("{}:worker:*", self.prefix)
    }
}

/// One task as it travels: a chunk of calls of one function.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct TaskMessage {
    /// `<submitter>:<sequence>`: unique for the submitter's life, the same
    /// when it is sent again.
    pub id: String,
    /// The result stream to answer on.
    pub reply: String,
    /// The submitting executable's identity (hex).
    pub build: String,
    /// The function's name and types ([`Signature`](crate::process::Signature)).
    pub function: String,
    pub entry: EntryRef,
    pub batch: bool,
    pub calls: usize,
    /// The submitting pool's task timeout, in milliseconds.
    pub timeout_ms: Option<u64>,
    /// Each call's encoded arguments.
    pub items: Vec<serde_bytes::ByteBuf>,
}

/// The most calls one task may stand for (a chunk); more is malformed.
const MAX_CALLS: usize = 1 << 24;

impl TaskMessage {
    /// Whether its sizes agree (one item per call, or one chunk of at most
    /// `MAX_CALLS` calls): checked before a worker makes anything for it.
    pub(crate) fn well_formed(&self) -> Result<(), String> {
        let shaped = if self.batch { self.items.len() == 1 } else { self.items.len() == self.calls };
        if shaped && (1..=MAX_CALLS).contains(&self.calls) {
            Ok(())
        } else {
            Err(format!("a malformed task: {} calls in {} items", self.calls, self.items.len()))
        }
    }
}

/// Why calls failed without an outcome of their own.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Failure {
    /// The task killed its process every time it ran.
    Poison { deliveries: u64, how: String },
    /// No worker of the task's build took it.
    BuildMismatch { task: String, worker: String, function: String },
    /// It ran past the pool's task timeout.
    Timeout { worker: String, pid: i32, millis: u64 },
    /// Anything else, in words.
    Other(String),
}

/// A task's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum ResultMessage {
    /// One call's outcome.
    Outcome { outcome: Outcome, worker: String, pid: i32 },
    /// A chunk's outcome (all its calls' results in one value).
    Batch { outcome: Outcome, worker: String, pid: i32, count: usize },
    /// Every call failed so.
    Failed(Failure),
}

/// Bytes of a bulk string.
pub(crate) fn bytes(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

/// Text of a bulk string.
pub(crate) fn text(v: &Value) -> Option<String> {
    bytes(v).and_then(|b| String::from_utf8(b.to_vec()).ok())
}

/// A stream entry: its id and fields.
pub(crate) type Entry = (String, HashMap<String, Vec<u8>>);

/// Entries of `[id, [field, value, ...]]` pairs (nil payloads, of entries
/// deleted under a pending list, are skipped).
pub(crate) fn entries(list: &Value) -> Vec<Entry> {
    let Value::Array(items) = list else { return Vec::new() };
    items
        .iter()
        .filter_map(|e| {
            let Value::Array(pair) = e else { return None };
            let id = text(pair.first()?)?;
            let Value::Array(kv) = pair.get(1)? else { return None };
            let fields = kv.chunks(2).filter_map(|c| Some((text(c.first()?)?, bytes(c.get(1)?)?.to_vec()))).collect();
            Some((id, fields))
        })
        .collect()
}

/// The entries of an XREAD/XREADGROUP reply (one stream).
pub(crate) fn read_reply(v: &Value) -> Vec<Entry> {
    match v {
        Value::Array(streams) => streams
            .iter()
            .flat_map(|s| match s {
                Value::Array(kv) if kv.len() == 2 => entries(&kv[1]),
                _ => Vec::new(),
            })
            .collect(),
        Value::Map(streams) => streams.iter().flat_map(|(_, e)| entries(e)).collect(),
        _ => Vec::new(),
    }
}

/// What stands for an identity that could not be found out.
const UNKNOWN: &str = "unknown";

/// This executable's identity, or the error that says it cannot be told:
/// two programs of unknown identity must never take each other's tasks, so
/// neither submits nor works.
pub(crate) fn known_build_identity() -> crate::Result<&'static str> {
    match build_identity() {
        UNKNOWN => Err(crate::Error::Cluster(
            "this executable has no GNU build-id and /proc/self/exe cannot be read: \
             its build cannot be told apart from another's"
                .into(),
        )),
        id => Ok(id),
    }
}

/// This executable's identity: its GNU build-id, else a SHA-256 of the
/// executable file, in hex.
pub(crate) fn build_identity() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        if let Some(id) = crate::sys::build_id::gnu_build_id() {
            return format!("gnu:{}", hex(&id));
        }
        use sha2::Digest;
        match std::fs::read("/proc/self/exe") {
            Ok(exe) => format!("sha256:{}", hex(&sha2::Sha256::digest(&exe))),
            Err(_) => UNKNOWN.into(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(batch: bool, calls: usize, items: usize) -> TaskMessage {
        TaskMessage {
            id: "s:1".into(),
            reply: "r".into(),
            build: "b".into(),
            function: "f: (u8,) -> u8".into(),
            entry: EntryRef { offset: 0, check: 0 },
            batch,
            calls,
            timeout_ms: None,
            items: vec![serde_bytes::ByteBuf::new(); items],
        }
    }

    #[test]
    fn a_task_whose_sizes_disagree_is_refused() {
        assert!(task(false, 1, 1).well_formed().is_ok());
        assert!(task(true, 100, 1).well_formed().is_ok());
        assert!(task(false, 2, 1).well_formed().is_err());
        assert!(task(false, 0, 0).well_formed().is_err());
        assert!(task(true, 5, 2).well_formed().is_err());
        assert!(task(true, usize::MAX, 1).well_formed().is_err(), "a count nobody should allocate for");
    }

    #[test]
    fn stream_replies_are_read_and_nil_payloads_skipped() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let entry = Value::Array(vec![bulk("1-0"), Value::Array(vec![bulk("t"), bulk("x")])]);
        let deleted = Value::Array(vec![bulk("2-0"), Value::Nil]);
        let reply = Value::Array(vec![Value::Array(vec![bulk("k"), Value::Array(vec![entry, deleted])])]);
        let got = read_reply(&reply);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, "1-0");
        assert_eq!(got[0].1["t"], b"x");
    }
}
