//! `multiproc-bench ipc`: queues, pipes, locks and shared values against
//! Python's and against the raw floors (a bare futex, a pipe, a socketpair).

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use multiproc::{Connection, Lock, Pipe, Process, Queue, StartMethod, Value};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_bytes::ByteBuf;

use crate::{median, python, row};

#[derive(clap::Args)]
pub(crate) struct Args {
    /// Round trips to take the median of.
    #[arg(long, default_value_t = 5_000)]
    rounds: usize,
    /// Messages in each one-way throughput run.
    #[arg(long, default_value_t = 100_000)]
    stream: usize,
    /// The Python interpreter to compare against (default: pyenv's 3.11).
    #[arg(long)]
    python: Option<PathBuf>,
}

type Res<T> = Result<T, String>;

fn err(e: multiproc::Error) -> String {
    e.to_string()
}

fn echo_queue(qin: Queue<Vec<u8>>, qout: Queue<Vec<u8>>, n: usize) {
    for _ in 0..n {
        qout.put(&qin.get().unwrap()).unwrap();
    }
}

fn drain<M: Serialize + DeserializeOwned + 'static>(q: Queue<M>, n: usize) {
    for _ in 0..n {
        q.get().unwrap();
    }
}

fn echo_pipe(conn: Connection, n: usize) {
    for _ in 0..n {
        let m = conn.recv_bytes().unwrap();
        conn.send_bytes(&m).unwrap();
    }
}

fn queue_roundtrip(rounds: usize) -> Res<f64> {
    let (a, b) = (Queue::new(0).map_err(err)?, Queue::new(0).map_err(err)?);
    let mut p = Process::new(echo_queue, (a.clone(), b.clone(), rounds));
    p.start().map_err(err)?;
    let mut times = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = Instant::now();
        a.put(&vec![b'x']).map_err(err)?;
        b.get().map_err(err)?;
        times.push(t.elapsed().as_secs_f64() * 1e6);
    }
    p.join().map_err(err)?;
    Ok(median(times))
}

/// One-way rate of `n` messages made by `message` from `size` bytes: the
/// median of a few runs, as one run of ours is short enough (tens of ms)
/// for a scheduling hiccup on a small VM to halve it.
fn queue_stream<M: Serialize + DeserializeOwned + 'static>(
    n: usize,
    size: usize,
    message: fn(Vec<u8>) -> M,
) -> Res<f64> {
    let runs = (0..5).map(|_| queue_stream_once(n, size, message)).collect::<Res<Vec<f64>>>()?;
    Ok(median(runs))
}

fn queue_stream_once<M: Serialize + DeserializeOwned + 'static>(
    n: usize,
    size: usize,
    message: fn(Vec<u8>) -> M,
) -> Res<f64> {
    let q = Queue::new(0).map_err(err)?;
    let mut p = Process::new(drain::<M>, (q.clone(), n));
    p.start().map_err(err)?;
    let payload = message(vec![b'x'; size]);
    let t = Instant::now();
    for _ in 0..n {
        q.put(&payload).map_err(err)?;
    }
    p.join().map_err(err)?;
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

fn pipe_roundtrip(rounds: usize) -> Res<f64> {
    let (a, b) = Pipe(true).map_err(err)?;
    let mut p = Process::new(echo_pipe, (b, rounds));
    p.start().map_err(err)?;
    let mut times = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = Instant::now();
        a.send_bytes(b"x").map_err(err)?;
        a.recv_bytes().map_err(err)?;
        times.push(t.elapsed().as_secs_f64() * 1e6);
    }
    p.join().map_err(err)?;
    Ok(median(times))
}

/// Ping-pong over two descriptors (pipes or a socketpair) with plain
/// read/write: the floor for descriptor-based messaging.
fn raw_fd_roundtrip(rounds: usize, ours: (OwnedFd, OwnedFd), theirs: (OwnedFd, OwnedFd)) -> Res<f64> {
    let (their_in, their_out) = theirs;
    let mut p = Process::from_closure(move || {
        let mut b = [0u8; 1];
        for _ in 0..rounds {
            rustix_read(&their_in, &mut b);
            rustix_write(&their_out, &b);
        }
    });
    p.start().map_err(err)?;
    let (our_out, our_in) = ours;
    let mut b = [b'x'; 1];
    let mut times = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = Instant::now();
        rustix_write(&our_out, &b);
        rustix_read(&our_in, &mut b);
        times.push(t.elapsed().as_secs_f64() * 1e6);
    }
    p.join().map_err(err)?;
    Ok(median(times))
}

fn rustix_read(fd: &OwnedFd, buf: &mut [u8]) {
    // SAFETY: reading into a valid buffer from an open descriptor.
    unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
}

