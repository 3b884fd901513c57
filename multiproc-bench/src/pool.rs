//! `multiproc-bench pool`: the same work on our Pool and Python's, same
//! worker count; CPU-bound tasks against rayon.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use multiproc::Pool;
use rayon::prelude::*;

use crate::{median, python, row};

#[derive(clap::Args)]
pub(crate) struct Args {
    /// Workers in both pools (default: the CPUs this process may use).
    #[arg(long)]
    workers: Option<usize>,
    /// Tiny tasks for apply_async and imap.
    #[arg(long, default_value_t = 20_000)]
    tasks: usize,
    /// Items for map with the default chunk size.
    #[arg(long, default_value_t = 1_000_000)]
    map_items: usize,
    /// apply round trips to take the median of.
    #[arg(long, default_value_t = 2_000)]
    roundtrips: usize,
    /// Round trips of a 64 MiB argument and result to take the median of.
    #[arg(long, default_value_t = 5)]
    big_rounds: usize,
    /// CPU-bound tasks of about 10 ms each.
    #[arg(long, default_value_t = 200)]
    cpu_tasks: usize,
    /// The Python interpreter to compare against (default: pyenv's 3.11).
    #[arg(long)]
    python: Option<PathBuf>,
}

fn inc(x: u64) -> u64 {
    x + 1
}

fn echo(bytes: serde_bytes::ByteBuf) -> serde_bytes::ByteBuf {
    bytes
}

/// 64 MiB: the big argument's size.
const BIG: usize = 64 << 20;

fn getpid(_: u64) -> i32 {
    multiproc::os::getpid()
}

/// Pure integer work; `rounds` sets its length.
fn spin(rounds: u64) -> u64 {
    let mut x = rounds | 1;
    for i in 0..rounds {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(i) ^ (x >> 29);
    }
    std::hint::black_box(x)
}

/// How many rounds of `spin` take about `target` on this machine.
fn calibrate(target: Duration) -> u64 {
    let mut rounds = 100_000u64;
    loop {
        let t = Instant::now();
        spin(rounds);
        let took = t.elapsed();
        if took >= Duration::from_millis(2) {
            return (rounds as f64 * target.as_secs_f64() / took.as_secs_f64()) as u64;
        }
        rounds *= 2;
    }
}

