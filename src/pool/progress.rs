//! `PoolBuilder::progress_bar` (feature `progress`): an indicatif bar over
//! every map, starmap and imap of a pool, driven by the same reports as
//! `on_progress`.

use std::sync::{Arc, Mutex, PoisonError};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The bar of the call in progress: a report whose `done` does not follow
/// the last one is a new call, which gets a new bar.
pub(crate) struct Bars {
    current: Option<(ProgressBar, usize)>,
    target: fn() -> ProgressDrawTarget,
}

impl Bars {
    pub(crate) fn new(target: fn() -> ProgressDrawTarget) -> Bars {
        Bars { current: None, target }
    }

    pub(crate) fn report(&mut self, done: usize, total: Option<usize>) {
        if self.current.as_ref().is_none_or(|(_, last)| done <= *last) {
            if let Some((bar, _)) = self.current.take() {
                bar.abandon();
            }
            let bar = ProgressBar::with_draw_target(total.map(|t| t as u64), (self.target)());
            let style = match total {
                // tqdm's look: bar, count, elapsed<remaining, rate.
                Some(_) => {
                    ProgressStyle::with_template("{wide_bar} {pos}/{len} [{elapsed_precise}<{eta_precise}, {per_sec}]")
                }
                None => ProgressStyle::with_template("{spinner} {pos} [{elapsed_precise}, {per_sec}]"),
            };
            bar.set_style(style.expect("a valid template"));
            self.current = Some((bar, 0));
        }
        let (bar, last) = self.current.as_mut().expect("set above");
        bar.set_position(done as u64);
        *last = done;
        if total == Some(done) {
            bar.finish();
            self.current = None;
        }
    }

    /// The bar of the call in progress, if any.
    #[cfg(test)]
    fn bar(&self) -> Option<&ProgressBar> {
        self.current.as_ref().map(|(b, _)| b)
    }
}

/// The report function `progress_bar` installs: bars on stderr, drawn only
/// when it is a terminal.
pub(crate) fn reporter() -> super::Progress {
    let bars = Arc::new(Mutex::new(Bars::new(ProgressDrawTarget::stderr)));
    Arc::new(move |done, total| bars.lock().unwrap_or_else(PoisonError::into_inner).report(done, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_bar_per_call_finished_at_its_total() {
        let mut bars = Bars::new(ProgressDrawTarget::hidden);
        bars.report(1, Some(3));
        let first = bars.bar().unwrap().clone();
        assert_eq!((first.position(), first.length()), (1, Some(3)));
        bars.report(3, Some(3));
        assert!(first.is_finished() && bars.bar().is_none());
        // An imap of unknown size: a spinner that counts.
        bars.report(1, None);
        bars.report(2, None);
        let second = bars.bar().unwrap().clone();
        assert_eq!((second.position(), second.length()), (2, None));
        // A new call before the old one ended: the old bar is left, a new one starts.
        bars.report(1, Some(10));
        assert!(second.is_finished());
        assert_eq!(bars.bar().unwrap().length(), Some(10));
    }
}
