//! Becoming a child: the load hook that catches a freshly started copy of
//! the executable before `main`, the child's side of the bootstrap, running
//! the target with panics captured, and leaving.
//!
//! Why a load hook: the spawn and forkserver methods start the program's own
//! executable again. Python re-imports the main module and relies on
//! `if __name__ == '__main__':` to keep the parent's code from running; a
//! Rust program has no such guard, and test harnesses and doctests have a
//! `main` the user does not write. A function in `.init_array` runs before
//! any `main`, sees the marker arguments we start the child with, and turns
//! the process into the child (or the forkserver) right there. Programs
//! started normally pass straight through it.

use std::ffi::{CStr, c_char, c_int};
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Once, PoisonError};

use crate::popen::forkserver;
use crate::process::{EntryFn, Job, Reply};
use crate::reduction;
use crate::runtime::{self, Identity, ParentRecord};
use crate::sys::frame;
use crate::sys::proc as sysproc;
use crate::wire::{Bootstrap, EntryRef, Outcome};
use crate::{Error, StartMethod};

/// argv[1] of a spawned child; argv[2] is the descriptor of its connection.
pub(crate) const BOOTSTRAP_FLAG: &str = "--multiproc-bootstrap";
/// argv[1] of the forkserver; argv[2] and argv[3] are its control socket and
/// a pidfd of its parent.
pub(crate) const FORKSERVER_FLAG: &str = "--multiproc-forkserver";
/// Where a spawned child finds its connection to the parent.
pub(crate) const BOOTSTRAP_FD: i32 = 3;

type LoadHook = extern "C" fn(c_int, *const *const c_char, *const *const c_char);

#[used]
#[unsafe(link_section = ".init_array")]
static LOAD_HOOK: LoadHook = load_hook;

extern "C" fn load_hook(argc: c_int, argv: *const *const c_char, _envp: *const *const c_char) {
    if argc < 1 || argv.is_null() {
        return;
    }
    let mut args: Vec<&[u8]> = Vec::with_capacity(3);
    for i in 1..(argc as usize).min(4) {
        // SAFETY: glibc passes the program's argc and argv to `.init_array`
        // functions; argv holds argc valid NUL-terminated strings.
        let arg = unsafe { *argv.add(i) };
        if arg.is_null() {
            return;
        }
        // SAFETY: as above, each argv entry is a valid C string.
        args.push(unsafe { CStr::from_ptr(arg) }.to_bytes());
    }
    dispatch(&args);
}

/// Set once this process image has looked at its arguments: a child keeps
/// its marker arguments for life, and `init` in its code must not act on
/// them a second time.
static DISPATCHED: AtomicBool = AtomicBool::new(false);

/// Becomes the child or the forkserver if the arguments say so; otherwise
/// returns at once.
fn dispatch(args: &[&[u8]]) {
    if DISPATCHED.swap(true, Ordering::AcqRel) {
        return;
    }
    let fd_at = |i: usize| -> Option<i32> { std::str::from_utf8(args.get(i)?).ok()?.parse().ok() };
    match args.first() {
        Some(a) if *a == BOOTSTRAP_FLAG.as_bytes() => {
            let Some(fd) = fd_at(1) else { return };
            // SAFETY: the parent started us with this descriptor open for us
            // alone (spawn_self's dup2).
            child_main(unsafe { sysproc::adopt_fd(fd) })
        }
        Some(a) if *a == FORKSERVER_FLAG.as_bytes() => {
            let (Some(control), Some(parent)) = (fd_at(1), fd_at(2)) else {
                return;
            };
            // SAFETY: as above, both were placed by spawn_self for us.
            let (control, parent) = unsafe { (sysproc::adopt_fd(control), sysproc::adopt_fd(parent)) };
            forkserver::serve(control, parent)
        }
        Some(a) if *a == crate::shared_memory::TRACKER_FLAG.as_bytes() => {
            let Some(fd) = fd_at(1) else { return };
            // SAFETY: as above.
            crate::shared_memory::serve_tracker(unsafe { sysproc::adopt_fd(fd) })
        }
        #[cfg(feature = "cluster")]
        _ => crate::cluster::worker_from_environment(),
        #[cfg(not(feature = "cluster"))]
        _ => {}
    }
}

/// The entry point of a program that uses multiproc (Python's
/// `if __name__ == '__main__':`), called first thing in `main` — which is
/// what [`#[multiproc::main]`](crate::main) does for you.
///
/// * In a child that the load hook did not catch (a platform or linker that
///   skips `.init_array`), it becomes the child here and never returns, so
///   the rest of `main` only ever runs in the parent.
/// * It registers the exit handler that joins non-daemonic children and
///   terminates daemonic ones when the program ends.
/// * When the start method is `forkserver`, it starts the server now,
///   before the program starts threads or grows, so the first `start` does
///   not pay for it. A failure here is not fatal: the first `start` tries
///   again and reports it.
///
/// Calling it more than once is harmless.
///
/// ```
/// multiproc::init();
/// // … the parent's program …
/// ```
pub fn init() {
    let args: Vec<Vec<u8>> =
        std::env::args_os().skip(1).take(3).map(std::os::unix::ffi::OsStringExt::into_vec).collect();
    let args: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
    dispatch(&args);
    runtime::lock().ensure_exit_hook();
    if crate::get_start_method() == StartMethod::Forkserver {
        let _ = forkserver::ensure_started();
    }
}

