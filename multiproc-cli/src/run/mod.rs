//! `multiproc run`: GNU parallel's command runner on our library.
//!
//! The shape: the main thread reads the options, the template and the
//! inputs (every error before the first job), then `-j` slot threads each
//! take the next job from one shared feeder, run it (`exec`), and hand its
//! outcome to one shared printer, which prints, logs, counts and decides
//! about `--halt`. A signal thread turns SIGINT/SIGTERM into an orderly
//! stop. Module by module: `options` (the command line), `input` (the
//! values, streamed), `template` (replacement strings, quoting, shell or
//! not), `exec` (one job attempt, its process group, its output), `joblog`.

mod exec;
pub mod guard;
mod input;
mod joblog;
pub mod options;
pub mod remote;
mod template;

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::io::{self, IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use nix::sys::signal::{SigSet, Signal};

use exec::{Outcome, Running};
use input::Inputs;
use joblog::JobLog;
use options::{Halt, HaltOn, HaltWhen, Jobs, Options, Parsed};
use template::{Job, Template};

/// How long jobs get between the stop signal and SIGKILL, unless `--grace`.
const GRACE: Duration = Duration::from_secs(2);
/// How long jobs get between a `--halt now` TERM and KILL.
const HALT_GRACE: Duration = Duration::from_millis(200);

/// Runs `multiproc run ARGS...`; returns the exit status.
pub fn main(args: &[OsString]) -> i32 {
    let options = match options::parse(args) {
        Ok(Parsed::Run(o)) => o,
        Ok(Parsed::Help) => {
            print!("{}", options::HELP);
            return 0;
        }
        Err(e) => {
            eprintln!("multiproc run: {e}");
            return 255;
        }
    };
    match run(*options) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("multiproc run: {e}");
            255
        }
    }
}

/// The shell for jobs that need one: GNU parallel's choice.
fn shell() -> OsString {
    std::env::var_os("PARALLEL_SHELL")
        .or_else(|| std::env::var_os("SHELL"))
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "/bin/sh".into())
}

