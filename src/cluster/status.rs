//! What a Redis-backed pool looks like from outside: for
//! `multiproc cluster status` and `multiproc cluster dead-letters`.

use std::collections::HashMap;

use redis::Value;
use serde::Serialize;

use super::protocol::{self, GROUP, Keys};
use super::{Config, connect};
use crate::{Error, Result};

/// A pool's state in Redis (see [`status`]).
#[derive(Debug, Clone, Serialize)]
pub struct ClusterStatus {
    /// The pool's name.
    pub pool: String,
    /// Tasks no worker has taken yet.
    pub backlog: u64,
    /// Tasks taken and not yet answered, oldest first.
    pub in_flight: Vec<InFlight>,
    /// Milliseconds since the oldest task without a result (taken or not)
    /// was put in the task stream, by Redis's clock; `None` when there is
    /// none. A task sent again (after Redis lost it, or requeued from the
    /// dead letters) counts from then.
    pub oldest_pending_age_ms: Option<u64>,
    /// Workers seen within the last three leases.
    pub workers: Vec<WorkerSeen>,
    /// The dead letters, oldest first.
    pub dead_letters: Vec<DeadLetter>,
}

/// A task a worker holds.
#[derive(Debug, Clone, Serialize)]
pub struct InFlight {
    /// Its entry id in the task stream.
    pub entry: String,
    /// The worker holding it.
    pub worker: String,
    /// Milliseconds since its lease was last renewed (or since it was taken).
    pub lease_age_ms: u64,
    /// How many times it has been delivered.
    pub deliveries: u64,
}

/// A worker that renewed its presence recently.
#[derive(Debug, Clone, Serialize)]
pub struct WorkerSeen {
    /// Its name (host, pid, random).
    pub name: String,
    /// Tasks it runs.
    pub running: u64,
    /// Tasks it can run at once.
    pub slots: u64,
}

/// A task given up on.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    /// Its id in the dead letter stream.
    pub id: String,
    /// Why.
    pub reason: String,
    /// How many times it had been delivered.
    pub deliveries: u64,
    /// The submitter's task id, when the task could be read.
    pub task: Option<String>,
    /// The task's function with its argument and result types, when the
    /// task could be read.
    pub function: Option<String>,
}

fn redis_error(context: &'static str) -> impl FnOnce(redis::RedisError) -> Error {
    move |e| Error::Redis { what: context.into(), message: e.to_string() }
}

fn int(v: &Value) -> u64 {
    match v {
        Value::Int(n) => (*n).max(0) as u64,
        other => protocol::text(other).and_then(|t| t.parse().ok()).unwrap_or(0),
    }
}

/// Field pairs of an XINFO reply (RESP2 flat list or RESP3 map).
fn fields(v: &Value) -> HashMap<String, Value> {
    match v {
        Value::Array(kv) => {
            kv.chunks(2).filter_map(|c| Some((protocol::text(c.first()?)?, c.get(1)?.clone()))).collect()
        }
        Value::Map(kv) => kv.iter().filter_map(|(k, v)| Some((protocol::text(k)?, v.clone()))).collect(),
        _ => HashMap::new(),
    }
}

/// The dead letter stream's entries, oldest first.
fn dead_entries(c: &mut redis::Connection, keys: &Keys) -> Result<Vec<protocol::Entry>> {
    let dead: Value =
        redis::cmd("XRANGE").arg(keys.dead()).arg("-").arg("+").query(c).map_err(redis_error("the dead letters"))?;
    Ok(protocol::entries(&dead))
}

