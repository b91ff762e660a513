//! One timer for a sequence of bounded steps (a request read, its handler,
//! its reply): each step gets its own limit, but the timer is made only
//! when a step has to wait, and then moved from step to step. A call whose
//! steps are all ready at once (the common case of a small request) makes
//! no timer at all; a tokio timer per step costs a runtime handle, a clock
//! read and a wheel registration each.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// A lazily made timer shared by successive steps.
#[derive(Default)]
pub(crate) struct Deadline {
    timer: Option<Pin<Box<Sleep>>>,
}

impl Deadline {
    /// No timer yet.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Runs `fut` for at most `limit` from now: `None` if the time ran out
    /// first (`fut` is then dropped).
    pub(crate) fn within<F: Future>(&mut self, limit: Duration, fut: F) -> Until<'_, F> {
        self.until(Instant::now() + limit, fut)
    }

    /// Runs `fut` until `at` at the latest: `None` if the time ran out first.
    pub(crate) fn until<F: Future>(&mut self, at: Instant, fut: F) -> Until<'_, F> {
        Until {
            fut,
            at,
            timer: &mut self.timer,
        }
    }

    /// Whether a timer was made (some step had to wait).
    #[cfg(test)]
    fn made(&self) -> bool {
        self.timer.is_some()
    }
}

pin_project_lite::pin_project! {
    /// A step bounded by a [`Deadline`] (a future of the step's output, or
    /// `None` once its time ran out). Kept small: a request's task holds one
    /// per step.
    pub(crate) struct Until<'a, F> {
        #[pin]
        fut: F,
        at: Instant,
        timer: &'a mut Option<Pin<Box<Sleep>>>,
    }
}

impl<F: Future> Future for Until<'_, F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(out) = this.fut.poll(cx) {
            return Poll::Ready(Some(out));
        }
        let at = *this.at;
        let timer = match this.timer {
            Some(timer) => {
                if timer.deadline() != at {
                    timer.as_mut().reset(at);
                }
                timer
            }
            None => this.timer.insert(Box::pin(tokio::time::sleep_until(at))),
        };
        timer.as_mut().poll(cx).map(|()| None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[tokio::test]
    async fn each_step_has_its_own_limit_and_ready_steps_make_no_timer() {
        let mut deadline = Deadline::new();
        assert_eq!(deadline.within(MS * 100, async { 1 }).await, Some(1));
        assert!(!deadline.made(), "a ready step made a timer");
        // A step that waits longer than its limit is cut off at the limit.
        let t = Instant::now();
        let slow = tokio::time::sleep(MS * 5_000);
        assert_eq!(deadline.within(MS * 50, slow).await, None);
        let took = t.elapsed();
        assert!(took >= MS * 50 && took < MS * 2_000, "{took:?}");
        assert!(deadline.made());
        // The next step gets its own limit from its start, on the same
        // timer: a step shorter than it finishes.
        let wait = tokio::time::sleep(MS * 100);
        assert_eq!(deadline.within(MS * 3_000, wait).await, Some(()));
        let t = Instant::now();
        let never = std::future::pending::<()>();
        assert_eq!(deadline.within(MS * 50, never).await, None);
        let took = t.elapsed();
        assert!(took >= MS * 50 && took < MS * 2_000, "{took:?}");
    }
}
