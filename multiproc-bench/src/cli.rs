//! `multiproc-bench cli`: `multiproc run` against GNU parallel and `xargs -P`
//! (the floor: it execs the command with nothing around it), each running
//! the same jobs of `true` fed on stdin, at `-j` = CPU count.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::{median, row};

#[derive(clap::Args)]
pub(crate) struct Args {
    /// Jobs of `true` per contender and round.
    #[arg(long, default_value_t = 5_000)]
    jobs: usize,
    /// Rounds (the median is reported); the contenders alternate.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// The `multiproc` binary (default: next to this one; build it with
    /// `cargo build --release -p multiproc-cli`).
    #[arg(long)]
    multiproc: Option<PathBuf>,
    /// Skip GNU parallel (it costs milliseconds of Perl per job).
    #[arg(long)]
    no_parallel: bool,
}

type Res<T> = Result<T, String>;

/// Installs Debian's `parallel` when it is missing, as the test script does.
fn gnu_parallel() -> Res<PathBuf> {
    let path = PathBuf::from("/usr/bin/parallel");
    if path.exists() {
        return Ok(path);
    }
    eprintln!("# installing GNU parallel (Debian package `parallel`)");
    let sudo = if nix_is_root() { vec![] } else { vec!["sudo"] };
    let install = |args: &[&str]| {
        let mut argv = sudo.clone();
        argv.extend_from_slice(args);
        Command::new(argv[0]).args(&argv[1..]).stdout(Stdio::null()).stderr(Stdio::null()).status()
    };
    if !install(&["apt-get", "install", "-y", "parallel"]).is_ok_and(|s| s.success()) {
        let _ = install(&["apt-get", "update"]);
        install(&["apt-get", "install", "-y", "parallel"]).map_err(|e| format!("apt-get: {e}"))?;
    }
    if path.exists() { Ok(path) } else { Err("GNU parallel could not be installed".into()) }
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Seconds for `argv` to run `jobs` jobs read from its stdin.
fn time(argv: &[&str], jobs: usize) -> Res<f64> {
    let input: String = (1..=jobs).map(|i| format!("{i}\n")).collect();
    let started = Instant::now();
    let mut child = Command::new(argv[0])
        .args(&argv[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| format!("{}: {e}", argv[0]))?;
    let mut stdin = child.stdin.take().expect("piped");
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let status = child.wait().map_err(|e| e.to_string())?;
    let _ = writer.join();
    if !status.success() {
        return Err(format!("{argv:?} failed: {status}"));
    }
    Ok(started.elapsed().as_secs_f64())
}

fn sibling(name: &str) -> Option<PathBuf> {
    Some(std::env::current_exe().ok()?.parent()?.join(name)).filter(|p| p.exists())
}

pub(crate) fn run(args: &Args) -> Res<()> {
    let ours =
        args.multiproc.clone().or_else(|| sibling("multiproc")).ok_or(
            "no multiproc binary next to this one: cargo build --release -p multiproc-cli, or --multiproc PATH",
        )?;
    let gnu = if args.no_parallel { None } else { Some(gnu_parallel()?) };
    let j = multiproc::os::process_cpu_count().to_string();
    println!(
        "# multiproc-bench cli: jobs of `true` per second, {} jobs at -j {j}, median of {}",
        args.jobs, args.rounds
    );
    println!("# ours: {}", ours.display());
    crate::header();
    let ours_s = ours.to_string_lossy().into_owned();
    let ours_argv = [ours_s.as_str(), "run", "-j", &j, "true"];
    let xargs_argv = ["xargs", "-P", &j, "-n", "1", "true"];
    let gnu_s = gnu.as_deref().map(Path::to_string_lossy).map(|s| s.into_owned());
    let gnu_argv = gnu_s.as_deref().map(|g| [g, "--will-cite", "-j", &j, "true"]);
    let (mut t_ours, mut t_xargs, mut t_gnu) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..args.rounds {
        t_ours.push(time(&ours_argv, args.jobs)?);
        t_xargs.push(time(&xargs_argv, args.jobs)?);
        if let Some(argv) = &gnu_argv {
            t_gnu.push(time(argv, args.jobs)?);
        }
    }
    let rate = |t: Vec<f64>| args.jobs as f64 / median(t);
    let ours = rate(t_ours);
    if gnu_argv.is_some() {
        row("run_true_jobs_per_s", ours, rate(t_gnu), "gnu-parallel");
    }
    row("run_true_jobs_per_s", ours, rate(t_xargs), "xargs");
    Ok(())
}
