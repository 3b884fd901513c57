//! A program built with `panic = "abort"` (tests/panic-abort) still reports a
//! child's panic with its message and location, through a process of each
//! start method and a pool, and its pool goes on.

mod common;

use std::process::Command;

#[test]
fn a_panic_under_panic_abort_comes_back_with_message_and_location() {
    common::cargo_build(&["-p", "multiproc-panic-abort", "--profile", "abort"]);
    let exe = std::env::current_exe().unwrap();
    let target = exe.parent().and_then(|deps| deps.parent()).and_then(|profile| profile.parent()).unwrap();
    let out = Command::new(target.join("abort/multiproc-panic-abort")).env("RUST_BACKTRACE", "0").output().unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{}\n{stdout}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    let said = "panicked at tests/panic-abort/src/main.rs:12:9: 5 is not allowed";
    let expected = [
        "panic strategy: abort".to_owned(),
        format!("process (fork): {said}"),
        format!("process (spawn): {said}"),
        format!("process (forkserver): {said}"),
        format!("map: item Some(5) {said}"),
        format!("apply: {said}"),
        "then: [0, 10, 20, 30]".to_owned(),
    ];
    assert_eq!(stdout.lines().collect::<Vec<_>>(), expected, "{}", String::from_utf8_lossy(&out.stderr));
    // Each child died of the abort, and said so.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.matches("5 is not allowed").count(), 5, "{stderr}");
}
