//! `multiproc manager serve`: the listening line, queues by name for
//! Python and Rust workers, the key from the environment or a file, and a
//! clean stop on SIGTERM and SIGINT.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use multiproc::managers::{Address, Client};
use multiproc::pickle::PyValue;

fn start(args: &[&str], env: &[(&str, &str)]) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_multiproc"))
        .args(["manager", "serve"])
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
    (child, line.trim_end().to_owned())
}

/// Waits (bounded) for the child to exit; its status code.
fn exit_code(child: Child) -> Option<i32> {
    let (tx, rx) = std::sync::mpsc::channel();
    let mut child = child;
    std::thread::spawn(move || tx.send(child.wait().unwrap().code()));
    rx.recv_timeout(Duration::from_secs(30)).expect("the server did not stop")
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc_kill(child.id() as i32, sig) }, 0);
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

fn python311() -> std::path::PathBuf {
    let root = std::env::var_os("PYENV_ROOT")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(std::env::var_os("HOME").unwrap()).join(".pyenv"));
    let mut found: Vec<_> = std::fs::read_dir(root.join("versions"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("3.11."))
        .map(|e| e.path().join("bin/python3"))
        .collect();
    found.sort();
    found.pop().expect("pyenv's Python 3.11")
}

const PY_WORKER: &str = r#"
import sys
from multiprocessing.managers import BaseManager
class QueueManager(BaseManager): pass
QueueManager.register('get_task_queue')
QueueManager.register('get_result_queue')
m = QueueManager(address=('127.0.0.1', int(sys.argv[1])), authkey=b'sesame')
m.connect()
t, r = m.get_task_queue(), m.get_result_queue()
while True:
    n = t.get(timeout=10)
    if n is None:
        break
    r.put(n * 10)
"#;