/// Where `f` lies relative to the anchor, as the child will look for it.
pub(crate) fn entry_ref(f: EntryFn) -> EntryRef {
    EntryRef { offset: distance(f as usize), check: distance(address(check_point)) }
}

fn distance(addr: usize) -> i64 {
    (addr as i64).wrapping_sub(address(anchor) as i64)
}

fn address(f: fn()) -> usize {
    f as usize
}

#[inline(never)]
fn anchor() {
    std::hint::black_box(());
}

#[inline(never)]
fn check_point() {
    std::hint::black_box(1);
}

/// Finds the entry function the parent named.
pub(crate) fn resolve(entry: EntryRef) -> Result<EntryFn, Error> {
    if entry.check != distance(address(check_point)) {
        return Err(Error::ExecutableMismatch);
    }
    let addr = (address(anchor) as i64).wrapping_add(entry.offset) as usize;
    // SAFETY: the check above shows this is the parent's executable (the
    // child runs /proc/self/exe of the parent), laid out identically, so the
    // same distance from the anchor is the same monomorphised `EntryFn`.
    Ok(unsafe { std::mem::transmute::<usize, EntryFn>(addr) })
}

/// A spawn or forkserver child: read the bootstrap, run, answer, exit.
pub(crate) fn child_main(conn: OwnedFd) -> ! {
    sysproc::ignore_sigpipe();
    let code = match bootstrapped(&conn) {
        Ok(code) => code,
        Err(message) => {
            let _ = writeln!(std::io::stderr(), "multiproc: child could not start: {message}");
            send_reply(conn.as_fd(), Reply::plain(Outcome::Bootstrap(message)));
            1
        }
    };
    exit_child(code)
}

fn bootstrapped(conn: &OwnedFd) -> Result<i32, String> {
    let frame = frame::recv_blocking(conn)
        .map_err(|e| format!("reading the bootstrap: {e}"))?
        .ok_or("the parent closed the connection before sending the bootstrap")?;
    let boot: Bootstrap = reduction::decode_plain(&frame.bytes).map_err(|e| format!("bad bootstrap: {e}"))?;
    let mut fds = frame.fds.into_iter();
    let parent_pidfd = Arc::new(fds.next().ok_or("the bootstrap came without a parent pidfd")?);
    let entry = resolve(boot.entry).map_err(|e| e.to_string())?;
    let parent = ParentRecord { pid: boot.parent_pid, name: boot.parent_name, pidfd: Some(parent_pidfd) };
    let me = Identity {
        name: boot.name,
        pid: rustix::process::getpid().as_raw_nonzero().get(),
        daemon: boot.daemon,
        identity: boot.identity,
    };
    runtime::lock().become_child(me, parent.clone());
    if boot.daemon {
        guard_daemon(boot.deathsig, &parent);
    }
    let payload = boot.payload;
    let rest: Vec<OwnedFd> = fds.collect();
    answer_on_abort(conn.as_fd());
    let reply = run_target(move || entry(&payload, rest));
    let code = reply.outcome.exit_status();
    send_reply(conn.as_fd(), reply);
    Ok(code)
}

/// A forked child: run the job in place, answer, exit.
pub(crate) fn forked_child_main(
    job: Box<dyn Job>,
    conn: OwnedFd,
    daemon: bool,
    deathsig: bool,
    parent: ParentRecord,
) -> ! {
    if daemon {
        guard_daemon(deathsig, &parent);
    }
    answer_on_abort(conn.as_fd());
    let reply = run_target(move || job.run_here());
    let code = reply.outcome.exit_status();
    send_reply(conn.as_fd(), reply);
    exit_child(code)
}

/// Makes sure a daemonic child dies with its parent, even when the parent is
/// killed with SIGKILL and has no chance to clean up.
fn guard_daemon(deathsig: bool, parent: &ParentRecord) {
    let Some(pidfd) = parent.pidfd.clone() else {
        return;
    };
    if deathsig && sysproc::kill_me_when_parent_dies().is_ok() {
        // The parent may have died before the request took effect.
        if sysproc::has_exited(pidfd.as_fd()) {
            die();
        }
        return;
    }
    // The parent-death signal would fire when the creating *thread* exits,
    // or the OS parent is the forkserver: watch the parent itself instead.
    let watcher = std::thread::Builder::new().name("multiproc-lifeline".into()).spawn(move || {
        let _ = crate::sys::poll_readable(&[pidfd.as_fd()], None);
        die();
    });
    if watcher.is_err() {
        die();
    }
}

