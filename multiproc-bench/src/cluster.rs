//! `multiproc-bench cluster`: the Redis-backed pool on one loopback Redis
//! (a redis-server of its own on a Unix socket), against Celery 5 and RQ
//! on the same Redis, and against Redis's own floors (a pipelined XADD of
//! as many entries; one PING round trip, timed in blocks alternating with
//! the applies). Workers are copies of this
//! binary started with the worker environment, as on other machines.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use multiproc::Pool;
use multiproc::cluster::{WORKER_LEASE_ENV, WORKER_POOL_ENV, WORKER_REDIS_ENV, WORKER_SLOTS_ENV};

use crate::{python, row};

#[derive(clap::Args)]
pub(crate) struct Args {
    /// No-op tasks for the throughput figures.
    #[arg(long, default_value_t = 20_000)]
    tasks: usize,
    /// RQ's share (it is slow: its rate is measured on fewer).
    #[arg(long, default_value_t = 2_000)]
    rq_tasks: usize,
    /// Skip the Python peers (Celery, RQ): Redis's floors only.
    #[arg(long)]
    no_python: bool,
    /// The Python interpreter for the peers' venv (default: pyenv's 3.11).
    #[arg(long)]
    python: Option<PathBuf>,
}

type Res<T> = Result<T, String>;

fn e<E: std::fmt::Display>(x: E) -> String {
    x.to_string()
}

fn worker(redis: &multiproc::cluster::LocalRedis, pool: &str, lease_ms: u64) -> Res<Child> {
    Command::new(std::env::current_exe().map_err(e)?)
        .env(WORKER_REDIS_ENV, redis.url())
        .env(WORKER_POOL_ENV, pool)
        .env(WORKER_SLOTS_ENV, "1")
        .env(WORKER_LEASE_ENV, lease_ms.to_string())
        .stdout(Stdio::null())
        .spawn()
        .map_err(e)
}

fn noop(x: u32) -> u32 {
    x
}

/// Runs about `millis`, then answers.
fn nap(millis: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(millis));
    millis
}

/// A venv with Celery 5 and RQ from PyPI, made once and kept.
fn peers_python(base: &Path) -> Res<PathBuf> {
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let venv = home.join(".cache/multiproc-bench/cluster-venv");
    let py = venv.join("bin/python");
    if !py.exists() {
        let ok = Command::new(base).args(["-m", "venv"]).arg(&venv).status().map_err(e)?.success()
            && Command::new(&py)
                .args(["-m", "pip", "install", "--quiet", "celery[redis]>=5,<6", "rq"])
                .status()
                .map_err(e)?
                .success();
        if !ok {
            let _ = std::fs::remove_dir_all(&venv);
            return Err("could not install celery and rq from PyPI".into());
        }
    }
    Ok(py)
}

pub(crate) fn run(args: &Args) -> Res<()> {
    println!("# multiproc-bench cluster: the Redis-backed pool on one loopback Redis (Unix socket)");
    let redis = multiproc::cluster::LocalRedis::start().map_err(e)?;
    let mut con = redis::Client::open(redis.url()).map_err(e)?.get_connection().map_err(e)?;
    crate::header();

    // Floor: a pipelined XADD of as many entries.
    let t = Instant::now();
    let mut pipe = redis::pipe();
    for i in 0..args.tasks {
        pipe.cmd("XADD").arg("floor").arg("*").arg("t").arg(i).ignore();
    }
    pipe.query::<()>(&mut con).map_err(e)?;
    let xadd_per_s = args.tasks as f64 / t.elapsed().as_secs_f64();

    // Ours: two workers of one slot each.
    let lease_ms = 1000;
    let mut workers = vec![worker(&redis, "bench", lease_ms)?, worker(&redis, "bench", lease_ms)?];
    let pool = Pool::builder().redis(&redis.url(), "bench").processes(2).build().map_err(e)?;
    pool.map_chunksize(noop, 0..100u32, 1).map_err(e)?;
    let t = Instant::now();
    pool.map_chunksize(noop, 0..args.tasks as u32, 1).map_err(e)?;
    let ours_per_s = args.tasks as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    pool.map_chunksize(noop, 0..args.tasks as u32, 100).map_err(e)?;
    let chunked_per_s = args.tasks as f64 / t.elapsed().as_secs_f64();
    // One apply at a time against one PING at a time, in alternating
    // blocks with the workers up in both: a PING measured alone, with
    // nothing else running, often has Redis and its client share a vCPU
    // (10-15 µs instead of 40-60 on this VM), a state the apply, which
    // wakes four processes, never sees; the blocks also share the
    // machine's slower and faster spells.
    let (blocks, applies, pings) = (5, 100, 400);
    let (mut apply_time, mut ping_time) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..blocks {
        let t = Instant::now();
        for _ in 0..pings {
            redis::cmd("PING").query::<String>(&mut con).map_err(e)?;
        }
        ping_time += t.elapsed();
        let t = Instant::now();
        for i in 0..applies {
            pool.apply(noop, (i,)).map_err(e)?;
        }
        apply_time += t.elapsed();
    }
    let roundtrip_us = apply_time.as_secs_f64() * 1e6 / (blocks * applies) as f64;
    let ping_us = ping_time.as_secs_f64() * 1e6 / (blocks * pings) as f64;

    // Recovery: the worker running a task SIGKILLed; until another answers.
    let r = pool.apply_async(nap, (300u64,));
    let until = Instant::now() + Duration::from_secs(30);
    let holder = loop {
        let s = multiproc::cluster::status(&redis.url(), "bench").map_err(e)?;
        if let Some(t) = s.in_flight.first() {
            break t.worker.clone();
        }
        if Instant::now() > until {
            return Err("the recovery task never started".into());
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    // Worker names are host-pid-random.
    let pid: i32 = holder.rsplit('-').nth(1).and_then(|p| p.parse().ok()).ok_or("a worker name without a pid")?;
    let t = Instant::now();
    // SAFETY: kill(2) on a worker we started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    r.get().map_err(e)?;
    let recovery_ms = t.elapsed().as_secs_f64() * 1e3;
    pool.close();
    pool.join().map_err(e)?;
    for w in &mut workers {
        let _ = w.kill();
        let _ = w.wait();
    }

    if !args.no_python {
        let base = python::find(args.python.as_deref())?;
        let py = peers_python(&base)?;
        println!("# peer python: {} ({})", py.display(), python::version(&py));
        let peer = python::Figures::of_script(
            &py,
            "cluster_peer.py",
            include_str!("../peers/cluster.py"),
            &[redis.socket().display().to_string(), args.tasks.to_string(), args.rq_tasks.to_string()],
        )?;
        row("cluster_tasks_per_s", ours_per_s, peer.get("celery_tasks_per_s")?, "celery");
        row("cluster_tasks_per_s", ours_per_s, peer.get("rq_tasks_per_s")?, "python-rq");
    }
    row("cluster_chunked_per_s", chunked_per_s, xadd_per_s, "redis-xadd-pipelined");
    row("cluster_roundtrip_us", roundtrip_us, ping_us, "redis-ping");
    row("cluster_recovery_ms", recovery_ms, lease_ms as f64 + 1000.0, "lease-plus-1s");
    Ok(())
}
