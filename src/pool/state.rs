//! Per-worker state (mpire's `worker_state`): made once in each worker by
//! [`PoolBuilder::worker_state`](crate::PoolBuilder::worker_state) and
//! handed to every task by `&mut` through [`WithState`].
//!
//! The state lives in the worker process only (it never travels, so it
//! needs no serde): a model loaded once, a database connection, a cache.
//! Tasks reach it through the worker's own thread.

use std::any::Any;
use std::cell::RefCell;
use std::marker::PhantomData;

use crate::process::Target;

thread_local! {
    static STATE: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
}

/// Names the types `F` and `S` without owning either: zero-sized, `Copy`,
/// `Send` and `'static` whatever they are.
type Marker<F, S> = PhantomData<(fn() -> F, fn() -> S)>;

/// Makes a worker's state with `F` and keeps it for the worker's tasks.
pub(crate) struct MakeState<F, S>(Marker<F, S>);

impl<F, S> Clone for MakeState<F, S> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<F, S> Copy for MakeState<F, S> {}

impl<F, S> Target<()> for MakeState<F, S>
where
    F: Target<(), Output = S>,
    S: 'static,
{
    type Output = ();

    fn call(self, (): ()) {
        let state = crate::process::conjure::<F>().call(());
        STATE.with(|s| *s.borrow_mut() = Some(Box::new(state)));
    }
}

/// A task function that takes the worker's state first: `f(&mut state,
/// args...)`. Wrap it so for any pool call (`apply`, `map`, `imap`,
/// `starmap`, ...); the pool must have been built with
/// [`PoolBuilder::worker_state`](crate::PoolBuilder::worker_state) making
/// an `S`. Without one, or with another type, the task panics with a
/// message that says so.
///
/// ```
/// # #[multiproc::main] fn main() {
/// use multiproc::{Pool, WithState};
///
/// struct Model { loaded: u32, calls: u32 }
/// fn load() -> Model { Model { loaded: 42, calls: 0 } }
/// fn predict(model: &mut Model, x: u32) -> (u32, u32) {
///     model.calls += 1;
///     (x + model.loaded, model.calls)
/// }
///
/// let pool = Pool::builder().processes(1).worker_state(load).build().unwrap();
/// let out = pool.map(WithState::new(predict), [1, 2, 3]).unwrap();
/// assert_eq!(out, [(43, 1), (44, 2), (45, 3)], "one model, loaded once, for every call");
/// # }
/// ```
pub struct WithState<F, S>(Marker<F, S>);

impl<F, S> Clone for WithState<F, S> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<F, S> Copy for WithState<F, S> {}

impl<F, S> std::fmt::Debug for WithState<F, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WithState<{}>", std::any::type_name::<S>())
    }
}

impl<F: Copy + 'static, S> WithState<F, S> {
    /// Wraps `f` (a `fn` item or a non-capturing closure).
    pub fn new(_f: F) -> Self {
        const { assert!(size_of::<F>() == 0, "a task target must not capture anything: use a fn item") };
        WithState(PhantomData)
    }
}

/// Runs `f` with the worker's state.
fn with_state<S: 'static, R>(f: impl FnOnce(&mut S) -> R) -> R {
    STATE.with(|cell| {
        let mut slot = cell.borrow_mut();
        let state = slot.as_mut().and_then(|s| s.downcast_mut::<S>()).unwrap_or_else(|| {
            panic!(
                "this worker has no state of type {}: build the pool with PoolBuilder::worker_state(f) where f \
                 returns it",
                std::any::type_name::<S>()
            )
        });
        f(state)
    })
}

macro_rules! impl_with_state {
    ($($arg:ident),*) => {
        impl<Func, S, Ret, $($arg,)*> Target<($($arg,)*)> for WithState<Func, S>
        where
            Func: Fn(&mut S, $($arg),*) -> Ret + Copy + Send + 'static,
            S: 'static,
        {
            type Output = Ret;
            #[allow(non_snake_case)]
            fn call(self, ($($arg,)*): ($($arg,)*)) -> Ret {
                let f = crate::process::conjure::<Func>();
                with_state(|state: &mut S| f(state, $($arg),*))
            }
        }
    };
}

impl_with_state!();
impl_with_state!(A);
impl_with_state!(A, B);
impl_with_state!(A, B, C);
impl_with_state!(A, B, C, D);
