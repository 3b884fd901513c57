//! The Python surface of `Process`, under every start method.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::time::Duration;

use common::{each_method, join, sleep_forever};
use multiproc::{
    Error, Handle, Process, Run, StartMethod, active_children, current_process, get_context, os, parent_process,
};
use serde::{Deserialize, Serialize};

fn add(a: i64, b: i64) -> i64 {
    a + b
}

fn describe(words: Vec<String>, n: u8, flag: bool) -> (String, u8, bool) {
    (words.join(" "), n, flag)
}

fn nothing() {}

#[test]
fn target_gets_its_arguments_and_returns_a_value() {
    each_method(|m| {
        let mut p = Process::new(add, (40, 2)).with_start_method(m);
        p.start().unwrap();
        assert_eq!(join(&mut p).unwrap(), 42, "{m}");
        assert_eq!(p.exitcode(), Some(0));

        let words = vec!["a".to_string(), "b".to_string()];
        let mut p = Process::new(describe, (words, 7, true)).with_start_method(m);
        p.start().unwrap();
        assert_eq!(join(&mut p).unwrap(), ("a b".to_string(), 7, true), "{m}");

        let mut p = Process::new(nothing, ()).with_start_method(m);
        p.start().unwrap();
        join(&mut p).unwrap();
    });
}

#[test]
fn non_capturing_closures_are_targets() {
    each_method(|m| {
        let mut p = Process::new(|x: u32| x * 3, (5,)).with_start_method(m);
        p.start().unwrap();
        assert_eq!(join(&mut p).unwrap(), 15, "{m}");
    });
}

#[test]
fn capturing_closure_runs_under_fork_only() {
    let offset = 100;
    let mut p = Process::from_closure(move || offset + 1);
    assert_eq!(p.start_method(), StartMethod::Fork);
    p.start().unwrap();
    assert_eq!(join(&mut p).unwrap(), 101);

    for m in [StartMethod::Spawn, StartMethod::Forkserver] {
        let mut p = Process::from_closure(move || offset + 1).with_start_method(m);
        match p.start() {
            Err(Error::NeedsFork { method, .. }) => assert_eq!(method, m),
            other => panic!("{m}: expected NeedsFork, got {other:?}"),
        }
        assert_eq!(p.pid(), None);
    }
}

#[derive(Serialize, Deserialize)]
struct Counter {
    start: u32,
    step: u32,
}

impl Run for Counter {
    type Output = (Vec<u32>, String);
    fn run(self) -> Self::Output {
        ((0..4).map(|i| self.start + i * self.step).collect(), current_process().name().to_owned())
    }
}

#[test]
fn run_objects_travel_with_their_state() {
    each_method(|m| {
        let mut p = get_context(m).process_run(Counter { start: 10, step: 5 }).with_name(format!("counter-{m}"));
        assert_eq!(p.pid(), None);
        p.start().unwrap();
        assert!(p.pid().is_some());
        assert_eq!(join(&mut p).unwrap(), (vec![10, 15, 20, 25], format!("counter-{m}")));
    });
}

fn whoami() -> (String, i32, bool, Vec<u32>, Option<(i32, String)>) {
    let me = current_process();
    let parent = parent_process().map(|p| (p.pid(), p.name().to_owned()));
    (me.name().to_owned(), me.pid(), me.daemon(), me.identity().to_vec(), parent)
}

#[test]
fn child_knows_itself_and_its_parent() {
    assert_eq!(current_process().name(), "MainProcess");
    assert!(parent_process().is_none());
    each_method(|m| {
        let mut p = Process::new(whoami, ()).with_start_method(m).with_daemon(true).with_name("kid");
        p.start().unwrap();
        let pid = p.pid().unwrap();
        let (name, child_pid, daemon, identity, parent) = join(&mut p).unwrap();
        assert_eq!(name, "kid");
        assert_eq!(child_pid, pid);
        assert!(daemon);
        assert_eq!(identity.len(), 1, "{m}: {identity:?}");
        assert_eq!(parent, Some((os::getpid(), "MainProcess".to_string())));
    });
}

#[test]
fn default_names_count_up_like_python() {
    let a: Process<()> = Process::new(nothing, ());
    let b: Process<()> = Process::new(nothing, ());
    let na: u32 = a.name().strip_prefix("Process-").unwrap().parse().unwrap();
    let nb: u32 = b.name().strip_prefix("Process-").unwrap().parse().unwrap();
    assert!(nb > na);
}

fn grandchild(m: StartMethod) -> (String, Vec<u32>, i32) {
    let mut p = Process::new(whoami, ()).with_start_method(m);
    p.start().unwrap();
    let (name, _, _, identity, parent) = p.join().unwrap();
    (name, identity, parent.unwrap().0)
}

