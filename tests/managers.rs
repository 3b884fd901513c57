//! Managers against real Python interpreters (pyenv's), both ways: Python's
//! own client code against our server, and our client against Python's
//! server.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::python;
use multiproc::Error;
use multiproc::managers::objects::{Queue, Shared};
use multiproc::managers::{Address, Client, Returned, ServerBuilder};
use multiproc::pickle::PyValue;

const VERSIONS: [&str; 4] = ["3.7", "3.11", "3.12", "3.13"];

/// The seed's distributed worker, unchanged in substance: register the two
/// queues by name, connect, take tasks, put results, and see queue.Empty.
const SEED_WORKER: &str = r#"
import queue, sys
from multiprocessing.managers import BaseManager

class QueueManager(BaseManager):
    pass

QueueManager.register('get_task_queue')
QueueManager.register('get_result_queue')
host, port, key = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode()
m = QueueManager(address=(host, port), authkey=key)
m.connect()
task = m.get_task_queue()
result = m.get_result_queue()
for i in range(10):
    n = task.get(timeout=10)
    result.put('%d * %d = %d' % (n, n, n * n))
try:
    task.get(timeout=0.2)
    print('not empty')
except queue.Empty:
    print('queue.Empty on timeout')
try:
    bad = QueueManager(address=(host, port), authkey=b'wrong')
    bad.connect()
    print('wrong key accepted')
except Exception as e:
    print('wrong key refused:', type(e).__name__)
print('worker done')
"#;

#[test]
fn pythons_seed_worker_runs_against_our_server() {
    let tasks = Arc::new(Queue::new(0));
    let results = Arc::new(Queue::new(0));
    let server = ServerBuilder::new("127.0.0.1:0".parse().unwrap())
        .authkey(b"abc")
        .register_shared("get_task_queue", tasks.clone())
        .register_shared("get_result_queue", results.clone())
        .bind()
        .unwrap()
        .spawn()
        .unwrap();
    let Address::Tcp(addr) = server.address().clone() else { unreachable!() };
    let (host, port) = addr.rsplit_once(':').unwrap();
    for version in VERSIONS {
        for n in 0..10 {
            tasks.put(PyValue::Int(n), None).unwrap();
        }
        let out = Command::new(python(version)).args(["-c", SEED_WORKER, host, port, "abc"]).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "Python {version}: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(
            stdout.lines().collect::<Vec<_>>(),
            ["queue.Empty on timeout", "wrong key refused: AuthenticationError", "worker done"],
            "Python {version}"
        );
        let got: Vec<PyValue> = (0..10).map(|_| results.get(Some(std::time::Instant::now())).unwrap()).collect();
        let expected: Vec<PyValue> = (0..10).map(|n| PyValue::Str(format!("{n} * {n} = {}", n * n))).collect();
        assert_eq!(got, expected, "Python {version}");
        assert_eq!(results.qsize(), 0);
    }
    server.stop().unwrap();
}

const PYTHON_SERVER: &str = r#"
import sys
from multiprocessing.managers import SyncManager
m = SyncManager(address=('127.0.0.1', 0), authkey=b'abc')
s = m.get_server()
print(s.address[1], flush=True)
s.serve_forever()
"#;

struct PythonServer {
    child: std::process::Child,
    address: Address,
}

impl PythonServer {
    fn start(version: &str) -> PythonServer {
        let mut child = Command::new(python(version))
            .args(["-c", PYTHON_SERVER])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
        let port: u16 = line.trim().parse().unwrap_or_else(|_| panic!("Python {version} printed {line:?}"));
        PythonServer { child, address: Address::Tcp(format!("127.0.0.1:{port}")) }
    }
}

impl Drop for PythonServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn s(text: &str) -> PyValue {
    PyValue::Str(text.into())
}

#[test]
fn our_client_works_against_pythons_server() {
    for version in VERSIONS {
        let server = PythonServer::start(version);
        let client = Client::connect(&server.address, b"abc").unwrap();
        assert!(matches!(Client::connect(&server.address, b"wrong"), Err(Error::AuthenticationFailed)), "{version}");

        let q = client.create("Queue", vec![]).unwrap();
        q.call("put", vec![s("task")]).unwrap();
        q.call("put", vec![PyValue::Tuple(vec![PyValue::Int(1), PyValue::Float(2.5), PyValue::Bytes(b"b".to_vec())])])
            .unwrap();
        assert_eq!(q.call("qsize", vec![]).unwrap(), PyValue::Int(2), "{version}");
        assert_eq!(q.get_timeout(Duration::from_secs(5)).unwrap(), Some(s("task")));
        assert_eq!(
            q.call("get", vec![]).unwrap(),
            PyValue::Tuple(vec![PyValue::Int(1), PyValue::Float(2.5), PyValue::Bytes(b"b".to_vec())])
        );
        assert_eq!(q.get_timeout(Duration::from_millis(100)).unwrap(), None, "{version}: queue.Empty");
        let err = q.call("get_nowait", vec![]).unwrap_err();
        assert!(matches!(&err, Error::RemoteException { class, .. } if class == "_queue.Empty"), "{version}: {err}");

        let d = client.create("dict", vec![]).unwrap();
        d.call("__setitem__", vec![s("k"), PyValue::List(vec![PyValue::Int(1), PyValue::None])]).unwrap();
        assert_eq!(d.call("__getitem__", vec![s("k")]).unwrap(), PyValue::List(vec![PyValue::Int(1), PyValue::None]));
        assert_eq!(d.call("get", vec![s("missing"), PyValue::Int(-1)]).unwrap(), PyValue::Int(-1));
        let err = d.call("__getitem__", vec![s("missing")]).unwrap_err();
        assert!(matches!(&err, Error::RemoteException { class, .. } if class == "builtins.KeyError"), "{err}");
        assert_eq!(err.to_string(), "the manager raised KeyError('missing')");
        assert_eq!(d.call("__len__", vec![]).unwrap(), PyValue::Int(1));
        // A method answered with a shared object (#PROXY) gives a proxy.
        let before = client.number_of_objects().unwrap();
        let err = d.call("__iter__", vec![]).unwrap_err();
        assert!(err.to_string().contains("Proxy::invoke"), "{err}");
        assert_eq!(client.number_of_objects().unwrap(), before, "{version}: the refused proxy was released");
        let Returned::Proxy(keys) = d.invoke("__iter__", vec![], vec![]).unwrap() else { panic!("{version}") };
        assert_eq!(keys.typeid(), "Iterator");
        assert_eq!(keys.call("__next__", vec![]).unwrap(), s("k"));
        let err = keys.call("__next__", vec![]).unwrap_err();
        assert!(matches!(&err, Error::RemoteException { class, .. } if class == "builtins.StopIteration"), "{err}");
        drop(keys);
        assert_eq!(client.number_of_objects().unwrap(), before, "{version}: the iterator was released");
        let typed = multiproc::managers::DictProxy::<String, Vec<Option<i32>>>::from(d.clone());
        assert_eq!(typed.to_string(), "{'k': [1, None]}", "{version}: print(proxy)");
        assert_eq!(typed.items().unwrap(), [("k".to_string(), vec![Some(1), None])]);
        drop(typed);

        let l = client.create("list", vec![PyValue::List(vec![PyValue::Int(3)])]).unwrap();
        l.call("append", vec![PyValue::Int(4)]).unwrap();
        assert_eq!(l.call("__len__", vec![]).unwrap(), PyValue::Int(2));
        assert_eq!(l.call("__getitem__", vec![PyValue::Int(-1)]).unwrap(), PyValue::Int(4));

        let v = client.create("Value", vec![s("i"), PyValue::Int(5)]).unwrap();
        assert_eq!(v.call("get", vec![]).unwrap(), PyValue::Int(5));
        v.call("set", vec![PyValue::Int(6)]).unwrap();
        assert_eq!(v.call("get", vec![]).unwrap(), PyValue::Int(6));

        let ns = client.create("Namespace", vec![]).unwrap();
        ns.call("__setattr__", vec![s("x"), PyValue::Int(10)]).unwrap();
        assert_eq!(ns.call("__getattribute__", vec![s("x")]).unwrap(), PyValue::Int(10));

        // An unknown method: a traceback, and the connection goes on.
        assert!(matches!(q.call("nonexistent", vec![]), Err(Error::Remote(_))), "{version}");
        assert_eq!(q.call("qsize", vec![]).unwrap(), PyValue::Int(0));
        let before = client.number_of_objects().unwrap();
        drop(ns);
        assert_eq!(client.number_of_objects().unwrap(), before - 1, "{version}: decref frees");
    }
}

