//! `multiproc run`: inputs, replacement strings, quoting, output grouping
//! and order, timeouts, retries, halts, joblogs (ours read by GNU parallel
//! and GNU parallel's read by us), streaming input, signals, exit statuses,
//! and the same outputs as GNU parallel where it is installed.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn multiproc() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_multiproc"));
    c.arg("run");
    // The jobs' shell is fixed so that results do not depend on the user's.
    c.env("PARALLEL_SHELL", "/bin/sh");
    c
}

fn run_with(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = multiproc()
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(input) = stdin {
        let mut w = child.stdin.take().unwrap();
        let input = input.to_vec();
        std::thread::spawn(move || w.write_all(&input));
    }
    child.wait_with_output().unwrap()
}

fn run(args: &[&str]) -> (i32, String, String) {
    let out = run_with(args, None);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn lines(s: &str) -> Vec<&str> {
    s.lines().collect()
}

fn sorted(s: &str) -> Vec<&str> {
    let mut v = lines(s);
    v.sort_unstable();
    v
}

/// A fresh directory of this test's own.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("multiproc-run-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn alive(pid: i32) -> bool {
    // A zombie is as good as gone: it runs nothing and its parent (init
    // or a subreaper) reaps it.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')))
}

/// Whether every process of `pids` is gone, waiting (bounded) for the
/// kernel to finish tearing down what was just killed.
fn all_gone(pids: &[i32]) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while pids.iter().any(|&p| alive(p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    !pids.iter().any(|&p| alive(p))
}

fn pids_in(path: &Path) -> Vec<i32> {
    std::fs::read_to_string(path).unwrap_or_default().split_whitespace().map(|p| p.parse().unwrap()).collect()
}

fn gnu_parallel() -> Option<PathBuf> {
    let p = PathBuf::from("/usr/bin/parallel");
    if p.exists() {
        Some(p)
    } else {
        eprintln!("GNU parallel is not installed (Debian package `parallel`): comparison skipped");
        None
    }
}

#[test]
fn every_replacement_string_and_input_form() {
    let dry = |args: &[&str]| {
        let mut a = vec!["--dry-run", "-j1"];
        a.extend_from_slice(args);
        let (code, out, err) = run(&a);
        assert_eq!(code, 0, "{args:?}: {err}");
        out
    };
    assert_eq!(
        dry(&["echo", "{}", "{.}", "{/}", "{//}", "{/.}", "{#}", ":::", "/x/y/z.tar.gz", "rel.txt"]),
        "echo /x/y/z.tar.gz /x/y/z.tar z.tar.gz /x/y z.tar 1\necho rel.txt rel rel.txt . rel 2\n"
    );
    assert_eq!(dry(&["echo", "{%}", ":::", "a"]), "echo 1\n");
    // No replacement string: the input is appended.
    assert_eq!(dry(&["echo", "-n", ":::", "a", "b c"]), "echo -n a\necho -n 'b c'\n");
    // Several groups: every combination, the first slowest; :::+ links.
    assert_eq!(dry(&["echo", "{1}-{2}", ":::", "a", "b", ":::", "1", "2"]), "echo a-1\necho a-2\necho b-1\necho b-2\n");
    assert_eq!(
        dry(&["echo", "{2}", "{1}", ":::", "a", "b", "c", ":::+", "1", "2", "3"]),
        "echo 1 a\necho 2 b\necho 3 c\n"
    );
    assert_eq!(dry(&["echo", "{-1}", "{1/}", "{2//}", "{2/.}", ":::", "d/f", ":::", "/p/q.r"]), "echo /p/q.r f /p q\n");
    assert_eq!(dry(&["echo", "{1.}", "{2/.}", ":::", "a.b", ":::", "c/d.e"]), "echo a d\n");
    // Files after ::::, - for stdin, -a, --colsep, --null.
    let dir = scratch("inputs");
    let f = dir.join("in.txt");
    std::fs::write(&f, "one\ntwo\n").unwrap();
    let g = dir.join("cols.csv");
    std::fs::write(&g, "a,b\nc,d\n").unwrap();
    let f = f.to_str().unwrap();
    let g = g.to_str().unwrap();
    assert_eq!(dry(&["echo", "::::", f]), "echo one\necho two\n");
    assert_eq!(dry(&["-a", f, "echo", "{}", ":::", "x"]), "echo one x\necho two x\n");
    assert_eq!(dry(&["echo", "{1}{2}", "::::", f, "::::+", g]), "echo onea,b\necho twoc,d\n");
    assert_eq!(dry(&["--colsep", ",", "echo", "{2}", "{1}", "::::", g]), "echo b a\necho d c\n");
    let out = run_with(&["--dry-run", "echo"], Some(b"l1\nl 2\n"));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "echo l1\necho 'l 2'\n");
    let out = run_with(&["--dry-run", "-0", "echo"], Some(b"a\nb\0c\0"));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "echo 'a\nb'\necho c\n");
    // Shell syntax outside replacement strings is left alone.
    assert_eq!(dry(&["awk", "'{print $1}'", "{}", "${HOME}", ":::", "f"]), "awk '{print $1}' f ${HOME}\n");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn unknown_replacement_strings_and_bad_lines_fail_before_anything_runs() {
    let dir = scratch("refused");
    let marker = dir.join("ran");
    let touch = format!("touch {}", marker.display());
    for (args, says) in [
        (vec![touch.as_str(), "{1x}", ":::", "a"], "{1x}"),
        (vec![touch.as_str(), "{..}", ":::", "a"], "{..}"),
        (vec![touch.as_str(), "{3}", ":::", "a", ":::", "b"], "only 2 input sources"),
        (vec!["--halt", "sometimes", touch.as_str(), ":::", "a"], "sometimes"),
        (vec!["--frob", touch.as_str(), ":::", "a"], "--frob"),
        (vec![touch.as_str(), "::::", "/no/such/file"], "/no/such/file"),
        (vec!["--colsep", "(", touch.as_str(), ":::", "a"], "--colsep"),
    ] {
        let (code, _, err) = run(&args);
        assert_eq!(code, 255, "{args:?}");
        assert!(err.contains(says), "{args:?}: {err}");
        assert!(!marker.exists(), "{args:?} ran a job");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn hostile_file_names_are_arguments_never_code() {
    let dir = scratch("hostile");
    let victim = dir.join("x");
    std::fs::write(&victim, "keep").unwrap();
    let names = ["a b; rm -rf x", "$(touch pwned)", "`touch pwned2`", "it's", "-n", "semi;colon", "new\nline", "*"];
    for (i, template) in ["touch {}", "touch -- {}", "sh -c 'touch -- \"$1\"' _ {}", "touch"].iter().enumerate() {
        let mut args = vec![*template, ":::"];
        args.extend(names.iter().filter(|n| i != 0 && i != 3 || **n != "-n"));
        let out = multiproc().args(&args).current_dir(&dir).output().unwrap();
        assert!(out.status.success(), "{template}: {}", String::from_utf8_lossy(&out.stderr));
        for name in names.iter().filter(|n| i != 0 && i != 3 || **n != "-n") {
            assert!(dir.join(name).exists(), "{template}: {name:?} was not one argument");
        }
        assert!(!dir.join("pwned").exists() && !dir.join("pwned2").exists(), "{template}: a name ran as code");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
        for name in names {
            let _ = std::fs::remove_file(dir.join(name));
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn grouped_output_never_interleaves_and_keep_order_keeps_input_order() {
    // Four jobs at once each print 3,000 lines as fast as they can, on
    // stdout and stderr both.
    let script = "i=0; while [ $i -lt 3000 ]; do echo \"job {} line $i\"; i=$((i+1)); done; echo \"job {} err\" >&2";
    let (code, out, err) = run(&["-j4", script, ":::", "1", "2", "3", "4", "5", "6"]);
    assert_eq!(code, 0, "{err}");
    let all = lines(&out);
    assert_eq!(all.len(), 6 * 3000);
    for block in all.chunks(3000) {
        let job = block[0].split(' ').nth(1).unwrap();
        for (i, line) in block.iter().enumerate() {
            assert_eq!(*line, format!("job {job} line {i}"), "output of two jobs interleaved");
        }
    }
    assert_eq!(sorted(&err), ["job 1 err", "job 2 err", "job 3 err", "job 4 err", "job 5 err", "job 6 err"]);
    // --keep-order: the first job is the slowest, yet prints first.
    let (code, out, _) = run(&["-k", "-j3", "sleep {}; echo {}", ":::", "0.6", "0.3", "0", "0.1"]);
    assert_eq!(code, 0);
    assert_eq!(lines(&out), ["0.6", "0.3", "0", "0.1"]);
    // --tag, --line-buffer: every line prefixed, whole lines only.
    let (_, out, _) = run(&["--tag", "printf 'x\\ny\\n'", ":::", "a", "b c"]);
    assert_eq!(sorted(&out), ["a\tx", "a\ty", "b c\tx", "b c\ty"]);
    let (code, out, _) = run(&["--line-buffer", "-j4", script, ":::", "1", "2", "3", "4"]);
    assert_eq!(code, 0);
    let mut seen = std::collections::HashMap::<String, usize>::new();
    for line in lines(&out) {
        let mut words = line.split(' ');
        assert_eq!(words.next(), Some("job"), "a torn line: {line:?}");
        let job = words.next().unwrap().to_owned();
        let n = seen.entry(job).or_default();
        assert_eq!(line.rsplit(' ').next().unwrap(), n.to_string(), "lines of a job out of order");
        *n += 1;
    }
    assert_eq!(seen.values().sum::<usize>(), 4 * 3000);
}

/// `--keep-order --line-buffer`: the first job's lines come as it prints
/// them (the test answers its first line before it prints the second); a
/// later job's lines, printed meanwhile, wait their turn.
#[test]
fn keep_order_line_buffer_streams_the_first_job_and_holds_the_rest() {
    let dir = scratch("keep-order-lines");
    let go = dir.join("go");
    let first = format!(
        "case {{}} in 1) echo 1a; while [ ! -e {go} ]; do sleep 0.01; done; echo 1b;; \
         *) echo {{}}a; echo {{}}b >&2; echo {{}}c;; esac",
        go = go.display()
    );
    let mut child = multiproc()
        .args(["-k", "--line-buffer", "-j3", &first, ":::", "1", "2", "3"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            tx.send(line.unwrap()).unwrap();
        }
    });
    // A hang guard: grouped output would print nothing before `go` exists.
    let line = rx.recv_timeout(Duration::from_secs(60)).expect("the first job's line did not come while it ran");
    assert_eq!(line, "1a");
    std::fs::write(&go, b"").unwrap();
    let rest: Vec<String> = rx.iter().collect();
    assert_eq!(rest, ["1b", "2a", "2c", "3a", "3c"]);
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert_eq!(lines(&err), ["2b", "3b"]);
    assert!(child.wait().unwrap().success());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_bar_goes_to_stderr_only() {
    let (code, out, err) = run(&["--bar", "-j2", "echo {}", ":::", "1", "2", "3"]);
    assert_eq!(code, 0);
    assert_eq!(sorted(&out), ["1", "2", "3"], "nothing of the bar on stdout");
    // stderr is a pipe here: plain lines, the last one complete.
    let last = err.lines().last().unwrap_or_default();
    assert!(last.contains("3/3 done, 0 failed"), "{err}");
}

#[test]
fn a_timed_out_job_leaves_no_process_behind() {
    let dir = scratch("timeout");
    let pids = dir.join("pids");
    let script =
        // The last in a session of its own: out of the job's group, not its tree.
        format!(
            ": {{}}; sleep 100 & echo $! >> {0}; (sleep 100 & echo $! >> {0}; wait) & setsid sleep 100 & echo $! >> {0}; wait",
            pids.display()
        );
    let started = Instant::now();
    let (code, _, err) = run(&["--timeout", "0.5", "--joblog", dir.join("log").to_str().unwrap(), &script, ":::", "1"]);
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("--timeout"), "{err}");
    let found = pids_in(&pids);
    assert_eq!(found.len(), 3, "the job did not start its grandchildren");
    // killpg has been sent by the time the run ends.
    assert!(all_gone(&found), "a grandchild survived the timeout");
    let log = std::fs::read_to_string(dir.join("log")).unwrap();
    let row: Vec<&str> = log.lines().nth(1).unwrap().split('\t').collect();
    // Exitval -1 as GNU parallel logs a timeout; the signal is the one that
    // ended it (a shell in `wait` outlives TERM, so KILL).
    assert_eq!(row[6], "-1", "{log}");
    assert!(row[7] == "15" || row[7] == "9", "{log}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn retries_rerun_a_failing_job_up_to_n_times() {
    let dir = scratch("retries");
    let count = dir.join("count");
    // Fails on its first two runs, succeeds on the third.
    let script = format!(": {{}}; echo x >> {0}; [ $(wc -l < {0}) -ge 3 ]", count.display());
    let log = dir.join("log");
    let (code, _, _) = run(&["--retries", "3", "--joblog", log.to_str().unwrap(), &script, ":::", "1"]);
    assert_eq!(code, 0);
    assert_eq!(std::fs::read_to_string(&count).unwrap().lines().count(), 3);
    assert_eq!(std::fs::read_to_string(&log).unwrap().lines().count(), 2, "one row per job");
    std::fs::remove_file(&count).unwrap();
    let (code, _, _) = run(&["--retries", "2", &script, ":::", "1"]);
    assert_eq!(code, 1);
    assert_eq!(std::fs::read_to_string(&count).unwrap().lines().count(), 2);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn every_halt_form() {
    // now,fail=1: the failing job's status; the long job is killed.
    let started = Instant::now();
    let (code, out, err) = run(&["-j3", "--halt", "now,fail=1", "sleep {}; echo {}; exit {}", ":::", "30", "1", "0"]);
    assert!(started.elapsed() < Duration::from_secs(20), "the running job was not killed");
    assert_eq!(code, 1, "{err}");
    assert!(!out.contains("30"));
    assert!(err.contains("--halt"), "{err}");
    // soon,fail=1: no new jobs, the running one finishes.
    let (code, out, _) = run(&[
        "-j2",
        "--halt",
        "soon,fail=1",
        "sleep {1}; echo {2}; exit {2}",
        ":::",
        "1",
        "0",
        "0",
        "0",
        ":::+",
        "0",
        "2",
        "0",
        "0",
    ]);
    assert_eq!(code, 2);
    assert_eq!(sorted(&out), ["0", "2"]);
    // success=1: stops at the first success with 0.
    let (code, out, _) = run(&["-j1", "--halt", "soon,success=1", "echo {}; exit {}", ":::", "3", "0", "4"]);
    assert_eq!((code, lines(&out)), (0, vec!["3", "0"]));
    // done=2 after two jobs, whatever they did.
    let (_, out, _) = run(&["-j1", "--halt", "soon,done=2", "echo {}", ":::", "a", "b", "c"]);
    assert_eq!(lines(&out), ["a", "b"]);
    // fail=50%: of 4 known jobs, the second failure halts.
    let (code, out, _) = run(&["-j1", "--halt", "soon,fail=50%", "echo {}; exit {}", ":::", "5", "0", "6", "0"]);
    assert_eq!((code, lines(&out)), (6, vec!["5", "0", "6"]));
    // success=50%.
    let (code, out, _) = run(&["-j1", "--halt", "soon,success=50%", "echo {}; exit {}", ":::", "0", "1", "0", "1"]);
    assert_eq!((code, lines(&out)), (0, vec!["0", "1", "0"]));
    // The old numeric forms: 1 is soon,fail=1; 2 is now,fail=1; 0 never.
    let (code, out, _) = run(&["-j1", "--halt", "1", "echo {}; exit {}", ":::", "0", "7", "0"]);
    assert_eq!((code, lines(&out)), (7, vec!["0", "7"]));
    let (code, _, _) = run(&["-j1", "--halt", "2", "exit {}", ":::", "9", "0"]);
    assert_eq!(code, 9);
    let (code, _, _) = run(&["-j1", "--halt", "0", "exit {}", ":::", "9", "0", "3"]);
    assert_eq!(code, 2);
}

#[test]
fn exit_status_counts_failed_jobs_up_to_101() {
    assert_eq!(run(&["exit {}", ":::", "0", "0"]).0, 0);
    assert_eq!(run(&["exit {}", ":::", "1", "0", "2", "3"]).0, 3);
    let many: Vec<String> = (0..102).map(|_| "1".to_owned()).collect();
    let mut args = vec!["-j4", "exit {}", ":::"];
    args.extend(many.iter().map(String::as_str));
    assert_eq!(run(&args).0, 101);
    // A job killed by a signal fails; a missing program fails with 127.
    let (code, _, _) = run(&["kill -9 $$", ":::", "x"]);
    assert_eq!(code, 1);
    let (code, _, err) = run(&["no-such-program-xyz", ":::", "x"]);
    assert_eq!(code, 1);
    assert!(err.contains("no-such-program-xyz"), "{err}");
}

#[test]
fn joblogs_resume_ours_and_gnu_parallels() {
    let dir = scratch("joblog");
    let log = dir.join("log");
    let log_s = log.to_str().unwrap();
    let (code, _, _) = run(&["--joblog", log_s, "echo {}; exit {}", ":::", "0", "1", "0"]);
    assert_eq!(code, 1);
    let text = std::fs::read_to_string(&log).unwrap();
    let rows: Vec<Vec<&str>> = text.lines().map(|l| l.split('\t').collect()).collect();
    assert_eq!(rows[0].join("\t"), "Seq\tHost\tStarttime\tJobRuntime\tSend\tReceive\tExitval\tSignal\tCommand");
    assert_eq!(rows.len(), 4);
    for row in &rows[1..] {
        assert_eq!(row.len(), 9);
        assert_eq!(row[1], ":");
        assert!(row[2].split_once('.').is_some_and(|(_, ms)| ms.len() == 3), "{row:?}");
        assert_eq!(row[3].len(), 10, "JobRuntime is %10.3f: {row:?}");
        assert_eq!(row[5], "2", "received bytes");
    }
    let failed: Vec<&str> = rows[1..].iter().filter(|r| r[6] != "0").map(|r| r[0]).collect();
    assert_eq!(failed, ["2"]);
    // --resume runs only jobs not in the log; --resume-failed also the failed.
    let (_, out, _) = run(&["--resume", "--joblog", log_s, "echo {}; exit {}", ":::", "0", "1", "0", "0"]);
    assert_eq!(out, "0\n", "only job 4 was new");
    let (code, out, _) = run(&["--resume-failed", "--joblog", log_s, "echo again {}", ":::", "0", "1", "0", "0"]);
    assert_eq!((code, out.as_str()), (0, "again 1\n"));
    let Some(gnu) = gnu_parallel() else { return };
    // GNU parallel's --resume reads our log: nothing is left to run.
    let gnu_run = |args: &[&str]| {
        let out = Command::new(&gnu).arg("--will-cite").args(args).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(gnu_run(&["--resume", "--joblog", log_s, "echo {}", ":::", "0", "1", "0", "0"]), "");
    assert_eq!(gnu_run(&["--resume", "--joblog", log_s, "echo {}", ":::", "0", "1", "0", "0", "5"]), "5\n");
    // And ours reads GNU parallel's.
    let theirs = dir.join("theirs");
    let theirs_s = theirs.to_str().unwrap();
    gnu_run(&["--joblog", theirs_s, "exit {}", ":::", "0", "3", "0"]);
    let (_, out, _) = run(&["--resume", "--joblog", theirs_s, "echo {}", ":::", "0", "3", "0", "4"]);
    assert_eq!(out, "4\n");
    let (_, out, _) = run(&["--resume-failed", "--joblog", theirs_s, "echo {}", ":::", "0", "3", "0", "4"]);
    assert_eq!(out, "3\n", "job 4 is in the log by now (it succeeded)");
    std::fs::remove_dir_all(&dir).unwrap();
}

fn max_rss_kib_of_children() -> i64 {
    // SAFETY: getrusage fills the struct we hand it.
    unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut u);
        u.ru_maxrss
    }
}

#[test]
fn input_streams_with_flat_memory() {
    // 200,000 lines: memory stays flat (the input is never held whole).
    let mut child = multiproc()
        .args(["--dry-run", "-k", "echo", "{#}", "{}"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        let line = "x".repeat(200);
        for i in 0..200_000 {
            writeln!(stdin, "{i}{line}").unwrap();
        }
    });
    let mut count = 0;
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        count += 1;
        assert!(line.unwrap().starts_with(&format!("echo {count} {}", count - 1)));
    }
    writer.join().unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(count, 200_000);
    // 40 MB of input went through; a process that kept it would be far above.
    let rss_mib = max_rss_kib_of_children() / 1024;
    assert!(rss_mib < 32, "multiproc run grew to {rss_mib} MiB");
    // Jobs start while the input is still coming: the first job's output
    // arrives before stdin is closed.
    let mut child = multiproc().args(["-j2", "echo"]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "first").unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "first\n");
    drop(stdin);
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    assert!(child.wait().unwrap().success());
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(pid as i32, sig) }, 0);
}

fn interrupted_run_leaves_no_child(sig: i32, twice: bool) {
    let dir = scratch(&format!("signal-{sig}-{twice}"));
    let pids = dir.join("pids");
    // Each job records itself and a grandchild, then ignores SIGINT/SIGTERM
    // when asked to (so that only the grace period's KILL ends it).
    let trap = if twice { "trap '' INT TERM; " } else { "" };
    let script = format!(": {{}}; {trap}sleep 100 & echo $$ $! >> {}; wait", pids.display());
    let mut child = multiproc()
        // A long grace period, so that "at once" cannot be the grace running out.
        .args(["-j2", "--grace", if twice { "60" } else { "0.5" }, &script, ":::", "1", "2", "3", "4"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let deadline = Instant::now() + Duration::from_secs(30);
    while pids_in(&pids).len() < 4 {
        assert!(Instant::now() < deadline, "jobs did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    let started = Instant::now();
    signal(child.id(), sig);
    // The run says when it has taken the signal (two signals sent at once
    // would be one: the kernel does not queue them).
    let mut said = String::new();
    stderr.read_line(&mut said).unwrap();
    assert!(said.contains("stopping"), "{said}");
    if twice {
        signal(child.id(), sig);
    }
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(128 + sig));
    if twice {
        assert!(started.elapsed() < Duration::from_secs(30), "a second signal did not kill at once");
    }
    let found = pids_in(&pids);
    assert_eq!(found.len(), 4, "a job started after the signal");
    assert!(all_gone(&found), "a job or its child outlived the run");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn sigint_mid_run_leaves_no_child() {
    interrupted_run_leaves_no_child(libc::SIGINT, false);
}

#[test]
fn sigterm_mid_run_leaves_no_child() {
    interrupted_run_leaves_no_child(libc::SIGTERM, false);
}

#[test]
fn a_second_signal_kills_at_once_even_jobs_that_ignore_the_first() {
    interrupted_run_leaves_no_child(libc::SIGINT, true);
}

#[test]
fn same_output_as_gnu_parallel() {
    let Some(gnu) = gnu_parallel() else { return };
    let dir = scratch("gnu");
    let f = dir.join("in");
    std::fs::write(&f, "a.txt\nb c.tar.gz\nd/e.f\n").unwrap();
    let f = f.to_str().unwrap();
    let cases: Vec<Vec<&str>> = vec![
        vec!["-k", "echo", ":::", "a", "b c", "d'e"],
        vec!["-k", "echo", "{}", "{.}", "{/}", "{//}", "{/.}", "{#}", "::::", f],
        vec!["-k", "echo", "{2}", "{1}", ":::", "a", "b", ":::", "1", "2", "3"],
        vec!["-k", "echo", ":::", "a", "b", "c", ":::+", "1", "2", "3"],
        vec!["-k", "--tag", "echo x; echo y", ":::", "a", "b c"],
        vec!["-k", "--colsep", " ", "echo {2}", "::::", f],
        vec!["--dry-run", "-k", "echo", "{}", ":::", "a b; rm -rf x", "$(id)", "it's"],
        vec!["-k", "exit {}", ":::", "0", "1", "2"],
    ];
    for case in cases {
        let ours = multiproc().args(&case).output().unwrap();
        let theirs = Command::new(&gnu).arg("--will-cite").args(&case).env("SHELL", "/bin/sh").output().unwrap();
        assert_eq!(String::from_utf8_lossy(&ours.stdout), String::from_utf8_lossy(&theirs.stdout), "{case:?}");
        assert_eq!(ours.status.code(), theirs.status.code(), "{case:?}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

fn own_redis() -> (multiproc::cluster::LocalRedis, String) {
    let redis = multiproc::cluster::LocalRedis::start().expect("redis-server (scripts/test installs it)");
    let url = redis.url();
    (redis, url)
}

/// Processes whose environment holds `marker`.
fn processes_with(marker: &str) -> Vec<i32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else { continue };
        if env.split(|&b| b == 0).any(|kv| kv == marker.as_bytes()) && alive(pid) {
            found.push(pid);
        }
    }
    found
}

struct Worker(std::process::Child);

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn worker(url: &str, who: &str) -> Worker {
    Worker(
        Command::new(env!("CARGO_BIN_EXE_multiproc"))
            .args(["worker", "--redis", url, "--pool", "jobs", "-j", "2", "--lease-ms", "1000"])
            .env("MULTIPROC_TEST_WHO", who)
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

#[test]
fn distributed_jobs_survive_a_killed_worker_with_one_result_each() {
    let (_redis, url) = own_redis();
    let dir = scratch("distributed");
    let started = dir.join("started");
    let a = format!("a-{}", std::process::id());
    let mut worker_a = worker(&url, &a);
    let _worker_b = worker(&url, "b");
    // Jobs on worker a take long, so that it is surely mid-job when killed.
    let script = format!(
        "echo {{}} $MULTIPROC_TEST_WHO >> {}; case $MULTIPROC_TEST_WHO in a-*) sleep 100;; esac; echo done {{}}",
        started.display()
    );
    let inputs: Vec<String> = (1..=20).map(|i| i.to_string()).collect();
    let mut args = vec!["--redis", &url, "--pool", "jobs", "-j", "8", "--joblog"];
    let log = dir.join("log");
    let log_s = log.to_str().unwrap().to_owned();
    args.push(&log_s);
    args.push(&script);
    args.push(":::");
    args.extend(inputs.iter().map(String::as_str));
    let run = multiproc().args(&args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&started).unwrap_or_default().contains(" a-") {
        assert!(Instant::now() < deadline, "worker a took no job");
        std::thread::sleep(Duration::from_millis(10));
    }
    worker_a.0.kill().unwrap();
    worker_a.0.wait().unwrap();
    let out = run.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut expected: Vec<String> = (1..=20).map(|i| format!("done {i}")).collect();
    expected.sort_unstable();
    assert_eq!(sorted(&stdout), expected, "each job's result exactly once");
    let reran = std::fs::read_to_string(&started).unwrap().lines().filter(|l| l.contains(" a-")).count();
    assert!(reran >= 1);
    assert_eq!(std::fs::read_to_string(&log).unwrap().lines().count(), 21, "one joblog row per job");
    // The killed worker's jobs died with it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !processes_with(&format!("MULTIPROC_TEST_WHO={a}")).is_empty() {
        assert!(Instant::now() < deadline, "a job of the killed worker lives on");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn distributed_runs_keep_order_exit_codes_timeouts_and_halt() {
    let (_redis, url) = own_redis();
    let _w = worker(&url, "w");
    let remote = |extra: &[&str]| {
        let mut args = vec!["--redis", url.as_str(), "--pool", "jobs"];
        args.extend_from_slice(extra);
        run(&args)
    };
    let (code, out, _) = remote(&["-k", "echo {}; exit {}", ":::", "0", "1", "2"]);
    assert_eq!((code, lines(&out)), (2, vec!["0", "1", "2"]));
    let (code, _, err) = remote(&["--timeout", "0.5", "sleep {}", ":::", "0.1", "100"]);
    assert_eq!(code, 1);
    assert!(err.contains("--timeout"), "{err}");
    let started = Instant::now();
    let (code, _, _) = remote(&["-j2", "--halt", "now,fail=1", "sleep {}; exit 3", ":::", "100", "0.2"]);
    assert_eq!(code, 3);
    assert!(started.elapsed() < Duration::from_secs(60), "the remote job was not cancelled");
    let (code, out, _) = remote(&["--retries", "2", "--tag", "echo x; exit 1", ":::", "a"]);
    assert_eq!((code, out.as_str()), (1, "a\tx\n"));
    // Remote output comes whole, and the run says so when asked for lines.
    let (code, out, err) = remote(&["--line-buffer", "-k", "echo {}; echo {}", ":::", "a", "b"]);
    assert_eq!((code, lines(&out)), (0, vec!["a", "a", "b", "b"]));
    assert!(err.contains("--line-buffer with --redis: each job's output comes whole"), "{err}");
}

#[test]
fn a_closed_stdout_stops_the_run() {
    let inputs: Vec<String> = (1..=100).map(|i| i.to_string()).collect();
    let mut args = vec!["-j2", "echo {}; sleep 1", ":::"];
    args.extend(inputs.iter().map(String::as_str));
    let started = Instant::now();
    let mut child = multiproc().args(&args).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
    // The reader is gone now (as `| head -1` would be).
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(255));
    assert!(started.elapsed() < Duration::from_secs(30), "the run went on without a reader");
}

#[test]
fn delay_spaces_job_starts() {
    let (code, out, _) = run(&["-j3", "--delay", "0.3", "date +%s.%N; : {}", ":::", "1", "2", "3"]);
    assert_eq!(code, 0);
    let mut starts: Vec<f64> = out.lines().map(|l| l.parse().unwrap()).collect();
    starts.sort_by(f64::total_cmp);
    for pair in starts.windows(2) {
        assert!(pair[1] - pair[0] >= 0.2, "jobs started {:.3}s apart", pair[1] - pair[0]);
    }
}
