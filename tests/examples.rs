//! Runs each ported seed program and checks what it prints.

mod common;

use std::io::{BufRead, BufReader};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// The freshly built example binary. `cargo test` and `cargo nextest run`
/// compile the examples but do not refresh `target/<profile>/examples/<name>`,
/// so build them here: with the test run's own selection (the whole
/// workspace, every feature), so that this finds everything compiled rather
/// than building a second copy of the crate and its dependencies.
fn example(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| common::cargo_build(&["--workspace", "--examples", "--all-features"]));
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).unwrap();
    let path = profile_dir.join("examples").join(name);
    assert!(path.exists(), "{} is missing after cargo build --examples", path.display());
    path
}

fn run(name: &str) -> Vec<String> {
    let out = Command::new(example(name)).env("RUST_BACKTRACE", "0").output().unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "{name} failed with {}:\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout.lines().map(str::to_owned).collect()
}

/// The number between `prefix` and `suffix` in `line`.
fn number(line: &str, prefix: &str, suffix: &str) -> i32 {
    line.strip_prefix(prefix)
        .and_then(|l| l.strip_suffix(suffix))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{line:?} is not {prefix}<n>{suffix}"))
}

fn find<'a>(lines: &'a [String], starts: &str) -> &'a str {
    lines
        .iter()
        .find(|l| l.starts_with(starts))
        .unwrap_or_else(|| panic!("no line starts with {starts:?} in {lines:#?}"))
}

#[test]
fn fork_returns_twice() {
    let lines = run("fork");
    let parent = number(&lines[0], "Process (", ") start...");
    let created = find(&lines, "I (");
    let (p, rest) = created.strip_prefix("I (").unwrap().split_once(')').unwrap();
    assert_eq!(p.parse::<i32>().unwrap(), parent);
    let child = number(rest, " just created a child process (", ").");
    let child_line = find(&lines, "I am child process");
    assert_eq!(child_line, format!("I am child process ({child}) and my parent is {parent}."));
    assert_eq!(lines.last().unwrap(), &format!("Child process ({child}) exited with code 0."));
    assert_ne!(child, parent);
}

#[test]
fn process_runs_a_function_with_arguments() {
    let lines = run("process");
    assert_eq!(lines.len(), 5, "{lines:#?}");
    let parent = number(&lines[0], "Parent process ", "");
    assert_eq!(lines[1], "Child process starting...");
    let child = number(&lines[2], "Running child process 'test' (", ")");
    assert_eq!(lines[3], format!("Child process ends (it reported pid {child}, Process.pid is {child})."));
    assert_eq!(lines[4], "Parent process ends.");
    assert_ne!(parent, child);
}

#[test]
fn nested_children() {
    let lines = run("nested");
    assert_eq!(
        lines,
        [
            "start parent process",
            "start x child process Process-1",
            "start child process Process-1:1",
            "waiting for 0.3 seconds",
            "exit child process",
            "exit x child process",
            "child was Process-1, grandchild was Process-1:1, which slept 300 ms",
            "exit parent process",
        ]
    );
}