/// Our server with the SyncManager types on a free loopback port (key
/// `abc`), and its port.
fn sync_server() -> (multiproc::managers::RunningServer, String) {
    sync_server_with(&[])
}

/// As [`sync_server`], with named queues (`register_queue`) too.
fn sync_server_with(queues: &[&str]) -> (multiproc::managers::RunningServer, String) {
    let builder = ServerBuilder::new("127.0.0.1:0".parse().unwrap()).authkey(b"abc").sync_types();
    let server = queues.iter().fold(builder, |b, q| b.register_queue(q)).bind().unwrap().spawn().unwrap();
    let Address::Tcp(addr) = server.address().clone() else { unreachable!() };
    let port = addr.rsplit_once(':').unwrap().1.to_owned();
    (server, port)
}

/// Python's client for every SyncManager type we serve, against our server.
const PYTHON_SYNC_CLIENT: &str = r#"
import queue, sys
from multiprocessing.managers import SyncManager
m = SyncManager(address=('127.0.0.1', int(sys.argv[1])), authkey=b'abc')
m.connect()
q = m.Queue()
q.put({'a': [1, 2.5, None, True, b'x', (3, 'y')]})
print(q.get())
try:
    q.get(timeout=0.1)
except queue.Empty:
    print('Empty')
d = m.dict()
d['k'] = 1
d.update({'j': 2})
print(sorted(d.items()), d.get('zz', 'default'), len(d))
print(list(d), [k for k in d], 'k' in d)
l = m.list([1, 2])
l.append(3)
print(len(l), l[-1])
v = m.Value('i', 7)
v.value = v.value + 1
print(v.value)
ns = m.Namespace()
ns.x = 'hello'
print(ns.x)
e = m.Event()
e.set()
print(e.is_set(), e.wait(1))
try:
    d['missing']
except KeyError as err:
    print('KeyError', err)
r = m.list(range(0, 5))
r.extend(range(5, 10, 2))
print(list(r), list(m.list('ab')))
try:
    m.list(range(10**12))
except MemoryError:
    print('MemoryError')
s = m.list([3, 1, 2, 1.5])
s.sort()
print(s[:], s[1:3], s[::-2])
s.sort(reverse=True)
print(s)
s *= 2
print(len(s), s.index(2), s.count(1), s.pop(0), 3 in s, s.index(3, 2))
print(repr(d._getvalue()), str(d), str(v), ns)
mixed = m.list([1, 'a'])
try:
    mixed.sort()
except TypeError as err:
    print('TypeError', mixed)
import collections
dq = m.list(collections.deque([1, 2], maxlen=5))
dq.extend({'a': 1}.keys())
print(dq[:], m.dict(collections.OrderedDict([('z', 1), ('a', 2)])).copy(), m.dict(collections.Counter('aab')).copy())
"#;

#[test]
fn pythons_sync_manager_client_against_our_server() {
    let (server, port) = sync_server();
    let port = port.as_str();
    for version in VERSIONS {
        let out = Command::new(python(version)).args(["-c", PYTHON_SYNC_CLIENT, port]).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "Python {version}: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(
            stdout.lines().collect::<Vec<_>>(),
            [
                "{'a': [1, 2.5, None, True, b'x', (3, 'y')]}",
                "Empty",
                "[('j', 2), ('k', 1)] default 2",
                "['k', 'j'] ['k', 'j'] True",
                "3 3",
                "8",
                "hello",
                "True True",
                "KeyError 'missing'",
                "[0, 1, 2, 3, 4, 5, 7, 9] ['a', 'b']",
                "MemoryError",
                "[1, 1.5, 2, 3] [1.5, 2] [3, 1.5]",
                "[3, 2, 1.5, 1]",
                "8 1 2 3 True 3",
                "{'k': 1, 'j': 2} {'k': 1, 'j': 2} Value('i', 8) Namespace(x='hello')",
                "TypeError [1, 'a']",
                "[1, 2, 'a'] {'z': 1, 'a': 2} {'a': 2, 'b': 1}",
            ],
            "Python {version}"
        );
    }
    // Every proxy Python made was released when it exited.
    let client = Client::connect(server.address(), b"abc").unwrap();
    assert_eq!(client.number_of_objects().unwrap(), 0);
    server.stop().unwrap();
}

