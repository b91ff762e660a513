//! A byte-rate pacer for relay tunnels. (Request rate limits per source are
//! the library's [`crate::ratelimit::RateLimiter`].)

use std::time::{Duration, Instant};

/// Paces a byte stream to `rate` bytes per second (with one second of burst).
#[derive(Debug)]
pub struct Pacer {
    rate: f64,
    tokens: f64,
    at: Instant,
}

impl Pacer {
    /// A pacer for `rate` bytes per second.
    pub fn new(rate: u64) -> Self {
        Pacer {
            rate: rate.max(1) as f64,
            tokens: rate.max(1) as f64,
            at: Instant::now(),
        }
    }

    /// How long to wait before sending `bytes` more.
    pub fn delay_for(&mut self, bytes: usize, now: Instant) -> Duration {
        self.tokens = (self.tokens
            + now.saturating_duration_since(self.at).as_secs_f64() * self.rate)
            .min(self.rate);
        self.at = now;
        self.tokens -= bytes as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pacer_holds_the_rate() {
        let mut p = Pacer::new(1000);
        let t0 = Instant::now();
        assert_eq!(p.delay_for(1000, t0), Duration::ZERO);
        let d = p.delay_for(500, t0);
        assert!(
            d >= Duration::from_millis(499) && d <= Duration::from_millis(501),
            "{d:?}"
        );
    }
}