fn rustix_write(fd: &OwnedFd, buf: &[u8]) {
    // SAFETY: writing a valid buffer to an open descriptor.
    unsafe { libc::write(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
}

fn pipe_pair() -> Res<(OwnedFd, OwnedFd)> {
    let (r, w) = std::io::pipe().map_err(|e| e.to_string())?;
    Ok((OwnedFd::from(r), OwnedFd::from(w)))
}

/// A bare futex ping-pong on one word of shared memory between two
/// processes: the floor for any shared-memory queue. With `spins`, each
/// side first looks at the word that many times before it sleeps (the
/// queue's own strategy: `raw-spin-futex`); with 0 it sleeps at once
/// (`raw-futex`).
pub(crate) fn raw_futex_roundtrip(rounds: usize, spins: u32) -> Res<f64> {
    // SAFETY: an anonymous shared mapping of one page, unmapped at the end.
    let page = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if page == libc::MAP_FAILED {
        return Err("mmap failed".into());
    }
    let addr = page as usize;
    // SAFETY: the page is live and aligned; only atomics touch it.
    let word = |a: usize| unsafe { &*(a as *const AtomicU32) };
    let wait = |a: usize, v: u32| {
        // SAFETY: futex wait on a live, aligned word.
        unsafe {
            libc::syscall(libc::SYS_futex, a as *const u32, libc::FUTEX_WAIT, v, std::ptr::null::<libc::timespec>())
        };
    };
    let wake = |a: usize| {
        // SAFETY: futex wake on a live, aligned word.
        unsafe { libc::syscall(libc::SYS_futex, a as *const u32, libc::FUTEX_WAKE, 1) };
    };
    let until = move |want: u32, before: u32| {
        for _ in 0..spins {
            if word(addr).load(Ordering::Acquire) == want {
                return;
            }
            std::hint::spin_loop();
        }
        while word(addr).load(Ordering::Acquire) != want {
            wait(addr, before);
        }
    };
    let mut p = Process::from_closure(move || {
        for i in 0..rounds as u32 {
            let want = 2 * i + 1;
            until(want, 2 * i);
            word(addr).store(want + 1, Ordering::Release);
            wake(addr);
        }
    });
    p.start().map_err(err)?;
    let mut times = Vec::with_capacity(rounds);
    for i in 0..rounds as u32 {
        let t = Instant::now();
        word(addr).store(2 * i + 1, Ordering::Release);
        wake(addr);
        until(2 * i + 2, 2 * i + 1);
        times.push(t.elapsed().as_secs_f64() * 1e6);
    }
    p.join().map_err(err)?;
    // SAFETY: unmapping the page mapped above; the child has exited.
    unsafe { libc::munmap(page, 4096) };
    Ok(median(times))
}

fn lock_ns(n: usize) -> Res<f64> {
    let lock = Lock::new().map_err(err)?;
    let t = Instant::now();
    for _ in 0..n {
        lock.acquire().map_err(err)?;
        lock.release().map_err(err)?;
    }
    Ok(t.elapsed().as_secs_f64() / n as f64 * 1e9)
}

fn value_incr_ns(n: usize) -> Res<f64> {
    let v = Value::new(0i32).map_err(err)?;
    let t = Instant::now();
    for _ in 0..n {
        v.update(|x| x + 1).map_err(err)?;
    }
    Ok(t.elapsed().as_secs_f64() / n as f64 * 1e9)
}

pub(crate) fn run(args: &Args) -> Res<()> {
    multiproc::set_start_method(StartMethod::Forkserver).ok();
    let python = python::find(args.python.as_deref())?;
    println!(
        "# multiproc-bench ipc: round trips between two processes (median µs), one-way rates (msg/s), uncontended ns"
    );
    println!("# peer python: {} ({})", python.display(), python::version(&python));
    crate::header();
    let peer = python::Figures::of_script(
        &python,
        "ipc.py",
        include_str!("../peers/ipc.py"),
        &[args.rounds.to_string(), args.stream.to_string()],
    )?;

    let queue_rt = queue_roundtrip(args.rounds)?;
    let futex_rt = raw_futex_roundtrip(args.rounds, 0)?;
    let (a_in, a_out) = pipe_pair()?;
    let (b_in, b_out) = pipe_pair()?;
    let raw_pipe_rt = raw_fd_roundtrip(args.rounds, (a_out, b_in), (a_in, b_out))?;
    // Python's payload is `bytes`; serde's type for that is ByteBuf. A
    // Vec<u8> is a sequence to serde, encoded element by element: its row
    // shows what that costs.
    let q8 = queue_stream(args.stream, 8, ByteBuf::from)?;
    let q1k = queue_stream(args.stream, 1024, ByteBuf::from)?;
    let q1k_vec = queue_stream(args.stream, 1024, |v| v)?;
    let pipe_rt = pipe_roundtrip(args.rounds)?;
    let (s1, s2) = std::os::unix::net::UnixStream::pair().map_err(|e| e.to_string())?;
    let (s1b, s2b) = (s1.try_clone().map_err(|e| e.to_string())?, s2.try_clone().map_err(|e| e.to_string())?);
    let raw_sock_rt = raw_fd_roundtrip(
        args.rounds,
        (OwnedFd::from(s1), OwnedFd::from(s1b)),
        (OwnedFd::from(s2), OwnedFd::from(s2b)),
    )?;
    let lock = lock_ns(200_000)?;
    let value = value_incr_ns(200_000)?;

    row("queue_roundtrip_us", queue_rt, peer.get("queue_roundtrip_us")?, "python-queue");
    row("queue_roundtrip_us", queue_rt, futex_rt, "raw-futex");
    row("queue_roundtrip_us", queue_rt, raw_pipe_rt, "raw-pipe");
    row("queue_8b_per_s", q8, peer.get("queue_8b_per_s")?, "python-queue");
    row("queue_1k_per_s", q1k, peer.get("queue_1k_per_s")?, "python-queue");
    row("queue_1k_vec_per_s", q1k_vec, peer.get("queue_1k_per_s")?, "python-queue");
    row("pipe_roundtrip_us", pipe_rt, peer.get("pipe_roundtrip_us")?, "python-pipe");
    row("pipe_roundtrip_us", pipe_rt, raw_sock_rt, "raw-socketpair");
    row("lock_ns", lock, peer.get("lock_ns")?, "python-lock");
    row("value_incr_ns", value, peer.get("value_incr_ns")?, "python-value");
    Ok(())
}