#[test]
fn a_queue_shared_by_the_server_and_used_in_process() {
    let q = Arc::new(Queue::new(2));
    assert_eq!(q.exposed().len(), 10);
    q.put(PyValue::Int(1), None).unwrap();
    q.put(PyValue::Int(2), None).unwrap();
    assert!(q.put(PyValue::Int(3), Some(std::time::Instant::now())).is_err(), "full");
}

mod typed {
    use super::*;
    use multiproc::managers::{Manager, QueueProxy};
    use multiproc::{Pool, Process, StartMethod};

    #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug, Clone)]
    struct Job {
        id: u32,
        words: Vec<String>,
    }

    fn take_one(q: QueueProxy<u32>) -> u32 {
        q.get().unwrap()
    }

    /// Python's `Manager().Queue(10)`: the manager lives while a proxy
    /// made here does (also while a child uses it), and stops when the
    /// last goes.
    #[test]
    fn a_manager_lives_while_its_proxies_do() {
        let q: QueueProxy<u32> = Manager::start().unwrap().queue(10).unwrap();
        q.put(&7).unwrap();
        let mut p = Process::new(take_one, (q.clone(),));
        p.start().unwrap();
        assert_eq!(p.join_timeout(Duration::from_secs(120)).unwrap(), Some(7));

        let m = Manager::start().unwrap();
        let pid = m.pid().expect("a manager process");
        let q: QueueProxy<u32> = m.queue(10).unwrap();
        drop(m);
        q.put(&8).unwrap();
        assert_eq!(q.get().unwrap(), 8);
        drop(q);
        // SAFETY: kill with signal 0 only asks whether the pid exists.
        assert_ne!(unsafe { libc::kill(pid, 0) }, 0, "the manager outlived its last proxy");
    }

    /// A proxy whose manager was shut down says so, by a typed error.
    #[test]
    fn a_proxy_of_a_gone_manager_says_so() {
        let m = Manager::start().unwrap();
        let pid = m.pid().expect("a manager process");
        let q: QueueProxy<u32> = m.queue(1).unwrap();
        m.shutdown().unwrap();
        let err = q.put(&1).unwrap_err();
        assert!(matches!(err, Error::ManagerGone { .. }), "{err}");
        assert!(err.to_string().contains("is gone"), "{err}");
        // SAFETY: kill with signal 0 only asks whether the pid exists.
        assert_ne!(unsafe { libc::kill(pid, 0) }, 0, "the manager process is still there");
    }

    fn double(q: QueueProxy<Job>, out: QueueProxy<Job>) {
        let mut job = q.get().unwrap();
        job.id *= 2;
        out.put(&job).unwrap();
    }

    #[test]
    fn typed_proxies_travel_to_children_under_every_method_and_are_freed() {
        let manager = Manager::start().unwrap();
        let (q, out) = (manager.queue::<Job>(0).unwrap(), manager.queue::<Job>(0).unwrap());
        for method in [StartMethod::Fork, StartMethod::Spawn, StartMethod::Forkserver] {
            let job = Job { id: 21, words: vec!["a".into(), method.to_string()] };
            q.put(&job).unwrap();
            let mut p = Process::new(double, (q.clone(), out.clone())).with_start_method(method);
            p.start().unwrap();
            p.join().unwrap();
            assert_eq!(out.get_timeout(Duration::from_secs(10)).unwrap(), Job { id: 42, ..job });
        }
        assert!(matches!(out.get_timeout(Duration::from_millis(50)), Err(Error::Empty)));
        let d = manager.dict::<String, Vec<u8>>().unwrap();
        d.insert(&"k".into(), &vec![1, 2]).unwrap();
        assert_eq!(d.get(&"k".into()).unwrap(), Some(vec![1, 2]));
        assert_eq!(d.remove(&"missing".into()).unwrap(), None);
        let l = manager.list(&[1.5f64]).unwrap();
        l.push(&2.5).unwrap();
        assert_eq!(l.to_vec().unwrap(), [1.5, 2.5]);
        let v = manager.value("i", &5i32).unwrap();
        v.set(&(v.get().unwrap() + 1)).unwrap();
        assert_eq!(v.get().unwrap(), 6);
        let ns = manager.namespace().unwrap();
        ns.set("name", "x").unwrap();
        assert_eq!(ns.get::<String>("name").unwrap(), "x");
        assert_eq!(manager.client().number_of_objects().unwrap(), 6);
        drop((q, out, d, l, v, ns));
        assert_eq!(manager.client().number_of_objects().unwrap(), 0, "the children's references were released too");
        manager.shutdown().unwrap();
    }

