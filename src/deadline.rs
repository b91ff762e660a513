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
    pub(crate) async fn within<F: Future>(&mut self, limit: Duration, fut: F) -> Option<F::Output> {
        let at = Instant::now() + limit;
        self.until(at, fut).await
    }

    /// Runs `fut` until `at` at the latest: `None` if the time ran out first.
    pub(crate) async fn until<F: Future>(&mut self, at: Instant, fut: F) -> Option<F::Output> {
        let mut fut = std::pin::pin!(fut);
        std::future::poll_fn(|cx| {
            if let Poll::Ready(out) = fut.as_mut().poll(cx) {
                return Poll::Ready(Some(out));
            }
            let timer = match &mut self.timer {
                Some(timer) => {
                    if timer.deadline() != at {
                        timer.as_mut().reset(at);
                    }
                    timer
                }
                None => self.timer.insert(Box::pin(tokio::time::sleep_until(at))),
            };
            timer.as_mut().poll(cx).map(|()| None)
        })
        .await
    }

    /// Whether a timer was made (some step had to wait).
    #[cfg(test)]
    fn made(&self) -> bool {
        self.timer.is_some()
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
