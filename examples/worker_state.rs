//! Something heavy loaded once per worker, not once per task (mpire's
//! `worker_state`; Python users write a global set by the initializer).
//!
//! Python:
//! ```python
//! model = None
//! def load():
//!     global model
//!     model = load_model()          # slow: once per worker
//! def predict(x):
//!     return model.score(x)
//! with Pool(2, initializer=load) as pool:
//!     print(pool.map(predict, range(8)))
//! ```
//! Here the state is a value the worker owns, handed to each task by
//! `&mut`: no global, and a task that wants it from a pool without one
//! gets an error that says so.

use std::time::{Duration, Instant};

use multiproc::{Pool, WithState};

/// A "model": a table that takes a while to build.
struct Model {
    weights: Vec<u64>,
    built_by: u32,
}

fn load() -> Model {
    std::thread::sleep(Duration::from_millis(200));
    Model { weights: (1..=1000).collect(), built_by: std::process::id() }
}

fn predict(model: &mut Model, x: u64) -> (u64, u32) {
    (model.weights.iter().map(|w| w * (x + 1) % 97).sum(), model.built_by)
}

#[multiproc::main]
pub fn main() {
    let start = Instant::now();
    let pool = Pool::builder().processes(2).worker_state(load).build().expect("a pool");
    let scores = pool.map_chunksize(WithState::new(predict), 0..8u64, 1).expect("scores");
    let mut loaders: Vec<u32> = scores.iter().map(|(_, pid)| *pid).collect();
    loaders.sort();
    loaders.dedup();
    println!("scores: {:?}", scores.iter().map(|(s, _)| *s).collect::<Vec<_>>());
    println!("models loaded: {} (one per worker, not one per task)", loaders.len());
    println!("took {:?} (loading 8 times would take 1.6 s)", start.elapsed());
    assert!(loaders.len() <= 2);
}