fn run(o: Options) -> Result<i32, String> {
    let sources = if o.colsep.is_some() { None } else { Some(o.groups.iter().map(Vec::len).sum()) };
    let template = Template::parse(&o.command, sources)?;
    let inputs = Inputs::open(&o.groups, o.null, o.colsep.as_deref())?;
    let done_before = match (&o.joblog, o.resume || o.resume_failed) {
        (Some(path), true) => joblog::read(path)?,
        _ => HashMap::new(),
    };
    let skip = |seq: u64| done_before.get(&seq).is_some_and(|&ok| o.resume || ok);
    if o.dry_run {
        let mut out = io::stdout().lock();
        for (seq, row) in (1..).zip(inputs) {
            let row = row?;
            if skip(seq) {
                continue;
            }
            let mut line = template.shell_text(&Job { seq, slot: 1, values: &row });
            line.push(b'\n');
            if out.write_all(&line).is_err() {
                break;
            }
        }
        return Ok(0);
    }
    // Before any thread starts (the pool's start some), so that all
    // inherit the mask and the signal thread alone takes the signals.
    let set = block_stop_signals()?;
    let remote = match (&o.redis, &o.pool) {
        (Some(url), Some(pool)) => Some(remote::Remote::connect(url, pool)?),
        _ => None,
    };
    if remote.is_some() && o.line_buffer {
        // Not silently: the user asked for lines as they come.
        eprintln!(
            "multiproc run: --line-buffer with --redis: each job's output comes whole (a job run again after \
             its worker died would otherwise print its lines twice)"
        );
    }
    let joblog = match &o.joblog {
        Some(path) => Some(JobLog::create(path, o.resume || o.resume_failed)?),
        None => None,
    };
    let jobs = o.jobs.unwrap_or(if remote.is_some() { Jobs::Exactly(64) } else { Jobs::PercentOfCpus(100) });
    let slots = jobs.resolve(multiproc::os::process_cpu_count());
    let total = inputs.total;
    let bar = (o.bar || (total.is_some() && io::stderr().is_terminal())).then(|| {
        if !io::stderr().is_terminal() {
            // Asked for with stderr in a file or a pipe: a line a second.
            return Progress::Lines { started: Instant::now(), last: None };
        }
        let bar = ProgressBar::with_draw_target(total, ProgressDrawTarget::stderr_with_hz(10));
        let style = ProgressStyle::with_template(
            "{elapsed_precise} [{wide_bar}] {pos}/{len} done, {msg} | {per_sec} ETA {eta}",
        )
        .expect("a valid template");
        bar.set_style(style);
        Progress::Bar(bar)
    });
    let state = Arc::new(State {
        stop: AtomicBool::new(false),
        signalled: AtomicI32::new(0),
        running: Running::default(),
        remote,
    });
    let signals = signal_thread(set, Arc::clone(&state), o.grace.unwrap_or(GRACE))?;
    let shared = Shared {
        o: &o,
        template,
        shell: shell(),
        state: &state,
        feed: Mutex::new(Feed { inputs, seq: 0, last_start: None, error: None }),
        out: Mutex::new(Out {
            next: 1,
            pending: BTreeMap::new(),
            held: BTreeMap::new(),
            joblog,
            done: 0,
            failed: 0,
            halt_code: None,
            total,
            bar,
        }),
        skip: &skip,
    };
    std::thread::scope(|scope| {
        for slot in 1..=slots {
            let shared = &shared;
            std::thread::Builder::new()
                .name(format!("slot-{slot}"))
                .spawn_scoped(scope, move || shared.slot(slot))
                .expect("a slot thread");
        }
    });
    drop(signals);
    let mut out = shared.out.into_inner().unwrap_or_else(|e| e.into_inner());
    // Halted with gaps: what was kept back for order comes out now.
    let rest: Vec<_> = std::mem::take(&mut out.pending).into_values().flatten().collect();
    for f in rest {
        if !out.print(&o, &f) {
            break;
        }
    }
    match &mut out.bar {
        Some(Progress::Bar(bar)) => bar.finish(),
        Some(Progress::Lines { .. }) => progress_line(&out, state.running_count()),
        None => {}
    }
    if let Some(e) = shared.feed.into_inner().unwrap_or_else(|e| e.into_inner()).error {
        return Err(e);
    }
    let signalled = state.signalled.load(Ordering::SeqCst);
    if signalled != 0 {
        return Ok(128 + signalled);
    }
    Ok(out.halt_code.unwrap_or(out.failed.min(101) as i32))
}

/// What the signal thread and the slots share.
struct State {
    stop: AtomicBool,
    /// The stop signal received, else 0.
    signalled: AtomicI32,
    running: Running,
    /// `--redis`: where jobs run instead of here.
    remote: Option<remote::Remote>,
}

impl State {
    fn running_count(&self) -> usize {
        self.running.count() + self.remote.as_ref().map_or(0, remote::Remote::in_flight)
    }

    /// Stops every running job: `signal` to local process groups; remote
    /// jobs are cancelled (killed where they run).
    fn stop_jobs(&self, signal: i32) {
        self.running.signal_all(signal);
        if let Some(remote) = &self.remote {
            remote.cancel_all();
        }
    }
}

/// Blocks SIGINT and SIGTERM in this thread; threads started later inherit
/// the mask (jobs do not: std resets it in the child).
fn block_stop_signals() -> Result<SigSet, String> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.thread_block().map_err(|e| format!("blocking SIGINT/SIGTERM: {e}"))?;
    Ok(set)
}

