//! Every failure of a child is a value, never a hang.

mod common;

use common::{Picky, each_method, isolated_with_env, join};
use multiproc::{Error, Payload, Process, Side};

fn panics(n: i32) -> i32 {
    if n > 0 {
        panic!("the number was {n}");
    }
    n
}

#[test]
fn a_panic_comes_back_with_message_and_location() {
    each_method(|m| {
        let mut p = Process::new(panics, (7,)).with_start_method(m);
        p.start().unwrap();
        let pid = p.pid().unwrap();
        match join(&mut p) {
            Err(Error::Panicked { message, location, pid: got, .. }) => {
                assert_eq!(message, "the number was 7", "{m}");
                let location = location.expect("location");
                assert!(location.starts_with("tests/failures.rs:"), "{m}: {location}");
                assert_eq!(got, pid);
            }
            other => panic!("{m}: {other:?}"),
        }
        // Python's exit code after an exception.
        assert_eq!(p.exitcode(), Some(1));
    });
}

/// Whether a backtrace has the frame of `panics`, at its line: as
/// `failures::panics` with full debug info, as `panics` with line tables
/// only (this workspace's dev profile).
fn names_the_panicking_frame(backtrace: &str) -> bool {
    let named = backtrace.lines().any(|l| {
        let name = l.split_whitespace().last().unwrap_or("");
        name == "panics" || name.ends_with("failures::panics")
    });
    named && backtrace.contains("tests/failures.rs:10:")
}

/// Whether a child's panic carries a backtrace (naming the function that
/// panicked) through a process of each start method and a pool.
fn backtraces_come_back(wanted: bool) {
    each_method(|m| {
        let mut p = Process::new(panics, (7,)).with_start_method(m);
        p.start().unwrap();
        match join(&mut p) {
            Err(Error::Panicked { backtrace, .. }) => {
                assert_eq!(backtrace.is_some(), wanted, "{m}");
                if let Some(b) = backtrace {
                    assert!(names_the_panicking_frame(&b), "{m}: {b}");
                }
            }
            other => panic!("{m}: {other:?}"),
        }
    });
    let pool = multiproc::Pool::new(1).unwrap();
    match pool.apply(panics, (3,)) {
        Err(Error::Panicked { backtrace, message, .. }) => {
            assert_eq!(message, "the number was 3");
            assert_eq!(backtrace.is_some(), wanted);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_childs_backtrace_comes_back_with_rust_backtrace_1() {
    let env = [("RUST_BACKTRACE", "1"), ("RUST_LIB_BACKTRACE", "1")];
    isolated_with_env("a_childs_backtrace_comes_back_with_rust_backtrace_1", &env, || backtraces_come_back(true));
}

#[test]
fn no_backtrace_comes_back_with_rust_backtrace_0() {
    let env = [("RUST_BACKTRACE", "0"), ("RUST_LIB_BACKTRACE", "0")];
    isolated_with_env("no_backtrace_comes_back_with_rust_backtrace_0", &env, || backtraces_come_back(false));
}

fn panics_with_string() -> u8 {
    std::panic::panic_any(String::from("owned message"))
}

#[test]
fn a_panic_with_a_string_payload_keeps_its_text() {
    each_method(|m| {
        let mut p = Process::new(panics_with_string, ()).with_start_method(m);
        p.start().unwrap();
        assert!(matches!(join(&mut p), Err(Error::Panicked { message, .. }) if message == "owned message"), "{m}");
    });
}

fn segfault() {
    // SAFETY: raising a signal has no memory-safety preconditions. The default
    // action is restored first: a forked child inherits the test harness's
    // SIGSEGV handler, which would swallow a raised (not faulting) signal.
    unsafe {
        libc::signal(libc::SIGSEGV, libc::SIG_DFL);
        libc::raise(libc::SIGSEGV);
    }
}

fn abort() {
    std::process::abort()
}

#[test]
fn a_signal_death_names_the_signal() {
    each_method(|m| {
        let cases: [(Process<()>, i32, &str); 2] =
            [(Process::new(segfault, ()), 11, "SIGSEGV"), (Process::new(abort, ()), 6, "SIGABRT")];
        for (p, signal, name) in cases {
            let mut p = p.with_start_method(m);
            p.start().unwrap();
            match join(&mut p) {
                Err(Error::Killed { signal: s, signal_name, exitcode, .. }) => {
                    assert_eq!((s, signal_name.as_str(), exitcode), (signal, name, -signal), "{m}");
                }
                other => panic!("{m}: {other:?}"),
            }
            assert_eq!(p.exitcode(), Some(-signal));
        }
    });
}

fn exits(code: i32) -> String {
    std::process::exit(code)
}

#[test]
fn an_early_exit_gives_its_code() {
    each_method(|m| {
        let mut p = Process::new(exits, (3,)).with_start_method(m);
        p.start().unwrap();
        assert!(matches!(join(&mut p), Err(Error::Exited { exitcode: 3, .. })), "{m}");
        assert_eq!(p.exitcode(), Some(3));
    });
}

fn take_picky(_p: Picky) -> u8 {
    1
}

fn make_picky(fail_ser: bool, fail_de: bool) -> Picky {
    Picky { fail_ser, fail_de }
}

#[test]
fn arguments_that_cannot_be_encoded_fail_at_start_in_the_parent() {
    for m in [multiproc::StartMethod::Spawn, multiproc::StartMethod::Forkserver] {
        let mut p = Process::new(take_picky, (Picky { fail_ser: true, fail_de: false },)).with_start_method(m);
        assert!(matches!(p.start(), Err(Error::Encode { what: Payload::Arguments, side: Side::Parent, .. })), "{m}");
        assert_eq!(p.pid(), None);
    }
}

#[test]
fn arguments_that_cannot_be_decoded_fail_in_the_child() {
    for m in [multiproc::StartMethod::Spawn, multiproc::StartMethod::Forkserver] {
        let mut p = Process::new(take_picky, (Picky { fail_ser: false, fail_de: true },)).with_start_method(m);
        p.start().unwrap();
        assert!(matches!(join(&mut p), Err(Error::Decode { what: Payload::Arguments, side: Side::Child, .. })), "{m}");
        assert_eq!(p.exitcode(), Some(1));
    }
}

#[test]
fn results_that_cannot_be_encoded_fail_in_the_child() {
    each_method(|m| {
        let mut p = Process::new(make_picky, (true, false)).with_start_method(m);
        p.start().unwrap();
        assert!(matches!(join(&mut p), Err(Error::Encode { what: Payload::Result, side: Side::Child, .. })), "{m}");
    });
}

#[test]
fn results_that_cannot_be_decoded_fail_in_the_parent() {
    each_method(|m| {
        let mut p = Process::new(make_picky, (false, true)).with_start_method(m);
        p.start().unwrap();
        match join(&mut p) {
            Err(Error::Decode { what: Payload::Result, side: Side::Parent, .. }) => {}
            other => panic!("{m}: {other:?}"),
        }
        // The child itself was fine.
        assert_eq!(p.exitcode(), Some(0));
    });
}

#[test]
fn a_handle_outside_multiproc_cannot_be_serialized() {
    let h = multiproc::Handle::from(std::fs::File::open("/dev/null").unwrap());
    assert!(postcard::to_stdvec(&h).is_err());
}

#[test]
fn error_messages_say_what_happened() {
    let mut p = Process::new(panics, (1,)).with_name("worker-7");
    p.start().unwrap();
    let text = join(&mut p).unwrap_err().to_string();
    assert!(text.contains("worker-7") && text.contains("panicked") && text.contains("the number was 1"), "{text}");
}