fn rss_mib(pid: i32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

fn per_s(n: usize, since: Instant) -> f64 {
    n as f64 / since.elapsed().as_secs_f64()
}

pub(crate) fn run(args: &Args) -> Result<(), String> {
    let workers = args.workers.unwrap_or_else(multiproc::os::process_cpu_count);
    let python = python::find(args.python.as_deref())?;
    println!("# multiproc-bench pool: {workers} workers on both sides; rates in tasks/s, times in µs, memory in MiB");
    println!("# peer python: {} ({})", python.display(), python::version(&python));
    println!(
        "# tasks: {} tiny (apply_async, imap), {} map items, {} round trips, {} cpu-bound",
        args.tasks, args.map_items, args.roundtrips, args.cpu_tasks
    );
    crate::header();

    let peer = python::Figures::of_script(
        &python,
        "pool.py",
        include_str!("../peers/pool.py"),
        &[
            workers.to_string(),
            args.tasks.to_string(),
            args.map_items.to_string(),
            args.roundtrips.to_string(),
            args.big_rounds.to_string(),
        ],
    )?;
    let py = |k: &str| peer.get(k);

    let err = |e: multiproc::Error| e.to_string();
    let pool = Pool::new(workers).map_err(err)?;
    pool.map(inc, 0..1000).map_err(err)?; // warm up

    let t = Instant::now();
    let results: Vec<_> = (0..args.tasks as u64).map(|i| pool.apply_async(inc, (i,))).collect();
    for r in results {
        r.get().map_err(err)?;
    }
    let apply_async = per_s(args.tasks, t);

    let t = Instant::now();
    for r in pool.imap(inc, 0..args.tasks as u64) {
        r.map_err(err)?;
    }
    let imap = per_s(args.tasks, t);

    let t = Instant::now();
    pool.map(inc, 0..args.map_items as u64).map_err(err)?;
    let map = per_s(args.map_items, t);

    let mut times = Vec::with_capacity(args.roundtrips);
    for _ in 0..args.roundtrips {
        let t = Instant::now();
        pool.apply(inc, (1,)).map_err(err)?;
        times.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let roundtrip = median(times);
    // The same round trip's floor: two processes ping-ponging on a word of
    // shared memory, spinning first as our queue does.
    let spin_futex = crate::ipc::raw_futex_roundtrip(args.roundtrips, 2000)?;

    let mut pids = pool.map_chunksize(getpid, 0..(workers * 50) as u64, 1).map_err(err)?;
    pids.sort();
    pids.dedup();
    std::thread::sleep(Duration::from_millis(200));
    let rss = pids.iter().map(|&p| rss_mib(p)).sum::<f64>() / pids.len() as f64;

    // After the memory figure: the workers keep what a big call grew.
    // 64 MiB in, the same out (bytes: serde's ByteBuf, as Python's bytes),
    // against copying it once here (a fresh buffer, as a receiver's).
    let big = serde_bytes::ByteBuf::from((0..BIG).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
    // The floor first, in a loop of its own: right after a call, the
    // processes still freeing its pages would slow the copy down.
    let mut copies = Vec::with_capacity(args.big_rounds);
    for _ in 0..args.big_rounds {
        let t = Instant::now();
        let copy = std::hint::black_box(big.to_vec());
        copies.push(t.elapsed().as_secs_f64() * 1e3);
        drop(copy);
    }
    let mut times = Vec::with_capacity(args.big_rounds);
    for _ in 0..args.big_rounds {
        // apply takes its argument by value: a caller done with it moves
        // it in, so the copy made here is not timed.
        let arg = big.clone();
        let t = Instant::now();
        let back = pool.apply(echo, (arg,)).map_err(err)?;
        let took = t.elapsed();
        if back != big {
            return Err("apply_64mib: the result is not the argument".into());
        }
        times.push(took.as_secs_f64() * 1e3);
    }
    let big_ms = median(times);
    let memcpy_ms = median(copies);

    let rounds = calibrate(Duration::from_millis(10));
    let jobs = vec![rounds; args.cpu_tasks];
    let t = Instant::now();
    pool.map_chunksize(spin, jobs.clone(), 1).map_err(err)?;
    let ours_cpu = per_s(args.cpu_tasks, t);
    let threads = rayon::ThreadPoolBuilder::new().num_threads(workers).build().map_err(|e| e.to_string())?;
    let t = Instant::now();
    threads.install(|| jobs.par_iter().with_max_len(1).map(|&r| spin(r)).sum::<u64>());
    let rayon_cpu = per_s(args.cpu_tasks, t);
    pool.close();
    pool.join().map_err(err)?;

    row("apply_async_per_s", apply_async, py("apply_async_per_s")?, "python-pool");
    row("imap_chunk1_per_s", imap, py("imap_chunk1_per_s")?, "python-pool");
    row("map_default_chunk_per_s", map, py("map_default_chunk_per_s")?, "python-pool");
    row("apply_roundtrip_us", roundtrip, py("apply_roundtrip_us")?, "python-pool");
    row("apply_roundtrip_us", roundtrip, spin_futex, "raw-spin-futex");
    row("apply_64mib_ms", big_ms, py("apply_64mib_ms")?, "python-pool");
    row("apply_64mib_ms", big_ms, memcpy_ms, "memcpy-64mib");
    row("cpu_bound_per_s", ours_cpu, rayon_cpu, "rayon");
    row("worker_rss_mib", rss, py("worker_rss_mib")?, "python-pool");
    Ok(())
}
