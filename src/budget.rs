//! The node-wide budget of buffered request bodies: every byte a buffered route
//! holds in memory is reserved here first, against a total (a semaphore: a
//! reader waits for room, until its deadline) and against a share per source
//! address and prefix (refused at once: one network cannot take the whole
//! budget, however many identities it uses).

use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::{Error, Result};
use crate::source::SourceCounts;

/// Largest single reservation step (the semaphore counts in `u32`).
const MAX_STEP: usize = u32::MAX as usize;

pub(crate) struct BodyBudget {
    total: Arc<Semaphore>,
    per_source: Mutex<SourceCounts>,
}

impl BodyBudget {
    /// `total` bytes in all, `per_addr` per source address, `per_prefix` per
    /// source prefix.
    pub(crate) fn new(total: usize, per_addr: usize, per_prefix: usize) -> Arc<Self> {
        Arc::new(BodyBudget {
            total: Arc::new(Semaphore::new(total.min(Semaphore::MAX_PERMITS))),
            per_source: Mutex::new(SourceCounts::new(
                per_addr as u64,
                per_prefix as u64,
                100_000,
            )),
        })
    }

    /// Bytes not reserved right now.
    #[cfg(test)]
    pub(crate) fn available(&self) -> usize {
        self.total.available_permits()
    }

    /// An empty reservation for one body from `source`.
    pub(crate) fn reservation(self: &Arc<Self>, source: IpAddr) -> Reservation {
        Reservation {
            budget: self.clone(),
            source,
            held: 0,
            permit: None,
        }
    }
}

/// Bytes one body holds in the budget; given back on drop.
pub(crate) struct Reservation {
    budget: Arc<BodyBudget>,
    source: IpAddr,
    held: usize,
    permit: Option<OwnedSemaphorePermit>,
}

impl Reservation {
    /// Reserves `n` more bytes: refused at once ([`Error::Busy`]) over the
    /// source's share, waiting for the total until `deadline`.
    pub(crate) async fn grow(&mut self, n: usize, deadline: tokio::time::Instant) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        let step = u32::try_from(n.min(MAX_STEP)).unwrap_or(u32::MAX);
        if !self
            .budget
            .per_source
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .try_add(self.source, step as u64)
        {
            return Err(Error::Busy(
                "this source's share of buffered bodies is in use",
            ));
        }
        // Room now (the common case) costs no timer; waiting for room is
        // boxed, so a request's task is not sized for the rare wait.
        let acquired = match self.budget.total.clone().try_acquire_many_owned(step) {
            Ok(permit) => Some(permit),
            Err(_) => Box::pin(wait_for(self.budget.total.clone(), step, deadline)).await,
        };
        match acquired {
            Some(permit) => {
                self.held += step as usize;
                match &mut self.permit {
                    Some(p) => p.merge(permit),
                    None => self.permit = Some(permit),
                }
                Ok(())
            }
            None => {
                self.budget
                    .per_source
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(self.source, step as u64);
                Err(Error::Busy(
                    "the node's budget of buffered bodies is in use",
                ))
            }
        }
    }
}

/// `step` permits of `total`, if they come before `deadline`.
async fn wait_for(
    total: Arc<Semaphore>,
    step: u32,
    deadline: tokio::time::Instant,
) -> Option<OwnedSemaphorePermit> {
    match tokio::time::timeout_at(deadline, total.acquire_many_owned(step)).await {
        Ok(Ok(permit)) => Some(permit),
        _ => None,
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.held > 0 {
            self.budget
                .per_source
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(self.source, self.held as u64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn soon() -> tokio::time::Instant {
        tokio::time::Instant::now() + Duration::from_millis(50)
    }

    #[tokio::test]
    async fn a_source_gets_its_share_and_no_more() {
        let budget = BodyBudget::new(1000, 300, 500);
        let a: IpAddr = "198.51.100.1".parse().unwrap();
        let mut r = budget.reservation(a);
        r.grow(300, soon()).await.unwrap();
        assert!(matches!(r.grow(1, soon()).await, Err(Error::Busy(_))));
        // Another address of the same /24 gets the rest of the prefix's share.
        let mut r2 = budget.reservation("198.51.100.2".parse().unwrap());
        r2.grow(200, soon()).await.unwrap();
        assert!(r2.grow(1, soon()).await.is_err());
        // Another network is not affected.
        let mut r3 = budget.reservation("203.0.113.1".parse().unwrap());
        r3.grow(300, soon()).await.unwrap();
        assert_eq!(budget.available(), 200);
        drop((r, r2));
        assert_eq!(budget.available(), 700);
        let mut again = budget.reservation(a);
        again.grow(300, soon()).await.unwrap();
    }

    #[tokio::test]
    async fn the_total_waits_until_the_deadline_then_refuses() {
        let budget = BodyBudget::new(100, 100, 100);
        let mut full = budget.reservation("10.0.0.1".parse().unwrap());
        full.grow(100, soon()).await.unwrap();
        let mut other = budget.reservation("10.9.0.1".parse().unwrap());
        assert!(matches!(other.grow(10, soon()).await, Err(Error::Busy(_))));
        // Room that frees up while waiting is taken.
        let waiter = tokio::spawn(async move {
            let mut r = budget.reservation("10.8.0.1".parse().unwrap());
            r.grow(50, tokio::time::Instant::now() + Duration::from_secs(5))
                .await
                .map(|_| r.held)
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(full);
        assert_eq!(waiter.await.unwrap().unwrap(), 50);
    }
}