#[test]
fn children_start_their_own_children() {
    each_method(|outer| {
        for inner in StartMethod::ALL {
            let mut p = Process::new(grandchild, (inner,)).with_start_method(outer);
            p.start().unwrap();
            let child_pid = p.pid().unwrap();
            let (name, identity, parent_pid) = join(&mut p).unwrap();
            assert_eq!(identity.len(), 2, "{outer}->{inner}");
            assert!(name.starts_with("Process-") && name.contains(':'), "{name}");
            assert_eq!(parent_pid, child_pid, "{outer}->{inner}");
        }
    });
}

#[test]
fn join_timeout_returns_none_while_running() {
    each_method(|m| {
        let mut p = Process::new(sleep_forever, ()).with_start_method(m);
        p.start().unwrap();
        assert_eq!(p.join_timeout(Duration::from_millis(50)).unwrap(), None);
        assert!(p.is_alive());
        assert_eq!(p.exitcode(), None);
        p.kill().unwrap();
        assert!(join(&mut p).is_err());
        assert!(!p.is_alive());
    });
}

#[test]
fn terminate_and_kill_give_negative_exitcodes() {
    each_method(|m| {
        let mut p = Process::new(sleep_forever, ()).with_start_method(m);
        p.start().unwrap();
        p.terminate().unwrap();
        match join(&mut p) {
            Err(Error::Killed { signal, signal_name, exitcode, .. }) => {
                assert_eq!((signal, signal_name.as_str(), exitcode), (15, "SIGTERM", -15), "{m}");
            }
            other => panic!("{m}: {other:?}"),
        }
        assert_eq!(p.exitcode(), Some(-15));
        // Signalling a finished process is a no-op, as in Python.
        p.terminate().unwrap();
        p.kill().unwrap();

        let mut p = Process::new(sleep_forever, ()).with_start_method(m);
        p.start().unwrap();
        p.kill().unwrap();
        assert!(matches!(join(&mut p), Err(Error::Killed { signal: 9, exitcode: -9, .. })), "{m}");
        assert_eq!(p.exitcode(), Some(-9));
    });
}

#[test]
fn lifecycle_misuse_is_a_typed_error() {
    let mut p = Process::new(add, (1, 2));
    assert!(matches!(p.join(), Err(Error::NotStarted(_))));
    assert!(matches!(p.terminate(), Err(Error::NotStarted(_))));
    assert!(!p.is_alive());
    assert_eq!(p.exitcode(), None);
    p.set_daemon(true).unwrap();
    p.start().unwrap();
    assert!(matches!(p.start(), Err(Error::AlreadyStarted(_))));
    assert!(matches!(p.set_daemon(false), Err(Error::AlreadyStarted(_))));
    assert_eq!(join(&mut p).unwrap(), 3);
    assert!(matches!(p.join(), Err(Error::ResultTaken(_))));
}

#[test]
fn active_children_lists_running_ones_only() {
    each_method(|m| {
        let mut p = Process::new(sleep_forever, ()).with_start_method(m).with_name("sleeper");
        p.start().unwrap();
        let listed = active_children();
        assert!(listed.iter().any(|c| c.pid() == p.pid().unwrap() && c.name() == "sleeper"), "{m}: {listed:?}");
        p.kill().unwrap();
        let _ = join(&mut p);
        assert!(active_children().iter().all(|c| Some(c.pid()) != p.pid()));
    });
}

fn write_pid(out: Handle) -> i32 {
    let mut file = out.into_file();
    writeln!(file, "{}", os::getpid()).unwrap();
    os::getpid()
}

#[test]
fn a_passed_fd_works_in_the_child() {
    each_method(|m| {
        let (reader, writer) = std::io::pipe().unwrap();
        let mut p = Process::new(write_pid, (Handle::from(writer),)).with_start_method(m);
        p.start().unwrap();
        let pid = join(&mut p).unwrap();
        let mut line = String::new();
        BufReader::new(reader).read_line(&mut line).unwrap();
        assert_eq!(line.trim(), pid.to_string(), "{m}");
    });
}

fn make_pipe(text: String) -> Handle {
    let (reader, mut writer) = std::io::pipe().unwrap();
    writer.write_all(text.as_bytes()).unwrap();
    Handle::from(reader)
}

#[test]
fn handles_come_back_in_results() {
    each_method(|m| {
        let mut p = Process::new(make_pipe, (format!("made under {m}"),)).with_start_method(m);
        p.start().unwrap();
        let mut text = String::new();
        join(&mut p).unwrap().into_file().read_to_string(&mut text).unwrap();
        assert_eq!(text, format!("made under {m}"));
    });
}

fn count(handles: Vec<Handle>) -> usize {
    handles.len()
}

