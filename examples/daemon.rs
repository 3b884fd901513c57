//! The daemon flag, `is_alive` and `exitcode` (seed 001: "Attribute daemon
//! will determine whether a child process gets terminated when parent
//! process exits"; "Other attributes: .pid, .name, .is_alive(), .join(),
//! .daemon").
//!
//! * A daemonic child is terminated when the parent's `main` returns, and
//!   killed if the parent dies any other way (even by SIGKILL).
//! * A non-daemonic child is waited for: the program does not end until it
//!   does. Here it waits for the parent's `main` to return (the parent's end
//!   of a pipe closes), then says so.
//! * `exitcode` is 0 after a normal end and minus the signal number after a
//!   signal (-15 for SIGTERM), as in Python.

use std::io::Read;
use std::time::Duration;

use multiproc::{Handle, Process};

fn individual_process(sec: f64) -> f64 {
    println!("start child process");
    std::thread::sleep(Duration::from_secs_f64(sec));
    println!("exit child process");
    sec
}

fn forever() {
    loop {
        std::thread::park();
    }
}

fn outlive_main(parent_gone: Handle) {
    let mut rest = Vec::new();
    // Blocks until every writer is closed: the parent's `main` has returned.
    let _ = parent_gone.into_file().read_to_end(&mut rest);
    println!("non-daemon child: the parent's main has returned; finishing now");
    // Still busy for a moment: the parent must wait for this, not leave.
    std::thread::sleep(Duration::from_secs(1));
}

#[multiproc::main]
pub fn main() {
    let mut p = Process::new(individual_process, (0.2,));
    println!("before start: name={} pid={:?} daemon={} is_alive={}", p.name(), p.pid(), p.daemon(), p.is_alive());
    p.start().expect("start");
    println!("after start: pid is set={} is_alive={}", p.pid().is_some(), p.is_alive());
    p.join().expect("join");
    println!("after join: is_alive={} exitcode={:?}", p.is_alive(), p.exitcode());

    let mut d = Process::new(forever, ()).with_daemon(true).with_name("daemon-child");
    d.start().expect("start daemon");
    println!("daemon: name={} daemon={} is_alive={}", d.name(), d.daemon(), d.is_alive());
    d.terminate().expect("terminate");
    let ended = d.join();
    println!("daemon after terminate: is_alive={} exitcode={:?} join={}", d.is_alive(), d.exitcode(), ended.is_err());

    let mut left_running = Process::new(forever, ()).with_daemon(true);
    left_running.start().expect("start daemon");
    println!("a daemon (pid {}) is left running: it is terminated when main returns", left_running.pid().unwrap());

    let (reader, writer) = std::io::pipe().expect("pipe");
    let mut n = Process::new(outlive_main, (Handle::from(reader),));
    n.start().expect("start non-daemon");
    println!("parent main returns; the non-daemon child (pid {}) is waited for", n.pid().unwrap());
    drop(writer);
}
