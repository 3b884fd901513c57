//! Under the `tracing` feature: a span around each process start, one
//! around each pool task (pid, worker id, task, item) and an event for each
//! worker death, into whatever subscriber the program installed (the
//! library installs none).

mod common;

use std::io::Read;

use multiproc::{Pool, Process, StartMethod};

/// Every event, as text, appended to one file: forked workers inherit the
/// subscriber and write to the same file.
fn install(path: &std::path::Path) {
    let file = std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || file.try_clone().unwrap())
        .with_max_level(tracing::Level::INFO)
        .finish();
    tracing::subscriber::set_global_default(subscriber).unwrap();
}

fn noisy(x: u32) -> u32 {
    tracing::info!(x, "in task");
    x + 1
}

fn die(_: u32) -> u32 {
    // SAFETY: SIGKILL to ourselves.
    unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    unreachable!()
}

fn nothing() {}

#[test]
fn process_starts_tasks_and_worker_deaths_are_traced() {
    let path = std::env::temp_dir().join(format!("multiproc-tracing-{}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    install(&path);
    let mut p = Process::new(nothing, ()).with_name("traced-child");
    p.start().unwrap();
    common::join(&mut p).unwrap();
    let pool = Pool::builder().processes(1).start_method(StartMethod::Fork).build().unwrap();
    assert_eq!(pool.map_chunksize(noisy, [1, 2, 3], 3).unwrap(), [2, 3, 4]);
    let pid = pool.pids()[0];
    assert!(pool.apply(die, (0,)).is_err());
    drop(pool);
    let mut log = String::new();
    std::fs::File::open(&path).unwrap().read_to_string(&mut log).unwrap();
    std::fs::remove_file(&path).unwrap();
    let start = log.lines().find(|l| l.contains("process.start") && l.contains("traced-child")).unwrap_or_else(|| {
        panic!("no process.start span in:\n{log}");
    });
    assert!(start.contains("started") && start.contains("pid="), "{start}");
    let tasks: Vec<&str> = log.lines().filter(|l| l.contains("pool.task") && l.contains("in task")).collect();
    assert_eq!(tasks.len(), 3, "{log}");
    for line in &tasks {
        for field in [format!("pid={pid}"), "worker_id=0".into(), "task=".into(), "item=".into()] {
            assert!(line.contains(&field), "{field} missing: {line}");
        }
    }
    let death = log.lines().find(|l| l.contains("pool worker died")).unwrap_or_else(|| panic!("{log}"));
    assert!(death.contains("SIGKILL") && death.contains("WARN"), "{death}");
}
