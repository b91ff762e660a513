//! Task ownership: every task a node starts (accept loop, connection and
//! stream servers, upkeep, discovery, punches, relay pumps, service tasks)
//! runs on the node's [`Tasks`], which cancels them all on shutdown (or when the
//! last handle is dropped) and lets shutdown wait until they have ended.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let tasks = butter::tasks::Tasks::new();
//! let forever = tasks.spawn(std::future::pending::<()>());
//! assert_eq!(tasks.len(), 1);
//! assert!(tasks.shut_down(std::time::Duration::from_secs(1)).await);
//! assert_eq!(forever.await.unwrap(), None); // cancelled, not finished
//! assert_eq!(tasks.len(), 0);
//! # }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::task::AtomicWaker;
use slab::Slab;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The owner of a set of tasks: spawn on it, cancel and await them at once.
/// Cheap to clone (clones share the tasks).
#[derive(Clone, Default, Debug)]
pub struct Tasks {
    tracker: TaskTracker,
    cancel: CancellationToken,
    stop: Arc<Stop>,
}

/// How [`Tasks::spawn`]'s tasks learn of cancellation: a flag each poll
/// reads without a lock, and a waker slot per running task, all woken on
/// cancel. (tokio-util's `run_until_cancelled` takes the token's mutex and
/// its `Notify`'s mutex on every poll of every task: locks shared by all of
/// a node's threads, taken on the path of every request a connection's task
/// serves.)
#[derive(Default, Debug)]
struct Stop {
    stopped: AtomicBool,
    waiting: Mutex<Slab<Arc<AtomicWaker>>>,
}

impl Stop {
    fn waiting(&self) -> std::sync::MutexGuard<'_, Slab<Arc<AtomicWaker>>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        for (_, waker) in self.waiting().iter() {
            waker.wake();
        }
    }
}

pin_project_lite::pin_project! {
    /// `fut`, ended (output `None`) at its next poll once its owner stopped.
    struct UntilStopped<F> {
        #[pin]
        fut: F,
        stop: Arc<Stop>,
        waker: Arc<AtomicWaker>,
        key: usize,
    }

    impl<F> PinnedDrop for UntilStopped<F> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            this.stop.waiting().try_remove(*this.key);
        }
    }
}

impl<F> UntilStopped<F> {
    fn new(stop: Arc<Stop>, fut: F) -> Self {
        let waker = Arc::new(AtomicWaker::new());
        let key = stop.waiting().insert(waker.clone());
        UntilStopped {
            fut,
            stop,
            waker,
            key,
        }
    }
}

impl<F: Future> Future for UntilStopped<F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        // Registered before the flag is read: a stop after the read wakes
        // this task (registering the same waker again costs no clone).
        this.waker.register(cx.waker());
        if this.stop.stopped.load(Ordering::Acquire) {
            return Poll::Ready(None);
        }
        this.fut.poll(cx).map(Some)
    }
}

