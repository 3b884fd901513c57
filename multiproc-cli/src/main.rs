//! `multiproc`: the command-line tool.
//!
//! `multiproc manager serve --address HOST:PORT --authkey-env VAR [--sync] [--queue NAME] [--dict NAME]
//! [--list NAME] [--namespace NAME]` serves shared objects that Python or
//! Rust workers reach as a manager: each NAME is a type id whose every call
//! returns the same object (the seed's `register('get_task_queue',
//! callable=lambda: task_queue)`), and `--sync` serves every type id of
//! Python's `SyncManager`, so that `SyncManager(address=...,
//! authkey=...).connect()` makes its queues, dicts, lists, locks... here.
//! The first line on stdout is `listening on HOST:PORT` with the real port;
//! SIGINT or SIGTERM stops it cleanly.
//!
//! `multiproc run [OPTIONS] COMMAND ::: ARGS...` is a parallel command
//! runner for GNU parallel's users (see the `run` module); with `--redis URL
//! --pool NAME` its jobs run on `multiproc worker --redis URL --pool NAME`s.

mod run;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use std::sync::Arc;

use multiproc::managers::{Address, ServerBuilder, objects};
use nix::sys::signal::{SigSet, Signal};

#[derive(Parser)]
#[command(name = "multiproc", version, about = "Python's multiprocessing, done properly in Rust: the tool")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Managers: servers of shared objects, wire-compatible with Python's.
    Manager {
        #[command(subcommand)]
        command: ManagerCommand,
    },
    /// Run a command once per input, in parallel: GNU parallel's way
    /// (`multiproc run --help` for the options).
    #[command(disable_help_flag = true)]
    Run {
        /// Options, the command, and its inputs (`:::`, `::::`, or stdin).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
        args: Vec<std::ffi::OsString>,
    },
    /// Run `multiproc run --redis URL --pool NAME` jobs here, until
    /// SIGTERM or SIGINT (which hands running jobs back at once).
    Worker {
        /// The Redis URL (redis://, rediss://, redis+unix://).
        #[arg(long)]
        redis: String,
        /// The pool's name (the same as `multiproc run --pool`).
        #[arg(long)]
        pool: String,
        /// Jobs at once (default: CPU count).
        #[arg(short = 'j', long = "jobs")]
        jobs: Option<usize>,
        /// Lease of a running job in milliseconds: a job whose worker dies
        /// runs elsewhere after about this long.
        #[arg(long)]
        lease_ms: Option<u64>,
    },
    /// The Redis-backed pool: look at it, and at its dead letters.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Backlog, tasks in flight per worker with lease ages, delivery
    /// counts, the oldest pending task's age, live workers and dead letters.
    Status(ClusterArgs),
    /// The dead letters with their reasons; `--requeue` sends them back.
    DeadLetters {
        #[command(flatten)]
        args: ClusterArgs,
        /// Send every dead letter back to the task stream.
        #[arg(long)]
        requeue: bool,
    },
}

#[derive(Args)]
struct ClusterArgs {
    /// The Redis URL (redis://, rediss://, redis+unix://). For rediss://,
    /// MULTIPROC_REDIS_TLS_CA, MULTIPROC_REDIS_TLS_CERT and
    /// MULTIPROC_REDIS_TLS_KEY name the CA and client certificate files.
    #[arg(long)]
    redis: String,
    /// The pool's name.
    #[arg(long)]
    pool: String,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

fn cluster(command: ClusterCommand) -> Result<(), String> {
    match command {
        ClusterCommand::Status(a) => {
            let s = multiproc::cluster::status(&a.redis, &a.pool).map_err(|e| e.to_string())?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&s).map_err(|e| e.to_string())?);
            } else {
                print!("{s}");
            }
        }
        ClusterCommand::DeadLetters { args: a, requeue } => {
            if requeue {
                let n = multiproc::cluster::requeue_dead_letters(&a.redis, &a.pool).map_err(|e| e.to_string())?;
                if a.json {
                    println!("{{\"requeued\": {n}}}");
                } else {
                    println!("requeued {n} dead letters");
                }
                return Ok(());
            }
            let s = multiproc::cluster::status(&a.redis, &a.pool).map_err(|e| e.to_string())?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&s.dead_letters).map_err(|e| e.to_string())?);
            } else {
                for d in &s.dead_letters {
                    println!("{d}");
                }
            }
        }
    }
    Ok(())
}

#[derive(Subcommand)]
enum ManagerCommand {
    /// Serve shared objects to Python or Rust clients until SIGINT/SIGTERM.
    Serve(Serve),
}

