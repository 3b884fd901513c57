//! `multiproc-bench subprocess`: running `true` with its output captured,
//! against Python's `subprocess.run` and `std::process::Command::output`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use multiproc::subprocess::Command;

use crate::{python, row};

#[derive(clap::Args)]
pub(crate) struct Args {
    /// Runs of `true` per contender.
    #[arg(long, default_value_t = 1_000)]
    runs: usize,
    /// The Python interpreter to compare against (default: pyenv's 3.11).
    #[arg(long)]
    python: Option<PathBuf>,
}

type Res<T> = Result<T, String>;

fn ours() -> Res<()> {
    let done = Command::new(["true"]).capture_output().run().map_err(|e| e.to_string())?;
    if done.returncode != 0 || done.stdout.as_deref() != Some(&[][..]) {
        return Err(format!("true did not run cleanly: {done}"));
    }
    Ok(())
}

fn std_command() -> Res<()> {
    let out = std::process::Command::new("true").output().map_err(|e| e.to_string())?;
    if !out.status.success() || !out.stdout.is_empty() {
        return Err(format!("true did not run cleanly: {out:?}"));
    }
    Ok(())
}

pub(crate) fn run(args: &Args) -> Res<()> {
    let python = python::find(args.python.as_deref())?;
    println!(
        "# multiproc-bench subprocess: µs per run of `true` with stdout and stderr captured (mean of {})",
        args.runs
    );
    println!("# peer python: {} ({})", python.display(), python::version(&python));
    crate::header();
    let peer = python::Figures::of_script(
        &python,
        "subprocess_peer.py",
        include_str!("../peers/subprocess_peer.py"),
        &[args.runs.to_string()],
    )?;
    ours()?;
    std_command()?;
    // Alternating blocks, so that drift on a shared machine hits both.
    let (mut t_ours, mut t_std) = (Duration::ZERO, Duration::ZERO);
    let blocks = 10;
    for block in 0..blocks {
        let n = args.runs / blocks + usize::from(block < args.runs % blocks);
        let t = Instant::now();
        for _ in 0..n {
            ours()?;
        }
        t_ours += t.elapsed();
        let t = Instant::now();
        for _ in 0..n {
            std_command()?;
        }
        t_std += t.elapsed();
    }
    let per_run = |d: Duration| d.as_secs_f64() * 1e6 / args.runs as f64;
    let ours = per_run(t_ours);
    row("run_true_captured_us", ours, peer.get("run_true_captured_us")?, "python-subprocess");
    row("run_true_captured_us", ours, per_run(t_std), "std-command");
    Ok(())
}