    /// Python's dict, list and queue methods on the typed proxies, typed
    /// proxies made from untyped ones, and what they print.
    #[test]
    fn typed_proxies_have_pythons_methods() {
        use multiproc::managers::{DictProxy, ListProxy, Proxy};
        let manager = Manager::start().unwrap();
        let d: DictProxy<String, Option<i32>> = manager.client().create("dict", vec![]).unwrap().into();
        assert!(format!("{d:?}").starts_with("DictProxy { typeid: \"dict\""), "{d:?}");
        d.insert(&"none".into(), &None).unwrap();
        assert_eq!(d.get(&"none".into()).unwrap(), Some(None), "a stored None is not a missing key");
        assert_eq!(d.get(&"zz".into()).unwrap(), None);
        d.update((0..3).map(|i| (format!("k{i}"), Some(i)))).unwrap();
        assert_eq!(d.keys().unwrap(), ["none", "k0", "k1", "k2"]);
        assert_eq!(d.values().unwrap(), [None, Some(0), Some(1), Some(2)]);
        assert!(d.contains_key(&"k1".into()).unwrap() && !d.contains_key(&"k9".into()).unwrap());
        assert_eq!(d.setdefault(&"k9".into(), &Some(9)).unwrap(), Some(9));
        assert_eq!(d.setdefault(&"k9".into(), &Some(10)).unwrap(), Some(9));
        assert_eq!(d.popitem().unwrap(), Some(("k9".into(), Some(9))));
        assert_eq!(d.pop(&"k2".into()).unwrap(), Some(2));
        let err = d.pop(&"k2".into()).unwrap_err();
        assert_eq!(err.to_string(), "the manager raised KeyError('k2')");
        assert_eq!(d.to_string(), "{'none': None, 'k0': 0, 'k1': 1}");
        d.clear().unwrap();
        assert!(d.is_empty().unwrap());
        assert_eq!(d.popitem().unwrap(), None);

        let l: ListProxy<String> = manager.list(&["b".to_string(), "c".into()]).unwrap();
        let untyped: Proxy = l.clone().into_proxy();
        let l2 = ListProxy::<String>::from_proxy(untyped);
        l.extend(&["a".into(), "b".into()]).unwrap();
        l2.insert(-100, &"z".into()).unwrap();
        assert_eq!(l.to_vec().unwrap(), ["z", "b", "c", "a", "b"]);
        l.sort().unwrap();
        assert_eq!(l.to_vec().unwrap(), ["a", "b", "b", "c", "z"]);
        l.sort_reverse().unwrap();
        assert_eq!(l.to_string(), "['z', 'c', 'b', 'b', 'a']");
        assert_eq!((l.count(&"b".into()).unwrap(), l.index(&"c".into()).unwrap()), (2, Some(1)));
        assert_eq!(l.index(&"q".into()).unwrap(), None);
        l.remove(&"b".into()).unwrap();
        assert!(l.remove(&"q".into()).is_err());
        assert_eq!(l.pop_at(0).unwrap(), "z");
        assert_eq!(l.pop().unwrap(), Some("a".into()));
        l.delete(-1).unwrap();
        l.reverse().unwrap();
        assert_eq!(l.to_vec().unwrap(), ["c"]);
        assert!(l.contains(&"c".into()).unwrap());
        let err = l.get(5).unwrap_err();
        assert_eq!(err.to_string(), "the manager raised IndexError('list index out of range')");
        assert_eq!(l.pop_at(0).unwrap(), "c");
        assert_eq!(l.pop().unwrap(), None);

        // Items Python cannot order are refused, and the list is kept.
        let mixed = manager.client().create("list", vec![PyValue::List(vec![PyValue::Int(1), s("a")])]).unwrap();
        let err = mixed.call("sort", vec![]).unwrap_err();
        assert!(err.to_string().contains("TypeError"), "{err}");
        assert_eq!(mixed.to_string(), "[1, 'a']");
        // NaN compares as Python's does (neither before nor after): no
        // error, and no panic in the server.
        let floats = vec![PyValue::Float(3.0), PyValue::Float(f64::NAN), PyValue::Float(1.0), PyValue::Int(2)];
        let nan = manager.client().create("list", vec![PyValue::List(floats)]).unwrap();
        nan.call("sort", vec![]).unwrap();
        assert_eq!(nan.call("__len__", vec![]).unwrap(), PyValue::Int(4));
        drop(nan);

        let q: QueueProxy<i32> = manager.queue(1).unwrap();
        assert!(q.empty().unwrap() && !q.full().unwrap());
        q.put_timeout(&1, Duration::from_secs(5)).unwrap();
        assert!(!q.empty().unwrap() && q.full().unwrap());
        assert!(matches!(q.put_timeout(&2, Duration::from_millis(20)), Err(Error::Full)));
        assert!(q.to_string().contains("Queue"), "{q}");
        drop((d, l, l2, mixed, q));
        assert_eq!(manager.client().number_of_objects().unwrap(), 0);
    }

    fn producer(q: QueueProxy<String>) {
        q.put(&"a".to_string()).unwrap();
    }

    fn consumer(q: QueueProxy<String>) -> String {
        q.get().unwrap()
    }

    #[test]
    fn seed_004_pool_workers_talk_through_a_manager_queue() {
        let manager = Manager::start().unwrap();
        let queue = manager.queue::<String>(10).unwrap();
        let pool = Pool::new(2).unwrap();
        let got = pool.apply_async(consumer, (queue.clone(),));
        let put = pool.apply_async(producer, (queue.clone(),));
        assert_eq!(got.get().unwrap(), "a");
        put.get().unwrap();
        pool.close();
        pool.join().unwrap();
    }

    /// Python reads what typed Rust proxies put, as plain Python data.
    #[test]
    fn python_reads_rust_values_as_python_data() {
        let server = ServerBuilder::new("127.0.0.1:0".parse().unwrap())
            .authkey(b"abc")
            .register_queue("jobs")
            .bind()
            .unwrap()
            .spawn()
            .unwrap();
        let client = Client::connect(server.address(), b"abc").unwrap();
        let q = QueueProxy::<Job>::from_proxy(client.create("jobs", vec![]).unwrap());
        q.put(&Job { id: 1, words: vec!["x".into()] }).unwrap();
        let Address::Tcp(addr) = server.address().clone() else { unreachable!() };
        let script = "import sys\nfrom multiprocessing.managers import BaseManager\nclass M(BaseManager): pass\nM.register('jobs')\nm = M(address=('127.0.0.1', int(sys.argv[1])), authkey=b'abc')\nm.connect()\nj = m.jobs().get(timeout=5)\nprint(j['id'], j['words'])\nm.jobs().put({'id': 9, 'words': ['from', 'python']})\n";
        let out = Command::new(python("3.11")).args(["-c", script, addr.rsplit_once(':').unwrap().1]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8_lossy(&out.stdout), "1 ['x']\n");
        assert_eq!(q.get().unwrap(), Job { id: 9, words: vec!["from".into(), "python".into()] });
    }

    /// A type of our own, registered by name, called by Python's AutoProxy.
    #[derive(Default)]
    struct Counter(std::sync::atomic::AtomicI64);

    impl Shared for Counter {
        fn exposed(&self) -> Vec<String> {
            vec!["add".into(), "value".into()]
        }
        fn call(
            &self,
            method: &str,
            args: &[PyValue],
            _: &[(PyValue, PyValue)],
        ) -> Result<PyValue, multiproc::managers::objects::Raise> {
            use std::sync::atomic::Ordering::SeqCst;
            match (method, args) {
                ("add", [PyValue::Int(n)]) => Ok(PyValue::Int(self.0.fetch_add(*n, SeqCst) + n)),
                ("value", []) => Ok(PyValue::Int(self.0.load(SeqCst))),
                _ => Err(multiproc::managers::objects::Raise::exception("builtins", "TypeError", Some("add(int)"))),
            }
        }
    }