/// Reads a pool's state: backlog, tasks in flight with their lease ages
/// and delivery counts, the oldest pending task's age, live workers, dead
/// letters. What `multiproc cluster status` prints (`Display`), or its
/// `--json` (`Serialize`).
///
/// ```no_run
/// let s = multiproc::cluster::status("redis://127.0.0.1/", "squares").unwrap();
/// print!("{s}");
/// if s.oldest_pending_age_ms.is_some_and(|ms| ms > 60_000) {
///     eprintln!("a task has waited a minute; workers: {}", s.workers.len());
/// }
/// ```
pub fn status(url: &str, pool: &str) -> Result<ClusterStatus> {
    let config = Config::new(url, pool);
    let keys = Keys::new(pool);
    let mut c = connect(&config).map_err(redis_error("connect to Redis"))?;
    let groups: Value = match redis::cmd("XINFO").arg("GROUPS").arg(keys.tasks()).query(&mut c) {
        Ok(v) => v,
        Err(e) if e.code() == Some("ERR") || e.to_string().contains("no such key") => Value::Array(Vec::new()),
        Err(e) => return Err(redis_error("XINFO GROUPS")(e)),
    };
    let group = match &groups {
        Value::Array(gs) => {
            gs.iter().map(fields).find(|g| g.get("name").and_then(protocol::text).as_deref() == Some(GROUP))
        }
        _ => None,
    };
    let backlog = group.as_ref().and_then(|g| g.get("lag").map(int)).unwrap_or(0);
    let pending: Value = redis::cmd("XPENDING")
        .arg(keys.tasks())
        .arg(GROUP)
        .arg("-")
        .arg("+")
        .arg(10_000)
        .query(&mut c)
        .unwrap_or(Value::Array(Vec::new()));
    let in_flight = match &pending {
        Value::Array(rows) => rows
            .iter()
            .filter_map(|r| {
                let Value::Array(r) = r else { return None };
                Some(InFlight {
                    entry: protocol::text(r.first()?)?,
                    worker: protocol::text(r.get(1)?)?,
                    lease_age_ms: int(r.get(2)?),
                    deliveries: int(r.get(3)?),
                })
            })
            .collect(),
        _ => Vec::new(),
    };
    // Tasks are delivered in the stream's order: the oldest one without a
    // result is the first in flight, or else the first past the group's
    // last delivery. An entry's id is the time Redis added it.
    let first_waiting = match group.as_ref().and_then(|g| g.get("last-delivered-id").and_then(protocol::text)) {
        Some(last) => {
            let next: Value = redis::cmd("XRANGE")
                .arg(keys.tasks())
                .arg(format!("({last}"))
                .arg("+")
                .arg("COUNT")
                .arg(1)
                .query(&mut c)
                .map_err(redis_error("the first waiting task"))?;
            protocol::entries(&next).into_iter().next().map(|(id, _)| id)
        }
        None => None,
    };
    let oldest = in_flight.iter().map(|t| t.entry.as_str()).chain(first_waiting.as_deref()).filter_map(entry_ms).min();
    let oldest_pending_age_ms = match oldest {
        Some(added) => {
            let (secs, micros): (u64, u64) = redis::cmd("TIME").query(&mut c).map_err(redis_error("TIME"))?;
            Some((secs * 1000 + micros / 1000).saturating_sub(added))
        }
        None => None,
    };
    // SCAN, not KEYS: a shared Redis is not stopped to list them.
    let mut names: Vec<String> = Vec::new();
    let mut cursor = 0u64;
    loop {
        let (next, page): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(keys.worker_pattern())
            .arg("COUNT")
            .arg(1000)
            .query(&mut c)
            .map_err(redis_error("the worker keys"))?;
        names.extend(page);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    let mut workers = Vec::new();
    for key in names {
        let seen: Option<String> = redis::cmd("GET").arg(&key).query(&mut c).map_err(redis_error("a worker key"))?;
        let Some(seen) = seen else { continue };
        let mut parts = seen.split(' ').map(|p| p.parse().unwrap_or(0));
        let name = key.rsplit_once(":worker:").map_or(key.clone(), |(_, n)| n.to_owned());
        workers.push(WorkerSeen { name, running: parts.next().unwrap_or(0), slots: parts.next().unwrap_or(0) });
    }
    workers.sort_by(|a, b| a.name.cmp(&b.name));
    let dead_letters = dead_entries(&mut c, &keys)?
        .into_iter()
        .map(|(id, f)| {
            let text = |k: &str| f.get(k).map(|b| String::from_utf8_lossy(b).into_owned());
            DeadLetter {
                id,
                reason: text("reason").unwrap_or_default(),
                deliveries: text("deliveries").and_then(|d| d.parse().ok()).unwrap_or(0),
                task: text("task"),
                function: f
                    .get("t")
                    .and_then(|t| crate::reduction::decode_plain::<protocol::TaskMessage>(t).ok())
                    .map(|m| m.function)
                    .filter(|f| !f.is_empty()),
            }
        })
        .collect();
    Ok(ClusterStatus { pool: pool.to_owned(), backlog, in_flight, oldest_pending_age_ms, workers, dead_letters })
}

/// The milliseconds part of a stream entry's id (`<ms>-<seq>`).
fn entry_ms(id: &str) -> Option<u64> {
    id.split_once('-').map_or(id, |(ms, _)| ms).parse().ok()
}

/// Sends every dead letter that holds its task back to the task stream
/// (for a fixed bug, or a worker of the right build now running), and
/// removes it from the dead letters; how many went back.
///
/// ```no_run
/// let n = multiproc::cluster::requeue_dead_letters("redis://127.0.0.1/", "squares").unwrap();
/// println!("{n} tasks sent back");
/// ```
pub fn requeue_dead_letters(url: &str, pool: &str) -> Result<usize> {
    let config = Config::new(url, pool);
    let keys = Keys::new(pool);
    let mut c = connect(&config).map_err(redis_error("connect to Redis"))?;
    let mut n = 0;
    for (id, f) in dead_entries(&mut c, &keys)? {
        let Some(task) = f.get("t") else { continue };
        redis::pipe()
            .atomic()
            .cmd("XADD")
            .arg(keys.tasks())
            .arg("*")
            .arg("t")
            .arg(task.as_slice())
            .ignore()
            .cmd("XDEL")
            .arg(keys.dead())
            .arg(&id)
            .ignore()
            .query::<()>(&mut c)
            .map_err(redis_error("requeue a dead letter"))?;
        n += 1;
    }
    Ok(n)
}

impl std::fmt::Display for ClusterStatus {
    /// For people: one section per kind.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "pool {}: backlog {}, in flight {}", self.pool, self.backlog, self.in_flight.len())?;
        writeln!(f, "workers ({}):", self.workers.len())?;
        for w in &self.workers {
            writeln!(f, "  {}  running {}/{}", w.name, w.running, w.slots)?;
        }
        if let Some(age) = self.oldest_pending_age_ms {
            writeln!(f, "oldest pending age: {age} ms")?;
        }
        if let Some(oldest) = self.in_flight.iter().map(|t| t.lease_age_ms).max() {
            writeln!(f, "oldest lease age: {oldest} ms")?;
        }
        for t in &self.in_flight {
            writeln!(f, "  {}  {}  lease age {} ms  deliveries {}", t.entry, t.worker, t.lease_age_ms, t.deliveries)?;
        }
        writeln!(f, "dead letters ({}):", self.dead_letters.len())?;
        for d in &self.dead_letters {
            writeln!(f, "  {d}")?;
        }
        Ok(())
    }
}

impl std::fmt::Display for DeadLetter {
    /// One line: its id, its task, how often it was delivered, why.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let task = self.task.as_deref().unwrap_or("?");
        write!(f, "{}  {task}  after {} deliveries: {}", self.id, self.deliveries, self.reason)?;
        match &self.function {
            Some(function) => write!(f, "  ({function})"),
            None => Ok(()),
        }
    }
}