#[test]
fn daemon_flag_is_alive_and_exitcode() {
    // Watch the program's children while it runs, to check what has become
    // of them at the moment the program itself has ended.
    let mut program =
        Command::new(example("daemon")).env("RUST_BACKTRACE", "0").stdout(Stdio::piped()).spawn().unwrap();
    let mut stdout = BufReader::new(program.stdout.take().unwrap());
    let mut lines = Vec::new();
    let mut watched = Vec::new();
    loop {
        let mut line = String::new();
        if stdout.read_line(&mut line).unwrap() == 0 {
            break;
        }
        let line = line.trim_end().to_owned();
        if let Some(pid) = line.strip_prefix("a daemon (pid ").and_then(|r| r.split_once(')')) {
            // The program may already have returned from main and reaped it
            // (no such process): that is the end state under test anyway.
            watched.push(("daemon", pidfd(pid.0.parse().unwrap())));
        }
        if let Some(rest) = line.strip_prefix("parent main returns; the non-daemon child (pid ") {
            // It lingers for a second after main returns, so it is there.
            let fd = pidfd(rest.split_once(')').unwrap().0.parse().unwrap())
                .expect("the non-daemon child ended before the program could have waited for it");
            assert!(!has_ended(&fd));
            watched.push(("non-daemon", Some(fd)));
            assert!(program.wait().unwrap().success());
            // The program has ended: it terminated its daemon and waited for
            // its non-daemon child, so both have ended too.
            for (what, fd) in &watched {
                assert!(fd.as_ref().is_none_or(has_ended), "the {what} child outlived the program");
            }
        }
        lines.push(line);
    }
    assert!(program.wait().unwrap().success());
    assert_eq!(watched.len(), 2, "{lines:#?}");
    // Parent and child print concurrently: check each one's lines in order.
    let child_lines = ["start child process", "exit child process"];
    let (child, parent): (Vec<&str>, Vec<&str>) =
        lines.iter().map(String::as_str).partition(|l| child_lines.contains(l));
    assert_eq!(child, child_lines);
    let parent: Vec<String> = parent.iter().map(|l| without_pids(l)).collect();
    assert_eq!(
        parent,
        [
            "before start: name=Process-1 pid=None daemon=false is_alive=false",
            "after start: pid is set=true is_alive=true",
            "after join: is_alive=false exitcode=Some(0)",
            "daemon: name=daemon-child daemon=true is_alive=true",
            "daemon after terminate: is_alive=false exitcode=Some(-15) join=true",
            "a daemon (pid N) is left running: it is terminated when main returns",
            "parent main returns; the non-daemon child (pid N) is waited for",
            // Printed by the non-daemon child, which cannot finish before the
            // parent's main has returned.
            "non-daemon child: the parent's main has returned; finishing now",
        ]
    );
    let start = lines.iter().position(|l| l == "start child process").unwrap();
    let exit = lines.iter().position(|l| l == "exit child process").unwrap();
    let joined = lines.iter().position(|l| l.starts_with("after join")).unwrap();
    assert!(start > 0 && start < exit && exit < joined, "{lines:#?}");
}

/// Replaces `(pid 123)` with `(pid N)`.
fn without_pids(line: &str) -> String {
    match line.split_once("(pid ") {
        Some((head, tail)) => match tail.split_once(')') {
            Some((_, rest)) => format!("{head}(pid N){rest}"),
            None => line.to_owned(),
        },
        None => line.to_owned(),
    }
}