    #[test]
    fn a_registered_rust_type_is_callable_from_python() {
        let server = ServerBuilder::new("127.0.0.1:0".parse().unwrap())
            .authkey(b"abc")
            .register_type("Counter", |_, _| Ok(Arc::new(Counter::default())))
            .bind()
            .unwrap()
            .spawn()
            .unwrap();
        let Address::Tcp(addr) = server.address().clone() else { unreachable!() };
        let script = "import sys\nfrom multiprocessing.managers import BaseManager\nclass M(BaseManager): pass\nM.register('Counter')\nm = M(address=('127.0.0.1', int(sys.argv[1])), authkey=b'abc')\nm.connect()\nc = m.Counter()\nc.add(2)\nprint(c.add(40), c.value())\ntry:\n    c.add('x')\nexcept TypeError as e:\n    print('TypeError', e)\n";
        let out = Command::new(python("3.12")).args(["-c", script, addr.rsplit_once(':').unwrap().1]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8_lossy(&out.stdout), "42 42\nTypeError add(int)\n");
    }
}

/// Python's proxies for the synchronisation types and Array, against our
/// server; two threads of the client, so two connections and two server
/// threads, as in Python's own use.
const PYTHON_SYNC_PRIMITIVES: &str = r#"
import sys, threading
from multiprocessing.managers import SyncManager
m = SyncManager(address=('127.0.0.1', int(sys.argv[1])), authkey=b'abc')
m.connect()
lock = m.Lock()
print(lock.acquire(), lock.acquire(False), lock.acquire(True, 0.05))
lock.release()
with lock:
    print('in lock')
r = m.RLock()
print(r.acquire(), r.acquire())
r.release(); r.release()
try:
    r.release()
except RuntimeError as e:
    print('RuntimeError', e)
s = m.Semaphore(2)
print(s.acquire(), s.acquire(), s.acquire(timeout=0.05))
b = m.BoundedSemaphore(1)
try:
    b.release()
except ValueError as e:
    print('ValueError', e)
c = m.Condition()
box = []
def waiter():
    with c:
        c.wait_for(lambda: box, timeout=10)
        box.append('woke')
t = threading.Thread(target=waiter)
t.start()
with c:
    box.append('go')
    c.notify_all()
t.join(10)
print(box)
bar = m.Barrier(2)
seen = []
t = threading.Thread(target=lambda: seen.append(bar.wait(10)))
t.start()
seen.append(bar.wait(10))
t.join(10)
print(sorted(seen), bar.parties, bar.n_waiting, bar.broken)
a = m.Array('i', [1, 2, 3])
a[0] = 10
print(len(a), a[0], a[-1], list(a[0:2]))
"#;

#[test]
fn pythons_sync_primitive_proxies_against_our_server() {
    let (server, port) = sync_server();
    for version in ["3.7", "3.13"] {
        let out = Command::new(python(version)).args(["-c", PYTHON_SYNC_PRIMITIVES, port.as_str()]).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "Python {version}: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(
            stdout.lines().collect::<Vec<_>>(),
            [
                "True False False",
                "in lock",
                "True True",
                "RuntimeError cannot release un-acquired lock",
                "True True False",
                "ValueError Semaphore released too many times",
                "['go', 'woke']",
                "[0, 1] 2 0 False",
                "3 10 3 [10, 2]",
            ],
            "Python {version}"
        );
    }
    server.stop().unwrap();
}

mod typed_sync {
    use super::*;
    use multiproc::Process;
    use multiproc::managers::{AcquirerProxy, BarrierProxy, ConditionProxy, EventProxy, Manager, ValueProxy};

    fn add_under_lock(lock: AcquirerProxy, total: ValueProxy<i64>, n: i64) {
        for _ in 0..n {
            lock.acquire().unwrap();
            total.set(&(total.get().unwrap() + 1)).unwrap();
            lock.release().unwrap();
        }
    }

    fn meet(barrier: BarrierProxy) -> usize {
        barrier.wait(Some(Duration::from_secs(60))).unwrap()
    }

    fn wait_notice(c: ConditionProxy, started: EventProxy, flag: ValueProxy<bool>) -> bool {
        c.acquire().unwrap();
        started.set().unwrap();
        while !flag.get().unwrap() {
            c.wait(Some(Duration::from_secs(60))).unwrap();
        }
        c.release().unwrap();
        true
    }

    #[test]
    fn typed_sync_proxies_work_across_processes() {
        let m = Manager::start().unwrap();
        // A lock keeps two processes' read-modify-writes whole.
        let (lock, total) = (m.lock().unwrap(), m.value("q", &0i64).unwrap());
        let mut ps: Vec<_> = (0..2).map(|_| Process::new(add_under_lock, (lock.clone(), total.clone(), 50))).collect();
        ps.iter_mut().for_each(|p| p.start().unwrap());
        ps.iter_mut().for_each(|p| p.join().unwrap());
        assert_eq!(total.get().unwrap(), 100);

        // A barrier of three parties: two children and us.
        let barrier = m.barrier(3).unwrap();
        let mut ps: Vec<_> = (0..2).map(|_| Process::new(meet, (barrier.clone(),))).collect();
        ps.iter_mut().for_each(|p| p.start().unwrap());
        let mut seen = vec![barrier.wait(Some(Duration::from_secs(60))).unwrap()];
        seen.extend(ps.iter_mut().map(|p| p.join().unwrap()));
        seen.sort();
        assert_eq!(seen, [0, 1, 2]);
        assert_eq!(barrier.parties().unwrap(), 3);
        barrier.abort().unwrap();
        assert!(matches!(barrier.wait(None), Err(Error::BrokenBarrier)));

        // A condition: the child waits until we set the flag and notify.
        let (c, started, flag) = (m.condition().unwrap(), m.event().unwrap(), m.value("b", &false).unwrap());
        let mut p = Process::new(wait_notice, (c.clone(), started.clone(), flag.clone()));
        p.start().unwrap();
        assert!(started.wait(Some(Duration::from_secs(60))).unwrap());
        c.acquire().unwrap();
        flag.set(&true).unwrap();
        c.notify_all().unwrap();
        c.release().unwrap();
        assert!(p.join().unwrap());

        // An RLock is owned by the proxy (connection) that took it.
        let r = m.rlock().unwrap();
        let other = r.clone();
        r.acquire().unwrap();
        r.acquire().unwrap();
        assert!(matches!(other.release(), Err(Error::NotOwner)));
        assert!(!other.acquire_timeout(Duration::from_millis(20)).unwrap());
        r.release().unwrap();
        r.release().unwrap();
        assert!(other.acquire_timeout(Duration::from_secs(5)).unwrap());

        let sem = m.bounded_semaphore(1).unwrap();
        assert!(sem.acquire_timeout(Duration::ZERO).unwrap());
        assert!(!sem.acquire_timeout(Duration::from_millis(20)).unwrap());
        sem.release().unwrap();
        assert!(matches!(sem.release(), Err(Error::RemoteException { class, .. }) if class == "builtins.ValueError"));

        let a = m.array("d", &[0.5f64, 1.5]).unwrap();
        a.set(-1, &2.5).unwrap();
        assert_eq!((a.len().unwrap(), a.to_vec().unwrap()), (2, vec![0.5, 2.5]));
        m.shutdown().unwrap();
    }
}