impl Tasks {
    /// An owner with no tasks yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Spawns `fut`, dropped at its next await point once the owner is
    /// cancelled (the handle then yields `None`).
    pub fn spawn<F>(&self, fut: F) -> JoinHandle<Option<F::Output>>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker
            .spawn(UntilStopped::new(self.stop.clone(), fut))
    }

    /// Spawns a task that watches [`Tasks::cancelled`] itself to finish
    /// cleanly (e.g. remove a port mapping): it is awaited on shutdown, not
    /// dropped. It must end soon after cancellation.
    pub fn spawn_graceful<F>(&self, fut: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker.spawn(fut)
    }

    /// Completes once the owner is cancelled.
    pub fn cancelled(&self) -> tokio_util::sync::WaitForCancellationFutureOwned {
        self.cancel.clone().cancelled_owned()
    }

    /// A token cancelled with the owner, for code that takes one
    /// (cancelling it does not cancel the owner).
    pub fn token(&self) -> CancellationToken {
        self.cancel.child_token()
    }

    /// Whether the owner was cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.stop.stopped.load(Ordering::Acquire)
    }

    /// Cancels every task and refuses new ones (they end at once). Does not wait.
    pub fn cancel(&self) {
        self.stop.stop();
        self.cancel.cancel();
        self.tracker.close();
    }

    /// Cancels every task and waits, at most `grace`, until all have ended;
    /// false if some were still running then.
    pub async fn shut_down(&self, grace: Duration) -> bool {
        self.cancel();
        tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_ok()
    }

    /// Tasks still running.
    pub fn len(&self) -> usize {
        self.tracker.len()
    }

    /// Whether no task is running.
    pub fn is_empty(&self) -> bool {
        self.tracker.is_empty()
    }

    /// A group of tasks owned by one task of this owner (e.g. a connection's
    /// request streams, owned by the task serving the connection): spawning
    /// on it costs no cancellation registration, the group's tasks are
    /// aborted when the group is dropped (its owning task ended or was
    /// cancelled), and shutdown waits for them as for any other task.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let tasks = butter::tasks::Tasks::new();
    /// let owner = tasks.clone();
    /// tasks.spawn(async move {
    ///     let mut group = owner.group();
    ///     group.spawn(std::future::pending::<()>());
    ///     std::future::pending::<()>().await // the group lives as long as this task
    /// });
    /// assert_eq!(tasks.len(), 1);
    /// tokio::task::yield_now().await;
    /// assert_eq!(tasks.len(), 2);
    /// assert!(tasks.shut_down(std::time::Duration::from_secs(1)).await);
    /// assert!(tasks.is_empty());
    /// # }
    /// ```
    pub fn group(&self) -> TaskGroup {
        TaskGroup {
            tracker: self.tracker.clone(),
            running: Vec::new(),
            prune_at: GROUP_PRUNE,
            inline_paused: None,
            inline_busy: Duration::ZERO,
        }
    }
}

/// The group's list of handles is pruned of finished tasks when it reaches
/// this length (then at twice what is still running).
const GROUP_PRUNE: usize = 64;

/// Work done in place ([`TaskGroup::run`]) for longer than this...
const INLINE_SLOW: Duration = Duration::from_micros(500);
/// ...makes the group give the next pieces tasks of their own for this long.
const INLINE_PAUSE: Duration = Duration::from_millis(100);
/// Work done in place between two yields of the calling task.
const INLINE_SLICE: Duration = Duration::from_micros(200);

/// Tasks owned by one task: see [`Tasks::group`].
#[derive(Debug)]
pub struct TaskGroup {
    tracker: TaskTracker,
    running: Vec<JoinHandle<()>>,
    prune_at: usize,
    /// Until when [`TaskGroup::run`] spawns at once.
    inline_paused: Option<Instant>,
    /// Work done in place since the calling task last yielded.
    inline_busy: Duration,
}

impl TaskGroup {
    /// Spawns `fut` in the group (on the runtime's threads, like
    /// `tokio::spawn`).
    pub fn spawn<F>(&mut self, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        if self.running.len() >= self.prune_at {
            self.running.retain(|h| !h.is_finished());
            self.prune_at = (self.running.len() * 2).max(GROUP_PRUNE);
        }
        self.running
            .push(tokio::spawn(self.tracker.track_future(fut)));
    }

    /// Runs `fut` on the calling task as far as it gets without waiting,
    /// and from there on a task of the group if it has to wait: work that
    /// is ready at once (a small request) costs no task, no wake-up of
    /// another thread. `spare` keeps the allocation of a future that
    /// finished at once, for the next one.
    ///
    /// The calling task does the ready part's work itself: it should call
    /// this for short pieces of work and let the runtime preempt it
    /// (e.g. `tokio::task::coop::consume_budget`) between them.
    pub async fn run<F>(&mut self, spare: &mut Option<Pin<Box<F>>>, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let mut fut = match spare.take() {
            Some(mut done) => {
                done.set(fut);
                done
            }
            None => Box::pin(fut),
        };
        if self
            .inline_paused
            .is_some_and(|until| Instant::now() < until)
        {
            return self.spawn(fut);
        }
        let start = Instant::now();
        let polled = futures_util::poll!(fut.as_mut());
        let took = start.elapsed();
        // Work that kept the calling task busy (a handler computing before
        // it answers) makes the next pieces go to tasks of their own for a
        // while, in parallel, instead of queueing behind one another.
        self.inline_paused = (took > INLINE_SLOW).then(|| Instant::now() + INLINE_PAUSE);
        match polled {
            Poll::Ready(()) => *spare = Some(fut),
            Poll::Pending => self.spawn(fut),
        }
        // Tasks woken meanwhile on this thread (one this work spawned, say)
        // run after a slice of work in place, not after a whole burst.
        self.inline_busy += took;
        if self.inline_busy > INLINE_SLICE {
            self.inline_busy = Duration::ZERO;
            tokio::task::yield_now().await;
        }
    }