#[test]
fn serves_named_queues_to_python_and_rust_and_stops_on_sigterm() {
    let (server, line) = start(
        &[
            "--address",
            "127.0.0.1:0",
            "--authkey-env",
            "MP_TEST_KEY",
            "--queue",
            "get_task_queue",
            "--queue",
            "get_result_queue",
        ],
        &[("MP_TEST_KEY", "sesame")],
    );
    let addr = line.strip_prefix("listening on ").unwrap_or_else(|| panic!("first line {line:?}"));
    let port = addr.strip_prefix("127.0.0.1:").unwrap();
    assert_ne!(port, "0", "the real port is named");
    let address: Address = addr.parse().unwrap();
    let client = Client::connect(&address, b"sesame").unwrap();
    let tasks = client.create("get_task_queue", vec![]).unwrap();
    let results = client.create("get_result_queue", vec![]).unwrap();
    for n in 1..=5 {
        tasks.call("put", vec![PyValue::Int(n)]).unwrap();
    }
    tasks.call("put", vec![PyValue::None]).unwrap();
    let out = Command::new(python311()).args(["-c", PY_WORKER, port]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got: Vec<PyValue> = (0..5).map(|_| results.get_timeout(Duration::from_secs(10)).unwrap().unwrap()).collect();
    assert_eq!(got, (1..=5).map(|n| PyValue::Int(n * 10)).collect::<Vec<_>>());
    assert!(Client::connect(&address, b"wrong").is_err());
    drop((tasks, results));
    signal(&server, 15);
    assert_eq!(exit_code(server), Some(0), "a clean stop on SIGTERM");
}

#[test]
fn the_key_can_come_from_a_file_and_sigint_stops_it() {
    let path = std::env::temp_dir().join(format!("multiproc-cli-key-{}", std::process::id()));
    std::fs::write(&path, "filekey\n").unwrap();
    let (server, line) =
        start(&["--address", "127.0.0.1:0", "--authkey-file", path.to_str().unwrap(), "--queue", "q"], &[]);
    let address: Address = line.strip_prefix("listening on ").unwrap().parse().unwrap();
    let client = Client::connect(&address, b"filekey").unwrap();
    let q = client.create("q", vec![]).unwrap();
    q.call("put", vec![PyValue::Str("x".into())]).unwrap();
    assert_eq!(client.create("q", vec![]).unwrap().call("get", vec![]).unwrap(), PyValue::Str("x".into()));
    signal(&server, 2);
    assert_eq!(exit_code(server), Some(0), "a clean stop on SIGINT");
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn bad_invocations_are_refused_with_a_reason() {
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let out = Command::new(env!("CARGO_BIN_EXE_multiproc"))
            .args(["manager", "serve"])
            .args(args)
            .env_remove("MP_UNSET_KEY")
            .envs(env.iter().copied())
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (code, err) = run(&["--address", "127.0.0.1:0", "--authkey-env", "MP_UNSET_KEY", "--queue", "q"], &[]);
    assert_eq!(code, Some(1));
    assert!(err.contains("MP_UNSET_KEY"), "{err}");
    let (code, err) = run(&["--address", "127.0.0.1:0", "--queue", "q"], &[]);
    assert_eq!(code, Some(2), "no key source: {err}");
    let (code, err) = run(&["--address", "127.0.0.1:0", "--authkey-env", "MP_K"], &[("MP_K", "k")]);
    assert_eq!(code, Some(2), "nothing to serve: {err}");
    assert!(err.contains("--sync") && err.contains("--queue"), "{err}");
    let (code, err) =
        run(&["--address", "0.0.0.0:0", "--authkey-env", "MP_EMPTY", "--queue", "q"], &[("MP_EMPTY", "")]);
    assert_eq!(code, Some(1));
    assert!(err.contains("empty authkey"), "{err}");
    let (code, err) = run(&["--address", "nowhere", "--authkey-env", "MP_K", "--queue", "q"], &[("MP_K", "k")]);
    assert_eq!(code, Some(1));
    assert!(err.contains("nowhere"), "{err}");
}

const PY_SYNC: &str = r#"
import sys
from multiprocessing.managers import SyncManager, DictProxy, ListProxy, NamespaceProxy
SyncManager.register('shared_d', proxytype=DictProxy)
SyncManager.register('shared_l', proxytype=ListProxy)
SyncManager.register('settings', proxytype=NamespaceProxy)
m = SyncManager(address=('127.0.0.1', int(sys.argv[1])), authkey=b'sesame')
m.connect()
d = m.shared_d()
d['a'] = 1
l = m.shared_l()
l.append(5)
ns = m.settings()
ns.x = 3
print(m.shared_d()['a'], m.shared_l()[:], m.settings().x)
q = m.Queue()
q.put((1, 'one'))
j = m.JoinableQueue()
j.put(1); j.get(); j.task_done(); j.join()
lk, rl = m.Lock(), m.RLock()
print(q.get(), lk.acquire(), lk.release(), rl.acquire(), rl.acquire())
s, bs = m.Semaphore(2), m.BoundedSemaphore(1)
print(s.acquire(), s.acquire(), s.acquire(timeout=0.01), bs.acquire())
e, c, b = m.Event(), m.Condition(), m.Barrier(1)
e.set()
c.acquire()
print(e.wait(1), c.wait(0.01), b.wait())
c.release()
v, a = m.Value('i', 1), m.Array('i', [1, 2])
v.value += 1
a[0] = 7
print(v.value, a[:], m.dict(x=1).copy(), m.list('ab')[:], m.Namespace(y=2).y)
try:
    m.Pool(2)
except NotImplementedError as err:
    print('NotImplementedError')
"#;

/// `--sync` serves every SyncManager type id; `--dict`, `--list` and
/// `--namespace` one shared named object each; Python 3.11 uses all of
/// them through its own SyncManager.
#[test]
fn serves_every_sync_manager_type_and_named_objects_to_python() {
    let (server, line) = start(
        &[
            "--address",
            "127.0.0.1:0",
            "--authkey-env",
            "MP_TEST_KEY",
            "--sync",
            "--dict",
            "shared_d",
            "--list",
            "shared_l",
            "--namespace",
            "settings",
        ],
        &[("MP_TEST_KEY", "sesame")],
    );
    let addr = line.strip_prefix("listening on ").unwrap_or_else(|| panic!("first line {line:?}"));
    let port = addr.strip_prefix("127.0.0.1:").unwrap();
    let out = Command::new(python311()).args(["-c", PY_SYNC, port]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        [
            "1 [5] 3",
            "(1, 'one') True None True True",
            "True True False True",
            "True False 0",
            "2 [7, 2] {'x': 1} ['a', 'b'] 2",
            "NotImplementedError",
        ]
    );
    // The named objects outlive their proxies; made objects do not.
    let client = Client::connect(&addr.parse::<Address>().unwrap(), b"sesame").unwrap();
    let d = client.create("shared_d", vec![]).unwrap();
    assert_eq!(d.call("get", vec![PyValue::Str("a".into())]).unwrap(), PyValue::Int(1));
    drop(d);
    signal(&server, 15);
    assert_eq!(exit_code(server), Some(0));
}
