//! `multiproc-bench managers`: a manager's queue and dict from clients,
//! against Python 3.11's `SyncManager` (each side's server in a child
//! process, as `SyncManager.start()` does).

use std::path::PathBuf;
use std::time::Instant;

use multiproc::managers::{Client, Proxy, ServerBuilder};
use multiproc::pickle::PyValue;
use multiproc::{Barrier, Event, Process};

use crate::{python, row};

#[derive(clap::Args)]
pub(crate) struct Args {
    /// Put+get pairs (and dict set+get pairs) per figure.
    #[arg(long, default_value_t = 20_000)]
    ops: usize,
    /// Concurrent clients for the second figure (processes on both sides).
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// The Python interpreter to compare against (default: pyenv's 3.11).
    #[arg(long)]
    python: Option<PathBuf>,
}

type Res<T> = Result<T, String>;

fn err(e: multiproc::Error) -> String {
    e.to_string()
}

fn pairs(q: &Proxy, n: usize) -> Res<()> {
    for i in 0..n {
        q.call("put", vec![PyValue::Int(i as i64)]).map_err(err)?;
        q.call("get", vec![]).map_err(err)?;
    }
    Ok(())
}

fn client(address: String, n: usize, ready: Barrier, go: Event) -> Result<(), String> {
    let c = Client::connect(&address.parse().map_err(err)?, b"bench").map_err(err)?;
    let q = c.create("bench_queue", vec![]).map_err(err)?;
    pairs(&q, 1)?; // connected before the clock starts
    ready.wait(None).map_err(err)?;
    go.wait(None).map_err(err)?;
    pairs(&q, n)
}

pub(crate) fn run(args: &Args) -> Res<()> {
    let python = python::find(args.python.as_deref())?;
    println!("# multiproc-bench managers: operations per second through a manager in a child process");
    println!("# peer python: {} ({})", python.display(), python::version(&python));
    crate::header();
    let peer = python::Figures::of_script(
        &python,
        "managers_peer.py",
        include_str!("../peers/managers.py"),
        &[args.ops.to_string(), args.clients.to_string()],
    )?;
    // Python's `SyncManager()` listens on a Unix socket (its default
    // family on Linux): so does ours here, for the same transport.
    let socket = std::env::temp_dir().join(format!("multiproc-bench-manager-{}.sock", std::process::id()));
    let manager = ServerBuilder::new(multiproc::managers::Address::Unix(socket))
        .authkey(b"bench")
        .sync_types()
        .register_queue("bench_queue")
        .bind()
        .map_err(err)?
        .start()
        .map_err(err)?;
    let c = manager.client().map_err(err)?;

    let q = c.create("Queue", vec![]).map_err(err)?;
    pairs(&q, 100)?;
    let t = Instant::now();
    pairs(&q, args.ops)?;
    let one = args.ops as f64 / t.elapsed().as_secs_f64();

    let per = (args.ops / args.clients).max(1);
    let ready = Barrier::new(args.clients as u32 + 1).map_err(err)?;
    let go = Event::new().map_err(err)?;
    let mut procs: Vec<Process<Result<(), String>>> = (0..args.clients)
        .map(|_| Process::new(client, (manager.address().to_string(), per, ready.clone(), go.clone())))
        .collect();
    for p in &mut procs {
        p.start().map_err(err)?;
    }
    ready.wait(None).map_err(err)?;
    let t = Instant::now();
    go.set().map_err(err)?;
    for p in &mut procs {
        p.join().map_err(err)??;
    }
    let many = (per * args.clients) as f64 / t.elapsed().as_secs_f64();

    let d = c.create("dict", vec![]).map_err(err)?;
    let t = Instant::now();
    for i in 0..args.ops {
        let key = PyValue::Int((i % 100) as i64);
        d.call("__setitem__", vec![key.clone(), PyValue::Int(i as i64)]).map_err(err)?;
        d.call("__getitem__", vec![key]).map_err(err)?;
    }
    let dict = args.ops as f64 / t.elapsed().as_secs_f64();
    drop((q, d, c));
    manager.shutdown().map_err(err)?;

    row("queue_put_get_per_s", one, peer.get("queue_put_get_per_s")?, "python-manager");
    row("queue_put_get_16_clients_per_s", many, peer.get("queue_put_get_16_clients_per_s")?, "python-manager");
    row("dict_set_get_per_s", dict, peer.get("dict_set_get_per_s")?, "python-manager");
    Ok(())
}