#[test]
fn too_many_handles_is_a_typed_error() {
    for m in [StartMethod::Spawn, StartMethod::Forkserver] {
        let handles: Vec<Handle> = (0..300).map(|_| Handle::from(std::fs::File::open("/dev/null").unwrap())).collect();
        let mut p = Process::new(count, (handles,)).with_start_method(m);
        let err = p.start().unwrap_err();
        assert!(err.to_string().contains("handles"), "{m}: {err}");
    }
    // Fork does not serialize: the child simply owns its copies.
    let handles: Vec<Handle> = (0..300).map(|_| Handle::from(std::fs::File::open("/dev/null").unwrap())).collect();
    let mut p = Process::new(count, (handles,)).with_start_method(StartMethod::Fork);
    p.start().unwrap();
    assert_eq!(join(&mut p).unwrap(), 300);
}

fn big(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

#[test]
fn large_arguments_and_results_do_not_deadlock() {
    each_method(|m| {
        let n = 32 << 20;
        let mut p = Process::new(big, (n,)).with_start_method(m);
        p.start().unwrap();
        let v = join(&mut p).unwrap();
        assert_eq!(v.len(), n);
        assert!(v.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8));

        let data = vec![7u8; 16 << 20];
        let mut p = Process::new(|d: Vec<u8>| d.iter().map(|b| *b as u64).sum::<u64>(), (data,)).with_start_method(m);
        p.start().unwrap();
        assert_eq!(join(&mut p).unwrap(), 7 * (16 << 20));
    });
}

#[test]
fn cpu_counts_are_sane() {
    assert!(os::cpu_count() >= 1);
    assert!(os::process_cpu_count() >= 1);
    assert!(os::process_cpu_count() <= os::cpu_count());
}

#[test]
fn os_fork_returns_twice() {
    let parent = os::getpid();
    // SAFETY: the child only computes and exits.
    match unsafe { os::fork() }.unwrap() {
        os::ForkResult::Child => {
            let ok = os::getppid() == parent && current_process().pid() == os::getpid();
            // SAFETY: leaving the forked copy of the test harness at once.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) }
        }
        os::ForkResult::Parent { child } => assert_eq!(os::waitpid(child).unwrap(), 0),
    }
}

#[test]
fn start_method_names_round_trip() {
    for m in StartMethod::ALL {
        assert_eq!(m.as_str().parse::<StartMethod>().unwrap(), m);
    }
    assert!(matches!("threads".parse::<StartMethod>(), Err(Error::UnknownStartMethod(s)) if s == "threads"));
}

/// SIGKILLs a process (by pidfd: never another) when dropped.
struct KillOnDrop(std::os::fd::OwnedFd);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        // SAFETY: pidfd_send_signal with a pidfd we own and no siginfo.
        unsafe { libc::syscall(libc::SYS_pidfd_send_signal, self.0.as_raw_fd(), libc::SIGKILL, 0usize, 0u32) };
    }
}

/// The parent pid of `pid`, from `/proc`.
fn parent_of(pid: i32) -> i32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // After the command name's closing parenthesis: the state, then the ppid.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    rest.split(' ').nth(1).unwrap().parse().unwrap()
}

/// A forkserver killed under a running child: the child's join fails at
/// once with a typed error saying what became of the server (not a hang,
/// not a made-up exit code); the child, still running, can still be
/// killed; the next start gets a new server.
#[test]
fn a_dead_forkserver_is_named_and_replaced() {
    common::isolated("a_dead_forkserver_is_named_and_replaced", || {
        let mut p = Process::new(sleep_forever, ()).with_start_method(StartMethod::Forkserver);
        p.start().unwrap();
        let pid = p.pid().unwrap();
        let child = common::pidfd(pid);
        // Whatever fails below, the orphan it would leave is killed.
        let _cleanup = KillOnDrop(common::pidfd(pid));
        let server = parent_of(pid);
        assert_ne!(server, os::getpid(), "a forkserver child is the server's");
        // SAFETY: kill takes a pid and a signal; the server is our child.
        unsafe { libc::kill(server, libc::SIGKILL) };
        match p.join_timeout(common::GUARD) {
            Err(Error::Forkserver(why)) => assert!(why.contains("killed by signal 9"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert!(!common::exits_within(&child, Duration::ZERO), "the child died with its server");
        p.kill().unwrap();
        assert!(common::exits_within(&child, common::GUARD), "the child outlived kill");
        // A child that lives until killed: one that returns at once may be
        // reaped by its server before its parent is looked up in `/proc`.
        let mut q = Process::new(sleep_forever, ()).with_start_method(StartMethod::Forkserver);
        q.start().unwrap();
        let _cleanup_q = KillOnDrop(common::pidfd(q.pid().unwrap()));
        assert_ne!(parent_of(q.pid().unwrap()), server, "the dead server was used again");
        q.kill().unwrap();
        let _ = q.join_timeout(common::GUARD);
        let mut r = Process::new(add, (1, 2)).with_start_method(StartMethod::Forkserver);
        r.start().unwrap();
        assert_eq!(join(&mut r).unwrap(), 3);
    });
}
