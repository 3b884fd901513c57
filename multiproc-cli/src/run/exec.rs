//! Running one job here: in a process group of its own (so that a timeout,
//! a halt or Ctrl-C reaches everything it started), its output captured.
//!
//! Grouped output goes to two memfds, not pipes, as GNU parallel's goes to
//! temporary files: nobody has to read while the job runs, a job printing
//! megabytes never blocks, and a background process it leaves behind
//! holding the descriptor cannot keep the job from ending.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use multiproc::subprocess::{Command, Popen, Stdio};

/// How a job attempt ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub start: SystemTime,
    pub runtime: Duration,
    /// The exit status (`-1` after a timeout, as GNU parallel logs it).
    pub exitval: i32,
    /// The signal that ended it, else 0.
    pub signal: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub timed_out: bool,
}

impl Outcome {
    pub fn failed(&self) -> bool {
        self.exitval != 0 || self.signal != 0
    }

    /// An attempt that never started (no such program, no descriptors).
    pub fn not_started(start: SystemTime, exitval: i32, message: String) -> Outcome {
        Outcome {
            start,
            runtime: Duration::ZERO,
            exitval,
            signal: 0,
            stdout: Vec::new(),
            stderr: message.into_bytes(),
            timed_out: false,
        }
    }
}

/// Where a line-buffered job's output goes as it comes: stdout (false) or
/// stderr (true), one or more whole lines at a time.
pub type LineSink<'a> = &'a (dyn Fn(bool, &[u8]) + Sync);

/// The process groups of the running jobs, by slot, so that a halt or a
/// signal reaches all of them.
#[derive(Default)]
pub struct Running {
    state: Mutex<RunningState>,
}

#[derive(Default)]
struct RunningState {
    /// Set once the run stops: the signal every job still starting gets.
    stopping: Option<i32>,
    groups: HashMap<usize, i32>,
}

impl Running {
    fn enter(&self, slot: usize, pid: i32) -> Option<i32> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.groups.insert(slot, pid);
        s.stopping
    }

    fn leave(&self, slot: usize) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(pid) = s.groups.remove(&slot)
            && s.stopping.is_some()
        {
            // The job ended on the stop signal; what it started in its
            // group (a `sleep &` ignoring SIGINT, as shells make them) is
            // not waited for.
            kill_group(pid, libc::SIGKILL);
        }
    }

    /// Sends `signal` to every running job's group, and to every job that
    /// starts from now on.
    pub fn signal_all(&self, signal: i32) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.stopping = Some(match s.stopping {
            Some(libc::SIGKILL) => libc::SIGKILL,
            _ => signal,
        });
        for &pid in s.groups.values() {
            kill_group(pid, signal);
        }
    }

    pub fn count(&self) -> usize {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).groups.len()
    }
}

fn kill_group(pid: i32, signal: i32) {
    // SAFETY: killpg has no memory-safety preconditions; a group that is
    // gone answers ESRCH, which is what we want then.
    unsafe {
        libc::killpg(pid, signal);
    }
}

fn memfd() -> io::Result<OwnedFd> {
    Ok(rustix::fs::memfd_create("multiproc-run", rustix::fs::MemfdFlags::CLOEXEC)?)
}