fn die() -> ! {
    // SAFETY: raising SIGKILL on ourselves has no preconditions.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
        libc::_exit(137)
    }
}

fn send_reply(conn: BorrowedFd<'_>, reply: Reply) {
    let bytes = reduction::encode_plain(&reply.outcome);
    let fds: Vec<BorrowedFd<'_>> = reply.fds.iter().map(|f| f.as_fd()).collect();
    // A parent that stopped listening (dropped its handle) is not an error.
    let _ = frame::send(conn, &bytes, &fds);
}

/// Leaves a child process: join our own children, flush, `_exit` — never
/// the parent's at-exit handlers, which a forked child inherited.
pub(crate) fn exit_child(code: i32) -> ! {
    runtime::finish_children();
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // SAFETY: _exit has no preconditions.
    unsafe { libc::_exit(code) }
}

std::thread_local! {
    static IN_TARGET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The last panic in a target: message, location, backtrace (when
/// `RUST_BACKTRACE` asks for one).
type Panic = (String, Option<String>, Option<String>);
static PANIC: Mutex<Option<Panic>> = Mutex::new(None);
static HOOK: Once = Once::new();

/// Who hears a target's panic when the program is built with
/// `panic = "abort"`: nothing unwinds back to `catch_panic`, so the panic
/// hook hands the panic over here before the process aborts (a child sends
/// it as its answer; a pool worker names the call that panicked).
type LastWords = Box<dyn Fn(Outcome) + Send>;
static LAST_WORDS: Mutex<Option<LastWords>> = Mutex::new(None);

/// Sets who hears a target's panic under `panic = "abort"` (a no-op
/// otherwise: the panic unwinds to `catch_panic`).
pub(crate) fn on_abort(f: impl Fn(Outcome) + Send + 'static) {
    if cfg!(panic = "abort") {
        *LAST_WORDS.lock().unwrap_or_else(PoisonError::into_inner) = Some(Box::new(f));
    }
}

/// A child's answer, sent from the panic hook under `panic = "abort"`.
fn answer_on_abort(conn: BorrowedFd<'_>) {
    let raw = std::os::fd::AsRawFd::as_raw_fd(&conn);
    on_abort(move |outcome| {
        // SAFETY: the connection is open until the child leaves (it is
        // closed only by `_exit` or, after the target, by the drop that
        // follows `send_reply`), and the hook runs while the target does.
        let conn = unsafe { BorrowedFd::borrow_raw(raw) };
        send_reply(conn, Reply::plain(outcome));
    });
}

/// Runs the target with its panic (message and location) captured. The
/// previous panic hook still runs, so the child prints the panic on its
/// stderr as any Rust program does.
pub(crate) fn run_target(f: impl FnOnce() -> Reply) -> Reply {
    catch_panic(f).unwrap_or_else(Reply::plain)
}

/// Runs `f`; a panic becomes `Outcome::Panicked` with its message and
/// location.
pub(crate) fn catch_panic<T>(f: impl FnOnce() -> T) -> Result<T, Outcome> {
    HOOK.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if IN_TARGET.with(|t| t.get()) {
                let payload = info.payload();
                let message = payload
                    .downcast_ref::<&str>()
                    .copied()
                    .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
                    .unwrap_or("Box<dyn Any>")
                    .to_owned();
                let location = info.location().map(|l| l.to_string());
                // `capture` follows RUST_BACKTRACE / RUST_LIB_BACKTRACE.
                let trace = std::backtrace::Backtrace::capture();
                let backtrace =
                    (trace.status() == std::backtrace::BacktraceStatus::Captured).then(|| trace.to_string());
                if cfg!(panic = "abort") {
                    // The process aborts once this hook returns.
                    if let Some(tell) = LAST_WORDS.lock().unwrap_or_else(PoisonError::into_inner).take() {
                        tell(Outcome::Panicked { message, location, backtrace });
                    }
                } else {
                    *PANIC.lock().unwrap_or_else(PoisonError::into_inner) = Some((message, location, backtrace));
                }
            }
            previous(info);
        }));
    });
    let outer = IN_TARGET.with(|t| t.replace(true));
    let result = panic::catch_unwind(AssertUnwindSafe(f));
    IN_TARGET.with(|t| t.set(outer));
    result.map_err(|payload| {
        let (message, location, backtrace) =
            PANIC.lock().unwrap_or_else(PoisonError::into_inner).take().unwrap_or_else(|| {
                let text = payload
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "Box<dyn Any>".into());
                (text, None, None)
            });
        Outcome::Panicked { message, location, backtrace }
    })
}

/// Keeps the load hook linked in: referenced from the code that starts
/// children, so the object file that holds it is always part of a program
/// that can start one.
pub(crate) fn keep_hook() {
    std::hint::black_box(&LOAD_HOOK);
}