    /// Tasks of the group not known to have ended.
    pub fn len(&self) -> usize {
        self.running.iter().filter(|h| !h.is_finished()).count()
    }

    /// Whether every task of the group has ended.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits until every task of the group has ended.
    pub async fn wait(&mut self) {
        for handle in self.running.iter_mut() {
            let _ = handle.await;
        }
        self.running.clear();
    }
}

impl Drop for TaskGroup {
    fn drop(&mut self) {
        for handle in &self.running {
            handle.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn shut_down_cancels_and_awaits_every_task() {
        let tasks = Tasks::new();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let waiting = tasks.spawn(async move {
            let _keep = tx;
            std::future::pending::<()>().await
        });
        let done = tasks.spawn(async { 7 });
        assert_eq!(done.await.unwrap(), Some(7));
        assert!(tasks.shut_down(Duration::from_secs(1)).await);
        assert_eq!(waiting.await.unwrap(), None);
        // The cancelled future was dropped: what it held is released.
        assert!(rx.await.is_err());
        assert!(tasks.is_empty());
    }

    #[tokio::test]
    async fn a_task_spawned_after_cancel_ends_without_running() {
        let tasks = Tasks::new();
        tasks.cancel();
        let ran = Arc::new(AtomicBool::new(false));
        let flag = ran.clone();
        let late = tasks.spawn(async move { flag.store(true, Ordering::SeqCst) });
        assert_eq!(late.await.unwrap(), None);
        let pending = tasks.spawn(std::future::pending::<()>());
        assert_eq!(pending.await.unwrap(), None);
        assert!(!ran.load(Ordering::SeqCst));
        assert!(tasks.is_cancelled());
    }

    #[tokio::test]
    async fn an_ended_task_gives_back_its_waker_slot() {
        let tasks = Tasks::new();
        let waiting = tasks.spawn(std::future::pending::<()>());
        for i in 0..1_000 {
            assert_eq!(tasks.spawn(async move { i }).await.unwrap(), Some(i));
        }
        // Only the task still running holds a slot.
        assert_eq!(tasks.stop.waiting().len(), 1);
        waiting.abort();
        let _ = waiting.await;
        assert_eq!(tasks.stop.waiting().len(), 0);
    }

    #[tokio::test]
    async fn cancelling_the_handed_out_token_leaves_the_owner_running() {
        let tasks = Tasks::new();
        let token = tasks.token();
        token.cancel();
        assert!(!tasks.is_cancelled());
        assert_eq!(tasks.spawn(async { 1 }).await.unwrap(), Some(1));
        let token = tasks.token();
        tasks.cancel();
        assert!(token.is_cancelled());
    }

    #[tokio::test]
    async fn a_graceful_task_finishes_its_cleanup() {
        let tasks = Tasks::new();
        let cancelled = tasks.cancelled();
        let cleanup = tasks.spawn_graceful(async move {
            cancelled.await;
            tokio::task::yield_now().await;
            "removed"
        });
        assert!(tasks.shut_down(Duration::from_secs(1)).await);
        assert_eq!(cleanup.await.unwrap(), "removed");
    }

    #[tokio::test]
    async fn shut_down_reports_a_task_that_does_not_end() {
        let tasks = Tasks::new();
        tasks.spawn_graceful(tokio::time::sleep(Duration::from_secs(30)));
        assert!(!tasks.shut_down(Duration::from_millis(20)).await);
        assert_eq!(tasks.len(), 1);
    }

    #[tokio::test]
    async fn a_group_is_aborted_with_its_owner_and_awaited_on_shutdown() {
        let tasks = Tasks::new();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (started_tx, started) = tokio::sync::oneshot::channel::<()>();
        let owner = tasks.clone();
        tasks.spawn(async move {
            let mut group = owner.group();
            group.spawn(async move {
                let _keep = tx;
                let _ = started_tx.send(());
                std::future::pending::<()>().await
            });
            std::future::pending::<()>().await
        });
        started.await.unwrap();
        assert_eq!(tasks.len(), 2);
        assert!(tasks.shut_down(Duration::from_secs(1)).await);
        // The group's task was dropped with its owner, and shutdown waited.
        assert!(rx.await.is_err());
        assert!(tasks.is_empty());
    }

    #[tokio::test]
    async fn a_group_waits_for_its_tasks_and_stays_small() {
        let tasks = Tasks::new();
        let mut group = tasks.group();
        let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        for _ in 0..1000 {
            let done = done.clone();
            group.spawn(async move {
                tokio::task::yield_now().await;
                done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            });
            tokio::task::yield_now().await;
        }
        // Finished tasks' handles are dropped as the group grows.
        assert!(group.running.len() < 200, "{}", group.running.len());
        group.wait().await;
        assert_eq!(done.load(std::sync::atomic::Ordering::Relaxed), 1000);
        assert!(group.is_empty());
        assert!(tasks.is_empty());
    }

    #[tokio::test]
    async fn ready_work_runs_in_place_and_waiting_work_on_a_task() {
        let tasks = Tasks::new();
        let mut group = tasks.group();
        let mut spare = None;
        let caller = std::thread::current().id();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (ran_tx, mut ran) = tokio::sync::mpsc::unbounded_channel();
        let mut rx = Some(rx);
        for i in 0..3 {
            let ran_tx = ran_tx.clone();
            let wait = if i == 1 { rx.take() } else { None };
            group
                .run(&mut spare, async move {
                    if let Some(wait) = wait {
                        let _ = wait.await;
                    }
                    let _ = ran_tx.send((i, std::thread::current().id()));
                })
                .await;
            // Work that did not wait finished in place, and its box is kept.
            assert_eq!(spare.is_some(), i != 1, "step {i}");
        }
        assert_eq!(ran.try_recv().unwrap(), (0, caller));
        assert_eq!(ran.try_recv().unwrap().0, 2);
        // The waiting one went on in the group, and finishes there.
        assert_eq!(group.len(), 1);
        tx.send(()).unwrap();
        group.wait().await;
        assert_eq!(ran.recv().await.unwrap().0, 1);
        assert!(tasks.is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn after_slow_work_in_place_the_next_pieces_get_tasks() {
        let tasks = Tasks::new();
        let mut group = tasks.group();
        let mut spare = None;
        let caller = std::thread::current().id();
        let (ran_tx, mut ran) = tokio::sync::mpsc::unbounded_channel();
        for i in 0..3 {
            let ran_tx = ran_tx.clone();
            group
                .run(&mut spare, async move {
                    if i == 0 {
                        // Busy, without waiting: a handler computing.
                        std::thread::sleep(INLINE_SLOW * 4);
                    }
                    let _ = ran_tx.send((i, std::thread::current().id()));
                })
                .await;
        }
        assert_eq!(ran.recv().await.unwrap(), (0, caller));
        // The next ones were spawned, though ready at once.
        assert_eq!(group.running.len(), 2);
        group.wait().await;
        let mut later: Vec<_> = [ran.recv().await.unwrap(), ran.recv().await.unwrap()]
            .iter()
            .map(|r| r.0)
            .collect();
        later.sort();
        assert_eq!(later, vec![1, 2]);
        assert!(group.is_empty());
    }

    #[tokio::test]
    async fn work_in_place_lets_other_tasks_run_between_slices() {
        let tasks = Tasks::new();
        let mut group = tasks.group();
        let mut spare = None;
        let ran = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let probe = ran.clone();
        // On this (single) thread, only a yield of the loop below lets it run.
        tokio::spawn(async move { probe.store(true, std::sync::atomic::Ordering::SeqCst) });
        let mut pieces_before = None;
        for i in 0..20 {
            // Ready at once, but busy for a while (under the slow mark).
            group
                .run(&mut spare, async { std::thread::sleep(INLINE_SLICE / 4) })
                .await;
            if pieces_before.is_none() && ran.load(std::sync::atomic::Ordering::SeqCst) {
                pieces_before = Some(i);
            }
        }
        let before = pieces_before.expect("the other task never ran during the burst");
        assert!(before <= 5, "it waited for {before} pieces");
    }

    #[tokio::test]
    async fn dropping_a_group_aborts_its_tasks() {
        let tasks = Tasks::new();
        let mut group = tasks.group();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        group.spawn(async move {
            let _keep = tx;
            std::future::pending::<()>().await
        });
        drop(group);
        assert!(rx.await.is_err());
        assert!(tasks.shut_down(Duration::from_secs(1)).await);
    }
}