mod own_types_and_dead_clients {
    use super::*;
    use multiproc::Process;
    use multiproc::managers::objects::Methods;

    #[derive(Default)]
    struct Tally {
        names: Vec<String>,
    }

    #[test]
    fn a_type_with_serde_methods_is_callable_from_python() {
        let server = ServerBuilder::new("127.0.0.1:0".parse().unwrap())
            .authkey(b"abc")
            .register_type("Tally", |_, _| {
                Ok(Arc::new(
                    Methods::new(Tally::default())
                        .method("add", |t: &mut Tally, (name,): (String,)| {
                            t.names.push(name);
                            t.names.len()
                        })
                        .method("names", |t: &mut Tally, (): ()| t.names.clone()),
                ))
            })
            .bind()
            .unwrap()
            .spawn()
            .unwrap();
        let Address::Tcp(addr) = server.address().clone() else { unreachable!() };
        let script = "import sys\nfrom multiprocessing.managers import BaseManager\nclass M(BaseManager): pass\nM.register('Tally')\nm = M(address=('127.0.0.1', int(sys.argv[1])), authkey=b'abc')\nm.connect()\nt = m.Tally()\nt.add('ann')\nprint(t.add('bob'), t.names())\ntry:\n    t.add(3)\nexcept TypeError:\n    print('TypeError')\n";
        let out = Command::new(python("3.11")).args(["-c", script, addr.rsplit_once(':').unwrap().1]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8_lossy(&out.stdout), "2 ['ann', 'bob']\nTypeError\n");
        server.stop().unwrap();
    }

    fn block_in_get(address: String) {
        let client = Client::connect(&address.parse().unwrap(), b"abc").unwrap();
        let q = client.create("shared", vec![]).unwrap();
        let _ = q.call("get", vec![]);
    }

    #[test]
    fn a_client_killed_in_the_middle_of_a_call_leaves_the_server_working() {
        let shared = Arc::new(Queue::new(0));
        let server = ServerBuilder::new("127.0.0.1:0".parse().unwrap())
            .authkey(b"abc")
            .sync_types()
            .register_shared("shared", shared.clone())
            .bind()
            .unwrap()
            .spawn()
            .unwrap();
        let mut p = Process::new(block_in_get, (server.address().to_string(),));
        p.start().unwrap();
        // Wait (bounded) until its get is parked in the server: the queue
        // has a reference from it, and the get has begun.
        let client = Client::connect(server.address(), b"abc").unwrap();
        let until = std::time::Instant::now() + Duration::from_secs(60);
        while client.number_of_objects().unwrap() == 0 {
            assert!(std::time::Instant::now() < until, "the child never created its proxy");
            std::thread::yield_now();
        }
        p.kill().unwrap();
        assert!(p.join().is_err());
        // Others go on: new connections, new objects, calls on the same
        // shared queue.
        let d = client.create("dict", vec![]).unwrap();
        d.call("__setitem__", vec![PyValue::Int(1), PyValue::Int(2)]).unwrap();
        let q = client.create("shared", vec![]).unwrap();
        for i in 0..3 {
            q.call("put", vec![PyValue::Int(i)]).unwrap();
        }
        // The dead client's parked get may take one item (Python's server
        // loses it the same way); the rest arrive.
        let mut got = Vec::new();
        while let Some(v) = q.get_timeout(Duration::from_millis(200)).unwrap() {
            got.push(v);
        }
        assert!(got.len() >= 2, "{got:?}");
        server.stop().unwrap();
    }
}

