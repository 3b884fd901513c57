//! `multiproc-bench spawn`: start+join of a process that returns a small
//! value.

use std::path::PathBuf;
use std::time::Instant;

use multiproc::{Process, StartMethod};

use crate::{median, python, row};

#[derive(clap::Args)]
pub(crate) struct Args {
    /// Start+join rounds for fork, forkserver and procspawn.
    #[arg(long, default_value_t = 200)]
    iterations: usize,
    /// Rounds for Python's spawn, which takes about 0.1 s each.
    #[arg(long, default_value_t = 20)]
    python_spawn_iterations: usize,
    /// The Python interpreter to compare against (default: pyenv's 3.11).
    #[arg(long)]
    python: Option<PathBuf>,
}

fn small() -> u64 {
    1
}

fn ours(method: StartMethod, n: usize) -> Result<f64, String> {
    let once = || -> Result<f64, String> {
        let t = Instant::now();
        let mut p = Process::new(small, ()).with_start_method(method);
        p.start().map_err(|e| e.to_string())?;
        let v = p.join().map_err(|e| e.to_string())?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        if v != 1 {
            return Err(format!("{method} returned {v}"));
        }
        Ok(ms)
    };
    once()?; // warm-up (the forkserver starts here)
    Ok(median((0..n).map(|_| once()).collect::<Result<Vec<_>, _>>()?))
}

fn procspawn_ms(n: usize) -> Result<f64, String> {
    let once = || -> Result<f64, String> {
        let t = Instant::now();
        let v: u64 = procspawn::spawn((), |()| 1u64).join().map_err(|e| e.to_string())?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        if v != 1 {
            return Err(format!("procspawn returned {v}"));
        }
        Ok(ms)
    };
    once()?;
    Ok(median((0..n).map(|_| once()).collect::<Result<Vec<_>, _>>()?))
}

pub(crate) fn run(args: &Args) -> Result<(), String> {
    let python = python::find(args.python.as_deref())?;
    println!("# multiproc-bench spawn: start+join of a process returning a small value, median ms");
    println!("# peer python: {} ({})", python.display(), python::version(&python));
    println!("# iterations: {} (python spawn: {})", args.iterations, args.python_spawn_iterations);
    crate::header();

    let peer = python::Figures::of_script(
        &python,
        "spawn.py",
        include_str!("../peers/spawn.py"),
        &[
            format!("fork={}", args.iterations),
            format!("forkserver={}", args.iterations),
            format!("spawn={}", args.python_spawn_iterations),
        ],
    )?;
    let py = |m: &str| peer.get(m);

    let fork = ours(StartMethod::Fork, args.iterations)?;
    let forkserver = ours(StartMethod::Forkserver, args.iterations)?;
    let spawn = ours(StartMethod::Spawn, args.iterations)?;
    let procspawn = procspawn_ms(args.iterations)?;

    row("start_join_fork_ms", fork, py("fork")?, "python-fork");
    row("start_join_forkserver_ms", forkserver, py("forkserver")?, "python-forkserver");
    row("start_join_forkserver_ms", forkserver, py("fork")?, "python-fork");
    row("start_join_spawn_ms", spawn, py("spawn")?, "python-spawn");
    row("start_join_spawn_ms", spawn, procspawn, "procspawn");
    Ok(())
}
