//! Request rate limits per source: governor's keyed GCRA limiter, keyed by
//! source address (an IPv6 host by its /64, see [`address_key`]), in a bounded
//! map of sources.
//!
//! ```
//! let limiter = butter::ratelimit::RateLimiter::new(10.0, 2.0, 1000);
//! let ip = "198.51.100.1".parse().unwrap();
//! assert!(limiter.allow(ip) && limiter.allow(ip));
//! assert!(!limiter.allow(ip), "the burst is spent");
//! ```

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::HashMapStateStore;
use governor::Quota;

use crate::source::address_key;

/// Request rate limits by source. The map of sources is bounded: when full,
/// sources whose bucket has refilled (idle ones) are dropped; if none has, new
/// sources are refused until some do, so a flood from many addresses cannot
/// grow memory. One IPv6 host picks its addresses from a whole /64, so IPv6
/// sources count by /64.
pub struct RateLimiter<C: Clock = DefaultClock> {
    limiter:
        governor::RateLimiter<IpAddr, HashMapStateStore<IpAddr>, C, NoOpMiddleware<C::Instant>>,
    max_sources: usize,
}

impl<C: Clock> std::fmt::Debug for RateLimiter<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("sources", &self.limiter.len())
            .field("max_sources", &self.max_sources)
            .finish()
    }
}

fn quota(rate: f64, burst: f64) -> Quota {
    let period = Duration::from_secs_f64(1.0 / rate.max(1e-3));
    let burst =
        NonZeroU32::new(burst.max(1.0).min(u32::MAX as f64) as u32).unwrap_or(NonZeroU32::MIN);
    Quota::with_period(period)
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MAX))
        .allow_burst(burst)
}

impl RateLimiter {
    /// `rate` requests per second sustained, `burst` at once, `max_sources` tracked.
    pub fn new(rate: f64, burst: f64, max_sources: usize) -> Self {
        Self::with_clock(rate, burst, max_sources, DefaultClock::default())
    }
}

impl<C: Clock> RateLimiter<C> {
    /// The same, on a given clock (tests use a fake one).
    pub fn with_clock(rate: f64, burst: f64, max_sources: usize, clock: C) -> Self {
        RateLimiter {
            limiter: governor::RateLimiter::new(
                quota(rate, burst),
                HashMapStateStore::default(),
                clock,
            ),
            max_sources,
        }
    }

    /// Whether a request from `source` may go ahead now.
    pub fn allow(&self, source: IpAddr) -> bool {
        if self.limiter.len() >= self.max_sources {
            self.limiter.retain_recent();
            if self.limiter.len() >= self.max_sources {
                return false;
            }
        }
        self.limiter.check_key(&address_key(source)).is_ok()
    }

    /// Sources tracked now.
    pub fn sources(&self) -> usize {
        self.limiter.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    fn limiter(
        rate: f64,
        burst: f64,
        max: usize,
    ) -> (RateLimiter<FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        (
            RateLimiter::with_clock(rate, burst, max, clock.clone()),
            clock,
        )
    }

    #[test]
    fn a_source_gets_its_burst_then_its_rate() {
        let (r, clock) = limiter(10.0, 5.0, 100);
        let ip: IpAddr = "198.51.100.1".parse().unwrap();
        assert_eq!((0..10).filter(|_| r.allow(ip)).count(), 5);
        // 0.5 s later: five more tokens.
        clock.advance(Duration::from_millis(500));
        assert_eq!((0..10).filter(|_| r.allow(ip)).count(), 5);
        // Another source is not affected.
        assert!(r.allow("198.51.100.2".parse().unwrap()));
    }

    #[test]
    fn an_ipv6_host_cannot_dodge_the_limit_with_fresh_addresses() {
        let (r, _clock) = limiter(1.0, 3.0, 100);
        let allowed = (0..50u16)
            .filter(|i| r.allow(format!("2001:db8:7:7::{i:x}").parse().unwrap()))
            .count();
        assert_eq!(allowed, 3, "one /64 is one source");
        assert!(r.allow("2001:db8:7:8::1".parse().unwrap()));
    }

    #[test]
    fn the_source_map_is_bounded() {
        let (r, clock) = limiter(1.0, 2.0, 3);
        for i in 0..3 {
            assert!(r.allow(IpAddr::from([198, 51, 100, i])));
        }
        assert!(
            !r.allow(IpAddr::from([198, 51, 100, 9])),
            "map full of busy sources"
        );
        // Once the others have refilled, the newcomer gets in.
        clock.advance(Duration::from_secs(5));
        assert!(r.allow(IpAddr::from([198, 51, 100, 9])));
        assert!(r.sources() <= 3);
    }
}