/// A pidfd for `pid`; `None` when no such process exists any more.
fn pidfd(pid: i32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        let err = std::io::Error::last_os_error();
        assert_eq!(err.raw_os_error(), Some(libc::ESRCH), "pidfd_open({pid}): {err}");
        return None;
    }
    // SAFETY: the kernel just gave us this descriptor.
    Some(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn has_ended(pidfd: &OwnedFd) -> bool {
    let mut pfd = libc::pollfd { fd: pidfd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd, no waiting.
    unsafe { libc::poll(&mut pfd, 1, 0) == 1 }
}

#[test]
fn run_method_pid_before_and_after_start() {
    let lines = run("run_method");
    let (child, parent): (Vec<&str>, Vec<&str>) =
        lines.iter().map(String::as_str).partition(|l| *l == "do something in sub_progress");
    assert_eq!(child.len(), 1, "{lines:#?}");
    assert_eq!(parent.len(), 4, "{lines:#?}");
    assert_eq!(parent[0], "progress pid: None");
    let pid = number(parent[1], "progress pid: Some(", ")");
    assert!(pid > 0);
    assert_eq!(&parent[2..], ["run returned 0.2", "main progress finished"]);
    let said = lines.iter().position(|l| l == "do something in sub_progress").unwrap();
    assert!(said > 0 && said < lines.len() - 2, "{lines:#?}");
}

#[test]
fn tour_runs_every_program() {
    let lines = run("tour");
    // Every example is in the tour (the distributed worker runs inside the
    // master's program).
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/examples");
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter_map(|f| f.strip_suffix(".rs").map(str::to_owned))
        .filter(|n| n != "tour" && n != "distributed_worker")
        .collect();
    names.sort();
    assert!(names.len() >= 22, "{names:?}");
    for name in &names {
        let header = format!("=== examples/{name}.rs");
        let line = lines.iter().find(|l| l.starts_with(&header)).unwrap_or_else(|| panic!("{name} missing"));
        assert!(
            line.contains("(seed") || line.contains("(beyond the seeds"),
            "{line:?} does not say which seed program it ports (or that it ports none)"
        );
    }
    assert_eq!(lines.last().unwrap(), &format!("all {} programs ran", names.len()));
}

/// The seconds in `prefix<x.xx> seconds.`
fn seconds(line: &str, prefix: &str) -> f64 {
    line.strip_prefix(prefix)
        .and_then(|l| l.strip_suffix(" seconds."))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{line:?} is not {prefix}<seconds> seconds."))
}

#[test]
fn pool_imap_unordered_runs_tasks_in_parallel() {
    let lines = run("pool");
    let parent = number(&lines[0], "Parent process ", "");
    let mut workers = std::collections::HashSet::new();
    for task in 0..5 {
        let running = find(&lines, &format!("Running task 'Task-{task}' ("));
        let pid = number(running, &format!("Running task 'Task-{task}' ("), ")...");
        assert_ne!(pid, parent);
        workers.insert(pid);
        find(&lines, &format!("Task 'Task-{task}' runs "));
    }
    assert!((1..=4).contains(&workers.len()), "{workers:?}");
    let n = lines.len();
    let theoretical = seconds(&lines[n - 3], "Theoretical total running time: ");
    let actual = seconds(&lines[n - 2], "Actual running time: ");
    assert!(theoretical > 0.0 && actual > 0.0);
    assert_eq!(lines[n - 1], "All subprocesses done.");
}

#[test]
fn pool_apply_async_close_join() {
    let lines = run("pool_apply_async");
    for (workers, tasks) in [(4, 5), (35, 35)] {
        let _ = workers;
        assert!(
            lines.iter().any(|l| l == &format!("All subprocesses done ({tasks} of {tasks} tasks succeeded).")),
            "{lines:#?}"
        );
        for t in 0..tasks {
            assert!(lines.iter().any(|l| l.starts_with(&format!("Run task {t} ("))), "task {t}");
            assert!(lines.iter().any(|l| l.starts_with(&format!("Task {t} runs "))), "task {t}");
        }
    }
    assert_eq!(lines.iter().filter(|l| *l == "join before close: the pool is still running").count(), 2);
    assert_eq!(lines.iter().filter(|l| *l == "Waiting for all subprocesses done...").count(), 2);
}

#[test]
fn pool_map_family() {
    let lines = run("pool_map");
    let tasks: Vec<&String> = lines.iter().filter(|l| l.starts_with("task: running")).collect();
    assert_eq!(tasks.len(), 6, "{lines:#?}");
    let sync = lines.iter().position(|l| l == "finished sync task").unwrap();
    let asynced = lines.iter().position(|l| l == "finished async task").unwrap();
    // The three map tasks ran before map returned; all six before the end.
    assert!(lines[..sync].iter().filter(|l| l.starts_with("task: running")).count() >= 3);
    assert!(lines[..asynced].iter().filter(|l| l.starts_with("task: running")).count() == 6);
    assert!(lines.contains(&"map: [0, 1, 4, 9, 16, 25, 36, 49, 64, 81]".to_string()));
    let callback = lines.iter().position(|l| l == "callback [0, 1, 4, 9, 16]").unwrap();
    let got = lines.iter().position(|l| l == "map_async get: [0, 1, 4, 9, 16]").unwrap();
    assert!(callback < got, "the callback runs before get returns");
    assert!(lines.contains(&"starmap: [1024, 81, 1000]".to_string()));
    assert!(lines.contains(&"chunksize=10: 100 results".to_string()));
    let workers =
        number(find(&lines, "maxtasksperchild=5: "), "maxtasksperchild=5: 20 tasks ran in ", " worker processes");
    assert!(workers >= 4, "20 tasks at 5 per worker need at least 4 workers, got {workers}");
}

#[test]
fn pool_imap_orders() {
    let lines = run("pool_imap");
    let results: Vec<&str> = lines.iter().filter(|l| !l.starts_with("do something")).map(String::as_str).collect();
    assert_eq!(
        results,
        [
            "apply_async: 3",
            "imap [1, 3, 5]: [1, 3, 5]",
            "imap_unordered [1, 3, 5]: [1, 3, 5]",
            "imap [5, 3, 1]: [5, 3, 1]",
            "imap_unordered [5, 3, 1]: [1, 3, 5]",
        ]
    );
    assert_eq!(lines.iter().filter(|l| *l == "do something in sub_progress").count(), 13);
}

#[test]
fn pool_async_coroutines_overlap_in_workers() {
    let lines = run("pool_async");
    let batches: Vec<&String> = lines.iter().filter(|l| l.starts_with("worker ")).collect();
    assert_eq!(batches.len(), 4, "{lines:#?}");
    for b in &batches {
        assert!(b.ends_with(": 3 pages concurrently in one wait"), "{b}");
    }
    let workers = number(find(&lines, "4 batches"), "4 batches of 3 coroutines ran in ", " worker processes");
    assert!((1..=4).contains(&workers));
    assert_eq!(lines.last().unwrap(), "total well under the sequential 1.2 s");
}

#[test]
fn pipe_between_processes() {
    let lines = run("pipe");
    assert_eq!(
        lines,
        [
            "Child process writing to the pipe...",
            "Parent process reading from pipe... (42, None, \"Hello\")",
            "pipe: [message] from conn_1",
            "pipe: [message] from conn_2",
            "scott",
        ]
    );
}

#[test]
fn lock_keeps_turns_together() {
    let lines = run("lock");
    assert_eq!(lines[0], "results using lock.");
    assert_eq!(&lines[1..6], ["process: 0", "process: 1", "process: 2", "process: 3", "process: 4"]);
    let turns = &lines[6..16];
    for pair in turns.chunks(2) {
        let n = pair[0].strip_prefix("process ").and_then(|r| r.strip_suffix(" starts its turn")).expect("a start");
        assert_eq!(pair[1], format!("process {n} ends its turn"), "{turns:#?}");
    }
    assert_eq!(lines[16], "parent process exits");
    assert_eq!(lines.len(), 17);
}

#[test]
fn shared_value_reaches_40() {
    let lines = run("shared_value");
    assert_eq!(lines[0], "value1 = 0 ('i'), value2 = 3.14 ('d'), array = [1, 2, 3, 4]");
    let numbers: Vec<i32> = lines[1..21].iter().map(|l| l.parse().unwrap()).collect();
    // One process runs its ten steps, then the other: 1..=10 then 13..=40,
    // or 3..=30 then 31..=40.
    let (first, second) = numbers.split_at(10);
    let steps =
        |xs: &[i32], start: i32, step: i32| xs.iter().enumerate().all(|(i, x)| *x == start + step * (i as i32 + 1));
    assert!(
        (steps(first, 0, 1) && steps(second, 10, 3)) || (steps(first, 0, 3) && steps(second, 30, 1)),
        "{numbers:?}"
    );
    assert_eq!(*numbers.last().unwrap(), 40);
    assert_eq!(lines[21], "End");
}

#[test]
fn queue_two_producers_one_consumer() {
    let lines = run("queue");
    assert_eq!(lines.iter().filter(|l| *l == "Producer process starts writing...").count(), 2);
    assert_eq!(lines.iter().filter(|l| *l == "Consumer process starts reading...").count(), 1);
    for url in ["url1", "url2", "url3", "url4", "url5"] {
        let put = lines.iter().position(|l| *l == format!("[Producer Process] Put {url} to the queue")).expect(url);
        let got = lines.iter().position(|l| *l == format!("[Consumer Process] Get {url} from the queue")).expect(url);
        let _ = (put, got); // printed by different processes: no order between them
    }
    // Each producer's urls come out in the order it put them.
    let got: Vec<&str> = lines.iter().filter_map(|l| l.strip_prefix("[Consumer Process] Get ")).collect();
    let pos = |u: &str| got.iter().position(|g| g.starts_with(&format!("{u} "))).unwrap();
    assert!(pos("url1") < pos("url2") && pos("url2") < pos("url3") && pos("url4") < pos("url5"), "{got:?}");
    assert_eq!(lines.last().unwrap(), "consumer terminated: exitcode Some(-15)");
}

#[test]
fn queue_writer_and_reader() {
    let lines = run("queue_read_write");
    let (puts, gets): (Vec<&String>, Vec<&String>) =
        lines.iter().filter(|l| l.starts_with("Put ") || l.starts_with("Get ")).partition(|l| l.starts_with("Put "));
    assert_eq!(puts, ["Put A to queue...", "Put B to queue...", "Put C to queue..."]);
    assert_eq!(gets, ["Get A from queue.", "Get B from queue.", "Get C from queue."]);
    assert!(lines.iter().any(|l| l.starts_with("Process to write: ")));
    assert!(lines.iter().any(|l| l.starts_with("Process to read: ")));
    assert_eq!(lines.last().map(String::as_str), Some("a"), "seed 004's consumer prints what its producer put");
}

/// Seed 002's master and workers on the Redis-backed pool: workers are
/// copies of the example started with the worker environment.
#[test]
fn cluster_master_and_workers_square_random_numbers() {
    let lines = run("cluster");
    let puts: Vec<i64> =
        lines.iter().filter(|l| l.starts_with("Put task")).map(|l| number(l, "Put task ", "...") as i64).collect();
    assert_eq!(puts.len(), 10);
    let results: Vec<&String> = lines.iter().filter(|l| l.starts_with("Result: ")).collect();
    assert_eq!(results.len(), 10);
    for (n, line) in puts.iter().zip(results) {
        assert_eq!(line, &format!("Result: {n} * {n} = {}", n * n));
    }
    assert_eq!(lines.last().unwrap(), "master exit");
}

#[test]
fn manager_list_appended_by_five_processes() {
    assert_eq!(run("manager_list"), ["manager returns shared database", "[0, 1, 2, 3, 4, 0, 1, 2, 3, 4]"]);
}

#[test]
fn pool_workers_share_a_manager_queue() {
    assert_eq!(run("pool_manager_queue"), ["a"]);
}

#[test]
fn manager_dict_array_list_from_children() {
    assert_eq!(run("manager_shared"), ["[(0, 0), (1, 1), (2, 4), (3, 9)]", "[10, 11, 12, 13]", "[0, 1, 2, 3]"]);
}

/// `date -R`'s shape: `Sun, 22 Nov 2026 09:29:14 +0000`.
fn is_rfc2822_date(line: &str) -> bool {
    let parts: Vec<&str> = line.split(' ').collect();
    parts.len() == 6
        && parts[0].len() == 4
        && parts[0].ends_with(',')
        && parts[3].len() == 4
        && parts[4].len() == 8
        && (parts[5].starts_with('+') || parts[5].starts_with('-'))
}

#[test]
fn subprocess_call_prints_exit_codes() {
    let lines = run("subprocess_call");
    assert_eq!(lines, ["$ uname -s", "Linux", "Exit code: 0", "$ ls /no/such/place", "Exit code: 2"]);
}

#[test]
fn subprocess_communicate_collects_and_feeds_lines() {
    let lines = run("subprocess_communicate");
    assert_eq!(lines[0], "$ date -R");
    let date = lines[2].as_str();
    assert!(is_rfc2822_date(date), "{date:?}");
    assert_eq!(lines[1], format!("b\"{date}\\n\""));
    assert_eq!(lines[3..], ["Exit code: 0", "$ bc", "2.500", "1024", "Exit code: 0"]);
}

#[test]
fn subprocess_run_writes_a_file_pipes_and_checks_output() {
    let lines = run("subprocess_run");
    let date = lines[0].strip_prefix("output.txt: ").expect("the file's line");
    assert!(is_rfc2822_date(date), "{date:?}");
    let repr = lines[1].as_str();
    assert!(repr.starts_with("CompletedProcess(args=['date', '-R'], returncode=0, stdout=b'"), "{repr}");
    assert!(repr.ends_with("\\n')"), "{repr}");
    assert_eq!((lines[2].as_str(), lines[4].as_str()), ("------", "------"));
    // Three runs, each printing its date as bytes and as text.
    for (bytes, text) in [(3, 5), (6, 7)] {
        assert!(is_rfc2822_date(&lines[text]), "{}", lines[text]);
        assert_eq!(lines[bytes], format!("b\"{}\\n\"", lines[text]));
    }
    assert_eq!(lines.len(), 8);
}

/// The master's lines after its address: puts, the results in any order.
fn check_master(lines: &[String], worker_puts: &[i64]) {
    let puts: Vec<i64> =
        lines.iter().filter_map(|l| l.strip_prefix("Put task ")?.strip_suffix("...")?.parse().ok()).collect();
    assert_eq!(puts.len(), 10, "{lines:#?}");
    assert!(lines.iter().any(|l| l == "Try get result..."));
    let mut results: Vec<String> = lines.iter().filter_map(|l| l.strip_prefix("Result: ").map(str::to_owned)).collect();
    let mut expected: Vec<String> = puts.iter().map(|n| format!("{n} * {n} = {}", n * n)).collect();
    results.sort();
    expected.sort();
    assert_eq!(results, expected);
    assert_eq!(lines.last().unwrap(), "master exit");
    assert_eq!(worker_puts, puts, "the worker took the tasks in order");
}

#[test]
fn distributed_master_and_worker_as_separate_processes() {
    let mut master =
        Command::new(example("distributed_master")).arg("127.0.0.1:0").stdout(Stdio::piped()).spawn().unwrap();
    let mut out = BufReader::new(master.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    let address = first.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("{first:?}")).to_owned();
    let worker = Command::new(example("distributed_worker")).arg(&address).output().unwrap();
    assert!(worker.status.success());
    let worker_lines: Vec<String> = String::from_utf8(worker.stdout).unwrap().lines().map(str::to_owned).collect();
    assert_eq!(worker_lines[0], format!("Connect to server {address}..."));
    assert_eq!(worker_lines.last().unwrap(), "worker exit.");
    let taken: Vec<i64> =
        worker_lines.iter().filter_map(|l| l.strip_prefix("run task ")?.split(' ').next()?.parse().ok()).collect();
    let master_lines: Vec<String> = out.lines().map(Result::unwrap).collect();
    assert!(master.wait().unwrap().success());
    check_master(&master_lines, &taken);
}

#[test]
fn progress_bar_leaves_the_results_alone() {
    // stderr is a pipe here: no bar is drawn, the results are the same.
    assert_eq!(run("progress"), ["sum of squares below 40: 20540", "first squares: [0, 1, 4, 9, 16, 25, 36, 49]"]);
}