/// Pickles Python writes at protocols 2 to 5 read back as what Python
/// meant: our `str()` of each equals Python's `repr()` of the original.
#[test]
fn pickles_of_every_protocol_from_real_pythons_are_read() {
    let script = r#"
import pickle, sys
objs = [
    None, True, False, 0, 255, 65535, -1, 2**31, 2**63 - 1, -2**63, 2**100, 1.5, -0.25,
    'plain', "it's", 'h\u00e9llo \u4e16\u754c', b'', b'\x00\xffbytes', bytearray(b'ba'),
    (), (1,), (1, 2), (1, 2, 3), (1, 2, 3, 4), [], [1, [2, [3]]], {}, {'k': [1, 2.5, None], 'j': (True,)},
    list(range(1500)), {i: str(i) for i in range(1200)}, {1, 2}, frozenset({3}), set(),
]
for proto in range(2, int(sys.argv[1]) + 1):
    for o in objs:
        print(proto, pickle.dumps(o, protocol=proto).hex(), repr(o))
"#;
    for (version, top) in [("3.7", "4"), ("3.13", "5")] {
        let out = Command::new(python(version)).args(["-c", script, top]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let mut read = 0;
        for line in String::from_utf8(out.stdout).unwrap().lines() {
            let mut parts = line.splitn(3, ' ');
            let (proto, hex, repr) = (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap());
            let bytes: Vec<u8> =
                (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect();
            let v = multiproc::pickle::loads(&bytes)
                .unwrap_or_else(|e| panic!("Python {version} protocol {proto}: {e} for {repr}"));
            let ours = PyValue::Tuple(vec![v]).to_string();
            assert_eq!(ours, format!("({repr},)"), "Python {version} protocol {proto}");
            read += 1;
        }
        assert!(read >= 90, "{read}");
    }
}

/// Every value of a broad corpus (`tests/data/pickle_corpus.py`), put on a
/// queue of our server by a real Python and got back, is what Python's own
/// `SyncManager` server hands back for it (same type, equal), for every
/// pickle protocol that Python writes.
#[test]
fn python_values_come_back_from_our_server_as_from_pythons() {
    let (server, port) = sync_server();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/pickle_corpus.py");
    let mut diffs = Vec::new();
    for version in VERSIONS {
        let out = Command::new(python(version)).args([script, port.as_str()]).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "Python {version}: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        assert!(stdout.lines().count() > 100, "Python {version}: {stdout}");
        eprintln!("Python {version}: {}", String::from_utf8_lossy(&out.stderr));
        // What Python cannot pickle itself is not ours to read.
        let ours = |l: &&str| !l.ends_with(": OK") && !l.contains("Python itself fails");
        diffs.extend(stdout.lines().filter(ours).map(|l| format!("Python {version}, protocol {l}")));
    }
    server.stop().unwrap();
    assert!(diffs.is_empty(), "{} differences:\n{}", diffs.len(), diffs.join("\n"));
}

/// The same corpus read by a Rust client as `PyValue`s and put back as it
/// read them: Python gets back what its own server would hand back.
#[test]
fn python_values_read_and_written_back_by_a_rust_client_lose_nothing() {
    let (server, port) = sync_server_with(&["inbox", "outbox"]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/pickle_corpus.py");
    let client = Client::connect(server.address(), b"abc").unwrap();
    let (inbox, outbox) = (client.create("inbox", vec![]).unwrap(), client.create("outbox", vec![]).unwrap());
    for version in ["3.7", "3.13"] {
        let python = Command::new(python(version))
            .args([script, port.as_str(), "relay"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let PyValue::Int(n) = inbox.get_timeout(Duration::from_secs(120)).unwrap().expect("a count") else {
            panic!("no count")
        };
        for _ in 0..n {
            let v = inbox.get_timeout(Duration::from_secs(120)).unwrap().expect("a value");
            outbox.call("put", vec![v]).unwrap();
        }
        let out = python.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "Python {version}: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(stdout.lines().count() as i64, n, "Python {version}: {stdout}");
        let diffs: Vec<&str> = stdout.lines().filter(|l| !l.ends_with(": OK")).collect();
        assert!(diffs.is_empty(), "Python {version}:\n{}", diffs.join("\n"));
    }
    drop((inbox, outbox, client));
    server.stop().unwrap();
}

/// Waits (bounded) until `pid` sleeps reading its socket: its request is
/// out, and its call is parked in the server.
fn wait_until_reading(pid: u32) {
    let until = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let wchan = std::fs::read_to_string(format!("/proc/{pid}/wchan")).unwrap_or_default();
        if wchan.contains("wait_woken") || wchan.contains("sk_wait") {
            return;
        }
        assert!(std::time::Instant::now() < until, "{pid} never waited for its answer (wchan {wchan:?})");
        std::thread::yield_now();
    }
}

/// A Python client that parks `call` on the shared object `typeid` and is
/// SIGKILLed while the call waits in our server. `warm` is a call that
/// returns at once, made first so that the proxy's connection is up (its
/// handshake is a wait too).
fn park_and_kill(port: &str, typeid: &str, warm: &str, call: &str) {
    let script = format!(
        "import sys\nfrom multiprocessing.managers import SyncManager\nSyncManager.register('{typeid}')\nm = \
         SyncManager(address=('127.0.0.1', int(sys.argv[1])), authkey=b'abc')\nm.connect()\nx = \
         m.{typeid}()\nx.{warm}\nprint('parking', flush=True)\nx.{call}\n"
    );
    let mut python = Command::new(python("3.12")).args(["-c", &script, port]).stdout(Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    BufReader::new(python.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "parking");
    wait_until_reading(python.id());
    python.kill().unwrap();
    python.wait().unwrap();
}

/// Our server sharing one object under `typeid`, and its port.
fn server_sharing(
    typeid: &str,
    object: Arc<dyn multiproc::managers::objects::Shared>,
) -> (multiproc::managers::RunningServer, String) {
    let server = ServerBuilder::new("127.0.0.1:0".parse().unwrap())
        .authkey(b"abc")
        .register_shared(typeid, object)
        .bind()
        .unwrap()
        .spawn()
        .unwrap();
    let Address::Tcp(addr) = server.address().clone() else { unreachable!() };
    let port = addr.rsplit_once(':').unwrap().1.to_owned();
    (server, port)
}

/// 1,000 items put on `jobs` after a parked client was killed, taken by
/// another client: every one, once, in order.
fn every_item_reaches_the_living(server: &multiproc::managers::RunningServer, jobs: &multiproc::managers::Proxy) {
    let taker = Client::connect(server.address(), b"abc").unwrap().create("jobs", vec![]).unwrap();
    for i in 0..1000 {
        jobs.call("put", vec![PyValue::Int(i)]).unwrap();
    }
    for i in 0..1000 {
        assert_eq!(taker.get_timeout(Duration::from_secs(120)).unwrap(), Some(PyValue::Int(i)), "item {i}");
    }
    assert_eq!(jobs.call("qsize", vec![]).unwrap(), PyValue::Int(0), "an item twice");
}

/// `holder` releases the lock `gate`; the next acquirer gets it (not a
/// killed client's parked acquire).
fn the_next_acquirer_gets_it(server: &multiproc::managers::RunningServer, holder: &multiproc::managers::Proxy) {
    holder.call("release", vec![]).unwrap();
    let next = Client::connect(server.address(), b"abc").unwrap().create("gate", vec![]).unwrap();
    let got = next.call("acquire", vec![PyValue::Bool(true), PyValue::Int(120)]).unwrap();
    assert_eq!(got, PyValue::Bool(true), "the dead client's parked acquire took the lock");
    next.call("release", vec![]).unwrap();
}

/// A client killed while its `get(timeout=30)` waits takes nothing: every
/// item put afterwards reaches the living, once, in order.
#[test]
fn a_client_killed_in_a_parked_get_costs_no_item() {
    let (server, port) = sync_server_with(&["jobs"]);
    park_and_kill(&port, "jobs", "qsize()", "get(timeout=30)");
    let client = Client::connect(server.address(), b"abc").unwrap();
    let jobs = client.create("jobs", vec![]).unwrap();
    every_item_reaches_the_living(&server, &jobs);
    drop((jobs, client));
    server.stop().unwrap();
}

/// A client killed while its `acquire()` waits for a held lock does not
/// take it: the next acquirer gets it when the holder releases.
#[test]
fn a_client_killed_in_a_parked_acquire_takes_no_lock() {
    let (server, port) = server_sharing("gate", Arc::new(multiproc::managers::objects::Permits::lock()));
    let holder = Client::connect(server.address(), b"abc").unwrap().create("gate", vec![]).unwrap();
    assert_eq!(holder.call("acquire", vec![]).unwrap(), PyValue::Bool(true));
    park_and_kill(&port, "gate", "acquire(False)", "acquire()");
    the_next_acquirer_gets_it(&server, &holder);
    drop(holder);
    server.stop().unwrap();
}

/// A client killed while it waits on a condition does not take the
/// condition's lock back when notified: the next acquirers get it.
#[test]
fn a_client_killed_in_a_condition_wait_takes_no_lock() {
    let (server, port) = server_sharing("cond", Arc::new(multiproc::managers::objects::Condition::default()));
    park_and_kill(&port, "cond", "acquire()", "wait()");
    let notifier = Client::connect(server.address(), b"abc").unwrap().create("cond", vec![]).unwrap();
    assert_eq!(notifier.call("acquire", vec![]).unwrap(), PyValue::Bool(true));
    notifier.call("notify_all", vec![]).unwrap();
    notifier.call("release", vec![]).unwrap();
    let next = Client::connect(server.address(), b"abc").unwrap().create("cond", vec![]).unwrap();
    let got = next.call("acquire", vec![PyValue::Bool(true), PyValue::Int(120)]).unwrap();
    assert_eq!(got, PyValue::Bool(true), "the dead client's wait took the lock back");
    next.call("release", vec![]).unwrap();
    drop((notifier, next));
    server.stop().unwrap();
}

const PYTHON_SHUTDOWN_CLIENT: &str = r#"
import queue, sys, threading
from multiprocessing.managers import SyncManager
m = SyncManager(address=('127.0.0.1', int(sys.argv[1])), authkey=b'abc')
m.connect()
q, parked = m.Queue(), m.Queue()
q.put(1)
def wait():
    try:
        parked.get(timeout=30)
    except queue.ShutDown:
        print('woken: ShutDown', flush=True)
t = threading.Thread(target=wait)
t.start()
parked.shutdown()
t.join()
q.shutdown()
try:
    q.put(2)
except queue.ShutDown:
    print('put: ShutDown')
print(q.get())
try:
    q.get()
except queue.ShutDown:
    print('get: ShutDown')
j = m.JoinableQueue()
j.put(1)
j.put(2)
j.shutdown(immediate=True)
j.join()
print('joined', j.qsize())
"#;

/// Python 3.13's `Queue.shutdown` is served: puts refused, gets until
/// empty, waiting gets woken, `immediate` drops what is left.
#[test]
fn python_3_13_queue_shutdown_is_served() {
    let (server, port) = sync_server();
    let out = Command::new(python("3.13")).args(["-c", PYTHON_SHUTDOWN_CLIENT, &port]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        ["woken: ShutDown", "put: ShutDown", "1", "get: ShutDown", "joined 0"]
    );
    server.stop().unwrap();
}

/// A Rust client (a child process with a proxy) parked in `method` and
/// SIGKILLed there, as `park_and_kill` does with Python clients.
mod rust_clients_killed {
    use super::*;
    use multiproc::managers::Proxy;
    use multiproc::{Connection, Pipe, Process};

    /// Calls `warm` (which returns at once: the connection is up), says
    /// so, then parks in `method`.
    fn park(proxy: Proxy, warm: (String, Vec<i64>), method: String, args: Vec<i64>, ready: Connection) {
        proxy.call(&warm.0, warm.1.into_iter().map(PyValue::Int).collect()).unwrap();
        ready.send("parking").unwrap();
        let args = args.into_iter().map(PyValue::Int).collect();
        let _ = proxy.call(&method, args);
        unreachable!("killed while parked");
    }

    fn park_and_kill_rust(proxy: &Proxy, warm: (&str, Vec<i64>), method: &str, args: Vec<i64>) {
        let (ours, theirs) = Pipe(true).unwrap();
        let warm = (warm.0.to_string(), warm.1);
        let mut p = Process::new(park, (proxy.clone(), warm, method.to_string(), args, theirs)).with_daemon(true);
        p.start().unwrap();
        assert_eq!(ours.recv::<String>().unwrap(), "parking");
        wait_until_reading(p.pid().unwrap() as u32);
        p.kill().unwrap();
        assert!(p.join().is_err());
    }

    #[test]
    fn a_rust_client_killed_in_a_parked_get_costs_no_item() {
        let (server, _port) = sync_server_with(&["jobs"]);
        let client = Client::connect(server.address(), b"abc").unwrap();
        let jobs = client.create("jobs", vec![]).unwrap();
        // get(True, 30): block, timeout 30 s.
        park_and_kill_rust(&jobs, ("qsize", vec![]), "get", vec![1, 30]);
        every_item_reaches_the_living(&server, &jobs);
        drop((jobs, client));
        server.stop().unwrap();
    }

    #[test]
    fn a_rust_client_killed_in_a_parked_acquire_takes_no_lock() {
        let (server, _port) = server_sharing("gate", Arc::new(multiproc::managers::objects::Permits::lock()));
        let holder = Client::connect(server.address(), b"abc").unwrap().create("gate", vec![]).unwrap();
        assert_eq!(holder.call("acquire", vec![]).unwrap(), PyValue::Bool(true));
        let parker = Client::connect(server.address(), b"abc").unwrap().create("gate", vec![]).unwrap();
        // acquire(False) returns at once (the holder has the lock).
        park_and_kill_rust(&parker, ("acquire", vec![0]), "acquire", vec![]);
        the_next_acquirer_gets_it(&server, &holder);
        drop((holder, parker));
        server.stop().unwrap();
    }
}