/// Waits for SIGINT and SIGTERM on a thread of its own: the first stops
/// starting jobs, passes the signal to the running jobs' groups (cancels
/// remote jobs) and kills what is left after [`GRACE`]; a second kills at
/// once.
fn signal_thread(set: SigSet, state: Arc<State>, grace: Duration) -> Result<std::thread::JoinHandle<()>, String> {
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let Ok(first) = set.wait() else { return };
            state.signalled.store(first as i32, Ordering::SeqCst);
            state.stop.store(true, Ordering::SeqCst);
            state.stop_jobs(first as i32);
            eprintln!(
                "multiproc run: {}: stopping; {} running jobs signalled, killed in {:.1}s or on a second signal",
                first.as_str(),
                state.running_count(),
                grace.as_secs_f64()
            );
            let timeout = libc::timespec {
                tv_sec: grace.as_secs() as libc::time_t,
                tv_nsec: grace.subsec_nanos() as libc::c_long,
            };
            // SAFETY: the set and the timespec are valid for the call; no
            // siginfo is asked for.
            unsafe {
                libc::sigtimedwait(set.as_ref(), std::ptr::null_mut(), &timeout);
            }
            state.stop_jobs(libc::SIGKILL);
            // Later signals are taken and dropped: the run is ending.
            while set.wait().is_ok() {}
        })
        .map_err(|e| format!("starting the signal thread: {e}"))
}

struct Feed {
    inputs: Inputs,
    seq: u64,
    last_start: Option<Instant>,
    error: Option<String>,
}

/// A finished job, as the printer needs it.
struct Finished {
    values: Vec<Vec<u8>>,
    outcome: Outcome,
}

struct Out {
    /// `--keep-order`: the next job number to print, and those waiting.
    next: u64,
    pending: BTreeMap<u64, Option<Finished>>,
    /// `--keep-order --line-buffer`: lines of running jobs that are not
    /// yet first in line (stderr: true), printed when their turn comes.
    held: BTreeMap<u64, Vec<(bool, Vec<u8>)>>,
    joblog: Option<JobLog>,
    done: u64,
    failed: u64,
    halt_code: Option<i32>,
    total: Option<u64>,
    bar: Option<Progress>,
}

/// `--bar` on a terminal, or its plain-line form elsewhere.
enum Progress {
    Bar(ProgressBar),
    Lines { started: Instant, last: Option<Instant> },
}

/// The plain progress line: done, failed, running, rate and ETA.
fn progress_line(out: &Out, running: usize) {
    let Some(Progress::Lines { started, .. }) = &out.bar else { return };
    let secs = started.elapsed().as_secs_f64().max(1e-3);
    let rate = out.done as f64 / secs;
    let of = out.total.map_or_else(String::new, |t| format!("/{t}"));
    let eta = match out.total {
        Some(t) if rate > 0.0 => format!(", ETA {:.0}s", t.saturating_sub(out.done) as f64 / rate),
        _ => String::new(),
    };
    eprintln!("multiproc run: {}{of} done, {} failed, {running} running, {rate:.1}/s{eta}", out.done, out.failed);
}

fn tagged(tag: Option<&[u8]>, bytes: &[u8]) -> Vec<u8> {
    let Some(tag) = tag else { return bytes.to_vec() };
    let mut out = Vec::with_capacity(bytes.len() + tag.len() * 4);
    for line in bytes.split_inclusive(|&b| b == b'\n') {
        out.extend_from_slice(tag);
        out.extend_from_slice(line);
    }
    out
}

fn tag_of(values: &[Vec<u8>]) -> Vec<u8> {
    let mut tag = values.join(&b'\t');
    tag.push(b'\t');
    tag
}

impl Out {
    /// Prints a job's output; false when stdout is gone (`| head`).
    fn print(&self, o: &Options, f: &Finished) -> bool {
        let tag = o.tag.then(|| tag_of(&f.values));
        let stderr = tagged(tag.as_deref(), &f.outcome.stderr);
        let stdout = tagged(tag.as_deref(), &f.outcome.stdout);
        self.emit(&[(true, &stderr), (false, &stdout)])
    }

    /// Writes each piece to stderr (true) or stdout, around the bar; false
    /// when stdout is gone.
    fn emit(&self, pieces: &[(bool, &[u8])]) -> bool {
        let write = || {
            let mut ok = true;
            for &(err, bytes) in pieces.iter().filter(|(_, b)| !b.is_empty()) {
                if err {
                    let _ = io::stderr().lock().write_all(bytes);
                } else {
                    let mut out = io::stdout().lock();
                    ok &= out.write_all(bytes).and_then(|()| out.flush()).is_ok();
                }
            }
            ok
        };
        match &self.bar {
            Some(Progress::Bar(bar)) => bar.suspend(write),
            _ => write(),
        }
    }