fn read_all(fd: OwnedFd) -> Vec<u8> {
    let file = File::from(fd);
    let mut out = Vec::new();
    let mut buf = vec![0; 1 << 16];
    loop {
        match file.read_at(&mut buf, out.len() as u64) {
            Ok(0) | Err(_) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}

enum Capture {
    Files { out: OwnedFd, err: OwnedFd },
    Pipes { out: File, err: File },
}

/// Runs `argv` once in slot `slot` and waits for it, at most `timeout`.
pub fn run(
    argv: Vec<OsString>,
    slot: usize,
    timeout: Option<Duration>,
    lines: Option<LineSink>,
    running: &Running,
    kill_with_parent: bool,
) -> Outcome {
    let start = SystemTime::now();
    let began = Instant::now();
    let spawned = (|| -> io::Result<(Popen, Capture)> {
        let (capture, out, err): (Capture, OwnedFd, OwnedFd) = if lines.is_some() {
            let (r1, w1) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
            let (r2, w2) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
            for r in [&r1, &r2] {
                rustix::fs::fcntl_setfl(r, rustix::fs::OFlags::NONBLOCK)?;
            }
            (Capture::Pipes { out: r1.into(), err: r2.into() }, w1, w2)
        } else {
            let (out, err) = (memfd()?, memfd()?);
            let (o2, e2) = (out.try_clone()?, err.try_clone()?);
            (Capture::Files { out, err }, o2, e2)
        };
        let mut command =
            Command::new(argv.iter()).stdin(Stdio::Null).stdout(Stdio::Fd(out)).stderr(Stdio::Fd(err)).process_group();
        if kill_with_parent {
            command = command.kill_with_parent();
        }
        let child = command.popen().map_err(|e| match e {
            multiproc::Error::ProgramNotFound { program } => {
                io::Error::new(io::ErrorKind::NotFound, format!("{program}: command not found"))
            }
            other => io::Error::other(other.to_string()),
        })?;
        Ok((child, capture))
    })();
    let (mut child, capture) = match spawned {
        Ok(c) => c,
        Err(e) => {
            let code = if e.kind() == io::ErrorKind::NotFound { 127 } else { 126 };
            return Outcome::not_started(start, code, format!("multiproc run: {e}\n"));
        }
    };
    if let Some(signal) = running.enter(slot, child.pid()) {
        kill_group(child.pid(), signal);
    }
    let deadline = timeout.map(|t| began + t);
    let (status, stdout, stderr) = match capture {
        Capture::Files { out, err } => {
            let status = wait(&mut child, deadline);
            (status, read_all(out), read_all(err))
        }
        Capture::Pipes { out, err } => {
            let status = pump(&mut child, deadline, [out, err], lines.expect("pipes only for line-buffered runs"));
            (status, Vec::new(), Vec::new())
        }
    };
    running.leave(slot);
    let (code, timed_out) = status;
    let (exitval, signal) = match (code, timed_out) {
        (c, true) => (-1, if c < 0 { -c } else { libc::SIGTERM }),
        (c, false) if c < 0 => (0, -c),
        (c, false) => (c, 0),
    };
    Outcome { start, runtime: began.elapsed(), exitval, signal, stdout, stderr, timed_out }
}

/// Ends a job that ran past its time: TERM to its tree (its group and
/// every descendant, one that left the group with `setsid` too), then KILL
/// to whatever of it is left (its `sleep 100 &` too).
fn kill_timed_out(child: &mut Popen) -> i32 {
    // Seen now, while the job lives: once it dies, its children are
    // init's and out of sight.
    let tree = child.descendants();
    let _ = child.signal_tree(libc::SIGTERM);
    let code = match child.wait_timeout(Duration::from_millis(200)) {
        Ok(code) => code,
        Err(_) => {
            let _ = child.signal_tree(libc::SIGKILL);
            child.wait().unwrap_or(-libc::SIGKILL)
        }
    };
    kill_group(child.pid(), libc::SIGKILL);
    for pid in tree {
        // SAFETY: kill(2) has no memory-safety preconditions; one that is
        // gone answers ESRCH.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    code
}

/// Waits for the job: its code, and whether it timed out.
fn wait(child: &mut Popen, deadline: Option<Instant>) -> (i32, bool) {
    let result = match deadline {
        None => child.wait(),
        Some(d) => child.wait_timeout(d.saturating_duration_since(Instant::now())),
    };
    match result {
        Ok(code) => (code, false),
        Err(multiproc::Error::TimeoutExpired { .. }) => (kill_timed_out(child), true),
        // waitid failing on our own child: nothing sensible is left to do
        // but to make sure it is gone.
        Err(_) => {
            let _ = child.signal_group(libc::SIGKILL);
            (child.wait().unwrap_or(-libc::SIGKILL), false)
        }
    }
}

/// Line-buffered: forwards whole lines as they come until the job ends
/// (not until the pipes end: a background process may hold them open).
fn pump(child: &mut Popen, deadline: Option<Instant>, mut pipes: [File; 2], sink: LineSink) -> (i32, bool) {
    use rustix::event::{PollFd, PollFlags, poll};
    let mut partial: [Vec<u8>; 2] = [Vec::new(), Vec::new()];
    let mut open = [true, true];
    let mut buf = vec![0; 1 << 16];
    let mut drain = |pipes: &mut [File; 2], open: &mut [bool; 2], partial: &mut [Vec<u8>; 2]| {
        for k in 0..2 {
            while open[k] {
                match pipes[k].read(&mut buf) {
                    Ok(0) => open[k] = false,
                    Ok(n) => {
                        partial[k].extend_from_slice(&buf[..n]);
                        if let Some(end) = partial[k].iter().rposition(|&b| b == b'\n') {
                            let rest = partial[k].split_off(end + 1);
                            sink(k == 1, &partial[k]);
                            partial[k] = rest;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
        }
    };
    let result = loop {
        drain(&mut pipes, &mut open, &mut partial);
        if let Ok(Some(code)) = child.poll() {
            break (code, false);
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break (kill_timed_out(child), true);
        }
        // Woken by output; the bound is for noticing the job's end when
        // it closed no pipe (a background process holds them).
        let left = deadline.map_or(Duration::from_millis(50), |d| d.saturating_duration_since(Instant::now()));
        let wait = rustix::time::Timespec::try_from(left.min(Duration::from_millis(50))).ok();
        let mut fds: Vec<PollFd> = (0..2).filter(|&k| open[k]).map(|k| PollFd::new(&pipes[k], PollFlags::IN)).collect();
        if fds.is_empty() {
            let _ = child.wait_timeout(left.min(Duration::from_millis(50)));
            continue;
        }
        let _ = poll(&mut fds, wait.as_ref());
    };
    drain(&mut pipes, &mut open, &mut partial);
    for (k, rest) in partial.iter().enumerate() {
        if !rest.is_empty() {
            sink(k == 1, rest);
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Vec<OsString> {
        vec!["/bin/sh".into(), "-c".into(), script.into()]
    }

    #[test]
    fn output_status_and_signals() {
        let running = Running::default();
        let o = run(sh("echo out; echo err >&2; exit 3"), 1, None, None, &running, false);
        assert_eq!((o.exitval, o.signal, &o.stdout[..], &o.stderr[..]), (3, 0, &b"out\n"[..], &b"err\n"[..]));
        let o = run(sh("kill -9 $$"), 1, None, None, &running, false);
        assert_eq!((o.exitval, o.signal), (0, 9));
        assert!(o.failed());
        let o = run(vec!["no-such-program-here".into()], 1, None, None, &running, false);
        assert_eq!(o.exitval, 127);
        assert!(String::from_utf8_lossy(&o.stderr).contains("no-such-program-here"));
        // A megabyte of output does not block the job (no reader needed).
        let o = run(sh("head -c 1048576 /dev/zero"), 1, None, None, &running, false);
        assert_eq!(o.stdout.len(), 1 << 20);
        assert_eq!(running.count(), 0);
    }

    #[test]
    fn a_timeout_kills_the_group_and_a_background_job_cannot_hold_the_end() {
        let running = Running::default();
        let o = run(sh("sleep 100 & echo started; wait"), 1, Some(Duration::from_millis(300)), None, &running, false);
        assert!(o.timed_out);
        assert_eq!((o.exitval, o.signal), (-1, 15));
        assert_eq!(o.stdout, b"started\n");
        // Without a timeout, a job ends when its own process does.
        let o = run(sh("sleep 100 & echo $!"), 1, None, None, &running, false);
        assert_eq!(o.exitval, 0);
        let pid: i32 = String::from_utf8_lossy(&o.stdout).trim().parse().unwrap();
        kill_group(pid, libc::SIGKILL);
    }

    #[test]
    fn line_buffered_output_comes_whole_lines() {
        let running = Running::default();
        let got = Mutex::new(Vec::new());
        let sink = |err: bool, b: &[u8]| got.lock().unwrap().push((err, b.to_vec()));
        let o = run(sh("printf 'a\\nb'; printf 'c\\n'; printf x >&2"), 1, None, Some(&sink), &running, false);
        assert_eq!(o.exitval, 0);
        let got = got.into_inner().unwrap();
        let out: Vec<u8> = got.iter().filter(|(e, _)| !e).flat_map(|(_, b)| b.clone()).collect();
        assert_eq!(out, b"a\nbc\n");
        assert!(got.iter().all(|(e, b)| *e || b.ends_with(b"\n")));
        assert!(got.contains(&(true, b"x".to_vec())));
    }
}
