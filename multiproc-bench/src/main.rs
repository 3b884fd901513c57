//! `multiproc-bench`: multiproc against its peers, side by side in one run.
//!
//! Every subcommand prints one row per figure:
//!
//! ```text
//! figure  ours  peer  peer_name  ratio
//! ```
//!
//! whitespace-separated; the figure's name ends in its unit (`_ms`, `_us`,
//! `_per_s`, `_mib`); `ratio` is ours / peer (lower is better for times,
//! higher for rates); lines starting with `#` are comments. Absolute numbers
//! drift between machines and runs; the ratios, taken in the same run, are
//! the claim.

mod cli;
mod cluster;
mod ipc;
mod managers;
mod pool;
mod python;
mod spawn;
mod subprocess;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(version, about = "multiproc against its peers, side by side in one run")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start+join of a process that returns a small value, per start method,
    /// against Python 3.11 (fork, forkserver, spawn) and procspawn.
    Spawn(spawn::Args),
    /// Pool throughput and latency on tiny tasks against Python 3.11's Pool,
    /// CPU-bound tasks against rayon, and worker memory.
    Pool(pool::Args),
    /// Queues, pipes, locks and shared values against Python's and against
    /// the raw floors (futex, pipe, socketpair).
    Ipc(ipc::Args),
    /// Running `true` with its output captured, against Python's
    /// `subprocess.run` and `std::process::Command::output`.
    Subprocess(subprocess::Args),
    /// A manager's queue (one client, then many) and dict against Python
    /// 3.11's SyncManager.
    Managers(managers::Args),
    /// `multiproc run` against GNU parallel and `xargs -P` on jobs of
    /// `true` (row `run_true_jobs_per_s`).
    Cli(cli::Args),
    /// The Redis-backed pool against Celery 5 and RQ on the same Redis,
    /// and Redis's own floors (pipelined XADD, PING).
    Cluster(cluster::Args),
}

/// Prints the column names, as a comment line above the rows.
pub(crate) fn header() {
    println!("# {:<26} {:>12} {:>12} {:<18} {:>8}", "figure", "ours", "peer", "peer_name", "ratio");
}

/// Prints one result row.
pub(crate) fn row(figure: &str, ours: f64, peer: f64, peer_name: &str) {
    println!("{figure:<28} {ours:>12.4} {peer:>12.4} {peer_name:<18} {:>8.3}", ours / peer);
}

/// The median of some samples.
pub(crate) fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    let n = samples.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 { samples[n / 2] } else { (samples[n / 2 - 1] + samples[n / 2]) / 2.0 }
}

fn main() {
    // procspawn's children re-enter main and are caught here; multiproc's
    // are caught before main by its load hook.
    procspawn::init();
    multiproc::init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Spawn(args) => spawn::run(&args),
        Command::Pool(args) => pool::run(&args),
        Command::Ipc(args) => ipc::run(&args),
        Command::Subprocess(args) => subprocess::run(&args),
        Command::Cluster(args) => cluster::run(&args),
        Command::Cli(args) => cli::run(&args),
        Command::Managers(args) => managers::run(&args),
    };
    if let Err(e) = result {
        eprintln!("multiproc-bench: {e}");
        std::process::exit(1);
    }
}
