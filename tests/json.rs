//! `Json<T>`: serde types that need a self-describing format travel through
//! a Process, a Pool and a Queue; without the wrapper, the error names the
//! type and the way out.

mod common;

use std::collections::BTreeMap;

use multiproc::{Error, Json, Pool, Process, Queue};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Flattened {
    id: u32,
    #[serde(flatten)]
    extra: BTreeMap<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
enum Untagged {
    Number(i64),
    Words(Vec<String>),
    Record { name: String, tags: Vec<String> },
}

type Shapes = (Json<Value>, Json<Flattened>, Json<Vec<Untagged>>);

fn shapes() -> Shapes {
    (
        Json(json!({ "a": [1, 2.5, "x", null, { "deep": true }], "b": { "c": [] } })),
        Json(Flattened { id: 7, extra: BTreeMap::from([("colour".into(), json!("red")), ("n".into(), json!(3))]) }),
        Json(vec![
            Untagged::Number(-4),
            Untagged::Words(vec!["a".into(), "b".into()]),
            Untagged::Record { name: "r".into(), tags: vec!["t".into()] },
        ]),
    )
}

/// Each shape back, changed in a way that shows the child read it.
fn touch(v: Json<Value>, f: Json<Flattened>, u: Json<Vec<Untagged>>) -> Shapes {
    let mut v = v;
    v["seen"] = json!(true);
    let mut f = f;
    let id = f.id;
    f.extra.insert("seen".into(), json!(id));
    let mut u = u;
    let len = u.len() as i64;
    u.push(Untagged::Number(len));
    (v, f, u)
}

fn expected() -> Shapes {
    let (v, f, u) = shapes();
    touch(v, f, u)
}

#[test]
fn every_shape_through_a_process() {
    common::each_method(|m| {
        let (v, f, u) = shapes();
        let mut p = Process::new(touch, (v, f, u)).with_start_method(m);
        p.start().unwrap();
        assert_eq!(common::join(&mut p).unwrap(), expected(), "{m:?}");
    });
}

#[test]
fn every_shape_through_a_pool() {
    let pool = Pool::new(2).unwrap();
    let results = pool.starmap(touch, (0..5).map(|_| shapes())).unwrap();
    assert!(results.iter().all(|r| *r == expected()));
    let values: Vec<Json<Value>> =
        pool.map(|v: Json<Value>| Json(v.0["a"][4].clone()), [Json(json!({ "a": [0, 0, 0, 0, "x"] }))]).unwrap();
    assert_eq!(values, [Json(json!("x"))]);
}

#[test]
fn every_shape_through_a_queue() {
    let q: Queue<Shapes> = Queue::unbounded().unwrap();
    fn put_back(q: Queue<Shapes>) {
        let (v, f, u) = q.get().unwrap();
        q.put(&touch(v, f, u)).unwrap();
    }
    q.put(&shapes()).unwrap();
    let mut p = Process::new(put_back, (q.clone(),));
    p.start().unwrap();
    common::join(&mut p).unwrap();
    assert_eq!(q.get().unwrap(), expected());
}

fn keys(v: Value) -> usize {
    v.as_object().map_or(0, |o| o.len())
}

#[test]
fn without_json_the_error_names_the_type_and_the_fix() {
    let pool = Pool::new(1).unwrap();
    let e = pool.apply(keys, (json!({ "a": 1 }),)).unwrap_err();
    let Error::Decode { message, .. } = e.root() else { panic!("{e:?}") };
    assert!(message.contains("serde_json::value::Value"), "{message}");
    assert!(message.contains("multiproc::Json"), "{message}");
    // Flatten fails already when it is written.
    let q: Queue<Flattened> = Queue::unbounded().unwrap();
    let e = q.put(&shapes().1.0).unwrap_err();
    assert!(e.to_string().contains("Flattened") && e.to_string().contains("multiproc::Json"), "{e}");
}