#[derive(Args)]
#[command(group = clap::ArgGroup::new("key").required(true).args(["authkey_env", "authkey_file"]))]
#[command(group = clap::ArgGroup::new("what").required(true).multiple(true).args(["sync", "queues", "dicts", "lists", "namespaces"]))]
struct Serve {
    /// Where to listen: HOST:PORT (port 0 picks a free one) or a socket path.
    #[arg(long)]
    address: String,
    /// The environment variable holding the authkey (never the key itself
    /// on the command line, where other users can read it).
    #[arg(long, value_name = "VAR")]
    authkey_env: Option<String>,
    /// A file holding the authkey (a trailing newline is not part of it).
    #[arg(long, value_name = "PATH")]
    authkey_file: Option<PathBuf>,
    /// Serve every type id of Python's SyncManager (Queue, JoinableQueue,
    /// dict, list, Value, Array, Namespace, Lock, RLock, Semaphore,
    /// BoundedSemaphore, Condition, Event, Barrier): each call makes a new
    /// object, as `SyncManager().dict()` does.
    #[arg(long)]
    sync: bool,
    /// A type id whose every call returns the same queue; repeatable.
    #[arg(long = "queue", value_name = "NAME")]
    queues: Vec<String>,
    /// A type id whose every call returns the same dict; repeatable.
    #[arg(long = "dict", value_name = "NAME")]
    dicts: Vec<String>,
    /// A type id whose every call returns the same list; repeatable.
    #[arg(long = "list", value_name = "NAME")]
    lists: Vec<String>,
    /// A type id whose every call returns the same Namespace; repeatable.
    #[arg(long = "namespace", value_name = "NAME")]
    namespaces: Vec<String>,
    /// Allow an empty authkey on an address other machines can reach.
    #[arg(long)]
    allow_empty_key_remotely: bool,
}

fn authkey(args: &Serve) -> Result<Vec<u8>, String> {
    if let Some(var) = &args.authkey_env {
        return std::env::var_os(var)
            .map(|v| v.into_encoded_bytes())
            .ok_or_else(|| format!("the environment variable {var} (--authkey-env) is not set"));
    }
    let path = args.authkey_file.as_ref().expect("clap requires one of the two");
    let mut key = std::fs::read(path).map_err(|e| format!("cannot read the authkey file {}: {e}", path.display()))?;
    if key.ends_with(b"\n") {
        key.pop();
    }
    Ok(key)
}

fn serve(args: Serve) -> Result<(), String> {
    let key = authkey(&args)?;
    let address: Address = args.address.parse().map_err(|e: multiproc::Error| e.to_string())?;
    // Block the stop signals in every thread (threads inherit the mask) so
    // that one thread can wait for them.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    signals.thread_block().map_err(|e| format!("blocking SIGINT/SIGTERM: {e}"))?;
    let mut builder = ServerBuilder::new(address).authkey(&key);
    if args.allow_empty_key_remotely {
        builder = builder.allow_empty_key_remotely();
    }
    if args.sync {
        builder = builder.sync_types();
    }
    for name in &args.queues {
        builder = builder.register_queue(name);
    }
    for name in &args.dicts {
        builder = builder.register_shared(name, Arc::new(objects::Dict::default()));
    }
    for name in &args.lists {
        builder = builder.register_shared(name, Arc::new(objects::List::default()));
    }
    for name in &args.namespaces {
        builder = builder.register_shared(name, Arc::new(objects::Namespace::default()));
    }
    let server = builder.bind().map_err(|e| e.to_string())?;
    println!("listening on {}", server.address());
    let stopper = server.stopper();
    std::thread::spawn(move || {
        if signals.wait().is_ok() {
            stopper.stop();
        }
    });
    server.serve_forever().map_err(|e| e.to_string())
}

/// `multiproc worker`: a worker of the Redis-backed pool whose tasks are
/// `multiproc run`'s jobs ([`run::remote::run_job`]).
fn worker(redis: &str, pool: &str, jobs: Option<usize>, lease_ms: Option<u64>) -> Result<(), String> {
    let mut w = multiproc::cluster::Worker::new(redis, pool);
    if let Some(n) = jobs {
        if n == 0 {
            return Err("-j: a worker needs at least one slot".into());
        }
        w = w.slots(n);
    }
    if let Some(ms) = lease_ms {
        w = w.lease(std::time::Duration::from_millis(ms));
    }
    w.run().map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    multiproc::init();
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == run::guard::FLAG) {
        run::guard::main(&args[2..]);
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run { args } => return ExitCode::from(run::main(&args).clamp(0, 255) as u8),
        Command::Manager { command: ManagerCommand::Serve(args) } => serve(args),
        Command::Cluster { command } => cluster(command),
        Command::Worker { redis, pool, jobs, lease_ms } => worker(&redis, &pool, jobs, lease_ms),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("multiproc: {e}");
            ExitCode::FAILURE
        }
    }
}
