//! Per-source rate limiting (token buckets in a bounded map) and a byte-rate
//! pacer for relay tunnels.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Token buckets by source IP. The map is bounded: when full, buckets that have
/// refilled completely (idle sources) are dropped; if none has, new sources are
/// refused until some do, so a spoofing flood cannot grow memory.
#[derive(Debug)]
pub struct RateLimiter {
    buckets: HashMap<IpAddr, (f64, Instant)>,
    rate: f64,
    burst: f64,
    max_sources: usize,
}

impl RateLimiter {
    /// `rate` requests per second sustained, `burst` at once, `max_sources` tracked.
    pub fn new(rate: f64, burst: f64, max_sources: usize) -> Self {
        RateLimiter {
            buckets: HashMap::new(),
            rate,
            burst: burst.max(1.0),
            max_sources,
        }
    }

    /// Whether a request from `source` may go ahead now.
    pub fn allow(&mut self, source: IpAddr, now: Instant) -> bool {
        if !self.buckets.contains_key(&source) && self.buckets.len() >= self.max_sources {
            let (rate, burst) = (self.rate, self.burst);
            self.buckets.retain(|_, (tokens, at)| {
                *tokens + now.saturating_duration_since(*at).as_secs_f64() * rate < burst
            });
            if self.buckets.len() >= self.max_sources {
                return false;
            }
        }
        let (tokens, at) = self.buckets.entry(source).or_insert((self.burst, now));
        *tokens = (*tokens + now.saturating_duration_since(*at).as_secs_f64() * self.rate)
            .min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

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
    fn a_source_gets_its_burst_then_its_rate() {
        let mut r = RateLimiter::new(10.0, 5.0, 100);
        let ip: IpAddr = "198.51.100.1".parse().unwrap();
        let t0 = Instant::now();
        assert_eq!((0..10).filter(|_| r.allow(ip, t0)).count(), 5);
        // 0.5 s later: five more tokens.
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!((0..10).filter(|_| r.allow(ip, t1)).count(), 5);
        // Another source is not affected.
        assert!(r.allow("198.51.100.2".parse().unwrap(), t1));
    }

    #[test]
    fn the_source_map_is_bounded() {
        let mut r = RateLimiter::new(1.0, 2.0, 3);
        let t0 = Instant::now();
        for i in 0..3 {
            assert!(r.allow(IpAddr::from([198, 51, 100, i]), t0));
        }
        assert!(
            !r.allow(IpAddr::from([198, 51, 100, 9]), t0),
            "map full of busy sources"
        );
        // Once the others have refilled, the newcomer gets in.
        assert!(r.allow(IpAddr::from([198, 51, 100, 9]), t0 + Duration::from_secs(5)));
        assert!(r.buckets.len() <= 3);
    }

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