    fn halted(&self, halt: &Halt, f: &Outcome) -> Option<i32> {
        let percent = |count: u64, p: f64| match self.total {
            Some(total) => count as f64 * 100.0 >= p * total as f64,
            None => self.done >= 3 && count as f64 * 100.0 >= p * self.done as f64,
        };
        let code = if f.exitval > 0 {
            f.exitval
        } else if f.signal > 0 {
            128 + f.signal
        } else {
            1
        };
        match halt.on {
            HaltOn::Fail(n) if f.failed() && self.failed >= n => Some(code),
            HaltOn::FailPercent(p) if f.failed() && percent(self.failed, p) => Some(code),
            HaltOn::Success(n) if !f.failed() && self.done - self.failed >= n => Some(0),
            HaltOn::SuccessPercent(p) if !f.failed() && percent(self.done - self.failed, p) => Some(0),
            HaltOn::Done(n) if self.done >= n => Some(if f.failed() { code } else { 0 }),
            _ => None,
        }
    }
}

struct Shared<'a> {
    o: &'a Options,
    template: Template,
    shell: OsString,
    state: &'a Arc<State>,
    feed: Mutex<Feed>,
    out: Mutex<Out>,
    skip: &'a (dyn Fn(u64) -> bool + Sync),
}

impl Shared<'_> {
    /// The next job to run, or `None` when the input is over or the run
    /// stops.
    fn next_job(&self) -> Option<(u64, Vec<Vec<u8>>)> {
        let mut feed = self.feed.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if self.state.stop.load(Ordering::SeqCst) || feed.error.is_some() {
                return None;
            }
            let row = match feed.inputs.next()? {
                Ok(row) => row,
                Err(e) => {
                    feed.error = Some(e);
                    self.state.stop.store(true, Ordering::SeqCst);
                    return None;
                }
            };
            feed.seq += 1;
            let seq = feed.seq;
            if (self.skip)(seq) {
                let mut out = self.lock_out();
                out.pending.insert(seq, None);
                self.flush_in_order(&mut out);
                continue;
            }
            if let Some(delay) = self.o.delay {
                if let Some(last) = feed.last_start {
                    let wait = (last + delay).saturating_duration_since(Instant::now());
                    std::thread::sleep(wait);
                }
                feed.last_start = Some(Instant::now());
                if self.state.stop.load(Ordering::SeqCst) {
                    return None;
                }
            }
            return Some((seq, row));
        }
    }

    fn lock_out(&self) -> std::sync::MutexGuard<'_, Out> {
        self.out.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn flush_in_order(&self, out: &mut Out) {
        loop {
            // What the job now first in line printed while it waited its
            // turn; a running one prints straight on from here.
            if let Some(held) = out.held.remove(&out.next) {
                let pieces: Vec<(bool, &[u8])> = held.iter().map(|(err, b)| (*err, b.as_slice())).collect();
                if !out.emit(&pieces) {
                    self.stdout_gone(out);
                }
            }
            let Some(entry) = out.pending.remove(&out.next) else { break };
            if let Some(f) = entry
                && !out.print(self.o, &f)
            {
                self.stdout_gone(out);
            }
            out.next += 1;
        }
    }

    /// A line-buffered job's whole lines, as they come: printed at once,
    /// or with `--keep-order` at once only while the job is first in line
    /// (held until then otherwise).
    fn line(&self, seq: u64, err: bool, bytes: Vec<u8>) {
        let mut out = self.lock_out();
        if self.o.keep_order && out.next != seq {
            out.held.entry(seq).or_default().push((err, bytes));
        } else if !out.emit(&[(err, &bytes)]) {
            self.stdout_gone(&mut out);
        }
    }

    /// Nobody reads our output any more (`| head`): as a shell pipeline
    /// would, stop, and take the running jobs along.
    fn stdout_gone(&self, out: &mut Out) {
        if out.halt_code.is_none() {
            out.halt_code = Some(255);
            self.state.stop.store(true, Ordering::SeqCst);
            self.state.stop_jobs(libc::SIGKILL);
        }
    }

    fn show_progress(&self, out: &mut Out) {
        match &mut out.bar {
            Some(Progress::Bar(bar)) => {
                bar.set_position(out.done);
                bar.set_message(format!("{} failed, {} running", out.failed, self.state.running_count()));
            }
            Some(Progress::Lines { last, .. }) => {
                if last.is_some_and(|l| l.elapsed() < Duration::from_secs(1)) {
                    return;
                }
                *last = Some(Instant::now());
                progress_line(out, self.state.running_count());
            }
            None => {}
        }
    }

    fn slot(&self, slot: usize) {
        let o = self.o;
        let line_buffered = o.line_buffer;
        while let Some((seq, values)) = self.next_job() {
            let job = Job { seq, slot, values: &values };
            let argv = self.template.exec(&job).argv(&self.shell);
            let tag = o.tag.then(|| tag_of(&values));
            let sink = |err: bool, bytes: &[u8]| self.line(seq, err, tagged(tag.as_deref(), bytes));
            let mut outcome;
            let mut attempt = 1;
            loop {
                outcome = match &self.state.remote {
                    Some(remote) => remote.attempt(argv.clone(), slot, o.timeout),
                    None => exec::run(
                        argv.clone(),
                        slot,
                        o.timeout,
                        line_buffered.then_some(&sink as exec::LineSink),
                        &self.state.running,
                        false,
                    ),
                };
                if !outcome.failed() || attempt >= o.retries.max(1) || self.state.stop.load(Ordering::SeqCst) {
                    break;
                }
                attempt += 1;
            }
            let command = self.template.shell_text(&job);
            self.finish(seq, values, command, outcome);
        }
    }

    fn finish(&self, seq: u64, values: Vec<Vec<u8>>, command: Vec<u8>, outcome: Outcome) {
        let o = self.o;
        let mut out = self.lock_out();
        out.done += 1;
        if outcome.failed() {
            out.failed += 1;
        }
        if outcome.timed_out {
            let secs = o.timeout.unwrap_or_default().as_secs_f64();
            let message = format!(
                "multiproc run: job {seq} ran past --timeout {secs}s and was killed: {}\n",
                String::from_utf8_lossy(&command)
            );
            let _ = io::stderr().write_all(message.as_bytes());
        }
        if let Some(log) = &mut out.joblog {
            let row = joblog::Row {
                seq,
                start: outcome.start,
                runtime: outcome.runtime,
                received: (outcome.stdout.len() + outcome.stderr.len()) as u64,
                exitval: outcome.exitval,
                signal: outcome.signal,
                command: &command,
            };
            if let Err(e) = log.write(&row) {
                eprintln!("multiproc run: writing the joblog: {e}");
            }
        }
        if out.halt_code.is_none()
            && let Some(halt) = &o.halt
            && let Some(code) = out.halted(halt, &outcome)
        {
            out.halt_code = Some(code);
            self.state.stop.store(true, Ordering::SeqCst);
            let running = self.state.running_count();
            eprintln!(
                "multiproc run: --halt: job {seq} {} ({}); {}",
                if outcome.failed() { "failed" } else { "succeeded" },
                String::from_utf8_lossy(&command),
                match (halt.when, running) {
                    (_, 0) => "starting no more jobs".to_owned(),
                    (HaltWhen::Now, n) => format!("killing {n} running jobs"),
                    (HaltWhen::Soon, n) => format!("starting no more jobs, waiting for {n} running"),
                }
            );
            if halt.when == HaltWhen::Now {
                self.state.stop_jobs(libc::SIGTERM);
                let state = Arc::clone(self.state);
                std::thread::spawn(move || {
                    std::thread::sleep(HALT_GRACE);
                    state.stop_jobs(libc::SIGKILL);
                });
            }
        }
        let finished = Finished { values, outcome };
        if o.keep_order {
            out.pending.insert(seq, Some(finished));
            self.flush_in_order(&mut out);
        } else {
            if !out.print(o, &finished) {
                self.stdout_gone(&mut out);
            }
        }
        self.show_progress(&mut out);
    }
}
