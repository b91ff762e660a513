//! How long a peer has to answer a liveness check, counted in time this
//! process was running. A check's timer that fires well after its deadline
//! means this process was starved (a busy machine, a paused VM, a blocked
//! runtime thread): the peer's answer may be sitting unread in the socket,
//! and declaring the peer dead would be this node's fault. Such a check is
//! extended by the time lost (a few times at most, so a node starved for
//! good still decides), and only a check that ran its course on time says
//! "no answer".
//!
//! False deaths are not free: a neighbour removed on a missed check closes
//! its connection (in-flight calls and transfers fail) and starts repair,
//! whose traffic loads the machine further.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// Extensions granted to one check at most.
const MAX_EXTENSIONS: u32 = 3;

/// Lateness of a timer that still counts as on time: a quarter of the
/// check's timeout, at least this much (a busy runtime is a few
/// milliseconds late now and then).
const LATE_FLOOR: Duration = Duration::from_millis(20);

/// The peer did not answer in time (the process was running all along).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NoAnswer;

/// Whether a timer due at `deadline` that fired at `fired` was late enough
/// that the process was not running for a real part of a `timeout`-long
/// wait.
pub(crate) fn starved(deadline: Instant, fired: Instant, timeout: Duration) -> bool {
    fired.saturating_duration_since(deadline) > (timeout / 4).max(LATE_FLOOR)
}

/// Runs `fut` for `timeout` of this process's running time: like
/// `tokio::time::timeout`, except that a timer that fired late (see
/// [`starved`]) gives `fut` the time lost again, at most
/// [`MAX_EXTENSIONS`] times, each at most `timeout` long.
pub(crate) async fn within<F: Future>(timeout: Duration, fut: F) -> Result<F::Output, NoAnswer> {
    tokio::pin!(fut);
    let mut deadline = Instant::now() + timeout;
    let mut extensions = 0;
    loop {
        match tokio::time::timeout_at(deadline, &mut fut).await {
            Ok(out) => return Ok(out),
            Err(_) => {
                let fired = Instant::now();
                if extensions == MAX_EXTENSIONS || !starved(deadline, fired, timeout) {
                    return Err(NoAnswer);
                }
                extensions += 1;
                let lost = fired.saturating_duration_since(deadline);
                tracing::debug!(
                    ?lost,
                    ?timeout,
                    "a check's timer fired late: this process was starved; the peer gets the time again"
                );
                deadline = fired + lost.min(timeout);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_real_part_of_the_wait_counts_as_starved() {
        let t = Instant::now();
        let timeout = Duration::from_millis(200);
        assert!(!starved(t, t, timeout));
        assert!(!starved(t, t + Duration::from_millis(50), timeout));
        assert!(starved(t, t + Duration::from_millis(51), timeout));
        // Short checks: a few milliseconds late is on time.
        let short = Duration::from_millis(10);
        assert!(!starved(t, t + Duration::from_millis(20), short));
        assert!(starved(t, t + Duration::from_millis(21), short));
        // Early (a clock read before the deadline) is on time.
        assert!(!starved(t + Duration::from_secs(1), t, timeout));
    }

    #[tokio::test]
    async fn a_silent_peer_gets_no_answer_after_the_timeout() {
        let start = Instant::now();
        let r = within(Duration::from_millis(200), std::future::pending::<()>()).await;
        assert_eq!(r, Err(NoAnswer));
        let took = start.elapsed();
        // Extended only if this test process was starved meanwhile.
        assert!(
            took >= Duration::from_millis(200) && took < Duration::from_secs(2),
            "{took:?}"
        );
        let r = within(Duration::from_millis(200), async { 7 }).await;
        assert_eq!(r, Ok(7));
    }

    /// The answer arrives while this process is blocked: the check's timer
    /// and the task that would deliver the answer both fire at once when
    /// the process runs again, the check's first. A plain timeout says "no
    /// answer"; the check given its time again hears it.
    #[tokio::test(flavor = "current_thread")]
    async fn an_answer_that_arrived_while_the_process_was_starved_is_heard() {
        for _ in 0..3 {
            let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
            let answer_at = Instant::now() + Duration::from_millis(150);
            // Delivers the answer (as the endpoint driver would hand over
            // a reply that came in).
            tokio::spawn(async move {
                tokio::time::sleep_until(answer_at).await;
                let _ = tx.send(42);
            });
            let check = tokio::spawn(within(Duration::from_millis(100), rx));
            // The process is starved: nothing runs for 400 ms.
            tokio::spawn(async { std::thread::sleep(Duration::from_millis(400)) });
            let heard = check.await.unwrap();
            assert_eq!(heard.map(|r| r.unwrap()), Ok(42));
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_process_starved_for_good_still_decides() {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let hog = tokio::spawn({
            let stop = stop.clone();
            async move {
                // Blocks the thread in 300 ms slices, yielding in between.
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(300));
                    tokio::task::yield_now().await;
                }
            }
        });
        let start = std::time::Instant::now();
        let r = within(Duration::from_millis(100), std::future::pending::<()>()).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        hog.await.unwrap();
        assert_eq!(r, Err(NoAnswer));
        // At most the timeout and three extensions, each late by a slice.
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "{:?}",
            start.elapsed()
        );
    }
}
