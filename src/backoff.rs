//! Retry and pacing schedules as plain values: no timer inside, the caller
//! sleeps for what they return. One [`Backoff`] serves every loop that waits
//! longer after each failure (introducer registration, relayed → direct
//! upgrades, LAN pings, STUN retransmissions); [`Adaptive`] is the liveness
//! interval that shortens under churn and stretches back when calm.
//!
//! ```
//! use std::time::Duration;
//! use butter::backoff::Backoff;
//!
//! let mut retry = Backoff::new(Duration::from_millis(500), Duration::from_secs(30)).without_jitter();
//! let mut rng = rand::rng();
//! assert_eq!(retry.next(&mut rng), Duration::from_millis(500));
//! assert_eq!(retry.next(&mut rng), Duration::from_secs(1));
//! retry.reset(); // it worked
//! assert_eq!(retry.next(&mut rng), Duration::from_millis(500));
//! ```

use std::time::Duration;

use rand::{Rng, RngExt};

/// Exponential backoff: `initial`, then `factor` times longer each time up
/// to `max`, each wait spread by ± `jitter` (a fraction) so that many nodes
/// do not retry in step.
#[derive(Debug, Clone, PartialEq)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    factor: f64,
    jitter: f64,
    current: Duration,
}

impl Backoff {
    /// Doubling from `initial` up to `max`, ± 20 %.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max: max.max(initial),
            factor: 2.0,
            jitter: 0.2,
            current: initial,
        }
    }

    /// Grows by `factor` (≥ 1) instead of doubling.
    pub fn with_factor(mut self, factor: f64) -> Self {
        self.factor = factor.max(1.0);
        self
    }

    /// Spreads each wait by ± `fraction` (0 to 0.9).
    pub fn with_jitter(mut self, fraction: f64) -> Self {
        self.jitter = fraction.clamp(0.0, 0.9);
        self
    }

    /// Exact waits (retransmission timers, tests).
    pub fn without_jitter(self) -> Self {
        self.with_jitter(0.0)
    }

    /// The next wait; the one after grows.
    pub fn next<R: Rng + ?Sized>(&mut self, rng: &mut R) -> Duration {
        let wait = self.current;
        self.current = self.current.mul_f64(self.factor).min(self.max);
        spread(wait, self.jitter, rng)
    }

    /// The next wait without jitter, without consuming it.
    pub fn peek(&self) -> Duration {
        self.current
    }

    /// Back to `initial` (after a success).
    pub fn reset(&mut self) {
        self.current = self.initial;
    }

    /// Changes the ceiling (the current wait shrinks to it if need be).
    pub fn set_max(&mut self, max: Duration) {
        self.max = max.max(self.initial);
        self.current = self.current.min(self.max);
    }
}

/// `wait` ± `fraction`.
pub fn spread<R: Rng + ?Sized>(wait: Duration, fraction: f64, rng: &mut R) -> Duration {
    if fraction <= 0.0 || wait.is_zero() {
        return wait;
    }
    wait.mul_f64(rng.random_range(1.0 - fraction..1.0 + fraction))
}

/// An interval that halves when something went wrong (down to `floor`) and
/// stretches by a quarter when all went well (up to `base`): frequent checks
/// under churn, few when calm.
#[derive(Debug, Clone, PartialEq)]
pub struct Adaptive {
    base: Duration,
    floor: Duration,
    current: Duration,
}

impl Adaptive {
    /// Starts at `base`; never below a quarter of it.
    pub fn new(base: Duration) -> Self {
        Adaptive {
            base,
            floor: base / 4,
            current: base,
        }
    }

    /// The interval now.
    pub fn current(&self) -> Duration {
        self.current
    }

    /// Records a round's outcome and returns the next interval.
    pub fn after(&mut self, trouble: bool) -> Duration {
        self.current = if trouble {
            (self.current / 2).max(self.floor)
        } else {
            self.current.mul_f64(1.25).min(self.base)
        };
        self.current
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn rng() -> rand::rngs::StdRng {
        rand::rngs::StdRng::seed_from_u64(7)
    }

    #[test]
    fn doubles_up_to_the_ceiling_and_resets() {
        let mut b =
            Backoff::new(Duration::from_millis(500), Duration::from_secs(3)).without_jitter();
        let mut r = rng();
        let waits: Vec<u64> = (0..6).map(|_| b.next(&mut r).as_millis() as u64).collect();
        assert_eq!(waits, [500, 1000, 2000, 3000, 3000, 3000]);
        b.reset();
        assert_eq!(b.next(&mut r), Duration::from_millis(500));
    }

    #[test]
    fn jitter_stays_within_its_fraction_and_varies() {
        let mut r = rng();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            let mut b = Backoff::new(Duration::from_secs(10), Duration::from_secs(10));
            let w = b.next(&mut r);
            assert!(
                w >= Duration::from_secs(8) && w <= Duration::from_secs(12),
                "{w:?}"
            );
            seen.insert(w.as_millis());
        }
        assert!(
            seen.len() > 100,
            "jitter spreads retries: {} distinct",
            seen.len()
        );
    }

    #[test]
    fn a_lower_ceiling_caps_the_current_wait() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60)).without_jitter();
        let mut r = rng();
        for _ in 0..5 {
            b.next(&mut r);
        }
        b.set_max(Duration::from_secs(5));
        assert_eq!(b.next(&mut r), Duration::from_secs(5));
        // A ceiling below the start is the start.
        b.set_max(Duration::ZERO);
        assert_eq!(b.next(&mut r), Duration::from_secs(1));
    }

    #[test]
    fn a_factor_below_one_does_not_shrink() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(9))
            .with_factor(0.5)
            .without_jitter();
        let mut r = rng();
        assert_eq!(b.next(&mut r), b.next(&mut r));
    }

    #[test]
    fn adaptive_interval_halves_under_trouble_and_recovers() {
        let base = Duration::from_secs(8);
        let mut a = Adaptive::new(base);
        assert_eq!(a.after(true), Duration::from_secs(4));
        assert_eq!(a.after(true), Duration::from_secs(2));
        assert_eq!(a.after(true), Duration::from_secs(2), "floor: a quarter");
        assert_eq!(a.after(false), Duration::from_millis(2500));
        let calm: Vec<Duration> = (0..10).map(|_| a.after(false)).collect();
        assert_eq!(*calm.last().unwrap(), base, "back to base, never above");
    }
}
